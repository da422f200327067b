"""Decoder perplexity study (python -m hlwq_kernels.eval --decoders): harness invariants on a tiny
random LLaMA built from a transformers config, with a small word-level tokenizer and a few short
windows. Checks what must hold whatever the numbers are: identical checkpoints score identically,
KL of a model against itself is 0, windows start with BOS exactly when the tokenizer adds one,
perturbed copies differ from each other, the R data reader and the .deb reader read what was written.
"""

import gzip
import io
import json
import struct
import tarfile
import zlib

import pytest
import torch
from safetensors import safe_open

from hlwq_kernels.checkpoint import quantize_checkpoint
from hlwq_kernels.metrics import error_energy
from hlwq_kernels.ops.int4 import Int4Weight, dequantize_int4
from hlwq_kernels.study.data import make_sentences
from hlwq_kernels.study.decoder_study import DEFAULT_KEY, METHODS, run_decoder_study, write_results
from hlwq_kernels.study.decoders import Decoder
from hlwq_kernels.study.perplexity import expects_bos, load_causal_lm, make_windows, perplexity
from hlwq_kernels.study.perturb import code_difference, jitter_checkpoint, perturb_checkpoint
from hlwq_kernels.study.rdata import RDataDB, unserialize
from hlwq_kernels.study.text import _ar_members
from tests.tiny_checkpoints import save_tiny

SEQ = 512
TEXT = " ".join(make_sentences(600, seed=3))


def _tokenizer(bos: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(TEXT.replace(".", " . ").replace(",", " , ").split()))
    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>"] + words)}
    assert len(vocab) <= 512, len(vocab)  # the tiny model's vocabulary
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random LLaMA checkpoint (BF16, tokenizer adding BOS) and its INT4 conversion."""
    root = tmp_path_factory.mktemp("decoders")
    src = save_tiny("llama", root / "models" / "tiny", init_std=0.1)
    _tokenizer(bos=True).save_pretrained(src)
    quantize_checkpoint(src, root / "int4", scheme="sym", progress=False, device="cpu")  # the perturbations: sym
    return root, src, root / "int4"


def test_windows_start_with_bos_exactly_when_the_tokenizer_adds_one():
    for bos in (True, False):
        tok = _tokenizer(bos)
        assert expects_bos(tok) is bos
        w = make_windows(tok, TEXT, 3)
        ids = tok(TEXT, add_special_tokens=False).input_ids
        assert w.shape == (3, SEQ)
        if bos:
            assert (w[:, 0] == tok.bos_token_id).all()
            assert w[1, 1:].tolist() == ids[SEQ - 1:2 * (SEQ - 1)]  # consecutive, non-overlapping text
        else:
            assert (w != tok.bos_token_id).all()
            assert w[1].tolist() == ids[SEQ:2 * SEQ]
        later = make_windows(tok, TEXT, 1, offset=2)
        assert torch.equal(later[0], w[2])
    with pytest.raises(ValueError, match="fewer than"):
        make_windows(_tokenizer(True), TEXT, 10_000)


def test_identical_checkpoints_score_identically_and_kl_of_a_model_with_itself_is_zero(tiny, tmp_path):
    root, src, int4 = tiny
    stats, timings = perplexity([src, int4, int4], src, TEXT, 2, max_loaded=2)
    ref, same, q = stats["reference"], stats[str(src)], stats[str(int4)]
    assert timings["bos"] and timings["groups"] == 2
    assert same.nll == ref.nll and same.kl == [0.0, 0.0]
    assert ref.tokens == [SEQ - 1] * 2
    assert all(k > 0 for k in q.kl) and q.ppl() != ref.ppl()
    again, _ = perplexity([int4], src, TEXT, 2)
    assert again[str(int4)].nll == q.nll and again[str(int4)].kl == q.kl


def test_quantized_checkpoint_loads_decompressed_as_q_times_scale(tiny):
    _, src, int4 = tiny
    model = load_causal_lm(int4)
    name = "model.layers.0.mlp.down_proj"
    with safe_open(next(int4.glob("*.safetensors")), "pt") as st:
        packed, scale, shape = (st.get_tensor(f"{name}.weight_{s}") for s in ("packed", "scale", "shape"))
    expected = dequantize_int4(Int4Weight(packed, scale, tuple(shape.tolist()), 128), torch.float32)
    assert torch.equal(model.get_submodule(name).weight, expected)


def test_perturbation_moves_the_requested_fraction_by_one_and_seeds_differ(tiny, tmp_path):
    root, src, int4 = tiny
    a = perturb_checkpoint(int4, tmp_path / "a", 0.05, seed=0)
    b = perturb_checkpoint(int4, tmp_path / "b", 0.05, seed=1)
    diff = code_difference(int4, a)
    assert diff["scales_equal"] and set(diff["by"]) == {1}
    assert 0.04 < diff["fraction"] < 0.06
    assert code_difference(int4, perturb_checkpoint(int4, tmp_path / "a2", 0.05, seed=0)) == diff
    stats, _ = perplexity([a, b], src, TEXT, 2)
    assert stats[str(a)].ppl() != stats[str(b)].ppl()  # the spread between seeds is not zero
    assert json.loads((a / "perturbation.json").read_text())["seed"] == 0


def test_jitter_flips_only_near_ties_and_zero_jitter_reproduces_the_codes(tiny, tmp_path):
    _, src, int4 = tiny
    same = jitter_checkpoint(int4, tmp_path / "j0", src, 0.0, seed=0)
    assert code_difference(int4, same)["fraction"] == 0
    diff = code_difference(int4, jitter_checkpoint(int4, tmp_path / "j", src, 2.0**-9, seed=0))
    assert set(diff["by"]) == {1} and 0 < diff["fraction"] < 0.01 and diff["scales_equal"]
    errors = {}
    for name, path in (("base", int4), ("jitter", tmp_path / "j")):
        model, ref = load_causal_lm(path), load_causal_lm(src)
        errors[name] = sum(error_energy(r.weight.detach(), m.weight.detach(), torch.float64)[0] for m, r in
                           zip(model.model.layers.modules(), ref.model.layers.modules()) if isinstance(m, torch.nn.Linear))
    assert errors["base"] <= errors["jitter"] < errors["base"] * 1.01  # round-to-nearest is the minimum; ties cost ~0


def test_study_end_to_end_on_the_tiny_decoder(tiny, tmp_path, monkeypatch):
    root, src, _ = tiny
    monkeypatch.setenv("HLWQ_CACHE", str(root))
    d = Decoder("tiny", "tiny LLaMA", "-", "-", "-", "random", 128)
    methods = [m for m in METHODS if m.key in ("bf16", DEFAULT_KEY, "llmc-rtn")]
    res = run_decoder_study([d], methods, screen_windows=1, windows=2, finalists=1, seeds=2, text=TEXT, noise_full=True)
    model = res["models"]["tiny"]
    assert "llmc-rtn" not in model["methods"]  # no peer checkpoint: skipped
    full = model["summary"]["full"]
    copies = [f"{DEFAULT_KEY}~{kind}{seed}" for kind in ("flip", "jitter") for seed in (0, 1)]
    assert {"bf16", DEFAULT_KEY, *copies} <= set(full["methods"]) and full["windows"] == 2
    assert full["methods"]["bf16"]["increase"] == 0 and full["methods"]["bf16"]["kl"] == 0
    assert full["methods"][DEFAULT_KEY]["tokens"] == 2 * (SEQ - 1)
    assert set(full["noise"]) == {"flip", "jitter"}
    assert all(n["n"] == 2 and n["ppl_std"] > 0 for n in full["noise"].values())
    assert model["bos"] and [r["computed"] for r in model["runs"]] != [[], []]
    we = model["methods"][DEFAULT_KEY]["weight_error"]
    assert 0 < we["rel_mse"] < 0.05 and model["methods"][DEFAULT_KEY]["conversion_s"] > 0
    paths = write_results(res, tmp_path / "out")
    assert "tiny LLaMA" in paths[0].read_text() and paths[2].stat().st_size > 0

    again = run_decoder_study([d], methods, screen_windows=1, windows=2, finalists=1, seeds=2, text=TEXT, noise_full=True)
    assert [r["computed"] for r in again["models"]["tiny"]["runs"]] == [[], []]  # all from the score cache
    assert again["models"]["tiny"]["summary"] == model["summary"]
    assert again["models"]["tiny"]["methods"][DEFAULT_KEY]["weight_error"] == we


def _xdr_int(*v: int) -> bytes:
    return struct.pack(f">{len(v)}i", *v)


def _xdr_strings(values: list[str | None], names: list[str] | None = None) -> bytes:
    """A STRSXP as R's serialize writes it (with a names attribute when given)."""
    def chars(s):  # CHARSXP: flags (type 9, ASCII level), length, bytes; NA is length -1
        return _xdr_int(9, -1) if s is None else _xdr_int(0x00040009, len(s.encode())) + s.encode()

    out = _xdr_int(16 | (1 << 9 if names else 0), len(values)) + b"".join(chars(s) for s in values)
    if names:  # attribute pairlist: tag = symbol "names", car = STRSXP
        out += _xdr_int(2 | (1 << 10), 1) + chars("names") + _xdr_strings(names) + _xdr_int(254)
    return out


def _rds(body: bytes) -> bytes:
    return b"X\n" + _xdr_int(2, 0x40000, 0x20300) + body


def test_r_reader_reads_character_vectors_and_lazy_load_entries():
    obj = unserialize(_rds(_xdr_strings(["It is a truth", None, "universally"], names=["a", "b", "c"])))
    assert obj.value == ["It is a truth", None, "universally"]
    assert obj.attrs["names"].value == ["a", "b", "c"]
    payload = _rds(_xdr_strings(["PRIDE AND PREJUDICE", ""]))
    rdb = struct.pack(">I", len(payload)) + zlib.compress(payload)
    offsets = _xdr_int(13, 2, 0, len(rdb))  # INTSXP (offset, length)
    variables = _xdr_int(19 | (1 << 9), 1) + offsets + _xdr_int(2 | (1 << 10), 1, 0x00040009, 5) + b"names" \
        + _xdr_strings(["book"]) + _xdr_int(254)
    index = _xdr_int(19 | (1 << 9), 2) + variables + _xdr_int(10, 1, 1) \
        + _xdr_int(2 | (1 << 10), 1, 0x00040009, 5) + b"names" + _xdr_strings(["variables", "compressed"]) + _xdr_int(254)
    db = RDataDB(gzip.compress(_rds(index)), rdb)
    assert db.names() == ["book"]
    assert db.get("book").value == ["PRIDE AND PREJUDICE", ""]
    with pytest.raises(KeyError, match="not in this R database"):
        db.get("emma")


def test_deb_reader_finds_the_members():
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        info = tarfile.TarInfo("./usr/x")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    members = [(b"debian-binary", b"2.0\n"), (b"data.tar.xz", data.getvalue())]
    ar = b"!<arch>\n" + b"".join(name.ljust(16) + b"0".ljust(12) + b"0".ljust(6) * 2 + b"100644".ljust(8)
                                 + str(len(body)).encode().ljust(10) + b"`\n" + body + b"\n" * (len(body) % 2)
                                 for name, body in members)
    found = _ar_members(ar)
    assert found["debian-binary"] == b"2.0\n" and found["data.tar.xz"] == data.getvalue()
