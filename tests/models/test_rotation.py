"""Rotations folded offline: the rotated model computes the original's logits.

Each supported architecture: a tiny random model (transformers config, 2 layers, hidden 256) with
every norm weight and bias randomized, saved in float64, rotated by ``rotate_checkpoint``, loaded
back by transformers; logits compared in float64. transformers computes norms, routers and the
gated delta rule in float32 even for a float64 model (a 2e-7..5e-6 change of the logits by
itself), so both models run under ``Float64Mode``, which keeps those casts in float64: then the
only difference left is the rotation's own rounding (about 1e-14).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch.overrides import TorchFunctionMode

from hlwq_kernels.models.bundled import minilm_dir
from hlwq_kernels.models.families import supported_model_types
from hlwq_kernels.checkpoint.rotate import rotate_checkpoint
from hlwq_kernels.models.rotation import Rotation, RotationError, rotation_plan
from hlwq_kernels.ops.hadamard import hadamard_matrix, random_signs
from tests.helpers import random_weight, rel_err
from tests.tiny_checkpoints import COMMON, build_model, save_tiny

LOGIT_TOL = 1e-10  # far below the 1e-6 gate: the rotated model differs by rounding only
# architecture -> rotate_checkpoint options (Gemma 2 and 3: R2 alone, R1 is refused)
ROTATED = {
    "llama": dict(block_size=None),  # one Hadamard of the full hidden size
    "llama_bias": {},  # o_proj and down_proj biases: rotated on the output side
    "mistral": {},
    "qwen2": {},
    "qwen3": {},
    "qwen3_moe": {},
    "qwen2_moe": {},
    "qwen3_5": {},
    "qwen3_next": {},
    "qwen3_5_moe_text": {},
    "gemma": {},
    "gemma2": dict(r1=False),
    "gemma3_text": dict(r1=False),
    "qwen2_5_vl": {},  # vision merger's output side rotated too
    "qwen3_5_vl": {},
    "qwen3_5_moe_vl": {},
}
VISION_LANGUAGE = ("qwen2_5_vl", "qwen3_5_vl", "qwen3_5_moe_vl")
IMAGE_TOKENS = dict(vision_start_token_id=3, vision_end_token_id=4, image_token_id=5, video_token_id=6)


class Float64Mode(TorchFunctionMode):
    """Keeps a float64 model in float64: ``.float()`` of a float64 tensor is a no-op, and every
    other request for float32 (``.to(torch.float32)``, ``dtype=torch.float32``) gets float64."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.float and args[0].dtype == torch.float64:
            return args[0]
        args = tuple(torch.float64 if a is torch.float32 else a for a in args)
        if kwargs.get("dtype") is torch.float32:
            kwargs["dtype"] = torch.float64
        return func(*args, **kwargs)


def _eager_experts(model: torch.nn.Module) -> torch.nn.Module:
    """transformers' default grouped-matmul experts have no float64 kernel: use the loop."""
    if model._can_set_experts_implementation():
        model.set_experts_implementation("eager")
    return model.eval()


def _randomized(arch: str) -> torch.nn.Module:
    """The tiny float64 model of ``arch`` with non-trivial norm weights and biases (and image
    token ids inside the tiny vocabulary)."""
    model = build_model(arch, init_std=0.1).double()
    if arch in VISION_LANGUAGE:
        for key, value in IMAGE_TOKENS.items():
            setattr(model.config, key, value)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and p.ndim == 1:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return _eager_experts(model)


def _load(path) -> torch.nn.Module:
    import transformers

    config = json.loads((path / "config.json").read_text())
    auto = transformers.AutoModelForImageTextToText if "vision_config" in config else transformers.AutoModelForCausalLM
    return _eager_experts(auto.from_pretrained(path, dtype=torch.float64))


def _inputs(model: torch.nn.Module, pixel_seed: int = 0) -> dict:
    """2 x 16 random tokens; for a vision-language model, one image of 4 x 4 patches (4 tokens
    after merging) inside the second sequence."""
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(10, COMMON["vocab_size"], (2, 16), generator=gen)
    if "vision_config" not in model.config:
        return dict(input_ids=ids)
    v = model.config.vision_config
    ids[1, 4:10] = torch.tensor([3, 5, 5, 5, 5, 4])
    pixels = random_weight((16, v.in_channels * v.temporal_patch_size * v.patch_size**2), torch.float64, seed=pixel_seed)
    return dict(input_ids=ids, pixel_values=pixels, image_grid_thw=torch.tensor([[1, 4, 4]]),
                mm_token_type_ids=(ids == IMAGE_TOKENS["image_token_id"]).int())


def _logits(model: torch.nn.Module, pixel_seed: int = 0) -> np.ndarray:
    with torch.no_grad(), Float64Mode():
        return model(**_inputs(model, pixel_seed)).logits.numpy()


def _tensors(path) -> dict[str, torch.Tensor]:
    out = {}
    for file in sorted(path.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


@pytest.fixture(scope="module")
def rotated(tmp_path_factory):
    """arch -> (original logits, source dir, rotated dir, record), built once per architecture."""
    cache = {}

    def get(arch: str):
        if arch not in cache:
            root = tmp_path_factory.mktemp(arch)
            model = _randomized(arch)
            model.save_pretrained(root / "src")
            record = rotate_checkpoint(root / "src", root / "dst", seed=11, **ROTATED[arch])
            cache[arch] = (_logits(model), root / "src", root / "dst", record)
        return cache[arch]

    return get


@pytest.mark.parametrize("arch", list(ROTATED))
def test_rotated_model_computes_the_same_logits(rotated, arch):
    ref, _, dst, _ = rotated(arch)
    err = rel_err(_logits(_load(dst)), ref)
    assert err <= LOGIT_TOL, f"{arch}: rotated logits differ by {err:.2e} (relative)"


@pytest.mark.parametrize("arch", list(ROTATED))
def test_rotated_checkpoint_is_rotated_and_recorded(rotated, arch):
    _, src, dst, record = rotated(arch)
    before, after = _tensors(src), _tensors(dst)
    config = json.loads((dst / "config.json").read_text())
    text = config.get("text_config", config)
    assert config["hlwq_rotation"] == record

    def changed(name: str) -> float:
        return rel_err(after[name], before[name].numpy())

    # transformers saves Qwen2.5-VL as released (model. and visual.), Qwen3.5 as model.language_model.
    lm = "model.language_model." if "model.language_model.norm.weight" in after else "model."
    if record["r2"] is not None:  # values rotated per head, o_proj's input to match
        assert record["r2"]["size"] == text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
        assert changed(f"{lm}layers.1.self_attn.v_proj.weight") > 0.5 and changed(f"{lm}layers.1.self_attn.o_proj.weight") > 0.5
    if record["r1"] is None:
        assert changed(f"{lm}embed_tokens.weight") == 0
        return
    assert config["tie_word_embeddings"] is False and text.get("tie_word_embeddings", False) is False
    assert "lm_head.weight" in after
    assert record["r1"]["block_size"] == (ROTATED[arch].get("block_size", 128) or COMMON["hidden_size"])
    identity = 0.0 if arch.startswith(("qwen3_5", "qwen3_next", "gemma")) else 1.0
    for name in ("norm", "layers.0.input_layernorm", "layers.1.post_attention_layernorm"):
        assert torch.all(after[f"{lm}{name}.weight"] == identity), name
    assert changed(f"{lm}embed_tokens.weight") > 0.5
    merger = [n for n in after if n.endswith(("visual.merger.mlp.2.weight", "visual.merger.linear_fc2.weight"))]
    assert len(merger) == (arch in VISION_LANGUAGE) and all(changed(n) > 0.5 for n in merger)


@pytest.mark.parametrize("arch", VISION_LANGUAGE)
def test_vision_language_logits_depend_on_the_image(rotated, arch):
    """So the logit test covers the merger: another image changes the image tokens' logits."""
    ref, _, dst, _ = rotated(arch)
    assert rel_err(_logits(_load(dst), pixel_seed=1)[1, 4:], ref[1, 4:]) > 1e-3


def test_unrotated_embedding_breaks_the_model(rotated):
    """Control: the logit comparison sees a single tensor left in the original basis."""
    ref, src, dst, _ = rotated("qwen3")
    model = _load(dst)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(_tensors(src)["model.embed_tokens.weight"])
    assert rel_err(_logits(model), ref) > 0.1


def test_rotation_is_the_documented_orthogonal_matrix():
    """``apply(W, -1) = W·Q`` and ``apply(W, -2) = Qᵀ·W`` with Q = diag(s)·(I ⊗ H_b)ᵀ/√b, orthogonal."""
    rot = Rotation(96, 32, seed=5)
    h = torch.from_numpy(hadamard_matrix(32).astype(np.float64))
    q = torch.diag(random_signs(96, 5, dtype=torch.float64)) @ torch.block_diag(h.T, h.T, h.T) / np.sqrt(32)
    assert rel_err(q @ q.T, np.eye(96)) < 1e-15
    w = random_weight((40, 96), torch.float64, seed=1)
    assert rel_err(rot.apply(w, -1), (w @ q).numpy()) < 1e-14
    assert rel_err(rot.apply(w.T, -2), (q.T @ w.T).numpy()) < 1e-14
    assert not torch.allclose(q, q.T)  # so a side mix-up cannot pass the logit test
    heads = Rotation(32, 32, seed=5, per_head=True)  # R2: the same Q2 on each head
    q2 = torch.diag(random_signs(32, 5, dtype=torch.float64)) @ h.T / np.sqrt(32)
    assert rel_err(heads.apply(w, -1), (w @ torch.block_diag(q2, q2, q2)).numpy()) < 1e-14


def test_plan_streams_tensor_by_tensor():
    """The converter's interface: aux names, outputs of a tied embedding, a missing aux."""
    config = build_model("qwen3").config.to_dict()
    shapes = {n: tuple(p.shape) for n, p in build_model("qwen3").state_dict().items() if n != "lm_head.weight"}
    plan = rotation_plan(config, shapes, seed=2)
    embed = "model.embed_tokens.weight"
    assert plan.output_names(embed) == [embed, "lm_head.weight"]
    assert plan.aux_names(embed) == ("model.norm.weight",)
    assert plan.aux_names("model.layers.0.mlp.up_proj.weight") == ("model.layers.0.post_attention_layernorm.weight",)
    assert plan.aux_names("model.layers.0.mlp.down_proj.weight") == ()
    w = random_weight(shapes[embed], torch.float32, seed=3)
    gamma = 1 + 0.3 * random_weight((256,), torch.float32, seed=4)
    (_, e), (_, head) = plan.transform(embed, w, {"model.norm.weight": gamma})
    assert e.dtype == torch.float32 and rel_err(head, (plan.r1.apply(w.double() * gamma.double(), -1)).numpy()) < 1e-6
    with pytest.raises(RotationError, match="needs the norm weight 'model.norm.weight'"):
        plan.transform(embed, w, {})
    keep = random_weight((64,), torch.bfloat16, seed=5)
    assert plan.transform("model.layers.0.self_attn.q_norm.weight", keep, {})[0][1] is keep


def test_bf16_checkpoint_keeps_its_dtype(tmp_path):
    src = save_tiny("llama", tmp_path / "src", init_std=0.1)
    rotate_checkpoint(src, tmp_path / "dst", seed=1)
    before, after = _tensors(src), _tensors(tmp_path / "dst")
    assert {t.dtype for t in after.values()} == {torch.bfloat16} and set(after) == set(before)
    assert (tmp_path / "dst" / "tokenizer_config.json").is_file()
    ref = _logits(_load(src))
    assert rel_err(_logits(_load(tmp_path / "dst")), ref) < 0.05  # bf16 rounding of the rotated weights


def _one_line_error(fn, match: str) -> None:
    with pytest.raises(RotationError, match=match) as info:
        fn()
    assert "\n" not in str(info.value)


def test_refusals(tmp_path):
    llama = build_model("llama")
    config, shapes = llama.config.to_dict(), {n: tuple(p.shape) for n, p in llama.state_dict().items()}
    bert = json.loads((minilm_dir() / "config.json").read_text())
    _one_line_error(lambda: rotate_checkpoint(minilm_dir(), tmp_path / "bert"), "post-LayerNorm encoder")
    _one_line_error(lambda: rotation_plan(bert, {}), "'bert'.*mean-centred")
    gemma3 = build_model("gemma3_text")
    g_config, g_shapes = gemma3.config.to_dict(), {n: tuple(p.shape) for n, p in gemma3.state_dict().items()}
    _one_line_error(lambda: rotation_plan(g_config, g_shapes), "R1 into model_type 'gemma3_text'.*post_feedforward_layernorm")
    import transformers

    _one_line_error(lambda: rotation_plan(transformers.Gemma3Config().to_dict(), {}), "'gemma3'.*multimodal.*qwen2_5_vl")
    _one_line_error(lambda: rotation_plan(dict(config, model_type="gpt2"), shapes), "no rotation table.*supported: .*qwen3_moe")
    _one_line_error(lambda: rotation_plan(config, dict(shapes, **{"mtp.fc.weight": (256, 512)})), "multi-token-prediction")
    _one_line_error(lambda: rotation_plan(config, dict(shapes, **{"model.layers.0.mlp.extra.weight": (4, 256)})),
                    "'model.layers.0.mlp.extra.weight'.*does not say")
    _one_line_error(lambda: rotation_plan(config, shapes, block_size=96), "here: 16, 32, 64, 128, 256")
    bad = dict(shapes, **{"model.layers.0.mlp.down_proj.weight": (512, 256)})
    _one_line_error(lambda: rotation_plan(config, bad), "down_proj.weight' of shape \\(512, 256\\): dimension -2 must be 256")
    q35 = build_model("qwen3_5")
    _one_line_error(lambda: rotation_plan(q35.config.to_dict(), {}, r1=False), "nothing to rotate.*gate")
    assert "gemma3_text" in supported_model_types() and "bert" not in supported_model_types()
