"""GPU benchmark of the fused HLWQ → INT4 kernel (run on a CUDA machine).

For each weight shape ``[N, K]`` (bf16, random normal × 0.02): the fused ``hlwq_int4`` (one kernel,
reads W once, writes packed INT4 + scales), the fused codes kernel (``hlwq_quantize``: codes +
norms), the unfused composition of the library's GPU ops (norms in torch, FWHT kernel, Lloyd–Max
quantize/dequantize kernels, inverse FWHT, ``quantize_int4`` kernel), the float64 torch path
(``backend="torch"``) and ``torch.clone`` of W in the same process. GB/s = (bytes read + bytes
written) / median time; the fused kernels' outputs are checked against the float64 torch path
(mismatch rates of INT4 codes, scales and Lloyd–Max codes).

    python bench/gpu_hlwq.py --out bench/results/hlwq-h100.md [--sweep]
"""

from __future__ import annotations

import argparse
import datetime

import torch

from gpu_common import bench_seconds, emit_table, poison_allocator
from hlwq_kernels import fwht, hlwq_int4, hlwq_quantize
from hlwq_kernels.ops.hlwq import _levels64
from hlwq_kernels.ops.hlwq_triton import hlwq_fused
from hlwq_kernels.ops.int4 import quantize_int4, unpack_int4
from hlwq_kernels.ops.lloyd_max import gaussian_codebook

SHAPES = [(14336, 4096), (4096, 14336)]
B = 128




def _unfused(w: torch.Tensor, cb):
    """The same pipeline as separate library GPU ops (fp32 intermediates in HBM)."""
    n, k = w.shape
    x = w.float().view(n * k // B, B)
    norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    y = fwht(x / torch.where(norms > 0, norms, 1.0), normalized=False)
    v = cb.dequantize(cb.quantize(y), torch.float32)
    wp = (fwht(v, normalized=False, inverse=True) * norms).view(n, k).to(w.dtype)
    return quantize_int4(wp, group_size=B)


def _rates(w: torch.Tensor, cb) -> dict[str, float]:
    n, k = w.shape
    poison_allocator(w.numel() * w.element_size())
    fused = hlwq_int4(w)
    ref = hlwq_int4(w, backend="torch")
    dq = unpack_int4(fused.packed, k).int() - unpack_int4(ref.packed, k).int()
    codes_f = hlwq_quantize(w).codes
    codes_t = hlwq_quantize(w, backend="torch").codes
    return {
        "int4_mismatch": (dq != 0).double().mean().item(),
        "int4_max_diff": dq.abs().max().item(),
        "scale_mismatch": (fused.scale != ref.scale).double().mean().item(),
        "code_mismatch": (codes_f != codes_t).double().mean().item(),
    }


def _measure(n: int, k: int, sweep: bool) -> tuple[list[dict], dict]:
    w = (torch.randn(n, k, device="cuda") * 0.02).to(torch.bfloat16)
    cb = gaussian_codebook(32)
    lev, thr = _levels64(cb), torch.tensor(cb.thresholds)
    numel = n * k
    read = numel * 2
    int4_out = numel // 2 + numel // B * 2
    rows = []

    def add(name: str, fn, nbytes: int) -> None:
        t = bench_seconds(fn)
        rows.append({"op": name, "shape": f"{n}×{k}", "ms": t * 1e3, "gbs": nbytes / t / 1e9})

    add("torch.clone (ceiling)", lambda: w.clone(), 2 * read)
    add("hlwq_int4 fused (default)", lambda: hlwq_int4(w), read + int4_out)
    if sweep:
        for r in (16, 32, 64, 128):
            for nw in (4, 8):
                name = f"hlwq_int4 fused rows={r} warps={nw}"
                try:
                    add(name, lambda: hlwq_fused(w, lev, thr, B, int4_group=B, rows=r, num_warps=nw),
                        read + int4_out)
                except Exception as exc:  # report a configuration that fails to compile
                    rows.append({"op": name, "shape": f"{n}×{k}", "error": repr(exc)[:120]})
    add("hlwq_quantize fused (codes + norms)", lambda: hlwq_quantize(w), read + numel + numel // B * 4)
    add("unfused library ops (fp32)", lambda: _unfused(w, cb), read + int4_out)
    add("torch path (float64)", lambda: hlwq_int4(w, backend="torch"), read + int4_out)
    check = _rates(w, cb)
    del w
    torch.cuda.empty_cache()
    return rows, check


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--sweep", action="store_true", help="try several tile heights and warp counts")
    args = parser.parse_args()
    lines = [
        f"# HLWQ → INT4 on {torch.cuda.get_device_name()} ({datetime.date.today()}), bf16 weights, "
        "b = g = 128, 5 bits; GB/s = (read + write) / median time",
        "",
        "| op | shape [N×K] | ms | GB/s | % of clone GB/s |",
        "|---|---|---|---|---|",
    ]
    checks = []
    for n, k in SHAPES:
        rows, check = _measure(n, k, args.sweep)
        clone = rows[0]["gbs"]
        for r in rows:
            print(r, flush=True)
            if "error" in r:
                lines.append(f"| {r['op']} | {r['shape']} | failed: {r['error']} | | |")
            else:
                lines.append(f"| {r['op']} | {r['shape']} | {r['ms']:.3f} | {r['gbs']:.0f} | "
                             f"{100 * r['gbs'] / clone:.0f}% |")
        checks.append((f"{n}×{k}", check))
    lines += ["", "Fused kernel vs float64 torch path (fraction of entries that differ):", "",
              "| shape | INT4 codes | max |Δq| | scales | Lloyd–Max codes |", "|---|---|---|---|---|"]
    for shape, c in checks:
        lines.append(f"| {shape} | {c['int4_mismatch']:.2e} | {c['int4_max_diff']} | {c['scale_mismatch']:.2e} | "
                     f"{c['code_mismatch']:.2e} |")
    emit_table(lines, args.out)


if __name__ == "__main__":
    main()
