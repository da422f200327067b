"""What a conversion did: per-layer errors, kept tensors, sizes and the time split."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hlwq_kernels.checkpoint.io import write_json
from hlwq_kernels.models.selection import WHY_KEPT

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
    scheme: str
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
    notes: list[str] = field(default_factory=list)  # e.g. what the rotation did

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
            f"{self.method.upper()} INT4 (group {self.group_size}, "
            + ("asymmetric: scale and zero point, " if self.scheme == "asym" else "symmetric, ")
            + f"scale {self.scale}"
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
            f"quantized {len(self.layers)} layers (mean SQNR {self.mean_sqnr_db:.2f} dB); {self.num_tensors} tensors, "
            f"{self.input_bytes / 1e6:.1f} MB -> {self.output_bytes / 1e6:.1f} MB in {self.shards} shard(s)"
            + (f" ({self.resumed_tensors} tensors resumed)" if self.resumed_tensors else ""),
            "rel. error = ||W - Q||_F / ||W||_F, W the source weight and Q its INT4 dequantization; its square is "
            "the relative MSE (e.g. 0.11 -> 0.0121); SQNR dB = -20 log10(rel. error)",
            *self._kept_lines(),
            f"time {t.get('total_s', 0):.2f} s (read {t.get('read_s', 0):.2f}, kernels {t.get('kernel_s', 0):.2f}, "
            f"transfer {t.get('transfer_s', 0):.2f}, write {t.get('write_s', 0):.2f})",
        ]
        lines += self.notes
        if not self.known_architecture:
            lines.append(
                f"model_type {self.model_type!r} is not one of the tested architectures: quantized the 2-D "
                "Linear weights listed above by the generic rules; check them before serving."
            )
        return "\n".join(lines)

    def _kept_lines(self, max_names: int = 4) -> list[str]:
        """The kept 2-D weights grouped by reason, each reason explained."""
        groups: dict[str, list[str]] = {}
        for module, reason in self.kept.items():
            key = "fused with a kept layer (vLLM runs fused layers with one format)" if reason.startswith("fused with") else reason
            groups.setdefault(key, []).append(module)
        if not groups:
            return ["kept unquantized: no 2-D weight"]
        lines = [f"kept unquantized in the source dtype ({len(self.kept)} 2-D weights, all listed in the config's ignore):"]
        for reason, modules in groups.items():
            names = ", ".join(modules[:max_names]) + (f" and {len(modules) - max_names} more" if len(modules) > max_names else "")
            why = WHY_KEPT.get(reason)
            lines.append(f"  - {reason}: {names}" + (f" ({why})" if why else ""))
        if "lm_head" not in self.kept:
            lines.append("  - lm_head: no tensor of its own (tied to the embedding, or no output head); listed in ignore "
                         "so that loaders never make it an INT4 layer")
        return lines
