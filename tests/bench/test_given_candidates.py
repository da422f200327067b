"""``bench/gpu_fwht.py --dense-configs``: candidate files merged (run on the CPU)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from gpu_fwht import given_candidates  # noqa: E402

from hlwq_kernels.ops.fwht_plan import DenseConfig, PaleyConfig, Pow2Config, SplitConfig  # noqa: E402


def _write(path: Path, entries: dict) -> str:
    path.write_text(json.dumps(entries))
    return str(path)


def test_files_merge_into_one_set_of_cases(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.json", {"4864:bfloat16:signs": [[4, 64, 1, 2, 0, 0, True, 0, True, True]],
                                     "8960:bfloat16": []})
    b = _write(tmp_path / "b.json", {"13824:float32": [["pow2", [4, 64, 1, 2]]],
                                     "18432:float32": [["paley", ["pow2", [8, 64, 1, 1]], True]],
                                     "14336:bfloat16": [[2, [8, 16, 3, 1, 0, 0, True]]]})
    given = given_candidates([a, b])
    assert given == {"4864:bfloat16:signs": [DenseConfig(4, 64, 1, 2, 0, 0, True, 0, True, True)],
                     "8960:bfloat16": [],
                     "13824:float32": [Pow2Config(4, 64, 1, 2)],
                     "18432:float32": [PaleyConfig(Pow2Config(8, 64, 1, 1), True)],
                     "14336:bfloat16": [SplitConfig(2, DenseConfig(8, 16, 3, 1, 0, 0, True))]}


def test_a_case_in_several_files_takes_all_their_candidates_once(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.json", {"8960:bfloat16": [], "4864:float32": [[4, 64, 1, 2, 0, 0, True]]})
    b = _write(tmp_path / "b.json", {"8960:bfloat16": [[4, 64, 1, 2, 0, 0, True]],
                                     "4864:float32": [[8, 64, 1, 1, 0, 0, True], [4, 64, 1, 2, 0, 0, True]]})
    assert given_candidates([a, b]) == {
        "8960:bfloat16": [DenseConfig(4, 64, 1, 2, 0, 0, True)],
        "4864:float32": [DenseConfig(4, 64, 1, 2, 0, 0, True), DenseConfig(8, 64, 1, 1, 0, 0, True)]}
