"""CPU benchmarks of the Lloyd–Max solver and codebook quantize (pytest-benchmark).

    pytest bench/test_lloyd_cpu.py --benchmark-only
"""

from __future__ import annotations

import pytest
import torch

from hlwq_kernels.ops.lloyd_max import _lloyd_step, gaussian_codebook, lloyd_max


@pytest.mark.parametrize("levels", [16, 32, 256])
def test_gaussian_solver(benchmark, levels):
    cb = benchmark(lloyd_max, levels=levels)
    assert cb.converged


@pytest.mark.parametrize("levels", [16, 32, 256])
def test_quantize_torch(benchmark, levels):
    x = torch.randn(1 << 20, generator=torch.Generator().manual_seed(0))
    cb = gaussian_codebook(levels)
    benchmark.extra_info["elements"] = x.numel()
    idx = benchmark(cb.quantize, x, backend="torch")
    assert int(idx.max()) < levels


@pytest.mark.parametrize("levels", [16, 256])
def test_lloyd_step_torch(benchmark, levels):
    x = torch.randn(1 << 20, generator=torch.Generator().manual_seed(0))
    wsum, _, _ = benchmark(_lloyd_step, x, None, gaussian_codebook(levels).levels, False)
    assert wsum.sum() == x.numel()


def test_empirical_solve_5bit(benchmark):
    x = torch.randn(1 << 16, generator=torch.Generator().manual_seed(0))
    cb = benchmark.pedantic(lloyd_max, kwargs={"bits": 5, "samples": x}, rounds=1, iterations=1)
    assert cb.converged
