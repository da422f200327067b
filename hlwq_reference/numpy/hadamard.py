"""Hadamard matrices of every order this project can build (NumPy, exact integers).

A Hadamard matrix ``H`` of order ``n`` has entries ±1 and ``H @ H.T == n * I``. Orders are 1, 2 and
multiples of 4. For a transform length ``n = K * 2**m`` the project uses ``H_n = H_K ⊗ H_{2^m}``
(K index most significant), with ``H_{2^m}`` in Sylvester order (equal to ``scipy.linalg.hadamard``).

The choice of ``K`` and of ``H_K`` is part of the contract:

* ``K`` is the smallest divisor of ``n`` such that ``n / K`` is a power of two and an order-``K``
  matrix can be built (so a power of two always gives ``K = 1``: plain Sylvester).
* ``H_K`` is built by the first rule that applies, in this order:
  1. ``K in (1, 2)``: Sylvester;
  2. Paley I: ``q = K - 1`` a prime power with ``q ≡ 3 (mod 4)``;
  3. Paley II: ``q = K/2 - 1`` a prime power with ``q ≡ 1 (mod 4)``;
  4. Kronecker ``H_a ⊗ H_b`` with the smallest ``a >= 2`` dividing ``K`` for which both factors build.
  Paley matrices over GF(p^k), k > 1, use GF(p)[x] / f(x) with f the lexicographically first monic
  irreducible polynomial of degree k; element i has base-p digits (c_0, ..., c_{k-1}) = coefficients
  of 1, x, ..., x^{k-1}, and element 0 comes first. The Paley core is indexed in that order.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

__all__ = ["hadamard_matrix", "hadamard_factors", "is_hadamard_size", "hadamard_order_matrix"]


def _prime_power(q: int) -> tuple[int, int] | None:
    """Return (p, k) with q == p**k for a prime p, or None."""
    if q < 2:
        return None
    p = next(d for d in range(2, q + 1) if q % d == 0)
    k = 0
    while q % p == 0:
        q //= p
        k += 1
    return (p, k) if q == 1 else None


def _poly_mod(a: list[int], f: list[int], p: int) -> list[int]:
    """Remainder of polynomial a by monic f over GF(p); coefficients low degree first."""
    a = [c % p for c in a]
    deg_f = len(f) - 1
    while len(a) - 1 >= deg_f:
        lead = a[-1]
        if lead:
            shift = len(a) - 1 - deg_f
            for i, c in enumerate(f):
                a[shift + i] = (a[shift + i] - lead * c) % p
        a.pop()
    return a


def _is_irreducible(f: list[int], p: int) -> bool:
    """True when monic f (low degree first) has no monic factor of degree 1..deg(f)//2 over GF(p)."""
    deg = len(f) - 1
    for d in range(1, deg // 2 + 1):
        for tail in itertools.product(range(p), repeat=d):
            g = list(tail) + [1]
            if not any(_poly_mod(f, g, p)):
                return False
    return True


@functools.lru_cache(maxsize=None)
def _quadratic_character(q: int) -> np.ndarray:
    """chi[i, j] = quadratic character of (e_i - e_j) in GF(q), elements indexed as documented."""
    p, k = _prime_power(q)  # type: ignore[misc]
    digits = np.array([[(i // p**t) % p for t in range(k)] for i in range(q)], dtype=np.int64)
    if k == 1:
        square_set = {(x * x) % p for x in range(1, p)}
        is_square = np.array([i in square_set for i in range(q)])
    else:
        f = next(
            list(tail) + [1]
            for tail in itertools.product(range(p), repeat=k)
            if tail[0] != 0 and _is_irreducible(list(tail) + [1], p)
        )
        is_square = np.zeros(q, dtype=bool)
        for i in range(1, q):
            a = digits[i].tolist()
            prod = [0] * (2 * k - 1)
            for s, x in enumerate(a):
                for t, y in enumerate(a):
                    prod[s + t] += x * y
            r = _poly_mod(prod, f, p) + [0] * k
            is_square[sum(c * p**t for t, c in enumerate(r[:k]))] = True
    diff = (digits[:, None, :] - digits[None, :, :]) % p
    index = (diff * (p ** np.arange(k))).sum(-1)
    chi = np.where(is_square[index], 1, -1).astype(np.int64)
    chi[index == 0] = 0
    return chi


def _paley1(q: int) -> np.ndarray:
    """Paley I Hadamard matrix of order q + 1 (q ≡ 3 mod 4): I + [[0, 1ᵀ], [-1, Q]]."""
    n = q + 1
    s = np.zeros((n, n), dtype=np.int64)
    s[0, 1:] = 1
    s[1:, 0] = -1
    s[1:, 1:] = _quadratic_character(q)
    return s + np.eye(n, dtype=np.int64)


def _paley2(q: int) -> np.ndarray:
    """Paley II Hadamard matrix of order 2(q + 1) (q ≡ 1 mod 4)."""
    n = q + 1
    c = np.zeros((n, n), dtype=np.int64)
    c[0, 1:] = 1
    c[1:, 0] = 1
    c[1:, 1:] = _quadratic_character(q)
    on_zero = np.array([[1, -1], [-1, -1]], dtype=np.int64)
    on_diag = np.array([[1, 1], [1, -1]], dtype=np.int64)
    return np.kron(c, on_zero) + np.kron(np.eye(n, dtype=np.int64), on_diag)


def _sylvester(n: int) -> np.ndarray:
    h = np.ones((1, 1), dtype=np.int64)
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


@functools.lru_cache(maxsize=None)
def _order_rule(k: int) -> tuple | None:
    """How an order-k matrix is built (see module docstring), or None if no rule applies."""
    if k in (1, 2):
        return ("sylvester", k)
    if k % 4:
        return None
    pp = _prime_power(k - 1)
    if pp is not None and (k - 1) % 4 == 3:
        return ("paley1", k - 1)
    pp = _prime_power(k // 2 - 1)
    if pp is not None and (k // 2 - 1) % 4 == 1:
        return ("paley2", k // 2 - 1)
    for a in range(2, k):
        if k % a == 0 and _order_rule(a) and _order_rule(k // a):
            return ("kron", a, k // a)
    return None


@functools.lru_cache(maxsize=64)
def _order_matrix_cached(k: int) -> np.ndarray:
    rule = _order_rule(k)
    if rule is None:
        raise ValueError(f"no Hadamard construction of order {k}")
    kind = rule[0]
    if kind == "sylvester":
        h = _sylvester(k)
    elif kind == "paley1":
        h = _paley1(rule[1])
    elif kind == "paley2":
        h = _paley2(rule[1])
    else:
        h = np.kron(_order_matrix_cached(rule[1]), _order_matrix_cached(rule[2]))
    h = h.astype(np.int8)
    h.setflags(write=False)
    return h


def hadamard_order_matrix(k: int) -> np.ndarray:
    """The order-k factor H_K used by this project (int8 ±1, read-only)."""
    return _order_matrix_cached(k)


@functools.lru_cache(maxsize=None)
def _factors_or_none(n: int) -> tuple[int, int] | None:
    if n < 1:
        return None
    two_power = n & -n
    odd = n // two_power
    k = odd
    while k <= n:
        if _order_rule(k) is not None:
            return k, n // k
        k *= 2
    return None


def _nearest_supported(n: int) -> tuple[int | None, int | None]:
    below = next((m for m in range(n - 1, 0, -1) if _factors_or_none(m)), None)
    above = next((m for m in range(n + 1, 4 * n + 8) if _factors_or_none(m)), None)
    return below, above


def hadamard_factors(n: int) -> tuple[int, int]:
    """Return (K, 2**m) with n = K * 2**m and K the smallest buildable order (see module doc)."""
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool):
        raise TypeError(f"Hadamard size must be an int, got {type(n).__name__}")
    found = _factors_or_none(int(n))
    if found is None:
        below, above = _nearest_supported(int(n)) if n >= 1 else (None, 1)
        raise ValueError(
            f"no Hadamard transform of size n={n}: n must be K*2**m with a buildable order K "
            f"(1, 2, Paley I/II orders and their Kronecker products); nearest supported sizes: "
            f"{below} and {above}"
        )
    return found


def is_hadamard_size(n: int) -> bool:
    """True when ``hadamard_matrix(n)`` can be built."""
    return isinstance(n, (int, np.integer)) and not isinstance(n, bool) and _factors_or_none(int(n)) is not None


def hadamard_matrix(n: int) -> np.ndarray:
    """The ±1 Hadamard matrix of order n used by ``fwht``: H_K ⊗ Sylvester(2**m), int8."""
    k, p2 = hadamard_factors(n)
    return np.kron(hadamard_order_matrix(k), _sylvester(p2).astype(np.int8)).astype(np.int8)
