"""Quantize pieces on the CPU: one worker thread per core, each running torch with one intra-op
thread on tiles of rows small enough to stay in the core's cache (torch's own threads would
synchronise on every small op, and spin when the cores are shared)."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import torch

from hlwq_kernels.checkpoint.runner import PieceResult, StageTimes
from hlwq_kernels.checkpoint.stats import row_stats
from hlwq_kernels.formats import compressed_tensors as ct
from hlwq_kernels.ops.int4 import Int4Weight
from hlwq_kernels.ops.int4_asym import Int4AsymWeight

PIECE_BYTES = 4 << 20  # rows read, quantized and written together
TILE_ELEMENTS = 1 << 16  # rows quantized together: float32 temporaries of 256 KiB fit in L2


class CpuBackend:
    """``runner.Backend`` on ``threads`` worker threads (default: torch's intra-op thread count)."""

    def __init__(self, quantize: Callable[[torch.Tensor], Int4Weight | Int4AsymWeight], group_size: int, threads: int | None = None):
        self.quantize, self.group_size = quantize, group_size
        self.threads = threads or torch.get_num_threads()
        self.piece_bytes, self.readers, self.writers, self.buffers = PIECE_BYTES, 1, 1, self.threads + 2
        self.times = StageTimes()
        self.pool = ThreadPoolExecutor(self.threads, thread_name_prefix="hlwq-cpu", initializer=torch.set_num_threads,
                                       initargs=(1,))

    def host_buffer(self, nbytes: int) -> torch.Tensor:
        """An input buffer of ``nbytes``."""
        return torch.empty(nbytes, dtype=torch.uint8)

    def submit(self, w: torch.Tensor) -> Future:
        """Start quantizing the rows ``w`` on a worker thread."""
        return self.pool.submit(self._quantize, w)

    def result(self, handle: Future) -> PieceResult:
        """Wait for a piece's result."""
        return handle.result()

    def _quantize(self, w: torch.Tensor) -> PieceResult:
        start = time.perf_counter()
        n, k = w.shape
        err = torch.empty(n, dtype=torch.float32)
        energy = torch.empty(n, dtype=torch.float32)
        step = max(8, TILE_ELEMENTS // k // 8 * 8)  # a multiple of 8 rows: whole zero-point words
        tiles: list[tuple[torch.Tensor, ...]] = []
        for r in range(0, n, step):
            tile = w[r : r + step]
            q = self.quantize(tile)
            tiles.append(ct.row_tensors(q))
            err[r : r + step], energy[r : r + step] = row_stats(tile, q)
        outputs = tuple(torch.cat(parts) for parts in zip(*tiles))
        self.times.add("kernel_s", time.perf_counter() - start)
        return PieceResult(outputs, err.numpy(), energy.numpy())

    def timings(self) -> dict[str, float]:
        """Busy seconds of the workers (summed over threads)."""
        return dict(self.times.totals)

    def close(self) -> None:
        """Stop the workers (a running piece finishes; queued ones are dropped)."""
        self.pool.shutdown(wait=False, cancel_futures=True)
