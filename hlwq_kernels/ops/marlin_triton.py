"""Marlin repack kernel: compressed-tensors words [N, K/8] -> Marlin tile layout [K/16, 2N] (int32).

One program owns one n-tile (64 weight rows) x ``BK`` k-tiles and reads its input block with
contiguous loads. Byte ``b = t % 4`` of word ``2 kt + h`` of weight row ``c`` holds the codes of
columns ``16 kt + 8 h + 2 b`` (low nibble) and ``+ 1`` (high nibble); with ``c = 64 nt + 16 w + 8 a
+ t // 4`` those are the Marlin nibbles ``2 a + h`` and ``4 + 2 a + h`` of word ``4 t + w``
(layout in ``hlwq_kernels.ops.marlin``). The kernel splits the block into (w, a, t//4, kt, h, b), moves
each byte's two nibbles to their place, permutes to (kt, t//4, b, w, a, h) and merges a and h.
"""

from __future__ import annotations

import torch

from hlwq_kernels.ops._triton import launch, require_triton, triton, tl

__all__ = ["marlin_repack"]

if triton is not None:

    @triton.jit
    def _marlin_repack_kernel(packed_ptr, out_ptr, K8, N2, KT, BK: tl.constexpr):
        kt0 = tl.program_id(0) * BK
        nt = tl.program_id(1)
        rows = nt * 64 + tl.arange(0, 64)
        kw = 2 * kt0 + tl.arange(0, 2 * BK)
        x = tl.load(
            packed_ptr + rows.to(tl.int64)[:, None] * K8 + kw[None, :],
            mask=(kw < K8)[None, :],
            other=0,
        )
        x = tl.reshape(x, [4, 2, 8, BK, 2])  # (w, a, t // 4, kt, h)
        b = tl.arange(0, 4)[None, None, None, None, None, :]
        a = tl.arange(0, 2)[None, :, None, None, None, None]
        h = tl.arange(0, 2)[None, None, None, None, :, None]
        byte = (x[:, :, :, :, :, None] >> (8 * b)) & 0xFF  # (w, a, t // 4, kt, h, b)
        pos = 4 * (2 * a + h)
        y = ((byte & 0xF) << pos) | ((byte >> 4) << (pos + 16))
        y = tl.reshape(tl.permute(y, (3, 2, 5, 0, 1, 4)), [BK, 128, 2, 2])  # (kt, 4 t + w, a, h)
        y0, y1 = tl.split(y)
        y = y0 | y1
        y0, y1 = tl.split(y)
        words = y0 | y1
        kt = kt0 + tl.arange(0, BK)
        cols = nt * 128 + tl.arange(0, 128)
        tl.store(out_ptr + kt.to(tl.int64)[:, None] * N2 + cols[None, :], words, mask=(kt < KT)[:, None])


def marlin_repack(packed: torch.Tensor, block_k: int = 32, num_warps: int = 4) -> torch.Tensor:
    """Marlin ``qweight`` [K/16, 2N] from compressed-tensors words [N, K/8] (N % 64 == 0, K % 16 == 0)."""
    require_triton()
    packed = packed.contiguous()
    n, k8 = packed.shape
    kt_count = k8 // 2
    out = torch.empty((kt_count, 2 * n), dtype=torch.int32, device=packed.device)
    bk = min(block_k, triton.next_power_of_2(kt_count))
    grid = (triton.cdiv(kt_count, bk), n // 64)
    launch(_marlin_repack_kernel, grid, packed.device, packed, out, k8, 2 * n, kt_count, BK=bk, num_warps=num_warps)
    return out
