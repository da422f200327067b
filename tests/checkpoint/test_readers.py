"""Converted checkpoints read by the real readers: transformers + compressed-tensors on CPU (every
known architecture), sentence-transformers (the real MiniLM), and compressed-tensors' own config
parser, unpacker and decompressor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hlwq_kernels.checkpoint import quantize_checkpoint
from hlwq_kernels.checkpoint.io import read_tensor, scan_source, weight_files
from hlwq_kernels.ops.int4 import Int4Weight, dequantize_int4, unpack_int4
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
    """arch -> (source dir, converted dir); built once per module."""
    cache: dict[str, tuple[Path, Path]] = {}

    def get(arch: str) -> tuple[Path, Path]:
        if arch not in cache:
            root = tmp_path_factory.mktemp(arch)
            src = save_tiny(arch, root / "src")
            dst = root / "int4"
            # a kept Linear inside the language model exercises the ignore list through every naming scheme
            quantize_checkpoint(src, dst, method="hlwq", ignore=["layers.1.mlp.down_proj"], progress=False)
            cache[arch] = (src, dst)
        return cache[arch]

    return get


def dequantized_weights(dst: Path) -> dict[str, torch.Tensor]:
    """Our dequantization of every quantized module of ``dst``: module name -> weight."""
    config = json.loads((dst / "config.json").read_text())
    group = config["quantization_config"]["config_groups"]["group_0"]["weights"]["group_size"]
    tensors = scan_source(weight_files(dst))
    out = {}
    for name in tensors:
        if name.endswith(".weight_packed"):
            m = name[: -len(".weight_packed")]
            shape = tuple(read_tensor(tensors[f"{m}.weight_shape"]).tolist())
            q = Int4Weight(read_tensor(tensors[name]), read_tensor(tensors[f"{m}.weight_scale"]), shape, group)
            out[m] = dequantize_int4(q)
    return out


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
    src, dst = converted(arch)
    assert json.loads((src / "config.json").read_text())["model_type"] == MODEL_TYPES.get(arch, arch)
    assert_loads_exactly(src, dst)


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
    quantize_checkpoint(src, dst, progress=False)
    assert "lm_head" in json.loads((dst / "config.json").read_text())["quantization_config"]["ignore"]
    assert_loads_exactly(src, dst, transformers.AutoModelForCausalLM)


def test_sentence_transformers_loads_converted_minilm(minilm_int4):
    """A plain SentenceTransformer(dst) loads the converted MiniLM (pooling and tokenizer files are
    copied) and embeds close to the original: cosine >= 0.95 on every sentence (--scale mse)."""
    st = pytest.importorskip("sentence_transformers")
    original = st.SentenceTransformer(str(minilm_dir()), device="cpu")
    converted = st.SentenceTransformer(str(minilm_int4), device="cpu")
    a = original.encode(SENTENCES, convert_to_tensor=True)
    b = converted.encode(SENTENCES, convert_to_tensor=True)
    assert a.shape == b.shape == (len(SENTENCES), 384)
    cos = torch.nn.functional.cosine_similarity(a, b)
    print("cosine to the original per sentence:", [round(c, 3) for c in cos.tolist()])  # README quotes these (-rP)
    assert (cos >= 0.95).all() and (cos < 0.9999).all(), cos.tolist()  # close, and really quantized


@pytest.mark.parametrize("arch", ["llama", "qwen3_moe"])
def test_compressed_tensors_decompressor(arch, converted):
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32, unpack_from_int32
    from compressed_tensors.quantization import QuantizationConfig

    _, dst = converted(arch)
    qc = json.loads((dst / "config.json").read_text())["quantization_config"]
    parsed = QuantizationConfig.model_validate(qc)  # compressed-tensors' own schema accepts ours
    scheme = parsed.config_groups["group_0"]
    assert scheme.weights.group_size == 128 and scheme.weights.symmetric and scheme.weights.num_bits == 4
    tensors = scan_source(weight_files(dst))
    ours = dequantized_weights(dst)
    for m, w in ours.items():
        state = {f"weight_{s}": read_tensor(tensors[f"{m}.weight_{s}"]) for s in ("packed", "scale", "shape")}
        out = PackedQuantizationCompressor.decompress(dict(state), scheme)
        assert torch.equal(out["weight"].to(w.dtype), w), m
        codes = unpack_from_int32(state["weight_packed"], 4, state["weight_shape"])
        assert torch.equal(codes.to(torch.int8), unpack_int4(state["weight_packed"], w.shape[1])), m
        assert torch.equal(pack_to_int32(codes, 4), state["weight_packed"]), m
