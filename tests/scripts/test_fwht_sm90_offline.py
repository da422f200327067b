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
    assert re.search(r"2 program\(s\) of 64 threads an SM: .*: (fit|do not fit)", run.stdout)
    assert re.search(r"\d+ SASS instructions, sha256 [0-9a-f]{16}; most used: FADD \d+", run.stdout)


def test_offline_compile_refuses_dense_launches() -> None:
    """The dense kernel's operands depend on the device (a CPU tensor would compile another kernel): refused in one
    line, before anything is compiled."""
    run = subprocess.run([sys.executable, str(SCRIPT), "18944", "bfloat16"], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert run.returncode == 2
    assert "18944 bfloat16: a launch of the dense kernel" in run.stderr and "Traceback" not in run.stderr
