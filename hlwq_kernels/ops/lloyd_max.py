"""Lloyd–Max scalar quantizers: exact Gaussian codebooks and weighted empirical codebooks.

A codebook with ``n`` sorted levels ``y_0 < ... < y_{n-1}`` and thresholds ``t_k = (y_k + y_{k+1}) / 2``
maps ``x`` to ``idx = #{k : x >= t_k}``: a value exactly on a threshold goes to the upper cell, NaN
goes to cell 0, ``±inf`` to the outer cells. Comparisons run in float64 for float64 inputs and in
float32 otherwise (thresholds rounded to float32); the NumPy/JAX references, the torch path and the
Triton kernels all use this rule.

Gaussian case (``samples=None``): Newton's method on the stationarity equations
``F_k(t) = t_k - (c_k(t) + c_{k+1}(t)) / 2 = 0`` with the tridiagonal Jacobian, where
``c_j = (φ(a) - φ(b)) / (Φ(b) - Φ(a))`` is the centroid of cell ``j = [a, b)``; tail masses use erfc.
Steps are damped (halved until ``max|F|`` decreases); when damping fails a plain Lloyd step is taken.

Empirical case: weighted Lloyd iterations from a deterministic start, the weighted quantiles at
``(2i + 1) / 2n`` taken among the distinct sample values and made strictly increasing. The samples
are sorted once and float64 prefix sums of ``w`` and ``w·x`` are built once; each step then finds the
cell boundaries with ``searchsorted`` and the cell weights and sums as prefix differences
(O(levels · log N), exact cell membership). The final error is one direct pass over the samples
(Triton on CUDA, torch on CPU).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers

import numpy as np
import torch
from scipy.linalg import solve_banded
from scipy.special import erfc, ndtri

from hlwq_kernels.ops._checks import as_int
from hlwq_kernels.ops._triton import use_triton

__all__ = ["Codebook", "lloyd_max", "gaussian_codebook", "original_release_codebook"]

_SQRT2 = math.sqrt(2.0)
_SQRT2PI = math.sqrt(2.0 * math.pi)
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_16BIT = (torch.float16, torch.bfloat16)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rounded(values: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """float64 ``values`` rounded once to ``dtype``, on ``device``."""
    return torch.tensor(values, dtype=torch.float64).to(dtype=dtype, device=device)


def _assign_torch(x: torch.Tensor, thr: torch.Tensor) -> torch.Tensor:
    """``#{k : x >= thr_k}`` as int64 (NaN -> 0)."""
    idx = torch.bucketize(x, thr, right=True)
    return idx.masked_fill_(torch.isnan(x), 0)


@dataclasses.dataclass(frozen=True, eq=False)
class Codebook:
    """A scalar quantizer: sorted ``levels``, midpoint ``thresholds`` and its MSE.

    ``mse`` is the expected squared error under N(0,1) for Gaussian codebooks and the weighted mean
    squared error over the samples for empirical ones. Tables derived from the codebook for a
    device (kernel lookup tables, rounded levels) are built on first use and kept (``cached``), so
    repeated calls copy nothing to the device.
    """

    levels: np.ndarray
    thresholds: np.ndarray
    mse: float
    iterations: int
    converged: bool
    _tables: dict = dataclasses.field(default_factory=dict, init=False, repr=False)

    @property
    def index_dtype(self) -> torch.dtype:
        """uint8 up to 256 levels, int16 up to 32768, else int32."""
        n = self.levels.size
        if n <= 256:
            return torch.uint8
        return torch.int16 if n <= 32768 else torch.int32

    def cached(self, key: tuple, build):
        """``build()`` the first time ``key`` is asked for, the same object afterwards."""
        if key not in self._tables:
            self._tables[key] = build()
        return self._tables[key]

    def _lookup_table(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The index of every 16-bit pattern of ``dtype`` (position = unsigned pattern), by the torch path."""
        patterns = torch.arange(1 << 16, dtype=torch.int32, device=device).to(torch.int16).view(dtype)
        return self.quantize(patterns, backend="torch")

    def quantize(self, x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
        """Index of the nearest level of every element: ``#{k : x >= thresholds[k]}``."""
        if not isinstance(x, torch.Tensor) or x.dtype not in _FLOAT_DTYPES:
            raise TypeError("quantize expects a floating-point torch.Tensor")
        cd = _compute_dtype(x.dtype)
        if use_triton(backend, x):
            from hlwq_kernels.ops import lloyd_max_triton as lt

            if x.dtype in _16BIT:
                table = self.cached(("lookup", x.dtype, x.device), lambda: self._lookup_table(x.dtype, x.device))
                return lt.quantize_lookup(x.contiguous(), table)
            table = self.cached(("assign", cd, x.device), lambda: lt.assign_table(self.thresholds, cd, x.device))
            return lt.quantize_triton(x.contiguous(), table, self.index_dtype)
        thr = self.cached(("thresholds", cd, x.device), lambda: _rounded(self.thresholds, cd, x.device))
        return _assign_torch(x.to(cd), thr).to(self.index_dtype)

    def dequantize(self, idx: torch.Tensor, dtype: torch.dtype = torch.float32, backend: str = "auto") -> torch.Tensor:
        """``levels[idx]`` in ``dtype`` (levels rounded from float64 once).

        Indices outside ``[0, len(levels))`` raise ValueError on the torch path; the Triton path
        clamps them (it does not spend a pass on checking).
        """
        if not isinstance(idx, torch.Tensor) or idx.dtype.is_floating_point or idx.dtype.is_complex:
            raise TypeError("dequantize expects an integer torch.Tensor of indices")
        lev = self.cached(("levels", dtype, idx.device), lambda: _rounded(self.levels, dtype, idx.device))
        if use_triton(backend, idx):
            from hlwq_kernels.ops import lloyd_max_triton as lt

            return lt.dequantize_triton(idx.contiguous(), lev)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.levels.size):
            raise ValueError(f"indices must lie in [0, {self.levels.size})")
        return lev[idx.long()]


def _codebook(levels: np.ndarray, mse: float, iterations: int, converged: bool) -> Codebook:
    levels = np.array(levels, dtype=np.float64)
    thresholds = (levels[:-1] + levels[1:]) / 2
    levels.setflags(write=False)
    thresholds.setflags(write=False)
    return Codebook(levels, thresholds, float(mse), int(iterations), bool(converged))


# ----------------------------------------------------------------------------- Gaussian


def _phi(x: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * x * x) / _SQRT2PI


def _upper_tail(x: np.ndarray) -> np.ndarray:
    return 0.5 * erfc(x / _SQRT2)


def _cell_moments(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Masses P and first moments N = φ(a) − φ(b) of the cells [a, b) under N(0,1)."""
    # Difference of the two tail masses on the side where both are small (no cancellation).
    mass = np.where(a >= 0, _upper_tail(a) - _upper_tail(b), _upper_tail(-b) - _upper_tail(-a))
    return mass, _phi(a) - _phi(b)


def _gaussian_cells(t: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Edges (a, b), masses P and first moments N of the cells cut by thresholds t."""
    a = np.concatenate([[-np.inf], t])
    b = np.concatenate([t, [np.inf]])
    return a, b, *_cell_moments(a, b)


def _gaussian_mse(levels: np.ndarray) -> float:
    """E[(X − q(X))²] for X ~ N(0,1) and the midpoint quantizer of ``levels``."""
    _, _, mass, first = _gaussian_cells((levels[:-1] + levels[1:]) / 2)
    return math.fsum([1.0, *(-2 * levels * first), *(levels * levels * mass)])


def _centroids(t: np.ndarray) -> np.ndarray:
    _, _, mass, first = _gaussian_cells(t)
    return first / mass


def _residual(t: np.ndarray) -> np.ndarray:
    c = _centroids(t)
    return t - (c[:-1] + c[1:]) / 2


def _newton_step(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The residual F(t) and the step d solving J d = −F for the tridiagonal Jacobian."""
    a, b, mass, first = _gaussian_cells(t)
    c = first / mass
    with np.errstate(invalid="ignore"):
        dca = np.where(np.isfinite(a), _phi(a) * (c - a) / mass, 0.0)  # ∂c_j/∂a_j
        dcb = np.where(np.isfinite(b), _phi(b) * (b - c) / mass, 0.0)  # ∂c_j/∂b_j
    m = t.size
    ab = np.zeros((3, m))
    ab[1] = 1 - (dcb[:-1] + dca[1:]) / 2  # ∂F_k/∂t_k
    ab[0, 1:] = -dcb[1:-1] / 2  # ∂F_k/∂t_{k+1}
    ab[2, :-1] = -dca[1:-1] / 2  # ∂F_{k+1}/∂t_k
    f = t - (c[:-1] + c[1:]) / 2
    return f, solve_banded((1, 1), ab, -f)


def _solve_gaussian(n: int, tol: float, max_iter: int) -> Codebook:
    if n == 1:
        return _codebook(np.zeros(1), 1.0, 0, True)
    # Start from the compander approximation (point density ∝ φ^(1/3), i.e. N(0, 3) quantiles).
    t = math.sqrt(3.0) * ndtri(np.arange(1, n) / n)
    converged = False
    it = 0
    while it < max_iter:
        it += 1
        f, d = _newton_step(t)
        f_norm = np.abs(f).max()
        alpha = 1.0
        while alpha > 1e-6:
            cand = t + alpha * d
            if np.all(np.diff(cand) > 0) and np.abs(_residual(cand)).max() < f_norm:
                break
            alpha /= 2
        else:  # damping failed: one Lloyd step (centroids, then midpoints)
            c = _centroids(t)
            cand = (c[:-1] + c[1:]) / 2
        step = np.abs(cand - t).max()
        t = cand
        if step <= tol or f_norm == 0.0:
            converged = True
            break
    levels = _centroids(t)
    levels = (levels - levels[::-1]) / 2  # exact symmetry
    return _codebook(levels, _gaussian_mse(levels), it, converged)


_MAX_LEVELS = 1 << 24


def _level_count(bits: int) -> int:
    """``2**bits`` for an integer ``bits`` in [0, 24], else TypeError / ValueError."""
    bits = as_int(bits, "bits", 0)
    if bits > 24:
        raise ValueError(f"bits must be at most 24, got {bits}")
    return 1 << bits


@functools.lru_cache(maxsize=None)
def gaussian_codebook(levels: int) -> Codebook:
    """The MSE-optimal codebook of N(0,1) with ``levels`` levels (cached; arrays are read-only)."""
    return lloyd_max(levels=levels)


def original_release_codebook(bits: int, outer: str = "inf") -> Codebook:
    """The original HLWQ release's codebook (docs/design.md §1), recomputed.

    Cell boundaries start evenly spaced on [-4, 4] (``2**bits + 1`` of them); the outer two are set
    to ±inf (``outer="inf"``) or kept at ±4 (``outer="clip"``, centroids of the truncated cells); then
    100 alternating updates (levels = centroids of the cells, inner boundaries = midpoints of the
    levels). The levels of the last centroid update are returned; ``mse`` is measured on N(0,1) with
    midpoint thresholds, like every Gaussian codebook here.
    """
    if outer not in ("inf", "clip"):
        raise ValueError(f"outer must be 'inf' or 'clip', got {outer!r}")
    n = _level_count(bits)
    edges = np.linspace(-4.0, 4.0, n + 1)
    if outer == "inf":
        edges[0], edges[-1] = -np.inf, np.inf
    for _ in range(100):
        mass, first = _cell_moments(edges[:-1], edges[1:])
        levels = first / mass
        edges[1:-1] = (levels[:-1] + levels[1:]) / 2
    return _codebook(levels, _gaussian_mse(levels), 100, False)


# ----------------------------------------------------------------------------- empirical


def _as_tensor(v, name: str) -> torch.Tensor:
    t = v.detach() if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must be real numbers")
    if not t.dtype.is_floating_point:
        t = t.to(torch.float64)
    return t.reshape(-1)


def _lloyd_step(x: torch.Tensor, w: torch.Tensor | None, levels: np.ndarray, triton: bool):
    """Per-cell weight and weighted sum (float64 numpy) and total weighted squared error."""
    cd = _compute_dtype(x.dtype)
    thr = (levels[:-1] + levels[1:]) / 2
    if triton:
        from hlwq_kernels.ops import lloyd_max_triton as lt

        if levels.size <= lt.MAX_STEP_LEVELS:
            return lt.lloyd_step_triton(x, w, lt.assign_table(thr, cd, x.device), levels)
    xc = x.to(cd)
    idx = _assign_torch(xc, _rounded(thr, cd, x.device))
    x64 = xc.to(torch.float64)
    w64 = torch.ones_like(x64) if w is None else w.to(torch.float64)
    lev = _rounded(levels, cd, x.device).to(torch.float64)
    wsum = torch.zeros(levels.size, dtype=torch.float64, device=x.device).scatter_add_(0, idx, w64)
    ssum = torch.zeros(levels.size, dtype=torch.float64, device=x.device).scatter_add_(0, idx, w64 * x64)
    err = float((w64 * (x64 - lev[idx]) ** 2).sum())
    return wsum.cpu().numpy(), ssum.cpu().numpy(), err


@dataclasses.dataclass(frozen=True)
class _SortedSamples:
    """Samples with weight > 0, sorted once, with float64 prefix sums (a leading 0, length size + 1).

    ``x`` holds the values in the compute dtype (the dtype the cell rule compares in), ``cum_w`` the
    prefix sums of the weights (None without weights: the prefix is the position) and ``cum_wx``
    those of ``w·x``. Memory: 8 bytes per sample for each prefix array (2 GiB each at 2^28 samples).
    """

    x: torch.Tensor
    cum_w: torch.Tensor | None
    cum_wx: torch.Tensor

    def weight_before(self, pos: torch.Tensor) -> torch.Tensor:
        """Total weight (float64) of the first ``pos`` sorted samples."""
        return pos.to(torch.float64) if self.cum_w is None else self.cum_w[pos]


def _prefix(v: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(v.numel() + 1, dtype=torch.float64, device=v.device)
    torch.cumsum(v, 0, dtype=torch.float64, out=out[1:])
    return out


def _sort_samples(x: torch.Tensor, w: torch.Tensor | None) -> _SortedSamples:
    """Sort the samples (weights carried along; zero weights dropped) and build the prefix sums."""
    xc = x.to(_compute_dtype(x.dtype))
    if w is None:
        xs = torch.sort(xc, stable=True).values
        return _SortedSamples(xs, None, _prefix(xs))
    keep = w > 0
    xs, order = torch.sort(xc[keep], stable=True)
    ws = w[keep].to(torch.float64)[order]
    return _SortedSamples(xs, _prefix(ws), _prefix(ws * xs.to(torch.float64)))


def _sorted_step(s: _SortedSamples, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell weight and weighted sum (float64 numpy) from prefix differences, O(levels · log N).

    Cell ``j`` is the sorted run ``[b_j, b_{j+1})`` with ``b_k = #{x < t_k}`` (``searchsorted``,
    left side): a value equal to a threshold lands in the upper cell, as in ``quantize``.
    """
    thr = _rounded((levels[:-1] + levels[1:]) / 2, s.x.dtype, s.x.device)
    edges = torch.cat([
        torch.zeros(1, dtype=torch.int64, device=s.x.device),
        torch.searchsorted(s.x, thr),
        torch.full((1,), s.x.numel(), dtype=torch.int64, device=s.x.device),
    ])
    return s.weight_before(edges).diff().cpu().numpy(), s.cum_wx[edges].diff().cpu().numpy()


def _initial_levels(s: _SortedSamples, n: int) -> tuple[np.ndarray, bool]:
    """Deterministic start; returns (levels, exact) where exact means ≤ n distinct values."""
    uniq, counts = torch.unique_consecutive(s.x, return_counts=True)
    uniq = uniq.to(torch.float64)
    d = uniq.numel()
    if d <= n:
        lev = uniq.cpu().numpy()
        return np.concatenate([lev, np.full(n - d, lev[-1])]), True
    cum = s.weight_before(torch.cumsum(counts, 0))
    probs = (2 * torch.arange(n, dtype=torch.float64, device=uniq.device) + 1) / (2 * n) * cum[-1]
    pos = torch.searchsorted(cum, probs).cpu().numpy()
    q = np.clip(np.maximum.accumulate(pos - np.arange(n)), 0, d - n)  # strictly increasing positions
    return uniq[torch.from_numpy(q + np.arange(n)).to(uniq.device)].cpu().numpy(), False


def _solve_empirical(samples, weights, n: int, tol: float, max_iter: int, backend: str) -> Codebook:
    x = _as_tensor(samples, "samples")
    if x.numel() == 0:
        raise ValueError("samples is empty")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("samples contain NaN or Inf")
    w = None
    if weights is not None:
        w = _as_tensor(weights, "weights").to(x.device)
        if w.numel() != x.numel():
            raise ValueError(f"weights has {w.numel()} elements, samples {x.numel()}")
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError("weights must be finite and non-negative")
    total = float(x.numel()) if w is None else float(w.to(torch.float64).sum())
    if not total > 0:
        raise ValueError("weights sum to zero")
    x = x.contiguous()
    w = None if w is None else w.contiguous()
    sorted_samples = _sort_samples(x, w)
    levels, exact = _initial_levels(sorted_samples, n)
    if exact:
        return _codebook(levels, 0.0, 0, True)
    triton = use_triton(backend, x)
    span = float(levels[-1] - levels[0])
    converged = False
    it = 0
    while it < max_iter:
        it += 1
        wsum, ssum = _sorted_step(sorted_samples, levels)
        new = np.where(wsum > 0, ssum / np.where(wsum > 0, wsum, 1.0), levels)  # empty cell: keep
        step = np.abs(new - levels).max()
        levels = new
        if step <= tol * span:
            converged = True
            break
    del sorted_samples
    _, _, err = _lloyd_step(x, w, levels, triton)  # one direct pass: no cancellation in the error
    return _codebook(levels, err / total, it, converged)


def lloyd_max(
    bits: int | None = None,
    levels: int | None = None,
    samples=None,
    weights=None,
    tol: float = 1e-12,
    max_iter: int = 1000,
    backend: str = "auto",
) -> Codebook:
    """MSE-optimal scalar codebook with ``levels`` (or ``2**bits``) levels.

    Without ``samples``: the exact Lloyd–Max quantizer of N(0,1) (float64, ~1e-12), by damped Newton
    iterations stopped when the largest threshold update is ≤ ``tol``.

    With ``samples`` (numpy array or torch tensor, any shape, CPU or CUDA) and optional non-negative
    ``weights`` of the same size: weighted Lloyd iterations, stopped when the largest level update is
    ≤ ``tol`` times the spread of the initial levels (a fixed point is reached exactly in practice).
    Initial levels: weighted quantiles at ``(2i + 1) / (2n)`` among the distinct values (made strictly
    increasing). Data with at most ``n`` distinct values (weight > 0) returns them exactly, the last
    one repeated to fill ``n`` levels, with ``mse = 0``. Empty cells keep their level. NaN/Inf
    samples, negative or non-finite weights, or zero total weight raise ValueError. Steps use the
    sorted samples and float64 prefix sums (4 or 8 bytes per sample for the sorted copy, 8 per
    prefix array); ``backend`` picks the final error pass: Triton on CUDA tensors (auto), torch on CPU.
    """
    if (bits is None) == (levels is None):
        raise ValueError("give exactly one of bits and levels")
    n = _level_count(bits) if levels is None else as_int(levels, "levels", 1)
    if n > _MAX_LEVELS:
        raise ValueError(f"at most {_MAX_LEVELS} levels, got {n}")
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not tol >= 0:
        raise ValueError(f"tol must be a non-negative number, got {tol!r}")
    max_iter = as_int(max_iter, "max_iter", 0)
    if samples is None:
        if weights is not None:
            raise ValueError("weights need samples")
        return _solve_gaussian(n, tol, max_iter)
    return _solve_empirical(samples, weights, n, tol, max_iter, backend)
