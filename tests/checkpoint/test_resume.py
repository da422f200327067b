"""Resume per tensor: a conversion interrupted at seeded random points (Ctrl-C, SIGTERM, kill -9,
a torn journal line as after a power loss) reruns only the tensors not yet saved, and the output is
byte-identical to an uninterrupted run; a stale partial directory is never trusted."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hlwq_kernels.checkpoint import REPORT_NAME, quantize_checkpoint
from hlwq_kernels.checkpoint import io as checkpoint_io
from hlwq_kernels.checkpoint.io import CheckpointError
from hlwq_kernels.checkpoint.progress import PROGRESS_DIR, load_done
from tests.helpers import random_weight
from tests.tiny_checkpoints import write_config

ROOT = Path(__file__).resolve().parents[2]
LAYERS, N, K = 32, 512, 2048  # 32 quantized weights of 2 MiB: long enough a run to interrupt


def digests(path: Path) -> dict[str, str]:
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and p.name != REPORT_NAME}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("resume") / "src"
    src.mkdir()
    write_config(src, model_type="llama", architectures=["LlamaForCausalLM"])
    tensors = {f"model.layers.{i}.mlp.down_proj.weight": random_weight((N, K), torch.bfloat16, seed=i)
               for i in range(LAYERS)}
    tensors["model.norm.weight"] = random_weight((K,), torch.bfloat16, seed=LAYERS)
    save_file(tensors, src / "model.safetensors", metadata={"format": "pt"})
    return src


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory) -> dict[str, str]:
    dst = tmp_path_factory.mktemp("reference") / "out"
    quantize_checkpoint(source, dst, max_shard_size="20MB", progress=False)
    return digests(dst)


def journal_lines(partial: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in (partial / PROGRESS_DIR).glob("done-*.jsonl"))


def interrupt_run(src: Path, dst: Path, signum: int, after: int) -> subprocess.CompletedProcess:
    """Run the CLI; once ``after`` tensors are journaled, freeze it, send ``signum``, let it go on."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hlwq_kernels.convert", str(src), str(dst), "--quiet", "--max-shard-size", "20MB"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    partial = dst.parent / f".{dst.name}.partial"
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if (partial / PROGRESS_DIR).is_dir() and journal_lines(partial) >= after:
            proc.send_signal(signal.SIGSTOP)
            proc.send_signal(signum)
            proc.send_signal(signal.SIGCONT)
            break
        time.sleep(0.001)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("signum, seed, torn", [(signal.SIGINT, 1, False), (signal.SIGTERM, 2, False),
                                                (signal.SIGKILL, 3, False), (signal.SIGKILL, 4, True)])
def test_interrupted_run_resumes_only_missing_tensors(source, reference, tmp_path, signum, seed, torn):
    """``torn``: a partial last journal line, as a power loss in the middle of an append leaves."""
    total = LAYERS + 1
    after = random.Random(seed).randint(1, total // 2)
    dst = tmp_path / "out"
    partial = tmp_path / ".out.partial"
    run = interrupt_run(source, dst, signum, after)
    assert not dst.exists(), "the run finished before it could be interrupted"
    if signum == signal.SIGKILL:
        assert run.returncode == -signal.SIGKILL
    else:
        assert run.returncode == 130, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in run.stderr, run.stderr
        assert lines[0].startswith("interrupted: ") and f"of {total} tensors" in lines[0]
        assert f"saved in {partial}; resume with: python -m hlwq_kernels.convert {source} {dst}" in lines[0]
    saved = len(load_done(partial))
    assert after <= saved < total
    if torn:
        with open(next((partial / PROGRESS_DIR).glob("done-*.jsonl")), "ab") as f:
            f.write(b'{"bytes": 2097152, "layer": {"name": "model.layers.4')
        assert len(load_done(partial)) == saved
    report = quantize_checkpoint(source, dst, max_shard_size="20MB", progress=False)
    assert report.resumed_tensors == saved  # the rerun converted only the total - saved missing tensors
    assert digests(dst) == reference


def test_stale_partial_directory_is_not_trusted(source, reference, tmp_path, monkeypatch):
    """A partial directory from another source (here: the source file was rewritten since) or a
    foreign one is deleted and the conversion starts afresh."""
    src = tmp_path / "src"
    src.mkdir()
    for f in source.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    dst = tmp_path / "out"
    real = checkpoint_io.write_at
    calls = iter(range(10**6))

    def fail_late(fd, data, offset, path):
        if next(calls) == 20:
            raise CheckpointError("disk full while writing (simulated)")
        real(fd, data, offset, path)

    monkeypatch.setattr(checkpoint_io, "write_at", fail_late)
    with pytest.raises(CheckpointError):
        quantize_checkpoint(src, dst, max_shard_size="20MB", progress=False)
    monkeypatch.setattr(checkpoint_io, "write_at", real)
    assert load_done(tmp_path / ".out.partial")
    weights = src / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    report = quantize_checkpoint(src, dst, max_shard_size="20MB", progress=False)
    assert report.resumed_tensors == 0 and digests(dst) == reference
    foreign = tmp_path / ".out2.partial"
    (foreign / PROGRESS_DIR).mkdir(parents=True)
    (foreign / PROGRESS_DIR / "plan.json").write_text(json.dumps({"fingerprint": "foreign"}))
    (foreign / PROGRESS_DIR / "done-0.jsonl").write_text(json.dumps({"name": "model.layers.0.mlp.down_proj.weight"}))
    (foreign / "model-00001-of-00001.safetensors").write_bytes(b"not ours")
    report = quantize_checkpoint(src, tmp_path / "out2", max_shard_size="20MB", progress=False)
    assert report.resumed_tensors == 0 and digests(tmp_path / "out2") == reference


def test_unwritable_destination_is_one_line_and_exit_2(source, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = subprocess.run([sys.executable, "-m", "hlwq_kernels.convert", str(source), str(blocker / "out"), "--quiet"],
                          capture_output=True, text=True, cwd=ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)},
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: the destination's parent {blocker} is not a directory"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # nothing left behind
