"""GPU roofline benchmark of the Lloyd–Max kernels (run on a CUDA machine).

2**28 elements: one empirical Lloyd step over float32 samples (bytes = samples read), quantize
(bfloat16 in, uint8 out) and dequantize (uint8 in, bfloat16 out); GB/s = (bytes read + written) / time,
against ``torch.clone`` of the same input and the plain-torch way (``torch.bucketize`` +
``scatter_add_``; ``levels[idx]``) in the same process. Each result is checked first: indices equal
the torch path exactly, per-cell counts equal and sums agree to 1e-5 with float64 torch.

Second table, the sorted-prefix scheme the empirical solver iterates with: the one-time setup
(``torch.sort`` of the 2**28 fp32 samples + float64 prefix sums), one Lloyd step (``searchsorted`` of
the thresholds + prefix differences, including the copy of the per-cell results to the host), its
GB/s-equivalent (bytes of the samples / step time, against clone), and the cost per step amortised
over a full ``lloyd_max(levels=n, samples=x)`` solve on the same samples: (setup + K · step) / K with K
its number of steps. Checked first against the float64 torch step on all samples: per-cell counts
equal exactly, sums agree to 1e-9 relative.

    python bench/gpu_lloyd.py --out bench/results/lloyd-h100.md
"""

from __future__ import annotations

import argparse
import datetime
import time

import numpy as np
import torch

from gpu_common import bench_seconds, emit_table
from hlwq_kernels.ops.lloyd_max import _lloyd_step, _sort_samples, _sorted_step, gaussian_codebook, lloyd_max
from hlwq_kernels.ops.lloyd_max_triton import assign_table, dequantize_triton, lloyd_step_triton, quantize_triton

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


def _quant_rows(levels: list[int]) -> list[dict]:
    x = torch.randn(TOTAL, device="cuda", dtype=torch.float32).to(torch.bfloat16)
    clone = 2 * x.numel() * 2 / bench_seconds(lambda: x.clone()) / 1e9
    rows = []
    for n in levels:
        cb = gaussian_codebook(n)
        table = assign_table(cb.thresholds, torch.float32, x.device)
        thr = torch.tensor(cb.thresholds, dtype=torch.float32, device="cuda")
        idx = quantize_triton(x, table, torch.uint8)
        want = cb.quantize(x, backend="torch")
        ok = bool(torch.equal(idx, want))
        t_k = bench_seconds(lambda: quantize_triton(x, table, torch.uint8))
        t_t = bench_seconds(lambda: torch.bucketize(x.float(), thr, right=True).to(torch.uint8))
        rows.append(_row("quantize (bf16 → u8)", n, x.numel() * 3, clone, t_k, t_t, ok))
        lev = torch.tensor(cb.levels, dtype=torch.float64).to(torch.bfloat16).cuda()
        y = dequantize_triton(idx, lev)
        ok = bool(torch.equal(y, lev[idx.long()]))
        t_k = bench_seconds(lambda: dequantize_triton(idx, lev))
        t_t = bench_seconds(lambda: lev[idx.long()])
        rows.append(_row("dequantize (u8 → bf16)", n, x.numel() * 3, clone, t_k, t_t, ok))
    del x
    torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--levels", default="16,32,256")
    args = parser.parse_args()
    levels = [int(v) for v in args.levels.split(",")]
    rows = _step_rows(levels) + _quant_rows(levels)
    sorted_rows = _sorted_rows(levels)
    x = torch.randn(1 << 24, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    t0 = time.perf_counter()
    cb = lloyd_max(bits=5, samples=x)
    solve = time.perf_counter() - t0
    lines = [
        f"# Lloyd–Max kernels on {torch.cuda.get_device_name()} ({datetime.date.today()}), 2^28 elements, "
        "GB/s = (bytes read + written) / time (median of do_bench)",
        "",
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
              "`torch.bucketize(x, thr, right=True)` + two fp32 `scatter_add_` (counts, sums); quantize: "
              "`bucketize` on the fp32 upcast + cast to uint8; dequantize: `levels[idx.long()]`. "
              "Clone columns: clone of the fp32 samples (step) and of the bf16 input (quantize, dequantize)."]
    emit_table(lines, args.out)


if __name__ == "__main__":
    main()
