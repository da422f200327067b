"""Marlin tile layout (INT4 weights, 16-bit activations), NumPy reference.

``Q[k, n] = q + 8`` (the transposed codes). Word ``B[kt, 128 nt + 4 t + w]`` of the int32 output
``[K/16, 2N]`` holds in nibbles 0..7, with ``r0 = 16 kt + 2 (t % 4)`` and ``c0 = 64 nt + 16 w + t // 4``:
``Q[r0,c0], Q[r0+8,c0], Q[r0,c0+8], Q[r0+8,c0+8], Q[r0+1,c0], Q[r0+9,c0], Q[r0+1,c0+8], Q[r0+9,c0+8]``.
Scales ``[K/g, N]`` are permuted in runs of 64 by ``out[8i + j] = in[i + 8j]`` when ``g < K``, and in
runs of 32 by ``out[8i + m] = in[2i + (0, 1, 8, 9, 16, 17, 24, 25)[m]]`` when ``g == K``.
"""

from __future__ import annotations

import numpy as np

from hlwq_reference.numpy.int4 import pack_int4, unpack_int4

__all__ = ["marlin_pack", "marlin_unpack", "marlin_scale_perm"]

_ROW_OFFSETS = np.array([0, 8, 0, 8, 1, 9, 1, 9])
_COL_OFFSETS = np.array([0, 0, 8, 8, 0, 0, 8, 8])


def marlin_scale_perm(group_size: int, k: int) -> np.ndarray:
    """Permutation of each run of scales: 64 long when grouped, 32 when one group spans K."""
    if group_size == k:
        return np.array([2 * i + j for i in range(4) for j in (0, 1, 8, 9, 16, 17, 24, 25)])
    return np.array([i + 8 * j for i in range(8) for j in range(8)])


def _source_indices(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of Q feeding each nibble of B, as arrays [K/16, 2N, 8]."""
    kt = np.arange(k // 16)[:, None, None, None, None]
    nt = np.arange(n // 64)[None, :, None, None, None]
    t = np.arange(32)[None, None, :, None, None]
    w = np.arange(4)[None, None, None, :, None]
    r0 = 16 * kt + 2 * (t % 4)
    c0 = 64 * nt + 16 * w + t // 4
    rows = r0 + _ROW_OFFSETS
    cols = c0 + _COL_OFFSETS
    shape = (k // 16, 2 * n, 8)
    return np.broadcast_to(rows, (k // 16, n // 64, 32, 4, 8)).reshape(shape), np.broadcast_to(
        cols, (k // 16, n // 64, 32, 4, 8)
    ).reshape(shape)


def _check(n: int, k: int, group_size: int) -> None:
    if k % 16 or n % 64 or k % group_size:
        raise ValueError(f"Marlin layout needs K % 16 == 0, N % 64 == 0 and K % group_size == 0, got {(n, k)}")


def marlin_pack(
    packed: np.ndarray, scale: np.ndarray, shape: tuple[int, int], group_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(qweight int32 [K/16, 2N], permuted scales [K/g, N]) from compressed-tensors words and scales."""
    n, k = shape
    _check(n, k, group_size)
    q_t = unpack_int4(packed, k).T
    rows, cols = _source_indices(n, k)
    qweight = pack_int4(q_t[rows, cols].reshape(k // 16, 16 * n))
    perm = marlin_scale_perm(group_size, k)
    scales = scale.T.reshape(-1, perm.size)[:, perm].reshape(k // group_size, n)
    return qweight, scales


def marlin_unpack(
    qweight: np.ndarray, scales: np.ndarray, shape: tuple[int, int], group_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of ``marlin_pack``: (compressed-tensors words [N, K/8], scales [N, K/g])."""
    n, k = shape
    _check(n, k, group_size)
    rows, cols = _source_indices(n, k)
    q_t = np.empty((k, n), dtype=np.int8)
    q_t[rows, cols] = unpack_int4(qweight, 16 * n).reshape(k // 16, 2 * n, 8)
    perm = marlin_scale_perm(group_size, k)
    inverse = np.argsort(perm)
    scale = scales.reshape(-1, perm.size)[:, inverse].reshape(k // group_size, n).T
    return pack_int4(q_t.T), scale
