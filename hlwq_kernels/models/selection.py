"""Which tensors of a checkpoint to quantize to INT4, which to keep, and why.

The rules work on tensor names and shapes only (the model's code is never imported):

- candidates are the 2-D ``<module>.weight`` tensors: the weights of Linear layers;
- kept as they are: embeddings, ``lm_head``, norms, vision / audio towers and multimodal
  projectors, multi-token-prediction heads, MoE router gates (``mlp.gate``, not ``gate_proj``),
  the gated delta-net ``in_proj_a`` / ``in_proj_b`` (``in_proj_ba``) projections, user-ignored
  modules, and every layer whose shape the INT4 kernels cannot take;
- the parts of a fused layer (q/k/v, gate/up, ...) are quantized all together or not at all.

Every kept module with a 2-D weight is listed in the ``ignore`` list of the quantization config, and
so is ``lm_head`` always (it is never quantized): a tied decoder stores no ``lm_head`` tensor, yet
transformers builds an ``lm_head`` Linear that the loader would otherwise replace with an INT4 layer.
Whether a model is a decoder is not needed, so configs without ``architectures`` (e.g. written from
a GGUF-loaded model) convert the same way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

# Sibling modules that vLLM fuses into one layer (they must share one quantization decision).
FUSED_GROUPS: tuple[frozenset[str], ...] = (
    frozenset({"q_proj", "k_proj", "v_proj"}),
    frozenset({"gate_proj", "up_proj"}),
    frozenset({"w1", "w3"}),
    frozenset({"query", "key", "value"}),
    frozenset({"in_proj_qkv", "in_proj_z"}),
    frozenset({"in_proj_a", "in_proj_b"}),
    frozenset({"q_a_proj", "kv_a_proj_with_mqa"}),
)
EMBEDDING_LEAVES = frozenset(
    {"wte", "wpe", "word_embeddings", "position_embeddings", "token_type_embeddings"}
)
LM_HEAD_NAMES = frozenset({"lm_head", "embed_out", "output"})
TOWER_PARTS = frozenset(
    {
        "visual", "vision_tower", "vision_model", "vision_encoder", "image_encoder", "vit",
        "audio_tower", "audio_encoder", "audio_model", "audio",
        "multi_modal_projector", "mm_projector", "vision_projection", "audio_projection",
    }
)
ROUTER_LEAVES = frozenset({"gate", "router", "shared_expert_gate", "gate_up_router"})
GDN_AB_LEAVES = frozenset({"in_proj_a", "in_proj_b", "in_proj_ba"})
MTP_PARTS = frozenset({"mtp"})
# Model types whose 2-D weights are stored transposed (GPT-2 Conv1D): never quantized.
TRANSPOSED_MODEL_TYPES = frozenset({"gpt2", "imagegpt", "decision_transformer"})
QUANTIZABLE_DTYPES = ("BF16", "F16", "F32")
MIN_OUT_FEATURES_MULTIPLE = 64  # Marlin / Machete tile width along N
# Why each fixed reason keeps a module (shown in the conversion summary).
WHY_KEPT = {
    "lm_head": "the output head stays in the source dtype, as in usual W4A16 checkpoints: its error reaches every logit",
    "embedding": "a lookup table, not a matrix product: the INT4 GEMM kernels do not apply",
    "norm": "a norm's scale, not a matrix product",
    "vision/audio tower": "only the language model is quantized",
    "multi-token-prediction head": "only the main language model is quantized",
    "MoE router gate": "small, and routing decisions are sensitive to its error",
    "gated delta-net a/b projection": "one output per head: too narrow for the INT4 kernels",
    "ignored by user": "--ignore / ignore=",
}


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and safetensors dtype string of one checkpoint tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: str


@dataclass
class Selection:
    """The outcome of layer selection.

    ``quantize``: module names (weight name without ``.weight``) to quantize, sorted.
    ``kept``: module name -> reason, for every module with a 2-D weight that stays as it is.
    ``ignore``: the compressed-tensors ``ignore`` list (sorted).
    """

    quantize: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)
    ignore: list[str] = field(default_factory=list)


class SelectionError(ValueError):
    """A tensor that should be quantized cannot be (e.g. unsupported dtype)."""


def check_ignore(patterns: Iterable[str] | str) -> tuple[str, ...]:
    """The user's ``ignore`` patterns as a tuple (one string is one pattern), or ValueError naming a pattern that
    is not a string or a ``re:`` pattern that does not compile."""
    patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ValueError(f"ignore patterns must be strings, got {pattern!r}")
        if pattern.startswith("re:"):
            try:
                re.compile(pattern[3:])
            except re.error as e:
                raise ValueError(f"ignore pattern {pattern!r} is not a valid regular expression ({e})") from e
    return patterns


def matches_ignore(module: str, patterns: Iterable[str]) -> bool:
    """True when ``module`` matches one user pattern: ``re:<regex>`` (``re.match``, as in
    compressed-tensors), an exact module name, or a dotted suffix (``down_proj``,
    ``layers.0.mlp``) that matches whole name components at the end or as a parent."""
    for pattern in patterns:
        if pattern.startswith("re:"):
            if re.match(pattern[3:], module):
                return True
            continue
        if module == pattern or module.endswith("." + pattern):
            return True
        if module.startswith(pattern + ".") or ("." + pattern + ".") in module:
            return True
    return False


def _fixed_reason(module: str, model_type: str) -> str | None:
    """The reason a module is kept whatever its shape, or None when it is a candidate."""
    parts = module.split(".")
    leaf = parts[-1]
    if model_type in TRANSPOSED_MODEL_TYPES:
        return f"{model_type} stores Conv1D weights transposed"
    if module in LM_HEAD_NAMES or leaf == "lm_head":
        return "lm_head"
    if "embed" in leaf or leaf in EMBEDDING_LEAVES or "embeddings" in parts:
        return "embedding"
    if "norm" in leaf or leaf.startswith("ln"):
        return "norm"
    if TOWER_PARTS.intersection(parts) or any(p.startswith(("vision", "audio")) for p in parts):
        return "vision/audio tower"
    if MTP_PARTS.intersection(parts):
        return "multi-token-prediction head"
    if leaf in ROUTER_LEAVES or leaf.endswith("_router"):
        return "MoE router gate"
    if leaf in GDN_AB_LEAVES:
        return "gated delta-net a/b projection"
    return None


def _shape_reason(shape: Sequence[int], group_size: int, block_size: int | None) -> str | None:
    n, k = shape
    if n == 0 or k == 0:
        return "empty"
    if k % group_size:
        return f"in_features {k} not a multiple of group_size {group_size}"
    if block_size is not None and k % block_size:
        return f"in_features {k} not a multiple of block_size {block_size}"
    if n % MIN_OUT_FEATURES_MULTIPLE:
        return f"out_features {n} not a multiple of {MIN_OUT_FEATURES_MULTIPLE}"
    return None


def fused_group(module: str, siblings: set[str]) -> tuple[str, ...]:
    """The modules that vLLM fuses with ``module`` (itself included), among ``siblings``."""
    parent, _, leaf = module.rpartition(".")
    for group in FUSED_GROUPS:
        if leaf in group:
            members = sorted(f"{parent}.{m}" if parent else m for m in group)
            return tuple(m for m in members if m in siblings)
    return (module,)


_EXPERT = re.compile(r"(.*\.experts)\.\d+\.")


def _keep_experts_together(names: set[str], reasons: dict[str, str]) -> None:
    """Where one expert module of a MoE layer is kept, keep every expert module of that layer (``reasons`` updated):
    vLLM and transformers run a layer's experts as one fused layer, with one quantization for all."""
    layers: dict[str, list[str]] = {}
    for module in sorted(names):
        match = _EXPERT.match(module)
        if match:
            layers.setdefault(match.group(1), []).append(module)
    for members in layers.values():
        kept = [m for m in members if m in reasons]
        for module in members:
            if kept and module not in reasons:
                reasons[module] = f"fused with {kept[0]} ({reasons[kept[0]]}; the experts of a layer run as one)"


def select_layers(
    tensors: Iterable[TensorSpec],
    config: Mapping,
    *,
    group_size: int = 128,
    block_size: int | None = None,
    ignore: Iterable[str] = (),
) -> Selection:
    """Decide which 2-D Linear weights to quantize. ``block_size`` (HLWQ) adds a shape rule.

    Raises SelectionError naming the tensor when a weight that would be quantized has a dtype
    other than BF16 / F16 / F32.
    """
    ignore = tuple(ignore)
    model_type = str(config.get("model_type", ""))
    weights = {t.name[: -len(".weight")]: t for t in tensors if t.name.endswith(".weight") and len(t.shape) == 2}
    reasons: dict[str, str] = {}
    for module, spec in weights.items():
        reason = _fixed_reason(module, model_type)
        if reason is None and matches_ignore(module, ignore):
            reason = "ignored by user"
        if reason is None:
            reason = _shape_reason(spec.shape, group_size, block_size)
        if reason is None and spec.dtype not in QUANTIZABLE_DTYPES:
            raise SelectionError(
                f"tensor {spec.name!r} has dtype {spec.dtype}; only {', '.join(QUANTIZABLE_DTYPES)} "
                f"weights can be quantized (is the source already quantized?). "
                f"Keep it with --ignore {module}"
            )
        if reason is not None:
            reasons[module] = reason
    names = set(weights)
    for module in sorted(names):
        if module in reasons:
            continue
        blockers = [m for m in fused_group(module, names) if m in reasons]
        if blockers:
            reasons[module] = f"fused with {blockers[0]} ({reasons[blockers[0]]})"
    _keep_experts_together(names, reasons)
    ignored = set(reasons) | {"lm_head"}  # also when tied (no tensor) or not a decoder (no such module)
    multimodal = is_multimodal(config)
    return Selection(
        quantize=sorted(names - set(reasons)),
        kept=dict(sorted(reasons.items())),
        ignore=sorted(ignore_entry(m, multimodal) for m in ignored),
    )


def is_multimodal(config: Mapping) -> bool:
    """Whether the config nests sub-model configs (vision / audio / text), as multimodal models do."""
    return any(k in config for k in ("vision_config", "audio_config", "text_config"))


def ignore_entry(module: str, multimodal: bool) -> str:
    """The ``ignore`` entry for a kept module: its checkpoint name, or for multimodal models a
    ``re:`` pattern that also matches the module as transformers 5 renames it (checkpoint
    ``visual.x`` becomes ``model.visual.x``, ``model.layers.x`` ``model.language_model.layers.x``,
    Gemma 3's ``language_model.model.x`` ``model.language_model.x``) and as vLLM names it."""
    if not multimodal:
        return module
    body = re.escape(module.removeprefix("model."))
    body = body.replace(re.escape("language_model.model."), "language_model\\.(model\\.)?", 1)
    return "re:(.*\\.)?" + body + "$"
