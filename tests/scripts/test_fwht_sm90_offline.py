"""scripts/fwht_sm90_offline.py compiles a launch for sm_90 on a machine without a GPU."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fwht_sm90_offline.py"


@pytest.mark.skipif(not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                                                    "cuobjdump")), reason="this Triton has no CUDA tools")
def test_offline_compile_reports_the_launch() -> None:
    """A held-signs launch in registers with phases: the report names its registers, stack, shared memory (Triton's
    and none for row buffers: this launch has none) and its SASS."""
    config = "Pow2Config(2, 64, 1, 2, hold_signs=True, phases=2)"
    run = subprocess.run([sys.executable, str(SCRIPT), "3584", "float32", "--signs", "--config", config],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "sm_90: 3584 float32 signs" in run.stdout
    regs, stack = (int(v) for v in re.search(r"registers (\d+), stack (\d+) bytes", run.stdout).groups())
    assert 0 < regs <= 255 and stack >= 0
    assert re.search(r"row buffers 0\)", run.stdout)
    assert re.search(r"2 program\(s\) of 64 threads an SM: \d+ fit", run.stdout)
    assert re.search(r"\d+ SASS instructions, sha256 [0-9a-f]{16}; most used: FADD \d+", run.stdout)


@pytest.mark.skipif(not os.path.exists(os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                                                    "cuobjdump")), reason="this Triton has no CUDA tools")
def test_offline_compile_gives_dense_launches_the_cuda_operands() -> None:
    """fp32 11008's table launch (the dense kernel) compiles with the three bf16 pieces of a CUDA tensor on the
    tensor cores, not with the interpreter's fp32 (tf32) product."""
    run = subprocess.run([sys.executable, str(SCRIPT), "11008", "float32"], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "sm_90: 11008 float32, table launch (dense kernel)" in run.stdout
    kinds = re.search(r"tensor-core instructions (\d+): (.*)", run.stdout)
    assert kinds and int(kinds.group(1)) > 0
    assert all(kind.endswith(".F32.BF16") for kind in kinds.group(2).split(", ")), kinds.group(2)


def test_programs_an_sm_holds() -> None:
    """Registers are allocated 8 a thread at a time; shared memory with 1 KiB reserved a program; at most 2048
    threads and 32 programs an SM."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        offline = __import__("fwht_sm90_offline")
    finally:
        sys.path.remove(str(SCRIPT.parent))

    def report(warps: int, registers: int, shared: int):
        return offline.Report("launch", warps, 3, registers, 0, shared, shared, 0, [])

    assert report(4, 168, 45568).resident() == 3  # 168 * 128 * 3 = 64512 registers
    assert report(4, 169, 45568).resident() == 2  # allocated as 176
    assert report(4, 219, 45568).resident() == 2
    assert report(1, 32, 116 * 1024).resident() == 1  # 2 * (116 + 1) KiB > 228 KiB
    assert report(1, 32, 227 * 1024 + 128).resident() == 0  # above a program's 227 KiB
    assert report(16, 16, 0).resident() == 4  # 2048 threads
    assert report(1, 32, 2048).resident() == 32  # 32 programs


@pytest.mark.parametrize("args, message", [(["--audit", "bf16"], "--audit takes dtypes among float32, bfloat16, float16"),
                                           ([], "give n and dtype, or --audit DTYPES")])
def test_bad_arguments_get_one_line(args: list[str], message: str) -> None:
    run = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr
