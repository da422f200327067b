"""Asymmetric INT4: quality and CPU time of each method, and (on CUDA) the min-max and clip kernels' GB/s.

Quality: relative weight MSE ``Σ (w - ŵ)² / Σ w²`` (float64, exact product ``(q - z) s``) and its
importance-weighted version, iid Gaussian BF16 ``[rows, 4096]``, group 128, for symmetric absmax
(``ops.int4``) and the asymmetric methods with and without importance weights (squared log-normal
per-channel weights). Time: wall and process CPU seconds of one call each (``--threads`` sets
``torch.set_num_threads``).

Throughput (``--device cuda``): the min-max and clip kernels (clip with and without importance) on
4096x4096, 14336x4096, 4096x14336 and 16384x16384 BF16 weights, GB/s counting bytes read + written,
against ``torch.clone`` of the weight in the same process, outputs preallocated, CUDA-graph timing.
Each result is first checked against the torch path: min-max bit for bit; clip by its objective (the
relative difference of the total squared error, and how many groups chose other parameters).
``--clip-sweep`` (CUDA): only the clip kernel's launch configurations on 14336x4096.

    python bench/int4_asym.py --threads 1 --rows 4096
    python bench/int4_asym.py --device cuda
    python bench/int4_asym.py --clip-sweep
"""

from __future__ import annotations

import argparse
import time

import torch

from hlwq_kernels.ops.int4 import dequantize_int4, quantize_int4
from hlwq_kernels.ops.int4_asym import Int4AsymWeight, dequantize_int4_asym, quantize_int4_asym
from hlwq_kernels.ops.int4_asym_triton import int4_asym_clip_pack, int4_asym_minmax_pack

GROUP = 128
ROWS = ["minmax", "clip", "hqq", "clip+importance", "hqq+importance"]
SHAPES = [(4096, 4096), (14336, 4096), (4096, 14336), (16384, 16384)]
CLIP_LAUNCHES = [(2, 1), (2, 2), (4, 1), (4, 2)]  # (lanes, warps), --clip-sweep


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


def _outputs(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ng = k // GROUP
    return (
        torch.empty(n, k // 8, dtype=torch.int32, device="cuda"),
        torch.empty(n, ng, dtype=torch.bfloat16, device="cuda"),
        torch.empty((n + 7) // 8, ng, dtype=torch.int32, device="cuda"),
    )


def _moved(n: int, k: int, importance: torch.Tensor | None = None) -> int:
    """Bytes read + written: the bf16 weight (and importance), codes, scales, packed zero points."""
    ng = k // GROUP
    return n * k * 2 + n * k // 2 + n * ng * 2 + (n + 7) // 8 * ng * 4 + (0 if importance is None else k * 4)


def _group_errors(w: torch.Tensor, q: Int4AsymWeight, lam: torch.Tensor | None) -> torch.Tensor:
    """``Σ λ (w - ŵ)²`` per group, float64."""
    err = (w.double() - dequantize_int4_asym(q, torch.float32).double()).square()
    if lam is not None:
        err = err * lam.double()
    return err.reshape(w.shape[0], -1, GROUP).sum(-1)


def _clip_check(w: torch.Tensor, got: Int4AsymWeight, lam: torch.Tensor | None) -> tuple[float, str]:
    """The clip kernel against the torch path: relative difference of the total squared error, note."""
    expected = quantize_int4_asym(w, GROUP, "clip", importance=lam, backend="torch")
    e_got, e_exp = _group_errors(w, got, lam), _group_errors(w, expected, lam)
    differ = (got.scale != expected.scale) | (got.zero_points() != expected.zero_points())
    worse = int((e_got > e_exp * (1 + 1e-6)).sum())
    rel = abs(e_got.sum().item() / e_exp.sum().item() - 1)
    return rel, f"E vs torch path; {int(differ.sum())} of {differ.numel()} groups differ, {worse} worse"


def roofline_rows(quick: bool = False) -> list[dict]:
    """The fused min-max kernel and the clip kernel (without and with importance) on each shape (outputs
    preallocated, CUDA-graph timing), each result first checked against the torch path (min-max bit for
    bit: rel. err 0 when equal; clip by its objective: rel. err of the total squared error)."""
    from gpu_common import clone_gbps, graph_seconds, roofline_row

    rows = []
    for n, k in SHAPES[:2] if quick else SHAPES:
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        lam = torch.exp(torch.randn(k, device="cuda")).square()
        out = _outputs(n, k)
        clone = clone_gbps(w)
        got = Int4AsymWeight(*int4_asym_minmax_pack(w, GROUP, out=out), (n, k), GROUP)
        expected = quantize_int4_asym(w, GROUP, "minmax", backend="torch")
        exact = all(torch.equal(a, b) for a, b in ((got.packed, expected.packed), (got.scale, expected.scale),
                                                    (got.zero_point_packed, expected.zero_point_packed)))
        gbps = _moved(n, k) / graph_seconds(lambda: int4_asym_minmax_pack(w, GROUP, out=out)) / 1e9
        rows.append(roofline_row("int4 asym quantize+pack (minmax)", (n, k), w.dtype, gbps, clone,
                                 0.0 if exact else float("nan"), "bit-exact vs torch path" if exact else "MISMATCH"))
        for label, imp in (("clip", None), ("clip + importance", lam)):
            got = Int4AsymWeight(*int4_asym_clip_pack(w, GROUP, imp, out=out), (n, k), GROUP)
            rel, note = _clip_check(w, got, imp)
            gbps = _moved(n, k, imp) / graph_seconds(lambda: int4_asym_clip_pack(w, GROUP, imp, out=out)) / 1e9
            rows.append(roofline_row(f"int4 asym quantize+pack ({label})", (n, k), w.dtype, gbps, clone, rel, note))
        del w, out
        torch.cuda.empty_cache()
    return rows


def clip_sweep() -> list[str]:
    """The clip kernel's launch configurations (``CLIP_LAUNCHES``) on 14336x4096 BF16, GB/s and % of clone."""
    from gpu_common import clone_gbps, graph_seconds

    n, k = SHAPES[1]
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    lam = torch.exp(torch.randn(k, device="cuda")).square()
    out = _outputs(n, k)
    clone = clone_gbps(w)
    lines = ["| lanes | warps | clip GB/s | % clone | clip + importance GB/s | % clone |", "|---|---|---|---|---|---|"]
    for lanes, warps in CLIP_LAUNCHES:
        cells = []
        for imp in (None, lam):
            t = graph_seconds(lambda: int4_asym_clip_pack(w, GROUP, imp, out=out, num_warps=warps, lanes=lanes))
            gbps = _moved(n, k, imp) / t / 1e9
            cells += [f"{gbps:.0f}", f"{100 * gbps / clone:.1f}%"]
        lines.append(f"| {lanes} | {warps} | {' | '.join(cells)} |")
        print(lines[-1], flush=True)
    return lines


def kernel_throughput() -> list[str]:
    lines = ["| kernel | shape | clone GB/s | kernel GB/s | % of clone | note |", "|---|---|---|---|---|---|"]
    for r in roofline_rows():
        lines.append(f"| {r['op']} | {r['shape']} | {r['gbps'] * 100 / r['pct_clone']:.0f} | {r['gbps']:.0f} | "
                     f"{r['pct_clone']:.1f}% | {r['note']} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clip-sweep", action="store_true", help="only the clip kernel's launch configurations (CUDA)")
    args = parser.parse_args()
    if args.clip_sweep:
        clip_sweep()
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{args.rows}x4096 BF16, group {GROUP}, {args.device}, {torch.get_num_threads()} threads")
    print("\n".join(quality_and_time(args.rows, args.device)))
    if args.device == "cuda":
        print("\n".join(kernel_throughput()))


if __name__ == "__main__":
    main()
