"""Checkpoint formats written by the converter (one module per format)."""
