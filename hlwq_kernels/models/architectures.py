"""Architecture families the converter knows (by ``config.json`` ``model_type``).

Each one is tested with a tiny random model through the real readers (tests/checkpoint/
test_readers.py: transformers + compressed-tensors load it, weights and logits exact; the dense
decoders also in vLLM's CPU build), ``bert`` with the real all-MiniLM-L6-v2 (transformers,
sentence-transformers, vLLM). Other model types convert by the same generic rules with a warning.

Not listed although a tiny model converts and loads: ``qwen3_vl_moe``, whose checkpoints store each
layer's experts as fused 3-D tensors (``experts.gate_up_proj`` ``[E, H, 2I]``), which this converter
keeps unquantized (it quantizes 2-D Linear weights only), so most of such a model stays BF16.
"""

from __future__ import annotations

KNOWN_MODEL_TYPES = frozenset(
    {
        "llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "qwen3_next", "qwen3_5",
        "qwen3_5_text", "qwen3_5_moe", "qwen2_vl", "qwen2_5_vl", "qwen3_vl",
        "mixtral", "gemma", "gemma2", "gemma3", "gemma3_text", "phi3", "bert",
    }
)
