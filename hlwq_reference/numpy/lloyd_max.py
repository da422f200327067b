"""NumPy float64 reference for Lloyd–Max codebooks (same semantics as ``hlwq_kernels.ops.lloyd_max``).

quantize(x) = #{k : x >= t_k} (ties go to the upper cell, NaN to 0); thresholds are midpoints.
Gaussian: Newton on F(t) = t - (c_k + c_{k+1})/2 with a dense Jacobian; empirical: weighted Lloyd.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.special import erfc, ndtri

__all__ = ["Codebook", "lloyd_max", "quantize", "dequantize", "lloyd_step", "gaussian_mse"]


@dataclasses.dataclass(eq=False)
class Codebook:
    levels: np.ndarray
    thresholds: np.ndarray
    mse: float
    iterations: int
    converged: bool


def _codebook(levels: np.ndarray, mse: float, iterations: int, converged: bool) -> Codebook:
    """A codebook with its midpoint thresholds."""
    return Codebook(levels, (levels[:-1] + levels[1:]) / 2, mse, iterations, converged)


def quantize(x: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Index of the cell of every element: the number of thresholds t with x >= t."""
    return np.sum(np.asarray(x)[..., None] >= np.asarray(thresholds), axis=-1)


def dequantize(idx: np.ndarray, levels: np.ndarray) -> np.ndarray:
    return np.asarray(levels)[np.asarray(idx)]


def _phi(x):
    return np.exp(-x * x / 2) / np.sqrt(2 * np.pi)


def _cells(t):
    """Mass P = Φ(b) − Φ(a) and first moment φ(a) − φ(b) of each cell [a, b)."""
    a = np.concatenate([[-np.inf], t])
    b = np.concatenate([t, [np.inf]])
    upper = lambda v: erfc(v / np.sqrt(2)) / 2  # noqa: E731  P(X > v)
    mass = np.where(a >= 0, upper(a) - upper(b), upper(-b) - upper(-a))
    return a, b, mass, _phi(a) - _phi(b)


def gaussian_mse(levels: np.ndarray) -> float:
    """E[(X − y_idx)²], X ~ N(0,1), midpoint thresholds: 1 − 2 Σ y_i N_i + Σ y_i² P_i."""
    _, _, mass, first = _cells((levels[:-1] + levels[1:]) / 2)
    return float(1 - 2 * np.sum(levels * first) + np.sum(levels**2 * mass))


def _gaussian(n: int, tol: float, max_iter: int) -> Codebook:
    if n == 1:
        return _codebook(np.zeros(1), 1.0, 0, True)
    t = np.sqrt(3) * ndtri(np.arange(1, n) / n)
    for it in range(1, max_iter + 1):
        a, b, mass, first = _cells(t)
        c = first / mass
        with np.errstate(invalid="ignore"):  # 0 * inf at the outer edges, replaced by 0
            dc_da = np.where(np.isfinite(a), _phi(a) * (c - a) / mass, 0)
            dc_db = np.where(np.isfinite(b), _phi(b) * (b - c) / mass, 0)
        # dc[j, k] = ∂c_j/∂t_k: cell j = [t_{j-1}, t_j)
        dc = np.zeros((n, n - 1))
        dc[np.arange(1, n), np.arange(n - 1)] = dc_da[1:]
        dc[np.arange(n - 1), np.arange(n - 1)] = dc_db[:-1]
        jac = np.eye(n - 1) - (dc[:-1] + dc[1:]) / 2
        step = np.linalg.solve(jac, -(t - (c[:-1] + c[1:]) / 2))
        t = t + step
        if np.abs(step).max() <= tol:
            break
    _, _, mass, first = _cells(t)
    levels = first / mass
    return _codebook(levels, gaussian_mse(levels), it, np.abs(step).max() <= tol)


def lloyd_step(x: np.ndarray, w: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell total weight and weighted sum of the samples, cells cut at the midpoints."""
    idx = quantize(x, (levels[:-1] + levels[1:]) / 2)
    wsum = np.bincount(idx, weights=w, minlength=levels.size)
    ssum = np.bincount(idx, weights=w * x, minlength=levels.size)
    return wsum, ssum


def _empirical(x: np.ndarray, w: np.ndarray, n: int, tol: float, max_iter: int) -> Codebook:
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(w)) and np.all(w >= 0) and w.sum() > 0):
        raise ValueError("samples must be finite, weights finite, non-negative, not all zero")
    keep = w > 0
    uniq, inv = np.unique(x[keep], return_inverse=True)
    if uniq.size <= n:
        levels = np.concatenate([uniq, np.full(n - uniq.size, uniq[-1])])
        return _codebook(levels, 0.0, 0, True)
    cum = np.cumsum(np.bincount(inv, weights=w[keep]))
    pos = np.searchsorted(cum, (2 * np.arange(n) + 1) / (2 * n) * cum[-1])
    pos = np.clip(np.maximum.accumulate(pos - np.arange(n)), 0, uniq.size - n) + np.arange(n)
    levels = uniq[pos]
    span = levels[-1] - levels[0]
    converged = False
    for it in range(1, max_iter + 1):
        wsum, ssum = lloyd_step(x, w, levels)
        new = np.where(wsum > 0, ssum / np.where(wsum > 0, wsum, 1), levels)
        step = np.abs(new - levels).max()
        levels = new
        if step <= tol * span:
            converged = True
            break
    err = x - dequantize(quantize(x, (levels[:-1] + levels[1:]) / 2), levels)
    return _codebook(levels, float(np.sum(w * err**2) / w.sum()), it, converged)


def lloyd_max(bits=None, levels=None, samples=None, weights=None, tol=1e-12, max_iter=1000) -> Codebook:
    """Gaussian (samples=None) or weighted empirical Lloyd–Max codebook with levels = 2**bits."""
    if (bits is None) == (levels is None):
        raise ValueError("give exactly one of bits and levels")
    n = 2**bits if levels is None else levels
    if samples is None:
        return _gaussian(n, tol, max_iter)
    x = np.asarray(samples, dtype=np.float64).ravel()
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    return _empirical(x, w, n, tol, max_iter)
