"""Launching Triton kernels on CUDA tensors (compiled) or CPU tensors (Triton's interpreter)."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch

try:
    import triton
    import triton.language as tl  # noqa: F401  (re-exported for kernel modules)
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - triton is an optional extra
    triton = tl = None
    HAVE_TRITON = False

BACKENDS = ("auto", "triton", "torch")


def require_triton() -> None:
    """Raise a clear error when the triton extra is not installed."""
    if not HAVE_TRITON:
        raise RuntimeError("backend='triton' needs Triton: pip install 'hlwq-kernels[triton]'")


def use_triton(backend: str, x: torch.Tensor) -> bool:
    """Resolve a public ``backend`` argument for input ``x``.

    "auto": the Triton kernel for CUDA tensors when Triton is installed, else the torch path;
    "triton": the kernel (compiled on CUDA, interpreted on CPU), a clear error without Triton;
    "torch": the torch path.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "triton":
        require_triton()
        return True
    return backend == "auto" and x.is_cuda and HAVE_TRITON


def _call_interpreted(self: Any, *args: Any, **kwargs: Any) -> Any:
    return InterpretedFunction(self.fn)(*args, **kwargs)


@contextlib.contextmanager
def _interpret_mode() -> Iterator[None]:
    """Interpreter on, and @triton.jit helpers called from a kernel run interpreted too."""
    knobs = triton.knobs.runtime
    old_flag, old_call = knobs.interpret, JITFunction.__call__
    knobs.interpret = True
    JITFunction.__call__ = _call_interpreted
    try:
        yield
    finally:
        knobs.interpret = old_flag
        JITFunction.__call__ = old_call


def launch(kernel: Any, grid: Callable | tuple, device: torch.device, *args: Any, **kwargs: Any) -> None:
    """Run ``kernel[grid](*args, **kwargs)``: compiled on CUDA, in the interpreter on CPU."""
    require_triton()
    if device.type == "cuda":
        kernel[grid](*args, **kwargs)
        return
    fn = kernel if isinstance(kernel, InterpretedFunction) else InterpretedFunction(kernel.fn)
    with _interpret_mode():
        fn[grid](*args, **kwargs)
