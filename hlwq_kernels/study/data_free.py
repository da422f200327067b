"""Data-free signals of which weights matter, tested on the study's decoders (issue 12, item 5).

Every variant quantizes each decoder layer's Linear weights to asymmetric INT4 through the library's
op (``quantize_int4_asym`` on the bfloat16 weight, dequantized exactly in float32) and is scored like
a converted checkpoint (perplexity and KL against the BF16 source on the study's windows):

- ``minmax`` / ``clip``: the converter's ``--scheme asym --scale minmax`` / ``clip`` (the baselines);
- ``clip-norm``: the clip search weighted per input channel by the energy the feeding RMSNorm gives
  it, ``g_j²`` (``(1 + g_j)²`` for Gemma): an isotropic normalized input makes the output error of
  q/k/v and gate/up ``Σ_j g_j² e_ij²``; o_proj and down_proj unweighted;
- ``clip-energy``: ``clip-norm`` plus estimates for the other two: o_proj's input channel energy
  ``‖(W_v ∘ g)_c‖²`` of the value channel it reads, down_proj's ``E[act(a)²]·‖(W_up ∘ g)_c‖²`` with
  ``a ~ N(0, ‖(W_gate ∘ g)_c‖²)``;
- ``fold-minmax`` / ``fold-clip``: the RMSNorm gains folded into the weights that read them (norm
  set to identity; exact in real arithmetic) before quantizing, so the grid follows ``W·diag(g)``;
- ``cle-minmax`` / ``cle-clip``: cross-layer equalization (Nagel et al., 2019) of the exact pairs
  v_proj→o_proj and up_proj→down_proj: channel ``c`` scaled by ``√(r_out / r_in)`` of their ranges;
- ``feedback-embcov``: GPTQ-style error feedback (each column's rounding error spread over the
  columns not yet rounded, through the inverse Hessian) with a data-free Hessian proxy for q/k/v and
  gate/up: ``diag(g) C diag(g)``, ``C`` the covariance of the RMS-normalized token embeddings (uniform
  over the vocabulary); min-max groups as the converter's default; o_proj and down_proj plain min-max.

    python -m hlwq_kernels.study.data_free [--models ...] [--windows 8] [--variants ...]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from hlwq_kernels.ops.int4 import QMAX, QMIN
from hlwq_kernels.ops.int4_asym import dequantize_int4_asym, minmax_params, quantize_int4_asym
from hlwq_kernels.study.cache import StudyDataError
from hlwq_kernels.study.decoders import DECODERS, bf16_checkpoint, decoder
from hlwq_kernels.study.perplexity import load_causal_lm, make_windows, score_windows
from hlwq_kernels.study.text import evaluation_text

__all__ = ["VARIANTS", "input_energy", "fold_norms", "equalize_pairs", "embedding_covariance", "feedback_round",
           "fake_quantize", "main"]

VARIANTS = ("minmax", "clip", "clip-norm", "clip-energy", "fold-minmax", "fold-clip", "cle-minmax", "cle-clip",
            "feedback-embcov")
FEEDBACK_DAMPING = 0.1  # added to the proxy Hessian's diagonal, relative to its mean (GPTQ uses 0.01 on real data)
ATTENTION_INPUTS = ("q_proj", "k_proj", "v_proj")
MLP_INPUTS = ("gate_proj", "up_proj")


def _unit_offset(model: torch.nn.Module) -> bool:
    """Whether the model's RMSNorms scale by ``1 + w`` (Gemma) rather than ``w``."""
    return model.config.model_type.startswith("gemma")


def _mlp_norm(layer: torch.nn.Module) -> torch.nn.Module:
    return getattr(layer, "pre_feedforward_layernorm", None) or layer.post_attention_layernorm


def _gain(norm: torch.nn.Module, unit_offset: bool) -> torch.Tensor:
    w = norm.weight.detach().double()
    return 1 + w if unit_offset else w


def _activation_energy(sigma: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``E[act(σ z)²]`` for ``z ~ N(0, 1)``, per entry of ``σ`` (trapezoid rule on [-8, 8])."""
    z = torch.linspace(-8, 8, 4001, dtype=torch.float64)
    pdf = torch.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    return torch.trapezoid(act(sigma[:, None] * z) ** 2 * pdf, z, dim=-1)


def input_energy(model: torch.nn.Module, layer: torch.nn.Module, full: bool) -> dict[str, torch.Tensor]:
    """Estimated energy of each input channel of the layer's Linear modules (names relative to the
    layer), from its weights alone; ``full`` adds o_proj and down_proj."""
    unit = _unit_offset(model)
    g_attn, g_mlp = _gain(layer.input_layernorm, unit), _gain(_mlp_norm(layer), unit)
    out = {f"self_attn.{n}": g_attn**2 for n in ATTENTION_INPUTS} | {f"mlp.{n}": g_mlp**2 for n in MLP_INPUTS}
    if full:
        cfg, attn, mlp = model.config, layer.self_attn, layer.mlp
        heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        value = ((attn.v_proj.weight.detach().double() * g_attn) ** 2).sum(-1).reshape(kv_heads, -1)
        out["self_attn.o_proj"] = value.repeat_interleave(heads // kv_heads, 0).reshape(-1)
        gate = ((mlp.gate_proj.weight.detach().double() * g_mlp) ** 2).sum(-1).sqrt()
        up = ((mlp.up_proj.weight.detach().double() * g_mlp) ** 2).sum(-1)
        out["mlp.down_proj"] = _activation_energy(gate, mlp.act_fn) * up
    return out


@torch.no_grad()
def fold_norms(model: torch.nn.Module, layer: torch.nn.Module) -> None:
    """Fold the layer's two pre-norm gains into the Linear weights that read them (norms become the
    identity); the function the layer computes is unchanged."""
    unit = _unit_offset(model)
    for norm, block, names in ((layer.input_layernorm, layer.self_attn, ATTENTION_INPUTS),
                               (_mlp_norm(layer), layer.mlp, MLP_INPUTS)):
        g = _gain(norm, unit).to(norm.weight.dtype)
        for n in names:
            getattr(block, n).weight.mul_(g)
        norm.weight.copy_(torch.zeros_like(norm.weight) if unit else torch.ones_like(norm.weight))


@torch.no_grad()
def equalize_pairs(model: torch.nn.Module, layer: torch.nn.Module) -> None:
    """Cross-layer equalization of v_proj→o_proj and up_proj→down_proj: channel ``c`` of the first
    scaled by ``s_c = √(r_out,c / r_in,c)`` (absolute-max ranges), the second's input ``c`` by
    ``1 / s_c``; exact because attention mixes values linearly and the MLP multiplies by up."""
    cfg, attn, mlp = model.config, layer.self_attn, layer.mlp
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    wv, wo = attn.v_proj.weight, attn.o_proj.weight
    r_o = wo.abs().amax(0).reshape(kv_heads, heads // kv_heads, -1).amax(1).reshape(-1)
    s = (r_o / wv.abs().amax(-1)).clamp(1e-4, 1e4).sqrt()
    wv.mul_(s[:, None])
    wo.div_(s.reshape(kv_heads, 1, -1).expand(kv_heads, heads // kv_heads, -1).reshape(1, -1))
    wu, wd = mlp.up_proj.weight, mlp.down_proj.weight
    s = (wd.abs().amax(0) / wu.abs().amax(-1)).clamp(1e-4, 1e4).sqrt()
    wu.mul_(s[:, None])
    wd.div_(s[None, :])


def embedding_covariance(model: torch.nn.Module) -> torch.Tensor:
    """``E[x̂ x̂ᵀ]`` float64 over the token embeddings ``x`` normalized to unit RMS, uniform over the vocabulary."""
    e = model.get_input_embeddings().weight.detach().double()
    e = e / e.square().mean(-1, keepdim=True).add(1e-12).sqrt()
    return e.T @ e / e.shape[0]


@torch.no_grad()
def feedback_round(w: torch.Tensor, hessian: torch.Tensor, group_size: int, damping: float = FEEDBACK_DAMPING
                   ) -> torch.Tensor:
    """Asymmetric min-max INT4 of ``w`` ``[N, K]`` (bfloat16 grid), column by column, each rounding
    error fed forward through the upper Cholesky factor of ``(H + damping·mean(diag H)·I)⁻¹`` (GPTQ);
    a group's scale and zero point come from its columns as updated when the group starts. Returns
    the dequantized float32 weight; a diagonal ``H`` gives plain min-max rounding."""
    work = w.to(torch.bfloat16).double()
    k = work.shape[1]
    h = hessian.double() + damping * hessian.diagonal().double().mean() * torch.eye(k, dtype=torch.float64)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    out = torch.empty(work.shape, dtype=torch.float32)
    for j in range(k):
        if j % group_size == 0:
            scale, zero = minmax_params(work[:, j:j + group_size].to(torch.bfloat16), group_size)
            s, z = scale.float()[:, 0], zero.float()[:, 0]
        q = (work[:, j].float() / s + z).clamp(QMIN, QMAX).round()
        out[:, j] = (q - z) * s
        err = (work[:, j] - out[:, j].double()) / u[j, j]
        work[:, j + 1:] -= err[:, None] * u[j, j + 1:][None, :]
    return out


@torch.no_grad()
def fake_quantize(model: torch.nn.Module, variant: str, group_size: int) -> None:
    """Replace every Linear weight of the decoder layers by its INT4 ``variant`` (in place)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    method = "clip" if "clip" in variant else "minmax"
    covariance = embedding_covariance(model) if variant == "feedback-embcov" else None
    for layer in model.model.layers:
        fed = _feedback_layer(model, layer, covariance, group_size) if covariance is not None else set()
        if variant.startswith("fold"):
            fold_norms(model, layer)
        if variant.startswith("cle"):
            equalize_pairs(model, layer)
        weights = input_energy(model, layer, full=variant == "clip-energy") if variant.startswith("clip-") else {}
        for name, module in layer.named_modules():
            if isinstance(module, torch.nn.Linear) and name not in fed:
                lam = weights.get(name)
                q = quantize_int4_asym(module.weight.to(torch.bfloat16), group_size, method=method,
                                       importance=None if lam is None else lam.float(), backend="torch")
                module.weight.copy_(dequantize_int4_asym(q, module.weight.dtype))


def _feedback_layer(model: torch.nn.Module, layer: torch.nn.Module, covariance: torch.Tensor, group_size: int
                    ) -> set[str]:
    """Error-feedback rounding of the layer's q/k/v and gate/up with the proxy ``diag(g) C diag(g)``;
    returns their names (relative to the layer)."""
    unit, done = _unit_offset(model), set()
    for norm, prefix, names in ((layer.input_layernorm, "self_attn", ATTENTION_INPUTS),
                                (_mlp_norm(layer), "mlp", MLP_INPUTS)):
        g = _gain(norm, unit)
        hessian = g[:, None] * covariance * g[None, :]
        for n in names:
            module = layer.get_submodule(f"{prefix}.{n}")
            module.weight.copy_(feedback_round(module.weight, hessian, group_size))
            done.add(f"{prefix}.{n}")
    return done


def run(key: str, windows: int, variants: list[str], log: Callable[[str], None] = print) -> dict:
    """Score ``variants`` of decoder ``key`` on its first ``windows`` windows; JSON-able results."""
    from transformers import AutoTokenizer

    d = decoder(key)
    src = bf16_checkpoint(d, build=False)
    ref = load_causal_lm(src)
    models = {}
    for v in variants:
        t = time.perf_counter()
        models[v] = load_causal_lm(src)
        fake_quantize(models[v], v, d.group_size)
        log(f"[{key}] {v}: quantized in {time.perf_counter() - t:.1f} s")
    ids = make_windows(AutoTokenizer.from_pretrained(src), evaluation_text(), windows)
    stats = score_windows(ref, models, ids)
    base = stats.pop("reference").ppl()
    rows = {v: {"ppl": s.ppl(), "increase": s.ppl() - base, "kl": s.mean_kl(), "tokens": sum(s.tokens)}
            for v, s in stats.items()}
    return {"model": key, "group_size": d.group_size, "windows": windows, "bf16_ppl": base, "variants": rows}


def markdown(results: list[dict]) -> str:
    """One table per model: PPL, increase over BF16, KL, and KL relative to ``minmax``."""
    lines = []
    for r in results:
        lines += [f"### {r['model']} (group {r['group_size']}, {r['windows']} windows, BF16 PPL {r['bf16_ppl']:.3f})", "",
                  "| variant | PPL | increase | KL | KL / minmax's |", "|---|---|---|---|---|"]
        base = r["variants"].get("minmax", {}).get("kl")
        for v, s in r["variants"].items():
            ratio = f"{s['kl'] / base:.3f}" if base else "–"
            lines.append(f"| {v} | {s['ppl']:.3f} | {s['increase']:+.3f} | {s['kl']:.4f} | {ratio} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hlwq_kernels.study.data_free", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(d.key for d in DECODERS), help="comma-separated decoders")
    p.add_argument("--windows", type=int, default=8, help="windows of 512 tokens (default 8)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {','.join(VARIANTS)}")
    p.add_argument("--out", type=Path, default=None, help="write results.md and results.json here")
    args = p.parse_args(argv)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    torch.manual_seed(0)
    try:
        results = [run(k, args.windows, variants) for k in args.models.split(",")]
    except StudyDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    text = markdown(results)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "data-free.md").write_text(text)
        (args.out / "data-free.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
