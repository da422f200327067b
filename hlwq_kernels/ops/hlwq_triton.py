"""Fused Triton kernel for the HLWQ pipeline (docs/design.md §1) and its launcher.

Each thread holds whole Hadamard blocks of ``B`` inputs of one row in its registers: a tile is
``ROWS`` rows (one a thread, lanes and warps along the rows) × one block, loaded through a pointer
tensor ``[B / 8, ROWS, 8]`` (8 consecutive inputs a 16-byte access for 16-bit weights). Everything
per block then runs inside the thread, with no shared memory, no shuffles and no tensor cores:

1. the block's absmax and a power-of-two scale ``2**s`` that brings it into [2**14, 2**15) (exact;
   it keeps the sum of squares away from overflow and underflow), the L2 norm from the sum of
   squares of the scaled block,
2. the rotation ``y = H (x 2**s) / ||x 2**s||`` (the normalized rotation of the unit-norm block
   times ``sqrt(B)``) as ``log2(B)`` stages of fp32 butterflies on the registers (``tl.split`` /
   ``tl.join`` on the size-2 dimension of one index bit, moved last by a permutation),
3. the Lloyd–Max code = number of thresholds ``t`` with ``y >= t``: one gather from a table keyed by
   the top bits of ``y``'s bit pattern (``_key_table``: the count of thresholds below the key's
   interval) and one comparison with the next threshold, exact for every non-NaN float32 ``y``,
4. ``W' = (H levels[code]) * norm / B`` with the same butterflies on the fp32 levels, rounded to the
   weight dtype (compiled: the hardware's round-to-nearest-even conversion; in the interpreter the
   bit-exact helper of ``hlwq_kernels.ops._jit``),
5. optionally symmetric INT4 of ``W'`` per group of ``G`` inputs with the compressed-tensors rule
   (the helpers of ``hlwq_kernels.ops._jit``: ``scale = dtype(absmax / 7.5)``, 0 → the dtype's eps,
   ``q = round_half_even(clamp(W' / scale, -8, 7))`` with an IEEE division (three instructions from
   the group's reciprocal where that is exact, checked per tile), packed 8 nibbles per int32,
   column j → word j // 8, nibble j % 8, stored q + 8).

Outputs are chosen with constexpr flags: codes (uint8) + norms (fp32), ``W'`` (weight dtype),
INT4 packed + scales. A non-finite block norm (NaN/Inf weights) sets ``flag[0] = 1``; the launcher
reads it back (one device sync) only when asked to check. Device tables (the fp32 levels, the
threshold lookup) are built once per codebook and device.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import numpy as np
import torch

from hlwq_kernels.ops._jit import (
    group_quotient,
    int4_absmax_scale,
    pack_codes,
    quotient_is_exact,
    reciprocal,
    round_to_dtype,
)
from hlwq_kernels.ops._triton import launch_cached, require_triton, tl, triton
from hlwq_kernels.ops.fwht_triton import _butterflies
from hlwq_kernels.ops.lloyd_max import Codebook
from hlwq_reference.numpy.int4 import QMAX

__all__ = ["HLWQFused", "HLWQLaunch", "hlwq_fused"]

_EPS = {dt: torch.finfo(dt).eps for dt in (torch.bfloat16, torch.float16, torch.float32)}
_QMAX = tl.constexpr(QMAX)
_MAX_KEY_BITS = 16  # key tables of at most 2**16 bytes


@triton.jit
def _block_rotation(v, STEPS: tl.constexpr, NUM_STEPS: tl.constexpr, BITS: tl.constexpr):
    """Unnormalized Sylvester Hadamard transform of every block of a ``[B / 8, ROWS, 8]`` tile
    (butterflies on each index bit of the block, in registers)."""
    return _butterflies(tl.reshape(v, BITS), STEPS, NUM_STEPS, v.shape)


@triton.jit
def _lloyd_code(y, key_ptr, thr_ptr, SHIFT: tl.constexpr, K: tl.constexpr):
    """``#{t : y >= t}`` (int32) for float32 ``y``, from the tables of ``_key_table``: the base count
    of the cell of ``y``'s bit pattern, then ``K`` comparisons."""
    base = tl.load(key_ptr + (y.to(tl.uint32, bitcast=True) >> SHIFT)).to(tl.int32)
    code = base
    for k in tl.static_range(K):
        code += (y >= tl.load(thr_ptr + base + k)).to(tl.int32)
    return code


@triton.jit
def _hlwq_kernel(
    w_ptr, key_ptr, thr_ptr, lev_ptr,
    codes_ptr, norms_ptr, wp_ptr, packed_ptr, scale_ptr, flag_ptr,
    N, K, num_tiles, inv_b, eps,
    SHIFT: tl.constexpr, NK: tl.constexpr, B: tl.constexpr, ROWS: tl.constexpr, G: tl.constexpr,
    BITS: tl.constexpr, STEPS: tl.constexpr, NUM_STEPS: tl.constexpr, HW_ROUND: tl.constexpr,
    STORE_CODES: tl.constexpr, STORE_WP: tl.constexpr, STORE_INT4: tl.constexpr,
):
    DT: tl.constexpr = w_ptr.dtype.element_ty
    CH: tl.constexpr = B // 8
    kb = K // B
    r = tl.arange(0, ROWS)
    col = tl.arange(0, CH)[:, None, None] * 8 + tl.arange(0, 8)[None, None, :]  # [CH, 1, 8]
    for t in range(tl.program_id(0), num_tiles, tl.num_programs(0)):
        rows = (t // kb) * ROWS + r
        cb = t % kb
        rmask = rows < N
        offs = rows.to(tl.int64)[None, :, None] * K + cb * B + col  # [CH, ROWS, 8]
        x = tl.load(w_ptr + offs, mask=rmask[None, :, None], other=0.0).to(tl.float32)
        # 1. exact power-of-two scale 2**(141 - e), e the biased exponent of the absmax, so the
        #    scaled absmax lies in [2**14, 2**15) (e >= 15 keeps the scale a normal float)
        amax = tl.max(tl.max(tl.abs(x), axis=2), axis=0)
        e = tl.maximum((amax.to(tl.int32, bitcast=True) >> 23) & 0xFF, 15)
        pw = ((268 - e) << 23).to(tl.float32, bitcast=True)
        xs = x * pw[None, :, None]
        ss = tl.sum(tl.sum(xs * xs, axis=0), axis=1)  # <= B * 2**30 when finite
        bad = tl.max((~(ss < 1.0e30)).to(tl.int32), axis=0)
        if bad > 0:
            tl.atomic_max(flag_ptr, bad)
        norm_s = tl.math.sqrt_rn(ss)
        norm = tl.math.div_rn(norm_s, pw)
        # 2. rotation in fp32, 3. Lloyd–Max code
        y = _block_rotation(xs, STEPS, NUM_STEPS, BITS)
        y = y * reciprocal(tl.where(norm_s > 0, norm_s, 1.0))[None, :, None]
        code = _lloyd_code(y, key_ptr, thr_ptr, SHIFT, NK)
        if STORE_CODES:
            tl.store(codes_ptr + offs, code.to(tl.uint8), mask=rmask[None, :, None])
            tl.store(norms_ptr + rows * kb + cb, norm, mask=rmask)
        if STORE_WP or STORE_INT4:
            # 4. dequantize, inverse rotation (H^-1 = H / B), times norm, round to the weight dtype
            v = _block_rotation(tl.load(lev_ptr + code), STEPS, NUM_STEPS, BITS)
            v = v * (norm * inv_b)[None, :, None]
            if HW_ROUND:
                wd = v.to(DT)
                wf = wd.to(tl.float32)
            else:
                wf = round_to_dtype(v, DT)
                wd = wf.to(DT)
            if STORE_WP:
                tl.store(wp_ptr + offs, wd, mask=rmask[None, :, None])
            if STORE_INT4:
                # 5. symmetric INT4, absmax / 7.5 per group of G, packed 8 per int32
                wg = tl.reshape(wf, [B // G, G // 8, ROWS, 8])
                gmax = tl.max(tl.max(tl.abs(wg), axis=3), axis=1)  # [B / G, ROWS]
                sf = int4_absmax_scale(gmax, eps, DT)
                inv = reciprocal(sf)
                q = group_quotient(wg, sf[:, None, :, None], inv[:, None, :, None], quotient_is_exact(sf, inv, gmax))
                # |q| <= 7.5 / (1 - 2**-8) < 8 for finite W' (the scale is absmax / 7.5 rounded, or
                # eps when that is 0): only the upper clamp can act
                words = pack_codes(tl.minimum(q, _QMAX))  # [B / G, G / 8, ROWS, 1]
                gi = tl.arange(0, B // G)[:, None, None, None]
                wi = tl.arange(0, G // 8)[None, :, None, None]
                wrow = rows.to(tl.int64)[None, None, :, None]
                tl.store(packed_ptr + wrow * (K // 8) + cb * CH + gi * (G // 8) + wi, words,
                         mask=rmask[None, None, :, None])
                srow = rows.to(tl.int64)[None, :]
                tl.store(scale_ptr + srow * (K // G) + cb * (B // G) + tl.arange(0, B // G)[:, None], sf.to(DT),
                         mask=rmask[None, :])


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
    """Launch parameters: warps a program (the tile holds ``32 * num_warps`` rows, one a thread),
    persistent programs a multiprocessor (0: one program a tile) and a register cap for ptxas
    (None: its own choice)."""

    num_warps: int = 4
    programs_per_sm: int = 0
    max_registers: int | None = None


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
    """A codebook's device tables: fp32 levels, the code lookup (``_key_table``) and the fp32
    thresholds padded with ``k`` NaNs (no comparison with them holds)."""

    levels: torch.Tensor
    keys: torch.Tensor
    thresholds: torch.Tensor
    shift: int
    k: int


def _tables(cb: Codebook, device: torch.device) -> _Tables:
    def build() -> _Tables:
        base, shift, k = _key_table(np.asarray(cb.thresholds))
        thr = np.concatenate([np.asarray(cb.thresholds, dtype=np.float32), np.full(k, np.nan, np.float32)])
        return _Tables(torch.tensor(cb.levels, dtype=torch.float64).to(device=device, dtype=torch.float32),
                       torch.from_numpy(base).to(device), torch.from_numpy(thr).to(device), shift, k)

    return cb.cached(("hlwq", device), build)


@functools.lru_cache(maxsize=64)
def _rotation_plan(b: int, rows: int) -> dict:
    """constexprs of ``_block_rotation`` for blocks of b and tiles of ``rows`` rows: the tile
    ``[b / 8, rows, 8]`` seen as one size-2 dimension per index bit of the block (and the rows),
    and the permutations that move each bit last in turn, then restore the order."""
    high = b.bit_length() - 1 - 3
    natural = [p for p in reversed(range(3, 3 + high))] + ["r"] + [2, 1, 0]
    steps, cur = [], natural
    for bit in range(3 + high):
        nxt = [d for d in cur if d != bit] + [bit]
        steps.append(tuple(cur.index(d) for d in nxt))
        cur = nxt
    steps.append(tuple(cur.index(d) for d in natural))
    return {"BITS": (2,) * high + (rows, 2, 2, 2), "STEPS": tuple(steps), "NUM_STEPS": len(steps) - 1}


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
    rows = 32 * cfg.num_warps if w.is_cuda else 16  # the interpreter: small tiles
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
    num_tiles = triton.cdiv(n, rows) * (k // b)
    programs = num_tiles
    if w.is_cuda and cfg.programs_per_sm:
        programs = min(num_tiles, cfg.programs_per_sm * _sm_count(dev))
    elif not w.is_cuda:
        programs = min(num_tiles, 2)  # interpreter: few programs, each walks the tile loop
    launch_cached(
        _hlwq_kernel, (programs, 1, 1), w,
        (w, tables.keys, tables.thresholds, tables.levels,
         out.codes if codes else flag, out.norms if codes else flag,
         out.wprime if wprime else flag,
         out.packed if int4_group else flag, out.scale if int4_group else flag,
         flag,
         n, k, num_tiles, 1.0 / b, _EPS[w.dtype]),
        dict(SHIFT=tables.shift, NK=tables.k, B=b, ROWS=rows, G=g, **_rotation_plan(b, rows), HW_ROUND=w.is_cuda,
             STORE_CODES=codes, STORE_WP=wprime, STORE_INT4=int4_group is not None,
             **({"maxnreg": cfg.max_registers} if cfg.max_registers and w.is_cuda else {})),
        cfg.num_warps,
    )
    if check_finite:
        out.finite = not bool(flag.item())
    return out
