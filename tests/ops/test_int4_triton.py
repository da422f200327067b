"""Fused INT4 quantize+pack Triton kernel (interpreter on CPU, compiled on CUDA) against the references."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import hlwq_reference.numpy.int4 as ref
from hlwq_kernels.ops.int4 import Int4Weight, dequantize_int4, quantize_int4, quantize_int4_with_scale
from hlwq_kernels.ops._jit import (
    div_exact, fixed_point_tile, scale_trial_sums, short_reciprocal,
)
from hlwq_kernels.ops._triton import launch, tl, triton
from hlwq_kernels.ops.int4_triton import _CODES, FIXED_POINT_BITS, MIN_RATIO, int4_quantize_pack, packed_int16_ptx
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


# (lanes, warps, block_g, ratios, register cap): the MSE kernel's launch configurations and trial sets of
# bench/gpu_int4.py --mse-sweep (a cap changes only the CUDA compile: those run there only)
E3, E2 = (1.0, 0.9, 0.825), (1.0, 0.875)
MSE_LAUNCHES = [(2, 1, None, None, 0), (2, 1, None, None, 128), (2, 1, None, None, 96), (2, 1, None, None, 80),
                (4, 2, None, None, 0), (4, 2, None, None, 64), (2, 2, None, None, 0), (4, 1, None, None, 0),
                (4, 1, None, None, 80), (2, 1, 8, None, 0), (2, 1, None, E3, 0), (2, 1, None, E2, 0),
                (4, 2, None, E3, 0)]


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize(("lanes", "warps", "block_g", "ratios", "regs"), MSE_LAUNCHES)
@pytest.mark.parametrize(("dtype", "k", "g"), [(torch.bfloat16, 1024, 128), (torch.bfloat16, 480, 48),
                                               (torch.float16, 512, 64), (torch.float32, 256, 128)])
def test_mse_kernel_launch_configurations(device: str, lanes: int, warps: int, block_g: int | None,
                                          ratios: tuple | None, regs: int, dtype: torch.dtype, k: int,
                                          g: int) -> None:
    if device == "cpu" and regs:
        pytest.skip("a register cap changes only the CUDA compile")
    w = weights(19, k, dtype, lanes * 100 + warps, tail="t")
    expected = ref.mse_scale(to_numpy(w), g, ratios=ref.RATIOS if ratios is None else np.array(ratios, np.float32))
    packed, scale = int4_quantize_pack(w.to(device), g, "mse", block_g=block_g, num_warps=warps, lanes=lanes,
                                       ratios=ratios, max_registers=regs)
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


def binade_weights(n: int, k: int, g: int, seed: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Groups whose weights span the binades that the "mse" integer sums must get exactly (module docstring of
    ``int4_triton``): amax just above a power of two ``2**E``, in the middle of its binade and just below the next
    (row binades from near both ends of SEARCH_RANGE, or of fp16's range, to the top), weights of random sign and
    odd significand from ``2**(E - 14)`` to amax (every binade around the edge ``2**(E - X)`` where the fixed point
    ``w * 2**(BITS - E)`` stops being exact, ``X`` = 5 for 16-bit weights, 6 for fp32; fp16 subnormals),
    ``±2**(E - X)``, ``±amax / 2**X`` and the next values, ``-amax`` (codes -8) and one group of equal magnitudes
    with mixed signs."""
    rng = np.random.default_rng(seed)
    fp16 = dtype == torch.float16
    binades = [-8, -7, -3, -1, 0, 1, 4, 9, 14, 15] if fp16 else [-97, -96, -61, -13, -1, 0, 1, 7, 40, 99, 102]
    if dtype == torch.float32:  # and 2**(29 - 127), the lowest searched (amax >= 7.5 * 2**-100)
        binades = [-98] + binades
    p = {torch.bfloat16: 8, torch.float16: 11, torch.float32: 24}[dtype]  # significand bits
    x = 6 if dtype == torch.float32 else 5
    w = np.zeros((n, k), np.float64)
    for r in range(n):
        e = binades[(r + seed) % len(binades)]
        for c0 in range(0, k, g):
            top = 1 + rng.choice([0, 1, 2, 64, 125, 127]) / 128  # amax / 2**E
            j = rng.integers(0, 15, g)  # binade E - j of each weight
            sig = 1 + (2 * rng.integers(0, 1 << (p - 2), g) + 1) / (1 << (p - 1))  # odd p-bit significands
            grp = rng.choice([-1.0, 1.0], g) * sig * 2.0 ** (e - j)
            grp = np.where(np.abs(grp) > top * 2.0**e, np.sign(grp) * top * 2.0**e, grp)
            grp = torch.from_numpy(grp).to(dtype).double().numpy()  # (fp16 subnormals keep fewer bits)
            amax = top * 2.0**e
            edge = amax / 2**x  # and the next values above and below
            ulp = 2.0 ** (e - x - (p - 1))
            special = [amax, -amax, 2.0 ** (e - x), -(2.0 ** (e - x)), edge, -edge, edge + ulp, -(edge - ulp),
                       -(2.0 ** (e - x) - ulp / 2), 2.0 ** (e - x + 1) - ulp]
            pos = rng.permutation(g)[: min(g, len(special))]
            grp[pos] = special[: len(pos)]
            if c0 == g and r % 3 == 0:  # equal magnitudes, mixed signs
                grp = rng.choice([-1.0, 1.0], g) * amax
            w[r, c0 : c0 + g] = grp
    out = torch.from_numpy(w).to(dtype)
    assert torch.equal(out.double(), torch.from_numpy(w)), f"every value is a {dtype} value"
    return out


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("g", [8, 128, 256, 512])
@pytest.mark.parametrize("dtype,seed", [(torch.bfloat16, 0), (torch.bfloat16, 1), (torch.float16, 0),
                                        (torch.float32, 0)])
def test_mse_kernel_binades_around_the_fixed_point(device: str, g: int, dtype: torch.dtype, seed: int) -> None:
    """Groups of one chunk (``g <= 256``) sum |w| |q| as fixed-point integers ``w * 2**(BITS - E)`` (bf16 12
    bits, fp16 15, halved, fp32 29 in halves) against codes in bytes (inline PTX on sm_90): a wrong exponent,
    rounding, low bit, half or byte order changes scales."""
    w = binade_weights(22 if dtype == torch.bfloat16 else 20, 2 * max(g, 256), g, seed, dtype)
    expected = ref.quantize_int4(to_numpy(w), g, "mse")
    got = _cpu(quantize_int4(w.to(device), g, "mse", backend="triton"))
    assert np.array_equal(got.scale.float().numpy(), expected.scale.astype(np.float32))
    assert np.array_equal(got.packed.numpy(), expected.packed)


@triton.jit
def _trial_sums_kernel(w_ptr, s_ptr, a_ptr, b_ptr, NT: tl.constexpr, G: tl.constexpr, SPLIT: tl.constexpr,
                       BITS: tl.constexpr, PTX: tl.constexpr):
    """Group ``program_id(0)`` of a contiguous weight: its ``NT`` trial sums ``A = Σ |w| |q|`` (float64) and
    ``B = Σ q²`` (float32) for the scales ``s_ptr[group, :]``, by ``int4_triton``'s integer sums (``SPLIT``,
    ``BITS``: the weight dtype's)."""
    g = tl.program_id(0)
    x = tl.load(w_ptr + g * G + tl.arange(0, G)).to(tl.float32)
    xe, xo = tl.split(tl.reshape(x, [1, 1, 1, G // 2, 2]))
    amax = tl.max(tl.max(tl.maximum(tl.abs(xe), tl.abs(xo)), axis=3), axis=2)
    xe, xo, fixed, up, down = fixed_point_tile(xe, xo, amax, BITS, SPLIT, PTX)
    for t in tl.static_range(NT):
        s = tl.load(s_ptr + g * NT + t + tl.zeros([1, 1], tl.int32))
        a, b = scale_trial_sums(xe, xo, s, up, fixed, down, SPLIT, PTX)
        tl.store(a_ptr + g * NT + t + tl.zeros([1, 1], tl.int32), a.to(tl.float64))
        tl.store(b_ptr + g * NT + t + tl.zeros([1, 1], tl.int32), b)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize(("dtype", "g"), [(torch.bfloat16, 8), (torch.bfloat16, 128), (torch.bfloat16, 256),
                                        (torch.float16, 8), (torch.float16, 256), (torch.float32, 8),
                                        (torch.float32, 128), (torch.float32, 256)])
@pytest.mark.parametrize("twins", [False, True])
def test_integer_trial_sums_are_exact(device: str, dtype: torch.dtype, g: int, twins: bool) -> None:
    """The "mse" trial sums (``_jit.fixed_pairs``, ``scale_trial_sums``: inline PTX on sm_90,
    their plain twins elsewhere) equal the exact float64 sums of the reference's trial codes
    ``min(rint(|w| float32(1 / s)), 7 or 8)`` (16-bit weights) or ``min(rint(float32(|w| / s)), 7 or 8)`` (fp32)
    for trial ratios down to MIN_RATIO and the fp32 refits' half of that, to the last unit: a fixed-point exponent
    one off, a lost low bit or half, a byte order or pairing error changes them. ``twins``: the plain-Triton twins
    compiled on CUDA (what GPUs before sm_90 run)."""
    if twins and device == "cpu":
        pytest.skip("the interpreter always runs the plain-Triton twins")
    w = binade_weights(11, 2 * g, g, 5, dtype)
    fp32 = dtype == torch.float32
    sdt = {torch.bfloat16: ml_dtypes.bfloat16, torch.float16: np.float16, torch.float32: np.float32}[dtype]
    wn = to_numpy(w).astype(np.float64).reshape(-1, g)
    amax = np.abs(wn).max(axis=1).astype(np.float32)
    ratios = [1.0, 0.925, 0.875, 0.8, 0.6, MIN_RATIO] + ([MIN_RATIO / 2] if fp32 else [])
    mult = ref.trial_multipliers(np.array(ratios, np.float32))
    absmax = ref._store(amax / np.float32(ref.ABSMAX_DIVISOR), sdt).astype(np.float32)
    s = np.stack([absmax] + [ref._store(amax * m, sdt).astype(np.float32) for m in mult[1:]], 1)
    cap = np.where(wn < 0, -ref.QMIN, ref.QMAX)[:, None, :]
    a32 = np.abs(wn).astype(np.float32)[:, None, :]
    if fp32:
        y = (a32 / s[:, :, None]).astype(np.float64)
    else:
        y = a32.astype(np.float64) * (np.float32(1) / s).astype(np.float64)[:, :, None]
    q = np.minimum(np.rint(y), cap)
    a_ref, b_ref = (np.abs(wn)[:, None, :] * q).sum(-1), (q * q).sum(-1)
    in_range = (absmax >= ref.SEARCH_RANGE[0]) & (absmax <= ref.SEARCH_RANGE[1]) & (s > 0).all(1)
    assert in_range.mean() > 0.8 and (q.max(axis=-1) > 0).all()  # (the search skips the others)
    a = torch.empty(s.shape, dtype=torch.float64, device=device)
    b = torch.empty(s.shape, dtype=torch.float32, device=device)
    wd = w.to(device)
    launch(_trial_sums_kernel, (wn.shape[0],), wd.device, wd, torch.from_numpy(s).to(device), a, b,
           NT=s.shape[1], G=g, SPLIT=_CODES[dtype], BITS=FIXED_POINT_BITS[dtype],
           PTX=packed_int16_ptx(wd) and not twins)
    assert np.array_equal(a.cpu().numpy()[in_range], a_ref[in_range])
    assert np.array_equal(b.cpu().numpy().astype(np.float64)[in_range], b_ref[in_range])


@triton.jit
def _short_division_kernel(a_ptr, s_ptr, inv_ptr, q_ptr, n, PTX: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(a_ptr + offs, mask=mask, other=1.0)
    s = tl.load(s_ptr + offs, mask=mask, other=1.0)
    inv = short_reciprocal(s, PTX)
    tl.store(inv_ptr + offs, inv, mask=mask)
    tl.store(q_ptr + offs, div_exact(a, s, inv), mask=mask)


def _short_divisors() -> np.ndarray:
    """Every positive and negative bf16 and fp16 value, and every integer 1 .. 2**15 - 1, as float32, whose
    value and reciprocal are normal float32 numbers."""
    bits = np.arange(1 << 16, dtype=np.uint16)
    s = np.concatenate([bits.view(ml_dtypes.bfloat16).astype(np.float32), bits.view(np.float16).astype(np.float32),
                        np.arange(1, 1 << 15, dtype=np.float32)])
    tiny = np.finfo(np.float32).tiny
    with np.errstate(all="ignore"):
        inv = np.float32(1) / s
    return s[np.isfinite(s) & (np.abs(s) >= tiny) & np.isfinite(inv) & (np.abs(inv) >= tiny)]


@pytest.mark.parametrize("device", kernel_devices())
def test_short_reciprocal_and_quotient_are_correctly_rounded(device: str) -> None:
    """``_jit.short_reciprocal`` (rcp.approx and a Newton step on sm_90, no branch) is the correctly rounded
    ``1 / s`` of every bf16 and fp16 divisor and every integer below 2**15, and ``div_exact`` with it the
    correctly rounded quotient of dividends with 24 significant bits (the "mse" refit ``A / B``) within
    ``div_exact``'s range, against NumPy's IEEE float32 division."""
    s = _short_divisors()
    rng = np.random.default_rng(7)
    m = rng.integers(1 << 23, 1 << 24, s.size).astype(np.float32)  # 24-bit significands, scaled near s
    with np.errstate(over="ignore"):  # (overflowed dividends are left out below)
        a = (m * np.exp2(rng.integers(-24, 1, s.size)).astype(np.float32) * np.abs(s)).astype(np.float32)
    a = np.where(rng.random(s.size) < 0.5, -a, a)
    sd = torch.from_numpy(s).to(device)
    inv = torch.full(s.shape, float("nan"), device=device)
    q = torch.full(s.shape, float("nan"), device=device)
    launch(_short_division_kernel, (triton.cdiv(s.size, 4096),), sd.device, torch.from_numpy(a).to(device), sd,
           inv, q, s.size, PTX=packed_int16_ptx(sd), BLOCK=4096)
    assert np.array_equal(inv.cpu().numpy(), np.float32(1) / s)
    with np.errstate(all="ignore"):
        expected = a / s
    tiny = np.finfo(np.float32).tiny
    ok = np.isfinite(a) & (np.abs(s) >= 2.0**-90) & np.isfinite(expected) & (np.abs(expected) >= tiny)
    assert ok.mean() > 0.8  # (quotients by smaller divisors leave div_exact's range: _jit.quotient_is_exact)
    assert np.array_equal(q.cpu().numpy()[ok], expected[ok])


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
