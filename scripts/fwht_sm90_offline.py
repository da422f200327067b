"""Compile an FWHT launch for sm_90 on a machine without a GPU, and print what it takes.

    python scripts/fwht_sm90_offline.py 27648 float32 --signs
    python scripts/fwht_sm90_offline.py 13824 float32 --config "Pow2Config(4, 64, 1, 2, wide_store=True, bulk=1, phases=4)"

The launch is the one ``fwht()`` takes on an H200: the table's entry, or ``--config``, with the bulk copies on and
the plan's register cap. A launch of the dense kernel (``DenseConfig``, ``SplitConfig``, ``PaleyConfig`` of one) gets
the tensor-core operands of a CUDA tensor (16-bit rows as they are and H_K in their dtype; fp32 rows in three bf16
pieces unless the launch asks for fp16 or tf32 pieces), not the interpreter's fp32 ones. A stand-in driver reports an
sm_90 target, and nothing runs. The script prints, for one program:

- registers and stack bytes a thread (spills) and shared memory (Triton's, plus the row buffers);
- how many programs an SM holds at once (65,536 registers, 233,472 bytes of shared memory, 2048 threads, 32
  programs), against the persistent grid's ``programs_per_sm``;
- the SASS instruction mix and a hash of the SASS, to check whether two trees compile a launch to the same code;
- the tensor-core instructions (dense kernel: their operand types).

Triton's codegen differs between versions. To match the GPU image (Triton 3.6), put Triton 3.6 first on the path:

    pip download triton==3.6.0 --no-deps -d /tmp/wheels
    pip install --no-deps --target /tmp/t36 /tmp/wheels/triton-3.6.0-*.whl
    PYTHONPATH=/tmp/t36:$PWD python scripts/fwht_sm90_offline.py ...

``--audit bfloat16,float32`` compiles every table launch of the benchmarks' sizes (``bench/gpu_fwht.py``: powers of two
and LLM sizes, with and without ``signs=``) and prints one table row each, marking the launches that spill or whose
persistent grid plans more programs an SM than fit (the rest of its programs then run as a second wave).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import re
import subprocess
import sys
import tempfile
from typing import NamedTuple

import torch
import triton
from triton.backends.compiler import GPUTarget

from hlwq_kernels.ops import fwht_triton
from hlwq_kernels.ops.fwht_plan import DenseConfig, KernelPlan, PaleyConfig, Pow2Config, SplitConfig, kernel_plan

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
from gpu_fwht import LLM, POW2  # noqa: E402 (the benchmarks' sizes)

_SM90_REGISTERS = 65536  # a thread's registers times the SM's threads
_SM90_SHARED_PROGRAM = 232448  # bytes of shared memory one program may take (227 KiB)
_SM90_SHARED_SM = 233472  # bytes of shared memory an SM has for its programs (228 KiB), 1 KiB of them reserved each
_SM90_PROGRAMS = 32  # resident programs (thread blocks) an SM
_DTYPES = ("float32", "bfloat16", "float16")


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


def _captured_launch(n: int, dtype: torch.dtype, signs: bool, config, plan: KernelPlan) -> tuple:
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
    if kernel is fwht_triton._fwht_dense_kernel:  # the operands of a CUDA tensor, not the interpreter's
        kwargs["PIECES"], h_dtype = fwht_triton.dense_operands(dtype, plan, cuda=True)
        args = args[:3] + (args[3].to(h_dtype),) + args[4:]
    else:
        kwargs["PTX"] = True  # as for a CUDA tensor
    return kernel, args, kwargs, extra_shared


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


class Report(NamedTuple):
    """What one program of a launch takes on sm_90."""
    launch: str
    num_warps: int
    programs_per_sm: int  # the plan's persistent programs an SM (0: one program a tile)
    registers: int
    stack: int  # bytes a thread: spills
    shared: int  # bytes a program, Triton's and the row buffers
    triton_shared: int
    extra_shared: int
    sass: list[str]

    def resident(self) -> int:
        """Programs of this launch that an SM holds at once (registers allocated 8 a thread at a time, shared memory
        with 1 KiB reserved a program, at most 2048 threads and 32 programs)."""
        threads = 32 * self.num_warps
        by_regs = _SM90_REGISTERS // (-(-self.registers // 8) * 8 * threads)
        by_shared = _SM90_SHARED_SM // (self.shared + 1024) if self.shared <= _SM90_SHARED_PROGRAM else 0
        return min(by_regs, by_shared, 2048 // threads, _SM90_PROGRAMS)


def compile_launch(n: int, dtype: torch.dtype, signs: bool, config=None) -> Report:
    """Compile the launch ``fwht()`` takes for rows of ``n`` (or ``config``) for sm_90 and report what it takes."""
    plan = kernel_plan(n, torch.empty(0, dtype=dtype).element_size(), config, signs, dtype == torch.float16)
    kernel, launch_args, kwargs, extra_shared = _captured_launch(n, dtype, signs, config, plan)
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
    lines = [line for line in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4,}\*/", line)]
    return Report(str(config) if config else f"table launch ({plan.kernel} kernel)", plan.num_warps,
                  plan.programs_per_sm, regs, stack, shared, compiled.metadata.shared, extra_shared, lines)


def _print_report(n: int, dtype_name: str, signs: bool, report: Report) -> None:
    programs = max(report.programs_per_sm, 1)
    print(f"triton {triton.__version__}, sm_90: {n} {dtype_name}{' signs' if signs else ''}, {report.launch}")
    print(f"registers {report.registers}, stack {report.stack} bytes a thread, shared {report.shared} bytes a program "
          f"(Triton {report.triton_shared}, row buffers {report.extra_shared})")
    print(f"{programs} program(s) of {32 * report.num_warps} threads an SM: {report.resident()} fit")
    mix = collections.Counter()
    for line in report.sass:
        op = re.search(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)", line)
        if op:
            mix[op.group(1).split(".")[0]] += 1
    body = "\n".join(re.sub(r"/\*[0-9a-f]{4,}\*/|/\* 0x[0-9a-f]+ \*/", "", line).strip() for line in report.sass)
    print(f"{len(report.sass)} SASS instructions, sha256 {hashlib.sha256(body.encode()).hexdigest()[:16]}; most used:",
          ", ".join(f"{op} {count}" for op, count in mix.most_common(12)))
    mma = collections.Counter(m.group(1) for m in (re.search(r"\b(H[G]?MMA\S*)", line) for line in report.sass) if m)
    print(f"tensor-core instructions {sum(mma.values())}" + (": " + ", ".join(sorted(mma)) if mma else ""))


def _audit(dtype_names: list[str]) -> None:
    """One table row for every table launch of the benchmarks' sizes, with and without signs, then how many launches
    spill or hold fewer programs an SM than their persistent grid plans."""
    print(f"triton {triton.__version__}, sm_90: the table's launches\n")
    print("| n | dtype | signs | launch | warps | planned programs an SM | fit | registers | stack | shared |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    flagged = 0
    for dtype_name in dtype_names:
        for n in POW2 + LLM:
            for signs in (False, True):
                report = compile_launch(n, getattr(torch, dtype_name), signs)
                resident = report.resident()
                short = resident < max(report.programs_per_sm, 1)
                flagged += short or report.stack > 0
                fit = f"**{resident}**" if short else str(resident)
                stack = f"**{report.stack}**" if report.stack else "0"
                print(f"| {n} | {dtype_name} | {'yes' if signs else ''} | `{report.launch}` | {report.num_warps} | "
                      f"{report.programs_per_sm} | {fit} | {report.registers} | {stack} | {report.shared} |", flush=True)
    print(f"\n{flagged} launch(es) spill or hold fewer programs an SM than planned (bold)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", type=int, nargs="?", help="row length")
    parser.add_argument("dtype", nargs="?", choices=_DTYPES)
    parser.add_argument("--signs", action="store_true", help="the signs= launch (one sign vector)")
    parser.add_argument("--config", default=None,
                        help="a launch instead of the table's: Pow2Config(...), DenseConfig(...), PaleyConfig(...)")
    parser.add_argument("--audit", default=None, metavar="DTYPES",
                        help="instead of one launch: every table launch of the benchmarks' sizes in these "
                             "comma-separated dtypes, one table row each")
    args = parser.parse_args()
    triton.runtime.driver.set_active(_Sm90Driver())
    if args.audit:
        dtypes = args.audit.split(",")
        if not set(dtypes) <= set(_DTYPES):
            parser.error(f"--audit takes dtypes among {', '.join(_DTYPES)}, got {args.audit}")
        _audit(dtypes)
        return
    if args.n is None or args.dtype is None:
        parser.error("give n and dtype, or --audit DTYPES")
    names = {"Pow2Config": Pow2Config, "DenseConfig": DenseConfig, "PaleyConfig": PaleyConfig,
             "SplitConfig": SplitConfig}
    config = eval(args.config, {"__builtins__": {}}, names) if args.config else None  # noqa: S307 (a launch literal)
    _print_report(args.n, args.dtype, args.signs, compile_launch(args.n, getattr(torch, args.dtype), args.signs, config))


if __name__ == "__main__":
    main()
