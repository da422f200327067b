"""The HLWQ per-matrix pipeline (docs/design.md §1): block Hadamard + Lloyd–Max, then symmetric INT4.

For a weight ``W [N, K]`` and blocks of ``b`` inputs along each row:

- ``norm = float32(||x||)`` per block ``x`` (stored as fp32 and used as stored);
- ``y = fwht(x / norm) * sqrt(b) = (x / norm) @ H_b.T`` (coordinates close to N(0, 1));
- ``code = #{t in thresholds : y >= t}`` against the Lloyd–Max codebook of N(0, 1) with ``2**bits``
  levels (converged; or any ``Codebook`` passed in);
- ``W' = fwht^-1(levels[code] / sqrt(b)) * norm``, rounded to float32 and then to the weight dtype;
- ``hlwq_int4``: ``quantize_int4(W', group_size, scale)`` (compressed-tensors ``pack-quantized``).

A block of zeros has norm 0 and gives ``W' = 0`` (its codes are those of ``y = 0``).
Rows whose length ``K`` is not a multiple of ``block_size`` are refused (ValueError): padding
would change which inputs share a rotation, and INT4 groups would no longer match real columns;
keep such a layer unquantized or pad it yourself. ``block_size`` is a power of two in [16, 256].
NaN/Inf weights raise ValueError.

Backends: ``"triton"`` runs one fused kernel (``hlwq_triton``) that reads each weight once, on CUDA
or in Triton's interpreter on CPU tensors (its codebook tables are built once per device and kept); ``"torch"`` computes in float64 with plain torch ops
(the CPU path); ``"auto"`` picks triton for CUDA tensors. The fused kernel computes in fp32 (the
rotations as fp32 butterflies), so it agrees with the float64 paths except where a value lies within
float32 rounding of a threshold or of a rounding boundary, or a sum cancels (measured in
tests/ops/test_hlwq.py).
"""

from __future__ import annotations

import dataclasses

import torch

from hlwq_kernels.ops._checks import as_int, check_float_dtype, check_instance, check_tensor
from hlwq_kernels.ops._triton import use_triton
from hlwq_kernels.ops.hadamard import hadamard_tensor
from hlwq_kernels.ops.int4 import SCALE_RULES, _WEIGHT_DTYPES, Int4Weight, check_group_size, check_int4_shape, quantize_int4
from hlwq_kernels.ops.lloyd_max import Codebook, gaussian_codebook

__all__ = ["HLWQConfig", "HLWQCodes", "hlwq_quantize", "hlwq_dequantize", "hlwq_int4"]

@dataclasses.dataclass(frozen=True)
class HLWQConfig:
    """Parameters of ``hlwq_int4`` (validated on construction)."""

    bits: int = 5
    block_size: int = 128
    group_size: int = 128
    scale: str = "absmax"

    def __post_init__(self) -> None:
        _check_params(self.bits, self.block_size, self.group_size, self.scale)


@dataclasses.dataclass
class HLWQCodes:
    """Lloyd–Max codes of the rotated blocks and the block norms.

    ``codes`` uint8 ``[N, K]``, ``norms`` float32 ``[N, K / block_size]``, ``levels`` the float64
    codebook levels the codes index (``2**bits`` of them).
    """

    codes: torch.Tensor
    norms: torch.Tensor
    bits: int
    block_size: int
    levels: torch.Tensor


def _check_params(bits: int, block_size: int, group_size: int, scale: str) -> None:
    if not 1 <= as_int(bits, "bits") <= 8:
        raise ValueError(f"bits must be in 1..8 (uint8 codes), got {bits}")
    if as_int(block_size, "block_size") not in (16, 32, 64, 128, 256):
        raise ValueError(f"block_size must be a power of two in [16, 256], got {block_size}")
    check_group_size(group_size)
    if scale not in SCALE_RULES:
        raise ValueError(f"scale must be one of {SCALE_RULES}, got {scale!r}")


def _check_weight(w: torch.Tensor, block_size: int) -> None:
    if check_tensor(w, "weight").dim() != 2:
        raise ValueError(f"HLWQ expects a 2-D weight tensor, got shape {tuple(w.shape)}")
    if w.dtype not in _WEIGHT_DTYPES:
        raise TypeError(f"HLWQ supports {_WEIGHT_DTYPES} weights, got {w.dtype} of shape {tuple(w.shape)}")
    n, k = w.shape
    if n == 0 or k == 0:
        raise ValueError(f"empty weight of shape {tuple(w.shape)}")
    if k % block_size:
        raise ValueError(
            f"weight of shape {tuple(w.shape)}: row length {k} is not a multiple of block_size="
            f"{block_size}; HLWQ does not pad (keep this layer unquantized or pad it yourself)"
        )


def _nonfinite(w: torch.Tensor) -> ValueError:
    return ValueError(f"weight of shape {tuple(w.shape)} contains NaN or Inf")


def _codebook(bits: int, codebook: Codebook | None) -> Codebook:
    cb = check_instance(codebook, Codebook, "codebook") if codebook is not None else gaussian_codebook(1 << bits)
    if len(cb.levels) != 1 << bits:
        raise ValueError(f"codebook has {len(cb.levels)} levels, bits={bits} needs {1 << bits}")
    return cb



def _codes_torch(w: torch.Tensor, cb: Codebook, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 codes and stored (fp32) norms."""
    if not bool(torch.isfinite(w).all()):
        raise _nonfinite(w)
    n, k = w.shape
    x = w.to(torch.float64).reshape(n, k // b, b)
    norms = torch.linalg.vector_norm(x, dim=-1).to(torch.float32)
    n64 = norms.to(torch.float64).unsqueeze(-1)
    u = x / torch.where(n64 > 0, n64, 1.0)
    y = u @ hadamard_tensor(b, transpose=True, dtype=torch.float64, device=w.device)
    thr = torch.tensor(cb.thresholds, dtype=torch.float64, device=w.device)
    codes = torch.searchsorted(thr, y.reshape(n, k).contiguous(), right=True)
    return codes.to(torch.uint8), norms


def _dequantize_torch(codes: torch.Tensor, norms: torch.Tensor, levels: torch.Tensor, b: int,
                      dtype: torch.dtype) -> torch.Tensor:
    n, k = codes.shape
    v = levels.to(codes.device)[codes.long()].reshape(n, k // b, b)
    z = v @ hadamard_tensor(b, dtype=torch.float64, device=codes.device) / b  # inverse of u @ H.T
    wp = z * norms.to(torch.float64).unsqueeze(-1)
    return wp.reshape(n, k).to(torch.float32).to(dtype)


def _levels64(cb: Codebook) -> torch.Tensor:
    return cb.cached(("levels64",), lambda: torch.tensor(cb.levels, dtype=torch.float64))


def _fused(w: torch.Tensor, cb: Codebook, b: int, check_finite: bool, **outputs):
    from hlwq_kernels.ops.hlwq_triton import hlwq_fused

    out = hlwq_fused(w.contiguous(), cb, b, check_finite=check_finite, **outputs)
    if out.finite is False:
        raise _nonfinite(w)
    return out


def hlwq_quantize(w: torch.Tensor, bits: int = 5, block_size: int = 128, codebook: Codebook | None = None,
                  backend: str = "auto", check_finite: bool = True) -> HLWQCodes:
    """Rotate each block of ``block_size`` inputs and quantize it to the Lloyd–Max codebook.

    ``check_finite=False`` skips the NaN/Inf check on the Triton path (no device sync; a
    non-finite block then gets a NaN norm).
    """
    _check_params(bits, block_size, 8, "absmax")
    _check_weight(w, block_size)
    cb = _codebook(bits, codebook)
    if use_triton(backend, w):
        out = _fused(w, cb, block_size, check_finite, codes=True)
        codes, norms = out.codes, out.norms
    else:
        codes, norms = _codes_torch(w, cb, block_size)
    return HLWQCodes(codes, norms, bits, block_size, _levels64(cb))


def hlwq_dequantize(codes: HLWQCodes, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """``W'``: levels, inverse rotation, times the norms (float64 torch ops on the codes' device)."""
    check_instance(codes, HLWQCodes, "codes")
    check_float_dtype(dtype)
    return _dequantize_torch(codes.codes, codes.norms, codes.levels, codes.block_size, dtype)


def hlwq_int4(
    w: torch.Tensor,
    bits: int = 5,
    block_size: int = 128,
    group_size: int = 128,
    scale: str = "absmax",
    codebook: Codebook | None = None,
    backend: str = "auto",
    check_finite: bool = True,
) -> Int4Weight:
    """HLWQ ``W'`` quantized to symmetric group INT4 (compressed-tensors packing).

    With the Triton backend, ``scale="absmax"`` and ``group_size`` dividing ``block_size`` the
    whole chain is one kernel; otherwise the kernel writes ``W'`` and ``quantize_int4`` follows.
    NaN/Inf weights raise ValueError; on the Triton path that check reads a flag back from the
    device (one sync per call): ``check_finite=False`` skips it (the converter validates weights
    when it reads them; non-finite blocks then give NaN scales).
    """
    _check_params(bits, block_size, group_size, scale)
    _check_weight(w, block_size)
    check_int4_shape(tuple(w.shape), group_size)
    cb = _codebook(bits, codebook)
    if use_triton(backend, w):
        if scale == "absmax" and block_size % group_size == 0:
            out = _fused(w, cb, block_size, check_finite, int4_group=group_size)
            return Int4Weight(out.packed, out.scale, tuple(w.shape), group_size)
        wp = _fused(w, cb, block_size, check_finite, wprime=True).wprime
    else:
        codes, norms = _codes_torch(w, cb, block_size)
        wp = _dequantize_torch(codes, norms, _levels64(cb), block_size, w.dtype)
    return quantize_int4(wp, group_size=group_size, scale=scale, backend=backend)
