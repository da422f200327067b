"""Asymmetric INT4: quality and CPU time of each method, and (on CUDA) the fused min-max kernel's GB/s.

Quality: relative weight MSE ``Σ (w - ŵ)² / Σ w²`` (float64, exact product ``(q - z) s``) and its
importance-weighted version, iid Gaussian BF16 ``[rows, 4096]``, group 128, for symmetric absmax
(``ops.int4``) and the asymmetric methods with and without importance weights (squared log-normal
per-channel weights). Time: wall and process CPU seconds of one call each (``--threads`` sets
``torch.set_num_threads``).

Throughput (``--device cuda``): the kernel on 4096x4096, 14336x4096, 4096x14336 and 16384x16384 BF16
weights, GB/s counting bytes read + written, against ``torch.clone`` of the weight in the same process,
outputs preallocated and each result first checked against the torch path (bit for bit).

    python bench/int4_asym.py --threads 1 --rows 4096
    python bench/int4_asym.py --device cuda
"""

from __future__ import annotations

import argparse
import time

import torch

from hlwq_kernels.ops.int4 import dequantize_int4, quantize_int4
from hlwq_kernels.ops.int4_asym import Int4AsymWeight, dequantize_int4_asym, quantize_int4_asym
from hlwq_kernels.ops.int4_asym_triton import int4_asym_minmax_pack

GROUP = 128
ROWS = ["minmax", "clip", "hqq", "clip+importance", "hqq+importance"]
SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (16384, 16384)]


def quality_and_time(rows: int, device: str) -> list[str]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(rows, 4096, generator=g, dtype=torch.float64).to(torch.bfloat16).to(device)
    lam = torch.exp(torch.randn(4096, generator=g, dtype=torch.float64)).square().float().to(device)
    wd = w.double()

    def rel(w_hat: torch.Tensor, weights: torch.Tensor | None = None) -> float:
        d, e = (wd - w_hat.double()).square(), wd.square()
        if weights is not None:
            d, e = d * weights.double(), e * weights.double()
        return (d.sum() / e.sum()).item()

    def timed(fn):
        if device == "cuda":
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - t, time.process_time() - c

    lines = ["| method | rel. MSE | weighted rel. MSE | wall s | CPU s |", "|---|---|---|---|---|"]
    q, wall, cpu = timed(lambda: quantize_int4(w, GROUP, "absmax"))
    w_hat = dequantize_int4(q, torch.float32)
    lines.append(f"| symmetric absmax | {rel(w_hat):.5f} | {rel(w_hat, lam):.5f} | {wall:.2f} | {cpu:.2f} |")
    for row in ROWS:
        method, _, imp = row.partition("+")
        q, wall, cpu = timed(lambda: quantize_int4_asym(w, GROUP, method, importance=lam if imp else None))
        w_hat = dequantize_int4_asym(q, torch.float32)
        lines.append(f"| {row} | {rel(w_hat):.5f} | {rel(w_hat, lam):.5f} | {wall:.2f} | {cpu:.2f} |")
    return lines


def roofline_rows(quick: bool = False) -> list[dict]:
    """The fused min-max kernel on each shape (outputs preallocated, CUDA-graph timing), each result
    first checked bit for bit against the torch path (rel. err 0 when equal)."""
    from gpu_common import clone_gbps, graph_seconds, roofline_row

    rows = []
    for n, k in SHAPES[:2] if quick else SHAPES:
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        ng = k // GROUP
        out = (
            torch.empty(n, k // 8, dtype=torch.int32, device="cuda"),
            torch.empty(n, ng, dtype=w.dtype, device="cuda"),
            torch.empty((n + 7) // 8, ng, dtype=torch.int32, device="cuda"),
        )
        got = Int4AsymWeight(*int4_asym_minmax_pack(w, GROUP, out=out), (n, k), GROUP)
        expected = quantize_int4_asym(w, GROUP, "minmax", backend="torch")
        exact = all(torch.equal(a, b) for a, b in ((got.packed, expected.packed), (got.scale, expected.scale),
                                                    (got.zero_point_packed, expected.zero_point_packed)))
        moved = n * k * 2 + n * k // 2 + n * ng * 2 + (n + 7) // 8 * ng * 4
        gbps = moved / graph_seconds(lambda: int4_asym_minmax_pack(w, GROUP, out=out)) / 1e9
        rows.append(roofline_row("int4 asym quantize+pack (minmax)", (n, k), w.dtype, gbps, clone_gbps(w),
                                 0.0 if exact else float("nan"), "bit-exact vs torch path" if exact else "MISMATCH"))
    return rows


def kernel_throughput() -> list[str]:
    lines = ["| shape | clone GB/s | kernel GB/s | % of clone | note |", "|---|---|---|---|---|"]
    for r in roofline_rows():
        lines.append(f"| {r['shape']} | {r['gbps'] * 100 / r['pct_clone']:.0f} | {r['gbps']:.0f} | {r['pct_clone']:.0f}% | {r['note']} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{args.rows}x4096 BF16, group {GROUP}, {args.device}, {torch.get_num_threads()} threads")
    print("\n".join(quality_and_time(args.rows, args.device)))
    if args.device == "cuda":
        print("\n".join(kernel_throughput()))


if __name__ == "__main__":
    main()
