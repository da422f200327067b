"""Checkpoint I/O: find and validate the source, read tensors one at a time, write shards.

Reading: every source file is validated by ``safetensors.safe_open`` (header parsed and checked,
no code executed); tensor bytes are then read with positioned reads at the offsets of that header,
so only the tensor in hand is resident (no memory map keeps the whole file in the process's RSS).

Writing: the shard layout is planned before anything is written (every output size is known from
the source header, ``shard_layout``), so tensors are written at their offsets as they are produced,
in any order and by any process (no shard is ever held in memory); kept tensors are copied file to
file inside the kernel (``copy_range``). Output is deterministic: tensors sorted by (alignment,
name), JSON with sorted keys, fixed metadata.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

INDEX_NAME = "model.safetensors.index.json"
SINGLE_FILE_NAME = "model.safetensors"  # the weights of a checkpoint without an index, as transformers reads it
CONFIG_NAME = "config.json"
PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Weight files in the source's top level that are not copied (they would shadow the quantized weights); in a
# subfolder (e.g. a sentence-transformers Dense module, 2_Dense/model.safetensors) they belong to another module.
SKIPPED_WEIGHT_SUFFIXES = PICKLE_WEIGHT_SUFFIXES + (".h5", ".msgpack", ".onnx", ".gguf", ".safetensors")
SKIPPED_DIRS = frozenset({".git", ".cache", ".huggingface", "onnx", "openvino", "coreml"})
HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")

DTYPES: dict[str, torch.dtype] = {
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F32": torch.float32,
    "F64": torch.float64,
    "I8": torch.int8,
    "U8": torch.uint8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "BOOL": torch.bool,
}
ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
            "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
            "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


class CheckpointError(RuntimeError):
    """A problem with the source or destination checkpoint; the message names the file or tensor."""


@dataclass(frozen=True)
class SourceTensor:
    """Where a tensor lives in the source: file, byte range (absolute), shape, dtype string."""

    name: str
    file: Path
    start: int
    end: int
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class OutTensor:
    """One tensor of an output shard: name, dtype string, shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * ITEMSIZE[self.dtype]


def parse_size(size: int | str) -> int:
    """Bytes in ``size``: an int, or a string such as ``"5GB"``, ``"500MB"``, ``"2GiB"``."""
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise ValueError(f"cannot parse size {size!r} (use a number of bytes or e.g. 5GB, 500MB, 2GiB)")
    if isinstance(size, int):
        if size < 0:
            raise ValueError(f"a size must not be negative, got {size}")
        return size
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?i?B?)\s*", size, re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot parse size {size!r} (use e.g. 5GB, 500MB, 2GiB)")
    unit = m.group(2).upper().rstrip("B")
    base = 1024 if unit.endswith("I") else 1000
    power = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit.rstrip("I")]
    return int(float(m.group(1)) * base**power)


def resolve_source(src: str | os.PathLike) -> Path:
    """A local directory, or a Hugging Face Hub repo id downloaded with ``snapshot_download``."""
    path = Path(src).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"source {path} is not a directory")
        return path.resolve()
    text = str(src)
    if not HUB_REPO_ID.match(text):
        raise CheckpointError(f"source directory not found: {path}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:
        raise CheckpointError(
            f"{text!r} is not a local directory; downloading it from the Hugging Face Hub needs "
            "huggingface_hub (pip install 'hlwq-kernels[hub]')"
        ) from e
    try:
        local = snapshot_download(
            text, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.md", "*.py", "*.tiktoken"]
        )
    except Exception as e:  # offline, unknown repo, gated repo, network error
        raise CheckpointError(
            f"{text!r} is not a local directory and could not be downloaded from the Hugging Face Hub "
            f"({type(e).__name__}: {e}). Check the repo id and your network (HF_HUB_OFFLINE is "
            f"{os.environ.get('HF_HUB_OFFLINE', 'unset')}), or pass a local directory."
        ) from e
    return Path(local)


def read_config(src: Path) -> dict:
    """Parse ``config.json`` (as data only)."""
    path = src / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"no {CONFIG_NAME} in {src}: not a Hugging Face model directory")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    if not isinstance(config.get("model_type", ""), str):
        raise CheckpointError(f"{path}: model_type must be a string, got {config['model_type']!r}")
    architectures = config.get("architectures") or []
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise CheckpointError(f"{path}: architectures must be a list of strings, got {architectures!r}")
    return config


def _weight_map(index: Path) -> dict[str, str]:
    """The ``weight_map`` of an index file (tensor name -> shard file name beside it), or a clear error."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index}: invalid index ({e})") from e
    if not isinstance(weight_map, dict) or not all(
            isinstance(name, str) and isinstance(file, str) and file and Path(file).name == file
            for name, file in weight_map.items()):
        raise CheckpointError(f"{index}: invalid index (weight_map must map tensor names to shard file names in "
                              f"{index.parent})")
    return weight_map


def weight_files(src: Path) -> list[Path]:
    """The safetensors files of ``src``, as transformers picks them: those its index names when there is one,
    else ``model.safetensors`` when there is one, else every ``*.safetensors`` file; or a clear error."""
    index = src / INDEX_NAME
    if index.is_file():
        files = [src / f for f in sorted(set(_weight_map(index).values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(f"{index} lists missing shard(s): {', '.join(missing)}")
        return files
    if (src / SINGLE_FILE_NAME).is_file():
        return [src / SINGLE_FILE_NAME]
    files = sorted(src.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in src.iterdir() if p.suffix in PICKLE_WEIGHT_SUFFIXES)
    if pickles:
        first = src / pickles[0]
        raise CheckpointError(
            f"{src} has only pickle weights ({', '.join(pickles[:3])}), which are never loaded because "
            "unpickling can run arbitrary code. Convert them to safetensors first, in a trusted environment, "
            f"keeping every tensor ({'once per file' if len(pickles) > 1 else 'one command'}): python -c \"import torch; "
            f"from safetensors.torch import save_file; sd = torch.load('{first}', weights_only=True); "
            f"save_file({{k: v.contiguous().clone() for k, v in sd.items()}}, '{first.with_suffix('.safetensors')}', "
            "metadata={'format': 'pt'})\""
        )
    raise CheckpointError(f"no *.safetensors weight files in {src}")


def file_inventory(files: Iterable[Path]) -> list[list]:
    """``[name, size, modification time (ns)]`` of each file: what tells a changed source from the same one."""
    return [[f.name, (st := f.stat()).st_size, st.st_mtime_ns] for f in files]


def source_inventory(src: Path) -> list[list]:
    """``file_inventory`` of the source's config and the weight files it is read from."""
    return file_inventory([src / CONFIG_NAME, *weight_files(src)])


def unread_weight_files(src: Path, files: Sequence[Path]) -> list[str]:
    """The ``*.safetensors`` files of ``src`` that ``weight_files`` left out (names, sorted)."""
    return sorted(p.name for p in src.glob("*.safetensors") if p not in files)


def index_problems(src: Path, tensors: Mapping[str, SourceTensor], strict: bool = False) -> list[str]:
    """Where the index of ``src`` disagrees with the tensors its shards hold (``scan_source``): a tensor it names
    that its shard does not hold; with ``strict``, also a tensor of a shard that it does not name. At most five
    lines, then a count."""
    index = src / INDEX_NAME
    if not index.is_file():
        return []
    weight_map = _weight_map(index)
    problems = [f"{index.name} names tensor {name!r} in {file}, which does not hold it"
                for name, file in sorted(weight_map.items()) if name not in tensors or tensors[name].file.name != file]
    if strict:
        problems += [f"{index.name} does not name tensor {name!r} of {t.file.name}"
                     for name, t in sorted(tensors.items()) if name not in weight_map]
    return problems[:5] + ([f"and {len(problems) - 5} more disagreements of {index.name}"] if len(problems) > 5 else [])


def read_source(src: Path) -> dict[str, SourceTensor]:
    """The tensors of the checkpoint ``src`` (``weight_files``, ``scan_source``), or a clear error where its index
    names a tensor that its shard does not hold."""
    tensors = scan_source(weight_files(src))
    problems = index_problems(src, tensors)
    if problems:
        raise CheckpointError(f"{src / INDEX_NAME} does not match its shards: {problems[0]}"
                              + (f" ({len(problems) - 1} more)" if len(problems) > 1 else ""))
    return tensors


def scan_file(path: Path) -> list[SourceTensor]:
    """Validate ``path`` with safetensors and return its tensors with absolute byte offsets."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
        with open(path, "rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(header_len))
    except Exception as e:
        raise CheckpointError(f"{path}: corrupt or unreadable safetensors file ({e})") from e
    base = 8 + header_len
    out = []
    for name in sorted(names):
        meta = header[name]
        dtype = meta["dtype"]
        if dtype not in ITEMSIZE:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        start, end = meta["data_offsets"]
        out.append(SourceTensor(name, path, base + start, base + end, tuple(meta["shape"]), dtype))
    return out


def scan_source(files: Sequence[Path]) -> dict[str, SourceTensor]:
    """All tensors of the source, by name; duplicate names across files are an error."""
    tensors: dict[str, SourceTensor] = {}
    for path in files:
        for t in scan_file(path):
            if t.name in tensors:
                raise CheckpointError(f"tensor {t.name!r} appears in both {tensors[t.name].file} and {path}")
            tensors[t.name] = t
    return tensors


def read_bytes(t: SourceTensor) -> bytearray:
    """The raw bytes of one source tensor (read straight into one buffer)."""
    buf = bytearray(t.nbytes)
    with open(t.file, "rb") as fh:
        read_into(fh.fileno(), memoryview(buf), t.start, t)
    return buf


def read_tensor(t: SourceTensor) -> torch.Tensor:
    """One source tensor as a torch tensor (a private copy)."""
    return tensor_from_bytes(t, read_bytes(t))


def tensor_from_bytes(t: SourceTensor, data: bytearray) -> torch.Tensor:
    """The torch tensor of ``t`` over its raw bytes ``data`` (no copy)."""
    if t.dtype not in DTYPES:
        raise CheckpointError(f"{t.file}: tensor {t.name!r} has dtype {t.dtype}, which torch cannot load")
    flat = torch.frombuffer(data, dtype=DTYPES[t.dtype]) if data else torch.empty(0, dtype=DTYPES[t.dtype])
    return flat.reshape(t.shape)


def shard_name(index: int, count: int) -> str:
    """HF shard file name, 1-based."""
    return f"model-{index + 1:05d}-of-{count:05d}.safetensors"


def plan_shards(sizes: Sequence[int], max_bytes: int) -> list[range]:
    """Split units (tensors that stay together) of byte ``sizes``, in order, into runs of at most
    ``max_bytes``: the unit indices of each shard. A unit larger than ``max_bytes`` gets a shard of its own."""
    shards: list[range] = []
    start, size = 0, 0
    for i, unit_bytes in enumerate(sizes):
        if i > start and size + unit_bytes > max_bytes:
            shards.append(range(start, i))
            start, size = i, 0
        size += unit_bytes
    if start < len(sizes):
        shards.append(range(start, len(sizes)))
    return shards


def shard_layout(tensors: Iterable[OutTensor]) -> tuple[bytes, dict[str, int]]:
    """The safetensors header of a shard holding ``tensors`` and each tensor's absolute byte offset
    in the file. Deterministic: tensors sorted by (alignment, name), JSON with sorted keys, fixed
    metadata, the header padded to a multiple of 8 bytes."""
    order = sorted(tensors, key=lambda t: (-ITEMSIZE[t.dtype], t.name))
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offsets: dict[str, int] = {}
    offset = 0
    for t in order:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offsets[t.name] = offset
        offset += t.nbytes
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    head = struct.pack("<Q", len(raw)) + raw
    return head, {name: len(head) + off for name, off in offsets.items()}


def read_into(fd: int, view: memoryview, offset: int, t: SourceTensor) -> None:
    """Fill ``view`` from file descriptor ``fd`` at ``offset`` (positioned reads, no file position)."""
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise CheckpointError(f"{t.file}: tensor {t.name!r} is truncated")
        done += n


def copy_range(src_fd: int, dst_fd: int, src_offset: int, dst_offset: int, nbytes: int, path: Path) -> None:
    """Copy ``nbytes`` between files inside the kernel (``copy_file_range``: no user-space buffer),
    falling back to positioned reads and writes where the file systems do not support it."""
    step = 64 << 20
    buf = None if hasattr(os, "copy_file_range") else memoryview(bytearray(min(nbytes, step)))  # Linux only
    while nbytes:
        n = 0
        if buf is None:
            try:
                n = os.copy_file_range(src_fd, dst_fd, min(nbytes, step), src_offset, dst_offset)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM):
                    raise write_error(e, path) from e
        if n == 0:  # not supported here (or the source ended early): copy through memory from now on
            buf = buf or memoryview(bytearray(min(nbytes, step)))
            n = os.preadv(src_fd, [buf[: min(nbytes, step)]], src_offset)
            if n == 0:
                raise CheckpointError(f"{path}: the source ended early while copying")
            write_at(dst_fd, buf[:n], dst_offset, path)
        src_offset, dst_offset, nbytes = src_offset + n, dst_offset + n, nbytes - n


def cpu_count() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def write_at(fd: int, data: bytes | memoryview, offset: int, path: Path) -> None:
    """``os.pwrite`` all of ``data``; a full disk becomes a CheckpointError naming ``path``."""
    view = memoryview(data).cast("B")
    try:
        while len(view):
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n
    except OSError as e:
        raise write_error(e, path) from e


def write_error(e: OSError, path: Path) -> CheckpointError:
    """The one-line error for a failed write of ``path``: a full disk is named as such."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return CheckpointError(f"disk full while writing {path} ({e.strerror})")
    return CheckpointError(f"cannot write {path}: {e}")


def write_json(path: Path, data: object, sort_keys: bool = True) -> None:
    """JSON with 2-space indent and a trailing newline (keys sorted unless ``sort_keys=False``),
    written, flushed to disk, then renamed."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as fh:
            fh.write(json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointError(f"disk full while writing {path} ({e.strerror})") from e
        raise


def auxiliary_files(src: Path) -> list[Path]:
    """Files of ``src`` to copy verbatim (relative paths): everything but the top level's weight files, index
    and config.json, and hidden or tool directories."""
    out = []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if not path.is_file() or any(p.startswith(".") or p in SKIPPED_DIRS for p in rel.parts[:-1]):
            continue
        if rel.name.startswith("."):
            continue
        if len(rel.parts) == 1 and (rel.suffix in SKIPPED_WEIGHT_SUFFIXES or rel.name in (CONFIG_NAME, INDEX_NAME)
                                    or rel.name.endswith(".index.json")):
            continue
        out.append(rel)
    return out


def copy_files(src: Path, dst: Path, files: Iterable[Path]) -> None:
    """Copy ``files`` (relative paths) from ``src`` to ``dst``, keeping subdirectories."""
    for rel in files:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(src / rel, target)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise CheckpointError(f"disk full while copying {rel} to {dst}") from e
            raise
