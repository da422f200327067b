"""compressed-tensors ``pack-quantized``, symmetric group INT4: what vLLM and transformers read.

Per quantized Linear ``<m>`` with ``N = out``, ``K = in``: ``<m>.weight_packed`` int32 ``[N, K/8]``
(values ``q + 8`` in nibbles, column 0 least significant), ``<m>.weight_scale`` in the model dtype
``[N, K/group]`` and ``<m>.weight_shape`` int64 ``[N, K]``; no zero point, no ``g_idx``. The config
lists every kept Linear in ``ignore``. This module is the one place that names these tensors, writes
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

from hlwq_kernels.ops.int4 import Int4Weight

# The compressed-tensors release whose pack-quantized layout and config schema this follows.
FORMAT_VERSION = "0.12.0"
SUFFIXES = ("packed", "scale", "shape")
EXPECTED_WEIGHTS = {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "dynamic": False}


def tensor_names(module: str) -> list[str]:
    """The names of the tensors that replace ``<module>.weight``."""
    return [f"{module}.weight_{s}" for s in SUFFIXES]


def layer_tensors(module: str, n: int, k: int, group_size: int, scale_dtype: str) -> list[tuple[str, str, tuple[int, ...]]]:
    """``(name, safetensors dtype, shape)`` of each tensor written for an ``[n, k]`` weight."""
    packed, scale, shape = tensor_names(module)
    return [(packed, "I32", (n, k // 8)), (scale, scale_dtype, (n, k // group_size)), (shape, "I64", (2,))]


def compress(module: str, q: Int4Weight) -> dict[str, torch.Tensor]:
    """The output tensors of one quantized weight, on the CPU."""
    n, k = q.shape
    packed, scale, shape = tensor_names(module)
    return {
        packed: q.packed.to(torch.int32).cpu(),
        scale: q.scale.cpu(),
        shape: torch.tensor([n, k], dtype=torch.int64),
    }


def decompress(module: str, read: Callable[[str], torch.Tensor], group_size: int) -> Int4Weight:
    """The INT4 weight of ``module``; ``read(name)`` returns a stored tensor."""
    packed, scale, shape = (read(name) for name in tensor_names(module))
    n, k = (int(v) for v in shape.tolist())
    return Int4Weight(packed, scale, (n, k), group_size)


def quantization_config(group_size: int, ignore: Iterable[str]) -> dict:
    """The ``quantization_config`` for symmetric group INT4 that vLLM and transformers accept."""
    return {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": {**EXPECTED_WEIGHTS, "group_size": group_size},
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


def check_config(config: Mapping) -> tuple[int, list[str], list[str]]:
    """``(group_size, ignore, problems)`` of a converted model's config.json; ``problems`` is
    empty when the config is one this module writes."""
    problems: list[str] = []
    qc = config.get("quantization_config")
    if not isinstance(qc, dict):
        return 0, [], ["config.json has no quantization_config"]
    for key, want in (("quant_method", "compressed-tensors"), ("format", "pack-quantized"),
                      ("quantization_status", "compressed")):
        if qc.get(key) != want:
            problems.append(f"quantization_config.{key} is {qc.get(key)!r}, expected {want!r}")
    ignore = list(qc.get("ignore") or [])
    groups = qc.get("config_groups") or {}
    if len(groups) != 1:
        return 0, ignore, problems + [f"expected one config group, found {len(groups)}"]
    group = next(iter(groups.values()))
    weights = group.get("weights") or {}
    for key, want in EXPECTED_WEIGHTS.items():
        if weights.get(key) != want:
            problems.append(f"config group weights.{key} is {weights.get(key)!r}, expected {want!r}")
    if group.get("targets") != ["Linear"]:
        problems.append(f"config group targets {group.get('targets')!r}, expected ['Linear']")
    return int(weights.get("group_size") or 0), ignore, problems


def is_ignored(name: str, ignore: Iterable[str]) -> bool:
    """compressed-tensors' name matching: an exact module name or a ``re:`` pattern (``re.match``)."""
    return any(re.match(p[3:], name) if p.startswith("re:") else p == name for p in ignore)
