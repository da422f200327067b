"""Helpers shared by the GPU benchmark scripts (``bench/gpu_*.py``).

Conventions: bandwidth is bytes read plus bytes written over the median time; ``torch.clone`` of
the same bytes in the same process is the ceiling (``pct_clone``); relative error is
``||y - ref|| / ||ref||`` against a float64 reference. ``roofline_row`` builds the dict that every
``roofline_rows()`` returns for the combined table; ``report`` formats a script's tables.
"""

from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import time
from multiprocessing.connection import Connection
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterable

import torch

from hlwq_kernels.ops._triton import PreparedCalls


SHAPES = [(14336, 4096), (4096, 14336), (16384, 16384), (5120, 27648), (27648, 5120)]  # LLM weights [N, K]


def bench_seconds(fn: Callable[[], object]) -> float:
    """Median time of ``fn`` in seconds (CUDA events via ``triton.testing.do_bench``)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e-3


def graph_seconds(fn: Callable[[], object], rep_ms: float = 20.0) -> float:
    """Median time of one ``fn`` call in seconds, replayed from a CUDA graph: no host overhead
    (Python, argument checks, launch) in the timed region; median of 10 replays of a graph of
    about ``rep_ms`` of calls. ``fn`` must not synchronize."""
    import triton.testing

    fn()  # compile / warm caches outside the capture
    torch.cuda.synchronize()
    return triton.testing.do_bench_cudagraph(fn, rep=rep_ms, return_mode="median") * 1e-3


def host_seconds(fn: Callable[[], object], calls: int = 2000) -> float:
    """Wall time per call of ``fn`` issued back to back (the host side of a launch when the kernel
    is shorter than the call: use a tiny input)."""
    for _ in range(50):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls


def planned_each_call(fn: Callable[[], object], *modules: ModuleType) -> Callable[[], object]:
    """``fn`` with the prepared launches of ``modules`` (their ``_PREPARED``) dropped before every call: the launch
    is planned as on the first call of its kind (the compiled kernel is reused), for a host-time A/B in one process."""
    def call() -> object:
        for module in modules:
            module._PREPARED = PreparedCalls()
        return fn()
    return call


def clone_gbps(x: torch.Tensor) -> float:
    """``torch.clone`` bandwidth on ``x`` (bytes read + written): the best of a graph-replayed
    ``x.clone()``, an event-timed ``x.clone()`` and a graph-replayed copy into a preallocated
    tensor. (On an H200, graph-replayed clones of power-of-two sizes ran at 2700 GB/s in one
    process where the event-timed ones ran at 4150: the ceiling is the fastest way to copy.)"""
    out = torch.empty_like(x)
    best = min(graph_seconds(lambda: x.clone()), bench_seconds(lambda: x.clone()),
               graph_seconds(lambda: out.copy_(x)))
    return 2 * x.numel() * x.element_size() / best / 1e9


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """``||y - ref|| / ||ref||`` in float64."""
    return float((y.double() - ref).norm() / ref.norm())


def poison_allocator(nbytes: int) -> None:
    """Fill soon-to-be-reused allocator blocks with NaN so unwritten outputs show up."""
    junk = torch.full((nbytes // 4 + 1,), float("nan"), device="cuda")
    del junk


def roofline_row(op: str, shape: tuple[int, ...], dtype: torch.dtype | str, gbps: float, clone: float,
                 err: float | None, note: str = "") -> dict:
    """One row of the combined roofline table (keys: op, shape, dtype, gbps, pct_clone, rel_err, note)."""
    return {
        "op": op, "shape": "x".join(map(str, shape)), "dtype": str(dtype).removeprefix("torch."),
        "gbps": round(gbps, 1), "pct_clone": round(100 * gbps / clone, 1), "rel_err": err, "note": note,
    }


_STARTING = object()  # the task of a run_parallel worker before its first answer


def _serve(fn: Callable, conn: Connection) -> None:
    """A ``run_parallel`` worker: say it is ready, then run ``fn`` on each task received on ``conn`` and answer when
    it is done."""
    conn.send(True)
    while (task := conn.recv()) is not None:
        fn(task)
        conn.send(True)


def _start_worker(ctx: multiprocessing.context.BaseContext, fn: Callable) -> tuple:
    """A started ``_serve`` process and this side of its pipe."""
    here, there = ctx.Pipe()
    worker = ctx.Process(target=_serve, args=(fn, there))  # not a daemon: its work may start processes of its own
    worker.start()
    there.close()
    return worker, here


def _answered(conn: Connection) -> bool:
    """Whether the worker at the other end of ``conn`` has answered (False while busy, or dead without answering)."""
    try:
        return conn.poll() and conn.recv()
    except EOFError:
        return False


def run_parallel(fn: Callable, tasks: Iterable, jobs: int, timeout: float | None = None) -> list:
    """``fn(task)`` (a module-level function; its results are dropped) for every task in ``jobs`` spawned worker
    processes, for example to compile Triton kernels into the shared on-disk cache before timing in one process.
    Returns the tasks that did not finish: those still running ``timeout`` seconds after they reached a ready
    worker (which is killed and replaced, so one compile that never ends costs ``timeout``, not the whole run) and
    those whose worker died. With ``jobs <= 1`` the tasks run in this process, without a time limit."""
    tasks = list(tasks)
    if jobs <= 1:
        for task in tasks:
            fn(task)
        return []
    ctx = multiprocessing.get_context("spawn")
    workers = [_start_worker(ctx, fn) for _ in range(min(jobs, len(tasks)))]
    running = {i: (_STARTING, 0.0) for i in range(len(workers))}  # worker index -> (task, start time)
    unfinished = []
    try:
        while tasks or running:
            for i, (worker, conn) in enumerate(workers):
                if i in running and not _answered(conn):
                    task, start = running[i]
                    late = task is not _STARTING and timeout is not None and time.monotonic() - start > timeout
                    if worker.is_alive() and not late:
                        continue
                    if task is _STARTING:
                        raise RuntimeError(f"a worker process did not start (exit code {worker.exitcode})")
                    worker.kill()
                    worker.join()
                    unfinished.append(task)
                    workers[i] = _start_worker(ctx, fn)
                    running[i] = (_STARTING, 0.0)
                    continue
                running.pop(i, None)
                if tasks:
                    conn.send(tasks[0])
                    running[i] = (tasks.pop(0), time.monotonic())
            time.sleep(0.01)
        for worker, conn in workers:
            conn.send(None)
            worker.join()
    finally:  # on an error (or an interrupt) no worker is left behind
        for worker, _ in workers:
            if worker.is_alive():
                worker.kill()
                worker.join()
    return unfinished


_SMI_FIELDS = "uuid,driver_version,clocks.max.sm,clocks.max.mem,power.limit,pci.bus_id"


def machine_line() -> str:
    """Which GPU this is (name, UUID, SMs, memory, driver, clock and power limits): two machines of one
    kind can differ by several points of % clone, so every table names the one it ran on."""
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    line = f"{props.name}, {props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB"
    try:
        smi = subprocess.run(["nvidia-smi", f"--query-gpu={_SMI_FIELDS}", "--format=csv,noheader",
                              f"--id={torch.cuda.current_device()}"], capture_output=True, text=True, timeout=20)
        fields = smi.stdout.strip() if smi.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        fields = ""
    return line + (f"; nvidia-smi ({_SMI_FIELDS}): {fields}" if fields else "; no fields from nvidia-smi")


def emit_table(lines: list[str], out: str | None) -> None:
    """Print the Markdown table and, when ``out`` is given, write it there."""
    table = "\n".join(lines)
    print(table)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(table + "\n")


def cell(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def roofline_table(rows: list[dict]) -> list[str]:
    """Markdown table of roofline rows."""
    lines = ["| op | shape | dtype | GB/s | % clone | rel. err | note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['op']} | {r['shape']} | {r['dtype']} | {cell(r['gbps'], '.0f')} | "
                     f"{cell(r['pct_clone'], '.1f')} | {cell(r['rel_err'], '.1e')} | {r.get('note', '')} |")
    return lines


def host_table(calls: dict[str, Callable[[], object]]) -> list[str]:
    """Markdown table of the host µs per call of each named call (issued back to back on a small input)."""
    return (["| public call (small input) | host µs per call |", "|---|---|"]
            + [f"| {name} | {1e6 * host_seconds(fn):.1f} |" for name, fn in calls.items()])


def report(title: str, rows: list[dict], host: dict[str, Callable[[], object]],
           sweep_lines: list[str] | None) -> list[str]:
    """Title, roofline table, host-overhead table and (optional) sweep lines of one GPU script."""
    lines = [title, "", *roofline_table(rows), "", *host_table(host), ""]
    return lines + (sweep_lines + [""] if sweep_lines is not None else [])


def arg_parser(doc: str, sweep_help: str) -> argparse.ArgumentParser:
    """--out, --quick and --sweep, the options every GPU script of the kernels takes."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out", help="write the Markdown tables here")
    parser.add_argument("--quick", action="store_true", help="two shapes only")
    parser.add_argument("--sweep", action="store_true", help=sweep_help)
    return parser
