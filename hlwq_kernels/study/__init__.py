"""The quality study (``python -m hlwq_kernels.eval``): methods, data, runs and plots."""
