"""GPU benchmark of INT4 quantize+pack (absmax and MSE scales) and the Marlin repack, plus the error table.

(The asymmetric min-max kernel's throughput rows are in ``bench/int4_asym.py``; its host time per
call is in this script's host table.)

Throughput, for bf16 weights of the LLM shapes in ``gpu_common.SHAPES`` (and fp16 with the MSE scale), group 128: GB/s counting
bytes read plus bytes written, against ``torch.clone`` of the same bytes in the same process (the
bf16 weight for quantize+pack; the packed int32 words for the Marlin repack, whose note also gives
the percentage of the weight's clone, the reference of the tables before 2026-12-02-b). Each op is
the public API (``quantize_int4``, ``marlin_pack``) captured in a CUDA graph and timed by its replays,
so no host work is in the timed region; the host time per call is measured separately (calls issued
back to back on a small weight, no sync in between). Every output is first compared with the torch
path on the same device (the first 1024 rows): ``rel. err`` is ``‖kernel − torch path‖ / ‖torch path‖``
of the dequantized weights (0 = bit-exact codes and scales).

Quality: relative weight MSE ``Σ (w - ŵ)² / Σ w²`` (float64) of absmax and MSE scales on Gaussian and
Student-t (ν = 3, 5) matrices, group 128, and the reduction. Runs on CPU too (``--quality-only``).

MSE sweep (``--mse-sweep``): the MSE kernel's launch configurations and trial sets (``RATIOS`` and
shorter ones) on every shape, each checked bit for bit against the torch path with the same trials.

    python bench/gpu_int4.py --out bench/results/int4-h200.md [--sweep | --sweep-only] [--quick] [--jobs 8]
    python bench/gpu_int4.py --mse-sweep [--jobs 8]
    python bench/gpu_int4.py --quality-only --device cpu --rows 1024
"""

from __future__ import annotations

import datetime
from typing import Callable

import torch
import triton
import triton.language as tl

from gpu_common import (
    SHAPES, arg_parser, clone_gbps, emit_table, graph_seconds, planned_each_call, poison_allocator, report,
    roofline_row, run_parallel,
)
from hlwq_kernels.ops import int4_asym_triton, int4_triton, marlin_triton
from hlwq_kernels.ops.int4 import Int4Weight, _mse_scale_torch, dequantize_int4, quantize_int4, quantize_int4_with_scale
from hlwq_kernels.ops.int4_asym import quantize_int4_asym
from hlwq_kernels.ops.int4_asym_triton import int4_asym_minmax_pack
from hlwq_kernels.ops._triton import compiled_kernels
from hlwq_kernels.ops.int4_triton import _int4_quantize_pack_kernel, int4_quantize_pack
from hlwq_kernels.ops.marlin import marlin_pack
from hlwq_kernels.ops.marlin_triton import marlin_repack

GROUP = 128
CHECK_ROWS = 1024


def _int4_err(got: Int4Weight, want: Int4Weight) -> float:
    a, b = dequantize_int4(got, torch.float64), dequantize_int4(want, torch.float64)
    return float((a - b).norm() / b.norm())


_SHORT = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


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
        w32 = w.float()
        clone32 = clone_gbps(w32)
        # fp16: the same bytes as bf16; fp32: twice the weight's and the scales' bytes, against its own clone
        for x, rule in ((w, "absmax"), (w, "mse"), (w.to(torch.float16), "mse"), (w32, "mse")):
            check = x[:CHECK_ROWS]
            x_bytes = q_bytes if x.element_size() == 2 else 4 * elems + elems // 2 + 2 * scale_bytes
            poison_allocator(x_bytes)
            got, want = quantize_int4(check, GROUP, rule), quantize_int4(check, GROUP, rule, backend="torch")
            exact = torch.equal(got.packed, want.packed) and torch.equal(got.scale, want.scale)
            t = graph_seconds(lambda: quantize_int4(x, GROUP, rule))
            rows.append(roofline_row(f"int4 quantize+pack ({rule})", (n, k), _SHORT[x.dtype],
                                     x_bytes / t / 1e9, clone if x is not w32 else clone32, _int4_err(got, want),
                                     "bit-exact" if exact else "MISMATCH"))
            print(rows[-1], flush=True)
        del w32
        q = quantize_int4(w, GROUP)
        qc = Int4Weight(q.packed[:CHECK_ROWS], q.scale[:CHECK_ROWS], (CHECK_ROWS, k), GROUP)
        poison_allocator(m_bytes)
        got, want = marlin_pack(qc), marlin_pack(qc, backend="torch")
        exact = torch.equal(got.qweight, want.qweight) and torch.equal(got.scales, want.scales)
        t = graph_seconds(lambda: marlin_pack(q))
        words_clone = clone_gbps(q.packed)  # the same bytes as the repack reads (and writes)
        rows.append(roofline_row("marlin repack", (n, k), "int4", m_bytes / t / 1e9, words_clone,
                                 0.0 if exact else float("nan"),
                                 f"{'bit-exact' if exact else 'MISMATCH'}; clone of the packed words "
                                 f"{words_clone:.0f} GB/s; {100 * m_bytes / t / 1e9 / clone:.1f}% of the bf16 "
                                 "weight's clone"))
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
        "quantize_int4(absmax), planned each call": planned_each_call(lambda: quantize_int4(w, GROUP), int4_triton),
        "quantize_int4(mse)": lambda: quantize_int4(w, GROUP, "mse"),
        "marlin_pack": lambda: marlin_pack(q),
        "marlin_pack, planned each call": planned_each_call(lambda: marlin_pack(q), marlin_triton),
        "int4_quantize_pack (launcher)": lambda: int4_quantize_pack(w, GROUP, "absmax"),
        "quantize_int4_asym(minmax)": lambda: quantize_int4_asym(w, GROUP),
        "quantize_int4_asym(minmax), planned each call": planned_each_call(lambda: quantize_int4_asym(w, GROUP),
                                                                          int4_asym_triton),
        "int4_asym_minmax_pack (launcher)": lambda: int4_asym_minmax_pack(w, GROUP),
    }


# (lanes, warps, block_g), None: fitted to K (the default); (block_k, warps). The tests run the same
# configurations (tests/ops/test_int4_triton.py, test_int4_asym.py, test_marlin.py).
SWEEP_SYM = [(4, 2, None), (4, 1, None), (4, 1, 8), (4, 4, None), (2, 1, None), (2, 2, None), (2, 1, 8), (2, 2, 8),
             (1, 1, None), (8, 2, None)]
SWEEP_ASYM = [(4, 2, None), (4, 1, None), (4, 1, 1), (4, 4, None), (2, 1, None), (2, 2, None), (2, 2, 1), (2, 1, 1),
              (1, 1, 1), (1, 2, 1), (2, 4, None), (8, 2, None)]
SWEEP_REPACK = [(32, 4), (16, 4), (8, 4), (16, 2), (8, 2), (32, 8), (64, 8), (4, 2)]
# The MSE kernel: (lanes, warps, block_g, trial ratios; None: RATIOS, register cap; None: the default, 0: none);
# the tests run the same (MSE_LAUNCHES in tests/ops/test_int4_triton.py). The H200 sweep of 2026-12-02-c also
# timed signed codes and unrolled trials (slower, removed): bench/results/int4-mse-h200-2026-12-02-c.md.
E3, E2 = (1.0, 0.9, 0.825), (1.0, 0.875)
SWEEP_MSE = [(2, 1, None, None, 0), (2, 1, None, None, 128), (2, 1, None, None, 96), (2, 1, None, None, 80),
             (4, 2, None, None, 0), (4, 2, None, None, 64), (2, 2, None, None, 0), (4, 1, None, None, 0),
             (4, 1, None, None, 80), (2, 1, 8, None, 0), (2, 1, None, E3, 0), (2, 1, None, E2, 0),
             (4, 2, None, E3, 0)]


def _compile_task(task: tuple[int, str, tuple]) -> None:
    """Compile one sweep configuration (Triton's on-disk cache) on ``CHECK_ROWS`` rows of the same K:
    the same specialization as the full weight."""
    k, kind, cfg = task
    w = torch.randn(CHECK_ROWS, k, device="cuda").to(torch.bfloat16)
    if kind == "mse":
        lanes, warps, block_g, ratios, regs = cfg
        int4_quantize_pack(w, GROUP, "mse", block_g=block_g, num_warps=warps, lanes=lanes, ratios=ratios,
                           max_registers=regs)
    elif kind == "absmax":
        int4_quantize_pack(w, GROUP, "absmax", block_g=cfg[2], num_warps=cfg[1], lanes=cfg[0])
    elif kind == "asym":
        int4_asym_minmax_pack(w, GROUP, num_warps=cfg[1], lanes=cfg[0], block_g=cfg[2])
    else:
        q = quantize_int4(w, GROUP)
        marlin_repack(q.packed, q.scale, GROUP, block_k=cfg[0], num_warps=cfg[1])
    torch.cuda.synchronize()


def sweep(quick: bool = False, jobs: int = 1) -> list[str]:
    """Launch configurations of the absmax, asymmetric min-max and Marlin repack kernels on every
    shape, each first checked bit for bit against the torch path (the first ``CHECK_ROWS`` rows);
    compiled first in ``jobs`` processes."""
    out = []
    shapes = SHAPES[:2] if quick else SHAPES
    run_parallel(_compile_task, [(k, kind, cfg) for k in sorted({k for _, k in shapes}) for kind, cfgs in
                                 (("absmax", SWEEP_SYM), ("asym", SWEEP_ASYM), ("repack", SWEEP_REPACK)) for cfg in cfgs], jobs)

    def line(text: str) -> None:
        out.append(text)
        print(text, flush=True)

    for n, k in shapes:
        w = torch.randn(n, k, device="cuda").to(torch.bfloat16)
        elems, ng = n * k, k // GROUP
        clone = clone_gbps(w)
        line(f"  {n}x{k} bf16: clone {clone:.0f} GB/s")
        q_bytes = 2 * elems + elems // 2 + 2 * elems // GROUP
        want = quantize_int4(w[:CHECK_ROWS], GROUP, backend="torch")
        for lanes, warps, block_g in SWEEP_SYM:
            p, sc = int4_quantize_pack(w, GROUP, "absmax", block_g=block_g, num_warps=warps, lanes=lanes)
            ok = torch.equal(p[:CHECK_ROWS], want.packed) and torch.equal(sc[:CHECK_ROWS], want.scale)
            t = graph_seconds(lambda: int4_quantize_pack(w, GROUP, "absmax", block_g=block_g, num_warps=warps, lanes=lanes),
                              rep_ms=10.0)
            line(f"  absmax lanes={lanes} warps={warps} block_g={block_g}: {q_bytes / t / 1e9:.0f} GB/s "
                 f"{100 * q_bytes / t / 1e9 / clone:.1f}% {'exact' if ok else 'MISMATCH'}")
        a_bytes = q_bytes + (n + 7) // 8 * ng * 4
        want_a = quantize_int4_asym(w[:CHECK_ROWS], GROUP, backend="torch")
        outs = (torch.empty(n, k // 8, dtype=torch.int32, device="cuda"), torch.empty(n, ng, dtype=w.dtype, device="cuda"),
                torch.empty((n + 7) // 8, ng, dtype=torch.int32, device="cuda"))
        for lanes, warps, block_g in SWEEP_ASYM:
            fn = lambda: int4_asym_minmax_pack(w, GROUP, out=outs, num_warps=warps, lanes=lanes, block_g=block_g)
            fn()
            ok = (torch.equal(outs[0][:CHECK_ROWS], want_a.packed) and torch.equal(outs[1][:CHECK_ROWS], want_a.scale)
                  and torch.equal(outs[2][:CHECK_ROWS // 8], want_a.zero_point_packed))
            t = graph_seconds(fn, rep_ms=10.0)
            line(f"  asym lanes={lanes} warps={warps} block_g={block_g}: {a_bytes / t / 1e9:.0f} GB/s "
                 f"{100 * a_bytes / t / 1e9 / clone:.1f}% {'exact' if ok else 'MISMATCH'}")
        q = quantize_int4(w, GROUP)
        m_bytes = 2 * (elems // 2 + 2 * elems // GROUP)
        words_clone = clone_gbps(q.packed)
        line(f"  packed words {n}x{k // 8} int32: clone {words_clone:.0f} GB/s")
        want_m = marlin_pack(Int4Weight(q.packed[:CHECK_ROWS], q.scale[:CHECK_ROWS], (CHECK_ROWS, k), GROUP), backend="torch")
        for block_k, warps in SWEEP_REPACK:
            qw, qs = marlin_repack(q.packed[:CHECK_ROWS], q.scale[:CHECK_ROWS], GROUP, block_k=block_k, num_warps=warps)
            ok = torch.equal(qw, want_m.qweight) and torch.equal(qs, want_m.scales)
            t = graph_seconds(lambda: marlin_repack(q.packed, q.scale, GROUP, block_k=block_k, num_warps=warps),
                              rep_ms=10.0)
            line(f"  repack block_k={block_k} warps={warps}: {m_bytes / t / 1e9:.0f} GB/s "
                 f"{100 * m_bytes / t / 1e9 / words_clone:.1f}% of the words' clone "
                 f"({100 * m_bytes / t / 1e9 / clone:.1f}% of the weight's) {'exact' if ok else 'MISMATCH'}")
        del w, q, outs
        torch.cuda.empty_cache()
    return out


def mse_sweep(jobs: int = 1) -> list[str]:
    """``SWEEP_MSE`` on every shape: GB/s, % of clone, bit-exact against the torch path with the same
    trials (the first ``CHECK_ROWS`` rows)."""
    out, used = [], {}
    run_parallel(_compile_task, [(k, "mse", cfg) for k in sorted({k for _, k in SHAPES}) for cfg in SWEEP_MSE], jobs)
    for n, k in SHAPES:
        w = torch.randn(n, k, device="cuda").to(torch.bfloat16)
        q_bytes = 2 * n * k + n * k // 2 + 2 * n * k // GROUP
        clone = clone_gbps(w)
        out.append(f"  {n}x{k} bf16: clone {clone:.0f} GB/s")
        print(out[-1], flush=True)
        check = w[:CHECK_ROWS]
        wants = {}
        for lanes, warps, block_g, ratios, regs in SWEEP_MSE:
            if ratios not in wants:
                want_s = _mse_scale_torch(check, GROUP, *([ratios] if ratios else [])).to(w.dtype)
                wants[ratios] = (want_s, quantize_int4_with_scale(check, want_s, backend="torch").packed)
            want_s, want_p = wants[ratios]
            kw = dict(block_g=block_g, num_warps=warps, lanes=lanes, ratios=ratios, max_registers=regs)
            before = len(compiled_kernels(_int4_quantize_pack_kernel))
            p, sc = int4_quantize_pack(w, GROUP, "mse", **kw)
            for c in compiled_kernels(_int4_quantize_pack_kernel)[before:]:  # compiled for this launch just now
                used[lanes, warps, block_g, ratios, regs] = f"{c.n_regs} registers, {c.n_spills} bytes spilled"
            ok = torch.equal(p[:CHECK_ROWS], want_p) and torch.equal(sc[:CHECK_ROWS], want_s)
            t = graph_seconds(lambda: int4_quantize_pack(w, GROUP, "mse", **kw), rep_ms=10.0)
            compiled = used.get((lanes, warps, block_g, ratios, regs), "compiled before the sweep")
            out.append(f"  mse trials={len(ratios) if ratios else 'RATIOS'} {ratios or ''} lanes={lanes} warps={warps} "
                       f"block_g={block_g} max_registers={regs} ({compiled}): {q_bytes / t / 1e9:.0f} GB/s "
                       f"{100 * q_bytes / t / 1e9 / clone:.1f}% {'exact' if ok else 'MISMATCH'}")
            print(out[-1], flush=True)
        del w
        torch.cuda.empty_cache()
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
    parser.add_argument("--jobs", type=int, default=8, help="processes compiling the sweep's kernels")
    parser.add_argument("--sweep-only", action="store_true", help="the sweep alone (no roofline, host, quality)")
    parser.add_argument("--mse-sweep", action="store_true", help="also the MSE kernel's launches and trial sets")
    args = parser.parse_args()
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    out = [f"# INT4 quantize+pack and Marlin repack — {device_name}, {datetime.date.today()}", ""]
    if args.sweep_only:
        emit_table(out + sweep(args.quick, args.jobs), args.out)
        return
    if not args.quality_only:
        title = f"torch {torch.__version__}; GB/s = (bytes read + written) / median CUDA-graph replay time"
        out += report(title, roofline_rows(args.quick), host_calls(), sweep(args.quick, args.jobs) if args.sweep else None)
        if args.mse_sweep:
            out += ["", "MSE launch configurations and trial sets:"] + mse_sweep(args.jobs)
    out += quality(args.device, args.rows)
    emit_table(out, args.out)


if __name__ == "__main__":
    main()
