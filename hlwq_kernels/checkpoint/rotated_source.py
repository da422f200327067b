"""``quantize_checkpoint(rotate=True)``: the rotated unquantized checkpoint that is then quantized.

It is written by ``rotate.rotate_checkpoint`` into a hidden sibling of the destination,
``.<dst>.rotated``, which the conversion removes once it succeeds. A rerun (after an interruption)
reuses it when its config.json is exactly what this rotation of this source writes, so the
quantization resumes too; otherwise it is rebuilt.

What is rotated follows ``models.rotation``: R1 (residual stream) and R2 (attention heads) where
they are exact. Where R1 is refused (Gemma 2 / Gemma 3) R2 alone is applied; where the block does
not divide the hidden size, the largest buildable block that does (a power of two first, no larger
than the one asked for) is used. Both are noted in the report.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from hlwq_kernels.checkpoint import io
from hlwq_kernels.checkpoint.destination import remove_work_dir
from hlwq_kernels.checkpoint.rotate import SOURCE_KEY, rotate_checkpoint
from hlwq_kernels.models.rotation import CONFIG_KEY, RotationError, RotationPlan, rotation_plan
from hlwq_kernels.ops.hadamard import is_hadamard_size


@dataclass(frozen=True)
class RotationChoice:
    """The rotation to apply: R1 on or off, R1's block, and notes for the report."""

    r1: bool
    block_size: int | None
    notes: tuple[str, ...]


def rotated_dir(dst: Path) -> Path:
    """The hidden sibling of ``dst`` that holds the rotated source."""
    return dst.parent / f".{dst.name}.rotated"


def _hidden_size(config: Mapping) -> int:
    text = config.get("text_config")
    return int((text if isinstance(text, Mapping) else config)["hidden_size"])


def fitting_block(hidden: int, block_size: int) -> int | None:
    """The block used when ``block_size`` does not divide ``hidden``: the largest buildable
    Hadamard order dividing it and at most ``block_size``, a power of two if there is one."""
    options = [d for d in range(16, min(block_size, hidden) + 1) if hidden % d == 0 and is_hadamard_size(d)]
    powers = [d for d in options if d & (d - 1) == 0]
    return max(powers or options, default=None)


def choose_rotation(config: Mapping, shapes: Mapping[str, Sequence[int]], seed: int,
                    block_size: int | None) -> tuple[RotationChoice, RotationPlan]:
    """What to rotate in a checkpoint (``shapes``: name -> shape), or a CheckpointError with one
    line when nothing can be."""
    notes: list[str] = []
    r1, block = True, block_size
    hidden = _hidden_size(config) if "hidden_size" in config or "text_config" in config else 0
    if block is not None and hidden and hidden % block:
        block = fitting_block(hidden, block)
        if block is None:
            raise io.CheckpointError(f"--rotate: no buildable Hadamard block of at most {block_size} divides hidden "
                                     f"size {hidden} (--rotate-block-size 0, or rotate_block_size=None, takes one block of the full size)")
        notes.append(f"rotation: R1 block {block} (hidden size {hidden} is not a multiple of {block_size})")
    try:
        try:
            plan = rotation_plan(config, shapes, seed=seed, block_size=block, r1=True, r2=True)
        except RotationError as e:
            if not str(e).startswith("cannot fold R1"):
                raise
            r1 = False
            plan = rotation_plan(config, shapes, seed=seed, block_size=block, r1=False, r2=True)
            notes = [f"rotation: R2 only ({e})"]
    except RotationError as e:
        raise io.CheckpointError(f"--rotate: {e}") from e
    notes += [f"rotation: {n}" for n in plan.notes]
    r1_text = f"R1 block {plan.r1.block}" if plan.r1 else "no R1"
    r2_text = f"R2 per head of {plan.r2.size}" if plan.r2 else "no R2"
    notes.insert(0, f"rotated before quantizing: {r1_text}, {r2_text}, seed {seed} (config.json: hlwq_rotation)")
    return RotationChoice(r1, block, tuple(notes)), plan


def is_rotated_source(path: Path) -> bool:
    """Whether ``path`` holds a rotated source that this converter wrote (its config records the rotation)."""
    try:
        return CONFIG_KEY in io.read_config(path)
    except (io.CheckpointError, OSError):
        return False


def prepare_rotated_source(src: Path, dst: Path, seed: int, block_size: int | None,
                           max_bytes: int) -> tuple[Path, tuple[str, ...]]:
    """Rotate ``src`` into ``rotated_dir(dst)`` (or reuse a matching earlier one); returns that
    directory and the report notes."""
    config = io.read_config(src)
    shapes = {n: t.shape for n, t in io.read_source(src).items()}
    choice, plan = choose_rotation(config, shapes, seed, block_size)
    work = rotated_dir(dst)
    expected = json.loads(json.dumps(plan.rotated_config(config)))  # as read back from config.json
    if work.is_dir():
        try:
            made_from = json.loads((work / io.INDEX_NAME).read_text())["metadata"].get(SOURCE_KEY)
            reusable = io.read_config(work) == expected and made_from == io.source_inventory(src)
        except (io.CheckpointError, OSError, ValueError, KeyError, TypeError, AttributeError):
            reusable = False
        if reusable:
            return work, choice.notes + (f"rotation: reused {work} from an earlier run",)
    remove_work_dir(work, is_rotated_source)
    rotate_checkpoint(src, work, seed=seed, block_size=choice.block_size, r1=choice.r1, r2=True, max_shard_size=max_bytes)
    return work, choice.notes
