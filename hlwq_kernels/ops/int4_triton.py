"""Fused INT4 group quantize + pack kernel: weight [N, K] -> int32 words [N, K/8] and scales [N, K/g].

One program owns ``BLOCK_N`` rows x ``BLOCK_G`` groups. A group is read in ``G // CHUNK`` chunks of a
power-of-two width; when it fits in one chunk the tile stays in registers and the weight is read
from memory exactly once, whatever the scale rule. The tile is held as ``[BLOCK_N, BLOCK_G, SEGS,
CHUNK // SEGS]`` so that a group is spread over few threads (``lanes``) and the per-group work each
of them repeats is amortized over many weights (see ``hlwq_kernels.ops.int4_asym_triton``). Semantics (scale rules, rounding, nibble order)
are those of ``hlwq_kernels.ops.int4`` and ``hlwq_reference.numpy.int4``, bit for bit:

- the quotient ``w / s`` is the correctly rounded float32 division, computed from one reciprocal per
  group with ``div_exact`` (``tl.div_rn`` for a tile whose scales fall outside its range);
- ``scale="mse"`` evaluates each trial scale by the exact sums ``A = Σ |w| |q|`` (float64; float32
  partial sums where they are provably exact: bf16 weights, groups of at most 128, ratio trials)
  and ``B = Σ q²`` and keeps the trial with the strictly lowest ``D = s (s B - 2 A)``.

bf16 weights with contiguous columns (``bf16_pairs``; rules "absmax" and "given") are read as int32
words of two weights: packed min / max for the absmax and packed 16-bit clamps for the codes
(``_jit.bf16_pair_range``, ``_jit.pack_code_pairs``; inline PTX on sm_90, plain Triton elsewhere).
"""

from __future__ import annotations

import functools

import torch

from hlwq_kernels.ops._jit import (
    bf16_hi,
    bf16_lo,
    bf16_pair_range,
    group_quotient,
    group_tile,
    group_word_pointers,
    int4_absmax_scale,
    int4_absmax_scale_cvt,
    pack_code_pairs,
    pack_codes,
    quotient_is_exact,
    reciprocal,
    rint,
    round_to_dtype,
)
from hlwq_kernels.ops._triton import cdiv, launch, next_power_of_2, require_triton, tl, triton
from hlwq_reference.numpy.int4 import LLOYD_STEPS, N_RATIOS, QMAX, QMIN, RATIOS

__all__ = ["int4_quantize_pack", "bf16_pairs", "device_ratios", "group_tiles", "packed_int16_ptx", "row_slabs"]

_MODES = {"given": 0, "absmax": 1, "mse": 2}
_MAX_CHUNK = 256
_MAX_GRID_Y = 65535  # CUDA's limit of grid axis 1
# Launch defaults, from sweeps on an H200 (bench/results/int4-h200-2026-12-02-b.md): 4 threads a
# group's chunk (each holds CHUNK / 4 contiguous weights), 1 warp, 1024 columns (8 groups of 128) a
# program; the MSE rule keeps those of bench/results/int4-h200-2026-12-02.md (2 warps, 2048 columns).
_LANES = 4
_WARPS = {"given": 1, "absmax": 1, "mse": 2}
_COLUMNS = {"given": 1024, "absmax": 1024, "mse": 2048}
_F32_SUM_MAX_GROUP = 128  # bf16 ratio trials: float32 sums of |w| |q| are exact up to this group size
_EPS = {dt: torch.finfo(dt).eps for dt in (torch.bfloat16, torch.float16, torch.float32)}
_RATIOS: dict[torch.device, torch.Tensor] = {}


def device_ratios(device: torch.device) -> torch.Tensor:
    """The float32 clip ratios of ``scale="mse"``, cached on ``device``."""
    if device not in _RATIOS:
        _RATIOS[device] = torch.from_numpy(RATIOS).to(device)
    return _RATIOS[device]


@triton.jit
def _group_sum(v):
    """Per-group sums of a tile ``[BN, BG, SEGS, W]`` -> ``[BN, BG]``."""
    return tl.sum(tl.sum(v, axis=3), axis=2)


@triton.jit
def _try_scale(
    trial, x, w_ptrs, mask4, stride_wk, amax, best_s, best_d, best_a, best_b,
    NCHUNK: tl.constexpr, CHUNK: tl.constexpr, F32_SUMS: tl.constexpr, QMIN: tl.constexpr, QMAX: tl.constexpr,
):
    """Evaluate trial scales [BN, BG] by ``D = s (s Σ q² - 2 Σ |w| |q|)``; keep them where D is strictly lower."""
    inv = reciprocal(trial)
    fast = quotient_is_exact(trial, inv, amax)
    sa = tl.zeros(trial.shape, tl.float64)
    sb = tl.zeros(trial.shape, tl.float32)
    for c in range(NCHUNK):
        if NCHUNK > 1:
            x = tl.load(w_ptrs + c * CHUNK * stride_wk, mask=mask4, other=0.0).to(tl.float32)
        a = tl.abs(x)
        q = rint(tl.minimum(group_quotient(a, trial[:, :, None, None], inv[:, :, None, None], fast),
                            tl.where(x < 0.0, -QMIN, QMAX).to(tl.float32)))
        sb += _group_sum(q * q)
        if F32_SUMS:  # exact in float32 (see the module docstring) when every step stays normal
            if fast:
                sa += _group_sum(a * q).to(tl.float64)
            else:
                sa += _group_sum(a.to(tl.float64) * q.to(tl.float64))
        else:
            sa += _group_sum(a.to(tl.float64) * q.to(tl.float64))
    s64 = trial.to(tl.float64)
    d = s64 * (s64 * sb.to(tl.float64) - 2.0 * sa)
    better = d < best_d
    return (tl.where(better, trial, best_s), tl.where(better, d, best_d), tl.where(better, sa, best_a),
            tl.where(better, sb, best_b))


@triton.jit
def _int4_quantize_pack_kernel(
    w_ptr, scale_ptr, packed_ptr, ratios_ptr, N, NG, K8, stride_wn, stride_wk, eps,
    G: tl.constexpr, CHUNK: tl.constexpr, SEGS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
    MODE: tl.constexpr, N_RATIOS: tl.constexpr, LLOYD_STEPS: tl.constexpr, F32_SUMS: tl.constexpr,
    QMIN: tl.constexpr, QMAX: tl.constexpr, PAIRS: tl.constexpr, PTX: tl.constexpr,
):
    NCHUNK: tl.constexpr = G // CHUNK
    W: tl.constexpr = CHUNK // SEGS
    DT: tl.constexpr = scale_ptr.dtype.element_ty
    rows, grps, mask2, mask4, w_ptrs, p_ptrs = group_tile(
        w_ptr, packed_ptr, N, NG, K8, stride_wn, stride_wk, G, CHUNK, SEGS, BLOCK_N, BLOCK_G)
    s_offs = rows.to(tl.int64)[:, None] * NG + grps[None, :]
    amax = tl.zeros([BLOCK_N, BLOCK_G], tl.float32)
    if PAIRS:  # bf16 pairs as int32 words (MODE != 2): STEP words a chunk, range by packed min / max
        w_ptrs = group_word_pointers(w_ptr, rows, grps, stride_wn, G, CHUNK, SEGS)
        STEP: tl.constexpr = CHUNK // 2
        if NCHUNK == 1:
            x = tl.load(w_ptrs, mask=mask4, other=0)
        for c in range(NCHUNK):
            if NCHUNK > 1:
                x = tl.load(w_ptrs + c * STEP, mask=mask4, other=0)
            lo, hi = bf16_pair_range(x, PTX)
            amax = tl.maximum(amax, tl.maximum(hi, -lo))
    else:
        STEP: tl.constexpr = CHUNK
        if NCHUNK == 1:
            x = tl.load(w_ptrs, mask=mask4, other=0.0).to(tl.float32)
        else:
            x = tl.zeros([BLOCK_N, BLOCK_G, SEGS, W], tl.float32)
        for c in range(NCHUNK):
            if NCHUNK > 1:
                x = tl.load(w_ptrs + c * CHUNK * stride_wk, mask=mask4, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.max(tl.max(tl.abs(x), axis=2), axis=2))

    if MODE == 0:
        s = tl.load(scale_ptr + s_offs, mask=mask2, other=1.0).to(tl.float32)
    elif MODE == 1:
        s = int4_absmax_scale_cvt(amax, eps, DT, PTX)
    else:
        # Ratio trials r * absmax (r = 1 first), then Lloyd updates of the best so far.
        best_s = amax
        best_d = tl.full([BLOCK_N, BLOCK_G], float("inf"), tl.float64)
        best_a = tl.zeros([BLOCK_N, BLOCK_G], tl.float64)
        best_b = tl.zeros([BLOCK_N, BLOCK_G], tl.float32)
        for t in range(N_RATIOS):
            trial = int4_absmax_scale(amax * tl.load(ratios_ptr + t), eps, DT)
            best_s, best_d, best_a, best_b = _try_scale(
                trial, x, w_ptrs, mask4, stride_wk, amax, best_s, best_d, best_a, best_b,
                NCHUNK, CHUNK, F32_SUMS, QMIN, QMAX)
        for _ in range(LLOYD_STEPS):
            ls = (best_a / tl.maximum(best_b, 1.0).to(tl.float64)).to(tl.float32)
            trial = round_to_dtype(tl.where(best_b > 0.0, ls, best_s), DT)
            trial = tl.where(trial == 0.0, eps, trial)
            best_s, best_d, best_a, best_b = _try_scale(
                trial, x, w_ptrs, mask4, stride_wk, amax, best_s, best_d, best_a, best_b,
                NCHUNK, CHUNK, False, QMIN, QMAX)
        s = best_s
    if MODE != 0:
        tl.store(scale_ptr + s_offs, s.to(DT), mask=mask2)

    inv = reciprocal(s)
    fast = quotient_is_exact(s, inv, amax)
    s4 = s[:, :, None, None]
    inv4 = inv[:, :, None, None]
    for c in range(NCHUNK):
        if PAIRS:
            if NCHUNK > 1:
                x = tl.load(w_ptrs + c * STEP, mask=mask4, other=0)
            ye = group_quotient(bf16_lo(x), s4, inv4, fast)
            yo = group_quotient(bf16_hi(x), s4, inv4, fast)
            if MODE == 0:  # a given scale bounds nothing: clamp first (|y| <= 7.5 (1 + 2**-8) otherwise)
                ye = tl.minimum(tl.maximum(ye, QMIN), QMAX)
                yo = tl.minimum(tl.maximum(yo, QMIN), QMAX)
            words = pack_code_pairs(ye, yo, 0.0, PTX)
        else:
            if NCHUNK > 1:
                x = tl.load(w_ptrs + c * CHUNK * stride_wk, mask=mask4, other=0.0).to(tl.float32)
            words = pack_codes(tl.minimum(tl.maximum(group_quotient(x, s4, inv4, fast), QMIN), QMAX))
        tl.store(p_ptrs + c * (CHUNK // 8), words, mask=mask4)


@functools.lru_cache(maxsize=4096)  # pure; a launch's host time is a few µs less
def group_tiles(n: int, n_groups: int, group_size: int, elem_size: int, num_warps: int, lanes: int,
                reps: int = 1, block_g: int | None = None, min_rows: int = 1) -> tuple[int, int, int, int]:
    """(CHUNK, SEGS, BLOCK_G, BLOCK_N) of a group-tiled kernel: a power-of-two chunk dividing the
    group, cut into ``SEGS`` segments of ``lanes`` 16-byte vectors (the threads that share a group's
    chunk), and ``reps`` (row, group) pairs a thread, i.e. ``num_warps * 32 / lanes * reps`` pairs a
    program (``BLOCK_G`` groups of ``BLOCK_N`` rows, ``BLOCK_N >= min_rows``)."""
    chunk = min(group_size & -group_size, _MAX_CHUNK)
    vec = max(1, 16 // elem_size)
    width = min(chunk, max(8, lanes * vec))
    pairs = num_warps * 32 * vec // width * reps
    if chunk < group_size:
        block_g = 1
    elif block_g is None:
        block_g = max(1, 256 // chunk)
    block_g = min(block_g, next_power_of_2(n_groups))
    block_n = max(min_rows, pairs // block_g)
    return chunk, chunk // width, block_g, min(block_n, max(min_rows, next_power_of_2(n)))


@functools.lru_cache(maxsize=4096)
def _fit_block_g(n_groups: int, widest: int) -> int:
    """The power of two ``<= widest`` groups a program that pads ``n_groups`` least (the widest of
    those): 40 groups of K = 5120 take 8 a program, not 16 with a third program half empty."""
    sizes = [1 << i for i in range(widest.bit_length())]
    return min(sizes, key=lambda b: (-(-n_groups // b) * b, -b))


def bf16_pairs(w: torch.Tensor) -> bool:
    """Whether a kernel can read ``w`` as int32 words of two bf16 weights (``_jit.bf16_pair_range``):
    bf16, columns contiguous, rows an even number of weights apart, 4-byte aligned."""
    return w.dtype == torch.bfloat16 and w.stride(1) == 1 and w.stride(0) % 2 == 0 and w.data_ptr() % 4 == 0


def packed_int16_ptx(w: torch.Tensor) -> bool:
    """Whether the kernels may use the inline PTX of ``_jit.pack_code_pairs`` (``min.s16x2``, sm_90+) and
    ``bf16_pair_range`` on ``w``'s device; otherwise (the interpreter, older GPUs) their plain-Triton twins."""
    return w.is_cuda and _sm90(w.device.index)


@functools.cache
def _sm90(index: int | None) -> bool:
    return torch.cuda.get_device_capability(index) >= (9, 0)


@functools.lru_cache(maxsize=4096)
def row_slabs(n: int, block_n: int) -> tuple[tuple[int, int], ...]:
    """Row ranges of at most ``_MAX_GRID_Y`` blocks of ``block_n`` rows (one launch each; grid axis 1
    holds the row blocks): ``((0, n),)`` for any weight below about a million rows."""
    step = _MAX_GRID_Y * block_n
    return tuple((r0, min(n, r0 + step)) for r0 in range(0, n, step))


def int4_quantize_pack(
    w: torch.Tensor,
    group_size: int,
    rule: str,
    scale: torch.Tensor | None = None,
    block_g: int | None = None,
    num_warps: int | None = None,
    lanes: int = _LANES,
    reps: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize and pack ``w`` [N, K] in one pass; ``rule`` is "absmax", "mse" or "given" (uses ``scale``).

    Returns (packed int32 [N, K/8], scale [N, K/g] in ``w.dtype``, or ``scale`` itself when given).
    Inputs are assumed validated by ``hlwq_kernels.ops.int4``. ``block_g``, ``num_warps``, ``lanes``
    (threads per group) and ``reps`` ((row, group) pairs a thread) tune the launch (``group_tiles``).
    """
    require_triton()
    n, k = w.shape
    n_groups = k // group_size
    packed = torch.empty((n, k // 8), dtype=torch.int32, device=w.device)
    if rule == "given":
        scale = scale.contiguous()
    else:
        scale = torch.empty((n, n_groups), dtype=w.dtype, device=w.device)
    num_warps = num_warps or _WARPS[rule]
    block_g = block_g or _fit_block_g(n_groups, max(1, _COLUMNS[rule] // group_size))
    chunk, segs, block_g, block_n = group_tiles(n, n_groups, group_size, w.element_size(), num_warps, lanes, reps,
                                                block_g)
    for r0, r1 in row_slabs(n, block_n):
        part = (w, scale, packed) if r1 - r0 == n else (w[r0:r1], scale[r0:r1], packed[r0:r1])
        launch(
            _int4_quantize_pack_kernel, (cdiv(n_groups, block_g), cdiv(r1 - r0, block_n), 1), w.device,
            *part, device_ratios(w.device), r1 - r0, n_groups, k // 8, w.stride(0), w.stride(1),
            _EPS[scale.dtype] if rule != "given" else 0.0,
            G=group_size, CHUNK=chunk, SEGS=segs, BLOCK_N=block_n, BLOCK_G=block_g, MODE=_MODES[rule],
            N_RATIOS=N_RATIOS, LLOYD_STEPS=LLOYD_STEPS,
            F32_SUMS=w.dtype == torch.bfloat16 and group_size <= _F32_SUM_MAX_GROUP, QMIN=QMIN, QMAX=QMAX,
            PAIRS=rule != "mse" and bf16_pairs(w), PTX=packed_int16_ptx(w), num_warps=num_warps,
        )
    return packed, scale
