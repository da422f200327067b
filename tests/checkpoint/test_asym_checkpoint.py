"""quantize_checkpoint(scheme="asym") and ``--scheme asym``, the default: compressed-tensors' asymmetric
``pack-quantized`` layout (weight_zero_point, ``symmetric: false``), bit-exact against the library
op and compressed-tensors' decompressor, loaded by transformers, checked by verify."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hlwq_kernels.checkpoint import cpu_backend, quantize_checkpoint
from hlwq_kernels.checkpoint.pipeline import MOE_NOTE
from hlwq_kernels.checkpoint.io import read_tensor, scan_source, weight_files
from hlwq_kernels.checkpoint.verify import verify_checkpoint
from hlwq_kernels.formats import compressed_tensors as ct
from hlwq_kernels.ops.int4_asym import Int4AsymWeight, dequantize_int4_asym, quantize_int4_asym
from tests.tiny_checkpoints import save_tiny

pytest.importorskip("compressed_tensors")
transformers = pytest.importorskip("transformers")

RULES = ("minmax", "clip", "hqq")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """rule -> (source, converted) of the tiny llama, pieces of 64 rows (several per weight)."""
    root = tmp_path_factory.mktemp("asym")
    src = save_tiny("llama", root / "src")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cpu_backend, "PIECE_BYTES", 1)  # 64-row pieces: zero-point words written at offsets
        for rule in RULES:
            dst = root / rule
            report = quantize_checkpoint(src, dst, scheme="asym", scale=rule, max_shard_size="300KB", progress=False)
            assert report.scheme == "asym" and report.scale == rule and report.shards >= 2
            out[rule] = (src, dst)
    return out


def stored(dst: Path) -> dict[str, torch.Tensor]:
    return {name: read_tensor(t) for name, t in scan_source(weight_files(dst)).items()}


def modules(tensors: dict[str, torch.Tensor]) -> list[str]:
    return sorted(n[: -len(".weight_packed")] for n in tensors if n.endswith(".weight_packed"))


@pytest.mark.parametrize("rule", RULES)
def test_tensors_and_config(converted, rule):
    src, dst = converted[rule]
    qc = json.loads((dst / "config.json").read_text())["quantization_config"]
    weights = qc["config_groups"]["group_0"]["weights"]
    assert weights == {"num_bits": 4, "type": "int", "symmetric": False, "strategy": "group", "dynamic": False,
                       "group_size": 128}
    assert qc["format"] == "pack-quantized" and qc["quant_method"] == "compressed-tensors"
    source, ours = stored(src), stored(dst)
    names = modules(ours)
    assert len(names) == 14  # 2 layers x (q, k, v, o, gate, up, down); lm_head and embeddings kept
    for m in names:
        w = source[f"{m}.weight"]
        n, k = w.shape
        expected = quantize_int4_asym(w, 128, rule)  # the whole tensor at once: the pieces are row-exact
        assert ours[f"{m}.weight_packed"].dtype == torch.int32 and ours[f"{m}.weight_packed"].shape == (n, k // 8)
        assert ours[f"{m}.weight_scale"].dtype == w.dtype and ours[f"{m}.weight_scale"].shape == (n, k // 128)
        assert ours[f"{m}.weight_zero_point"].dtype == torch.int32
        assert ours[f"{m}.weight_zero_point"].shape == (-(-n // 8), k // 128)
        assert ours[f"{m}.weight_shape"].tolist() == [n, k]
        assert torch.equal(ours[f"{m}.weight_packed"], expected.packed), m
        assert torch.equal(ours[f"{m}.weight_scale"], expected.scale), m
        assert torch.equal(ours[f"{m}.weight_zero_point"], expected.zero_point_packed), m
    assert not any(n.endswith(".weight_zero_point") for n in ours if n[: -len(".weight_zero_point")] not in names)


@pytest.mark.parametrize("rule", RULES)
def test_compressed_tensors_decompressor_bit_exact(converted, rule):
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig

    _, dst = converted[rule]
    qc = json.loads((dst / "config.json").read_text())["quantization_config"]
    scheme = QuantizationConfig.model_validate(qc).config_groups["group_0"]  # its own schema accepts ours
    assert scheme.weights.symmetric is False
    tensors = stored(dst)
    for m in modules(tensors):
        state = {f"weight_{s}": tensors[f"{m}.weight_{s}"] for s in ("packed", "scale", "zero_point", "shape")}
        restored = PackedQuantizationCompressor.decompress(dict(state), scheme)["weight"]
        q = ct.decompress(m, tensors.__getitem__, 128, symmetric=False)
        assert isinstance(q, Int4AsymWeight)
        assert restored.dtype == q.scale.dtype and torch.equal(restored, dequantize_int4_asym(q)), m


def test_transformers_loads_q_minus_z_times_s(converted):
    from tests.checkpoint.test_readers import load, model_weight

    src, dst = converted["hqq"]
    tensors = stored(dst)
    model = load(dst)
    reference = load(src)
    with torch.no_grad():
        for m in modules(tensors):
            q = ct.decompress(m, tensors.__getitem__, 128, symmetric=False)
            expected = dequantize_int4_asym(q)  # (q - z) * s
            loaded = model_weight(model, m)[1]
            assert loaded.dtype == expected.dtype and torch.equal(loaded, expected), m
            model_weight(reference, m)[1].copy_(expected)
        ids = torch.randint(3, 500, (2, 12), generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(model(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("rule", RULES)
def test_verify_passes_and_measures(converted, rule):
    src, dst = converted[rule]
    result = verify_checkpoint(dst, against=src)
    assert result.ok, result.problems
    assert result.quantized == 14 and len(result.layers) == 14
    report = json.loads((dst / "hlwq_report.json").read_text())
    by_name = {l["name"]: l for l in report["layers"]}
    for layer in result.layers:  # verify's error (whole tensor, float64) agrees with the converter's (pieces)
        assert layer.rel_error == pytest.approx(by_name[layer.name]["rel_error"], rel=1e-4)
        assert 0.01 < layer.rel_error < 0.2


def test_verify_detects_a_missing_or_misshaped_zero_point(converted, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    _, dst = converted["minmax"]
    broken = tmp_path / "broken"
    shutil.copytree(dst, broken)
    shard = next(p for p in sorted(broken.glob("*.safetensors"))
                 if any(n.endswith(".weight_zero_point") for n in load_file(p)))
    tensors = load_file(shard)
    name = next(n for n in tensors if n.endswith(".weight_zero_point"))
    m = name[: -len(".weight_zero_point")]
    tensors[name] = tensors[name][:-1]
    save_file(tensors, shard, metadata={"format": "pt"})
    problems = verify_checkpoint(broken).problems
    assert any(p.startswith(f"{m}.weight_zero_point is I32") for p in problems), problems
    del tensors[name]
    save_file(tensors, shard, metadata={"format": "pt"})
    problems = verify_checkpoint(broken).problems
    assert f"{m}: missing weight_zero_point" in problems, problems


def test_symmetric_config_is_reported_as_such(converted):
    _, dst = converted["minmax"]
    config = json.loads((dst / "config.json").read_text())
    assert ct.check_config(config)[2:] == ([], False)
    config["quantization_config"] = ct.quantization_config(128, [])
    assert ct.check_config(config)[2:] == ([], True)


@pytest.mark.parametrize("options, message", [
    (dict(scheme="asym", scale="absmax"), "scale must be one of minmax, clip, hqq with scheme 'asym', got 'absmax'"),
    (dict(scheme="sym", scale="hqq"), "scale must be one of absmax, mse with scheme 'sym', got 'hqq'"),
    (dict(scale="median"), "scale must be one of minmax, clip, hqq with scheme 'asym', got 'median'"),
    (dict(scheme="affine"), "scheme must be one of asym, sym, got 'affine'"),
])
def test_wrong_combination_is_one_error(converted, tmp_path, options, message):
    src, _ = converted["minmax"]
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        quantize_checkpoint(src, tmp_path / "out", progress=False, **options)
    assert not (tmp_path / "out").exists()


def test_cli_default_is_asym_minmax(converted, tmp_path):
    """No --scheme, no --scale: asymmetric min-max, the same bytes as --scheme asym; --scale alone
    picks its scheme; a rule of the other scheme is one error line."""
    src, reference = converted["minmax"]
    dst = tmp_path / "cli"
    run = lambda *a: subprocess.run([sys.executable, "-m", "hlwq_kernels.convert", *a], capture_output=True, text=True)
    proc = run(str(src), str(dst), "--quiet", "--max-shard-size", "300KB")
    assert proc.returncode == 0, proc.stderr
    assert "asymmetric: scale and zero point, scale minmax" in proc.stdout
    report = json.loads((dst / "hlwq_report.json").read_text())
    assert report["scheme"] == "asym" and report["scale"] == "minmax"
    assert stored(dst).keys() == stored(reference).keys()
    assert all(torch.equal(t, stored(reference)[n]) for n, t in stored(dst).items())
    assert run("--verify", str(dst), "--against", str(src)).returncode == 0
    mse = run(str(src), str(tmp_path / "mse"), "--scale", "mse", "--quiet")
    assert mse.returncode == 0 and "symmetric, scale mse" in mse.stdout, mse.stderr
    assert json.loads((tmp_path / "mse" / "config.json").read_text())["quantization_config"]["config_groups"][
        "group_0"]["weights"]["symmetric"] is True
    bad = run(str(src), str(tmp_path / "bad"), "--scheme", "asym", "--scale", "mse")
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert bad.stderr.startswith("error: scale must be one of minmax, clip, hqq with scheme 'asym', got 'mse'")


def test_hlwq_with_the_default_scheme(converted, tmp_path):
    """--method hlwq without --scheme: the pre-pass output quantized asymmetrically, which verify
    accepts and whose error is that of the pre-pass plus INT4."""
    src, _ = converted["minmax"]
    report = quantize_checkpoint(src, tmp_path / "hlwq", method="hlwq", progress=False)
    assert report.scheme == "asym" and report.scale == "minmax"
    result = verify_checkpoint(tmp_path / "hlwq", against=src)
    assert result.ok, result.problems
    plain = {l.name: l.rel_error for l in verify_checkpoint(converted["minmax"][1], against=src).layers}
    assert all(plain[l.name] < l.rel_error < 0.2 for l in result.layers)


def test_moe_model_gets_the_symmetric_default_with_a_note(tmp_path):
    """Quantized MoE experts: sym unless a scheme or an asymmetric rule is asked for."""
    src = save_tiny("qwen3_moe", tmp_path / "src")
    report = quantize_checkpoint(src, tmp_path / "default", progress=False)
    assert (report.scheme, report.scale) == ("sym", "absmax") and MOE_NOTE in report.notes
    assert MOE_NOTE in report.summary()
    for options in (dict(scheme="asym"), dict(scale="clip")):
        report = quantize_checkpoint(src, tmp_path / "asym", progress=False, overwrite=True, **options)
        assert report.scheme == "asym" and MOE_NOTE not in report.notes
        assert verify_checkpoint(tmp_path / "asym", against=src).ok
