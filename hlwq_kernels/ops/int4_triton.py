"""Fused INT4 group quantize + pack kernel: weight [N, K] -> int32 words [N, K/8] and scales [N, K/g].

One program owns ``BLOCK_N`` rows x ``BLOCK_G`` groups. A group is read in ``G // CHUNK`` chunks of a
power-of-two width; when it fits in one chunk the tile stays in registers and the weight is read
from memory exactly once. Semantics (scale rules, rounding, nibble order) are those of
``hlwq_kernels.ops.int4``; the quotient uses IEEE division (``tl.div_rn``) by the scale as stored and
rounds half to even by adding 1.5 * 2**23 (the float32 sum then holds the code in its low bits).
"""

from __future__ import annotations

import torch

from hlwq_kernels.ops._triton import launch, require_triton, triton, tl
from hlwq_kernels.ops.int4 import ABSMAX_DIVISOR, LLOYD_STEPS, MARGIN, N_RATIOS, trial_ratios

__all__ = ["int4_quantize_pack"]

_MODES = {"given": 0, "absmax": 1, "mse": 2}
_MAX_CHUNK = 256
_TILE = 4096  # elements a program; block_n=16 rows for group 128 was fastest in the H100 sweep

if triton is not None:

    @triton.jit
    def _int4_quantize_pack_kernel(
        w_ptr, scale_ptr, packed_ptr, ratios_ptr,
        N, NG, K8, stride_wn, stride_wk, eps,
        G: tl.constexpr, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_G: tl.constexpr,
        MODE: tl.constexpr, SCALE_BF16: tl.constexpr,
        N_RATIOS: tl.constexpr, N_TRIALS: tl.constexpr, MARGIN: tl.constexpr,
        DIVISOR: tl.constexpr,
    ):
        NCHUNK: tl.constexpr = G // CHUNK
        MAGIC: tl.constexpr = 12582912.0  # 1.5 * 2**23: x + MAGIC rounds x to an integer, half to even
        MAGIC_BITS: tl.constexpr = 0x4B400000
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        grps = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
        cols = tl.arange(0, CHUNK)
        mask2 = (rows < N)[:, None] & (grps < NG)[None, :]
        mask3 = mask2[:, :, None]
        w_ptrs = (
            w_ptr
            + rows.to(tl.int64)[:, None, None] * stride_wn
            + (grps[None, :, None] * G + cols[None, None, :]).to(tl.int64) * stride_wk
        )
        s_offs = rows.to(tl.int64)[:, None] * NG + grps[None, :]
        if NCHUNK == 1:
            x = tl.load(w_ptrs, mask=mask3, other=0.0).to(tl.float32)

        if MODE == 0:
            s = tl.load(scale_ptr + s_offs, mask=mask2, other=1.0).to(tl.float32)
        else:
            amax = tl.full([BLOCK_N, BLOCK_G], 0.0, tl.float32)
            for c in range(NCHUNK):
                if NCHUNK > 1:
                    x = tl.load(w_ptrs + c * CHUNK * stride_wk, mask=mask3, other=0.0).to(tl.float32)
                amax = tl.maximum(amax, tl.max(tl.abs(x), axis=2))
            # Trial 0 is the absmax scale (ratio 1); "mse" goes on with smaller clip ratios, then
            # Lloyd updates of the best scale so far, keeping a trial only if clearly better.
            best_s = amax
            best_e = tl.full([BLOCK_N, BLOCK_G], float("inf"), tl.float32)
            best_next = amax
            for t in range(N_TRIALS):
                ratio = tl.load(ratios_ptr + tl.minimum(t, N_RATIOS - 1))
                trial = tl.where(t < N_RATIOS, tl.div_rn(amax * ratio, DIVISOR), best_next)
                if SCALE_BF16:  # round to nearest even by hand: the interpreter's cast truncates
                    bits = trial.to(tl.int32, bitcast=True)
                    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
                    trial = bits.to(tl.float32, bitcast=True)
                else:
                    trial = trial.to(scale_ptr.dtype.element_ty).to(tl.float32)
                trial = tl.where(trial == 0.0, eps, trial)
                if N_TRIALS == 1:
                    best_s = trial
                else:
                    err = tl.full([BLOCK_N, BLOCK_G], 0.0, tl.float32)
                    swq = tl.full([BLOCK_N, BLOCK_G], 0.0, tl.float32)
                    sqq = tl.full([BLOCK_N, BLOCK_G], 0.0, tl.float32)
                    for c in range(NCHUNK):
                        if NCHUNK > 1:
                            x = tl.load(w_ptrs + c * CHUNK * stride_wk, mask=mask3, other=0.0).to(tl.float32)
                        y = tl.minimum(tl.maximum(tl.div_rn(x, trial[:, :, None]), -8.0), 7.0)
                        q = ((y + MAGIC).to(tl.int32, bitcast=True) - MAGIC_BITS).to(tl.float32)
                        d = x - q * trial[:, :, None]
                        err += tl.sum(d * d, axis=2)
                        swq += tl.sum(x * q, axis=2)
                        sqq += tl.sum(q * q, axis=2)
                    nxt = tl.where(sqq > 0.0, tl.div_rn(swq, tl.maximum(sqq, 1.0)), trial)
                    better = err < best_e * (1.0 - MARGIN)
                    best_s = tl.where(better, trial, best_s)
                    best_e = tl.where(better, err, best_e)
                    best_next = tl.where(better, nxt, best_next)
            s = best_s
            tl.store(scale_ptr + s_offs, s.to(scale_ptr.dtype.element_ty), mask=mask2)

        words = tl.arange(0, CHUNK // 8)
        p_ptrs = (
            packed_ptr
            + rows.to(tl.int64)[:, None, None] * K8
            + (grps[None, :, None] * (G // 8) + words[None, None, :])
        )
        shifts = (tl.arange(0, 8) * 4)[None, None, None, :]
        for c in range(NCHUNK):
            if NCHUNK > 1:
                x = tl.load(w_ptrs + c * CHUNK * stride_wk, mask=mask3, other=0.0).to(tl.float32)
            y = tl.minimum(tl.maximum(tl.div_rn(x, s[:, :, None]), -8.0), 7.0)
            u = (y + MAGIC).to(tl.int32, bitcast=True) - (MAGIC_BITS - 8)
            u = tl.reshape(u, [BLOCK_N, BLOCK_G, CHUNK // 8, 8]) << shifts
            tl.store(p_ptrs + c * (CHUNK // 8), tl.sum(u, axis=3), mask=mask3)


def _tiles(n: int, n_groups: int, group_size: int, block_n: int | None) -> tuple[int, int, int]:
    """(CHUNK, BLOCK_G, BLOCK_N): power-of-two chunk dividing the group, about _TILE elements a program."""
    chunk = min(group_size & -group_size, _MAX_CHUNK)
    block_g = 1 if chunk < group_size else min(triton.next_power_of_2(n_groups), max(1, 256 // chunk))
    if block_n is None:
        block_n = max(1, _TILE // (chunk * block_g))
    return chunk, block_g, min(block_n, triton.next_power_of_2(n))


def int4_quantize_pack(
    w: torch.Tensor,
    group_size: int,
    rule: str,
    scale: torch.Tensor | None = None,
    block_n: int | None = None,
    num_warps: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize and pack ``w`` [N, K] in one pass; ``rule`` is "absmax", "mse" or "given" (uses ``scale``).

    Returns (packed int32 [N, K/8], scale [N, K/g] in ``w.dtype``, or ``scale`` itself when given).
    Inputs are assumed validated by ``hlwq_kernels.ops.int4``.
    """
    require_triton()
    n, k = w.shape
    n_groups = k // group_size
    packed = torch.empty((n, k // 8), dtype=torch.int32, device=w.device)
    if rule == "given":
        scale = scale.contiguous()
    else:
        scale = torch.empty((n, n_groups), dtype=w.dtype, device=w.device)
    chunk, block_g, block_n = _tiles(n, n_groups, group_size, block_n)
    grid = (triton.cdiv(n, block_n), triton.cdiv(n_groups, block_g))
    launch(
        _int4_quantize_pack_kernel, grid, w.device,
        w, scale, packed, trial_ratios(w.device),
        n, n_groups, k // 8, w.stride(0), w.stride(1), torch.finfo(scale.dtype).eps,
        G=group_size, CHUNK=chunk, BLOCK_N=block_n, BLOCK_G=block_g,
        MODE=_MODES[rule], SCALE_BF16=scale.dtype == torch.bfloat16, N_RATIOS=N_RATIOS,
        N_TRIALS=N_RATIOS + LLOYD_STEPS if rule == "mse" else 1, MARGIN=MARGIN,
        DIVISOR=ABSMAX_DIVISOR, num_warps=num_warps,
    )
    return packed, scale
