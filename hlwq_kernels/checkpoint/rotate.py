"""rotate_checkpoint: a safetensors checkpoint in, the same model with Hadamard rotations folded
into its weights out (unquantized), streamed one tensor at a time (``models.rotation`` decides what
each tensor becomes)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch

from hlwq_kernels.checkpoint import io
from hlwq_kernels.checkpoint.destination import check_destination, publish
from hlwq_kernels.models.rotation import rotation_plan

SOURCE_KEY = "hlwq_source"  # in the rotated checkpoint's index metadata: the files it was made from

FLOAT_DTYPES = ("BF16", "F16", "F32", "F64")


def rotate_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    seed: int = 0,
    block_size: int | None = 128,
    r1: bool = True,
    r2: bool = True,
    dtype: str | None = None,
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
) -> dict:
    """Write the rotated (unquantized) checkpoint of ``src`` to ``dst``; returns the rotation record.

    Tensors keep their safetensors dtype unless ``dtype`` ("BF16", "F16", "F32", "F64") is given
    for the floating-point ones. config.json gets ``hlwq_rotation`` and, after R1,
    ``tie_word_embeddings: false``; other files are copied. The output appears at ``dst`` only when
    complete (written into a hidden sibling directory first). Its index's metadata names the source's files
    (``SOURCE_KEY``: ``io.source_inventory``), so a rotated copy of a source that changed since is told apart.
    """
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(FLOAT_DTYPES)} or None, got {dtype!r}")
    src_path = io.resolve_source(src)
    dst_path = Path(dst).expanduser().resolve()
    config = io.read_config(src_path)
    if "quantization_config" in config:
        raise io.CheckpointError(f"{src_path / io.CONFIG_NAME} has a quantization_config: rotate the unquantized model")
    check_destination(src_path, dst_path, overwrite)
    tensors = io.read_source(src_path)
    plan = rotation_plan(config, {n: t.shape for n, t in tensors.items()}, seed=seed, block_size=block_size, r1=r1, r2=r2)
    aux = {n: io.read_tensor(tensors[n]) for n in plan.all_aux_names()}

    def out_dtype(t: io.SourceTensor) -> str:
        return dtype if dtype is not None and t.dtype in FLOAT_DTYPES else t.dtype

    sources = [t for _, t in sorted(tensors.items())]
    units = [[io.OutTensor(o, out_dtype(t), t.shape) for o in plan.output_names(t.name)] for t in sources]
    shards = io.plan_shards([sum(o.nbytes for o in u) for u in units], io.parse_size(max_shard_size))
    work = Path(tempfile.mkdtemp(prefix=f".{dst_path.name}.rotating-", dir=dst_path.parent))
    weight_map = {}
    try:
        for i, shard in enumerate(shards):
            fname = io.shard_name(i, len(shards))
            header, offsets = io.shard_layout(o for j in shard for o in units[j])
            path = work / fname
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                io.write_at(fd, header, 0, path)
                for j in shard:
                    t = sources[j]
                    for name, value in plan.transform(t.name, io.read_tensor(t), aux):
                        data = value.to(io.DTYPES[out_dtype(t)]).contiguous().view(torch.uint8).reshape(-1)
                        io.write_at(fd, memoryview(data.numpy()), offsets[name], path)
                        weight_map[name] = fname
                os.fsync(fd)
            finally:
                os.close(fd)
        total = sum(o.nbytes for u in units for o in u)
        metadata = {"total_size": total, SOURCE_KEY: io.source_inventory(src_path)}
        io.write_json(work / io.INDEX_NAME, {"metadata": metadata, "weight_map": dict(sorted(weight_map.items()))})
        io.write_json(work / io.CONFIG_NAME, plan.rotated_config(config), sort_keys=False)
        io.copy_files(src_path, work, io.auxiliary_files(src_path))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    publish(work, dst_path)
    return plan.record()
