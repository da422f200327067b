"""verify_checkpoint: re-read a converted checkpoint, check its config, index and tensors, and (given the
source) report each quantized layer's error and check that every kept tensor is byte-identical.

A layer whose relative error against the source is 1 or more (no better than an all-zero weight, which
no INT4 rule gives) is a problem: its codes, scales or zero points do not belong to that weight. A
checkpoint rotated before quantizing (``hlwq_rotation`` in its config) holds other values than its source
by design, so ``against`` then only checks that the source has the same tensors."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hlwq_kernels.checkpoint.io import (
    INDEX_NAME,
    CheckpointError,
    SourceTensor,
    index_problems,
    read_bytes,
    read_config,
    read_source,
    read_tensor,
    resolve_source,
    scan_source,
    weight_files,
)
from hlwq_kernels.checkpoint.report import LayerReport
from hlwq_kernels.formats import compressed_tensors as ct
from hlwq_kernels.metrics import relative_error
from hlwq_kernels.models.rotation import CONFIG_KEY as ROTATION_KEY
from hlwq_kernels.models.selection import fused_group


@dataclass
class VerifyReport:
    """Outcome of verify_checkpoint: ``problems`` is empty when the checkpoint is valid."""

    dst: str
    against: str | None
    quantized: int = 0
    kept: int = 0
    problems: list[str] = field(default_factory=list)
    layers: list[LayerReport] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self, max_rows: int = 40) -> str:
        """A Markdown summary (worst layers first)."""
        lines = [f"verify {self.dst}" + (f" against {self.against}" if self.against else "")]
        if self.layers:
            lines += ["", "| layer | shape | rel. error | SQNR dB |", "|---|---|---|---|"]
            for l in sorted(self.layers, key=lambda l: l.sqnr_db)[:max_rows]:
                lines.append(f"| {l.name} | {l.shape[0]}x{l.shape[1]} | {l.rel_error:.4f} | {l.sqnr_db:.2f} |")
        lines.append("")
        lines.append(f"{self.quantized} quantized layers, {self.kept} other tensors")
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"PROBLEM: {p}" for p in self.problems] or ["OK"]
        return "\n".join(lines)


def verify_checkpoint(dst: str | os.PathLike, against: str | os.PathLike | None = None) -> VerifyReport:
    """Check a converted checkpoint; with ``against`` (source dir or repo id) also measure each
    quantized layer's error and compare every kept tensor byte for byte."""
    path = Path(dst).expanduser()
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory not found: {path}")
    report = VerifyReport(dst=str(path), against=None if against is None else str(against))
    problems = report.problems
    config = read_config(path)
    group_size, ignore, config_problems, symmetric = ct.check_config(config)
    problems += config_problems
    if not (path / INDEX_NAME).is_file():
        problems.append(f"no {INDEX_NAME}")
    try:
        tensors = scan_source(weight_files(path))
    except CheckpointError as e:  # a damaged shard or index of the checkpoint: a problem found, not a usage error
        problems.append(str(e))
        return report
    problems += index_problems(path, tensors, strict=True)
    modules = sorted(n[: -len(".weight_packed")] for n in tensors if n.endswith(".weight_packed"))
    linear = {n[: -len(".weight")] for n, t in tensors.items() if n.endswith(".weight") and len(t.shape) == 2}
    broken: set[str] = set()  # modules with a problem of their own: no error is measured for them
    for m in modules:
        parts = [tensors.get(name) for name in ct.tensor_names(m, symmetric)]
        if None in parts:
            problems.append(f"{m}: missing " + ", ".join(n.rsplit(".", 1)[-1] for n, t in
                                                         zip(ct.tensor_names(m, symmetric), parts) if t is None))
            broken.add(m)
            continue
        before = len(problems)
        packed, scale, *zero, shape = parts
        if shape.dtype != "I64" or shape.shape != (2,):
            problems.append(f"{m}.weight_shape is {shape.dtype} {list(shape.shape)}, expected I64 [2]")
            broken.add(m)
            continue
        n, k = (int(v) for v in read_tensor(shape).tolist())
        if packed.dtype != "I32" or packed.shape != (n, k // 8):
            problems.append(f"{m}.weight_packed is {packed.dtype} {list(packed.shape)}, expected I32 [{n}, {k // 8}]")
        if group_size <= 0 or k % group_size or scale.shape != (n, k // group_size) or scale.dtype not in ("BF16", "F16", "F32"):
            problems.append(f"{m}.weight_scale is {scale.dtype} {list(scale.shape)} for shape [{n}, {k}], group {group_size}")
        else:
            s = read_tensor(scale)
            if not bool((torch.isfinite(s) & (s > 0)).all()):
                problems.append(f"{m}.weight_scale has non-finite or non-positive values")
        if zero and (group_size <= 0 or zero[0].dtype != "I32" or zero[0].shape != (-(-n // 8), k // group_size)):
            problems.append(f"{m}.weight_zero_point is {zero[0].dtype} {list(zero[0].shape)}, expected I32 "
                            f"[{-(-n // 8)}, {k // max(group_size, 1)}]")
        if symmetric and f"{m}.weight_zero_point" in tensors:
            problems.append(f"{m}.weight_zero_point is present but the config says symmetric")
        if ct.is_ignored(m, ignore):
            problems.append(f"{m} is quantized but matches the ignore list")
        if len(problems) > before:
            broken.add(m)
        group = fused_group(m, set(modules) | linear)
        if any(g not in modules for g in group):
            problems.append(f"fused layer {group} is only partly quantized")
    for m in sorted(linear):
        if not ct.is_ignored(m, ignore):
            problems.append(f"{m}.weight is kept unquantized but not listed in ignore")
    if "lm_head" not in modules and "lm_head" not in linear and not ct.is_ignored("lm_head", ignore):
        problems.append("lm_head is not quantized but not listed in ignore (a tied head would load as an INT4 layer)")
    report.quantized = len(modules)
    report.kept = sum(1 for n in tensors if not n.rsplit(".", 1)[-1].startswith("weight_"))
    if against is not None:
        _compare_source(resolve_source(against), tensors, modules, broken, group_size, symmetric, report,
                        rotated=ROTATION_KEY in config)
    return report


def _compare_source(src: Path, tensors: dict[str, SourceTensor], modules: list[str], broken: set[str],
                    group_size: int, symmetric: bool, report: VerifyReport, rotated: bool) -> None:
    if "quantization_config" in read_config(src):
        raise CheckpointError(f"--against {src}: it has a quantization_config; give the unquantized source")
    source = read_source(src)
    quantized = {f"{m}.weight" for m in modules}
    if rotated:
        report.notes.append(f"rotated before quantizing ({ROTATION_KEY}): values not compared with the source")
        missing = sorted(set(source) - set(tensors) - quantized)
        report.problems += [f"source tensor {n!r} is missing from the checkpoint" for n in missing]
        return
    for name, t in source.items():
        if name in quantized:
            m = name[: -len(".weight")]
            if m in broken:
                continue
            shape = tuple(read_tensor(tensors[f"{m}.weight_shape"]).tolist())
            if shape != t.shape:
                report.problems.append(f"{m}: weight_shape {list(shape)} differs from the source's {list(t.shape)}")
                continue
            q = ct.decompress(m, lambda name: read_tensor(tensors[name]), group_size, symmetric)
            rel, sqnr = relative_error(read_tensor(t), ct.dequantize(q), torch.float64)
            out_bytes = sum(tensors[name].nbytes for name in ct.tensor_names(m, symmetric))
            report.layers.append(LayerReport(m, list(t.shape), t.dtype, rel, sqnr, t.nbytes, out_bytes))
            if not rel < 1:
                report.problems.append(f"{m}: relative error {rel:.3g} against the source (an all-zero weight has 1): "
                                       "its codes, scales or zero points do not belong to this weight")
        elif name not in tensors:
            report.problems.append(f"source tensor {name!r} is missing from the checkpoint")
        elif tensors[name].dtype != t.dtype or tensors[name].shape != t.shape or read_bytes(tensors[name]) != read_bytes(t):
            report.problems.append(f"kept tensor {name!r} differs from the source")
    extra = set(tensors) - set(source) - {name for m in modules for name in ct.tensor_names(m, symmetric)}
    report.problems += [f"tensor {n!r} is not in the source" for n in sorted(extra)]
