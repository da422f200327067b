"""The conversion plan: which source tensor becomes which output tensors, in which shard, at which
byte offset.

It is computed from the source headers alone, before anything is written, and identically by every
process of a distributed run, so that tensors can be written in any order, by any process, at their
final offsets. Its digest is part of the resume fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Iterable

from hlwq_kernels.checkpoint.io import OutTensor, SourceTensor, plan_shards, shard_layout, shard_name
from hlwq_kernels.formats import compressed_tensors as ct


@dataclass(frozen=True)
class Unit:
    """One source tensor, the output tensors written from it (with their absolute byte offsets in
    the shard file) and whether it is quantized (else copied verbatim)."""

    source: SourceTensor
    outputs: tuple[OutTensor, ...]
    offsets: tuple[int, ...]
    shard: int
    quantized: bool

    @property
    def nbytes(self) -> int:
        """Bytes written for this unit."""
        return sum(o.nbytes for o in self.outputs)


@dataclass(frozen=True)
class Shard:
    """One output file: its name, its safetensors header and its total size."""

    name: str
    header: bytes
    size: int


@dataclass(frozen=True)
class Plan:
    """Every unit (in sorted source-name order) and every shard of the output."""

    units: tuple[Unit, ...]
    shards: tuple[Shard, ...]

    @property
    def output_bytes(self) -> int:
        """Bytes of tensor data in all shards (the index's ``total_size``)."""
        return sum(u.nbytes for u in self.units)

    def weight_map(self) -> dict[str, str]:
        """Output tensor name -> shard file name, sorted by tensor name."""
        return dict(sorted((o.name, self.shards[u.shard].name) for u in self.units for o in u.outputs))

    def digest(self) -> str:
        """SHA-256 of the whole layout (sources, outputs, offsets, headers)."""
        layout = {
            "units": [[u.source.name, u.source.file.name, u.source.start, u.source.end, list(u.source.shape),
                       u.source.dtype, u.quantized, u.shard, list(u.offsets),
                       [[o.name, o.dtype, list(o.shape)] for o in u.outputs]] for u in self.units],
            "shards": [[s.name, s.size, hashlib.sha256(s.header).hexdigest()] for s in self.shards],
        }
        return hashlib.sha256(json.dumps(layout, sort_keys=True).encode()).hexdigest()


def make_plan(tensors: dict[str, SourceTensor], quantized: Iterable[str], group_size: int, max_bytes: int,
              symmetric: bool = True) -> Plan:
    """The plan for ``tensors`` where the weights named in ``quantized`` become compressed-tensors
    INT4 tensors (with zero points unless ``symmetric``) and every other tensor is kept; shards of
    at most ``max_bytes`` (a unit larger than that gets a shard of its own)."""
    quantized = set(quantized)
    drafts: list[tuple[SourceTensor, list[OutTensor], bool]] = []
    for name in sorted(tensors):
        t = tensors[name]
        if name in quantized:
            n, k = t.shape
            outputs = [OutTensor(*spec) for spec in ct.layer_tensors(name[: -len(".weight")], n, k, group_size, t.dtype,
                                                                        symmetric)]
            drafts.append((t, outputs, True))
        else:
            drafts.append((t, [OutTensor(name, t.dtype, t.shape)], False))
    runs = plan_shards([sum(o.nbytes for o in outs) for _, outs, _ in drafts], max_bytes)
    units: list[Unit] = []
    shards: list[Shard] = []
    for index, run in enumerate(runs):
        header, offsets = shard_layout(o for i in run for o in drafts[i][1])
        size = len(header) + sum(o.nbytes for i in run for o in drafts[i][1])
        shards.append(Shard(shard_name(index, len(runs)), header, size))
        for i in run:
            source, outputs, is_quantized = drafts[i]
            units.append(Unit(source, tuple(outputs), tuple(offsets[o.name] for o in outputs), index, is_quantized))
    return Plan(tuple(units), tuple(shards))
