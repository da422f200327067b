"""Symmetric group INT4 quantization in the compressed-tensors ``pack-quantized`` format, NumPy reference.

A weight ``w`` of shape ``[N, K]`` is split along ``K`` into groups of ``g`` columns, one scale ``s``
per group (stored in the weight's dtype). Codes ``q = rint(clip(w / s, -8, 7))`` (round half to
even) are stored as ``u = q + 8`` in ``[0, 15]``; column ``j`` of a row goes into int32 word
``j // 8``, nibble ``j % 8`` (column 0 in the least significant nibble). Dequantization is
``(u - 8) * s``.

Scales:
- ``"absmax"`` (compressed-tensors' rule): ``s = max|w_group| / 7.5`` computed in float32 and rounded
  to the stored dtype; an all-zero group gets that dtype's machine epsilon.
- ``"mse"``: per group, the stored scale with the least squared error among the clip ratios
  ``RATIOS = float32(1 - i * RATIO_STEP)`` of the absmax rule (``s = dtype(float32(amax * r) / 7.5)``
  in float32, so ``r = 1`` *is* the absmax scale), followed by ``LLOYD_STEPS`` Lloyd updates
  ``s = dtype(float32(Σ |w| |q| / Σ q²))`` from the best scale so far. Errors are compared exactly:
  ``Σ (w - q s)² = Σ w² + D(s)`` with ``D(s) = s (s Σ q² - 2 Σ |w| |q|)``, whose sums are exact in
  float64 (products of a weight and a code need at most 28 bits, and only weights with a non-zero
  code, within a few binades of ``s``, contribute), so ``D`` is exact for bfloat16 and float16
  scales and a single rounding of exact values for float32. A trial replaces the best scale only
  when its ``D`` is strictly lower; ties keep the earlier trial, so no group is ever worse than
  absmax, and every implementation (this one, the torch path, the Triton kernel) picks the same
  scale bit for bit.

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
N_RATIOS = 24
RATIO_STEP = 0.025
RATIOS = (1.0 - np.arange(N_RATIOS) * RATIO_STEP).astype(np.float32)
LLOYD_STEPS = 4

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


def _trial(wg: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(D, A, B)`` of stored scales ``s``: ``A = Σ |w| |q|``, ``B = Σ q²``, ``D = s (s B - 2 A)``."""
    q = np.abs(_group_codes(wg, s))
    a, b = (np.abs(wg.astype(np.float64)) * q).sum(axis=-1), (q * q).sum(axis=-1)
    s64 = s.astype(np.float64)
    return s64 * (s64 * b - 2 * a), a, b


def mse_scale(w: np.ndarray, group_size: int = 128, scale_dtype: str | None = None) -> np.ndarray:
    """Per-group scale minimising the squared error on the INT4 grid (see module docstring)."""
    dtype = _scale_dtype(w, scale_dtype)
    wg = _groups(w, group_size)
    amax = np.abs(wg.astype(np.float32)).max(axis=-1)
    best = None
    for t in range(N_RATIOS + LLOYD_STEPS):
        if t < N_RATIOS:
            s = _store(amax * RATIOS[t] / np.float32(ABSMAX_DIVISOR), dtype)
        else:  # Lloyd update of the best scale (kept where all its codes are 0)
            best_s, _, a, b = best
            s = _store(np.where(b > 0, a / np.where(b > 0, b, 1), best_s.astype(np.float64)), dtype)
        trial = (s, *_trial(wg, s))
        if best is None:
            best = trial
        else:  # strictly lower D replaces the best; ties keep the earlier trial
            better = trial[1] < best[1]
            best = tuple(np.where(better, new, old) for new, old in zip(trial, best))
    return best[0]


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
