"""Tiny random checkpoints built from transformers configs, for the checkpoint tests.

Hidden sizes are multiples of 128 (hidden 256, intermediate 512, 2 layers) so that the linear
layers are quantizable; weights are random (transformers' init, seeded), saved as safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

COMMON = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    vocab_size=512,
    max_position_embeddings=256,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
GDN = dict(linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=64, linear_value_head_dim=64,
           layer_types=["linear_attention", "full_attention"])
MOE = dict(moe_intermediate_size=128, num_experts=4, num_experts_per_tok=2)

ARCHS = ("llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "qwen3_5", "qwen3_next", "qwen2_5_vl",
         "gemma", "gemma2", "gemma3_text", "gemma3", "phi3", "mixtral", "qwen2_moe", "qwen2_vl", "qwen3_vl",
         "qwen3_vl_moe", "qwen3_5_vl", "qwen3_5_moe")
# config.json model_type of each tiny architecture (qwen3_5 is the text-only Qwen3.5 model).
MODEL_TYPES = {"qwen3_5": "qwen3_5_text", "qwen3_5_vl": "qwen3_5"}
# Further text decoders that build_model knows (used by the rotation tests).
EXTRA_ARCHS = ("llama_bias", "qwen3_5_moe_text", "qwen3_5_moe_vl")
AUX_FILES = {
    "tokenizer_config.json": '{"model_max_length": 256}\n',
    "chat_template.jinja": "{{ messages }}\n",
    "README.md": "# tiny test model\n",
    "extra/notes.txt": "kept verbatim\n",
}


def build_model(arch: str, init_std: float = 0.02) -> torch.nn.Module:
    """A randomly initialized tiny model of architecture ``arch`` (seeded); ``init_std`` is the
    weights' standard deviation (larger gives decisive logits for greedy-decoding comparisons)."""
    import transformers as tf

    torch.manual_seed(0)
    common = dict(COMMON, initializer_range=init_std)
    if arch == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(**common))
    if arch == "mistral":
        return tf.MistralForCausalLM(tf.MistralConfig(**common, sliding_window=None))
    if arch == "qwen2":
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(**common))
    if arch == "qwen3":
        return tf.Qwen3ForCausalLM(tf.Qwen3Config(**common, tie_word_embeddings=True))
    if arch == "qwen3_moe":
        return tf.Qwen3MoeForCausalLM(tf.Qwen3MoeConfig(**common, **MOE, decoder_sparse_step=1))
    if arch == "qwen3_5":
        return tf.Qwen3_5ForCausalLM(tf.Qwen3_5TextConfig(**common, **GDN))
    if arch == "qwen3_next":
        cfg = tf.Qwen3NextConfig(**common, **MOE, **GDN, shared_expert_intermediate_size=128)
        return tf.Qwen3NextForCausalLM(cfg)
    if arch == "llama_bias":  # biases on every attention and MLP projection
        return tf.LlamaForCausalLM(tf.LlamaConfig(**common, attention_bias=True, mlp_bias=True))
    if arch == "qwen3_5_moe_text":  # the text model alone
        return tf.Qwen3_5MoeForCausalLM(tf.Qwen3_5MoeTextConfig(**common, **MOE, **GDN, shared_expert_intermediate_size=128))
    if arch == "qwen3_5_moe_vl":  # as released: a vision tower whose merger feeds the language model
        vision = dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=2, out_hidden_size=256, patch_size=14)
        text = dict(common, **GDN, **MOE, shared_expert_intermediate_size=128)
        return tf.Qwen3_5MoeForConditionalGeneration(tf.Qwen3_5MoeConfig(text_config=text, vision_config=vision))
    if arch == "qwen2_5_vl":
        # two heads of 128: the default multimodal RoPE sections (16, 24, 24) need head_dim 128
        text = {k: v for k, v in common.items() if k != "head_dim"} | dict(num_attention_heads=2)
        vision = dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=2, out_hidden_size=256,
                      fullatt_block_indexes=[1])
        cfg = tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision)
        return tf.Qwen2_5_VLForConditionalGeneration(cfg)
    return _build_more(tf, arch, common)


def _multimodal_text(common: dict, **extra) -> dict:
    """Text config of the Qwen VL models: two heads of 128 (multimodal RoPE sections need head_dim 128)."""
    return {k: v for k, v in common.items() if k != "head_dim"} | dict(num_attention_heads=2, head_dim=128) | extra


def _build_more(tf, arch: str, common: dict) -> torch.nn.Module:
    """The architectures added for issue 13: one tiny model per known model_type."""
    qwen_vision = dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=2, out_hidden_size=256,
                       num_position_embeddings=64)
    if arch == "gemma":
        return tf.GemmaForCausalLM(tf.GemmaConfig(**common))
    if arch == "gemma2":
        return tf.Gemma2ForCausalLM(tf.Gemma2Config(**common, query_pre_attn_scalar=64))
    if arch == "gemma3_text":  # Gemma-3-270M / 1B: text-only, tied embeddings
        return tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**common, query_pre_attn_scalar=64))
    if arch == "gemma3":  # multimodal: SigLIP tower + projector stay unquantized
        vision = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                      image_size=64, patch_size=16)
        cfg = tf.Gemma3Config(text_config=dict(common, query_pre_attn_scalar=64), vision_config=vision,
                              mm_tokens_per_image=4)
        return tf.Gemma3ForConditionalGeneration(cfg)
    if arch == "phi3":  # fused qkv_proj / gate_up_proj in the checkpoint
        return tf.Phi3ForCausalLM(tf.Phi3Config(**{k: v for k, v in common.items() if k != "head_dim"}))
    if arch == "mixtral":
        return tf.MixtralForCausalLM(tf.MixtralConfig(**common, num_local_experts=4, num_experts_per_tok=2))
    if arch == "qwen2_moe":
        cfg = tf.Qwen2MoeConfig(**common, **MOE, shared_expert_intermediate_size=128, decoder_sparse_step=1)
        return tf.Qwen2MoeForCausalLM(cfg)
    if arch == "qwen2_vl":
        vision = dict(depth=2, embed_dim=128, hidden_size=256, num_heads=2)
        text = {k: v for k, v in common.items() if k != "head_dim"} | dict(num_attention_heads=2)
        return tf.Qwen2VLForConditionalGeneration(tf.Qwen2VLConfig(text_config=text, vision_config=vision))
    if arch == "qwen3_vl":
        cfg = tf.Qwen3VLConfig(text_config=_multimodal_text(common),
                               vision_config=qwen_vision | dict(deepstack_visual_indexes=[1]))
        return tf.Qwen3VLForConditionalGeneration(cfg)
    if arch == "qwen3_vl_moe":
        text = _multimodal_text(common, **MOE, decoder_sparse_step=1)
        cfg = tf.Qwen3VLMoeConfig(text_config=text, vision_config=qwen_vision | dict(deepstack_visual_indexes=[1]))
        return tf.Qwen3VLMoeForConditionalGeneration(cfg)
    if arch == "qwen3_5_vl":
        cfg = tf.Qwen3_5Config(text_config=_multimodal_text(common, **GDN), vision_config=qwen_vision)
        return tf.Qwen3_5ForConditionalGeneration(cfg)
    if arch == "qwen3_5_moe":
        text = _multimodal_text(common, **GDN, **MOE, shared_expert_intermediate_size=128)
        return tf.Qwen3_5MoeForConditionalGeneration(tf.Qwen3_5MoeConfig(text_config=text, vision_config=qwen_vision))
    raise ValueError(arch)


def save_tiny(arch: str, path: Path, dtype: torch.dtype = torch.bfloat16, init_std: float = 0.02,
              embed_scale: float = 1.0) -> Path:
    """Save a tiny ``arch`` checkpoint (with auxiliary files) to ``path``. GDN ``A_log`` and
    ``dt_bias`` are stored in float32, as in released Qwen3.5 / Qwen3-Next checkpoints.
    ``embed_scale`` multiplies the input embeddings (with large weights, Gemma's tied head, fed
    embeddings scaled by sqrt(hidden), otherwise just repeats the last token)."""
    model = build_model(arch, init_std).to(dtype)
    model.get_input_embeddings().weight.data *= embed_scale
    for name, p in model.named_parameters():
        if name.endswith(("A_log", "dt_bias")):
            p.data = p.data.float()
    model.save_pretrained(path)
    for rel, text in AUX_FILES.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    return path


def write_config(path: Path, **config) -> None:
    """Write a config.json made of ``config``."""
    (path / "config.json").write_text(json.dumps(config))
