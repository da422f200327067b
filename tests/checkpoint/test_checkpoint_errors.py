"""Bad inputs give clear errors naming the file or tensor, and leave no output behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hlwq_kernels.checkpoint import quantize_checkpoint
from hlwq_kernels.checkpoint.io import CheckpointError, parse_size, read_tensor, scan_source, weight_files
from tests.tiny_checkpoints import write_config

LLAMA = dict(model_type="llama", architectures=["LlamaForCausalLM"])


def make_source(path: Path, tensors: dict[str, torch.Tensor] | None = None, config: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    write_config(path, **(config or LLAMA))
    g = torch.Generator().manual_seed(0)
    tensors = tensors if tensors is not None else {
        "model.layers.0.mlp.down_proj.weight": torch.randn(128, 256, generator=g).to(torch.bfloat16),
        "model.norm.weight": torch.ones(128, dtype=torch.bfloat16),
    }
    save_file(tensors, path / "model.safetensors")
    return path


def config_only_source(path: Path) -> Path:
    """A source directory with a config.json and no weight files."""
    path.mkdir()
    write_config(path, **LLAMA)
    return path


def convert(src: Path, dst: Path) -> None:
    quantize_checkpoint(src, dst, method="rtn", progress=False)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match=f"source directory not found: {tmp_path / 'nope'}"):
        convert(tmp_path / "nope", tmp_path / "out")


def test_no_config(tmp_path):
    src = make_source(tmp_path / "src")
    (src / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"no config\.json in .*src"):
        convert(src, tmp_path / "out")


def test_invalid_config_json(tmp_path):
    src = make_source(tmp_path / "src")
    (src / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: invalid JSON"):
        convert(src, tmp_path / "out")


def test_pickle_only_source_is_refused_with_conversion_hint(tmp_path):
    src = config_only_source(tmp_path / "src")
    (src / "pytorch_model.bin").write_bytes(b"\x80\x04 not unpickled")
    with pytest.raises(CheckpointError, match=r"only pickle weights \(pytorch_model\.bin\).*keeping every tensor"):
        convert(src, tmp_path / "out")


def test_pickle_hint_command_keeps_every_tensor(tmp_path):
    """The command in the pickle-only message, run as printed, writes a safetensors file with
    every tensor of the state dict (lm_head and the tied embedding included), which converts."""
    from tests.tiny_checkpoints import build_model

    src = tmp_path / "src"
    model = build_model("qwen3").to(torch.bfloat16)  # tied: lm_head.weight shares the embedding
    model.config.save_pretrained(src)
    state = model.state_dict()
    torch.save(state, src / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as err:
        convert(src, tmp_path / "out")
    command = str(err.value).split("python -c ", 1)[1]
    assert command.startswith('"') and command.endswith('"')
    subprocess.run([sys.executable, "-c", command[1:-1]], check=True, cwd=tmp_path, timeout=300)
    (src / "pytorch_model.bin").unlink()
    converted = scan_source(weight_files(src))
    assert set(converted) == set(state)
    for name, t in state.items():
        assert torch.equal(read_tensor(converted[name]), t), name
    report = quantize_checkpoint(src, tmp_path / "out", progress=False)
    assert report.kept["lm_head"] == "lm_head" and len(report.layers) == 14


def test_no_weights_at_all(tmp_path):
    src = config_only_source(tmp_path / "src")
    with pytest.raises(CheckpointError, match="no \\*.safetensors weight files"):
        convert(src, tmp_path / "out")


@pytest.mark.parametrize("damage", ["header_length", "header_json", "truncated"])
def test_corrupt_safetensors_names_the_file(tmp_path, damage):
    src = make_source(tmp_path / "src")
    path = src / "model.safetensors"
    data = bytearray(path.read_bytes())
    if damage == "header_length":
        data[:8] = (10**12).to_bytes(8, "little")
    elif damage == "header_json":
        data[8:20] = b"@@@@@@@@@@@@"
    else:
        del data[-100:]
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt or unreadable safetensors file"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_index_listing_missing_shard(tmp_path):
    src = make_source(tmp_path / "src")
    index = {"metadata": {}, "weight_map": {"a.weight": "model.safetensors", "b.weight": "model-2.safetensors"}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"lists missing shard\(s\): model-2\.safetensors"):
        convert(src, tmp_path / "out")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_weight_names_the_tensor(tmp_path, bad):
    w = torch.randn(128, 256).to(torch.bfloat16)
    w[7, 100] = bad
    src = make_source(tmp_path / "src", {"model.layers.0.mlp.down_proj.weight": w})
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'model\.layers\.0\.mlp\.down_proj\.weight' contains NaN or Inf"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dtype", [torch.int8, torch.float8_e4m3fn, torch.float64])
def test_unsupported_weight_dtype_names_the_tensor(tmp_path, dtype):
    w = torch.randn(128, 256).to(dtype)
    src = make_source(tmp_path / "src", {"model.layers.0.mlp.down_proj.weight": w})
    with pytest.raises(CheckpointError, match=r"'model\.layers\.0\.mlp\.down_proj\.weight' has dtype (I8|F8_E4M3|F64).*--ignore"):
        convert(src, tmp_path / "out")


def test_unsupported_dtype_is_fine_when_kept(tmp_path):
    """An F8 tensor that is not quantized is copied byte for byte."""
    w8 = torch.randn(128, 256).to(torch.float8_e4m3fn)
    src = make_source(tmp_path / "src", {"model.layers.0.mlp.down_proj.weight": w8,
                                         "model.layers.0.mlp.up_proj.weight": torch.randn(256, 128).to(torch.bfloat16)})
    report = quantize_checkpoint(src, tmp_path / "out", method="rtn", progress=False, ignore=["down_proj"])
    assert report.kept["model.layers.0.mlp.down_proj"] == "ignored by user"
    raw = (tmp_path / "out" / "model-00001-of-00001.safetensors").read_bytes()
    assert w8.view(torch.uint8).numpy().tobytes() in raw


def test_already_quantized_source_is_refused(tmp_path):
    src = make_source(tmp_path / "src", config=LLAMA | {"quantization_config": {"quant_method": "gptq"}})
    with pytest.raises(CheckpointError, match="already has a quantization_config \\(gptq\\)"):
        convert(src, tmp_path / "out")


def test_hub_repo_id_offline_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match=r"'hlwq-test/not-a-model' is not a local directory and could not be downloaded"):
        convert("hlwq-test/not-a-model", tmp_path / "out")


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("1.5kb") == 1500
    assert parse_size(1234) == 1234
    with pytest.raises(ValueError, match="cannot parse size"):
        parse_size("five gigs")


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="gptq"), "method must be"),
    (dict(scheme="sym", scale="minmax"), "scale must be"),
    (dict(scale="max"), "scale must be"),
    (dict(group_size=100), "group_size must be"),
    (dict(method="hlwq", bits=9), "bits must be"),
])
def test_bad_options(tmp_path, kwargs, message):
    src = make_source(tmp_path / "src")
    with pytest.raises(ValueError, match=message):
        quantize_checkpoint(src, tmp_path / "out", progress=False, **kwargs)


def test_overwrite_never_deletes_unrelated_files(tmp_path):
    src = make_source(tmp_path / "src")
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "thesis.tex").write_text("years of work")
    with pytest.raises(CheckpointError, match="is not an earlier output of this converter"):
        quantize_checkpoint(src, dst, progress=False, overwrite=True)
    assert (dst / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]
