"""Lloyd–Max solver: exact Gaussian codebooks (optimality, independent integration, references),
the original release's codebook, and the weighted empirical solver."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.integrate import quad
from scipy.stats import norm

from hlwq_reference.numpy import lloyd_max as ref_lloyd_max
from hlwq_reference.numpy import lloyd_quantize as ref_quantize
from hlwq_kernels.ops.lloyd_max import Codebook, gaussian_codebook, lloyd_max, original_release_codebook


def _cell_stats(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cell masses and centroids of N(0,1) computed with scipy.stats (independent of the library)."""
    a = np.concatenate([[-np.inf], t])
    b = np.concatenate([t, [np.inf]])
    mass = np.where(a >= 0, norm.sf(a) - norm.sf(b), norm.cdf(b) - norm.cdf(a))
    return mass, (norm.pdf(a) - norm.pdf(b)) / mass


@given(st.integers(2, 256))
def test_gaussian_optimality_conditions(n):
    cb = lloyd_max(levels=n)
    assert cb.converged and cb.iterations <= 20
    assert cb.levels.dtype == np.float64 and cb.levels.shape == (n,) and cb.thresholds.shape == (n - 1,)
    assert np.all(np.diff(cb.levels) > 0)
    np.testing.assert_array_equal(cb.thresholds, (cb.levels[:-1] + cb.levels[1:]) / 2)
    np.testing.assert_array_equal(cb.levels, -cb.levels[::-1])
    mass, centroid = _cell_stats(cb.thresholds)
    np.testing.assert_allclose(cb.levels, centroid, rtol=0, atol=1e-12)
    assert abs(cb.mse - (1 - math.fsum(mass * cb.levels**2))) < 1e-13


@pytest.mark.parametrize("n", [2, 3, 7, 16, 32, 64])
def test_gaussian_against_numerical_integration(n):
    cb = gaussian_codebook(n)
    edges = np.concatenate([[-np.inf], cb.thresholds, [np.inf]])
    mse = 0.0
    for y, a, b in zip(cb.levels, edges[:-1], edges[1:]):
        p = quad(norm.pdf, a, b, epsabs=0, epsrel=1e-13)[0]
        m1 = quad(lambda v: v * norm.pdf(v), a, b, epsabs=1e-14, epsrel=1e-13)[0]
        assert abs(m1 - y * p) < 1e-12
        mse += quad(lambda v: (v - y) ** 2 * norm.pdf(v), a, b, epsabs=1e-16, epsrel=1e-13)[0]
    assert abs(mse - cb.mse) < 1e-11 * max(1.0, cb.mse * 1e3)


def test_gaussian_known_values():
    one = gaussian_codebook(2)
    np.testing.assert_allclose(one.levels, [-math.sqrt(2 / math.pi), math.sqrt(2 / math.pi)], rtol=1e-14)
    assert abs(one.mse - (1 - 2 / math.pi)) < 1e-15
    two = gaussian_codebook(4)
    np.testing.assert_allclose(two.levels, [-1.5104, -0.4528, 0.4528, 1.5104], atol=1e-4)
    np.testing.assert_allclose(two.thresholds[2], 0.9816, atol=1e-4)
    assert abs(two.mse - 0.11748) < 1e-5
    assert abs(gaussian_codebook(8).mse - 0.03455) < 1e-5
    five = gaussian_codebook(32)
    assert abs(five.mse - 0.002505) < 1e-6 and abs(five.levels[-1] - 3.2607) < 1e-4
    assert lloyd_max(levels=1).levels.tolist() == [0.0] and lloyd_max(levels=1).mse == 1.0


@pytest.mark.parametrize("n", [2, 5, 32, 256])
def test_gaussian_matches_numpy_reference(n):
    mine, theirs = gaussian_codebook(n), ref_lloyd_max(levels=n)
    np.testing.assert_allclose(mine.levels, theirs.levels, rtol=0, atol=1e-12)
    assert abs(mine.mse - theirs.mse) < 1e-13


@pytest.mark.parametrize("n", [4, 32])
def test_gaussian_matches_jax_reference(n):
    jref = pytest.importorskip("hlwq_reference.jax.lloyd_max")
    np.testing.assert_allclose(gaussian_codebook(n).levels, jref.gaussian_levels(n), rtol=0, atol=1e-12)


def test_bits_levels_and_cache():
    assert lloyd_max(bits=5).levels.size == 32
    assert gaussian_codebook(32) is gaussian_codebook(32)
    assert not gaussian_codebook(32).levels.flags.writeable
    with pytest.raises(ValueError):
        lloyd_max(bits=3, levels=8)
    with pytest.raises(ValueError):
        lloyd_max()


def test_gaussian_mse_decreases_with_levels():
    mses = [gaussian_codebook(1 << b).mse for b in range(1, 9)]
    assert all(x > y for x, y in zip(mses, mses[1:]))


def test_original_release_codebook_5bit():
    inf = original_release_codebook(5, outer="inf")
    assert abs(inf.mse - 0.00292) < 5e-6 and abs(inf.levels[-1] - 3.55) < 5e-3
    assert abs(gaussian_codebook(32).mse - 0.00250) < 1e-5
    assert 1.16 < inf.mse / gaussian_codebook(32).mse < 1.18  # about 17% above the optimum
    clip = original_release_codebook(5, outer="clip")
    assert abs(clip.mse - 0.00290) < 5e-6 and clip.levels[-1] < 4
    assert not inf.converged and inf.iterations == 100
    np.testing.assert_array_equal(inf.levels, -inf.levels[::-1])


# ----------------------------------------------------------------------------- empirical


def _stationary(cb: Codebook, x: np.ndarray, w: np.ndarray) -> None:
    idx = ref_quantize(x, cb.thresholds)
    for i in range(cb.levels.size):
        sel = idx == i
        if w[sel].sum() > 0:
            assert abs(np.sum(w[sel] * x[sel]) / w[sel].sum() - cb.levels[i]) < 1e-9


@given(
    st.integers(2, 16),
    st.integers(20, 400),
    st.integers(0, 2**31 - 1),
    st.booleans(),
    st.sampled_from(["normal", "laplace", "discrete"]),
)
def test_empirical_matches_reference_and_is_stationary(n, size, seed, weighted, kind):
    rng = np.random.default_rng(seed)
    draw = {"normal": rng.standard_normal, "laplace": lambda s: rng.laplace(size=s)}
    x = draw.get(kind, lambda s: rng.integers(-6, 7, s) * 0.5)(size)
    w = np.ones(size)
    if weighted:
        w = rng.random(size) * (rng.random(size) > 0.1)
        w[0] = 1.0
    mine = lloyd_max(levels=n, samples=torch.from_numpy(x), weights=torch.from_numpy(w) if weighted else None)
    theirs = ref_lloyd_max(levels=n, samples=x, weights=w)
    assert mine.converged and theirs.converged
    np.testing.assert_allclose(mine.levels, theirs.levels, rtol=0, atol=1e-9)
    assert mine.iterations == theirs.iterations
    assert abs(mine.mse - theirs.mse) < 1e-9
    assert np.all(np.diff(mine.levels) >= 0)
    _stationary(mine, x, w)


@given(st.integers(2, 40), st.integers(1, 500), st.integers(0, 2**31 - 1), st.booleans(),
       st.sampled_from([torch.float64, torch.float32, torch.bfloat16]))
def test_sorted_step_equals_direct_step(n, size, seed, weighted, dtype):
    from hlwq_kernels.ops.lloyd_max import _sort_samples, _sorted_step

    rng = np.random.default_rng(seed)
    levels = np.sort(rng.standard_normal(n) * 2)
    levels[rng.random(n) < 0.1] = levels[0]  # some repeated levels: empty or shared cells
    levels = np.sort(levels)
    cd = torch.float64 if dtype == torch.float64 else torch.float32
    thr = torch.tensor((levels[:-1] + levels[1:]) / 2, dtype=torch.float64).to(cd)
    x = torch.from_numpy(rng.standard_normal(size) * 2).to(dtype)
    on = torch.from_numpy(rng.random(size) < 0.3)  # ties: values exactly on a threshold (in dtype)
    x[on] = thr[torch.from_numpy(rng.integers(0, n - 1, size))[on]].to(dtype)
    x[: size // 4] = x[size // 4 : 2 * (size // 4)]  # duplicated values
    w = torch.from_numpy(rng.random(size) * (rng.random(size) > 0.2)) if weighted else None
    # direct step: bucketize (x >= t goes up) + scatter in float64
    xc = x.to(cd)
    idx = torch.bucketize(xc, thr, right=True)
    w64 = torch.ones(size, dtype=torch.float64) if w is None else w
    want_w = torch.zeros(n, dtype=torch.float64).scatter_add_(0, idx, w64).numpy()
    want_s = torch.zeros(n, dtype=torch.float64).scatter_add_(0, idx, w64 * xc.to(torch.float64)).numpy()
    got_w, got_s = _sorted_step(_sort_samples(x, w), levels)
    if weighted:
        np.testing.assert_allclose(got_w, want_w, rtol=0, atol=1e-12 * size)
    else:
        np.testing.assert_array_equal(got_w, want_w)  # counts: exact cell membership
    np.testing.assert_allclose(got_s, want_s, rtol=0, atol=1e-12 * float(w64.sum() * xc.abs().max() + 1))
    # exact membership in the weighted case too: the cells' sample counts agree
    cnt = torch.zeros(n, dtype=torch.float64).scatter_add_(0, idx, (w64 > 0).double()).numpy()
    got_cnt, _ = _sorted_step(_sort_samples(x, None if w is None else (w > 0).double()), levels)
    np.testing.assert_array_equal(got_cnt, cnt)


def test_empirical_integer_weights_equal_repetition():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(300)
    reps = rng.integers(1, 4, 300)
    a = lloyd_max(levels=8, samples=x, weights=reps.astype(np.float64))
    b = lloyd_max(levels=8, samples=np.repeat(x, reps))
    np.testing.assert_allclose(a.levels, b.levels, rtol=0, atol=1e-12)
    assert abs(a.mse - b.mse) < 1e-12


def test_empirical_approaches_gaussian_codebook():
    x = torch.randn(1 << 17, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cb = lloyd_max(bits=3, samples=x)
    np.testing.assert_allclose(cb.levels, gaussian_codebook(8).levels, atol=0.03)
    assert abs(cb.mse / gaussian_codebook(8).mse - 1) < 0.03


def test_empirical_is_deterministic_and_accepts_float32():
    x = torch.randn(5000, generator=torch.Generator().manual_seed(2))
    a, b = lloyd_max(levels=16, samples=x), lloyd_max(levels=16, samples=x.clone())
    np.testing.assert_array_equal(a.levels, b.levels)
    assert a.converged and a.mse > 0


def test_empirical_few_distinct_values_is_exact():
    cb = lloyd_max(levels=4, samples=np.array([2.0, 2.0, -1.0, 2.0]))
    np.testing.assert_array_equal(cb.levels, [-1.0, 2.0, 2.0, 2.0])
    assert cb.mse == 0.0 and cb.converged and cb.iterations == 0
    const = lloyd_max(bits=2, samples=np.full(10, 0.25))
    np.testing.assert_array_equal(const.levels, [0.25] * 4)
    idx = const.quantize(torch.tensor([0.25, -1.0, 3.0]))
    np.testing.assert_array_equal(const.dequantize(idx).numpy(), [0.25, 0.25, 0.25])
    # weight 0 hides a value
    cb = lloyd_max(levels=2, samples=np.array([0.0, 1.0, 5.0]), weights=np.array([1.0, 1.0, 0.0]))
    np.testing.assert_array_equal(cb.levels, [0.0, 1.0])


def test_empirical_ties_are_distinct_initial_levels():
    x = np.array([0.0] * 50 + [1.0] * 3 + [2.0, 3.0, 4.0])
    cb = lloyd_max(levels=4, samples=x)
    assert np.all(np.diff(cb.levels) > 0)
    _stationary(cb, x, np.ones_like(x))


@pytest.mark.parametrize(
    "samples, weights",
    [
        (np.array([0.0, np.nan, 1.0]), None),
        (np.array([0.0, np.inf, 1.0]), None),
        (np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 1.0])),
        (np.array([0.0, 1.0, 2.0]), np.array([1.0, np.nan, 1.0])),
        (np.array([0.0, 1.0, 2.0]), np.zeros(3)),
        (np.array([0.0, 1.0, 2.0]), np.ones(2)),
        (np.zeros(0), None),
    ],
)
def test_empirical_bad_inputs_raise(samples, weights):
    with pytest.raises(ValueError):
        lloyd_max(levels=2, samples=samples, weights=weights)
