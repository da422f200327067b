"""Hadamard constructions: orthogonality, Sylvester order, the documented choice of K, errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from hlwq_kernels import hadamard_factors, hadamard_matrix, is_hadamard_size
from hlwq_reference.numpy.hadamard import hadamard_order_matrix

LLM_DIMS = [1536, 2560, 3584, 4864, 5120, 6912, 8960, 9728, 11008, 13824, 14336, 17408, 18432,
            18944, 27648, 28672, 29568]
# Expected K of n = K * 2**m (docs/design.md §3): the smallest buildable order.
EXPECTED_K = {1536: 12, 2560: 20, 3584: 28, 4864: 76, 5120: 20, 6912: 108, 8960: 140, 9728: 76,
              11008: 344, 13824: 108, 14336: 28, 17408: 68, 18432: 36, 18944: 148, 27648: 108,
              28672: 28, 29568: 924}


def _orders_claimed() -> list[int]:
    """Every order K used by the LLM dims plus the small Paley/Kronecker orders up to 256."""
    small = [k for k in range(1, 257) if is_hadamard_size(k) and hadamard_factors(k)[1] == 1]
    return sorted(set(small) | set(EXPECTED_K.values()))


@pytest.mark.parametrize("k", _orders_claimed())
def test_every_claimed_order_is_hadamard(k: int) -> None:
    h = hadamard_order_matrix(k).astype(np.int64)
    assert set(np.unique(h)) <= {-1, 1}
    np.testing.assert_array_equal(h @ h.T, k * np.eye(k, dtype=np.int64))


@pytest.mark.parametrize("n", LLM_DIMS)
def test_llm_dims_choice_and_orthogonality(n: int) -> None:
    k, p = hadamard_factors(n)
    assert (k, p) == (EXPECTED_K[n], n // EXPECTED_K[n])
    assert p & (p - 1) == 0
    h_k = hadamard_order_matrix(k).astype(np.int64)
    np.testing.assert_array_equal(h_k @ h_k.T, k * np.eye(k, dtype=np.int64))


@pytest.mark.parametrize("n", [1, 2, 4, 8, 64, 256, 1024])
def test_power_of_two_is_sylvester(n: int) -> None:
    np.testing.assert_array_equal(hadamard_matrix(n), scipy.linalg.hadamard(n))


@pytest.mark.parametrize("n", [12, 24, 40, 48, 76, 96, 108 * 2, 344])
def test_full_matrix_is_kronecker_and_orthogonal(n: int) -> None:
    h = hadamard_matrix(n).astype(np.int64)
    k, p = hadamard_factors(n)
    np.testing.assert_array_equal(h, np.kron(hadamard_order_matrix(k), scipy.linalg.hadamard(p)))
    np.testing.assert_array_equal(h @ h.T, n * np.eye(n, dtype=np.int64))


def test_paley_over_extension_fields() -> None:
    # 28 = 27 + 1 (GF(3^3), Paley I), 344 = 343 + 1 (GF(7^3), Paley I), 36 = 2(17+1) (Paley II).
    for k in (28, 344, 36, 924):
        h = hadamard_order_matrix(k).astype(np.int64)
        np.testing.assert_array_equal(h @ h.T, k * np.eye(k, dtype=np.int64))


@pytest.mark.parametrize("k,p,digits", [(344, 7, 3), (140, 139, 1), (28, 3, 3)])
def test_paley_first_form_is_a_border_and_a_group_correlation(k: int, p: int, digits: int) -> None:
    """H_K of Paley's first form (K = q + 1, q = p^digits) is ``y_0 = x_0 + sum(x')``, ``y' = x' - x_0 + Q x'``
    with Q a circular correlation over (Z_p)^digits (element i has base-p digits, lowest first): a DFT of
    ``digits`` axes of p points diagonalizes Q, every nonzero frequency with |eigenvalue| = sqrt(q)."""
    q = k - 1
    h = hadamard_order_matrix(k).astype(np.float64)
    shape = (p,) * digits
    core = h[1:, 1:] - np.eye(q)
    kernel = core[:, 0].reshape(shape, order="F")  # chi(d_i - 0)
    eig = np.fft.fftn(kernel)
    assert abs(eig.flat[0]) < 1e-9
    np.testing.assert_allclose(np.abs(eig).ravel()[1:], np.sqrt(q), rtol=1e-12)
    x = np.random.default_rng(k).standard_normal((4, k))
    rest = x[:, 1:].reshape((4, *shape), order="F")
    axes = tuple(range(1, digits + 1))
    qx = np.real(np.fft.ifftn(eig * np.fft.fftn(rest, axes=axes), axes=axes)).reshape(4, q, order="F")
    y = np.concatenate([x[:, :1] + x[:, 1:].sum(1, keepdims=True), x[:, 1:] - x[:, :1] + qx], axis=1)
    np.testing.assert_allclose(y, x @ h.T, atol=1e-9 * np.sqrt(k))


@pytest.mark.parametrize("n", [3, 5, 7, 6, 10, 15015, 0, -4])
def test_unsupported_sizes_raise_naming_n(n: int) -> None:
    with pytest.raises(ValueError, match=f"n={n}"):
        hadamard_factors(n)
    assert not is_hadamard_size(n)


def test_error_names_nearest_supported_sizes() -> None:
    with pytest.raises(ValueError, match="nearest supported sizes: 15008 and 15016"):
        hadamard_factors(15015)
