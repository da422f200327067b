"""The command line: convert, --demo (the real MiniLM), --verify, --help / --version, and one-line
errors (exit 2, no traceback) for every user mistake, destinations included."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hlwq_kernels.checkpoint.io import scan_source, weight_files
from tests.tiny_checkpoints import save_tiny

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hlwq_kernels.convert", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or ROOT, env=os.environ | {"PYTHONPATH": str(ROOT)} | (env or {}),
                          timeout=600)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    src = save_tiny("qwen3", root / "src")
    dst = root / "int4"
    proc = cli(src, dst, "--method", "rtn", "--scale", "mse", "--ignore", "down_proj", "--max-shard-size", "400KB",
               "--quiet")
    assert proc.returncode == 0, proc.stderr
    return src, dst, proc


def test_convert_prints_summary_and_saves_report(converted):
    src, dst, proc = converted
    assert "| layer | shape | rel. error | SQNR dB | MB in | MB out |" in proc.stdout
    assert "model.layers.0.self_attn.q_proj" in proc.stdout
    assert f"report: {dst / 'hlwq_report.json'}" in proc.stdout
    report = json.loads((dst / "hlwq_report.json").read_text())
    assert report["method"] == "rtn" and report["scale"] == "mse" and report["shards"] >= 2
    assert report["kept"]["model.layers.1.mlp.down_proj"] == "ignored by user"
    assert "quantizing" not in proc.stderr  # --quiet: no progress bar


def test_verify_ok_and_detects_damage(converted, tmp_path):
    src, dst, _ = converted
    ok = cli("--verify", dst, "--against", src)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.rstrip().endswith("OK") and "| model.layers.0.mlp.gate_proj |" in ok.stdout
    # damage a kept tensor (a norm weight) and the ignore list of a copy
    bad = tmp_path / "bad"
    shutil.copytree(dst, bad)
    norm = scan_source(weight_files(bad))["model.norm.weight"]
    data = bytearray(norm.file.read_bytes())
    data[norm.start] ^= 0x40
    norm.file.write_bytes(bytes(data))
    config = json.loads((bad / "config.json").read_text())
    config["quantization_config"]["ignore"].remove("model.layers.0.mlp.down_proj")
    config["quantization_config"]["ignore"].remove("lm_head")  # tied: no tensor, still must be ignored
    (bad / "config.json").write_text(json.dumps(config))
    res = cli("--verify", bad, "--against", src)
    assert res.returncode == 1
    assert "PROBLEM: kept tensor 'model.norm.weight' differs from the source" in res.stdout
    assert "PROBLEM: model.layers.0.mlp.down_proj.weight is kept unquantized but not listed in ignore" in res.stdout
    assert "PROBLEM: lm_head is not quantized but not listed in ignore" in res.stdout


def test_demo_converts_minilm_and_reruns(tmp_path):
    start = time.perf_counter()
    proc = cli("--demo", tmp_path / "demo")
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert "quantizing" in proc.stderr  # the progress bar
    report = json.loads((tmp_path / "demo" / "hlwq_report.json").read_text())
    assert report["model_type"] == "bert" and len(report["layers"]) == 37  # 6 x (q,k,v,o,up,down) + pooler
    assert (report["method"], report["scheme"], report["scale"]) == ("rtn", "asym", "minmax")  # the defaults
    weights = json.loads((tmp_path / "demo" / "config.json").read_text())["quantization_config"]["config_groups"][
        "group_0"]["weights"]
    assert weights["symmetric"] is False and "asymmetric: scale and zero point, scale minmax" in proc.stdout
    assert all(l["sqnr_db"] > 14 for l in report["layers"])
    assert (tmp_path / "demo" / "tokenizer.json").is_file() and (tmp_path / "demo" / "1_Pooling" / "config.json").is_file()
    # the summary explains its metric and names what it kept and why
    assert "its square is the relative MSE" in proc.stdout
    assert "- embedding: embeddings.position_embeddings, embeddings.token_type_embeddings, " \
           "embeddings.word_embeddings (a lookup table" in proc.stdout
    assert elapsed < 60, elapsed  # README: measured time on 2 cores (bench, not asserted)
    again = cli("--demo", tmp_path / "demo", "--quiet")  # a rerun replaces the earlier demo output
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # no hidden leftovers
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    refused = cli("--demo", tmp_path / "mine", "--quiet")
    assert refused.returncode == 2 and "is not an earlier output of this converter" in refused.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_help_shows_defaults_and_version():
    help_text = " ".join(cli("--help").stdout.split())
    for option in ("--method {rtn,hlwq}", "(default: rtn)", "--scheme {asym,sym}", "(default: asym, but sym for models "
                   "with quantized MoE experts", "(default: minmax with asym, absmax with sym)", "(default: 128)",
                   "(default: 5GB)", "(default: auto)", "--overwrite", "--version", "vllm serve",
                   "by default asymmetric: a scale and an integer zero point per group"):
        assert option in help_text, option
    version = cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("python -m hlwq_kernels.convert (hlwq-kernels ")


def assert_one_line_error(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("where, message", [
    ("/proc/hlwq-out", "cannot write to /proc"),
    ("{tmp}/missing/out", "parent directory {tmp}/missing does not exist"),
    ("{tmp}/file/out", "parent {tmp}/file is not a directory"),
    ("{tmp}/file", "destination {tmp}/file exists and is not a directory"),
])
def test_unusable_destination_is_one_line(converted, tmp_path, where, message):
    src, _, _ = converted
    (tmp_path / "file").write_text("x")
    proc = cli(src, where.format(tmp=tmp_path), "--quiet")
    assert_one_line_error(proc, message.format(tmp=tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing left behind


def test_overwrite_replaces_only_an_earlier_output(converted, tmp_path):
    src, earlier, _ = converted
    dst = tmp_path / "out"
    shutil.copytree(earlier, dst)
    refused = cli(src, dst, "--quiet")
    assert_one_line_error(refused, "holds an earlier output of this converter: pass --overwrite")
    replaced = cli(src, dst, "--quiet", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert json.loads((dst / "hlwq_report.json").read_text())["scale"] == "minmax"  # the new run's options (default)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("unrelated")
    (other / "config.json").write_text("{}")
    refused = cli(src, other, "--quiet", "--overwrite")
    assert_one_line_error(refused, "is not an earlier output of this converter")
    assert (other / "keep.txt").read_text() == "unrelated"


def in_private_mount(tmp_path: Path, options: str, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the CLI with a fresh tmpfs mounted (``options``) on ``tmp_path/mnt`` in a private mount
    namespace (gone when the command ends): the CLI's result and what the tmpfs holds afterwards.
    Skips where mounting is not allowed (not root, no ``unshare``)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "mount", "-t", "tmpfs", "tmpfs", str(mnt)],
                           capture_output=True, text=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode:
        pytest.skip("needs unshare and mount (root) to make a read-only or full file system: "
                    + (probe.stderr.strip() if probe else "no unshare"))
    script = ('mount -t tmpfs -o "$1" tmpfs "$2" || exit 99; shift 2; "$@" 2>"$OUT_ERR"; rc=$?; '
              'ls -A "$MNT"; exit $rc')
    err = tmp_path / "stderr.txt"
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", options, str(mnt),
                           sys.executable, "-m", "hlwq_kernels.convert", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env=os.environ | {"PYTHONPATH": str(ROOT), "OUT_ERR": str(err), "MNT": str(mnt)})
    assert proc.returncode != 99, proc.stderr
    proc.stderr = err.read_text()
    return proc, proc.stdout.split()


def test_read_only_file_system_is_one_line(converted, tmp_path):
    src, _, _ = converted
    proc, left = in_private_mount(tmp_path, "ro,size=1m", src, tmp_path / "mnt" / "out", "--quiet")
    assert_one_line_error(proc, f"cannot write to {tmp_path / 'mnt'}: read-only file system")
    assert left == []


def test_full_file_system_is_refused_before_writing(converted, tmp_path):
    """A destination without room for the output (tensors, copied files, headers) is refused
    before anything is written: no hidden work directory is left on the full disk."""
    src, _, _ = converted
    proc, left = in_private_mount(tmp_path, "size=256k", src, tmp_path / "mnt" / "out", "--quiet")
    assert_one_line_error(proc, f"not enough space for {tmp_path / 'mnt' / 'out'}: the output needs")
    assert left == []


def test_hub_repo_id_offline(tmp_path):
    proc = cli("hlwq-test/not-a-model", tmp_path / "out", "--quiet", env={"HF_HUB_OFFLINE": "1"}, cwd=tmp_path)
    assert proc.returncode == 2
    assert "error: 'hlwq-test/not-a-model' is not a local directory and could not be downloaded" in proc.stderr
    assert "HF_HUB_OFFLINE is 1" in proc.stderr


@pytest.mark.parametrize("args, message", [
    ((), "SRC and DST are required"),
    (("--against", "x"), "--against needs --verify"),
    (("a", "b", "--method", "gptq"), "invalid choice"),
    (("/nonexistent/model", "out"), "source directory not found"),
])
def test_usage_errors(args, message):
    proc = cli(*args)
    assert proc.returncode == 2 and message in proc.stderr


@pytest.mark.parametrize("args, message", [
    (("--device", "garbage"), "device must be auto, cpu, cuda or cuda:N, got 'garbage'"),
    (("--devices", "cpu,garbage"), "device must be auto, cpu, cuda or cuda:N, got 'garbage'"),
    (("--ignore", "re:("), "ignore pattern 're:(' is not a valid regular expression"),
    (("--method", "hlwq", "--block-size", "0"), "block_size must be a power of two in [16, 256], got 0"),
])
def test_bad_option_values_are_one_line(converted, tmp_path, args, message):
    src, _, _ = converted
    proc = cli(src, tmp_path / "out", "--quiet", *args)
    assert_one_line_error(proc, message)
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing left behind
