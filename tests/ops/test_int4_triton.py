"""Fused INT4 quantize+pack Triton kernel (interpreter on CPU, compiled on CUDA) against the references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import hlwq_reference.numpy.int4 as ref
from hlwq_kernels.ops.int4 import Int4Weight, dequantize_int4, quantize_int4, quantize_int4_with_scale
from tests.helpers import kernel_devices, to_numpy
from tests.ops.test_int4 import DTYPES, group_errors, weights

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
@given(shape=shapes, seed=st.integers(0, 2**16), tail=st.sampled_from(["gauss", "t"]))
def test_mse_kernel_vs_reference(device: str, shape: tuple, seed: int, tail: str) -> None:
    n, groups, g = shape
    w = weights(n, groups * g, torch.bfloat16, seed, tail)
    got = _cpu(quantize_int4(w.to(device), g, "mse", backend="triton"))
    # the words are the codes of the returned scales, bit for bit
    assert np.array_equal(got.packed.numpy(), ref.quantize_int4_with_scale(to_numpy(w), got.scale.float().numpy()).packed)
    e_got = group_errors(w, got)
    e_ref = ref.group_sq_error(to_numpy(w), ref.mse_scale(to_numpy(w), g), g)
    e_abs = group_errors(w, quantize_int4(w, g, "absmax"))
    assert bool((e_got <= e_abs).all())
    np.testing.assert_allclose(e_got, e_ref, rtol=2e-3, atol=0)


@pytest.mark.parametrize("device", kernel_devices())
def test_kernel_reads_strided_weights(device: str) -> None:
    w = weights(256, 24, torch.bfloat16, 5).to(device).T  # [24, 256] view with strides (1, 24)
    got = quantize_int4(w, 32, "absmax", backend="triton")
    expected = quantize_int4(w.contiguous().cpu(), 32, "absmax", backend="torch")
    assert torch.equal(got.packed.cpu(), expected.packed)
    assert torch.equal(dequantize_int4(got).cpu(), dequantize_int4(expected))


@pytest.mark.cuda
@pytest.mark.parametrize("rule", ["absmax", "mse"])
def test_cuda_large_matches_torch_path(rule: str) -> None:
    w = weights(1024, 4096, torch.bfloat16, 7).cuda()
    got = quantize_int4(w, 128, rule)
    expected = quantize_int4(w, 128, rule, backend="torch")
    if rule == "absmax":
        assert torch.equal(got.packed, expected.packed) and torch.equal(got.scale, expected.scale)
    else:
        e_got, e_exp = group_errors(w.cpu(), _cpu(got)), group_errors(w.cpu(), _cpu(expected))
        np.testing.assert_allclose(e_got, e_exp, rtol=2e-3, atol=0)


