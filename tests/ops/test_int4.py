"""INT4 group quantization (torch path): bit-exact against compressed-tensors and the NumPy reference."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import hlwq_reference.numpy.int4 as ref
from tests.helpers import BAD_INT4_SHAPES, random_weight, to_numpy
from hlwq_kernels.ops.int4 import (
    Int4Weight,
    absmax_scale,
    dequantize_int4,
    int4_codes,
    pack_int4,
    quantize_int4,
    quantize_int4_with_scale,
    unpack_int4,
)

DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def weights(n: int, k: int, dtype: torch.dtype, seed: int, tail: str = "gauss") -> torch.Tensor:
    """Per-row magnitudes over two decades, a zero group and (``tail="t"``) outliers."""
    return random_weight((n, k), dtype, seed, tail=tail, row_decades=2.0, zero_half_row=True)


def compressed_tensors():
    """compressed-tensors' packing and quantization functions (the test is skipped without the package,
    as on the GPU image, so that the kernel tests importing this module still run there)."""
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.pack_quantized import helpers
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle import forward
    from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp

    def args(group_size: int) -> QuantizationArgs:
        return QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=group_size)

    return SimpleNamespace(pack=helpers.pack_to_int32, unpack=helpers.unpack_from_int32, args=args,
                           scales=compute_dynamic_scales_and_zp, quantize=forward.quantize, dequantize=forward.dequantize)


def group_errors(w: torch.Tensor, q: Int4Weight) -> np.ndarray:
    """Float64 squared error of each group."""
    return ref.group_sq_error(to_numpy(w), q.scale.float().numpy(), q.group_size)


shapes = st.tuples(st.integers(1, 9), st.integers(1, 4), st.sampled_from([8, 16, 32, 48, 128]))


def test_pack_known_words() -> None:
    q = torch.arange(-8, 8, dtype=torch.int8).view(1, 16)
    words = pack_int4(q)
    assert words.dtype == torch.int32
    assert [v & 0xFFFFFFFF for v in words[0].tolist()] == [0x76543210, 0xFEDCBA98]
    assert torch.equal(unpack_int4(words, 16), q)


@given(n=st.integers(1, 6), words=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_pack_unpack_match_compressed_tensors(n: int, words: int, seed: int) -> None:
    q = torch.randint(-8, 8, (n, 8 * words), generator=torch.Generator().manual_seed(seed), dtype=torch.int8)
    packed = pack_int4(q)
    ct = compressed_tensors()
    assert torch.equal(packed, ct.pack(q, 4))
    assert torch.equal(unpack_int4(packed, q.shape[1]), ct.unpack(packed, 4, q.shape))
    assert np.array_equal(packed.numpy(), ref.pack_int4(q.numpy()))


@pytest.mark.parametrize("dtype", DTYPES)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_absmax_bit_exact_vs_compressed_tensors(dtype: torch.dtype, shape: tuple, seed: int) -> None:
    n, groups, g = shape
    w = weights(n, groups * g, dtype, seed)
    ours = quantize_int4(w, g, "absmax", backend="torch")
    ct = compressed_tensors()
    scale, _ = ct.scales(w, ct.args(g), module=None)
    assert ours.scale.dtype == dtype and torch.equal(ours.scale, scale)
    # compressed-tensors' GPU path: float32 quotient by the scale as stored.
    codes = ct.quantize(w.float(), scale.float(), None, ct.args(g), dtype=torch.int8)
    assert torch.equal(ours.packed, ct.pack(codes, 4))
    assert torch.equal(dequantize_int4(ours), ct.dequantize(codes, scale, None, ct.args(g)))


def test_zero_group_gets_dtype_eps() -> None:
    w = weights(4, 256, torch.bfloat16, 0)
    w[2, 128:] = 0
    q = quantize_int4(w, 128)
    assert q.scale[2, 1].item() == torch.finfo(torch.bfloat16).eps
    assert torch.equal(unpack_int4(q.packed, 256)[2, 128:], torch.zeros(128, dtype=torch.int8))


@pytest.mark.parametrize("dtype", DTYPES)
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_torch_matches_numpy_reference(dtype: torch.dtype, shape: tuple, seed: int) -> None:
    n, groups, g = shape
    w = weights(n, groups * g, dtype, seed, tail="t")
    expected = ref.quantize_int4(to_numpy(w), g, "absmax")
    got = quantize_int4(w, g, "absmax", backend="torch")
    assert np.array_equal(got.packed.numpy(), expected.packed)
    assert np.array_equal(got.scale.float().numpy(), expected.scale.astype(np.float32))
    # (u - 8) * s is exact in float64 and rounded once to float32 by both.
    np.testing.assert_array_equal(
        dequantize_int4(got, torch.float32).numpy(), ref.dequantize_int4(expected).astype(np.float32)
    )
    # mse: the errors are compared exactly, so the torch path picks the reference's scales bit for bit
    expected = ref.quantize_int4(to_numpy(w), g, "mse")
    got = quantize_int4(w, g, "mse", backend="torch")
    assert np.array_equal(got.packed.numpy(), expected.packed)
    assert np.array_equal(got.scale.float().numpy(), expected.scale.astype(np.float32))


@pytest.mark.parametrize("rule", ["absmax", "mse"])
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_error_bound_inside_clamp_range(rule: str, shape: tuple, seed: int) -> None:
    n, groups, g = shape
    w = weights(n, groups * g, torch.bfloat16, seed)
    q = quantize_int4(w, g, rule, backend="torch")
    s = q.scale.double().repeat_interleave(g, dim=1)
    x = w.double()
    inside = (x / s >= -8) & (x / s <= 7)
    err = (x - dequantize_int4(q, torch.float32).double()).abs()
    assert bool((err[inside] <= s[inside] / 2).all())
    if rule == "absmax":  # max|w| maps to 7.5, up to the scale's bf16 rounding (relative 2**-9)
        assert bool(((x / s).abs() <= 7.5 * (1 + 2**-8)).all())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tail", ["gauss", "t"])
@given(shape=shapes, seed=st.integers(0, 2**16))
def test_mse_never_worse_than_absmax_per_group(dtype: torch.dtype, tail: str, shape: tuple, seed: int) -> None:
    n, groups, g = shape
    w = weights(n, groups * g, dtype, seed, tail)
    e_abs = group_errors(w, quantize_int4(w, g, "absmax", backend="torch"))
    e_mse = group_errors(w, quantize_int4(w, g, "mse", backend="torch"))
    assert bool((e_mse <= e_abs).all())


@pytest.mark.parametrize("tail", ["gauss", "t"])
def test_mse_reduces_total_error(tail: str) -> None:
    w = weights(64, 1024, torch.bfloat16, 1, tail)
    e_abs = group_errors(w, quantize_int4(w, 128, "absmax")).sum()
    e_mse = group_errors(w, quantize_int4(w, 128, "mse")).sum()
    assert e_mse < 0.9 * e_abs


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@given(shape=shapes, seed=st.integers(0, 2**16), shrink=st.floats(0.3, 1.2))
def test_mse_trial_codes_are_nearest_codes(dtype: torch.dtype, shape: tuple, seed: int, shrink: float) -> None:
    """16-bit weights and scales: the trial codes rint(|w| * float32(1 / s)) have exactly the error of
    the stored codes (float32 quotient), so the search compares true errors."""
    n, groups, g = shape
    w = to_numpy(weights(n, groups * g, dtype, seed, tail="t"))
    wg = w.reshape(n, groups, g)
    s = (ref.absmax_scale(w, g).astype(np.float64) * shrink).astype(w.dtype)
    s = np.where(s.astype(np.float64) > 0, s, np.asarray(1, dtype=w.dtype))
    d_trial = ref._trial(wg, s, exact=False)[0]
    d_stored = ref._trial(wg, s, exact=True)[0]
    assert np.array_equal(d_trial, d_stored)
    sq = (wg.astype(np.float64) ** 2).sum(axis=-1)
    np.testing.assert_allclose(ref.group_sq_error(w, s, g), sq + d_stored, rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("ratios", [(1.0, 0.9, 0.825), (1.0, 0.875), (1.0,)])
def test_mse_other_ratios_match_reference(ratios: tuple) -> None:
    from hlwq_kernels.ops.int4 import _mse_scale_torch

    w = weights(7, 384, torch.bfloat16, 4, tail="t")
    got = _mse_scale_torch(w, 128, ratios)
    expected = ref.mse_scale(to_numpy(w), 128, ratios=np.array(ratios, dtype=np.float32))
    assert np.array_equal(got.numpy(), expected.astype(np.float32))


@pytest.mark.parametrize("magnitude", [2.0**-115, 2.0**110])
def test_mse_keeps_absmax_outside_search_range(magnitude: float) -> None:
    w = weights(4, 256, torch.bfloat16, 9, tail="t")
    w[1] *= magnitude  # row 1 beyond SEARCH_RANGE: absmax; the other rows searched
    mse, absmax = quantize_int4(w, 128, "mse", backend="torch").scale, quantize_int4(w, 128, "absmax").scale
    assert torch.equal(mse[1], absmax[1]) and not torch.equal(mse, absmax)
    expected = ref.quantize_int4(to_numpy(w), 128, "mse")
    assert np.array_equal(mse.float().numpy(), expected.scale.astype(np.float32))


@given(shape=shapes, seed=st.integers(0, 2**16))
def test_quantize_with_scale_and_codes_round_trip(shape: tuple, seed: int) -> None:
    n, groups, g = shape
    w = weights(n, groups * g, torch.bfloat16, seed)
    q = quantize_int4(w, g, "mse")
    again = quantize_int4_with_scale(w, q.scale)
    assert torch.equal(again.packed, q.packed) and again.group_size == g and again.shape == q.shape
    codes = int4_codes(w, q.scale)
    assert torch.equal(pack_int4(codes), q.packed)
    assert torch.equal(unpack_int4(q.packed, w.shape[1]), codes)


def half_integer_ties(n: int, k: int) -> torch.Tensor:
    """bf16 groups of 128 whose quotients by the absmax scale (2**-6) are exact half-integers."""
    steps = torch.arange(n * k).reshape(n, k) % 16 - 7.5  # -7.5 .. 7.5: max |w| = 7.5 * 2**-6
    return (steps * 2.0**-6).to(torch.bfloat16)


@pytest.mark.parametrize("ties", [False, True])
def test_jax_reference_matches_numpy(ties: bool) -> None:
    """Ties: XLA turns a division by a broadcast scale into a product with its reciprocal, an ulp off
    at exact half-integer quotients (common with bf16); the reference must divide."""
    jnp = pytest.importorskip("jax.numpy")
    from hlwq_reference.jax import int4 as jref

    w = half_integer_ties(8, 384) if ties else weights(8, 384, torch.bfloat16, 3, tail="t")
    wn = to_numpy(w)
    packed, scale = jref.quantize_int4(jnp.asarray(wn), 128)
    expected = ref.quantize_int4(wn, 128)
    assert np.array_equal(np.asarray(packed), expected.packed)
    assert np.array_equal(np.asarray(scale).astype(np.float32), expected.scale.astype(np.float32))
    np.testing.assert_array_equal(
        np.asarray(jref.dequantize_int4(packed, scale, 384)), ref.dequantize_int4(expected).astype(np.float32)
    )


@pytest.mark.parametrize(("shape", "group_size", "match"), BAD_INT4_SHAPES)
def test_bad_shapes_raise(shape: tuple, group_size: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        quantize_int4(torch.randn(shape), group_size)


def test_bad_arguments_raise() -> None:
    w = torch.randn(4, 128)
    with pytest.raises(ValueError, match="scale must be one of"):
        quantize_int4(w, 128, scale="minmax")
    with pytest.raises(ValueError, match="finite and positive"):
        quantize_int4_with_scale(w, torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"\[N, K/group_size\]"):
        quantize_int4_with_scale(w, torch.ones(3, 1))
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack_int4(torch.full((1, 8), 8, dtype=torch.int8))
    with pytest.raises(TypeError, match="bfloat16, float16 or float32"):
        quantize_int4(w.double(), 128)
