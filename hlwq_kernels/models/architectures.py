"""Architecture families the converter knows (by ``config.json`` ``model_type``)."""

from __future__ import annotations

KNOWN_MODEL_TYPES = frozenset(
    {
        "llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "qwen3_next", "qwen3_5",
        "qwen3_5_text", "qwen3_5_moe", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe",
        "mixtral", "gemma", "gemma2", "gemma3", "phi3", "bert",
    }
)
