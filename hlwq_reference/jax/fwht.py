"""Fast Walsh–Hadamard transform, JAX reference: the NumPy reference's math run in ``jax.numpy``.

Float64 when ``jax_enable_x64`` is on (the tests turn it on), else float32.
"""

from __future__ import annotations

import jax.numpy as jnp

from hlwq_reference.numpy.fwht import fwht_xp

__all__ = ["fwht"]


def fwht(
    x: jnp.ndarray,
    dim: int = -1,
    normalized: bool = True,
    inverse: bool = False,
    block_size: int | None = None,
    signs: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Walsh–Hadamard transform of ``x`` along ``dim`` (see ``hlwq_reference.numpy.fwht``)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return fwht_xp(x, dim, normalized, inverse, block_size, signs, jnp)
