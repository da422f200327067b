"""Shared test helpers: devices, the one random-weight generator, dtype conversion and tolerances."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import torch

HAVE_CUDA = torch.cuda.is_available()
NP_DTYPES = {torch.bfloat16: ml_dtypes.bfloat16, torch.float16: np.float16, torch.float32: np.float32, torch.float64: np.float64}
# Relative-error tolerances against float64 for one rounding to the output dtype with fp32
# accumulation (bf16 in Triton's interpreter truncates instead of rounding, hence the looser bound).
TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 8e-3}
# (shape, group_size, part of the error message) that every group-INT4 quantizer refuses
BAD_INT4_SHAPES = [
    ((4, 100), 128, "multiple of group_size"),
    ((4, 256), 12, "multiple of 8"),
    ((4, 256, 2), 128, "2-D"),
    ((256,), 128, "2-D"),
]


def kernel_devices() -> list[str]:
    """Devices on which to run Triton kernels: the interpreter on CPU, plus CUDA if present."""
    return ["cpu", "cuda"] if HAVE_CUDA else ["cpu"]


def random_weight(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    seed: int,
    *,
    tail: str = "gauss",
    scale: float = 1.0,
    column_spread: float = 0.0,
    row_decades: float = 0.0,
    zero_half_row: bool = False,
    device: str = "cpu",
) -> torch.Tensor:
    """Random values (never constant) drawn in float64, then cast: Gaussian or Student-t(3)
    (``tail="t"``) entries times ``scale``, each last-axis column times ``exp(column_spread · N(0,1))``
    (outlier channels), each row of a 2-D tensor times ``10**U(-1 - row_decades, -1)`` (magnitudes
    spread over decades), optionally the first half of row 0 zeroed (a zero group)."""
    g = torch.Generator().manual_seed(seed)
    if tail == "gauss":
        w = torch.randn(shape, generator=g, dtype=torch.float64)
    else:  # Student-t with 3 degrees of freedom: z / sqrt(chi2_3 / 3), all from the seeded generator
        z = torch.randn(shape, generator=g, dtype=torch.float64)
        chi2 = torch.randn((3, *shape), generator=g, dtype=torch.float64).square().sum(0)
        w = z / torch.sqrt(chi2 / 3)
    w = w * scale
    if column_spread:
        w = w * torch.exp(column_spread * torch.randn(shape[-1:], generator=g, dtype=torch.float64))
    if row_decades:
        w = w * 10 ** (torch.rand(shape[0], 1, generator=g, dtype=torch.float64) * -row_decades - 1)
    if zero_half_row and shape[-1] >= 16:
        w[0, : shape[-1] // 2] = 0
    return w.to(dtype=dtype, device=device)


def to_numpy(w: torch.Tensor) -> np.ndarray:
    """The values of ``w`` as a NumPy array of the same precision (bf16 via ml_dtypes)."""
    return w.detach().cpu().double().numpy().astype(NP_DTYPES[w.dtype])


def rel_err(y: torch.Tensor | np.ndarray, ref: np.ndarray) -> float:
    """``||y - ref|| / ||ref||`` in float64."""
    y = y.detach().cpu().double().numpy() if isinstance(y, torch.Tensor) else np.asarray(y, dtype=np.float64)
    return float(np.linalg.norm(y - ref) / max(np.linalg.norm(ref), 1e-300))


def assert_close(y: torch.Tensor, ref: np.ndarray, dtype: torch.dtype | None = None, tol: float | None = None) -> None:
    """Relative error of ``y`` against the float64 ``ref`` within ``tol`` (default: TOL of ``dtype``, else ``y.dtype``)."""
    bound = tol if tol is not None else TOL[dtype or y.dtype]
    err = rel_err(y, ref)
    assert err <= bound, f"relative error {err:.3e} > {bound:.1e} (shape {tuple(y.shape)}, dtype {y.dtype})"
