"""CPU benchmarks of INT4 quantize+pack (torch path), against compressed-tensors' compress path,
and of the Marlin repack (pytest-benchmark).

    pytest bench/test_int4_cpu.py --benchmark-only
"""

from __future__ import annotations

import pytest
import torch
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
from compressed_tensors.quantization import QuantizationArgs
from compressed_tensors.quantization.lifecycle.forward import quantize
from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp

from hlwq_kernels.ops.int4 import dequantize_int4, quantize_int4
from hlwq_kernels.ops.marlin import marlin_pack, marlin_unpack

SHAPE = (2048, 4096)


@pytest.fixture(scope="module")
def weight() -> torch.Tensor:
    return torch.randn(*SHAPE, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)


@pytest.mark.parametrize("rule", ["absmax", "mse"])
def test_quantize_torch(benchmark, weight, rule):
    benchmark.extra_info["elements"] = weight.numel()
    q = benchmark.pedantic(quantize_int4, args=(weight, 128, rule), kwargs={"backend": "torch"}, rounds=2)
    x = weight.double()
    rel_mse = float(((dequantize_int4(q, torch.float64) - x) ** 2).sum() / (x**2).sum())
    assert rel_mse < {"absmax": 0.0125, "mse": 0.0105}[rule]  # Gaussian: 0.0123 and 0.0103


def test_compressed_tensors_compress(benchmark, weight):
    args = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=128)

    def compress():
        scale, _ = compute_dynamic_scales_and_zp(weight, args, module=None)
        return pack_to_int32(quantize(weight.float(), scale.float(), None, args, dtype=torch.int8), 4), scale

    benchmark.extra_info["elements"] = weight.numel()
    packed, scale = benchmark.pedantic(compress, rounds=3)
    ours = quantize_int4(weight, 128)
    assert torch.equal(packed, ours.packed) and torch.equal(scale, ours.scale)


def test_marlin_pack_torch(benchmark, weight):
    q = quantize_int4(weight, 128)
    m = benchmark.pedantic(marlin_pack, args=(q,), kwargs={"backend": "torch"}, rounds=3)
    assert torch.equal(marlin_unpack(m).packed, q.packed)
