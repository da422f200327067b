"""Per-architecture tables for rotations folded into the weights (``models/rotation.py``).

One ``Family`` per architecture family says, by tensor names inside a decoder layer
(``model.layers.<i>.<name>``), which norms sit on the residual stream and which linear layers
each one feeds (they read the stream), which layers write the stream, which tensors the rotation
leaves alone, whether the norms compute ``x·w`` or ``x·(1 + w)``, and whether the per-head
rotation R2 (``v_proj`` output, ``o_proj`` input) is exact. Model types without a table, or with
a structure that no offline rotation commutes with, are refused with the reason in ``REFUSED``.
Every name is a regular expression matched against the whole layer-relative module name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

DENSE_MLP_READERS = (r"mlp\.(gate|up)_proj",)
MOE_READERS = (
    r"mlp\.gate",  # router: reads the stream, so its input side is rotated too (else routing changes)
    r"mlp\.experts\.\d+\.(gate|up)_proj",
    r"mlp\.experts\.gate_up_proj",  # fused experts [E, 2I, H]
    r"mlp\.shared_expert\.(gate|up)_proj",
    r"mlp\.shared_expert_gate",
)
ATTENTION_READERS = (r"self_attn\.[qkv]_proj",)
GDN_READERS = (r"linear_attn\.in_proj_\w+",)  # qkv, z, a, b (Qwen3.5) or qkvz, ba (Qwen3-Next)
WRITERS = (
    r"self_attn\.o_proj",
    r"mlp\.down_proj",
    r"mlp\.experts\.\d+\.down_proj",
    r"mlp\.experts\.down_proj",  # fused experts [E, H, I]
    r"mlp\.shared_expert\.down_proj",
    r"linear_attn\.out_proj",
)
# Tensors inside a layer that neither read nor write the stream: per-head q/k norms, the gated
# delta-net's convolution, decay and gated norm (they act on projected channels), rotary buffers.
INERT = (
    r"self_attn\.[qk]_norm",
    r"self_attn\.rotary_emb",
    r"linear_attn\.(conv1d|norm|A_log|dt_bias)",
)


@dataclass(frozen=True)
class Family:
    """What the rotations need to know about one architecture family.

    ``norm_readers``: residual-stream norm (layer-relative module) -> the modules it feeds.
    ``writers``: modules whose output is added to the stream (rotated on the output side).
    ``inert``: modules the rotations leave unchanged. ``unit_offset``: norms compute ``x·(1 + w)``.
    ``r1_blocker`` / ``r2_blocker``: why R1 / R2 cannot be folded exactly (None when it can).
    """

    name: str
    model_types: frozenset[str]
    norm_readers: Mapping[str, tuple[str, ...]]
    writers: tuple[str, ...] = WRITERS
    inert: tuple[str, ...] = INERT
    unit_offset: bool = False
    r1_blocker: str | None = None
    r2_blocker: str | None = None


GATED_ATTENTION = (
    "its attention output is multiplied channel by channel by a gate (from q_proj) before o_proj, "
    "which a per-head rotation does not commute with"
)
POST_NORMS = (
    "its post_attention_layernorm and post_feedforward_layernorm normalise each sublayer's output "
    "with per-channel weights before the residual add; RMSNorm(y·Q)·w ≠ RMSNorm(y)·w·Q for a rotation "
    "Q unless w is constant, so no rotation of the residual stream can be folded into the weights "
    "(R2 alone can: pass r1=False)"
)

LLAMA = Family(
    name="llama",  # Llama, Mistral, Qwen2 (q/k/v biases; also Qwen2.5-VL's text model), Qwen3
    model_types=frozenset({"llama", "mistral", "qwen2", "qwen3", "qwen2_5_vl_text"}),
    norm_readers={"input_layernorm": ATTENTION_READERS, "post_attention_layernorm": DENSE_MLP_READERS},
)
QWEN_MOE = Family(
    name="qwen-moe",  # routed experts, optional shared expert and its gate
    model_types=frozenset({"qwen2_moe", "qwen3_moe"}),
    norm_readers={"input_layernorm": ATTENTION_READERS, "post_attention_layernorm": DENSE_MLP_READERS + MOE_READERS},
)
QWEN_HYBRID = Family(
    name="qwen-hybrid",  # gated delta-net and gated full attention, (1 + w) norms, dense or MoE MLP
    model_types=frozenset({"qwen3_5_text", "qwen3_5_moe_text", "qwen3_next"}),
    norm_readers={
        "input_layernorm": ATTENTION_READERS + GDN_READERS,
        "post_attention_layernorm": DENSE_MLP_READERS + MOE_READERS,
    },
    unit_offset=True,
    r2_blocker=GATED_ATTENTION,
)
GEMMA = Family(
    name="gemma",  # (1 + w) norms, embeddings scaled by sqrt(hidden) (a scalar: commutes with Q)
    model_types=frozenset({"gemma"}),
    norm_readers={"input_layernorm": ATTENTION_READERS, "post_attention_layernorm": DENSE_MLP_READERS},
    unit_offset=True,
)
GEMMA_POST_NORM = Family(
    name="gemma-post-norm",  # Gemma 2 and 3: sandwich norms around each sublayer
    model_types=frozenset({"gemma2", "gemma3_text"}),
    norm_readers={"input_layernorm": ATTENTION_READERS, "pre_feedforward_layernorm": DENSE_MLP_READERS},
    inert=INERT + (r"post_attention_layernorm", r"post_feedforward_layernorm"),
    unit_offset=True,
    r1_blocker=POST_NORMS,
)
FAMILIES = (LLAMA, QWEN_MOE, QWEN_HYBRID, GEMMA, GEMMA_POST_NORM)

POST_LAYERNORM = (
    "it is a post-LayerNorm encoder: the residual stream is each LayerNorm's output (mean-centred, "
    "with per-channel weight and bias), which no rotation of the stream commutes with"
)
REFUSED = {
    "bert": POST_LAYERNORM,
    "roberta": POST_LAYERNORM,
    "xlm-roberta": POST_LAYERNORM,
    "distilbert": POST_LAYERNORM,
    "mpnet": POST_LAYERNORM,
}
MULTIMODAL = (
    "it is a multimodal checkpoint whose vision tower's outputs enter the language model's residual "
    "stream in ways this table does not cover (supported: {supported})"
)


@dataclass(frozen=True)
class VisionLanguage:
    """A vision-language model: the language model (``text_config``) follows its own family, and
    ``mergers`` (modules of the vision tower) write image features into its residual stream, so
    they are rotated on the output side; the rest of the tower is left alone."""

    model_types: frozenset[str]
    mergers: tuple[str, ...]


VISION_LANGUAGE = (
    VisionLanguage(frozenset({"qwen2_5_vl"}), (r"merger\.mlp\.2",)),
    VisionLanguage(frozenset({"qwen3_5", "qwen3_5_moe"}), (r"merger\.linear_fc2",)),
)


def vision_language_for(model_type: str) -> VisionLanguage | None:
    """The vision-language table of ``model_type``, or None."""
    return next((v for v in VISION_LANGUAGE if model_type in v.model_types), None)


def family_for(model_type: str) -> Family | None:
    """The rotation table of ``model_type``, or None when there is none."""
    return next((f for f in FAMILIES if model_type in f.model_types), None)


def supported_model_types() -> list[str]:
    """Every model type with a rotation table (language and vision-language), sorted."""
    return sorted({t for f in FAMILIES for t in f.model_types} | {t for v in VISION_LANGUAGE for t in v.model_types})
