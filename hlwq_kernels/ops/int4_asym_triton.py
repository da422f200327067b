"""Fused asymmetric INT4 min-max kernel: weight [N, K] -> packed codes int32 [N, K/8], scales [N, K/g]
and packed zero points int32 [ceil(N/8), K/g], in compressed-tensors' ``pack-quantized`` layout.

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
    bf16_hi,
    bf16_lo,
    bf16_pair_range,
    group_quotient,
    group_tile,
    group_word_pointers,
    pack_code_pairs,
    pack_codes,
    quotient_is_exact,
    reciprocal,
    round_to_dtype_cvt,
)
from hlwq_kernels.ops._triton import cdiv, launch, require_triton, tl, triton
from hlwq_kernels.ops.int4_triton import _EPS, bf16_pairs, group_tiles, packed_int16_ptx, row_slabs
from hlwq_reference.numpy.int4 import QMAX, QMIN
from hlwq_reference.numpy.int4_asym import LEVELS

__all__ = ["int4_asym_minmax_pack"]

# Launch defaults, from a sweep on an H200 (bench/results/int4-h200-2026-12-02-b.md): 4 threads a
# group's chunk (each holds CHUNK / 4 contiguous weights), 1 warp, 8 rows x 2 groups of 128 a program.
_LANES = 4
_WARPS = 1
_QMIN, _QMAX, _LEVELS = tl.constexpr(QMIN), tl.constexpr(QMAX), tl.constexpr(float(LEVELS))


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

    # Zero points z - QMIN of rows 8i .. 8i+7 in word i (row 8i lowest); rows past N pack as 0.
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
    require_triton()
    n, k = w.shape
    n_groups = k // group_size
    packed, scale, zero = out or (
        torch.empty((n, k // 8), dtype=torch.int32, device=w.device),
        torch.empty((n, n_groups), dtype=w.dtype, device=w.device),
        torch.empty(((n + 7) // 8, n_groups), dtype=torch.int32, device=w.device),
    )
    chunk, segs, block_g, block_n = group_tiles(n, n_groups, group_size, w.element_size(), num_warps, lanes, reps,
                                                block_g, min_rows=8)
    for r0, r1 in row_slabs(n, block_n):
        part = (w, scale, packed, zero) if r1 - r0 == n else (
            w[r0:r1], scale[r0:r1], packed[r0:r1], zero[r0 // 8 : (r1 + 7) // 8])
        launch(
            _int4_asym_minmax_kernel, (cdiv(n_groups, block_g), cdiv(r1 - r0, block_n), 1), w.device,
            *part, r1 - r0, n_groups, k // 8, w.stride(0), w.stride(1), _EPS[w.dtype],
            G=group_size, CHUNK=chunk, SEGS=segs, BLOCK_N=block_n, BLOCK_G=block_g, PAIRS=bf16_pairs(w),
            PTX=packed_int16_ptx(w), num_warps=num_warps,
        )
    return packed, scale, zero
