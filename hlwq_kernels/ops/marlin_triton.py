"""Marlin repack kernel: compressed-tensors words [N, K/8] and scales [N, K/g] -> Marlin layout, one launch.

Program ``(kb, nt)`` owns one n-tile (64 weight rows) x ``BK`` k-tiles of the words and reads its
input block with contiguous loads. Byte ``b = t % 4`` of word ``2 kt + h`` of weight row ``c`` holds
the codes of columns ``16 kt + 8 h + 2 b`` (low nibble) and ``+ 1`` (high nibble); with
``c = 64 nt + 16 w + 8 a + t // 4`` those are the Marlin nibbles ``2 a + h`` and ``4 + 2 a + h`` of
word ``4 t + w`` (layout in ``hlwq_kernels.ops.marlin``). The kernel splits the block into
(w, a, t//4, kt, h, b), moves each byte's two nibbles to their place, permutes to
(kt, t//4, b, w, a, h) and merges a and h.

The same program also writes the transposed, permuted scales of its 64 rows for its share of the
groups (``SPB`` groups per k-block): ``out[gi, 64 nt + p] = scale[64 nt + src(p), gi]`` with
``src(p) = p // 8 + 8 (p % 8)`` for grouped scales, and per run of 32
``src = 2 i + (0, 1, 8, 9, 16, 17, 24, 25)[m]`` (``p = 8 i + m``) when one group spans K.
Their load is issued first, beside the words' load: after the words' store, the compiler may not move
it ahead (the pointers might alias), and each program would wait for a second memory round trip.
"""

from __future__ import annotations

import torch

from hlwq_kernels.ops._triton import (
    PreparedCalls, cdiv, launch, next_power_of_2, require_triton, tensor_key, tl, triton,
)

__all__ = ["marlin_repack"]

_PREPARED = PreparedCalls()  # launches by input kind and launch options (_triton.PreparedCalls)


@triton.jit
def _marlin_repack_kernel(
    packed_ptr, out_ptr, scale_ptr, sout_ptr, K8, N, N2, KT, NG,
    BK: tl.constexpr, SPB: tl.constexpr, PER_CHANNEL: tl.constexpr,
):
    kb = tl.program_id(0)
    kt0 = kb * BK
    nt = tl.program_id(1)

    # scales of this program's groups, 64 columns of the [NG, N] output (loaded now, stored last)
    p = tl.arange(0, 64)
    if PER_CHANNEL:
        m = p % 8
        src = (p // 32) * 32 + 2 * ((p % 32) // 8) + (m % 2) + 8 * (m // 2)
    else:
        src = p // 8 + 8 * (p % 8)
    gi = kb * SPB + tl.arange(0, SPB)
    gmask = (gi < NG)[:, None]
    s = tl.load(scale_ptr + (nt * 64 + src).to(tl.int64)[None, :] * NG + gi[:, None], mask=gmask)

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
    tl.store(sout_ptr + gi.to(tl.int64)[:, None] * N + (nt * 64 + p)[None, :], s, mask=gmask)


def marlin_repack(
    packed: torch.Tensor, scale: torch.Tensor, group_size: int, block_k: int = 16, num_warps: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Marlin ``(qweight [K/16, 2N], scales [K/g, N])`` from compressed-tensors words [N, K/8] and
    scales [N, K/g] (N % 64 == 0, K % 16 == 0; inputs assumed validated by ``hlwq_kernels.ops.marlin``)."""
    require_triton()
    packed = packed.contiguous()
    scale = scale.contiguous()
    n, k8 = packed.shape
    n_groups = scale.shape[1]
    kt_count = k8 // 2
    out = torch.empty((kt_count, 2 * n), dtype=torch.int32, device=packed.device)
    sout = torch.empty((n_groups, n), dtype=scale.dtype, device=packed.device)
    key = (tensor_key(packed), tensor_key(scale), group_size, block_k, num_warps) if packed.is_cuda else None
    if _PREPARED.run(key, packed, out, scale, sout):
        return out, sout
    bk = min(block_k, next_power_of_2(kt_count))
    k_blocks = cdiv(kt_count, bk)
    spb = next_power_of_2(cdiv(n_groups, k_blocks))
    tail = (k8, n, 2 * n, kt_count, n_groups)
    prepared = launch(
        _marlin_repack_kernel, (k_blocks, n // 64), packed.device, packed, out, scale, sout, *tail,
        BK=bk, SPB=spb, PER_CHANNEL=group_size == 8 * k8, num_warps=num_warps,
    )
    _PREPARED.add(key, prepared, tail)
    return out, sout
