"""NumPy float64 references. Each op module adds its public names here."""

from hlwq_reference.numpy.hadamard import hadamard_matrix, hadamard_factors, is_hadamard_size
from hlwq_reference.numpy.fwht import fwht
from hlwq_reference.numpy.lloyd_max import lloyd_max, quantize as lloyd_quantize, dequantize as lloyd_dequantize
from hlwq_reference.numpy.hlwq import hlwq_codes, hlwq_dequantize, hlwq_int4
from hlwq_reference.numpy.int4 import Int4Weight, quantize_int4, quantize_int4_with_scale, dequantize_int4, absmax_scale, mse_scale, int4_codes, pack_int4, unpack_int4
from hlwq_reference.numpy.marlin import marlin_pack, marlin_unpack
from hlwq_reference.numpy.int4_asym import Int4AsymWeight, quantize_int4_asym, quantize_int4_asym_with_params, dequantize_int4_asym, minmax_params, clip_params, hqq_params, asym_codes, pack_zero_points, unpack_zero_points
