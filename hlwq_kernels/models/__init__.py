"""Architecture knowledge: which tensors are quantized or kept and why, fused groups, known model types."""
