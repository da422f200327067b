"""Quality study (python -m hlwq_kernels.eval): the quick run works end to end and the invariants hold.

Checks properties that must hold whatever the numbers are: the MSE-optimal scale is never worse than
absmax on any group, every INT4 method exports a valid pack-quantized weight, metrics are in range,
and the kept rotation is exact when nothing is quantized.
"""

import json
import math

import pytest
import torch

from hlwq_kernels.study.run import check_int4_export, embed, group_sq_errors, quantized_model, run_study, weight_error, write_results
from hlwq_kernels.study.data import load_minilm, make_sentences, minilm_linears, synthetic_matrices
from hlwq_kernels.study.methods import METHODS, Quantized, method, original_int4_scale, rotate_inputs
from hlwq_kernels.ops.hlwq import hlwq_dequantize, hlwq_quantize
from hlwq_kernels.ops.int4 import Int4Weight, int4_codes
from hlwq_kernels.metrics import sqnr_db


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


@pytest.fixture(scope="module")
def weights(minilm):
    """First-block MiniLM weights and the quick synthetic matrices, in bfloat16."""
    ws = {n: m.weight.detach() for n, m in minilm_linears(minilm[0]) if n.startswith("encoder.layer.0.")}
    ws.update(synthetic_matrices(quick=True))
    return {n: w.to(torch.bfloat16) for n, w in ws.items()}


def _int4_input(key: str, w: torch.Tensor, res: Quantized) -> torch.Tensor:
    """The bfloat16 matrix the INT4 stage of method ``key`` quantizes: W' for HLWQ, W Rᵀ rounded to
    bfloat16 for the kept rotation, W for RTN."""
    if key.startswith("hlwq"):
        return hlwq_dequantize(hlwq_quantize(w, bits=5, block_size=128), dtype=w.dtype).float()
    return res.target.to(w.dtype).float()


@pytest.mark.parametrize("pair", [("rtn-absmax", "rtn-mse"), ("hlwq-absmax", "hlwq-mse"),
                                  ("rotated-absmax", "rotated-mse"), ("asym-minmax", "asym-clip")])
def test_mse_scale_never_worse_than_absmax_on_any_group(weights, pair):
    """On the matrix the INT4 stage sees (for HLWQ that is W', not W)."""
    absmax, mse = method(pair[0]), method(pair[1])
    for name, w in weights.items():
        a, b = absmax.quantize(w), mse.quantize(w)
        assert torch.equal(a.target, b.target)
        t = _int4_input(pair[0], w, a)
        ea, eb = group_sq_errors(t, a.approx), group_sq_errors(t, b.approx)
        assert bool((eb <= ea * (1 + 1e-9)).all()), f"{name}: MSE scale worse than absmax on some group"
        assert float(eb.sum()) < float(ea.sum()), f"{name}: MSE scale gained nothing"


def test_every_int4_method_exports_valid_pack_quantized(weights):
    w = weights["encoder.layer.0.intermediate.dense"]
    for m in METHODS:
        res = m.quantize(w)
        assert (res.int4 is not None) == m.is_int4, m.key
        assert res.approx.shape == w.shape and bool(torch.isfinite(res.approx).all())
        if m.is_int4:
            check_int4_export(res.int4, tuple(w.shape))
            assert res.int4.scale.dtype == torch.bfloat16


def test_check_int4_export_rejects_bad_exports(weights):
    q = method("rtn-absmax").quantize(weights["encoder.layer.0.output.dense"]).int4
    bad_scale = Int4Weight(q.packed, torch.zeros_like(q.scale), q.shape, q.group_size)
    bad_packed = Int4Weight(q.packed[:, :-1], q.scale, q.shape, q.group_size)
    for bad in (bad_scale, bad_packed):
        with pytest.raises(ValueError):
            check_int4_export(bad, q.shape)


def test_original_scale_uses_codes_minus7_to_7(weights):
    w = weights["encoder.layer.0.attention.self.query"]
    q = int4_codes(w, original_int4_scale(w))
    groups = q.reshape(q.shape[0], -1, 128).abs().amax(-1)
    assert int(q.min()) >= -7 and bool((groups == 7).all())


def test_weight_error_values():
    t = torch.randn(8, 128, dtype=torch.float64)
    assert weight_error(t, torch.zeros_like(t))["sqnr_db"] == pytest.approx(0.0)
    e = weight_error(t, 0.9 * t)
    assert e["rel_mse"] == pytest.approx(0.01) and e["sqnr_db"] == pytest.approx(20.0)
    assert sqnr_db(0.0, 1.0) == math.inf and math.isnan(sqnr_db(math.nan, 1.0))  # a NaN error is no exact result


def test_kept_rotation_is_exact_without_quantization(minilm):
    """Rotated weights fed rotated inputs reproduce the model: the hook and the basis are right."""
    model, tok = minilm
    sentences = make_sentences(16, seed=1)
    results = {}
    for name, lin in minilm_linears(model)[:8]:
        wr = rotate_inputs(lin.weight.detach().double()).float()
        results[name] = Quantized(wr, wr, None, True)
    ref, got = embed(model, tok, sentences), embed(quantized_model(model, results), tok, sentences)
    assert float((ref - got).abs().max()) < 1e-4
    unrotated = {n: Quantized(r.target, r.approx, None, False) for n, r in results.items()}
    assert float((ref - embed(quantized_model(model, unrotated), tok, sentences)).abs().max()) > 1e-2


def test_sentences_are_deterministic_and_distinct():
    s = make_sentences(1000)
    assert s == make_sentences(1000) and len(set(s)) == 1000 and s != make_sentences(1000, seed=1)


def test_quick_study_end_to_end(tmp_path):
    res = run_study(quick=True, n_sentences=32, log=lambda _: None)
    paths = write_results(res, tmp_path)
    assert json.loads(paths[1].read_text())["meta"]["quick"] is True
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths[0].read_text()
    for m in METHODS:
        assert m.label in md
        r = res["minilm"][m.key]
        for per in [*r["per_layer"].values(), *res["synthetic"][m.key].values(), r["overall"]]:
            assert 0 < per["rel_mse"] < 1
            assert per["sqnr_db"] == pytest.approx(-10 * math.log10(per["rel_mse"]))
        e = r["embedding"]
        assert -1 <= e["cos_min"] <= e["cos_p01"] <= e["cos_mean"] <= 1 + 1e-12
    # more bits in the Hadamard–Lloyd stage alone can only lower the error
    errs = [res["minilm"][f"hl-stage-{b}bit"]["overall"]["rel_mse"] for b in (3, 4, 5)]
    assert errs[0] > errs[1] > errs[2]
