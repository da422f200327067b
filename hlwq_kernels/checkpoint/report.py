"""What a conversion did: per-layer errors, kept tensors, sizes and the time split."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hlwq_kernels.checkpoint.io import write_json

REPORT_NAME = "hlwq_report.json"


@dataclass
class LayerReport:
    """Error of one quantized weight against the source weight."""

    name: str
    shape: list[int]
    dtype: str
    rel_error: float  # ||W - W_q||_F / ||W||_F
    sqnr_db: float  # 10 log10(||W||^2 / ||W - W_q||^2)
    bytes_in: int
    bytes_out: int


@dataclass
class ConversionReport:
    """What quantize_checkpoint did. ``timings`` are seconds (not deterministic): ``total_s`` is the
    wall time; the stage keys are busy times summed over the stage's threads (stages overlap)."""

    src: str
    dst: str
    method: str
    bits: int
    group_size: int
    block_size: int
    scale: str
    device: str
    model_type: str
    architectures: list[str]
    known_architecture: bool
    layers: list[LayerReport] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)
    ignore: list[str] = field(default_factory=list)
    copied_files: list[str] = field(default_factory=list)
    num_tensors: int = 0
    input_bytes: int = 0
    output_bytes: int = 0
    shards: int = 0
    resumed_tensors: int = 0  # source tensors already finished by an interrupted earlier run
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def mean_sqnr_db(self) -> float:
        """Mean SQNR over quantized layers (nan when none)."""
        return sum(l.sqnr_db for l in self.layers) / len(self.layers) if self.layers else float("nan")

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        """Write the report as JSON."""
        write_json(Path(path), self.to_dict())

    def summary(self, max_rows: int = 40) -> str:
        """A Markdown summary: per-layer error table (worst layers first when long) and totals."""
        rows = sorted(self.layers, key=lambda l: l.sqnr_db)
        shown = rows if len(rows) <= max_rows else rows[:max_rows]
        lines = [
            f"{self.method.upper()} INT4 (group {self.group_size}, scale {self.scale}"
            + (f", {self.bits}-bit Lloyd-Max, block {self.block_size}" if self.method == "hlwq" else "")
            + f") on {self.device}: {self.src} -> {self.dst}",
            "",
            "| layer | shape | rel. error | SQNR dB | MB in | MB out |",
            "|---|---|---|---|---|---|",
        ]
        for l in shown:
            lines.append(
                f"| {l.name} | {l.shape[0]}x{l.shape[1]} | {l.rel_error:.4f} | {l.sqnr_db:.2f} | "
                f"{l.bytes_in / 1e6:.2f} | {l.bytes_out / 1e6:.2f} |"
            )
        if len(rows) > len(shown):
            lines.append(f"| ... {len(rows) - len(shown)} more layers (all in {REPORT_NAME}) | | | | | |")
        t = self.timings
        lines += [
            "",
            f"quantized {len(self.layers)} layers (mean SQNR {self.mean_sqnr_db:.2f} dB), kept {len(self.kept)} "
            f"2-D weights, {self.num_tensors} tensors; {self.input_bytes / 1e6:.1f} MB -> "
            f"{self.output_bytes / 1e6:.1f} MB in {self.shards} shard(s)"
            + (f" ({self.resumed_tensors} tensors resumed)" if self.resumed_tensors else ""),
            f"time {t.get('total_s', 0):.2f} s (read {t.get('read_s', 0):.2f}, kernels {t.get('kernel_s', 0):.2f}, "
            f"transfer {t.get('transfer_s', 0):.2f}, write {t.get('write_s', 0):.2f})",
        ]
        if not self.known_architecture:
            lines.append(
                f"model_type {self.model_type!r} is not one of the tested architectures: quantized the 2-D "
                "Linear weights listed above by the generic rules; check them before serving."
            )
        return "\n".join(lines)
