"""Quantize pieces on a CUDA GPU with no host synchronisation per piece.

Each piece goes through three streams: host->device copy (from a pinned buffer), kernels (the
quantizer and the per-row error sums, which also flag NaN/Inf rows), device->host copy (into
pinned memory). Streams are chained with events, so copies overlap kernels and each other; the
dispatcher never waits for the GPU, and only a writer thread waits for a piece's last event before
writing its bytes. Stage times are the GPU's own (CUDA event timings).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from hlwq_kernels.checkpoint.io import cpu_count
from hlwq_kernels.checkpoint.runner import PieceResult, StageTimes
from hlwq_kernels.checkpoint.stats import row_stats
from hlwq_kernels.formats import compressed_tensors as ct
from hlwq_kernels.ops.int4 import Int4Weight
from hlwq_kernels.ops.int4_asym import Int4AsymWeight

PIECE_BYTES = 32 << 20


@dataclass
class _Pending:
    events: tuple[torch.cuda.Event, ...]
    host: tuple[torch.Tensor, ...]


class GpuBackend:
    """``runner.Backend`` on one CUDA device."""

    def __init__(self, quantize: Callable[[torch.Tensor], Int4Weight | Int4AsymWeight], device: torch.device):
        self.quantize, self.device = quantize, device
        torch.cuda.set_device(device)  # Triton launches on the current device
        cores = cpu_count()
        self.piece_bytes = PIECE_BYTES
        self.readers = max(2, min(8, cores // 2))
        self.writers = max(2, min(4, cores // 4))
        self.buffers = 2 * self.readers + 4
        self.streams = tuple(torch.cuda.Stream(device) for _ in range(3))  # h2d, compute, d2h
        self.times = StageTimes()

    def host_buffer(self, nbytes: int) -> torch.Tensor:
        """A pinned input buffer of ``nbytes``."""
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)

    def submit(self, w: torch.Tensor) -> _Pending:
        """Queue the copy in, the quantization and the copy out of the rows ``w`` (pinned host)."""
        h2d, compute, d2h = self.streams
        e = tuple(torch.cuda.Event(enable_timing=True) for _ in range(6))  # start and end of each stage
        with torch.cuda.stream(h2d):
            e[0].record()
            dev = w.to(self.device, non_blocking=True)
            e[1].record()
        compute.wait_event(e[1])
        with torch.cuda.stream(compute):
            e[2].record()
            dev.record_stream(compute)
            q = self.quantize(dev)
            outputs = (*ct.row_tensors(q), *row_stats(dev, q))
            e[3].record()
        d2h.wait_event(e[3])
        host = []
        with torch.cuda.stream(d2h):
            e[4].record()
            for t in outputs:
                t.record_stream(d2h)
                h = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                h.copy_(t, non_blocking=True)
                host.append(h)
            e[5].record()
        return _Pending(e, tuple(host))

    def result(self, handle: _Pending) -> PieceResult:
        """Wait for a piece's copy out; record the GPU time of its stages."""
        e = handle.events
        start = time.perf_counter()
        e[5].synchronize()
        self.times.add("gpu_wait_s", time.perf_counter() - start)
        for key, (a, b) in (("h2d_s", (0, 1)), ("kernel_s", (2, 3)), ("d2h_s", (4, 5))):
            self.times.add(key, e[a].elapsed_time(e[b]) / 1e3)
        *outputs, err, energy = handle.host
        return PieceResult(tuple(outputs), err.numpy(), energy.numpy())

    def timings(self) -> dict[str, float]:
        """GPU seconds per stage (summed over pieces; stages overlap)."""
        t = dict(self.times.totals)
        t["transfer_s"] = t.get("h2d_s", 0.0) + t.get("d2h_s", 0.0)
        return t

    def close(self) -> None:
        """Wait for the GPU's queued work (its buffers must outlive it)."""
        torch.cuda.synchronize(self.device)
