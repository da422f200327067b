"""End-to-end conversion speed on the GPU: a synthetic Llama-3-8B-shaped BF16 checkpoint (random
weights made on the device, about 16 GB in 4 shards) converted by quantize_checkpoint.

Reports wall time, input GB/s (source bytes / wall time) and the split of the time between reading
the source, host<->device transfers, kernels (quantization plus the error statistics of the
report) and writing. The source files are flushed and dropped from the page cache before the run
(posix_fadvise DONTNEED), so reads come from the disk. Targets (issue 5): >= 1 GB/s end to end,
kernels under 10% of the wall time.

    python bench/gpu_checkpoint.py --workdir /tmp/hlwq-bench --out bench/results/checkpoint.md
    python bench/gpu_checkpoint.py --layers 4   # a quicker, smaller run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from gpu_common import emit_table
from hlwq_kernels.checkpoint import quantize_checkpoint

LLAMA3_8B = dict(hidden=4096, intermediate=14336, heads=32, kv_heads=8, head_dim=128, vocab=128256)


def llama_shapes(layers: int) -> dict[str, tuple[int, ...]]:
    h, i, d = LLAMA3_8B["hidden"], LLAMA3_8B["intermediate"], LLAMA3_8B["head_dim"]
    q, kv, v = LLAMA3_8B["heads"] * d, LLAMA3_8B["kv_heads"] * d, LLAMA3_8B["vocab"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h), "lm_head.weight": (v, h),
                                          "model.norm.weight": (h,)}
    for l in range(layers):
        p = f"model.layers.{l}"
        shapes |= {
            f"{p}.input_layernorm.weight": (h,), f"{p}.post_attention_layernorm.weight": (h,),
            f"{p}.self_attn.q_proj.weight": (q, h), f"{p}.self_attn.k_proj.weight": (kv, h),
            f"{p}.self_attn.v_proj.weight": (kv, h), f"{p}.self_attn.o_proj.weight": (h, q),
            f"{p}.mlp.gate_proj.weight": (i, h), f"{p}.mlp.up_proj.weight": (i, h), f"{p}.mlp.down_proj.weight": (h, i),
        }
    return shapes


def make_checkpoint(path: Path, layers: int, shard_bytes: int) -> int:
    """Write random BF16 weights (std 0.02, made on the GPU) in shards; drop them from the page cache."""
    path.mkdir(parents=True)
    config = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=LLAMA3_8B["hidden"],
                  intermediate_size=LLAMA3_8B["intermediate"], num_hidden_layers=layers,
                  num_attention_heads=LLAMA3_8B["heads"], num_key_value_heads=LLAMA3_8B["kv_heads"],
                  head_dim=LLAMA3_8B["head_dim"], vocab_size=LLAMA3_8B["vocab"], torch_dtype="bfloat16",
                  tie_word_embeddings=False, rms_norm_eps=1e-5)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    g = torch.Generator(device="cuda").manual_seed(0)
    groups, current, size = [], [], 0
    for name, shape in llama_shapes(layers).items():
        nbytes = 2 * int(torch.tensor(shape).prod())
        if current and size + nbytes > shard_bytes:
            groups.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    groups.append(current)
    weight_map, total = {}, 0
    for i, group in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name, shape in group:
            t = torch.randn(shape, generator=g, device="cuda", dtype=torch.float32).mul_(0.02)
            tensors[name] = (t if len(shape) == 2 else t.abs() + 1).to(torch.bfloat16).cpu()
            weight_map[name] = fname
            total += tensors[name].numel() * 2
        save_file(tensors, path / fname, metadata={"format": "pt"})
        del tensors
        fd = os.open(path / fname, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return total


def warm_up(layers: int, method: str, scale: str) -> None:
    """Compile the kernels (one call per distinct weight shape) outside the measured run."""
    from hlwq_kernels.ops.hlwq import hlwq_int4
    from hlwq_kernels.ops.int4 import dequantize_int4, quantize_int4

    shapes = {s for s in llama_shapes(min(layers, 1)).values() if len(s) == 2 and s[0] != LLAMA3_8B["vocab"]}
    for shape in sorted(shapes):
        w = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
        q = hlwq_int4(w, scale=scale) if method == "hlwq" else quantize_int4(w, scale=scale)
        dequantize_int4(q, dtype=torch.float32)
    torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/hlwq-bench-checkpoint")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--method", choices=["hlwq", "rtn"], default="rtn")
    ap.add_argument("--scale", choices=["absmax", "mse"], default="absmax")
    ap.add_argument("--out", help="write the Markdown table here")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic checkpoint and the output")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    work = Path(args.workdir)
    if work.exists():
        shutil.rmtree(work)
    start = time.perf_counter()
    total = make_checkpoint(work / "src", args.layers, 5 * 10**9)
    print(f"synthetic checkpoint: {total / 1e9:.2f} GB in {time.perf_counter() - start:.1f} s")
    warm_up(args.layers, args.method, args.scale)
    report = quantize_checkpoint(work / "src", work / "dst", method=args.method, scale=args.scale, device="cuda",
                                 max_shard_size="5GB", progress=False)
    t = report.timings
    wall = t["total_s"]
    other = wall - t["read_s"] - t["transfer_s"] - t["kernel_s"] - t["write_s"]
    name = torch.cuda.get_device_name()
    rows = [
        f"# quantize_checkpoint, Llama-3-8B shapes ({args.layers} layers), {args.method} / {args.scale}, {name}",
        "",
        "| input GB | output GB | layers | wall s | input GB/s | read % | transfer % | kernels % | write % | other % |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {report.input_bytes / 1e9:.2f} | {report.output_bytes / 1e9:.2f} | {len(report.layers)} | {wall:.1f} | "
        f"{report.input_bytes / 1e9 / wall:.2f} | {100 * t['read_s'] / wall:.1f} | {100 * t['transfer_s'] / wall:.1f} | "
        f"{100 * t['kernel_s'] / wall:.1f} | {100 * t['write_s'] / wall:.1f} | {100 * other / wall:.1f} |",
        "",
        f"mean SQNR {report.mean_sqnr_db:.2f} dB over {len(report.layers)} layers; kernels include the error "
        "statistics of the report; source read cold (dropped from the page cache).",
    ]
    emit_table(rows, args.out)
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
