"""Asymmetric group INT4 (scale and integer zero point per group), compressed-tensors ``pack-quantized``
with ``symmetric: false``, NumPy reference.

A weight ``w`` ``[N, K]`` is split along ``K`` into groups of ``g`` columns; each group has a scale
``s > 0`` (stored in the weight's dtype) and an integer zero point ``z`` in ``[-8, 7]`` (int8). Codes

    q = rint(clip(w / s + z, -8, 7))          (float32 quotient and sum, round half to even)

are stored as ``q + 8`` in 4-bit nibbles exactly like the symmetric format
(``hlwq_reference.numpy.int4.pack_int4``); the zero points are stored as ``z + 8`` packed along the
*output* dimension: word ``[i, j]`` of the int32 ``[ceil(N/8), K/g]`` tensor holds the zero points of
rows ``8i .. 8i+7`` of group ``j``, row ``8i`` least significant, missing rows as nibble 0.
Dequantization is ``w_hat = (q - z) * s``; real zero is always on the grid (``q = z``).

Rules for (s, z), per group; ``E = Σ λ (w - w_hat)²`` is the (importance-weighted) squared error:
- ``minmax``: compressed-tensors' rule. With ``lo = min(min w, 0)``, ``hi = max(max w, 0)`` and ``r()``
  rounding a float32 result to the weight dtype (its arithmetic in that dtype):
  ``s = r(r(hi - lo) / 15)``, ``z = rint(clip(r(-8 - r(lo / s)), -8, 7))``; then a zero scale becomes
  the dtype's epsilon. Where ``lo / s`` is ``0 / 0`` (an all-zero group) ``z = 0``.
- ``clip``: the min-max trial of each clip ratio ``1, 1 - CLIP_STEP, ...`` (``N_CLIP`` of them) applied
  to ``lo`` and ``hi``, then ``REFIT_STEPS`` least-squares refits of the best so far: given its codes,
  fit ``w ≈ a q + b`` (weighted), take ``z = rint(-b / a)`` clipped, then the best scale for that ``z``.
  A trial replaces the best only if its ``E`` is lower by the relative ``MARGIN``: never worse than
  minmax, per group.
- ``hqq``: half-quadratic splitting of ``F = Σ λ |w - w_hat|^p`` (``p = HQQ_P < 1``, robust to the
  few large errors): alternately ``e = shrink_p(w - w_hat, β)`` (the proximal step of ``|.|^p``, on
  errors measured in units of the min-max step), the zero point ``z = rint(Σ λ (q - (w - e) / s) / Σ λ)``
  and the scale fitting ``w - e`` by least squares, ``β ← κ β``; the best ``F`` seen is kept (same
  margin), so ``F`` is never above minmax's.
``importance`` ``λ`` (optional, per input channel, length ``K``, non-negative) weights both objectives;
without it ``λ = 1``.
"""

from __future__ import annotations

from typing import NamedTuple

import ml_dtypes
import numpy as np

from hlwq_reference.numpy.int4 import QMAX, QMIN, pack_int4, unpack_int4

MARGIN = 1e-4  # a trial must lower the objective by this relative amount to replace the best

__all__ = [
    "Int4AsymWeight",
    "minmax_params",
    "clip_params",
    "hqq_params",
    "asym_codes",
    "pack_zero_points",
    "unpack_zero_points",
    "quantize_int4_asym",
    "quantize_int4_asym_with_params",
    "dequantize_int4_asym",
    "group_sq_error",
    "group_lp_error",
    "clip_ratios",
]

# The format contract and the optimisers' settings; hlwq_kernels.ops.int4_asym imports these.
LEVELS = QMAX - QMIN  # 15 steps between the lowest and the highest code
N_CLIP = 8
CLIP_STEP = 0.04
REFIT_STEPS = 3
HQQ_P = 0.7
HQQ_BETA = 10.0
HQQ_KAPPA = 1.01
HQQ_ITERS = 20
METHODS = ("minmax", "clip", "hqq")

_DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32}


class Int4AsymWeight(NamedTuple):
    """Packed codes int32 ``[N, K/8]``, scales ``[N, K/g]``, zero points int8 ``[N, K/g]``, shape, group size."""

    packed: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    shape: tuple[int, int]
    group_size: int


def clip_ratios() -> np.ndarray:
    """The clip ratios of ``method="clip"``: ``1 - i * CLIP_STEP``, ``i < N_CLIP`` (float64)."""
    return 1.0 - np.arange(N_CLIP) * CLIP_STEP


def _dtype(w: np.ndarray, scale_dtype: str | None) -> np.dtype:
    if scale_dtype is not None:
        return np.dtype(_DTYPES[scale_dtype])
    return w.dtype if w.dtype in [np.dtype(t) for t in _DTYPES.values()] else np.dtype(np.float32)


def _groups(w: np.ndarray, group_size: int) -> np.ndarray:
    n, k = w.shape
    if k % group_size or group_size % 8:
        raise ValueError(f"K={k} must be a multiple of group_size={group_size}, itself a multiple of 8")
    return w.reshape(n, k // group_size, group_size)


def _weights(importance: np.ndarray | None, shape: tuple[int, int, int]) -> np.ndarray:
    """λ broadcast to the grouped shape ``[N, G, g]`` (ones without importance)."""
    if importance is None:
        return np.ones(shape[1:])
    return np.asarray(importance, dtype=np.float64).reshape(shape[1:])


def _round_to(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A float32 result rounded to ``dtype`` (what arithmetic in that dtype does), back in float32."""
    return np.asarray(x, dtype=np.float32).astype(dtype).astype(np.float32)


def _stored(s: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Scales rounded to the stored dtype (via float32); zeros become that dtype's epsilon."""
    stored = _round_to(s, dtype)
    return np.where(stored == 0, np.float32(ml_dtypes.finfo(dtype).eps), stored)


def minmax_params(w: np.ndarray, group_size: int = 128, scale_dtype: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """compressed-tensors' min-max (scale in the weight dtype, zero point int8), each ``[N, K/g]``."""
    dtype = _dtype(w, scale_dtype)
    wg = _groups(w, group_size).astype(np.float32)
    lo = np.minimum(wg.min(axis=-1), 0)
    hi = np.maximum(wg.max(axis=-1), 0)
    s = _round_to(_round_to(hi - lo, dtype) / np.float32(LEVELS), dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = _round_to(np.float32(QMIN) - _round_to(lo / s, dtype), dtype)
    z = np.where(np.isnan(z), 0, np.rint(np.clip(z, QMIN, QMAX)))
    return _stored(s, dtype).astype(dtype), z.astype(np.int8)


def _codes(wg: np.ndarray, s: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Codes of grouped weights for scales and zero points ``[N, G]``: float32 arithmetic, half to even."""
    y = wg.astype(np.float32) / s.astype(np.float32)[..., None] + z.astype(np.float32)[..., None]
    return np.rint(np.clip(y, QMIN, QMAX)).astype(np.float64)


def _residual(wg: np.ndarray, s: np.ndarray, z: np.ndarray) -> np.ndarray:
    q = _codes(wg, s, z)
    return wg.astype(np.float64) - (q - z[..., None]) * s.astype(np.float64)[..., None]


def _sq_error(wg: np.ndarray, s: np.ndarray, z: np.ndarray, lam: np.ndarray) -> np.ndarray:
    return (lam * _residual(wg, s, z) ** 2).sum(axis=-1)


def _lp_error(wg: np.ndarray, s: np.ndarray, z: np.ndarray, lam: np.ndarray) -> np.ndarray:
    return (lam * np.abs(_residual(wg, s, z)) ** HQQ_P).sum(axis=-1)


def group_sq_error(
    w: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, group_size: int, importance: np.ndarray | None = None
) -> np.ndarray:
    """``Σ λ (w - (q - z) s)²`` of each group ``[N, K/g]`` (float64; λ = 1 without importance)."""
    wg = _groups(w, group_size)
    return _sq_error(wg, np.asarray(scale), np.asarray(zero_point), _weights(importance, wg.shape))


def group_lp_error(
    w: np.ndarray, scale: np.ndarray, zero_point: np.ndarray, group_size: int, importance: np.ndarray | None = None
) -> np.ndarray:
    """HQQ's objective ``Σ λ |w - (q - z) s|^p`` (``p = HQQ_P``) of each group ``[N, K/g]``, float64."""
    wg = _groups(w, group_size)
    return _lp_error(wg, np.asarray(scale), np.asarray(zero_point), _weights(importance, wg.shape))


class _Best:
    """Per-group best (scale, zero point, objective); a trial wins only if lower by the relative MARGIN."""

    def __init__(self, objective, wg: np.ndarray, lam: np.ndarray, s: np.ndarray, z: np.ndarray) -> None:
        self.objective, self.wg, self.lam = objective, wg, lam
        self.s, self.z, self.e = s, z, objective(wg, s, z, lam)

    def offer(self, s: np.ndarray, z: np.ndarray) -> None:
        e = self.objective(self.wg, s, z, self.lam)
        better = e < self.e * (1 - MARGIN)
        self.s, self.z, self.e = np.where(better, s, self.s), np.where(better, z, self.z), np.where(better, e, self.e)


def _zero_point(zf: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    return np.where(np.isfinite(zf), np.rint(np.clip(np.nan_to_num(zf), QMIN, QMAX)), fallback)


def _scale_for(wg: np.ndarray, q: np.ndarray, z: np.ndarray, lam: np.ndarray, fallback: np.ndarray, dtype) -> np.ndarray:
    """Least-squares scale ``Σ λ w (q - z) / Σ λ (q - z)²`` (stored dtype); ``fallback`` where undefined."""
    d = q - z[..., None]
    num, den = (lam * wg * d).sum(axis=-1), (lam * d * d).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = num / den
    return np.where(np.isfinite(s) & (s > 0), _stored(s, dtype), fallback)


def _refit(wg: np.ndarray, s: np.ndarray, z: np.ndarray, lam: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares ``w ≈ a q + b`` on the codes of (s, z); ``z = rint(-b / a)``, then its best scale."""
    q = _codes(wg, s, z)
    w64 = wg.astype(np.float64)
    s0, s1, s2 = lam.sum(axis=-1), (lam * q).sum(axis=-1), (lam * q * q).sum(axis=-1)
    t0, t1 = (lam * w64).sum(axis=-1), (lam * w64 * q).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (s0 * t1 - s1 * t0) / (s0 * s2 - s1 * s1)
        zf = -(t0 - a * s1) / (s0 * a)
    z_new = np.where(a > 0, _zero_point(zf, z), z)
    return _scale_for(w64, q, z_new, lam, s, dtype), z_new


def clip_params(
    w: np.ndarray, group_size: int = 128, importance: np.ndarray | None = None, scale_dtype: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Clip-ratio search plus least-squares refits (see module docstring); never worse than minmax."""
    dtype = _dtype(w, scale_dtype)
    wg = _groups(w, group_size)
    lam = _weights(importance, wg.shape)
    s, z = minmax_params(w, group_size, scale_dtype)
    best = _Best(_sq_error, wg, lam, s.astype(np.float32), z.astype(np.float64))
    lo = np.minimum(wg.min(axis=-1), 0).astype(np.float64)
    hi = np.maximum(wg.max(axis=-1), 0).astype(np.float64)
    for ratio in clip_ratios()[1:]:
        s = _stored(ratio * (hi - lo) / LEVELS, dtype)
        best.offer(s, _zero_point(QMIN - ratio * lo / s, best.z))
    for _ in range(REFIT_STEPS):
        best.offer(*_refit(wg, best.s, best.z, lam, dtype))
    return best.s.astype(dtype), best.z.astype(np.int8)


def _shrink(x: np.ndarray, beta: float) -> np.ndarray:
    """Proximal step of ``|x|^p / β``-weighted: ``sign(x) max(|x| - |x|^(p-1) / β, 0)``."""
    with np.errstate(divide="ignore"):
        return np.sign(x) * np.maximum(np.abs(x) - np.abs(x) ** (HQQ_P - 1) / beta, 0)


def hqq_params(
    w: np.ndarray, group_size: int = 128, importance: np.ndarray | None = None, scale_dtype: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """HQQ-style half-quadratic updates of (zero point, scale) lowering ``Σ λ |w - w_hat|^p``."""
    dtype = _dtype(w, scale_dtype)
    wg = _groups(w, group_size)
    w64 = wg.astype(np.float64)
    lam = _weights(importance, wg.shape)
    s, z = minmax_params(w, group_size, scale_dtype)
    s, z = s.astype(np.float32), z.astype(np.float64)
    step = s.astype(np.float64)[..., None]  # errors are shrunk in units of the min-max step
    best = _Best(_lp_error, wg, lam, s, z)
    beta = HQQ_BETA
    for _ in range(HQQ_ITERS):
        q = _codes(wg, s, z)
        target = w64 - _shrink(_residual(wg, s, z) / step, beta) * step
        with np.errstate(divide="ignore", invalid="ignore"):
            zf = (lam * (q - target / s.astype(np.float64)[..., None])).sum(axis=-1) / lam.sum(axis=-1)
        z = _zero_point(zf, z)
        s = _scale_for(target, q, z, lam, s, dtype)
        beta *= HQQ_KAPPA
        best.offer(s, z)
    return best.s.astype(dtype), best.z.astype(np.int8)


def asym_codes(w: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """Codes in [-8, 7] (int8 ``[N, K]``) for per-group scales and zero points ``[N, K/g]``."""
    n, k = w.shape
    wg = _groups(w, k // scale.shape[1])
    return _codes(wg, np.asarray(scale), np.asarray(zero_point)).reshape(n, k).astype(np.int8)


def pack_zero_points(zero_point: np.ndarray) -> np.ndarray:
    """int8 zero points ``[N, G]`` in [-8, 7] → int32 ``[ceil(N/8), G]``, 8 rows a word, row 8i lowest."""
    n, g = zero_point.shape
    padded = np.full((-(-n // 8) * 8, g), QMIN, dtype=np.int8)  # padding packs to nibble 0
    padded[:n] = zero_point
    return np.ascontiguousarray(pack_int4(padded.T).T)


def unpack_zero_points(packed: np.ndarray, n: int) -> np.ndarray:
    """Inverse of ``pack_zero_points``: int8 ``[n, G]``."""
    return np.ascontiguousarray(unpack_int4(np.ascontiguousarray(packed.T), n).T)


def quantize_int4_asym_with_params(w: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> Int4AsymWeight:
    """Quantize ``w`` with the given scales and integer zero points (kept as given)."""
    group_size = w.shape[1] // scale.shape[1]
    return Int4AsymWeight(pack_int4(asym_codes(w, scale, zero_point)), scale, zero_point, tuple(w.shape), group_size)


def quantize_int4_asym(
    w: np.ndarray,
    group_size: int = 128,
    method: str = "minmax",
    importance: np.ndarray | None = None,
    scale_dtype: str | None = None,
) -> Int4AsymWeight:
    """Asymmetric group INT4 with ``method`` in ``METHODS`` (``importance`` only for clip and hqq)."""
    if method == "minmax":
        s, z = minmax_params(w, group_size, scale_dtype)
    else:
        rule = {"clip": clip_params, "hqq": hqq_params}[method]
        s, z = rule(w, group_size, importance, scale_dtype)
    return quantize_int4_asym_with_params(w, s, z)


def dequantize_int4_asym(q: Int4AsymWeight) -> np.ndarray:
    """``(q - z) * s`` in float64 ``[N, K]``."""
    n, k = q.shape
    codes = unpack_int4(q.packed, k).astype(np.float64).reshape(n, k // q.group_size, q.group_size)
    w = (codes - q.zero_point.astype(np.float64)[..., None]) * q.scale.astype(np.float64)[..., None]
    return w.reshape(n, k)
