"""Fast Walsh–Hadamard transform, NumPy float64 reference.

``fwht(x)`` along ``dim`` computes ``x @ H.T / sqrt(n)`` with ``H = hadamard_matrix(n) = H_K ⊗ H_{2^m}``
(``normalized=False``: no division). ``inverse=True`` applies the inverse map: ``x @ H / sqrt(n)``
normalized, ``x @ H / n`` unnormalized. ``block_size=b`` applies ``I ⊗ H_b`` (each block of ``b``
consecutive entries separately). ``signs`` (±1, length n, or length b with ``block_size``) multiply
the input before the forward transform and the output after the inverse one.

The code is written against the array namespace ``xp`` so that ``hlwq_reference.jax`` runs the same
math with ``jax.numpy``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from hlwq_reference.numpy.hadamard import hadamard_factors, hadamard_order_matrix

__all__ = ["fwht", "fwht_xp"]


def _sylvester_last_axis(x: Any, xp: ModuleType) -> Any:
    """x @ Sylvester(p) along the last axis by log2(p) butterfly stages."""
    p = x.shape[-1]
    h = 1
    while h < p:
        y = x.reshape(*x.shape[:-1], p // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        x = xp.stack([a + b, a - b], axis=-2).reshape(*x.shape[:-1], p)
        h *= 2
    return x


def _hadamard_last_axis(x: Any, inverse: bool, xp: ModuleType) -> Any:
    """x @ H.T (or x @ H when inverse) along the last axis, unnormalized."""
    n = x.shape[-1]
    k, p = hadamard_factors(n)
    y = _sylvester_last_axis(x.reshape(*x.shape[:-1], k, p), xp)
    h_k = xp.asarray(np.asarray(hadamard_order_matrix(k), dtype=np.float64), dtype=x.dtype)
    y = xp.einsum("ij,...jp->...ip", h_k.T if inverse else h_k, y)
    return y.reshape(x.shape)


def fwht_xp(
    x: Any, dim: int, normalized: bool, inverse: bool, block_size: int | None, signs: Any, xp: ModuleType
) -> Any:
    """The transform in the array namespace ``xp`` (input already in the compute dtype)."""
    x = xp.moveaxis(x, dim, -1)
    n = x.shape[-1]
    b = n if block_size is None else block_size
    if n % b:
        raise ValueError(f"block_size={b} does not divide n={n}")
    s = None
    if signs is not None:
        s = xp.asarray(signs, dtype=x.dtype)
        s = xp.tile(s, n // s.shape[0]) if s.shape[0] == b else s
        if s.shape[0] != n:
            raise ValueError(f"signs has length {len(signs)}, expected {n} or block_size {b}")
        if not inverse:
            x = x * s
    y = _hadamard_last_axis(x.reshape(*x.shape[:-1], n // b, b), inverse, xp).reshape(x.shape)
    if normalized:
        y = y / np.sqrt(b)
    elif inverse:
        y = y / b
    if s is not None and inverse:
        y = y * s
    return xp.moveaxis(y, -1, dim)


def fwht(
    x: np.ndarray,
    dim: int = -1,
    normalized: bool = True,
    inverse: bool = False,
    block_size: int | None = None,
    signs: np.ndarray | None = None,
) -> np.ndarray:
    """Walsh–Hadamard transform of ``x`` along ``dim`` in float64 (see module docstring)."""
    return fwht_xp(np.asarray(x, dtype=np.float64), dim, normalized, inverse, block_size, signs, np)
