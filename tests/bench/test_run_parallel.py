"""The GPU benchmarks' parallel compile step (``bench/gpu_common.run_parallel``), run on the CPU with stand-in tasks."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from gpu_common import run_parallel  # noqa: E402


def _touch_after(task: tuple[str, float]) -> None:
    """Sleep ``seconds``, then create the file ``path``; a negative time ends the worker process with an error."""
    path, seconds = task
    if seconds < 0:
        raise SystemExit(3)
    time.sleep(seconds)
    Path(path).touch()


def test_tasks_past_the_timeout_or_whose_worker_dies_are_returned(tmp_path: Path) -> None:
    tasks = [(str(tmp_path / name), seconds) for name, seconds in
             (("a", 0.1), ("slow", 120.0), ("b", 0.1), ("dies", -1.0), ("c", 0.1), ("d", 0.2))]
    begin = time.monotonic()
    unfinished = run_parallel(_touch_after, tasks, jobs=2, timeout=4.0)
    assert sorted(unfinished) == sorted([tasks[1], tasks[3]])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c", "d"]
    assert time.monotonic() - begin < 100  # the slow task was cut at its timeout, not waited for


def test_one_job_runs_in_this_process(tmp_path: Path) -> None:
    tasks = [(str(tmp_path / name), 0.0) for name in "xyz"]
    assert run_parallel(_touch_after, tasks, jobs=1) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x", "y", "z"]
