"""How sensitive is a model to tiny rounding differences? Tools to compare and perturb the INT4 codes
of symmetric compressed-tensors ``pack-quantized`` checkpoints.

- ``code_difference(a, b)``: the fraction of codes that differ between two checkpoints of the same
  model (and by how much), and whether their scales are identical;
- ``perturb_checkpoint(src, dst, fraction, seed)``: a copy of ``src`` in which a random ``fraction``
  of the codes moves by +1 or -1 (random sign; the other sign where +-1 would leave [-8, 7]), scales
  untouched: random errors of that count;
- ``jitter_checkpoint(src, dst, weights, relative, seed)``: the codes rounded again from the source
  weights with a tiny random relative jitter, so that only near-ties flip: the kind of difference
  a division rounded to bfloat16 instead of float32 makes, with no change in weight error to speak of.
Evaluating a few seeds of each shows how much perplexity moves for differences that carry no method.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hlwq_kernels.ops.int4 import QMAX, QMIN, int4_codes, pack_int4, unpack_int4

__all__ = ["PACKED", "PERTURBATION_NAME", "code_difference", "perturb_codes", "perturb_checkpoint", "jitter_checkpoint"]

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


def _rewrite_codes(src: Path, dst: Path, recode: Callable[[str, torch.Tensor], torch.Tensor], meta: dict) -> Path:
    """A copy of the checkpoint ``src`` at ``dst`` whose codes are ``recode(layer, codes)`` (layers in
    name order), with ``meta`` in ``perturbation.json``."""
    work = dst.with_name(f".{dst.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(src, work, ignore=shutil.ignore_patterns("*.safetensors"))
    files = _tensor_files(src)
    for f in sorted(set(files.values())):
        with safe_open(f, "pt") as st:
            tensors = {k: st.get_tensor(k) for k in st.keys()}
            metadata = st.metadata()
        for name in sorted(k for k in tensors if k.endswith(PACKED)):
            tensors[name] = pack_int4(recode(name[: -len(PACKED)], _codes(files, name)))
        save_file(tensors, work / f.name, metadata=metadata)
    (work / PERTURBATION_NAME).write_text(json.dumps(meta))
    shutil.rmtree(dst, ignore_errors=True)
    work.rename(dst)
    return dst


def perturb_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, fraction: float, seed: int) -> Path:
    """Write a copy of the checkpoint ``src`` to ``dst`` with ``perturb_codes`` applied to every
    quantized layer (one generator seeded with ``seed``)."""
    generator = torch.Generator().manual_seed(seed)
    return _rewrite_codes(Path(src), Path(dst), lambda layer, codes: perturb_codes(codes, fraction, generator),
                          {"kind": "flip", "source": str(src), "fraction": fraction, "seed": seed})


def jitter_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, weights: str | os.PathLike, relative: float,
                      seed: int) -> Path:
    """Write a copy of the checkpoint ``src`` to ``dst`` whose codes are the weights of the unquantized
    checkpoint ``weights`` rounded again with ``src``'s scales after multiplying each by
    ``1 + relative * u``, ``u`` uniform in [-1, 1) (seeded): only codes within about ``relative * |w / s|``
    of a rounding tie change, as when the division ``w / s`` is rounded to a shorter float
    (``relative = 2**-9``: bfloat16). ``relative = 0`` reproduces round-to-nearest with these scales."""
    generator, sources = torch.Generator().manual_seed(seed), _tensor_files(Path(weights))
    scales = _tensor_files(Path(src))

    def recode(layer: str, codes: torch.Tensor) -> torch.Tensor:
        w = _read(sources, f"{layer}.weight").float()
        u = torch.rand(w.shape, generator=generator) * 2 - 1
        return int4_codes(w * (1 + relative * u), _read(scales, layer + _SCALE))

    return _rewrite_codes(Path(src), Path(dst), recode,
                          {"kind": "jitter", "source": str(src), "relative": relative, "seed": seed})
