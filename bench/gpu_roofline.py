"""Every kernel against ``torch.clone`` in one process, one table (run on a CUDA machine).

Each ``bench/gpu_<op>.py`` contributes ``roofline_rows(quick)`` (GB/s counting bytes read + written,
% of ``torch.clone`` of the same bytes measured in this process, relative error against the
reference, kernels timed without host overhead). This script runs them all and prints one Markdown
table; ``--out`` also writes it. ``--host`` adds one table of the host time per public call (each
script's ``host_calls()``: small inputs, calls issued back to back, beside ``x.clone()`` and a bare
Triton launch on the same host).

    python bench/gpu_roofline.py [--quick] [--host | --host-only] [--out bench/results/roofline-h200-<date>.md]
"""

from __future__ import annotations

import argparse
import datetime
import importlib

import torch
import triton

from gpu_common import emit_table, host_table, machine_line, roofline_table

SCRIPTS = ("gpu_fwht", "gpu_int4", "int4_asym", "gpu_lloyd", "gpu_hlwq")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few shapes per kernel")
    ap.add_argument("--only", nargs="+", choices=SCRIPTS, default=list(SCRIPTS))
    ap.add_argument("--host", action="store_true", help="also the host time per public call")
    ap.add_argument("--host-only", action="store_true", help="only the host time per public call")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    name = torch.cuda.get_device_name()
    only = (" --host" if args.host else "") + (" --host-only" if args.host_only else "") + ("" if args.only == list(SCRIPTS) else " --only " + " ".join(args.only))
    rows, host = [], {}
    for script in args.only:
        module = importlib.import_module(script)
        if hasattr(module, "roofline_rows") and not args.host_only:
            rows += module.roofline_rows(args.quick)
            print(f"done: {script}", flush=True)
        if (args.host or args.host_only) and hasattr(module, "host_calls"):
            host.update(module.host_calls())
    emit_table([f"# Roofline, {name}, {datetime.date.today().isoformat()}", "",
                f"torch {torch.__version__}, triton {triton.__version__}; command: "
                f"`python bench/gpu_roofline.py{' --quick' if args.quick else ''}{only}`", "",
                f"GPU: {machine_line()}", "",
                *(roofline_table(rows) if rows else []), *(["", *host_table(host)] if host else [])], args.out)

if __name__ == "__main__":
    main()
