"""Fast Walsh–Hadamard transform: public API, input checks and the torch path.

``fwht(x)`` computes ``x @ H.T / sqrt(n)`` along ``dim`` with ``H = hadamard_matrix(n)`` (docs/design.md §3).
CUDA tensors use the Triton kernel (``hlwq_kernels.ops.fwht_triton``); CPU tensors use the torch path
below; ``backend="triton"`` on CPU tensors runs the kernel in Triton's interpreter.
"""

from __future__ import annotations

import math
import weakref

import torch

from hlwq_kernels.ops._checks import as_int, check_tensor
from hlwq_kernels.ops._triton import HAVE_TRITON, OutOfResources, PreparedCalls, use_triton
from hlwq_kernels.ops.fwht_plan import kernel_plan
from hlwq_kernels.ops.hadamard import hadamard_factors, hadamard_tensor, pow2_split

if HAVE_TRITON:
    from hlwq_kernels.ops.fwht_triton import fwht_rows_triton, prepared_launch, sign_bit_mask

__all__ = ["fwht"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_TORCH_MAX_BITS = 7  # Sylvester factors of at most 128 in the torch path


def _apply_mode(y: torch.Tensor, h: torch.Tensor, axis: int) -> torch.Tensor:
    """Multiply mode ``axis`` of y by h: y'[.., i, ..] = sum_j h[i, j] y[.., j, ..]."""
    y = y.movedim(axis, -1)
    y = y @ h.T
    return y.movedim(-1, axis)


def _fwht_torch(x2: torch.Tensor, b: int, inverse: bool) -> torch.Tensor:
    """Unnormalized transform of each length-b block of the rows of x2 (compute dtype)."""
    k, p = hadamard_factors(b)
    rows = x2.shape[0]
    factors = ([k] if k > 1 else []) + pow2_split(p.bit_length() - 1, _TORCH_MAX_BITS)
    y = x2.reshape(rows * (x2.shape[1] // b), *factors)
    for axis, f in enumerate(factors, start=1):
        if f == 1:
            continue
        # Sylvester factors are symmetric; only H_K (the first mode) differs between H and H.T.
        y = _apply_mode(y, hadamard_tensor(f, transpose=inverse, dtype=y.dtype, device=y.device), axis)
    return y.reshape(x2.shape)


def _check_inputs(
    x: torch.Tensor, dim: int, block_size: int | None, signs: torch.Tensor | None
) -> tuple[int, int]:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"fwht expects a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"fwht supports float16, bfloat16, float32 and float64 tensors, got {x.dtype}")
    if x.ndim == 0:
        raise ValueError("fwht needs at least one dimension")
    if not -x.ndim <= as_int(dim, "dim") < x.ndim:
        raise IndexError(f"dim={dim} is out of range for a tensor of {x.ndim} dimension(s)")
    n = x.shape[dim]
    b = n if block_size is None else as_int(block_size, "block_size")
    if b < 1 or n % b:
        raise ValueError(f"block_size={block_size} must be positive and divide the size n={n} of dim {dim}")
    hadamard_factors(b)  # raises ValueError naming n and the nearest supported sizes
    if signs is not None and (check_tensor(signs, "signs").ndim != 1 or signs.shape[0] not in (n, b)):
        raise ValueError(
            f"signs must be a 1-D ±1 vector of length n={n}" + (f" or block_size={b}" if b != n else "")
            + f", got shape {tuple(signs.shape)}"
        )
    return n, b


_SIGN_CACHE: dict[int, tuple] = {}
_SIGN_CACHE_SIZE = 32


def _signs_on(signs: torch.Tensor, device: torch.device, elem_size: int = 0) -> torch.Tensor:
    """``signs`` on ``device``, checked to be ±1: as fp32 (``elem_size`` 0, the torch path) or as
    the kernels' sign-bit mask for elements of ``elem_size`` bytes. The check (a device sync for
    GPU tensors) and the conversion run once per tensor, version and form; later calls reuse the
    cached device vector."""
    try:
        version = signs._version
    except RuntimeError:  # inference tensors have no version counter: check every call
        version = None
    key = (device, elem_size)
    hit = _SIGN_CACHE.get(id(signs))
    if version is not None and hit is not None and hit[0]() is signs and hit[1] == version and key in hit[2]:
        return hit[2][key]
    if not bool(((signs == 1) | (signs == -1)).all()):
        raise ValueError("signs must contain only +1 and -1")
    row = signs.to(device=device, dtype=torch.float32).contiguous()
    if elem_size:
        row = sign_bit_mask(row, elem_size)
    if version is not None:
        if hit is None or hit[0]() is not signs or hit[1] != version:
            if len(_SIGN_CACHE) >= _SIGN_CACHE_SIZE:
                _SIGN_CACHE.pop(next(iter(_SIGN_CACHE)))
            hit = (weakref.ref(signs), version, {})
            _SIGN_CACHE[id(signs)] = hit
        hit[2][key] = row
    return row


def _fwht_rows_torch(x2: torch.Tensor, b: int, inverse: bool, scale: float, sign_row: torch.Tensor | None) -> torch.Tensor:
    """The torch path: transform (times ``scale``) of each length-b block of the rows of x2, with the
    ±1 ``sign_row`` (float32, length b or n) before the forward / after the inverse transform."""
    compute = torch.float64 if x2.dtype == torch.float64 else torch.float32
    y2 = x2.to(compute)
    if sign_row is not None:
        sign_row = sign_row.to(compute).repeat(x2.shape[1] // sign_row.shape[0])
    if sign_row is not None and not inverse:
        y2 = y2 * sign_row
    y2 = _fwht_torch(y2, b, inverse) * scale
    if sign_row is not None and inverse:
        y2 = y2 * sign_row
    return y2.to(x2.dtype)


# (b, dtype, with signs, device) whose kernel launches, the table's and the plain one it is retried with,
# need more shared memory or registers than that GPU has (the launch tables are tuned on an H200, 227 KiB
# a block; an A100 has 163, an L4 99): "auto" runs the torch path for them.
_OVER_CAPACITY: set[tuple] = set()

# Calls along the last dim of a 2-D or contiguous CUDA tensor whose kernel launch was kept, by everything that
# decides it (x's shape, strides, dtype, device and 16-byte alignment, the options, the signs' shape): a repeated
# call skips the checks and the plan and goes straight to the launch (the signs are still checked, from their
# cache).
_PREPARED = PreparedCalls()


def _call_key(x: torch.Tensor, dim: int, normalized: bool, inverse: bool, block_size: int | None,
              signs: torch.Tensor | None, backend: str) -> tuple | None:
    """The key of a call in ``_PREPARED`` (None for an x that is not a plain tensor or signs that are not a tensor; a
    CPU tensor's key is never there)."""
    if type(x) is not torch.Tensor or not (signs is None or isinstance(signs, torch.Tensor)):
        return None
    return (x.shape, x.stride(), x.dtype, x.device, x.data_ptr() & 15, dim, normalized, inverse, block_size,
            None if signs is None else signs.shape, backend)


def _rows_view(x: torch.Tensor, b: int) -> torch.Tensor:
    """x as rows of length b for a call that ``_PREPARED`` can keep (2-D with b its row length, or contiguous)."""
    return x if x.ndim == 2 and x.shape[1] == b else x.view(-1, b)


def _run_prepared(launch: tuple, x: torch.Tensor, b: int, signs: torch.Tensor | None) -> torch.Tensor:
    """A call kept in ``_PREPARED``: its launch on x viewed as rows of b, into a new output."""
    prepared, tail = launch
    x2 = _rows_view(x, b)
    out = torch.empty_like(x2, memory_format=torch.contiguous_format)
    # the sign bits are a fresh contiguous allocation (16-byte aligned), as when the launch was made
    prepared(x2, out, out if signs is None else _signs_on(signs, x.device, x.element_size()), *tail)
    return out if x2 is x else out.view(x.shape)


def _keep_launch(key: tuple | None, x: torch.Tensor, dim: int, b: int, inverse: bool, scale: float,
                 sign_bits: torch.Tensor | None) -> None:
    """Keep the launch that the Triton path just made for this call in ``_PREPARED``, where it can be."""
    if key is None or dim not in (-1, x.ndim - 1) or not (x.ndim == 2 and x.shape[1] == b or x.is_contiguous()):
        return
    launch = prepared_launch(_rows_view(x, b), inverse, scale, sign_bits)
    if launch is not None:
        _PREPARED.add(key, *launch)


def fwht(
    x: torch.Tensor,
    dim: int = -1,
    normalized: bool = True,
    inverse: bool = False,
    block_size: int | None = None,
    signs: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Walsh–Hadamard transform of ``x`` along ``dim``: ``x @ H.T / sqrt(n)``.

    Args:
        x: float16/bfloat16/float32 tensor (float64 on CPU), any shape and strides.
        dim: the dimension to transform; its size n must be K*2**m with a buildable Hadamard order K.
        normalized: divide by sqrt(n) (orthonormal transform). Without it the forward map is x @ H.T.
        inverse: apply the inverse map (x @ H / sqrt(n), or x @ H / n when not normalized).
        block_size: transform each block of this many consecutive entries separately (I ⊗ H_b).
        signs: ±1 vector of length n (or block_size), multiplied in before the forward transform and
            after the inverse one (randomized Hadamard; see ``random_signs``).
        backend: "auto" (Triton on CUDA, torch on CPU), "triton" (interpreter on CPU) or "torch".

    Returns a tensor of the same shape and dtype; accumulation is fp32 (fp64 for fp64 input) with
    a single rounding at the end.
    """
    key = _call_key(x, dim, normalized, inverse, block_size, signs, backend)
    launch = _PREPARED.entry(key)
    if launch is not None:
        return _run_prepared(launch, x, x.shape[-1] if block_size is None else int(block_size), signs)
    n, b = _check_inputs(x, dim, block_size, signs)
    # use_triton is True only with Triton installed; "auto" falls back to torch for a length the
    # kernels cannot hold (a power-of-two factor above 2**16)
    on_triton = use_triton(backend, x) and (backend == "triton" or kernel_plan(b, x.element_size()) is not None)
    if x.dtype == torch.float64 and on_triton:
        if x.is_cuda:
            raise TypeError("float64 is supported on CPU only (torch backend)")
        on_triton = False
    if _OVER_CAPACITY and on_triton and backend == "auto" and (b, x.dtype, signs is not None, x.device) in _OVER_CAPACITY:
        on_triton = False
    if normalized:
        scale = 1.0 / math.sqrt(b)
    else:
        scale = 1.0 / b if inverse else 1.0
    last = dim in (-1, x.ndim - 1)
    moved = x if last else x.movedim(dim, -1)
    x2 = moved if moved.ndim == 2 else moved.reshape(-1, n)
    y2 = None
    if on_triton:
        sign_bits = None if signs is None else _signs_on(signs, x.device, x.element_size())
        try:
            y2 = fwht_rows_triton(x2, b, inverse, scale, sign_bits)
            _keep_launch(key, x, dim, b, inverse, scale, sign_bits)
        except OutOfResources:
            if backend == "triton":
                raise
            _OVER_CAPACITY.add((b, x.dtype, signs is not None, x.device))
    if y2 is None:
        y2 = _fwht_rows_torch(x2, b, inverse, scale, None if signs is None else _signs_on(signs, x.device))
    y = y2 if moved.ndim == 2 else y2.reshape(moved.shape)
    return y if last else y.movedim(-1, dim)
