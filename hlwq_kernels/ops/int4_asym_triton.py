"""Fused asymmetric INT4 kernels, min-max and clip rules: weight [N, K] -> packed codes int32 [N, K/8],
scales [N, K/g] and packed zero points int32 [ceil(N/8), K/g], in compressed-tensors' ``pack-quantized``
layout. (The clip kernel, ``int4_asym_clip_pack``, is described at its section below and in
docs/int4_asym.md; what follows is the min-max kernel.)

One program owns ``BLOCK_N`` rows (a multiple of 8, so it packs whole zero-point words) x ``BLOCK_G``
groups. A group is read in ``G // CHUNK`` chunks of a power-of-two width; when it fits one chunk the
tile stays in registers and the weight is read once. The tile is held as ``[BLOCK_N, BLOCK_G, SEGS,
CHUNK // SEGS]`` (a chunk cut into contiguous segments): Triton 3.6 orders the layout's dimensions
by contiguity, ties by index, so a thread holds all ``SEGS`` segments of its group and a group is
spread over ``CHUNK // SEGS / vector`` threads only (not ``CHUNK / vector``); the per-group work
(reductions, scale, zero point, reciprocal), which every thread of a group repeats, is then
amortized over more weights per thread. (Triton 3.9 breaks the ties the other way: the same code,
slower; the CPU interpreter does not care.)

The arithmetic is that of ``hlwq_kernels.ops.int4_asym`` (compressed-tensors' ``calculate_qparams``
in the weight dtype, then its GPU ``quantize``): every intermediate that compressed-tensors computes
in the weight dtype is rounded to it (``round_to_dtype``), per-group divisions are IEEE
(``tl.div_rn``), and the per-weight quotient ``w / s`` is the correctly rounded one from a reciprocal
(``group_quotient``, see ``hlwq_kernels.ops._jit``); codes are rounded half to even and packed by
``pack_codes``.

bf16 weights whose columns are contiguous are read as int32 words of two (``_jit.bf16_pair_range``,
``pack_code_pairs``), and there the code ``rint(RN(q + z))`` (q = ``RN(w / s)``, z the integer zero
point) is computed as ``rint(q + z)`` with one rounding: with 8-bit significands, ``w / s`` is a
half-integer or at least ``2**-17`` from every half-integer (``w / s - h = (m_w 2**E - h m_s) / m_s``,
a multiple of ``2**min(E, -1) / m_s`` with ``2**E >= 2**-9`` wherever ``|w / s| >= 1/2``), while
``RN(q + z)`` moves ``q + z`` by at most ``2**-21``: both round to the same integer, ties included
(a half-integer ``q`` makes ``q + z`` exact).
"""

from __future__ import annotations

import torch

from hlwq_kernels.ops._jit import (
    HALVED,
    WHOLE,
    bf16_hi,
    code_byte_sums,
    div_exact,
    bf16_lo,
    bf16_pair_range,
    fixed_pairs,
    fixed_point_scales,
    group_quotient,
    group_sum,
    group_tile,
    group_word_pointers,
    pack_code_pairs,
    pack_codes,
    quotient_is_exact,
    reciprocal,
    round_half_even,
    round_to_dtype_cvt,
    short_reciprocal,
)
from hlwq_kernels.ops._triton import PreparedCalls, cdiv, launch, require_triton, tensor_key, tl, triton
from hlwq_kernels.ops.int4_triton import (
    _EPS, _even_odd, bf16_pairs, group_tiles, packed_int16_ptx, row_slabs,
)
from hlwq_reference.numpy.int4 import QMAX, QMIN
from hlwq_reference.numpy.int4_asym import LEVELS, MARGIN, N_CLIP, REFIT_STEPS, clip_ratios

__all__ = ["int4_asym_minmax_pack", "int4_asym_clip_pack"]

# Launch defaults, from a sweep on an H200 (bench/results/int4-h200-2026-12-02-b.md): 4 threads a
# group's chunk (each holds CHUNK / 4 contiguous weights), 1 warp, 8 rows x 2 groups of 128 a program.
_LANES = 4
_WARPS = 1
_QMIN, _QMAX, _LEVELS = tl.constexpr(QMIN), tl.constexpr(QMAX), tl.constexpr(float(LEVELS))
# The clip kernel: (lanes, warps, groups a program) from a sweep on an H200 (bench/results/
# int4-asym-clip-h200-2026-12-02-d.md): 2 threads a group (64 weights a thread at group 128). With
# importance 4 threads ran 3% faster (weights and importance of 64 columns take all 255 registers), but
# one launch for both keeps unit importance bit-identical to none.
_CLIP_LANES = 2
_CLIP_WARPS = 1
_CLIP_BLOCK_G = 1
_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2**23: x + _MAGIC holds rint(x) in its low bits (|x| < 2**22)
_CODE_LO = tl.constexpr(12582912.0 + QMIN)
_CODE_HI = tl.constexpr(12582912.0 + QMAX)
_MAGIC64 = tl.constexpr(6755399441055744.0)  # 1.5 * 2**52, the same for float64
_CONSTANTS: dict[torch.device, torch.Tensor] = {}
_PREPARED = PreparedCalls()  # launches by kernel, input kind and launch options (_triton.PreparedCalls)


@triton.jit
def _int4_asym_minmax_kernel(
    w_ptr, scale_ptr, packed_ptr, zero_ptr, N, NG, K8, stride_wn, stride_wk, eps,
    G: tl.constexpr, CHUNK: tl.constexpr, SEGS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
    PAIRS: tl.constexpr, PTX: tl.constexpr,
):
    NCHUNK: tl.constexpr = G // CHUNK
    DT: tl.constexpr = scale_ptr.dtype.element_ty
    rows, grps, mask2, mask4, w_ptrs, p_ptrs = group_tile(
        w_ptr, packed_ptr, N, NG, K8, stride_wn, stride_wk, G, CHUNK, SEGS, BLOCK_N, BLOCK_G)
    if PAIRS:  # bf16 pairs as int32 words: STEP words a chunk
        w_ptrs = group_word_pointers(w_ptr, rows, grps, stride_wn, G, CHUNK, SEGS)
        STEP: tl.constexpr = CHUNK // 2
    else:
        STEP: tl.constexpr = CHUNK
    row_ok = rows < N
    if NCHUNK == 1:
        xr = tl.load(w_ptrs, mask=mask4, other=0)

    # The range always includes 0 (lo <= 0 <= hi), as compressed-tensors clamps it. Min and max are
    # exact in the weight dtype (bf16 pairs per instruction), converted once per group.
    lo = tl.zeros([BLOCK_N, BLOCK_G], tl.float32)
    hi = tl.zeros([BLOCK_N, BLOCK_G], tl.float32)
    for c in range(NCHUNK):
        if NCHUNK > 1:
            xr = tl.load(w_ptrs + c * STEP * stride_wk, mask=mask4, other=0)
        if PAIRS:
            clo, chi = bf16_pair_range(xr, PTX)
        else:
            clo = tl.min(tl.min(xr, axis=2), axis=2).to(tl.float32)
            chi = tl.max(tl.max(xr, axis=2), axis=2).to(tl.float32)
        lo = tl.minimum(lo, clo)
        hi = tl.maximum(hi, chi)
    s = round_to_dtype_cvt(tl.div_rn(round_to_dtype_cvt(hi - lo, DT, PTX), tl.full(lo.shape, _LEVELS, tl.float32)),
                           DT, PTX)
    s_ok = s != 0.0  # else eps (an all-zero group, or a range below the dtype's smallest scale)
    s = tl.where(s_ok, s, eps)
    tl.store(scale_ptr + rows.to(tl.int64)[:, None] * NG + grps[None, :], s.to(DT), mask=mask2)
    inv = reciprocal(s)
    fast = quotient_is_exact(s, inv, tl.maximum(hi, -lo))

    # zero point QMIN - lo / s by the scale before eps: lo / 0 is -inf (zero point QMAX) or NaN (lo = 0:
    # zero point 0); lo / s by the reciprocal where it is exact (|lo / s| < 1/4 rounds to 0 either way)
    zf = round_to_dtype_cvt(-round_to_dtype_cvt(group_quotient(lo, s, inv, fast), DT, PTX) + _QMIN, DT, PTX)
    zf = tl.where(s_ok, tl.minimum(tl.maximum(zf, _QMIN), _QMAX), tl.where(lo < 0.0, _QMAX, 0.0))
    z = (zf + 12582912.0).to(tl.int32, bitcast=True) - 0x4B400000  # zf is an integer in [-8, 7]
    s4 = s[:, :, None, None]
    inv4 = inv[:, :, None, None]
    zc = z.to(tl.float32)[:, :, None, None]
    for c in range(NCHUNK):
        if NCHUNK > 1:
            xr = tl.load(w_ptrs + c * STEP * stride_wk, mask=mask4, other=0)
        if PAIRS:  # |q + z| <= 24: pack_code_pairs clamps the codes and rounds q + z once (see the docstring)
            words = pack_code_pairs(group_quotient(bf16_lo(xr), s4, inv4, fast),
                                    group_quotient(bf16_hi(xr), s4, inv4, fast), zc, PTX)
        else:
            y = tl.minimum(tl.maximum(group_quotient(xr.to(tl.float32), s4, inv4, fast) + zc, _QMIN), _QMAX)
            words = pack_codes(y)
        tl.store(p_ptrs + c * (CHUNK // 8), words, mask=mask4)

    _store_zero_points(zero_ptr, z, row_ok, grps, N, NG, BLOCK_N, BLOCK_G)


@triton.jit
def _store_zero_points(zero_ptr, z, row_ok, grps, N, NG, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr):
    """Integer zero points ``z`` [BLOCK_N, BLOCK_G] as ``z - QMIN``, rows 8i .. 8i+7 in word i (row 8i
    lowest); rows past N pack as 0."""
    zu = tl.where(row_ok[:, None], z - _QMIN, 0)
    zw = tl.sum(tl.reshape(zu, [BLOCK_N // 8, 8, BLOCK_G]) << (tl.arange(0, 8) * 4)[None, :, None], axis=1)
    wrow = tl.program_id(1) * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8)
    zmask = (wrow < (N + 7) // 8)[:, None] & (grps < NG)[None, :]
    tl.store(zero_ptr + wrow.to(tl.int64)[:, None] * NG + grps[None, :], zw, mask=zmask)


def int4_asym_minmax_pack(
    w: torch.Tensor,
    group_size: int,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    num_warps: int = _WARPS,
    lanes: int = _LANES,
    reps: int = 1,
    block_g: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Min-max asymmetric INT4 of ``w`` [N, K] in one pass.

    Returns (packed int32 [N, K/8], scale [N, K/g] in ``w.dtype``, zero points int32 [ceil(N/8), K/g]),
    written into ``out`` (contiguous tensors of those shapes and dtypes) when given.
    Inputs are assumed validated by ``hlwq_kernels.ops.int4_asym``. ``num_warps``, ``lanes`` (threads
    per group), ``reps`` ((row, group) pairs a thread) and ``block_g`` tune the launch (``group_tiles``).
    """
    return _launch_over_rows(_int4_asym_minmax_kernel, w, group_size, (), out, num_warps, lanes, reps, block_g,
                             PAIRS=bf16_pairs(w))


def _launch_over_rows(
    kernel, w: torch.Tensor, group_size: int, extra: tuple, out: tuple | None, num_warps: int, lanes: int, reps: int,
    block_g: int | None, **constexprs,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch a kernel ``(w, *extra, scale, packed, zero, N, NG, K8, stride_wn, stride_wk, eps, G, CHUNK, SEGS,
    BLOCK_N, BLOCK_G, PTX, **constexprs)`` on ``w`` [N, K] in row slabs (``row_slabs``); outputs ``out``
    or new. A repeated call with inputs of the same kind reuses its launch (``_PREPARED``)."""
    require_triton()
    n, k = w.shape
    n_groups = k // group_size
    packed, scale, zero = out or (
        torch.empty((n, k // 8), dtype=torch.int32, device=w.device),
        torch.empty((n, n_groups), dtype=w.dtype, device=w.device),
        torch.empty(((n + 7) // 8, n_groups), dtype=torch.int32, device=w.device),
    )
    key = None
    if w.is_cuda:  # new outputs are contiguous and aligned: only given ones join the key
        key = (kernel, tensor_key(w), *map(tensor_key, extra), *(map(tensor_key, out) if out else ()),
               group_size, num_warps, lanes, reps, block_g, *constexprs.values())
        if _PREPARED.run(key, w, *extra, scale, packed, zero):
            return packed, scale, zero
    chunk, segs, block_g, block_n = group_tiles(n, n_groups, group_size, w.element_size(), num_warps, lanes, reps,
                                                block_g, min_rows=8)
    slabs = row_slabs(n, block_n)
    for r0, r1 in slabs:
        part = (w, scale, packed, zero) if r1 - r0 == n else (
            w[r0:r1], scale[r0:r1], packed[r0:r1], zero[r0 // 8 : (r1 + 7) // 8])
        tail = (r1 - r0, n_groups, k // 8, w.stride(0), w.stride(1), _EPS[w.dtype])
        prepared = launch(
            kernel, (cdiv(n_groups, block_g), cdiv(r1 - r0, block_n), 1), w.device, part[0], *extra, *part[1:], *tail,
            G=group_size, CHUNK=chunk, SEGS=segs, BLOCK_N=block_n, BLOCK_G=block_g, PTX=packed_int16_ptx(w),
            num_warps=num_warps, **constexprs,
        )
    if len(slabs) == 1:
        _PREPARED.add(key, prepared, tail)
    return packed, scale, zero


# --- the clip rule ----------------------------------------------------------------------------------
# The tile of the min-max kernel (float32 weights, no bf16 pairs: the search dominates), held through
# the search when a group fits one chunk: min-max trial, N_CLIP - 1 clip ratios, the sums of the best's
# codes, REFIT_STEPS refits, each a pass over the tile summing per thread in float32, then across the
# group's threads; the per-group arithmetic in float64 as the torch path (hlwq_kernels.ops.int4_asym).
#
# bf16 groups of one chunk without importance sum integers instead (``_clip_int_trial``), as the "mse"
# search of ``int4_triton`` does: with ``2**E <= amax < 2**(E + 1)``, every weight whose code differs from the
# zero point has ``|w| >= s / 2`` (less than half a step rounds to the zero point), and ``s >= 2**(E - 5)``
# makes that ``|w| >= 2**(E - 6)``, a multiple of ``2**(E - 13)``: the 16-bit integer ``f = rint(w * 2**(14 - E))``
# (``|f| < 2**15``) is exact for it. The min-max and clip trials' scales are at least ``0.72 amax / 15 > 2**(E - 5)``
# (and below ``2 * 2**128 / 15 < 2**126``: ``_jit.short_reciprocal`` is exact), and so is the best of them, whose
# codes the refits start from; those passes sum integers, unless a group of the tile has ``0 < amax < 2**-112``
# (``2**(E - 14)`` not a normal float). The refits' least-squares scales have no such bound: they stay float. A pass's codes are biased
# to ``u = q - QMIN`` in [0, 15] (bits of ``1.5 * 2**23 + z - QMIN`` plus the quotient), summed as bytes
# with ``dp2a`` / ``dp4a`` (``_jit.code_byte_sums``): ``Σ f u``, ``Σ u (u - 16)``, ``Σ u``. With ``d = u - (z - QMIN)``
# they give ``Σ d``, ``Σ d²`` and ``Σ w d`` exactly, and ``E = Σ w² + s (s Σ d² - 2 Σ w d)`` in float64 (``Σ w²``
# in float64 once a group: ``E`` is about 1% of it, so a float32 ``Σ w²`` would shift ``E`` by about MARGIN
# against the refits' float32 sums; measured: 255 of 2**21 groups chose otherwise than the torch path, 11 with
# float sums). The float passes run on the tile times ``2**(14 - E)`` (``_clip_pass``): their float32 sums then
# neither underflow nor overflow for groups far from 1 (they did below about 2**-60 and above 2**60). The exact-quotient
# codes round ``RN(w / s) + z`` once (the bf16 argument of the module docstring), as the min-max kernel does.
_FIX_BITS = tl.constexpr(14)
_FIX_TINY = tl.constexpr(2.0**-112)  # the smallest amax whose 2**(E - 14) is a normal float


def _clip_constants(device: torch.device) -> torch.Tensor:
    """float64 ``[clip ratios..., 1 - MARGIN]`` on ``device`` (cached): the rule's constants as the
    reference computes them, read by the kernel (a float literal would be rounded to float32)."""
    if device not in _CONSTANTS:
        values = [*clip_ratios().tolist(), 1.0 - MARGIN]
        _CONSTANTS[device] = torch.tensor(values, dtype=torch.float64, device=device)
    return _CONSTANTS[device]


@triton.jit
def _clip_chunk(w_ptrs, l_ptrs, c, mask4, lmask, stride_wk, CHUNK: tl.constexpr, HAS_LAM: tl.constexpr):
    """Chunk ``c`` of the tile as float32 weights, and their importance (``HAS_LAM``; else the weights
    again, unused)."""
    x = tl.load(w_ptrs + c * CHUNK * stride_wk, mask=mask4, other=0.0).to(tl.float32)
    if HAS_LAM:
        lam = tl.load(l_ptrs + c * CHUNK, mask=lmask, other=0.0)
    else:
        lam = x
    return x, lam


@triton.jit
def _clip_trial(x, lam, w_ptrs, l_ptrs, mask4, lmask, stride_wk, s, z, NCHUNK: tl.constexpr, CHUNK: tl.constexpr,
                HAS_LAM: tl.constexpr, SUMS: tl.constexpr):
    """Per group, float32 sums over the trial codes of ``(s, z)``: ``E = Σ λ (w - d s)²`` and (``SUMS``)
    ``Σ λ d``, ``Σ λ d²``, ``Σ λ w d`` with ``d = q - z``. The trial code ``q = rint(clamp(w (1/s) + z))`` of
    the exact product is one fused multiply-add into the bits of ``1.5 * 2**23 + q``, clamped there."""
    s4 = s[:, :, None, None]
    z4 = z[:, :, None, None]
    inv4 = reciprocal(s)[:, :, None, None]
    zm4 = (z + _MAGIC)[:, :, None, None]
    ns4 = (-s)[:, :, None, None]
    e = tl.zeros(s.shape, tl.float32)
    d1 = tl.zeros(s.shape, tl.float32)
    d2 = tl.zeros(s.shape, tl.float32)
    u1 = tl.zeros(s.shape, tl.float32)
    for c in range(NCHUNK):
        if NCHUNK > 1:
            x, lam = _clip_chunk(w_ptrs, l_ptrs, c, mask4, lmask, stride_wk, CHUNK, HAS_LAM)
        if SUMS:  # the rule's codes rint(clamp(w / s + z)) (float32 quotient, as the torch path)
            y = tl.minimum(tl.maximum(div_exact(x, s4, inv4) + z4, _QMIN), _QMAX)
            d = (y + _MAGIC) - zm4
        else:  # one fused multiply-add: the same codes but at ties of w / s (there the same error)
            d = tl.minimum(tl.maximum(tl.fma(x, inv4, zm4), _CODE_LO), _CODE_HI) - zm4
        r = tl.fma(d, ns4, x)
        if HAS_LAM:
            ld = lam * d
            e += group_sum(lam * r * r)
        else:
            ld = d
            e += group_sum(r * r)
        if SUMS:
            d1 += group_sum(ld)
            d2 += group_sum(ld * d)
            u1 += group_sum(ld * x)
    return e, d1, d2, u1


@triton.jit
def _clip_int_trial(xe, xo, words, fsum, up, down, w2, s, z, G: tl.constexpr, SUMS: tl.constexpr,
                    PTX: tl.constexpr):
    """``_clip_trial``'s ``(E, Σ d, Σ d², Σ w d)``, all float64, from integer sums (see above): ``xe``, ``xo``
    the even and odd weights times ``up = 2**(14 - E)``, ``words``, ``fsum`` their ``fixed_pairs``,
    ``down = 2**(E - 14)``, ``w2 = Σ w²``."""
    s_up = s * up  # (exact: powers of two)
    inv4 = short_reciprocal(s_up, PTX)[:, :, None, None]
    magic4 = (z + (_MAGIC - _QMIN))[:, :, None, None]
    if SUMS:  # the rule's codes: the exact quotient
        s4 = s_up[:, :, None, None]
        be = (div_exact(xe, s4, inv4) + magic4).to(tl.int32, bitcast=True)
        bo = (div_exact(xo, s4, inv4) + magic4).to(tl.int32, bitcast=True)
    else:  # one fused multiply-add (ties as _clip_trial's)
        be = tl.fma(xe, inv4, magic4).to(tl.int32, bitcast=True)
        bo = tl.fma(xo, inv4, magic4).to(tl.int32, bitcast=True)
    ones = tl.full([words.shape[0], words.shape[1], words.shape[2], words.shape[3] // 4], 0x01010101, tl.int32)
    fu, uu, su = code_byte_sums(be, bo, words, (ones, ones), HALVED, PTX)  # byte weights 1: Σ u
    zu = z.to(tl.int32) - _QMIN
    d1 = (su - zu * G).to(tl.float64)
    d2 = (uu + (16 - 2 * zu) * su + zu * zu * G).to(tl.float64)  # Σ u² = Σ u (u - 16) + 16 Σ u
    u1 = (fu - zu * fsum).to(tl.float64) * down.to(tl.float64)
    s64 = s.to(tl.float64)
    return w2 + s64 * (s64 * d2 - 2.0 * u1), d1, d2, u1


@triton.jit
def _clip_pass(x, lam, w_ptrs, l_ptrs, mask4, lmask, stride_wk, s, z, fixed, rscale, NCHUNK: tl.constexpr,
               CHUNK: tl.constexpr, G: tl.constexpr, HAS_LAM: tl.constexpr, SUMS: tl.constexpr,
               INT_PATH: tl.constexpr, PTX: tl.constexpr):
    """One pass of the search at ``(s, z)``, float64 ``(E, Σ λ d, Σ λ d², Σ λ w d)``: ``_clip_int_trial``
    (``INT_PATH``; ``fixed`` = its tile state) or ``_clip_trial``, on the tile ``x`` times ``up`` of
    ``rscale = (up, down)`` (powers of two, ``up down = 1``; bf16 groups far from 1 then neither underflow nor
    overflow in float32; ones elsewhere) with the scale ``s up``."""
    up, down = rscale
    if INT_PATH:
        xe, xo, words, fsum, w2 = fixed
        e, d1, d2, u1 = _clip_int_trial(xe, xo, words, fsum, up, down, w2, s, z, G, SUMS, PTX)
    else:
        e, d1, d2, u1 = _clip_trial(x, lam, w_ptrs, l_ptrs, mask4, lmask, stride_wk, s * up, z, NCHUNK, CHUNK,
                                    HAS_LAM, SUMS)
        down = down.to(tl.float64)
        e, u1 = e.to(tl.float64) * (down * down), u1.to(tl.float64) * down
    return e.to(tl.float64), d1.to(tl.float64), d2.to(tl.float64), u1.to(tl.float64)


@triton.jit
def _clip_trials(x, lam, w_ptrs, l_ptrs, mask4, lmask, stride_wk, lo, hi, eps, keep, const_ptr, fixed, rscale,
                 NCHUNK: tl.constexpr, CHUNK: tl.constexpr, G: tl.constexpr, N_CLIP: tl.constexpr,
                 HAS_LAM: tl.constexpr, DT: tl.constexpr, INT_PATH: tl.constexpr, PTX: tl.constexpr):
    """The min-max trial and the clip ratios (``_clip_pass``), then the sums over the best's codes:
    ``(E, s, z)`` of the best and its ``(Σ λ d, Σ λ d², Σ λ w d)``."""
    # The min-max trial: compressed-tensors' rule (hlwq_kernels.ops.int4_asym._minmax).
    s = round_to_dtype_cvt(tl.div_rn(round_to_dtype_cvt(hi - lo, DT, PTX), tl.full(lo.shape, _LEVELS, tl.float32)),
                           DT, PTX)
    s_ok = s != 0.0
    zf = round_to_dtype_cvt(-round_to_dtype_cvt(tl.div_rn(lo, tl.where(s_ok, s, 1.0)), DT, PTX) + _QMIN, DT, PTX)
    zf = tl.where(s_ok, tl.minimum(tl.maximum(zf, _QMIN), _QMAX), tl.where(lo < 0.0, _QMAX, 0.0))
    best_s = tl.where(s_ok, s, eps)
    best_z = (zf + _MAGIC) - _MAGIC
    best_e, d1, d2, u1 = _clip_pass(x, lam, w_ptrs, l_ptrs, mask4, lmask, stride_wk, best_s, best_z, fixed, rscale,
                                    NCHUNK, CHUNK, G, HAS_LAM, False, INT_PATH, PTX)
    # Clip ratios (float64 arithmetic, as the torch path)
    lo64 = lo.to(tl.float64)
    span = hi.to(tl.float64) - lo64
    for t in range(1, N_CLIP):
        ratio = tl.load(const_ptr + t)
        s = _stored_scale(ratio * span / 15.0, eps, DT, PTX)
        z = _rint_zero_point(-(ratio * lo64 / s.to(tl.float64)) + _QMIN)
        e, d1, d2, u1 = _clip_pass(x, lam, w_ptrs, l_ptrs, mask4, lmask, stride_wk, s, z, fixed, rscale, NCHUNK,
                                   CHUNK, G, HAS_LAM, False, INT_PATH, PTX)
        better, best_e, best_s, best_z = _offer(e, s, z, best_e, best_s, best_z, keep)
    e, d1, d2, u1 = _clip_pass(x, lam, w_ptrs, l_ptrs, mask4, lmask, stride_wk, best_s, best_z, fixed, rscale,
                               NCHUNK, CHUNK, G, HAS_LAM, True, INT_PATH, PTX)
    return best_e, best_s, best_z, d1, d2, u1


@triton.jit
def _offer(e, s, z, best_e, best_s, best_z, keep):
    """Where the trial's error ``e`` (float32) is below ``best_e * keep`` (``keep = 1 - MARGIN``, float64):
    (that mask, and the best error, scale and zero point with the trial taken there)."""
    e64 = e.to(tl.float64)
    better = e64 < best_e * keep
    return better, tl.where(better, e64, best_e), tl.where(better, s, best_s), tl.where(better, z, best_z)


@triton.jit
def _stored_scale(s64, eps, DT: tl.constexpr, PTX: tl.constexpr):
    """A float64 scale as stored: to float32, then to the weight dtype; 0 -> ``eps`` (float32)."""
    s = round_to_dtype_cvt(s64.to(tl.float32), DT, PTX)
    return tl.where(s == 0.0, eps, s)


@triton.jit
def _rint_zero_point(zf):
    """float64 -> ``rint(clamp(zf, QMIN, QMAX))`` (half to even) as float32."""
    zc = tl.minimum(tl.maximum(zf, _QMIN), _QMAX)
    return ((zc + _MAGIC64) - _MAGIC64).to(tl.float32)


@triton.jit
def _safe(den):
    """``den`` where non-zero, else 1 (a quotient then discarded; keeps the interpreter from warning)."""
    return tl.where(den != 0.0, den, 1.0)


@triton.jit
def _refit(d1, d2, u1, s, z, n0, t0, eps, DT: tl.constexpr, PTX: tl.constexpr):
    """Least squares ``w ≈ a q + b`` over the codes of ``(s, z)`` (their sums ``d1, d2, u1`` of
    ``_clip_trial``, ``n0 = Σ λ``, ``t0 = Σ λ w``, float64): ``z' = rint(-b / a)`` where ``a > 0`` (else
    ``z``), then the least-squares scale for ``z'`` (else ``s``)."""
    zb = z.to(tl.float64)
    d1 = d1.to(tl.float64)
    q1 = d1 + zb * n0  # Σ λ q, Σ λ q², Σ λ w q from the sums over d = q - z
    q2 = d2.to(tl.float64) + zb * (2.0 * d1 + zb * n0)
    t1 = u1.to(tl.float64) + zb * t0
    den = n0 * q2 - q1 * q1
    a = (n0 * t1 - q1 * t0) / _safe(den)
    fit = (den != 0.0) & (a > 0.0)
    zf = -(t0 - a * q1) / _safe(tl.where(fit, n0 * a, 0.0))
    z_new = tl.where(fit & (tl.abs(zf) < float("inf")), _rint_zero_point(zf), z)
    zn = z_new.to(tl.float64)
    den = q2 - 2.0 * zn * q1 + zn * zn * n0
    s64 = (t1 - zn * t0) / _safe(den)
    s_new = tl.where((den != 0.0) & (s64 > 0.0) & (s64 < float("inf")), _stored_scale(s64, eps, DT, PTX), s)
    return s_new, z_new


@triton.jit
def _int4_asym_clip_kernel(
    w_ptr, lam_ptr, const_ptr, scale_ptr, packed_ptr, zero_ptr, N, NG, K8, stride_wn, stride_wk, eps,
    G: tl.constexpr, CHUNK: tl.constexpr, SEGS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
    N_CLIP: tl.constexpr, REFITS: tl.constexpr, HAS_LAM: tl.constexpr, PTX: tl.constexpr,
):
    NCHUNK: tl.constexpr = G // CHUNK
    W: tl.constexpr = CHUNK // SEGS
    DT: tl.constexpr = scale_ptr.dtype.element_ty
    rows, grps, mask2, mask4, w_ptrs, p_ptrs = group_tile(
        w_ptr, packed_ptr, N, NG, K8, stride_wn, stride_wk, G, CHUNK, SEGS, BLOCK_N, BLOCK_G)
    # importance pointers of the whole tile (as the weights' layout; each row reads them again, from L1)
    cols = (tl.arange(0, SEGS) * W)[None, None, :, None] + tl.arange(0, W)[None, None, None, :]
    l_ptrs = tl.broadcast_to(lam_ptr + grps[None, :, None, None] * G + cols, w_ptrs.shape)
    lmask = tl.broadcast_to((grps < NG)[None, :, None, None], w_ptrs.shape)

    # One read: range, Σ λ w and Σ λ of each group (the tile stays in registers when NCHUNK == 1).
    x, lam = _clip_chunk(w_ptrs, l_ptrs, 0, mask4, lmask, stride_wk, CHUNK, HAS_LAM)
    lo = tl.zeros([BLOCK_N, BLOCK_G], tl.float32)
    hi = tl.zeros([BLOCK_N, BLOCK_G], tl.float32)
    t0 = tl.zeros([BLOCK_N, BLOCK_G], tl.float32)
    n0 = tl.zeros([BLOCK_N, BLOCK_G], tl.float32)
    for c in range(NCHUNK):
        if NCHUNK > 1:
            x, lam = _clip_chunk(w_ptrs, l_ptrs, c, mask4, lmask, stride_wk, CHUNK, HAS_LAM)
        lo = tl.minimum(lo, tl.min(tl.min(x, axis=2), axis=2))
        hi = tl.maximum(hi, tl.max(tl.max(x, axis=2), axis=2))
        if HAS_LAM:
            t0 += group_sum(lam * x)
            n0 += group_sum(lam)
        else:
            t0 += group_sum(x)
    if not HAS_LAM:
        n0 += G
    keep = tl.load(const_ptr + N_CLIP)  # 1 - MARGIN: a trial must be lower by MARGIN, relatively
    amax = tl.maximum(hi, -lo)
    if NCHUNK == 1 and not HAS_LAM and DT == tl.bfloat16:  # integer sums (above) where the tile allows them
        up, down = fixed_point_scales(amax, _FIX_BITS, False)  # (2**(14 - E), 2**(E - 14))
        rscale = (up, down)
        # the tile times 2**(14 - E) from here on (the fixed point, the float passes: _clip_pass; the stored codes)
        xs = x * up[:, :, None, None]
        xe, xo = _even_odd(xs, False)
        words, fsum, unused0, unused1 = fixed_pairs(xe, xo, tl.full(up.shape, 1.0, tl.float32)[:, :, None, None], WHOLE,
                                                    PTX)
        # Σ w² in float64: E is about 1% of it, so its float32 rounding would move E by about MARGIN
        xs64 = xs.to(tl.float64)
        down64 = down.to(tl.float64)
        fixed = (xe, xo, words, fsum, group_sum(xs64 * xs64) * (down64 * down64))
        if tl.min(((amax >= _FIX_TINY) | (amax == 0.0)).to(tl.int32)) > 0:
            best_e, best_s, best_z, d1, d2, u1 = _clip_trials(
                xs, lam, w_ptrs, l_ptrs, mask4, lmask, stride_wk, lo, hi, eps, keep, const_ptr, fixed, rscale, NCHUNK,
                CHUNK, G, N_CLIP, HAS_LAM, DT, True, PTX)
        else:
            best_e, best_s, best_z, d1, d2, u1 = _clip_trials(
                xs, lam, w_ptrs, l_ptrs, mask4, lmask, stride_wk, lo, hi, eps, keep, const_ptr, fixed, rscale, NCHUNK,
                CHUNK, G, N_CLIP, HAS_LAM, DT, False, PTX)
    else:
        xs = x
        rscale = (tl.full(lo.shape, 1.0, tl.float32), tl.full(lo.shape, 1.0, tl.float32))
        best_e, best_s, best_z, d1, d2, u1 = _clip_trials(
            xs, lam, w_ptrs, l_ptrs, mask4, lmask, stride_wk, lo, hi, eps, keep, const_ptr, (xs,), rscale, NCHUNK,
            CHUNK, G, N_CLIP, HAS_LAM, DT, False, PTX)

    # Least-squares refits of the best, each from the sums over its codes (kept with the best), in float.
    n064 = n0.to(tl.float64)
    t064 = t0.to(tl.float64)
    for _ in range(REFITS):
        s, z = _refit(d1, d2, u1, best_s, best_z, n064, t064, eps, DT, PTX)
        e, c1, c2, cu = _clip_pass(xs, lam, w_ptrs, l_ptrs, mask4, lmask, stride_wk, s, z, (xs,), rscale, NCHUNK,
                                   CHUNK, G, HAS_LAM, True, False, PTX)
        better, best_e, best_s, best_z = _offer(e, s, z, best_e, best_s, best_z, keep)
        d1 = tl.where(better, c1, d1)
        d2 = tl.where(better, c2, d2)
        u1 = tl.where(better, cu, u1)

    # The stored codes: the exact quotient by the stored scale, as compressed-tensors' quantize.
    # (on the scaled tile: the same quotients)
    tl.store(scale_ptr + rows.to(tl.int64)[:, None] * NG + grps[None, :], best_s.to(DT), mask=mask2)
    s_up = best_s * rscale[0]
    inv = reciprocal(s_up)
    fast = quotient_is_exact(s_up, inv, amax * rscale[0])
    s4 = s_up[:, :, None, None]
    inv4 = inv[:, :, None, None]
    zc = best_z[:, :, None, None]
    for c in range(NCHUNK):
        if NCHUNK > 1:
            xs, lam = _clip_chunk(w_ptrs, l_ptrs, c, mask4, lmask, stride_wk, CHUNK, HAS_LAM)
        y = tl.minimum(tl.maximum(group_quotient(xs, s4, inv4, fast) + zc, _QMIN), _QMAX)
        tl.store(p_ptrs + c * (CHUNK // 8), pack_codes(y), mask=mask4)
    _store_zero_points(zero_ptr, round_half_even(best_z), rows < N, grps, N, NG, BLOCK_N, BLOCK_G)


def int4_asym_clip_pack(
    w: torch.Tensor,
    group_size: int,
    importance: torch.Tensor | None = None,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    num_warps: int = _CLIP_WARPS,
    lanes: int = _CLIP_LANES,
    reps: int = 1,
    block_g: int | None = _CLIP_BLOCK_G,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``clip`` rule's asymmetric INT4 of ``w`` [N, K] in one pass (one read of the weight when a
    group fits one chunk, at most 256 columns; the search runs on the tile in registers).

    ``importance``: float32 [K] per-input-channel weights on ``w``'s device (contiguous), or None.
    Returns and ``out`` as ``int4_asym_minmax_pack``; the launch parameters tune ``group_tiles``.
    Inputs are assumed validated by ``hlwq_kernels.ops.int4_asym``.
    """
    constants = _clip_constants(w.device)
    return _launch_over_rows(_int4_asym_clip_kernel, w, group_size,
                             (constants if importance is None else importance, constants), out, num_warps, lanes, reps,
                             block_g, N_CLIP=N_CLIP, REFITS=REFIT_STEPS, HAS_LAM=importance is not None)
