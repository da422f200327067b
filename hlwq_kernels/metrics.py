"""Error metrics shared by the converter, the verifier and the quality study."""

from __future__ import annotations

import math

import torch


def error_energy(target: torch.Tensor, approx: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """``||target - approx||²`` and ``||target||²``, accumulated in ``dtype``."""
    t = target.to(dtype)
    return (t - approx.to(dtype)).square().sum().item(), t.square().sum().item()


def sqnr_db(err: float, energy: float) -> float:
    """``10 log10(energy / err)``; inf for an exact approximation, nan when ``err`` is nan."""
    if math.isnan(err):
        return math.nan
    return 10 * math.log10(energy / err) if err > 0 else math.inf


def relative_error(target: torch.Tensor, approx: torch.Tensor, dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """Relative Frobenius error ``||target - approx|| / ||target||`` and SQNR (dB), accumulated in ``dtype``."""
    err, energy = error_energy(target, approx, dtype)
    return (math.sqrt(err / energy) if energy > 0 else 0.0), sqnr_db(err, energy)
