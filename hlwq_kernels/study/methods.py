"""The methods compared by the quality study (issue 6), as a registry of named quantizers.

Each method maps a weight ``w [N, K]`` (bfloat16, as in an LLM checkpoint) to a ``Quantized``:
the matrix it approximates (``target``: ``w`` itself, or ``w`` with its inputs rotated), the
approximation, and the INT4 export (compressed-tensors ``pack-quantized``, group 128) when there is one.

INT4 methods (all export compressed-tensors' group-128 ``pack-quantized`` format vLLM serves;
symmetric except 7):
1. ``rtn-absmax``: round to nearest, compressed-tensors' scale ``max|w| / 7.5``;
2. ``rtn-mse``: round to nearest, the MSE-optimal scale per group;
3. ``hlwq-original``: HLWQ as first released: its unconverged Q5 codebook (the main variant,
   outer cells to ±inf) and the INT4 scale ``max|w| / 7`` (``original_int4_scale``);
4. ``hlwq-absmax``: HLWQ with the converged Lloyd–Max Q5 codebook, then absmax/7.5;
5. ``hlwq-mse``: HLWQ with the converged codebook, then the MSE-optimal scale;
6. ``rotated-absmax`` / ``rotated-mse``: a block-128 Hadamard rotation of the input dimension that
   is kept: ``W Rᵀ`` is quantized and the model must feed it ``R x`` (``W x = (W Rᵀ)(R x)``).
   Its error is measured against ``W Rᵀ`` (the same number as against ``W`` after undoing R,
   since R is orthogonal).
7. ``asym-minmax`` / ``asym-clip`` / ``asym-hqq``: asymmetric INT4 (a zero point per group) with the
   min-max rule (the converter's default), the clip search with a least-squares refit, HQQ updates.
Reference rows, not INT4: ``hl-stage-{3,4,5}bit``, the Hadamard–Lloyd stage alone (``W'``, no INT4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from hlwq_kernels.ops.fwht import fwht
from hlwq_kernels.ops.hlwq import hlwq_dequantize, hlwq_int4, hlwq_quantize
from hlwq_kernels.ops.int4 import Int4Weight, absmax_scale, dequantize_int4, quantize_int4, quantize_int4_with_scale
from hlwq_kernels.ops.int4_asym import Int4AsymWeight, dequantize_int4_asym, quantize_int4_asym
from hlwq_kernels.ops.lloyd_max import original_release_codebook

__all__ = ["GROUP", "BLOCK", "Quantized", "Method", "METHODS", "method", "original_int4_scale", "rotate_inputs"]

GROUP = 128
BLOCK = 128
ORIGINAL_DIVISOR = 7.0


@dataclass
class Quantized:
    """``target``: the float32 matrix approximated; ``approx``: float32 approximation of it;
    ``int4``: the INT4 export (None for the reference rows); ``rotated``: inputs must be rotated."""

    target: torch.Tensor
    approx: torch.Tensor
    int4: Int4Weight | Int4AsymWeight | None
    rotated: bool


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    quantize: Callable[[torch.Tensor], Quantized]
    is_int4: bool = True


def original_int4_scale(w: torch.Tensor, group_size: int = GROUP) -> torch.Tensor:
    """The original HLWQ release's INT4 scale ``max|w| / 7`` per group, stored in ``w``'s dtype
    (an all-zero group gets the dtype's eps, as in compressed-tensors)."""
    return absmax_scale(w, group_size, divisor=ORIGINAL_DIVISOR)


def rotate_inputs(x: torch.Tensor) -> torch.Tensor:
    """``R x`` along the last dim: normalized block-128 Hadamard, computed in float32."""
    return fwht(x.float(), dim=-1, block_size=BLOCK)


def _int4(target: torch.Tensor, q: Int4Weight, rotated: bool = False) -> Quantized:
    return Quantized(target, dequantize_int4(q, torch.float32), q, rotated)


def _rtn(scale: str) -> Callable[[torch.Tensor], Quantized]:
    return lambda w: _int4(w.float(), quantize_int4(w, GROUP, scale))


def _asym(rule: str) -> Callable[[torch.Tensor], Quantized]:
    def run(w: torch.Tensor) -> Quantized:
        q = quantize_int4_asym(w, GROUP, method=rule)
        return Quantized(w.float(), dequantize_int4_asym(q, torch.float32), q, False)

    return run


def _hlwq(scale: str) -> Callable[[torch.Tensor], Quantized]:
    return lambda w: _int4(w.float(), hlwq_int4(w, bits=5, block_size=BLOCK, group_size=GROUP, scale=scale))


def _hlwq_original(w: torch.Tensor) -> Quantized:
    codes = hlwq_quantize(w, bits=5, block_size=BLOCK, codebook=original_release_codebook(5, outer="inf"))
    wp = hlwq_dequantize(codes, dtype=w.dtype)
    return _int4(w.float(), quantize_int4_with_scale(wp, original_int4_scale(wp)))


def _rotated(scale: str) -> Callable[[torch.Tensor], Quantized]:
    def run(w: torch.Tensor) -> Quantized:
        wr = rotate_inputs(w)
        return _int4(wr, quantize_int4(wr.to(w.dtype), GROUP, scale), rotated=True)

    return run


def _q_stage(bits: int) -> Callable[[torch.Tensor], Quantized]:
    def run(w: torch.Tensor) -> Quantized:
        wp = hlwq_dequantize(hlwq_quantize(w, bits=bits, block_size=BLOCK), dtype=w.dtype)
        return Quantized(w.float(), wp.float(), None, False)

    return run


METHODS: list[Method] = [
    Method("rtn-absmax", "1. RTN, absmax/7.5 (compressed-tensors, llm-compressor W4A16)", _rtn("absmax")),
    Method("rtn-mse", "2. RTN, MSE-optimal scale", _rtn("mse")),
    Method("hlwq-original", "3. HLWQ as released (unconverged Q5, max/7)", _hlwq_original),
    Method("hlwq-absmax", "4. HLWQ, converged Q5, absmax/7.5", _hlwq("absmax")),
    Method("hlwq-mse", "5. HLWQ, converged Q5, MSE-optimal scale", _hlwq("mse")),
    Method("rotated-absmax", "6a. Hadamard kept, absmax/7.5", _rotated("absmax")),
    Method("rotated-mse", "6b. Hadamard kept, MSE-optimal scale", _rotated("mse")),
    Method("asym-minmax", "7a. asymmetric, min-max (the converter's default)", _asym("minmax")),
    Method("asym-clip", "7b. asymmetric, clip search + least-squares refit", _asym("clip")),
    Method("asym-hqq", "7c. asymmetric, HQQ updates", _asym("hqq")),
    *[Method(f"hl-stage-{b}bit", f"ref. Hadamard–Lloyd stage alone, {b} bits (not INT4)", _q_stage(b), is_int4=False)
      for b in (3, 4, 5)],
]


def method(key: str) -> Method:
    """The registered method named ``key``."""
    for m in METHODS:
        if m.key == key:
            return m
    raise KeyError(f"unknown method {key!r}; known: {[m.key for m in METHODS]}")
