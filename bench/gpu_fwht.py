"""GPU roofline benchmark of the FWHT kernel (run on a CUDA machine).

For each size n and dtype: 2**28 elements (rows = 2**28 // n), bandwidth in GB/s counting bytes read
plus bytes written, against ``torch.clone`` of the same tensor and cuBLAS ``x @ (H.T / sqrt(n))``
in the same process, plus the relative error of each against float64 on a slice of rows.

    python bench/gpu_fwht.py --out bench/results/fwht-h100.md [--sweep]
"""

from __future__ import annotations

import argparse
import datetime
import math

import torch

from gpu_common import bench_seconds, emit_table, poison_allocator
from hlwq_kernels import fwht, hadamard_factors
from hlwq_kernels.ops import fwht_triton
from hlwq_kernels.ops.fwht_triton import fwht_rows_triton, kernel_modes
from hlwq_kernels.ops.hadamard import hadamard_tensor

POW2 = [128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
KSIZES = [1536, 2560, 3584, 10240, 14336, 18944, 11008, 28672, 40960]
TOTAL = 1 << 28




def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.double() - ref).norm() / ref.norm())


def _measure(n: int, dtype: torch.dtype, variants: list[dict]) -> list[dict]:
    rows = TOTAL // n
    x = torch.randn(rows, n, device="cuda", dtype=torch.float32).to(dtype)
    nbytes = 2 * x.numel() * x.element_size()
    check = x[:256]
    ref = fwht(check.double(), backend="torch")
    t_clone = bench_seconds(lambda: x.clone())
    out = []
    cublas = None
    if n <= 8192:
        k, _ = hadamard_factors(n)
        h = (hadamard_tensor(n, transpose=True, device="cuda", dtype=dtype) / math.sqrt(n)).to(dtype)
        t_mm = bench_seconds(lambda: x @ h)
        cublas = (nbytes / t_mm / 1e9, _rel_err(check @ h, ref))
    for var in variants:
        scale = 1.0 / math.sqrt(n)

        def run():
            if not var:  # the public API: Triton (tuned on first use) or the torch fallback
                return fwht(x)
            return fwht_rows_triton(x, n, False, scale, None, **var)

        try:
            poison_allocator(nbytes // 2)
            y = run()
            torch.cuda.synchronize()
            finite = bool(torch.isfinite(y).all())
            err = _rel_err(y[:256], ref)
            t = bench_seconds(run)
        except Exception as exc:  # report a variant that fails to compile instead of stopping
            out.append({"n": n, "dtype": str(dtype).removeprefix("torch."), "variant": var, "error": repr(exc)[:200]})
            continue
        if not var:
            plan = kernel_modes(n)
            tuned = [v for key, v in fwht_triton._tuned.items() if key[0] == n and key[1] == dtype]
            var = {"path": "triton" if plan else "torch (cuBLAS mode products)"}
            if tuned:
                var.update(tuned[-1])
        out.append({
            "n": n, "dtype": str(dtype).removeprefix("torch."), "variant": var,
            "clone": nbytes / t_clone / 1e9, "fwht": nbytes / t / 1e9, "finite": finite, "err": err,
            "cublas": cublas,
        })
    del x
    torch.cuda.empty_cache()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--sweep", action="store_true", help="try several kernel configurations")
    parser.add_argument("--sizes", default=None, help="comma-separated n (default: all)")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else POW2 + KSIZES
    variants = [{}]  # the library's own choice (tuned on first use)
    if args.sweep:
        variants = [
            {"num_warps": w, "tile_elems": t, "programs_per_sm": pps, "stages": st}
            for w in (4, 8, 16) for t in (2048, 8192, 16384) for pps, st in ((None, 1), (4, 2))
        ]
    results = []
    for dtype in [getattr(torch, d) for d in args.dtypes.split(",")]:
        for n in sizes:
            for r in _measure(n, dtype, variants):
                results.append(r)
                print(r, flush=True)
    lines = [
        f"# FWHT on {torch.cuda.get_device_name()} ({datetime.date.today()}), 2^28 elements, GB/s = (read+write)/time",
        "",
        "| n | K·2^m | dtype | variant | clone GB/s | fwht GB/s | % of clone | rel. err vs fp64 | cuBLAS x@H GB/s | cuBLAS err |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        k, p = hadamard_factors(r["n"])
        if "error" in r:
            lines.append(f"| {r['n']} | {k}·{p} | {r['dtype']} | {r['variant']} | failed: {r['error']} |||||||")
            continue
        cb = r["cublas"]
        cb_txt = f"{cb[0]:.0f} | {cb[1]:.1e}" if cb else "– | –"
        flag = "" if r["finite"] else " (NON-FINITE)"
        lines.append(
            f"| {r['n']} | {k}·{p} | {r['dtype']} | {r['variant'] or 'default'} | {r['clone']:.0f} | "
            f"{r['fwht']:.0f} | {100 * r['fwht'] / r['clone']:.0f}% | {r['err']:.2e}{flag} | {cb_txt} |"
        )
    emit_table(lines, args.out)


if __name__ == "__main__":
    main()
