"""Whole-process conversion on the CPU, side by side with llm-compressor: wall time and peak RSS.

On the same synthetic BF16 Llama (transformers ``LlamaConfig(hidden_size=2048,
intermediate_size=5632, num_hidden_layers=8, vocab_size=32000)``, random init, seed 0,
``save_pretrained`` in bfloat16: 1.08 GB), alternating the converters, best of ``--repeats``:

- ``hlwq``: ``python -m hlwq_kernels.convert SRC DST --scheme sym --quiet`` (symmetric INT4, the
  peers' format; durable output: the shards are flushed to disk before the command returns), and
  with the converter's defaults (asymmetric min-max INT4);
- ``oneshot``: llm-compressor ``oneshot`` + ``QuantizationModifier(targets="Linear",
  scheme="W4A16", ignore=["lm_head"])`` on the loaded model, then ``save_pretrained(dst,
  save_compressed=True)``;
- ``model_free_ptq``: llm-compressor ``model_free_ptq(src, dst, scheme="W4A16", ignore=["lm_head",
  "re:.*embed_tokens$"])`` (the embedding ignored too, so that all three write the same tensors).

Each converter runs as its own process (llm-compressor in its own virtualenv, made by
``scripts/setup_llmcompressor.sh`` when absent); wall time, CPU time (user + system) and peak RSS
(``ru_maxrss``) are those of that whole process, imports included. The MiniLM demo (``--demo``) is timed too. The source stays in
the page cache for every run.

    python bench/cpu_convert_side_by_side.py --out bench/results/convert-cpu-DATE.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MAKE_MODEL = """
import sys, torch, transformers as tf
cfg = tf.LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=8, vocab_size=32000)
torch.manual_seed(0)
torch.set_default_dtype(torch.bfloat16)
tf.LlamaForCausalLM(cfg).save_pretrained(sys.argv[1])
"""

ONESHOT = """
import sys, torch
from transformers import AutoModelForCausalLM
from llmcompressor import oneshot
from llmcompressor.modifiers.quantization import QuantizationModifier
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
oneshot(model=model, recipe=QuantizationModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"]))
model.save_pretrained(sys.argv[2], save_compressed=True)
"""

MODEL_FREE = """
import sys
from llmcompressor import model_free_ptq
model_free_ptq(sys.argv[1], sys.argv[2], scheme="W4A16", ignore=["lm_head", "re:.*embed_tokens$"], device="cpu")
"""


def measure(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (GB) and CPU seconds (user + system) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr.read().decode()[-3000:]}")
    return wall, usage.ru_maxrss * 1024 / 1e9, usage.ru_utime + usage.ru_stime


def machine() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((l.split(":", 1)[1].strip() for l in flags.splitlines() if l.startswith("model name")), "?")
    isa = "AVX-512" if " avx512f" in flags else "AVX2" if " avx2" in flags else "no AVX2"
    return f"{model}, {len(os.sched_getaffinity(0))} cores, {isa}, {platform.system()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/hlwq-convert-bench", help="source model and outputs")
    ap.add_argument("--llmc-python", help="python of an llm-compressor virtualenv (default: scripts/setup_llmcompressor.sh's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", help="write the Markdown table here")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    src = work / "llama-synth"
    env = os.environ | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    if not (src / "config.json").is_file():
        subprocess.run([sys.executable, "-c", MAKE_MODEL, str(src)], check=True, env=env)
    llmc = args.llmc_python
    if llmc is None:
        subprocess.run([str(ROOT / "scripts" / "setup_llmcompressor.sh")], check=True)
        llmc = str(ROOT / os.environ.get("HLWQ_LLMC_VENV", ".venv-llmc") / "bin" / "python")
    size = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    runs = {
        "hlwq_kernels --scheme sym (the peers' format)": [sys.executable, "-m", "hlwq_kernels.convert", str(src), "{dst}",
                                                          "--scheme", "sym", "--quiet"],
        "hlwq_kernels (default: asym, minmax)": [sys.executable, "-m", "hlwq_kernels.convert", str(src), "{dst}", "--quiet"],
        "llm-compressor oneshot W4A16 + save_pretrained": [llmc, "-c", ONESHOT, str(src), "{dst}"],
        "llm-compressor model_free_ptq W4A16": [llmc, "-c", MODEL_FREE, str(src), "{dst}"],
    }
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in runs}
    converting: list[float] = []  # hlwq_kernels' own conversion time (report total_s), imports excluded
    load = os.getloadavg()
    for rep in range(args.repeats):
        for i, (name, cmd) in enumerate(runs.items()):
            dst = work / f"out-{i}"
            shutil.rmtree(dst, ignore_errors=True)
            wall, rss, cpu = measure([c.replace("{dst}", str(dst)) for c in cmd], env)
            results[name].append((wall, rss, cpu))
            if i == 0:
                converting.append(json.loads((dst / "hlwq_report.json").read_text())["timings"]["total_s"])
            print(f"run {rep + 1}: {name}: {wall:.2f} s, {rss:.2f} GB, {cpu:.1f} CPU s", flush=True)
    demo = work / "demo"
    demo_runs = []
    for _ in range(args.repeats):
        shutil.rmtree(demo, ignore_errors=True)
        wall, _, _ = measure([sys.executable, "-m", "hlwq_kernels.convert", "--demo", str(demo), "--quiet"], env)
        demo_runs.append((wall, json.loads((demo / "hlwq_report.json").read_text())["timings"]["total_s"]))
    best = {name: min(r) for name, r in results.items()}
    peak = {name: max(rss for _, rss, _ in r) for name, r in results.items()}
    cpu_s = {name: min(c for _, _, c in r) for name, r in results.items()}
    ours, peers = next(iter(runs)), list(runs)[1:]
    fastest = min(best[p][0] for p in peers)
    smallest = min(peak[p] for p in peers)
    lines = [
        f"# Whole-process conversion on the CPU, {time.strftime('%Y-%m-%d')}",
        "",
        f"Machine: {machine()}; load average at start {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} "
        f"(the cores are shared with other jobs: wall times are upper bounds). Python {platform.python_version()}.",
        f"Source: synthetic Llama (hidden 2048, intermediate 5632, 8 layers, vocab 32000), {size / 1e9:.2f} GB BF16, "
        "in the page cache. Best wall time of "
        f"{args.repeats} alternating runs; peak RSS is the largest of the {args.repeats} runs.",
        "",
        "| converter | wall s | CPU s | peak RSS GB | wall vs fastest peer | RSS vs smallest peer |",
        "|---|---|---|---|---|---|",
    ]
    for name in runs:
        lines.append(f"| {name} | {best[name][0]:.2f} | {cpu_s[name]:.1f} | {peak[name]:.2f} | "
                     f"{best[name][0] / fastest:.2f}x | {peak[name] / smallest:.2f}x |")
    demo_wall = min(w for w, _ in demo_runs)
    demo_conv = min(t for _, t in demo_runs)
    lines += [
        "",
        f"Targets: hlwq_kernels wall <= 1.0x the fastest peer ({best[ours][0] / fastest:.2f}x: "
        f"{'met' if best[ours][0] <= fastest else 'missed'}), peak RSS <= 0.5x the smallest peer "
        f"({peak[ours] / smallest:.2f}x: {'met' if peak[ours] <= 0.5 * smallest else 'missed'}).",
        f"MiniLM demo (`python -m hlwq_kernels.convert --demo DST --quiet`): conversion {demo_conv:.2f} s "
        f"(report total_s, target <= 3 s: {'met' if demo_conv <= 3 else 'missed'}), whole process {demo_wall:.2f} s.",
        f"hlwq_kernels' conversion alone (report total_s, imports excluded): best {min(converting):.2f} s. "
        "CPU s: user + system time of the whole process (least of the runs), less sensitive than wall time to "
        "other jobs on the cores. hlwq_kernels flushes its shards to disk (fdatasync) before returning; "
        "llm-compressor does not.",
    ]
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")


if __name__ == "__main__":
    main()
