"""Triton FWHT kernels and their launcher.

A row of length n = K * 2**m is transformed in one read and one write of device memory, with every
intermediate in fp32 and one rounding at the store.

* The power-of-two factor H_{2^m} runs as fp32 butterflies on the CUDA cores. A tile of rows is held
  as a tensor with one size-2 dimension per bit of its (row, column) index; a butterfly on column bit
  c is ``split`` + ``join`` on that dimension once it is moved last. Which bits a thread holds in
  registers, which bits its lanes and warps hold, follows from the order of the dimensions (Triton's
  default layout puts the innermost five on lanes, the next ones on warps and the rest in registers),
  so the kernel works in *rounds*: the column bits held in registers are transformed without any
  data movement, then one layout conversion (through shared memory) brings other bits into
  registers. The load and the store go through pointer tensors whose dimensions are chosen bits, so
  the first round runs in the load layout and the last one in the store layout: with 64 values per
  thread every n up to 2**16 takes two conversions.
* A factor K > 1 (dense, exact ±1 entries) runs first, on the tensor cores: ``H_K @ X`` with X the
  row viewed as K x 2^m (padded to a power of two), bf16/fp16 inputs as they are (the products are
  exact), fp32 inputs split into three bf16 pieces (hi + mid + lo holds all 24 bits), each chunk of
  the contraction summed on its own. Orders K above 128 are cut into chunks of output rows (one
  program each, the input re-read from L2) and of the contraction (a loop); a prefetching launch
  may instead split K into a power-of-two head and a padded tail (76 = 64 + 16: 80 rows, not 128).
  The power-of-two butterflies then start in the MMA accumulator layout and end in the store layout.

``fwht_rows_triton`` picks a launch configuration from a table measured on an H200 (override it with
``config=``, as ``bench/gpu_fwht.py --sweep`` does) and, on CUDA, calls the compiled kernel directly
after the first launch.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch

from hlwq_kernels.ops._triton import cdiv, launch, next_power_of_2, require_triton, tl, triton
from hlwq_kernels.ops.hadamard import hadamard_factors, hadamard_tensor

__all__ = [
    "fwht_rows_triton", "kernel_plan", "sign_bit_mask", "Pow2Config", "DenseConfig", "SplitConfig", "KernelPlan",
    "MAX_POW2_BITS",
]

MAX_POW2_BITS = 16  # the power-of-two factor 2^m of a supported size, m <= 16
_MIN_DOT = 16  # smallest tl.dot dimension

Bit = tuple[str, int]  # ("r", i): bit i of the tile's row; ("k", i): of the K index; ("c", i): of the column


@triton.jit
def _butterfly_last(v):
    """2-point Hadamard transform along the last (size-2) dimension."""
    a, b = tl.split(v)
    return tl.join(a + b, a - b)


@triton.jit
def _scaled_butterfly_last(v, scale):
    """``_butterfly_last(v) * scale`` in three instructions per pair (a multiply and two FMAs; the
    difference as sum - 2 b scale, since a negated product would be computed as a second multiply)."""
    a, b = tl.split(v)
    bs = b * scale
    total = tl.fma(a, scale, bs)
    return tl.join(total, tl.fma(bs, -2.0, total))


@triton.jit
def butterflies(v, STEPS: tl.constexpr, NUM_STEPS: tl.constexpr, SHAPE: tl.constexpr, scale=1.0,
                SCALED: tl.constexpr = False):
    """Apply the planned butterflies to v (a tensor of size-2 dims) and reshape it to SHAPE; SCALED:
    the last one also multiplies by ``scale``.

    STEPS[i] (i < NUM_STEPS) is the permutation that moves the next bit last; STEPS[NUM_STEPS]
    restores the natural dimension order.
    """
    for i in tl.static_range(NUM_STEPS):
        if SCALED and i == NUM_STEPS - 1:
            v = _scaled_butterfly_last(tl.permute(v, STEPS[i]), scale)
        else:
            v = _butterfly_last(tl.permute(v, STEPS[i]))
    return tl.reshape(tl.permute(v, STEPS[NUM_STEPS]), SHAPE)


# Row and tile counts and the direction are plain runtime values: one compiled kernel serves them all.
_RUNTIME = ["rows", "num_tiles", "k_chunks", "sign_blocks", "inverse"]


@triton.jit
def _dim_offsets(DIM: tl.constexpr, NBITS: tl.constexpr):
    """Row and column offsets of the 2**NBITS positions along one tile dimension whose index bit j
    is tile bit DIM[j]: column bit p (DIM[j] = p >= 0) or row bit p (DIM[j] = -1 - p)."""
    idx = tl.arange(0, 1 << NBITS)
    row = idx * 0
    col = idx * 0
    for j in tl.static_range(NBITS):
        bit = (idx >> j) & 1
        if DIM[j] >= 0:
            col += bit << DIM[j]
        else:
            row += bit << (-1 - DIM[j])
    return row, col


@triton.jit
def _tile_offsets(DIM0: tl.constexpr, BITS0: tl.constexpr, DIM1: tl.constexpr, BITS1: tl.constexpr, C: tl.constexpr,
                  PER: tl.constexpr = 1):
    """(row [D0, D1, 1], column [D0, D1, C / PER]) offsets of a tile addressed as [D0, D1, C]: C
    consecutive columns, D0 and D1 made of the tile bits DIM0 and DIM1; columns counted in words of
    PER elements."""
    r0, c0 = _dim_offsets(DIM0, BITS0)
    r1, c1 = _dim_offsets(DIM1, BITS1)
    row = r0[:, None, None] + r1[None, :, None]
    col = (c0[:, None, None] + c1[None, :, None]) // PER + tl.arange(0, C // PER)[None, None, :]
    return row, col


@triton.jit
def _flip_signs(v, bits):
    """v times a ±1 vector, exactly: ``bits`` (integers of v's width) hold 0 or the sign bit."""
    return (v.to(bits.dtype, bitcast=True) ^ bits).to(v.dtype, bitcast=True)


@triton.jit
def _load_tile(x_ptr, tile, rows, stride_xr, stride_xc, load_row, load_col, BM: tl.constexpr, CLAMP: tl.constexpr):
    """Rows past the end read as zeros, or (CLAMP) as copies of the last row: no mask, so no
    registers zeroed before the loads (their results are not stored)."""
    row = tile * BM + load_row
    if CLAMP:
        row = tl.minimum(row, rows - 1)
        return tl.load(x_ptr + row.to(tl.int64) * stride_xr + load_col * stride_xc)
    return tl.load(x_ptr + row.to(tl.int64) * stride_xr + load_col * stride_xc, mask=row < rows, other=0.0)


@triton.jit
def _unpack_words(w, DTYPE: tl.constexpr):
    """fp32 values [..., W, 2] of the 16-bit pairs (DTYPE) in the int32 words w [..., W]."""
    if DTYPE == tl.bfloat16:  # a bf16 is the high half of the fp32 with its value
        lo = (w << 16).to(tl.float32, bitcast=True)
        hi = (w & -65536).to(tl.float32, bitcast=True)
    else:
        lo = w.to(tl.int16).to(DTYPE, bitcast=True).to(tl.float32)
        hi = (w >> 16).to(tl.int16).to(DTYPE, bitcast=True).to(tl.float32)
    return tl.join(lo, hi)


@triton.jit(do_not_specialize=_RUNTIME[:2] + _RUNTIME[3:])
def _fwht_pow2_kernel(
    x_ptr, y_ptr, s_ptr, rows, num_tiles, sign_blocks, inverse, stride_xr, stride_xc, scale,
    N: tl.constexpr, BM: tl.constexpr, C: tl.constexpr,
    LOAD0: tl.constexpr, LOAD0_BITS: tl.constexpr, LOAD1: tl.constexpr, LOAD1_BITS: tl.constexpr,
    STORE0: tl.constexpr, STORE0_BITS: tl.constexpr, STORE1: tl.constexpr, STORE1_BITS: tl.constexpr,
    BITS: tl.constexpr, STEPS: tl.constexpr, NUM_STEPS: tl.constexpr, HAS_SIGNS: tl.constexpr,
    SIGN_ROWS: tl.constexpr, STAGES: tl.constexpr, PREFETCH: tl.constexpr, WORDS: tl.constexpr = False,
):
    """Rows of length N (a power of two), BM rows per tile. The tile is loaded and stored through
    [D0, D1, C] pointer tensors whose dimensions D0, D1 are chosen tile bits (LOAD*, STORE*), so
    that the load and store layouts hold the bits the plan wants in registers. The sign bits of row
    i (s_ptr: integers of the element width) start at s_ptr + (i % sign_blocks) * N when SIGN_ROWS,
    else at s_ptr. PREFETCH: each program loads its next tile into registers before transforming
    the current one (a persistent grid whose loads overlap its arithmetic). WORDS (16-bit elements,
    with PREFETCH): the input and its sign bits are read as int32 words of two elements (strides in
    words), so that a prefetched tile takes one register per pair instead of one per element; the
    read past the last tile is skipped by a branch instead of a mask (no registers zeroed first)
    and the scale is folded into the last butterfly."""
    per: tl.constexpr = 2 if WORDS else 1
    load_row, load_col = _tile_offsets(LOAD0, LOAD0_BITS, LOAD1, LOAD1_BITS, C, per)
    store_row, store_col = _tile_offsets(STORE0, STORE0_BITS, STORE1, STORE1_BITS, C)
    x_in = x_ptr.to(tl.pointer_type(tl.int32)) if WORDS else x_ptr
    s_in = s_ptr.to(tl.pointer_type(tl.int32)) if WORDS else s_ptr
    step = tl.num_programs(0)
    if PREFETCH:  # the grid has at most num_tiles programs
        ahead = _load_tile(x_in, tl.program_id(0), rows, stride_xr, stride_xc, load_row, load_col, BM, WORDS)
    for tile in tl.range(tl.program_id(0), num_tiles, step, num_stages=STAGES):
        if PREFETCH:
            v = ahead
            if WORDS:
                if tile + step < num_tiles:  # a branch, not a mask: no tile past the end is read
                    ahead = _load_tile(x_in, tile + step, rows, stride_xr, stride_xc, load_row, load_col, BM, True)
            else:
                ahead = _load_tile(x_in, tile + step, rows, stride_xr, stride_xc, load_row, load_col, BM, False)
        else:
            v = _load_tile(x_in, tile, rows, stride_xr, stride_xc, load_row, load_col, BM, False)
        if HAS_SIGNS:
            if inverse == 0:
                sign_at = s_in + load_col
                if SIGN_ROWS:
                    sign_at += ((tile * BM + load_row) % sign_blocks) * (N // per)
                v = _flip_signs(v, tl.load(sign_at))
        if WORDS:
            v = _unpack_words(v, y_ptr.dtype.element_ty)
        fold = WORDS and NUM_STEPS > 0
        v = butterflies(tl.reshape(v.to(tl.float32), BITS), STEPS, NUM_STEPS,
                        (1 << STORE0_BITS, 1 << STORE1_BITS, C), scale, fold)
        if not fold:
            v = v * scale
        v = v.to(y_ptr.dtype.element_ty)
        row = tile * BM + store_row
        if HAS_SIGNS:
            if inverse != 0:
                sign_at = s_ptr + store_col
                if SIGN_ROWS:
                    sign_at += (row % sign_blocks) * N
                v = _flip_signs(v, tl.load(sign_at))
        tl.store(y_ptr + row.to(tl.int64) * N + store_col, v, mask=row < rows)


@triton.jit
def _dot_pieces(h, x, acc, PIECES: tl.constexpr):
    """acc + h @ x: PIECES = 1 multiplies 16-bit x as it is (exact products); 3 splits fp32 x into
    bf16 hi + mid + lo, sums this chunk on its own and adds it to acc with a round-to-nearest fp32
    add (the tensor cores truncate while accumulating: over long contractions that bias adds up);
    0 (the interpreter, which has no bf16 dot) multiplies in fp32."""
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
        part = tl.dot(h, lo)
        part = tl.dot(h, mid, part)
        part = tl.dot(h, hi, part)
        acc = tl.fma(part, 1.0, acc)  # not folded into the dot's accumulator
    return acc


@triton.jit
def _dense_rows(x_ptr, rb, k0, rows, stride_xr, stride_xc, K: tl.constexpr, P: tl.constexpr, KI: tl.constexpr,
                BM: tl.constexpr):
    """K indices k0 .. k0 + KI of row block ``rb``, as [KI, BM, P] (zeros past K and rows)."""
    row = rb * BM + tl.arange(0, BM)[None, :, None]
    ki = k0 + tl.arange(0, KI)[:, None, None]
    col = ki * P + tl.arange(0, P)[None, None, :]
    return tl.load(x_ptr + row.to(tl.int64) * stride_xr + col * stride_xc, mask=(row < rows) & (ki < K), other=0.0)


@triton.jit
def _dense_signs(s_ptr, k0, K: tl.constexpr, P: tl.constexpr, KI: tl.constexpr, BM: tl.constexpr):
    """Sign bits of K indices k0 .. k0 + KI (one set for every row), as [KI, BM, P]."""
    ki = k0 + tl.arange(0, KI)[:, None, None]
    bits = tl.load(s_ptr + ki * P + tl.arange(0, P)[None, None, :], mask=ki < K, other=0)
    return tl.broadcast_to(bits, (KI, BM, P))


@triton.jit
def _dense_h(h_ptr, k0, i0, KO: tl.constexpr, KI: tl.constexpr, WIDTH: tl.constexpr):
    """Block [k0 : k0 + KO, i0 : i0 + KI] of the padded H_K (row-major, WIDTH columns)."""
    return tl.load(h_ptr + (k0 + tl.arange(0, KO))[:, None] * WIDTH + (i0 + tl.arange(0, KI))[None, :])


@triton.jit
def _dense_store(acc, y_ptr, s_ptr, row, rows, ko, sign_blocks, inverse, scale, K: tl.constexpr, P: tl.constexpr,
                 KO: tl.constexpr, BM: tl.constexpr, BITS: tl.constexpr, STEPS: tl.constexpr,
                 NUM_STEPS: tl.constexpr, HAS_SIGNS: tl.constexpr, SIGN_ROWS: tl.constexpr, out_signs):
    """Butterflies of the power-of-two factor on acc [KO, BM * P] (output K indices ko, rows row),
    scale, one rounding, the inverse's signs (``out_signs``: hoisted sign bits, or None to load
    them here), store."""
    v = butterflies(tl.reshape(acc, BITS), STEPS, NUM_STEPS, (KO, BM, P)) * scale
    v = v.to(y_ptr.dtype.element_ty)
    ko3 = ko[:, None, None]
    out_col = ko3 * P + tl.arange(0, P)[None, None, :]
    if HAS_SIGNS:
        if inverse != 0:
            if out_signs is None:
                sign_row = s_ptr
                if SIGN_ROWS:
                    sign_row += (row % sign_blocks) * (K * P)
                v = _flip_signs(v, tl.load(sign_row + out_col, mask=ko3 < K, other=0))
            else:
                v = _flip_signs(v, out_signs)
    tl.store(y_ptr + row.to(tl.int64) * (K * P) + out_col, v, mask=(row < rows) & (ko3 < K))


@triton.jit(do_not_specialize=_RUNTIME)
def _fwht_dense_kernel(
    x_ptr, y_ptr, s_ptr, h_ptr, rows, num_tiles, k_chunks, sign_blocks, inverse, stride_xr, stride_xc, scale,
    K: tl.constexpr, P: tl.constexpr, KO: tl.constexpr, KI: tl.constexpr, KI_STEPS: tl.constexpr,
    BM: tl.constexpr, BITS: tl.constexpr, STEPS: tl.constexpr, NUM_STEPS: tl.constexpr,
    HAS_SIGNS: tl.constexpr, SIGN_ROWS: tl.constexpr, PIECES: tl.constexpr, STAGES: tl.constexpr,
    PREFETCH: tl.constexpr, KB: tl.constexpr, BITS_B: tl.constexpr, STEPS_B: tl.constexpr,
    NUM_STEPS_B: tl.constexpr, HOIST: tl.constexpr,
):
    """Rows of length K*P: a tile is BM rows x KO output K-indices; H_K (H_K.T for the inverse,
    padded, row-major with KI*KI_STEPS + KB columns) at h_ptr. Signs as in ``_fwht_pow2_kernel``.
    PREFETCH (one chunk each way, KO = KI): H_K is loaded once and each persistent program loads
    its next row block into registers before transforming the current one; KB > 0 splits the K
    index into a head of KO and a tail of KB indices (K <= KO + KB, both powers of two), so that
    K = 68 runs as 64 + 16 rather than padded to 128: four products, two accumulators, each with
    its own butterfly plan (BITS_B, STEPS_B). The sign bits then are loaded once per program
    (unless SIGN_ROWS). HOIST lets the compiler keep the row and store offsets in registers across
    tiles (faster for some launches, spills for others: a table choice)."""
    step_tiles = tl.num_programs(0)
    WIDTH: tl.constexpr = KI * KI_STEPS + KB
    if PREFETCH:
        h = _dense_h(h_ptr, 0, 0, KO, KI, WIDTH)
        ahead = _dense_rows(x_ptr, tl.program_id(0), 0, rows, stride_xr, stride_xc, K, P, KI, BM)
        if KB > 0:
            h_ab = _dense_h(h_ptr, 0, KI, KO, KB, WIDTH)
            h_ba = _dense_h(h_ptr, KO, 0, KB, KI, WIDTH)
            h_bb = _dense_h(h_ptr, KO, KI, KB, KB, WIDTH)
            ahead_b = _dense_rows(x_ptr, tl.program_id(0), KI, rows, stride_xr, stride_xc, K, P, KB, BM)
        signs = None
        signs_b = None
        if HAS_SIGNS and not SIGN_ROWS:  # the same for every row (input and output: KI = KO): loaded once
            signs = _dense_signs(s_ptr, 0, K, P, KI, BM)
            if KB > 0:
                signs_b = _dense_signs(s_ptr, KI, K, P, KB, BM)
        for tile in tl.range(tl.program_id(0), num_tiles, step_tiles, num_stages=STAGES):
            if HOIST:  # row and store offsets fixed across tiles: the compiler keeps them in registers
                rb = tile
                ko0 = 0
            else:  # k_chunks is 1 here but a runtime value: the offsets are recomputed per tile
                rb = tile // k_chunks
                ko0 = (tile % k_chunks) * KO
            row = rb * BM + tl.arange(0, BM)[None, :, None]
            v = ahead
            ahead = _dense_rows(x_ptr, rb + step_tiles, 0, rows, stride_xr, stride_xc, K, P, KI, BM)
            if KB > 0:
                vb = ahead_b
                ahead_b = _dense_rows(x_ptr, rb + step_tiles, KI, rows, stride_xr, stride_xc, K, P, KB, BM)
            if HAS_SIGNS:
                if inverse == 0:
                    if SIGN_ROWS:
                        sign_row = s_ptr + (row % sign_blocks) * (K * P)
                        v = _flip_signs(v, _dense_signs(sign_row, 0, K, P, KI, BM))
                        if KB > 0:
                            vb = _flip_signs(vb, _dense_signs(sign_row, KI, K, P, KB, BM))
                    else:
                        v = _flip_signs(v, signs)
                        if KB > 0:
                            vb = _flip_signs(vb, signs_b)
            v = tl.reshape(v, (KI, BM * P))
            acc = _dot_pieces(h, v, tl.zeros((KO, BM * P), dtype=tl.float32), PIECES)
            if KB > 0:
                vb = tl.reshape(vb, (KB, BM * P))
                acc = _dot_pieces(h_ab, vb, acc, PIECES)
                acc_b = _dot_pieces(h_ba, v, tl.zeros((KB, BM * P), dtype=tl.float32), PIECES)
                acc_b = _dot_pieces(h_bb, vb, acc_b, PIECES)
            _dense_store(acc, y_ptr, s_ptr, row, rows, ko0 + tl.arange(0, KO), sign_blocks, inverse, scale, K, P,
                         KO, BM, BITS, STEPS, NUM_STEPS, HAS_SIGNS, SIGN_ROWS, signs)
            if KB > 0:
                _dense_store(acc_b, y_ptr, s_ptr, row, rows, ko0 + KO + tl.arange(0, KB), sign_blocks, inverse,
                             scale, K, P, KB, BM, BITS_B, STEPS_B, NUM_STEPS_B, HAS_SIGNS, SIGN_ROWS, signs_b)
    else:
        j = tl.arange(0, P)[None, None, :]
        ki0 = tl.arange(0, KI)[:, None, None]
        for tile in tl.range(tl.program_id(0), num_tiles, step_tiles, num_stages=STAGES):
            rb = tile // k_chunks
            ko = (tile % k_chunks) * KO + tl.arange(0, KO)
            row = rb * BM + tl.arange(0, BM)[None, :, None]
            sign_row = s_ptr
            if SIGN_ROWS:
                sign_row += (row % sign_blocks) * (K * P)
            acc = tl.zeros((KO, BM * P), dtype=tl.float32)
            for step in range(KI_STEPS):
                ki = step * KI + ki0
                v = _dense_rows(x_ptr, rb, step * KI, rows, stride_xr, stride_xc, K, P, KI, BM)
                h = tl.load(h_ptr + ko[:, None] * WIDTH + (step * KI + tl.arange(0, KI))[None, :])
                if HAS_SIGNS:
                    if inverse == 0:
                        v = _flip_signs(v, tl.load(sign_row + ki * P + j, mask=ki < K, other=0))
                acc = _dot_pieces(h, tl.reshape(v, (KI, BM * P)), acc, PIECES)
            _dense_store(acc, y_ptr, s_ptr, row, rows, ko, sign_blocks, inverse, scale, K, P, KO, BM, BITS, STEPS,
                         NUM_STEPS, HAS_SIGNS, SIGN_ROWS, None)


# ----------------------------------------------------------------------------------------------
# Planning: which bits live in registers, lanes and warps, round by round.


def _round_order(regs: list[Bit], warps: list[Bit], lanes: list[Bit], split: Bit) -> list[Bit]:
    """Dimension order whose default layout has ``regs`` in registers, ``warps`` on warps and
    ``lanes`` on lanes (both listed from their lowest bit), with ``split`` last (in registers)."""
    return [b for b in regs if b != split] + warps[::-1] + lanes[::-1] + [split]


Layout = tuple[list[Bit], list[Bit], list[Bit]]  # bits in registers, on warps, on lanes (lowest first)


def _butterfly_plan(
    natural: list[Bit], cols: list[Bit], warp_bits: int, first: Layout, last: Layout, out_order: list[Bit],
) -> tuple[tuple[tuple[int, ...], ...], int]:
    """Permutations (see ``butterflies``) that transform every bit in ``cols`` of a tile whose
    dimensions are ``natural`` (as loaded, most significant first) and leave them in ``out_order``
    (as stored), and the number of layout conversions.

    The first round runs in ``first``, the layout the tile arrives in (the load layout, or the MMA
    accumulator layout). Bits that ``last`` (the store layout) holds in registers are left for a
    final round in it, so that no conversion precedes the store. Bits in neither are transformed in
    rounds in between, each taking as many of them into registers as there are register bits and
    keeping the other bits on the warps they were on where it can.
    """
    slots = len(natural) - 5 - warp_bits
    rounds = [(first, [b for b in cols if b in first[0]])]
    todo = [b for b in cols if b not in first[0]]
    final = [b for b in todo if b in last[0]]
    todo = [b for b in todo if b not in last[0]]
    prev_regs, prev_warps = first[0], first[1]
    while todo:
        if slots < 1:
            raise ValueError(f"tile of {len(natural)} bits is too small for {warp_bits} warp bits")
        work, todo = todo[:slots], todo[slots:]
        rest = [b for b in prev_regs if b not in work] + [b for b in natural if b not in work and b not in prev_regs]
        regs = work + rest[: slots - len(work)]
        left = [b for b in natural if b not in regs]
        warps = [b for b in prev_warps if b in left][:warp_bits]
        warps += [b for b in left if b not in warps][: warp_bits - len(warps)]
        lanes = sorted((b for b in left if b not in warps), key=lambda b: ("rkc".index(b[0]) == 2, b[1]))
        rounds.append(((regs, warps, lanes), work))
        prev_regs, prev_warps = regs, warps
    if final:
        rounds.append((last, final))
    steps = []
    cur = natural
    for (regs, warps, lanes), work in rounds:
        for bit in work:
            nxt = _round_order(regs, warps, lanes, bit)
            steps.append(tuple(cur.index(b) for b in nxt))
            cur = nxt
    steps.append(tuple(cur.index(b) for b in out_order))
    conversions = len(rounds) - 1 + (rounds[-1][0] != last)
    return tuple(steps), conversions


def _bits(kind: str, count: int) -> list[Bit]:
    return [(kind, i) for i in reversed(range(count))]


def _coalesced_layout(dims: list[list[Bit]], contiguous: int, v: int, w: int) -> Layout:
    """Triton's coalesced layout for a tile with these dimensions (each a list of bits, lowest
    first), ``dims[contiguous]`` contiguous in memory and read 2^v elements per access: lanes and
    then warps go along the contiguous dimension, then along the others in index order."""
    inner = dims[contiguous]
    v = min(v, len(inner))
    pool = inner[v:] + [b for d, bits in enumerate(dims) if d != contiguous for b in bits]
    return inner[:v] + pool[5 + w:], pool[5: 5 + w], pool[:5]


def _mma_layout(m_bits: list[Bit], n_bits: list[Bit], w: int) -> Layout:
    """Layout of a tl.dot accumulator [M, N] on Hopper: wgmma (M >= 64, warps along M) or mma.sync
    (warps along N); each warp holds 16 rows: lanes = (N1, N2, M0, M1, M2), registers hold N0, M3
    and the repetitions."""
    lanes = [n_bits[1], n_bits[2]] + m_bits[:3]
    if len(m_bits) >= 6:
        return [n_bits[0], m_bits[3]] + n_bits[3:] + m_bits[4 + w:], m_bits[4: 4 + w], lanes
    return [n_bits[0], m_bits[3]] + m_bits[4:] + n_bits[3 + w:], n_bits[3: 3 + w], lanes


class Pow2Config(NamedTuple):
    num_warps: int
    elems_per_thread: int
    stages: int  # 1: one tile per program; > 1: persistent programs prefetching `stages - 1` tiles
    programs_per_sm: int  # > 0: a persistent grid of this many programs per SM
    prefetch: bool = False  # each persistent program loads its next tile into registers first
    max_regs: int = 0  # registers per thread the compiler may use (0: its own choice)
    words: bool = False  # with prefetch, 16-bit rows read as int32 words (see _fwht_pow2_kernel's WORDS)


class DenseConfig(NamedTuple):
    num_warps: int
    elems_per_thread: int
    stages: int
    programs_per_sm: int
    ki: int  # contraction chunk of H_K
    ko: int  # output chunk of H_K (rows of H_K per tile)
    prefetch: bool = False  # H_K in one chunk each way (K padded <= 128, or split), loaded once; next rows ahead
    max_regs: int = 0  # registers per thread the compiler may use (0: its own choice)
    split: bool = False  # prefetch only: K as a power-of-two head + a padded tail (68 = 64 + 16), see _dense_split
    hoist: bool = False  # prefetch only: row and store offsets kept in registers across tiles


class SplitConfig(NamedTuple):
    """A power-of-two size 2^m run by the dense kernel: the Sylvester H_K, K = 2^k_bits, on the tensor
    cores, then 2^(m - k_bits) butterflies (H_{2^a} kron H_{2^b} = H_{2^(a+b)}, natural order)."""
    k_bits: int
    dense: DenseConfig


# Launch table (measured on an H200, bench/results/fwht-h200-2026-12-01.md): by log2(row length).
_POW2_TABLE = {m: Pow2Config(4, 32 if m <= 10 else 64, 1, 0) for m in range(0, 14)}
_POW2_TABLE.update({14: Pow2Config(8, 64, 1, 0), 15: Pow2Config(8, 64, 1, 0), 16: Pow2Config(16, 128, 1, 0)})
# 16-bit rows of 2^14 and 2^15: persistent programs that load their next row into registers first
# (bench/results/fwht-h200-2026-12-02.md: 2^14 83.9% -> 90.8% of clone, 2^15 61.9% -> 73.1%)
# 2^15 reads its rows as int32 words (bench/results/fwht-pow2-h200-2026-12-02-c.md: 73.2% -> 88.5%;
# the same at 2^14 measured 89.3-89.7% against 90.8% without)
_POW2_TABLE_16BIT = {14: Pow2Config(8, 64, 1, 2, True, 128), 15: Pow2Config(8, 64, 1, 1, True, 0, True)}
_DENSE_TABLE = {2: DenseConfig(4, 64, 1, 0, 64, 128), 4: DenseConfig(4, 64, 1, 0, 32, 128)}  # by element size
# 16-bit rows with K <= 128, by the elements of one padded row block (K padded to a power of two,
# times 2^m): prefetching launches (sweep on the H200, bench/results/fwht-h200-2026-12-02.md: 3584
# 69.7% -> 79.8% of clone, 4864 46.7% -> 68.8%, 9728 52.2% -> 66.0%, 13824 68.9% -> 72.2%, 14336
# 44.3% -> 73.3%, 17408/18432/27648/28672 +1 to +5 points)
_DENSE_TABLE_16BIT = {4096: DenseConfig(8, 64, 1, 2, 0, 0, True, 128), 8192: DenseConfig(4, 64, 1, 3, 0, 0, True),
                      16384: DenseConfig(8, 64, 1, 2, 0, 0, True, 128), 32768: DenseConfig(8, 64, 1, 1, 0, 0, True)}
# Measured sizes (the LLM dims; sweeps on the H200, bench/results/fwht-dense-h200-2026-12-02-c.md), by
# (element size, n), ahead of the tables above: K split into head + tail where that pads less (4864,
# 8960, 9728, 18432, 18944), offsets hoisted where that measured faster, fp32 prefetching too;
# _DENSE_TABLE_SIGNS: with signs= (the sign bits held in registers want a launch without a register cap)
_DENSE_TABLE_SIZES = {
    (2, 4864): DenseConfig(4, 64, 1, 3, 0, 0, True, 0, True, True),
    (2, 8960): DenseConfig(4, 16, 1, 3, 0, 0, True, 168, True),
    (2, 9728): DenseConfig(4, 16, 1, 3, 0, 0, True, 160, True),
    (2, 13824): DenseConfig(8, 64, 1, 2, 0, 0, True, 128, False, True),
    (2, 17408): DenseConfig(8, 64, 1, 1, 0, 0, True, 0, False, True),
    (2, 18432): DenseConfig(8, 16, 1, 1, 0, 0, True, 0, True, True),
    (2, 18944): DenseConfig(8, 16, 1, 1, 0, 0, True, 0, True, True),
    (2, 27648): DenseConfig(8, 64, 1, 1, 0, 0, True, 0, False, True),
    (2, 28672): DenseConfig(16, 16, 1, 1, 0, 0, True),
    (4, 3584): DenseConfig(4, 16, 1, 4, 0, 0, True, 0, False, True),
    (4, 4864): DenseConfig(4, 16, 1, 3, 0, 0, True, 168, True),
    (4, 8960): DenseConfig(8, 16, 1, 1, 0, 0, True, 0, True),
    (4, 9728): DenseConfig(8, 16, 1, 1, 0, 0, True, 0, False, True),
    (4, 13824): DenseConfig(8, 16, 1, 1, 0, 0, True),
}
_DENSE_TABLE_SIGNS = {(2, 14336): DenseConfig(8, 16, 1, 1, 0, 0, True), (4, 14336): DenseConfig(16, 16, 1, 1, 0, 0, True)}
_MAX_PER_THREAD = 128  # fp32 values of a dense tile per thread (registers)
_MAX_CHUNK = 8192  # elements of one input chunk of the dense kernel (shared memory)
_MAX_PREFETCH_K = 128  # largest (padded) K, or K head when split, that a prefetching launch keeps in registers


class KernelPlan(NamedTuple):
    kernel: str  # "pow2" or "dense"
    meta: tuple  # constexpr launch arguments as (name, value) pairs
    num_warps: int
    tile_rows: int
    k_chunks: int
    stages: int
    programs_per_sm: int
    conversions: int  # layout conversions through shared memory between load (or MMA) and store
    prefetch: bool = False
    max_regs: int = 0
    words: bool = False  # power-of-two kernel: 16-bit rows read as int32 words when their alignment allows


def _vec_bits(elem_size: int) -> int:
    return (16 // elem_size).bit_length() - 1


def _encode(bits: list[Bit]) -> tuple[int, ...]:
    """Tile bits as _dim_offsets takes them: column bit p -> p, row bit p -> -1 - p."""
    return tuple(p if kind == "c" else -1 - p for kind, p in bits)


@functools.lru_cache(maxsize=256)
def _pow2_plan(m: int, elem_size: int, cfg: Pow2Config) -> KernelPlan:
    """Load layout: the lowest 2^v columns per thread (one 16-byte access), lanes on the next
    columns (then rows), warps on rows, then on high columns; registers on the rest. The store
    layout differs from it only in which of those high bits are on warps and which in registers:
    the high bits the load layout puts on warps and a middle round cannot take are held in
    registers by the store layout and transformed in a final round there."""
    v = min(_vec_bits(elem_size), m)
    w = cfg.num_warps.bit_length() - 1
    threads_bits = 5 + w
    tile_bits = max(threads_bits + v, (cfg.elems_per_thread.bit_length() - 1) + threads_bits)
    b = max(0, tile_bits - m)
    slots = tile_bits - threads_bits  # register bits per thread
    cols, rows = _bits("c", m)[::-1], _bits("r", b)[::-1]
    c_bits = min(m, v + 5)
    lanes = (cols[v:c_bits] + rows)[:5]
    high = [r for r in rows if r not in lanes] + cols[c_bits:]  # on warps or in registers
    load_warps, load_regs = high[:w], high[w:]
    warp_cols = [c for c in load_warps if c[0] == "c"]
    final = warp_cols[len(warp_cols) - min(len(warp_cols), slots - v):]
    store_high = [bit for bit in high if bit not in final] + final
    store_warps, store_regs = store_high[:w], store_high[w:]
    extra_lanes = lanes[c_bits - v:]
    load_dims, store_dims = (extra_lanes + load_warps, load_regs), (extra_lanes + store_warps, store_regs)
    natural = load_dims[0][::-1] + load_dims[1][::-1] + cols[:c_bits][::-1]
    out_order = store_dims[0][::-1] + store_dims[1][::-1] + cols[:c_bits][::-1]
    first = (cols[:v] + load_regs, load_warps, lanes)
    last = (cols[:v] + store_regs, store_warps, lanes)
    steps, conversions = _butterfly_plan(natural, cols, w, first, last, out_order)
    meta = (("N", 1 << m), ("BM", 1 << b), ("C", 1 << c_bits),
            ("LOAD0", _encode(load_dims[0])), ("LOAD0_BITS", len(load_dims[0])),
            ("LOAD1", _encode(load_dims[1])), ("LOAD1_BITS", len(load_dims[1])),
            ("STORE0", _encode(store_dims[0])), ("STORE0_BITS", len(store_dims[0])),
            ("STORE1", _encode(store_dims[1])), ("STORE1_BITS", len(store_dims[1])),
            ("BITS", (2,) * len(natural)), ("STEPS", steps), ("NUM_STEPS", len(steps) - 1))
    return KernelPlan("pow2", meta, cfg.num_warps, 1 << b, 1, cfg.stages, cfg.programs_per_sm, conversions,
                      cfg.prefetch, cfg.max_regs, cfg.prefetch and cfg.words and elem_size == 2 and m >= 1)


def _dense_split(k: int, cfg: DenseConfig) -> tuple[int, int]:
    """(head, tail) chunks of the K index, powers of two (tail 0: one chunk of K padded). A split
    launch takes the largest power of two <= K as the head and pads the rest (at least _MIN_DOT)
    when that pads less than one chunk does: 68 = 64 + 16 (80, not 128), 140 = 128 + 16."""
    k_pad = max(_MIN_DOT, next_power_of_2(k))
    if cfg.split and cfg.prefetch and k > _MIN_DOT:
        head = k_pad // 2 if k < k_pad else k_pad
        tail = max(_MIN_DOT, next_power_of_2(k - head)) if k > head else 0
        if head + tail < k_pad:
            return head, tail
    return k_pad, 0


def _dense_chunk_plan(k_bits: int, b: int, m: int, w: int, elem_size: int) -> tuple[tuple, tuple, int]:
    """(BITS, STEPS, conversions) of the butterflies on one accumulator [2^k_bits, 2^b * 2^m]: from
    the MMA layout to the coalesced store layout."""
    natural = _bits("k", k_bits) + _bits("r", b) + _bits("c", m)
    ks, rs, cols = _bits("k", k_bits)[::-1], _bits("r", b)[::-1], _bits("c", m)[::-1]
    first = _mma_layout(ks, cols + rs, w)
    last = _coalesced_layout([ks, rs, cols], 2, _vec_bits(elem_size), w)
    steps, rounds = _butterfly_plan(natural, cols, w, first, last, natural)
    return (2,) * len(natural), steps, rounds


@functools.lru_cache(maxsize=256)
def _dense_plan(k: int, m: int, elem_size: int, cfg: DenseConfig) -> KernelPlan:
    # fp32 inputs hold three bf16 pieces of each input chunk: smaller tiles and chunks
    per_thread = _MAX_PER_THREAD if elem_size <= 2 else _MAX_PER_THREAD // 2
    head, tail = _dense_split(k, cfg)
    if cfg.prefetch and head > _MAX_PREFETCH_K:
        raise ValueError(f"a prefetching dense launch holds H_K in registers: K={k} pads above {_MAX_PREFETCH_K}")
    ko = head if cfg.prefetch else min(head, cfg.ko)
    while ko > _MIN_DOT and ko << m > per_thread * 32 * cfg.num_warps and not cfg.prefetch:
        ko //= 2
    num_warps = max(cfg.num_warps, next_power_of_2(cdiv((ko + tail) << m, per_thread * 32)))
    w = num_warps.bit_length() - 1
    ko_bits = ko.bit_length() - 1
    tile_bits = min(cfg.elems_per_thread, per_thread).bit_length() - 1 + 5 + w
    b = max(0, tile_bits - ko_bits - m, (_MIN_DOT.bit_length() - 1) - m)
    ki = head if cfg.prefetch else min(head, cfg.ki)
    while ki > _MIN_DOT and ki << (m + b) > _MAX_CHUNK and not cfg.prefetch:
        ki //= 2
    bits, steps, rounds = _dense_chunk_plan(ko_bits, b, m, w, elem_size)
    bits_b, steps_b = (), ()
    if tail:
        bits_b, steps_b, _ = _dense_chunk_plan(tail.bit_length() - 1, b, m, w, elem_size)
    meta = (("K", k), ("P", 1 << m), ("KO", ko), ("KI", ki), ("KI_STEPS", -(-(k if not tail else head) // ki)),
            ("BM", 1 << b), ("BITS", bits), ("STEPS", steps), ("NUM_STEPS", len(steps) - 1), ("KB", tail),
            ("BITS_B", bits_b), ("STEPS_B", steps_b), ("NUM_STEPS_B", max(0, len(steps_b) - 1)),
            ("HOIST", cfg.hoist and cfg.prefetch))
    k_chunks = 1 if tail else -(-k // ko)
    return KernelPlan("dense", meta, num_warps, 1 << b, k_chunks, cfg.stages, cfg.programs_per_sm, rounds,
                      cfg.prefetch, cfg.max_regs)


@functools.lru_cache(maxsize=512)
def kernel_plan(
    n: int, elem_size: int, config: Pow2Config | DenseConfig | SplitConfig | None = None, signs: bool = False,
) -> KernelPlan | None:
    """The launch plan for rows of length n (elements of ``elem_size`` bytes; ``signs``: with a sign
    vector), or None when the kernels cannot take n (its power-of-two factor above 2**MAX_POW2_BITS)."""
    k, p = hadamard_factors(n)
    m = p.bit_length() - 1
    if m > MAX_POW2_BITS:
        return None
    if k == 1:
        if isinstance(config, SplitConfig):
            if not 4 <= config.k_bits < m:
                raise ValueError(f"a split of 2**{m} needs 4 <= k_bits < {m}, got {config.k_bits}")
            return _dense_plan(1 << config.k_bits, m - config.k_bits, elem_size, config.dense)
        table = _POW2_TABLE_16BIT if elem_size <= 2 else {}
        return _pow2_plan(m, elem_size, config or table.get(m, _POW2_TABLE[m]))
    if config is None:
        config = (signs and _DENSE_TABLE_SIGNS.get((elem_size, n))) or _DENSE_TABLE_SIZES.get((elem_size, n))
    if config is None and elem_size == 2 and k <= _MAX_PREFETCH_K:
        config = _DENSE_TABLE_16BIT.get(next_power_of_2(k) << m)
    return _dense_plan(k, m, elem_size, config or _DENSE_TABLE[min(elem_size, 4)])


_SIGN_BIT_DTYPES = {2: torch.int16, 4: torch.int32}


def sign_bit_mask(signs: torch.Tensor, elem_size: int) -> torch.Tensor:
    """A ±1 vector as the kernels take it: integers of ``elem_size`` bytes, the sign bit where -1."""
    dtype = _SIGN_BIT_DTYPES[elem_size]
    return torch.where(signs < 0, torch.iinfo(dtype).min, 0).to(dtype)


@functools.lru_cache(maxsize=64)
def _dense_matrix(k: int, rows: int, cols: int, inverse: bool, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """H_K (H_K.T for the inverse) zero-padded to [rows, cols], on the device (built once)."""
    h = torch.zeros(rows, cols, dtype=dtype)
    h[:k, :k] = hadamard_tensor(k, transpose=inverse)
    return h.to(device)


@functools.lru_cache(maxsize=16)
def _sm_count(device: torch.device) -> int:
    """Multiprocessors of a CUDA device; 1 for the interpreter (persistent grids stay testable)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


def _run(kernel, programs: int, x: torch.Tensor, runtime: tuple, plan: KernelPlan, extra: dict) -> None:
    """Launch ``kernel`` on ``programs`` programs with the plan's constexprs (and ``extra``)."""
    options = {"maxnreg": plan.max_regs} if plan.max_regs and x.is_cuda else {}
    launch(kernel, (programs,), x.device, *runtime, **dict(plan.meta, STAGES=plan.stages, **extra, **options),
           num_warps=plan.num_warps)


def _words_ok(x2: torch.Tensor, signs: torch.Tensor) -> bool:
    """Whether the power-of-two kernel can read x2 (16-bit, rows of an even length) and the sign bits
    as int32 words of two elements."""
    stride_r, stride_c = x2.stride()
    return stride_c == 1 and stride_r % 2 == 0 and x2.data_ptr() % 4 == 0 and signs.data_ptr() % 4 == 0


def fwht_rows_triton(
    x2: torch.Tensor, b: int, inverse: bool, scale: float, sign_bits: torch.Tensor | None,
    config: Pow2Config | DenseConfig | SplitConfig | None = None,
) -> torch.Tensor:
    """Transform (times ``scale``) of each length-b block of the rows of x2 [R, n] (any strides).

    ``sign_bits`` (length b, or n when every block has its own signs, on x2's device; integers of
    x2's element width holding 0 or the sign bit, see ``sign_bit_mask``) flips the signs of the input of
    the forward transform and of the output of the inverse. ``config`` overrides the launch table
    (benchmark sweeps).
    """
    require_triton()
    rows, n = x2.shape
    plan = kernel_plan(b, x2.element_size(), config, sign_bits is not None)
    if plan is None:
        raise ValueError(f"n={b} does not fit the Triton FWHT kernels (power-of-two factor above 2**{MAX_POW2_BITS})")
    if b != n:
        x2 = x2.contiguous().view(rows * (n // b), b)
    out = torch.empty_like(x2, memory_format=torch.contiguous_format)
    if out.numel() == 0:
        return out.view(rows, n)
    num_tiles = -(-x2.shape[0] // plan.tile_rows) * plan.k_chunks
    programs = num_tiles
    if plan.programs_per_sm:
        programs = min(num_tiles, _sm_count(x2.device) * plan.programs_per_sm)
    has_signs = sign_bits is not None
    signs = sign_bits if has_signs else out
    sign_blocks = sign_bits.shape[0] // b if has_signs else 1
    extra = {"HAS_SIGNS": has_signs, "SIGN_ROWS": sign_blocks > 1}
    stride_r, stride_c = x2.stride()
    if plan.kernel == "pow2":
        words = plan.words and _words_ok(x2, signs)
        if words:
            stride_r, stride_c = stride_r // 2, 1
        runtime = (x2, out, signs, x2.shape[0], num_tiles, sign_blocks, int(inverse), stride_r, stride_c, scale)
        _run(_fwht_pow2_kernel, programs, x2, runtime, plan, dict(extra, PREFETCH=plan.prefetch, WORDS=words))
    else:
        if not x2.is_cuda:
            pieces, h_dtype = 0, torch.float32
        elif x2.dtype == torch.float32:
            pieces, h_dtype = 3, torch.bfloat16
        else:
            pieces, h_dtype = 1, x2.dtype
        meta = dict(plan.meta)
        h = _dense_matrix(meta["K"], meta["KO"] * plan.k_chunks + meta["KB"], meta["KI"] * meta["KI_STEPS"] + meta["KB"],
                          inverse, h_dtype, x2.device)
        runtime = (x2, out, signs, h, x2.shape[0], num_tiles, plan.k_chunks, sign_blocks, int(inverse), stride_r,
                   stride_c, scale)
        _run(_fwht_dense_kernel, programs, x2, runtime, plan, dict(extra, PIECES=pieces, PREFETCH=plan.prefetch))
    return out if b == n else out.view(rows, n)
