"""Perplexity and KL divergence of causal LMs on fixed windows of text, against a reference model.

Windows: the text is tokenized without special tokens and cut into consecutive, non-overlapping
pieces; a window is ``[BOS] + 511 tokens`` when the model's tokenizer adds a BOS token on its own
(Gemma), else 512 text tokens (SmolLM2-Instruct, whose tokenizer adds none). Either way a window of
512 scores 511 next-token predictions; the first position is context only.

Per window and model the harness keeps the summed negative log-likelihood of the targets and the
summed ``KL(P_ref || P_model)`` of the next-token distributions over the same positions, indexed by
the window's position in the text, so results of separate runs over different windows combine. ``PPL = exp(sum NLL / tokens)``.

Every checkpoint is loaded by transformers (the real reader) in float32 on the CPU; a
compressed-tensors checkpoint is decompressed by compressed-tensors' own code with the scales
widened to float32 (weights become ``(q - z) * scale`` exactly). The reference's forward pass of a window is shared by all models
evaluated with it.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

__all__ = [
    "SEQ_LEN",
    "WindowStats",
    "expects_bos",
    "make_windows",
    "load_causal_lm",
    "share_equal_parameters",
    "score_windows",
    "perplexity",
]

SEQ_LEN = 512


@dataclass
class WindowStats:
    """Per scored window: its index in the text, summed NLL and KL(P_ref || P_model) over its
    positions (nats), scored tokens, and the model's forward seconds."""

    window: list[int] = field(default_factory=list)
    nll: list[float] = field(default_factory=list)
    kl: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def add(self, window: int, nll: float, kl: float, tokens: int, seconds: float) -> None:
        """Record one window."""
        for name, value in zip(_FIELDS, (window, nll, kl, tokens, seconds)):
            getattr(self, name).append(value)

    def select(self, windows: Iterable[int]) -> "WindowStats":
        """The stats of ``windows`` (KeyError if one is missing), in that order."""
        at = {w: i for i, w in enumerate(self.window)}
        out = WindowStats()
        for w in windows:
            i = at[w]
            out.add(*(getattr(self, name)[i] for name in _FIELDS))
        return out

    def merge(self, other: "WindowStats") -> "WindowStats":
        """Both sets of windows (``other``'s win where both have one), sorted by window."""
        rows = {w: tuple(getattr(self, n)[i] for n in _FIELDS) for i, w in enumerate(self.window)}
        rows.update({w: tuple(getattr(other, n)[i] for n in _FIELDS) for i, w in enumerate(other.window)})
        out = WindowStats()
        for w in sorted(rows):
            out.add(*rows[w])
        return out

    def ppl(self) -> float:
        """Perplexity over all windows held."""
        return math.exp(sum(self.nll) / sum(self.tokens))

    def mean_kl(self) -> float:
        """Mean KL(P_ref || P_model) per scored token."""
        return sum(self.kl) / sum(self.tokens)

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in _FIELDS}

    @classmethod
    def from_dict(cls, d: dict) -> "WindowStats":
        return cls(**{name: list(d[name]) for name in _FIELDS})


_FIELDS = ("window", "nll", "kl", "tokens", "seconds")


def expects_bos(tokenizer) -> bool:
    """Whether the tokenizer puts its BOS token first when encoding plain text."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def make_windows(tokenizer, text: str, n_windows: int, seq_len: int = SEQ_LEN, offset: int = 0) -> torch.Tensor:
    """``[n_windows, seq_len]`` token ids: windows ``offset .. offset + n_windows - 1`` of ``text``
    (``[BOS] + seq_len - 1`` tokens each where the tokenizer expects a BOS, else ``seq_len``)."""
    bos = expects_bos(tokenizer)
    step = seq_len - 1 if bos else seq_len
    ids = tokenizer(text, add_special_tokens=False).input_ids
    need = (offset + n_windows) * step
    if len(ids) < need:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than the {need} that windows "
                         f"{offset}..{offset + n_windows - 1} of {seq_len} need")
    rows = [ids[(offset + i) * step:(offset + i + 1) * step] for i in range(n_windows)]
    if bos:
        rows = [[tokenizer.bos_token_id] + r for r in rows]
    return torch.tensor(rows, dtype=torch.long)


def load_causal_lm(path: str | os.PathLike) -> torch.nn.Module:
    """A checkpoint loaded by ``AutoModelForCausalLM`` in float32, eval mode, fully decompressed.

    transformers' dense loading of a compressed-tensors checkpoint rounds ``(q - z) * scale`` to the
    scale's dtype (bfloat16); every quantized Linear's weight is therefore decompressed again by
    compressed-tensors' own ``pack-quantized`` decompressor from the checkpoint's tensors with the
    scale widened to float32, which makes it exact."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig

    config = _quantization_config(path)
    kwargs = {"quantization_config": CompressedTensorsConfig(dequantize=True)} if config else {}
    model = AutoModelForCausalLM.from_pretrained(Path(path), dtype=torch.float32, **kwargs).eval()
    for p in model.parameters():
        if p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()
    if config:
        _decompress_exactly(model, Path(path), config)
    return model


def _quantization_config(path: str | os.PathLike) -> dict | None:
    """The config.json's compressed-tensors quantization_config, if any."""
    import json

    config = json.loads((Path(path) / "config.json").read_text()).get("quantization_config") or {}
    return config if config.get("quant_method") == "compressed-tensors" else None


@torch.no_grad()
def _decompress_exactly(model: torch.nn.Module, path: Path, config: dict) -> None:
    """Overwrite every ``pack-quantized`` Linear weight of ``model`` with its float32 decompression."""
    from compressed_tensors.compressors import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationScheme
    from safetensors import safe_open

    groups = list(config.get("config_groups", {}).values())
    if len(groups) != 1 or groups[0].get("format", config.get("format")) != "pack-quantized":
        raise ValueError(f"{path}: the study reads checkpoints with one pack-quantized config group")
    scheme = QuantizationScheme.model_validate({"targets": ["Linear"], **groups[0]})
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for f in sorted(path.glob("*.safetensors")):
        with safe_open(f, "pt") as st:
            for key in st.keys():
                name, _, tensor = key.rpartition(".")
                if tensor.startswith("weight_"):
                    modules.setdefault(name, {})[tensor] = st.get_tensor(key)
    for name, tensors in modules.items():
        tensors["weight_scale"] = tensors["weight_scale"].float()
        weight = PackedQuantizationCompressor.decompress(tensors, scheme)["weight"]
        target = model.get_submodule(name).weight
        if target.shape != weight.shape:
            raise RuntimeError(f"{path}: {name} decompresses to {tuple(weight.shape)}, the model has {tuple(target.shape)}")
        target.copy_(weight)


def share_equal_parameters(model: torch.nn.Module, ref: torch.nn.Module) -> int:
    """Point every parameter of ``model`` that equals the same-named one of ``ref`` at ``ref``'s
    (the unquantized embeddings and norms: saves memory when many checkpoints are loaded).
    Returns the number of elements shared."""
    ref_params = dict(ref.named_parameters(remove_duplicate=False))
    shared = 0
    for name, p in list(model.named_parameters(remove_duplicate=False)):
        r = ref_params.get(name)
        if r is not None and r is not p and r.shape == p.shape and r.dtype == p.dtype and torch.equal(r, p):
            module, _, attr = name.rpartition(".")
            setattr(model.get_submodule(module) if module else model, attr, r)
            shared += p.numel()
    return shared


@torch.no_grad()
def _log_probs(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(ids.unsqueeze(0), use_cache=False).logits[0, :-1]
    return torch.log_softmax(logits.float(), dim=-1)


@torch.no_grad()
def score_windows(ref: torch.nn.Module, models: dict[str, torch.nn.Module], windows: torch.Tensor, offset: int = 0,
                  log: Callable[[str], None] | None = None) -> dict[str, WindowStats]:
    """Per-window NLL and KL for ``ref`` (key ``"reference"``, KL 0) and every model in ``models``;
    the rows of ``windows`` are windows ``offset, offset + 1, ...`` of the text."""
    stats = {"reference": WindowStats(), **{k: WindowStats() for k in models}}
    start = time.perf_counter()
    for w, ids in enumerate(windows):
        targets = ids[1:, None]
        t = time.perf_counter()
        lp_ref = _log_probs(ref, ids)
        stats["reference"].add(offset + w, _nll(lp_ref, targets), 0.0, targets.shape[0], time.perf_counter() - t)
        p_ref = lp_ref.exp()
        neg_entropy = (p_ref * lp_ref).sum(-1)
        for key, model in models.items():
            t = time.perf_counter()
            lp = _log_probs(model, ids)
            kl = float((neg_entropy - (p_ref * lp).sum(-1)).double().sum())
            stats[key].add(offset + w, _nll(lp, targets), kl, targets.shape[0], time.perf_counter() - t)
            del lp
        if log:
            log(f"window {offset + w} ({w + 1}/{len(windows)}, {time.perf_counter() - start:.0f} s): "
                + "  ".join(f"{Path(k).name} {s.ppl():.3f}" for k, s in stats.items()))
    return stats


def _nll(lp: torch.Tensor, targets: torch.Tensor) -> float:
    return -float(lp.gather(1, targets).double().sum())


def perplexity(paths: Sequence[str | os.PathLike], ref_path: str | os.PathLike, text: str, n_windows: int,
               offset: int = 0, max_loaded: int = 8, inspect: Callable[[str, torch.nn.Module, torch.nn.Module], None] | None = None,
               log: Callable[[str], None] | None = None) -> tuple[dict[str, WindowStats], dict]:
    """Score the checkpoints ``paths`` against the reference checkpoint ``ref_path`` on windows
    ``offset .. offset + n_windows - 1`` of ``text`` (tokenized by the reference's tokenizer).
    At most ``max_loaded`` checkpoints are in memory at once (each group repeats the reference's
    forward passes); ``inspect(key, model, ref)`` is called on each after loading. Returns per-path
    stats (key ``str(path)``; ``"reference"`` for the reference) and timings (wall and CPU seconds,
    the 1-minute load average before and after: other work on the machine slows the wall clock)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(Path(ref_path))
    windows = make_windows(tokenizer, text, n_windows, offset=offset)
    t, cpu, load = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    ref = load_causal_lm(ref_path)
    timings = {"load_s": time.perf_counter() - t, "reference_forward_s": 0.0, "groups": 0,
               "bos": expects_bos(tokenizer), "load_average_start": load}
    out: dict[str, WindowStats] = {}
    keys = [str(p) for p in paths]
    for i in range(0, max(len(keys), 1), max_loaded):
        t = time.perf_counter()
        group = {}
        for key in keys[i:i + max_loaded]:
            group[key] = load_causal_lm(key)
            if inspect:
                inspect(key, group[key], ref)
            share_equal_parameters(group[key], ref)
        timings["load_s"] += time.perf_counter() - t
        stats = score_windows(ref, group, windows, offset, log)
        timings["reference_forward_s"] += sum(stats["reference"].seconds)
        timings["groups"] += 1
        out.setdefault("reference", stats.pop("reference"))
        out.update(stats)
        del group
    timings.update(cpu_s=time.process_time() - cpu, load_average_end=os.getloadavg()[0])
    return out, timings

