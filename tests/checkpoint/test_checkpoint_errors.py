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
from hlwq_kernels.checkpoint.verify import verify_checkpoint
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


@pytest.mark.parametrize("options, error, match", [
    (dict(device="garbage"), ValueError, "device must be auto, cpu, cuda or cuda:N, got 'garbage'"),
    (dict(device="meta"), ValueError, "device must be"),
    (dict(ignore=["re:("]), ValueError, r"ignore pattern 're:\(' is not a valid regular expression"),
    (dict(ignore=[3]), ValueError, "ignore patterns must be strings"),
    (dict(method="hlwq", block_size=0), ValueError, "block_size must be a power of two in"),
    (dict(method="hlwq", block_size=48), ValueError, "block_size must be a power of two in"),
    (dict(method="hlwq", bits=9), ValueError, "bits must be in 1..8"),
    (dict(rotate=True, rotate_block_size=0), ValueError, "rotate_block_size must be positive, or None"),
    (dict(rotate=True, rotate_seed="a"), TypeError, "rotate_seed must be an integer"),
    (dict(max_shard_size=-1), ValueError, "must not be negative"),
    (dict(group_size=128.0), TypeError, "group_size must be an integer"),
])
def test_bad_options_fail_before_any_work(tmp_path, options, error, match):
    src = make_source(tmp_path / "src")
    with pytest.raises(error, match=match):
        quantize_checkpoint(src, tmp_path / "out", progress=False, **options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_ignore_given_as_one_string(tmp_path):
    src = make_source(tmp_path / "src")
    report = quantize_checkpoint(src, tmp_path / "out", ignore="down_proj", progress=False)
    assert report.layers == [] and report.kept["model.layers.0.mlp.down_proj"] == "ignored by user"
    assert "no layer was quantized: every 2-D weight is kept unquantized (the kept list says why)" in report.notes


@pytest.mark.parametrize("config, match", [
    (dict(LLAMA, quantization_config=None), r"already has a quantization_config \(None\)"),
    (dict(LLAMA, quantization_config="gptq"), r"already has a quantization_config \('gptq'\)"),
    (dict(LLAMA, model_type=["llama"]), r"config\.json: model_type must be a string, got \['llama'\]"),
    (dict(LLAMA, architectures="LlamaForCausalLM"), r"config\.json: architectures must be a list of strings"),
])
def test_config_of_the_wrong_type_names_the_field(tmp_path, config, match):
    src = make_source(tmp_path / "src", config=config)
    with pytest.raises(CheckpointError, match=match):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _two_shards(path: Path) -> Path:
    src = make_source(path, {"a.weight": torch.ones(8, 8)})
    (src / "model.safetensors").rename(src / "model-1.safetensors")
    save_file({"b.weight": torch.ones(8, 8)}, src / "model-2.safetensors")
    return src


@pytest.mark.parametrize("weight_map, match", [
    (["a.weight", "b.weight"], "invalid index .weight_map must map tensor names to shard file names"),
    ({"a.weight": "model-1.safetensors", "b.weight": None}, "invalid index"),
    ({"a.weight": "model-1.safetensors", "b.weight": "../model-2.safetensors"}, "invalid index"),
    ({"a.weight": "model-1.safetensors", "b.weight": "model-1.safetensors"},
     r"does not match its shards: model\.safetensors\.index\.json names tensor 'b\.weight' in model-1\.safetensors, "
     "which does not hold it"),
    ({"a.weight": "model-1.safetensors", "b.weight": "model-2.safetensors", "c.weight": "model-2.safetensors"},
     "names tensor 'c.weight' in model-2.safetensors, which does not hold it"),
])
def test_index_that_disagrees_with_its_shards(tmp_path, weight_map, match):
    src = _two_shards(tmp_path / "src")
    (src / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(CheckpointError, match=match):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_files_that_transformers_does_not_load_are_not_read(tmp_path):
    """Without an index, a model.safetensors is the model (a consolidated.safetensors beside it is not); with an
    index, only the shards it names. The report names what was not read."""
    src = make_source(tmp_path / "src")
    save_file({"junk.weight": torch.randn(128, 256).to(torch.bfloat16)}, src / "consolidated.safetensors")
    report = quantize_checkpoint(src, tmp_path / "out", progress=False)
    assert "junk.weight" not in scan_source(weight_files(tmp_path / "out"))
    assert any(n.startswith("not read: consolidated.safetensors") for n in report.notes), report.notes


def test_empty_weights_are_kept(tmp_path):
    g = torch.Generator().manual_seed(1)
    tensors = {"model.layers.0.mlp.down_proj.weight": torch.randn(128, 256, generator=g).to(torch.bfloat16),
               "model.layers.0.mlp.up_proj.weight": torch.zeros(0, 128, dtype=torch.bfloat16),
               "model.layers.0.mlp.gate_proj.weight": torch.zeros(256, 0, dtype=torch.bfloat16)}
    report = quantize_checkpoint(make_source(tmp_path / "src", tensors), tmp_path / "out", progress=False)
    assert [l.name for l in report.layers] == ["model.layers.0.mlp.down_proj"]
    assert report.kept["model.layers.0.mlp.up_proj"] == "empty" == report.kept["model.layers.0.mlp.gate_proj"]
    out = scan_source(weight_files(tmp_path / "out"))
    assert out["model.layers.0.mlp.up_proj.weight"].shape == (0, 128)


def test_asymmetric_scale_that_overflows_names_the_tensor(tmp_path):
    """fp16 weights of ±65000 in one group: the span overflows fp16, so the min-max scale would be infinite."""
    w = torch.randn(128, 256, generator=torch.Generator().manual_seed(2)).half()
    w[3, 0], w[3, 1] = 65000, -65000
    src = make_source(tmp_path / "src", {"model.layers.0.mlp.down_proj.weight": w})
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'model\.layers\.0\.mlp\.down_proj\.weight': "
                                              r"a group's scale overflows F16.*--scheme sym"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    report = quantize_checkpoint(src, tmp_path / "sym", scheme="sym", progress=False)
    assert report.layers[0].rel_error < 0.2


def test_overwrite_keeps_files_the_earlier_output_did_not_write(tmp_path):
    src = make_source(tmp_path / "src")
    dst = tmp_path / "out"
    convert(src, dst)
    (dst / "eval").mkdir()
    (dst / "eval" / "results.json").write_text("mine")
    with pytest.raises(CheckpointError, match=r"holds files the earlier conversion did not write \(eval/results\.json\)"):
        quantize_checkpoint(src, dst, overwrite=True, progress=False)
    assert (dst / "eval" / "results.json").read_text() == "mine"
    (dst / "eval" / "results.json").unlink()
    quantize_checkpoint(src, dst, overwrite=True, progress=False)  # only its own files (and an empty folder) now


def test_hidden_directories_of_the_user_are_not_deleted(tmp_path):
    """``.<dst>.partial`` that this converter did not make is refused; ``.<dst>.old`` is never touched (an earlier
    output is moved aside under a new name)."""
    src = make_source(tmp_path / "src")
    for name in (".out.partial", ".out.old"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "precious.txt").write_text("mine")
    with pytest.raises(CheckpointError, match=r"\.out\.partial exists and was not made by this converter"):
        convert(src, tmp_path / "out")
    assert (tmp_path / ".out.partial" / "precious.txt").read_text() == "mine"
    (tmp_path / ".out.partial" / "precious.txt").unlink()  # an empty directory of that name is reused
    convert(src, tmp_path / "out")
    quantize_checkpoint(src, tmp_path / "out", overwrite=True, progress=False)
    assert (tmp_path / ".out.old" / "precious.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.old", "out", "src"]


def _damaged_copy(tmp_path: Path, name: str, edit) -> Path:
    """A converted tiny source whose tensor ``name`` has its bytes replaced by ``edit(bytes)``."""
    src = make_source(tmp_path / "src")
    out = tmp_path / "out"
    convert(src, out)
    t = scan_source(weight_files(out))[name]
    data = bytearray(t.file.read_bytes())
    data[t.start:t.end] = edit(bytes(data[t.start:t.end]))
    t.file.write_bytes(bytes(data))
    return src


def test_verify_flags_a_layer_no_better_than_zero(tmp_path):
    src = _damaged_copy(tmp_path, "model.layers.0.mlp.down_proj.weight_zero_point", lambda b: b"\xff" * len(b))
    result = verify_checkpoint(tmp_path / "out", against=src)
    assert not result.ok and result.layers[0].rel_error > 1
    assert result.problems == [f"model.layers.0.mlp.down_proj: relative error {result.layers[0].rel_error:.3g} against "
                               "the source (an all-zero weight has 1): its codes, scales or zero points do not belong "
                               "to this weight"]
    assert verify_checkpoint(tmp_path / "out").ok  # without the source nothing says the values are wrong


def test_verify_checks_the_index_and_weight_shapes(tmp_path):
    src = make_source(tmp_path / "src")
    out = tmp_path / "out"
    convert(src, out)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shard = index["weight_map"].pop("model.norm.weight")
    index["weight_map"]["bogus.weight"] = shard
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    result = verify_checkpoint(out)
    assert result.problems == [
        f"model.safetensors.index.json names tensor 'bogus.weight' in {shard}, which does not hold it",
        f"model.safetensors.index.json does not name tensor 'model.norm.weight' of {shard}"]


def test_verify_reports_a_damaged_shard_as_a_problem(tmp_path):
    src = _damaged_copy(tmp_path, "model.norm.weight", lambda b: b)
    shard = next((tmp_path / "out").glob("model-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-64])
    result = verify_checkpoint(tmp_path / "out", against=src)
    assert not result.ok and "corrupt or unreadable safetensors file" in result.problems[0]


def test_verify_reports_a_malformed_weight_shape(tmp_path):
    src = _damaged_copy(tmp_path, "model.layers.0.mlp.down_proj.weight_shape", lambda b: b)
    out = tmp_path / "out"
    tensors = {name: read_tensor(t) for name, t in scan_source(weight_files(out)).items()}
    tensors["model.layers.0.mlp.down_proj.weight_shape"] = torch.tensor([128, 256, 1])
    for shard in out.glob("model-*.safetensors"):
        shard.unlink()
    save_file(tensors, out / "model-00001-of-00001.safetensors")
    index = {"metadata": {}, "weight_map": {n: "model-00001-of-00001.safetensors" for n in tensors}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index))
    result = verify_checkpoint(out, against=src)
    assert result.problems == ["model.layers.0.mlp.down_proj.weight_shape is I64 [3], expected I64 [2]"]


def test_destination_name_too_long_for_the_hidden_siblings(tmp_path):
    src = make_source(tmp_path / "src")
    with pytest.raises(CheckpointError, match=r"the destination's name is 250 bytes long; at most 227 fit"):
        convert(src, tmp_path / ("d" * 250))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_a_finished_run_removes_what_interrupted_runs_left(tmp_path):
    """A rotated source, a rotation's work directory and a replaced output moved aside, left by interrupted runs,
    are gone after the next finished conversion (here without --rotate); a user's look-alike is kept."""
    src = make_source(tmp_path / "src")
    for name in ("..out.rotated.rotating-k3j2h1g0", ".out.old-a1b2c3d4"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model-00001-of-00001.safetensors").write_bytes(b"partial")
    (tmp_path / ".out.rotated").mkdir()
    write_config(tmp_path / ".out.rotated", **LLAMA, hlwq_rotation={"r1": None})
    (tmp_path / ".out.rotatedX").mkdir()
    convert(src, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.rotatedX", "out", "src"]


def test_rotate_seed_out_of_range(tmp_path):
    src = make_source(tmp_path / "src")
    with pytest.raises(ValueError, match=r"rotate_seed must be in \[-2\*\*63, 2\*\*64 - 1\), got 99999999999999999999999"):
        quantize_checkpoint(src, tmp_path / "out", rotate=True, rotate_seed=99999999999999999999999, progress=False)


def test_verify_against_a_quantized_source_is_refused(tmp_path):
    src = make_source(tmp_path / "src")
    convert(src, tmp_path / "out")
    with pytest.raises(CheckpointError, match=r"--against .*out: it has a quantization_config; give the unquantized"):
        verify_checkpoint(tmp_path / "out", against=tmp_path / "out")
