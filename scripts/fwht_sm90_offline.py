"""Compile an FWHT launch for sm_90 on a machine without a GPU, and print what it takes.

    python scripts/fwht_sm90_offline.py 27648 float32 --signs
    python scripts/fwht_sm90_offline.py 13824 float32 --config "Pow2Config(4, 64, 1, 2, wide_store=True, bulk=1, phases=4)"

The launch is the one ``fwht()`` takes on an H200: the table's entry, or ``--config``, with the bulk copies on and
the plan's register cap. It must be a launch of the power-of-two kernel (``Pow2Config``, also through
``PaleyConfig``): the dense kernel's operands are chosen by device, and on a CPU tensor they would not be the CUDA
launch's. A stand-in driver reports an sm_90 target, and nothing runs. The script prints, for one program:

- registers and stack bytes a thread (spills) and shared memory (Triton's, plus the row buffers);
- whether ``programs_per_sm`` programs fit an SM (65,536 registers and 232,448 bytes of shared memory);
- the SASS instruction mix and a hash of the SASS, to check whether two trees compile a launch to the same code.

Triton's codegen differs between versions. To match the GPU image (Triton 3.6), put Triton 3.6 first on the path:

    pip download triton==3.6.0 --no-deps -d /tmp/wheels
    pip install --no-deps --target /tmp/t36 /tmp/wheels/triton-3.6.0-*.whl
    PYTHONPATH=/tmp/t36:$PWD python scripts/fwht_sm90_offline.py ...
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import re
import subprocess
import tempfile

import torch
import triton
from triton.backends.compiler import GPUTarget

from hlwq_kernels.ops import fwht_triton
from hlwq_kernels.ops.fwht_plan import DenseConfig, PaleyConfig, Pow2Config, SplitConfig, kernel_plan

_SM90_REGISTERS = 65536  # a thread's registers times the SM's threads
_SM90_SHARED_PROGRAM = 232448  # bytes of shared memory one program may take (227 KiB)
_SM90_SHARED_SM = 233472  # bytes of shared memory an SM has for its programs (228 KiB), 1 KiB of them reserved each


class _Sm90Driver:
    """Enough of Triton's CUDA driver for ``warmup`` to compile for sm_90 without a device."""

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


def _captured_launch(n: int, dtype: torch.dtype, signs: bool, config) -> tuple:
    """The kernel, arguments and constexprs of the launch ``fwht_rows_triton`` makes on a GPU with bulk copies."""
    captured = []

    def capture(kernel, grid, device, *args, extra_shared=0, **kwargs):
        captured.append((kernel, args, kwargs, extra_shared))

    x = torch.randn(8, n).to(dtype)
    bits = torch.zeros(n, dtype=torch.int32 if dtype == torch.float32 else torch.int16) if signs else None
    saved = fwht_triton.launch, fwht_triton._sm90_bulk
    fwht_triton.launch, fwht_triton._sm90_bulk = capture, lambda device: True
    try:
        fwht_triton.fwht_rows_triton(x, n, False, 1.0, bits, config)
    finally:
        fwht_triton.launch, fwht_triton._sm90_bulk = saved
    kernel, args, kwargs, extra_shared = captured[-1]
    kwargs["PTX"] = True  # as for a CUDA tensor
    return kernel, args, kwargs, extra_shared


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, help="row length")
    parser.add_argument("dtype", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--signs", action="store_true", help="the signs= launch (one sign vector)")
    parser.add_argument("--config", default=None,
                        help="a launch instead of the table's: Pow2Config(...), DenseConfig(...), PaleyConfig(...)")
    args = parser.parse_args()
    names = {"Pow2Config": Pow2Config, "DenseConfig": DenseConfig, "PaleyConfig": PaleyConfig,
             "SplitConfig": SplitConfig}
    config = eval(args.config, {"__builtins__": {}}, names) if args.config else None  # noqa: S307 (a launch literal)
    dtype = getattr(torch, args.dtype)
    plan = kernel_plan(args.n, torch.empty(0, dtype=dtype).element_size(), config, args.signs, dtype == torch.float16)
    if plan.kernel != "pow2":
        parser.exit(2, f"{args.n} {args.dtype}: a launch of the dense kernel; this script compiles the power-of-two "
                       f"kernel's launches only (see its docstring)\n")
    triton.runtime.driver.set_active(_Sm90Driver())
    kernel, launch_args, kwargs, extra_shared = _captured_launch(args.n, dtype, args.signs, config)
    if plan.max_regs:  # the register cap the launch takes on CUDA
        kwargs["maxnreg"] = plan.max_regs
    compiled = kernel.warmup(*launch_args, grid=(1,), **kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "kernel.cubin")
        with open(cubin, "wb") as f:
            f.write(compiled.asm["cubin"])
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", cubin], capture_output=True, text=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", cubin], capture_output=True, text=True).stdout
    regs, stack = (int(v) for v in re.search(r"REG:(\d+) STACK:(\d+)", usage).groups())
    shared = -(-compiled.metadata.shared // 128) * 128 + extra_shared
    programs = max(plan.programs_per_sm, 1)
    threads = 32 * plan.num_warps
    print(f"triton {triton.__version__}, sm_90: {args.n} {args.dtype}{' signs' if args.signs else ''}, "
          f"{config or 'table launch'}")
    print(f"registers {regs}, stack {stack} bytes a thread, shared {shared} bytes a program "
          f"(Triton {compiled.metadata.shared}, row buffers {extra_shared})")
    per_sm = programs * (shared + 1024)
    fits = regs * threads * programs <= _SM90_REGISTERS and shared <= _SM90_SHARED_PROGRAM and per_sm <= _SM90_SHARED_SM
    print(f"{programs} program(s) of {threads} threads an SM: registers {regs * threads * programs} of "
          f"{_SM90_REGISTERS}, shared {per_sm} of {_SM90_SHARED_SM}: {'fit' if fits else 'do not fit'}")
    lines = [line for line in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4,}\*/", line)]
    mix = collections.Counter()
    for line in lines:
        op = re.search(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if op:
            mix[op.group(1).split(".")[0]] += 1
    body = "\n".join(re.sub(r"/\*[0-9a-f]{4,}\*/|/\* 0x[0-9a-f]+ \*/", "", line).strip() for line in lines)
    print(f"{len(lines)} SASS instructions, sha256 {hashlib.sha256(body.encode()).hexdigest()[:16]}; most used:",
          ", ".join(f"{op} {count}" for op, count in mix.most_common(12)))


if __name__ == "__main__":
    main()
