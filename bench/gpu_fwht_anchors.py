"""``hlwq_kernels.fwht`` beside Dao's fast-hadamard-transform and HadaCore, in one process (run on a CUDA machine).

For each size n and dtype: 2**28 elements (rows = 2**28 // n, the inputs of ``bench/gpu_fwht.py``),
one input shared by every implementation, normalized transform along the last dim. GB/s = bytes
read + written over the median time of CUDA-graph replays of each public call (its output
allocation included, no host overhead in the timed region), against ``torch.clone`` of the same
tensor in the same process; relative error against float64 on the first 256 rows (the allocator is
poisoned with NaN before each checked call).

- ours: ``fwht(x)`` (normalized by default); float16, bfloat16, float32.
- Dao (module ``fast_hadamard_transform``, github.com/Dao-AILab/fast-hadamard-transform):
  ``hadamard_transform(x, 1/sqrt(n))`` for powers of two up to 2^15 and
  ``hadamard_transform_{K}N(x, 1/sqrt(n))`` for n = K·2^m, K in 12, 20, 28, 40, up to K·2^10;
  float16, bfloat16, float32. Its K·2^m transforms use its own order-K matrix, not ours, so their
  reference is ``x @ A / sqrt(n)`` with A Dao's own fp32 transform of the identity at scale 1
  (every output is one ±1 entry, so A is exact; the script checks that A is ±1 and orthogonal).
- HadaCore (module ``faster_hadamard_transform``, github.com/pytorch-labs/applied-ai,
  kernels/cuda/inference/hadamard_transform): ``hadamard_transform(x)``, normalized inside, powers
  of two up to 2^15, float16 and bfloat16 only.

Powers of two are the Sylvester matrix for all three (the float64 reference is ``fwht`` on the torch
path). The anchors are built on the machine from their own sources, which are not part of this
repository, and imported from PYTHONPATH; an anchor that does not import is named in one line and
its columns stay empty. ``--passes 2`` times everything twice in the process (the second pass in
the reverse order of implementations) to show the run-to-run spread.

    python bench/gpu_fwht_anchors.py --compile-only --jobs 12      # our kernels into Triton's cache
    PYTHONPATH=$PWD:$DAO_SRC:$HADACORE_SRC python bench/gpu_fwht_anchors.py --passes 2 --out F.md
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib
import math
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Callable

import torch

from gpu_common import clone_gbps, emit_table, graph_seconds, machine_line, poison_allocator, rel_err, run_parallel
from gpu_fwht import CHECK_ROWS, POW2, _input
from hlwq_kernels import fwht, hadamard_factors

DAO_28N = [3584, 14336, 28672]
DAO_ORDERS = (12, 20, 28, 40)  # K of Dao's hadamard_transform_{K}N
MAX_POW2 = 1 << 15  # the largest power of two (or power-of-two factor 2^10 beside K) the anchors take
ANCHOR_MODULES = {"Dao": "fast_hadamard_transform.fast_hadamard_transform_interface",
                  "HadaCore": "faster_hadamard_transform"}
NAMES = ("ours", *ANCHOR_MODULES)


@dataclass(frozen=True)
class Impl:
    """One implementation at one size: its normalized transform and the float64 reference it is checked against."""

    name: str
    transform: Callable[[torch.Tensor], torch.Tensor]
    reference: Callable[[torch.Tensor], torch.Tensor]


def load_anchors() -> dict[str, ModuleType]:
    """Import the anchors found on the path; print one line for each that is missing (its columns are skipped)."""
    found = {}
    for name, module in ANCHOR_MODULES.items():
        try:
            found[name] = importlib.import_module(module)
        except (ImportError, OSError) as exc:
            print(f"{name}: module {module} not importable ({type(exc).__name__}: {exc}); its columns are skipped")
    return found


def _sylvester_reference(rows: torch.Tensor) -> torch.Tensor:
    return fwht(rows, backend="torch")


def _is_pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def dao_function(module: ModuleType, n: int) -> Callable | None:
    """Dao's transform for rows of length n (its size limits), or None where it has none."""
    if _is_pow2(n):
        return module.hadamard_transform if 8 <= n <= MAX_POW2 else None
    k, p = hadamard_factors(n)
    return getattr(module, f"hadamard_transform_{k}N") if k in DAO_ORDERS and 4 <= p <= 1024 else None


@functools.lru_cache(maxsize=1)
def dao_matrix(module: ModuleType, n: int) -> torch.Tensor:
    """A with Dao's transform(x, 1) = x @ A, from the fp32 identity (exact: each output is one ±1
    entry); raises if A is not ±1 with A Aᵀ = n I on its first 64 rows."""
    a = dao_function(module, n)(torch.eye(n, device="cuda"), 1.0)
    head = a[:64].double() @ a.double().T
    if not bool((a.abs() == 1).all()) or not torch.equal(head, n * torch.eye(64, n, device="cuda", dtype=torch.float64)):
        raise ValueError(f"Dao's transform at n={n} is not a ±1 orthogonal matrix")
    return a


def implementations(n: int, dtype: torch.dtype, anchors: dict[str, ModuleType]) -> list[Impl]:
    """Ours, then every anchor that supports (n, dtype)."""
    scale = 1 / math.sqrt(n)
    impls = [Impl("ours", fwht, _sylvester_reference)]
    dao = anchors.get("Dao")
    fn = dao_function(dao, n) if dao is not None else None
    if fn is not None:
        ref = _sylvester_reference if _is_pow2(n) else lambda rows: rows @ dao_matrix(dao, n).double() * scale
        impls.append(Impl("Dao", lambda x: fn(x, scale), ref))
    hadacore = anchors.get("HadaCore")
    if hadacore is not None and _is_pow2(n) and 2 <= n <= MAX_POW2 and dtype in (torch.float16, torch.bfloat16):
        impls.append(Impl("HadaCore", hadacore.hadamard_transform, _sylvester_reference))
    return impls


def measure(x: torch.Tensor, impl: Impl, rep_ms: float) -> dict:
    """GB/s, relative error and finiteness of one implementation on x; a failure is reported, not raised."""
    nbytes = 2 * x.numel() * x.element_size()
    try:
        poison_allocator(nbytes // 2)
        y = impl.transform(x)
        torch.cuda.synchronize()
        finite = bool(torch.isfinite(y).all())
        err = rel_err(y[:CHECK_ROWS], impl.reference(x[:CHECK_ROWS].double()))
        del y
        gbps = nbytes / graph_seconds(lambda: impl.transform(x), rep_ms) / 1e9
    except Exception as exc:  # an anchor that refuses a size or fails to launch keeps the script going
        return {"error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:100]}"}
    return {"gbps": gbps, "err": err, "finite": finite}


def run_pass(cases: list[tuple[int, torch.dtype]], anchors: dict[str, ModuleType], rep_ms: float,
             reverse: bool) -> list[dict]:
    """One timing of every case: clone, then each implementation (in reverse order when ``reverse``)."""
    rows = []
    for n, dtype in cases:
        x = _input(n, dtype)
        impls = implementations(n, dtype, anchors)
        row = {"n": n, "dtype": dtype, "clone": clone_gbps(x)}
        for impl in reversed(impls) if reverse else impls:
            row[impl.name] = measure(x, impl, rep_ms)
        print({k: v for k, v in row.items()}, flush=True)
        rows.append(row)
        del x
        torch.cuda.empty_cache()
    return rows


def _gbps(row: dict, name: str) -> float | None:
    return row["clone"] if name == "clone" else row.get(name, {}).get("gbps")


def margin(row: dict) -> tuple[float, str] | None:
    """Ours over the fastest anchor of the row (GB/s ratio - 1) and that anchor's name; None without one."""
    timed = {name: gbps for name in ANCHOR_MODULES if (gbps := _gbps(row, name)) is not None}
    if not timed or _gbps(row, "ours") is None:
        return None
    best = max(timed, key=timed.get)
    return row["ours"]["gbps"] / timed[best] - 1, best


def _cells(row: dict, name: str) -> str:
    c = row.get(name)
    if c is None:
        return "– | – | –"
    if "error" in c:
        return f"failed: {c['error']} | – | –"
    flag = "" if c["finite"] else " NON-FINITE"
    return f"{c['gbps']:.0f} | {100 * c['gbps'] / row['clone']:.1f}% | {c['err']:.2e}{flag}"


def _ahead(row: dict) -> str:
    m = margin(row)
    if m is None:
        return "– (no anchor)"
    return f"{'yes' if m[0] > 0 else 'NO'} {100 * m[0]:+.1f}% vs {m[1]}"


def table(rows: list[dict], title: str) -> list[str]:
    """Markdown table of one pass."""
    head = " | ".join(f"{name} GB/s | {name} % clone | {name} rel. err" for name in NAMES)
    lines = [title, "", f"| n | K·2^m | dtype | clone GB/s | {head} | ahead? |", "|---" * (5 + 3 * len(NAMES)) + "|"]
    for r in rows:
        k, p = hadamard_factors(r["n"])
        cells = " | ".join(_cells(r, name) for name in NAMES)
        lines.append(f"| {r['n']} | {k}·{p} | {str(r['dtype']).removeprefix('torch.')} | {r['clone']:.0f} | {cells} | "
                     f"{_ahead(r)} |")
    return lines


def verdict_table(passes: list[list[dict]]) -> list[str]:
    """Per case: ours over the fastest anchor in each pass, the largest change between passes of the
    GB/s of clone or of any implementation (the run-to-run spread), and whether ours is ahead in every
    pass ("within the spread" where the mean margin is smaller than the spread)."""
    lines = ["## Ahead in every pass?", "",
             "| n | dtype | " + " | ".join(f"margin pass {i + 1}" for i in range(len(passes))) + " | spread | verdict |",
             "|---|---|" + "---|" * len(passes) + "---|---|"]
    for rows in zip(*passes):
        margins = [margin(r) for r in rows]
        if any(m is None for m in margins):
            continue
        values = [m[0] for m in margins]
        timed = [[_gbps(r, name) for r in rows] for name in ("clone", *NAMES)]
        spread = max((max(s) - min(s)) / min(s) for s in timed if None not in s)
        mean = sum(values) / len(values)
        verdict = "ahead" if min(values) > 0 else "behind" if max(values) < 0 else "mixed"
        if abs(mean) < spread:
            verdict += " (within the spread)"
        lines.append(f"| {rows[0]['n']} | {str(rows[0]['dtype']).removeprefix('torch.')} | "
                     + " | ".join(f"{100 * v:+.1f}% vs {m[1]}" for v, m in zip(values, margins))
                     + f" | {100 * spread:.1f}% | {verdict} |")
    return lines


def _compile_task(case: tuple[int, str]) -> None:
    """Run ``fwht`` once at a benchmark shape (fills Triton's on-disk cache)."""
    n, dtype_name = case
    fwht(_input(n, getattr(torch, dtype_name)))
    torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None, help="comma-separated n (default: powers of two 128..32768 and "
                                                      + ", ".join(map(str, DAO_28N)) + ")")
    parser.add_argument("--dtypes", default="bfloat16,float32", help="comma-separated: float16, bfloat16, float32")
    parser.add_argument("--passes", type=int, default=1, help="time everything this many times in this process")
    parser.add_argument("--rep-ms", type=float, default=20.0, help="milliseconds of calls per CUDA graph")
    parser.add_argument("--jobs", type=int, default=1, help="processes that compile our kernels first")
    parser.add_argument("--compile-only", action="store_true", help="only compile our kernels (with --jobs) and exit")
    parser.add_argument("--out", default=None, help="write the Markdown tables here (after every pass)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else POW2 + DAO_28N
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    cases = [(n, dt) for n in sizes for dt in dtypes]
    if not torch.cuda.is_available():
        load_anchors()
        print("no CUDA device: nothing timed")
        return
    if args.jobs > 1 or args.compile_only:
        run_parallel(_compile_task, [(n, str(dt).removeprefix("torch.")) for n, dt in cases], args.jobs)
        if args.compile_only:
            return
    anchors = load_anchors()
    head = [f"# FWHT beside Dao and HadaCore on {torch.cuda.get_device_name()} ({datetime.date.today()}), "
            "2^28 elements, one process, GB/s = (read + write) / median CUDA-graph time", "",
            f"- {machine_line()}", f"- torch {torch.__version__}, Triton {importlib.import_module('triton').__version__}",
            *(f"- {name}: {getattr(anchors.get(name), '__file__', 'not importable: columns empty')}" for name in ANCHOR_MODULES),
            f"- command: python bench/gpu_fwht_anchors.py {' '.join(sys.argv[1:])}", ""]
    passes: list[list[dict]] = []
    for i in range(args.passes):
        passes.append(run_pass(cases, anchors, args.rep_ms, reverse=i % 2 == 1))
        lines = list(head)
        for j, rows in enumerate(passes):
            order = "reverse order" if j % 2 else "ours first"
            lines += table(rows, f"## Pass {j + 1} of {args.passes} ({order})") + [""]
        if len(passes) > 1:
            lines += verdict_table(passes)
        emit_table(lines, args.out)


if __name__ == "__main__":
    main()
