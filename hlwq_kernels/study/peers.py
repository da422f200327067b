"""The peers of the decoder study: llm-compressor's symmetric INT4 W4A16 checkpoints of the study's
decoders, at the study's group size (128 Gemma-3-270M, 64 SmolLM2-135M). llm-compressor runs in its
own virtualenv (``scripts/setup_peers.sh`` prepares ``.venv-llmc``):

    .venv-llmc/bin/python -m hlwq_kernels.study.peers                      # every job
    .venv-llmc/bin/python -m hlwq_kernels.study.peers smollm2-135m:gptq    # one job

Jobs ``<decoder>:<method>``, written to ``<cache>/peers/<decoder>-<method>``:
- ``rtn``: ``model_free_ptq`` (streams the safetensors; embeddings and lm_head kept);
- ``gptq``: ``oneshot`` with ``GPTQModifier``, calibrated on 128 windows of 512 tokens of
  Shakespeare (``hlwq_kernels.study.text.calibration_text``, windowed like the evaluation text);
- ``spinquant``: ``oneshot`` with ``SpinQuantModifier(rotations=["R1", "R2"])`` and a W4A16
  ``QuantizationModifier``, no data; ``transform_type="hadamard"`` where the hidden size is a power of
  two, else ``"random-hadamard"`` (SmolLM2's 576). It fails where llm-compressor cannot rotate the
  architecture (Gemma-3: no mapping for its scaled word embedding).
Each job runs in a child process; its wall time, peak memory and exit status are appended to
``<cache>/peers/timings.jsonl`` (read by the study), its output to ``<cache>/peers/logs/``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from hlwq_kernels.study.cache import cache_dir
from hlwq_kernels.study.decoders import DECODERS, Decoder, bf16_checkpoint, decoder

__all__ = ["PEER_METHODS", "CALIBRATION_WINDOWS", "run_job", "main"]

PEER_METHODS = ("rtn", "gptq", "spinquant")
CALIBRATION_WINDOWS = 128
SPINQUANT_TRANSFORMS = ("hadamard", "random-hadamard")  # the first that runs


def _scheme(group_size: int):
    """The W4A16 preset (symmetric INT4 weights, group strategy) with the study's group size."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    return QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, type="int", strategy="group", group_size=group_size, symmetric=True, dynamic=False))


def _calibration(tokenizer):
    from datasets import Dataset

    from hlwq_kernels.study.perplexity import SEQ_LEN, make_windows
    from hlwq_kernels.study.text import calibration_text

    ids = make_windows(tokenizer, calibration_text(), CALIBRATION_WINDOWS).tolist()
    return Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * SEQ_LEN] * len(ids)})


def run_job(d: Decoder, method: str) -> str:
    """Produce the peer checkpoint ``<cache>/peers/<decoder>-<method>``; return its path."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    src, dst = bf16_checkpoint(d, build=False), cache_dir("peers") / f"{d.key}-{method}"
    scheme = _scheme(d.group_size)
    if method == "rtn":
        from llmcompressor import model_free_ptq

        model_free_ptq(str(src), str(dst), scheme=scheme, ignore=["lm_head", "re:.*embed_tokens$"],
                       max_workers=1, device="cpu")
        return str(dst)
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    if method == "gptq":
        oneshot(model=model, dataset=_calibration(tokenizer),
                recipe=GPTQModifier(config_groups={"group_0": scheme}, ignore=["lm_head"]),
                max_seq_length=512, num_calibration_samples=CALIBRATION_WINDOWS, shuffle_calibration_samples=False)
    elif method == "spinquant":
        from llmcompressor.modifiers.transform import SpinQuantModifier

        for transform in SPINQUANT_TRANSFORMS:
            try:
                oneshot(model=model, recipe=[SpinQuantModifier(rotations=["R1", "R2"], transform_type=transform),
                                             QuantizationModifier(config_groups={"group_0": scheme}, ignore=["lm_head"])])
                break
            except ValueError as e:  # "hadamard" exists only for powers of two (not 576 or 640)
                print(f"SpinQuant transform_type={transform!r} failed: {e}", flush=True)
                model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
        else:
            raise RuntimeError(f"SpinQuant failed with every transform_type ({', '.join(SPINQUANT_TRANSFORMS)})")
        print(f"SpinQuant transform_type used: {transform}", flush=True)
    else:
        raise ValueError(f"unknown peer method {method!r}; known: {', '.join(PEER_METHODS)}")
    model.save_pretrained(dst, save_compressed=True)
    tokenizer.save_pretrained(dst)
    return str(dst)


def _run_child(job: str) -> dict:
    """Run one job in a child process; its wall time, peak RSS and status."""
    logs = cache_dir("peers") / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{job.replace(':', '-')}.log"
    start = time.time()
    with open(log, "w") as f:
        child = subprocess.Popen([sys.executable, "-m", "hlwq_kernels.study.peers", "--child", job],
                                 stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    return {"job": job, "rc": os.waitstatus_to_exitcode(status), "wall_s": round(time.time() - start, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "log": str(log), "time": time.strftime("%Y-%m-%d %H:%M:%S")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        key, method = argv[1].split(":")
        print("saved", run_job(decoder(key), method), flush=True)
        return 0
    jobs = argv or [f"{d.key}:{m}" for d in DECODERS for m in PEER_METHODS]
    for job in jobs:
        key, _, method = job.partition(":")
        if key not in {d.key for d in DECODERS} or method not in PEER_METHODS:
            print(f"error: unknown job {job!r}; jobs are <decoder>:<method> with decoder in "
                  f"{', '.join(d.key for d in DECODERS)} and method in {', '.join(PEER_METHODS)}", file=sys.stderr)
            return 2
    failed = 0
    for job in jobs:
        record = _run_child(job)
        print(json.dumps(record), flush=True)
        with open(cache_dir("peers") / "timings.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        failed += record["rc"] != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
