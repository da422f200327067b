"""JAX reference for Lloyd–Max codebooks, computed in float64 (``jax.enable_x64``).

quantize(x) = #{k : x >= t_k} (ties go up, NaN to 0). The Gaussian solver runs Newton's method with
the Jacobian from ``jax.jacfwd`` (independent of the hand-written tridiagonal one in the library).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erfc, ndtri

__all__ = ["quantize", "dequantize", "lloyd_step", "gaussian_levels", "empirical_levels"]


def _cell_index(x, thresholds):
    return jnp.sum(jnp.asarray(x)[..., None] >= jnp.asarray(thresholds), axis=-1)


def quantize(x, thresholds) -> np.ndarray:
    """Number of thresholds t with x >= t, in the dtype of the inputs as given."""
    with jax.enable_x64(True):
        return np.asarray(_cell_index(x, thresholds))


def dequantize(idx, levels) -> np.ndarray:
    with jax.enable_x64(True):
        return np.asarray(jnp.take(jnp.asarray(levels), jnp.asarray(idx)))


def _centroids(t):
    # ±40 stands in for ±inf: φ and the tail mass underflow to exactly 0 there in float64, and the
    # derivatives stay finite (jacfwd through an infinite edge gives 0·inf = NaN).
    a = jnp.concatenate([jnp.array([-40.0]), t])
    b = jnp.concatenate([t, jnp.array([40.0])])
    upper = lambda v: erfc(v / jnp.sqrt(2.0)) / 2  # noqa: E731  P(X > v)
    phi = lambda v: jnp.exp(-v * v / 2) / jnp.sqrt(2 * jnp.pi)  # noqa: E731
    mass = jnp.where(a >= 0, upper(a) - upper(b), upper(-b) - upper(-a))
    return (phi(a) - phi(b)) / mass


def _stationarity(t):
    c = _centroids(t)
    return t - (c[:-1] + c[1:]) / 2


def gaussian_levels(n: int, steps: int = 12) -> np.ndarray:
    """Levels of the Lloyd–Max quantizer of N(0,1) with n ≥ 2 levels (fixed number of Newton steps)."""
    with jax.enable_x64(True):
        t = jnp.sqrt(3.0) * ndtri(jnp.arange(1, n, dtype=jnp.float64) / n)
        jac = jax.jacfwd(_stationarity)
        for _ in range(steps):
            t = t - jnp.linalg.solve(jac(t), _stationarity(t))
        return np.asarray(_centroids(t))


def lloyd_step(x, w, levels) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell total weight and weighted sum, cells cut at the midpoints of ``levels``."""
    with jax.enable_x64(True):
        x, w, levels = jnp.asarray(x), jnp.asarray(w), jnp.asarray(levels)
        idx = _cell_index(x, (levels[:-1] + levels[1:]) / 2)
        wsum = jax.ops.segment_sum(w, idx, num_segments=levels.size)
        ssum = jax.ops.segment_sum(w * x, idx, num_segments=levels.size)
        return np.asarray(wsum), np.asarray(ssum)


def empirical_levels(x, w, initial_levels, iterations: int) -> np.ndarray:
    """Run ``iterations`` weighted Lloyd steps from ``initial_levels`` (empty cells keep their level)."""
    levels = np.asarray(initial_levels, dtype=np.float64)
    for _ in range(iterations):
        wsum, ssum = lloyd_step(x, w, levels)
        levels = np.where(wsum > 0, ssum / np.where(wsum > 0, wsum, 1), levels)
    return levels
