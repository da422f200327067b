"""Durable progress of a conversion, per tensor, in the partial directory ``.<dst>.partial``.

Layout::

    progress/plan.json          fingerprint (format version, options, source files, plan digest) and totals
    progress/done-<id>.jsonl    one line per finished source tensor: {"name", "bytes", "layer"}
    model-...-of-....safetensors  the shards at their final size, headers written first; each tensor
                                  is written at its planned offset

A tensor's line is appended only after its bytes are on disk (``fdatasync`` of the shard files),
and the line is then flushed itself (``fsync``), so after any interruption (signal, ``kill -9``,
power loss) every line names a tensor whose bytes are complete. A torn last line is ignored. Each
process appends to a journal of its own, so the number of processes may change between runs. A
directory whose ``plan.json`` is missing, unreadable or has another fingerprint is never trusted:
it is deleted and the conversion starts afresh (only when it holds a ``progress`` directory, a
finished output or nothing: a directory of that name that the converter did not make is refused,
not deleted).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterable

from hlwq_kernels.checkpoint.destination import is_converter_output, remove_work_dir
from hlwq_kernels.checkpoint.io import CheckpointError, file_inventory, write_at, write_error, write_json
from hlwq_kernels.checkpoint.plan import Plan

FORMAT = 1  # bump when the partial directory's layout or the bytes written for the same options change
PROGRESS_DIR = "progress"
PLAN_NAME = "plan.json"


def partial_dir(dst: Path) -> Path:
    """The hidden sibling directory where the conversion to ``dst`` is written until complete."""
    return dst.parent / f".{dst.name}.partial"


def fingerprint(files: Iterable[Path], options: dict, plan: Plan) -> str:
    """What must match for a partial directory to be resumed: this format, the package version,
    the options, every source file (name, size, modification time) and the plan."""
    inventory = {
        "format": FORMAT,
        "version": _package_version(),
        "options": options,
        "files": file_inventory(files),
        "plan": plan.digest(),
    }
    return hashlib.sha256(json.dumps(inventory, sort_keys=True).encode()).hexdigest()


def _package_version() -> str:
    try:
        return importlib.metadata.version("hlwq-kernels")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "source"


def _read_plan(work: Path) -> dict | None:
    try:
        data = json.loads((work / PROGRESS_DIR / PLAN_NAME).read_text())
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def prepare(work: Path, fprint: str, plan: Plan) -> bool:
    """Make ``work`` ready to write ``plan``: keep it when it holds an earlier run of the same
    conversion (returns True), else delete it and create the shard files (header written, final
    size) and ``plan.json`` last (returns False)."""
    old = _read_plan(work)
    if old is not None and old.get("fingerprint") == fprint and all(
        (work / s.name).is_file() and (work / s.name).stat().st_size == s.size for s in plan.shards
    ):
        return True
    remove_work_dir(work, lambda path: (path / PROGRESS_DIR).is_dir() or is_converter_output(path))
    try:
        (work / PROGRESS_DIR).mkdir(parents=True)
    except OSError as e:
        raise CheckpointError(f"cannot create the output's working directory {work}: {e.strerror}") from e
    for shard in plan.shards:
        path = work / shard.name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.ftruncate(fd, shard.size)
                write_at(fd, shard.header, 0, path)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise write_error(e, path) from e
    totals = {"tensors": len(plan.units), "bytes": sum(u.source.nbytes for u in plan.units)}
    write_json(work / PROGRESS_DIR / PLAN_NAME, {"fingerprint": fprint, "totals": totals})
    _fsync_dir(work / PROGRESS_DIR)
    _fsync_dir(work)
    return False


def load_done(work: Path) -> dict[str, dict]:
    """Finished source tensors recorded in ``work``'s journals: name -> its journal entry."""
    done: dict[str, dict] = {}
    for path in sorted((work / PROGRESS_DIR).glob("done-*.jsonl")):
        for line in path.read_bytes().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:  # a torn last line (power loss mid-append)
                continue
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                done[entry["name"]] = entry
    return done


def saved(work: Path) -> tuple[int, int, int, int] | None:
    """(tensors saved, tensors in all, bytes saved, bytes in all) of the source, or None when
    ``work`` holds no conversion in progress."""
    plan = _read_plan(work)
    if plan is None or not isinstance(plan.get("totals"), dict):
        return None
    done = load_done(work)
    return (len(done), int(plan["totals"]["tensors"]), sum(int(e.get("bytes", 0)) for e in done.values()),
            int(plan["totals"]["bytes"]))


def clear(work: Path) -> None:
    """Remove the progress records (once the output is complete)."""
    shutil.rmtree(work / PROGRESS_DIR)


class Journal:
    """This process's append-only record of finished tensors."""

    def __init__(self, work: Path):
        self.path = work / PROGRESS_DIR / f"done-{uuid.uuid4().hex}.jsonl"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        _fsync_dir(self.path.parent)

    def commit(self, entries: list[dict], data_fds: Iterable[int]) -> None:
        """Flush the shard files ``data_fds`` to disk, then append ``entries`` and flush them."""
        for fd in data_fds:
            getattr(os, "fdatasync", os.fsync)(fd)  # fdatasync: Linux, not macOS
        if entries:
            view = memoryview("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries).encode())
            try:
                while view:
                    view = view[os.write(self.fd, view):]
            except OSError as e:
                raise write_error(e, self.path) from e
            os.fsync(self.fd)

    def close(self) -> None:
        """Close the journal file."""
        os.close(self.fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
