"""quantize_checkpoint: a BF16/FP16/FP32 safetensors checkpoint in, a vLLM-ready INT4
compressed-tensors ``pack-quantized`` checkpoint out.

The conversion is planned first (``plan``: every output tensor's shard and offset), then run by
overlapping stages (``runner``: readers, quantization on CPU threads or CUDA streams, writers,
a committer), into a hidden sibling directory ``.<dst>.partial`` that is renamed to ``dst`` only
when everything is written, so an interrupted run never leaves something that looks finished.
Progress is durable per tensor (``progress``): a rerun with the same source and options does only
the missing tensors, and the result is byte-identical to an uninterrupted run. Under torchrun (or
``--devices``) several processes share the work (``distributed``).

The quantizer is a per-tensor function ``w [N, K] -> Int4Weight`` (``_quantizer``); it must work
row by row (each output row depends only on the same input row), because large weights are
quantized in blocks of rows.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

import torch

from hlwq_kernels.checkpoint import progress as journal_files
from hlwq_kernels.checkpoint import runner
from hlwq_kernels.checkpoint.distributed import Group, assign, join, local_rank
from hlwq_kernels.checkpoint.io import (
    CONFIG_NAME,
    INDEX_NAME,
    SINGLE_FILE_NAME,
    CheckpointError,
    auxiliary_files,
    copy_files,
    parse_size,
    read_config,
    read_source,
    resolve_source,
    unread_weight_files,
    weight_files,
    write_json,
)
from hlwq_kernels.checkpoint.plan import Plan, Unit, make_plan
from hlwq_kernels.checkpoint.destination import check_destination, check_free_space, publish
from hlwq_kernels.checkpoint.report import REPORT_NAME, ConversionReport, LayerReport
from hlwq_kernels.checkpoint.rotated_source import is_rotated_source, prepare_rotated_source, rotated_dir
from hlwq_kernels.formats import compressed_tensors as ct
from hlwq_kernels.models.architectures import KNOWN_MODEL_TYPES
from hlwq_kernels.models.selection import SelectionError, TensorSpec, check_ignore, matches_ignore, select_layers
from hlwq_kernels.ops._checks import as_int
from hlwq_kernels.ops.hlwq import HLWQConfig
from hlwq_kernels.ops.int4 import SCALE_RULES, Int4Weight, check_group_size, quantize_int4
from hlwq_kernels.ops.int4_asym import METHODS as ASYM_METHODS, Int4AsymWeight, quantize_int4_asym

# The defaults of every entry point (quantize_checkpoint, the command line, --demo): change them here.
# Asymmetric INT4 with compressed-tensors' min-max rule lowered the perplexity increase over the
# BF16 source to 0.70x (SmolLM2-135M) and 0.77x (Gemma-3-270M) of llm-compressor RTN W4A16's,
# where symmetric absmax stayed at 1.03-1.04x (docs/quality-decoders.md).
DEFAULT_SCHEME = "asym"
# The scale rule of each scheme when none is given: compressed-tensors' own rule of that scheme.
DEFAULT_SCALES = {"asym": "minmax", "sym": "absmax"}
# Every scale rule of each scheme: those its op implements.
SCALES = {"asym": ASYM_METHODS, "sym": SCALE_RULES}
# MoE experts stored one module per expert, which transformers fuses while loading: its loader cannot
# take their zero points (5.24 dropped them and left such experts randomly initialised; 5.25 refuses the
# checkpoint), so a model with quantized experts gets the symmetric scheme unless a scheme or rule is asked for.
_FUSED_EXPERT = re.compile(r"(^|\.)experts\.\d+\.")
KEPT_EXPERTS_NOTE = ("MoE experts kept unquantized beside quantized ones: transformers 5.25 does not load such a "
                     "checkpoint (its loader fuses each layer's experts and expects them all quantized)")
MOE_NOTE = ("scheme sym: the default for models with quantized MoE experts (transformers 5.24 and 5.25 cannot "
            "load their zero points); --scheme asym for vLLM, which serves them")


def resolve_scheme(scheme: str | None, scale: str | None, default: str = DEFAULT_SCHEME) -> tuple[str, str]:
    """``(scheme, scale)`` with the defaults filled in: no scheme means the one whose rules include
    ``scale`` (the rule names are distinct), or ``default``; no scale, the scheme's default rule.
    A scheme or a rule that does not exist, or a rule of the other scheme, is a ValueError."""
    if scheme is None:
        scheme = next((name for name, rules in SCALES.items() if scale in rules), default)
    if scheme not in SCALES:
        raise ValueError(f"scheme must be one of {', '.join(SCALES)}, got {scheme!r}")
    scale = scale or DEFAULT_SCALES[scheme]
    if scale not in SCALES[scheme]:
        raise ValueError(f"scale must be one of {', '.join(SCALES[scheme])} with scheme {scheme!r}, got {scale!r}")
    return scheme, scale


def _quantizer(method: str, bits: int, group_size: int, block_size: int, scheme: str,
               scale: str) -> Callable[[torch.Tensor], Int4Weight | Int4AsymWeight]:
    """The per-tensor quantizer of ``method`` and ``scheme`` (row by row: any block of rows may be
    passed). ``hlwq`` with ``asym``: the Hadamard-Lloyd pre-pass ``W'``, then asymmetric INT4 of it."""
    if method == "rtn":
        if scheme == "asym":
            return lambda w: quantize_int4_asym(w, group_size=group_size, method=scale)
        return lambda w: quantize_int4(w, group_size=group_size, scale=scale)
    from hlwq_kernels.ops.hlwq import hlwq_dequantize, hlwq_int4, hlwq_quantize

    if scheme == "asym":
        return lambda w: quantize_int4_asym(hlwq_dequantize(hlwq_quantize(w, bits=bits, block_size=block_size), w.dtype),
                                            group_size=group_size, method=scale)
    return lambda w: hlwq_int4(w, bits=bits, block_size=block_size, group_size=group_size, scale=scale)


def check_device(device: str) -> torch.device:
    """``device`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``) parsed, or ValueError naming it."""
    try:
        dev = torch.device("cpu" if device == "auto" else device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}") from e
    if dev.type not in ("cpu", "cuda") or (dev.type == "cpu" and dev.index not in (None, 0)):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return dev


def _resolve_device(device: str) -> torch.device:
    """``auto``: the GPU when there is one; a bare ``cuda`` is this process's local GPU (torchrun)."""
    check_device(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("device 'cuda' requested but no CUDA GPU is available")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank())
    return dev


def quantize_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    method: str = "rtn",
    bits: int = 5,
    group_size: int = 128,
    block_size: int = 128,
    scheme: str | None = None,
    scale: str | None = None,
    device: str = "auto",
    ignore: Iterable[str] | str = (),
    max_shard_size: int | str = "5GB",
    overwrite: bool = False,
    progress: bool = True,
    rotate: bool = False,
    rotate_seed: int = 0,
    rotate_block_size: int | None = 128,
) -> ConversionReport:
    """Convert the safetensors checkpoint ``src`` (directory or Hub repo id) into an INT4
    compressed-tensors checkpoint at ``dst`` and return the report (also saved as
    ``dst/hlwq_report.json``).

    The defaults (``DEFAULT_SCHEME``, ``DEFAULT_SCALES``: rtn, asym, minmax) are compressed-tensors'
    own asymmetric rule: on two real decoders it raised perplexity over the BF16 source 0.68-0.80x
    as much as llm-compressor's RTN W4A16, where the symmetric absmax rule stayed at 1.02-1.03x.
    method: "hlwq" (Lloyd-Max pre-pass with ``bits`` and ``block_size``, then INT4 of its output in
    ``scheme``) or "rtn" (plain INT4 round-to-nearest). scheme: "asym" (a scale and an integer zero
    point per group, compressed-tensors ``symmetric: false``) or "sym" (one scale per group); None:
    the scheme of ``scale`` when one is given (``scale="mse"`` means sym), else ``DEFAULT_SCHEME``, or
    "sym" for a model with quantized MoE experts (``MOE_NOTE``; the report's notes say so).
    scale: the group rule of the scheme, None for its default; for "asym" "minmax"
    (compressed-tensors' rule), "clip" or "hqq", for "sym" "absmax" (compressed-tensors' rule) or
    "mse". ignore: module names, dotted suffixes or ``re:`` regexes to keep unquantized (one string or several).
    rotate: fold Hadamard rotations into the weights first (``rotated_source``; seed
    ``rotate_seed``, R1 block ``rotate_block_size``, None = the full hidden size); the output's
    config.json keeps the ``hlwq_rotation`` record.
    """
    if method not in ("hlwq", "rtn"):
        raise ValueError(f"method must be 'hlwq' or 'rtn', got {method!r}")
    resolve_scheme(scheme, scale)  # bad options fail before any work; the model decides when neither is given
    check_group_size(group_size)
    if method == "hlwq":  # bits in 1..8, block_size a power of two in [16, 256]
        HLWQConfig(bits=bits, block_size=block_size, group_size=group_size)
    ignore = check_ignore(ignore)
    rotate_seed = as_int(rotate_seed, "rotate_seed")
    if not -(2**63) <= rotate_seed < 2**64 - 1:  # R2 takes rotate_seed + 1
        raise ValueError(f"rotate_seed must be in [-2**63, 2**64 - 1), got {rotate_seed}")
    if rotate_block_size is not None and as_int(rotate_block_size, "rotate_block_size") < 1:
        raise ValueError(f"rotate_block_size must be positive, or None for one block of the full hidden size, "
                         f"got {rotate_block_size}")
    max_bytes = parse_size(max_shard_size)
    t_start = time.perf_counter()
    dev = _resolve_device(device)
    group = join(dev)
    try:
        report = _convert(group, src, dst, dev, method=method, bits=bits, group_size=group_size, block_size=block_size,
                          scheme=scheme, scale=scale, ignore=ignore, max_bytes=max_bytes, overwrite=overwrite,
                          show_progress=progress, t_start=t_start,
                          rotation=(rotate_seed, rotate_block_size) if rotate else None)
        return group.broadcast(report)
    finally:
        group.close()


def _convert(group: Group, src, dst, dev: torch.device, *, method: str, bits: int, group_size: int, block_size: int,
             scheme: str | None, scale: str | None, ignore: tuple[str, ...], max_bytes: int, overwrite: bool, show_progress: bool,
             t_start: float, rotation: tuple[int, int | None] | None) -> ConversionReport | None:
    """Every rank: plan, convert its share of the missing tensors; rank 0 also prepares the
    partial directory, finishes and publishes (and returns the report; the others None)."""
    src_path = resolve_source(src)
    dst_path = Path(dst).expanduser().resolve()
    config = read_config(src_path)
    if "quantization_config" in config:
        qc = config["quantization_config"]
        kind = qc.get("quant_method", "?") if isinstance(qc, dict) else repr(qc)
        raise CheckpointError(
            f"{src_path / CONFIG_NAME} already has a quantization_config ({kind}): the source must be unquantized"
        )
    check_destination(src_path, dst_path, overwrite)
    notes: tuple[str, ...] = ()
    if rotation is not None:
        src_path, notes = _rotated_source(group, src_path, dst_path, *rotation, max_bytes)
        config = read_config(src_path)
    files = weight_files(src_path)
    tensors = read_source(src_path)
    unread = unread_weight_files(src_path, files)
    if unread:
        notes += (f"not read: {', '.join(unread[:3])}{' …' if len(unread) > 3 else ''} (not named by the index, or "
                  f"beside {SINGLE_FILE_NAME}; transformers does not load them either)",)
    try:
        selection = select_layers(
            [TensorSpec(t.name, t.shape, t.dtype) for t in tensors.values()],
            config,
            group_size=group_size,
            block_size=block_size if method == "hlwq" else None,
            ignore=ignore,
        )
    except SelectionError as e:
        raise CheckpointError(str(e)) from e
    experts = scheme is None and scale is None and any(_FUSED_EXPERT.search(m) for m in selection.quantize)
    scheme, scale = resolve_scheme(scheme, scale, "sym" if experts else DEFAULT_SCHEME)
    if experts and scheme != DEFAULT_SCHEME:
        notes += (MOE_NOTE,)
    if not selection.quantize:
        notes += ("no layer was quantized: every 2-D weight is kept unquantized (the kept list says why)",)
    if any(_FUSED_EXPERT.search(m) for m in selection.kept) and any(_FUSED_EXPERT.search(m) for m in selection.quantize):
        notes += (KEPT_EXPERTS_NOTE,)
    modules = [*selection.kept, *selection.quantize]
    unmatched = [p for p in ignore if not any(matches_ignore(m, [p]) for m in modules)]
    if unmatched:
        notes += (f"ignore patterns that match no module: {', '.join(map(repr, unmatched))}",)
    symmetric = scheme == "sym"
    plan = make_plan(tensors, {f"{m}.weight" for m in selection.quantize}, group_size, max_bytes, symmetric)
    options = dict(method=method, bits=bits, group_size=group_size, block_size=block_size, scale=scale,
                   ignore=list(ignore), max_shard_size=max_bytes, device=dev.type)
    if not symmetric:  # the symmetric fingerprint stays the one of earlier versions (resumable)
        options["scheme"] = scheme
    if rotation is not None:
        options["rotation"] = list(rotation)
    fprint = journal_files.fingerprint(files, options, plan)
    work = journal_files.partial_dir(dst_path)
    if group.rank == 0:
        check_free_space(src_path, dst_path, work, plan.output_bytes)
    done = None
    if group.rank == 0:
        journal_files.prepare(work, fprint, plan)
        done = journal_files.load_done(work)
    fprint0, done = group.broadcast((fprint, done))
    if fprint0 != fprint:
        raise CheckpointError(f"rank {group.rank} sees another source, plan or options than rank 0 "
                              f"(every process must read the same {src_path} with the same options)")
    todo = [i for i, u in enumerate(plan.units) if u.source.name not in done]
    mine = [todo[j] for j in assign([plan.units[i].source.nbytes for i in todo], group.world)[group.rank]]
    backend = _backend(dev, _quantizer(method, bits, group_size, block_size, scheme, scale), group_size)
    bar = _ProgressBar(len(plan.units), len(done), show_progress and group.rank == 0)
    journal = journal_files.Journal(work)
    t_setup = time.perf_counter() - t_start
    try:
        timings = runner.run(plan, work, mine, backend, journal, bar)
    finally:
        journal.close()
        bar.close()
    group.barrier()
    if group.rank != 0:
        return None
    t_finish = time.perf_counter()
    report = ConversionReport(
        src=str(src), dst=str(dst_path), method=method, bits=bits, group_size=group_size,
        block_size=block_size, scheme=scheme, scale=scale, device=str(dev), model_type=str(config.get("model_type", "")),
        architectures=list(config.get("architectures") or []),
        known_architecture=config.get("model_type") in KNOWN_MODEL_TYPES,
        kept=selection.kept, ignore=selection.ignore, num_tensors=len(tensors),
        input_bytes=sum(t.nbytes for t in tensors.values()), shards=len(plan.shards), resumed_tensors=len(done),
    )
    report.notes = list(notes)
    report.layers = _layers(plan, journal_files.load_done(work))
    report.output_bytes = sum(s.size for s in plan.shards)
    write_json(work / INDEX_NAME, {"metadata": {"total_size": plan.output_bytes}, "weight_map": plan.weight_map()})
    config["quantization_config"] = ct.quantization_config(group_size, selection.ignore, symmetric)
    write_json(work / CONFIG_NAME, config, sort_keys=False)  # the source's key order
    copied = auxiliary_files(src_path)
    copy_files(src_path, work, copied)
    report.copied_files = [p.as_posix() for p in copied]
    journal_files.clear(work)
    now = time.perf_counter()
    report.timings = {k: round(v, 4) for k, v in sorted(timings.items())}
    report.timings |= {"setup_s": round(t_setup, 4), "finish_s": round(now - t_finish, 4),
                       "total_s": round(now - t_start, 4)}
    report.save(work / REPORT_NAME)
    publish(work, dst_path)
    _remove_leftovers(dst_path)
    return report


def _remove_leftovers(dst: Path) -> None:
    """After a finished conversion to ``dst``: delete the hidden siblings that this or an interrupted earlier run left,
    where this converter made them (the rotated source; a rotation's or a replaced output's work directory, named
    with a random suffix)."""
    rotated = rotated_dir(dst)
    if rotated.is_dir() and not rotated.is_symlink() and is_rotated_source(rotated):
        shutil.rmtree(rotated, ignore_errors=True)
    for prefix in (f".{rotated.name}.rotating-", f".{dst.name}.old-"):
        for path in dst.parent.glob(glob.escape(prefix) + "*"):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)


def _rotated_source(group: Group, src: Path, dst: Path, seed: int, block_size: int | None,
                    max_bytes: int) -> tuple[Path, tuple[str, ...]]:
    """Rank 0 rotates ``src`` (``rotated_source``); every rank gets the rotated directory and the
    notes, or rank 0's error."""
    result: tuple = (None, None, None)
    if group.rank == 0:
        try:
            result = (*prepare_rotated_source(src, dst, seed, block_size, max_bytes), None)
        except (CheckpointError, ValueError, OSError) as e:
            result = (None, None, str(e))
    path, notes, error = group.broadcast(result)
    if error is not None:
        raise CheckpointError(error)
    return Path(path), tuple(notes)


def _layers(plan: Plan, done: dict[str, dict]) -> list[LayerReport]:
    """The layer reports of the journal, sorted by name; every unit must be there."""
    missing = [u.source.name for u in plan.units if u.source.name not in done]
    if missing:
        raise CheckpointError(f"tensors missing after every process finished: {', '.join(missing[:5])}")
    return sorted((LayerReport(**done[u.source.name]["layer"]) for u in plan.units if u.quantized),
                  key=lambda l: l.name)


def _backend(dev: torch.device, quantize: Callable[[torch.Tensor], Int4Weight | Int4AsymWeight], group_size: int) -> runner.Backend:
    if dev.type == "cuda":
        from hlwq_kernels.checkpoint.gpu_backend import GpuBackend

        return GpuBackend(quantize, dev)
    from hlwq_kernels.checkpoint.cpu_backend import CpuBackend

    return CpuBackend(quantize, group_size)


class _ProgressBar:
    """tqdm counting finished tensors, updated from the writer threads."""

    def __init__(self, total: int, initial: int, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, desc="quantizing", unit="tensor", disable=not enabled,
                        dynamic_ncols=True)
        self.lock = threading.Lock()

    def __call__(self, unit: Unit) -> None:
        with self.lock:
            self.bar.set_postfix_str(unit.source.name[-40:], refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
