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
  exact), fp32 inputs split into three bf16 pieces (hi + mid + lo holds all 24 bits), or (a prefetching
  launch with ``fp16_pieces``) each row scaled by a power of two into fp16's range and split into two
  fp16 pieces, or (``tf32_pieces``) split into two tf32 pieces multiplied by H_K in fp32, each chunk of the
  contraction summed on its own. Orders K above 128 are cut into chunks of output rows (one program each,
  the input re-read from L2) and of the contraction (a loop); a prefetching launch may instead split K into a
  power-of-two head and a padded tail (76 = 64 + 16: 80 rows, not 128), and either holds the next row block
  in registers or leaves it to the loop's software pipeline.
  The power-of-two butterflies then start in the MMA accumulator layout and end in the store layout.

* fp32 rows with K <= 128 may run H_K in registers instead (``Pow2Config`` for a K * 2^m size): the sums of each
  group of four inputs are shared by every output, on the CUDA cores, before the butterflies (``phases``: the groups
  in phases, so that one phase's sums are live at a time); a persistent program can have its next rows prefetched
  into L2, or (``bulk``, sm_90) copied into one or two row buffers in shared memory by the bulk copy engine while it
  transforms the current row (also 16-bit rows, where the table finds it faster), and can hold its sign bits
  (``hold_signs``; 32-bit rows a bit an element, 16-bit rows so too with ``packed_signs``).

``fwht_rows_triton`` picks a launch configuration from a table measured on an H200 (override it with
``config=``, as ``bench/gpu_fwht.py --sweep`` does) and, on CUDA, calls the compiled kernel directly
after the first launch.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from hlwq_kernels.ops._jit import pow2_scale
from hlwq_kernels.ops._triton import (
    OutOfResources, PreparedCalls, PreparedLaunch, launch, require_triton, tensor_key, tl, triton,
)
from hlwq_kernels.ops.fwht_plan import (
    MAX_POW2_BITS, DenseConfig, KernelPlan, PaleyConfig, Pow2Config, SplitConfig, generic_config, hadamard_codes,
    kernel_plan,
)
from hlwq_kernels.ops.hadamard import hadamard_tensor, paley2_core

__all__ = ["fwht_rows_triton", "prepared_launch", "sign_bit_mask", "butterflies"]


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
def _sign_rows(s_ptr, row, sign_blocks, ROW_LEN, SIGN_ROWS: tl.constexpr):
    """Where the sign bits of rows ``row`` start: ``s_ptr`` (one vector for every row), or (SIGN_ROWS) its vector
    ``row % sign_blocks``, ROW_LEN elements apart."""
    if SIGN_ROWS:
        s_ptr += (row % sign_blocks) * ROW_LEN
    return s_ptr


@triton.jit
def _load_tile(x_ptr, tile, rows, stride_xr, stride_xc, load_row, load_col, BM: tl.constexpr, CLAMP: tl.constexpr,
               COLS: tl.constexpr = 0):
    """Rows past the end read as zeros, or (CLAMP) as copies of the last row: no mask, so no
    registers zeroed before the loads (their results are not stored). COLS > 0: columns from COLS on
    (a padded row) read as zeros."""
    row = tile * BM + load_row
    if CLAMP:
        row = tl.minimum(row, rows - 1)
        return tl.load(x_ptr + row.to(tl.int64) * stride_xr + load_col * stride_xc)
    return tl.load(x_ptr + row.to(tl.int64) * stride_xr + load_col * stride_xc,
                   mask=_in_row(row < rows, load_col, COLS), other=0.0)


@triton.jit
def _in_row(mask, col, COLS: tl.constexpr):
    """``mask``, and where COLS > 0 (a padded row) ``col < COLS``: columns from COLS on are neither read
    nor written."""
    if COLS > 0:
        mask = mask & (col < COLS)
    return mask


@triton.jit
def _load_signs(ptrs, col, COLS: tl.constexpr):
    """Sign bits at ``ptrs`` (columns ``col``); those of columns from COLS on (COLS > 0) read as 0."""
    if COLS > 0:
        return tl.load(ptrs, mask=col < COLS, other=0)
    return tl.load(ptrs)


@triton.constexpr_function
def _held_word_bits(tail, width, pack, words):
    """How many of a tile's last dimensions ``_packed_signs`` packs into a word (see there): of 32-bit elements, and
    with ``pack`` of 16-bit ones, the ``tail`` (the trailing dimensions the load layout holds in registers), at most
    5; with ``pack`` of 16-bit elements read as int32 words, the words' part of the tail (one bit less), at most 4;
    else 16-bit elements keep their sign bits as they are loaded, two to a register (0)."""
    if words and pack:
        return min(tail - 1, 4)
    return min(tail, 5) if width == 32 or pack else 0


@triton.constexpr_function
def _sign_fields(words):
    """The bits of a packed word that hold the sign bits of one word of the tile: the sign bit of a 32-bit value,
    or of both 16-bit halves of an int32 word (``words``)."""
    return 0x80008000 if words else 0x80000000


@triton.constexpr_function
def _word_shape(bits, words):
    """The tile's dimensions (``bits``, of its elements) as the int32 words of 16-bit pairs (``words``) hold it: the
    lowest column bit is inside the words."""
    return tuple(bits[:-1]) if words else bits


@triton.jit
def _packed_signs(bits, SHAPE: tl.constexpr, NB: tl.constexpr, FIELDS: tl.constexpr):
    """The sign bits ``bits`` of a loaded tile (integers of its words' width, 0 or the sign bits) as uint32 words
    that a thread keeps in registers: the tile reshaped to SHAPE, then 2^NB of its words along its last NB dimensions
    (in registers) packed into one, word p's FIELDS shifted right by p (a 32-bit or 16-bit value's sign bit at
    31 - p; both of an int32 word of 16-bit pairs at 31 - p and 15 - p)."""
    w = tl.reshape(bits.to(tl.int32).to(tl.uint32, bitcast=True) & FIELDS, SHAPE)
    for j in tl.static_range(NB):
        lo, hi = tl.split(w)
        w = lo | (hi >> (1 << j))
    return w


@triton.jit
def _held_signs(s_ptr, col, COLS: tl.constexpr, SHAPE: tl.constexpr, NB: tl.constexpr,
                FIELDS: tl.constexpr = 0x80000000):
    """The sign bits at ``s_ptr + col`` (columns from COLS on read as 0), loaded once for a program to hold: as they
    are, or (NB > 0) packed by ``_packed_signs``."""
    bits = _load_signs(s_ptr + col, col, COLS)
    if NB > 0:
        bits = _packed_signs(bits, SHAPE, NB, FIELDS)
    return bits


@triton.jit
def _unpacked_signs(held, like, NB: tl.constexpr, FIELDS: tl.constexpr, PTX: tl.constexpr):
    """``_packed_signs``' words ``held`` back as the sign bits of a tile shaped as ``like``: a shift and an and a
    word, which the flip's xor takes in the same instruction. Compiled (PTX), the words pass through an opaque copy
    first, so that the compiler unpacks them where they are used (every row) instead of hoisting the unpacked bits,
    one register a word, out of the loop."""
    w = held
    if PTX:
        w = tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [held], dtype=tl.uint32, is_pure=False, pack=1)
    for j in tl.static_range(NB):
        w = tl.join(w, w << (1 << (NB - 1 - j)))
    if FIELDS == 0x80000000:  # (as shifts, 32-bit elements compile to the sm_90 code their launches were timed with)
        w = (w >> 31) << 31
    else:
        w = w & FIELDS
    return tl.reshape(w, like.shape)


@triton.jit
def _input_signs(v, s_ptr, col, row, sign_blocks, inverse, held, ROW_WORDS: tl.constexpr, HAS_SIGNS: tl.constexpr,
                 SIGN_ROWS: tl.constexpr, COLS: tl.constexpr, HELD: tl.constexpr, HELD_BITS: tl.constexpr = 0,
                 PTX: tl.constexpr = False, FIELDS: tl.constexpr = 0x80000000):
    """v (loaded at columns ``col`` of rows ``row``) with the forward transform's sign flips: the sign bits
    ``held`` (HELD: loaded once a program; HELD_BITS > 0: packed by ``_packed_signs``), else those at
    ``s_ptr + col``, or (SIGN_ROWS) in row ``row % sign_blocks`` of ROW_WORDS; the inverse flips at the store."""
    if HAS_SIGNS:
        if inverse == 0:
            if HELD:
                if HELD_BITS > 0:
                    bits = _unpacked_signs(held, v, HELD_BITS, FIELDS, PTX)
                else:
                    bits = held
            else:
                bits = _load_signs(_sign_rows(s_ptr, row, sign_blocks, ROW_WORDS, SIGN_ROWS) + col, col, COLS)
            v = _flip_signs(v, bits)
    return v


@triton.jit
def _take(v, IDX: tl.constexpr, NB: tl.constexpr):
    """v at index IDX of its last NB size-2 dimensions (bit 0 of IDX on the last one): NB splits."""
    for j in tl.static_range(NB):
        lo, hi = tl.split(v)
        if (IDX >> j) & 1:
            v = hi
        else:
            v = lo
    return v


@triton.jit
def _negated(t, NEG: tl.constexpr, FOLD: tl.constexpr = False):
    """-t if NEG else t. FOLD: as ``t * -1.0``, which the compiler makes a negation and folds into the add or fma
    that takes it; Triton's ``-t`` is ``0 - t``, which it keeps as an add of its own (they differ for t = +0).
    ``group`` 0 launches keep ``-t``, as their table entries were timed."""
    if NEG:
        if FOLD:
            t = t * -1.0
        else:
            t = -t
    return t


@triton.jit
def _elements(v, NB: tl.constexpr):
    """The 2^NB tensors of v along its last NB size-2 dimensions, as a tuple by index (bit 0 on the last one, as
    ``_take``): NB levels of splits."""
    outs = (v,)
    for level in tl.static_range(NB):
        los = ()
        his = ()
        for j in tl.static_range(1 << level):
            lo, hi = tl.split(outs[j])
            los = los + (lo,)
            his = his + (hi,)
        outs = los + his
    return outs


@triton.jit
def _grouped_products(xs, K: tl.constexpr, KB: tl.constexpr, CODES: tl.constexpr, PHASES: tl.constexpr,
                      GROUP: tl.constexpr):
    """``_register_products`` of the inputs ``xs`` (a tuple by index) in groups of GROUP consecutive inputs (the last
    one shorter where GROUP does not divide K): per group its 2^(GROUP - 1) signed sums ``x_0 +- x_1 ... +-
    x_(GROUP-1)`` (2^GROUP - 2 adds, each sum the last one's with one more input added or subtracted), then each
    output adds one of them per group with its sign (negations folded into the adds); groups g with g % PHASES == c
    in phase c. K / GROUP + (2^GROUP - 2) / GROUP - 1 adds an output (K = 108: 26.9 for groups of five, 29.5 for
    four)."""
    NG: tl.constexpr = (K + GROUP - 1) // GROUP
    M: tl.constexpr = 1 << (GROUP - 1)  # sums a group (a shorter last group's repeated up to M: never read there)
    outs = ()
    for c in tl.static_range(PHASES):
        sums = ()
        for g in tl.static_range(c, NG, PHASES):
            part = (xs[g * GROUP],)
            for i in tl.static_range(1, GROUP):
                if g * GROUP + i < K:
                    plus = ()
                    minus = ()
                    for j in tl.static_range(1 << (i - 1)):  # code bit i - 1: input i subtracted
                        plus = plus + (part[j] + xs[g * GROUP + i],)
                        minus = minus + (part[j] - xs[g * GROUP + i],)
                    part = plus + minus
                else:
                    part = part + part
            sums = sums + part
        new = ()
        for r in tl.static_range(1 << KB):
            if r < K:  # (a code is never bound to a name: that would hold it as a tensor, not a constexpr)
                acc = _negated(sums[CODES[r * NG + c] % M], CODES[r * NG + c] >= M, True)
                if c > 0:
                    acc = outs[r] + acc
                for g in tl.static_range(c + PHASES, NG, PHASES):
                    acc = acc + _negated(sums[(g - c) // PHASES * M + CODES[r * NG + g] % M], CODES[r * NG + g] >= M,
                                         True)
            else:
                acc = tl.zeros_like(xs[0])
            new = new + (acc,)
        outs = new
    return outs


@triton.jit
def _register_products(v, K: tl.constexpr, KB: tl.constexpr, CODES: tl.constexpr, PHASE_BITS: tl.constexpr = 0,
                       GROUP: tl.constexpr = 0):
    """M v along the last KB size-2 dimensions of v (the index k of M's K columns, k_0 last, padded to 2^KB; entries
    from K on are not read) for a ±1 matrix M on the CUDA cores: a tuple of the 2^KB outputs (zeros from K on), by
    groups of four inputs (GROUP 0, ``_quad_products``) or of GROUP consecutive ones (``_grouped_products``; CODES
    ``fwht_plan.hadamard_codes`` of either); PHASE_BITS > 0: the groups in 2^PHASE_BITS
    phases, each phase's sums formed and added to every output before the next phase's, so that only one phase's
    sums are live beside the outputs."""
    if GROUP == 0:
        outs = _quad_products(v, K, KB, CODES, PHASE_BITS)
    else:
        outs = _grouped_products(_elements(v, KB), K, KB, CODES, 1 << PHASE_BITS, GROUP)
    return outs


@triton.jit
def _quad_products(v, K: tl.constexpr, KB: tl.constexpr, CODES: tl.constexpr, PHASE_BITS: tl.constexpr):
    """``_register_products`` by groups of four inputs: the 8 sums ``x_4g +- x_4g+1 +- x_4g+2 +- x_4g+3`` (14 adds,
    shared by every output; for K = 2 mod 4 a last group of two, ``x_4g +- x_4g+1``), then each output adds one of
    them per group with its sign: K / 4 - 1 adds an output instead of K - 1. The group's inputs are the size-2
    dimensions of k_0 and k_1, its index the others; phase c takes the groups g with g % 2^PHASE_BITS == c."""
    NT: tl.constexpr = (K + 3) // 4  # groups with the pair
    GB: tl.constexpr = KB - 2 - PHASE_BITS  # group bits within a phase
    even, odd = tl.split(v)  # k_0
    x0, x2 = tl.split(even)  # k_1: the group's inputs 0 and 2, then 1 and 3
    x1, x3 = tl.split(odd)
    outs = ()
    for c in tl.static_range(1 << PHASE_BITS):
        if c < NT:  # the phase's groups g = c + (h << PHASE_BITS)
            y0 = _take(x0, c, PHASE_BITS)
            y1 = _take(x1, c, PHASE_BITS)
            y2 = _take(x2, c, PHASE_BITS)
            y3 = _take(x3, c, PHASE_BITS)
            s = y0 + y1
            d = y0 - y1
            half = (s + y2, d + y2, s - y2, d - y2)  # bit 0 of the index: x1 subtracted, bit 1: x2
            sums = (half[0] + y3, half[1] + y3, half[2] + y3, half[3] + y3,
                    half[0] - y3, half[1] - y3, half[2] - y3, half[3] - y3)  # bit 2: x3
            terms = ()
            for h in tl.static_range(1 << GB):
                if c + (h << PHASE_BITS) < K // 4:
                    for q in tl.static_range(8):
                        terms = terms + (_take(sums[q], h, GB),)
                elif c + (h << PHASE_BITS) < NT:  # the pair x_4g +- x_4g+1 (codes 0 and 1)
                    terms = terms + (_take(s, h, GB), _take(d, h, GB))
            new = ()
            for r in tl.static_range(1 << KB):
                if r < K:  # (a code is never bound to a name: that would hold it as a tensor, not a constexpr)
                    if c == 0:
                        acc = _negated(terms[CODES[r * NT] % 8], CODES[r * NT] >= 8)
                    else:
                        acc = outs[r] + _negated(terms[CODES[r * NT + c] % 8], CODES[r * NT + c] >= 8)
                    for h in tl.static_range(1, 1 << GB):
                        if c + (h << PHASE_BITS) < NT:
                            acc = acc + _negated(terms[h * 8 + CODES[r * NT + c + (h << PHASE_BITS)] % 8],
                                                 CODES[r * NT + c + (h << PHASE_BITS)] >= 8)
                else:
                    acc = tl.zeros_like(_take(x0, 0, KB - 2))
                new = new + (acc,)
            outs = new
    return outs


@triton.jit
def _joined(outs, KB: tl.constexpr):
    """The 2^KB tensors ``outs`` (index r) joined into the last KB size-2 dimensions, r_0 first."""
    for level in tl.static_range(KB):
        pairs = ()
        for j in tl.static_range((1 << KB) >> (level + 1)):
            pairs = pairs + (tl.join(outs[2 * j], outs[2 * j + 1]),)
        outs = pairs
    return outs[0]


@triton.jit
def _hadamard_outputs(v, K: tl.constexpr, KB: tl.constexpr, CODES: tl.constexpr, PALEY: tl.constexpr,
                      PHASE_BITS: tl.constexpr = 0, GROUP: tl.constexpr = 0):
    """H_K along the last KB size-2 dimensions of v (the K index, k_0 last, padded to 2^KB; entries from K on are
    not read): a tuple of the 2^KB outputs (zeros from K on; ``_joined`` puts them back with k_0 first).
    ``_register_products`` with H_K's codes, or (PALEY) with those of C + I for H_K's Paley II core C
    (``hadamard.paley2_core``): with the pair (x_0, x_1) the halves k_0 = 0, 1 and u_j = (C + I) x_j (order K / 2),
    ``H_K x = (C ⊗ A + I ⊗ B) x`` is ``u_0 - u_1 + 2 x_1`` at k_0 = 0 and ``2 x_0 - u_0 - u_1`` at k_0 = 1:
    K / 8 + 1.5 adds an output besides the shared sums (K / 4 - 1 for H_K)."""
    if PALEY:
        x0, x1 = tl.split(v)
        u0 = _register_products(x0, K // 2, KB - 1, CODES, PHASE_BITS, GROUP)
        u1 = _register_products(x1, K // 2, KB - 1, CODES, PHASE_BITS, GROUP)
        outs = ()
        for i in tl.static_range(1 << (KB - 1)):
            outs = outs + (tl.fma(_take(x1, i, KB - 1), 2.0, u0[i] - u1[i]),
                           tl.fma(_take(x0, i, KB - 1), 2.0, _negated(u0[i] + u1[i], True, GROUP > 0)))
    else:
        outs = _register_products(v, K, KB, CODES, PHASE_BITS, GROUP)
    return outs


@triton.jit
def _paley_pair_outputs(v, pair, K: tl.constexpr, KB: tl.constexpr, CODES: tl.constexpr, PHASE_BITS: tl.constexpr = 0,
                        GROUP: tl.constexpr = 0):
    """``(C ⊗ I_2 + I ⊗ [[0, 1], [-1, 0]]) x`` for H_2K's Paley II core C (order K) along the last KB size-2
    dimensions of v (a K index of C, padded to 2^KB), where the tile holds one element x_j of each pair and ``pair``
    the other one, negated for j = 1: ``(C + I) x_j - x_j + pair`` with ``_register_products`` (codes of C + I), a
    tuple of the 2^KB outputs (zeros from K on). The butterfly on the pair bit and ``_store_rows``' relabeling
    (PAIR_HALF) finish H_2K."""
    u = _register_products(v, K, KB, CODES, PHASE_BITS, GROUP)
    outs = ()
    for a in tl.static_range(1 << KB):
        if a < K:
            outs = outs + ((u[a] - _take(v, a, KB)) + _take(pair, a, KB),)
        else:
            outs = outs + (u[a],)
    return outs


@triton.jit
def _part(outs, START: tl.constexpr, COUNT: tl.constexpr):
    """``outs[START : START + COUNT]``."""
    part = ()
    for r in tl.static_range(COUNT):
        part = part + (outs[START + r],)
    return part


@triton.jit
def _store_rows(v, y_ptr, s_ptr, tile, rows, sign_blocks, inverse, scale, store_row, store_col, N: tl.constexpr,
                BM: tl.constexpr, C: tl.constexpr, STEPS: tl.constexpr, NUM_STEPS: tl.constexpr,
                STORE0_BITS: tl.constexpr, STORE1_BITS: tl.constexpr, HAS_SIGNS: tl.constexpr,
                SIGN_ROWS: tl.constexpr, COLS: tl.constexpr, FOLD: tl.constexpr, PAIR_HALF: tl.constexpr = 0):
    """The butterflies of a tile (or of a part of its K index), the scale (folded into the last butterfly when
    FOLD), one rounding, the inverse's signs, and the store at (store_row, store_col). PAIR_HALF > 0 (a Paley II
    core with the pair bit among the columns, PAIR_HALF apart): the butterfly's outputs (w_0 + w_1, w_0 - w_1) of a
    pair are stored as (w_0 - w_1, -(w_0 + w_1)), ``[[1, -1], [-1, -1]] w``."""
    v = butterflies(v, STEPS, NUM_STEPS, (1 << STORE0_BITS, 1 << STORE1_BITS, C), scale, FOLD)
    if not FOLD:
        v = v * scale
    if PAIR_HALF > 0:
        v = tl.where((store_col & PAIR_HALF) == 0, -v, v)
        store_col = store_col ^ PAIR_HALF
    v = v.to(y_ptr.dtype.element_ty)
    row = tile * BM + store_row
    if HAS_SIGNS:
        if inverse != 0:
            v = _flip_signs(v, _load_signs(_sign_rows(s_ptr, row, sign_blocks, N, SIGN_ROWS) + store_col, store_col,
                                           COLS))
    tl.store(y_ptr + row.to(tl.int64) * N + store_col, v, mask=_in_row(row < rows, store_col, COLS))


@triton.jit
def _prefetch_l2(ptr, nbytes):
    """Ask for ``nbytes`` (a multiple of 16) at ``ptr`` (16-byte aligned) to be brought into L2: one bulk
    prefetch (``cp.async.bulk.prefetch.L2``, sm_90), issued by the program's thread 0; nothing waits for it."""
    tl.inline_asm_elementwise(
        "{ .reg .pred p; .reg .b32 t; mov.u32 t, %tid.x; setp.eq.u32 p, t, 0; "
        "@p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
        "=r,l,r", [ptr.to(tl.int64, bitcast=True), nbytes], dtype=tl.int32, is_pure=False, pack=1)


_T0 = "{ .reg .pred p; .reg .b32 t; .reg .b64 st; mov.u32 t, %tid.x; setp.eq.u32 p, t, 0; "  # p: thread 0
_BULK_INIT_ASM = tl.constexpr(_T0 + "@p mbarrier.init.shared::cta.b64 [$1], 1; "
                                    "@p fence.mbarrier_init.release.cluster; mov.u32 $0, 0; }")
_BULK_COPY_ASM = tl.constexpr(_T0 + "@p fence.proxy.async.shared::cta; "
                                    "@p mbarrier.arrive.expect_tx.shared::cta.b64 st, [$2], $4; "
                                    "@p cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes "
                                    "[$1], [$3], $4, [$2]; mov.u32 $0, 0; }")


@triton.jit
def _row_buffers(nbytes):
    """Shared address of the last ``nbytes`` of the program's dynamic shared memory (``launch(extra_shared=)``)."""
    return tl.inline_asm_elementwise(
        "{ .reg .u32 s; mov.u32 s, %dynamic_smem_size; mov.u32 $0, global_smem; add.u32 $0, $0, s; "
        "sub.u32 $0, $0, $1; }", "=r,r", [nbytes], dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def _bulk_init(bar):
    """Thread 0 initializes the mbarrier at shared address ``bar`` for one arrival a phase (then a CTA barrier)."""
    tl.inline_asm_elementwise(_BULK_INIT_ASM, "=r,r", [bar], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _bulk_copy(dst, bar, src, nbytes):
    """Thread 0 has ``nbytes`` (a multiple of 16) at global ``src`` copied to shared ``dst`` (both 16-byte aligned)
    by the bulk copy engine (``cp.async.bulk``, sm_90), which completes the mbarrier ``bar``'s phase when they are
    there; the proxy fence orders the program's earlier reads of ``dst`` before the copy's writes."""
    tl.inline_asm_elementwise(_BULK_COPY_ASM, "=r,r,r,l,r", [dst, bar, src.to(tl.int64, bitcast=True), nbytes],
                              dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _bulk_wait(bar, phase):
    """Wait until the mbarrier ``bar`` has completed phase ``phase`` (0 or 1); returns 0, a value for the reads of
    the copied bytes to depend on, so that they are not moved above the wait."""
    done = tl.full([], 0, tl.int32)
    while done == 0:
        done = tl.inline_asm_elementwise(
            "{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [$1], $2; selp.u32 $0, 1, 0, p; }",
            "=r,r,r", [bar, phase], dtype=tl.int32, is_pure=False, pack=1)
    # a zero the compiler cannot fold (from ``done - 1`` ptxas made a warp vote that could give -1)
    return tl.inline_asm_elementwise("mov.u32 $0, 0;", "=r,r", [done], dtype=tl.int32, is_pure=False, pack=1)


@triton.constexpr_function
def _shared_read_asm(size, count):
    """PTX of one ``ld.shared`` of ``count`` consecutive values of ``size`` bytes (at most 16 bytes in all), for
    ``inline_asm_elementwise`` with ``pack=count``: its operands are the values (as 32-bit words when there are
    several; Triton packs narrower ones in pairs), then ``count`` addresses, ``count`` zeros ``after`` and the
    layout's ``like`` (as the values)."""
    words = size * count // 4
    if words == 0:  # one 16-bit value
        return "{ .reg .u32 a; add.u32 a, $1, $2; ld.shared.b16 $0, [a]; }"
    values = "$0" if words == 1 else f"{{{', '.join(f'${i}' for i in range(words))}}}"
    vector = "" if words == 1 else f".v{words}"
    return f"{{ .reg .u32 a; add.u32 a, ${words}, ${words + count}; ld.shared{vector}.b32 {values}, [a]; }}"


@triton.constexpr_function
def _shared_read_constraints(size, count):
    """Constraints of ``_shared_read_asm(size, count)``."""
    words = size * count // 4
    value = ["h"] if words == 0 else ["r"] * words
    return ",".join([f"={c}" for c in value] + ["r"] * (2 * count) + value)


@triton.jit
def _buffer_tile(row_at, col, after, like, COLS: tl.constexpr, ORDERED: tl.constexpr):
    """The values at columns ``col`` of a row in shared memory from address ``row_at`` (read once ``after``, a zero
    from ``_bulk_wait``, is known), in the layout of the load ``like`` (an unused operand of the reads) and of its
    element type. A thread's consecutive columns are read 16 bytes at a time. COLS > 0 (a padded row): columns from
    COLS on read as zeros. ORDERED: the reads are kept before the program's next barrier (the buffer is refilled
    after it)."""
    size: tl.constexpr = like.dtype.primitive_bitwidth // 8
    count: tl.constexpr = min(col.shape[2], 16 // size)
    words = like.to(tl.int32 if size == 4 else tl.int16, bitcast=True)
    at = tl.where(col < COLS, col, 0) if COLS > 0 else col  # padded columns read column 0
    v = tl.inline_asm_elementwise(_shared_read_asm(size, count), _shared_read_constraints(size, count),
                                  [row_at + at * size, after, words], dtype=words.dtype, is_pure=not ORDERED,
                                  pack=count)
    v = v.to(like.dtype, bitcast=True)
    if COLS > 0:
        v = tl.where(col < COLS, v, 0.0)
    return v


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
    N: tl.constexpr, BM: tl.constexpr, C: tl.constexpr, STORE_C: tl.constexpr,
    LOAD0: tl.constexpr, LOAD0_BITS: tl.constexpr, LOAD1: tl.constexpr, LOAD1_BITS: tl.constexpr,
    STORE0: tl.constexpr, STORE0_BITS: tl.constexpr, STORE1: tl.constexpr, STORE1_BITS: tl.constexpr,
    BITS: tl.constexpr, STEPS: tl.constexpr, NUM_STEPS: tl.constexpr, HAS_SIGNS: tl.constexpr,
    SIGN_ROWS: tl.constexpr, STAGES: tl.constexpr, PREFETCH: tl.constexpr, WORDS: tl.constexpr,
    K: tl.constexpr, KB: tl.constexpr, K_PERMS: tl.constexpr, K_CODES: tl.constexpr, PALEY: tl.constexpr,
    K_HEAD_BITS: tl.constexpr, T_BITS: tl.constexpr, T_STEPS: tl.constexpr, T_NUM_STEPS: tl.constexpr,
    T_STORE_C: tl.constexpr, T_STORE0: tl.constexpr, T_STORE0_BITS: tl.constexpr, T_STORE1: tl.constexpr,
    T_STORE1_BITS: tl.constexpr, L2_AHEAD: tl.constexpr, LOAD_LAST: tl.constexpr, PAIR_APART: tl.constexpr,
    BULK: tl.constexpr, HOLD_SIGNS: tl.constexpr, REG_TAIL: tl.constexpr, PHASE_BITS: tl.constexpr,
    PACK_SIGNS: tl.constexpr, GROUP: tl.constexpr, PTX: tl.constexpr,
):
    """Rows of length N (a power of two), BM rows per tile. The tile is loaded and stored through
    [D0, D1, C] and [D0, D1, STORE_C] pointer tensors whose dimensions D0, D1 are chosen tile bits (LOAD*, STORE*),
    so that the load and store layouts hold the bits the plan wants in registers. The sign bits of row
    i (s_ptr: integers of the element width) start at s_ptr + (i % sign_blocks) * N when SIGN_ROWS,
    else at s_ptr. PREFETCH: each program loads its next tile into registers before transforming
    the current one (a persistent grid whose loads overlap its arithmetic). WORDS (16-bit elements,
    with PREFETCH): the input and its sign bits are read as int32 words of two elements (strides in
    words), so that a prefetched tile takes one register per pair instead of one per element; the
    read past the last tile is skipped by a branch instead of a mask (no registers zeroed first)
    and the scale is folded into the last butterfly. LOAD_LAST (a persistent grid without PREFETCH): each program
    loads its next tile after storing the current one, under the loop's branch, so that the tile's loads are
    issued together; in the loop's arithmetic block ptxas would issue them in waves, reusing the first loads'
    registers (sm_90 SASS). K > 1: rows of N = K * 2^m, the tile a row padded to a
    power of two whose top KB column bits (the K index) the load layout holds in registers; H_K (K_CODES) runs
    there on the tile permuted by K_PERMS[0] (those bits last), then K_PERMS[1] restores the order for the
    butterflies; PALEY: H_K through its Paley II core (``_hadamard_outputs``). T_BITS > 0 (``fwht_plan._pow2_plan``,
    a split K): the outputs of H_K as a head of K_HEAD = 2^K_HEAD_BITS (the plan's butterflies and store,
    K_PERMS[1]) and a tail of 2^T_BITS from K_HEAD on (its own, the T_* constexprs and K_PERMS[2]), so that padded K
    indices past the tail are not transformed. PAIR_APART (with PALEY): K is the order of the core C of an H_2K, the
    pair bit of H_2K's K index the top bit of the 2^m columns (``_paley_pair_outputs``); each element's pair is
    read at the column PAIR_HALF = 2^(m - 1) away, and ``_store_rows`` relabels the pair's outputs. BULK > 0 (a
    persistent grid of one-row tiles, rows contiguous and 16-byte aligned, sm_90): the program's rows come through
    BULK buffers at the end of its dynamic shared memory, each filled by the bulk copy engine (one mbarrier a buffer)
    while the program works on the row before; one buffer is refilled once the row is in registers, two once the row
    is stored. The rows (and pairs) are read from there in the layout of the loads they replace. HOLD_SIGNS (a
    persistent grid, one sign vector for every row, or with SIGN_ROWS one-row tiles and a multiple of sign_blocks
    programs, so that a program's rows share one): the forward transform's sign bits are loaded once a program
    and kept in registers (32-bit elements: a bit each, packed along the tile's last REG_TAIL dimensions, which the
    load layout holds in registers; ``_packed_signs``; 16-bit elements as loaded, or with PACK_SIGNS packed too: read as
    int32 words, both bits of a word together and flipped on the words, else a bit an element, flipped after the
    conversion to fp32); the inverse loads them at each store. PHASE_BITS: H_K's groups of inputs (four by their
    index bits, or GROUP consecutive ones) in 2^PHASE_BITS phases (``_register_products``)."""
    per: tl.constexpr = 2 if WORDS else 1
    COLS: tl.constexpr = N if K > 1 else 0  # padded rows: columns from N on are neither read nor written
    PAIR_HALF: tl.constexpr = (N // K // 2) * PAIR_APART
    K_HEAD: tl.constexpr = (1 << K_HEAD_BITS) if T_BITS > 0 else 0
    load_row, load_col = _tile_offsets(LOAD0, LOAD0_BITS, LOAD1, LOAD1_BITS, C, per)
    store_row, store_col = _tile_offsets(STORE0, STORE0_BITS, STORE1, STORE1_BITS, STORE_C)
    if K_HEAD > 0:  # the tail's columns start at its first K index, the head's size
        tail_row, tail_col = _tile_offsets(T_STORE0, T_STORE0_BITS, T_STORE1, T_STORE1_BITS, T_STORE_C)
        tail_col += K_HEAD * (N // K)
    x_in = x_ptr.to(tl.pointer_type(tl.int32)) if WORDS else x_ptr
    s_in = s_ptr.to(tl.pointer_type(tl.int32)) if WORDS else s_ptr
    step = tl.num_programs(0)
    ROW_BYTES: tl.constexpr = N * (x_ptr.dtype.element_ty.primitive_bitwidth // 8)  # one-row tiles (L2_AHEAD, BULK)
    if PREFETCH or LOAD_LAST:  # the grid has at most num_tiles programs
        ahead = _load_tile(x_in, tl.program_id(0), rows, stride_xr, stride_xc, load_row, load_col, BM, WORDS, COLS)
    if BULK > 0:  # BULK row buffers, then their mbarriers; the program's first BULK rows on their way
        buffers = _row_buffers(tl.full([], BULK * ROW_BYTES + 16, tl.int32))
        bars = buffers + BULK * ROW_BYTES
        for buffer in tl.static_range(BULK):
            _bulk_init(bars + 8 * buffer)
        tl.debug_barrier()
        _bulk_copy(buffers, bars, x_ptr + tl.program_id(0).to(tl.int64) * stride_xr, ROW_BYTES)
        if BULK == 2:
            if tl.program_id(0) + step < num_tiles:
                _bulk_copy(buffers + ROW_BYTES, bars + 8,
                           x_ptr + (tl.program_id(0) + step).to(tl.int64) * stride_xr, ROW_BYTES)
    held = 0  # the forward transform's sign bits of this program's columns (and of their pairs), if HOLD_SIGNS
    held_pair = 0
    WIDTH: tl.constexpr = x_ptr.dtype.element_ty.primitive_bitwidth
    HELD_BITS: tl.constexpr = _held_word_bits(REG_TAIL, WIDTH, PACK_SIGNS, WORDS)
    FIELDS: tl.constexpr = _sign_fields(WORDS)
    # packed sign bits of 16-bit elements not read as words flip their fp32 values, after the conversion
    AFTER: tl.constexpr = HOLD_SIGNS and HELD_BITS > 0 and WIDTH == 16 and not WORDS
    if HOLD_SIGNS:  # (SIGN_ROWS: one-row tiles, a multiple of sign_blocks programs; this program's rows' vector)
        s_held = _sign_rows(s_in, tl.program_id(0), sign_blocks, N // per, SIGN_ROWS)
        held = _held_signs(s_held, load_col, COLS // per, _word_shape(BITS, WORDS), HELD_BITS, FIELDS)
        if PAIR_APART:
            held_pair = _held_signs(s_held, load_col ^ PAIR_HALF, COLS, BITS, HELD_BITS)
    for tile in tl.range(tl.program_id(0), num_tiles, step, num_stages=STAGES):
        row = tile * BM + load_row
        if L2_AHEAD:  # one-row tiles, contiguous and 16-byte aligned: the next row's bytes on their way to L2
            if tile + step < num_tiles:
                _prefetch_l2(x_ptr + (tile + step) * stride_xr, ROW_BYTES)
        if PREFETCH:
            v = ahead
            if WORDS:
                if tile + step < num_tiles:  # a branch, not a mask: no tile past the end is read
                    ahead = _load_tile(x_in, tile + step, rows, stride_xr, stride_xc, load_row, load_col, BM, True)
            else:
                ahead = _load_tile(x_in, tile + step, rows, stride_xr, stride_xc, load_row, load_col, BM, False, COLS)
        elif LOAD_LAST:
            v = ahead
        elif BULK > 0:  # row j of this program is in buffer j % BULK, the (j // BULK)-th row there
            j = (tile - tl.program_id(0)) // step
            slot = j & (BULK - 1)
            after = _bulk_wait(bars + 8 * slot, (j >> (BULK - 1)) & 1)
            # a load that never reads (of 0 rows), for its layout: lanes and warps on D0
            like = _load_tile(x_ptr, tile, 0, stride_xr, stride_xc, load_row, load_col, BM, False)
            v = _buffer_tile(buffers + slot * ROW_BYTES, load_col, after, like, COLS, BULK == 1)
        else:
            v = _load_tile(x_in, tile, rows, stride_xr, stride_xc, load_row, load_col, BM, False, COLS)
        if not AFTER:
            v = _input_signs(v, s_in, load_col, row, sign_blocks, inverse, held, N // per, HAS_SIGNS, SIGN_ROWS,
                             COLS // per, HOLD_SIGNS, HELD_BITS, PTX, FIELDS)
        if PAIR_APART:  # the other element of each pair, negated for the pair's second one (L1 / L2 or the buffer)
            pair_col = load_col ^ PAIR_HALF
            if BULK > 0:
                pair = _buffer_tile(buffers + slot * ROW_BYTES, pair_col, after, like, COLS, BULK == 1)
            else:
                pair = _load_tile(x_in, tile, rows, stride_xr, stride_xc, load_row, pair_col, BM, False, COLS)
            if not AFTER:
                pair = _input_signs(pair, s_in, pair_col, row, sign_blocks, inverse, held_pair, N, HAS_SIGNS,
                                    SIGN_ROWS, COLS, HOLD_SIGNS, HELD_BITS, PTX)
            pair = pair.to(tl.float32)
            if AFTER:
                pair = _input_signs(pair, s_in, pair_col, row, sign_blocks, inverse, held_pair, N, HAS_SIGNS,
                                    SIGN_ROWS, COLS, HOLD_SIGNS, HELD_BITS, PTX)
            pair = tl.reshape(tl.where((load_col & PAIR_HALF) == 0, pair, -pair), BITS)
        if BULK == 1:  # every thread has read the row from the buffer: refill it with the program's next row
            tl.debug_barrier()
            if tile + step < num_tiles:
                _bulk_copy(buffers, bars, x_ptr + (tile + step).to(tl.int64) * stride_xr, ROW_BYTES)
        if WORDS:
            v = _unpack_words(v, y_ptr.dtype.element_ty)
        fold: tl.constexpr = WORDS and NUM_STEPS > 0
        v = tl.reshape(v.to(tl.float32), BITS)
        if AFTER:
            v = _input_signs(v, s_in, load_col, row, sign_blocks, inverse, held, N // per, HAS_SIGNS, SIGN_ROWS,
                             COLS // per, HOLD_SIGNS, HELD_BITS, PTX)
        if K > 1:
            if PAIR_APART:
                outs = _paley_pair_outputs(tl.permute(v, K_PERMS[0]), tl.permute(pair, K_PERMS[0]), K, KB, K_CODES,
                                           PHASE_BITS, GROUP)
            else:
                outs = _hadamard_outputs(tl.permute(v, K_PERMS[0]), K, KB, K_CODES, PALEY, PHASE_BITS, GROUP)
            if K_HEAD > 0:
                vt = _joined(_part(outs, K_HEAD, 1 << T_BITS), T_BITS)
                _store_rows(tl.permute(vt, K_PERMS[2]), y_ptr, s_ptr, tile, rows, sign_blocks, inverse, scale, tail_row,
                            tail_col, N, BM, T_STORE_C, T_STEPS, T_NUM_STEPS, T_STORE0_BITS, T_STORE1_BITS, HAS_SIGNS,
                            SIGN_ROWS, COLS, False, PAIR_HALF)
                v = tl.permute(_joined(_part(outs, 0, K_HEAD), K_HEAD_BITS), K_PERMS[1])
            else:
                v = tl.permute(_joined(outs, KB), K_PERMS[1])
        _store_rows(v, y_ptr, s_ptr, tile, rows, sign_blocks, inverse, scale, store_row, store_col, N, BM, STORE_C,
                    STEPS, NUM_STEPS, STORE0_BITS, STORE1_BITS, HAS_SIGNS, SIGN_ROWS, COLS, fold, PAIR_HALF)
        if LOAD_LAST:  # in a block of their own: ptxas issues them together, not in waves between the arithmetic
            if tile + step < num_tiles:
                ahead = _load_tile(x_in, tile + step, rows, stride_xr, stride_xc, load_row, load_col, BM, False, COLS)
        if BULK == 2:  # every thread has read this row's buffer (its stores need those reads): refill it
            tl.debug_barrier()
            if tile + 2 * step < num_tiles:
                _bulk_copy(buffers + slot * ROW_BYTES, bars + 8 * slot,
                           x_ptr + (tile + 2 * step).to(tl.int64) * stride_xr, ROW_BYTES)


@triton.jit
def _product(h, x, acc, ROWS_FIRST: tl.constexpr):
    """acc + h @ x, or (ROWS_FIRST) acc + x.T @ h.T: the rows as the MMA's first operand, which Hopper's
    warpgroup MMA takes from registers (the second one it reads from shared memory)."""
    if ROWS_FIRST:
        acc = tl.dot(tl.trans(x), tl.trans(h), acc)
    else:
        acc = tl.dot(h, x, acc)
    return acc


@triton.jit
def _product_zeros(KO: tl.constexpr, N: tl.constexpr, ROWS_FIRST: tl.constexpr):
    """A zero accumulator of ``_product`` for KO rows of H_K and N columns of rows."""
    return tl.zeros((N, KO) if ROWS_FIRST else (KO, N), dtype=tl.float32)


@triton.jit
def _dot_pieces(h, x, acc, PIECES: tl.constexpr, ROWS_FIRST: tl.constexpr = False):
    """acc + h @ x: PIECES = 1 multiplies 16-bit x as it is (exact products); 3 splits fp32 x into
    bf16 hi + mid + lo, sums this chunk on its own and adds it to acc with a round-to-nearest fp32
    add (the tensor cores truncate while accumulating: over long contractions that bias adds up);
    2 does the same with fp16 hi + lo of an fp32 x that ``_row_scale`` brought into fp16's range
    (22 of its 24 bits); 4 with tf32 hi + lo (h in fp32): hi is x truncated to tf32's 11 significant
    bits, lo the exact rest rounded to 11 (half away from zero), so the pieces hold all of x but the
    rest's last 2 bits, with fp32's exponent range; 0 (the interpreter, which has no bf16 dot)
    multiplies in fp32. ROWS_FIRST: the transposed product (see ``_product``), acc [columns, rows of H_K]."""
    if PIECES == 0:
        acc = _product(h.to(tl.float32), x.to(tl.float32), acc, ROWS_FIRST)
    elif PIECES == 1:
        acc = _product(h, x, acc, ROWS_FIRST)
    elif PIECES == 3:
        x = x.to(tl.float32)
        hi = x.to(tl.bfloat16)
        rest = x - hi.to(tl.float32)
        mid = rest.to(tl.bfloat16)
        lo = (rest - mid.to(tl.float32)).to(tl.bfloat16)
        part = _product(h, lo, tl.zeros_like(acc), ROWS_FIRST)
        part = _product(h, mid, part, ROWS_FIRST)
        part = _product(h, hi, part, ROWS_FIRST)
        acc = tl.fma(part, 1.0, acc)  # not folded into the dot's accumulator
    else:
        if PIECES == 2:
            hi = x.to(tl.float16)
            lo = (x - hi.to(tl.float32)).to(tl.float16)
        else:
            x = x.to(tl.float32)
            hi = (x.to(tl.int32, bitcast=True) & -8192).to(tl.float32, bitcast=True)
            lo = ((x - hi).to(tl.int32, bitcast=True) + 4096) & -8192
            lo = lo.to(tl.float32, bitcast=True)
        part = _product(h, lo, tl.zeros_like(acc), ROWS_FIRST)
        part = _product(h, hi, part, ROWS_FIRST)
        acc = tl.fma(part, 1.0, acc)  # not folded into the dot's accumulator
    return acc


@triton.jit
def _row_scale(v, vb, KB: tl.constexpr):
    """Powers of two ``(s, 1 / s)`` [BM] for the rows of a row block v [KI, BM, P] (and its K tail vb when
    KB > 0) that bring each row's largest magnitude into [2^14, 2^15): the fp16 pieces of ``v * s`` then
    hold 22 bits of every element down to 2^-28 of the row's largest (below, absolute errors of 2^-39 of
    it), with no overflow. Every output of a row depends on all of its inputs, so a non-finite row
    (s = 2^-114) is non-finite anyway, and no other row is touched."""
    amax = tl.max(tl.max(tl.abs(v), axis=2), axis=0)
    if KB > 0:
        amax = tl.maximum(amax, tl.max(tl.max(tl.abs(vb), axis=2), axis=0))
    s = pow2_scale(amax)
    return s, tl.div_rn(tl.full(s.shape, 1.0, tl.float32), s)  # exact: a power of two


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
    """Sign bits of K indices k0 .. k0 + KI, as [KI, BM, P]: one set for every row (s_ptr a pointer), or
    each row's own (s_ptr [1, BM, 1] pointers to the rows' sign vectors)."""
    ki = k0 + tl.arange(0, KI)[:, None, None]
    bits = tl.load(s_ptr + ki * P + tl.arange(0, P)[None, None, :], mask=ki < K, other=0)
    return tl.broadcast_to(bits, (KI, BM, P))


@triton.jit
def _dense_operand(x_ptr, rb, k0, rows, stride_xr, stride_xc, K: tl.constexpr, P: tl.constexpr, KI: tl.constexpr,
                   BM: tl.constexpr):
    """K indices k0 .. k0 + KI of row block ``rb`` as the product's operand [KI, BM * P] (column r * P + c:
    row r, element c; zeros past K and rows). Loaded in this shape, the software pipeline's asynchronous
    copy in shared memory is what the MMA reads; loaded as [KI, BM, P] and reshaped, the chunk went from that
    copy through registers into a second one."""
    col = tl.arange(0, BM * P)[None, :]
    row = rb * BM + col // P
    ki = k0 + tl.arange(0, KI)[:, None]
    return tl.load(x_ptr + row.to(tl.int64) * stride_xr + (ki * P + col % P) * stride_xc,
                   mask=(row < rows) & (ki < K), other=0.0)


@triton.jit
def _dense_operand_signs(s_ptr, rb, k0, sign_blocks, K: tl.constexpr, P: tl.constexpr, KI: tl.constexpr,
                         BM: tl.constexpr, SIGN_ROWS: tl.constexpr):
    """Sign bits of the elements of ``_dense_operand`` (SIGN_ROWS: each row's block of them)."""
    col = tl.arange(0, BM * P)[None, :]
    ki = k0 + tl.arange(0, KI)[:, None]
    at = _sign_rows(s_ptr, rb * BM + col // P, sign_blocks, K * P, SIGN_ROWS)
    return tl.load(at + ki * P + col % P, mask=ki < K, other=0)


@triton.jit
def _paley_start(x_ptr, s_ptr, rb, ko0, rows, stride_xr, stride_xc, sign_blocks, inverse, K: tl.constexpr,
                 P: tl.constexpr, KO: tl.constexpr, BM: tl.constexpr, HAS_SIGNS: tl.constexpr, SIGN_ROWS: tl.constexpr):
    """The accumulator a PALEY tile starts from, [KO, BM * P] in float32: ``(I ⊗ [[0, 1], [-1, 0]]) x`` on the
    output K indices ko0 .. ko0 + KO, the pair of a K index of H_2K being the two halves j of its P columns
    (half j takes half 1 - j of the input, negated for j = 1), with the forward transform's signs. Read as
    [KO, BM, 2, P / 2] so that each half stays contiguous."""
    HALF: tl.constexpr = P // 2
    row = rb * BM + tl.arange(0, BM)[None, :, None, None]
    ki = ko0 + tl.arange(0, KO)[:, None, None, None]
    j = tl.arange(0, 2)[None, None, :, None]
    src = ki * P + (1 - j) * HALF + tl.arange(0, HALF)[None, None, None, :]
    v = tl.load(x_ptr + row.to(tl.int64) * stride_xr + src * stride_xc, mask=(row < rows) & (ki < K), other=0.0)
    if HAS_SIGNS:
        if inverse == 0:
            at = _sign_rows(s_ptr, row, sign_blocks, K * P, SIGN_ROWS)
            v = _flip_signs(v, tl.load(at + src, mask=ki < K, other=0))
    v = v.to(tl.float32)
    return tl.reshape(tl.where(j == 0, v, -v), (KO, BM * P))


@triton.jit
def _dense_h(h_ptr, k0, i0, KO: tl.constexpr, KI: tl.constexpr, WIDTH: tl.constexpr):
    """Block [k0 : k0 + KO, i0 : i0 + KI] of the padded H_K (row-major, WIDTH columns)."""
    return tl.load(h_ptr + (k0 + tl.arange(0, KO))[:, None] * WIDTH + (i0 + tl.arange(0, KI))[None, :])


@triton.jit
def _dense_store(acc, y_ptr, s_ptr, row, rows, ko, sign_blocks, inverse, scale, K: tl.constexpr, P: tl.constexpr,
                 KO: tl.constexpr, BM: tl.constexpr, BITS: tl.constexpr, STEPS: tl.constexpr,
                 NUM_STEPS: tl.constexpr, HAS_SIGNS: tl.constexpr, SIGN_ROWS: tl.constexpr, out_signs, unscale=None,
                 PALEY: tl.constexpr = False):
    """Butterflies of the power-of-two factor on acc [KO, BM * P] (output K indices ko, rows row),
    scale, one rounding, the inverse's signs (``out_signs``: hoisted sign bits, or None to load
    them here), store. ``unscale`` ([1, BM, 1] powers of two, or None) undoes ``_row_scale`` after
    ``scale``: exact, so the store's rounding stays the only one. PALEY: the butterfly on the top column
    bit is the pair step H_2 of ``hadamard.paley2_core``; ``[[1, -1], [-1, -1]] w`` is its output with the
    halves swapped and the new upper half negated, which the store does."""
    v = butterflies(tl.reshape(acc, BITS), STEPS, NUM_STEPS, (KO, BM, P)) * scale
    if unscale is not None:
        v = v * unscale
    ko3 = ko[:, None, None]
    out_col = ko3 * P + tl.arange(0, P)[None, None, :]
    if PALEY:  # as [KO, BM, 2, P / 2]: half j goes to half 1 - j, negated for j = 0
        HALF: tl.constexpr = P // 2
        j = tl.arange(0, 2)[None, None, :, None]
        v = tl.reshape(v, (KO, BM, 2, HALF))
        v = tl.where(j == 0, -v, v)
        ko3 = ko[:, None, None, None]
        row = row[:, :, :, None]
        out_col = ko3 * P + (1 - j) * HALF + tl.arange(0, HALF)[None, None, None, :]
    v = v.to(y_ptr.dtype.element_ty)
    if HAS_SIGNS:
        if inverse != 0:
            if out_signs is None:
                sign_row = _sign_rows(s_ptr, row, sign_blocks, K * P, SIGN_ROWS)
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
    NUM_STEPS_B: tl.constexpr, HOIST: tl.constexpr, UNCHAINED: tl.constexpr, KO_SPLIT: tl.constexpr,
    ROWS_FIRST: tl.constexpr, PALEY: tl.constexpr, HOLD_SIGN_ROWS: tl.constexpr = False,
):
    """Rows of length K*P: a tile is BM rows x KO output K-indices; H_K (H_K.T for the inverse,
    padded, row-major with KI*KI_STEPS + KB columns) at h_ptr. Signs as in ``_fwht_pow2_kernel``.
    Without PREFETCH a tile's contraction is a loop over chunks of KI K-indices, software-pipelined
    STAGES deep, each chunk loaded as the product's operand (``_dense_operand``).
    PREFETCH (one chunk each way, KO = KI): H_K is loaded once and each persistent program loads
    its next row block into registers before transforming the current one (STAGES = 1), or leaves
    the rows ahead to the loop's software pipeline (STAGES > 1: asynchronous copies into shared
    memory issued STAGES - 1 tiles ahead, read there by the MMA; no registers held across tiles).
    KB > 0 splits the K index into a head of KO and a tail of KB indices (K <= KO + KB, both powers
    of two), so that K = 68 runs as 64 + 16 rather than padded to 128: four products, two
    accumulators, each with its own butterfly plan (BITS_B, STEPS_B). UNCHAINED (a head of fewer
    rows than 16 per warp, e.g. 64 rows on 8 warps) adds the head's second product with an fma
    instead of accumulating it in the MMA: Triton gives a dot whose result feeds another dot every
    warp along M (16 rows each, so half of them would repeat the same rows) and the last dot another
    layout, which would cost a conversion of the accumulator between the two. The sign bits of a
    prefetching launch are loaded once per program: one vector for every row, or (SIGN_ROWS with HOLD_SIGN_ROWS: a
    grid of programs whose row blocks are BM * num_programs rows apart, a multiple of sign_blocks) the vectors of the
    program's first row block, which all its row blocks share. HOIST lets the compiler keep
    the row and store offsets in registers across tiles (faster for some launches, spills for
    others: a table choice). KO_SPLIT = 2 (PREFETCH, KB = 0: the row block holds KI = 2 * KO K indices)
    takes H_K's output rows in two halves, one product, butterflies and store each: the accumulator holds
    half of the row block. ROWS_FIRST (PREFETCH) computes the product as rows.T @ H_K.T, so that the row
    block, flipped or split into pieces in registers, is the MMA operand Hopper reads from registers
    rather than one stored to shared memory first; the accumulator is transposed back (a relabeling)
    before the butterflies. PALEY (without PREFETCH): the matrix is the Paley II core C of an H_{2K}
    (``hadamard.paley2_core``), a row is K x P with each K index of H_{2K} the two halves of P columns, and a
    tile's accumulator starts from ``_paley_start`` instead of zeros: ``H_{2K} x`` is then the butterflies'
    output, relabeled at the store (``_dense_store``), with half the products of H_{2K}."""
    step_tiles = tl.num_programs(0)
    WIDTH: tl.constexpr = KI * KI_STEPS + KB
    if PREFETCH:
        h = _dense_h(h_ptr, 0, 0, KO, KI, WIDTH)
        h_1 = h
        if KO_SPLIT == 2:
            h_1 = _dense_h(h_ptr, KO, 0, KO, KI, WIDTH)
        if STAGES == 1:
            ahead = _dense_rows(x_ptr, tl.program_id(0), 0, rows, stride_xr, stride_xc, K, P, KI, BM)
        if KB > 0:
            h_ab = _dense_h(h_ptr, 0, KI, KO, KB, WIDTH)
            h_ba = _dense_h(h_ptr, KO, 0, KB, KI, WIDTH)
            h_bb = _dense_h(h_ptr, KO, KI, KB, KB, WIDTH)
            if STAGES == 1:
                ahead_b = _dense_rows(x_ptr, tl.program_id(0), KI, rows, stride_xr, stride_xc, K, P, KB, BM)
        signs = None
        signs_b = None
        if HAS_SIGNS and (not SIGN_ROWS or HOLD_SIGN_ROWS):  # the same for every row block of the program (input,
            # and output where KI = KO): loaded once
            held_at = _sign_rows(s_ptr, tl.program_id(0) * BM + tl.arange(0, BM)[None, :, None], sign_blocks, K * P,
                                 SIGN_ROWS)
            signs = _dense_signs(held_at, 0, K, P, KI, BM)
            if KB > 0:
                signs_b = _dense_signs(held_at, KI, K, P, KB, BM)
        for tile in tl.range(tl.program_id(0), num_tiles, step_tiles, num_stages=STAGES):
            if HOIST:  # row and store offsets fixed across tiles: the compiler keeps them in registers
                rb = tile
                ko0 = 0
            else:  # k_chunks is 1 here but a runtime value: the offsets are recomputed per tile
                rb = tile // k_chunks
                ko0 = (tile % k_chunks) * KO
            row = rb * BM + tl.arange(0, BM)[None, :, None]
            if STAGES > 1:  # the loop's software pipeline loads the rows ahead (through shared memory)
                v = _dense_rows(x_ptr, rb, 0, rows, stride_xr, stride_xc, K, P, KI, BM)
                if KB > 0:
                    vb = _dense_rows(x_ptr, rb, KI, rows, stride_xr, stride_xc, K, P, KB, BM)
            else:
                v = ahead
                ahead = _dense_rows(x_ptr, rb + step_tiles, 0, rows, stride_xr, stride_xc, K, P, KI, BM)
                if KB > 0:
                    vb = ahead_b
                    ahead_b = _dense_rows(x_ptr, rb + step_tiles, KI, rows, stride_xr, stride_xc, K, P, KB, BM)
            if HAS_SIGNS:
                if inverse == 0:
                    if SIGN_ROWS and not HOLD_SIGN_ROWS:
                        sign_row = _sign_rows(s_ptr, row, sign_blocks, K * P, SIGN_ROWS)
                        v = _flip_signs(v, _dense_signs(sign_row, 0, K, P, KI, BM))
                        if KB > 0:
                            vb = _flip_signs(vb, _dense_signs(sign_row, KI, K, P, KB, BM))
                    else:
                        v = _flip_signs(v, signs)
                        if KB > 0:
                            vb = _flip_signs(vb, signs_b)
            unscale = None
            if PIECES == 2:  # each row scaled into fp16's range, unscaled at the store
                if KB > 0:
                    s_row, inv_row = _row_scale(v, vb, KB)
                    vb = vb * s_row[None, :, None]
                else:
                    s_row, inv_row = _row_scale(v, v, KB)
                v = v * s_row[None, :, None]
                unscale = inv_row[None, :, None]
            v = tl.reshape(v, (KI, BM * P))
            for c in tl.static_range(KO_SPLIT):
                hc = h
                out_signs = signs
                if c == 1:
                    hc = h_1
                if KO_SPLIT > 1:
                    out_signs = None
                acc = _dot_pieces(hc, v, _product_zeros(KO, BM * P, ROWS_FIRST), PIECES, ROWS_FIRST)
                if KB > 0:
                    vb = tl.reshape(vb, (KB, BM * P))
                    if UNCHAINED:  # see the docstring
                        acc = tl.fma(_dot_pieces(h_ab, vb, _product_zeros(KO, BM * P, ROWS_FIRST), PIECES, ROWS_FIRST),
                                     1.0, acc)
                    else:
                        acc = _dot_pieces(h_ab, vb, acc, PIECES, ROWS_FIRST)
                    acc_b = _dot_pieces(h_ba, v, _product_zeros(KB, BM * P, ROWS_FIRST), PIECES, ROWS_FIRST)
                    acc_b = _dot_pieces(h_bb, vb, acc_b, PIECES, ROWS_FIRST)
                    if ROWS_FIRST:
                        acc_b = tl.trans(acc_b)
                if ROWS_FIRST:
                    acc = tl.trans(acc)
                _dense_store(acc, y_ptr, s_ptr, row, rows, ko0 + c * KO + tl.arange(0, KO), sign_blocks, inverse,
                             scale, K, P, KO, BM, BITS, STEPS, NUM_STEPS, HAS_SIGNS, SIGN_ROWS, out_signs, unscale)
            if KB > 0:
                _dense_store(acc_b, y_ptr, s_ptr, row, rows, ko0 + KO + tl.arange(0, KB), sign_blocks, inverse,
                             scale, K, P, KB, BM, BITS_B, STEPS_B, NUM_STEPS_B, HAS_SIGNS, SIGN_ROWS, signs_b, unscale)
    else:
        for tile in tl.range(tl.program_id(0), num_tiles, step_tiles):
            rb = tile // k_chunks
            ko0 = (tile % k_chunks) * KO
            row = rb * BM + tl.arange(0, BM)[None, :, None]
            if PALEY:
                acc = _paley_start(x_ptr, s_ptr, rb, ko0, rows, stride_xr, stride_xc, sign_blocks, inverse, K, P, KO,
                                   BM, HAS_SIGNS, SIGN_ROWS)
            else:
                acc = tl.zeros((KO, BM * P), dtype=tl.float32)
            for step in tl.range(0, KI_STEPS, num_stages=STAGES):
                v = _dense_operand(x_ptr, rb, step * KI, rows, stride_xr, stride_xc, K, P, KI, BM)
                h = _dense_h(h_ptr, ko0, step * KI, KO, KI, WIDTH)
                if HAS_SIGNS:
                    if inverse == 0:
                        v = _flip_signs(v, _dense_operand_signs(s_ptr, rb, step * KI, sign_blocks, K, P, KI, BM,
                                                                SIGN_ROWS))
                acc = _dot_pieces(h, v, acc, PIECES)
            _dense_store(acc, y_ptr, s_ptr, row, rows, ko0 + tl.arange(0, KO), sign_blocks, inverse, scale, K, P, KO,
                         BM, BITS, STEPS, NUM_STEPS, HAS_SIGNS, SIGN_ROWS, None, None, PALEY)


_SIGN_BIT_DTYPES = {2: torch.int16, 4: torch.int32}


def sign_bit_mask(signs: torch.Tensor, elem_size: int) -> torch.Tensor:
    """A ±1 vector as the kernels take it: integers of ``elem_size`` bytes, the sign bit where -1."""
    dtype = _SIGN_BIT_DTYPES[elem_size]
    return torch.where(signs < 0, torch.iinfo(dtype).min, 0).to(dtype)


@functools.lru_cache(maxsize=64)
def _dense_matrix(k: int, rows: int, cols: int, inverse: bool, dtype: torch.dtype, device: torch.device,
                  paley: bool = False) -> torch.Tensor:
    """H_K (H_K.T for the inverse; ``paley``: the Paley II core C of H_2K, C.T) zero-padded to [rows, cols], on the
    device (built once)."""
    h = torch.zeros(rows, cols, dtype=dtype)
    if paley:
        core = torch.from_numpy(paley2_core(2 * k).astype(np.float32))
        h[:k, :k] = core.T if inverse else core
    else:
        h[:k, :k] = hadamard_tensor(k, transpose=inverse)
    return h.to(device)


@functools.lru_cache(maxsize=16)
def _sm_count(device: torch.device) -> int:
    """Multiprocessors of a CUDA device; 1 for the interpreter (persistent grids stay testable)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1


@functools.lru_cache(maxsize=16)
def _sm90_bulk(device: torch.device) -> bool:
    """Whether ``device`` has the bulk L2 prefetch of ``_prefetch_l2`` and the bulk copy of ``_bulk_copy`` (CUDA,
    sm_90 or newer)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


def _run(kernel, programs: int, x: torch.Tensor, runtime: tuple, plan: KernelPlan, extra: dict,
         extra_shared: int = 0) -> PreparedLaunch | None:
    """Launch ``kernel`` on ``programs`` programs with the plan's constexprs (and ``extra``)."""
    options = {"maxnreg": plan.max_regs} if plan.max_regs and x.is_cuda else {}
    return launch(kernel, (programs,), x.device, *runtime, extra_shared=extra_shared,
                  **dict(plan.meta, STAGES=plan.stages, **extra, **options), num_warps=plan.num_warps)


def _words_ok(x2: torch.Tensor, signs: torch.Tensor) -> bool:
    """Whether the power-of-two kernel can read x2 (16-bit, rows of an even length) and the sign bits
    as int32 words of two elements."""
    stride_r, stride_c = x2.stride()
    return stride_c == 1 and stride_r % 2 == 0 and x2.data_ptr() % 4 == 0 and signs.data_ptr() % 4 == 0


def _grid_sharing_signs(programs: int, sign_blocks: int, tile_rows: int) -> int:
    """The most programs, up to ``programs``, of a persistent grid whose row blocks (``tile_rows`` rows, the grid's
    size apart) all take the same ones of ``sign_blocks`` sign vectors, so that a program can hold those of its first
    row block; 0 when no grid of at most ``programs`` does."""
    apart = sign_blocks // math.gcd(tile_rows, sign_blocks)
    return programs - programs % apart


def dense_operands(dtype: torch.dtype, plan: KernelPlan, cuda: bool) -> tuple[int, torch.dtype]:
    """(PIECES, dtype of H_K) of a dense-kernel launch on rows of ``dtype`` (``_dot_pieces``), compiled on CUDA or
    (``cuda`` False) in the interpreter, which has no bf16 dot."""
    if dtype == torch.float32 and plan.fp16_pieces:  # the interpreter runs this path as compiled
        return 2, torch.float16
    if dtype == torch.float32 and plan.tf32_pieces:  # the interpreter too (its dot multiplies in fp32)
        return 4, torch.float32
    if not cuda:
        return 0, torch.float32
    return (3, torch.bfloat16) if dtype == torch.float32 else (1, dtype)


def _launch_plan(
    x2: torch.Tensor, out: torch.Tensor, plan: KernelPlan, b: int, inverse: bool, scale: float,
    sign_bits: torch.Tensor | None,
) -> tuple[PreparedLaunch | None, tuple]:
    """Launch ``plan`` on the rows of x2 into out; returns the prepared launch and its runtime arguments."""
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
        meta = dict(plan.meta)  # K > 1: H_K in registers, its entries constexprs (per direction)
        rows_ok = _sm90_bulk(x2.device) and stride_c == 1 and not (x2.data_ptr() | stride_r * x2.element_size()) & 15
        bulk = plan.bulk if rows_ok else 0
        # GROUP 0 (groups of four by their index bits) takes the codes of groups of four
        codes = hadamard_codes(meta["K"] << meta["PAIR_APART"], inverse, meta["PALEY"], meta["GROUP"] or 4) \
            if meta["K"] > 1 else 0
        # held sign bits: one vector for every row, or (one-row tiles, program p taking rows p + j * programs) one a
        # block where every program's rows have the same one
        sharing = _grid_sharing_signs(programs, sign_blocks, plan.tile_rows)
        hold = plan.hold_signs and has_signs and sharing > 0 and (sign_blocks == 1 or plan.tile_rows == 1)
        if hold:
            programs = sharing
        launch_meta = dict(extra, PREFETCH=plan.prefetch, WORDS=words, K_CODES=codes,
                           L2_AHEAD=plan.l2_ahead and rows_ok and not bulk, BULK=bulk, HOLD_SIGNS=hold, PTX=x2.is_cuda)
        extra_shared = bulk * b * x2.element_size() + 16 if bulk else 0
        return _run(_fwht_pow2_kernel, programs, x2, runtime, plan, launch_meta, extra_shared), runtime
    pieces, h_dtype = dense_operands(x2.dtype, plan, x2.is_cuda)
    meta = dict(plan.meta)
    h_rows = meta["KO"] * meta["KO_SPLIT"] * plan.k_chunks + meta["KB"]
    h = _dense_matrix(meta["K"], h_rows, meta["KI"] * meta["KI_STEPS"] + meta["KB"], inverse, h_dtype, x2.device,
                      meta["PALEY"])
    runtime = (x2, out, signs, h, x2.shape[0], num_tiles, plan.k_chunks, sign_blocks, int(inverse), stride_r,
               stride_c, scale)
    # a prefetching launch holds the sign bits of its first row block (one vector for every row, or with a sign vector
    # a block where all its row blocks have the same ones)
    sharing = _grid_sharing_signs(programs, sign_blocks, plan.tile_rows)
    hold_rows = sign_blocks > 1 and plan.prefetch and plan.k_chunks == 1 and sharing > 0
    if hold_rows:
        programs = sharing
    launch_meta = dict(extra, PIECES=pieces, PREFETCH=plan.prefetch, HOLD_SIGN_ROWS=hold_rows)
    return _run(_fwht_dense_kernel, programs, x2, runtime, plan, launch_meta), runtime


# (b, dtype, with signs, device) whose table launch did not fit the GPU and ran the plain launch instead
_RETRIED: set[tuple] = set()
# CUDA launches by what decides them (shape, strides, dtype, device, 16-byte alignment of the rows and of the
# sign bits, direction, scale): a repeated call skips planning and Triton's argument checks entirely
_PREPARED = PreparedCalls()


def _prepared_key(x2: torch.Tensor, inverse: bool, scale: float, sign_bits: torch.Tensor | None) -> tuple:
    return tensor_key(x2), inverse, scale, None if sign_bits is None else tensor_key(sign_bits)


def prepared_launch(
    x2: torch.Tensor, inverse: bool, scale: float, sign_bits: torch.Tensor | None
) -> tuple[PreparedLaunch, tuple] | None:
    """The launch that ``fwht_rows_triton(x2, x2.shape[1], inverse, scale, sign_bits)`` made on CUDA (with the
    arguments after its three tensors: input, output, sign bits or the output again), if it was kept."""
    return _PREPARED.entry(_prepared_key(x2, inverse, scale, sign_bits))


def fwht_rows_triton(
    x2: torch.Tensor, b: int, inverse: bool, scale: float, sign_bits: torch.Tensor | None,
    config: Pow2Config | DenseConfig | SplitConfig | PaleyConfig | None = None,
) -> torch.Tensor:
    """Transform (times ``scale``) of each length-b block of the rows of x2 [R, n] (any strides).

    ``sign_bits`` (length b, or n when every block has its own signs, on x2's device; integers of
    x2's element width holding 0 or the sign bit, see ``sign_bit_mask``) flips the signs of the input of
    the forward transform and of the output of the inverse. ``config`` overrides the launch table
    (benchmark sweeps). A table launch that the GPU cannot hold (Triton's ``OutOfResources``, e.g. less
    shared memory than the H200 it was measured on) is retried with the plain launch of
    ``generic_config``; ``OutOfResources`` is raised when that does not fit either.
    """
    require_triton()
    rows, n = x2.shape
    if b != n:
        x2 = x2.contiguous().view(rows * (n // b), b)
    out = torch.empty_like(x2, memory_format=torch.contiguous_format)
    key = None
    if config is None and x2.is_cuda:  # a launch made before for inputs that specialize alike
        key = _prepared_key(x2, inverse, scale, sign_bits)
        if _PREPARED.run(key, x2, out, out if sign_bits is None else sign_bits):
            return out if b == n else out.view(rows, n)
    plan = kernel_plan(b, x2.element_size(), config, sign_bits is not None, x2.dtype == torch.float16)
    if plan is None:
        raise ValueError(f"n={b} does not fit the Triton FWHT kernels (power-of-two factor above 2**{MAX_POW2_BITS})")
    if out.numel() == 0:
        return out.view(rows, n)
    try:
        prepared, runtime = _launch_plan(x2, out, plan, b, inverse, scale, sign_bits)
    except OutOfResources:  # a launch of the table (measured on an H200) that this GPU cannot hold
        basic = None if config is not None else kernel_plan(b, x2.element_size(), generic_config(b, x2.element_size()))
        if basic is None or basic == plan:
            raise
        _RETRIED.add((b, x2.dtype, sign_bits is not None, x2.device))
        prepared, runtime = _launch_plan(x2, out, basic, b, inverse, scale, sign_bits)
    _PREPARED.add(key, prepared, runtime[3:])
    return out if b == n else out.view(rows, n)
