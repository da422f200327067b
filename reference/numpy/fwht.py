"""Fast Walsh–Hadamard transform, NumPy float64 reference.

``fwht(x)`` along ``dim`` computes ``x @ H.T / sqrt(n)`` with ``H = hadamard_matrix(n) = H_K ⊗ H_{2^m}``
(``normalized=False``: no division). ``inverse=True`` applies the inverse map: ``x @ H / sqrt(n)``
normalized, ``x @ H / n`` unnormalized. ``block_size=b`` applies ``I ⊗ H_b`` (each block of ``b``
consecutive entries separately). ``signs`` (±1, length n, or length b with ``block_size``) multiply
the input before the forward transform and the output after the inverse one.
"""

from __future__ import annotations

import numpy as np

from reference.numpy.hadamard import hadamard_factors, hadamard_order_matrix

__all__ = ["fwht"]


def _sylvester_last_axis(x: np.ndarray) -> np.ndarray:
    """x @ Sylvester(p) along the last axis by log2(p) butterfly stages."""
    p = x.shape[-1]
    h = 1
    while h < p:
        y = x.reshape(*x.shape[:-1], p // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        x = np.stack([a + b, a - b], axis=-2).reshape(*x.shape[:-1], p)
        h *= 2
    return x


def _hadamard_last_axis(x: np.ndarray, inverse: bool) -> np.ndarray:
    """x @ H.T (or x @ H when inverse) along the last axis, unnormalized."""
    n = x.shape[-1]
    k, p = hadamard_factors(n)
    y = _sylvester_last_axis(x.reshape(*x.shape[:-1], k, p))
    h_k = hadamard_order_matrix(k).astype(np.float64)
    y = np.einsum("ij,...jp->...ip", h_k.T if inverse else h_k, y)
    return y.reshape(x.shape)


def fwht(
    x: np.ndarray,
    dim: int = -1,
    normalized: bool = True,
    inverse: bool = False,
    block_size: int | None = None,
    signs: np.ndarray | None = None,
) -> np.ndarray:
    """Walsh–Hadamard transform of ``x`` along ``dim`` in float64 (see module docstring)."""
    x = np.moveaxis(np.asarray(x, dtype=np.float64), dim, -1)
    n = x.shape[-1]
    b = n if block_size is None else block_size
    if n % b:
        raise ValueError(f"block_size={b} does not divide n={n}")
    s = None if signs is None else np.asarray(signs, dtype=np.float64)
    if s is not None:
        s = np.tile(s, n // len(s)) if len(s) == b else s
        if len(s) != n:
            raise ValueError(f"signs has length {len(signs)}, expected {n} or block_size {b}")
    if s is not None and not inverse:
        x = x * s
    y = _hadamard_last_axis(x.reshape(*x.shape[:-1], n // b, b), inverse).reshape(x.shape)
    if normalized:
        y = y / np.sqrt(b)
    elif inverse:
        y = y / b
    if s is not None and inverse:
        y = y * s
    return np.moveaxis(y, -1, dim)
