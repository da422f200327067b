"""Fused Triton kernel for the HLWQ pipeline (docs/design.md §1) and its launcher.

A block of ``B`` inputs of one row is held in registers by ``HLWQLaunch.halves`` threads (the
kernel's ``H``): by default two lanes, each holding half the block, or one thread holding all of it.
A tile is ``ROWS = 32 * num_warps / H`` rows × one block, loaded through a pointer tensor ``[H, ROWS,
B / H / VEC, VEC]`` (``VEC`` consecutive inputs a 16-byte access; Triton 3.6 gives that tensor the layout with
the halves on lane bit 0, the rows on the other lanes and the warps, and a half's chunks in one
thread). Everything per block then runs inside the thread, with no shared memory and no tensor
cores; the two halves meet only in the top butterfly of each rotation (one warp shuffle a value,
through ``tl.flip``) and in the block's and groups' reductions:

1. the block's absmax and a power-of-two scale ``2**s`` that brings it into [2**14, 2**15) (exact;
   it keeps the sum of squares away from overflow and underflow), the L2 norm from the sum of
   squares of the scaled block,
2. the rotation ``y = H (x 2**s) / ||x 2**s||`` (the normalized rotation of the unit-norm block
   times ``sqrt(B)``) as ``log2(B)`` stages of fp32 butterflies, in registers (``tl.split`` /
   ``tl.join`` on the size-2 dimension of one index bit, moved last by a permutation; every
   partial sum is rounded to fp32, so a sum that cancels exactly leaves a few fp32 ulps),
3. the Lloyd–Max code = number of thresholds ``t`` with ``y >= t``, keyed by the top bits of ``y``'s
   bit pattern (``_key_table``: the count of thresholds below the key's interval): where every
   interval holds at most one threshold, three float32 rows indexed by the key itself give the next
   threshold and the levels on either side of it, and the key table the count below it (one gather
   step, then one comparison), exact for every non-NaN float32 ``y``; otherwise the count is
   gathered first and compared with the thresholds after it,
4. ``W' = (H levels[code]) * norm / B`` with the same butterflies on the fp32 levels, rounded to the
   weight dtype (compiled: the hardware's round-to-nearest-even conversion; in the interpreter the
   bit-exact helper of ``hlwq_kernels.ops._jit``),
5. optionally symmetric INT4 of ``W'`` per group of ``G`` inputs with the compressed-tensors rule
   (the helpers of ``hlwq_kernels.ops._jit``: ``scale = dtype(absmax / 7.5)``, 0 → the dtype's eps,
   ``q = round_half_even(clamp(W' / scale, -8, 7))`` with an IEEE division: ``div_exact`` after
   scaling the group and its scale by the power of two that brings the scale into [1, 2)), packed
   8 nibbles per int32, column j → word j // 8, nibble j % 8, stored q + 8.

Outputs are chosen with constexpr flags: codes (uint8) + norms (fp32), ``W'`` (weight dtype),
INT4 packed + scales. A non-finite block norm (NaN/Inf weights) sets ``flag[0] = 1``; the launcher
reads it back (one device sync) only when asked to check. Device tables (the code lookup, the
thresholds and levels) are built once per codebook and device. Blocks of 256 hold 128 fp32 values a
thread (256 with one thread a block, which spills registers: correct, slower).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import numpy as np
import torch

from hlwq_kernels.ops._jit import (
    div_exact,
    int4_absmax_scale,
    pack_codes,
    pow2_scale,
    reciprocal,
    round_to_dtype,
)
from hlwq_kernels.ops._triton import (
    PreparedCalls, cdiv, launch, next_power_of_2, require_triton, tensor_key, tl, triton,
)
from hlwq_kernels.ops.fwht_triton import butterflies
from hlwq_kernels.ops.lloyd_max import Codebook
from hlwq_reference.numpy.int4 import QMAX

__all__ = ["HLWQFused", "HLWQLaunch", "hlwq_fused"]

_EPS = {dt: torch.finfo(dt).eps for dt in (torch.bfloat16, torch.float16, torch.float32)}
_PREPARED = PreparedCalls()  # launches by weight kind, codebook tables and options (_triton.PreparedCalls)
_QMAX = tl.constexpr(QMAX)
_MAX_KEY_BITS = 16  # key tables of at most 2**16 bytes


@triton.jit
def _block_rotation(v, STEPS: tl.constexpr, NUM_STEPS: tl.constexpr, BITS: tl.constexpr):
    """Unnormalized Sylvester Hadamard transform of every block of a ``[H, ROWS, C, V]`` tile:
    butterflies on each index bit of a half block in registers, then with ``H == 2`` on the top bit,
    between the halves (``tl.flip`` along axis 0 swaps them exactly; one rounding a sum)."""
    v = butterflies(tl.reshape(v, BITS), STEPS, NUM_STEPS, v.shape)
    if v.shape[0] == 2:
        sign = (1 - 2 * tl.arange(0, 2)).to(tl.float32)[:, None, None, None]
        v = tl.fma(sign, v, tl.flip(v, 0))  # first half a + b, second half a - b
    return v


@triton.jit
def _lloyd_code(y, key_ptr, cell_ptr, SHIFT: tl.constexpr, K: tl.constexpr, L: tl.constexpr,
                CODES: tl.constexpr, LEVELS: tl.constexpr):
    """``(code, levels[code])`` for float32 ``y``, ``code = #{t : y >= t}`` (int32), from the tables
    of ``_tables`` (``CODES`` / ``LEVELS``: which of the two the caller uses). With ``K == 1`` the
    three rows are indexed by the key of ``y`` (its bit pattern shifted by ``SHIFT``): one gather
    step at one address plus constant offsets reads the first threshold at or above the key's
    interval and the levels either side of it, the count of thresholds below it comes from the
    byte-wide key table at the same key (a few cache lines, where an int32 row spreads over four
    times as many), and one comparison picks the code and the level (what the caller does not use
    is not loaded). Otherwise the count is gathered first and compared with the ``K`` thresholds
    after it."""
    key = y.to(tl.uint32, bitcast=True) >> SHIFT
    if K == 1:
        cell = cell_ptr + key
        up = y >= tl.load(cell)
        # a result the caller does not use is any tensor of its shape and type, so nothing is loaded for it
        code = tl.load(key_ptr + key).to(tl.int32) + up.to(tl.int32) if CODES else key.to(tl.int32)
        level = tl.where(up, tl.load(cell + 2 * L), tl.load(cell + L)) if LEVELS else y
        return code, level
    base = tl.load(key_ptr + key).to(tl.int32)
    code = base
    for k in tl.static_range(K):
        code += (y >= tl.load(cell_ptr + base + k)).to(tl.int32)
    return code, tl.load(cell_ptr + L + code)


@triton.jit
def _scaled_quotient(x, s):
    """``x / s`` (IEEE) for groups ``x [H, ROWS, GPH, G]`` and any positive scales ``s [H, ROWS, GPH]``:
    both scaled by the power of two that brings ``s`` into [1, 2) (exact; an ``x`` that then
    underflows has a quotient far below 1/4), where ``div_exact`` holds."""
    e = tl.minimum(tl.maximum((s.to(tl.int32, bitcast=True) >> 23) & 0xFF, 1), 253)
    p = ((254 - e) << 23).to(tl.float32, bitcast=True)  # 2**(127 - e)
    s2 = s * p
    return div_exact(x * p[:, :, :, None], s2[:, :, :, None], reciprocal(s2)[:, :, :, None])


@triton.jit
def _row_tile(ptr, rows, row_len, col0, H: tl.constexpr, C: tl.constexpr, V: tl.constexpr):
    """Pointers ``[H, ROWS, C, V]`` to the elements ``col0 + h * C * V + c * V + v`` of the given rows
    (``H`` halves of ``C * V`` elements, ``V`` consecutive elements a 16-byte access). Triton 3.6
    lays such a tensor out with the halves on lane bit 0, the rows on the other lanes and the warps,
    and a half's chunks in one thread (the dims after the contiguous one get threads in order)."""
    return ptr + rows.to(tl.int64)[None, :, None, None] * row_len + col0 + (
        tl.arange(0, H)[:, None, None, None] * (C * V) + tl.arange(0, C)[None, None, :, None] * V
        + tl.arange(0, V)[None, None, None, :])


@triton.jit
def _block_sum(v):
    """Per-row sums of a ``[H, ROWS, C, V]`` tile -> ``[ROWS]`` (chunks, the elements of a chunk, halves)."""
    return tl.sum(tl.sum(tl.sum(v, axis=2), axis=2), axis=0)


@triton.jit
def _hlwq_kernel(
    w_ptr, key_ptr, cell_ptr,
    codes_ptr, norms_ptr, wp_ptr, packed_ptr, scale_ptr, flag_ptr,
    N, K, num_tiles, inv_b, eps,
    SHIFT: tl.constexpr, NK: tl.constexpr, L: tl.constexpr, B: tl.constexpr, ROWS: tl.constexpr, G: tl.constexpr,
    H: tl.constexpr, VEC: tl.constexpr, BITS: tl.constexpr, STEPS: tl.constexpr, NUM_STEPS: tl.constexpr,
    HW_ROUND: tl.constexpr, STORE_CODES: tl.constexpr, STORE_WP: tl.constexpr, STORE_INT4: tl.constexpr,
):
    DT: tl.constexpr = w_ptr.dtype.element_ty
    HB: tl.constexpr = B // H  # a half block (the whole block when H == 1)
    CH: tl.constexpr = HB // VEC
    WV: tl.constexpr = 4 if HB >= 32 else HB // 8  # INT4 words a 16-byte store
    CW: tl.constexpr = 16 if HB >= 16 else HB  # codes a 16-byte store
    GW: tl.constexpr = G if G < HB else HB  # a group's inputs in one half
    CROSS: tl.constexpr = G > HB  # a group spans both halves
    kb = K // B
    r = tl.arange(0, ROWS)
    half = tl.arange(0, H)[:, None, None]
    for t in range(tl.program_id(0), num_tiles, tl.num_programs(0)):
        rows = (t // kb) * ROWS + r
        cb = t % kb
        rmask = rows < N
        m4 = rmask[None, :, None, None]
        x = tl.load(_row_tile(w_ptr, rows, K, cb * B, H, CH, VEC), mask=m4, other=0.0).to(tl.float32)
        # 1. exact power-of-two scale that brings the absmax into [2**14, 2**15)
        pw = pow2_scale(tl.max(tl.max(tl.max(tl.abs(x), axis=3), axis=2), axis=0))
        xs = x * pw[None, :, None, None]
        ss = _block_sum(xs * xs)  # <= B * 2**30 when finite
        bad = tl.max((~(ss < 1.0e30)).to(tl.int32), axis=0)
        if bad > 0:
            tl.atomic_max(flag_ptr, bad)
        norm_s = tl.math.sqrt_rn(ss)
        norm = tl.math.div_rn(norm_s, pw)
        # 2. rotation in fp32, 3. Lloyd–Max code
        y = _block_rotation(xs, STEPS, NUM_STEPS, BITS)
        y = y * reciprocal(tl.where(norm_s > 0, norm_s, 1.0))[None, :, None, None]
        code, level = _lloyd_code(y, key_ptr, cell_ptr, SHIFT, NK, L, STORE_CODES, STORE_WP or STORE_INT4)
        if STORE_CODES:
            tl.store(_row_tile(codes_ptr, rows, K, cb * B, H, HB // CW, CW),
                     tl.reshape(code.to(tl.uint8), [H, ROWS, HB // CW, CW]), mask=m4)
            tl.store(norms_ptr + rows * kb + cb, norm, mask=rmask)
        if STORE_WP or STORE_INT4:
            # 4. dequantize, inverse rotation (H^-1 = H / B), times norm, round to the weight dtype
            v = _block_rotation(level, STEPS, NUM_STEPS, BITS)
            v = v * (norm * inv_b)[None, :, None, None]
            if HW_ROUND:
                wd = v.to(DT)
                wf = wd.to(tl.float32)
            else:
                wf = round_to_dtype(v, DT)
                wd = wf.to(DT)
            if STORE_WP:
                tl.store(_row_tile(wp_ptr, rows, K, cb * B, H, CH, VEC), wd, mask=m4)
            if STORE_INT4:
                # 5. symmetric INT4, absmax / 7.5 per group of G, packed 8 per int32
                wg = tl.reshape(wf, [H, ROWS, HB // GW, GW])
                gmax = tl.max(tl.abs(wg), axis=3)  # [H, ROWS, HB / GW]
                if CROSS:
                    gmax = tl.broadcast_to(tl.max(gmax, axis=0, keep_dims=True), gmax.shape)
                sf = int4_absmax_scale(gmax, eps, DT)
                q = _scaled_quotient(wg, sf)
                # |q| <= 7.5 / (1 - 2**-8) < 8 for finite W' (the scale is absmax / 7.5 rounded, or
                # eps when that is 0): only the upper clamp can act
                words = pack_codes(tl.reshape(tl.minimum(q, _QMAX), [H, ROWS, HB // 8, 8]))  # [H, ROWS, HB / 8, 1]
                tl.store(_row_tile(packed_ptr, rows, K // 8, cb * (B // 8), H, HB // 8 // WV, WV),
                         tl.reshape(words, [H, ROWS, HB // 8 // WV, WV]), mask=m4)
                group = half * (0 if CROSS else HB // GW) + tl.arange(0, HB // GW)[None, None, :]
                smask = rmask[None, :, None] & ((half == 0) | (not CROSS))  # a group across both: stored once
                tl.store(scale_ptr + rows.to(tl.int64)[None, :, None] * (K // G) + cb * (B // G) + group, sf.to(DT),
                         mask=smask)


@dataclasses.dataclass
class HLWQFused:
    """What one launch produced (``None`` where not requested) and whether every block was finite
    (``None`` when not checked)."""

    codes: torch.Tensor | None
    norms: torch.Tensor | None
    wprime: torch.Tensor | None
    packed: torch.Tensor | None
    scale: torch.Tensor | None
    finite: bool | None


class HLWQLaunch(NamedTuple):
    """Launch parameters: warps a program, persistent programs a multiprocessor (0: one program a
    tile), a register cap for ptxas (None: its own choice) and the threads a block (``halves``: 1,
    one thread holds a whole block; 2, each of two lanes holds a half, the top butterfly one shuffle
    a value, so that a tile holds ``32 * num_warps / halves`` rows). The default, one warp with
    blocks in halves, needs no shared memory and compiles to 168 registers for INT4 and 128 for
    codes (Triton 3.6, bf16, b = 128); on an H200 it ran INT4 10-13% and codes 12-21% faster than one
    thread a block for bf16, fp16 and fp32 weights (bench/results/hlwq-h200-2026-12-02-p.md)."""

    num_warps: int = 1
    programs_per_sm: int = 0
    max_registers: int | None = None
    halves: int = 2


def _key_table(thresholds: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The code lookup of ``_lloyd_code`` for sorted float32 thresholds: ``(base, shift, k)``.

    The key of a float32 ``y`` is its bit pattern shifted right by ``shift`` (sign, exponent and
    the top ``23 - shift`` mantissa bits); its cell is the interval of floats sharing that key
    (monotone: one interval per key, the infinities and NaNs in the cells of exponent 255).
    ``base[key]`` counts the thresholds below the cell, and at most ``k`` thresholds lie in any
    cell, so ``base + #{j < k : y >= t[base + j]}`` (the thresholds padded with NaN) is exact
    for every non-NaN ``y``. The fewest mantissa bits that leave one threshold a cell, at most
    ``_MAX_KEY_BITS`` key bits.
    """
    thr = thresholds.astype(np.float32).astype(np.float64)
    for key_bits in range(9, _MAX_KEY_BITS + 1):
        shift = 32 - key_bits
        keys = np.arange(1 << key_bits, dtype=np.uint64)
        with np.errstate(invalid="ignore"):  # NaN patterns
            first = (keys << shift).astype(np.uint32).view(np.float32).astype(np.float64)
            last = (((keys + 1) << shift) - 1).astype(np.uint32).view(np.float32).astype(np.float64)
        neg = keys >= 1 << (key_bits - 1)
        lo, hi = np.where(neg, last, first), np.where(neg, first, last)
        inf = np.where(neg, -np.inf, np.inf)
        lo, hi = np.where(np.isnan(lo), inf, lo), np.where(np.isnan(hi), inf, hi)
        base = np.searchsorted(thr, lo, side="left")
        k = int((np.searchsorted(thr, hi, side="right") - base).max())
        if k <= 1:
            break
    return base.astype(np.uint8 if thr.size < 256 else np.int32), shift, max(k, 1)


@dataclasses.dataclass(frozen=True)
class _Tables:
    """A codebook's device tables: the code lookup of ``_key_table`` (``keys``) and ``cells``
    (float32 rows of ``length``). With ``k == 1`` three rows with an entry per key: the first
    threshold at or above the key's interval (NaN above the last: no comparison with it holds), the
    level below that threshold and the level above it (the count of thresholds below the interval is
    ``keys`` itself). Otherwise three rows: the thresholds padded with NaN, the level of each code and
    the level of the next code."""

    keys: torch.Tensor
    cells: torch.Tensor
    length: int
    shift: int
    k: int


def _tables(cb: Codebook, device: torch.device) -> _Tables:
    def build() -> _Tables:
        base, shift, k = _key_table(np.asarray(cb.thresholds))
        levels = np.asarray(cb.levels, dtype=np.float32)
        n = levels.size
        length = base.size if k == 1 else next_power_of_2(n + k)
        rows = np.full((3, n + k), np.nan, dtype=np.float32)
        rows[0, : n - 1] = np.asarray(cb.thresholds, dtype=np.float32)
        rows[1, :n] = levels
        rows[2, : n - 1] = levels[1:]
        if k == 1:  # per key: the next threshold, the levels either side of it
            cells = rows[:, base]
        else:
            cells = np.full((3, length), np.nan, dtype=np.float32)
            cells[:, : n + k] = rows
        return _Tables(torch.from_numpy(base).to(device), torch.from_numpy(cells.reshape(-1)).to(device), length,
                       shift, k)

    return cb.cached(("hlwq", device), build)


@functools.lru_cache(maxsize=64)
def _rotation_plan(b: int, rows: int, vec: int, halves: int) -> dict:
    """constexprs of ``_block_rotation`` for blocks of b in ``halves`` halves, tiles of ``rows`` rows
    and 16-byte accesses of ``vec`` elements: the tile ``[halves, rows, b / halves / vec, vec]`` seen
    as one size-2 dimension per index bit of a half block (after the halves and the rows), and the
    permutations that move each bit last in turn, then restore the order."""
    bits = (b // halves).bit_length() - 1
    natural = ["h", "r"] + list(reversed(range(bits)))
    steps, cur = [], natural
    for bit in range(bits):
        nxt = [d for d in cur if d != bit] + [bit]
        steps.append(tuple(cur.index(d) for d in nxt))
        cur = nxt
    steps.append(tuple(cur.index(d) for d in natural))
    return {"H": halves, "VEC": vec, "BITS": (halves, rows) + (2,) * bits, "STEPS": tuple(steps),
            "NUM_STEPS": len(steps) - 1}


@functools.lru_cache(maxsize=None)
def _flag_sink(device: torch.device) -> torch.Tensor:
    """A flag nobody reads, for launches that do not check finiteness."""
    return torch.zeros(1, dtype=torch.int32, device=device)


@functools.lru_cache(maxsize=None)
def _sm_count(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def hlwq_fused(
    w: torch.Tensor,
    codebook: Codebook,
    block_size: int,
    *,
    codes: bool = False,
    wprime: bool = False,
    int4_group: int | None = None,
    check_finite: bool = True,
    config: HLWQLaunch | None = None,
) -> HLWQFused:
    """Run the fused kernel on a contiguous 2-D ``w`` (bf16/fp16/fp32, CUDA or CPU = interpreter).

    ``int4_group`` (dividing ``block_size``, multiple of 8) requests INT4 packed + scales.
    ``check_finite`` reads the kernel's non-finite flag back (one device sync); otherwise ``finite``
    is None and nothing is copied between host and device. ``config`` overrides the launch
    parameters (benchmark sweeps).
    """
    require_triton()
    n, k = w.shape
    b = block_size
    if int4_group is not None and (b % int4_group or int4_group % 8):
        raise ValueError(f"int4_group={int4_group} must divide block_size={b} and be a multiple of 8")
    dev = w.device
    cfg = config or HLWQLaunch()
    if cfg.halves not in (1, 2):
        raise ValueError(f"HLWQLaunch.halves must be 1 or 2, got {cfg.halves}")
    rows = (32 * cfg.num_warps if w.is_cuda else 16) // cfg.halves  # the interpreter: small tiles
    tables = _tables(codebook, dev)
    g = int4_group or b
    out = HLWQFused(
        codes=torch.empty((n, k), dtype=torch.uint8, device=dev) if codes else None,
        norms=torch.empty((n, k // b), dtype=torch.float32, device=dev) if codes else None,
        wprime=torch.empty_like(w) if wprime else None,
        packed=torch.empty((n, k // 8), dtype=torch.int32, device=dev) if int4_group else None,
        scale=torch.empty((n, k // g), dtype=w.dtype, device=dev) if int4_group else None,
        finite=None,
    )
    flag = torch.zeros(1, dtype=torch.int32, device=dev) if check_finite else _flag_sink(dev)
    num_tiles = cdiv(n, rows) * (k // b)
    tensors = (w, tables.keys, tables.cells, out.codes if codes else flag, out.norms if codes else flag,
               out.wprime if wprime else flag, out.packed if int4_group else flag, out.scale if int4_group else flag,
               flag)
    tail = (n, k, num_tiles, 1.0 / b, _EPS[w.dtype])
    key = None
    if w.is_cuda:  # the tables' shapes and constexprs, the options and w decide the launch
        key = (tensor_key(w), tensor_key(tables.keys), tensor_key(tables.cells), tables.shift, tables.k, b, g, codes,
               wprime, int4_group is not None, cfg)
    if not _PREPARED.run(key, *tensors):
        programs = num_tiles
        if w.is_cuda and cfg.programs_per_sm:
            programs = min(num_tiles, cfg.programs_per_sm * _sm_count(dev))
        elif not w.is_cuda:
            programs = min(num_tiles, 2)  # interpreter: few programs, each walks the tile loop
        prepared = launch(
            _hlwq_kernel, (programs,), dev, *tensors, *tail,
            SHIFT=tables.shift, NK=tables.k, L=tables.length, B=b, ROWS=rows, G=g,
            **_rotation_plan(b, rows, min(b // cfg.halves, 16 // w.element_size()), cfg.halves), HW_ROUND=w.is_cuda,
            STORE_CODES=codes, STORE_WP=wprime, STORE_INT4=int4_group is not None,
            **({"maxnreg": cfg.max_registers} if cfg.max_registers and w.is_cuda else {}), num_warps=cfg.num_warps,
        )
        _PREPARED.add(key, prepared, tail)
    if check_finite:
        out.finite = not bool(flag.item())
    return out
