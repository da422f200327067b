"""The launch path shared by every kernel: on CUDA a compiled kernel is reused only for arguments
that Triton would have specialized the same way (alignment, integers equal to 1 or divisible by
16, dtypes); in the interpreter on CPU every call runs the kernel."""

from __future__ import annotations

import pytest
import torch

from hlwq_kernels.ops._triton import HAVE_TRITON, launch, tl, triton
from tests.helpers import kernel_devices, random_weight

pytestmark = pytest.mark.skipif(not HAVE_TRITON, reason="needs Triton")

if HAVE_TRITON:

    @triton.jit
    def _scaled_copy_kernel(x_ptr, out_ptr, n, stride, factor, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = i < n
        y = tl.load(x_ptr + i * stride, mask=m).to(tl.float32) * factor
        tl.store(out_ptr + i, y.to(out_ptr.dtype.element_ty), mask=m)


def _run(x: torch.Tensor, n: int, stride: int, factor: float, block: int) -> torch.Tensor:
    out = torch.full((n,), float("nan"), dtype=x.dtype, device=x.device)  # poisoned
    launch(_scaled_copy_kernel, (triton.cdiv(n, block),), x.device, x, out, n, stride, factor, BLOCK=block,
           num_warps=1)
    return out


@pytest.mark.parametrize("device", kernel_devices())
def test_reused_kernels_match_torch_for_every_specialization(device: str) -> None:
    """Calls alternate between aligned and misaligned pointers, ``n`` and ``stride`` of 1, multiples
    of 16 and neither, two dtypes and two block sizes: each matches torch, also when a compiled
    kernel is reused."""
    base = {dt: random_weight((4096,), dt, seed=7, device=device) for dt in (torch.float32, torch.bfloat16)}
    cases = [(0, 64, 1, 16), (1, 64, 1, 16), (0, 1, 1, 16), (3, 33, 2, 16), (0, 48, 16, 32), (5, 48, 3, 32),
             (0, 64, 1, 16), (1, 63, 1, 16)] * 2
    for dt, x in base.items():
        for offset, n, stride, block in cases:
            view = x[offset:]
            got = _run(view, n, stride, 0.5, block)
            torch.testing.assert_close(got, view[: n * stride : stride] * 0.5, rtol=0, atol=0)
