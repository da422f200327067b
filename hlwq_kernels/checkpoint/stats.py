"""Per-layer error statistics of a quantized weight, computed piece by piece and combined
deterministically (the same numbers whatever the pieces, the threads or the processes)."""

from __future__ import annotations

import math

import numpy as np
import torch

from hlwq_kernels.checkpoint.report import LayerReport
from hlwq_kernels.formats import compressed_tensors as ct
from hlwq_kernels.metrics import sqnr_db
from hlwq_kernels.ops.int4 import Int4Weight
from hlwq_kernels.ops.int4_asym import Int4AsymWeight


def row_stats(w: torch.Tensor, q: Int4Weight | Int4AsymWeight) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``w`` ``[R, K]``: ``||w - dequant(q)||²`` and ``||w||²``, float32, on ``w``'s device
    (no host synchronisation). A non-finite energy flags a NaN/Inf (or float32-overflowing) row."""
    wf = w.float()
    d = ct.dequantize(q).sub_(wf)
    return torch.linalg.vecdot(d, d, dim=1), torch.linalg.vecdot(wf, wf, dim=1)


def layer_report(module: str, shape: tuple[int, int], dtype: str, err_rows: np.ndarray, energy_rows: np.ndarray,
                 bytes_in: int, bytes_out: int) -> LayerReport:
    """The LayerReport from the per-row sums of all rows in order (summed in float64)."""
    err = float(np.asarray(err_rows, dtype=np.float64).sum())
    energy = float(np.asarray(energy_rows, dtype=np.float64).sum())
    rel = math.sqrt(err / energy) if energy > 0 else 0.0
    return LayerReport(module, [int(shape[0]), int(shape[1])], dtype, rel, sqnr_db(err, energy), bytes_in, bytes_out)
