"""GPU roofline benchmark of the Lloyd–Max kernels (run on a CUDA machine).

Quantize (bf16 in, uint8 out) of weights of the LLM shapes below with the Gaussian codebooks of 16,
32 and 256 levels: GB/s = (bytes read + written) / time, against ``torch.clone`` of the same input
in the same process. The public ``Codebook.quantize`` is captured in a CUDA graph and timed by its
replays (its lookup table is built on the first call and kept), checked first against the torch
path (indices equal). ``--sweep`` also times the lookup kernel's block sizes and the grid kernel the
fp32 path uses; the host time per public call is measured on a small input.

``--solver`` adds the 2**28-sample tables of the solver's own steps: one empirical Lloyd step over
float32 samples (bytes = samples read) and the sorted-prefix scheme the empirical solver iterates
with (setup: ``torch.sort`` + float64 prefix sums; one step: ``searchsorted`` + prefix differences,
including the copy of the per-cell results to the host), both checked against float64 torch.

    python bench/gpu_lloyd.py --out bench/results/lloyd-h200.md [--sweep] [--quick] [--solver]
"""

from __future__ import annotations

import datetime
import time

import numpy as np
import torch

from gpu_common import (
    SHAPES, arg_parser, bench_seconds, clone_gbps, emit_table, graph_seconds, planned_each_call, report, roofline_row,
)
from hlwq_kernels.ops import lloyd_max_triton
from hlwq_kernels.ops.lloyd_max import _lloyd_step, _sort_samples, _sorted_step, gaussian_codebook, lloyd_max
from hlwq_kernels.ops.lloyd_max_triton import assign_table, lloyd_step_triton, quantize_lookup, quantize_triton

LEVELS = [16, 32, 256]
TOTAL = 1 << 28


def _torch_step(x: torch.Tensor, thr: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.bucketize(x, thr, right=True)
    cnt = torch.zeros(n, device=x.device).scatter_add_(0, idx, torch.ones_like(x))
    return cnt, torch.zeros(n, device=x.device).scatter_add_(0, idx, x)


def _row(op: str, n: int, nbytes: int, clone_gbs: float, t_kernel: float, t_torch: float, ok: bool) -> dict:
    return {"op": op, "levels": n, "clone": clone_gbs, "kernel": nbytes / t_kernel / 1e9,
            "torch": nbytes / t_torch / 1e9, "check": "ok" if ok else "MISMATCH"}


def _step_rows(levels: list[int]) -> list[dict]:
    x = torch.randn(TOTAL, device="cuda", dtype=torch.float32)
    clone = 2 * x.numel() * 4 / bench_seconds(lambda: x.clone()) / 1e9
    rows = []
    for n in levels:
        lev = gaussian_codebook(n).levels
        table = assign_table(gaussian_codebook(n).thresholds, torch.float32, x.device)
        wsum, ssum, _ = lloyd_step_triton(x, None, table, lev)
        ref_w, ref_s, _ = _lloyd_step(x[: 1 << 26], None, lev, triton=False)
        sub_w, sub_s, _ = lloyd_step_triton(x[: 1 << 26], None, table, lev)
        ok = np.array_equal(sub_w, ref_w) and np.allclose(sub_s, ref_s, rtol=1e-5, atol=1e-5 * np.abs(ref_s).max())
        ok = ok and wsum.sum() == TOTAL
        thr = torch.tensor(gaussian_codebook(n).thresholds, dtype=torch.float32, device="cuda")
        t_k = bench_seconds(lambda: lloyd_step_triton(x, None, table, lev))
        t_t = bench_seconds(lambda: _torch_step(x, thr, n))
        rows.append(_row("lloyd step (fp32)", n, x.numel() * 4, clone, t_k, t_t, ok))
    del x
    torch.cuda.empty_cache()
    return rows


def _sorted_rows(levels: list[int]) -> list[dict]:
    x = torch.randn(TOTAL, device="cuda", dtype=torch.float32)
    nbytes = x.numel() * 4
    clone = 2 * nbytes / bench_seconds(lambda: x.clone()) / 1e9
    t_setup = bench_seconds(lambda: _sort_samples(x, None))
    s = _sort_samples(x, None)
    rows = []
    for n in levels:
        lev = gaussian_codebook(n).levels
        got_w, got_s = _sorted_step(s, lev)
        ref_w, ref_s, _ = _lloyd_step(x, None, lev, triton=False)  # float64 bucketize + scatter_add_
        ok = np.array_equal(got_w, ref_w) and np.allclose(got_s, ref_s, rtol=1e-9, atol=1e-9 * np.abs(ref_s).max())
        t_step = bench_seconds(lambda: _sorted_step(s, lev))
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        cb = lloyd_max(levels=n, samples=x)
        solve = time.perf_counter() - t0
        steps = max(cb.iterations, 1)
        amortised = (t_setup + steps * t_step) / steps
        rows.append({"levels": n, "clone": clone, "setup": t_setup, "step": t_step, "step_gbs": nbytes / t_step / 1e9,
                     "steps": cb.iterations, "amortised": amortised, "amortised_gbs": nbytes / amortised / 1e9,
                     "solve": solve, "check": "ok" if ok else "MISMATCH"})
    del x, s
    torch.cuda.empty_cache()
    return rows


def roofline_rows(quick: bool = False) -> list[dict]:
    """Codebook quantize (bf16 -> uint8) rows for each shape and level count (``quick``: two shapes)."""
    rows = []
    for n, k in SHAPES[:2] if quick else SHAPES:
        x = torch.randn(n, k, device="cuda").to(torch.bfloat16)
        clone = clone_gbps(x)
        for levels in LEVELS:
            cb = gaussian_codebook(levels)
            exact = torch.equal(cb.quantize(x[:1024]), cb.quantize(x[:1024], backend="torch"))
            t = graph_seconds(lambda: cb.quantize(x))
            rows.append(roofline_row(f"lloyd quantize ({levels} levels)", (n, k), "bf16", 3 * x.numel() / t / 1e9,
                                     clone, 0.0 if exact else float("nan"), "bit-exact" if exact else "MISMATCH"))
        del x
        torch.cuda.empty_cache()
    return rows


def host_calls() -> dict:
    x = torch.randn(256, 1024, device="cuda").to(torch.bfloat16)
    cb = gaussian_codebook(32)
    idx = cb.quantize(x)
    return {"Codebook.quantize (bf16)": lambda: cb.quantize(x),
            "Codebook.quantize (bf16), planned each call": planned_each_call(lambda: cb.quantize(x), lloyd_max_triton),
            "Codebook.dequantize": lambda: cb.dequantize(idx)}


def sweep(n: int = 16384, k: int = 16384) -> list[str]:
    """Lookup kernel block sizes and the grid kernel, bf16 -> uint8 (GB/s)."""
    x = torch.randn(n, k, device="cuda").to(torch.bfloat16)
    out = []
    for levels in LEVELS:
        cb = gaussian_codebook(levels)
        table = cb.cached(("lookup", x.dtype, x.device), lambda: cb._lookup_table(x.dtype, x.device))
        for block, warps in [(2048, 4), (4096, 4), (8192, 8)]:
            t = graph_seconds(lambda: quantize_lookup(x, table, block, warps))
            out.append(f"  {levels} levels lookup block={block} warps={warps}: {3 * x.numel() / t / 1e9:.0f} GB/s")
            print(out[-1], flush=True)
        grid = assign_table(cb.thresholds, torch.float32, x.device)
        t = graph_seconds(lambda: quantize_triton(x, grid, torch.uint8))
        out.append(f"  {levels} levels grid kernel (K={grid.k}): {3 * x.numel() / t / 1e9:.0f} GB/s")
        print(out[-1], flush=True)
    return out


def solver_tables() -> list[str]:
    rows = _step_rows(LEVELS)
    sorted_rows = _sorted_rows(LEVELS)
    x = torch.randn(1 << 24, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    t0 = time.perf_counter()
    cb = lloyd_max(bits=5, samples=x)
    solve = time.perf_counter() - t0
    lines = [
        "| op | levels | clone GB/s | kernel GB/s | % of clone | plain torch GB/s | check |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['op']} | {r['levels']} | {r['clone']:.0f} | {r['kernel']:.0f} | "
                     f"{100 * r['kernel'] / r['clone']:.0f}% | {r['torch']:.0f} | {r['check']} |")
    lines += ["", "Sorted-prefix Lloyd step (the solver's iteration), 2^28 fp32 samples; GB/s-eq = sample bytes "
              "/ time; % of clone against the clone GB/s above (read + write)", "",
              "| levels | clone GB/s | setup ms (sort + prefix) | step µs | step GB/s-eq | % of clone | solve steps "
              "| amortised µs/step | amortised GB/s-eq | % of clone | full solve s | check |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted_rows:
        lines.append(f"| {r['levels']} | {r['clone']:.0f} | {1e3 * r['setup']:.1f} | {1e6 * r['step']:.0f} | "
                     f"{r['step_gbs']:.0f} | {100 * r['step_gbs'] / r['clone']:.0f}% | {r['steps']} | "
                     f"{1e6 * r['amortised']:.0f} | {r['amortised_gbs']:.0f} | "
                     f"{100 * r['amortised_gbs'] / r['clone']:.0f}% | {r['solve']:.2f} | {r['check']} |")
    lines += ["", f"Full empirical solve, 2^24 fp32 N(0,1) samples, 32 levels: {solve:.2f} s, "
              f"{cb.iterations} Lloyd steps, converged={cb.converged}, mse={cb.mse:.6f} "
              f"(Gaussian optimum {gaussian_codebook(32).mse:.6f})."]
    lines += ["", "Lloyd step bytes = samples read (fp32); clone GB/s counts its read + write. Plain torch = "
              "`torch.bucketize(x, thr, right=True)` + two fp32 `scatter_add_` (counts, sums)."]
    return lines


def main() -> None:
    parser = arg_parser(__doc__, "also time block sizes and the grid kernel")
    parser.add_argument("--solver", action="store_true", help="also the Lloyd step and sorted-prefix tables")
    args = parser.parse_args()
    title = (f"# Lloyd–Max quantize on {torch.cuda.get_device_name()} ({datetime.date.today()}), "
             "GB/s = (bytes read + written) / median CUDA-graph replay time")
    lines = report(title, roofline_rows(args.quick), host_calls(), sweep() if args.sweep else None)
    if args.solver:
        lines += solver_tables()
    emit_table(lines, args.out)


if __name__ == "__main__":
    main()
