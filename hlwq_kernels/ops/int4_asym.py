"""Asymmetric group INT4 (scale + integer zero point per group): compressed-tensors ``pack-quantized``
with ``symmetric: false``, which vLLM serves through its WNA16 kernels (``uint4`` with zero points).

A weight ``w`` ``[N, K]`` (bf16, fp16 or fp32) has, per group of ``group_size`` columns, a scale ``s``
in the weight's dtype and a zero point ``z``, an integer in ``[-8, 7]`` (int8). Codes
``q = rint(clamp(w / s + z, -8, 7))`` (float32 quotient by the stored scale, float32 sum, half to
even: compressed-tensors' GPU ``quantize``) are packed as ``q + 8`` like the symmetric format
(``hlwq_kernels.ops.int4.pack_int4``); zero points as ``z + 8``, 8 consecutive *rows* per int32
(``pack_zero_points``: ``[ceil(N/8), K/g]``). Dequantization is ``(q - z) * s``.

``method`` chooses (s, z) per group (details and the exact rules: ``hlwq_reference.numpy.int4_asym``):
- ``"minmax"``: compressed-tensors' own rule, bit for bit (its ``calculate_qparams``);
- ``"clip"``: clip-ratio search and least-squares refits, never worse than minmax in squared error;
- ``"hqq"``: half-quadratic updates lowering ``Σ |w - w_hat|^0.7``, never worse than minmax in it.
``importance`` (``clip``, ``hqq``): non-negative weights per input channel ``[K]``, e.g. the squared
RMSNorm weight feeding the layer; the objective becomes ``Σ λ_k (...)`` and the guarantee holds for it.

CUDA tensors with ``method="minmax"`` or ``"clip"`` use the fused Triton kernels (``int4_asym_triton``:
one read of the weight; codes, scales and packed zero points out; ``clip`` agrees with this path by
its objective, not bit for bit: docs/int4_asym.md); ``hqq`` and CPU tensors run the vectorized torch
path below (on the tensor's device, in row chunks). ``backend="triton"`` on CPU runs the kernels in
Triton's interpreter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from hlwq_kernels.ops._triton import use_triton
from hlwq_kernels.ops._checks import as_int, check_float_dtype, check_tensor
from hlwq_kernels.ops.int4 import _check_weight, _div, check_int4_shape, check_int4_weight, pack_int4, unpack_int4
from hlwq_reference.numpy.int4 import QMAX, QMIN
from hlwq_reference.numpy.int4_asym import (
    MARGIN,
    HQQ_BETA,
    HQQ_ITERS,
    HQQ_KAPPA,
    HQQ_P,
    LEVELS,
    METHODS,
    REFIT_STEPS,
    clip_ratios,
)

__all__ = [
    "Int4AsymWeight",
    "quantize_int4_asym",
    "quantize_int4_asym_with_params",
    "dequantize_int4_asym",
    "minmax_params",
    "asym_codes",
    "pack_zero_points",
    "unpack_zero_points",
]

_CHUNK_ELEMENTS = {"cpu": 1 << 19, "cuda": 1 << 26}  # elements per step of the torch path (cache-sized on CPU)


@dataclass(frozen=True)
class Int4AsymWeight:
    """A weight in compressed-tensors' asymmetric ``pack-quantized`` layout."""

    packed: torch.Tensor  # int32 [N, K/8], nibbles q + 8           -> <m>.weight_packed
    scale: torch.Tensor  # [N, K/g], the weight's dtype               -> <m>.weight_scale
    zero_point_packed: torch.Tensor  # int32 [ceil(N/8), K/g], z + 8  -> <m>.weight_zero_point
    shape: tuple[int, int]  # (N, K)                                  -> <m>.weight_shape
    group_size: int

    def zero_points(self) -> torch.Tensor:
        """The zero points, int8 ``[N, K/g]`` in [-8, 7]."""
        return unpack_zero_points(self.zero_point_packed, self.shape[0])


def _check_importance(importance: torch.Tensor, k: int, device: torch.device) -> torch.Tensor:
    if not isinstance(importance, torch.Tensor) or importance.ndim != 1 or importance.shape[0] != k:
        got = tuple(importance.shape) if isinstance(importance, torch.Tensor) else type(importance).__name__
        raise ValueError(f"importance must be a 1-D tensor of K={k} per-input-channel weights, got {got}")
    if importance.is_complex() or importance.dtype == torch.bool:
        raise TypeError(f"importance must be real numbers, got {importance.dtype}")
    lam = importance.to(device=device, dtype=torch.float32)
    if not bool(torch.isfinite(lam).all()) or bool((lam < 0).any()):
        raise ValueError("importance weights must be finite and non-negative")
    return lam


def _check_params(w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> int:
    """Validate per-group scales and zero points for ``w``; return the group size."""
    check_tensor(w, "weight")
    n, k = check_int4_shape(tuple(w.shape), 8)
    for name, t in (("scale", scale), ("zero_point", zero_point)):
        if check_tensor(t, name).ndim != 2 or t.shape[0] != n or t.shape[1] == 0 or k % t.shape[1] or t.shape != scale.shape:
            raise ValueError(f"{name} shape {tuple(t.shape)} must be [N, K/group_size] for weight shape {(n, k)}")
    if not scale.dtype.is_floating_point or not bool(torch.isfinite(scale).all()) or not bool((scale > 0).all()):
        raise ValueError(f"scales must be finite, positive floating-point values (got {scale.dtype})")
    if zero_point.dtype.is_floating_point or zero_point.dtype == torch.bool:
        raise TypeError(f"zero points must be integers in [-8, 7], got {zero_point.dtype}")
    if int(zero_point.min()) < QMIN or int(zero_point.max()) > QMAX:
        raise ValueError("zero points must lie in [-8, 7]")
    return k // scale.shape[1]


# --- per-group arithmetic on float32 groups wg [n, G, g]; s, z are float32 [n, G] (z integer-valued) ---


def _round_to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A float32 result rounded to ``dtype`` and back: what arithmetic in ``dtype`` does."""
    return x if dtype == torch.float32 else x.to(dtype).float()


def _stored(s: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Scales (any float dtype) as stored in ``dtype``, in float32; zeros become its epsilon."""
    stored = _round_to(s.float(), dtype)
    return torch.where(stored == 0, torch.finfo(dtype).eps, stored)


def _minmax(wg: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    lo = wg.amin(dim=-1).clamp_(max=0)
    hi = wg.amax(dim=-1).clamp_(min=0)
    s = _round_to(_div(_round_to(hi - lo, dtype), LEVELS), dtype)  # IEEE division on CUDA too
    z = _round_to(QMIN - _round_to(lo / s, dtype), dtype)
    z = torch.where(z.isnan(), 0.0, z.clamp(QMIN, QMAX).round())  # 0 / 0: an all-zero group
    return torch.where(s == 0, torch.finfo(dtype).eps, s), z


def _codes(wg: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Float codes ``rint(clamp(w / s + z, -8, 7))`` of the groups."""
    return (wg / s.unsqueeze(-1)).add_(z.unsqueeze(-1)).clamp_(QMIN, QMAX).round_()


def _residual(wg: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``(q - z) s - w`` (the error with its sign flipped, to reuse the codes' buffer)."""
    return _codes(wg, s, z).sub_(z.unsqueeze(-1)).mul_(s.unsqueeze(-1)).sub_(wg)


def _weighted_sum(x: torch.Tensor, lam: torch.Tensor | None) -> torch.Tensor:
    return (x if lam is None else x.mul_(lam)).sum(dim=-1)


def _sq_error(wg: torch.Tensor, s: torch.Tensor, z: torch.Tensor, lam: torch.Tensor | None) -> torch.Tensor:
    return _weighted_sum(_residual(wg, s, z).square_(), lam)


def _lp_error(wg: torch.Tensor, s: torch.Tensor, z: torch.Tensor, lam: torch.Tensor | None) -> torch.Tensor:
    return _weighted_sum(_residual(wg, s, z).abs_().pow_(HQQ_P), lam)


class _Best:
    """Per-group best (scale, zero point, objective); a trial wins only if lower by the relative MARGIN
    (float32 sums of a group are far more accurate than that, so the float64 order agrees)."""

    def __init__(self, objective: Callable, wg: torch.Tensor, lam: torch.Tensor | None, s: torch.Tensor, z: torch.Tensor) -> None:
        self.objective, self.wg, self.lam = objective, wg, lam
        self.s, self.z, self.e = s, z, objective(wg, s, z, lam)

    def offer(self, s: torch.Tensor, z: torch.Tensor) -> None:
        e = self.objective(self.wg, s, z, self.lam)
        better = e < self.e * (1 - MARGIN)
        self.s, self.z, self.e = torch.where(better, s, self.s), torch.where(better, z, self.z), torch.where(better, e, self.e)


def _sums(x: torch.Tensor, q: torch.Tensor, lam: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``Σ λ x`` and ``Σ λ x q`` per group, float64."""
    lx = x if lam is None else x * lam
    return lx.sum(dim=-1).double(), (lx * q).sum(dim=-1).double()


def _zero_point(zf: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    return torch.where(zf.isfinite(), zf.nan_to_num().clamp(QMIN, QMAX).round(), fallback.double()).float()


def _scale_given_zero(
    t0: torch.Tensor, t1: torch.Tensor, q1: torch.Tensor, q2: torch.Tensor, n0: torch.Tensor,
    z: torch.Tensor, fallback: torch.Tensor, dtype: torch.dtype,
) -> torch.Tensor:
    """Least-squares scale ``Σ λ t (q - z) / Σ λ (q - z)²`` from the sums (``n0 = Σ λ``, ``q1 = Σ λ q``,
    ``q2 = Σ λ q²``, ``t0 = Σ λ t``, ``t1 = Σ λ t q``); ``fallback`` where it is not positive and finite."""
    zd = z.double()
    s = (t1 - zd * t0) / (q2 - 2 * zd * q1 + zd * zd * n0)
    return torch.where(s.isfinite() & (s > 0), _stored(s, dtype), fallback)


def _code_sums(q: torch.Tensor, lam: torch.Tensor | None, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``Σ λ``, ``Σ λ q``, ``Σ λ q²`` per group, float64."""
    n0 = torch.full(q.shape[:-1], float(group_size), dtype=torch.float64, device=q.device) if lam is None else lam.sum(-1).double().expand(q.shape[:-1])
    q1, q2 = _sums(q, q, lam)
    return n0, q1, q2


def _refit(wg: torch.Tensor, s: torch.Tensor, z: torch.Tensor, lam: torch.Tensor | None, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted least squares ``w ≈ a q + b`` on the codes of (s, z): ``z = rint(-b / a)``, then its scale."""
    q = _codes(wg, s, z)
    n0, q1, q2 = _code_sums(q, lam, wg.shape[-1])
    t0, t1 = _sums(wg, q, lam)
    a = (n0 * t1 - q1 * t0) / (n0 * q2 - q1 * q1)
    z_new = torch.where(a > 0, _zero_point(-(t0 - a * q1) / (n0 * a), z), z)
    return _scale_given_zero(t0, t1, q1, q2, n0, z_new, s, dtype), z_new


def _clip(wg: torch.Tensor, dtype: torch.dtype, lam: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    best = _Best(_sq_error, wg, lam, *_minmax(wg, dtype))
    lo = wg.amin(dim=-1).clamp_(max=0).double()
    hi = wg.amax(dim=-1).clamp_(min=0).double()
    for ratio in clip_ratios()[1:].tolist():
        s = _stored(ratio * (hi - lo) / LEVELS, dtype)
        best.offer(s, _zero_point(QMIN - ratio * lo / s, best.z))
    for _ in range(REFIT_STEPS):
        best.offer(*_refit(wg, best.s, best.z, lam, dtype))
    return best.s, best.z


def _hqq(wg: torch.Tensor, dtype: torch.dtype, lam: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    s, z = _minmax(wg, dtype)
    step = s.unsqueeze(-1).clone()  # errors are shrunk in units of the min-max step
    best = _Best(_lp_error, wg, lam, s, z)
    beta = HQQ_BETA
    for _ in range(HQQ_ITERS):
        q = _codes(wg, s, z)
        r = (q - z.unsqueeze(-1)).mul_(s.unsqueeze(-1)).sub_(wg).neg_().div_(step)  # w - w_hat, in steps
        shrink = r.abs().sub_(r.abs().pow_(HQQ_P - 1).div_(beta)).clamp_(min=0).copysign_(r)
        target = shrink.mul_(step).neg_().add_(wg)  # w - e
        n0, q1, q2 = _code_sums(q, lam, wg.shape[-1])
        t0, t1 = _sums(target, q, lam)
        z = _zero_point((q1 - t0 / s.double()) / n0, z)  # Σ λ (q - t / s) / Σ λ
        s = _scale_given_zero(t0, t1, q1, q2, n0, z, s, dtype)
        beta *= HQQ_KAPPA
        best.offer(s, z)
    return best.s, best.z


_RULES = {"minmax": lambda wg, dtype, lam: _minmax(wg, dtype), "clip": _clip, "hqq": _hqq}


def _row_chunks(w: torch.Tensor) -> tuple[range, int]:
    rows = max(1, _CHUNK_ELEMENTS.get(w.device.type, 1 << 26) // w.shape[1])
    return range(0, w.shape[0], rows), rows


def _quantize_torch(
    w: torch.Tensor, group_size: int, rule: Callable, lam: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(packed codes, scales in w.dtype, zero points int8), computed per chunk of rows."""
    n, k = w.shape
    ng = k // group_size
    packed = torch.empty((n, k // 8), dtype=torch.int32, device=w.device)
    scale = torch.empty((n, ng), dtype=w.dtype, device=w.device)
    zero = torch.empty((n, ng), dtype=torch.int8, device=w.device)
    lam_g = None if lam is None else lam.reshape(ng, group_size)
    starts, rows = _row_chunks(w)
    for r0 in starts:
        wg = w[r0 : r0 + rows].float().reshape(-1, ng, group_size)
        s, z = rule(wg, w.dtype, lam_g)
        scale[r0 : r0 + rows] = s.to(w.dtype)
        zero[r0 : r0 + rows] = z.to(torch.int8)
        packed[r0 : r0 + rows] = pack_int4(_codes(wg, s, z).reshape(-1, k).to(torch.int8))
    return packed, scale, zero


def minmax_params(w: torch.Tensor, group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """compressed-tensors' min-max: scales ``[N, K/g]`` in ``w.dtype`` and int8 zero points in [-8, 7]."""
    n, k = _check_weight(w, group_size)
    s, z = _minmax(w.float().reshape(n, k // group_size, group_size), w.dtype)
    return s.to(w.dtype), z.to(torch.int8)


def asym_codes(w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """Codes in [-8, 7] (int8 ``[N, K]``) of ``w`` for per-group scales and zero points ``[N, K/g]``."""
    group_size = _check_params(w, scale, zero_point)
    n, k = _check_weight(w, group_size)
    wg = w.float().reshape(n, k // group_size, group_size)
    return _codes(wg, scale.float(), zero_point.float()).reshape(n, k).to(torch.int8)


def pack_zero_points(zero_point: torch.Tensor) -> torch.Tensor:
    """int8 zero points ``[N, G]`` in [-8, 7] → int32 ``[ceil(N/8), G]``: word ``[i, j]`` holds rows
    ``8i .. 8i+7`` of group ``j`` as ``z + 8``, row ``8i`` least significant, missing rows as 0."""
    if not isinstance(zero_point, torch.Tensor) or zero_point.ndim != 2:
        raise ValueError(f"pack_zero_points needs zero points of shape [N, G], got {getattr(zero_point, 'shape', zero_point)}")
    n, g = zero_point.shape
    padded = torch.full((-(-n // 8) * 8, g), QMIN, dtype=torch.int8, device=zero_point.device)
    padded[:n] = zero_point
    return pack_int4(padded.T).T.contiguous()


def unpack_zero_points(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of ``pack_zero_points``: int8 ``[n, G]``."""
    n = as_int(n, "n", 0)
    if not isinstance(packed, torch.Tensor) or packed.ndim != 2 or packed.shape[0] * 8 < n:
        raise ValueError(f"unpack_zero_points needs int32 words [>= n/8, G] for n={n}, got {getattr(packed, 'shape', packed)}")
    return unpack_int4(packed.T.contiguous(), n).T.contiguous()


def quantize_int4_asym_with_params(
    w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor
) -> Int4AsymWeight:
    """Quantize ``w`` ``[N, K]`` with given scales ``[N, K/g]`` (stored as given) and integer zero points."""
    group_size = _check_params(w, scale, zero_point)
    packed = pack_int4(asym_codes(w, scale, zero_point))
    return Int4AsymWeight(packed, scale, pack_zero_points(zero_point.to(torch.int8)), tuple(w.shape), group_size)


def quantize_int4_asym(
    w: torch.Tensor,
    group_size: int = 128,
    method: str = "minmax",
    importance: torch.Tensor | None = None,
    backend: str = "auto",
) -> Int4AsymWeight:
    """Asymmetric group INT4 of ``w`` ``[N, K]``; ``method`` in ``("minmax", "clip", "hqq")``."""
    n, k = _check_weight(w, group_size)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if importance is not None and method == "minmax":
        raise ValueError("importance weights need method='clip' or 'hqq' (minmax has nothing to optimise)")
    lam = None if importance is None else _check_importance(importance, k, w.device)
    kernel = use_triton(backend, w)  # validates backend
    if kernel and method == "hqq" and backend == "triton":
        raise ValueError("the Triton kernels compute method='minmax' and 'clip' only; use backend='torch' for 'hqq'")
    if kernel and method != "hqq":  # minmax bit-exact; clip the same rule, float32 sums in another order (docs/int4_asym.md)
        from hlwq_kernels.ops.int4_asym_triton import int4_asym_clip_pack, int4_asym_minmax_pack

        if method == "minmax":
            packed, scale, zero_packed = int4_asym_minmax_pack(w, group_size)
        else:
            packed, scale, zero_packed = int4_asym_clip_pack(w, group_size, None if lam is None else lam.contiguous())
        return Int4AsymWeight(packed, scale, zero_packed, (n, k), group_size)
    packed, scale, zero = _quantize_torch(w, group_size, _RULES[method], lam)
    return Int4AsymWeight(packed, scale, pack_zero_points(zero), (n, k), group_size)


def dequantize_int4_asym(q: Int4AsymWeight, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``(q - z) * s`` computed in float32 (exact), cast to ``dtype`` (default: the scale's dtype)."""
    n, k = check_int4_weight(q, "for a symmetric Int4Weight use dequantize_int4", Int4AsymWeight)
    zp = check_tensor(q.zero_point_packed, "q.zero_point_packed")
    if zp.dtype != torch.int32 or tuple(zp.shape) != (-(-n // 8), k // q.group_size):
        raise ValueError(f"Int4AsymWeight of shape {(n, k)} needs int32 zero_point_packed {[-(-n // 8), k // q.group_size]}"
                         f", got {zp.dtype} {list(zp.shape)}")
    if dtype is not None:
        check_float_dtype(dtype)
    codes = unpack_int4(q.packed, k).float().reshape(n, k // q.group_size, q.group_size)
    z = q.zero_points().float().unsqueeze(-1)
    return ((codes - z) * q.scale.float().unsqueeze(-1)).reshape(n, k).to(dtype or q.scale.dtype)
