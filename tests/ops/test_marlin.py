"""Marlin tile layout: closed-form words, scale permutations, round trips, Triton repack kernel."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import hlwq_reference.numpy.marlin as ref
from hlwq_kernels.ops.int4 import Int4Weight, quantize_int4, unpack_int4
from hlwq_kernels.ops.marlin import MarlinWeight, marlin_pack, marlin_unpack
from hlwq_kernels.ops.marlin_triton import marlin_repack
from tests.helpers import kernel_devices
from tests.ops.test_int4 import weights

BACKENDS = ["torch"] + [f"triton-{d}" for d in kernel_devices()]


def pack_with(q: Int4Weight, backend: str) -> MarlinWeight:
    if backend == "torch":
        return marlin_pack(q, backend="torch")
    device = backend.split("-")[1]
    q = Int4Weight(q.packed.to(device), q.scale.to(device), q.shape, q.group_size)
    m = marlin_pack(q, backend="triton")
    return MarlinWeight(m.qweight.cpu(), m.scales.cpu(), m.shape, m.group_size)


def closed_form_words(q: Int4Weight) -> list[list[int]]:
    """Each Marlin word straight from the formula in docs/design.md §3, one word at a time."""
    n, k = q.shape
    codes = unpack_int4(q.packed, k).tolist()

    def big_q(r: int, c: int) -> int:  # Q[k, n] = q + 8, the transposed codes
        return codes[c][r] + 8

    words = [[0] * (2 * n) for _ in range(k // 16)]
    for kt in range(k // 16):
        for nt in range(n // 64):
            for t in range(32):
                for w in range(4):
                    r0, c0 = 16 * kt + 2 * (t % 4), 64 * nt + 16 * w + t // 4
                    nibbles = [
                        big_q(r0, c0), big_q(r0 + 8, c0), big_q(r0, c0 + 8), big_q(r0 + 8, c0 + 8),
                        big_q(r0 + 1, c0), big_q(r0 + 9, c0), big_q(r0 + 1, c0 + 8), big_q(r0 + 9, c0 + 8),
                    ]
                    words[kt][128 * nt + 4 * t + w] = sum(v << (4 * i) for i, v in enumerate(nibbles))
    return words


def closed_form_scales(q: Int4Weight) -> list[list[float]]:
    """Scales [K/g, N] with each run permuted as the formula says, element by element."""
    n, k = q.shape
    s_t = q.scale.T.float().tolist()
    if q.group_size < k:
        perm, run = [i + 8 * j for i in range(8) for j in range(8)], 64
    else:
        perm, run = [2 * i + j for i in range(4) for j in (0, 1, 8, 9, 16, 17, 24, 25)], 32
    return [[row[(c // run) * run + perm[c % run]] for c in range(n)] for row in s_t]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("n", "k", "g"), [(64, 256, 128), (128, 64, 32), (64, 160, 160), (192, 32, 16)])
def test_marlin_words_and_scales_match_closed_form(backend: str, n: int, k: int, g: int) -> None:
    q = quantize_int4(weights(n, k, torch.bfloat16, n + k), g)
    m = pack_with(q, backend)
    assert m.qweight.dtype == torch.int32 and m.qweight.shape == (k // 16, 2 * n)
    assert (m.qweight.to(torch.int64) & 0xFFFFFFFF).tolist() == closed_form_words(q)
    assert m.scales.dtype == q.scale.dtype and m.scales.float().tolist() == closed_form_scales(q)


@pytest.mark.parametrize("backend", BACKENDS)
@given(
    n_tiles=st.integers(1, 3), k_tiles=st.integers(1, 20), g=st.sampled_from([16, 32, 64, 128, 0]),
    seed=st.integers(0, 2**16),
)
def test_marlin_round_trip_and_reference(backend: str, n_tiles: int, k_tiles: int, g: int, seed: int) -> None:
    n, k = 64 * n_tiles, 16 * k_tiles
    g = g or k  # 0: one group over all of K
    if k % g:
        g = 16
    q = quantize_int4(weights(n, k, torch.bfloat16, seed), g)
    m = pack_with(q, backend)
    qweight, scales = ref.marlin_pack(q.packed.numpy(), q.scale.float().numpy(), (n, k), g)
    assert np.array_equal(m.qweight.numpy(), qweight)
    assert np.array_equal(m.scales.float().numpy(), scales)
    back = marlin_unpack(m)
    assert torch.equal(back.packed, q.packed) and torch.equal(back.scale, q.scale)
    assert back.shape == q.shape and back.group_size == q.group_size
    packed, scale = ref.marlin_unpack(qweight, scales, (n, k), g)
    assert np.array_equal(packed, q.packed.numpy()) and np.array_equal(scale, q.scale.float().numpy())


@pytest.mark.parametrize(
    ("shape", "g", "match"),
    [((96, 128), 128, "N % 64"), ((64, 136), 8, "K % 16"), ((64, 128, 1), 128, "2-D"), ((64, 96), 64, "group_size")],
)
def test_marlin_bad_shapes_raise(shape: tuple, g: int, match: str) -> None:
    packed = torch.zeros(shape[0], max(shape[-1] // 8, 1), dtype=torch.int32)
    q = Int4Weight(packed, torch.ones(shape[0], max(shape[-1] // g, 1)), shape, g)
    with pytest.raises(ValueError, match=match):
        marlin_pack(q)


@pytest.mark.cuda
@pytest.mark.parametrize(("n", "k", "g"), [(4096, 1024, 128), (1024, 4096, 128), (512, 2048, 2048), (192, 4096, 32)])
def test_cuda_repack_large_matches_torch(n: int, k: int, g: int) -> None:
    q = quantize_int4(weights(n, k, torch.bfloat16, 9).cuda(), g)
    junk = torch.full((4 * n * k,), -1, dtype=torch.int32, device="cuda")  # poison reused memory
    del junk
    got, want = marlin_pack(q), marlin_pack(q, backend="torch")
    assert torch.equal(got.qweight, want.qweight) and torch.equal(got.scales, want.scales)


@pytest.mark.cuda
@pytest.mark.parametrize(("block_k", "warps"), [(32, 4), (16, 4), (8, 4), (16, 2), (8, 2), (32, 8), (64, 8), (4, 2)])
def test_cuda_repack_launch_configurations(block_k: int, warps: int) -> None:
    q = quantize_int4(weights(1024, 4096, torch.bfloat16, block_k).cuda(), 128)
    qweight, scales = marlin_repack(q.packed, q.scale, 128, block_k=block_k, num_warps=warps)
    want = marlin_pack(q, backend="torch")
    assert torch.equal(qweight, want.qweight) and torch.equal(scales, want.scales)
