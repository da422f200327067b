"""Peak memory of a conversion: streaming keeps the peak RSS within a small multiple of the largest
tensor plus one output shard, far below the size of the checkpoint (about 1 GB here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tests.tiny_checkpoints import write_config

ROOT = Path(__file__).resolve().parents[1]
N, K = 2048, 4096  # 16 MiB per BF16 tensor
TENSORS_PER_FILE, FILES = 16, 4  # 64 tensors, 1 GiB
MAX_SHARD = 64 * 2**20

# Linux: VmRSS is the resident set now, VmHWM its peak; writing 5 to clear_refs resets the peak.
MEASURE = """
import json, sys
from hlwq_kernels.checkpoint import quantize_checkpoint

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

src, dst, warm_src, warm_dst, max_shard = sys.argv[1:6]
quantize_checkpoint(warm_src, warm_dst, method="rtn", progress=False)  # imports and first-call costs
base = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")
report = quantize_checkpoint(src, dst, method="rtn", max_shard_size=int(max_shard), progress=False)
peak = status("VmHWM")
print(json.dumps({"base": base, "peak": peak, "input": report.input_bytes, "layers": len(report.layers),
                  "shards": report.shards}))
"""


def write_source(path: Path, files: int, per_file: int, n: int, k: int) -> None:
    path.mkdir(parents=True)
    write_config(path, model_type="llama", architectures=["LlamaForCausalLM"])
    g = torch.Generator().manual_seed(0)
    weight_map = {}
    for f in range(files):
        name = f"model-{f + 1:05d}-of-{files:05d}.safetensors"
        tensors = {}
        for i in range(per_file):
            key = f"model.layers.{f * per_file + i}.mlp.down_proj.weight"
            tensors[key] = torch.randn(n, k, generator=g, dtype=torch.float32).to(torch.bfloat16)
            weight_map[key] = name
        save_file(tensors, path / name, metadata={"format": "pt"})
        del tensors
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_peak_rss_is_bounded_by_tensor_and_shard_not_model(tmp_path):
    write_source(tmp_path / "src", FILES, TENSORS_PER_FILE, N, K)
    write_source(tmp_path / "warm", 1, 1, 256, 256)
    script = tmp_path / "measure.py"
    script.write_text(MEASURE)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "src"), str(tmp_path / "dst"), str(tmp_path / "warm"),
         str(tmp_path / "warm_dst"), str(MAX_SHARD)],
        capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    assert m["input"] == FILES * TENSORS_PER_FILE * N * K * 2 and m["layers"] == FILES * TENSORS_PER_FILE
    largest = N * K * 2
    growth = m["peak"] - m["base"]
    # float32 copies of the weight, int64 packing and float32 error temporaries, one shard of slack
    budget = 16 * largest + MAX_SHARD
    print(f"peak RSS growth {growth / 2**20:.0f} MiB for a {m['input'] / 2**30:.2f} GiB checkpoint "
          f"(largest tensor {largest / 2**20:.0f} MiB, budget {budget / 2**20:.0f} MiB)")
    assert growth < budget, (growth, budget)
    assert growth < m["input"] / 3
