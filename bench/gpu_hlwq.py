"""GPU benchmark of the fused HLWQ → INT4 kernel (run on a CUDA machine).

For bf16 weights (random normal × 0.02) of the LLM shapes below, b = g = 128, 5 bits: the fused
``hlwq_int4`` (one kernel: reads W once, writes packed INT4 + scales) and the fused codes kernel
(``hlwq_quantize``: codes + norms), each through the public API with ``check_finite=False`` captured
in a CUDA graph and timed by its replays (no host work timed), against ``torch.clone`` of W in the
same process. GB/s = (bytes read + bytes written) / time. The outputs are compared first with the
float64 torch path on the first 1024 rows: ``rel. err`` is ``‖kernel − torch path‖ / ‖torch path‖``
of the dequantized INT4 weights, the note gives the fraction of INT4 codes that differ (the kernel
computes in fp32: a value within float32 rounding of a threshold can land on the other side).
The host time per public call (default ``check_finite=True``, which reads a flag back, and
``False``) is measured on a small weight.

``--sweep`` times every launch configuration of ``SWEEP`` on the first two shapes (both kernels),
with the registers and spills ptxas gave each (compiled first in ``--jobs`` processes).
``--profile`` only runs the two kernels once on the first shape with the default launch (for
``ncu --clock-control none -k regex:_hlwq_kernel -c 2 python bench/gpu_hlwq.py --profile``).

    python bench/gpu_hlwq.py --out bench/results/hlwq-h200.md [--sweep] [--quick] [--jobs 8]
"""

from __future__ import annotations

import datetime

import torch

from gpu_common import (
    SHAPES, arg_parser, clone_gbps, emit_table, graph_seconds, planned_each_call, poison_allocator, report,
    roofline_row, run_parallel,
)
from hlwq_kernels import hlwq_int4, hlwq_quantize
from hlwq_kernels.ops import hlwq_triton
from hlwq_kernels.ops._triton import compiled_kernels
from hlwq_kernels.ops.hlwq_triton import HLWQLaunch, _hlwq_kernel, hlwq_fused
from hlwq_kernels.ops.int4 import dequantize_int4, unpack_int4
from hlwq_kernels.ops.lloyd_max import gaussian_codebook

B = 128
CHECK_ROWS = 1024
SWEEP = [HLWQLaunch(1, 0, None, 1), HLWQLaunch(2, 0, None, 1), HLWQLaunch(1, 0, 168, 1),
         *(HLWQLaunch(w, 0, r, 2) for w in (1, 2, 4) for r in (None, 128, 96)), HLWQLaunch(1, 12, None, 2),
         HLWQLaunch(2, 6, None, 2)]


def _check(w: torch.Tensor) -> tuple[float, float]:
    """(relative error of the dequantized INT4 weights, fraction of differing INT4 codes) vs the torch path."""
    poison_allocator(w.numel() * 4)
    fused = hlwq_int4(w)
    ref = hlwq_int4(w, backend="torch")
    a, b = dequantize_int4(fused, torch.float64), dequantize_int4(ref, torch.float64)
    k = w.shape[1]
    codes_differ = (unpack_int4(fused.packed, k) != unpack_int4(ref.packed, k)).double().mean().item()
    return float((a - b).norm() / b.norm()), codes_differ


def _int4_bytes(n: int, k: int) -> int:
    return 2 * n * k + n * k // 2 + 2 * n * k // B


def _codes_bytes(n: int, k: int) -> int:
    return 3 * n * k + 4 * n * k // B


def roofline_rows(quick: bool = False) -> list[dict]:
    """Fused hlwq_int4 and hlwq_quantize rows for each shape (``quick``: the first two shapes)."""
    rows = []
    for n, k in SHAPES[:2] if quick else SHAPES:
        w = (torch.randn(n, k, device="cuda") * 0.02).to(torch.bfloat16)
        clone = clone_gbps(w)
        err, differ = _check(w[:CHECK_ROWS])
        t = graph_seconds(lambda: hlwq_int4(w, check_finite=False))
        rows.append(roofline_row("hlwq -> int4 (fused)", (n, k), "bf16", _int4_bytes(n, k) / t / 1e9,
                                 clone, err, f"{differ:.1e} of INT4 codes differ from float64"))
        t = graph_seconds(lambda: hlwq_quantize(w, check_finite=False))
        rows.append(roofline_row("hlwq codes + norms (fused)", (n, k), "bf16", _codes_bytes(n, k) / t / 1e9,
                                 clone, None, "Lloyd–Max codes (uint8) and fp32 block norms"))
        del w
        torch.cuda.empty_cache()
    return rows


def host_calls() -> dict:
    w = (torch.randn(256, 1024, device="cuda") * 0.02).to(torch.bfloat16)
    return {
        "hlwq_int4 (check_finite=False)": lambda: hlwq_int4(w, check_finite=False),
        "hlwq_int4 (check_finite=False), planned each call": planned_each_call(
            lambda: hlwq_int4(w, check_finite=False), hlwq_triton),
        "hlwq_int4 (default: reads the NaN flag back)": lambda: hlwq_int4(w),
    }


def _launch(w: torch.Tensor, int4: bool, config: HLWQLaunch):
    cb = gaussian_codebook(32)
    if int4:
        return lambda: hlwq_fused(w, cb, B, int4_group=B, check_finite=False, config=config)
    return lambda: hlwq_fused(w, cb, B, codes=True, check_finite=False, config=config)


def _compile_task(task: tuple[bool, HLWQLaunch]) -> None:
    """Run one kernel and launch configuration once on a small weight (fills Triton's disk cache)."""
    int4, config = task
    _launch((torch.randn(512, 4096, device="cuda") * 0.02).to(torch.bfloat16), int4, config)()
    torch.cuda.synchronize()


def _resources(before: set) -> str:
    """Registers and spills of the HLWQ kernels compiled since ``before`` (their ids)."""
    new = [c for c in compiled_kernels(_hlwq_kernel) if id(c) not in before]
    return ", ".join(f"{c.n_regs} regs {c.n_spills} spills {c.metadata.shared} B smem" for c in new) or "cached"


def sweep(jobs: int) -> list[str]:
    """GB/s and % clone of each launch configuration of ``SWEEP``, both kernels, first two shapes."""
    run_parallel(_compile_task, [(int4, cfg) for cfg in SWEEP for int4 in (True, False)], jobs)
    out = ["| config | shape | int4 GB/s | int4 % clone | codes GB/s | codes % clone | int4 kernel | codes kernel |",
           "|---|---|---|---|---|---|---|---|"]
    for n, k in SHAPES[:2]:
        w = (torch.randn(n, k, device="cuda") * 0.02).to(torch.bfloat16)
        clone = clone_gbps(w)
        for cfg in SWEEP:
            cells = []
            for int4, nbytes in ((True, _int4_bytes(n, k)), (False, _codes_bytes(n, k))):
                before = {id(c) for c in compiled_kernels(_hlwq_kernel)}
                try:
                    t = graph_seconds(_launch(w, int4, cfg))
                    gbps = nbytes / t / 1e9
                    cells.append((f"{gbps:.0f}", f"{100 * gbps / clone:.1f}", _resources(before)))
                except Exception as exc:  # report a configuration that fails to compile or run
                    cells.append(("failed", repr(exc)[:80], ""))
            out.append(f"| {tuple(cfg)} | {n}x{k} | {cells[0][0]} | {cells[0][1]} | {cells[1][0]} | {cells[1][1]} | "
                       f"{cells[0][2]} | {cells[1][2]} |")
            print(out[-1], flush=True)
        del w
        torch.cuda.empty_cache()
    return out


def profile() -> None:
    """One launch of each kernel on the first shape, default launch parameters (for ncu)."""
    n, k = SHAPES[0]
    w = (torch.randn(n, k, device="cuda") * 0.02).to(torch.bfloat16)
    hlwq_int4(w, check_finite=False)
    hlwq_quantize(w, check_finite=False)
    torch.cuda.synchronize()


def main() -> None:
    parser = arg_parser(__doc__, "time the launch configurations of SWEEP")
    parser.add_argument("--jobs", type=int, default=1, help="processes that compile the sweep's kernels first")
    parser.add_argument("--profile", action="store_true", help="only run each kernel once (for ncu)")
    args = parser.parse_args()
    if args.profile:
        profile()
        return
    title = (f"# HLWQ → INT4 on {torch.cuda.get_device_name()} ({datetime.date.today()}), bf16 weights, "
             "b = g = 128, 5 bits; GB/s = (read + write) / median CUDA-graph replay time")
    sweep_lines = sweep(args.jobs) if args.sweep else None
    emit_table(report(title, roofline_rows(args.quick), host_calls(), sweep_lines), args.out)


if __name__ == "__main__":
    main()
