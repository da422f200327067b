"""HLWQ per-matrix pipeline: fused Triton kernel (interpreter on CPU) vs torch path vs NumPy reference.

The torch path and the reference compute in float64 and must agree exactly (up to float64 noise
in W' where a sum cancels to zero). The fused kernel
computes in float32 (exact products, fp32 sums), so a value within float32 rounding of a Lloyd–Max
threshold or of a bf16 rounding boundary can land on the other side: those mismatches are measured
and bounded (rates and magnitudes), and everything downstream of identical inputs must be exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import hlwq_reference.numpy as ref
from hlwq_reference.numpy.int4 import unpack_int4 as ref_unpack_int4
from hlwq_kernels import HLWQConfig, hlwq_dequantize, hlwq_int4, hlwq_quantize
from hlwq_kernels.ops.hlwq import _codes_torch, _dequantize_torch, _levels64
from hlwq_kernels.ops.hlwq_triton import HLWQLaunch, hlwq_fused
from hlwq_kernels.ops.int4 import Int4Weight, dequantize_int4, quantize_int4, unpack_int4
from hlwq_kernels.ops.lloyd_max import gaussian_codebook, original_release_codebook
from tests.helpers import NP_DTYPES, random_weight, to_numpy

DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def _weight(n: int, k: int, dtype: torch.dtype, seed: int, scale: float = 0.02) -> torch.Tensor:
    """Gaussian weights with heavier-tailed (outlier) input columns, as in real weights."""
    return random_weight((n, k), dtype, seed, scale=scale, column_spread=0.3)


def _reference(w: torch.Tensor, cb, b: int, g: int, scale: str = "absmax"):
    return ref.hlwq_int4(to_numpy(w), cb.levels, cb.thresholds, block_size=b, group_size=g, scale=scale)


def _fused_all(w: torch.Tensor, cb, b: int, g: int, config: HLWQLaunch | None = None):
    return hlwq_fused(w, cb, b, codes=True, wprime=True, int4_group=g, config=config)


def _torch_all(w: torch.Tensor, cb, b: int, g: int):
    codes, norms = _codes_torch(w, cb, b)
    wp = _dequantize_torch(codes, norms, _levels64(cb), b, w.dtype)
    return codes, norms, wp, quantize_int4(wp, group_size=g, backend="torch")


def _ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance in units of the dtype's relative spacing at |b| (0 where equal)."""
    fa, fb = a.double(), b.double()
    spacing = torch.finfo(a.dtype).eps * fb.abs().clamp_min(torch.finfo(a.dtype).tiny)
    return ((fa - fb).abs() / spacing).ceil()


def _check_fused_vs_torch(w: torch.Tensor, cb, b: int, g: int, max_rate: float,
                          config: HLWQLaunch | None = None) -> dict[str, float]:
    """Compare every output of the fused kernel with the torch path; return the mismatch rates."""
    n, k = w.shape
    fused = _fused_all(w, cb, b, g, config)
    codes, norms, wp, q = _torch_all(w, cb, b, g)
    assert fused.finite
    # Lloyd–Max codes: off by at most one level, rarely
    dc = (fused.codes.int() - codes.int()).abs()
    assert dc.max() <= 1
    code_rate = (dc > 0).double().mean().item()
    assert code_rate <= max_rate
    # norms: fp32 sum of squares vs float64, a few ulps
    assert (_ulps(fused.norms, norms) <= 4).all()
    # W' where the block's codes agree: within one ulp, plus fp32 rounding of the block's scale
    # (a cancelling sum can leave a tiny W' whose own ulp is far below it); rarely different
    # beyond fp32 rounding of the block's sums (the kernel's butterflies round every partial sum:
    # where the exact sum cancels to 0 they leave a few fp32 ulps of the block scale, the float64
    # path 1e-16; small codebooks, whose levels repeat, cancel often)
    same_block = (dc.reshape(n, k // b, b).sum(-1) == 0).repeat_interleave(b, dim=1)
    rms = (norms.double() / b**0.5).repeat_interleave(b, dim=1)
    d = (fused.wprime.double() - wp.double()).abs()
    fi = torch.finfo(w.dtype)
    allowed = fi.eps * wp.double().abs().clamp_min(fi.tiny) + 2.0**-19 * rms  # one ulp (subnormal too)
    assert (d <= allowed)[same_block].all()
    wp_rate = (d > 2.0**-22 * rms)[same_block].double().mean().item()
    if w.dtype != torch.float32:  # fp32 W' is never rounded to a coarse grid: tolerance only
        assert wp_rate <= 10 * max_rate
    # INT4 of the kernel's own W' is exact: same codes and scales as the int4 module on it
    mine = quantize_int4(fused.wprime, group_size=g, backend="torch")
    assert torch.equal(fused.packed, mine.packed)
    assert torch.equal(fused.scale, mine.scale)
    # INT4 vs the torch path: codes off by at most one; where the blocks' codes agree, scales
    # within one ulp (fp32: a few, like W')
    dq = (unpack_int4(fused.packed, k).int() - unpack_int4(q.packed, k).int()).abs()
    assert dq.max() <= 1
    same_group = same_block[:, ::g]
    # A 1-ulp difference in W' can move the group absmax by one ulp; absmax/7.5 of two values one
    # ulp apart rounds to scales up to two ulps apart (seen compiled on an H100).
    assert (_ulps(fused.scale, q.scale)[same_group] <= (2 if w.dtype != torch.float32 else 4)).all()
    return {"codes": code_rate, "wprime": wp_rate, "int4": (dq > 0).double().mean().item(),
            "scale": (fused.scale != q.scale).double().mean().item()}


@given(
    n=st.integers(1, 40),
    blocks=st.integers(1, 3),
    b=st.sampled_from([32, 64, 128]),
    g_div=st.sampled_from([1, 2, 4]),
    dtype=st.sampled_from(DTYPES),
    bits=st.integers(2, 5),
    seed=st.integers(0, 2**16),
    log_scale=st.floats(-12, 6),
)
def test_fused_kernel_matches_torch_path(n, blocks, b, g_div, dtype, bits, seed, log_scale):
    w = _weight(n, b * blocks, dtype, seed, scale=2.0**log_scale)
    # small matrices: one mismatching code already changes a whole block, so bound by count
    _check_fused_vs_torch(w, gaussian_codebook(1 << bits), b, b // g_div, max_rate=2 / w.numel() + 1e-3)


@pytest.mark.parametrize("halves", [1, 2])
@pytest.mark.parametrize("b,g", [(16, 16), (16, 8), (64, 64), (128, 32)])
def test_blocks_whole_or_in_halves(b, g, halves):
    """One thread a block, or each block in two halves on two lanes (the top butterfly between them);
    groups within a half or across both, a partial last tile."""
    w = _weight(37, 2 * b, torch.bfloat16, seed=b + g)
    _check_fused_vs_torch(w, gaussian_codebook(32), b, g, max_rate=2 / w.numel() + 1e-3,
                          config=HLWQLaunch(halves=halves))


@pytest.mark.parametrize("dtype", DTYPES)
def test_mismatch_rates_are_rare(dtype):
    """Measured on 2**16 weights: the kernel's codes differ from float64 at a rate ≤ 1e-4, W' and
    INT4 codes of 16-bit weights ≤ 1e-3 and 1e-4 (fp32 weights: INT4 ≤ 1e-3; 17 of 65536 codes here, 62
    of 2**18 on 256 rows, which took 50-60 s a dtype in the interpreter against 13-15 s)."""
    rates = _check_fused_vs_torch(_weight(64, 1024, dtype, seed=7), gaussian_codebook(32), 128, 128, 1e-4)
    if dtype == torch.float32:  # fp32 W' and scales differ by ulps everywhere; INT4 codes rarely
        assert rates["int4"] <= 1e-3, rates
    else:
        assert rates["wprime"] <= 1e-3 and rates["int4"] <= 1e-4 and rates["scale"] <= 1e-3, rates


@given(
    n=st.integers(1, 24),
    blocks=st.integers(1, 3),
    b=st.sampled_from([16, 64, 128]),
    g_div=st.sampled_from([1, 2]),
    dtype=st.sampled_from(DTYPES),
    bits=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_torch_path_equals_numpy_reference(n, blocks, b, g_div, dtype, bits, seed):
    w = _weight(n, b * blocks, dtype, seed)
    cb = gaussian_codebook(1 << bits)
    g = b // g_div
    codes = hlwq_quantize(w, bits=bits, block_size=b, backend="torch")
    rc, rn = ref.hlwq_codes(to_numpy(w), cb.thresholds, b)
    np.testing.assert_array_equal(codes.codes.numpy(), rc)
    np.testing.assert_array_equal(codes.norms.numpy(), rn)
    wp = hlwq_dequantize(codes, dtype=dtype)
    rwp = ref.hlwq_dequantize(rc, rn, cb.levels, b, dtype=NP_DTYPES[dtype])
    # equal up to float64 noise where a block's sum cancels to (almost) zero
    rms = np.repeat(rn.astype(np.float64), b, axis=1) / np.sqrt(b)
    assert (np.abs(wp.double().numpy() - rwp.astype(np.float64)) <= 1e-12 * rms).all()
    q = hlwq_int4(w, bits=bits, block_size=b, group_size=g, backend="torch")
    r = _reference(w, cb, b, g)
    np.testing.assert_array_equal(q.packed.numpy(), r.packed)
    np.testing.assert_array_equal(q.scale.double().numpy(), r.scale.astype(np.float64))


def test_fused_kernel_equals_reference_on_bf16():
    """The public triton path against the NumPy reference directly (not through the torch path)."""
    w = _weight(64, 512, torch.bfloat16, seed=3)
    cb = gaussian_codebook(32)
    q = hlwq_int4(w, backend="triton")
    r = _reference(w, cb, 128, 128)
    diff = (unpack_int4(q.packed, 512).numpy().astype(int) - ref_unpack_int4(r.packed, 512).astype(int))
    assert np.abs(diff).max() <= 1 and (diff != 0).mean() <= 1e-3
    codes = hlwq_quantize(w, backend="triton")
    rc, rn = ref.hlwq_codes(to_numpy(w), cb.thresholds)
    assert (codes.codes.numpy() != rc).mean() <= 1e-3
    np.testing.assert_allclose(codes.norms.numpy(), rn, rtol=3e-7)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_round_trip_and_quality(backend):
    """W' = dequantize(quantize(W)) has the codebook's error; INT4 of W' stays close to W."""
    w = _weight(32, 1024, torch.bfloat16, seed=11)
    cb = gaussian_codebook(32)
    codes = hlwq_quantize(w, backend=backend)
    assert codes.codes.dtype == torch.uint8 and codes.codes.shape == w.shape
    assert codes.norms.dtype == torch.float32 and codes.norms.shape == (32, 8)
    assert codes.codes.max() < 32
    wp = hlwq_dequantize(codes)
    assert wp.dtype == torch.bfloat16
    rel = ((wp.double() - w.double()).pow(2).sum() / w.double().pow(2).sum()).item()
    assert 0.8 * cb.mse < rel < 1.25 * cb.mse  # rotated unit blocks ~ N(0, 1) per coordinate
    np.testing.assert_allclose(codes.norms.double(), w.double().reshape(32, 8, 128).norm(dim=-1), rtol=1e-6)
    q = hlwq_int4(w, backend=backend)
    assert isinstance(q, Int4Weight) and q.packed.dtype == torch.int32 and q.packed.shape == (32, 128)
    assert q.scale.dtype == torch.bfloat16 and q.scale.shape == (32, 8) and tuple(q.shape) == (32, 1024)
    assert q.group_size == 128
    err4 = ((dequantize_int4(q).double() - w.double()).pow(2).sum() / w.double().pow(2).sum()).item()
    assert rel < err4 < 0.03
    if backend == "torch":  # the pipeline is exactly its composition
        again = quantize_int4(hlwq_dequantize(codes), group_size=128, backend="torch")
        assert torch.equal(again.packed, q.packed) and torch.equal(again.scale, q.scale)


def test_codebook_argument_original_release_is_worse():
    w = _weight(16, 1024, torch.float32, seed=5)
    errs = {}
    for name, cb in {"converged": gaussian_codebook(32), "release": original_release_codebook(5)}.items():
        wp = hlwq_dequantize(hlwq_quantize(w, codebook=cb, backend="torch"), dtype=torch.float32)
        errs[name] = ((wp - w).pow(2).sum() / w.pow(2).sum()).item()
        fused, plain = (hlwq_int4(w, codebook=cb, backend=be) for be in ("triton", "torch"))
        dq = unpack_int4(fused.packed, 1024).int() - unpack_int4(plain.packed, 1024).int()
        assert dq.abs().max() <= 1 and (dq != 0).double().mean() <= 1e-3
    assert errs["release"] > 1.1 * errs["converged"]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_zero_blocks_give_zero(backend):
    w = _weight(20, 384, torch.bfloat16, seed=2)
    w[:, 128:256] = 0
    w[3] = 0
    cb = gaussian_codebook(32)
    codes = hlwq_quantize(w, backend=backend)
    assert (codes.norms[:, 1] == 0).all() and (codes.norms[3] == 0).all()
    zero_code = int(np.sum(0.0 >= cb.thresholds))
    assert (codes.codes[:, 128:256] == zero_code).all()
    assert (hlwq_dequantize(codes)[:, 128:256] == 0).all()
    q = hlwq_int4(w, backend=backend)
    assert (q.scale[:, 1] == torch.finfo(torch.bfloat16).eps).all()
    assert (dequantize_int4(q)[:, 128:256] == 0).all() and (dequantize_int4(q)[3] == 0).all()
    assert (dequantize_int4(q)[:, :128] != 0).any()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy, inside the interpreter, on NaN/Inf
@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_weight_is_refused(backend, bad):
    w = _weight(17, 256, torch.bfloat16, seed=4)
    w[5, 200] = bad
    for fn in (hlwq_int4, hlwq_quantize):
        with pytest.raises(ValueError, match=r"shape \(17, 256\).*NaN or Inf"):
            fn(w, backend=backend)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_unchecked_nonfinite_weight_gives_nonfinite_scales(bad):
    """check_finite=False: no device sync and no error; the block's INT4 scales are not finite."""
    w = _weight(17, 256, torch.bfloat16, seed=4)
    w[5, 200] = bad
    q = hlwq_int4(w, backend="triton", check_finite=False)
    assert not torch.isfinite(q.scale[5, 1].float())
    assert torch.isfinite(q.scale[:5].float()).all()


def _lookup_probes(thr: np.ndarray, seed: int) -> np.ndarray:
    """float32 values a code lookup must get right: the thresholds, their float32 neighbours, random
    values of every magnitude, ±0 and ±inf."""
    rng = np.random.default_rng(seed)
    return np.concatenate([
        thr, np.nextafter(thr, np.float32(np.inf)), np.nextafter(thr, np.float32(-np.inf)),
        rng.standard_normal(100_000).astype(np.float32) * np.float32(2.0) ** rng.integers(-30, 30, 100_000),
        np.array([0.0, -0.0, np.inf, -np.inf], dtype=np.float32),
    ]).astype(np.float32)


@pytest.mark.parametrize("bits", range(1, 9))
def test_key_table_counts_thresholds_exactly(bits):
    """The kernel's code lookup (base of the key's cell, then k comparisons) is #{t <= y}
    (``_lookup_probes``)."""
    from hlwq_kernels.ops.hlwq_triton import _key_table

    thr = np.asarray(gaussian_codebook(1 << bits).thresholds, dtype=np.float32)
    base, shift, k = _key_table(np.asarray(gaussian_codebook(1 << bits).thresholds))
    assert k == 1 and base.size <= 1 << 16
    y = _lookup_probes(thr, bits)
    padded = np.concatenate([thr, np.full(k, np.nan, np.float32)])
    b = base[y.view(np.uint32) >> shift].astype(np.int64)
    code = b + sum((y >= padded[b + j]).astype(np.int64) for j in range(k))
    np.testing.assert_array_equal(code, np.searchsorted(thr, y, side="right"))


@pytest.mark.parametrize("bits", [1, 3, 5, 8])
def test_keyed_cells_give_code_and_level(bits):
    """What the kernel gathers by key (threshold and levels either side from the rows, the count
    below from the key table) gives #{t <= y} and its level (``_lookup_probes``)."""
    from hlwq_kernels.ops.hlwq_triton import _tables

    cb = gaussian_codebook(1 << bits)
    tab = _tables(cb, torch.device("cpu"))
    assert tab.k == 1
    t_row, lo_row, hi_row = tab.cells.numpy().reshape(3, tab.length)
    thr = np.asarray(cb.thresholds, dtype=np.float32)
    y = _lookup_probes(thr, bits)
    key = y.view(np.uint32) >> tab.shift
    up = y >= t_row[key]
    code = tab.keys.numpy()[key].astype(np.int64) + up
    expected = np.searchsorted(thr, y, side="right")
    np.testing.assert_array_equal(code, expected)
    np.testing.assert_array_equal(np.where(up, hi_row[key], lo_row[key]),
                                  np.asarray(cb.levels, dtype=np.float32)[expected])


def test_fused_kernel_with_crowded_thresholds():
    """Thresholds closer than the finest key cell (k > 1 comparisons) still give exact codes."""
    from hlwq_kernels.ops.hlwq_triton import _key_table
    from hlwq_kernels.ops.lloyd_max import Codebook

    levels = np.array([-1.5, -0.25, 0.999, 1.001, 1.003, 2.0])
    cb = Codebook(levels, (levels[1:] + levels[:-1]) / 2, mse=0.0, iterations=0, converged=True)
    assert _key_table(cb.thresholds)[2] == 2
    w = _weight(24, 256, torch.float32, seed=21)
    fused = hlwq_fused(w, cb, 64, codes=True, wprime=True)
    codes, norms = _codes_torch(w, cb, 64)
    assert (fused.codes != codes).double().mean() <= 1e-3
    wp = _dequantize_torch(fused.codes, fused.norms, torch.tensor(levels), 64, torch.float32)
    torch.testing.assert_close(fused.wprime, wp, rtol=1e-6, atol=1e-6 * float(w.abs().max()))


def test_codebook_tables_are_built_once():
    from hlwq_kernels.ops.hlwq_triton import _tables

    cb = gaussian_codebook(32)
    w = _weight(16, 128, torch.bfloat16, seed=1)
    hlwq_int4(w, backend="triton")
    assert _tables(cb, w.device) is _tables(cb, w.device)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_mse_scale_and_group_sizes(backend):
    """scale="mse" (W' then quantize_int4) and group sizes that do / do not divide the block."""
    w = _weight(16, 512, torch.bfloat16, seed=9)
    absmax = hlwq_int4(w, backend=backend)
    mse = hlwq_int4(w, scale="mse", backend=backend)
    wp = hlwq_dequantize(hlwq_quantize(w, backend=backend))
    e_abs = (dequantize_int4(absmax).double() - wp.double()).pow(2).sum()
    e_mse = (dequantize_int4(mse).double() - wp.double()).pow(2).sum()
    assert e_mse < e_abs
    for g in (64, 256):
        q = hlwq_int4(w, group_size=g, backend=backend)
        assert q.scale.shape == (16, 512 // g) and q.group_size == g
        ref_q = hlwq_int4(w, group_size=g, backend="torch")
        dq = unpack_int4(q.packed, 512).int() - unpack_int4(ref_q.packed, 512).int()
        assert dq.abs().max() <= 1 and (dq != 0).double().mean() <= 1e-3


def test_refusals():
    w = _weight(8, 200, torch.bfloat16, seed=1)
    with pytest.raises(ValueError, match=r"shape \(8, 200\).*not a multiple of block_size=128"):
        hlwq_int4(w)
    with pytest.raises(ValueError, match="block_size"):
        hlwq_quantize(_weight(8, 96, torch.bfloat16, seed=1), block_size=96)
    with pytest.raises(TypeError, match="float64"):
        hlwq_int4(_weight(8, 128, torch.float64, seed=1))
    with pytest.raises(ValueError, match="group_size"):
        hlwq_int4(_weight(8, 128, torch.bfloat16, seed=1), group_size=256)
    with pytest.raises(ValueError, match="levels"):
        hlwq_int4(_weight(8, 128, torch.bfloat16, seed=1), bits=4, codebook=gaussian_codebook(32))
    with pytest.raises(ValueError, match="bits"):
        HLWQConfig(bits=9)
    with pytest.raises(ValueError, match="scale"):
        HLWQConfig(scale="minmax")
    assert HLWQConfig() == HLWQConfig(bits=5, block_size=128, group_size=128, scale="absmax")


def _poison_cuda_allocator() -> None:
    """Leave NaN in the blocks the caching allocator hands out next, so unwritten outputs show."""
    junk = torch.full((1 << 24,), float("nan"), device="cuda")
    del junk


@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(1024, 4096), (4096, 1024)])
def test_cuda_kernel_matches_torch_path(shape):
    w = _weight(*shape, torch.bfloat16, seed=13).cuda()
    _poison_cuda_allocator()
    rates = _check_fused_vs_torch(w, gaussian_codebook(32), 128, 128, 1e-3)
    assert rates["codes"] <= 1e-4 and rates["int4"] <= 1e-4, rates


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,g", [(16, 8), (32, 32), (64, 16), (128, 128), (128, 32), (256, 256), (256, 64)])
@pytest.mark.parametrize("launch", [None, HLWQLaunch(halves=1), HLWQLaunch(2), HLWQLaunch(max_registers=96)])
def test_cuda_kernel_every_block_and_group(dtype, b, g, launch):
    """Compiled: every block size, groups smaller than the block, 300 rows (a partial last tile); the
    default launch, one thread a block, two warps, a register cap."""
    w = _weight(300, 1024, dtype, seed=b + g).cuda()
    _poison_cuda_allocator()
    rates = _check_fused_vs_torch(w, gaussian_codebook(32), b, g, 1e-3, config=launch)
    assert rates["codes"] <= 1e-4, rates


@pytest.mark.cuda
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 6, 7, 8])
def test_cuda_kernel_every_codebook_size(bits):
    w = _weight(256, 2048, torch.bfloat16, seed=bits).cuda()
    _poison_cuda_allocator()
    _check_fused_vs_torch(w, gaussian_codebook(1 << bits), 128, 128, 1e-3)
