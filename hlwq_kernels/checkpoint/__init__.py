"""Checkpoint conversion: io (safetensors in and out, shard planning), pipeline, report, verify, cli."""

from hlwq_kernels.checkpoint.io import CheckpointError
from hlwq_kernels.checkpoint.pipeline import quantize_checkpoint
from hlwq_kernels.checkpoint.report import REPORT_NAME, ConversionReport, LayerReport

__all__ = ["CheckpointError", "ConversionReport", "LayerReport", "REPORT_NAME", "quantize_checkpoint"]
