"""FWHT: Triton kernel (interpreter on CPU, compiled on CUDA) and torch path vs the float64 reference."""

from __future__ import annotations

import functools
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from hlwq_kernels import fwht, hadamard_factors, hadamard_matrix, random_signs
from hlwq_kernels.ops import fwht as fwht_module, fwht_plan, fwht_triton, hadamard as hadamard_module
from hlwq_kernels.ops._triton import OutOfResources, PreparedCalls
from hlwq_kernels.ops.fwht_plan import DenseConfig, PaleyConfig, Pow2Config, SplitConfig, kernel_plan
from hlwq_kernels.ops.fwht_triton import fwht_rows_triton, sign_bit_mask
from hlwq_reference.numpy import fwht as fwht_ref
from tests.helpers import assert_close, kernel_devices, random_weight, rel_err

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
KERNEL_SIZES = [1, 2, 4, 8, 12, 16, 32, 48, 64, 128, 160, 192, 256, 320, 512, 1024, 1536, 2048, 3584]
TORCH_SIZES = KERNEL_SIZES + [11008, 18944, 29568, 40960]
# hidden and MLP sizes of Llama / Qwen / Mistral models: every one runs on the kernels on CUDA
LLM_SIZES = [3584, 4864, 8960, 9728, 11008, 13824, 14336, 17408, 18432, 18944, 27648, 28672, 29568]
CUDA_SIZES = [1, 8, 12, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 1536, 2560, 10240] + LLM_SIZES
# inputs with log-normal column magnitudes: rows are not constant, columns not equally weighted
_random = functools.partial(random_weight, column_spread=1.0)


def _check(x: torch.Tensor, backend: str, **kw) -> None:
    if x.is_cuda:  # NaN in the allocator blocks the output will reuse: unwritten elements fail
        torch.full((2 * x.numel() + 1024,), float("nan"), device=x.device)
    y = fwht(x, backend=backend, **kw)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert torch.isfinite(y).all(), "unwritten or non-finite output"
    kw_ref = dict(kw)
    if "signs" in kw_ref and kw_ref["signs"] is not None:
        kw_ref["signs"] = kw_ref["signs"].double().cpu().numpy()
    ref = fwht_ref(x.double().cpu().numpy(), **kw_ref)
    assert_close(y, ref)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", KERNEL_SIZES)
def test_triton_matches_reference(n: int, dtype: torch.dtype, device: str) -> None:
    x = _random((5, n), dtype, seed=n, device=device)
    for inverse in (False, True):
        for normalized in (False, True):
            _check(x, "triton", inverse=inverse, normalized=normalized)


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64])
@pytest.mark.parametrize("n", TORCH_SIZES)
def test_torch_matches_reference(n: int, dtype: torch.dtype) -> None:
    x = _random((3, n), dtype, seed=n + 1)
    _check(x, "torch")
    _check(x, "torch", inverse=True)


@st.composite
def _cases(draw):
    n = draw(st.sampled_from([4, 8, 12, 16, 20, 24, 28, 32, 40, 64, 96, 128, 160, 256]))
    ndim = draw(st.integers(1, 3))
    shape = [draw(st.integers(1, 4)) for _ in range(ndim - 1)]
    dim = draw(st.integers(0, ndim - 1))
    shape.insert(dim, n)
    dtype = draw(st.sampled_from(DTYPES))
    transpose = ndim >= 2 and draw(st.booleans())
    block = draw(st.sampled_from([None] + [b for b in (4, 8, 12, 16, 32) if n % b == 0 and b < n]))
    use_signs = draw(st.booleans())
    return shape, dim, dtype, transpose, block, use_signs, draw(st.integers(0, 2**16)), draw(st.booleans())


@pytest.mark.parametrize(
    "backend, device", [("torch", "cpu")] + [("triton", d) for d in kernel_devices()],
    ids=lambda v: v,
)
@given(case=_cases())
def test_property_shapes_strides_dims(backend: str, device: str, case) -> None:
    shape, dim, dtype, transpose, block, use_signs, seed, inverse = case
    x = _random(tuple(shape), dtype, seed, device=device)
    if transpose:  # non-contiguous input with the transform dim moved
        x = x.transpose(0, -1).contiguous().transpose(0, -1)
    b = block or shape[dim]
    signs = random_signs(b if block and seed % 2 else shape[dim], seed, device=device) if use_signs else None
    _check(x, backend, dim=dim, block_size=block, signs=signs, inverse=inverse)


# launch configurations off the default table: persistent grids (several tiles per program, the
# last one partial; the next tile loaded after the store), register prefetch (of 16-bit inputs also read as int32 words), a register cap, the
# cp.async pipeline, a power of two through the dense kernel (Sylvester H_16 / H_32 on the tensor cores),
# the dense kernel's K split into a power-of-two head and a padded tail (136 = 68·2 as 64 + 16, 144 = 36·4
# as 32 + 16) with offsets recomputed per tile or hoisted, its one-chunk launches with rows loaded ahead
# by the loop's pipeline (stages > 1) instead of into registers, the product with the rows as the MMA's first
# operand (rows_first), one sign vector held in registers (hold_signs; 16-bit rows also packed a bit an element)
CONFIGS = [Pow2Config(1, 16, 1, 2, True), Pow2Config(2, 16, 2, 1), Pow2Config(1, 32, 1, 1, True, 96),
           Pow2Config(1, 16, 1, 2, True, 0, True), Pow2Config(2, 16, 1, 3, True, 0, True),
           Pow2Config(2, 16, 1, 2, load_last=True), Pow2Config(1, 16, 1, 2, True, 0, True, hold_signs=True),
           Pow2Config(2, 16, 1, 3, load_last=True, hold_signs=True),
           Pow2Config(1, 16, 1, 2, True, 0, True, hold_signs=True, packed_signs=True),
           Pow2Config(2, 16, 1, 3, load_last=True, hold_signs=True, packed_signs=True),
           DenseConfig(1, 16, 2, 1, 16, 16), DenseConfig(1, 16, 1, 2, 16, 16, True),
           DenseConfig(1, 16, 1, 2, 0, 0, True, 0, True), DenseConfig(2, 32, 1, 1, 0, 0, True, 0, True, True),
           DenseConfig(1, 16, 2, 2, 0, 0, True), DenseConfig(2, 16, 3, 2, 0, 0, True, 0, True, True),
           DenseConfig(2, 16, 1, 2, 0, 0, True, 0, True, rows_first=True),
           SplitConfig(4, DenseConfig(1, 16, 1, 2, 0, 0, True)), SplitConfig(5, DenseConfig(1, 16, 1, 0, 16, 16))]


def _takes(n: int, config) -> bool:
    """Whether ``config`` is a launch of the kernel that rows of length n run on."""
    return (hadamard_factors(n)[0] > 1) == isinstance(config, DenseConfig)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("config", CONFIGS, ids=str)
@pytest.mark.parametrize("n, dtype", [(64, torch.float32), (256, torch.bfloat16), (48, torch.float16),
                                      (96, torch.float32), (320, torch.bfloat16), (128, torch.float16),
                                      (136, torch.bfloat16), (144, torch.float32)])
def test_launch_configs_match_reference(n: int, dtype: torch.dtype, config, device: str) -> None:
    if not _takes(n, config):
        pytest.skip("configuration of the other kernel")
    x = _random((37, 2 * n), dtype, seed=n, device=device)  # as 74 rows of n, or with signs per block of n
    signs = random_signs(2 * n, n + 1, device=device)
    for inverse, use_signs, blocks in ((False, False, 1), (False, True, 1), (True, True, 1), (False, True, 2),
                                       (True, True, 2)):
        bits = sign_bit_mask(signs[: blocks * n], x.element_size()) if use_signs else None
        torch.full((2 * x.numel() + 1024,), float("nan"), device=device)
        y = fwht_rows_triton(x, n, inverse, 1 / math.sqrt(n), bits, config)
        s = np.tile(signs[: blocks * n].double().cpu().numpy(), 2 // blocks) if use_signs else None
        ref = fwht_ref(x.double().cpu().numpy(), inverse=inverse, block_size=n, signs=s)
        assert torch.isfinite(y).all(), "unwritten or non-finite output"
        assert_close(y, ref)


# a sign vector a block (block_size= with signs of the whole row) held by persistent programs whose rows all share
# theirs: one-row tiles with hold_signs (fp32 packed a bit an element, 16-bit rows read as words, as loaded and
# packed, a Paley core with
# its pair apart; 4 blocks on a grid of 3 programs load theirs with every row: in the interpreter, whose grid has 3
# programs an SM and one SM), and a prefetching dense launch (a tile of 2 rows, a row block's vectors held)
@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("n, dtype, config, blocks, held_on_one_sm", [
    (1024, torch.float32, Pow2Config(1, 16, 1, 3, hold_signs=True), 2, True),  # 3 programs: 2 take rows
    (1024, torch.float32, Pow2Config(1, 16, 1, 4, load_last=True, hold_signs=True), 4, True),
    (1024, torch.bfloat16, Pow2Config(1, 16, 1, 4, True, 0, True, hold_signs=True), 2, True),
    (1024, torch.bfloat16, Pow2Config(1, 16, 1, 4, True, 0, True, hold_signs=True, packed_signs=True), 2, True),
    (76 * 64, torch.float32, PaleyConfig(Pow2Config(2, 16, 1, 2, hold_signs=True), pair_apart=True), 2, True),
    (1024, torch.float32, Pow2Config(1, 16, 1, 3, hold_signs=True), 4, False),
    (12 * 32, torch.bfloat16, DenseConfig(1, 32, 1, 3, 0, 0, True), 4, True),
], ids=str)
def test_held_signs_of_blocks(monkeypatch, n: int, dtype: torch.dtype, config, blocks: int, held_on_one_sm: bool,
                              device: str) -> None:
    held = held_on_one_sm or device == "cuda"  # a GPU's grid has programs for every block
    launches = []
    run = fwht_triton._run
    monkeypatch.setattr(fwht_triton, "_run", lambda kernel, programs, *args: launches.append(
        (programs, next(a for a in args if isinstance(a, dict)))) or run(kernel, programs, *args))
    x = _random((9, blocks * n), dtype, seed=n + blocks, device=device)  # rows of `blocks` blocks of n
    signs = random_signs(blocks * n, blocks, device=device)
    for inverse in (False, True):
        y = fwht_rows_triton(x, n, inverse, 1 / math.sqrt(n), sign_bit_mask(signs, x.element_size()), config)
        ref = fwht_ref(x.double().cpu().numpy(), inverse=inverse, block_size=n, signs=signs.double().cpu().numpy())
        assert torch.isfinite(y).all(), "unwritten or non-finite output"
        assert_close(y, ref)
    programs, meta = launches[0]
    assert meta.get("HOLD_SIGNS", meta.get("HOLD_SIGN_ROWS")) == held
    assert not held or programs * kernel_plan(n, x.element_size(), config).tile_rows % blocks == 0


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_split_head_with_fewer_rows_than_warps(dtype: torch.dtype, device: str) -> None:
    """2176 = 68·32 split as 64 + 16 on 8 warps: the head's second product is added outside the MMA."""
    n, config = 2176, DenseConfig(8, 16, 3, 1, 0, 0, True, 0, True, True)
    assert dict(kernel_plan(n, torch.empty(0, dtype=dtype).element_size(), config).meta)["UNCHAINED"]
    _check_launch(_random((5, n), dtype, seed=5, device=device), config, random_signs(n, 6, device=device))


def _check_launch(x: torch.Tensor, config, signs: torch.Tensor) -> None:
    """The launch ``config`` on the rows of x, forward and inverse, with and without ``signs``, against
    the float64 reference (output poisoned first on CUDA)."""
    n = x.shape[1]
    for inverse, use_signs in ((False, False), (False, True), (True, True)):
        bits = sign_bit_mask(signs, x.element_size()) if use_signs else None
        torch.full((2 * x.numel() + 1024,), float("nan"), device=x.device)
        y = fwht_rows_triton(x, n, inverse, 1 / math.sqrt(n), bits, config)
        s = signs.double().cpu().numpy() if use_signs else None
        assert torch.isfinite(y).all(), "unwritten or non-finite output"
        assert_close(y, fwht_ref(x.double().cpu().numpy(), inverse=inverse, signs=s))


# H_K in registers (a Pow2Config for a K * 2^m size): K = 12, 20, 28 padded to 16, 32, 32 and 36 to 64; one and
# two warps, a persistent grid prefetching its next row (into registers, or into L2 on CUDA) or loading it after
# its store, the loop's pipeline loading rows ahead; its outputs split into a head and a tail (12 = 8 + 4, 20 = 16 + 4, 36 = 32 + 4, 44 = 32 + 12
# padded to 16)
@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("n, dtype, config", [
    (12 * 32, torch.float32, Pow2Config(1, 16, 1, 0)),
    (20 * 64, torch.bfloat16, Pow2Config(2, 16, 1, 0)),
    (28 * 64, torch.float16, Pow2Config(1, 16, 1, 2, True)),
    (36 * 32, torch.float32, Pow2Config(1, 16, 1, 0)),
    (28 * 128, torch.bfloat16, Pow2Config(2, 16, 2, 1)),
    (20 * 256, torch.float32, Pow2Config(2, 16, 1, 2, l2_ahead=True)),
    (12 * 64, torch.float32, Pow2Config(1, 16, 1, 0, split=True)),
    (20 * 64, torch.bfloat16, Pow2Config(2, 16, 1, 2, True, split=True)),
    (36 * 32, torch.float16, Pow2Config(1, 16, 1, 0, split=True)),
    (44 * 64, torch.float32, Pow2Config(2, 16, 1, 2, l2_ahead=True, split=True)),
    (20 * 256, torch.float32, Pow2Config(2, 16, 1, 2, l2_ahead=True, load_last=True)),
    (28 * 64, torch.bfloat16, Pow2Config(1, 16, 1, 3, load_last=True)),
    (44 * 64, torch.float16, Pow2Config(2, 16, 1, 2, split=True, load_last=True)),
    (20 * 128, torch.float32, Pow2Config(2, 16, 1, 2, l2_ahead=True, wide_store=True)),
    (28 * 256, torch.bfloat16, Pow2Config(4, 16, 1, 0, wide_store=True)),
    (12 * 256, torch.float16, Pow2Config(4, 16, 1, 1, split=True, load_last=True, wide_store=True)),
    (44 * 128, torch.float32, Pow2Config(4, 16, 1, 1, split=True, wide_store=True)),
    (20 * 256, torch.float32, Pow2Config(2, 16, 1, 2, bulk=2)),
    (44 * 128, torch.float32, Pow2Config(4, 16, 1, 1, split=True, wide_store=True, bulk=2)),
    (28 * 256, torch.float32, Pow2Config(4, 16, 1, 2, bulk=1)),
    (20 * 512, torch.bfloat16, Pow2Config(4, 16, 1, 1, split=True, wide_store=True, bulk=2)),
    (12 * 256, torch.float16, Pow2Config(2, 16, 1, 2, bulk=1)),
    (68 * 64, torch.float32, Pow2Config(2, 16, 1, 2, split=True, wide_store=True, bulk=1, hold_signs=True)),
    (108 * 64, torch.float32, Pow2Config(2, 16, 1, 2, wide_store=True, hold_signs=True, phases=4)),
    (68 * 64, torch.bfloat16, Pow2Config(2, 16, 1, 2, split=True, bulk=1, hold_signs=True, packed_signs=True)),
    (20 * 64, torch.bfloat16, Pow2Config(1, 16, 1, 0, phases=2)),
    (12 * 128, torch.float32, Pow2Config(2, 16, 1, 2, phases=4)),  # a group a phase
    (68 * 64, torch.float16, Pow2Config(2, 16, 1, 2, split=True, phases=2)),
    (12 * 32, torch.float32, Pow2Config(1, 16, 1, 0, group=5)),  # groups of 5, 5 and 2
    (108 * 32, torch.float32, Pow2Config(1, 16, 1, 2, wide_store=True, hold_signs=True, phases=4, group=5)),
    (20 * 64, torch.bfloat16, Pow2Config(1, 16, 1, 0, phases=2, group=3)),
    (68 * 64, torch.float16, Pow2Config(2, 16, 1, 2, split=True, phases=2, group=6)),
    (28 * 64, torch.float32, Pow2Config(2, 16, 1, 2, group=2)),
    (28 * 128, torch.bfloat16, Pow2Config(2, 16, 2, 1, phases=2, group=4)),
], ids=str)
def test_hadamard_in_registers(n: int, dtype: torch.dtype, config, device: str) -> None:
    """The dense factor on the CUDA cores, from sums of four inputs shared by every output, then the butterflies:
    forward and inverse (H_K.T), with one set of signs and with a set per block of a row; padded columns are
    neither read nor written (the output is poisoned first, the input's neighbours are NaN)."""
    k, _ = hadamard_factors(n)
    plan = kernel_plan(n, torch.empty(0, dtype=dtype).element_size(), config)
    assert plan.kernel == "pow2" and dict(plan.meta)["K"] == k
    x = _random((3, n), dtype, seed=n, device=device)
    _check_launch(x, config, random_signs(n, n, device=device))
    x2 = _rows_between_nans(6, n, dtype, device)
    signs = random_signs(2 * n, n + 2, device=device)
    for inverse in (False, True):
        torch.full((2 * x2.numel() + 1024,), float("nan"), device=device)
        y = fwht_rows_triton(x2.contiguous().view(3, 2 * n), n, inverse, 1 / math.sqrt(n),
                             sign_bit_mask(signs, x2.element_size()), config)
        ref = fwht_ref(x2.double().cpu().numpy().reshape(3, 2 * n), inverse=inverse, block_size=n,
                       signs=signs.double().cpu().numpy())
        assert torch.isfinite(y).all(), "unwritten or non-finite output"
        assert_close(y, ref)
    _check_strided(x2, config)


def _rows_between_nans(rows: int, n: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """Random rows of n values a stride of n + 8 apart with NaN on either side (a read past a row's ends shows)."""
    wide = torch.full((rows, n + 8), float("nan"), dtype=dtype, device=device)
    wide[:, 4:-4] = _random((rows, n), dtype, seed=n + 1, device=device)
    return wide[:, 4:-4]


def _check_strided(x: torch.Tensor, config) -> None:
    """The launch ``config`` on the rows of x as they lie (any strides), forward and inverse, against float64."""
    n = x.shape[1]
    for inverse in (False, True):
        y = fwht_rows_triton(x, n, inverse, 1 / math.sqrt(n), None, config)
        assert_close(y, fwht_ref(x.double().cpu().numpy(), inverse=inverse))


def _decoded(codes: tuple, order: int, group: int = 4) -> np.ndarray:
    """The ±1 matrix of ``hadamard_codes`` (groups of ``group`` columns, the last one shorter where ``group`` does
    not divide the order)."""
    half = 1 << (group - 1)
    codes = np.array(codes).reshape(order, -1)
    rebuilt = np.repeat(np.where(codes >= half, -1, 1), group, axis=1)[:, :order]
    for i in range(1, group):
        rebuilt[:, i::group] *= np.where((codes[:, : len(range(i, order, group))] % half) >> (i - 1) & 1, -1, 1)
    return rebuilt


@pytest.mark.parametrize("group", [2, 3, 4, 5, 6])
def test_hadamard_codes_rebuild_the_matrix(group: int) -> None:
    """``hadamard_codes`` (the constexprs of H_K in registers) hold every entry of H_K and of H_K.T, and of C + I
    and its transpose for H_K's Paley II core C, in groups of any size (four: the codes ``group`` 0 launches take too)."""
    for k in (12, 20, 28, 36, 44, 52, 60, 108):
        h = hadamard_matrix(k)
        for inverse, want in ((False, h), (True, h.T)):
            codes = fwht_plan.hadamard_codes(k, inverse, group=group)
            assert np.array_equal(_decoded(codes, k, group), want), (k, inverse)
    for k in (36, 52, 76, 100, 124):
        c = hadamard_module.paley2_core(k).astype(int) + np.eye(k // 2, dtype=int)
        for inverse, want in ((False, c), (True, c.T)):
            codes = fwht_plan.hadamard_codes(k, inverse, True, group)
            assert np.array_equal(_decoded(codes, k // 2, group), want), (k, inverse)


def test_register_split_only_where_it_pads_less() -> None:
    meta = dict(kernel_plan(68 * 256, 4, Pow2Config(8, 64, 1, 1, split=True)).meta)
    assert (meta["K_HEAD_BITS"], meta["T_BITS"]) == (6, 2)
    assert dict(kernel_plan(108 * 128, 4, Pow2Config(4, 64, 1, 0, split=True)).meta)["T_BITS"] == 0  # 64 + 64


def test_wide_store_plan() -> None:
    """``wide_store``: the registers form's store (head and tail) takes 16 bytes an access where 2^m leaves the lanes
    room for it; the load keeps the K index in registers."""
    meta = dict(kernel_plan(68 * 256, 4, Pow2Config(8, 64, 1, 1, split=True, wide_store=True)).meta)
    assert (meta["C"], meta["STORE_C"], meta["T_STORE_C"]) == (1, 128, 128)
    meta = dict(kernel_plan(68 * 256, 4, Pow2Config(8, 64, 1, 1, split=True)).meta)
    assert (meta["C"], meta["STORE_C"], meta["T_STORE_C"]) == (1, 1, 1)
    assert dict(kernel_plan(28 * 1024, 2, Pow2Config(8, 64, 1, 1, wide_store=True)).meta)["STORE_C"] == 256
    assert dict(kernel_plan(28 * 64, 4, Pow2Config(1, 64, 1, 0, wide_store=True)).meta)["STORE_C"] == 2  # as loaded


@pytest.mark.cuda
@pytest.mark.parametrize("n, dtype, config", [
    (68 * 256, torch.float32, Pow2Config(8, 64, 1, 1, split=True, wide_store=True, bulk=2)),
    (27 * 1024, torch.float32, Pow2Config(8, 64, 1, 1, wide_store=True, bulk=1)),
    (68 * 256, torch.bfloat16, Pow2Config(8, 64, 1, 1, split=True, wide_store=True, bulk=2)),
    (7 * 4096, torch.float16, Pow2Config(8, 64, 1, 1, bulk=1)),
    (76 * 128, torch.float32, PaleyConfig(Pow2Config(4, 64, 1, 2, bulk=2))),
    (148 * 128, torch.float32, PaleyConfig(Pow2Config(8, 64, 1, 1, split=True, bulk=1), pair_apart=True)),
    (68 * 256, torch.float32, Pow2Config(8, 64, 1, 1, split=True, wide_store=True, bulk=1, hold_signs=True)),
    (108 * 256, torch.float32, Pow2Config(8, 64, 1, 1, wide_store=True, bulk=1, hold_signs=True, phases=4)),
    (148 * 128, torch.float32, PaleyConfig(Pow2Config(8, 64, 1, 1, split=True, bulk=2, hold_signs=True, phases=2),
                                           pair_apart=True)),
], ids=str)
def test_bulk_rows_cuda(n: int, dtype: torch.dtype, config) -> None:
    """``bulk``: rows through one or two shared-memory buffers, several rows a program (each buffer refilled and its
    mbarrier's phase flipped several times), forward and inverse, with and without signs; 16-bit rows, a Paley core
    (whose padded columns read as zeros) and its pair read from the buffer (``pair_apart``)."""
    rows = 5 * torch.cuda.get_device_properties(0).multi_processor_count + 7
    _check_launch(_random((rows, n), dtype, seed=5, device="cuda"), config, random_signs(n, 3, device="cuda"))


@pytest.mark.parametrize("size, count", [(4, 1), (4, 2), (4, 4), (2, 1), (2, 2), (2, 4), (2, 8)])
def test_shared_read_asm(size: int, count: int) -> None:
    """The rows' reads from shared memory (``_buffer_tile``; the interpreter takes the plain loads): one ``ld.shared``
    of ``count`` values of ``size`` bytes into the asm's outputs (Triton packs 16-bit values in pairs into 32-bit
    registers), from the first address plus the first zero, with one constraint per operand of ``pack=count``."""
    asm = fwht_triton._shared_read_asm(size, count)
    constraints = fwht_triton._shared_read_constraints(size, count).split(",")
    outputs = [c for c in constraints if c.startswith("=")]
    words = max(size * count // 4, 1)
    assert len(outputs) == words and len(constraints) == 2 * words + 2 * count
    assert outputs == (["=h"] if size * count == 2 else ["=r"] * words)
    address, zero = re.search(r"add\.u32 a, \$(\d+), \$(\d+);", asm).groups()
    assert (int(address), int(zero)) == (words, words + count)  # the first address, the first zero
    load = re.search(r"ld\.shared(\.v\d)?\.b(\d+) (.*), \[a\];", asm)
    assert int(load.group(2)) * (int(load.group(1)[2:]) if load.group(1) else 1) == 8 * size * count
    assert re.findall(r"\$(\d+)", load.group(3)) == [str(i) for i in range(words)]
    assert max(int(i) for i in re.findall(r"\$(\d+)", asm)) < len(constraints)


def test_hadamard_in_registers_bounds() -> None:
    for n, size, config in ((28 * 256, 4, Pow2Config(8, 64, 1, 0, bulk=1)),
                            (28 * 512, 2, Pow2Config(8, 64, 1, 1, True, bulk=2)),
                            (28 * 256, 4, Pow2Config(8, 64, 1, 1, bulk=1, load_last=True)),
                            (1 << 14, 4, Pow2Config(8, 64, 1, 1, bulk=1))):
        with pytest.raises(ValueError, match="bulk needs a K \\* 2\\^m size on a persistent grid"):
            kernel_plan(n, size, config)
    for count in (3, True):
        with pytest.raises(ValueError, match=f"bulk is the number of row buffers, 0, 1 or 2, got {count}"):
            kernel_plan(28 * 256, 4, Pow2Config(8, 64, 1, 1, bulk=count))
    with pytest.raises(ValueError, match="hold_signs needs a persistent grid"):
        kernel_plan(28 * 256, 4, Pow2Config(8, 64, 1, 0, hold_signs=True))
    with pytest.raises(ValueError, match="packed_signs packs held sign bits: it needs hold_signs"):
        kernel_plan(1 << 15, 2, Pow2Config(8, 64, 1, 1, packed_signs=True))
    for n, config in ((28 * 256, Pow2Config(8, 64, 1, 1, phases=3)), (28 * 256, Pow2Config(8, 64, 1, 1, phases=16)),
                      (1 << 14, Pow2Config(8, 64, 1, 1, phases=2)),
                      (76 * 128, PaleyConfig(Pow2Config(4, 64, 1, 2, phases=32)))):  # C + I: 16 groups (10 padded)
        with pytest.raises(ValueError, match="phases must be a power of two up to the"):
            kernel_plan(n, 4, config)
    assert dict(kernel_plan(76 * 128, 4, PaleyConfig(Pow2Config(4, 64, 1, 2, phases=8))).meta)["PHASE_BITS"] == 3
    with pytest.raises(ValueError, match="phases must be a power of two up to the 22 groups of 5 inputs of H_108"):
        kernel_plan(108 * 128, 4, Pow2Config(4, 64, 1, 2, phases=32, group=5))
    assert dict(kernel_plan(108 * 128, 4, Pow2Config(4, 64, 1, 2, phases=16, group=5)).meta)["GROUP"] == 5
    for n, group in ((108 * 128, 7), (108 * 128, 1), (1 << 14, 5)):
        with pytest.raises(ValueError, match=f"group is 0 or the inputs of H_K a group of signed sums holds, 2 to 6, "
                                             f"for a K \\* 2\\^m size; got {group}"):
            kernel_plan(n, 4, Pow2Config(4, 64, 1, 2, group=group))
    with pytest.raises(ValueError, match="up to 128"):
        kernel_plan(140 * 64, 2, Pow2Config(2, 64, 1, 0))
    with pytest.raises(ValueError, match="no words"):
        kernel_plan(28 * 1024, 2, Pow2Config(8, 64, 1, 1, True, 0, True))
    with pytest.raises(ValueError, match="32 \\* num_warps columns"):
        kernel_plan(28 * 64, 4, Pow2Config(4, 64, 1, 0))
    with pytest.raises(ValueError, match="load_last needs a persistent grid"):
        kernel_plan(28 * 256, 4, Pow2Config(8, 64, 1, 0, load_last=True))
    with pytest.raises(ValueError, match="load_last needs a persistent grid"):
        kernel_plan(28 * 256, 4, Pow2Config(8, 64, 1, 1, True, load_last=True))


def test_power_of_two_signs_launches_hold_the_sign_bits() -> None:
    """Powers of two with signs= take persistent launches that hold the sign bits where those measured faster
    (fp32 2^14 and 2^15, bf16 2^14, and bf16 2^15 with the bits packed); float16 rows and other sizes keep the launch
    without signs."""
    for n, size in ((1 << 15, 4), (1 << 14, 4), (1 << 14, 2), (1 << 15, 2)):
        plan = kernel_plan(n, size, signs=True)
        assert plan.hold_signs and plan.programs_per_sm > 0 and plan != kernel_plan(n, size)
    assert dict(kernel_plan(1 << 15, 2, signs=True).meta)["PACK_SIGNS"]
    for n in (1 << 14, 1 << 15):
        assert kernel_plan(n, 2, signs=True, fp16=True) == kernel_plan(n, 2, fp16=True)
    for n, size in ((1 << 13, 4), (1 << 12, 2)):
        assert kernel_plan(n, size, signs=True) == kernel_plan(n, size)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("n, dtype, config", [
    (28 * 16, torch.bfloat16, SplitConfig(2, DenseConfig(2, 16, 3, 1, 0, 0, True, 0, False, True))),  # 112 * 4
    (36 * 8, torch.float32, SplitConfig(2, DenseConfig(2, 16, 1, 2, 0, 0, True, 0, True, True))),  # 144 = 128 + 16
    (12 * 16, torch.float16, SplitConfig(1, DenseConfig(1, 16, 1, 0, 16, 16))),  # 24 * 8 in K chunks of 16
], ids=str)
def test_split_moves_power_of_two_bits_into_the_dense_product(n: int, dtype: torch.dtype, config, device: str) -> None:
    """K * 2^m with k_bits of 2^m on the tensor cores (H_K kron H_{2^k_bits}) is the same transform."""
    k, _ = hadamard_factors(n)
    assert dict(kernel_plan(n, torch.empty(0, dtype=dtype).element_size(), config).meta)["K"] == k << config.k_bits
    _check_launch(_random((9, n), dtype, seed=n, device=device), config, random_signs(n, 7, device=device))


# H_K of the Paley II form (K = 36, 76, 148) as its core C of order K / 2 and one more butterfly: C padded to 32, 64
# and 128 in contraction chunks of 16 and 32, one to four rows a tile, fp32 as bf16 pieces (CUDA) or tf32 pieces
@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("n, dtype, config", [
    (36 * 16, torch.float32, PaleyConfig(DenseConfig(1, 16, 1, 0, 16, 16))),
    (76 * 8, torch.bfloat16, PaleyConfig(DenseConfig(2, 16, 2, 0, 16, 32))),
    (148 * 4, torch.float16, PaleyConfig(DenseConfig(2, 64, 3, 0, 32, 64))),
    (36 * 32, torch.float32, PaleyConfig(DenseConfig(2, 32, 3, 0, 16, 32, tf32_pieces=True))),
], ids=str)
def test_paley_core_on_the_tensor_cores(n: int, dtype: torch.dtype, config, device: str) -> None:
    """``PaleyConfig``: the transform from the Paley II core C (half the order of H_K) is the same transform; signs
    per block of rows too; rows a stride past their length (NaN neighbours) and columns a stride apart."""
    k, _ = hadamard_factors(n)
    plan = kernel_plan(n, torch.empty(0, dtype=dtype).element_size(), config)
    assert dict(plan.meta)["K"] == k // 2 and dict(plan.meta)["PALEY"]
    x = _random((7, n), dtype, seed=n, device=device)
    _check_launch(x, config, random_signs(n, 11, device=device))
    per_row = torch.stack([random_signs(n, 20 + i, device=device) for i in range(7)])
    y = fwht_rows_triton(x, n, False, 1 / math.sqrt(n), sign_bit_mask(per_row.reshape(-1), x.element_size()), config)
    ref = np.stack([fwht_ref(x[i].double().cpu().numpy(), signs=per_row[i].double().cpu().numpy()) for i in range(7)])
    assert_close(y, ref)
    for strided in (_rows_between_nans(5, n, dtype, device), x.t().contiguous().t()):
        _check_strided(strided, config)


# H_K of the Paley II form in registers through C + I (K / 2 = 18, 38, 26: a pair group after the groups of four):
# one and two warps, a persistent grid prefetching its next row, with and without signs, forward and inverse; the
# pair bit in registers or apart (then K = 148, whose core's 74 indices fit a thread)
@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("n, dtype, config", [
    (36 * 32, torch.float32, PaleyConfig(Pow2Config(1, 16, 1, 0))),
    (76 * 64, torch.bfloat16, PaleyConfig(Pow2Config(2, 16, 1, 0))),
    (52 * 64, torch.float16, PaleyConfig(Pow2Config(1, 16, 1, 2, True))),
    (76 * 32, torch.float32, PaleyConfig(Pow2Config(1, 16, 1, 0, split=True))),  # 64 + 16
    (76 * 64, torch.float32, PaleyConfig(Pow2Config(2, 16, 1, 2, l2_ahead=True, split=True, load_last=True))),
    (36 * 32, torch.float32, PaleyConfig(Pow2Config(1, 16, 1, 0), pair_apart=True)),  # C + I of order 18
    (76 * 32, torch.bfloat16, PaleyConfig(Pow2Config(2, 16, 1, 2, l2_ahead=True, split=True, load_last=True), True)),
    (148 * 16, torch.float16, PaleyConfig(Pow2Config(1, 16, 1, 2, split=True), pair_apart=True)),  # 74 = 64 + 10
    (36 * 128, torch.float32, PaleyConfig(Pow2Config(4, 16, 1, 1, split=True, load_last=True, wide_store=True))),
    (76 * 64, torch.float32, PaleyConfig(Pow2Config(2, 16, 1, 2, split=True, wide_store=True), pair_apart=True)),
    (76 * 64, torch.float32, PaleyConfig(Pow2Config(2, 16, 1, 2, bulk=2))),
    (36 * 64, torch.bfloat16, PaleyConfig(Pow2Config(2, 16, 1, 1, split=True, bulk=1), pair_apart=True)),
    (76 * 64, torch.float32, PaleyConfig(Pow2Config(2, 16, 1, 2, split=True, hold_signs=True), pair_apart=True)),
    (76 * 64, torch.float32, PaleyConfig(Pow2Config(2, 16, 1, 2, hold_signs=True, phases=4), pair_apart=True)),
    (76 * 64, torch.float16, PaleyConfig(Pow2Config(2, 16, 1, 2, hold_signs=True, packed_signs=True), pair_apart=True)),
    (76 * 32, torch.bfloat16, PaleyConfig(Pow2Config(1, 16, 1, 0, split=True, phases=2))),  # C + I of order 38
    (76 * 64, torch.float32, PaleyConfig(Pow2Config(2, 16, 1, 2, phases=2, group=5))),  # 38: groups of 5 and a 3
    (76 * 64, torch.float32, PaleyConfig(Pow2Config(2, 16, 1, 2, hold_signs=True, group=5), pair_apart=True)),
], ids=str)
def test_paley_core_in_registers(n: int, dtype: torch.dtype, config, device: str) -> None:
    """H_K through C + I in registers is the same transform, for rows a stride past their length too."""
    plan = kernel_plan(n, torch.empty(0, dtype=dtype).element_size(), config)
    assert plan.kernel == "pow2" and dict(plan.meta)["PALEY"]
    _check_launch(_random((5, n), dtype, seed=n, device=device), config, random_signs(n, 12, device=device))
    _check_strided(_rows_between_nans(4, n, dtype, device), config)


def test_paley_core_only_where_h_k_has_that_form() -> None:
    assert hadamard_module.paley2_core(28) is None and hadamard_module.paley2_core(344) is None  # Paley I
    assert hadamard_module.paley2_core(924).shape == (462, 462)
    with pytest.raises(ValueError, match="Paley II form; K=28"):
        kernel_plan(28 * 64, 2, PaleyConfig(DenseConfig(4, 64, 3, 0, 16, 32)))
    with pytest.raises(ValueError, match="prefetch=False"):
        kernel_plan(36 * 64, 2, PaleyConfig(DenseConfig(4, 64, 1, 1, 0, 0, True)))
    with pytest.raises(ValueError, match="pair_apart is a form of the registers launch"):
        kernel_plan(36 * 64, 2, PaleyConfig(DenseConfig(4, 64, 3, 0, 16, 32), pair_apart=True))
    meta = dict(kernel_plan(148 * 128, 4, PaleyConfig(Pow2Config(8, 64, 1, 1, split=True), pair_apart=True)).meta)
    assert (meta["K"], meta["PAIR_APART"], meta["K_HEAD_BITS"], meta["T_BITS"]) == (74, True, 6, 4)  # 74 = 64 + 16


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("n, dtype, config", [
    (28 * 16, torch.bfloat16, DenseConfig(2, 16, 3, 1, 0, 0, True, 0, False, True, 2)),  # 32 = 2 chunks of 16
    (28 * 8, torch.float32, DenseConfig(1, 16, 1, 2, 0, 0, True, 0, False, False, 2)),
    (28 * 16, torch.float16, SplitConfig(2, DenseConfig(2, 16, 1, 1, 0, 0, True, 0, False, True, 2))),  # 2 * 64
], ids=str)
def test_output_rows_in_two_products(n: int, dtype: torch.dtype, config, device: str) -> None:
    """``ko_split=2``: H_K's output rows in two products, each stored on its own, is the same transform."""
    plan = kernel_plan(n, torch.empty(0, dtype=dtype).element_size(), config)
    meta = dict(plan.meta)
    assert meta["KO_SPLIT"] == 2 and meta["KO"] * 2 == meta["KI"] and plan.k_chunks == 1
    _check_launch(_random((11, n), dtype, seed=n, device=device), config, random_signs(n, 8, device=device))


def _check_rows_of_many_magnitudes(n: int, config, magnitudes: list[float], device: str) -> None:
    """fp32 rows scaled by ``magnitudes`` (one row each, row 4 at 1e3), in one launch of ``config``: forward and
    inverse, with and without signs; each row within the fp32 bound on its own; an infinity in row 4 makes that
    row non-finite and leaves the others' bits unchanged."""
    x = _random((len(magnitudes), n), torch.float32, seed=n, device=device, row_decades=2.0)
    x *= torch.tensor(magnitudes, device=device)[:, None]
    _check_launch(x, config, random_signs(n, 9, device=device))
    y = fwht_rows_triton(x, n, False, 1 / math.sqrt(n), None, config)
    ref = fwht_ref(x.double().cpu().numpy())
    for i in range(x.shape[0]):
        assert rel_err(y[i], ref[i]) < 2.5e-7, f"row {i} (magnitude {x[i].abs().max().item():.1e})"
    x[4, 3] = float("inf")
    y_inf = fwht_rows_triton(x, n, False, 1 / math.sqrt(n), None, config)
    assert not torch.isfinite(y_inf[4]).any()
    keep = torch.arange(x.shape[0], device=device) != 4
    assert torch.equal(y_inf[keep], y[keep])


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("n, config", [
    (28 * 8, DenseConfig(1, 16, 1, 2, 0, 0, True, fp16_pieces=True)),  # rows ahead in registers
    (12 * 16, DenseConfig(1, 16, 2, 2, 0, 0, True, fp16_pieces=True)),  # rows ahead by the loop's pipeline
    (36 * 8, DenseConfig(2, 16, 1, 2, 0, 0, True, 0, True, True, fp16_pieces=True)),  # K = 32 + 16: both parts
    (28 * 8, DenseConfig(1, 16, 1, 2, 0, 0, True, 0, False, False, 2, True)),  # output rows in two products
    (12 * 16, DenseConfig(1, 16, 2, 2, 0, 0, True, fp16_pieces=True, rows_first=True)),  # rows the MMA's first operand
], ids=str)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the infinity, in the interpreter
def test_fp32_rows_as_two_fp16_pieces(n: int, config, device: str) -> None:
    """``fp16_pieces``: fp32 rows scaled into float16's range by a power of two per row, multiplied as two
    fp16 pieces: within the fp32 bound per row, for rows from 1e-35 to 1e35 in one launch; a row holding
    an infinity comes out non-finite and no other row changes."""
    assert kernel_plan(n, 4, config).fp16_pieces
    _check_rows_of_many_magnitudes(n, config, [1e-32, 1e-20, 1e-5, 1.0, 1e3, 7e4, 1e20, 1e36, 1.0], device)


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("n, config", [
    (28 * 8, DenseConfig(1, 16, 1, 2, 0, 0, True, tf32_pieces=True)),  # rows ahead in registers
    (12 * 16, DenseConfig(1, 16, 2, 2, 0, 0, True, tf32_pieces=True)),  # rows ahead by the loop's pipeline
    (36 * 8, DenseConfig(1, 16, 2, 2, 0, 0, True, 0, True, rows_first=True, tf32_pieces=True)),  # 32 + 16, rows first
    (68 * 4, DenseConfig(1, 16, 3, 0, 16, 32, tf32_pieces=True)),  # the plain launch: chunks of H_K both ways
], ids=str)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the infinity, in the interpreter
def test_fp32_rows_as_two_tf32_pieces(n: int, config, device: str) -> None:
    """``tf32_pieces``: fp32 rows multiplied as tf32 hi + rest: within the fp32 bound per row, for rows from 1e-30
    to 1e30 in one launch (tf32 has fp32's exponent range: nothing is scaled); a row holding an infinity comes out
    non-finite and no other row changes."""
    assert kernel_plan(n, 4, config).tf32_pieces
    _check_rows_of_many_magnitudes(n, config, [1e-30, 1e-20, 1e-5, 1.0, 1e3, 7e4, 1e20, 1e30, 1.0], device)


def test_one_piece_form_per_launch() -> None:
    with pytest.raises(ValueError, match="fp16_pieces or tf32_pieces"):
        kernel_plan(28 * 8, 4, DenseConfig(1, 16, 1, 2, 0, 0, True, fp16_pieces=True, tf32_pieces=True))


def test_output_split_needs_chunks_of_a_dot() -> None:
    with pytest.raises(ValueError, match="ko_split"):
        kernel_plan(12 * 16, 2, DenseConfig(1, 16, 1, 1, 0, 0, True, ko_split=2))  # 16 rows: halves of 8
    with pytest.raises(ValueError, match="ko_split"):
        kernel_plan(28 * 16, 2, DenseConfig(1, 16, 1, 1, 0, 0, True, ko_split=4))


@pytest.mark.parametrize("device", kernel_devices())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_prefetch_reads_unaligned_rows(dtype: torch.dtype, device: str) -> None:
    """16-bit rows whose pairs are not 4-byte aligned (odd row stride, odd offset, column stride 2)
    cannot be read as int32 words: the prefetching launch reads them element by element."""
    n, config = 256, Pow2Config(1, 32, 1, 1, True, 0, True)
    base = _random((37, 2 * n + 2), dtype, seed=3, device=device)
    signs = random_signs(n, 4, device=device)
    bits = sign_bit_mask(signs, base.element_size())
    for x in (base[:, 1:n + 1], base.flatten()[1:1 + 37 * n].view(37, n), base[:, : 2 * n : 2]):
        for inverse in (False, True):
            y = fwht_rows_triton(x, n, inverse, 1 / math.sqrt(n), bits, config)
            assert_close(y, fwht_ref(x.double().cpu().numpy(), inverse=inverse, signs=signs.double().cpu().numpy()))


def test_words_only_where_configured() -> None:
    """Only 16-bit prefetching launches configured so read int32 words; 16-bit rows of 2^15 do by default."""
    assert kernel_plan(1 << 15, 2).words and not kernel_plan(1 << 15, 4).words
    assert not kernel_plan(1 << 14, 2).words
    assert not kernel_plan(256, 2, Pow2Config(1, 16, 1, 2, False, 0, True)).words


def test_split_config_bounds() -> None:
    plan = kernel_plan(1 << 15, 2, SplitConfig(7, DenseConfig(8, 64, 1, 1, 0, 0, True)))
    assert plan.kernel == "dense" and dict(plan.meta)["K"] == 128 and dict(plan.meta)["P"] == 256
    for n, bits in ((1 << 15, 3), (1 << 15, 15), (28 * 512, 0), (28 * 512, 9)):
        with pytest.raises(ValueError, match="k_bits"):
            kernel_plan(n, 2, SplitConfig(bits, DenseConfig(8, 64, 1, 1, 0, 0, True)))


@pytest.mark.parametrize("n", LLM_SIZES + [1 << m for m in range(17)])
def test_kernels_take_every_llm_and_power_of_two_size(n: int) -> None:
    for elem_size in (2, 4):
        assert kernel_plan(n, elem_size) is not None


@pytest.mark.parametrize("device", kernel_devices())
def test_signs_checked_once_and_recheck_after_change(device: str) -> None:
    x = _random((3, 64), torch.float32, 5, device=device)
    signs = random_signs(64, 3, device=device)
    _check(x, "triton", signs=signs)
    signs[5] = -signs[5]  # in place: a new version, used by the next call
    _check(x, "triton", signs=signs)
    signs[7] = 0.5
    with pytest.raises(ValueError, match=r"\+1 and -1"):
        fwht(x, signs=signs, backend="triton")


@pytest.mark.parametrize("backend", ["triton", "torch"])
@given(n=st.sampled_from([8, 12, 28, 64, 128, 192]), seed=st.integers(0, 1000))
def test_inverse_is_identity_and_norm_preserved(backend: str, n: int, seed: int) -> None:
    x = _random((4, n), torch.float32, seed)
    y = fwht(x, backend=backend)
    np.testing.assert_allclose(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5)
    back = fwht(y, inverse=True, backend=backend)
    assert rel_err(back, x.double().numpy()) < 1e-6
    raw = fwht(x, normalized=False, backend=backend)
    assert rel_err(fwht(raw, normalized=False, inverse=True, backend=backend), x.double().numpy()) < 1e-6


@given(n=st.sampled_from([4, 12, 32, 40]), a=st.floats(-3, 3), b=st.floats(-3, 3), seed=st.integers(0, 99))
def test_linearity(n: int, a: float, b: float, seed: int) -> None:
    x, y = _random((2, n), torch.float64, seed), _random((2, n), torch.float64, seed + 1)
    lhs = fwht(a * x + b * y)
    rhs = a * fwht(x) + b * fwht(y)
    assert torch.allclose(lhs, rhs, atol=1e-12 * (1 + abs(a) + abs(b)) * float(x.abs().max() + y.abs().max()))


@pytest.mark.parametrize("n", [8, 12, 40])
def test_definition_against_dense_matrix(n: int) -> None:
    x = _random((3, n), torch.float64, n)
    h = torch.from_numpy(hadamard_matrix(n).astype(np.float64))
    assert torch.allclose(fwht(x), x @ h.T / math.sqrt(n), atol=1e-12)
    assert torch.allclose(fwht(x, inverse=True, normalized=False), x @ h / n, atol=1e-12)


def test_jax_reference_matches_numpy() -> None:
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    from hlwq_reference.jax import fwht as fwht_jax

    rng = np.random.default_rng(0)
    for n, kw in [(96, {}), (28, {"inverse": True}), (64, {"block_size": 16, "signs": rng.choice([-1.0, 1.0], 16)}),
                  (12, {"normalized": False, "inverse": True})]:
        x = rng.standard_normal((3, 2, n))
        np.testing.assert_allclose(np.asarray(fwht_jax(x, dim=-1, **kw)), fwht_ref(x, **kw), atol=1e-12)
        np.testing.assert_allclose(np.asarray(fwht_jax(x.swapaxes(0, 2), dim=0, **kw)),
                                   fwht_ref(x.swapaxes(0, 2), dim=0, **kw), atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        ({"x": torch.randn(2, 7)}, ValueError, "n=7"),
        ({"x": torch.randn(2, 30)}, ValueError, "nearest supported sizes: 28 and 32"),
        ({"x": torch.ones(2, 8, dtype=torch.int32)}, TypeError, "int32"),
        ({"x": torch.randn(2, 12), "block_size": 8}, ValueError, "block_size=8"),
        ({"x": torch.randn(2, 8), "signs": torch.ones(4)}, ValueError, "length n=8"),
        ({"x": torch.randn(2, 8), "signs": torch.full((8,), 0.5)}, ValueError, r"\+1 and -1"),
        ({"x": torch.randn(2, 8), "backend": "cuda"}, ValueError, "backend"),
    ],
)
def test_bad_input_errors(kwargs, exc, pattern) -> None:
    with pytest.raises(exc, match=pattern):
        fwht(**kwargs)


def test_random_signs_reproducible() -> None:
    s = random_signs(256, seed=7)
    assert torch.equal(s, random_signs(256, seed=7))
    assert not torch.equal(s, random_signs(256, seed=8))
    assert set(s.tolist()) == {-1.0, 1.0}


@pytest.mark.cuda
@pytest.mark.parametrize("n", CUDA_SIZES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_large_sizes(n: int, dtype: torch.dtype) -> None:
    rows = max(3, min(300, (1 << 20) // n))  # several tiles, the last one partial
    x = _random((rows, n), dtype, seed=n, device="cuda")
    _check(x, "auto")
    signs = random_signs(n, n, device="cuda")
    _check(x, "auto", signs=signs)
    _check(x, "auto", inverse=True, signs=signs)
    if torch.cuda.get_device_capability() >= (9, 0):  # 227 KiB of shared memory: every table launch fits
        assert not fwht_module._OVER_CAPACITY, "a launch fell back to the torch path"
        assert not fwht_triton._RETRIED, "a table launch did not fit and ran the plain launch"


@pytest.mark.cuda
@pytest.mark.parametrize("n", [1 << 14, 1 << 15, 3584])
def test_cuda_float16(n: int) -> None:
    """float16 rows take their own launch where the bf16 one measured slow (2^14)."""
    assert kernel_plan(1 << 14, 2, fp16=True) != kernel_plan(1 << 14, 2)
    x = _random((max(3, (1 << 20) // n), n), torch.float16, seed=n, device="cuda")
    _check(x, "auto")
    signs = random_signs(n, n, device="cuda")
    _check(x, "auto", signs=signs)
    _check(x, "auto", inverse=True, signs=signs)


_OVERSIZE = DenseConfig(8, 16, 3, 1, 0, 0, True, 0, False, True)  # 27648 bf16 unsplit at 3 stages: 3 x 64 KiB rows


@pytest.mark.cuda
@pytest.mark.parametrize("generic_fits", [True, False])
def test_launch_over_shared_memory_cuda(monkeypatch, generic_fits: bool) -> None:
    """A table launch that needs more shared memory than the GPU has (Triton's OutOfResources) is
    retried with the kernels' plain launch (``generic_config``); where that does not fit either,
    backend="triton" raises and "auto" runs the torch path, right, and remembers it for that size."""
    monkeypatch.setitem(fwht_plan._DENSE_TABLE_SIZES, (2, 27648), _OVERSIZE)
    if not generic_fits:
        monkeypatch.setitem(fwht_plan._DENSE_TABLE, 2, _OVERSIZE)
    monkeypatch.setattr(fwht_module, "_OVER_CAPACITY", set())
    for module in (fwht_module, fwht_triton):  # launches made by earlier tests would skip the plan
        monkeypatch.setattr(module, "_PREPARED", PreparedCalls())
    monkeypatch.setattr(fwht_triton, "_RETRIED", set())
    kernel_plan.cache_clear()
    try:
        x = _random((5, 27648), torch.bfloat16, seed=11, device="cuda")
        with pytest.raises(OutOfResources):
            fwht_rows_triton(x, 27648, False, 1.0, None, _OVERSIZE)  # a launch given as config= is not replaced
        if generic_fits:
            _check(x, "triton")
            assert len(fwht_triton._PREPARED) == 1 and not fwht_module._OVER_CAPACITY
            assert (27648, torch.bfloat16, False, x.device) in fwht_triton._RETRIED
            _check(x, "triton")  # the plain launch, kept for these inputs
            return
        with pytest.raises(OutOfResources):
            fwht(x, backend="triton")
        _check(x, "auto")
        assert fwht_module._OVER_CAPACITY == {(27648, torch.bfloat16, False, x.device)}
        _check(x, "auto")  # remembered: straight to the torch path
    finally:
        kernel_plan.cache_clear()


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_repeated_calls_reuse_prepared_launches_cuda(monkeypatch, dtype: torch.dtype) -> None:
    """A repeated call launches the kernel made for the first one when everything that decides the launch
    is the same (shape, strides, dtype, alignment, direction, scale, sign bits); inputs that differ in any
    of these (a row length, a misaligned view, a block size, signs, the inverse) get launches of their own.
    Every result matches the float64 reference, and an installed launch hook sees the reused launches."""
    import triton

    for module in (fwht_module, fwht_triton):
        monkeypatch.setattr(module, "_PREPARED", PreparedCalls())
    buf = _random((4 * 3584 + 8,), dtype, seed=5, device="cuda")
    signs = random_signs(3584, 1, device="cuda")
    cases = [
        (buf[: 4 * 4096 // 2].view(2, 4096), {}),
        (buf[: 4 * 3584].view(4, 3584), {}),
        (buf[1: 1 + 4 * 3584].view(4, 3584), {}),  # misaligned rows
        (buf[: 4 * 3584].view(4, 3584), {"signs": signs}),
        (buf[: 4 * 3584].view(4, 3584), {"signs": signs, "inverse": True}),
        (buf[: 4 * 3584].view(28, 512), {"block_size": 128}),
        (buf[: 4 * 3584].view(4, 3584), {"normalized": False}),
    ]
    for _ in range(3):
        for x, kw in cases:
            _check(x, "auto", **kw)
    assert len(fwht_triton._PREPARED) == len(fwht_module._PREPARED) == len(cases)
    seen: list = []
    hooks = triton.knobs.runtime
    hooks.launch_enter_hook.add(seen.append)
    try:
        for x, kw in cases:
            _check(x, "auto", **kw)
    finally:
        hooks.launch_enter_hook.remove(seen.append)
    torch.cuda.synchronize()
    assert [m.get()["name"].startswith("_fwht_") for m in seen] == [True] * len(cases)


@pytest.mark.cuda
def test_kept_calls_check_what_can_change_cuda(monkeypatch) -> None:
    """A call that ``fwht()`` kept (``_PREPARED``) still checks its signs, which can change between calls; a
    3-D contiguous input with blocks and a transposed one (dim 0: not kept) stay right on every call."""
    monkeypatch.setattr(fwht_module, "_PREPARED", PreparedCalls())
    x3 = _random((3, 5, 3584), torch.bfloat16, seed=12, device="cuda")
    signs = random_signs(3584, 2, device="cuda")
    xt = _random((3584, 6), torch.float32, seed=13, device="cuda")
    for _ in range(2):
        _check(x3, "auto", signs=signs)
        _check(x3, "auto", block_size=512, signs=signs[:512].clone())
        _check(x3, "auto", block_size=512, inverse=True)
        _check(xt, "auto", dim=0)
    assert len(fwht_module._PREPARED) == 3
    signs[7] = 0.5  # a new version of the same tensor: checked again
    with pytest.raises(ValueError, match="only \\+1 and -1"):
        fwht(x3, signs=signs)
    signs[7] = -1.0
    _check(x3, "auto", signs=signs)

