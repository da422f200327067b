"""Writing a study's results: a Markdown table, the JSON of everything measured, one plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

__all__ = ["write_study_outputs"]


def write_study_outputs(out_dir: Path, res: dict, markdown: Callable[[dict], str],
                        plot: Callable[[dict, Path], None], plot_name: str) -> list[Path]:
    """Write ``results.md`` (``markdown(res)``), ``results.json`` and the plot ``plot_name`` into
    ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "results.md", out_dir / "results.json", out_dir / plot_name]
    paths[0].write_text(markdown(res))
    paths[1].write_text(json.dumps(res, indent=1))
    plot(res, paths[2])
    return paths
