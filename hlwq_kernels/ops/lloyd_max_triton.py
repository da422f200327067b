"""Triton kernels for scalar codebooks: nearest-level assignment (quantize / one Lloyd step) and gather.

16-bit inputs (bf16, fp16) have 65536 possible values: ``quantize_lookup`` reads each input's bit
pattern and gathers its index from a 65536-entry table built once per codebook with the torch path
(so it is the torch path, bit for bit, including ties, ±inf and NaN); one load, one gather and one
store per element.

Wider inputs (fp32, fp64) use the grid assignment below.

Assignment maps ``x`` to ``idx = #{k : x >= t_k}`` (ties go to the upper cell, NaN to 0) without a
binary search: a uniform grid over ``[t_0, t_last]`` with ``M`` cells and a lookup table
``lut[g] = #{k : g(t_k) < g}`` gives a lower bound, and ``K`` compares against
``t[lut[g]], ..., t[lut[g] + K - 1]`` finish it, where ``K`` is the most thresholds sharing one grid
cell (usually 1 or 2). ``g(v) = clamp(floor((v - lo) * inv_h), 0, M - 1)`` is evaluated with the same
floating-point operations on the host (to build the table) and in the kernel; it is monotone in ``v``,
which makes the count exact for every input.

The same kernel either stores the indices (quantize) or accumulates, per program, the weight and the
weighted sum of the samples of every cell and the squared error against the current levels (one Lloyd
step in one pass over the samples; a tiny float64 reduction over programs finishes it in torch).
"""

from __future__ import annotations

import numpy as np
import torch

from hlwq_kernels.ops._jit import codebook_index
from hlwq_kernels.ops._triton import PreparedCalls, cdiv, launch, next_power_of_2, tensor_key, tl, triton

__all__ = [
    "AssignTable", "assign_table", "quantize_triton", "quantize_lookup", "lloyd_step_triton", "dequantize_triton",
]

_MAX_GRID = 4096
_QUANT_BLOCK = 2048
_LOOKUP_BLOCK = 4096
_STATS_ELEMS = 8192  # elements of the [BLOCK, levels] one-hot tile per loop iteration
MAX_STEP_LEVELS = 256  # the one-pass Lloyd step kernel handles up to this many levels
_PREPARED = PreparedCalls()  # quantize / lookup / gather launches by input kind (_triton.PreparedCalls)


@triton.jit
def _assign_kernel(
    x_ptr, w_ptr, lut_ptr, thr_ptr, lev_ptr, idx_ptr, stats_ptr, err_ptr,
    n, lo, inv_h, grid_max, num_thr,
    F64: tl.constexpr, HAS_W: tl.constexpr, STORE_IDX: tl.constexpr, STATS: tl.constexpr,
    K: tl.constexpr, NLP: tl.constexpr, BLOCK: tl.constexpr, ITERS: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    cells = tl.arange(0, NLP)
    if STATS:
        lev = tl.load(lev_ptr + cells)
        acc_w = lev * 0.0
        acc_s = lev * 0.0
        acc_e = tl.sum(acc_w, axis=0)
    for it in range(ITERS):
        offs = (pid * ITERS + it) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        if F64:
            x = x.to(tl.float64)
        else:
            x = x.to(tl.float32)
        idx = codebook_index(x, lut_ptr, thr_ptr, lo, inv_h, grid_max, num_thr, K)
        if STORE_IDX:
            tl.store(idx_ptr + offs, idx.to(idx_ptr.dtype.element_ty), mask=mask)
        if STATS:
            if HAS_W:
                w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(x.dtype)
            else:
                w = tl.where(mask, 1.0, 0.0).to(x.dtype)
            onehot = idx[:, None] == cells[None, :]
            acc_w += tl.sum(tl.where(onehot, w[:, None], 0.0), axis=0)
            acc_s += tl.sum(tl.where(onehot, (w * x)[:, None], 0.0), axis=0)
            d = x - tl.load(lev_ptr + idx)
            acc_e += tl.sum(w * d * d, axis=0)
    if STATS:
        tl.store(stats_ptr + pid * 2 * NLP + cells, acc_w)
        tl.store(stats_ptr + pid * 2 * NLP + NLP + cells, acc_s)
        tl.store(err_ptr + pid, acc_e)


@triton.jit
def _gather_kernel(idx_ptr, lev_ptr, out_ptr, n, num_levels, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    idx = tl.load(idx_ptr + offs, mask=mask, other=0).to(tl.int32)
    idx = tl.minimum(tl.maximum(idx, 0), num_levels - 1)
    y = tl.load(lev_ptr + idx, mask=mask)
    tl.store(out_ptr + offs, y, mask=mask)


@triton.jit
def _lookup_kernel(bits_ptr, table_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    bits = tl.load(bits_ptr + offs, mask=mask, other=0).to(tl.int32) & 0xFFFF
    tl.store(out_ptr + offs, tl.load(table_ptr + bits), mask=mask)


class AssignTable:
    """Thresholds in the compute dtype plus the grid lookup table the assignment kernel reads."""

    def __init__(self, thresholds: np.ndarray, compute_dtype: torch.dtype, device: torch.device):
        npd = np.float64 if compute_dtype == torch.float64 else np.float32
        thr = np.asarray(thresholds, dtype=npd)
        self.num_thr = int(thr.size)
        self.compute_dtype = compute_dtype
        if thr.size and thr[-1] > thr[0]:
            gap = np.diff(thr)
            gap = gap[gap > 0].min()
            m = int(min(_MAX_GRID, 1 << int(np.ceil(np.log2(2 * (thr[-1] - thr[0]) / gap)))))
            self.lo = float(np.float32(thr[0]))
            self.inv_h = float(np.float32(m / (float(thr[-1]) - float(thr[0]))))
        else:
            m, self.lo, self.inv_h = 1, 0.0, 0.0
        self.grid_max = float(m - 1)
        g = self.grid_of(thr)
        counts = np.bincount(g, minlength=m)
        self.k = max(1, int(counts.max(initial=0)))
        lut = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int32)
        pad = np.full(self.k, np.inf, dtype=npd)
        self.lut = torch.from_numpy(lut).to(device)
        self.thr = torch.from_numpy(np.concatenate([thr, pad])).to(device)

    def grid_of(self, v: np.ndarray) -> np.ndarray:
        """Grid cell of each value, with the kernel's floating-point operations."""
        npd = v.dtype.type
        gf = (v - npd(self.lo)) * npd(self.inv_h)
        gf = np.where(gf > 0, gf, npd(0))
        gf = np.where(gf < self.grid_max, gf, npd(self.grid_max))
        return gf.astype(np.int64)


def assign_table(thresholds: np.ndarray, compute_dtype: torch.dtype, device: torch.device) -> AssignTable:
    """Build the lookup table for ``thresholds`` (sorted float64) on ``device``."""
    return AssignTable(thresholds, compute_dtype, device)


def _f64(table: AssignTable) -> bool:
    return table.compute_dtype == torch.float64


def quantize_triton(x: torch.Tensor, table: AssignTable, out_dtype: torch.dtype) -> torch.Tensor:
    """Indices ``#{k : x >= t_k}`` of a contiguous tensor, in ``out_dtype``."""
    xf = x.reshape(-1)
    out = torch.empty(xf.shape, dtype=out_dtype, device=x.device)
    n = xf.numel()
    tail = (n, table.lo, table.inv_h, table.grid_max, table.num_thr)
    key = None
    if x.is_cuda:
        key = (tensor_key(xf), out_dtype, tensor_key(table.lut), tensor_key(table.thr), table.k, *tail)
    if n and not _PREPARED.run(key, xf, xf, table.lut, table.thr, table.thr, out, out, out):
        prepared = launch(
            _assign_kernel, (cdiv(n, _QUANT_BLOCK),), x.device, xf, xf, table.lut, table.thr, table.thr, out, out, out,
            *tail, F64=_f64(table), HAS_W=False, STORE_IDX=True, STATS=False,
            K=table.k, NLP=2, BLOCK=_QUANT_BLOCK, ITERS=1,
        )
        _PREPARED.add(key, prepared, tail)
    return out.reshape(x.shape)


def quantize_lookup(x: torch.Tensor, table: torch.Tensor, block: int = _LOOKUP_BLOCK, num_warps: int = 4) -> torch.Tensor:
    """``table[bits(x)]`` of a contiguous bf16/fp16 tensor, ``table`` indexed by the unsigned 16-bit pattern."""
    bits = x.reshape(-1).view(torch.int16)
    out = torch.empty(bits.shape, dtype=table.dtype, device=x.device)
    n = bits.numel()
    key = (tensor_key(bits), tensor_key(table), block, num_warps) if x.is_cuda else None
    if n and not _PREPARED.run(key, bits, table, out):
        prepared = launch(_lookup_kernel, (cdiv(n, block),), x.device, bits, table, out, n, BLOCK=block,
                          num_warps=num_warps)
        _PREPARED.add(key, prepared, (n,))
    return out.reshape(x.shape)


def lloyd_step_triton(
    x: torch.Tensor, w: torch.Tensor | None, table: AssignTable, levels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, float]:
    """One pass over flat ``x``: per-cell weight and weighted sum (float64) and the squared error."""
    nl = table.num_thr + 1
    if nl > MAX_STEP_LEVELS:
        raise ValueError(f"the Triton Lloyd step handles at most {MAX_STEP_LEVELS} levels, got {nl}")
    nlp = max(2, next_power_of_2(nl))
    block = max(16, _STATS_ELEMS // nlp)
    n = x.numel()
    iters = int(min(64, max(1, next_power_of_2(max(1, n // (block * 2048))))))
    programs = max(1, cdiv(n, block * iters))
    lev = np.zeros(nlp)
    lev[:nl] = levels
    lev_t = torch.tensor(lev, dtype=table.compute_dtype, device=x.device)
    stats = torch.full((programs, 2, nlp), float("nan"), dtype=table.compute_dtype, device=x.device)
    err = torch.full((programs,), float("nan"), dtype=table.compute_dtype, device=x.device)
    launch(
        _assign_kernel, (programs,), x.device,
        x, x if w is None else w, table.lut, table.thr, lev_t, stats, stats, err,
        n, table.lo, table.inv_h, table.grid_max, table.num_thr,
        F64=_f64(table), HAS_W=w is not None, STORE_IDX=False, STATS=True,
        K=table.k, NLP=nlp, BLOCK=block, ITERS=iters,
    )
    tot = stats.to(torch.float64).sum(0).cpu().numpy()
    return tot[0, :nl], tot[1, :nl], float(err.to(torch.float64).sum())


def dequantize_triton(idx: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """``levels[idx]`` (indices clamped to the valid range), in the dtype of ``levels``."""
    flat = idx.reshape(-1)
    out = torch.empty(flat.shape, dtype=levels.dtype, device=idx.device)
    n = flat.numel()
    key = (tensor_key(flat), tensor_key(levels)) if idx.is_cuda else None
    if n and not _PREPARED.run(key, flat, levels, out):
        prepared = launch(_gather_kernel, (cdiv(n, 1024),), idx.device, flat, levels, out, n, levels.numel(),
                          BLOCK=1024)
        _PREPARED.add(key, prepared, (n, levels.numel()))
    return out.reshape(idx.shape)
