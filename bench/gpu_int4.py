"""GPU benchmark of INT4 quantize+pack (absmax and MSE scales) and the Marlin repack, plus the error table.

(The asymmetric min-max kernel's throughput rows are in ``bench/int4_asym.py``; its host time per
call is in this script's host table.)

Throughput, for bf16 weights of the LLM shapes in ``gpu_common.SHAPES``, group 128: GB/s counting
bytes read plus bytes written, against ``torch.clone`` of the weight in the same process. Each op is
the public API (``quantize_int4``, ``marlin_pack``) captured in a CUDA graph and timed by its replays,
so no host work is in the timed region; the host time per call is measured separately (calls issued
back to back on a small weight, no sync in between). Every output is first compared with the torch
path on the same device (the first 1024 rows): ``rel. err`` is ``‖kernel − torch path‖ / ‖torch path‖``
of the dequantized weights (0 = bit-exact codes and scales).

Quality: relative weight MSE ``Σ (w - ŵ)² / Σ w²`` (float64) of absmax and MSE scales on Gaussian and
Student-t (ν = 3, 5) matrices, group 128, and the reduction. Runs on CPU too (``--quality-only``).

    python bench/gpu_int4.py --out bench/results/int4-h200.md [--sweep] [--quick]
    python bench/gpu_int4.py --quality-only --device cpu --rows 1024
"""

from __future__ import annotations

import datetime
from typing import Callable

import torch
import triton
import triton.language as tl

from gpu_common import SHAPES, arg_parser, clone_gbps, emit_table, graph_seconds, poison_allocator, report, roofline_row
from hlwq_kernels.ops.int4 import Int4Weight, dequantize_int4, quantize_int4
from hlwq_kernels.ops.int4_asym import quantize_int4_asym
from hlwq_kernels.ops.int4_asym_triton import int4_asym_minmax_pack
from hlwq_kernels.ops.int4_triton import int4_quantize_pack
from hlwq_kernels.ops.marlin import marlin_pack
from hlwq_kernels.ops.marlin_triton import marlin_repack

GROUP = 128
CHECK_ROWS = 1024


def _int4_err(got: Int4Weight, want: Int4Weight) -> float:
    a, b = dequantize_int4(got, torch.float64), dequantize_int4(want, torch.float64)
    return float((a - b).norm() / b.norm())


def roofline_rows(quick: bool = False) -> list[dict]:
    """INT4 absmax, INT4 MSE and Marlin repack rows for each shape (``quick``: the first two shapes)."""
    rows = []
    for n, k in SHAPES[:2] if quick else SHAPES:
        w = torch.randn(n, k, device="cuda", dtype=torch.float32).to(torch.bfloat16)
        elems = n * k
        scale_bytes = 2 * elems // GROUP
        q_bytes = 2 * elems + elems // 2 + scale_bytes
        m_bytes = 2 * (elems // 2 + scale_bytes)
        clone = clone_gbps(w)
        check = w[:CHECK_ROWS]
        for rule in ("absmax", "mse"):
            poison_allocator(q_bytes)
            got, want = quantize_int4(check, GROUP, rule), quantize_int4(check, GROUP, rule, backend="torch")
            exact = torch.equal(got.packed, want.packed) and torch.equal(got.scale, want.scale)
            t = graph_seconds(lambda: quantize_int4(w, GROUP, rule))
            rows.append(roofline_row(f"int4 quantize+pack ({rule})", (n, k), "bf16", q_bytes / t / 1e9, clone,
                                     _int4_err(got, want), "bit-exact" if exact else "MISMATCH"))
        q = quantize_int4(w, GROUP)
        qc = Int4Weight(q.packed[:CHECK_ROWS], q.scale[:CHECK_ROWS], (CHECK_ROWS, k), GROUP)
        poison_allocator(m_bytes)
        got, want = marlin_pack(qc), marlin_pack(qc, backend="torch")
        exact = torch.equal(got.qweight, want.qweight) and torch.equal(got.scales, want.scales)
        t = graph_seconds(lambda: marlin_pack(q))
        rows.append(roofline_row("marlin repack", (n, k), "int4", m_bytes / t / 1e9, clone,
                                 0.0 if exact else float("nan"), "bit-exact" if exact else "MISMATCH"))
        del w, q
        torch.cuda.empty_cache()
    return rows


@triton.jit
def _store_one(out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, 1, mask=offs < n)


def host_calls() -> dict[str, Callable[[], object]]:
    """The public functions on a small weight (256 x 1024 bf16), a bare Triton launch (one pointer,
    one int: Triton's own launcher cost) and ``x.clone()`` (an allocation and a launch in torch)."""
    w = torch.randn(256, 1024, device="cuda").to(torch.bfloat16)
    q = quantize_int4(w, GROUP)
    one = torch.empty(16, dtype=torch.int32, device="cuda")
    return {
        "bare Triton launch (2 arguments)": lambda: _store_one[(1,)](one, 16, BLOCK=16),
        "x.clone()": lambda: w.clone(),
        "quantize_int4(absmax)": lambda: quantize_int4(w, GROUP),
        "quantize_int4(mse)": lambda: quantize_int4(w, GROUP, "mse"),
        "marlin_pack": lambda: marlin_pack(q),
        "int4_quantize_pack (launcher)": lambda: int4_quantize_pack(w, GROUP, "absmax"),
        "quantize_int4_asym(minmax)": lambda: quantize_int4_asym(w, GROUP),
        "int4_asym_minmax_pack (launcher)": lambda: int4_asym_minmax_pack(w, GROUP),
    }


def sweep(n: int = 16384, k: int = 16384) -> list[str]:
    """Launch configurations of the quantize and repack kernels on one shape (GB/s)."""
    w = torch.randn(n, k, device="cuda").to(torch.bfloat16)
    elems = n * k
    q_bytes = 2 * elems + elems // 2 + 2 * elems // GROUP
    out = []
    for rule, configs in (("absmax", [(4, 2, 16), (4, 2, 2), (4, 4, 2), (4, 1, 2), (2, 2, 8)]), ("mse", [(4, 2, 16)])):
        for lanes, warps, block_g in configs:
            t = graph_seconds(lambda: int4_quantize_pack(w, GROUP, rule, block_g=block_g, num_warps=warps, lanes=lanes))
            out.append(f"  quantize {rule} lanes={lanes} warps={warps} block_g={block_g}: {q_bytes / t / 1e9:.0f} GB/s")
            print(out[-1], flush=True)
    q = quantize_int4(w, GROUP)
    m_bytes = 2 * (elems // 2 + 2 * elems // GROUP)
    for block_k, warps in [(16, 4), (32, 4), (32, 8), (64, 8)]:
        t = graph_seconds(lambda: marlin_repack(q.packed, q.scale, GROUP, block_k=block_k, num_warps=warps))
        out.append(f"  repack block_k={block_k} warps={warps}: {m_bytes / t / 1e9:.0f} GB/s")
        print(out[-1], flush=True)
    return out


def _rel_mse(w: torch.Tensor, q: Int4Weight) -> float:
    x = w.double()
    return float(((x - dequantize_int4(q, torch.float64)) ** 2).sum() / (x**2).sum())


def quality(device: str, rows: int, cols: int = 4096) -> list[str]:
    g = torch.Generator().manual_seed(0)
    sources = {
        "Gaussian": lambda: torch.randn(rows, cols, generator=g),
        "Student-t ν=5": lambda: torch.distributions.StudentT(5.0).sample((rows, cols)),
        "Student-t ν=3": lambda: torch.distributions.StudentT(3.0).sample((rows, cols)),
    }
    lines = [
        f"| {rows}x{cols} bf16, group {GROUP} | absmax/7.5 rel. MSE | mse rel. MSE | reduction |",
        "|---|---|---|---|",
    ]
    for name, draw in sources.items():
        torch.manual_seed(0)
        w = draw().to(torch.bfloat16).to(device)
        a = _rel_mse(w, quantize_int4(w, GROUP, "absmax"))
        m = _rel_mse(w, quantize_int4(w, GROUP, "mse"))
        lines.append(f"| {name} | {a:.5f} | {m:.5f} | {100 * (1 - m / a):.1f}% |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = arg_parser(__doc__, "also time other launch configurations")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", type=int, default=4096, help="rows of the quality matrices (4096 columns)")
    parser.add_argument("--quality-only", action="store_true")
    args = parser.parse_args()
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    out = [f"# INT4 quantize+pack and Marlin repack — {device_name}, {datetime.date.today()}", ""]
    if not args.quality_only:
        title = f"torch {torch.__version__}; GB/s = (bytes read + written) / median CUDA-graph replay time"
        out += report(title, roofline_rows(args.quick), host_calls(), sweep() if args.sweep else None)
    out += quality(args.device, args.rows)
    emit_table(out, args.out)


if __name__ == "__main__":
    main()
