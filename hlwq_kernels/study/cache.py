"""Where the decoder study keeps what it downloads and builds: ``$HLWQ_CACHE`` or
``~/.cache/hlwq_kernels`` (``downloads/`` text packages, ``gguf/``, ``models/`` BF16 sources,
``peers/`` llm-compressor checkpoints, ``converted/`` our checkpoints)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SETUP_HINT", "StudyDataError", "cache_dir"]

SETUP_HINT = "run scripts/setup_study.sh first"


class StudyDataError(RuntimeError):
    """Something the study needs is not installed or not in the cache."""


def cache_dir(sub: str = "") -> Path:
    """``$HLWQ_CACHE/<sub>`` (default ``~/.cache/hlwq_kernels/<sub>``), not created."""
    root = Path(os.environ.get("HLWQ_CACHE") or Path.home() / ".cache" / "hlwq_kernels").expanduser()
    return root / sub if sub else root
