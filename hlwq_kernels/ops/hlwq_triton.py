"""Fused Triton kernel for the HLWQ pipeline (docs/design.md §1) and its launcher.

One program walks over tiles of ``ROWS`` rows × one Hadamard block of ``B`` inputs (a persistent
loop: ``H_B`` is loaded once per program). Each weight is read once; per tile the kernel computes

1. the block L2 norm and a power-of-two scale ``2**s`` per row that brings the block's absmax
   into [2**14, 2**15) (exact; it keeps the sum of squares away from overflow and underflow and
   makes bf16/fp16 values exact in fp16),
2. ``y = (x 2**s) @ H / ||x 2**s||`` = the normalized rotation of the unit-norm block times
   ``sqrt(B)``, on the tensor cores: H is ±1, exact in fp16, and the operand is split into fp16
   pieces (1 for bf16/fp16 weights, 3 for fp32), so the products are exact and accumulate in fp32,
3. the Lloyd–Max code = number of thresholds ``t`` with ``y >= t``, from the codebook's grid lookup
   table (one gather and usually one comparison, exact for every float32 ``y``),
4. ``W' = (levels[code] @ H) * norm / B`` (levels pre-scaled by a power of two ``2**k`` so their
   fp16 pieces stay normal: two pieces = 22 significant bits for 16-bit weights, three = exact
   fp32 levels for fp32 weights; the piece sums are exact), rounded to the weight dtype,
5. optionally symmetric INT4 of ``W'`` per group of ``G`` inputs with the compressed-tensors rule
   (the helpers of ``hlwq_kernels.ops._jit``: ``scale = dtype(absmax / 7.5)``, 0 → the dtype's eps,
   ``q = round_half_even(clamp(W' / scale, -8, 7))`` with an IEEE division, packed 8 nibbles per
   int32, column j → word j // 8, nibble j % 8, stored q + 8).

Outputs are chosen with constexpr flags: codes (uint8) + norms (fp32), ``W'`` (weight dtype),
INT4 packed + scales. A non-finite block norm (NaN/Inf weights) sets ``flag[0] = 1``; the launcher
reads it back (one device sync) only when asked to check. Device tables (H, the pre-scaled levels,
the threshold lookup) are built once per codebook and device. fp16 rather than bf16 operands
because Triton's interpreter cannot multiply bf16 tensors.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch

from hlwq_kernels.ops._jit import (
    codebook_index,
    int4_absmax_scale,
    pack_nibbles,
    reciprocal,
    round_half_even,
    round_to_dtype,
)
from hlwq_kernels.ops._triton import launch, require_triton, tl, triton
from hlwq_kernels.ops.hadamard import hadamard_tensor
from hlwq_kernels.ops.lloyd_max import Codebook
from hlwq_kernels.ops.lloyd_max_triton import AssignTable, assign_table
from hlwq_reference.numpy.int4 import QMAX, QMIN

__all__ = ["HLWQFused", "hlwq_fused"]

_IN_PIECES = {torch.bfloat16: 1, torch.float16: 1, torch.float32: 3}
_LEVEL_PIECES = {torch.bfloat16: 2, torch.float16: 2, torch.float32: 3}
_TOP_EXP = 14  # scaled levels lie in [2**14, 2**15) (the kernel scales weight blocks alike)
_EPS = {dt: torch.finfo(dt).eps for dt in (torch.bfloat16, torch.float16, torch.float32)}
_QMIN, _QMAX = tl.constexpr(QMIN), tl.constexpr(QMAX)


@triton.jit
def _hlwq_kernel(
    w_ptr, h_ptr, lut_ptr, thr_ptr, lev_ptr,
    codes_ptr, norms_ptr, wp_ptr, packed_ptr, scale_ptr, flag_ptr,
    N, K, lev_unscale, eps, lo, inv_h, grid_max,
    NT: tl.constexpr, NK: tl.constexpr, B: tl.constexpr, ROWS: tl.constexpr, G: tl.constexpr,
    IN_PIECES: tl.constexpr, LEV_PIECES: tl.constexpr,
    STORE_CODES: tl.constexpr, STORE_WP: tl.constexpr, STORE_INT4: tl.constexpr,
):
    DT: tl.constexpr = w_ptr.dtype.element_ty
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    kb = K // B
    num_tiles = tl.cdiv(N, ROWS) * kb
    r = tl.arange(0, ROWS)
    c = tl.arange(0, B)
    h = tl.load(h_ptr + c[:, None] * B + c[None, :])  # Sylvester H_B, symmetric, fp16 ±1
    for t in range(pid, num_tiles, nprog):
        rows = (t // kb) * ROWS + r
        cb = t % kb
        rmask = rows < N
        offs = rows[:, None].to(tl.int64) * K + cb * B + c[None, :]
        x = tl.load(w_ptr + offs, mask=rmask[:, None], other=0.0).to(tl.float32)
        # 1. exact power-of-two scale 2**(141 - e), e the biased exponent of the absmax, so the
        #    scaled absmax lies in [2**14, 2**15) (e >= 15 keeps the scale a normal float)
        amax = tl.max(tl.abs(x), axis=1)
        e = tl.maximum((amax.to(tl.int32, bitcast=True) >> 23) & 0xFF, 15)
        pw = ((268 - e) << 23).to(tl.float32, bitcast=True)
        xs = x * pw[:, None]
        ss = tl.sum(xs * xs, axis=1)  # <= B * 2**30 when finite
        bad = tl.max((~(ss < 1.0e30)).to(tl.int32), axis=0)
        tl.atomic_max(flag_ptr, bad)
        norm_s = tl.math.sqrt_rn(ss)
        norm = tl.math.div_rn(norm_s, pw)
        # 2. rotation: fp16 pieces times H, fp32 accumulation
        acc = tl.zeros([ROWS, B], tl.float32)
        rem = xs
        for _ in tl.static_range(IN_PIECES):
            piece = rem.to(tl.float16)
            acc = tl.dot(piece, h, acc)
            rem = rem - piece.to(tl.float32)
        y = acc * reciprocal(tl.where(norm_s > 0, norm_s, 1.0))[:, None]
        # 3. Lloyd–Max code
        code = codebook_index(y, lut_ptr, thr_ptr, lo, inv_h, grid_max, NT, NK)
        if STORE_CODES:
            tl.store(codes_ptr + offs, code.to(tl.uint8), mask=rmask[:, None])
            tl.store(norms_ptr + rows * kb + cb, norm, mask=rmask)
        if STORE_WP or STORE_INT4:
            # 4. dequantize, inverse rotation (H^T = H), times norm / B, round to the weight dtype
            vacc = tl.zeros([ROWS, B], tl.float32)
            rem = tl.load(lev_ptr + code)
            for _ in tl.static_range(LEV_PIECES):
                piece = rem.to(tl.float16)
                vacc = tl.dot(piece, h, vacc)
                rem = rem - piece.to(tl.float32)
            wf = round_to_dtype((vacc * norm[:, None]) * lev_unscale, DT)
            if STORE_WP:
                tl.store(wp_ptr + offs, wf.to(DT), mask=rmask[:, None])
            if STORE_INT4:
                # 5. symmetric INT4, absmax / 7.5 per group of G, packed 8 per int32
                wg = tl.reshape(wf, [ROWS, B // G, G])
                gmax = tl.max(tl.abs(wg), axis=2)
                sf = int4_absmax_scale(gmax, eps, DT)
                v = tl.math.div_rn(wg, tl.broadcast_to(sf[:, :, None], [ROWS, B // G, G]))
                u = round_half_even(tl.minimum(tl.maximum(v, _QMIN), _QMAX)) - _QMIN
                words = pack_nibbles(tl.reshape(u, [ROWS, B]))
                wcol = tl.arange(0, B // 8)
                tl.store(packed_ptr + rows[:, None] * (K // 8) + cb * (B // 8) + wcol[None, :], words,
                         mask=rmask[:, None])
                gcol = tl.arange(0, B // G)
                tl.store(scale_ptr + rows[:, None] * (K // G) + cb * (B // G) + gcol[None, :],
                         sf.to(DT), mask=rmask[:, None])


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


@dataclasses.dataclass(frozen=True)
class _Tables:
    """A codebook's device tables: levels scaled by ``2**lev_exp`` (fp32) and the threshold lookup."""

    levels: torch.Tensor
    lev_exp: int
    assign: AssignTable


def _tables(cb: Codebook, device: torch.device) -> _Tables:
    def build() -> _Tables:
        top = float(abs(cb.levels).max())
        lev_exp = _TOP_EXP - math.floor(math.log2(top)) if top > 0 else 0
        levels = torch.tensor(cb.levels * 2.0**lev_exp, dtype=torch.float64).to(device=device, dtype=torch.float32)
        return _Tables(levels, lev_exp, assign_table(cb.thresholds, torch.float32, device))

    return cb.cached(("hlwq", device), build)


@functools.lru_cache(maxsize=None)
def _hadamard16(b: int, device: torch.device) -> torch.Tensor:
    return hadamard_tensor(b, dtype=torch.float16, device=device)


@functools.lru_cache(maxsize=None)
def _flag_sink(device: torch.device) -> torch.Tensor:
    """A flag nobody reads, for launches that do not check finiteness."""
    return torch.zeros(1, dtype=torch.int32, device=device)


@functools.lru_cache(maxsize=None)
def _programs(num_tiles: int, device: torch.device) -> int:
    if device.type == "cuda":
        return max(1, min(num_tiles, 4 * torch.cuda.get_device_properties(device).multi_processor_count))
    return max(1, min(num_tiles, 2))  # interpreter: few programs, each walks the tile loop


def hlwq_fused(
    w: torch.Tensor,
    codebook: Codebook,
    block_size: int,
    *,
    codes: bool = False,
    wprime: bool = False,
    int4_group: int | None = None,
    rows: int | None = None,
    num_warps: int = 4,
    check_finite: bool = True,
) -> HLWQFused:
    """Run the fused kernel on a contiguous 2-D ``w`` (bf16/fp16/fp32, CUDA or CPU = interpreter).

    ``int4_group`` (dividing ``block_size``, multiple of 8) requests INT4 packed + scales. ``rows``
    is the tile height (default 16: fewest registers and least shared memory per program). ``check_finite`` reads the
    kernel's non-finite flag back (one device sync); otherwise ``finite`` is None and nothing is
    copied between host and device.
    """
    require_triton()
    n, k = w.shape
    b = block_size
    if int4_group is not None and (b % int4_group or int4_group % 8):
        raise ValueError(f"int4_group={int4_group} must divide block_size={b} and be a multiple of 8")
    dev = w.device
    rows = rows or 16
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
    lut = tables.assign
    launch(
        _hlwq_kernel, (_programs(num_tiles, dev),), dev,
        w, _hadamard16(b, dev), lut.lut, lut.thr, tables.levels,
        out.codes if codes else flag, out.norms if codes else flag,
        out.wprime if wprime else flag,
        out.packed if int4_group else flag, out.scale if int4_group else flag,
        flag,
        n, k, 2.0 ** (-tables.lev_exp) / b, _EPS[w.dtype], lut.lo, lut.inv_h, lut.grid_max,
        NT=lut.num_thr, NK=lut.k, B=b, ROWS=rows, G=g,
        IN_PIECES=_IN_PIECES[w.dtype], LEV_PIECES=_LEVEL_PIECES[w.dtype],
        STORE_CODES=codes, STORE_WP=wprime, STORE_INT4=int4_group is not None,
        num_warps=num_warps,
    )
    if check_finite:
        out.finite = not bool(flag.item())
    return out
