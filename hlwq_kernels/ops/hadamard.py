"""Hadamard matrices (all constructible orders) and seeded random signs.

The construction is exact integer arithmetic and is shared with the reference
(``hlwq_reference.numpy.hadamard``, whose docstring states which matrix is chosen for each n).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from hlwq_kernels.ops._checks import as_int
from hlwq_reference.numpy.hadamard import (
    hadamard_factors,
    hadamard_matrix,
    is_hadamard_size,
)

__all__ = [
    "hadamard_matrix", "hadamard_factors", "is_hadamard_size", "random_signs", "hadamard_tensor", "pow2_split",
    "paley2_core",
]


@functools.lru_cache(maxsize=128)
def _cached_tensor(n: int, transpose: bool, pad: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    h = np.zeros((pad, pad), dtype=np.float32)
    h_n = hadamard_matrix(n)
    h[:n, :n] = h_n.T if transpose else h_n
    return torch.from_numpy(h).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=32)
def paley2_core(k: int) -> np.ndarray | None:
    """The order-k/2 core C (int8 entries 0, ±1) of the project's H_K when it has the Paley II form
    ``H_K = C ⊗ [[1, -1], [-1, -1]] + I ⊗ [[1, 1], [1, -1]]`` (K = 36, 76, 148, 924, ...), else None.

    Then ``H_K x = (I ⊗ [[1, -1], [-1, -1]]) (w)`` with ``w = (C ⊗ I_2) x + (I ⊗ [[0, 1], [-1, 0]]) x``: a
    product with C (half the order) and a 2-point step per pair, which the kernels run as one more
    butterfly (``fwht_plan.PaleyConfig``)."""
    if k < 4 or k % 4 or not is_hadamard_size(k) or hadamard_factors(k)[0] != k:
        return None
    h = hadamard_matrix(k).astype(np.int64)
    core = h[0::2, 0::2] - np.eye(k // 2, dtype=np.int64)
    rebuilt = np.kron(core, [[1, -1], [-1, -1]]) + np.kron(np.eye(k // 2, dtype=np.int64), [[1, 1], [1, -1]])
    if not np.array_equal(rebuilt, h):
        return None
    core = core.astype(np.int8)
    core.setflags(write=False)
    return core


def hadamard_tensor(
    n: int, *, transpose: bool = False, pad: int | None = None, dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``hadamard_matrix(n)`` (or its transpose) as a cached torch tensor, zero-padded to ``pad``.

    For the order K of a size ``K * 2**m`` this is exactly the factor H_K (K is minimal, so
    ``hadamard_factors(K) == (K, 1)``); for a power of two it is the Sylvester matrix.
    """
    return _cached_tensor(n, transpose, pad or n, dtype, str(torch.device(device)))


def random_signs(
    n: int, seed: int = 0, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """A reproducible ±1 vector of length n (for the randomized Hadamard transform); ``dtype`` a floating-point or
    signed integer type."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_signed or dtype.is_complex:
        raise TypeError(f"dtype must be a floating-point or signed integer torch.dtype (±1 values), got {dtype!r}")
    gen = torch.Generator().manual_seed(as_int(seed, "seed"))
    bits = torch.randint(0, 2, (as_int(n, "n", 0),), generator=gen)
    return (1 - 2 * bits).to(device=device, dtype=dtype)


def pow2_split(m: int, max_bits: int, max_parts: int | None = None, min_bits: int = 0) -> list[int] | None:
    """Split 2**m into the fewest near-equal power-of-two factors of at most 2**max_bits.

    Returns None when that takes more than ``max_parts`` factors or a factor would be below
    2**min_bits (the Triton kernel needs factors of at least 16 for ``tl.dot``).
    """
    count = max(1, -(-m // max_bits))
    if (max_parts is not None and count > max_parts) or m < min_bits * count:
        return None
    base, extra = divmod(m, count)
    return [1 << (base + (i < extra)) for i in range(count)]
