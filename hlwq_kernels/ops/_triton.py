"""Launching Triton kernels on CUDA tensors (compiled) or CPU tensors (Triton's interpreter)."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator

import torch

try:
    import triton
    import triton.language as tl  # noqa: F401  (re-exported for kernel modules)
    from triton.runtime.errors import OutOfResources
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - triton is an optional extra
    triton = tl = None

    class OutOfResources(Exception):  # type: ignore[no-redef]  (never raised without Triton)
        pass
    HAVE_TRITON = False

BACKENDS = ("auto", "triton", "torch")


def cdiv(a: int, b: int) -> int:
    """``ceil(a / b)`` of integers (launch geometry on the host: ``triton.cdiv`` is a constexpr
    function whose Python call costs microseconds)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """The least power of two ``>= n`` (0 for 0), as ``triton.next_power_of_2`` but a plain function."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


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


def _specs(args: tuple) -> list:
    """What Triton specializes each launch argument on: a tensor's dtype and 16-byte alignment; an
    integer's being 1, divisible by 16 and within int32; a float's type."""
    return [(a.dtype, not a.data_ptr() & 15) if isinstance(a, torch.Tensor)
            else (a == 1, not a & 15, -0x80000000 <= a <= 0x7FFFFFFF) if isinstance(a, int) and type(a) is not bool
            else type(a) for a in args]


_COMPILED: dict[tuple, tuple] = {}
_TUPLES: dict[int, tuple[tuple, object]] = {}  # id of a constexpr tuple -> (the tuple, kept alive; its token)


def _token(value: tuple) -> object:
    """A stand-in for a constexpr tuple in cache keys, hashed by identity: hashing a launch plan's nested
    tuples costs microseconds. The tuple is kept alive, so its id names no other object; an equal tuple
    that is another object gets another token, hence a cache miss, which launches through Triton and
    is correct."""
    hit = _TUPLES.get(id(value))
    if hit is None:
        hit = _TUPLES[id(value)] = (value, object())
    return hit[1]


def _constexpr_key(kwargs: dict) -> tuple:
    """The names and values of a call's constexprs and launch options, tuples by their tokens."""
    return (*kwargs, *[_token(v) if type(v) is tuple else v for v in kwargs.values()])


def _hooks() -> tuple:
    """Triton's launch-enter and -exit hooks, or (None, None) when none is installed: the launcher then
    skips the hook calls and the launch metadata (about 3 µs a call)."""
    runtime = triton.knobs.runtime
    enter, leave = runtime.launch_enter_hook, runtime.launch_exit_hook
    if getattr(enter, "calls", True) or getattr(leave, "calls", True):
        return enter, leave
    return None, None


class PreparedLaunch:
    """A compiled CUDA kernel bound to its grid and constexprs: ``prepared(*args)`` launches it on the
    current stream with new arguments that Triton would specialize the same way (see ``_specs``),
    without building a cache key. ``launch`` returns one on CUDA; the caller keys it by everything
    that decides that specialization (dtypes, shapes, strides, 16-byte alignment of the tensors)."""

    __slots__ = ("compiled", "grid", "device_index", "consts")

    def __init__(self, compiled: Any, grid: tuple[int, int, int], device_index: int, consts: tuple) -> None:
        self.compiled, self.grid, self.device_index, self.consts = compiled, grid, device_index, consts

    def __call__(self, *args: Any) -> None:
        compiled, grid = self.compiled, self.grid
        full = args + self.consts
        stream = triton.runtime.driver.active.get_current_stream(self.device_index)
        enter, leave = _hooks()
        metadata = None if enter is None else compiled.launch_metadata(grid, stream, *full)
        compiled.run(*grid, stream, compiled.function, compiled.packed_metadata, metadata, enter, leave, *full)


class PreparedCalls:
    """The CUDA launches of one op, each kept under a key of everything that decides it (shapes, strides,
    dtypes, devices, 16-byte alignment of the tensors, the op's options) with the launch arguments that
    follow its tensors (derived from the key): a repeated call skips planning, the launch cache's key and
    Triton's argument checks. At most ``size`` launches, the oldest dropped first."""

    def __init__(self, size: int = 256) -> None:
        self._entries: dict[tuple, tuple[PreparedLaunch, tuple]] = {}
        self._size = size
        self._lock = threading.Lock()  # for add's eviction when threads launch side by side

    def run(self, key: tuple | None, *tensors: torch.Tensor) -> bool:
        """Launch the call kept under ``key`` with these leading tensor arguments; False if there is none."""
        hit = self._entries.get(key) if key is not None else None
        if hit is None:
            return False
        prepared, tail = hit
        prepared(*tensors, *tail)
        return True

    def entry(self, key: tuple) -> tuple[PreparedLaunch, tuple] | None:
        """The launch kept under ``key`` and the arguments that follow its tensors, or None."""
        return self._entries.get(key)

    def add(self, key: tuple | None, prepared: PreparedLaunch | None, tail: tuple) -> None:
        """Keep ``prepared`` (the launch just made; None: nothing to keep) and its arguments ``tail``."""
        if key is None or prepared is None:
            return
        with self._lock:
            if len(self._entries) >= self._size:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = (prepared, tail)

    def __len__(self) -> int:
        return len(self._entries)


def tensor_key(t: torch.Tensor) -> tuple:
    """What a launch specializes on for tensor ``t`` besides its values: shape, strides, dtype, device and
    16-byte alignment."""
    return t.shape, t.stride(), t.dtype, t.device, t.data_ptr() & 15


def _reserve_shared(compiled: Any, extra: int) -> None:
    """Launch ``compiled`` (not loaded yet) with ``extra`` bytes of dynamic shared memory after Triton's own, which
    the kernel addresses from the end (``%dynamic_smem_size``); Triton's part is rounded up to 128 bytes."""
    if getattr(compiled, "extra_shared", 0) == extra:  # the same kernel from Triton's cache, reserved already
        return
    if compiled.module is not None or getattr(compiled, "extra_shared", 0):
        raise RuntimeError(f"{compiled.name} was loaded with other shared memory than {extra} more bytes")
    total = -(-compiled.metadata.shared // 128) * 128 + extra
    compiled.metadata = compiled.metadata._replace(shared=total)
    compiled.packed_metadata = compiled.packed_metadata[:2] + (total,) + compiled.packed_metadata[3:]
    compiled.extra_shared = extra


def _launch_compiled(
    kernel: Any, grid: tuple[int, int, int], device_index: int, args: tuple, kwargs: dict, extra_shared: int = 0,
) -> PreparedLaunch | None:
    """``kernel[grid](*args, **kwargs)`` on CUDA device ``device_index``. The compiled kernel is kept
    under everything Triton specializes on (``_specs`` of the arguments, the constexprs and launch
    options in ``kwargs``, the device) and later calls launch it directly: Triton's generic
    dispatch (binding, hashing) costs several times the launch itself. Returns the launch bound to
    the compiled kernel (None where Triton binds default arguments itself). ``extra_shared``: bytes of dynamic
    shared memory the kernel takes beyond Triton's (``_reserve_shared``); such a kernel is compiled first and
    launched with them, including by later ``kernel[grid]`` calls of the same specialization."""
    key = (kernel, device_index, _constexpr_key(kwargs), *_specs(args))
    hit = _COMPILED.get(key)
    if hit is None:
        names = kernel.arg_names[len(args):]
        if extra_shared:  # launched by hand, so every argument after ``args`` must be given
            missing = [name for name in names if name not in kwargs]
            if missing:
                raise TypeError(f"{kernel.fn.__name__} with extra shared memory needs {', '.join(missing)} given")
            compiled = kernel.warmup(*args, grid=grid, **kwargs)
            _reserve_shared(compiled, extra_shared)
            compiled[grid](*args, *(kwargs[name] for name in names))
        else:
            compiled = kernel[grid](*args, **kwargs)
        if not all(name in kwargs for name in names):  # Triton binds the defaults: keep its dispatch
            return None
        hit = _COMPILED[key] = PreparedLaunch(compiled, grid, device_index, tuple(kwargs[name] for name in names))
        return hit
    if hit.grid != grid:
        hit = PreparedLaunch(hit.compiled, grid, device_index, hit.consts)
    hit(*args)
    return hit


def compiled_kernels(kernel: Any) -> list[Any]:
    """The compiled CUDA kernels of ``kernel`` launched so far (e.g. to read ``n_regs``, ``n_spills``)."""
    return [hit.compiled for key, hit in _COMPILED.items() if key[0] is kernel]


def launch(
    kernel: Any, grid: Callable | tuple, device: torch.device, *args: Any, extra_shared: int = 0, **kwargs: Any
) -> PreparedLaunch | None:
    """Run ``kernel[grid](*args, **kwargs)``: compiled on CUDA (a tuple grid through the cache of
    compiled kernels), in the interpreter on CPU. On CUDA with a tuple grid, returns the launch bound
    to the compiled kernel for calls with arguments of the same specialization (``PreparedLaunch``).
    ``extra_shared``: dynamic shared memory (bytes) the CUDA kernel takes beyond Triton's (``_launch_compiled``)."""
    require_triton()
    if device.type == "cuda":
        if isinstance(grid, tuple):
            index = torch.cuda.current_device() if device.index is None else device.index
            return _launch_compiled(kernel, (*grid, 1, 1)[:3], index, args, kwargs, extra_shared)
        kernel[grid](*args, **kwargs)
        return None
    fn = kernel if isinstance(kernel, InterpretedFunction) else InterpretedFunction(kernel.fn)
    with _interpret_mode():
        fn[grid](*args, **kwargs)
    return None
