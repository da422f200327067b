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

    python bench/gpu_hlwq.py --out bench/results/hlwq-h200.md [--sweep] [--quick]
"""

from __future__ import annotations

import datetime

import torch

from gpu_common import SHAPES, arg_parser, clone_gbps, emit_table, graph_seconds, poison_allocator, report, roofline_row
from hlwq_kernels import hlwq_int4, hlwq_quantize
from hlwq_kernels.ops.hlwq_triton import hlwq_fused
from hlwq_kernels.ops.int4 import dequantize_int4, unpack_int4
from hlwq_kernels.ops.lloyd_max import gaussian_codebook

B = 128
CHECK_ROWS = 1024


def _check(w: torch.Tensor) -> tuple[float, float]:
    """(relative error of the dequantized INT4 weights, fraction of differing INT4 codes) vs the torch path."""
    poison_allocator(w.numel() * 4)
    fused = hlwq_int4(w)
    ref = hlwq_int4(w, backend="torch")
    a, b = dequantize_int4(fused, torch.float64), dequantize_int4(ref, torch.float64)
    k = w.shape[1]
    codes_differ = (unpack_int4(fused.packed, k) != unpack_int4(ref.packed, k)).double().mean().item()
    return float((a - b).norm() / b.norm()), codes_differ


def roofline_rows(quick: bool = False) -> list[dict]:
    """Fused hlwq_int4 and hlwq_quantize rows for each shape (``quick``: the first two shapes)."""
    rows = []
    for n, k in SHAPES[:2] if quick else SHAPES:
        w = (torch.randn(n, k, device="cuda") * 0.02).to(torch.bfloat16)
        numel = n * k
        clone = clone_gbps(w)
        err, differ = _check(w[:CHECK_ROWS])
        t = graph_seconds(lambda: hlwq_int4(w, check_finite=False))
        rows.append(roofline_row("hlwq -> int4 (fused)", (n, k), "bf16", (2 * numel + numel // 2 + 2 * numel // B) / t / 1e9,
                                 clone, err, f"{differ:.1e} of INT4 codes differ from float64"))
        t = graph_seconds(lambda: hlwq_quantize(w, check_finite=False))
        rows.append(roofline_row("hlwq codes + norms (fused)", (n, k), "bf16", (3 * numel + 4 * numel // B) / t / 1e9,
                                 clone, None, "Lloyd–Max codes (uint8) and fp32 block norms"))
        del w
        torch.cuda.empty_cache()
    return rows


def host_calls() -> dict:
    w = (torch.randn(256, 1024, device="cuda") * 0.02).to(torch.bfloat16)
    return {
        "hlwq_int4 (check_finite=False)": lambda: hlwq_int4(w, check_finite=False),
        "hlwq_int4 (default: reads the NaN flag back)": lambda: hlwq_int4(w),
    }


def sweep(n: int = 14336, k: int = 4096) -> list[str]:
    """Tile heights and warp counts of the fused INT4 kernel (GB/s)."""
    w = (torch.randn(n, k, device="cuda") * 0.02).to(torch.bfloat16)
    cb = gaussian_codebook(32)
    nbytes = 2 * n * k + n * k // 2 + 2 * n * k // B
    out = []
    for rows, warps in [(16, 4), (16, 8), (32, 8), (64, 4)]:
        try:
            t = graph_seconds(lambda: hlwq_fused(w, cb, B, int4_group=B, rows=rows, num_warps=warps,
                                                 check_finite=False))
            out.append(f"  rows={rows} warps={warps}: {nbytes / t / 1e9:.0f} GB/s")
        except Exception as exc:  # report a configuration that fails to compile
            out.append(f"  rows={rows} warps={warps}: failed: {repr(exc)[:120]}")
        print(out[-1], flush=True)
    return out


def main() -> None:
    parser = arg_parser(__doc__, "try several tile heights and warp counts")
    args = parser.parse_args()
    title = (f"# HLWQ → INT4 on {torch.cuda.get_device_name()} ({datetime.date.today()}), bf16 weights, "
             "b = g = 128, 5 bits; GB/s = (read + write) / median CUDA-graph replay time")
    emit_table(report(title, roofline_rows(args.quick), host_calls(), sweep() if args.sweep else None), args.out)


if __name__ == "__main__":
    main()
