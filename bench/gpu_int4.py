"""GPU benchmark of INT4 quantize+pack and Marlin repack (run on a CUDA machine), plus the error table.

Throughput: for 14336x4096, 4096x14336 and 16384x16384 (2**28 elements) BF16 weights, group 128,
GB/s counting bytes read plus bytes written, against ``torch.clone`` of the weight in the same
process, for: the fused kernel with absmax scales and with MSE scales, the Marlin repack (words and
scales) and, when the package is importable, compressed-tensors' own compress path (dynamic scales,
``quantize``, ``pack_to_int32``). Each output is checked against the torch path on the same device.

Quality: relative weight MSE ``Σ (w - ŵ)² / Σ w²`` (float64) of absmax and MSE scales on Gaussian and
Student-t (ν = 3, 5) matrices, group 128, and the reduction. Runs on CPU too (``--quality-only``).

    python bench/gpu_int4.py --out bench/results/int4-h100.md [--sweep]
    python bench/gpu_int4.py --quality-only --device cpu --rows 1024
"""

from __future__ import annotations

import argparse
import datetime

import torch

from gpu_common import bench_seconds, emit_table
from hlwq_kernels.ops.int4 import Int4Weight, dequantize_int4, quantize_int4
from hlwq_kernels.ops.int4_triton import int4_quantize_pack
from hlwq_kernels.ops.marlin import marlin_pack
from hlwq_kernels.ops.marlin_triton import marlin_repack

SHAPES = [(14336, 4096), (4096, 14336), (16384, 16384)]
GROUP = 128



def _ct_compress():
    """compressed-tensors' compress of one weight, or None when the package is not installed."""
    try:
        from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
        from compressed_tensors.quantization import QuantizationArgs
        from compressed_tensors.quantization.lifecycle.forward import quantize
        from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp
    except ImportError:
        return None
    args = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=GROUP)

    def compress(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, _ = compute_dynamic_scales_and_zp(w, args, module=None)
        return pack_to_int32(quantize(w, scale, None, args, dtype=torch.int8), 4), scale

    return compress


def throughput(sweep: bool) -> list[str]:
    ct = _ct_compress()
    lines = [
        "| shape (bf16) | clone GB/s | quantize absmax GB/s (% clone) | quantize mse GB/s (% clone) "
        "| Marlin repack GB/s (% clone) | compressed-tensors GB/s |",
        "|---|---|---|---|---|---|",
    ]
    for n, k in SHAPES:
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        elems = n * k
        scale_bytes = 2 * elems // GROUP
        q_bytes = 2 * elems + elems // 2 + scale_bytes
        m_bytes = 2 * (elems // 2 + scale_bytes)
        gbs = lambda nbytes, t: nbytes / t / 1e9  # noqa: E731
        clone = gbs(4 * elems, bench_seconds(lambda: w.clone()))

        ours = quantize_int4(w, GROUP, "absmax")
        torch_path = quantize_int4(w, GROUP, "absmax", backend="torch")
        assert torch.equal(ours.packed, torch_path.packed) and torch.equal(ours.scale, torch_path.scale)
        absmax = gbs(q_bytes, bench_seconds(lambda: quantize_int4(w, GROUP, "absmax")))
        mse = gbs(q_bytes, bench_seconds(lambda: quantize_int4(w, GROUP, "mse")))
        del torch_path

        m = marlin_pack(ours)
        assert torch.equal(m.qweight, marlin_pack(ours, backend="torch").qweight)
        marlin = gbs(m_bytes, bench_seconds(lambda: marlin_pack(ours)))

        ct_col = "not installed"
        if ct is not None:
            packed, scale = ct(w)
            assert torch.equal(scale, ours.scale) and torch.equal(packed, ours.packed)
            ct_col = f"{gbs(q_bytes, bench_seconds(lambda: ct(w))):.0f}"
        pct = lambda x: f"{x:.0f} ({100 * x / clone:.0f}%)"  # noqa: E731
        lines.append(f"| {n}x{k} | {clone:.0f} | {pct(absmax)} | {pct(mse)} | {pct(marlin)} | {ct_col} |")
        print(lines[-1], flush=True)
        if sweep:
            for block_n in (4, 8, 16, 32):
                for warps in (4, 8):
                    t = bench_seconds(lambda: int4_quantize_pack(w, GROUP, "absmax", block_n=block_n, num_warps=warps))
                    print(f"  quantize block_n={block_n} warps={warps}: {gbs(q_bytes, t):.0f} GB/s", flush=True)
            for block_k in (4, 8, 16, 32):
                for warps in (2, 4, 8):
                    t = bench_seconds(lambda: marlin_repack(ours.packed, block_k=block_k, num_warps=warps))
                    print(f"  repack block_k={block_k} warps={warps}: {gbs(elems, t):.0f} GB/s", flush=True)
        del w, ours, m
        torch.cuda.empty_cache()
    return lines


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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the Markdown tables here")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", type=int, default=4096, help="rows of the quality matrices (4096 columns)")
    parser.add_argument("--quality-only", action="store_true")
    parser.add_argument("--sweep", action="store_true", help="also time other tile sizes")
    args = parser.parse_args()
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    out = [f"# INT4 quantize+pack and Marlin repack — {device_name}, {datetime.date.today()}", ""]
    if not args.quality_only:
        out += [f"torch {torch.__version__}; GB/s = (bytes read + written) / median time", ""]
        out += throughput(args.sweep) + [""]
    out += quality(args.device, args.rows)
    emit_table(out, args.out)


if __name__ == "__main__":
    main()
