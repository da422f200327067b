"""The output directory: checked before any work starts, replaced only when finished.

Rules (every refusal is one :class:`CheckpointError` line naming the path and the reason):

- the destination is neither the source, nor inside it, nor a parent of it;
- an existing destination is a directory; if it is not empty it is replaced only with
  ``overwrite=True`` and only when it holds an earlier output of this converter (a report
  ``hlwq_report.json`` beside a ``config.json`` with a compressed-tensors ``quantization_config``)
  and no file that output did not write (its config, report, index, the shards its index names and
  the files its report says it copied), so ``--overwrite`` never deletes unrelated files;
- its parent directory exists and accepts new files (probed by creating and removing an empty
  directory, which catches read-only file systems, missing permissions and pseudo file systems
  such as ``/proc`` alike, also for root).

:func:`publish` moves the finished work directory into place atomically (``os.replace``); an
earlier output is first moved aside (under a new hidden name) and deleted only once the new one is in
place. :func:`remove_work_dir` deletes the converter's own hidden working directories beside ``dst``
and refuses a directory of that name that the converter did not make.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from hlwq_kernels.checkpoint.io import CONFIG_NAME, INDEX_NAME, CheckpointError, auxiliary_files
from hlwq_kernels.checkpoint.report import REPORT_NAME

HEADER_MARGIN = 2**20  # shard headers, index, config, report: well under 1 MiB for models of 10k tensors
# What the longest hidden sibling of DST adds to its name: ..DST.rotated.rotating-XXXXXXXX (the rotation's work
# directory, beside the rotated source .DST.rotated).
SIBLING_NAME_EXTRA = len("..") + len(".rotated") + len(".rotating-") + 8


def is_converter_output(path: Path) -> bool:
    """Whether directory ``path`` holds an earlier output of this converter."""
    if not (path / REPORT_NAME).is_file():
        return False
    try:
        config = json.loads((path / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return False
    qc = config.get("quantization_config") if isinstance(config, dict) else None
    return isinstance(qc, dict) and qc.get("quant_method") == "compressed-tensors"


def check_destination(src: Path, dst: Path, overwrite: bool) -> None:
    """Refuse a destination that cannot or must not receive the output (see the module docstring)."""
    if dst == src or src in dst.parents or dst in src.parents:
        raise CheckpointError(f"destination {dst} must not be the source {src}, inside it or contain it")
    limit = _name_max(dst.parent) - SIBLING_NAME_EXTRA
    if len(os.fsencode(dst.name)) > limit:
        raise CheckpointError(f"the destination's name is {len(os.fsencode(dst.name))} bytes long; at most {limit} fit "
                              f"(the converter works in hidden siblings such as .NAME.partial): choose a shorter name")
    if dst.exists() or dst.is_symlink():
        if not dst.is_dir():
            raise CheckpointError(f"destination {dst} exists and is not a directory")
        if any(dst.iterdir()):
            earlier = is_converter_output(dst)
            if not overwrite:
                hint = ("it holds an earlier output of this converter: pass --overwrite (overwrite=True) to replace it"
                        if earlier else "choose a new or empty directory")
                raise CheckpointError(f"destination {dst} exists and is not empty; {hint}")
            if not earlier:
                raise CheckpointError(
                    f"destination {dst} is not empty and is not an earlier output of this converter (no {REPORT_NAME} "
                    f"beside a compressed-tensors {CONFIG_NAME}): --overwrite replaces only such a directory; "
                    "choose a new or empty directory"
                )
            foreign = _foreign_files(dst)
            if foreign:
                more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
                raise CheckpointError(
                    f"destination {dst} holds files the earlier conversion did not write ({', '.join(foreign[:3])}{more}): "
                    "--overwrite would delete them; move them out first or choose another directory"
                )
    _check_parent(dst.parent)


def _name_max(directory: Path) -> int:
    """The longest file name (bytes) the file system of ``directory`` takes (255 where it does not say)."""
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _foreign_files(path: Path) -> list[str]:
    """The files under an earlier output ``path`` that its conversion did not write (relative POSIX paths, sorted):
    all of them when its report or index cannot be read."""
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file() or p.is_symlink())
    try:
        copied = json.loads((path / REPORT_NAME).read_text()).get("copied_files", [])
        shards = json.loads((path / INDEX_NAME).read_text())["weight_map"].values()
        written = {CONFIG_NAME, REPORT_NAME, INDEX_NAME, *copied, *shards}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return files
    return [f for f in files if f not in written]


def remove_work_dir(path: Path, ours: Callable[[Path], bool]) -> None:
    """Delete ``path``, a hidden working directory of this converter, if it exists; refuse (CheckpointError) when
    something of that name is there that the converter did not make (``ours`` says False and it is not empty)."""
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_symlink() or not path.is_dir() or not (ours(path) or not any(path.iterdir())):
        raise CheckpointError(f"{path} exists and was not made by this converter, which keeps its work there: move "
                              "it away or delete it")
    shutil.rmtree(path)


def _check_parent(parent: Path) -> None:
    if not parent.exists():
        raise CheckpointError(f"the destination's parent directory {parent} does not exist (create it first)")
    if not parent.is_dir():
        raise CheckpointError(f"the destination's parent {parent} is not a directory")
    try:
        probe = tempfile.mkdtemp(prefix=".hlwq-write-test-", dir=parent)
        os.rmdir(probe)
    except OSError as e:
        raise CheckpointError(f"cannot write to {parent}: {_reason(e)}") from e


def _reason(e: OSError) -> str:
    if e.errno == errno.EROFS:
        return "read-only file system"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device"
    if e.errno == errno.ENOENT:
        return "the file system does not allow new directories there"
    return e.strerror or str(e)


def check_free_space(src: Path, dst: Path, work: Path, tensor_bytes: int) -> None:
    """Refuse when the destination's file system lacks room for the output: ``tensor_bytes`` of
    tensors, the files copied from ``src``, and a margin for headers and JSON files, less what an
    interrupted earlier run already wrote into ``work``."""
    needed = tensor_bytes + sum((src / rel).stat().st_size for rel in auxiliary_files(src)) + HEADER_MARGIN
    if work.is_dir():
        needed -= sum(f.stat().st_size for f in work.rglob("*") if f.is_file())
    free = shutil.disk_usage(dst.parent).free
    if free < needed:
        raise CheckpointError(
            f"not enough space for {dst}: the output needs {needed / 1e6:.1f} MB, "
            f"the file system of {dst.parent} has {free / 1e6:.1f} MB free"
        )


def publish(work: Path, dst: Path) -> None:
    """Move the finished ``work`` directory to ``dst``, replacing an earlier output there."""
    try:
        if not dst.exists():
            os.replace(work, dst)
            return
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        os.replace(dst, old)  # over the new empty directory
        try:
            os.replace(work, dst)
        except OSError:
            os.replace(old, dst)
            raise
        shutil.rmtree(old)
    except OSError as e:
        shutil.rmtree(work, ignore_errors=True)
        raise CheckpointError(f"cannot move the finished output into {dst}: {_reason(e)}") from e
