"""Triton FWHT kernels and their launcher.

A row of length n = K * 2**m is transformed in one read and one write of device memory.

* The power-of-two factor H_{2^m} runs as fp32 butterflies on the CUDA cores. A tile of rows is held
  as a tensor with one size-2 dimension per bit of its (row, column) index; a butterfly on column bit
  c is ``split`` + ``join`` on that dimension once it is moved last. Which bits a thread holds in
  registers, which bits its lanes and warps hold, follows from the order of the dimensions (Triton's
  default layout puts the innermost five on lanes, the next ones on warps and the rest in registers),
  so the kernel works in *rounds*: all column bits held in registers are transformed without any data
  movement, then one layout conversion (through shared memory) brings the next set of bits into
  registers. The first round uses the layout the tile was loaded in, so an n-point transform costs
  ceil(bits / register bits) conversions, one of them back to the store layout: two for every n up
  to 16384 with the launch table below. Every value stays fp32 until the single rounding at the store.
* A factor K > 1 (dense, exact ±1 entries) runs first, on the tensor cores: ``H_K @ X`` with X the
  row viewed as K x 2^m (padded to a power of two), bf16/fp16 inputs as they are (the products are
  exact), fp32 inputs split into three bf16 pieces (hi + mid + lo holds all 24 bits). Orders K above
  128 are cut into chunks of output rows (one program each, the input re-read from L2) and of the
  contraction (a loop). The power-of-two butterflies then run on the fp32 accumulator.

``fwht_rows_triton`` picks a launch configuration from a table measured on an H200 (override it with
keyword arguments, as ``bench/gpu_fwht.py --sweep`` does).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

from hlwq_kernels.ops._triton import launch, require_triton, tl, triton
from hlwq_kernels.ops.hadamard import hadamard_factors, hadamard_tensor

__all__ = ["fwht_rows_triton", "kernel_plan", "MAX_POW2_BITS"]

MAX_POW2_BITS = 16  # the power-of-two factor 2^m of a supported size, m <= 16
_MIN_DOT = 16  # smallest tl.dot dimension

Bit = tuple[str, int]  # ("r", i): bit i of the tile's row; ("k", i): of the K index; ("c", i): of the column


@triton.jit
def _butterfly_last(v):
    """2-point Hadamard transform along the last (size-2) dimension."""
    a, b = tl.split(v)
    return tl.join(a + b, a - b)


@triton.jit
def _butterflies(v, STEPS: tl.constexpr, NUM_STEPS: tl.constexpr, SHAPE: tl.constexpr):
    """Apply the planned butterflies to v (a tensor of size-2 dims) and reshape it to SHAPE.

    STEPS[i] (i < NUM_STEPS) is the permutation that moves the next bit last; STEPS[NUM_STEPS]
    restores the natural dimension order.
    """
    for i in tl.static_range(NUM_STEPS):
        v = _butterfly_last(tl.permute(v, STEPS[i]))
    return tl.reshape(tl.permute(v, STEPS[NUM_STEPS]), SHAPE)


# Row and tile counts and the direction are plain runtime values: one compiled kernel serves them all.
_RUNTIME = ["rows", "num_tiles", "k_chunks", "sign_blocks", "inverse"]


@triton.jit(do_not_specialize=_RUNTIME[:2] + _RUNTIME[3:])
def _fwht_pow2_kernel(
    x_ptr, y_ptr, s_ptr, rows, num_tiles, sign_blocks, inverse, stride_xr, stride_xc, scale,
    BM: tl.constexpr, H: tl.constexpr, C: tl.constexpr, BITS: tl.constexpr, STEPS: tl.constexpr,
    NUM_STEPS: tl.constexpr, HAS_SIGNS: tl.constexpr, SIGN_ROWS: tl.constexpr, STAGES: tl.constexpr,
):
    """Rows of length H*C (a power of two), BM rows per tile, loaded as [BM, H, C]. The signs of
    row i start at s_ptr + (i % sign_blocks) * H * C when SIGN_ROWS, else at s_ptr."""
    col = tl.arange(0, H)[None, :, None] * C + tl.arange(0, C)[None, None, :]
    for tile in tl.range(tl.program_id(0), num_tiles, tl.num_programs(0), num_stages=STAGES):
        row = tile * BM + tl.arange(0, BM)[:, None, None]
        valid = row < rows
        v = tl.load(x_ptr + row.to(tl.int64) * stride_xr + col * stride_xc, mask=valid, other=0.0)
        v = v.to(tl.float32)
        sign_at = s_ptr + col + 0 * row  # the data's shape, hence its layout (no conversion)
        if SIGN_ROWS:
            sign_at += (row % sign_blocks) * (H * C)
        if HAS_SIGNS:
            if inverse == 0:
                v = v * tl.load(sign_at)
        v = _butterflies(tl.reshape(v, BITS), STEPS, NUM_STEPS, (BM, H, C)) * scale
        if HAS_SIGNS:
            if inverse != 0:
                v = v * tl.load(sign_at)
        tl.store(y_ptr + row.to(tl.int64) * (H * C) + col, v.to(y_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _dot_pieces(h, x, acc, PIECES: tl.constexpr):
    """acc + h @ x: PIECES = 1 multiplies 16-bit x as it is (exact products); 3 splits fp32 x into
    bf16 hi + mid + lo; 0 (the interpreter, which has no bf16 dot) multiplies in fp32."""
    if PIECES == 0:
        acc = tl.dot(h.to(tl.float32), x.to(tl.float32), acc)
    elif PIECES == 1:
        acc = tl.dot(h, x, acc)
    else:
        x = x.to(tl.float32)
        hi = x.to(tl.bfloat16)
        rest = x - hi.to(tl.float32)
        mid = rest.to(tl.bfloat16)
        lo = (rest - mid.to(tl.float32)).to(tl.bfloat16)
        acc = tl.dot(h, lo, acc)
        acc = tl.dot(h, mid, acc)
        acc = tl.dot(h, hi, acc)
    return acc


@triton.jit(do_not_specialize=_RUNTIME)
def _fwht_dense_kernel(
    x_ptr, y_ptr, s_ptr, h_ptr, rows, num_tiles, k_chunks, sign_blocks, inverse, stride_xr, stride_xc, scale,
    K: tl.constexpr, P: tl.constexpr, KO: tl.constexpr, KI: tl.constexpr, KI_STEPS: tl.constexpr,
    BM: tl.constexpr, BITS: tl.constexpr, STEPS: tl.constexpr, NUM_STEPS: tl.constexpr,
    HAS_SIGNS: tl.constexpr, SIGN_ROWS: tl.constexpr, PIECES: tl.constexpr, STAGES: tl.constexpr,
):
    """Rows of length K*P: a tile is BM rows x KO output K-indices; H_K (H_K.T for the inverse,
    padded, row-major with KI*KI_STEPS columns) at h_ptr. Signs as in ``_fwht_pow2_kernel``."""
    j = tl.arange(0, P)[None, None, :]
    ki0 = tl.arange(0, KI)[:, None, None]
    for tile in tl.range(tl.program_id(0), num_tiles, tl.num_programs(0), num_stages=STAGES):
        rb = tile // k_chunks
        ko = (tile % k_chunks) * KO + tl.arange(0, KO)
        row = rb * BM + tl.arange(0, BM)[None, :, None]
        row_ok = row < rows
        sign_row = s_ptr
        if SIGN_ROWS:
            sign_row += (row % sign_blocks) * (K * P)
        acc = tl.zeros((KO, BM * P), dtype=tl.float32)
        for step in range(KI_STEPS):
            ki = step * KI + ki0
            col = ki * P + j
            ok = row_ok & (ki < K)
            v = tl.load(x_ptr + row.to(tl.int64) * stride_xr + col * stride_xc, mask=ok, other=0.0)
            if HAS_SIGNS:
                if inverse == 0:
                    v = (v.to(tl.float32) * tl.load(sign_row + col, mask=ki < K, other=0.0)).to(v.dtype)
            h = tl.load(h_ptr + ko[:, None] * (KI * KI_STEPS) + (step * KI + tl.arange(0, KI))[None, :])
            acc = _dot_pieces(h, tl.reshape(v, (KI, BM * P)), acc, PIECES)
        v = _butterflies(tl.reshape(acc, BITS), STEPS, NUM_STEPS, (KO, BM, P)) * scale
        ko3 = ko[:, None, None]
        out_col = ko3 * P + j
        if HAS_SIGNS:
            if inverse != 0:
                v = v * tl.load(sign_row + out_col, mask=ko3 < K, other=0.0)
        ok = row_ok & (ko3 < K)
        tl.store(y_ptr + row.to(tl.int64) * (K * P) + out_col, v.to(y_ptr.dtype.element_ty), mask=ok)


# ----------------------------------------------------------------------------------------------
# Planning: which bits live in registers, lanes and warps, round by round.


def _round_order(regs: list[Bit], warps: list[Bit], lanes: list[Bit], split: Bit) -> list[Bit]:
    """Dimension order whose default layout has ``regs`` in registers, ``warps`` on warps and
    ``lanes`` on lanes (both listed from their lowest bit), with ``split`` last (in registers)."""
    return [b for b in regs if b != split] + warps[::-1] + lanes[::-1] + [split]


def _butterfly_plan(
    natural: list[Bit], cols: list[Bit], warp_bits: int, first: tuple[list[Bit], list[Bit], list[Bit]] | None,
) -> tuple[tuple[tuple[int, ...], ...], int]:
    """Permutations (see ``_butterflies``) that transform every bit in ``cols`` of a tile whose
    dimensions are ``natural`` (most significant first), and the number of rounds.

    ``first`` = (registers, warps, lanes) of the layout the tile arrives in, used as the first
    round; each later round takes as many untransformed bits into registers as there are register
    bits and keeps the other bits on the warps they were on where it can.
    """
    slots = len(natural) - 5 - warp_bits
    if cols and slots < 1:
        raise ValueError(f"tile of {len(natural)} bits is too small for {warp_bits} warp bits")
    rounds = []
    todo = list(cols)
    prev_regs, prev_warps = [], []
    if first is not None:
        regs, warps, lanes = first
        rounds.append((regs, warps, lanes, [b for b in regs if b in todo]))
        todo = [b for b in todo if b not in regs]
        prev_regs, prev_warps = regs, warps
    while todo:
        work, todo = todo[:slots], todo[slots:]
        rest = [b for b in prev_regs if b not in work] + [b for b in natural if b not in work and b not in prev_regs]
        regs = work + rest[: slots - len(work)]
        left = [b for b in natural if b not in regs]
        warps = [b for b in prev_warps if b in left][:warp_bits]
        warps += [b for b in left if b not in warps][: warp_bits - len(warps)]
        lanes = sorted((b for b in left if b not in warps), key=lambda b: ("rkc".index(b[0]) == 2, b[1]))
        rounds.append((regs, warps, lanes, work))
        prev_regs, prev_warps = regs, warps
    steps = []
    cur = natural
    for regs, warps, lanes, work in rounds:
        for bit in work:
            nxt = _round_order(regs, warps, lanes, bit)
            steps.append(tuple(cur.index(b) for b in nxt))
            cur = nxt
    steps.append(tuple(cur.index(b) for b in natural))
    return tuple(steps), len(rounds)


def _bits(kind: str, count: int) -> list[Bit]:
    return [(kind, i) for i in reversed(range(count))]


def _load_layout(m: int, b: int, v: int, w: int) -> tuple[list[Bit], list[Bit], list[Bit]]:
    """(registers, warps, lanes) of Triton's coalesced layout for a [2^b, H, C] tile of rows of 2^m
    (C = min(2^m, 32 * 2^v) contiguous columns, 2^v per vector access)."""
    v = min(v, m)
    c_bits = min(m, v + 5)
    pool = [("c", i) for i in range(v, c_bits)] + _bits("r", b)[::-1] + [("c", i) for i in range(c_bits, m)]
    return [("c", i) for i in range(v)] + pool[5 + w:], pool[5: 5 + w], pool[:5]


class Pow2Config(NamedTuple):
    num_warps: int
    elems_per_thread: int
    stages: int  # 1: one tile per program; > 1: persistent programs prefetching `stages - 1` tiles
    programs_per_sm: int


class DenseConfig(NamedTuple):
    num_warps: int
    elems_per_thread: int
    stages: int
    programs_per_sm: int
    ki: int  # contraction chunk of H_K
    ko: int  # output chunk of H_K (rows of H_K per tile)


# Launch table (measured on an H200, bench/results/fwht-h200-2026-12-01.md): by log2(row length).
_POW2_TABLE = {m: Pow2Config(4, 32 if m <= 10 else 64 if m <= 12 else 128, 1, 0) for m in range(0, 15)}
_POW2_TABLE.update({15: Pow2Config(8, 128, 1, 0), 16: Pow2Config(16, 128, 1, 0)})
_DENSE_DEFAULT = DenseConfig(4, 64, 1, 0, 64, 128)
_MAX_PER_THREAD = 128  # fp32 values of a dense tile per thread (registers)
_MAX_CHUNK = 8192  # elements of one input chunk of the dense kernel (shared memory)


class KernelPlan(NamedTuple):
    kernel: str  # "pow2" or "dense"
    meta: tuple  # constexpr launch arguments as (name, value) pairs
    num_warps: int
    tile_rows: int
    k_chunks: int
    stages: int
    programs_per_sm: int
    rounds: int  # layout rounds of the butterflies (conversions = rounds, one back to the store layout)


def _vec_bits(elem_size: int) -> int:
    return (16 // elem_size).bit_length() - 1


@functools.lru_cache(maxsize=256)
def _pow2_plan(m: int, elem_size: int, cfg: Pow2Config) -> KernelPlan:
    v = _vec_bits(elem_size)
    w = cfg.num_warps.bit_length() - 1
    threads_bits = 5 + w
    tile_bits = max(threads_bits + min(v, m), (cfg.elems_per_thread.bit_length() - 1) + threads_bits)
    b = max(0, tile_bits - m)
    c = 1 << min(m, min(v, m) + 5)
    natural = _bits("r", b) + _bits("c", m)
    steps, rounds = _butterfly_plan(natural, _bits("c", m)[::-1], w, _load_layout(m, b, v, w))
    meta = (("BM", 1 << b), ("H", (1 << m) // c), ("C", c), ("BITS", (2,) * len(natural)), ("STEPS", steps),
            ("NUM_STEPS", len(steps) - 1))
    return KernelPlan("pow2", meta, cfg.num_warps, 1 << b, 1, cfg.stages, cfg.programs_per_sm, rounds)


@functools.lru_cache(maxsize=256)
def _dense_plan(k: int, m: int, elem_size: int, cfg: DenseConfig) -> KernelPlan:
    # fp32 inputs hold three bf16 pieces of each input chunk: smaller tiles and chunks
    per_thread = _MAX_PER_THREAD if elem_size <= 2 else _MAX_PER_THREAD // 2
    k_pad = max(_MIN_DOT, triton.next_power_of_2(k))
    ko = min(k_pad, cfg.ko)
    while ko > _MIN_DOT and ko << m > per_thread * 32 * cfg.num_warps:
        ko //= 2
    num_warps = max(cfg.num_warps, triton.next_power_of_2(triton.cdiv(ko << m, per_thread * 32)))
    w = num_warps.bit_length() - 1
    ko_bits = ko.bit_length() - 1
    tile_bits = min(cfg.elems_per_thread, per_thread).bit_length() - 1 + 5 + w
    b = max(0, tile_bits - ko_bits - m, (_MIN_DOT.bit_length() - 1) - m)
    ki = min(k_pad, cfg.ki)
    while ki > _MIN_DOT and ki << (m + b) > _MAX_CHUNK:
        ki //= 2
    natural = _bits("k", ko_bits) + _bits("r", b) + _bits("c", m)
    steps, rounds = _butterfly_plan(natural, _bits("c", m)[::-1], w, None)
    ki_steps = -(-k // ki)
    meta = (("K", k), ("P", 1 << m), ("KO", ko), ("KI", ki), ("KI_STEPS", ki_steps), ("BM", 1 << b),
            ("BITS", (2,) * len(natural)), ("STEPS", steps), ("NUM_STEPS", len(steps) - 1))
    return KernelPlan("dense", meta, num_warps, 1 << b, -(-k // ko), cfg.stages, cfg.programs_per_sm, rounds)


@functools.lru_cache(maxsize=512)
def kernel_plan(n: int, elem_size: int, config: Pow2Config | DenseConfig | None = None) -> KernelPlan | None:
    """The launch plan for rows of length n (elements of ``elem_size`` bytes), or None when the
    kernels cannot take n (its power-of-two factor above 2**MAX_POW2_BITS)."""
    k, p = hadamard_factors(n)
    m = p.bit_length() - 1
    if m > MAX_POW2_BITS:
        return None
    if k == 1:
        return _pow2_plan(m, elem_size, config or _POW2_TABLE[m])
    return _dense_plan(k, m, elem_size, config or _DENSE_DEFAULT)


@functools.lru_cache(maxsize=64)
def _dense_matrix(k: int, rows: int, cols: int, inverse: bool, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """H_K (H_K.T for the inverse) zero-padded to [rows, cols], on the device (built once)."""
    h = torch.zeros(rows, cols, dtype=dtype)
    h[:k, :k] = hadamard_tensor(k, transpose=inverse)
    return h.to(device)


@functools.lru_cache(maxsize=16)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _int_key(v: int) -> tuple[bool, bool, bool]:
    """What Triton specializes an integer argument on: == 1, divisible by 16, fits int32."""
    return v == 1, v % 16 == 0, -(1 << 31) <= v < (1 << 31)


_COMPILED: dict[tuple, tuple] = {}


def _run(kernel, key: tuple, programs: int, x: torch.Tensor, runtime: tuple, plan: KernelPlan, extra: dict) -> None:
    """Launch ``kernel`` on ``programs`` programs with the plan's constexprs (and ``extra``). On
    CUDA, the compiled kernel is cached under ``key`` (everything Triton specializes on) and called
    directly afterwards: Triton's generic dispatch (argument binding, hashing the constexpr tuples)
    costs several times the launch itself."""
    hit = _COMPILED.get(key) if x.is_cuda else None
    if hit is None:
        constexprs = dict(plan.meta, STAGES=plan.stages, **extra)
        if not x.is_cuda:
            launch(kernel, (programs,), x.device, *runtime, **constexprs, num_warps=plan.num_warps)
            return
        compiled = kernel[(programs,)](*runtime, **constexprs, num_warps=plan.num_warps)
        _COMPILED[key] = (compiled, tuple(constexprs[name] for name in kernel.arg_names[len(runtime):]))
        return
    compiled, consts = hit
    args = runtime + consts
    stream = triton.runtime.driver.active.get_current_stream(x.device.index)
    knobs = triton.knobs.runtime
    compiled.run(programs, 1, 1, stream, compiled.function, compiled.packed_metadata,
                 compiled.launch_metadata((programs, 1, 1), stream, *args), knobs.launch_enter_hook,
                 knobs.launch_exit_hook, *args)


def fwht_rows_triton(
    x2: torch.Tensor, b: int, inverse: bool, scale: float, sign_row: torch.Tensor | None,
    config: Pow2Config | DenseConfig | None = None,
) -> torch.Tensor:
    """Transform (times ``scale``) of each length-b block of the rows of x2 [R, n] (any strides).

    ``sign_row`` (fp32 ±1 of length b, or n when every block has its own signs, on x2's device)
    multiplies the input of the forward transform and the output of the inverse. ``config``
    overrides the launch table (benchmark sweeps).
    """
    require_triton()
    rows, n = x2.shape
    plan = kernel_plan(b, x2.element_size(), config)
    if plan is None:
        raise ValueError(f"n={b} does not fit the Triton FWHT kernels (power-of-two factor above 2**{MAX_POW2_BITS})")
    if b != n:
        x2 = x2.contiguous().view(rows * (n // b), b)
    out = torch.empty_like(x2, memory_format=torch.contiguous_format)
    if out.numel() == 0:
        return out.view(rows, n)
    num_tiles = -(-x2.shape[0] // plan.tile_rows) * plan.k_chunks
    programs = num_tiles
    if plan.programs_per_sm and x2.is_cuda:
        programs = min(num_tiles, _sm_count(x2.device) * plan.programs_per_sm)
    has_signs = sign_row is not None
    signs = sign_row if has_signs else out
    sign_blocks = sign_row.shape[0] // b if has_signs else 1
    extra = {"HAS_SIGNS": has_signs, "SIGN_ROWS": sign_blocks > 1}
    stride_r, stride_c = x2.stride()
    key = (b, config, x2.dtype, x2.device, has_signs, sign_blocks > 1, x2.data_ptr() % 16 == 0,
           _int_key(stride_r), _int_key(stride_c), x2.shape[0] < (1 << 31))
    if plan.kernel == "pow2":
        runtime = (x2, out, signs, x2.shape[0], num_tiles, sign_blocks, int(inverse), stride_r, stride_c, scale)
        _run(_fwht_pow2_kernel, key, programs, x2, runtime, plan, extra)
    else:
        if not x2.is_cuda:
            pieces, h_dtype = 0, torch.float32
        elif x2.dtype == torch.float32:
            pieces, h_dtype = 3, torch.bfloat16
        else:
            pieces, h_dtype = 1, x2.dtype
        meta = dict(plan.meta)
        h = _dense_matrix(meta["K"], meta["KO"] * plan.k_chunks, meta["KI"] * meta["KI_STEPS"], inverse, h_dtype,
                          x2.device)
        runtime = (x2, out, signs, h, x2.shape[0], num_tiles, plan.k_chunks, sign_blocks, int(inverse), stride_r,
                   stride_c, scale)
        _run(_fwht_dense_kernel, key, programs, x2, runtime, plan, dict(extra, PIECES=pieces))
    return out if b == n else out.view(rows, n)
