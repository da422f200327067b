"""quantize_checkpoint: output structure, tensor contents, layer selection, sharding, determinism,
atomic output and resume."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from hlwq_kernels.checkpoint import io as checkpoint_io
from hlwq_kernels.checkpoint import REPORT_NAME, quantize_checkpoint
from hlwq_kernels.formats.compressed_tensors import quantization_config
from hlwq_kernels.checkpoint.io import CheckpointError, read_tensor, scan_source, weight_files
from hlwq_kernels.checkpoint.pipeline import KEPT_EXPERTS_NOTE
from hlwq_kernels.checkpoint.progress import load_done
from hlwq_kernels.ops.hlwq import hlwq_dequantize, hlwq_int4, hlwq_quantize
from hlwq_kernels.ops.int4 import Int4Weight, quantize_int4
from hlwq_kernels.ops.int4_asym import Int4AsymWeight, quantize_int4_asym
from tests.tiny_checkpoints import AUX_FILES, save_tiny, write_config


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """arch -> tiny source checkpoint dir (built once per module)."""
    cache: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in cache:
            cache[arch] = save_tiny(arch, tmp_path_factory.mktemp(arch) / "src")
        return cache[arch]

    return get


def load_all(path: Path) -> dict[str, torch.Tensor]:
    return {name: read_tensor(t) for name, t in scan_source(weight_files(path)).items()}


def file_digests(path: Path, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    return {
        p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.rglob("*")) if p.is_file() and p.name not in exclude
    }


def expected_int4(w: torch.Tensor, method: str, scheme: str | None, scale: str | None) -> Int4Weight | Int4AsymWeight:
    """What the converter must write for ``w``: the library ops on the whole tensor."""
    if scheme is None:  # the default: asymmetric min-max, of the HLWQ pre-pass output for hlwq
        wp = w if method == "rtn" else hlwq_dequantize(hlwq_quantize(w, 5, 128), w.dtype)
        return quantize_int4_asym(wp, 128, "minmax")
    return quantize_int4(w, 128, scale=scale) if method == "rtn" else hlwq_int4(w, 5, 128, 128, scale)


@pytest.mark.parametrize("method, scheme, scale", [("rtn", None, None), ("hlwq", None, None), ("rtn", "sym", "mse"),
                                                   ("hlwq", "sym", "absmax")])
def test_llama_output_structure_and_tensors(sources, tmp_path, method, scheme, scale):
    src = sources("llama")
    dst = tmp_path / "out"
    report = quantize_checkpoint(src, dst, method=method, scheme=scheme, scale=scale, progress=False)
    assert (report.scheme, report.scale) == ((scheme, scale) if scheme else ("asym", "minmax"))
    config = json.loads((dst / "config.json").read_text())
    source_config = json.loads((src / "config.json").read_text())
    assert config.pop("quantization_config") == quantization_config(128, report.ignore, symmetric=scheme == "sym")
    assert config == source_config
    for rel, text in AUX_FILES.items():
        assert (dst / rel).read_text() == text
    assert (dst / "generation_config.json").read_bytes() == (src / "generation_config.json").read_bytes()
    assert not list(dst.glob("*.tmp")) and not (dst / "progress").exists()
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    out, ref = load_all(dst), load_all(src)
    assert set(index["weight_map"]) == set(out)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in out.values())
    quantized = [n[: -len(".weight")] for n in ref if f"{n[: -len('.weight')]}.weight_packed" in out]
    assert sorted(quantized) == [l.name for l in report.layers] and len(quantized) == 14
    assert report.ignore == ["lm_head", "model.embed_tokens"]
    for name, w in ref.items():
        module = name[: -len(".weight")]
        if module in quantized:
            q = expected_int4(w, method, scheme, scale)
            assert torch.equal(out[f"{module}.weight_packed"], q.packed), name
            assert torch.equal(out[f"{module}.weight_scale"], q.scale) and q.scale.dtype == w.dtype, name
            if scheme is None:
                assert torch.equal(out[f"{module}.weight_zero_point"], q.zero_point_packed), name
            else:
                assert f"{module}.weight_zero_point" not in out, name
            assert out[f"{module}.weight_shape"].tolist() == list(w.shape)
            assert name not in out
        else:
            assert out[name].dtype == w.dtype and torch.equal(out[name], w), name
    saved = json.loads((dst / REPORT_NAME).read_text())
    assert saved["layers"][0]["name"] == report.layers[0].name and saved["method"] == method
    assert all(0.05 < l.rel_error < 0.2 and 14 < l.sqnr_db < 26 for l in report.layers)


@pytest.mark.parametrize(
    "arch, quantized, kept",
    [
        ("qwen3_moe", {"mlp.experts.0.gate_proj", "mlp.experts.3.down_proj", "self_attn.k_proj"},
         {"mlp.gate": "MoE router gate"}),
        ("qwen3_5", {"linear_attn.in_proj_qkv", "linear_attn.in_proj_z", "linear_attn.out_proj"},
         {"linear_attn.in_proj_a": "gated delta-net a/b projection",
          "linear_attn.in_proj_b": "gated delta-net a/b projection"}),
        ("qwen3_next", {"linear_attn.in_proj_qkvz", "mlp.shared_expert.up_proj", "mlp.experts.1.up_proj"},
         {"mlp.gate": "MoE router gate", "mlp.shared_expert_gate": "MoE router gate",
          "linear_attn.in_proj_ba": "gated delta-net a/b projection"}),
    ],
)
def test_selection_rules(sources, tmp_path, arch, quantized, kept):
    src = sources(arch)
    report = quantize_checkpoint(src, tmp_path / "out", method="rtn", progress=False)
    names = {l.name for l in report.layers}
    assert {f"model.layers.0.{m}" for m in quantized} <= names
    for m, reason in kept.items():
        assert report.kept[f"model.layers.0.{m}"] == reason
        assert f"model.layers.0.{m}" in report.ignore
    assert report.kept["lm_head"] == "lm_head" and report.kept["model.embed_tokens"] == "embedding"
    out, ref = load_all(tmp_path / "out"), load_all(src)
    for name, t in ref.items():
        if t.dtype == torch.float32:  # A_log / dt_bias stay float32 (not cast to bf16)
            assert out[name].dtype == torch.float32 and torch.equal(out[name], t)
    assert report.known_architecture


def test_vision_tower_kept_and_ignored_by_pattern(sources, tmp_path):
    report = quantize_checkpoint(sources("qwen2_5_vl"), tmp_path / "out", method="rtn", progress=False)
    assert not any(l.name.startswith("visual") for l in report.layers)
    assert report.kept["visual.blocks.0.attn.qkv"] == "vision/audio tower"
    assert r"re:(.*\.)?visual\.merger\.mlp\.0$" in report.ignore
    assert len(report.layers) == 14


def test_fused_parts_all_or_none(sources, tmp_path):
    report = quantize_checkpoint(sources("llama"), tmp_path / "out", method="rtn", progress=False,
                                 ignore=["model.layers.0.self_attn.k_proj", "re:.*layers\\.1\\.mlp\\.up_proj"])
    names = {l.name for l in report.layers}
    for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        assert f"model.layers.0.{m}" not in names and f"model.layers.1.{m}" in names
    for m in ("mlp.gate_proj", "mlp.up_proj"):
        assert f"model.layers.1.{m}" not in names and f"model.layers.0.{m}" in names
    assert report.kept["model.layers.0.self_attn.q_proj"].startswith("fused with model.layers.0.self_attn.k_proj")
    assert "model.layers.0.self_attn.o_proj" in names and "model.layers.1.mlp.down_proj" in names


def test_unknown_architecture_and_kernel_shape_rules(tmp_path):
    """A made-up architecture: eligible Linear weights are quantized, others kept with a reason."""
    src = tmp_path / "src"
    src.mkdir()
    write_config(src, model_type="mystery", architectures=["MysteryForCausalLM"])
    g = torch.Generator().manual_seed(0)
    tensors = {
        "blocks.0.mix.weight": torch.randn(256, 384, generator=g, dtype=torch.float32).to(torch.float16),
        "blocks.0.odd_in.weight": torch.randn(128, 200, generator=g).to(torch.bfloat16),  # K % 128
        "blocks.0.odd_out.weight": torch.randn(96, 256, generator=g).to(torch.bfloat16),  # N % 64
        "blocks.0.mix.bias": torch.randn(256, generator=g),
        "blocks.0.conv.weight": torch.randn(64, 1, 4, generator=g),
        "tok_embeddings.weight": torch.randn(64, 256, generator=g),
        "counter": torch.arange(5),
    }
    save_file(tensors, src / "model.safetensors")
    report = quantize_checkpoint(src, tmp_path / "out", method="rtn", progress=False)
    assert [l.name for l in report.layers] == ["blocks.0.mix"]
    assert "group_size" in report.kept["blocks.0.odd_in"] and "out_features" in report.kept["blocks.0.odd_out"]
    assert report.kept["tok_embeddings"] == "embedding"
    assert not report.known_architecture and "not one of the tested architectures" in report.summary()
    out = load_all(tmp_path / "out")
    assert out["blocks.0.mix.weight_scale"].dtype == torch.float16
    for name in ("blocks.0.mix.bias", "blocks.0.conv.weight", "counter", "blocks.0.odd_in.weight"):
        assert out[name].dtype == tensors[name].dtype and torch.equal(out[name], tensors[name])


def test_shards_respect_max_size_and_runs_are_byte_identical(sources, tmp_path):
    src = sources("qwen3")
    a, b = tmp_path / "a", tmp_path / "b"
    report = quantize_checkpoint(src, a, method="hlwq", max_shard_size="300KB", progress=False)
    quantize_checkpoint(src, b, method="hlwq", max_shard_size="300KB", progress=False)
    shards = sorted(a.glob("*.safetensors"))
    assert len(shards) == report.shards >= 3
    index = json.loads((a / "model.safetensors.index.json").read_text())["weight_map"]
    for shard in shards:
        with safe_open(str(shard), "pt") as f:
            keys = list(f.keys())
            sizes = [f.get_slice(k).get_shape() for k in keys]
        assert all(index[k] == shard.name for k in keys)
        largest_unit = 256 * 512 * 2  # embed_tokens (tied lm_head), 256 KiB
        assert shard.stat().st_size <= max(300_000, largest_unit) + 4096, (shard.name, sizes)
    assert file_digests(a, exclude=(REPORT_NAME,)) == file_digests(b, exclude=(REPORT_NAME,))
    report_a, report_b = (json.loads((d / REPORT_NAME).read_text()) for d in (a, b))
    for r in (report_a, report_b):
        r.pop("timings"), r.pop("dst")
    assert report_a == report_b


def test_existing_destination_refused_without_overwrite(sources, tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "precious.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not empty"):
        quantize_checkpoint(sources("llama"), dst, method="rtn", progress=False)
    assert (dst / "precious.txt").read_text() == "keep me"
    with pytest.raises(CheckpointError, match="not an earlier output of this converter"):  # issue 13
        quantize_checkpoint(sources("llama"), dst, method="rtn", progress=False, overwrite=True)
    assert (dst / "precious.txt").read_text() == "keep me"
    (dst / "precious.txt").unlink()
    quantize_checkpoint(sources("llama"), dst, method="rtn", progress=False)
    quantize_checkpoint(sources("llama"), dst, method="rtn", scale="mse", progress=False, overwrite=True)
    assert json.loads((dst / "hlwq_report.json").read_text())["scale"] == "mse"  # the earlier output replaced
    with pytest.raises(CheckpointError, match="must not be the source"):
        quantize_checkpoint(sources("llama"), sources("llama") / "sub", method="rtn", progress=False)


def test_disk_full_leaves_no_finished_looking_output_and_resume_completes(sources, tmp_path, monkeypatch):
    """Writing into shard 3 fails with ENOSPC after writing part of a tensor: no destination; the
    rerun redoes only the tensors that were not recorded as finished, and the result is
    byte-identical to an uninterrupted conversion."""
    src = sources("llama")
    clean = tmp_path / "clean"
    quantize_checkpoint(src, clean, method="rtn", max_shard_size="250KB", progress=False)
    n = len(list(clean.glob("*.safetensors")))
    assert n >= 4
    dst = tmp_path / "out"
    real_write_at = checkpoint_io.write_at
    calls = {"n": 0}

    def failing_write_at(fd, data, offset, path):
        if "00003-of" in path.name:
            calls["n"] += 1
            if calls["n"] == 3:
                real_write_at(fd, bytes(memoryview(data)[:100]), offset, path)
                raise CheckpointError(f"disk full while writing {path} (No space left on device)") from OSError(
                    errno.ENOSPC, "No space left on device")
        real_write_at(fd, data, offset, path)

    monkeypatch.setattr(checkpoint_io, "write_at", failing_write_at)
    with pytest.raises(CheckpointError, match="disk full while writing .*00003-of"):
        quantize_checkpoint(src, dst, method="rtn", max_shard_size="250KB", progress=False)
    assert not dst.exists()
    partial = tmp_path / ".out.partial"
    assert sorted(p.name for p in partial.glob("*.safetensors")) == [f"model-{i:05d}-of-{n:05d}.safetensors"
                                                                     for i in range(1, n + 1)]
    saved = len(load_done(partial))
    assert 0 < saved < report_tensors(clean)
    monkeypatch.setattr(checkpoint_io, "write_at", real_write_at)
    report = quantize_checkpoint(src, dst, method="rtn", max_shard_size="250KB", progress=False)
    assert report.resumed_tensors == saved and report.shards == n
    assert not partial.exists()
    assert file_digests(dst, exclude=(REPORT_NAME,)) == file_digests(clean, exclude=(REPORT_NAME,))
    assert [l.name for l in report.layers] == [l["name"] for l in json.loads((clean / REPORT_NAME).read_text())["layers"]]


def report_tensors(path: Path) -> int:
    return json.loads((path / REPORT_NAME).read_text())["num_tensors"]


def test_real_enospc_from_os_becomes_clear_error(sources, tmp_path, monkeypatch):
    """os.pwrite itself raising ENOSPC (what a full disk does) is reported naming the file."""
    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io.os, "pwrite", full)
    with pytest.raises(CheckpointError, match=r"disk full while writing .*model-00001-of-00001\.safetensors"):
        quantize_checkpoint(sources("llama"), tmp_path / "out", method="rtn", progress=False)
    assert not (tmp_path / "out").exists()


def test_changed_options_restart_instead_of_resuming(sources, tmp_path, monkeypatch):
    src = sources("llama")
    dst = tmp_path / "out"
    real = checkpoint_io.write_at

    def fail_on_third_shard(fd, data, offset, path):
        if "00003-of" in path.name:
            raise CheckpointError("disk full while writing (simulated)")
        real(fd, data, offset, path)

    monkeypatch.setattr(checkpoint_io, "write_at", fail_on_third_shard)
    with pytest.raises(CheckpointError):
        quantize_checkpoint(src, dst, method="rtn", scale="absmax", max_shard_size="250KB", progress=False)
    assert load_done(tmp_path / ".out.partial")
    monkeypatch.setattr(checkpoint_io, "write_at", real)
    report = quantize_checkpoint(src, dst, method="rtn", scale="mse", max_shard_size="250KB", progress=False)
    assert report.resumed_tensors == 0


def test_experts_of_a_layer_are_kept_together(sources, tmp_path):
    """Ignoring one expert keeps every expert of its layer (loaders fuse a layer's experts); the report says that
    transformers does not load the result, and names an ignore pattern that matches nothing."""
    report = quantize_checkpoint(sources("qwen3_moe"), tmp_path / "out", scheme="sym", progress=False,
                                 ignore=["model.layers.0.mlp.experts.0.down_proj", "dwn_proj"])
    names = {l.name for l in report.layers}
    assert not any(".layers.0.mlp.experts." in n for n in names) and any(".layers.1.mlp.experts." in n for n in names)
    assert report.kept["model.layers.0.mlp.experts.1.up_proj"] == (
        "fused with model.layers.0.mlp.experts.0.down_proj (ignored by user; the experts of a layer run as one)")
    assert KEPT_EXPERTS_NOTE in report.notes and "ignore patterns that match no module: 'dwn_proj'" in report.notes
