"""@triton.jit helpers shared by the kernels: rounding, exact division, INT4 scales and nibble packing.

Every helper computes the same bits compiled on CUDA and in Triton's interpreter on CPU:

- ``round_to_bf16``: float32 -> the nearest bfloat16 value (ties to even), kept in float32, by
  integer arithmetic on the bits (the cast's rounding is not the same in every interpreter version);
  NaN stays NaN (CUDA's canonical NaN 0x7FFFFFFF would otherwise carry into the sign bit: -0.0).
- ``round_to_dtype``: the same for any stored dtype (bf16 by hand, fp16/fp32 by the cast).
- ``round_half_even``: float32 ``|y| < 2**22`` -> int32 nearest integer, ties to even (adding
  1.5 * 2**23 leaves the integer in the low mantissa bits); ``rint`` the same as float32.
- ``div_exact``: ``x / s`` correctly rounded (= ``tl.div_rn``) from ``inv = div_rn(1, s)`` in three
  instructions (Markstein's correction step: ``q = x inv``, exact residual ``r = fma(-q, s, x)``,
  ``fma(r, inv, q)``). It equals ``div_rn(x, s)`` wherever ``|x / s| >= 1/4`` (below that any
  rounding to an integer gives 0 anyway) provided ``s`` and ``max|x| / s`` stay in range, which
  ``quotient_is_exact`` checks per scale; ``group_quotient`` divides a tile of groups by their
  scales with it, or with ``tl.div_rn`` when the tile's check failed.
- ``short_reciprocal``: ``reciprocal(s)`` in three instructions and no branch for divisors ``s = m 2**e`` with
  an odd ``m < 2**15``: ``r = rcp.approx(s)`` (relative error ``d <= 2**-23``) and ``fma(r, fma(-s, r, 1), r)``
  leave ``1 / s`` within ``d**2 + 2**-47 < 2**-45`` relative before the last rounding, while ``1 / s`` is at
  least ``2**-40`` relative away from every midpoint of two float32 values (``m (2k + 1) = 2**j`` has no
  solution: an odd product is no power of two; ``2k + 1 < 2**25``), so that rounding is the correct one.
  ``div_exact`` with it divides ``a`` (24 significant bits) by such ``s`` exactly too: its last step is off by
  ``1.5 ulp * 2**-24`` at most, ``a / s`` at least ``2**-40`` relative from a midpoint.
- ``int4_absmax_scale``: compressed-tensors' symmetric INT4 scale rule ``dtype(amax / 7.5)``
  (IEEE float32 division), 0 -> the dtype's epsilon.
- ``pack_nibbles``: int32 ``[R, C]`` values in [0, 16) -> int32 words ``[R, C / 8]``, column ``j``
  in word ``j // 8``, nibble ``j % 8`` (column 0 least significant) — compressed-tensors' order.
- ``group_tile``: rows, groups, masks and pointers of one program of the group-wise INT4 kernels.
- ``pack_codes``: float32 codes ``[A, B, C, D]`` already clamped to [QMIN, QMAX] -> int32 words
  ``[A, B, C, D / 8]`` of the nibbles ``rint(y) - QMIN`` (half to even), same order as
  ``pack_nibbles``, in about one instruction per code: the bits of ``y + 1.5 * 2**23`` are
  ``0x4B400000 + rint(y)``, so the shifted bits summed over a word differ from the packed nibbles
  by a constant (``_PACK_BIAS``, added once per word; int32 sums wrap).
- ``codebook_index``: ``#{k : x >= t_k}`` (NaN -> 0) for sorted thresholds, from the grid lookup
  table of ``hlwq_kernels.ops.lloyd_max_triton.AssignTable`` (one gather, then ``K`` compares).
"""

from __future__ import annotations

from hlwq_kernels.ops._triton import tl, triton
from hlwq_reference.numpy.int4 import ABSMAX_DIVISOR, QMIN

_DIVISOR = tl.constexpr(ABSMAX_DIVISOR)
_MAGIC_BITS = 0x4B400000  # the bits of 1.5 * 2**23
# packed nibbles minus the shifted magic bits of a word, as a signed int32
_BIAS_U32 = (sum(-QMIN << 4 * i for i in range(8)) - sum(_MAGIC_BITS << 4 * i for i in range(8))) % (1 << 32)
_PACK_BIAS = tl.constexpr(_BIAS_U32 - (1 << 32) if _BIAS_U32 >= 1 << 31 else _BIAS_U32)
# 2**-90 <= s <= 2**90 and |x / s| <= 2**60 keep every step of div_exact normal and finite.
_TINY = tl.constexpr(2.0**-90)
_HUGE = tl.constexpr(2.0**60)


@triton.jit
def round_to_bf16(x):
    """float32 -> the nearest bfloat16 value (ties to even), as float32; NaN stays NaN."""
    bits = x.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
    return tl.where(x == x, bits.to(tl.float32, bitcast=True), x)


@triton.jit
def round_to_dtype(x, DTYPE: tl.constexpr):
    """float32 -> the nearest value of ``DTYPE`` (bf16, fp16 or fp32), as float32."""
    if DTYPE == tl.bfloat16:
        return round_to_bf16(x)
    else:
        return x.to(DTYPE).to(tl.float32)


@triton.jit
def round_half_even(y):
    """float32 ``|y| < 2**22`` -> the nearest integer as int32, ties to even."""
    return (y + 12582912.0).to(tl.int32, bitcast=True) - 0x4B400000


@triton.jit
def rint(y):
    """float32 ``|y| < 2**22`` -> the nearest integer as float32, ties to even."""
    return (y + 12582912.0) - 12582912.0


@triton.jit
def div_exact(x, s, inv):
    """``x / s`` rounded to nearest float32, given ``inv = div_rn(1, s)`` (see the module docstring)."""
    q = x * inv
    r = tl.fma(q, -s, x)  # -s, not -q: a per-group negation, not one per weight
    return tl.fma(r, inv, q)


@triton.jit
def reciprocal(s):
    """``1 / s`` rounded to nearest float32."""
    return tl.div_rn(tl.full(s.shape, 1.0, tl.float32), s)


@triton.jit
def _rcp_approx_ptx(s):
    return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=f,f", [s], dtype=tl.float32, is_pure=True,
                                     pack=1)


@triton.jit
def short_reciprocal(s, PTX: tl.constexpr):
    """``reciprocal(s)`` without its branch for normal ``s`` with at most 15 significant bits (bf16 and fp16
    values, integers below 2**15) and a normal ``1 / s``: ``rcp.approx`` (within 1 ulp) and one Newton step
    with fused multiply-adds (``PTX``; the interpreter takes ``reciprocal``), see the module docstring."""
    if PTX:
        r = _rcp_approx_ptx(s)
        return tl.fma(r, tl.fma(-s, r, 1.0), r)
    else:
        return reciprocal(s)


@triton.jit
def group_quotient(x, s, inv, fast):
    """``x / s`` (IEEE) for a tile of groups and per-group scales ``s``, ``inv`` (expanded to
    broadcast against ``x``); ``fast`` (a scalar) is ``quotient_is_exact`` for the whole tile."""
    if fast:
        y = div_exact(x, s, inv)
    else:
        y = tl.div_rn(x, tl.broadcast_to(s, x.shape))
    return y


@triton.jit
def quotient_is_exact(s, inv, amax):
    """Whether ``div_exact(x, s, inv)`` equals ``div_rn(x, s)`` for every ``1/4 <= |x / s|``,
    ``|x| <= amax`` of the tile (one scalar for per-group tensors ``s``, ``inv``, ``amax``)."""
    ok = (s >= _TINY) & (amax * inv <= _HUGE) & (inv >= _TINY)
    return tl.min(ok.to(tl.int32)) > 0


@triton.jit
def pow2_scale(amax):
    """The power of two ``2**(141 - e)`` (``e`` the biased exponent of float32 ``amax >= 0``) that brings
    ``amax`` into [2**14, 2**15), exactly; at most 2**126 (a tiny ``amax`` stays below), so its
    reciprocal is a normal float too. Infinity and NaN give 2**-114."""
    e = tl.maximum((amax.to(tl.int32, bitcast=True) >> 23) & 0xFF, 15)
    return ((268 - e) << 23).to(tl.float32, bitcast=True)


@triton.jit
def int4_absmax_scale(amax, eps, DTYPE: tl.constexpr):
    """compressed-tensors' scale ``DTYPE(amax / 7.5)`` (0 -> ``eps``), as float32."""
    s = round_to_dtype(tl.div_rn(amax, tl.full(amax.shape, _DIVISOR, tl.float32)), DTYPE)
    return tl.where(s == 0.0, eps, s)


@triton.jit
def pack_nibbles(u):
    """int32 ``[R, C]`` nibbles (C % 8 == 0) -> int32 words ``[R, C // 8]``, column j in nibble j % 8."""
    R: tl.constexpr = u.shape[0]
    C: tl.constexpr = u.shape[1]
    shifts = (tl.arange(0, 8) * 4)[None, None, :]
    return tl.sum(tl.reshape(u, [R, C // 8, 8]) << shifts, axis=2)


@triton.jit
def group_tile(w_ptr, packed_ptr, N, NG, K8, stride_wn, stride_wk, G: tl.constexpr, CHUNK: tl.constexpr,
               SEGS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr):
    """The tile of the group-wise INT4 kernels: program (axis 0: ``BLOCK_G`` groups, axis 1:
    ``BLOCK_N`` rows) -> rows, groups, their masks ``[BN, BG]`` and ``[BN, BG, 1, 1]``, and the
    pointers of its first chunk ``[BN, BG, SEGS, CHUNK // SEGS]`` into the weight and (per word, last
    axis ``W // 8``) into the packed codes. Group blocks come first on the grid: programs running
    together read whole rows."""
    W: tl.constexpr = CHUNK // SEGS
    rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    grps = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    mask2 = (rows < N)[:, None] & (grps < NG)[None, :]
    cols = (tl.arange(0, SEGS) * W)[None, None, :, None] + tl.arange(0, W)[None, None, None, :]
    w_ptrs = (
        w_ptr
        + rows.to(tl.int64)[:, None, None, None] * stride_wn
        + (grps[None, :, None, None] * G + cols).to(tl.int64) * stride_wk
    )
    words = (tl.arange(0, SEGS) * (W // 8))[None, None, :, None] + tl.arange(0, W // 8)[None, None, None, :]
    p_ptrs = packed_ptr + rows.to(tl.int64)[:, None, None, None] * K8 + (grps[None, :, None, None] * (G // 8) + words)
    return rows, grps, mask2, mask2[:, :, None, None], w_ptrs, p_ptrs


@triton.jit
def group_sum(v):
    """Per-group sums of a tile ``[BN, BG, SEGS, W]`` -> ``[BN, BG]`` (the segments a thread holds first)."""
    return tl.sum(tl.sum(v, axis=2), axis=2)


@triton.jit
def pack_codes(y):
    """float32 codes ``[A, B, C, D]`` in [QMIN, QMAX] (D % 8 == 0) -> int32 words ``[A, B, C, D // 8]``
    of the nibbles ``rint(y) - QMIN``, column j in nibble j % 8."""
    A: tl.constexpr = y.shape[0]
    B: tl.constexpr = y.shape[1]
    C: tl.constexpr = y.shape[2]
    D: tl.constexpr = y.shape[3]
    bits = tl.reshape((y + 12582912.0).to(tl.int32, bitcast=True), [A, B, C, D // 8, 8])
    shifts = (tl.arange(0, 8) * 4)[None, None, None, None, :]
    return tl.sum(bits << shifts, axis=4) + _PACK_BIAS


@triton.jit
def codebook_index(x, lut_ptr, thr_ptr, lo, inv_h, grid_max, num_thr, K: tl.constexpr):
    """``#{k : x >= t_k}`` as int32 (ties up, NaN -> 0) with the tables of an ``AssignTable``."""
    gf = (x - lo) * inv_h
    gf = tl.where(gf > 0, gf, 0.0)
    gf = tl.where(gf < grid_max, gf, grid_max)
    base = tl.load(lut_ptr + gf.to(tl.int32))
    idx = base
    for k in tl.static_range(K):
        idx += (x >= tl.load(thr_ptr + base + k)).to(tl.int32)
    return tl.minimum(idx, num_thr)


# --- bf16 weights as int32 words of two (weight 2j in the low half, 2j + 1 in the high half) ----------
#
# ``PTX`` (a constexpr) picks packed instructions through inline PTX (compiled on CUDA) or the same
# function in plain Triton (the CPU interpreter, which cannot run inline assembly); both give the
# same bits:
# - ``bf16_pair_range``: per-group min and max of a tile of words with ``min.bf16x2`` / ``max.bf16x2``
#   (half an instruction a weight each; ptxas fuses three operands into one ``VHMNMX``);
# - ``pack_code_pairs``: float32 codes of the even and odd weights -> int32 words of nibbles
#   ``clamp(rint(y + shift), QMIN, QMAX) - QMIN``: ``y + (shift + 1.5 * 2**23 - QMIN)`` holds
#   ``rint(y + shift) - QMIN`` in its low 16 bits; two codes (weights i and i + 4 of a word) go into one
#   register (``prmt``) and are clamped together to [0, 15] (``min.relu.s16x2``: ``max(min(a, b), 0)`` a
#   half, one instruction, sm_90), and the four registers of a word are merged by three shift-adds: about
#   2.4 instructions a weight with the rounding add, against 4 for float clamps, the rounding add and
#   ``pack_codes``.

_PAIR_MAGIC = tl.constexpr(12582912.0 - QMIN)  # 1.5 * 2**23 - QMIN
_PAIR_MAGIC_BITS = tl.constexpr(0x4B400000)
_NIBBLE_MAX = tl.constexpr(15)


@triton.jit
def bf16_lo(x):
    """int32 words of bf16 pairs -> the low (even) weights as float32."""
    return (x << 16).to(tl.float32, bitcast=True)


@triton.jit
def bf16_hi(x):
    """int32 words of bf16 pairs -> the high (odd) weights as float32."""
    return (x & -65536).to(tl.float32, bitcast=True)


@triton.jit
def _bf16x2_min_ptx(a, b):
    return tl.inline_asm_elementwise("min.bf16x2 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def _bf16x2_max_ptx(a, b):
    return tl.inline_asm_elementwise("max.bf16x2 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def bf16_pair_range(x, PTX: tl.constexpr):
    """int32 words ``[A, B, C, D]`` of bf16 pairs -> float32 (min, max) over the last two axes, ``[A, B]``
    (axis 2 first: it is held by one thread, so the cross-thread steps reduce one word). The plain
    twin reduces the two halves as float32 (the interpreter runs custom reductions slowly)."""
    if PTX:
        lo = tl.reduce(tl.reduce(x, 2, _bf16x2_min_ptx), 2, _bf16x2_min_ptx)
        hi = tl.reduce(tl.reduce(x, 2, _bf16x2_max_ptx), 2, _bf16x2_max_ptx)
        lo, hi = tl.minimum(bf16_lo(lo), bf16_hi(lo)), tl.maximum(bf16_lo(hi), bf16_hi(hi))
    else:
        e, o = bf16_lo(x), bf16_hi(x)
        lo = tl.minimum(tl.min(tl.min(e, 2), 2), tl.min(tl.min(o, 2), 2))
        hi = tl.maximum(tl.max(tl.max(e, 2), 2), tl.max(tl.max(o, 2), 2))
    return lo, hi


@triton.jit
def _halves(x):
    """The elements ``2j``, ``2j + 1`` of the last dim of ``x [A, B, C, D]`` as two tensors ``[A, B, C, D / 2]``
    (free when one thread holds each pair)."""
    return tl.split(tl.reshape(x, [x.shape[0], x.shape[1], x.shape[2], x.shape[3] // 2, 2]))


@triton.jit
def _quarters(x):
    """The elements ``4j``, ``4j + 1``, ``4j + 2``, ``4j + 3`` of the last dim of ``x [A, B, C, D]`` as four
    tensors ``[A, B, C, D / 4]`` (free when one thread holds each run of four, as in a 16-byte load of 16-bit
    weights)."""
    even, odd = _halves(x)
    a0, a2 = _halves(even)
    a1, a3 = _halves(odd)
    return a0, a1, a2, a3


@triton.jit
def pack_code_pairs(ye, yo, shift, PTX: tl.constexpr):
    """float32 codes (``|y + shift| < 2**14``, not yet clamped) of the even and odd weights ``[A, B, C, D]``
    (D % 4 == 0; element j of the last axis is weights 2j, 2j + 1) and an integer ``shift`` (broadcast)
    -> int32 words ``[A, B, C, D // 4]`` of the nibbles ``clamp(rint(y + shift), QMIN, QMAX) - QMIN``, the
    sum ``y + shift`` rounded to an integer once (half to even), weight j in nibble j % 8."""
    A: tl.constexpr = ye.shape[0]
    B: tl.constexpr = ye.shape[1]
    C: tl.constexpr = ye.shape[2]
    D: tl.constexpr = ye.shape[3]
    magic = shift + _PAIR_MAGIC  # exact: an integer below 2**24
    be = (ye + magic).to(tl.int32, bitcast=True)
    bo = (yo + magic).to(tl.int32, bitcast=True)
    if PTX:
        # the 4 words of an output word (weights c0..c7 = e0 o0 e1 o1 e2 o2 e3 o3) as separate tensors
        # (free when one thread holds them, as in a 16-byte load); registers (c0, c4) (c1, c5) (c2, c6)
        # (c3, c7), clamped, shifted by 0, 4, 8, 12 and summed
        e0, e1, e2, e3 = _quarters(be)
        o0, o1, o2, o3 = _quarters(bo)
        words = tl.inline_asm_elementwise(
            """{ .reg .b32 p<4>, top;
            mov.b32 top, 0x000F000F;
            prmt.b32 p0, $1, $3, 0x5410; prmt.b32 p1, $5, $7, 0x5410;
            prmt.b32 p2, $2, $4, 0x5410; prmt.b32 p3, $6, $8, 0x5410;
            min.relu.s16x2 p0, p0, top; min.relu.s16x2 p1, p1, top;
            min.relu.s16x2 p2, p2, top; min.relu.s16x2 p3, p3, top;
            shl.b32 p1, p1, 4; shl.b32 p2, p2, 8; shl.b32 p3, p3, 12;
            add.u32 p0, p0, p1; add.u32 p2, p2, p3; add.u32 $0, p0, p2; }""",
            "=r,r,r,r,r,r,r,r,r", [e0, e1, e2, e3, o0, o1, o2, o3], dtype=tl.int32, is_pure=True, pack=1)
    else:
        ue = tl.minimum(tl.maximum(be - _PAIR_MAGIC_BITS, 0), _NIBBLE_MAX)
        uo = tl.minimum(tl.maximum(bo - _PAIR_MAGIC_BITS, 0), _NIBBLE_MAX)
        shifts = (tl.arange(0, 4) * 8)[None, None, None, None, :]
        words = tl.sum((tl.reshape(ue, [A, B, C, D // 4, 4]) << shifts)
                       | (tl.reshape(uo, [A, B, C, D // 4, 4]) << (shifts + 4)), axis=4)
    return words


@triton.jit
def group_word_pointers(w_ptr, rows, grps, stride_wn, G: tl.constexpr, CHUNK: tl.constexpr, SEGS: tl.constexpr):
    """int32 pointers ``[BN, BG, SEGS, CHUNK // SEGS // 2]`` to the bf16 pairs of a ``group_tile``'s first
    chunk (weight columns contiguous, ``stride_wn`` even, 4-byte aligned)."""
    W2: tl.constexpr = CHUNK // SEGS // 2
    words = (tl.arange(0, SEGS) * W2)[None, None, :, None] + tl.arange(0, W2)[None, None, None, :]
    return (w_ptr.to(tl.pointer_type(tl.int32)) + rows.to(tl.int64)[:, None, None, None] * (stride_wn // 2)
            + (grps[None, :, None, None] * (G // 2) + words))


@triton.jit
def round_to_dtype_cvt(x, DTYPE: tl.constexpr, CVT: tl.constexpr):
    """``round_to_dtype`` by the hardware conversion (``CVT``, compiled: ``cvt.rn``, ties to even, NaN
    stays NaN; 2 instructions for bf16) or by ``round_to_dtype`` (the interpreter): the same bits."""
    if CVT:
        return x.to(DTYPE).to(tl.float32)
    else:
        return round_to_dtype(x, DTYPE)


@triton.jit
def int4_absmax_scale_cvt(amax, eps, DTYPE: tl.constexpr, CVT: tl.constexpr):
    """``int4_absmax_scale`` rounded by ``round_to_dtype_cvt``: the same bits."""
    s = round_to_dtype_cvt(tl.div_rn(amax, tl.full(amax.shape, _DIVISOR, tl.float32)), DTYPE, CVT)
    return tl.where(s == 0.0, eps, s)


# --- "mse" trial sums in integers (``hlwq_kernels.ops.int4_triton``, module docstring) -------------------------
#
# A trial's code of a weight ``w`` is ``q = clamp(rint(w / s), QMIN, QMAX)``; the float32 ``y + 1.5 * 2**23 - QMIN``
# of an integer-valued ``y`` holds the biased code ``u = y - QMIN`` (|u| < 2**15) in its low 16 bits, two's
# complement (``scale_trial_sums``: ``y`` the exact quotient rounded, or one fused multiply-add by ``1 / s``).
# Weights enter as fixed-point integers ``f = rint(w * 2**(BITS - E))`` (``fixed_point_tile``), two a word
# (``fixed_pairs``), split by the weight's dtype (``SPLIT``):
# - ``WHOLE`` (bf16, BITS = 12): 16-bit ``f``;
# - ``HALVED`` (fp16, BITS = 15): 17-bit ``f`` as ``f >> 1`` and its low bit ``f & 1``, kept as bytes;
# - ``HALVES`` (fp32, BITS = 29): 30-bit ``f`` as its signed upper and unsigned lower 16 bits, two words.
# ``trial_code_sums`` then returns the per-group integers
# ``Σ f u`` and ``Σ u (u - 16)`` of the clamped biased codes ``u`` in [0, 15] (QMIN = -8, QMAX = 7, so that
# ``Σ f q = Σ f u - 8 Σ f`` and ``Σ q² = Σ u (u - 16) + 64 n`` for ``q = u - 8``): with inline PTX, two codes a
# register (``prmt``), clamped together (``min.relu.s16x2``), four codes a register as bytes (``prmt``),
# ``Σ u (u - 16)`` by ``dp4a`` (``u - 16`` is the signed byte ``u | 0xF0``), ``Σ f u`` by ``dp2a`` (and the low bits'
# ``Σ (f & 1) u`` by ``dp4a``, the lower halves' by ``dp2a``): about 3.25 instructions a weight with the code's fused
# multiply-add (3.5 halved), against 5 in float32; fp32's quotient takes 4 instructions a weight and its sums about
# 2.75.

_FIX_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2**23
_QMIN = tl.constexpr(QMIN)
WHOLE = tl.constexpr(0)
HALVED = tl.constexpr(1)
HALVES = tl.constexpr(2)


@triton.jit
def fixed_point_scales(amax, BITS: tl.constexpr, WIDE: tl.constexpr):
    """``(2**(BITS - E), 2**(E - BITS))`` of per-group ``amax >= 0`` whose binade is ``2**E``
    (``2**E <= amax < 2**(E + 1)``), both float32: the exponent field is clamped to [BITS + 1, 255] so that both
    are normal powers of two whatever ``amax`` (zero, subnormal, infinite: values the searches discard). ``WIDE``
    (fp32's ``BITS = 29``, whose searched binades reach ``2**(BITS - 127)``): clamped to [BITS, 255] instead,
    ``2**(E - BITS)`` a float64 (below float32's normal range there)."""
    e = tl.minimum(tl.maximum((amax.to(tl.int32, bitcast=True) >> 23) & 0xFF, BITS + 1 - WIDE), 255)
    if WIDE:
        down = ((e - BITS + 896).to(tl.int64) << 52).to(tl.float64, bitcast=True)  # 896 = 1023 - 127
    else:
        down = ((e - BITS) << 23).to(tl.float32, bitcast=True)
    return ((254 - e + BITS) << 23).to(tl.float32, bitcast=True), down


@triton.jit
def _prmt_lo16_ptx(a, b):
    return tl.inline_asm_elementwise("prmt.b32 $0, $1, $2, 0x5410;", "=r,r,r", [a, b], dtype=tl.int32,
                                     is_pure=True, pack=1)


def _chain(out: str, terms: list[tuple[str, str, str]]) -> list[str]:
    """PTX lines ``out = Σ op(a, b)`` of the ``terms`` (op, a, b): each op accumulates onto the last, the first onto 0."""
    return [f"{op} {out}, {a}, {b}, {out if i else 0};" for i, (op, a, b) in enumerate(terms)]


def _code_sums_asm(split: int) -> str:
    """The inline PTX of ``code_byte_sums``: outputs ``Σ f u``, ``Σ u (u - 16)`` and (``split`` not ``WHOLE``) the
    third sum; inputs the code bits of ``P`` even and ``P`` odd weights, ``P`` ``fixed_pairs`` words, then the third
    sum's weights: two registers of bytes (``HALVED``) or ``P`` words of unsigned halves (``HALVES``); ``P`` is 2 for
    ``HALVES`` (fp32: a 16-byte load holds two pairs), else 4. ``u0`` holds the bytes of weights (e0, o0, e1, o1),
    ``u1`` of (e2, o2, e3, o3)."""
    pairs = 2 if split == HALVES.value else 4
    k = 2 if split == WHOLE.value else 3
    e = [f"${k + i}" for i in range(pairs)]
    o = [f"${k + pairs + i}" for i in range(pairs)]
    w = [f"${k + 2 * pairs + i}" for i in range(pairs)]
    x = [f"${k + 3 * pairs + i}" for i in range(pairs)]
    u = [f"u{i // 2}" for i in range(pairs)]  # the byte register of pair i
    dp2a = ["dp2a.lo", "dp2a.hi"] * 2  # pair i: bytes 0, 1 or 2, 3 of u[i]
    lines = ["{ .reg .b32 p<4>, u<2>, t<2>, top;", "mov.b32 top, 0x000F000F;"]
    lines += [f"prmt.b32 p{i}, {e[i]}, {o[i]}, 0x5410;" for i in range(pairs)]
    lines += [f"min.relu.s16x2 p{i}, p{i}, top;" for i in range(pairs)]
    lines += [f"prmt.b32 u{i}, p{2 * i}, p{2 * i + 1}, 0x6420; or.b32 t{i}, u{i}, 0xF0F0F0F0;" for i in range(pairs // 2)]
    lines += _chain("$1", [("dp4a.u32.s32", f"u{i}", f"t{i}") for i in range(pairs // 2)])
    if split == HALVED.value:
        lines += _chain("$2", [("dp4a.u32.u32", f"u{i}", x[i]) for i in range(2)])
    if split == HALVES.value:
        lines += _chain("$2", [(dp2a[i] + ".u32.u32", x[i], u[i]) for i in range(pairs)])
    lines += _chain("$0", [(dp2a[i] + ".s32.u32", w[i], u[i]) for i in range(pairs)])
    lines[-1] += " }"
    return "\n".join(lines)


_CODE_SUMS_ASM = tl.constexpr(_code_sums_asm(WHOLE.value))
_CODE_SUMS_BYTES_ASM = tl.constexpr(_code_sums_asm(HALVED.value))
_CODE_SUMS_HALVES_ASM = tl.constexpr(_code_sums_asm(HALVES.value))


@triton.jit
def fixed_pairs(xe, xo, up, SPLIT: tl.constexpr, PTX: tl.constexpr):
    """float32 weights of the even and odd columns ``[A, B, C, D]`` (D % 4 == 0) and per-group
    ``up = 2**(BITS - E)`` (``fixed_point_scales``, broadcast) -> the tile in fixed point, ``f = rint(x * up)``
    (``HALVES``: truncated), as ``(words, Σ f, third, Σ third)``: int32 words ``[A, B, C, D]`` of two 16-bit integers,
    even weight in the low half, and per-group int32 sums ``[A, B]``, by ``SPLIT``:
    - ``WHOLE`` (``|x * up| < 2**15``): words of ``f``, ``Σ f``, and zero bytes as ``HALVED``'s third;
    - ``HALVED`` (``< 2**16``): words of ``f >> 1``, ``Σ f``, third the low bits ``f & 1`` as bytes of two registers
      ``[A, B, C, D / 4]`` ordered as ``code_byte_sums``' codes (weights 2j, 2j + 1 of pairs j = 4k, 4k + 1, then
      of 4k + 2, 4k + 3);
    - ``HALVES`` (``< 2**30``): words of the signed upper halves ``f >> 16``, their sum, third the words of the
      unsigned lower halves ``f & 0xFFFF``, their sum (``Σ f`` would overflow int32).
    ``Σ third`` is ``Σ f`` unless ``HALVES``."""
    if SPLIT == HALVES:
        fe = (xe * up).to(tl.int32)
        fo = (xo * up).to(tl.int32)
        words = ((fe >> 16) & 0xFFFF) | (fo & -65536)
        fsum = group_sum((fe >> 16) + (fo >> 16))
        third = (fe & 0xFFFF) | (fo << 16)
        third_sum = group_sum((fe & 0xFFFF) + (fo & 0xFFFF))
    else:
        halve: tl.constexpr = SPLIT == HALVED
        fe = tl.fma(xe, up, _FIX_MAGIC).to(tl.int32, bitcast=True)  # 1.5 * 2**23 + f: f in the low bits
        fo = tl.fma(xo, up, _FIX_MAGIC).to(tl.int32, bitcast=True)
        if PTX:
            # (1.5 * 2**23 + f) >> 1 = 1.5 * 2**22 + (f >> 1): f >> 1 in the low 16 bits
            words = _prmt_lo16_ptx(fe >> halve, fo >> halve)
            # Σ f from the bits (int32 sums wrap): the magic's bits once a weight, subtracted once a group
            n: tl.constexpr = 2 * xe.shape[2] * xe.shape[3]
            fsum = group_sum(fe + fo) - n * tl.full(up.shape[:2], _PAIR_MAGIC_BITS, tl.int32)
        else:
            fe -= _PAIR_MAGIC_BITS
            fo -= _PAIR_MAGIC_BITS
            words = ((fe >> halve) & 0xFFFF) | ((fo >> halve) << 16)
            fsum = group_sum(fe + fo)
        le0, le1, le2, le3 = _quarters(fe & halve)  # (the magic's bits are even)
        lo0, lo1, lo2, lo3 = _quarters(fo & halve)
        third = (le0 | (lo0 << 8) | (le1 << 16) | (lo1 << 24), le2 | (lo2 << 8) | (le3 << 16) | (lo3 << 24))
        third_sum = fsum
    return words, fsum, third, third_sum


@triton.jit
def code_byte_sums(be, bo, words, third, SPLIT: tl.constexpr, PTX: tl.constexpr):
    """int32 bits ``[A, B, C, D]`` (D % 4 == 0) whose low 16 bits hold the codes of the even and odd weights, two's
    complement (the bits of ``y + 1.5 * 2**23``, ``y`` an integer-valued float, ``|y| < 2**15``), the
    ``fixed_pairs`` words of the weights and the third sum's weights (``fixed_pairs``' third; unused for
    ``WHOLE``) -> per-group int32 ``(Σ f u, Σ u (u - 16), Σ c u)`` ``[A, B]`` of the clamped codes
    ``u = clamp(code, 0, 15)``, ``c`` the bytes of ``third = (c01, c23)`` (``HALVED``) or the unsigned halves of
    the words ``third`` (``HALVES``); ``Σ c u`` is 0 for ``WHOLE``. The plain twin reads the code as the bits minus
    those of ``1.5 * 2**23``, the PTX their low 16 bits."""
    if PTX and SPLIT == HALVES:
        # weights 2j, 2j + 1 of pairs j = 2k, 2k + 1 (a 16-byte load of fp32 holds them) as separate tensors
        e0, e1 = _halves(be)
        o0, o1 = _halves(bo)
        w0, w1 = _halves(words)
        l0, l1 = _halves(third)
        fu, uu, cu = tl.inline_asm_elementwise(
            _CODE_SUMS_HALVES_ASM, "=r,=r,=r" + ",r" * 8, [e0, e1, o0, o1, w0, w1, l0, l1],
            dtype=(tl.int32, tl.int32, tl.int32), is_pure=True, pack=1)
    elif PTX:
        # weights 2j, 2j + 1 of pairs j = 4k .. 4k + 3 (a 16-byte load holds them) as separate tensors
        e0, e1, e2, e3 = _quarters(be)
        o0, o1, o2, o3 = _quarters(bo)
        w0, w1, w2, w3 = _quarters(words)
        if SPLIT == HALVED:
            c01, c23 = third
            fu, uu, cu = tl.inline_asm_elementwise(
                _CODE_SUMS_BYTES_ASM, "=r,=r,=r" + ",r" * 14, [e0, e1, e2, e3, o0, o1, o2, o3, w0, w1, w2, w3, c01, c23],
                dtype=(tl.int32, tl.int32, tl.int32), is_pure=True, pack=1)
        else:
            fu, uu = tl.inline_asm_elementwise(
                _CODE_SUMS_ASM, "=r,=r" + ",r" * 12, [e0, e1, e2, e3, o0, o1, o2, o3, w0, w1, w2, w3],
                dtype=(tl.int32, tl.int32), is_pure=True, pack=1)
            cu = tl.zeros(fu.shape, tl.int32)
    else:
        ue = tl.minimum(tl.maximum(be - _PAIR_MAGIC_BITS, 0), _NIBBLE_MAX)
        uo = tl.minimum(tl.maximum(bo - _PAIR_MAGIC_BITS, 0), _NIBBLE_MAX)
        fe = (words << 16) >> 16
        fo = words >> 16
        fu = fe * ue + fo * uo
        uu = ue * (ue - 16) + uo * (uo - 16)
        if SPLIT == HALVED:  # pair 4k + 2h + l takes bytes 2l (even) and 2l + 1 (odd) of c01 (h = 0) or c23 (h = 1)
            c01, c23 = third
            c = tl.join(c01, c23)[:, :, :, :, :, None] >> (16 * tl.arange(0, 2))[None, None, None, None, None, :]
            c = tl.reshape(c, ue.shape)
            cu = (c & 0xFF) * ue + ((c >> 8) & 0xFF) * uo
        elif SPLIT == HALVES:
            cu = (third & 0xFFFF) * ue + ((third >> 16) & 0xFFFF) * uo
        else:
            cu = tl.zeros(fu.shape, tl.int32)
    return group_sum(fu), group_sum(uu), group_sum(cu)


@triton.jit
def trial_code_sums(be, bo, fixed, down, SPLIT: tl.constexpr, PTX: tl.constexpr):
    """A trial's code bits of the even and odd weights ``[A, B, C, D]`` (``scale_trial_sums``), the weights' fixed
    point ``fixed = fixed_pairs(xe, xo, up, SPLIT, PTX)`` and per-group ``down = 1 / up`` (``fixed_point_scales``)
    -> per-group ``(Σ f q * down, Σ q²)`` ``[A, B]``, exact, of the clamped codes ``q = u + QMIN``,
    ``u = clamp(y - QMIN, 0, 15)``, from the int32 sums of ``code_byte_sums``. ``A`` is float32 for ``WHOLE``
    (bf16: ``|f| <= 8160``, so ``|Σ f q| < 2**24``), float64 otherwise (fp16: ``|f| < 2**16``,
    ``f = 2 (f >> 1) + (f & 1)``; fp32: ``|f| < 2**30``, ``f = 2**16 (f >> 16) + (f & 0xFFFF)``)."""
    words, fsum, third, third_sum = fixed
    fu, uu, cu = code_byte_sums(be, bo, words, third, SPLIT, PTX)
    n: tl.constexpr = 2 * be.shape[2] * be.shape[3]
    b = (uu + _QMIN * _QMIN * n).to(tl.float32)
    if SPLIT == WHOLE:
        a = (fu + _QMIN * fsum).to(tl.float32) * down
    elif SPLIT == HALVED:
        a = (2 * fu + cu + _QMIN * fsum).to(tl.float64) * down.to(tl.float64)
    else:
        a = ((fu + _QMIN * fsum).to(tl.float64) * 65536.0 + (cu + _QMIN * third_sum).to(tl.float64)) * down.to(tl.float64)
    return a, b


@triton.jit
def fixed_point_tile(xe, xo, amax, BITS: tl.constexpr, SPLIT: tl.constexpr, PTX: tl.constexpr):
    """float32 weights of the even and odd columns ``[A, B, C, D]`` and their groups' ``amax`` ``[A, B]`` ->
    ``(xe, xo, fixed, up, down)`` for ``scale_trial_sums``: ``up``, ``down = fixed_point_scales(amax, BITS)`` (for
    ``HALVES`` the wide ones, ``down`` in float64), the tile's fixed point
    ``fixed = fixed_pairs(xe, xo, up, SPLIT, PTX)`` and the weights, times ``up`` for ``HALVES`` (the scale in which
    its trials divide)."""
    up, down = fixed_point_scales(amax, BITS, SPLIT == HALVES)
    up4 = up[:, :, None, None]
    fixed = fixed_pairs(xe, xo, up4, SPLIT, PTX)
    if SPLIT == HALVES:
        xe = xe * up4
        xo = xo * up4
    return xe, xo, fixed, up, down


@triton.jit
def scale_trial_sums(xe, xo, s, up, fixed, down, SPLIT: tl.constexpr, PTX: tl.constexpr):
    """``trial_code_sums`` of per-group trial scales ``s`` ``[A, B]`` for a ``fixed_point_tile``'s weights ``xe``,
    ``xo``, ``fixed``, ``up``, ``down`` (``|x / s| <= 30``): the codes ``rint(x / s)``
    - for ``HALVES`` (fp32: the stored codes) of the correctly rounded float32 quotient, divided in the fixed point's
      scale: ``(x up) / (s up)`` is ``x / s`` (powers of two, exact wherever a code can be non-zero) and
      ``div_exact`` is correctly rounded for it without a branch (``s up >= 2**(BITS - 5)``, ``|x / s| <= 30``:
      ``quotient_is_exact``), given ``2**E >= 2**(BITS - 127)`` (``fixed_point_scales(WIDE)`` does not clamp);
    - else of the exact product ``x * float32(1 / s)``, one fused multiply-add (``short_reciprocal``: ``s`` of at most
      15 significant bits)."""
    if SPLIT == HALVES:
        su = s * up
        su4 = su[:, :, None, None]
        inv4 = reciprocal(su)[:, :, None, None]
        be = (div_exact(xe, su4, inv4) + _PAIR_MAGIC).to(tl.int32, bitcast=True)
        bo = (div_exact(xo, su4, inv4) + _PAIR_MAGIC).to(tl.int32, bitcast=True)
    else:
        inv4 = short_reciprocal(s, PTX)[:, :, None, None]
        be = tl.fma(xe, inv4, _PAIR_MAGIC).to(tl.int32, bitcast=True)
        bo = tl.fma(xo, inv4, _PAIR_MAGIC).to(tl.int32, bitcast=True)
    return trial_code_sums(be, bo, fixed, down, SPLIT, PTX)
