"""End-to-end conversion speed on the GPU: a synthetic Llama-3-8B-shaped BF16 checkpoint (random
weights made on the device, about 16 GB in 4 shards) converted by quantize_checkpoint with its
defaults, read from the page cache.

Reports, per output directory (a disk and, when there is room, tmpfs): wall time, input GB/s
(source bytes / wall time) and the busy time of each stage as a share of the wall time (stages
overlap, so the shares add up to more than 100%): reading the source (reader threads), host->device
copies, kernels (quantization and the error sums of the report), device->host copies (GPU time,
from CUDA events), writing, flushing to disk (fdatasync of the committer), the dispatcher's Python.
Beside it: the page-cache read speed of the source and the disk's own write and cold-read speeds.
Before the timed runs, a smaller checkpoint is converted on the GPU and on the CPU and the shards
are compared byte for byte, and a NaN weight must be refused.

    python bench/gpu_checkpoint.py --out bench/results/convert-gpu-h200-DATE.md
    python bench/gpu_checkpoint.py --layers 4   # a quicker, smaller run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from gpu_common import emit_table
from hlwq_kernels.checkpoint import quantize_checkpoint
from hlwq_kernels.checkpoint.pipeline import DEFAULT_SCALES, DEFAULT_SCHEME
from hlwq_kernels.checkpoint.io import CheckpointError, OutTensor, shard_layout, write_at
from hlwq_kernels.ops.int4 import quantize_int4

LLAMA3_8B = dict(hidden=4096, intermediate=14336, heads=32, kv_heads=8, head_dim=128, vocab=128256)
STAGES = [("read_s", "read"), ("h2d_s", "h2d"), ("kernel_s", "kernels"), ("d2h_s", "d2h"), ("write_s", "write"),
          ("commit_s", "flush"), ("launch_s", "dispatch")]


def llama_shapes(layers: int, vocab: int) -> dict[str, tuple[int, ...]]:
    h, i, d = LLAMA3_8B["hidden"], LLAMA3_8B["intermediate"], LLAMA3_8B["head_dim"]
    q, kv = LLAMA3_8B["heads"] * d, LLAMA3_8B["kv_heads"] * d
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, h), "lm_head.weight": (vocab, h),
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


def make_checkpoint(path: Path, layers: int, vocab: int, shard_bytes: int, nan: bool = False) -> int:
    """Random BF16 weights (std 0.02; norms |x| + 1) made on the GPU, written as safetensors shards
    (headers by the project's own layout code), left in the page cache. ``nan``: one NaN weight."""
    path.mkdir(parents=True)
    config = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=LLAMA3_8B["hidden"],
                  intermediate_size=LLAMA3_8B["intermediate"], num_hidden_layers=layers,
                  num_attention_heads=LLAMA3_8B["heads"], num_key_value_heads=LLAMA3_8B["kv_heads"],
                  head_dim=LLAMA3_8B["head_dim"], vocab_size=vocab, torch_dtype="bfloat16",
                  tie_word_embeddings=False, rms_norm_eps=1e-5)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    g = torch.Generator(device="cuda").manual_seed(0)
    groups, current, size = [], [], 0
    for name, shape in sorted(llama_shapes(layers, vocab).items()):
        nbytes = 2 * int(torch.tensor(shape).prod())
        if current and size + nbytes > shard_bytes:
            groups.append(current)
            current, size = [], 0
        current.append((name, shape))
        size += nbytes
    groups.append(current)
    weight_map, total = {}, 0
    with ThreadPoolExecutor(8) as pool:
        for i, group in enumerate(groups):
            fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
            header, offsets = shard_layout(OutTensor(n, "BF16", s) for n, s in group)
            fd = os.open(path / fname, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            write_at(fd, header, 0, path / fname)
            jobs = []
            for name, shape in group:
                t = torch.randn(shape, generator=g, device="cuda", dtype=torch.float32).mul_(0.02)
                t = (t if len(shape) == 2 else t.abs() + 1).to(torch.bfloat16)
                if nan and name.endswith("down_proj.weight"):
                    t[3, 5] = float("nan")
                host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                host.copy_(t)
                view = memoryview(host.view(torch.uint8).numpy()).cast("B")
                for off in range(0, len(view), 256 << 20):  # 256 MiB writes in parallel
                    jobs.append(pool.submit(write_at, fd, view[off:off + (256 << 20)], offsets[name] + off, path))
                    jobs[-1].host = host  # keep the buffer alive until written
                weight_map[name] = fname
                total += t.numel() * 2
            for j in jobs:
                j.result()
            os.close(fd)
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return total


def read_speed(files: list[Path]) -> float:
    """GB/s of reading ``files`` once with 8 threads (64 MiB reads)."""
    def read(path: Path, off: int) -> int:
        fd = os.open(path, os.O_RDONLY)
        try:
            return len(os.pread(fd, 64 << 20, off))
        finally:
            os.close(fd)

    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        done = sum(pool.map(lambda a: read(*a), [(f, o) for f in files for o in range(0, f.stat().st_size, 64 << 20)]))
    return done / 1e9 / (time.perf_counter() - start)


def disk_speeds(directory: Path, nbytes: int = 2 << 30) -> tuple[float, float]:
    """(write GB/s with fdatasync, cold read GB/s after dropping the file from the page cache)."""
    path = directory / "hlwq-disk-probe.bin"
    block = os.urandom(64 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    start = time.perf_counter()
    for off in range(0, nbytes, len(block)):
        write_at(fd, block, off, path)
    os.fdatasync(fd)
    write = nbytes / 1e9 / (time.perf_counter() - start)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    read = read_speed([path])
    path.unlink()
    return write, read


def warm_up(vocab: int) -> None:
    """Compile the kernels (one per distinct K) outside the measured runs."""
    for k in sorted({s[1] for s in llama_shapes(1, vocab).values() if len(s) == 2}):
        quantize_int4(torch.randn(64, k, device="cuda", dtype=torch.bfloat16))
    torch.cuda.synchronize()


def shard_digests(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.glob("*.safetensors"))}


def check(work: Path) -> list[str]:
    """GPU output == CPU output byte for byte on a 2-layer checkpoint; a NaN weight is refused."""
    src = work / "check-src"
    make_checkpoint(src, 2, 4096, 200 << 20)
    gpu = quantize_checkpoint(src, work / "check-gpu", device="cuda", max_shard_size="200MB", progress=False)
    cpu = quantize_checkpoint(src, work / "check-cpu", device="cpu", max_shard_size="200MB", progress=False)
    same = shard_digests(work / "check-gpu") == shard_digests(work / "check-cpu")
    worst = max(abs(a.sqnr_db - b.sqnr_db) for a, b in zip(gpu.layers, cpu.layers))
    make_checkpoint(work / "check-nan", 1, 4096, 200 << 20, nan=True)
    try:
        quantize_checkpoint(work / "check-nan", work / "check-nan-out", device="cuda", progress=False)
        nan = "NOT refused"
    except CheckpointError as e:
        nan = f"refused ({str(e)[-60:]})"
    return [f"check: GPU and CPU shards byte-identical: {same} ({len(gpu.layers)} layers, SQNR differs by at most "
            f"{worst:.2e} dB); NaN weight: {nan}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/hlwq-bench-checkpoint", help="on the disk: outputs, probes")
    ap.add_argument("--source-dir", help="where to write the source (default: /dev/shm when it has room, else workdir)")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--out", help="write the Markdown table here")
    ap.add_argument("--skip-check", action="store_true")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shm = Path("/dev/shm")
    roomy = shm.is_dir() and shutil.disk_usage(shm).free > 40e9
    src_root = Path(args.source_dir) if args.source_dir else (shm / "hlwq-bench-src" if roomy else work)
    src = src_root / "src"
    shutil.rmtree(src, ignore_errors=True)
    try:
        notes = [] if args.skip_check else check(work)
    except Exception as e:  # report and still time the conversion
        import traceback

        traceback.print_exc()
        notes = [f"check FAILED: {type(e).__name__}: {e}"]
    print(*notes, sep="\n", flush=True)
    start = time.perf_counter()
    total = make_checkpoint(src, args.layers, LLAMA3_8B["vocab"], 5 * 10**9)
    print(f"synthetic checkpoint: {total / 1e9:.2f} GB in {time.perf_counter() - start:.1f} s at {src}", flush=True)
    files = sorted(src.glob("*.safetensors"))
    cached = read_speed(files)
    disk_write, disk_read = disk_speeds(work)
    print(f"source page-cache read {cached:.1f} GB/s; disk {work}: write+fdatasync {disk_write:.2f} GB/s, "
          f"cold read {disk_read:.2f} GB/s", flush=True)
    warm_up(LLAMA3_8B["vocab"])
    dsts = [work / "dst"] + ([shm / "hlwq-bench-dst"] if roomy else [])
    name = torch.cuda.get_device_name()
    rows = [
        f"# quantize_checkpoint on the GPU, Llama-3-8B shapes ({args.layers} layers), defaults "
        f"(rtn, {DEFAULT_SCHEME} {DEFAULT_SCALES[DEFAULT_SCHEME]}), {name}",
        "",
        f"{os.cpu_count()} CPU cores. Source {total / 1e9:.2f} GB BF16 in {src_root} ({'tmpfs' if src_root == shm / 'hlwq-bench-src' else 'disk'}), "
        f"read from the page cache at {cached:.1f} GB/s (8 threads); the output disk ({work}) writes "
        f"{disk_write:.2f} GB/s with fdatasync and reads {disk_read:.2f} GB/s cold.",
        "",
        "| output on | wall s | input GB/s | " + " | ".join(f"{label} %" for _, label in STAGES) + " |",
        "|---|---|---|" + "---|" * len(STAGES),
    ]
    for dst in dsts:
        shutil.rmtree(dst, ignore_errors=True)
        report = quantize_checkpoint(src, dst, device="cuda", progress=False)
        t = report.timings
        wall = t["total_s"]
        print(json.dumps(t), flush=True)
        where = "tmpfs" if str(dst).startswith(str(shm)) else "disk"
        rows.append(f"| {where} | {wall:.2f} | {report.input_bytes / 1e9 / wall:.2f} | "
                    + " | ".join(f"{100 * t.get(k, 0.0) / wall:.0f}" for k, _ in STAGES) + " |")
        shutil.rmtree(dst)
    rows += ["", "Shares are busy time / wall time per stage (summed over a stage's threads; stages overlap). "
             "h2d, kernels, d2h: GPU time from CUDA events. flush: fdatasync before each journal commit "
             "(the output is on disk when the run returns).", *notes]
    emit_table(rows, args.out)
    shutil.rmtree(src_root if src_root != work else src, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
