"""Symmetric group INT4 quantization in the compressed-tensors ``pack-quantized`` format, NumPy reference.

A weight ``w`` of shape ``[N, K]`` is split along ``K`` into groups of ``g`` columns, one scale ``s``
per group (stored in the weight's dtype). Codes ``q = rint(clip(w / s, -8, 7))`` (round half to
even) are stored as ``u = q + 8`` in ``[0, 15]``; column ``j`` of a row goes into int32 word
``j // 8``, nibble ``j % 8`` (column 0 in the least significant nibble). Dequantization is
``(u - 8) * s``.

Scales:
- ``"absmax"`` (compressed-tensors' rule): ``s = max|w_group| / 7.5`` computed in float32 and rounded
  to the stored dtype; an all-zero group gets that dtype's machine epsilon.
- ``"mse"``: per group, the best of ``len(RATIOS)`` trial scales and of their least-squares refits.
  Trial ``t`` is the absmax scale for ``t = 0``, then ``dtype(float32(amax * m))`` with the multiplier
  ``m = trial_multipliers(RATIOS)[t] = float32(r / 7.5)`` of clip ratio ``r``. A trial's codes ``q`` give
  ``A = Σ |w| |q|``, ``B = Σ q²`` (exact float64 sums: a product of a weight and a code needs at most 28
  bits, and only weights with a non-zero code, within a few binades of ``s``, contribute) and its error
  ``Σ (w - q s)² = Σ w² + D``, ``D = s (s B - 2 A)``, exact for bfloat16 and float16 scales and a single
  rounding of exact values for float32. Its refit ``f = dtype(float32(A / B))`` (``s`` where ``B = 0``)
  has, with the same codes, the error ``Σ w² + F``, ``F = f (f B - 2 A)``, which its own codes can only
  lower wherever they are nearest codes. The trial with the strictly lowest ``D`` and the refit with the
  strictly lowest ``F`` are kept (ties keep the earlier); the refit wins when its error is strictly
  lower than that trial's ``D``, judged
  - for bfloat16 / float16 weights and scales by ``F``: the trial codes are then ``rint(|w| *
    float32(1 / s))`` of the exact product (the kernel's one fused multiply-add), and these, like the
    stored codes, are nearest codes to ``w / s`` (at exact half-integers both cost the same): a quotient
    of two 8- or 11-bit significands that is not a half-integer lies at least ``2**-14`` from one, far
    more than the product's ``2**-20`` error; so ``D`` is the stored codes' true error and the refit's
    true error is at most ``Σ w² + F``;
  - otherwise (float32) by the refit's own error, evaluated like a trial; float32 trials use the stored
    codes (``w / s`` in float32).
  So no group is ever worse than absmax, and every implementation (this one, the torch path, the Triton
  kernel) picks the same scale bit for bit. Groups whose absmax scale lies outside ``SEARCH_RANGE``
  (where ``1 / s`` could overflow) keep the absmax scale.

The code of ``w`` is defined by the float32 quotient ``w / s`` (IEEE division by the scale as stored),
which is what compressed-tensors' GPU path and our kernels compute; that is why ``codes`` divides in
float32 while everything else here is float64.
"""

from __future__ import annotations

from typing import NamedTuple

import ml_dtypes
import numpy as np

__all__ = [
    "Int4Weight",
    "absmax_scale",
    "mse_scale",
    "trial_multipliers",
    "int4_codes",
    "pack_int4",
    "unpack_int4",
    "quantize_int4",
    "quantize_int4_with_scale",
    "dequantize_int4",
    "group_sq_error",
]

# The format contract; hlwq_kernels.ops.int4 imports these rather than repeating them.
QMIN, QMAX = -8, 7
ABSMAX_DIVISOR = 7.5
# "mse": 4 trials and their refits (docs/int4.md: relative weight MSE within 0.5-0.9% of the earlier
# 24-ratio + 4-Lloyd-step search on real models, with a seventh of the trials)
RATIOS = np.array([1.0, 0.925, 0.875, 0.8], dtype=np.float32)
SEARCH_RANGE = (2.0**-100, 2.0**100)

_SCALE_DTYPES = {
    "bfloat16": ml_dtypes.bfloat16,
    "float16": np.float16,
    "float32": np.float32,
}


class Int4Weight(NamedTuple):
    """Packed codes (uint32 values in an int32 array ``[N, K/8]``), scales ``[N, K/g]``, shape, group size."""

    packed: np.ndarray
    scale: np.ndarray
    shape: tuple[int, int]
    group_size: int


def _scale_dtype(w: np.ndarray, scale_dtype: str | None) -> np.dtype:
    if scale_dtype is not None:
        return np.dtype(_SCALE_DTYPES[scale_dtype])
    if w.dtype in [np.dtype(t) for t in _SCALE_DTYPES.values()]:
        return w.dtype
    return np.dtype(np.float32)


def _groups(w: np.ndarray, group_size: int) -> np.ndarray:
    n, k = w.shape
    if k % group_size or group_size % 8:
        raise ValueError(f"K={k} must be a multiple of group_size={group_size}, itself a multiple of 8")
    return w.reshape(n, k // group_size, group_size)


def _store(s: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round float scales to the stored dtype (via float32); zeros become that dtype's epsilon."""
    stored = np.asarray(s, dtype=np.float32).astype(dtype)
    eps = np.asarray(ml_dtypes.finfo(dtype).eps, dtype=dtype)
    return np.where(stored == 0, eps, stored)


def absmax_scale(w: np.ndarray, group_size: int = 128, scale_dtype: str | None = None) -> np.ndarray:
    """compressed-tensors' scale: ``max|w| / 7.5`` per group in float32, stored in the weight dtype."""
    amax = np.abs(_groups(w, group_size).astype(np.float32)).max(axis=-1)
    return _store(amax / np.float32(ABSMAX_DIVISOR), _scale_dtype(w, scale_dtype))


def _group_codes(wg: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Codes of grouped weights ``[N, G, g]`` for scales ``[N, G]`` (float32 quotient, half to even)."""
    quotient = wg.astype(np.float32) / s.astype(np.float32)[..., None]
    return np.rint(np.clip(quotient, QMIN, QMAX)).astype(np.float64)


def _group_error(wg: np.ndarray, s: np.ndarray) -> np.ndarray:
    q = _group_codes(wg, s)
    d = wg.astype(np.float64) - q * s.astype(np.float64)[..., None]
    return (d * d).sum(axis=-1)


def group_sq_error(w: np.ndarray, scale: np.ndarray, group_size: int = 128) -> np.ndarray:
    """Squared error ``Σ (w - q s)²`` of each group ``[N, K/g]`` when quantized with ``scale``."""
    return _group_error(_groups(w, group_size), np.asarray(scale))


def _trial(wg: np.ndarray, s: np.ndarray, exact: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(D, A, B)`` of stored scales ``s``: ``A = Σ |w| |q|``, ``B = Σ q²``, ``D = s (s B - 2 A)``, with the
    stored codes (``exact``) or ``rint(|w| * float32(1 / s))`` (see the module docstring)."""
    a = np.abs(wg.astype(np.float32))
    cap = np.where(wg < 0, -QMIN, QMAX)
    s32 = s.astype(np.float32)
    if exact:
        y = a / s32[..., None]
    else:
        y = a.astype(np.float64) * (np.float32(1) / s32).astype(np.float64)[..., None]
    q = np.minimum(np.rint(y), cap).astype(np.float64)
    a64 = a.astype(np.float64)
    sa, sb = (a64 * q).sum(axis=-1), (q * q).sum(axis=-1)
    s64 = s.astype(np.float64)
    return s64 * (s64 * sb - 2 * sa), sa, sb


def _lower(best: tuple | None, new: tuple) -> tuple:
    """Elementwise ``new`` where its error (second item) is strictly lower than ``best``'s."""
    if best is None:
        return new
    better = new[1] < best[1]
    return tuple(np.where(better, n, o) for n, o in zip(new, best))


def trial_multipliers(ratios: np.ndarray = RATIOS) -> np.ndarray:
    """``float32(r / 7.5)`` of each clip ratio: trial ``t > 0`` of ``"mse"`` is ``dtype(float32(amax * m[t]))``
    (``m[0]`` is unused: the first trial is the absmax scale)."""
    return (np.asarray(ratios, dtype=np.float32).astype(np.float64) / ABSMAX_DIVISOR).astype(np.float32)


def mse_scale(
    w: np.ndarray, group_size: int = 128, scale_dtype: str | None = None, ratios: np.ndarray = RATIOS
) -> np.ndarray:
    """Per-group scale minimising the squared error on the INT4 grid (see module docstring); ``ratios``
    (float32, 1 first; the first trial is the absmax scale whatever it says) replaces ``RATIOS``."""
    dtype = _scale_dtype(w, scale_dtype)
    sixteen = (np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16))
    exact = not (w.dtype in sixteen and dtype in sixteen)
    wg = _groups(w, group_size)
    amax = np.abs(wg.astype(np.float32)).max(axis=-1)
    best = refit = None
    with np.errstate(all="ignore"):  # groups outside SEARCH_RANGE are computed, then discarded
        absmax = _store(amax / np.float32(ABSMAX_DIVISOR), dtype)
        for t, m in enumerate(trial_multipliers(ratios)):
            s = absmax if t == 0 else _store(amax * m, dtype)
            d, a, b = _trial(wg, s, exact)
            best = _lower(best, (s, d))
            f = _store(np.where(b > 0, a / np.where(b > 0, b, 1), s.astype(np.float64)), dtype)
            f64 = f.astype(np.float64)
            refit = _lower(refit, (f, f64 * (f64 * b - 2 * a)))
        if exact:  # float32: the refit's own error decides
            refit = (refit[0], _trial(wg, refit[0], exact)[0])
        s = np.where(refit[1] < best[1], refit[0], best[0])
    in_range = (absmax.astype(np.float64) >= SEARCH_RANGE[0]) & (absmax.astype(np.float64) <= SEARCH_RANGE[1])
    return np.where(in_range, s, absmax)


def int4_codes(w: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """INT4 codes in [-8, 7] (int8 ``[N, K]``) of ``w`` with per-group ``scale`` ``[N, K/g]``."""
    n, k = w.shape
    group_size = k // scale.shape[1]
    return _group_codes(_groups(w, group_size), scale).reshape(n, k).astype(np.int8)


def pack_int4(q: np.ndarray) -> np.ndarray:
    """Pack codes in [-8, 7] ``[N, K]`` into int32 ``[N, K/8]``: column j → word j//8, nibble j%8."""
    n, k = q.shape
    if k % 8:
        raise ValueError(f"K={k} must be a multiple of 8 to pack 8 nibbles per int32 word")
    u = (q.astype(np.int64) + 8).reshape(n, k // 8, 8)
    words = (u << (4 * np.arange(8))).sum(axis=-1)
    return words.astype(np.uint32).view(np.int32)


def unpack_int4(packed: np.ndarray, k: int) -> np.ndarray:
    """Inverse of ``pack_int4``: int8 codes ``[N, k]``."""
    words = packed.view(np.uint32).astype(np.int64)
    u = (words[..., None] >> (4 * np.arange(8))) & 0xF
    return (u.reshape(packed.shape[0], -1)[:, :k] - 8).astype(np.int8)


def quantize_int4_with_scale(w: np.ndarray, scale: np.ndarray) -> Int4Weight:
    """Quantize ``w`` with the given per-group scales (kept as given)."""
    group_size = w.shape[1] // scale.shape[1]
    return Int4Weight(pack_int4(int4_codes(w, scale)), scale, tuple(w.shape), group_size)


def quantize_int4(
    w: np.ndarray, group_size: int = 128, scale: str = "absmax", scale_dtype: str | None = None
) -> Int4Weight:
    """Symmetric group INT4 quantization with ``"absmax"`` or ``"mse"`` scales."""
    rule = {"absmax": absmax_scale, "mse": mse_scale}[scale]
    return quantize_int4_with_scale(w, rule(w, group_size, scale_dtype))


def dequantize_int4(q: Int4Weight) -> np.ndarray:
    """``(u - 8) * scale`` in float64 ``[N, K]``."""
    n, k = q.shape
    codes = unpack_int4(q.packed, k).astype(np.float64).reshape(n, k // q.group_size, q.group_size)
    return (codes * q.scale.astype(np.float64)[..., None]).reshape(n, k)
