"""Fused INT4 group quantize + pack kernel: weight [N, K] -> int32 words [N, K/8] and scales [N, K/g].

One program owns ``BLOCK_N`` rows x ``BLOCK_G`` groups. A group is read in ``G // CHUNK`` chunks of a
power-of-two width; when it fits in one chunk the tile stays in registers and the weight is read
from memory exactly once, whatever the scale rule. The tile is held as ``[BLOCK_N, BLOCK_G, SEGS,
CHUNK // SEGS]`` so that a group is spread over few threads (``lanes``) and the per-group work each
of them repeats is amortized over many weights (see ``hlwq_kernels.ops.int4_asym_triton``).
Semantics (scale rules, rounding, nibble order) are those of ``hlwq_kernels.ops.int4`` and ``hlwq_reference.numpy.int4``, bit for bit:

- the quotient ``w / s`` is the correctly rounded float32 division, computed from one reciprocal per
  group with ``div_exact`` (``tl.div_rn`` for a tile whose scales fall outside its range);
- ``scale="mse"`` runs ``len(RATIOS)`` trials on the tile in registers (unrolled for the integer sums below, a
  loop otherwise). A trial's codes are one fused multiply-add a weight for bf16/fp16,
  ``fma(|w|, 1/s, 1.5 * 2**23) - 1.5 * 2**23 = rint(|w| * (1/s))`` of the exact product (the reference's trial codes), the stored codes (exact
  quotient) for fp32, then clamped to 7 or 8; ``A = Σ |w| |q|`` and ``B = Σ q² <= 64 n`` are exact:
  - bf16 groups of one chunk (``G`` a power of two <= 256) sum integers (``_jit.fixed_pairs``,
    ``_jit.trial_code_sums``). With ``2**E <= amax < 2**(E + 1)``, a weight with a non-zero code in any
    trial has ``|w| >= s / 2 > amax / 32 >= 2**(E - 5)`` (trial scales ``s >= amax / 15.1``: ratios
    ``>= MIN_RATIO``), so it is a multiple of ``2**(E - 12)`` (8-bit significands) below ``2**(E + 1)``: the
    16-bit integer ``f = rint(w * 2**(12 - E))`` (|f| <= 8160, one fused multiply-add a weight once a tile)
    is exactly ``w * 2**(12 - E)``; smaller weights get a rounded ``f`` but code 0. The trial code is the
    biased ``u = clamp(rint(w * (1/s)) + 8, 0, 15)`` (``fma(w, 1/s, 1.5 * 2**23 + 8)``: ``rint`` is odd, so
    ``u - 8`` is the signed code, clamped to [-8, 7] as the magnitude to 8 or 7); then
    ``A = (Σ f u - 8 Σ f) * 2**(E - 12)`` and ``B = Σ u (u - 16) + 64 G``, int32 sums (``|Σ f u| <= 8160 *
    15 * 256``) of which ``|A| 2**(12 - E) <= 8160 * 8 * 256 < 2**24``: float32 holds ``A`` and ``B``
    exactly (``2**(E - 12)`` is a normal power of two for every group the search keeps: ``SEARCH_RANGE``). The
    trial's reciprocal ``1/s`` and the refit ``A / B`` divide by bf16 scales and integers ``B <= 2**14``:
    ``_jit.short_reciprocal`` gets them exactly without the branches of IEEE division.
    With inline PTX (sm_90) two codes go into one register (``prmt``), are clamped together
    (``min.relu.s16x2``), four into one register as bytes (``prmt``), and ``dp2a`` / ``dp4a`` add their
    products with the paired ``f`` and with ``u - 16``: 13 instructions for 4 weights and a trial, against 20
    in float32 (code, its offset, clamp, two fused multiply-adds).
  - fp16 groups of one chunk the same way with ``f = rint(w * 2**(15 - E))``: 11-bit significands make a weight
    with a non-zero code a multiple of ``2**(E - 15)`` (an fp16 subnormal one too), so ``|f| < 2**16`` is exact
    for it but needs 17 bits. The words hold ``f >> 1`` (16 bits), the low bits ``f & 1`` are kept as bytes
    (``_jit.fixed_pairs(HALVED)``), and ``Σ f u = 2 Σ (f >> 1) u + Σ (f & 1) u``: one more ``dp4a`` for 4 weights
    and a trial. ``|A| 2**(15 - E) < 2**16 * 8 * 256`` no longer fits float32's significand: ``A`` is float64,
    and the refit ``A / B`` is divided in float64 as the reference does.
  - fp32 groups of one chunk the same way with ``f = w * 2**(29 - E)``, an integer below ``2**30`` for every weight
    that can get a non-zero code: fp32 trials keep the stored codes, and the last pass codes the best refit, which
    is at least half its trial's scale (every code ``q`` has ``|w| >= (|q| - 1/2) s``), so such weights are at least
    ``amax / 60 > 2**(E - 6)``, multiples of ``2**(E - 29)`` (24-bit significands). The words hold its signed upper
    and unsigned lower 16 bits (``_jit.fixed_pairs(HALVES)``), ``Σ f u = 2**16 Σ (f >> 16) u + Σ (f & 0xFFFF) u``:
    two more ``dp2a`` for 2 weights and a trial. The codes are those of the correctly rounded quotient
    ``(w 2**(29 - E)) / (s 2**(29 - E))`` (``div_exact``, exact without a branch in that scale:
    ``_jit.scale_trial_sums``); ``2**(29 - E)`` is a normal float32 for every group the search keeps
    (``amax >= 7.5 * 2**-100``, ``E >= -98``) and ``2**(E - 29)`` a float64.
  - otherwise (groups of several chunks) in float32 where that is exact, then in float64: a product of a bf16 weight and a code
    has at most 12 significant bits, and every weight with a non-zero code is at least ``s / 2``, so
    each product and partial sum of a chunk of ``n`` weights is a multiple of ``2**(e - 7)`` (``2**e``
    the binade below the smallest of them, ``> s / 4``) below ``8 n amax``, which float32 holds exactly
    while ``n amax / s <= 2**12``: chunks of 256 and trial ratios ``>= MIN_RATIO`` (``amax / s <= 15.1``).
    fp16 weights (groups of several chunks) are split into a bf16-exact high part and a 3-bit low part
    summed apart (the low sums' bound is 2**8 times looser); fp32 weights multiply in float64.
  The trial and refit errors ``D``, ``F`` are then compared exactly in float64.

bf16 weights with contiguous columns (``bf16_pairs``) are read as int32 words of two weights: packed min / max for the absmax and packed 16-bit clamps for the codes
(``_jit.bf16_pair_range``, ``_jit.pack_code_pairs``; inline PTX on sm_90, plain Triton elsewhere, as for the
"mse" integer sums).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from hlwq_kernels.ops._jit import (
    bf16_hi,
    bf16_lo,
    bf16_pair_range,
    div_exact,
    fixed_point_tile,
    group_quotient,
    group_sum,
    group_tile,
    group_word_pointers,
    int4_absmax_scale_cvt,
    pack_code_pairs,
    pack_codes,
    quotient_is_exact,
    reciprocal,
    rint,
    round_to_dtype_cvt,
    scale_trial_sums,
    short_reciprocal,
)
from hlwq_kernels.ops._triton import (
    PreparedCalls, cdiv, launch, next_power_of_2, require_triton, tensor_key, tl, triton,
)
from hlwq_reference.numpy.int4 import QMAX, QMIN, SEARCH_RANGE, trial_multipliers

__all__ = ["int4_quantize_pack", "FIXED_POINT_BITS", "MIN_RATIO", "bf16_pairs", "device_multipliers", "group_tiles", "packed_int16_ptx", "row_slabs"]

_MODES = {"given": 0, "absmax": 1, "mse": 2}
_MAX_CHUNK = 256
_MAX_GRID_Y = 65535  # CUDA's limit of grid axis 1
# Launch defaults, from sweeps on an H200 (bench/results/int4-h200-2026-12-02-b.md): 4 threads a
# group's chunk (each holds CHUNK / 4 contiguous weights), 1 warp, 1024 columns (8 groups of 128) a
# program. The MSE search (compute-bound) takes 2 threads a chunk: each thread's per-trial group work
# (reciprocal, refit, float64 errors) is spread over 64 weights (bench/results/int4-mse-h200-2026-12-02-c.md).
# (lanes, warps, columns a program) by rule
_LAUNCH = {"given": (4, 1, 1024), "absmax": (4, 1, 1024), "mse": (2, 1, 2048)}
# "mse" on fp32 and fp16 groups above one chunk (float sums): more registers a weight, 2 threads a chunk would
# spill. fp16 groups of one chunk sum integers as bf16 does and take its launch: 41.9-44.4% of clone against
# 36.9-38.3% (bench/results/int4-mse-fp16-h200-2026-12-03-t.md). fp32 groups of one chunk (integer sums in halves)
# take 4 threads a group and a group a thread's quarter (1 warp, 8 groups of 128): 38-39.5% of clone where 2 warps
# of 16 groups ran 30% and 2 threads a group 34-36% (bench/results/int4-mse-fp32-h200-2026-12-03-u.md)
_MSE_WIDE_LAUNCH = (4, 2, 2048)
_MSE_FP32_LAUNCH = (4, 1, 1024)
# "mse" trial codes and sums by weight dtype (module docstring): 0 bf16, 1 fp16, 2 fp32 (the integer sums' splits
# _jit.WHOLE, HALVED, HALVES)
_CODES = {torch.bfloat16: 0, torch.float16: 1, torch.float32: 2}
FIXED_POINT_BITS = {torch.bfloat16: 12, torch.float16: 15, torch.float32: 29}  # their fixed points (module docstring)
MIN_RATIO = 0.5  # the smallest "mse" trial ratio whose float32 sums are exact (module docstring)
_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2**23: fma(a, inv, _MAGIC) - _MAGIC = rint(a * inv) for |a * inv| < 2**22
_SEARCH_LO = tl.constexpr(SEARCH_RANGE[0])
_SEARCH_HI = tl.constexpr(SEARCH_RANGE[1])
_EPS = {dt: torch.finfo(dt).eps for dt in (torch.bfloat16, torch.float16, torch.float32)}
_MULTIPLIERS: dict[tuple, torch.Tensor] = {}
_PREPARED = PreparedCalls()  # default launches by input kind (_triton.PreparedCalls)


def device_multipliers(device: torch.device, ratios: tuple[float, ...] | None = None) -> torch.Tensor:
    """The float32 trial multipliers of ``scale="mse"`` (``trial_multipliers``) for ``RATIOS``, cached on
    ``device``, or for other ``ratios`` (1 first, none below ``MIN_RATIO``)."""
    if ratios is not None and min(ratios) < MIN_RATIO:
        raise ValueError(f"mse trial ratios must be at least {MIN_RATIO}, got {ratios}")
    key = (device, ratios)
    if key not in _MULTIPLIERS:
        m = trial_multipliers() if ratios is None else trial_multipliers(np.array(ratios, dtype=np.float32))
        _MULTIPLIERS[key] = torch.from_numpy(m).to(device)
    return _MULTIPLIERS[key]


@triton.jit
def _pair_sum(ue, uo):
    """Per-group sums of two tiles ``[BN, BG, SEGS, W2]`` -> ``[BN, BG]``: over the segments a thread holds
    first (chains of fused multiply-adds when ``ue``, ``uo`` are products), then the two, then across
    threads once."""
    return tl.sum(tl.sum(ue, axis=2) + tl.sum(uo, axis=2), axis=2)


@triton.jit
def _load_chunk(w_ptrs, c, mask4, stride_wk, CHUNK: tl.constexpr, PAIRS: tl.constexpr):
    """Chunk ``c`` of the tile: int32 words of bf16 pairs (``PAIRS``) or the weights as float32."""
    if PAIRS:
        x = tl.load(w_ptrs + c * (CHUNK // 2), mask=mask4, other=0)
    else:
        x = tl.load(w_ptrs + c * CHUNK * stride_wk, mask=mask4, other=0.0).to(tl.float32)
    return x


@triton.jit
def _even_odd(x, PAIRS: tl.constexpr):
    """float32 weights of the even and odd columns ``[BN, BG, SEGS, W // 2]`` of a loaded chunk."""
    if PAIRS:
        e, o = bf16_lo(x), bf16_hi(x)
    else:
        e, o = tl.split(tl.reshape(x, [x.shape[0], x.shape[1], x.shape[2], x.shape[3] // 2, 2]))
    return e, o


@triton.jit
def _cap(x, QMIN: tl.constexpr, QMAX: tl.constexpr):
    """The largest code magnitude of each weight: ``-QMIN`` below zero, ``QMAX`` otherwise."""
    return tl.where(x < 0.0, -QMIN, QMAX).to(tl.float32)


@triton.jit
def _trial_codes(a, cap, s4, inv4, fast, CODES: tl.constexpr):
    """Trial code magnitudes of weight magnitudes ``a`` (module docstring), clamped to ``cap``:
    ``rint(a * inv)`` of the exact product by one fused multiply-add (bf16, fp16), the stored codes (fp32)."""
    if CODES == 2:
        q = rint(tl.minimum(group_quotient(a, s4, inv4, fast), cap))
    else:
        q = tl.minimum(tl.fma(a, inv4, _MAGIC) - _MAGIC, cap)
    return q


@triton.jit
def _wide_products(a, q, CODES: tl.constexpr):
    """Per-group ``Σ a q`` in float64, exact: two float32 sums for fp16 weights (a bf16-exact high part
    and the 3-bit rest), float64 products for fp32."""
    if CODES == 1:
        hi = (a.to(tl.int32, bitcast=True) & -65536).to(tl.float32, bitcast=True)
        sa = group_sum(hi * q).to(tl.float64) + group_sum((a - hi) * q).to(tl.float64)
    else:
        sa = group_sum(a.to(tl.float64) * q.to(tl.float64))
    return sa


@triton.jit
def _trial_sums(xe, xo, w_ptrs, mask4, stride_wk, s, amax, NCHUNK: tl.constexpr, CHUNK: tl.constexpr,
                CODES: tl.constexpr, PAIRS: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr):
    """``(A, B) = (Σ |w| |q|, Σ q²)``, exact, of trial scales ``s`` [BN, BG] in floating point (the groups
    that ``_mse_scale`` does not sum in integers): ``A`` float64, ``B`` float32."""
    inv = reciprocal(s)
    if CODES == 2:
        fast = quotient_is_exact(s, inv, amax)
    else:
        fast = True
    s4 = s[:, :, None, None]
    inv4 = inv[:, :, None, None]
    sa = tl.zeros(s.shape, tl.float64)
    sb = tl.zeros(s.shape, tl.float32)
    for c in range(NCHUNK):
        if NCHUNK > 1:
            xe, xo = _even_odd(_load_chunk(w_ptrs, c, mask4, stride_wk, CHUNK, PAIRS), PAIRS)
        ae, ao = tl.abs(xe), tl.abs(xo)
        qe = _trial_codes(ae, _cap(xe, QMIN, QMAX), s4, inv4, fast, CODES)
        qo = _trial_codes(ao, _cap(xo, QMIN, QMAX), s4, inv4, fast, CODES)
        sb += _pair_sum(qe * qe, qo * qo)
        if CODES == 0:  # bf16: float32 sums of a chunk are exact (module docstring)
            sa += _pair_sum(ae * qe, ao * qo).to(tl.float64)
        else:
            sa += _wide_products(ae, qe, CODES) + _wide_products(ao, qo, CODES)
    return sa, sb


@triton.jit
def _lower(best_s, best_d, s, d):
    """``(s, d)`` where ``d`` is strictly lower than ``best_d``, else the best so far."""
    better = d < best_d
    return tl.where(better, s, best_s), tl.where(better, d, best_d)


@triton.jit
def _sq_error_change(s, sa, sb):
    """``D = s (s B - 2 A)`` in float64 (exact for bf16 / fp16 scales)."""
    s64 = s.to(tl.float64)
    return s64 * (s64 * sb.to(tl.float64) - 2.0 * sa.to(tl.float64))


@triton.jit
def _trial_scale(amax, absmax, mult_ptr, t, eps, DT: tl.constexpr, PTX: tl.constexpr):
    """Trial ``t``'s scale: ``absmax`` for ``t == 0``, else ``DT(amax * mult[t])`` (0 -> ``eps``)."""
    s = round_to_dtype_cvt(amax * tl.load(mult_ptr + t), DT, PTX)
    return tl.where(t == 0, absmax, tl.where(s == 0.0, eps, s))


@triton.jit
def _keep_best(s, sa, sb, best_s, best_d, refit_s, refit_d, eps, DT: tl.constexpr, PTX: tl.constexpr):
    """The best trial and the best refit so far, given trial scale ``s`` and its sums ``A``, ``B``: the refit
    ``DT(A / B)`` (``s`` where ``B = 0``) by its float64 error ``F`` and ``s`` by ``D``."""
    best_s, best_d = _lower(best_s, best_d, s, _sq_error_change(s, sa, sb))
    if sa.dtype == tl.float32:  # bf16 integer sums: float32(A / B) as computed in float64 (53 >= 2 * 24 + 2
        b = tl.maximum(sb, 1.0)  # bits); B is an integer < 2**15
        f = div_exact(sa, b, short_reciprocal(b, PTX))
    else:
        f = (sa / tl.maximum(sb, 1.0).to(tl.float64)).to(tl.float32)
    f = round_to_dtype_cvt(f, DT, PTX)
    f = tl.where(sb > 0.0, tl.where(f == 0.0, eps, f), s)
    refit_s, refit_d = _lower(refit_s, refit_d, f, _sq_error_change(f, sa, sb))
    return best_s, best_d, refit_s, refit_d


@triton.jit
def _group_trial_sums(xe, xo, w_ptrs, mask4, stride_wk, s, amax, fixed, up, down, INT_SUMS: tl.constexpr,
                      NCHUNK: tl.constexpr, CHUNK: tl.constexpr, CODES: tl.constexpr, PAIRS: tl.constexpr,
                      QMIN: tl.constexpr, QMAX: tl.constexpr, PTX: tl.constexpr):
    """``(A, B)`` of trial scales ``s`` [BN, BG]: integer sums (``INT_SUMS``: ``xe``, ``xo``, ``fixed``, ``up``,
    ``down`` from ``_jit.fixed_point_tile``), else ``_trial_sums``."""
    if INT_SUMS:
        sa, sb = scale_trial_sums(xe, xo, s, up, fixed, down, CODES, PTX)
    else:
        sa, sb = _trial_sums(xe, xo, w_ptrs, mask4, stride_wk, s, amax, NCHUNK, CHUNK, CODES, PAIRS, QMIN, QMAX)
    return sa, sb


@triton.jit
def _trial(xe, xo, w_ptrs, mask4, stride_wk, amax, absmax, mult_ptr, t, eps, fixed, up, down, best_s, best_d,
           refit_s, refit_d, INT_SUMS: tl.constexpr, DT: tl.constexpr, NCHUNK: tl.constexpr, CHUNK: tl.constexpr,
           CODES: tl.constexpr, PAIRS: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr, PTX: tl.constexpr):
    """Trial ``t`` of ``_search``: its scale, sums, and the best trial and refit so far (``_keep_best``)."""
    s = _trial_scale(amax, absmax, mult_ptr, t, eps, DT, PTX)
    sa, sb = _group_trial_sums(xe, xo, w_ptrs, mask4, stride_wk, s, amax, fixed, up, down, INT_SUMS, NCHUNK, CHUNK,
                               CODES, PAIRS, QMIN, QMAX, PTX)
    return _keep_best(s, sa, sb, best_s, best_d, refit_s, refit_d, eps, DT, PTX)


@triton.jit
def _search(xe, xo, w_ptrs, mask4, stride_wk, amax, absmax, mult_ptr, eps, fixed, up, down, INT_SUMS: tl.constexpr,
            DT: tl.constexpr, N_RATIOS: tl.constexpr, NCHUNK: tl.constexpr, CHUNK: tl.constexpr, CODES: tl.constexpr,
            PAIRS: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr, PTX: tl.constexpr):
    """``_mse_scale``'s trials and refits by integer sums (``INT_SUMS``; unrolled: no branch in them, bf16 50.1-52.6%
    of clone on an H200 against 47.8-50.5% as a loop) or float sums (a loop: unrolled, float fp16 ran 16% and fp32 7%
    slower; bench/results/int4-mse-h200-2026-12-03-s.md) -> the better of the best trial and the best refit."""
    best_s = absmax
    best_d = tl.full(amax.shape, float("inf"), tl.float64)
    refit_s = absmax
    refit_d = tl.full(amax.shape, float("inf"), tl.float64)
    if INT_SUMS:
        for t in tl.static_range(N_RATIOS):
            best_s, best_d, refit_s, refit_d = _trial(
                xe, xo, w_ptrs, mask4, stride_wk, amax, absmax, mult_ptr, t, eps, fixed, up, down, best_s, best_d,
                refit_s, refit_d, INT_SUMS, DT, NCHUNK, CHUNK, CODES, PAIRS, QMIN, QMAX, PTX)
    else:
        for t in range(N_RATIOS):
            best_s, best_d, refit_s, refit_d = _trial(
                xe, xo, w_ptrs, mask4, stride_wk, amax, absmax, mult_ptr, t, eps, fixed, up, down, best_s, best_d,
                refit_s, refit_d, INT_SUMS, DT, NCHUNK, CHUNK, CODES, PAIRS, QMIN, QMAX, PTX)
    if CODES == 2:  # float32: the refit's own error decides
        sa, sb = _group_trial_sums(xe, xo, w_ptrs, mask4, stride_wk, refit_s, amax, fixed, up, down, INT_SUMS, NCHUNK,
                                   CHUNK, CODES, PAIRS, QMIN, QMAX, PTX)
        refit_d = _sq_error_change(refit_s, sa, sb)
    return tl.where(refit_d < best_d, refit_s, best_s)


@triton.jit
def _mse_scale(xe, xo, w_ptrs, mask4, stride_wk, amax, mult_ptr, eps, DT: tl.constexpr, N_RATIOS: tl.constexpr,
               NCHUNK: tl.constexpr, CHUNK: tl.constexpr, CODES: tl.constexpr, BITS: tl.constexpr, PAIRS: tl.constexpr,
               QMIN: tl.constexpr, QMAX: tl.constexpr, PTX: tl.constexpr):
    """The ``"mse"`` scales [BN, BG] of ``hlwq_reference.numpy.int4.mse_scale``: ratio trials (0: the absmax
    scale) and their refits, the best of each kept by exact float64 errors (``D`` and ``F`` there). Groups of one
    chunk sum integers (module docstring): the fixed-point weights once, then each trial."""
    absmax = int4_absmax_scale_cvt(amax, eps, DT, PTX)
    if NCHUNK == 1:
        xs_e, xs_o, fixed, up, down = fixed_point_tile(xe, xo, amax, BITS, CODES, PTX)
        s = _search(xs_e, xs_o, w_ptrs, mask4, stride_wk, amax, absmax, mult_ptr, eps, fixed, up, down, True, DT,
                    N_RATIOS, NCHUNK, CHUNK, CODES, PAIRS, QMIN, QMAX, PTX)
    else:
        s = _search(xe, xo, w_ptrs, mask4, stride_wk, amax, absmax, mult_ptr, eps, 0, 0, 0, False, DT, N_RATIOS,
                    NCHUNK, CHUNK, CODES, PAIRS, QMIN, QMAX, PTX)
    return tl.where((absmax >= _SEARCH_LO) & (absmax <= _SEARCH_HI), s, absmax)


@triton.jit
def _pair_words(ye, yo, CLAMP: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr, PTX: tl.constexpr):
    """int32 words of the codes of quotients ``ye``, ``yo`` (even and odd columns), clamped first when
    ``CLAMP`` (a given scale bounds nothing; absmax and mse scales keep |y| far below 2**14)."""
    if CLAMP:
        ye = tl.minimum(tl.maximum(ye, QMIN), QMAX)
        yo = tl.minimum(tl.maximum(yo, QMIN), QMAX)
    return pack_code_pairs(ye, yo, 0.0, PTX)


@triton.jit
def _int4_quantize_pack_kernel(
    w_ptr, scale_ptr, packed_ptr, mult_ptr, N, NG, K8, stride_wn, stride_wk, eps,
    G: tl.constexpr, CHUNK: tl.constexpr, SEGS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
    MODE: tl.constexpr, N_RATIOS: tl.constexpr, CODES: tl.constexpr, BITS: tl.constexpr,
    QMIN: tl.constexpr, QMAX: tl.constexpr, PAIRS: tl.constexpr, PTX: tl.constexpr,
):
    NCHUNK: tl.constexpr = G // CHUNK
    W: tl.constexpr = CHUNK // SEGS
    DT: tl.constexpr = scale_ptr.dtype.element_ty
    rows, grps, mask2, mask4, w_ptrs, p_ptrs = group_tile(
        w_ptr, packed_ptr, N, NG, K8, stride_wn, stride_wk, G, CHUNK, SEGS, BLOCK_N, BLOCK_G)
    s_offs = rows.to(tl.int64)[:, None] * NG + grps[None, :]
    amax = tl.zeros([BLOCK_N, BLOCK_G], tl.float32)
    if PAIRS:  # bf16 pairs as int32 words, range by packed min / max
        w_ptrs = group_word_pointers(w_ptr, rows, grps, stride_wn, G, CHUNK, SEGS)
        x = tl.zeros([BLOCK_N, BLOCK_G, SEGS, W // 2], tl.int32)
    else:
        x = tl.zeros([BLOCK_N, BLOCK_G, SEGS, W], tl.float32)
    for c in range(NCHUNK):
        x = _load_chunk(w_ptrs, c, mask4, stride_wk, CHUNK, PAIRS)
        if PAIRS:
            lo, hi = bf16_pair_range(x, PTX)
            amax = tl.maximum(amax, tl.maximum(hi, -lo))
        else:
            amax = tl.maximum(amax, tl.max(tl.max(tl.abs(x), axis=2), axis=2))

    if MODE == 0:
        s = tl.load(scale_ptr + s_offs, mask=mask2, other=1.0).to(tl.float32)
    elif MODE == 1:
        s = int4_absmax_scale_cvt(amax, eps, DT, PTX)
    else:
        xe, xo = _even_odd(x, PAIRS)
        s = _mse_scale(xe, xo, w_ptrs, mask4, stride_wk, amax, mult_ptr, eps, DT, N_RATIOS, NCHUNK, CHUNK, CODES,
                       BITS, PAIRS, QMIN, QMAX, PTX)
    if MODE != 0:
        tl.store(scale_ptr + s_offs, s.to(DT), mask=mask2)

    inv = reciprocal(s)
    fast = quotient_is_exact(s, inv, amax)
    s4 = s[:, :, None, None]
    inv4 = inv[:, :, None, None]
    for c in range(NCHUNK):
        if NCHUNK > 1:
            x = _load_chunk(w_ptrs, c, mask4, stride_wk, CHUNK, PAIRS)
        if PAIRS or MODE == 2:
            if NCHUNK > 1 or MODE != 2:  # (the mse search's single chunk is still held as xe, xo)
                xe, xo = _even_odd(x, PAIRS)
            if fast:  # packed in each branch: the branches join on the words, not on 2 registers a weight
                words = _pair_words(div_exact(xe, s4, inv4), div_exact(xo, s4, inv4), MODE == 0, QMIN, QMAX, PTX)
            else:
                words = _pair_words(tl.div_rn(xe, tl.broadcast_to(s4, xe.shape)),
                                    tl.div_rn(xo, tl.broadcast_to(s4, xo.shape)), MODE == 0, QMIN, QMAX, PTX)
        else:
            words = pack_codes(tl.minimum(tl.maximum(group_quotient(x, s4, inv4, fast), QMIN), QMAX))
        tl.store(p_ptrs + c * (CHUNK // 8), words, mask=mask4)


def _chunk(group_size: int) -> int:
    """The chunk ``group_tiles`` reads a group in: its largest power-of-two divisor, at most ``_MAX_CHUNK``."""
    return min(group_size & -group_size, _MAX_CHUNK)


def _one_chunk(group_size: int) -> bool:
    """Whether ``group_tiles`` holds a group in one chunk."""
    return _chunk(group_size) == group_size


@functools.lru_cache(maxsize=4096)  # pure; a launch's host time is a few µs less
def group_tiles(n: int, n_groups: int, group_size: int, elem_size: int, num_warps: int, lanes: int,
                reps: int = 1, block_g: int | None = None, min_rows: int = 1) -> tuple[int, int, int, int]:
    """(CHUNK, SEGS, BLOCK_G, BLOCK_N) of a group-tiled kernel: a power-of-two chunk dividing the
    group, cut into ``SEGS`` segments of ``lanes`` 16-byte vectors (the threads that share a group's
    chunk), and ``reps`` (row, group) pairs a thread, i.e. ``num_warps * 32 / lanes * reps`` pairs a
    program (``BLOCK_G`` groups of ``BLOCK_N`` rows, ``BLOCK_N >= min_rows``)."""
    chunk = _chunk(group_size)
    vec = max(1, 16 // elem_size)
    width = min(chunk, max(8, lanes * vec))
    pairs = num_warps * 32 * vec // width * reps
    if chunk < group_size:
        block_g = 1
    elif block_g is None:
        block_g = max(1, 256 // chunk)
    block_g = min(block_g, next_power_of_2(n_groups))
    block_n = max(min_rows, pairs // block_g)
    return chunk, chunk // width, block_g, min(block_n, max(min_rows, next_power_of_2(n)))


def _default_launch(rule: str, dtype: torch.dtype, group_size: int) -> tuple[int, int, int]:
    """(lanes, warps, columns a program) of ``rule`` on weights of ``dtype`` (see ``_LAUNCH``)."""
    if rule != "mse" or dtype == torch.bfloat16:
        return _LAUNCH[rule]
    if not _one_chunk(group_size):
        return _MSE_WIDE_LAUNCH
    return _MSE_FP32_LAUNCH if dtype == torch.float32 else _LAUNCH[rule]


@functools.lru_cache(maxsize=4096)
def _fit_block_g(n_groups: int, widest: int) -> int:
    """The power of two ``<= widest`` groups a program that pads ``n_groups`` least (the widest of
    those): 40 groups of K = 5120 take 8 a program, not 16 with a third program half empty."""
    sizes = [1 << i for i in range(widest.bit_length())]
    return min(sizes, key=lambda b: (-(-n_groups // b) * b, -b))


def bf16_pairs(w: torch.Tensor) -> bool:
    """Whether a kernel can read ``w`` as int32 words of two bf16 weights (``_jit.bf16_pair_range``):
    bf16, columns contiguous, rows an even number of weights apart, 4-byte aligned."""
    return w.dtype == torch.bfloat16 and w.stride(1) == 1 and w.stride(0) % 2 == 0 and w.data_ptr() % 4 == 0


def packed_int16_ptx(w: torch.Tensor) -> bool:
    """Whether the kernels may use the inline PTX of ``_jit.pack_code_pairs`` (``min.relu.s16x2``, sm_90+) and
    ``bf16_pair_range`` on ``w``'s device; otherwise (the interpreter, older GPUs) their plain-Triton twins."""
    return w.is_cuda and _sm90(w.device.index)


@functools.cache
def _sm90(index: int | None) -> bool:
    return torch.cuda.get_device_capability(index) >= (9, 0)


@functools.lru_cache(maxsize=4096)
def row_slabs(n: int, block_n: int) -> tuple[tuple[int, int], ...]:
    """Row ranges of at most ``_MAX_GRID_Y`` blocks of ``block_n`` rows (one launch each; grid axis 1
    holds the row blocks): ``((0, n),)`` for any weight below about a million rows."""
    step = _MAX_GRID_Y * block_n
    return tuple((r0, min(n, r0 + step)) for r0 in range(0, n, step))


def int4_quantize_pack(
    w: torch.Tensor,
    group_size: int,
    rule: str,
    scale: torch.Tensor | None = None,
    block_g: int | None = None,
    num_warps: int | None = None,
    lanes: int | None = None,
    reps: int = 1,
    ratios: tuple[float, ...] | None = None,
    max_registers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize and pack ``w`` [N, K] in one pass; ``rule`` is "absmax", "mse" or "given" (uses ``scale``).

    Returns (packed int32 [N, K/8], scale [N, K/g] in ``w.dtype``, or ``scale`` itself when given).
    Inputs are assumed validated by ``hlwq_kernels.ops.int4``. ``block_g``, ``num_warps``, ``lanes``
    (threads per group) and ``reps`` ((row, group) pairs a thread) tune the launch (``group_tiles``);
    ``ratios`` (float32 values, 1 first, none below ``MIN_RATIO``) replaces ``RATIOS`` of "mse";
    ``max_registers`` caps ptxas's registers a thread (0: no cap).
    """
    require_triton()
    n, k = w.shape
    n_groups = k // group_size
    packed = torch.empty((n, k // 8), dtype=torch.int32, device=w.device)
    if rule == "given":
        scale = scale.contiguous()
    else:
        scale = torch.empty((n, n_groups), dtype=w.dtype, device=w.device)
    key = None
    default = block_g is None and num_warps is None and lanes is None and reps == 1 and not max_registers
    if w.is_cuda and default:  # the default launch
        key = (tensor_key(w), group_size, rule, ratios, tensor_key(scale) if rule == "given" else None)
        if _PREPARED.run(key, w, scale, packed):
            return packed, scale
    mult = device_multipliers(w.device, ratios)
    default_lanes, default_warps, columns = _default_launch(rule, w.dtype, group_size)
    num_warps = num_warps or default_warps
    lanes = lanes or default_lanes
    block_g = block_g or _fit_block_g(n_groups, max(1, columns // group_size))
    chunk, segs, block_g, block_n = group_tiles(n, n_groups, group_size, w.element_size(), num_warps, lanes, reps,
                                                block_g)
    options = {"maxnreg": max_registers} if max_registers and w.is_cuda else {}
    slabs = row_slabs(n, block_n)
    for r0, r1 in slabs:
        part = (w, scale, packed) if r1 - r0 == n else (w[r0:r1], scale[r0:r1], packed[r0:r1])
        eps = _EPS[scale.dtype] if rule != "given" else 0.0
        tail = (mult, r1 - r0, n_groups, k // 8, w.stride(0), w.stride(1), eps)
        prepared = launch(
            _int4_quantize_pack_kernel, (cdiv(n_groups, block_g), cdiv(r1 - r0, block_n), 1), w.device, *part, *tail,
            G=group_size, CHUNK=chunk, SEGS=segs, BLOCK_N=block_n, BLOCK_G=block_g, MODE=_MODES[rule],
            N_RATIOS=mult.numel(), CODES=_CODES[w.dtype], BITS=FIXED_POINT_BITS[w.dtype], QMIN=QMIN, QMAX=QMAX,
            PAIRS=bf16_pairs(w), PTX=packed_int16_ptx(w), num_warps=num_warps, **options,
        )
    if len(slabs) == 1:
        _PREPARED.add(key, prepared, tail)
    return packed, scale
