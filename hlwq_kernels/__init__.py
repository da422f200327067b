"""hlwq_kernels: GPU kernels for calibration-free INT4 weight quantization (HLWQ).

Public API (each op has a Triton kernel for CUDA tensors, a torch path for CPU tensors and a
NumPy/JAX reference in the package ``hlwq_reference``).
"""

from hlwq_kernels.ops.hadamard import hadamard_matrix, hadamard_factors, is_hadamard_size, random_signs
from hlwq_kernels.ops.fwht import fwht
from hlwq_kernels.ops.lloyd_max import Codebook, lloyd_max, gaussian_codebook, original_release_codebook
from hlwq_kernels.ops.hlwq import HLWQConfig, HLWQCodes, hlwq_quantize, hlwq_dequantize, hlwq_int4
from hlwq_kernels.ops.int4 import Int4Weight, quantize_int4, quantize_int4_with_scale, dequantize_int4, absmax_scale, int4_codes, pack_int4, unpack_int4
from hlwq_kernels.ops.int4_asym import Int4AsymWeight, quantize_int4_asym, quantize_int4_asym_with_params, dequantize_int4_asym
from hlwq_kernels.ops.marlin import MarlinWeight, marlin_pack, marlin_unpack
from hlwq_kernels.checkpoint import ConversionReport, quantize_checkpoint

__all__ = [
    "hadamard_matrix",
    "hadamard_factors",
    "is_hadamard_size",
    "random_signs",
    "fwht",
    "Codebook",
    "lloyd_max",
    "gaussian_codebook",
    "original_release_codebook",
    "HLWQConfig",
    "HLWQCodes",
    "hlwq_quantize",
    "hlwq_dequantize",
    "hlwq_int4",
    "Int4Weight",
    "quantize_int4",
    "quantize_int4_with_scale",
    "dequantize_int4",
    "absmax_scale",
    "int4_codes",
    "pack_int4",
    "unpack_int4",
    "Int4AsymWeight",
    "quantize_int4_asym",
    "quantize_int4_asym_with_params",
    "dequantize_int4_asym",
    "MarlinWeight",
    "marlin_pack",
    "marlin_unpack",
    "ConversionReport",
    "quantize_checkpoint",
]
