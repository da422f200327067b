"""Converted checkpoints read by the real readers: transformers + compressed-tensors on CPU (every
known architecture), sentence-transformers (the real MiniLM), and compressed-tensors' own config
parser, unpacker and decompressor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hlwq_kernels.checkpoint import quantize_checkpoint
from hlwq_kernels.checkpoint.pipeline import MOE_NOTE
from hlwq_kernels.checkpoint.io import read_tensor, scan_source, weight_files
from hlwq_kernels.formats import compressed_tensors as ct
from hlwq_kernels.ops.int4 import dequantize_int4, unpack_int4
from hlwq_kernels.ops.int4_asym import dequantize_int4_asym
from hlwq_kernels.models.architectures import KNOWN_MODEL_TYPES
from hlwq_kernels.models.bundled import minilm_dir
from tests.tiny_checkpoints import ARCHS, MODEL_TYPES, save_tiny

SENTENCES = [
    "The cat sits on the mat.",
    "A quantized model still embeds text well.",
    "Vienna is the capital of Austria.",
    "How do I convert a checkpoint to four bits?",
    "The weather was cold and rainy all week.",
    "She plays the violin in an orchestra.",
]

pytest.importorskip("compressed_tensors")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(arch, scheme) -> (source dir, converted dir); built once per module. ``scheme`` None: the
    converter's default (asymmetric)."""
    cache: dict[tuple[str, str | None], tuple[Path, Path]] = {}

    def get(arch: str, scheme: str | None = None) -> tuple[Path, Path]:
        if (arch, scheme) not in cache:
            root = tmp_path_factory.mktemp(arch)
            src = save_tiny(arch, root / "src")
            dst = root / "int4"
            # a kept Linear inside the language model exercises the ignore list through every naming scheme
            report = quantize_checkpoint(src, dst, method="hlwq", scheme=scheme, ignore=["layers.1.mlp.down_proj"],
                                         progress=False)
            assert report.scheme == (scheme or ("sym" if arch in MOE_ARCHS else "asym"))
            assert (MOE_NOTE in report.notes) is (scheme is None and arch in MOE_ARCHS)
            cache[arch, scheme] = (src, dst)
        return cache[arch, scheme]

    return get


def dequantized_weights(dst: Path) -> dict[str, torch.Tensor]:
    """Our dequantization of every quantized module of ``dst`` (either scheme, as its config says):
    module name -> weight."""
    group, _, problems, symmetric = ct.check_config(json.loads((dst / "config.json").read_text()))
    assert not problems, problems
    tensors = scan_source(weight_files(dst))
    read = lambda name: read_tensor(tensors[name])
    out = {}
    for m in (n[: -len(".weight_packed")] for n in tensors if n.endswith(".weight_packed")):
        q = ct.decompress(m, read, group, symmetric)
        out[m] = dequantize_int4(q) if symmetric else dequantize_int4_asym(q)  # in the scale's dtype
    return out


# The tiny architectures with quantized per-expert MoE modules (qwen3_vl_moe keeps its fused experts).
MOE_ARCHS = {"qwen3_moe", "qwen3_next", "mixtral", "qwen2_moe", "qwen3_5_moe"}
MIXTRAL_EXPERTS = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}


def model_weight(model: torch.nn.Module, ckpt_name: str) -> tuple[str, torch.Tensor]:
    """The parameter (name, view) that checkpoint module ``ckpt_name`` loads into. transformers 5
    renames multimodal checkpoints (``model.x`` -> ``model.language_model.x``, ``visual.x`` ->
    ``model.visual.x``; Gemma 3: ``language_model.model.x`` -> ``model.language_model.x``) and fuses MoE experts (``experts.E.gate_proj`` / ``up_proj`` -> rows of
    ``experts.gate_up_proj[E]``, ``experts.E.down_proj`` -> ``experts.down_proj[E]``; Mixtral's
    ``block_sparse_moe.experts.E.w1`` / ``w3`` / ``w2`` likewise, under ``mlp``)."""
    params = dict(model.named_parameters())
    parent, _, leaf = ckpt_name.rpartition(".")
    if ".block_sparse_moe.experts." in ckpt_name:
        ckpt_name = parent.replace(".block_sparse_moe.", ".mlp.") + "." + MIXTRAL_EXPERTS[leaf]
    candidates = (ckpt_name, "model.language_model." + ckpt_name.removeprefix("model."), "model." + ckpt_name,
                  "model.language_model." + ckpt_name.removeprefix("language_model.model."))
    for candidate in candidates:
        if f"{candidate}.weight" in params:
            return f"{candidate}.weight", params[f"{candidate}.weight"]
        parent, _, leaf = candidate.rpartition(".")
        experts, _, index = parent.rpartition(".")
        if experts.endswith(".experts") and f"{experts}.down_proj" in params:
            if leaf == "down_proj":
                return f"{experts}.down_proj", params[f"{experts}.down_proj"][int(index)]
            name = f"{experts}.gate_up_proj"
            gate, up = params[name][int(index)].chunk(2, dim=0)
            return name, gate if leaf == "gate_proj" else up
    raise KeyError(ckpt_name)


def load(path: Path, cls=None) -> torch.nn.Module:
    """``path`` loaded by transformers with the class its config names (or ``cls``)."""
    if cls is None:
        cls = getattr(transformers, json.loads((path / "config.json").read_text())["architectures"][0])
    return cls.from_pretrained(path, dtype=torch.bfloat16).eval()


def assert_loads_exactly(src: Path, dst: Path, cls=None) -> None:
    """transformers + compressed-tensors load ``dst`` on CPU, dequantized while loading (the config's
    ``dequantize``); every quantized weight (MoE experts included, which transformers 5 fuses into
    experts.gate_up_proj on load) equals our dequantization exactly, every other parameter equals
    the source, and the logits equal those of the source model carrying our dequantized weights."""
    ours = dequantized_weights(dst)
    assert len(ours) >= 7  # Phi-3: 2 layers x (qkv, o, gate_up, down), one down_proj kept
    ids = torch.randint(3, 500, (2, 12), generator=torch.Generator().manual_seed(1))
    quant = load(dst, cls)
    reference = load(src, cls)
    with torch.no_grad():
        for m, w in ours.items():
            loaded = model_weight(quant, m)[1]  # before any forward: dense already
            assert loaded.dtype == w.dtype and torch.equal(loaded, w), m
            target = model_weight(reference, m)[1]
            assert not torch.equal(target, w), m  # the source really differs: the copy below matters
            target.copy_(w)
        logits = quant(input_ids=ids).logits
        expected = reference(input_ids=ids).logits
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    # every other parameter (embeddings, norms, kept layers, towers) loaded with the source values
    quantized = {model_weight(quant, m)[0] for m in ours}
    src_params = dict(load(src, cls).named_parameters())
    kept = [(n, p) for n, p in quant.named_parameters()
            if n not in quantized and not n.rsplit(".", 1)[-1].startswith("weight_")]
    assert kept
    for name, p in kept:
        assert torch.equal(p, src_params[name]), name


@pytest.mark.parametrize("arch", ARCHS)
def test_transformers_loads_exact_weights_and_logits(arch, converted):
    """The default output of every architecture: asymmetric (zero points, ``symmetric: false``),
    symmetric for the models with quantized MoE experts (transformers drops their zero points)."""
    src, dst = converted(arch)
    assert json.loads((src / "config.json").read_text())["model_type"] == MODEL_TYPES.get(arch, arch)
    weights = json.loads((dst / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]["weights"]
    assert weights["symmetric"] is (arch in MOE_ARCHS)
    assert any(n.endswith(".weight_zero_point") for n in scan_source(weight_files(dst))) is (arch not in MOE_ARCHS)
    assert_loads_exactly(src, dst)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_transformers_loads_symmetric_exactly(arch, converted):
    src, dst = converted(arch, "sym")
    assert not any(n.endswith(".weight_zero_point") for n in scan_source(weight_files(dst)))
    assert_loads_exactly(src, dst)


def test_default_logits_close_to_the_source(converted, tmp_path):
    """The default conversion (rtn, asym, minmax) loaded by transformers computes close to the
    unquantized source (both in float32), as close as the symmetric absmax one or closer."""
    ids = torch.randint(3, 500, (2, 12), generator=torch.Generator().manual_seed(1))

    def logits(path: Path) -> torch.Tensor:
        model = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        with torch.no_grad():
            return model(input_ids=ids).logits

    src = converted("llama")[0]
    reference = logits(src)
    err = {}
    for scheme in (None, "sym"):
        dst = tmp_path / str(scheme)
        report = quantize_checkpoint(src, dst, scheme=scheme, progress=False)
        assert (report.scheme, report.scale) == (("asym", "minmax") if scheme is None else ("sym", "absmax"))
        err[scheme] = float((logits(dst) - reference).norm() / reference.norm())
    print("relative logit error to the source:", err)
    assert 0 < err[None] < 0.3 and err[None] <= err["sym"], err  # 0.198 and 0.233 measured


def test_every_known_model_type_has_a_tiny_model():
    """KNOWN_MODEL_TYPES lists only what the test above covers (bert: the real MiniLM below)."""
    tested = {MODEL_TYPES.get(arch, arch) for arch in ARCHS} | {"bert"}
    assert KNOWN_MODEL_TYPES <= tested, sorted(KNOWN_MODEL_TYPES - tested)


def test_tied_decoder_without_architectures(tmp_path):
    """A tied decoder whose config.json has no ``architectures`` (as written from a GGUF-loaded
    model) gets ``lm_head`` in ``ignore`` and loads in transformers exactly."""
    src = save_tiny("qwen3", tmp_path / "src")  # tie_word_embeddings=True: no lm_head tensor
    config = json.loads((src / "config.json").read_text())
    del config["architectures"]
    (src / "config.json").write_text(json.dumps(config))
    dst = tmp_path / "int4"
    quantize_checkpoint(src, dst, scheme="sym", progress=False)  # the default scheme: every architecture above
    assert "lm_head" in json.loads((dst / "config.json").read_text())["quantization_config"]["ignore"]
    assert_loads_exactly(src, dst, transformers.AutoModelForCausalLM)


def test_sentence_transformers_loads_converted_minilm(minilm_int4, tmp_path):
    """A plain SentenceTransformer(dst) loads the converted MiniLM (pooling and tokenizer files are
    copied) and embeds close to the original: with the default (asym, minmax: the demo's output)
    cosine >= 0.95 on every sentence, and closer on average than symmetric absmax."""
    st = pytest.importorskip("sentence_transformers")
    original = st.SentenceTransformer(str(minilm_dir()), device="cpu")
    a = original.encode(SENTENCES, convert_to_tensor=True)
    config = json.loads((minilm_int4 / "config.json").read_text())
    assert config["quantization_config"]["config_groups"]["group_0"]["weights"]["symmetric"] is False
    quantize_checkpoint(minilm_dir(), tmp_path / "sym", scheme="sym", progress=False)
    cos = {}
    for name, path in (("default", minilm_int4), ("sym absmax", tmp_path / "sym")):
        b = st.SentenceTransformer(str(path), device="cpu").encode(SENTENCES, convert_to_tensor=True)
        assert a.shape == b.shape == (len(SENTENCES), 384)
        cos[name] = torch.nn.functional.cosine_similarity(a, b)
        print(f"cosine to the original per sentence, {name}:", [round(c, 3) for c in cos[name].tolist()])  # README (-rP)
    c = cos["default"]
    assert (c >= 0.95).all() and (c < 0.9999).all(), c.tolist()  # close, and really quantized
    assert c.mean() > cos["sym absmax"].mean(), cos


def test_sentence_transformers_module_weights_are_copied(tmp_path):
    """A sentence-transformers model with a Dense module after pooling (its own 2_Dense/model.safetensors): the
    module's files are copied as they are, and the converted model loads and embeds close to the original."""
    st = pytest.importorskip("sentence_transformers")
    torch.manual_seed(0)
    original = st.SentenceTransformer(str(minilm_dir()), device="cpu")
    model = st.SentenceTransformer(modules=[*original, st.models.Dense(384, 128)], device="cpu")
    model.save(str(tmp_path / "src"))
    report = quantize_checkpoint(tmp_path / "src", tmp_path / "out", progress=False)
    dense = next(p for p in report.copied_files if p.endswith("/model.safetensors"))
    assert (tmp_path / "out" / dense).read_bytes() == (tmp_path / "src" / dense).read_bytes()
    a = model.encode(SENTENCES, convert_to_tensor=True)
    b = st.SentenceTransformer(str(tmp_path / "out"), device="cpu").encode(SENTENCES, convert_to_tensor=True)
    assert a.shape == b.shape == (len(SENTENCES), 128)
    assert (torch.nn.functional.cosine_similarity(a, b) > 0.9).all()


@pytest.mark.parametrize("arch, scheme", [("llama", None), ("qwen3_moe", None), ("llama", "sym"), ("qwen3_moe", "asym")])
def test_compressed_tensors_decompressor(arch, scheme, converted):
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32
    from compressed_tensors.quantization import QuantizationConfig

    _, dst = converted(arch, scheme)
    qc = json.loads((dst / "config.json").read_text())["quantization_config"]
    parsed = QuantizationConfig.model_validate(qc)  # compressed-tensors' own schema accepts ours
    args = parsed.config_groups["group_0"]
    assert args.weights.group_size == 128 and args.weights.num_bits == 4
    assert args.weights.symmetric is ((scheme or ("sym" if arch in MOE_ARCHS else "asym")) == "sym")
    tensors = scan_source(weight_files(dst))
    ours = dequantized_weights(dst)
    for m, w in ours.items():
        names = ct.tensor_names(m, args.weights.symmetric)
        state = {name.rsplit(".", 1)[-1]: read_tensor(tensors[name]) for name in names}
        out = PackedQuantizationCompressor.decompress(dict(state), args)
        assert torch.equal(out["weight"].to(w.dtype), w), m
        codes = unpack_from_int32(state["weight_packed"], 4, state["weight_shape"])
        assert torch.equal(codes.to(torch.int8), unpack_int4(state["weight_packed"], w.shape[1])), m
        assert torch.equal(pack_to_int32(codes, 4), state["weight_packed"]), m
