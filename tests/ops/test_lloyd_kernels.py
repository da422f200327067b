"""Codebook quantize / dequantize and the one-pass Lloyd step: torch path and Triton kernels
(interpreter on CPU, compiled on CUDA) against the NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from hlwq_reference.numpy import lloyd_dequantize as ref_dequantize
from hlwq_reference.numpy import lloyd_quantize as ref_quantize
from hlwq_kernels.ops import lloyd_max_triton as lloyd_triton
from hlwq_kernels.ops.lloyd_max import Codebook, gaussian_codebook, lloyd_max
from tests.helpers import kernel_devices

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _custom_codebook(levels: list[float]) -> Codebook:
    lev = np.array(levels, dtype=np.float64)
    return Codebook(lev, (lev[:-1] + lev[1:]) / 2, float("nan"), 0, True)


def _inputs(cb: Codebook, size: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Gaussian values plus every threshold and level exactly (ties), NaN and ±inf."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(size, generator=g, dtype=torch.float64) * 1.5
    special = torch.tensor([*cb.thresholds, *cb.levels, float("nan"), float("inf"), -float("inf"), 0.0, -0.0])
    x = torch.cat([x, special.to(torch.float64)])[torch.randperm(size + special.numel(), generator=g)]
    return x.to(dtype)


def _expected_indices(cb: Codebook, x: torch.Tensor) -> np.ndarray:
    cd = np.float64 if x.dtype == torch.float64 else np.float32
    return ref_quantize(x.to(torch.float64).numpy().astype(cd), cb.thresholds.astype(cd))


CODEBOOKS = st.one_of(
    st.sampled_from([1, 2, 3, 16, 32, 255, 256, 300]).map(gaussian_codebook),
    st.just(_custom_codebook([-3.0, 0.0, 1e-6, 2e-6, 3e-6, 10.0])),  # several thresholds per grid cell
    st.just(_custom_codebook([0.5, 0.5, 0.5, 2.0])),  # repeated levels (few distinct values)
)


@pytest.mark.parametrize("device", kernel_devices())
@given(cb=CODEBOOKS, size=st.integers(0, 3000), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**31 - 1))
def test_quantize_matches_reference(device, cb, size, dtype, seed):
    x = _inputs(cb, size, dtype, seed)
    want = _expected_indices(cb, x)
    for backend in ("torch", "triton"):
        got = cb.quantize(x.to(device), backend=backend)
        assert got.dtype == (torch.uint8 if cb.levels.size <= 256 else torch.int16)
        assert got.shape == x.shape
        np.testing.assert_array_equal(got.cpu().numpy().astype(np.int64), want)


@pytest.mark.parametrize("device", kernel_devices())
def test_quantize_ties_go_up_and_keeps_shape(device):
    cb = gaussian_codebook(4)
    t = torch.tensor(cb.thresholds, dtype=torch.float64).reshape(1, 3).expand(2, 3).contiguous()
    for backend in ("torch", "triton"):
        got = cb.quantize(t.to(device), backend=backend).cpu()
        assert got.shape == (2, 3)
        np.testing.assert_array_equal(got.numpy(), [[1, 2, 3], [1, 2, 3]])
        nan = cb.quantize(torch.tensor([float("nan")], device=device), backend=backend)
        assert nan.item() == 0


@pytest.mark.parametrize("device", kernel_devices())
@given(
    n=st.sampled_from([2, 16, 256, 300]),
    size=st.integers(0, 2500),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**31 - 1),
)
def test_dequantize_matches_reference(device, n, size, dtype, seed):
    cb = gaussian_codebook(n)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (size,), generator=g).to(cb.index_dtype)
    want = ref_dequantize(idx.long().numpy(), cb.levels)
    for backend in ("torch", "triton"):
        got = cb.dequantize(idx.to(device), dtype=dtype, backend=backend)
        assert got.dtype == dtype and got.shape == idx.shape
        np.testing.assert_array_equal(got.cpu().to(torch.float64).numpy(), torch.tensor(want).to(dtype).double().numpy())


def test_dequantize_rejects_out_of_range_on_torch_path():
    with pytest.raises(ValueError):
        gaussian_codebook(4).dequantize(torch.tensor([4], dtype=torch.uint8))


@pytest.mark.parametrize("device", kernel_devices())
@given(
    n=st.sampled_from([2, 5, 32, 256]),
    size=st.integers(1, 4000),
    dtype=st.sampled_from([torch.bfloat16, torch.float32, torch.float64]),
    weighted=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_lloyd_step_kernel_matches_reference(device, n, size, dtype, weighted, seed):
    from hlwq_kernels.ops.lloyd_max import _lloyd_step

    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(size, generator=g, dtype=torch.float64) * 2).to(dtype)
    w = torch.rand(size, generator=g, dtype=torch.float32) if weighted else None
    levels = gaussian_codebook(n).levels * 2
    cd = np.float64 if dtype == torch.float64 else np.float32
    xn = x.double().numpy()
    wn = np.ones(size) if w is None else w.double().numpy()
    idx = ref_quantize(xn.astype(cd), ((levels[:-1] + levels[1:]) / 2).astype(cd))
    want_w = np.bincount(idx, weights=wn, minlength=n)
    want_s = np.bincount(idx, weights=wn * xn, minlength=n)
    want_e = np.sum(wn * (xn - levels.astype(cd).astype(np.float64)[idx]) ** 2)
    rtol = 1e-12 if dtype == torch.float64 else 2e-5
    for triton in (False, True):
        wsum, ssum, err = _lloyd_step(x.to(device), None if w is None else w.to(device), levels, triton)
        np.testing.assert_allclose(wsum, want_w, rtol=rtol, atol=rtol * size)
        np.testing.assert_allclose(ssum, want_s, rtol=rtol, atol=rtol * np.abs(wn * xn).sum())
        np.testing.assert_allclose(err, want_e, rtol=rtol * 10)


@pytest.mark.parametrize("device", kernel_devices())
def test_empirical_solver_triton_equals_torch(device):
    x = torch.randn(3000, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(device)
    w = torch.rand(3000, generator=torch.Generator().manual_seed(6), dtype=torch.float64).to(device)
    a = lloyd_max(levels=8, samples=x, weights=w, backend="torch")
    b = lloyd_max(levels=8, samples=x, weights=w, backend="triton")
    np.testing.assert_allclose(a.levels, b.levels, rtol=0, atol=1e-12)
    assert a.iterations == b.iterations and abs(a.mse - b.mse) < 1e-12


def test_assign_table_is_exact_near_grid_edges():
    # every float32 value around every threshold of a 5-bit codebook lands in the right cell
    cb = gaussian_codebook(32)
    t32 = cb.thresholds.astype(np.float32)
    around = np.concatenate([np.nextafter(t32, np.float32(-np.inf)), t32, np.nextafter(t32, np.float32(np.inf))])
    table = lloyd_triton.assign_table(cb.thresholds, torch.float32, torch.device("cpu"))
    g = table.grid_of(around)
    lut = table.lut.numpy()
    thr = table.thr.numpy()
    got = lut[g] + sum((around >= thr[lut[g] + k]).astype(np.int64) for k in range(table.k))
    np.testing.assert_array_equal(got, ref_quantize(around, t32))


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("levels", [16, 256, 300])
def test_quantize_every_16bit_pattern(device, dtype, levels):
    """The 16-bit lookup kernel on all 65536 inputs (±0, subnormals, ±inf, NaN) against the reference."""
    cb = gaussian_codebook(levels)
    x = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(dtype)
    got = cb.quantize(x.to(device), backend="triton").cpu()
    assert got.dtype == cb.index_dtype
    np.testing.assert_array_equal(got.numpy().astype(np.int64), _expected_indices(cb, x))
