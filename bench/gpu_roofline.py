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

from gpu_common import emit_table

SCRIPTS = ("gpu_fwht", "gpu_int4", "int4_asym", "gpu_lloyd", "gpu_hlwq")


def _cell(value: object, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few shapes per kernel")
    ap.add_argument("--only", nargs="+", choices=SCRIPTS, default=list(SCRIPTS))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    name = torch.cuda.get_device_name()
    lines = [f"# Roofline, {name}, {datetime.date.today().isoformat()}", "",
             f"torch {torch.__version__}; command: `python bench/gpu_roofline.py{' --quick' if args.quick else ''}`", "",
             "| op | shape | dtype | GB/s | % clone | rel. err | note |", "|---|---|---|---|---|---|---|"]
    for script in args.only:
        module = importlib.import_module(script)
        if not hasattr(module, "roofline_rows"):
            continue
        for r in module.roofline_rows(args.quick):
            lines.append(f"| {r['op']} | {r['shape']} | {r['dtype']} | {_cell(r['gbps'], '.0f')} | "
                         f"{_cell(r['pct_clone'], '.1f')} | {_cell(r['rel_err'], '.2e')} | {r.get('note', '')} |")
        print(f"done: {script}", flush=True)
    emit_table(lines, args.out)


if __name__ == "__main__":
    main()
