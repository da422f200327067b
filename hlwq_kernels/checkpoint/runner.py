"""The staged conversion of a set of units: readers -> compute -> writers -> committer, all
overlapping, with memory bounded by a fixed pool of input buffers.

- Pieces: a quantized weight is cut into blocks of rows (multiples of 64 rows, about the backend's
  ``piece_bytes`` each): quantizers work row by row, so the pieces' results are the tensor's. A
  kept tensor is one piece, copied file to file inside the kernel.
- Readers (threads) fill input buffers from the source with positioned reads.
- The dispatcher (the calling thread) hands each filled buffer, in order, to the backend, which
  starts the computation (CPU worker threads, or CUDA streams) and returns a handle at once.
- Writers (threads) wait for a handle's results, write them at their planned offsets and return
  the buffer to the pool; a tensor whose pieces are all written goes to the committer.
- The committer (a thread) makes finished tensors durable (``progress.Journal.commit``) as often
  as the disk allows: a tensor is recorded only once its bytes are on disk.

An exception in any stage, or KeyboardInterrupt in the calling thread, stops every stage; tensors
already complete are committed before the exception propagates.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from hlwq_kernels.checkpoint import io as checkpoint_io
from hlwq_kernels.checkpoint.io import DTYPES, ITEMSIZE, CheckpointError, copy_range, read_into, read_tensor
from hlwq_kernels.checkpoint.plan import Plan, Unit
from hlwq_kernels.checkpoint.progress import Journal
from hlwq_kernels.checkpoint.stats import layer_report
from hlwq_kernels.formats import compressed_tensors as ct

ROW_ALIGN = 64  # pieces start at multiples of 64 rows (room for formats that pack 8 rows together)


@dataclass(frozen=True)
class Piece:
    """Rows ``start:stop`` of a quantized unit, or bytes ``start:stop`` of a kept one."""

    unit: int
    start: int
    stop: int


@dataclass
class PieceResult:
    """A quantized piece on the host: its part of each per-row output tensor (in the unit's output
    order: packed words, scales, zero points if any), and per-row ``||w - dequant||²`` and
    ``||w||²`` (float32)."""

    tensors: tuple[torch.Tensor, ...]
    err: np.ndarray
    energy: np.ndarray


class Backend(Protocol):
    """Where pieces are quantized (``cpu_backend``, ``gpu_backend``) and how many threads and
    buffers the stages around it use."""

    piece_bytes: int
    readers: int
    writers: int
    buffers: int

    def host_buffer(self, nbytes: int) -> torch.Tensor: ...
    def submit(self, w: torch.Tensor) -> object: ...
    def result(self, handle: object) -> PieceResult: ...
    def timings(self) -> dict[str, float]: ...
    def close(self) -> None: ...


class StageTimes:
    """Busy seconds per stage, summed over the threads of a stage (thread-safe)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, key: str, seconds: float) -> None:
        with self._lock:
            self.totals[key] = self.totals.get(key, 0.0) + seconds


def split(plan: Plan, unit_ids: list[int], piece_bytes: int) -> list[Piece]:
    """The pieces of ``unit_ids``, in order."""
    pieces = []
    for i in unit_ids:
        unit = plan.units[i]
        if not unit.quantized:
            pieces.append(Piece(i, 0, unit.source.nbytes))
            continue
        n, k = unit.source.shape
        rows = max(ROW_ALIGN, piece_bytes // (k * ITEMSIZE[unit.source.dtype]) // ROW_ALIGN * ROW_ALIGN)
        pieces.extend(Piece(i, r, min(n, r + rows)) for r in range(0, n, rows))
    return pieces


def _piece_nbytes(plan: Plan, piece: Piece) -> int:
    unit = plan.units[piece.unit]
    return (piece.stop - piece.start) * unit.source.shape[1] * ITEMSIZE[unit.source.dtype]


def _bytes_of(t: torch.Tensor) -> memoryview:
    return memoryview(t.contiguous().view(torch.uint8).numpy()).cast("B")


class _Run:
    """The shared state of one ``run`` call."""

    def __init__(self, plan: Plan, work: Path, pieces: list[Piece], backend: Backend, journal: Journal,
                 on_done: Callable[[Unit], None]):
        self.plan, self.work, self.pieces, self.backend, self.journal = plan, work, pieces, backend, journal
        self.on_done = on_done
        self.times = StageTimes()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()
        self.remaining: dict[int, int] = {}
        for p in pieces:
            self.remaining[p.unit] = self.remaining.get(p.unit, 0) + 1
        self.rows: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}
        self.write_q: queue.Queue = queue.Queue()
        self.commit_q: queue.Queue = queue.Queue()
        self.pool: queue.Queue = queue.Queue()
        self.src_fds = {f: os.open(f, os.O_RDONLY) for f in sorted({plan.units[p.unit].source.file for p in pieces})}
        for fd in self.src_fds.values():
            if hasattr(os, "posix_fadvise"):  # more read-ahead from a cold disk (Linux)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        self.dst_fds = {s: os.open(work / plan.shards[s].name, os.O_WRONLY)
                        for s in sorted({plan.units[p.unit].shard for p in pieces})}

    def fail(self, e: BaseException) -> None:
        with self.lock:
            self.errors.append(e)
        self.stop.set()

    def close(self) -> None:
        for fd in [*self.src_fds.values(), *self.dst_fds.values()]:
            os.close(fd)

    # readers
    def read(self, piece: Piece, buf: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        unit = self.plan.units[piece.unit]
        t = unit.source
        n, k = t.shape
        nbytes = _piece_nbytes(self.plan, piece)
        view = buf[:nbytes]
        read_into(self.src_fds[t.file], memoryview(view.numpy()), t.start + piece.start * k * ITEMSIZE[t.dtype], t)
        self.times.add("read_s", time.perf_counter() - start)
        return view.view(DTYPES[t.dtype]).view(piece.stop - piece.start, k)

    # writers
    def write_loop(self) -> None:
        while True:
            item = self.write_q.get()
            if item is None or self.stop.is_set():
                return
            try:
                start = time.perf_counter()
                if len(item) == 1:
                    self.write_kept(item[0])
                else:
                    self.write_quantized(*item)
                self.times.add("write_s", time.perf_counter() - start)
            except BaseException as e:
                self.fail(e)
                return

    def write_kept(self, piece: Piece) -> None:
        unit = self.plan.units[piece.unit]
        path = self.work / self.plan.shards[unit.shard].name
        copy_range(self.src_fds[unit.source.file], self.dst_fds[unit.shard], unit.source.start, unit.offsets[0],
                   unit.source.nbytes, path)
        self.finish(piece, None)

    def write_quantized(self, piece: Piece, handle: object, buf: torch.Tensor) -> None:
        wait = time.perf_counter()
        res = self.backend.result(handle)
        self.times.add("wait_s", time.perf_counter() - wait)
        self.pool.put(buf)
        unit = self.plan.units[piece.unit]
        rows = piece.stop - piece.start
        *per_row, shape = unit.outputs
        ratios = [ct.rows_per_stored_row(o.name) for o in per_row]
        if len(res.tensors) != len(per_row) or any(
                tuple(t.shape) != (-(-rows // r), o.shape[1]) or t.dtype != DTYPES[o.dtype]
                for t, o, r in zip(res.tensors, per_row, ratios)):
            raise CheckpointError(f"quantizer returned unexpected shapes/dtypes for {unit.source.name!r}")
        if not np.isfinite(res.energy).all() and not bool(torch.isfinite(read_tensor(unit.source)).all()):
            t = unit.source
            raise CheckpointError(f"{t.file}: tensor {t.name!r} contains NaN or Inf values; refusing to quantize it")
        if any(o.name.endswith(".weight_scale") and not bool(torch.isfinite(t).all()) for t, o in zip(res.tensors, per_row)):
            t = unit.source
            raise CheckpointError(f"{t.file}: tensor {t.name!r}: a group's scale overflows {t.dtype} (the group's values "
                                  f"span more than {t.dtype} holds); refusing to write an infinite scale (--scheme sym "
                                  "takes the largest magnitude instead of the span)")
        fd, path = self.dst_fds[unit.shard], self.work / self.plan.shards[unit.shard].name
        for t, o, r, offset in zip(res.tensors, per_row, ratios, unit.offsets):  # pieces start at whole words
            checkpoint_io.write_at(fd, _bytes_of(t), offset + piece.start // r * (o.nbytes // o.shape[0]), path)
        if piece.start == 0:
            checkpoint_io.write_at(fd, memoryview(np.array(unit.source.shape, dtype=np.int64)).cast("B"),
                                   unit.offsets[-1], path)
        self.finish(piece, (res.err, res.energy))

    def finish(self, piece: Piece, stats: tuple[np.ndarray, np.ndarray] | None) -> None:
        with self.lock:
            if stats is not None:
                self.rows.setdefault(piece.unit, []).append((piece.start, *stats))
            self.remaining[piece.unit] -= 1
            if self.remaining[piece.unit]:
                return
            rows = sorted(self.rows.pop(piece.unit, []), key=lambda r: r[0])
        unit = self.plan.units[piece.unit]
        layer = None
        if unit.quantized:
            layer = asdict(layer_report(unit.source.name[: -len(".weight")], unit.source.shape, unit.source.dtype,
                                        np.concatenate([r[1] for r in rows]), np.concatenate([r[2] for r in rows]),
                                        unit.source.nbytes, unit.nbytes))
        self.commit_q.put(({"name": unit.source.name, "bytes": unit.source.nbytes, "layer": layer},
                           self.dst_fds[unit.shard]))
        self.on_done(unit)

    # committer
    def commit_loop(self) -> None:
        end = False
        while not end:
            batch = [self.commit_q.get()]
            while True:
                try:
                    batch.append(self.commit_q.get_nowait())
                except queue.Empty:
                    break
            end = None in batch
            entries = [b for b in batch if b is not None]
            start = time.perf_counter()
            try:
                self.journal.commit([e for e, _ in entries], sorted({fd for _, fd in entries}))
            except BaseException as e:
                self.fail(e)
                return
            self.times.add("commit_s", time.perf_counter() - start)

    # dispatcher
    def dispatch(self, readers: ThreadPoolExecutor) -> None:
        inflight: deque[tuple[Piece, torch.Tensor, Future]] = deque()
        for piece in self.pieces:
            if self.stop.is_set():
                return
            if not self.plan.units[piece.unit].quantized:
                self.write_q.put((piece,))
                continue
            buf = self.take_buffer()
            if buf is None:
                return
            inflight.append((piece, buf, readers.submit(self.read, piece, buf)))
            while inflight and (inflight[0][2].done() or self.pool.empty()):
                self.launch(*inflight.popleft())
        while inflight and not self.stop.is_set():
            self.launch(*inflight.popleft())

    def take_buffer(self) -> torch.Tensor | None:
        while not self.stop.is_set():
            try:
                return self.pool.get(timeout=0.1)
            except queue.Empty:
                pass
        return None

    def launch(self, piece: Piece, buf: torch.Tensor, read: Future) -> None:
        w = read.result()
        start = time.perf_counter()
        handle = self.backend.submit(w)
        self.times.add("launch_s", time.perf_counter() - start)
        self.write_q.put((piece, handle, buf))


def run(plan: Plan, work: Path, unit_ids: list[int], backend: Backend, journal: Journal,
        on_done: Callable[[Unit], None]) -> dict[str, float]:
    """Convert the units ``unit_ids`` of ``plan`` into the shard files in ``work``; each finished
    unit is committed to ``journal`` and passed to ``on_done`` (from a writer thread). Returns
    the busy seconds of each stage."""
    pieces = split(plan, unit_ids, backend.piece_bytes)
    state = _Run(plan, work, pieces, backend, journal, on_done)
    largest = max((_piece_nbytes(plan, p) for p in pieces if plan.units[p.unit].quantized), default=0)
    writers = [threading.Thread(target=state.write_loop, name=f"hlwq-writer-{i}", daemon=True)
               for i in range(backend.writers)]
    committer = threading.Thread(target=state.commit_loop, name="hlwq-committer", daemon=True)
    readers = ThreadPoolExecutor(backend.readers, thread_name_prefix="hlwq-reader")
    try:
        if largest:
            start = time.perf_counter()
            for _ in range(backend.buffers):
                state.pool.put(backend.host_buffer(largest))
            state.times.add("buffers_s", time.perf_counter() - start)
        for t in (*writers, committer):
            t.start()
        state.dispatch(readers)
    except BaseException as e:
        state.fail(e)
    finally:
        for _ in writers:
            state.write_q.put(None)
        for t in writers:
            if t.ident is not None:
                t.join()
        state.commit_q.put(None)
        if committer.ident is not None:
            committer.join()
        readers.shutdown(wait=False, cancel_futures=True)
        backend.close()
        state.close()
    if state.errors:
        raise state.errors[0]
    return {**state.times.totals, **backend.timings()}
