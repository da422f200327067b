"""Peak memory of a conversion: pieces of at most a few MiB stream through a fixed pool of buffers
and kept tensors are copied file to file, so the peak RSS grows by far less than the largest
tensor, whatever the size of the checkpoint (256 MiB here, with a 64 MiB kept embedding)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import random_weight
from tests.tiny_checkpoints import write_config

ROOT = Path(__file__).resolve().parents[2]
N, K = 2048, 4096  # 16 MiB per BF16 weight
LAYERS = 12  # 192 MiB of quantized weights
VOCAB = 8192  # a 64 MiB embedding, kept: the largest tensor

# Linux: VmRSS is the resident set now, VmHWM its peak; writing 5 to clear_refs resets the peak.
MEASURE = """
import json, sys
from hlwq_kernels.checkpoint import quantize_checkpoint
from hlwq_kernels.checkpoint.cpu_backend import PIECE_BYTES

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

src, dst, warm_src, warm_dst = sys.argv[1:5]
quantize_checkpoint(warm_src, warm_dst, progress=False)  # imports and first-call costs
base = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")
report = quantize_checkpoint(src, dst, max_shard_size="64MB", progress=False)
peak = status("VmHWM")
print(json.dumps({"base": base, "peak": peak, "input": report.input_bytes, "layers": len(report.layers),
                  "piece": PIECE_BYTES}))
"""


def write_source(path: Path, layers: int, n: int, k: int, vocab: int) -> None:
    """One random weight reused under ``layers`` names (cheap to make, same work to convert)."""
    path.mkdir(parents=True)
    write_config(path, model_type="llama", architectures=["LlamaForCausalLM"])
    w = random_weight((n, k), torch.bfloat16, seed=0)
    tensors = {f"model.layers.{i}.mlp.down_proj.weight": w for i in range(layers)}
    tensors["model.embed_tokens.weight"] = random_weight((vocab, k), torch.bfloat16, seed=1)
    save_file({name: t.clone() for name, t in tensors.items()}, path / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_peak_rss_is_bounded_by_pieces_not_tensors_or_model(tmp_path):
    write_source(tmp_path / "src", LAYERS, N, K, VOCAB)
    write_source(tmp_path / "warm", 1, 256, 256, 64)
    script = tmp_path / "measure.py"
    script.write_text(MEASURE)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "src"), str(tmp_path / "dst"), str(tmp_path / "warm"),
         str(tmp_path / "warm_dst")],
        capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)}, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    largest = VOCAB * K * 2
    assert m["input"] == LAYERS * N * K * 2 + largest and m["layers"] == LAYERS
    growth = m["peak"] - m["base"]
    threads = torch.get_num_threads()
    # the input buffers (threads + 2 pieces), each worker's piece out and float32 temporaries of its
    # tile, and 16 MiB of allocator slack (per-thread malloc arenas)
    budget = (2 * threads + 4) * m["piece"] + 16 * 2**20
    print(f"peak RSS growth {growth / 2**20:.1f} MiB for a {m['input'] / 2**20:.0f} MiB checkpoint "
          f"(largest tensor {largest / 2**20:.0f} MiB, budget {budget / 2**20:.0f} MiB)")
    assert growth < budget, (growth, budget)
    assert growth < largest / 2
