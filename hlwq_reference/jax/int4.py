"""Symmetric group INT4 with compressed-tensors packing, JAX reference (absmax scales).

Same semantics as ``hlwq_reference.numpy.int4``: scale ``max|w| / 7.5`` in float32 rounded to the weight
dtype (zero groups get its epsilon), codes ``round_half_even(clip(w / s, -8, 7))`` with the quotient
in float32, ``q + 8`` packed 8 nibbles per int32 word, column 0 least significant.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hlwq_reference.numpy.int4 import ABSMAX_DIVISOR, QMAX, QMIN

__all__ = ["absmax_scale", "int4_codes", "pack_int4", "unpack_int4", "quantize_int4", "dequantize_int4"]


def absmax_scale(w: jnp.ndarray, group_size: int = 128) -> jnp.ndarray:
    """Per-group ``max|w| / 7.5`` in float32, stored in ``w.dtype`` ``[N, K/g]``."""
    n, k = w.shape
    amax = jnp.abs(w.astype(jnp.float32).reshape(n, k // group_size, group_size)).max(axis=-1)
    s = (amax / jnp.float32(ABSMAX_DIVISOR)).astype(w.dtype)
    return jnp.where(s == 0, jnp.finfo(w.dtype).eps, s).astype(w.dtype)


def int4_codes(w: jnp.ndarray, scale: jnp.ndarray) -> jnp.ndarray:
    """Codes in [-8, 7] (int8 ``[N, K]``)."""
    n, k = w.shape
    g = k // scale.shape[1]
    # XLA rewrites a division by a broadcast into a product with the broadcast reciprocal, which is
    # an ulp off where w / s is an exact half-integer (common with bf16 weights and scales) and
    # then rounds to the other code; the barrier keeps the IEEE division.
    s = jax.lax.optimization_barrier(jnp.broadcast_to(scale.astype(jnp.float32)[..., None], (n, k // g, g)))
    y = w.astype(jnp.float32).reshape(n, k // g, g) / s
    return jnp.round(jnp.clip(y, QMIN, QMAX)).astype(jnp.int8).reshape(n, k)


def pack_int4(q: jnp.ndarray) -> jnp.ndarray:
    """int32 words ``[N, K/8]``: column j in word j // 8, nibble j % 8."""
    n, k = q.shape
    u = (q.astype(jnp.uint32) + 8).reshape(n, k // 8, 8) & 0xF
    words = (u << (4 * jnp.arange(8, dtype=jnp.uint32))).sum(axis=-1, dtype=jnp.uint32)
    return words.view(jnp.int32)


def unpack_int4(packed: jnp.ndarray, k: int) -> jnp.ndarray:
    """int8 codes ``[N, k]`` from int32 words."""
    u = (packed.view(jnp.uint32)[..., None] >> (4 * jnp.arange(8, dtype=jnp.uint32))) & 0xF
    return (u.reshape(packed.shape[0], -1)[:, :k].astype(jnp.int32) - 8).astype(jnp.int8)


def quantize_int4(w: jnp.ndarray, group_size: int = 128) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(packed int32 ``[N, K/8]``, scale ``[N, K/g]``) with absmax scales."""
    s = absmax_scale(w, group_size)
    return pack_int4(int4_codes(w, s)), s


def dequantize_int4(packed: jnp.ndarray, scale: jnp.ndarray, k: int) -> jnp.ndarray:
    """``(u - 8) * scale`` in float32 ``[N, k]``."""
    n = packed.shape[0]
    g = k // scale.shape[1]
    q = unpack_int4(packed, k).astype(jnp.float32).reshape(n, k // g, g)
    return (q * scale.astype(jnp.float32)[..., None]).reshape(n, k)
