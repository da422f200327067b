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

ARCHS = ("llama", "mistral", "qwen2", "qwen3", "qwen3_moe", "qwen3_5", "qwen3_next", "qwen2_5_vl")
# Further text decoders that build_model knows (used by the rotation tests, not by ARCHS' users).
EXTRA_ARCHS = ("llama_bias", "qwen2_moe", "qwen3_5_moe", "qwen3_5_vl", "qwen3_5_moe_vl", "gemma", "gemma2", "gemma3_text")
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
    if arch == "qwen2_moe":
        cfg = tf.Qwen2MoeConfig(**common, **MOE, shared_expert_intermediate_size=128, decoder_sparse_step=1)
        return tf.Qwen2MoeForCausalLM(cfg)
    if arch == "qwen3_5_moe":
        return tf.Qwen3_5MoeForCausalLM(tf.Qwen3_5MoeTextConfig(**common, **MOE, **GDN, shared_expert_intermediate_size=128))
    if arch in ("qwen3_5_vl", "qwen3_5_moe_vl"):  # as released: a vision tower whose merger feeds the language model
        vision = dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=2, out_hidden_size=256, patch_size=14)
        if arch == "qwen3_5_vl":
            return tf.Qwen3_5ForConditionalGeneration(tf.Qwen3_5Config(text_config=dict(common, **GDN), vision_config=vision))
        text = dict(common, **GDN, **MOE, shared_expert_intermediate_size=128)
        return tf.Qwen3_5MoeForConditionalGeneration(tf.Qwen3_5MoeConfig(text_config=text, vision_config=vision))
    if arch == "gemma":
        return tf.GemmaForCausalLM(tf.GemmaConfig(**common))
    if arch == "gemma2":
        return tf.Gemma2ForCausalLM(tf.Gemma2Config(**common, sliding_window=8))
    if arch == "gemma3_text":
        return tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**common, sliding_window=8))
    if arch == "qwen2_5_vl":
        # two heads of 128: the default multimodal RoPE sections (16, 24, 24) need head_dim 128
        text = {k: v for k, v in common.items() if k != "head_dim"} | dict(num_attention_heads=2)
        vision = dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=2, out_hidden_size=256,
                      fullatt_block_indexes=[1])
        cfg = tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision)
        return tf.Qwen2_5_VLForConditionalGeneration(cfg)
    raise ValueError(arch)


def save_tiny(arch: str, path: Path, dtype: torch.dtype = torch.bfloat16, init_std: float = 0.02) -> Path:
    """Save a tiny ``arch`` checkpoint (with auxiliary files) to ``path``. GDN ``A_log`` and
    ``dt_bias`` are stored in float32, as in released Qwen3.5 / Qwen3-Next checkpoints."""
    model = build_model(arch, init_std).to(dtype)
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
