"""GPU roofline benchmark of ``hlwq_kernels.fwht`` (run on a CUDA machine).

For each size n and dtype: 2**28 elements (rows = 2**28 // n), normalized transform along the last
dim. GB/s = bytes read + written over the median time of CUDA-graph replays of the public ``fwht()``
call (no host overhead in the timed region), against ``torch.clone`` of the same number of bytes in
the same process (measured once per element count and dtype); relative error against float64 on
the first 256 rows (the output buffer is poisoned with NaN first). The host overhead of one
``fwht()`` call is measured separately, on a tiny input.

    python bench/gpu_fwht.py --out bench/results/fwht-h200-DATE.md     # the library's launch table
    python bench/gpu_fwht.py --sweep 8192,16384 --jobs 14 --out F    # also time alternative configurations
    python bench/gpu_fwht.py --sizes 3584,14336 --dtypes bfloat16 --variants signs --sweep 3584,14336 --sweep-limit 6
    python bench/gpu_fwht.py --sizes 32768 --dtypes bfloat16 --variants '' --sweep 32768 --split-bits 5,7
        # also powers of two through the dense kernel: Sylvester H_{2^a} on the tensor cores, a = 5 and 7
    python bench/gpu_fwht.py --sizes 4864 --variants '' --sweep 4864 --dense-configs F.json   # candidates from a file
    python bench/gpu_fwht.py --sizes 32768 --variants '' --signs-sizes 32768 --blocks 32768:2048,32768:16384
        # signs= and block_size=b of rows of n, with and without a sign vector of length n

``roofline_rows(quick)`` returns the same measurements as dicts for ``bench/gpu_roofline.py``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import re
from typing import Callable

import torch

from gpu_common import (
    clone_gbps, emit_table, graph_seconds, host_table, planned_each_call, poison_allocator, rel_err, roofline_row,
    run_parallel,
)
from hlwq_kernels import fwht, hadamard_factors, random_signs
from hlwq_kernels.ops import fwht as fwht_module, fwht_triton
from hlwq_kernels.ops.fwht_plan import DenseConfig, PaleyConfig, Pow2Config, SplitConfig, kernel_plan
from hlwq_kernels.ops.fwht_triton import fwht_rows_triton, sign_bit_mask
from hlwq_kernels.ops.hadamard import paley2_core

POW2 = [128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
LLM = [3584, 4864, 8960, 9728, 11008, 13824, 14336, 17408, 18432, 18944, 27648, 28672, 29568]
QUICK = [128, 1024, 4096, 16384, 32768, 3584, 14336, 11008]
DTYPES = (torch.bfloat16, torch.float32)
TOTAL = 1 << 28
CHECK_ROWS = 256


def _block_variants(n: int, b: int) -> list[tuple[int, str]]:
    """The (n, variant) cases of block_size=b on rows of n: without signs and with a sign vector of length n."""
    return [(n, f"block{b}"), (n, f"block{b}+signs")]


# (n, variant) rows that check block_size= and signs= run at the speed of the plain transform; a variant is
# "signs", "block<b>" (block_size=b) or "block<b>+signs" (block_size=b, one sign vector of length n)
VARIANTS = [(n, "signs") for n in POW2 + LLM] + [
    case for n, b in ((4096, 16), (4096, 128), (32768, 2048), (32768, 16384), (14336, 3584), (28672, 14336))
    for case in _block_variants(n, b)]


def _block(n: int, variant: str) -> int:
    """The block size of a variant of rows of length n (n without block_size=)."""
    found = re.search(r"block(\d+)", variant)
    return int(found.group(1)) if found else n


def _input(n: int, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator(device="cuda").manual_seed(n)
    return torch.randn(TOTAL // n, n, device="cuda", generator=gen).to(dtype)


def _call(
    x: torch.Tensor, variant: str, config: Pow2Config | DenseConfig | SplitConfig | PaleyConfig | None
) -> Callable[[], torch.Tensor]:
    n = x.shape[1]
    b = _block(n, variant)
    signs = random_signs(n, 1, device="cuda") if "signs" in variant else None
    if config is not None:
        bits = None if signs is None else sign_bit_mask(signs, x.element_size())
        return lambda: fwht_rows_triton(x, b, False, 1 / math.sqrt(b), bits, config)
    kw: dict = {"block_size": b} if b != n else {}
    if signs is not None:
        kw["signs"] = signs
        fwht(x[:1], **kw)  # checks the signs once (a sync) before any graph capture
    return lambda: fwht(x, **kw)


def _reference(x: torch.Tensor, variant: str) -> torch.Tensor:
    n = x.shape[1]
    b = _block(n, variant)
    kw: dict = {"block_size": b} if b != n else {}
    if "signs" in variant:
        kw["signs"] = random_signs(n, 1, device="cuda").double()
    return fwht(x[:CHECK_ROWS].double(), backend="torch", **kw)


def _describe(n: int, dtype: torch.dtype, config, signs: bool) -> str:
    plan = kernel_plan(n, torch.empty(0, dtype=dtype).element_size(), config, signs, dtype == torch.float16)
    cfg = config or "table"
    meta = dict(plan.meta)
    phases = 1 << meta.get("PHASE_BITS", 0)
    return f"{plan.kernel} rows/tile={plan.tile_rows} warps={plan.num_warps} stages={plan.stages} " \
           f"pps={plan.programs_per_sm} prefetch={int(plan.prefetch)} maxregs={plan.max_regs} " \
           f"{'words=1 ' if plan.words else ''}{'rows_first=1 ' if meta.get('ROWS_FIRST') else ''}" \
           f"{'H_K in registers ' if plan.kernel == 'pow2' and meta.get('K', 1) > 1 else ''}" \
           f"{'Paley core ' if meta.get('PALEY') else ''}" \
           f"{'load_last ' if meta.get('LOAD_LAST') else ''}" \
           f"{'pair apart ' if meta.get('PAIR_APART') else ''}" \
           f"{'wide store ' if meta.get('STORE_C', 1) > meta.get('C', 1) else ''}" \
           f"{f'bulk={plan.bulk} ' if plan.bulk else ''}" \
           f"{'hold_signs ' if plan.hold_signs else ''}" \
           f"{f'phases={phases} ' if phases > 1 else ''}" \
           f"conversions={plan.conversions}" + (f" ({tuple(getattr(cfg, 'launch', cfg))})" if config else "")


_CLONE: dict[tuple[int, torch.dtype], float] = {}


def measure(n: int, dtype: torch.dtype, configs: list, variant: str = "", rep_ms: float = 20.0) -> list[dict]:
    """Time the library (config None) and any candidate configurations on one input."""
    x = _input(n, dtype)
    ref = _reference(x, variant)
    clone = _CLONE.get((x.numel(), dtype)) or _CLONE.setdefault((x.numel(), dtype), clone_gbps(x))
    nbytes = 2 * x.numel() * x.element_size()
    results = []
    for config in configs:
        fn = _call(x, variant, config)
        try:
            poison_allocator(nbytes // 2)
            y = fn()
            torch.cuda.synchronize()
            finite = bool(torch.isfinite(y).all())
            err = rel_err(y[:CHECK_ROWS], ref)
            del y
            gbps = nbytes / graph_seconds(fn, rep_ms) / 1e9
        except Exception as exc:  # a candidate that fails to compile or launch is reported, not fatal
            results.append({"n": n, "dtype": dtype, "variant": variant, "config": config, "error": repr(exc)[:300]})
            continue
        b = _block(n, variant)
        results.append({
            "n": n, "dtype": dtype, "variant": variant, "config": config, "clone": clone, "gbps": gbps,
            "err": err, "finite": finite, "desc": _describe(b, x.dtype, config, "signs" in variant),
        })
    del x
    torch.cuda.empty_cache()
    return results


# Candidate launch configurations of the sweep, by kernel and element size: (warps, values per
# thread, stages, programs per SM[, register prefetch, register cap]) for the power-of-two kernel,
# (warps, values per thread, stages, programs per SM, KI, KO[, prefetch, register cap]) for the dense one.
_POW2_CANDIDATES = {  # rows of 2^14 and more; shorter rows
    True: [(16, 64, 1, 1, True, 128), (8, 64, 1, 1, True), (8, 64, 1, 0), (8, 64, 1, 2, True, 128), (16, 64, 1, 0),
           (16, 32, 1, 0), (8, 64, 2, 2), (16, 64, 2, 1), (16, 32, 2, 2), (8, 32, 1, 2, True), (16, 32, 1, 1, True),
           (16, 32, 1, 2, True, 64)],
    False: [(4, 64, 1, 0), (4, 32, 1, 0), (8, 64, 1, 0), (4, 64, 2, 4), (4, 64, 1, 3, True), (4, 64, 1, 4, True, 128),
            (4, 32, 1, 6, True), (8, 64, 1, 2, True), (8, 32, 1, 2, True, 0, True), (4, 32, 1, 4, True, 0, True)],
}
_DENSE_CANDIDATES = [(4, 64, 1, 3, 0, 0, True), (8, 64, 1, 1, 0, 0, True), (4, 64, 1, 4, 0, 0, True, 128),
                     (8, 64, 1, 2, 0, 0, True, 128), (4, 32, 1, 6, 0, 0, True), (16, 64, 1, 1, 0, 0, True, 128),
                     (8, 32, 1, 3, 0, 0, True), (16, 32, 1, 1, 0, 0, True), (8, 64, 3, 2, 32, 128),
                     (4, 64, 3, 2, 64, 128)]

# H_K in registers (K * 2^m with K <= 128; the launches the planner cannot take for a size are skipped): warps, a
# persistent grid prefetching the next row into registers or into L2, loading it after the store (load_last),
# storing 16 bytes an access (wide_store), and rows through one or two shared-memory buffers filled by the bulk copy
# engine (bulk)
_REGISTER_CANDIDATES = [(2, 64, 1, 0), (4, 64, 1, 0), (8, 64, 1, 0), (16, 64, 1, 0), (8, 64, 1, 1, True),
                        (4, 64, 1, 2, False, 0, False, True), (8, 64, 1, 1, False, 0, False, True),
                        (16, 64, 1, 1, False, 0, False, True), (8, 64, 1, 1, False, 0, False, True, False, True),
                        (4, 64, 1, 2, False, 0, False, True, False, True),
                        (4, 64, 1, 0, False, 0, False, False, False, False, True),
                        (8, 64, 1, 1, False, 0, False, True, False, False, True),
                        (8, 64, 1, 1, False, 0, False, False, True, False, True, 2),
                        (8, 64, 1, 1, False, 0, False, False, False, False, True, 1),
                        (4, 64, 1, 2, False, 0, False, False, False, False, False, 1)]

# dense launches of a power-of-two size split as H_{2^a} (tensor cores) times butterflies (--split-bits a)
_SPLIT_CANDIDATES = [(8, 64, 1, 1, 0, 0, True), (16, 64, 1, 1, 0, 0, True, 128)]


def sweep_configs(n: int, elem_size: int, limit: int = 10, split_bits: tuple[int, ...] = ()) -> list:
    """Alternative launch configurations worth timing for rows of length n (distinct plans only,
    16 to 128 fp32 values per thread, at most ``limit``), then for a power of two its splits with
    2^a (a in ``split_bits``) on the tensor cores, and for an H_K of the Paley II form the launches through
    its core (``PaleyConfig``: the register candidates, also with the pair bit apart, and the dense ones that do not
    prefetch)."""
    k, p = hadamard_factors(n)
    if k == 1:
        cands = [Pow2Config(*c) for c in _POW2_CANDIDATES[p >= 1 << 14]]
        extra = [SplitConfig(a, DenseConfig(*c)) for a in split_bits for c in _SPLIT_CANDIDATES]
    else:
        cands = [Pow2Config(*c) for c in _REGISTER_CANDIDATES] + [DenseConfig(*c) for c in _DENSE_CANDIDATES]
        paley = paley2_core(k) is not None
        extra = [PaleyConfig(c) for c in cands if paley and (isinstance(c, Pow2Config) or not c.prefetch)]
        extra += [PaleyConfig(c, pair_apart=True) for c in cands if paley and isinstance(c, Pow2Config)]
    seen = {kernel_plan(n, elem_size)}

    def distinct(configs: list) -> list:
        out = []
        for cfg in configs:
            try:
                plan = kernel_plan(n, elem_size, cfg)
            except ValueError:  # not a launch this size can take
                continue
            per_thread = plan.tile_rows * n // plan.k_chunks // (32 * plan.num_warps)
            if 16 <= per_thread <= 128 and plan not in seen:
                seen.add(plan)
                out.append(cfg)
        return out

    return distinct(cands)[:limit] + distinct(extra)


def _given_config(fields: list) -> Pow2Config | DenseConfig | SplitConfig | PaleyConfig:
    """A --dense-configs entry: DenseConfig fields, [k_bits, [DenseConfig fields]] for a SplitConfig,
    ["pow2", [Pow2Config fields]] (for a K * 2^m size: H_K in registers) or ["paley", entry] (for a K of the Paley
    II form: its core, on the tensor cores for DenseConfig fields, in registers for ["pow2", [...]]; ["paley",
    ["pow2", [...]], true]: with the pair bit apart, ``PaleyConfig.pair_apart``)."""
    if fields[0] == "paley":
        return PaleyConfig(_given_config(fields[1]), *fields[2:])
    if len(fields) == 2 and isinstance(fields[1], list):
        if fields[0] == "pow2":
            return Pow2Config(*fields[1])
        return SplitConfig(fields[0], DenseConfig(*fields[1]))
    return DenseConfig(*fields)


def given_candidates(paths: list[str]) -> dict[str, list]:
    """The --dense-configs files' candidates by case key, the files merged: a case in several files takes the
    candidates of all of them, in order, each once (an empty list only keeps the sweep from generating some)."""
    given: dict[str, list] = {}
    for path in paths:
        with open(path) as f:
            entries = json.load(f)
        for key, cfgs in entries.items():
            case = given.setdefault(key, [])
            case += [c for c in map(_given_config, cfgs) if c not in case]
    return given


def _given_candidates(given: dict, b: int, dtype: torch.dtype, variant: str) -> list | None:
    """The --dense-configs candidates of a case: its "n:dtype:variant" entry, else its "n:dtype" one; none
    where the file has entries for other variants of n:dtype only; None where it has none for n:dtype."""
    name = f"{b}:{str(dtype).removeprefix('torch.')}"
    for key in (f"{name}:{variant}", name):
        if key in given:
            return given[key]
    return [] if any(key.startswith(name + ":") for key in given) else None


def _compile_task(task: tuple) -> None:
    """Run one configuration once at its benchmark shape (fills the on-disk Triton cache)."""
    n, dtype_name, variant, config = task
    x = _input(n, getattr(torch, dtype_name))
    try:
        _call(x, variant, config)()
        torch.cuda.synchronize()
    except Exception:  # measure() reports the error
        pass


def host_calls() -> dict[str, Callable[[], object]]:
    """Public fwht() calls on a tiny bf16 input (their host time per call) and ``x.clone()``."""
    x = torch.randn(4, 1024, device="cuda", dtype=torch.bfloat16)
    signs = random_signs(1024, 0, device="cuda")
    return {"fwht(x)": lambda: fwht(x), "fwht(x), planned each call": planned_each_call(lambda: fwht(x), fwht_module, fwht_triton),
            "fwht(x, signs=s)": lambda: fwht(x, signs=signs),
            "fwht(x, block_size=128)": lambda: fwht(x, block_size=128), "x.clone()": lambda: x.clone()}


def _cases(sizes: list[int], dtypes, with_variants: bool, signs_sizes: tuple[int, ...] = (),
           blocks: tuple[tuple[int, int], ...] = ()) -> list[tuple]:
    """(n, dtype, variant) cases: the plain transform at ``sizes``, VARIANTS (``with_variants``), signs= at
    ``signs_sizes`` and, for each (n, b) of ``blocks``, block_size=b with and without signs of length n."""
    cases = [(n, dt, "") for dt in dtypes for n in sizes]
    if with_variants:
        cases += [(n, dt, v) for dt in dtypes for n, v in VARIANTS]
    cases += [(n, dt, "signs") for dt in dtypes for n in signs_sizes if (n, "signs") not in VARIANTS]
    extra = [case for n, b in blocks for case in _block_variants(n, b) if case not in VARIANTS]
    return cases + [(n, dt, v) for dt in dtypes for n, v in extra]


def roofline_rows(quick: bool = False) -> list[dict]:
    """The library's FWHT at every benchmark size (QUICK sizes when ``quick``), as combined-table rows."""
    rows = []
    for n, dtype, variant in _cases(QUICK if quick else POW2 + LLM, DTYPES, not quick):
        for r in measure(n, dtype, [None], variant):
            if "error" in r:
                rows.append({"op": "fwht", "shape": f"{TOTAL // n}x{n}", "dtype": str(dtype), "gbps": None,
                             "pct_clone": None, "rel_err": None, "note": r["error"]})
                continue
            k, p = hadamard_factors(n)
            note = f"n={k}*{p}" + (f", {variant}" if variant else "") + f"; {r['desc']}"
            rows.append(roofline_row("fwht", (TOTAL // n, n), dtype, r["gbps"], r["clone"], r["err"], note))
    return rows


def _target(n: int, variant: str) -> float:
    k, _ = hadamard_factors(_block(n, variant))
    return 80.0 if k > 1 or n > 16384 else 90.0


def _table(results: list[dict], title: str) -> list[str]:
    lines = [title, "", "| n | K·2^m | dtype | variant | clone GB/s | fwht GB/s | % clone | target | rel. err | launch |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        k, p = hadamard_factors(r["n"])
        dt = str(r["dtype"]).removeprefix("torch.")
        if "error" in r:
            lines.append(f"| {r['n']} | {k}·{p} | {dt} | {r['variant']} | failed: {r['error']} ||||||")
            continue
        pct = 100 * r["gbps"] / r["clone"]
        target = _target(r["n"], r["variant"])
        flag = "" if r["finite"] else " NON-FINITE"
        lines.append(f"| {r['n']} | {k}·{p} | {dt} | {r['variant'] or '-'} | {r['clone']:.0f} | {r['gbps']:.0f} | "
                     f"{pct:.1f}% | {'met' if pct >= target else 'MISSED'} ({target:.0f}%) | {r['err']:.2e}{flag} | "
                     f"{r['desc']} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--sweep", default="", help="comma-separated n: also time alternative launch configurations "
                                                    "(of the plain transform and of its signs= / block_size= variants)")
    parser.add_argument("--variants", default=",".join(sorted({v for _, v in VARIANTS})),
                        help="comma-separated variants of VARIANTS to time too, at its sizes among --sizes ('' for none)")
    parser.add_argument("--sizes", default=None, help="comma-separated n (default: powers of two and LLM sizes)")
    parser.add_argument("--signs-sizes", default="", help="comma-separated n: also time the signs= variant there")
    parser.add_argument("--blocks", default="", help="comma-separated n:b: also time block_size=b on rows of n, with "
                                                     "and without a sign vector of length n")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--sweep-dtypes", default=None, help="dtypes the sweep covers (default: --dtypes)")
    parser.add_argument("--sweep-limit", type=int, default=10, help="candidate configurations per case at most")
    parser.add_argument("--split-bits", default="", help="comma-separated a: the sweep also runs swept powers of two "
                                                         "through the dense kernel with H_{2^a} on the tensor cores")
    parser.add_argument("--jobs", type=int, default=1, help="processes that compile the kernels first")
    parser.add_argument("--compile-timeout", type=float, default=120.0,
                        help="seconds one configuration may take to compile (with --jobs > 1); one that takes "
                             "longer is reported as failed and not timed")
    parser.add_argument("--rep-ms", type=float, default=20.0)
    parser.add_argument("--dense-configs", default=None,
                        help='JSON files {"n:dtype": [DenseConfig fields, ...]}, comma-separated (a case in several '
                             "takes the candidates of all): the sweep's candidates for those cases (e.g. pruned by "
                             "registers and spills from an sm_90 compile on a CPU); an entry "
                             "[k_bits, [DenseConfig fields]] is a SplitConfig (k_bits of 2^m in the dense product), "
                             '["pow2", [Pow2Config fields]] H_K in registers, ["paley", <one of those>] a '
                             "PaleyConfig (the Paley II core of H_K); "
                             'a key "n:dtype:variant" (e.g. "8960:bfloat16:signs") holds the candidates of that '
                             "variant alone")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else POW2 + LLM
    swept = {int(s) for s in args.sweep.split(",") if s}
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    sweep_dtypes = [getattr(torch, d) for d in (args.sweep_dtypes or args.dtypes).split(",")]
    given = given_candidates(args.dense_configs.split(",")) if args.dense_configs else {}
    split_bits = tuple(int(a) for a in args.split_bits.split(",") if a)
    plans = {}
    signs_sizes = tuple(int(n) for n in args.signs_sizes.split(",") if n)
    blocks = tuple(tuple(int(f) for f in nb.split(":")) for nb in args.blocks.split(",") if nb)
    asked = {(n, "signs") for n in signs_sizes} | {case for n, b in blocks for case in _block_variants(n, b)}
    for n, dt, v in _cases(sizes, dtypes, True, signs_sizes, blocks):
        if v and (v not in args.variants.split(",") or n not in sizes) and (n, v) not in asked:
            continue
        b = _block(n, v)
        sweep = n in swept and dt in sweep_dtypes
        cands = _given_candidates(given, b, dt, v)
        if cands is None:
            cands = sweep_configs(b, torch.empty(0, dtype=dt).element_size(), args.sweep_limit, split_bits)
        plans[(n, dt, v)] = [None] + (cands if sweep else [])
    tasks = [(n, str(dt).removeprefix("torch."), v, c) for (n, dt, v), cfgs in plans.items() for c in cfgs]
    library, best, swept_rows = [], {}, []
    for n, dt_name, v, c in run_parallel(_compile_task, tasks, args.jobs, args.compile_timeout):
        dt = getattr(torch, dt_name)
        plans[(n, dt, v)].remove(c)
        row = {"n": n, "dtype": dt, "variant": v, "config": c,
               "error": f"its compile did not finish: over --compile-timeout ({args.compile_timeout:g} s), or its process died"}
        print(row, flush=True)
        (library if c is None else swept_rows).append(row)
    # the library's table first, then the sweep's candidates
    runs = [(case, [None]) for case, cfgs in plans.items() if None in cfgs]
    runs += [(case, swept) for case, cfgs in plans.items() if (swept := [c for c in cfgs if c is not None])]
    for (n, dt, v), cfgs in runs:
        for r in measure(n, dt, cfgs, v, args.rep_ms):
            print({k: r.get(k) for k in ("n", "dtype", "variant", "config", "gbps", "clone", "err", "error")}, flush=True)
            (library if r["config"] is None else swept_rows).append(r)
            key = (n, str(dt), v)
            if "error" not in r and r["finite"] and (key not in best or r["gbps"] > best[key]["gbps"]):
                best[key] = r
    head = f"# FWHT on {torch.cuda.get_device_name()} ({datetime.date.today()}), 2^28 elements, " \
           "GB/s = (read + write) / median CUDA-graph time"
    lines = _table(library, head + ", the library's launch table")
    better = [r for r in best.values() if r["config"] is not None]
    if better:
        lines += [""] + _table(better, "## Faster launch configurations found by the sweep")
    if swept_rows:
        lines += [""] + _table(swept_rows, "## Every configuration the sweep timed")
    lines += ["", *host_table(host_calls())]
    emit_table(lines, args.out)


if __name__ == "__main__":
    main()
