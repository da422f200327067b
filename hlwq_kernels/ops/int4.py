"""Symmetric group INT4 quantization in the compressed-tensors ``pack-quantized`` format.

A weight ``w`` ``[N, K]`` (bf16, fp16 or fp32) is split along ``K`` into groups of ``group_size``
columns with one scale each, stored in the weight's dtype (docs/design.md §3). Codes
``q = round_half_even(clamp(w / s, -8, 7))``, the quotient taken in float32 with the scale as stored,
are kept as ``q + 8`` in 4-bit nibbles: column ``j`` of a row goes into int32 word ``j // 8``,
nibble ``j % 8``, column 0 least significant. Dequantization is ``(u - 8) * s``.

Scale rules:
- ``"absmax"``: compressed-tensors' own rule, ``max|w| / 7.5`` in float32 cast to the weight dtype;
  an all-zero group gets ``torch.finfo(dtype).eps``.
- ``"mse"``: per group, the best of ``len(RATIOS)`` trial scales (clip ratios of the absmax scale,
  ratio 1 first) and their least-squares refits ``s = Σ |w| |q| / Σ q²``. Errors are compared exactly
  through ``D(s) = s (s Σ q² - 2 Σ |w| |q|)`` (the error minus ``Σ w²``; exact float64 sums); a refit
  of bf16/fp16 weights is judged by its error with the codes it was fitted to (an upper bound of its
  own), a float32 one by its own error. No group is ever worse than absmax, and the torch path, the
  kernel and the NumPy reference return the same scales bit for bit (``hlwq_reference.numpy.int4``
  states the rule and why it holds).

CUDA tensors use the fused Triton kernel (``hlwq_kernels.ops.int4_triton``: one read of the weight, packed
words and scales out); CPU tensors use the torch path below; ``backend="triton"`` on CPU tensors runs
the kernel in Triton's interpreter. The NumPy reference is ``hlwq_reference.numpy.int4``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hlwq_kernels.ops._checks import as_int, check_float_dtype, check_instance, check_tensor
from hlwq_kernels.ops._triton import use_triton

# The format contract's constants live in the (torch-free) reference, so both sides share one copy.
from hlwq_reference.numpy.int4 import ABSMAX_DIVISOR, QMAX, QMIN, RATIOS, SEARCH_RANGE, trial_multipliers

__all__ = [
    "Int4Weight",
    "quantize_int4",
    "quantize_int4_with_scale",
    "dequantize_int4",
    "absmax_scale",
    "int4_codes",
    "pack_int4",
    "unpack_int4",
    "check_group_size",
    "check_int4_shape",
    "check_int4_weight",
]

_WEIGHT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
SCALE_RULES = ("absmax", "mse")


@dataclass(frozen=True)
class Int4Weight:
    """A weight quantized to symmetric group INT4, in compressed-tensors ``pack-quantized`` layout."""

    packed: torch.Tensor  # int32 [N, K // 8]
    scale: torch.Tensor  # [N, K // group_size], the weight's dtype
    shape: tuple[int, int]  # (N, K)
    group_size: int


def check_group_size(group_size: int) -> int:
    """``group_size`` if it is a positive multiple of 8, else TypeError (not an integer) or ValueError."""
    if as_int(group_size, "group_size") <= 0 or group_size % 8:
        raise ValueError(f"group_size must be a positive multiple of 8 (8 nibbles per int32 word), got {group_size}")
    return group_size


def check_int4_shape(shape: tuple[int, ...], group_size: int) -> tuple[int, int]:
    """Return ``(N, K)`` or raise ValueError naming the shape and the rule it breaks."""
    if len(shape) != 2:
        raise ValueError(f"INT4 group quantization needs a 2-D weight [N, K], got shape {tuple(shape)}")
    n, k = int(shape[0]), int(shape[1])
    check_group_size(group_size)
    if k % group_size:
        raise ValueError(f"weight shape {(n, k)}: K={k} must be a multiple of group_size={group_size}")
    return n, k


def check_int4_weight(q: Int4Weight, hint: str, cls: type = Int4Weight, name: str = "q") -> tuple[int, int]:
    """Return ``(N, K)`` of an ``Int4Weight`` (or a ``cls``) or raise naming what does not match (TypeError with
    ``hint`` for another type): int32 words ``[N, K/8]`` and floating-point scales ``[N, K/group_size]``."""
    check_instance(q, cls, name, hint)
    n, k = check_int4_shape(q.shape, q.group_size)
    packed, scale = check_tensor(q.packed, f"{name}.packed"), check_tensor(q.scale, f"{name}.scale")
    if packed.dtype != torch.int32 or tuple(packed.shape) != (n, k // 8) or not scale.dtype.is_floating_point \
            or tuple(scale.shape) != (n, k // q.group_size):
        raise ValueError(f"{cls.__name__} of shape {(n, k)} and group_size {q.group_size} needs int32 packed "
                         f"{[n, k // 8]} and floating-point scale {[n, k // q.group_size]}, got {packed.dtype} "
                         f"{list(packed.shape)} and {scale.dtype} {list(scale.shape)}")
    return n, k


def _check_weight(w: torch.Tensor, group_size: int) -> tuple[int, int]:
    """Return ``(N, K)`` of a weight to quantize or raise: a non-empty 2-D bf16/fp16/fp32 tensor, K a multiple of
    ``group_size``."""
    check_tensor(w, "weight")
    if w.dtype not in _WEIGHT_DTYPES:
        raise TypeError(f"INT4 quantization takes bfloat16, float16 or float32 weights, got {w.dtype}")
    n, k = check_int4_shape(tuple(w.shape), group_size)
    if n == 0 or k == 0:
        raise ValueError(f"weight shape {(n, k)} is empty")
    return n, k



def _store(s: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Round float32 scales to the stored dtype and back; zeros become that dtype's epsilon."""
    stored = s.to(dtype).float()
    return torch.where(stored == 0, torch.finfo(dtype).eps, stored)


def _div(x: torch.Tensor, divisor: float) -> torch.Tensor:
    """``x / divisor`` by IEEE division (CUDA divides by a Python scalar through its reciprocal,
    an ulp off for some quotients, which the stored scale can inherit)."""
    return x / torch.full((), divisor, dtype=x.dtype, device=x.device)


def _group_codes(wg: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Float codes of float32 groups ``[N, G, g]`` for float32 scales ``[N, G]``."""
    return (wg / s.unsqueeze(-1)).clamp_(QMIN, QMAX).round_()


def absmax_scale(w: torch.Tensor, group_size: int = 128, divisor: float = ABSMAX_DIVISOR) -> torch.Tensor:
    """compressed-tensors' scale ``max|w| / 7.5`` per group, in the weight's dtype ``[N, K/g]``.

    ``divisor`` selects another absmax rule (the original HLWQ release used ``max|w| / 7``).
    """
    n, k = _check_weight(w, group_size)
    if isinstance(divisor, bool) or not isinstance(divisor, numbers.Real) or not 0 < divisor < math.inf:
        raise ValueError(f"divisor must be a finite positive number, got {divisor!r}")
    amax = w.reshape(n, k // group_size, group_size).abs().amax(dim=-1).float()
    return _store(_div(amax, divisor), w.dtype).to(w.dtype)


def _trial(wg: torch.Tensor, s: torch.Tensor, exact: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(D, A, B)`` of float32 scales ``s`` [N, G]: ``A = Σ |w| |q|``, ``B = Σ q²``, ``D = s (s B - 2 A)``,
    with the stored codes (``exact``) or ``rint(|w| * float32(1 / s))`` (the exact product)."""
    a = wg.abs()
    cap = torch.where(wg < 0, -QMIN, QMAX).to(torch.float64)
    if exact:
        y = (a / s.unsqueeze(-1)).double()
    else:
        y = a.double() * (torch.ones_like(s) / s).double().unsqueeze(-1)
    q = torch.minimum(y.round_(), cap)
    sa = (a.double() * q).sum(dim=-1)  # exact: see hlwq_reference.numpy.int4
    sb = q.square_().sum(dim=-1)
    s64 = s.double()
    return s64 * (s64 * sb - 2 * sa), sa, sb


def _lower(best: tuple | None, new: tuple) -> tuple:
    """Elementwise ``new`` where its error (second item) is strictly lower than ``best``'s."""
    if best is None:
        return new
    better = new[1] < best[1]
    return tuple(torch.where(better, n, o) for n, o in zip(new, best))


def _mse_scale_torch(w: torch.Tensor, group_size: int, ratios: Sequence[float] = tuple(RATIOS)) -> torch.Tensor:
    """The ``"mse"`` scales (float32 values of ``w.dtype``) of ``hlwq_reference.numpy.int4.mse_scale``;
    ``ratios`` (float32 values; the first trial is the absmax scale) replaces ``RATIOS``."""
    n, k = w.shape
    wg = w.float().reshape(n, k // group_size, group_size)
    exact = w.dtype == torch.float32
    amax = wg.abs().amax(dim=-1)
    absmax = _store(_div(amax, ABSMAX_DIVISOR), w.dtype)
    best = refit = None
    for t, m in enumerate(trial_multipliers(ratios)):
        s = absmax if t == 0 else _store(amax * float(m), w.dtype)
        d, sa, sb = _trial(wg, s, exact)
        best = _lower(best, (s, d))
        f = _store(torch.where(sb > 0, sa / sb.clamp_min(1), s.double()).float(), w.dtype)
        f64 = f.double()
        refit = _lower(refit, (f, f64 * (f64 * sb - 2 * sa)))
    if exact:  # float32: the refit's own error decides
        refit = (refit[0], _trial(wg, refit[0], exact)[0])
    s = torch.where(refit[1] < best[1], refit[0], best[0])
    return torch.where((absmax >= SEARCH_RANGE[0]) & (absmax <= SEARCH_RANGE[1]), s, absmax)


def int4_codes(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """INT4 codes in [-8, 7] (int8 ``[N, K]``) of ``w`` with per-group scales ``[N, K/g]``."""
    g = _check_scale(w, scale)
    n, k = _check_weight(w, g)
    return _group_codes(w.float().reshape(n, k // g, g), scale.float()).reshape(n, k).to(torch.int8)


def _stored_codes(wg: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The stored nibbles ``q + 8`` (uint8 ``[N, K]``) of float32 groups ``[N, G, g]`` with float32
    scales ``[N, G]``."""
    n = wg.shape[0]
    return _group_codes(wg, s).sub_(QMIN).reshape(n, -1).to(torch.uint8)


def _pack_nibbles(u: torch.Tensor) -> torch.Tensor:
    """Pack nibbles in [0, 15] (uint8 ``[N, K]``, contiguous) into int32 ``[N, K/8]``: byte ``i`` of
    a row holds columns ``2i`` (low) and ``2i + 1`` (high), and four little-endian bytes make one
    word. Each byte pair read as a little-endian int16 ``x = lo | hi << 8`` gives ``lo | hi << 4``
    in the low byte of ``x | x >> 4``."""
    x = u.reshape(-1).view(torch.int16)  # 1-D first: a [1, K] tensor may carry any stride on its size-1 dim
    return (x | (x >> 4)).to(torch.uint8).view(torch.int32).reshape(u.shape[0], -1)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack codes in [-8, 7] ``[N, K]`` into int32 ``[N, K/8]`` (compressed-tensors layout)."""
    if check_tensor(q, "codes").ndim != 2 or q.shape[1] % 8:
        raise ValueError(f"pack_int4 needs codes of shape [N, K] with K a multiple of 8, got {tuple(q.shape)}")
    if q.dtype.is_floating_point or q.dtype == torch.bool:
        raise TypeError(f"pack_int4 takes integer codes, got {q.dtype}")
    if q.numel() and (int(q.min()) < QMIN or int(q.max()) > QMAX):
        raise ValueError("pack_int4: codes must lie in [-8, 7]")
    return _pack_nibbles((q - QMIN).to(torch.uint8).contiguous())


def unpack_int4(packed: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse of ``pack_int4``: int8 codes ``[N, k]`` from int32 words ``[N, ceil(k/8)]``."""
    k = as_int(k, "k", 0)
    if check_tensor(packed, "packed").dtype != torch.int32 or packed.ndim != 2 or packed.shape[1] * 8 < k:
        raise ValueError(f"unpack_int4 needs int32 words [N, >= k/8] for k={k}, got {packed.dtype} {tuple(packed.shape)}")
    x = packed.contiguous().reshape(-1).view(torch.uint8).to(torch.int16)  # one byte: two nibbles, low first
    u = ((x & 0xF) | ((x << 4) & 0xF00)).view(torch.uint8).reshape(packed.shape[0], -1)[:, :k]
    return u.view(torch.int8) + QMIN


def _check_scale(w: torch.Tensor, scale: torch.Tensor) -> int:
    check_tensor(w, "weight")
    check_tensor(scale, "scale")
    n, k = check_int4_shape(tuple(w.shape), 8)
    if scale.ndim != 2 or scale.shape[0] != n or scale.shape[1] == 0 or k % scale.shape[1]:
        raise ValueError(f"scale shape {tuple(scale.shape)} must be [N, K/group_size] for weight shape {(n, k)}")
    if not scale.dtype.is_floating_point:
        raise TypeError(f"scales must be floating point, got {scale.dtype}")
    if not bool(torch.isfinite(scale).all()) or not bool((scale > 0).all()):
        raise ValueError("scales must be finite and positive")
    return k // scale.shape[1]


def quantize_int4_with_scale(w: torch.Tensor, scale: torch.Tensor, backend: str = "auto") -> Int4Weight:
    """Quantize ``w`` ``[N, K]`` with given per-group scales ``[N, K/g]`` (stored as given)."""
    group_size = _check_scale(w, scale)
    n, k = _check_weight(w, group_size)
    if use_triton(backend, w):
        from hlwq_kernels.ops.int4_triton import int4_quantize_pack

        packed, _ = int4_quantize_pack(w, group_size, "given", scale=scale)
    else:
        wg = w.float().reshape(n, k // group_size, group_size)
        packed = _pack_nibbles(_stored_codes(wg, scale.float()))
    return Int4Weight(packed, scale, (n, k), group_size)


def quantize_int4(
    w: torch.Tensor, group_size: int = 128, scale: str = "absmax", backend: str = "auto"
) -> Int4Weight:
    """Symmetric group INT4 with ``scale="absmax"`` (compressed-tensors' rule) or ``"mse"``."""
    n, k = _check_weight(w, group_size)
    if scale not in SCALE_RULES:
        raise ValueError(f"scale must be one of {SCALE_RULES}, got {scale!r}")
    if use_triton(backend, w):
        from hlwq_kernels.ops.int4_triton import int4_quantize_pack

        packed, s = int4_quantize_pack(w, group_size, scale)
        return Int4Weight(packed, s, (n, k), group_size)
    wg = w.float().reshape(n, k // group_size, group_size)
    if scale == "absmax":  # max|w| / 7.5 as absmax_scale, from the float32 copy made anyway
        s32 = _store(_div(wg.abs().amax(dim=-1), ABSMAX_DIVISOR), w.dtype)
    else:
        s32 = _mse_scale_torch(w, group_size).float()
    return Int4Weight(_pack_nibbles(_stored_codes(wg, s32)), s32.to(w.dtype), (n, k), group_size)


def dequantize_int4(q: Int4Weight, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``(u - 8) * scale`` computed in float32, cast to ``dtype`` (default: the scale's dtype)."""
    n, k = check_int4_weight(q, "for an Int4AsymWeight use dequantize_int4_asym")
    if dtype is not None:
        check_float_dtype(dtype)
    codes = unpack_int4(q.packed, k).float().reshape(n, k // q.group_size, q.group_size)
    w = codes.mul_(q.scale.float().unsqueeze(-1)).reshape(n, k)
    return w.to(dtype or q.scale.dtype)
