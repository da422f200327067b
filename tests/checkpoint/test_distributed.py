"""Several processes through torch.distributed (gloo on CPU): the output is byte-identical to one
process's, from scratch (``--devices cpu,cpu``) and when resuming another run (torchrun)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hlwq_kernels.checkpoint import REPORT_NAME, quantize_checkpoint
from hlwq_kernels.checkpoint import io as checkpoint_io
from hlwq_kernels.checkpoint.distributed import assign
from hlwq_kernels.checkpoint.io import CheckpointError
from hlwq_kernels.checkpoint.progress import load_done
from tests.tiny_checkpoints import save_tiny, write_config

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = ("--max-shard-size", "300KB", "--quiet")


def outputs(path: Path) -> dict[str, str]:
    """Every file's digest, and the report without its timings and destination."""
    files = {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(path.rglob("*")) if p.is_file() and p.name != REPORT_NAME}
    report = json.loads((path / REPORT_NAME).read_text())
    del report["timings"], report["dst"]
    return files | {REPORT_NAME: report}


def run(*args: str | Path, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = [*launcher, "-m", "hlwq_kernels.convert", *map(str, args)] if launcher else \
        [sys.executable, "-m", "hlwq_kernels.convert", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env=os.environ | {"PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("dist")
    src = save_tiny("qwen3", root / "src")
    dst = root / "one"
    quantize_checkpoint(src, dst, max_shard_size="300KB", progress=False)
    return src, outputs(dst)


def test_two_cpu_workers_match_one_process(single, tmp_path):
    src, reference = single
    proc = run(src, tmp_path / "two", *OPTIONS, "--devices", "cpu,cpu")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("| layer | shape |") == 1  # rank 0 alone prints the summary
    assert outputs(tmp_path / "two") == reference
    assert len(list((tmp_path / "two").glob("*.safetensors"))) >= 3


def test_torchrun_resumes_a_single_process_run(single, tmp_path, monkeypatch):
    """One process fails half-way (disk full); two torchrun processes finish the job."""
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this Python")
    src, reference = single[0], dict(single[1])
    dst = tmp_path / "out"
    real = checkpoint_io.write_at
    calls = iter(range(10**6))

    def fail_late(fd, data, offset, path):
        if next(calls) == 12:
            raise CheckpointError(f"disk full while writing {path}") from OSError(errno.ENOSPC, "full")
        real(fd, data, offset, path)

    monkeypatch.setattr(checkpoint_io, "write_at", fail_late)
    with pytest.raises(CheckpointError):
        quantize_checkpoint(src, dst, max_shard_size="300KB", progress=False)
    saved = len(load_done(tmp_path / ".out.partial"))
    assert saved > 0
    proc = run(src, dst, *OPTIONS, launcher=(str(torchrun), "--nproc-per-node", "2"))
    assert proc.returncode == 0, proc.stderr
    resumed = outputs(dst)
    assert resumed[REPORT_NAME].pop("resumed_tensors") == saved
    reference[REPORT_NAME] = {k: v for k, v in reference[REPORT_NAME].items() if k != "resumed_tensors"}
    assert resumed == reference


def test_assign_balances_by_size_deterministically():
    sizes = [5, 1, 9, 3, 3, 7, 2]
    shares = assign(sizes, 3)
    assert shares == assign(sizes, 3)
    assert sorted(i for s in shares for i in s) == list(range(len(sizes)))
    loads = [sum(sizes[i] for i in s) for s in shares]
    assert max(loads) - min(loads) <= max(sizes) and loads == [10, 10, 10]
    assert assign(sizes, 1) == [list(range(len(sizes)))]


def test_a_failing_worker_is_one_error_line(tmp_path):
    """A NaN weight found by either rank: one ``error:`` line, the other rank stopped silently."""
    src = tmp_path / "src"
    src.mkdir()
    write_config(src, model_type="llama", architectures=["LlamaForCausalLM"])
    g = torch.Generator().manual_seed(0)
    tensors = {f"model.layers.{i}.mlp.down_proj.weight": torch.randn(128, 256, generator=g).to(torch.bfloat16)
               for i in range(4)}
    for w in tensors.values():
        w[5, 5] = float("nan")
    save_file(tensors, src / "model.safetensors")
    proc = run(src, tmp_path / "out", *OPTIONS, "--devices", "cpu,cpu")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "contains NaN or Inf" in lines[0], proc.stderr
