"""How sensitive is a model to tiny rounding differences? Tools to compare and perturb the INT4 codes
of symmetric compressed-tensors ``pack-quantized`` checkpoints.

- ``code_difference(a, b)``: the fraction of codes that differ between two checkpoints of the same
  model (and by how much), and whether their scales are identical;
- ``perturb_checkpoint(src, dst, fraction, seed)``: a copy of ``src`` in which a random ``fraction``
  of the codes moves by +1 or -1 (random sign; the other sign where +-1 would leave [-8, 7]), scales
  untouched. Evaluating a few seeds shows how much perplexity moves for a change of that size.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hlwq_kernels.ops.int4 import QMAX, QMIN, pack_int4, unpack_int4

__all__ = ["PACKED", "PERTURBATION_NAME", "code_difference", "perturb_codes", "perturb_checkpoint"]

PACKED = ".weight_packed"
_SCALE = ".weight_scale"
PERTURBATION_NAME = "perturbation.json"


def _tensor_files(path: Path) -> dict[str, Path]:
    files = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(f, "pt") as st:
            files.update({k: f for k in st.keys()})
    return files


def _read(files: dict[str, Path], name: str) -> torch.Tensor:
    with safe_open(files[name], "pt") as st:
        return st.get_tensor(name)


def _codes(files: dict[str, Path], name: str) -> torch.Tensor:
    shape = _read(files, name[: -len(PACKED)] + ".weight_shape")
    return unpack_int4(_read(files, name), int(shape[1]))


def code_difference(a: str | os.PathLike, b: str | os.PathLike) -> dict:
    """Compare the INT4 codes of two checkpoints with the same quantized layers: ``fraction`` of codes
    that differ, ``by`` (count of codes per absolute difference), ``scales_equal``, ``codes``."""
    fa, fb = _tensor_files(Path(a)), _tensor_files(Path(b))
    layers = sorted(k for k in fa if k.endswith(PACKED))
    if not layers or layers != sorted(k for k in fb if k.endswith(PACKED)):
        raise ValueError(f"{a} and {b} do not quantize the same layers")
    by, total, scales_equal = Counter(), 0, True
    for name in layers:
        d = (_codes(fa, name).to(torch.int16) - _codes(fb, name).to(torch.int16)).abs()
        by.update({int(v): int(c) for v, c in zip(*torch.unique(d, return_counts=True)) if v})
        total += d.numel()
        scale = name[: -len(PACKED)] + _SCALE
        scales_equal &= torch.equal(_read(fa, scale), _read(fb, scale))
    return {"fraction": sum(by.values()) / total, "by": dict(sorted(by.items())), "scales_equal": scales_equal,
            "codes": total, "layers": len(layers)}


def perturb_codes(codes: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """``codes`` (int8 in [-8, 7]) with a random ``fraction`` of them moved by +-1, staying in range."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    pick = torch.rand(codes.shape, generator=generator) < fraction
    step = torch.where(torch.rand(codes.shape, generator=generator) < 0.5, -1, 1).to(torch.int16)
    moved = codes.to(torch.int16) + step
    moved = torch.where((moved < QMIN) | (moved > QMAX), codes.to(torch.int16) - step, moved)
    return torch.where(pick, moved, codes.to(torch.int16)).to(torch.int8)


def perturb_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, fraction: float, seed: int) -> Path:
    """Write a copy of the checkpoint ``src`` to ``dst`` with ``perturb_codes`` applied to every
    quantized layer (layers in name order, one generator seeded with ``seed``)."""
    src, dst = Path(src), Path(dst)
    work = dst.with_name(f".{dst.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(src, work, ignore=shutil.ignore_patterns("*.safetensors"))
    generator = torch.Generator().manual_seed(seed)
    files = _tensor_files(src)
    for f in sorted(set(files.values())):
        with safe_open(f, "pt") as st:
            tensors = {k: st.get_tensor(k) for k in st.keys()}
            metadata = st.metadata()
        for name in sorted(k for k in tensors if k.endswith(PACKED)):
            codes = _codes(files, name)
            tensors[name] = pack_int4(perturb_codes(codes, fraction, generator))
        save_file(tensors, work / f.name, metadata=metadata)
    (work / PERTURBATION_NAME).write_text(json.dumps({"source": str(src), "fraction": fraction, "seed": seed}))
    shutil.rmtree(dst, ignore_errors=True)
    work.rename(dst)
    return dst
