"""The data-free variants of the decoder study: exact transforms, energy estimates, and the baseline
variant reproducing the converter's output."""

from __future__ import annotations

import pytest
import torch

from hlwq_kernels.checkpoint import quantize_checkpoint
from hlwq_kernels.ops.int4_asym import dequantize_int4_asym, quantize_int4_asym
from hlwq_kernels.study.data_free import equalize_pairs, fake_quantize, feedback_round, fold_norms, input_energy
from hlwq_kernels.study.perplexity import load_causal_lm
from tests.helpers import random_weight
from tests.tiny_checkpoints import build_model, save_tiny


def _model(arch: str) -> torch.nn.Module:
    """A tiny float64 model whose norm gains are far from trivial."""
    model = build_model(arch, init_std=0.1).double().eval()
    with torch.no_grad():
        for i, (name, p) in enumerate(model.named_parameters()):
            if name.endswith("norm.weight"):
                p.copy_(0.25 + random_weight(tuple(p.shape), torch.float64, seed=i).abs())
    return model


@pytest.mark.parametrize("arch", ["llama", "gemma3_text"])
@pytest.mark.parametrize("transform", [fold_norms, equalize_pairs])
def test_transforms_keep_the_logits(arch, transform):
    model = _model(arch)
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(ids).logits
        for layer in model.model.layers:
            transform(model, layer)
        after = model(ids).logits
    # 1e-6: Gemma's RMSNorm multiplies by (1 + w) in float32 even in a float64 model
    assert ((after - before).norm() / before.norm()).item() < 1e-6


def test_energy_estimates_match_isotropic_inputs():
    model = _model("llama")
    layer = model.model.layers[0]
    est = input_energy(model, layer, full=True)
    x = random_weight((200_000, model.config.hidden_size), torch.float64, seed=3)  # isotropic N(0, I)
    g = layer.input_layernorm.weight.detach()
    assert torch.allclose(est["self_attn.q_proj"], g**2)
    v = (x * g) @ layer.self_attn.v_proj.weight.detach().T  # each value channel, before attention mixes
    kv = model.config.num_key_value_heads
    expected = v.square().mean(0).reshape(kv, -1).repeat_interleave(model.config.num_attention_heads // kv, 0).reshape(-1)
    assert torch.allclose(est["self_attn.o_proj"], expected, rtol=0.03)
    gm = layer.post_attention_layernorm.weight.detach()
    mlp = layer.mlp
    gate, up = (x * gm) @ mlp.gate_proj.weight.detach().T, (x * gm) @ mlp.up_proj.weight.detach().T
    # the estimate treats gate and up as independent: E[act(a)^2] E[b^2]
    assert torch.allclose(est["mlp.down_proj"], mlp.act_fn(gate).square().mean(0) * up.square().mean(0), rtol=0.03)


def test_minmax_variant_reproduces_the_converters_asymmetric_checkpoint(tmp_path):
    src = save_tiny("llama", tmp_path / "src", init_std=0.1)
    quantize_checkpoint(src, tmp_path / "int4", progress=False, device="cpu", scheme="asym", scale="minmax")
    converted, fake = load_causal_lm(tmp_path / "int4"), load_causal_lm(src)
    fake_quantize(fake, "minmax", 128)
    pairs = [(n, m.weight, converted.model.layers.get_submodule(n).weight) for n, m in fake.model.layers.named_modules()
             if isinstance(m, torch.nn.Linear)]
    assert pairs and all(torch.equal(a, b) for _, a, b in pairs)
    with pytest.raises(ValueError, match="variant must be one of"):
        fake_quantize(fake, "nope", 128)


def test_feedback_rounding_with_a_diagonal_hessian_is_plain_minmax():
    w = random_weight((16, 256), torch.bfloat16, seed=4, column_spread=0.5)
    plain = dequantize_int4_asym(quantize_int4_asym(w, 64, method="minmax", backend="torch"), torch.float32)
    diagonal = torch.diag(random_weight((256,), torch.float64, seed=5).abs() + 0.1)
    assert torch.equal(feedback_round(w, diagonal, 64), plain)


def test_feedback_rounding_lowers_the_proxy_weighted_error():
    w = random_weight((32, 256), torch.bfloat16, seed=6)
    a = random_weight((256, 512), torch.float64, seed=7)
    hessian = a @ a.T / 512 + 0.5 * torch.ones(256, 256, dtype=torch.float64)  # correlated inputs
    plain = dequantize_int4_asym(quantize_int4_asym(w, 64, method="minmax", backend="torch"), torch.float32)
    fed = feedback_round(w, hessian, 64)

    def proxy_error(q: torch.Tensor) -> float:
        e = w.double() - q.double()
        return float(torch.einsum("ij,jk,ik->", e, hessian, e))

    assert proxy_error(fed) < 0.9 * proxy_error(plain)
