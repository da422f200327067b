"""compressed-tensors ``pack-quantized`` group INT4, symmetric or asymmetric: what vLLM and
transformers read.

Per quantized Linear ``<m>`` with ``N = out``, ``K = in``: ``<m>.weight_packed`` int32 ``[N, K/8]``
(values ``q + 8`` in nibbles, column 0 least significant), ``<m>.weight_scale`` in the model dtype
``[N, K/group]`` and ``<m>.weight_shape`` int64 ``[N, K]``; no ``g_idx``. The asymmetric scheme adds
``<m>.weight_zero_point`` int32 ``[ceil(N/8), K/group]`` (values ``z + 8``, 8 consecutive rows per word,
the first least significant) and says ``symmetric: false`` in the config. The config lists every kept
Linear in ``ignore``. This module is the one place that names these tensors, writes
the ``quantization_config`` and checks it.

``"dequantize": true`` in the config is read by transformers' compressed-tensors integration only
(vLLM and compressed-tensors ignore the key): it dequantizes the INT4 weights to the model dtype
while loading. Without it, recent transformers leave the layers compressed and decompress them from
a forward pre-hook on the model, which sentence-transformers bypasses (it calls ``model.forward``):
``SentenceTransformer(dst)`` then fails with ``'Linear' object has no attribute 'weight'``.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable, Mapping

import torch

from hlwq_kernels.ops.int4 import Int4Weight, dequantize_int4
from hlwq_kernels.ops.int4_asym import Int4AsymWeight, dequantize_int4_asym

# The compressed-tensors release whose pack-quantized layout and config schema this follows.
FORMAT_VERSION = "0.12.0"
SCHEMES = ("sym", "asym")
EXPECTED_WEIGHTS = {"num_bits": 4, "type": "int", "strategy": "group", "dynamic": False}
# Source rows per stored row of each per-row tensor (the zero points pack 8 rows per word); the
# weight_shape tensor is not per row.
ROWS_PER_STORED_ROW = {"packed": 1, "scale": 1, "zero_point": 8}


def _suffixes(symmetric: bool) -> tuple[str, ...]:
    return ("packed", "scale", "shape") if symmetric else ("packed", "scale", "zero_point", "shape")


def tensor_names(module: str, symmetric: bool = True) -> list[str]:
    """The names of the tensors that replace ``<module>.weight``, ``weight_shape`` last."""
    return [f"{module}.weight_{s}" for s in _suffixes(symmetric)]


def rows_per_stored_row(name: str) -> int | None:
    """Source rows per stored row of the output tensor ``name`` (None: ``weight_shape``)."""
    return ROWS_PER_STORED_ROW.get(name.rsplit(".weight_", 1)[-1])


def layer_tensors(module: str, n: int, k: int, group_size: int, scale_dtype: str,
                  symmetric: bool = True) -> list[tuple[str, str, tuple[int, ...]]]:
    """``(name, safetensors dtype, shape)`` of each tensor written for an ``[n, k]`` weight, in the
    order of ``tensor_names``."""
    specs = {"packed": ("I32", (n, k // 8)), "scale": (scale_dtype, (n, k // group_size)),
             "zero_point": ("I32", (-(-n // 8), k // group_size)), "shape": ("I64", (2,))}
    return [(f"{module}.weight_{s}", *specs[s]) for s in _suffixes(symmetric)]


def row_tensors(q: Int4Weight | Int4AsymWeight) -> tuple[torch.Tensor, ...]:
    """The stored per-row tensors of ``q`` (every output tensor but ``weight_shape``), in order."""
    if isinstance(q, Int4AsymWeight):
        return q.packed, q.scale, q.zero_point_packed
    return q.packed, q.scale


def dequantize(q: Int4Weight | Int4AsymWeight) -> torch.Tensor:
    """The float32 weight that ``q`` decompresses to (``q * s`` or ``(q - z) * s``)."""
    if isinstance(q, Int4AsymWeight):
        return dequantize_int4_asym(q, dtype=torch.float32)
    return dequantize_int4(q, dtype=torch.float32)


def compress(module: str, q: Int4Weight | Int4AsymWeight) -> dict[str, torch.Tensor]:
    """The output tensors of one quantized weight, on the CPU."""
    names = tensor_names(module, symmetric=not isinstance(q, Int4AsymWeight))
    out = {name: t.cpu() for name, t in zip(names, row_tensors(q))}
    out[names[-1]] = torch.tensor(list(q.shape), dtype=torch.int64)
    return out


def decompress(module: str, read: Callable[[str], torch.Tensor], group_size: int,
               symmetric: bool = True) -> Int4Weight | Int4AsymWeight:
    """The INT4 weight of ``module``; ``read(name)`` returns a stored tensor."""
    tensors = [read(name) for name in tensor_names(module, symmetric)]
    n, k = (int(v) for v in tensors[-1].tolist())
    if symmetric:
        return Int4Weight(tensors[0], tensors[1], (n, k), group_size)
    return Int4AsymWeight(tensors[0], tensors[1], tensors[2], (n, k), group_size)


def quantization_config(group_size: int, ignore: Iterable[str], symmetric: bool = True) -> dict:
    """The ``quantization_config`` for group INT4 (``symmetric``: no zero points) that vLLM and
    transformers accept."""
    return {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {**EXPECTED_WEIGHTS, "symmetric": symmetric, "group_size": group_size},
                "input_activations": None,
                "output_activations": None,
                "format": "pack-quantized",
            }
        },
        "ignore": list(ignore),
        "kv_cache_scheme": None,
        "sparsity_config": {},
        "transform_config": {},
        "version": FORMAT_VERSION,
        "dequantize": True,  # transformers: dequantize while loading (see the module docstring)
    }


def check_config(config: Mapping) -> tuple[int, list[str], list[str], bool]:
    """``(group_size, ignore, problems, symmetric)`` of a converted model's config.json;
    ``problems`` is empty when the config is one this module writes (either scheme)."""
    problems: list[str] = []
    qc = config.get("quantization_config")
    if not isinstance(qc, dict):
        return 0, [], ["config.json has no quantization_config"], True
    for key, want in (("quant_method", "compressed-tensors"), ("format", "pack-quantized"),
                      ("quantization_status", "compressed")):
        if qc.get(key) != want:
            problems.append(f"quantization_config.{key} is {qc.get(key)!r}, expected {want!r}")
    ignore = list(qc.get("ignore") or [])
    groups = qc.get("config_groups") or {}
    if len(groups) != 1:
        return 0, ignore, problems + [f"expected one config group, found {len(groups)}"], True
    group = next(iter(groups.values()))
    weights = group.get("weights") or {}
    symmetric = weights.get("symmetric")
    if symmetric not in (True, False):
        problems.append(f"config group weights.symmetric is {symmetric!r}, expected true or false")
    for key, want in EXPECTED_WEIGHTS.items():
        if weights.get(key) != want:
            problems.append(f"config group weights.{key} is {weights.get(key)!r}, expected {want!r}")
    if group.get("targets") != ["Linear"]:
        problems.append(f"config group targets {group.get('targets')!r}, expected ['Linear']")
    return int(weights.get("group_size") or 0), ignore, problems, symmetric is not False


def is_ignored(name: str, ignore: Iterable[str]) -> bool:
    """compressed-tensors' name matching: an exact module name or a ``re:`` pattern (``re.match``)."""
    return any(re.match(p[3:], name) if p.startswith("re:") else p == name for p in ignore)
