"""Fused INT4 quantize+pack Triton kernel (interpreter on CPU, compiled on CUDA) against the references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import hlwq_reference.numpy.int4 as ref
from hlwq_kernels.ops.int4 import Int4Weight, dequantize_int4, quantize_int4, quantize_int4_with_scale
from hlwq_kernels.ops.int4_triton import MIN_RATIO, int4_quantize_pack
from tests.helpers import kernel_devices, to_numpy
from tests.ops.test_int4 import DTYPES, half_integer_ties, weights

def _cpu(q: Int4Weight) -> Int4Weight:
    return Int4Weight(q.packed.cpu(), q.scale.cpu(), q.shape, q.group_size)


# group sizes: one chunk (8..256), several chunks (48 = 3 x 16, 384 = 3 x 128, 512 = 2 x 256)
shapes = st.tuples(st.integers(1, 19), st.integers(1, 5), st.sampled_from([8, 32, 48, 128]))


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("dtype", DTYPES)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_absmax_kernel_bit_exact(device: str, dtype: torch.dtype, shape: tuple, seed: int) -> None:
    n, groups, g = shape
    w = weights(n, groups * g, dtype, seed, tail="t")
    expected = ref.quantize_int4(to_numpy(w), g, "absmax")
    got = quantize_int4(w.to(device), g, "absmax", backend="triton")
    assert got.scale.dtype == dtype
    assert np.array_equal(got.packed.cpu().numpy(), expected.packed)
    assert np.array_equal(got.scale.float().cpu().numpy(), expected.scale.astype(np.float32))


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize(("n", "k", "g"), [(3, 384, 384), (5, 1024, 512), (2, 96, 96)])
def test_absmax_kernel_multi_chunk_groups(device: str, n: int, k: int, g: int) -> None:
    w = weights(n, k, torch.bfloat16, k)
    expected = ref.quantize_int4(to_numpy(w), g, "absmax")
    got = quantize_int4(w.to(device), g, "absmax", backend="triton")
    assert np.array_equal(got.packed.cpu().numpy(), expected.packed)
    assert np.array_equal(got.scale.float().cpu().numpy(), expected.scale.astype(np.float32))


# (lanes, warps, block_g) launch configurations (bench/gpu_int4.py --sweep); None: the default
LAUNCHES = [(4, 2, None), (4, 1, None), (4, 1, 8), (4, 4, None), (2, 1, None), (2, 2, None), (2, 1, 8), (2, 2, 8),
            (1, 1, None), (8, 2, None)]


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize(("lanes", "warps", "block_g"), LAUNCHES)
@pytest.mark.parametrize(("k", "g"), [(1024, 128), (480, 48)])
def test_absmax_kernel_launch_configurations(device: str, lanes: int, warps: int, block_g: int | None, k: int,
                                             g: int) -> None:
    w = weights(19, k, torch.bfloat16, lanes * 100 + warps, tail="t")
    expected = ref.quantize_int4(to_numpy(w), g, "absmax")
    packed, scale = int4_quantize_pack(w.to(device), g, "absmax", block_g=block_g, num_warps=warps, lanes=lanes)
    assert np.array_equal(packed.cpu().numpy(), expected.packed)
    assert np.array_equal(scale.float().cpu().numpy(), expected.scale.astype(np.float32))


@pytest.mark.parametrize("device", kernel_devices())
@given(shape=shapes, seed=st.integers(0, 2**16), dtype=st.sampled_from(DTYPES))
def test_given_scale_kernel_bit_exact(device: str, shape: tuple, seed: int, dtype: torch.dtype) -> None:
    n, groups, g = shape
    w = weights(n, groups * g, dtype, seed)
    scale = quantize_int4(w, g, "absmax").scale.float() * 0.8 + 1e-6  # any positive float32 scale
    got = quantize_int4_with_scale(w.to(device), scale.to(device), backend="triton")
    expected = ref.quantize_int4_with_scale(to_numpy(w), scale.numpy())
    assert np.array_equal(got.packed.cpu().numpy(), expected.packed)


@pytest.mark.parametrize("device", kernel_devices())
@given(shape=shapes, seed=st.integers(0, 2**16), tail=st.sampled_from(["gauss", "t"]), dtype=st.sampled_from(DTYPES))
def test_mse_kernel_bit_exact(device: str, shape: tuple, seed: int, tail: str, dtype: torch.dtype) -> None:
    n, groups, g = shape
    w = weights(n, groups * g, dtype, seed, tail)
    expected = ref.quantize_int4(to_numpy(w), g, "mse")
    got = _cpu(quantize_int4(w.to(device), g, "mse", backend="triton"))
    assert np.array_equal(got.scale.float().numpy(), expected.scale.astype(np.float32))
    assert np.array_equal(got.packed.numpy(), expected.packed)


# (lanes, warps, block_g, ratios): the MSE kernel's launch configurations and trial sets of
# bench/gpu_int4.py --mse-sweep
E3, E2 = (1.0, 0.9, 0.825), (1.0, 0.875)
MSE_LAUNCHES = [(2, 1, None, None), (4, 2, None, None), (2, 2, None, None), (4, 1, None, None), (2, 1, 8, None),
                (2, 1, None, E3), (2, 1, None, E2), (4, 2, None, E3)]


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize(("lanes", "warps", "block_g", "ratios"), MSE_LAUNCHES)
@pytest.mark.parametrize(("dtype", "k", "g"), [(torch.bfloat16, 1024, 128), (torch.bfloat16, 480, 48),
                                               (torch.float16, 512, 64), (torch.float32, 256, 128)])
def test_mse_kernel_launch_configurations(device: str, lanes: int, warps: int, block_g: int | None,
                                          ratios: tuple | None, dtype: torch.dtype, k: int, g: int) -> None:
    w = weights(19, k, dtype, lanes * 100 + warps, tail="t")
    expected = ref.mse_scale(to_numpy(w), g, ratios=ref.RATIOS if ratios is None else np.array(ratios, np.float32))
    packed, scale = int4_quantize_pack(w.to(device), g, "mse", block_g=block_g, num_warps=warps, lanes=lanes,
                                       ratios=ratios)
    assert np.array_equal(scale.float().cpu().numpy(), expected.astype(np.float32))
    assert np.array_equal(packed.cpu().numpy(), ref.quantize_int4_with_scale(to_numpy(w), expected).packed)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_kernel_outside_search_range(device: str, dtype: torch.dtype) -> None:
    """Groups whose absmax scale lies outside SEARCH_RANGE keep it (bf16, fp32: tiny and huge rows)."""
    w = weights(4, 256, dtype, 9, tail="t").float()
    if dtype != torch.float16:
        w[1] *= 2.0**-115
        w[2] *= 2.0**110
    w = w.to(dtype)
    expected = ref.quantize_int4(to_numpy(w), 128, "mse")
    got = quantize_int4(w.to(device), 128, "mse", backend="triton")
    assert np.array_equal(got.scale.float().cpu().numpy(), expected.scale.astype(np.float32))
    assert np.array_equal(got.packed.cpu().numpy(), expected.packed)


def test_mse_ratios_below_the_exact_sum_bound_raise() -> None:
    with pytest.raises(ValueError, match="at least"):
        int4_quantize_pack(weights(2, 128, torch.bfloat16, 0), 128, "mse", ratios=(1.0, 0.4))
    assert float(ref.RATIOS.min()) >= MIN_RATIO


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize(("magnitude", "shrink"), [(2.0**-100, 0.3), (1.0, 2.0**-70), (2.0**60, 0.3)])
def test_given_scales_outside_the_fast_division_range(device: str, magnitude: float, shrink: float) -> None:
    """Tiny scales or huge quotients take the IEEE-division path: still bit-exact."""
    w = weights(6, 256, torch.float32, 11) * magnitude
    scale = quantize_int4(w, 128, "absmax", backend="torch").scale * shrink
    got = quantize_int4_with_scale(w.to(device), scale.to(device), backend="triton")
    expected = ref.quantize_int4_with_scale(to_numpy(w), scale.numpy())
    assert np.array_equal(got.packed.cpu().numpy(), expected.packed)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("rule", ["absmax", "mse"])
def test_kernel_exact_half_integer_quotients(device: str, rule: str) -> None:
    w = half_integer_ties(4, 256)
    expected = ref.quantize_int4(to_numpy(w), 128, rule)
    got = quantize_int4(w.to(device), 128, rule, backend="triton")
    assert np.array_equal(got.packed.cpu().numpy(), expected.packed)
    assert np.array_equal(got.scale.float().cpu().numpy(), expected.scale.astype(np.float32))


@pytest.mark.parametrize("device", kernel_devices())
def test_kernel_reads_strided_weights(device: str) -> None:
    w = weights(256, 24, torch.bfloat16, 5).to(device).T  # [24, 256] view with strides (1, 24)
    got = quantize_int4(w, 32, "absmax", backend="triton")
    expected = quantize_int4(w.contiguous().cpu(), 32, "absmax", backend="torch")
    assert torch.equal(got.packed.cpu(), expected.packed)
    assert torch.equal(dequantize_int4(got).cpu(), dequantize_int4(expected))


@pytest.mark.cuda
@pytest.mark.parametrize("rule", ["absmax", "mse"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_large_matches_torch_path(rule: str, dtype: torch.dtype) -> None:
    w = weights(1024, 4096, dtype, 7, tail="t").cuda()
    got = quantize_int4(w, 128, rule)
    expected = quantize_int4(w, 128, rule, backend="torch")
    assert torch.equal(got.packed, expected.packed) and torch.equal(got.scale, expected.scale)
