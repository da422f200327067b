"""HLWQ per-matrix pipeline, NumPy float64 reference composed from the reference ops.

Per block ``x`` of ``b`` consecutive inputs of a row of ``W [N, K]``:
``norm = float32(||x||)``, ``y = fwht(x / norm) * sqrt(b)``, ``code = #{t : y >= t}``,
``W' = fwht^-1(levels[code] / sqrt(b)) * norm`` rounded to float32, then to the weight dtype;
``hlwq_int4 = quantize_int4(W')``. A zero block has norm 0 and ``W' = 0``.
"""

from __future__ import annotations

import numpy as np

from hlwq_reference.numpy.fwht import fwht
from hlwq_reference.numpy.int4 import Int4Weight, quantize_int4
from hlwq_reference.numpy.lloyd_max import dequantize, quantize

__all__ = ["hlwq_codes", "hlwq_dequantize", "hlwq_int4"]


def _blocks(w: np.ndarray, block_size: int) -> np.ndarray:
    n, k = w.shape
    if k % block_size:
        raise ValueError(f"row length {k} is not a multiple of block_size={block_size}")
    return np.asarray(w, dtype=np.float64).reshape(n, k // block_size, block_size)


def hlwq_codes(w: np.ndarray, thresholds: np.ndarray, block_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Codes ``[N, K]`` (int) and float32 block norms ``[N, K / block_size]``."""
    x = _blocks(w, block_size)
    norms = np.sqrt((x * x).sum(axis=-1)).astype(np.float32)
    n64 = norms.astype(np.float64)[..., None]
    u = x / np.where(n64 > 0, n64, 1.0)
    y = fwht(u, dim=-1) * np.sqrt(block_size)
    return quantize(y, thresholds).reshape(w.shape), norms


def hlwq_dequantize(codes: np.ndarray, norms: np.ndarray, levels: np.ndarray, block_size: int = 128,
                    dtype: np.dtype = np.float64) -> np.ndarray:
    """``W'`` from codes and norms, rounded to float32 and then to ``dtype`` (float64: unrounded)."""
    v = _blocks(dequantize(codes, levels), block_size)
    wp = fwht(v / np.sqrt(block_size), dim=-1, inverse=True) * norms.astype(np.float64)[..., None]
    wp = wp.reshape(codes.shape)
    return wp if np.dtype(dtype) == np.float64 else wp.astype(np.float32).astype(dtype)


def hlwq_int4(w: np.ndarray, levels: np.ndarray, thresholds: np.ndarray, block_size: int = 128,
              group_size: int = 128, scale: str = "absmax") -> Int4Weight:
    """INT4 of ``W'`` (in ``w``'s dtype: bfloat16 via ml_dtypes, float16 or float32)."""
    codes, norms = hlwq_codes(w, thresholds, block_size)
    wp = hlwq_dequantize(codes, norms, levels, block_size, dtype=w.dtype)
    return quantize_int4(wp, group_size=group_size, scale=scale)
