"""JAX references (float64 where jax_enable_x64 is on). Each op module adds its public names here."""

from hlwq_reference.jax.fwht import fwht
from hlwq_reference.jax.lloyd_max import gaussian_levels, empirical_levels
from hlwq_reference.jax.int4 import quantize_int4, dequantize_int4, pack_int4, unpack_int4
from hlwq_reference.jax.int4_asym import quantize_int4_asym, dequantize_int4_asym, minmax_params, pack_zero_points, unpack_zero_points
