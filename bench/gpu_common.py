"""Helpers shared by the GPU benchmark scripts (``bench/gpu_*.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch


def bench_seconds(fn: Callable[[], object]) -> float:
    """Median time of ``fn`` in seconds (CUDA events via ``triton.testing.do_bench``)."""
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e-3


def poison_allocator(nbytes: int) -> None:
    """Fill soon-to-be-reused allocator blocks with NaN so unwritten outputs show up."""
    junk = torch.full((nbytes // 4 + 1,), float("nan"), device="cuda")
    del junk


def emit_table(lines: list[str], out: str | None) -> None:
    """Print the Markdown table and, when ``out`` is given, write it there."""
    table = "\n".join(lines)
    print(table)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(table + "\n")
