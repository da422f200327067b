"""Fused asymmetric INT4 min-max kernel: weight [N, K] -> packed codes int32 [N, K/8], scales [N, K/g]
and packed zero points int32 [ceil(N/8), K/g], in compressed-tensors' ``pack-quantized`` layout.

One program owns ``BLOCK_N`` rows (a multiple of 8, so it packs whole zero-point words) x ``BLOCK_G``
groups. A group that fits one power-of-two chunk stays in registers: the weight is read once. The
arithmetic is that of ``hlwq_kernels.ops.int4_asym`` (compressed-tensors' ``calculate_qparams`` in the
weight dtype, then its GPU ``quantize``): every intermediate that compressed-tensors computes in the
weight dtype is rounded to it (``_round_to_storage``), divisions are IEEE (``tl.div_rn``), and rounding
to an integer, half to even, adds 1.5 * 2**23 (the float32 sum then holds the integer in its low bits).
"""

from __future__ import annotations

import torch

from hlwq_kernels.ops._triton import launch, require_triton, tl, triton
from hlwq_reference.numpy.int4 import QMAX, QMIN
from hlwq_reference.numpy.int4_asym import LEVELS

__all__ = ["int4_asym_minmax_pack"]

_MAX_CHUNK = 256
_TILE = 4096  # weight elements a program
_STORAGE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}

if triton is not None:

    @triton.jit
    def _round_to_storage(x, STORAGE: tl.constexpr):
        """float32 ``x`` rounded to nearest even in the storage dtype (0 fp32, 1 bf16, 2 fp16), as float32."""
        if STORAGE == 1:  # by hand: the interpreter's bf16 cast truncates
            bits = x.to(tl.int32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
            x = bits.to(tl.float32, bitcast=True)
        elif STORAGE == 2:
            x = x.to(tl.float16).to(tl.float32)
        return x

    @triton.jit
    def _int4_asym_minmax_kernel(
        w_ptr, scale_ptr, packed_ptr, zero_ptr,
        N, NG, K8, stride_wn, stride_wk, eps,
        G: tl.constexpr, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
        STORAGE: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr, LEVELS: tl.constexpr,
    ):
        NCHUNK: tl.constexpr = G // CHUNK
        MAGIC: tl.constexpr = 12582912.0  # 1.5 * 2**23: x + MAGIC rounds x to an integer, half to even
        MAGIC_BITS: tl.constexpr = 0x4B400000
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        grps = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
        cols = tl.arange(0, CHUNK)
        row_ok = rows < N
        mask2 = row_ok[:, None] & (grps < NG)[None, :]
        mask3 = mask2[:, :, None]
        w_ptrs = (
            w_ptr
            + rows.to(tl.int64)[:, None, None] * stride_wn
            + (grps[None, :, None] * G + cols[None, None, :]).to(tl.int64) * stride_wk
        )
        if NCHUNK == 1:
            x = tl.load(w_ptrs, mask=mask3, other=0.0).to(tl.float32)

        # The range always includes 0 (lo <= 0 <= hi), as compressed-tensors clamps it.
        lo = tl.full([BLOCK_N, BLOCK_G], 0.0, tl.float32)
        hi = tl.full([BLOCK_N, BLOCK_G], 0.0, tl.float32)
        for c in range(NCHUNK):
            if NCHUNK > 1:
                x = tl.load(w_ptrs + c * CHUNK * stride_wk, mask=mask3, other=0.0).to(tl.float32)
            lo = tl.minimum(lo, tl.min(x, axis=2))
            hi = tl.maximum(hi, tl.max(x, axis=2))
        s = _round_to_storage(tl.div_rn(_round_to_storage(hi - lo, STORAGE), LEVELS), STORAGE)
        zf = _round_to_storage(QMIN - _round_to_storage(tl.div_rn(lo, s), STORAGE), STORAGE)
        zf = tl.where(zf != zf, 0.0, tl.minimum(tl.maximum(zf, QMIN), QMAX))  # NaN (0 / 0): zero group
        z = (zf + MAGIC).to(tl.int32, bitcast=True) - MAGIC_BITS
        s = tl.where(s == 0.0, eps, s)
        tl.store(scale_ptr + rows.to(tl.int64)[:, None] * NG + grps[None, :], s.to(scale_ptr.dtype.element_ty), mask=mask2)

        words = tl.arange(0, CHUNK // 8)
        p_ptrs = (
            packed_ptr
            + rows.to(tl.int64)[:, None, None] * K8
            + (grps[None, :, None] * (G // 8) + words[None, None, :])
        )
        shifts = (tl.arange(0, 8) * 4)[None, None, None, :]
        zc = z.to(tl.float32)[:, :, None]
        for c in range(NCHUNK):
            if NCHUNK > 1:
                x = tl.load(w_ptrs + c * CHUNK * stride_wk, mask=mask3, other=0.0).to(tl.float32)
            y = tl.minimum(tl.maximum(tl.div_rn(x, s[:, :, None]) + zc, QMIN), QMAX)
            u = (y + MAGIC).to(tl.int32, bitcast=True) - (MAGIC_BITS + QMIN)
            u = tl.reshape(u, [BLOCK_N, BLOCK_G, CHUNK // 8, 8]) << shifts
            tl.store(p_ptrs + c * (CHUNK // 8), tl.sum(u, axis=3), mask=mask3)

        # Zero points z - QMIN of rows 8i .. 8i+7 in word i (row 8i lowest); rows past N pack as 0.
        zu = tl.where(row_ok[:, None], z - QMIN, 0)
        zw = tl.sum(tl.reshape(zu, [BLOCK_N // 8, 8, BLOCK_G]) << (tl.arange(0, 8) * 4)[None, :, None], axis=1)
        wrow = tl.program_id(0) * (BLOCK_N // 8) + tl.arange(0, BLOCK_N // 8)
        zmask = (wrow < (N + 7) // 8)[:, None] & (grps < NG)[None, :]
        tl.store(zero_ptr + wrow.to(tl.int64)[:, None] * NG + grps[None, :], zw, mask=zmask)


def _tiles(n: int, n_groups: int, group_size: int) -> tuple[int, int, int]:
    """(CHUNK, BLOCK_G, BLOCK_N): power-of-two chunk dividing the group, about _TILE elements a program."""
    chunk = min(group_size & -group_size, _MAX_CHUNK)
    block_g = 1 if chunk < group_size else min(triton.next_power_of_2(n_groups), max(1, 256 // chunk))
    block_n = max(8, _TILE // (chunk * block_g))
    return chunk, block_g, min(block_n, max(8, triton.next_power_of_2(n)))


def int4_asym_minmax_pack(
    w: torch.Tensor,
    group_size: int,
    out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    num_warps: int = 4,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Min-max asymmetric INT4 of ``w`` [N, K] in one pass.

    Returns (packed int32 [N, K/8], scale [N, K/g] in ``w.dtype``, zero points int32 [ceil(N/8), K/g]),
    written into ``out`` (contiguous tensors of those shapes and dtypes) when given.
    Inputs are assumed validated by ``hlwq_kernels.ops.int4_asym``.
    """
    require_triton()
    n, k = w.shape
    n_groups = k // group_size
    packed, scale, zero = out or (
        torch.empty((n, k // 8), dtype=torch.int32, device=w.device),
        torch.empty((n, n_groups), dtype=w.dtype, device=w.device),
        torch.empty(((n + 7) // 8, n_groups), dtype=torch.int32, device=w.device),
    )
    chunk, block_g, block_n = _tiles(n, n_groups, group_size)
    grid = (triton.cdiv(n, block_n), triton.cdiv(n_groups, block_g))
    launch(
        _int4_asym_minmax_kernel, grid, w.device,
        w, scale, packed, zero,
        n, n_groups, k // 8, w.stride(0), w.stride(1), torch.finfo(w.dtype).eps,
        G=group_size, CHUNK=chunk, BLOCK_N=block_n, BLOCK_G=block_g, STORAGE=_STORAGE[w.dtype],
        QMIN=QMIN, QMAX=QMAX, LEVELS=float(LEVELS), num_warps=num_warps,
    )
    return packed, scale, zero
