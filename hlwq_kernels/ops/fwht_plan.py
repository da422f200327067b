"""Launch planning for the Triton FWHT kernels (``hlwq_kernels.ops.fwht_triton``): plain Python, no Triton.

A plan says which bits of a tile's (row, column) index a thread holds in registers and which its
lanes and warps hold, round by round, and turns that into the permutations, pointer layouts and
launch geometry the kernels take as constexprs. The launch tables (by row length, element size and
whether signs are applied) were measured on an H200 (bench/results/fwht-*-h200-*.md); ``config=``
overrides them (``bench/gpu_fwht.py --sweep``).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from hlwq_kernels.ops._triton import cdiv, next_power_of_2
from hlwq_kernels.ops.hadamard import hadamard_factors, hadamard_matrix, paley2_core

__all__ = ["kernel_plan", "generic_config", "hadamard_codes", "Pow2Config", "DenseConfig", "SplitConfig", "PaleyConfig",
           "KernelPlan", "MAX_POW2_BITS"]

MAX_POW2_BITS = 16  # the power-of-two factor 2^m of a supported size, m <= 16
_MIN_DOT = 16  # smallest tl.dot dimension
_MIN_WGMMA = 64  # rows of an MMA output that Hopper's warpgroup MMA takes (fewer: mma.sync)
_MAX_REGISTER_K_BITS = 7  # H_K in registers (Pow2Config for a K * 2^m size): K <= 128

Bit = tuple[str, int]  # ("r", i): bit i of the tile's row; ("k", i): of the K index; ("c", i): of the column


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
    then warps go along the contiguous dimension, then along the others in index order. That is Triton 3.6's rule
    (the GPU image's); 3.7 to 3.9 take the others in reverse index order, so their layouts differ from the plans
    (docs/fwht.md, "Launch")."""
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
    """A launch of the power-of-two kernel; given for a size K * 2^m (K <= 128), the same kernel with H_K applied
    in registers first (``_pow2_plan``), one row a tile, ``elems_per_thread`` unused."""

    num_warps: int
    elems_per_thread: int
    stages: int  # 1: one tile per program; > 1: persistent programs prefetching `stages - 1` tiles
    programs_per_sm: int  # > 0: a persistent grid of this many programs per SM
    prefetch: bool = False  # each persistent program loads its next tile into registers first
    max_regs: int = 0  # registers per thread the compiler may use (0: its own choice)
    words: bool = False  # with prefetch, 16-bit rows read as int32 words (see _fwht_pow2_kernel's WORDS)
    l2_ahead: bool = False  # persistent programs of one-row tiles: the next row prefetched into L2 (one bulk request)
    split: bool = False  # K * 2^m sizes: the outputs of H_K in a power-of-two head and tail, each with its butterflies
    load_last: bool = False  # persistent, no prefetch: the next row loaded after this one's store, under a branch
    wide_store: bool = False  # K * 2^m sizes: stored 16 bytes an access, lanes on the next columns (see _pow2_plan)
    bulk: int = 0  # persistent one-row tiles without prefetch: 1 or 2 rows ahead in shared memory (_fwht_pow2_kernel)
    hold_signs: bool = False  # persistent: the forward transform's sign bits (one vector) loaded once a program
    phases: int = 1  # K * 2^m sizes: H_K's groups of inputs in this many phases (a power of two)
    packed_signs: bool = False  # 16-bit rows with hold_signs: the bits packed as 32-bit rows' always are (a bit an
    # element; rows read as words: a word's two bits side by side in the packed word's halves), not held as loaded
    group: int = 0  # K * 2^m sizes: 0, H_K's inputs in groups of four by their index bits (_quad_products); 2 to 6,
    # in groups of this many consecutive inputs, each output adding or subtracting its terms (_grouped_products)


class DenseConfig(NamedTuple):
    num_warps: int
    elems_per_thread: int
    stages: int  # > 1 with prefetch: rows loaded ahead by the loop's pipeline (shared memory), not into registers;
    # without prefetch: the depth of the contraction loop's software pipeline
    programs_per_sm: int
    ki: int  # contraction chunk of H_K
    ko: int  # output chunk of H_K (rows of H_K per tile)
    prefetch: bool = False  # H_K in one chunk each way (K padded <= 128, or split), loaded once; next rows ahead
    max_regs: int = 0  # registers per thread the compiler may use (0: its own choice)
    split: bool = False  # prefetch only: K as a power-of-two head + a padded tail (68 = 64 + 16), see _dense_split
    hoist: bool = False  # prefetch only: row and store offsets kept in registers across tiles
    ko_split: int = 1  # 1 or 2 (prefetch only, K not split): H_K's output rows in this many chunks, one product each
    fp16_pieces: bool = False  # prefetch only, fp32 rows: two float16 pieces of each row scaled by a power of two
    rows_first: bool = False  # prefetch only: the product as rows.T @ H_K.T, the rows the MMA's operand in registers
    tf32_pieces: bool = False  # fp32 rows: two tf32 pieces, x truncated to tf32, the rest rounded to it (H_K in fp32)


class SplitConfig(NamedTuple):
    """A size K * 2^m run by the dense kernel with k_bits of the power-of-two factor moved into the
    tensor-core product: H_K kron H_{2^k_bits} (the order K * 2^k_bits matrix, K index most
    significant) on the tensor cores, then 2^(m - k_bits) butterflies (H_{2^a} kron H_{2^b} =
    H_{2^(a+b)}, natural order). For a power of two (K = 1) that is the Sylvester H_{2^k_bits};
    for 14336 = 28 * 2^9, k_bits = 2 runs it as 112 * 2^7 (K padded to 128, not 32)."""
    k_bits: int
    dense: DenseConfig


class PaleyConfig(NamedTuple):
    """A size K * 2^m whose H_K has the Paley II form (``hadamard.paley2_core``: K = 36, 76, 148, 924, ...) run
    through its core C of order K / 2: ``launch`` a (non-prefetching) DenseConfig, C on the tensor cores and
    2^(m + 1) butterflies (``_fwht_dense_kernel``'s PALEY), or a Pow2Config (K <= 128), C + I in registers
    (``_fwht_pow2_kernel``'s PALEY); half the products or adds of H_K. ``pair_apart`` (a Pow2Config, K <= 256): the
    pair bit of the K index is not held in registers: C + I runs on the K / 2 indices a thread holds, and the pair
    is one more butterfly (``_fwht_pow2_kernel``'s PAIR_APART), so a thread holds half the values."""
    launch: DenseConfig | Pow2Config
    pair_apart: bool = False


# Launch table (measured on an H200, bench/results/fwht-h200-2026-12-01.md): by log2(row length).
_POW2_TABLE = {m: Pow2Config(4, 32 if m <= 10 else 64, 1, 0) for m in range(0, 14)}
_POW2_TABLE.update({14: Pow2Config(8, 64, 1, 0), 15: Pow2Config(8, 64, 1, 0), 16: Pow2Config(16, 128, 1, 0)})
# 16-bit rows of 2^14 and 2^15: persistent programs that load their next row into registers first
# (bench/results/fwht-h200-2026-12-02.md: 2^14 83.9% -> 90.8% of clone, 2^15 61.9% -> 73.1%)
# 2^15 reads its rows as int32 words (bench/results/fwht-pow2-h200-2026-12-02-c.md: 73.2% -> 88.5%;
# the same at 2^14 measured 89.3-89.7% against 90.8% without)
# Short rows (2^7 .. 2^10, 16-bit rows also 2^11 and 2^12): one or two warps a program (many small programs)
# instead of four; in one process fp32 97.9-99.1% -> 100.3-100.9% of clone, bf16 95.2-101.3% -> 99.3-103.0%,
# fp16 95.1-101.2% -> 98.6-102.5%, 16-bit 2^12 95.4-96.1% -> 96.1-97.5%, with signs too; 16-bit 2^11 (two rows
# of 64 values a thread; it had four warps of 32 values since some machines ran four warps of 64 at 81-84%,
# bench/results/fwht-dense-h200-2026-12-02-j.md) 95.8-98.0% -> 100.1-101.6% on two machines
# (bench/results/fwht-short-h200-2026-12-03-v.md)
_POW2_TABLE_16BIT = {7: Pow2Config(1, 32, 1, 0), 8: Pow2Config(1, 32, 1, 0), 9: Pow2Config(1, 32, 1, 0),
                     10: Pow2Config(1, 16, 1, 0), 11: Pow2Config(2, 64, 1, 0), 12: Pow2Config(2, 16, 1, 0),
                     14: Pow2Config(8, 64, 1, 2, True, 128), 15: Pow2Config(8, 64, 1, 1, True, 0, True)}
_POW2_TABLE_FP32 = {m: Pow2Config(1, 16, 1, 0) for m in range(7, 11)}
# float16 rows of 2^14: the bf16 launch's register cap costs fp16 (its conversions to fp32 take more
# registers) 58% of clone; a persistent launch without prefetch runs at 90%
# (bench/results/fwht-anchors-h200-2026-12-02-e.md)
_POW2_TABLE_FP16 = {**_POW2_TABLE_16BIT, 14: Pow2Config(8, 64, 2, 2)}
# Powers of two with signs= (bfloat16 and fp32 rows, by element size and m), where the launch without signs slowed
# down with the sign bits loaded with every row: persistent programs that hold them (fp32 a bit an element,
# ``hold_signs``); fp32 2^15 52.1-52.2 -> 90.6-91.0% of clone, 2^14 82.9-84.2 -> 89.8-90.9%, bf16 2^14 86.6 -> 89.1%
# and 87.3 -> 89.8% (bench/results/fwht-pow2-signs-h200-2026-12-04-l.md, sweeps l1, l2 and l4)
# bf16 2^15 with signs=: the held sign bits packed (packed_signs), 77.6 -> 82.5% (pass q, sweep q2)
_POW2_TABLE_SIGNS = {(4, 15): Pow2Config(8, 64, 1, 1, hold_signs=True), (4, 14): Pow2Config(8, 64, 1, 2, hold_signs=True),
                     (2, 14): Pow2Config(8, 64, 1, 2, l2_ahead=True, load_last=True, hold_signs=True),
                     (2, 15): Pow2Config(8, 64, 1, 1, True, 0, True, hold_signs=True, packed_signs=True)}
_DENSE_TABLE = {2: DenseConfig(4, 64, 3, 0, 64, 128), 4: DenseConfig(4, 64, 3, 0, 32, 128)}  # by element size
# 16-bit rows with K <= 128, by the elements of one padded row block (K padded to a power of two,
# times 2^m): prefetching launches (sweep on the H200, bench/results/fwht-h200-2026-12-02.md: 3584
# 69.7% -> 79.8% of clone, 4864 46.7% -> 68.8%, 9728 52.2% -> 66.0%, 13824 68.9% -> 72.2%, 14336
# 44.3% -> 73.3%, 17408/18432/27648/28672 +1 to +5 points)
_DENSE_TABLE_16BIT = {4096: DenseConfig(8, 64, 1, 2, 0, 0, True, 128), 8192: DenseConfig(4, 64, 1, 3, 0, 0, True),
                      16384: DenseConfig(8, 64, 1, 2, 0, 0, True, 128), 32768: DenseConfig(8, 64, 1, 1, 0, 0, True)}
# Measured sizes (the LLM dims; sweeps on the H200, bench/results/fwht-dense-h200-2026-12-02-c.md), by
# (element size, n), ahead of the tables above: K split into head + tail where that pads less (4864,
# 8960, 9728, 18432, 18944), offsets hoisted where that measured faster, fp32 prefetching too; rows
# loaded ahead by the loop's pipeline (stages 3) where that measured faster than the register prefetch
# (bench/results/fwht-dense-h200-2026-12-02-d.md: bf16 8960 68% -> 82-87% of clone, 13824 75% -> 80-83%,
# 18944 55% -> 72-75%, 17408 47% -> 64% with the head's products unchained; fp32 14336 54% -> 73%);
# SplitConfig: bits of 2^m moved into the tensor-core product where that measured faster
# (bench/results/fwht-dense-h200-2026-12-02-e.md: bf16 3584 as 56*64 79% -> 95%, 14336 as 112*128
# 72% -> 84%, 17408 as 136*128 63% -> 78%, 18432 as 144*128 58% -> 83%, 28672 as 112*256 53% -> 56%);
# fp32 28672: H_K's output rows in two products (ko_split), rows ahead by the loop's pipeline
# (bench/results/fwht-dense-h200-2026-12-02-f.md: 37.8% -> 50.7%);
# fp32 8960, 13824 (4864 and 9728 until tf32_pieces, below): two fp16 pieces of each row, scaled by a power of two,
# instead of three bf16 ones (fp16_pieces: a third fewer products and piece buffers, so 8960-13824 pipeline at stages 3;
# bench/results/fwht-dense-h200-2026-12-02-j.md: 66.9 -> 74.6%, 46.9 -> 59.1%, 41.7 -> 51.8%, 45.7 -> 66.6%);
# fp32 4864, 9728, 14336, 17408, 18432, 27648: two tf32 pieces (tf32_pieces, the rows and H_K in fp32; 4864 and 9728
# with K split and the rows the MMA's first operand, 18432 with 4 pipeline stages): 77.0 -> 81.2%, 50.1 -> 67.6%,
# 73.3 -> 80.6%, 41.2 -> 43.7%, 44.7 -> 47.0%, 38.4 -> 42.0% in one process per size; the other fp32 sizes ran
# slower so (bench/results/fwht-tf32-h200-2026-12-03-y.md);
# fp32 17408, 18432 (as 72 * 256), 27648: the plain launch (rows re-read from L2 for each chunk of H_K's output
# rows) with contraction chunks of 16 and output chunks of 32: 36.1 -> 38.9-39.3%, 37.6 -> 41.8%, 34.1 -> 36.9-37.0%
# in two processes on two machines (bench/results/fwht-dense-h200-2026-12-03-w.md);
# 16-bit 11008 (344 * 32) and 29568 (924 * 32): the plain launch with four rows a tile (K padded to 384 and 1024
# is too large to keep H_K in a program) and deeper contraction pipelines, 5 stages of 32 and 3 of 64: with the
# rows loaded as the product's operand (_dense_operand) 38.7-40.8% -> 44.6-47.4% and 18.4-18.7% -> 23.3-24.7% of
# clone, 30.9-31.1% and 14.7% before that change (bench/results/fwht-dense-h200-2026-12-03-x.md);
# _DENSE_TABLE_SIGNS: with signs= (bf16 28672: the split launch spills with the sign bits held; fp32 28672: the
# flip goes through registers, so the pipelined rows need their own buffers: 322 KiB of shared memory; fp32
# 8960: the stages-3 launch spills with the sign bits, 24.5% of clone against 51.3% for rows ahead in registers,
# bench/results/fwht-dense-h200-2026-12-02-j.md; bf16 8960 and 9728: the rows as the MMA's operand in registers
# (rows_first), so that the flipped rows go to the tensor cores without a copy through shared memory and nothing
# spills: 48.3% -> 63.0% and 47.5% -> 72-73% of clone; 17408, 18432, 18944 the same with the rows ahead in
# registers: 44.6 -> 49.6%, 47.7 -> 52.9%, 43.8 -> 50.1%, bench/results/fwht-signs-h200-2026-12-02-m.md)
# Pow2Config entries: H_K in registers on the CUDA cores, then the butterflies (K <= 128; one row a tile; a persistent
# grid either loads its next row into registers or has it prefetched into L2), where that measured faster than the
# tensor-core launches in one process (bench/results/fwht-registers-h200-2026-12-04-a.md): fp32 3584 90.0 -> 99.9%,
# 9728 67.5 -> 79.3%, 13824 64.7 -> 67.3%, 14336 79.9 -> 86.2%, 17408 43.6 -> 62.3%, 18432 47.3 -> 73.2%,
# 27648 41.9 -> 60.0%, 28672 50.7 -> 76.9%, bf16 28672 56.0 -> 59.8%; with signs= fp32 14336 55.7 -> 93.9%,
# 18432 29.9 -> 64.6%, 28672 23.8 -> 79.2%, bf16 28672 35.0 -> 57.1% (fp32 4864 ran slower so: 75.0% against 81.7%);
# PaleyConfig entries: H_K of the Paley II form as its core C of half the order on the tensor cores, in the plain launch
# (bench/results/fwht-paley-h200-2026-12-04-b.md): bf16 29568 24.8 -> 31.7%, fp32 29568 11.1 -> 18.7-19.0%, fp32 18944
# 31.0 -> 38.4% (tf32 pieces), with signs= bf16 29568 14.1 -> 20.3%, fp32 29568 8.7 -> 16.6%; fp32 18944 with signs= keeps
# the plain launch (26.7% against 16.3-19.4% as Paley); the prefetching launches ran 20-45 points slower as Paley;
# fp32 9728 with H_K in registers through its Paley core, C + I (about K / 8 + 5 adds an element instead of K / 4 + 2.5):
# 78.6 -> 83.1%, with signs= 66.6 -> 70.9%, fp32 18432 with signs= 62.1 -> 64.5% (plain 72.5 -> 72.9%: not taken; fp32
# 4864 79.0% against its tf32 launch's 81.0%; bf16 29.7-52.1%, far below the tensor-core launches);
# Pow2Config(split=True): H_K's outputs in a power-of-two head and tail, so that the K indices K pads to are not
# transformed (bench/results/fwht-paley-h200-2026-12-04-b.md, part 3): fp32 4864 (Paley core) 79.7 -> 85.6%, 17408
# 62.6 -> 68.6%, 18432 (Paley core) 72.2 -> 77.0%, with signs= 18432 63.3 -> 84.2% (its plain entry), 9728 71.1 ->
# 80.2% (9728 plain 83.3% against 80.2% split: not taken);
# Pow2Config(load_last=True): each persistent program loads its next row after storing the current one, so that the
# row's loads are issued together instead of in waves between the arithmetic (bench/results/fwht-load-last-h200-2026-12-04-e.md,
# two processes on two machines): fp32 14336 86.4-86.6 -> 92.0-92.9%, 18432 76.6-77.4 -> 91.8-92.0%, 28672 75.8-77.0
# -> 85.5-86.2% (8 warps instead of 16), bf16 28672 59.4-59.5 -> 60.4-60.7%; with signs= fp32 9728 79.6-80.2 ->
# 81.0-81.1%, 28672 79.5 -> 81.4%, 18432 84.2 -> 84.7% (its plain entry), 27648 38.2 -> 42.8%; 4864, 9728, 13824,
# 17408 and 27648 ran as fast or slower so without signs=;
# PaleyConfig(..., pair_apart=True): the Paley core in registers with the pair bit off the registers, so that a thread
# holds K / 2 values (bench/results/fwht-load-last-h200-2026-12-04-e.md, part 2): fp32 18944 (its first registers
# launch: K = 148 is above 128) 38.3 -> 61.2%, 4864 84.9 -> 89.5%; 9728 ran level (81.8 against 82.3%) and 18432 at
# 35% against 92%; with signs= 4864 keeps the pair in registers (84.5% against 78.1-78.4%) and 18944 its dense
# launch (26.6% against 22.5-27.0%); bf16 18432 with signs= runs the fp32 entry's registers launch, the flip free as
# the row is loaded: 52.8 -> 60.8% in one process (part 4; the registers form ran slower with signs= at the other bf16
# sizes);
# Pow2Config(wide_store=True): the registers form stores 16 bytes an access (Nsight Compute on fp32 17408: the local
# and global memory queue full at 1.01 cycles an issued instruction, 0.20 with it; bench/results/
# fwht-wide-store-h200-2026-12-04-h.md, three processes): fp32 13824 66.5-66.6 -> 75.1-75.9%, 17408 68.8-69.0 ->
# 70.5-71.3%, with signs= 17408 (its plain entry) 63.3 -> 73.1-73.4%, 27648 42.1-42.8 -> 44.5-45.8%; 3584, 14336 and
# 18432 ran level (-1.2 to +0.5 points), 9728 and 27648 1.6-5.8 points slower, and with the pair apart (4864, 18944)
# at 12-13%;
# Pow2Config(bulk=2): the next two rows in shared memory, copied there by the bulk copy engine while the program
# transforms the current one (after the wide store, Nsight Compute on 17408 has its warps waiting on the row's global
# loads at 1.17 cycles an issued instruction; bench/results/fwht-wide-store-h200-2026-12-04-h.md, part 2): fp32 17408
# 71.4 -> 91.3% in one process; 18432 ran level (92.5 against 92.2%), 14336 slower (89.9 against 92.7%), 13824 (one
# program of 4 warps an SM, the buffers do not fit two) at 45% against 75%;
# Pow2Config(bulk=1): one buffer, refilled once the row is in registers, for rows that do not fit twice, and bulk with
# a Paley core, its padded columns read as zeros and its pair apart read from the buffer
# (bench/results/fwht-bulk-one-h200-2026-12-04-i.md, two processes): fp32 18944 60.0 -> 80.9-81.3% (bulk=2), 9728 82.2
# -> 87.6-87.9%, 28672 85.5 -> 89.5-90.1%, 4864 89.1 -> 91.9-92.2%, 27648 59.7 -> 65.8-66.2%, bf16 28672 59.7 ->
# 65.4-65.5% (bulk=2), 71.8% with 16 warps and one buffer; with signs= fp32 27648 43.2 -> 54.5%, 17408 73.0 -> 74.5%,
# 13824 53.0 -> 56.1%, 9728 80.6 -> 82.0%, 18944 26.8 -> 31.7%; bf16 rows through the registers form ran slower than
# the dense kernel at 9728, 13824, 14336, 17408, 18432, 18944 and 27648 (22.9-72.4% against 60.2-81.7%), fp32 18432
# level;
# Pow2Config(hold_signs=True): the forward transform's sign bits loaded once a program and kept in registers instead
# of loaded with every row (bench/results/fwht-bulk-one-h200-2026-12-04-i.md, sweep i5): with signs= fp32 17408 74.5
# -> 89.3%, bf16 18432 60.6 -> 63.4%, bf16 28672 56.6 -> 58.1% (59.1 -> 60.3% with 16 warps and one row buffer, sweep
# i6), bf16 17408 (its dense launch 49.1%) 51.7% in registers; fp32 18432 level (84.0 against 84.6%); where the held
# bits do not fit beside the row (4864, 9728, 13824, 14336, 18944, fp32 27648 and 28672) the offline sm_90 compile
# spilled 200-880 bytes a thread, so those were not run
# hold_signs with 32-bit rows: the bits packed, a bit an element (a shift and the flip's lop3 a value each row), so that
# they fit beside the row (bench/results/fwht-phases-h200-2026-12-04-j.md, sweep j1): with signs= fp32 4864 83.6 ->
# 86.8%, 9728 81.8 -> 86.0%, 28672 81.5 -> 89.6%, 13824 56.2 -> 63.8%, 27648 54.1 -> 63.1%, 18944 31.4 -> 48.4%;
# fp32 17408 and 18432 level; 16-bit rows keep their bits as loaded, two to a register (packed, bf16 17408 ran 47.7%
# against 51.7%);
# Pow2Config(phases=N): H_K's groups of four in N phases, one phase's sums live beside the outputs (K = 108: no spills
# in the offline sm_90 compile, 72 bytes a thread before; sweep j2): fp32 27648 66.3 -> 80.5%, 13824 74.7 -> 78.2% (two
# programs an SM and one row buffer, which spilled before), 17408 91.1 -> 92.3%; with signs= 13824 63.7 -> 74.3%,
# 27648 62.9 -> 76.3%, 18944 48.3 -> 57.1%, 4864 87.7 -> 88.9%; the other fp32 sizes level, bf16 rows in registers
# still slower than their dense launches; sweep j3 (against the entries before this pass in one process): 13824 75.2 ->
# 78.0% with 2 phases (77.0-77.7% with 4), 27648 66.6 -> 80.5%, 17408 90.9 -> 91.6%, with signs= 18944 30.9 -> 65.7%
# with one row buffer and K not split (57.6% with two and K split; sweep j4: 65.6% against 60.8% split), 27648 54.0 ->
# 75.3%, 13824 56.5 -> 74.1%, 28672 81.4 -> 89.8%, 4864 83.9 -> 89.5%, 9728 82.2 -> 87.8%;
# bf16 3584 with signs=: H_K in registers with the sign bits held, 76.6 -> 78.8% in one process (its dense launch 95.1%
# without signs=; the registers form ran slower with signs= at bf16 4864, 9728, 13824 and 14336: 21-61% against
# 70-75%; bench/results/fwht-pow2-signs-h200-2026-12-04-l.md, sweep l2)
# Pow2Config(group=G): H_K's inputs in groups of G consecutive ones, negations folded into the adds (pass q, one process
# each, bench/results/fwht-groups-h200-2026-12-05-q.md): groups of five fp32 13824 77.3 -> 82.0%, 27648 80.1 -> 83.6%,
# 18944 80.6 -> 86.3%, with signs= 13824 74.3 -> 79.8%, 27648 74.8 -> 80.5%, 18944 65.3 -> 68.9%; folded groups of
# four with signs= fp32 17408 88.9 -> 92.2%, 14336 94.9 -> 96.4%, bf16 3584 78.9 -> 82.2%, 28672 59.6 -> 62.4%, 17408
# 51.0 -> 54.8%, groups of three bf16 18432 63.4 -> 66.3%; group 0 kept where the folded form ran level or slower
# (fp32 17408 plain 91.7 against 89.9%); with signs= bf16 4864 with the 2 programs an SM that fit (the offline sm_90
# audit) 73.8 -> 85.3%, 27648 with stages 3 (no spills) 47.7 -> 69.5%
# bf16 9728: rows ahead by the loop's pipeline (stages 3), 2 programs an SM, 80.5 -> 93.0% (sweep q4, one process)
_DENSE_TABLE_SIZES = {
    (2, 3584): SplitConfig(1, DenseConfig(8, 32, 1, 3, 0, 0, True, 0, False, True)),
    (2, 4864): DenseConfig(4, 64, 1, 3, 0, 0, True, 0, True, True),
    (2, 8960): DenseConfig(4, 16, 3, 2, 0, 0, True, 0, True, True),
    (2, 9728): DenseConfig(4, 64, 3, 2, 0, 0, True, 0, True, True),
    (2, 11008): DenseConfig(4, 128, 5, 0, 32, 128),
    (2, 13824): DenseConfig(8, 16, 3, 1, 0, 0, True, 0, False, True),
    (2, 14336): SplitConfig(2, DenseConfig(8, 16, 3, 1, 0, 0, True, 0, False, True)),
    (2, 17408): SplitConfig(1, DenseConfig(8, 16, 3, 1, 0, 0, True, 0, True, True)),
    (2, 18432): SplitConfig(2, DenseConfig(8, 16, 3, 1, 0, 0, True, 0, True, True)),
    (2, 18944): DenseConfig(8, 16, 3, 1, 0, 0, True, 0, True, True),
    (2, 27648): DenseConfig(8, 64, 1, 1, 0, 0, True, 0, False, True),
    (2, 28672): Pow2Config(16, 64, 1, 1, bulk=1),
    (2, 29568): PaleyConfig(DenseConfig(4, 128, 5, 0, 32, 128)),
    (4, 3584): Pow2Config(2, 64, 1, 0),
    (4, 4864): PaleyConfig(Pow2Config(4, 64, 1, 2, split=True, bulk=1), pair_apart=True),
    (4, 8960): DenseConfig(4, 16, 3, 1, 0, 0, True, 0, True, True, fp16_pieces=True),
    (4, 9728): PaleyConfig(Pow2Config(4, 64, 1, 2, bulk=1)),
    (4, 13824): Pow2Config(4, 64, 1, 2, wide_store=True, bulk=1, phases=4, group=5),
    (4, 14336): Pow2Config(8, 64, 1, 1, l2_ahead=True, load_last=True),
    (4, 17408): Pow2Config(8, 64, 1, 1, split=True, wide_store=True, bulk=2, phases=4),
    (4, 18432): PaleyConfig(Pow2Config(8, 64, 1, 1, l2_ahead=True, split=True, load_last=True)),
    (4, 18944): PaleyConfig(Pow2Config(8, 64, 1, 1, split=True, bulk=2, phases=2, group=5), pair_apart=True),
    (4, 27648): Pow2Config(8, 64, 1, 1, wide_store=True, bulk=1, phases=4, group=5),
    (4, 28672): Pow2Config(8, 64, 1, 1, bulk=1),
    (4, 29568): PaleyConfig(DenseConfig(4, 64, 3, 0, 64, 128)),
}
_DENSE_TABLE_SIGNS = {(2, 28672): Pow2Config(16, 64, 1, 1, bulk=1, hold_signs=True, phases=2, group=4),
                      (2, 3584): Pow2Config(2, 64, 1, 4, l2_ahead=True, load_last=True, hold_signs=True, phases=2,
                                            group=4),
                      (2, 4864): DenseConfig(4, 64, 1, 2, 0, 0, True, 0, True, True),
                      (2, 27648): DenseConfig(8, 64, 3, 1, 0, 0, True, 0, False, True),
                      (2, 8960): DenseConfig(4, 16, 1, 2, 0, 0, True, 0, True, True, rows_first=True),
                      (2, 9728): DenseConfig(4, 16, 1, 2, 0, 0, True, 0, True, False, rows_first=True),
                      (2, 17408): Pow2Config(8, 64, 1, 1, split=True, wide_store=True, bulk=1, hold_signs=True,
                                             phases=4, group=4),
                      (2, 18432): PaleyConfig(Pow2Config(8, 64, 1, 1, l2_ahead=True, split=True, load_last=True,
                                                         hold_signs=True, group=3)),
                      (2, 18944): DenseConfig(8, 16, 1, 2, 0, 0, True, 0, True, True, rows_first=True),
                      (4, 14336): Pow2Config(4, 64, 1, 0, phases=2, group=4),
                      (4, 9728): PaleyConfig(Pow2Config(4, 64, 1, 2, split=True, bulk=1, hold_signs=True)),
                      (4, 28672): Pow2Config(8, 64, 1, 1, bulk=1, hold_signs=True),
                      (4, 8960): DenseConfig(4, 16, 1, 2, 0, 0, True, 0, True, True, fp16_pieces=True),
                      (4, 18944): PaleyConfig(Pow2Config(8, 64, 1, 1, bulk=1, hold_signs=True, group=5),
                                              pair_apart=True),
                      (4, 4864): PaleyConfig(Pow2Config(4, 64, 1, 2, split=True, bulk=1, hold_signs=True, phases=2),
                                             pair_apart=True),
                      (4, 27648): Pow2Config(8, 64, 1, 1, wide_store=True, bulk=1, hold_signs=True, phases=4,
                                             group=5),
                      (4, 13824): Pow2Config(4, 64, 1, 2, wide_store=True, bulk=1, hold_signs=True, phases=4,
                                             group=5),
                      (4, 17408): Pow2Config(8, 64, 1, 1, split=True, wide_store=True, bulk=1, hold_signs=True,
                                             phases=4, group=4)}
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
    l2_ahead: bool = False  # power-of-two kernel: the next tile prefetched into L2 where the rows allow (CUDA)
    fp16_pieces: bool = False  # dense kernel, fp32 rows: two float16 pieces (else three bfloat16 ones)
    tf32_pieces: bool = False  # dense kernel, fp32 rows: two tf32 pieces
    bulk: int = 0  # power-of-two kernel: row buffers in shared memory (Pow2Config.bulk) where the rows allow
    hold_signs: bool = False  # power-of-two kernel: one sign vector held in registers (Pow2Config.hold_signs)


def _vec_bits(elem_size: int) -> int:
    return (16 // elem_size).bit_length() - 1


def _encode(bits: list[Bit]) -> tuple[int, ...]:
    """Tile bits as _dim_offsets takes them: column bit p -> p, row bit p -> -1 - p."""
    return tuple(p if kind == "c" else -1 - p for kind, p in bits)


@functools.lru_cache(maxsize=256)
def _pow2_plan(m: int, elem_size: int, cfg: Pow2Config, k: int = 1, paley: bool = False,
               pair_apart: bool = False) -> KernelPlan:
    """Load layout: the lowest 2^v columns per thread (one 16-byte access), lanes on the next
    columns (then rows), warps on rows, then on high columns; registers on the rest. The store
    layout differs from it only in which of those high bits are on warps and which in registers:
    the high bits the load layout puts on warps and a middle round cannot take are held in
    registers by the store layout and transformed in a final round there.

    ``k > 1`` (a size k * 2^m, k <= 128 a multiple of 4): the row is padded to a power of two,
    its K index as the top column bits, which the load layout holds in registers, so that H_K runs
    there on the CUDA cores (``_hadamard_outputs``) before the butterflies of the 2^m columns.
    The tile is one row: the lanes and warps take only columns of 2^m (at least 32 * num_warps of them,
    ``elems_per_thread`` is not used; then the K index is never on warps), and 16-bit rows are read 4 elements an
    access (not 8), so that a thread holds at most 4 * K (padded) values. ``paley``: H_K through its Paley II core
    (``PaleyConfig``); ``pair_apart``: k and m are those of the core's order K / 2 (2 mod 4) and of the pair bit
    joined to the 2^m columns as their top bit. ``wide_store`` (k > 1): the store layout is the power-of-two rows'
    (16 bytes of consecutive columns a thread, lanes on the next columns; its own ``STORE_C``) where 2^m leaves room
    for it, so that a thread stores 16 bytes an access instead of one element (the load keeps the K index in
    registers, one element an access)."""
    w = cfg.num_warps.bit_length() - 1
    threads_bits = 5 + w
    kb = (k - 1).bit_length()
    if k > 1:
        if k % (2 if pair_apart else 4) or kb > _MAX_REGISTER_K_BITS or cfg.words:
            raise ValueError(f"H_{k} in registers needs K a multiple of 4 (2 for a Paley core with the pair apart) up to"
                             f" {1 << _MAX_REGISTER_K_BITS} and no words")
        if m < threads_bits:
            raise ValueError(f"H_{k} in registers needs 2^m >= 32 * num_warps columns, got 2^{m} for {cfg.num_warps}")
        v = min(2, m - threads_bits)
    else:
        v = min(_vec_bits(elem_size), m)
    mp = m + kb  # column bits of the (padded) row
    tile_bits = max(threads_bits + v, (cfg.elems_per_thread.bit_length() - 1) + threads_bits) if k == 1 else mp
    b = max(0, tile_bits - mp)
    slots = tile_bits - threads_bits  # register bits per thread
    cols, rows = _bits("c", mp)[::-1], _bits("r", b)[::-1]
    c_bits = min(mp, v + 5)
    lanes = (cols[v:c_bits] + rows)[:5]
    high = [r for r in rows if r not in lanes] + cols[c_bits:]  # on warps or in registers
    load_warps, load_regs = high[:w], high[w:]
    warp_cols = [c for c in load_warps if c[0] == "c"]
    final = warp_cols[len(warp_cols) - min(len(warp_cols), slots - v):]
    store_high = [bit for bit in high if bit not in final] + final
    store_warps, store_regs = store_high[:w], store_high[w:]
    extra_lanes = lanes[c_bits - v:]
    if k > 1:  # 2^v columns a pointer row, the lanes' columns in the first pointer dimension (see the docstring)
        c_bits, extra_lanes = v, lanes
    store_c_bits, store_lanes, store_extra, sv = c_bits, lanes, extra_lanes, v
    wide = _vec_bits(elem_size)
    if k > 1 and cfg.wide_store and v < wide and m >= wide + 5 and slots >= wide:
        # the store as the power-of-two rows': 16-byte accesses, lanes on the next columns
        sv, store_c_bits, store_extra = wide, wide + 5, []
        store_lanes = cols[sv:store_c_bits]
        rest = cols[store_c_bits:m] + cols[m:]  # the column bits first: in registers where they fit
        store_regs, store_warps = rest[:slots - sv], rest[slots - sv:]
    load_dims = (extra_lanes + load_warps, load_regs)
    store_dims = (store_extra + store_warps, store_regs)
    natural = load_dims[0][::-1] + load_dims[1][::-1] + cols[:c_bits][::-1]
    out_order = store_dims[0][::-1] + store_dims[1][::-1] + cols[:store_c_bits][::-1]
    first = (cols[:v] + load_regs, load_warps, lanes)
    last = (cols[:sv] + store_regs, store_warps, store_lanes)
    steps, conversions = _butterfly_plan(natural, cols[:m], w, first, last, out_order)
    reg_tail = next((i for i, bit in enumerate(natural[::-1]) if bit not in first[0]), len(natural))
    meta = (("N", k << m), ("BM", 1 << b), ("C", 1 << c_bits), ("STORE_C", 1 << store_c_bits),
            ("LOAD0", _encode(load_dims[0])), ("LOAD0_BITS", len(load_dims[0])),
            ("LOAD1", _encode(load_dims[1])), ("LOAD1_BITS", len(load_dims[1])),
            ("STORE0", _encode(store_dims[0])), ("STORE0_BITS", len(store_dims[0])),
            ("STORE1", _encode(store_dims[1])), ("STORE1_BITS", len(store_dims[1])),
            ("BITS", (2,) * len(natural)), ("STEPS", steps), ("NUM_STEPS", len(steps) - 1))
    perms = ()
    if k > 1:
        kbits = cols[m:][::-1]  # the K index, most significant first (in load_regs: v <= m - 5 - w)
        k_last = [bit for bit in natural if bit not in kbits] + kbits
        k_out = [bit for bit in natural if bit not in kbits] + kbits[::-1]  # as _joined returns them
        perms = (tuple(natural.index(bit) for bit in k_last), tuple(k_out.index(bit) for bit in natural))
    if cfg.load_last and (cfg.prefetch or cfg.programs_per_sm == 0):
        raise ValueError("load_last needs a persistent grid (programs_per_sm > 0) without prefetch")
    if cfg.bulk not in (0, 1, 2) or cfg.bulk is True:  # True meant two buffers before bulk became a count
        raise ValueError(f"bulk is the number of row buffers, 0, 1 or 2, got {cfg.bulk!r}")
    if cfg.bulk and (k == 1 or cfg.prefetch or cfg.load_last or cfg.programs_per_sm == 0 or b):
        raise ValueError("bulk needs a K * 2^m size on a persistent grid of one-row tiles without prefetch or "
                         "load_last")
    if cfg.hold_signs and cfg.programs_per_sm == 0:
        raise ValueError("hold_signs needs a persistent grid (programs_per_sm > 0)")
    if cfg.packed_signs and not cfg.hold_signs:
        raise ValueError("packed_signs packs held sign bits: it needs hold_signs")
    if cfg.group and (not 2 <= cfg.group <= 6 or k == 1):
        raise ValueError(f"group is 0 or the inputs of H_K a group of signed sums holds, 2 to 6, for a K * 2^m size; "
                         f"got {cfg.group} for H_{k}")
    phase_bits = cfg.phases.bit_length() - 1
    order = k // 2 if paley and not pair_apart else k  # of the ±1 matrix in registers
    groups = -(-order // cfg.group) if cfg.group else 1 << max(kb - 2 - (paley and not pair_apart), 0)
    if cfg.phases < 1 or cfg.phases & (cfg.phases - 1) or (cfg.phases > 1 and (k == 1 or cfg.phases > groups)):
        raise ValueError(f"phases must be a power of two up to the {groups} groups of {cfg.group or 4} inputs of "
                         f"H_{k} in registers, got {cfg.phases}")
    meta += (("K", k), ("KB", kb), ("K_PERMS", perms), ("PALEY", paley), ("PAIR_APART", pair_apart),
             ("LOAD_LAST", cfg.load_last), ("REG_TAIL", reg_tail), ("PHASE_BITS", phase_bits),
             ("PACK_SIGNS", cfg.packed_signs), ("GROUP", cfg.group))
    head, tail = _register_split(k) if cfg.split else (0, 0)
    t_meta = {"KB": 0, "STEPS": (), "NUM_STEPS": 0, "STORE_C": 1, "STORE0": (), "STORE0_BITS": 0, "STORE1": (),
              "STORE1_BITS": 0}
    h_bits = 0
    if tail:  # the head's butterflies and store replace the tile's, the tail's follow (``_fwht_pow2_kernel``)
        whole = cfg._replace(split=False, phases=1)  # (the parts' butterflies and stores)
        h_meta, t_meta = dict(_pow2_plan(m, elem_size, whole, head).meta), dict(_pow2_plan(m, elem_size, whole, tail).meta)
        head_fields = {name: h_meta[name] for name in _PART_FIELDS}
        head_fields["K_PERMS"] = (perms[0], h_meta["K_PERMS"][1], t_meta["K_PERMS"][1])
        meta = tuple((name, head_fields.get(name, value)) for name, value in meta)
        h_bits = h_meta["KB"]
    meta += (("K_HEAD_BITS", h_bits), ("T_BITS", t_meta["KB"]),
             *((f"T_{name}", t_meta[name]) for name in _PART_FIELDS))
    return KernelPlan("pow2", meta, cfg.num_warps, 1 << b, 1, cfg.stages, cfg.programs_per_sm, conversions,
                      cfg.prefetch, cfg.max_regs, cfg.prefetch and cfg.words and elem_size == 2 and m >= 1,
                      l2_ahead=cfg.l2_ahead and cfg.programs_per_sm > 0 and not cfg.words and b == 0, bulk=cfg.bulk,
                      hold_signs=cfg.hold_signs)


# the fields of a power-of-two plan that describe its butterflies and store (a part of a split K, _pow2_plan)
_PART_FIELDS = ("STEPS", "NUM_STEPS", "STORE_C", "STORE0", "STORE0_BITS", "STORE1", "STORE1_BITS")


def _register_split(k: int) -> tuple[int, int]:
    """(head, tail) of H_K's outputs in registers: the largest power of two below K and the rest padded to a power
    of two (at least 4), where that pads less than K to a power of two (68 = 64 + 4, 36 = 32 + 4, 76 = 64 + 16);
    else (0, 0)."""
    head = next_power_of_2(k) // 2
    tail = max(4, next_power_of_2(k - head))
    return (head, tail) if head + tail < next_power_of_2(k) else (0, 0)


@functools.lru_cache(maxsize=64)
def hadamard_codes(k: int, inverse: bool, paley: bool = False, group: int = 4) -> tuple[int, ...]:
    """H_K (H_K.T for the inverse) as ``_register_products`` takes it, or (``paley``) the ±1 matrix C + I of
    H_K's Paley II core C (order k / 2; ``hadamard.paley2_core``): per output r and group g of ``group`` inputs
    (the last one shorter where ``group`` does not divide the order), ``2^(group - 1) * (M[r, g group] < 0) + q``
    with bit i - 1 of q set where ``M[r, g group + i]`` differs from ``M[r, g group]`` (entry ``r * groups + g``)."""
    if paley:
        h = paley2_core(k).astype(int) + np.eye(k // 2, dtype=int)
    else:
        h = hadamard_matrix(k)
    h = h.T if inverse else h
    order = h.shape[0]
    codes = []
    for r in range(order):
        for g in range(0, order, group):
            q = sum(1 << (i - 1) for i in range(1, group) if g + i < order and h[r, g + i] != h[r, g])
            codes.append((1 << (group - 1)) * int(h[r, g] < 0) + q)
    return tuple(codes)


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


def _dense_chunk_plan(k_bits: int, b: int, m: int, w: int, elem_size: int,
                      rows_first: bool = False) -> tuple[tuple, tuple, int]:
    """(BITS, STEPS, conversions) of the butterflies on one accumulator [2^k_bits, 2^b * 2^m]: from
    the MMA layout (of the product [2^b * 2^m, 2^k_bits] when ``rows_first``) to the coalesced store layout."""
    natural = _bits("k", k_bits) + _bits("r", b) + _bits("c", m)
    ks, rs, cols = _bits("k", k_bits)[::-1], _bits("r", b)[::-1], _bits("c", m)[::-1]
    first = _mma_layout(cols + rs, ks, w) if rows_first else _mma_layout(ks, cols + rs, w)
    last = _coalesced_layout([ks, rs, cols], 2, _vec_bits(elem_size), w)
    steps, rounds = _butterfly_plan(natural, cols, w, first, last, natural)
    return (2,) * len(natural), steps, rounds


@functools.lru_cache(maxsize=256)
def _dense_plan(k: int, m: int, elem_size: int, cfg: DenseConfig, paley: bool = False) -> KernelPlan:
    """The dense kernel's plan for H_K ⊗ H_{2^m} (``paley``: K the order of a Paley II core, see ``PaleyConfig``)."""
    # fp32 inputs hold two or three pieces of each input chunk (16-bit, or tf32 in 32 bits): smaller tiles and chunks
    per_thread = _MAX_PER_THREAD if elem_size <= 2 else _MAX_PER_THREAD // 2
    if cfg.fp16_pieces and cfg.tf32_pieces:
        raise ValueError("a dense launch takes fp16_pieces or tf32_pieces, not both")
    if paley and cfg.prefetch:
        raise ValueError("a Paley launch runs the plain dense kernel: its DenseConfig needs prefetch=False")
    head, tail = _dense_split(k, cfg)
    if cfg.prefetch and head > _MAX_PREFETCH_K:
        raise ValueError(f"a prefetching dense launch holds H_K in registers: K={k} pads above {_MAX_PREFETCH_K}")
    ko = head if cfg.prefetch else min(head, cfg.ko)
    while ko > _MIN_DOT and ko << m > per_thread * 32 * cfg.num_warps and not cfg.prefetch:
        ko //= 2
    ko_split = cfg.ko_split if cfg.prefetch and not tail else 1
    if ko_split not in (1, 2) or ko // ko_split < _MIN_DOT:
        raise ValueError(f"ko_split={cfg.ko_split} must be 1 or 2, leaving chunks of >= {_MIN_DOT} of {ko} rows")
    num_warps = max(cfg.num_warps, next_power_of_2(cdiv((ko // ko_split + tail) << m, per_thread * 32)))
    w = num_warps.bit_length() - 1
    tile_bits = min(cfg.elems_per_thread, per_thread).bit_length() - 1 + 5 + w
    b = max(0, tile_bits - (ko.bit_length() - 1) - m, (_MIN_DOT.bit_length() - 1) - m)
    ko //= ko_split  # the rows of one product: the row block is BM rows of K, its accumulator ko of them
    ko_bits = ko.bit_length() - 1
    ki = head if cfg.prefetch else min(head, cfg.ki)
    while ki > _MIN_DOT and ki << (m + b) > _MAX_CHUNK and not cfg.prefetch:
        ki //= 2
    rows_first = cfg.rows_first and cfg.prefetch
    bits, steps, rounds = _dense_chunk_plan(ko_bits, b, m, w, elem_size, rows_first)
    bits_b, steps_b = (), ()
    if tail:
        bits_b, steps_b, _ = _dense_chunk_plan(tail.bit_length() - 1, b, m, w, elem_size, rows_first)
    meta = (("K", k), ("P", 1 << m), ("KO", ko), ("KI", ki), ("KI_STEPS", -(-(k if not tail else head) // ki)),
            ("BM", 1 << b), ("BITS", bits), ("STEPS", steps), ("NUM_STEPS", len(steps) - 1), ("KB", tail),
            ("BITS_B", bits_b), ("STEPS_B", steps_b), ("NUM_STEPS_B", max(0, len(steps_b) - 1)),
            ("HOIST", cfg.hoist and cfg.prefetch), ("KO_SPLIT", ko_split), ("ROWS_FIRST", rows_first),
            ("UNCHAINED", bool(tail) and _MIN_WGMMA <= ko < 16 * num_warps),  # see _fwht_dense_kernel
            ("PALEY", paley))
    k_chunks = 1 if tail else -(-k // (ko * ko_split))
    return KernelPlan("dense", meta, num_warps, 1 << b, k_chunks, cfg.stages, cfg.programs_per_sm, rounds,
                      cfg.prefetch, cfg.max_regs, fp16_pieces=cfg.fp16_pieces and cfg.prefetch,
                      tf32_pieces=cfg.tf32_pieces)


@functools.lru_cache(maxsize=512)
def kernel_plan(
    n: int, elem_size: int, config: Pow2Config | DenseConfig | SplitConfig | PaleyConfig | None = None,
    signs: bool = False, fp16: bool = False,
) -> KernelPlan | None:
    """The launch plan for rows of length n (elements of ``elem_size`` bytes, ``fp16``: float16 ones;
    ``signs``: with a sign vector), or None when the kernels cannot take n (its power-of-two factor
    above 2**MAX_POW2_BITS)."""
    k, p = hadamard_factors(n)
    m = p.bit_length() - 1
    if m > MAX_POW2_BITS:
        return None
    if k == 1 and not isinstance(config, SplitConfig):
        table = _POW2_TABLE_FP16 if fp16 else _POW2_TABLE_16BIT if elem_size <= 2 else _POW2_TABLE_FP32
        if config is None and signs and not fp16:
            config = _POW2_TABLE_SIGNS.get((elem_size, m))
        return _pow2_plan(m, elem_size, config or table.get(m, _POW2_TABLE[m]))
    if config is None:
        config = (signs and _DENSE_TABLE_SIGNS.get((elem_size, n))) or _DENSE_TABLE_SIZES.get((elem_size, n))
    if isinstance(config, Pow2Config):  # H_K in registers, then the butterflies
        return _pow2_plan(m, elem_size, config, k)
    if isinstance(config, PaleyConfig):
        if paley2_core(k) is None:
            raise ValueError(f"a Paley launch needs H_K of the Paley II form; K={k} of n={n} is not")
        if isinstance(config.launch, Pow2Config):
            if config.pair_apart:  # the core's K / 2 indices in registers, the pair bit above the 2^m columns
                return _pow2_plan(m + 1, elem_size, config.launch, k // 2, paley=True, pair_apart=True)
            return _pow2_plan(m, elem_size, config.launch, k, paley=True)
        if config.pair_apart:
            raise ValueError("pair_apart is a form of the registers launch (a Pow2Config), not of a DenseConfig")
        return _dense_plan(k // 2, m + 1, elem_size, config.launch, paley=True)
    if isinstance(config, SplitConfig):
        low = 4 if k == 1 else 1  # K = 1: at least H_16 on the tensor cores (the smallest dot)
        if not low <= config.k_bits < m:
            raise ValueError(f"a split of {k}*2**{m} needs {low} <= k_bits < {m}, got {config.k_bits}")
        return _dense_plan(k << config.k_bits, m - config.k_bits, elem_size, config.dense)
    if config is None and elem_size == 2 and k <= _MAX_PREFETCH_K:
        config = _DENSE_TABLE_16BIT.get(next_power_of_2(k) << m)
    return _dense_plan(k, m, elem_size, config or _DENSE_TABLE[min(elem_size, 4)])


def generic_config(n: int, elem_size: int) -> Pow2Config | DenseConfig:
    """The launch for rows of length n that no measured table entry chose: the kernels' plain launch
    (modest shared memory), which ``fwht_rows_triton`` falls back to on a GPU that cannot hold the
    table's launch."""
    k, p = hadamard_factors(n)
    return _POW2_TABLE[p.bit_length() - 1] if k == 1 else _DENSE_TABLE[min(elem_size, 4)]
