"""Asymmetric group INT4 (compressed-tensors ``pack-quantized``, ``symmetric: false``), JAX reference of
the min-max rule.

Same semantics as ``hlwq_reference.numpy.int4_asym``: with ``lo = min(min w, 0)``, ``hi = max(max w, 0)``
per group and every intermediate rounded to the weight dtype (float32 arithmetic, then a cast),
``s = (hi - lo) / 15``, ``z = rint(clip(-8 - lo / s, -8, 7))`` (0 where ``lo / s`` is 0 / 0), a zero
scale replaced by the dtype's epsilon; codes ``q = rint(clip(w / s + z, -8, 7))`` in float32;
``q + 8`` packed along K, ``z + 8`` packed along N (8 rows a word, row 8i least significant).
"""

from __future__ import annotations

import jax.numpy as jnp

from hlwq_reference.jax.int4 import pack_int4, unpack_int4
from hlwq_reference.numpy.int4 import QMAX, QMIN
from hlwq_reference.numpy.int4_asym import LEVELS

__all__ = ["minmax_params", "asym_codes", "pack_zero_points", "unpack_zero_points", "quantize_int4_asym", "dequantize_int4_asym"]


def _round_to(x: jnp.ndarray, dtype) -> jnp.ndarray:
    return x.astype(dtype).astype(jnp.float32)


def minmax_params(w: jnp.ndarray, group_size: int = 128) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(scale ``[N, K/g]`` in ``w.dtype``, zero point int8 ``[N, K/g]``)."""
    n, k = w.shape
    wg = w.astype(jnp.float32).reshape(n, k // group_size, group_size)
    lo = jnp.minimum(wg.min(axis=-1), 0)
    hi = jnp.maximum(wg.max(axis=-1), 0)
    # An array divisor: XLA turns division by a scalar constant into a (not IEEE) reciprocal product.
    s = _round_to(_round_to(hi - lo, w.dtype) / jnp.full_like(hi, LEVELS), w.dtype)
    z = _round_to(jnp.float32(QMIN) - _round_to(lo / s, w.dtype), w.dtype)
    z = jnp.where(jnp.isnan(z), 0, jnp.round(jnp.clip(z, QMIN, QMAX)))
    s = jnp.where(s == 0, jnp.finfo(w.dtype).eps, s)
    return s.astype(w.dtype), z.astype(jnp.int8)


def asym_codes(w: jnp.ndarray, scale: jnp.ndarray, zero_point: jnp.ndarray) -> jnp.ndarray:
    """Codes in [-8, 7] (int8 ``[N, K]``)."""
    n, k = w.shape
    g = k // scale.shape[1]
    y = w.astype(jnp.float32).reshape(n, k // g, g) / scale.astype(jnp.float32)[..., None]
    y = y + zero_point.astype(jnp.float32)[..., None]
    return jnp.round(jnp.clip(y, QMIN, QMAX)).astype(jnp.int8).reshape(n, k)


def pack_zero_points(zero_point: jnp.ndarray) -> jnp.ndarray:
    """int32 ``[ceil(N/8), G]`` from int8 zero points ``[N, G]``."""
    n, g = zero_point.shape
    padded = jnp.full((-(-n // 8) * 8, g), QMIN, dtype=jnp.int8).at[:n].set(zero_point)
    return pack_int4(padded.T).T


def unpack_zero_points(packed: jnp.ndarray, n: int) -> jnp.ndarray:
    """int8 ``[n, G]`` from packed zero points."""
    return unpack_int4(packed.T, n).T


def quantize_int4_asym(w: jnp.ndarray, group_size: int = 128) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """(packed int32 ``[N, K/8]``, scale ``[N, K/g]``, packed zero points int32 ``[ceil(N/8), K/g]``)."""
    s, z = minmax_params(w, group_size)
    return pack_int4(asym_codes(w, s, z)), s, pack_zero_points(z)


def dequantize_int4_asym(packed: jnp.ndarray, scale: jnp.ndarray, zero_packed: jnp.ndarray, k: int) -> jnp.ndarray:
    """``(q - z) * s`` in float32 ``[N, k]``."""
    n = packed.shape[0]
    g = k // scale.shape[1]
    q = unpack_int4(packed, k).astype(jnp.float32).reshape(n, k // g, g)
    z = unpack_zero_points(zero_packed, n).astype(jnp.float32)[..., None]
    return ((q - z) * scale.astype(jnp.float32)[..., None]).reshape(n, k)
