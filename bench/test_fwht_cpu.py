"""CPU comparison of FWHT implementations (pytest-benchmark; not part of the test suite).

    python -m pytest bench/test_fwht_cpu.py --benchmark-columns=median,ops

Compares the library's torch path, the NumPy reference, the JAX reference (jit) and a dense
matmul with the explicit Hadamard matrix, on float32 rows.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hlwq_kernels import fwht, hadamard_matrix
from hlwq_reference.numpy import fwht as fwht_numpy

SIZES = [128, 1024, 4096, 3584]
ROWS = 1 << 20  # elements per call


def _x(n: int) -> torch.Tensor:
    return torch.randn(ROWS // n, n, generator=torch.Generator().manual_seed(n))


@pytest.mark.parametrize("n", SIZES)
def test_torch_path(benchmark, n: int) -> None:
    x = _x(n)
    benchmark(fwht, x, backend="torch")


@pytest.mark.parametrize("n", SIZES)
def test_numpy_reference(benchmark, n: int) -> None:
    x = _x(n).numpy()
    benchmark(fwht_numpy, x)


@pytest.mark.parametrize("n", SIZES)
def test_jax_reference(benchmark, n: int) -> None:
    jax = pytest.importorskip("jax")
    from hlwq_reference.jax import fwht as fwht_jax

    f = jax.jit(fwht_jax)
    x = jax.numpy.asarray(_x(n).numpy())
    f(x).block_until_ready()
    benchmark(lambda: f(x).block_until_ready())


@pytest.mark.parametrize("n", SIZES)
def test_dense_matmul(benchmark, n: int) -> None:
    x = _x(n)
    h = torch.from_numpy(hadamard_matrix(n).astype(np.float32)).T / math.sqrt(n)
    benchmark(torch.matmul, x, h)
