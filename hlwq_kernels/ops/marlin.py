"""Marlin tile layout (INT4 weights, 16-bit activations): pack an ``Int4Weight`` for Marlin-style kernels.

Layout (docs/design.md §3). Let ``Q[k, n] = q + 8`` be the transposed codes, ``K x N``. The output is int32
``[K/16, 2N]``: for k-tile ``kt``, n-tile ``nt < N/64``, lane ``t < 32`` and warp ``w < 4``, with
``r0 = 16 kt + 2 (t % 4)`` and ``c0 = 64 nt + 16 w + t // 4``, word ``B[kt, 128 nt + 4 t + w]`` holds
in nibbles 0..7: ``Q[r0,c0], Q[r0+8,c0], Q[r0,c0+8], Q[r0+8,c0+8], Q[r0+1,c0], Q[r0+9,c0],
Q[r0+1,c0+8], Q[r0+9,c0+8]``. Needs ``K % 16 == 0`` and ``N % 64 == 0``.

Scales ``[K/g, N]`` (the transpose of ``Int4Weight.scale``) are permuted in runs: with ``g < K``
runs of 64 take ``out[8 i + j] = in[i + 8 j]``; with one group over all of K (per-channel) runs of 32
take ``out[8 i + m] = in[2 i + (0, 1, 8, 9, 16, 17, 24, 25)[m]]``.

CUDA tensors repack words and scales in one launch of the Triton kernel in
``hlwq_kernels.ops.marlin_triton`` (reads the compressed-tensors tensors directly, no host work per
call); CPU tensors use the torch path below (its index tables are built once per device).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from hlwq_kernels.ops._triton import use_triton
from hlwq_kernels.ops._checks import check_instance
from hlwq_kernels.ops.int4 import Int4Weight, check_int4_shape, check_int4_weight, pack_int4, unpack_int4

__all__ = ["MarlinWeight", "marlin_pack", "marlin_unpack", "marlin_scale_perm", "check_marlin_shape"]

_GROUPED_PERM = [i + 8 * j for i in range(8) for j in range(8)]
_CHANNEL_PERM = [2 * i + j for i in range(4) for j in (0, 1, 8, 9, 16, 17, 24, 25)]


@dataclass(frozen=True)
class MarlinWeight:
    """INT4 weight in Marlin tile layout."""

    qweight: torch.Tensor  # int32 [K // 16, 2 * N]
    scales: torch.Tensor  # [K // group_size, N], permuted
    shape: tuple[int, int]  # (N, K)
    group_size: int


def check_marlin_shape(shape: tuple[int, ...], group_size: int) -> tuple[int, int]:
    """Return ``(N, K)`` or raise ValueError naming the shape and the Marlin rule it breaks."""
    n, k = check_int4_shape(shape, group_size)
    if k % 16 or n % 64:
        raise ValueError(f"Marlin layout needs K % 16 == 0 and N % 64 == 0, got weight shape [N, K] = {(n, k)}")
    return n, k


def marlin_scale_perm(group_size: int, k: int) -> list[int]:
    """The permutation applied to each run of scales (64 long when grouped, 32 when per-channel)."""
    return _CHANNEL_PERM if group_size == k else _GROUPED_PERM


@functools.lru_cache(maxsize=None)
def _tile_order(device: torch.device) -> torch.Tensor:
    """Flat index ``16-row x 64-col tile -> r * 64 + c`` of nibble ``i`` of word ``4 t + w``, in word order."""
    t = torch.arange(32, device=device).view(32, 1, 1)
    w = torch.arange(4, device=device).view(1, 4, 1)
    i = torch.arange(8, device=device).view(1, 1, 8)
    r = 2 * (t % 4) + 8 * (i % 2) + i // 4  # nibbles: rows r0, r0+8, r0, r0+8, r0+1, r0+9, r0+1, r0+9
    c = 16 * w + t // 4 + 8 * ((i // 2) % 2)  # columns c0, c0, c0+8, c0+8, ...
    return (r * 64 + c).reshape(-1)


def _pack_qweight_torch(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    codes_t = unpack_int4(packed, k).T  # [K, N] codes q (Q = q + 8)
    tiles = codes_t.reshape(k // 16, 16, n // 64, 64).permute(0, 2, 1, 3).reshape(k // 16, n // 64, 1024)
    return pack_int4(tiles[..., _tile_order(packed.device)].reshape(k // 16, 16 * n))


def _unpack_qweight_torch(qweight: torch.Tensor, n: int, k: int) -> torch.Tensor:
    ordered = unpack_int4(qweight, 16 * n).reshape(k // 16, n // 64, 1024)
    tiles = torch.empty_like(ordered)
    tiles[..., _tile_order(qweight.device)] = ordered
    codes_t = tiles.reshape(k // 16, n // 64, 16, 64).permute(0, 2, 1, 3).reshape(k, n)
    return pack_int4(codes_t.T)


@functools.lru_cache(maxsize=None)
def _index(perm: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(perm, device=device)


def _permute_runs(s: torch.Tensor, perm: list[int]) -> torch.Tensor:
    return s.reshape(-1, len(perm))[:, _index(tuple(perm), s.device)].reshape(s.shape)


def marlin_pack(q: Int4Weight, backend: str = "auto") -> MarlinWeight:
    """Repack a compressed-tensors ``Int4Weight`` into the Marlin tile layout (weights and scales)."""
    check_int4_weight(q, "marlin_pack repacks symmetric INT4 only")
    n, k = check_marlin_shape(q.shape, q.group_size)
    if use_triton(backend, q.packed):
        from hlwq_kernels.ops.marlin_triton import marlin_repack

        qweight, scales = marlin_repack(q.packed, q.scale, q.group_size)
    else:
        qweight = _pack_qweight_torch(q.packed, n, k)
        scales = _permute_runs(q.scale.T.contiguous(), marlin_scale_perm(q.group_size, k))
    return MarlinWeight(qweight, scales, (n, k), q.group_size)


def marlin_unpack(m: MarlinWeight) -> Int4Weight:
    """Inverse of ``marlin_pack``: back to the compressed-tensors layout."""
    check_instance(m, MarlinWeight, "m")
    n, k = check_marlin_shape(m.shape, m.group_size)
    if m.qweight.shape != (k // 16, 2 * n) or m.scales.shape != (k // m.group_size, n):
        raise ValueError(f"MarlinWeight tensors {tuple(m.qweight.shape)}, {tuple(m.scales.shape)} do not match shape {(n, k)}")
    perm = marlin_scale_perm(m.group_size, k)
    inverse = sorted(range(len(perm)), key=perm.__getitem__)
    scale = _permute_runs(m.scales, inverse).T.contiguous()
    return Int4Weight(_unpack_qweight_torch(m.qweight, n, k), scale, (n, k), m.group_size)
