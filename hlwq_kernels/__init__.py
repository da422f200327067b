"""hlwq_kernels: GPU kernels for calibration-free INT4 weight quantization (HLWQ).

Public API (each op has a Triton kernel for CUDA tensors, a torch path for CPU tensors and a
NumPy/JAX reference in the top-level ``reference`` package).
"""

from hlwq_kernels.hadamard import hadamard_matrix, hadamard_factors, is_hadamard_size, random_signs
from hlwq_kernels.fwht import fwht

__all__ = [
    "hadamard_matrix",
    "hadamard_factors",
    "is_hadamard_size",
    "random_signs",
    "fwht",
]
