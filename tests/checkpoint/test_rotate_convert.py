"""quantize_checkpoint(rotate=True) and ``--rotate``: rotate into ``.<dst>.rotated``, quantize that,
keep the ``hlwq_rotation`` record; R2 alone where R1 is refused; a fitting block where the asked one
does not divide the hidden size."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hlwq_kernels.checkpoint import quantize_checkpoint
from hlwq_kernels.checkpoint.cli import main
from hlwq_kernels.checkpoint.io import CheckpointError, read_tensor, scan_source, weight_files
from hlwq_kernels.checkpoint.rotated_source import choose_rotation, fitting_block, prepare_rotated_source, rotated_dir
from hlwq_kernels.checkpoint.verify import verify_checkpoint
from tests.checkpoint.test_checkpoint import sources  # noqa: F401 (the module-scoped tiny-source fixture)

transformers = pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")


def stored(path: Path) -> dict[str, torch.Tensor]:
    return {name: read_tensor(t) for name, t in scan_source(weight_files(path)).items()}


def logits(path: Path, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_rotated_conversion_structure_and_function(sources, tmp_path):
    """A tied decoder (Qwen3): the output has its own lm_head, identity norms, the rotation record,
    passes verify, loads in transformers, and computes close to the source; the rotated
    intermediate directory is gone."""
    src = sources("qwen3")
    dst = tmp_path / "rot"
    report = quantize_checkpoint(src, dst, rotate=True, rotate_seed=3, progress=False)
    assert report.notes[0] == "rotated before quantizing: R1 block 128, R2 per head of 64, seed 3 (config.json: hlwq_rotation)"
    assert not rotated_dir(dst).exists() and sorted(p.name for p in tmp_path.iterdir()) == ["rot"]
    config = json.loads((dst / "config.json").read_text())
    record = config["hlwq_rotation"]
    assert record["r1"]["block_size"] == 128 and record["r1"]["seed"] == 3 and record["r2"]["size"] == 64
    assert config["tie_word_embeddings"] is False
    out, source = stored(dst), stored(src)
    assert "lm_head.weight" in out and "lm_head.weight" not in source  # untied, kept in the source dtype
    assert "lm_head" in config["quantization_config"]["ignore"]
    norms = [n for n in out if n.endswith("layernorm.weight") or n == "model.norm.weight"]
    assert len(norms) == 5 and all(torch.equal(out[n], torch.ones_like(out[n])) for n in norms)
    assert not torch.equal(out["model.embed_tokens.weight"], source["model.embed_tokens.weight"])
    result = verify_checkpoint(dst)
    assert result.ok, result.problems
    against = verify_checkpoint(dst, against=src)  # rotated values are not the source's: only the names are checked
    assert against.ok and against.notes == ["rotated before quantizing (hlwq_rotation): values not compared with the "
                                            "source"], against.problems
    # the rotated quantized model stays as close to the source as the plain quantized one
    plain = tmp_path / "plain"
    quantize_checkpoint(src, plain, progress=False)
    ids = torch.randint(3, 500, (2, 12), generator=torch.Generator().manual_seed(1))
    reference = logits(src, ids)
    err = {p.name: float((logits(p, ids) - reference).norm() / reference.norm()) for p in (dst, plain)}
    assert 0 < err["rot"] < 0.5 and err["rot"] < 2 * err["plain"], err


def test_r1_refused_gives_r2_alone(sources, tmp_path):
    src = sources("gemma2")
    report = quantize_checkpoint(src, tmp_path / "out", rotate=True, progress=False)
    assert report.notes[0].startswith("rotated before quantizing: no R1, R2 per head of")
    assert report.notes[1].startswith("rotation: R2 only (cannot fold R1 into model_type 'gemma2'")
    record = json.loads((tmp_path / "out" / "config.json").read_text())["hlwq_rotation"]
    assert record["r1"] is None and record["r2"]["per_head"] is True
    assert verify_checkpoint(tmp_path / "out").ok


def test_nothing_to_rotate_is_one_error(sources, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for p in sources("llama").iterdir():
        if p.is_file():
            (src / p.name).write_bytes(p.read_bytes())
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps(config | {"model_type": "bert"}))
    with pytest.raises(CheckpointError, match=r"^--rotate: cannot rotate model_type 'bert'"):
        quantize_checkpoint(src, tmp_path / "out", rotate=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_block_that_does_not_divide_the_hidden_size():
    """SmolLM2's hidden size 576: block 128 does not divide it, 64 is used and noted."""
    assert fitting_block(576, 128) == 64 and fitting_block(256, 128) == 128 and fitting_block(576, 576) == 64
    config = transformers.LlamaConfig(hidden_size=576, num_attention_heads=9, num_key_value_heads=3,
                                      intermediate_size=256, num_hidden_layers=1, vocab_size=64)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    shapes = {n: tuple(p.shape) for n, p in model.state_dict().items()}
    choice, plan = choose_rotation(config.to_dict(), shapes, seed=0, block_size=128)
    assert choice.block_size == 64 and plan.r1.block == 64
    assert "rotation: R1 block 64 (hidden size 576 is not a multiple of 128)" in choice.notes


def test_rotated_source_reused_only_when_it_matches(sources, tmp_path):
    src = sources("llama")
    dst = tmp_path / "out"
    work, _ = prepare_rotated_source(src, dst, seed=0, block_size=128, max_bytes=1 << 30)
    stamp = (work / "config.json").stat().st_mtime_ns
    again, notes = prepare_rotated_source(src, dst, seed=0, block_size=128, max_bytes=1 << 30)
    assert again == work and notes[-1] == f"rotation: reused {work} from an earlier run"
    assert (work / "config.json").stat().st_mtime_ns == stamp
    _, notes = prepare_rotated_source(src, dst, seed=1, block_size=128, max_bytes=1 << 30)
    assert not notes[-1].startswith("rotation: reused")
    assert json.loads((work / "config.json").read_text())["hlwq_rotation"]["r1"]["seed"] == 1
    # the same options on a source whose weights changed since: rotated afresh
    changed = tmp_path / "changed"
    shutil.copytree(src, changed)
    prepare_rotated_source(changed, dst, seed=1, block_size=128, max_bytes=1 << 30)
    weights = next(changed.glob("*.safetensors"))
    tensors = {name: read_tensor(t) for name, t in scan_source([weights]).items()}
    tensors["model.norm.weight"] = tensors["model.norm.weight"] * 2
    save_file(tensors, weights)
    _, notes = prepare_rotated_source(changed, dst, seed=1, block_size=128, max_bytes=1 << 30)
    assert not notes[-1].startswith("rotation: reused")


def test_cli_rotate_with_asym(sources, tmp_path, capsys):
    src = sources("llama")
    dst = tmp_path / "out"
    assert main([str(src), str(dst), "--rotate", "--rotate-seed", "2", "--scheme", "asym", "--quiet"]) == 0
    assert "rotated before quantizing: R1 block 128, R2 per head of 64, seed 2" in capsys.readouterr().out
    config = json.loads((dst / "config.json").read_text())
    assert config["hlwq_rotation"]["r1"]["seed"] == 2
    assert config["quantization_config"]["config_groups"]["group_0"]["weights"]["symmetric"] is False
    assert main(["--verify", str(dst)]) == 0
    with pytest.raises(SystemExit) as exit_info:
        main([str(src), str(tmp_path / "other"), "--rotate-seed", "1"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().endswith("error: --rotate-seed and --rotate-block-size need --rotate")


def test_interrupted_rotated_asym_conversion_resumes_byte_identical(sources, tmp_path, monkeypatch):
    """A write error in the quantization stage leaves ``.<dst>.rotated`` and ``.<dst>.partial``; the
    rerun reuses the rotation, redoes only the unfinished tensors and writes the same bytes as an
    uninterrupted run."""
    import hashlib

    from hlwq_kernels.checkpoint import io as checkpoint_io
    from hlwq_kernels.checkpoint.progress import load_done

    src = sources("llama")
    options = dict(rotate=True, scheme="asym", scale="clip", max_shard_size="250KB", progress=False)
    clean = tmp_path / "clean"
    quantize_checkpoint(src, clean, **options)
    dst = tmp_path / "out"
    real_write_at = checkpoint_io.write_at
    calls = {"n": 0}

    def failing_write_at(fd, data, offset, path):
        if ".out.partial" in str(path) and "00003-of" in path.name:
            calls["n"] += 1
            if calls["n"] == 3:
                raise CheckpointError(f"disk full while writing {path}")
        real_write_at(fd, data, offset, path)

    monkeypatch.setattr(checkpoint_io, "write_at", failing_write_at)
    with pytest.raises(CheckpointError, match="disk full"):
        quantize_checkpoint(src, dst, **options)
    assert not dst.exists() and rotated_dir(dst).is_dir()
    saved = len(load_done(tmp_path / ".out.partial"))
    assert saved > 0
    monkeypatch.setattr(checkpoint_io, "write_at", real_write_at)
    report = quantize_checkpoint(src, dst, **options)
    assert report.resumed_tensors == saved and f"rotation: reused {rotated_dir(dst)} from an earlier run" in report.notes
    assert not rotated_dir(dst).exists()

    def digests(path: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in path.iterdir()
                if p.is_file() and p.name != "hlwq_report.json"}

    assert digests(dst) == digests(clean)
