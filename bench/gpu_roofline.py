"""Every kernel against ``torch.clone`` in one process, one table (run on a CUDA machine).

Each ``bench/gpu_<op>.py`` contributes ``roofline_rows(quick)`` (GB/s counting bytes read + written,
% of ``torch.clone`` of the same bytes measured in this process, relative error against the
reference, kernels timed without host overhead). This script runs them all and prints one Markdown
table; ``--out`` also writes it.

    python bench/gpu_roofline.py [--quick] [--out bench/results/roofline-h200-<date>.md]
"""

from __future__ import annotations

import argparse
import datetime
import importlib

import torch
import triton

from gpu_common import emit_table, roofline_table

SCRIPTS = ("gpu_fwht", "gpu_int4", "int4_asym", "gpu_lloyd", "gpu_hlwq")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few shapes per kernel")
    ap.add_argument("--only", nargs="+", choices=SCRIPTS, default=list(SCRIPTS))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    name = torch.cuda.get_device_name()
    only = "" if args.only == list(SCRIPTS) else " --only " + " ".join(args.only)
    rows = []
    for script in args.only:
        module = importlib.import_module(script)
        if hasattr(module, "roofline_rows"):
            rows += module.roofline_rows(args.quick)
            print(f"done: {script}", flush=True)
    emit_table([f"# Roofline, {name}, {datetime.date.today().isoformat()}", "",
                f"torch {torch.__version__}, triton {triton.__version__}; command: "
                f"`python bench/gpu_roofline.py{' --quick' if args.quick else ''}{only}`", "",
                *roofline_table(rows)], args.out)

if __name__ == "__main__":
    main()
