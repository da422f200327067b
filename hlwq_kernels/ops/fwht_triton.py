"""Triton FWHT kernel and its launcher.

A row of length n = K * 2**m is held in registers as a tensor of up to three modes
``[M0, M1, M2]`` (the K mode, zero-padded to a power of two, comes first; the power-of-two part
is split into factors of 16..128). Each mode is multiplied by its (small, ±1) Hadamard factor on
the tensor cores with ``tl.dot``, then the modes are rotated so the next one is last; after the
last mode the original order is back and the row is stored. H is exact in bf16, so the dot is
exact for bf16/fp16 inputs; fp32 operands (the input when fp32, and every intermediate) are split
into 2 (bf16/fp16 data) or 3 (fp32 data) bf16 pieces, which keeps fp32 accuracy; accumulation is
fp32 and the result is rounded once at the store.
"""

from __future__ import annotations

import math

import torch

from hlwq_kernels.ops._triton import launch, require_triton, tl, triton
from hlwq_kernels.ops.hadamard import hadamard_factors, hadamard_tensor, pow2_split

__all__ = ["fwht_rows_triton", "kernel_modes", "MAX_KERNEL_SIZE"]

MAX_KERNEL_SIZE = 1 << 15  # padded elements per row held by one program (shared-memory bound)
_MIN_DOT = 16
_MAX_DENSE_MODE = 128


@triton.jit
def _mode_product(v, h_ptr, F: tl.constexpr, NATIVE: tl.constexpr, PIECES: tl.constexpr):
    """v [R, F] @ Hm [F, F] with fp32 accumulation (Hm given row-major at h_ptr, exact in bf16).

    PIECES = 1 (interpreter only: Triton's interpreter has no bf16 dot) multiplies in fp32.
    """
    offs = tl.arange(0, F)
    hm = tl.load(h_ptr + offs[:, None] * F + offs[None, :])
    if NATIVE:
        acc = tl.dot(v, hm.to(v.dtype))
    elif PIECES == 1:
        acc = tl.dot(v.to(tl.float32), hm.to(tl.float32))
    else:
        hi = v.to(tl.bfloat16)
        rest = v - hi.to(tl.float32)
        acc = tl.dot(hi, hm)
        mid = rest.to(tl.bfloat16)
        acc = tl.dot(mid, hm, acc)
        if PIECES == 3:
            lo = (rest - mid.to(tl.float32)).to(tl.bfloat16)
            acc = tl.dot(lo, hm, acc)
    return acc


@triton.jit
def _fwht_kernel(
    x_ptr, y_ptr, s_ptr, h0_ptr, h1_ptr, h2_ptr,
    rows, num_tiles, blocks_per_row, stride_xr, stride_xc, scale,
    N: tl.constexpr, K0: tl.constexpr, M0: tl.constexpr, M1: tl.constexpr, M2: tl.constexpr,
    NUM_MODES: tl.constexpr, BM: tl.constexpr, HAS_SIGNS: tl.constexpr, INVERSE: tl.constexpr,
    NATIVE: tl.constexpr, PIECES: tl.constexpr, STAGES: tl.constexpr,
):
    for tile in tl.range(tl.program_id(0), num_tiles, tl.num_programs(0), num_stages=STAGES):
        r = tile * BM + tl.arange(0, BM)
        i0 = tl.arange(0, M0)
        if NUM_MODES == 1:
            col = i0[None, :]
            row = r[:, None]
            valid = (row < rows) & (col < K0)
        elif NUM_MODES == 2:
            i1 = tl.arange(0, M1)
            col = i0[None, :, None] * M1 + i1[None, None, :]
            row = r[:, None, None]
            valid = (row < rows) & (i0[None, :, None] < K0)
        else:
            i1 = tl.arange(0, M1)
            i2 = tl.arange(0, M2)
            col = i0[None, :, None, None] * (M1 * M2) + i1[None, None, :, None] * M2 + i2[None, None, None, :]
            row = r[:, None, None, None]
            valid = (row < rows) & (i0[None, :, None, None] < K0)
        v = tl.load(x_ptr + row.to(tl.int64) * stride_xr + col * stride_xc, mask=valid, other=0.0)
        if HAS_SIGNS:
            sign_idx = (row % blocks_per_row) * N + col
            sgn = tl.load(s_ptr + sign_idx, mask=valid, other=0.0)
            if not INVERSE:
                v = (v.to(tl.float32) * sgn).to(v.dtype)  # ±1: exact; fp32 avoids the interpreter's bf16 arithmetic
        if NUM_MODES == 1:
            acc = _mode_product(v, h0_ptr, M0, NATIVE, PIECES)
        elif NUM_MODES == 2:
            acc = _mode_product(tl.reshape(v, (BM * M0, M1)), h1_ptr, M1, NATIVE, PIECES)
            acc = tl.permute(tl.reshape(acc, (BM, M0, M1)), (0, 2, 1))
            acc = _mode_product(tl.reshape(acc, (BM * M1, M0)), h0_ptr, M0, False, PIECES)
            acc = tl.permute(tl.reshape(acc, (BM, M1, M0)), (0, 2, 1))
        else:
            acc = _mode_product(tl.reshape(v, (BM * M0 * M1, M2)), h2_ptr, M2, NATIVE, PIECES)
            acc = tl.permute(tl.reshape(acc, (BM, M0, M1, M2)), (0, 3, 1, 2))
            acc = _mode_product(tl.reshape(acc, (BM * M2 * M0, M1)), h1_ptr, M1, False, PIECES)
            acc = tl.permute(tl.reshape(acc, (BM, M2, M0, M1)), (0, 3, 1, 2))
            acc = _mode_product(tl.reshape(acc, (BM * M1 * M2, M0)), h0_ptr, M0, False, PIECES)
            acc = tl.permute(tl.reshape(acc, (BM, M1, M2, M0)), (0, 3, 1, 2))
        out = acc * scale
        if HAS_SIGNS:
            if INVERSE:
                out = out * sgn.to(tl.float32)
        tl.store(y_ptr + row.to(tl.int64) * (M1 * M2 * K0) + col, out.to(y_ptr.dtype.element_ty), mask=valid)


def kernel_modes(n: int, max_factor: int = 128) -> tuple[int, list[int]] | None:
    """(real size of mode 0, padded mode sizes) for an n-point transform, or None when the kernel
    cannot hold it (more than MAX_KERNEL_SIZE padded elements, or a dense mode above 128)."""
    plan = _modes(n, max_factor)
    if plan is None or math.prod(plan[1]) > MAX_KERNEL_SIZE:
        return None
    return plan


def _pow2_parts(m: int, max_bits: int, max_parts: int) -> list[int] | None:
    return pow2_split(m, max_bits, max_parts, min_bits=4)


def _modes(n: int, max_factor: int) -> tuple[int, list[int]] | None:
    k, p = hadamard_factors(n)
    m = p.bit_length() - 1
    max_bits = max_factor.bit_length() - 1
    if k == 1:
        parts = _pow2_parts(m, max_bits, 3) or _pow2_parts(m, 7, 3)
        if parts is None:
            dense = max(_MIN_DOT, p)
            return (n, [dense]) if dense <= _MAX_DENSE_MODE else None
        return parts[0], parts
    pad_k = max(_MIN_DOT, triton.next_power_of_2(k))
    parts = _pow2_parts(m, max_bits, 2) or _pow2_parts(m, 7, 2)
    if parts is None or pad_k > _MAX_DENSE_MODE:
        dense = max(_MIN_DOT, triton.next_power_of_2(n))
        return (n, [dense]) if dense <= _MAX_DENSE_MODE else None
    return k, [pad_k] + parts


def _mode_matrices(n: int, k0: int, modes: list[int], inverse: bool, device: torch.device) -> list[torch.Tensor]:
    """Right-multiplication matrices (H.T forward, H inverse) for each mode, bf16, zero-padded."""
    sizes = [k0] + modes[1:]
    # mode 0 carries H_K (or the whole dense H_n); Sylvester modes are symmetric.
    return [
        hadamard_tensor(size, transpose=not inverse, pad=pad, dtype=torch.bfloat16, device=device)
        for size, pad in zip(sizes, modes)
    ]


def _block_rows(padded: int, modes: list[int], tile_elems: int) -> int:
    """Rows per tile: about tile_elems padded elements, and at least 16 rows in every dot."""
    bm = max(1, tile_elems // padded)
    smallest_rows = padded // max(modes)
    while bm * smallest_rows < _MIN_DOT:
        bm *= 2
    return bm


# Launch configurations tried by the tuner (num_warps, tile_elems, programs_per_sm, stages); the
# first is the untuned default. Chosen from the H100 sweeps in bench/results/fwht-*.md.
_CANDIDATES = [
    {"num_warps": 4, "tile_elems": 8192, "programs_per_sm": 4, "stages": 2},
    {"num_warps": 4, "tile_elems": 2048, "programs_per_sm": None, "stages": 1},
    {"num_warps": 4, "tile_elems": 8192, "programs_per_sm": None, "stages": 1},
    {"num_warps": 4, "tile_elems": 2048, "programs_per_sm": 4, "stages": 2},
    {"num_warps": 8, "tile_elems": 8192, "programs_per_sm": 4, "stages": 2},
    {"num_warps": 8, "tile_elems": 8192, "programs_per_sm": None, "stages": 1},
]
_TUNE_MIN_ELEMENTS = 1 << 22
_tuned: dict[tuple, dict[str, int | None]] = {}


def _tuned_config(key: tuple, run) -> dict[str, int | None]:
    """Time every candidate once on the real input (CUDA events, 3 reps) and cache the fastest."""
    if key not in _tuned:
        times = []
        for cfg in _CANDIDATES:
            run(cfg)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(3):
                run(cfg)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        _tuned[key] = _CANDIDATES[times.index(min(times))]
    return _tuned[key]


def fwht_rows_triton(
    x2: torch.Tensor, b: int, inverse: bool, scale: float, sign_row: torch.Tensor | None,
    max_factor: int = 128, **config: int | None,
) -> torch.Tensor:
    """Transform (times ``scale``) of each length-b block of the rows of x2 [R, n] (any strides).

    ``config`` overrides the launch heuristic (num_warps, tile_elems, programs_per_sm, stages);
    the GPU benchmark uses it to sweep configurations.
    """
    require_triton()
    rows, n = x2.shape
    plan = kernel_modes(b, max_factor)
    if plan is None:
        raise ValueError(
            f"n={b} does not fit the Triton FWHT kernel (more than {MAX_KERNEL_SIZE} padded elements or "
            f"a Hadamard order K > {_MAX_DENSE_MODE}); use backend='torch'"
        )
    k0, modes = plan
    padded = math.prod(modes)
    if b != n:
        x2 = x2.contiguous().view(rows * (n // b), b)
    out = torch.empty(x2.shape, dtype=x2.dtype, device=x2.device)
    if out.numel() == 0:
        return out.view(rows, n)
    mats = _mode_matrices(b, k0, modes, inverse, x2.device)
    mats += [mats[0]] * (3 - len(mats))
    signs = sign_row if sign_row is not None else out
    native = x2.dtype in (torch.bfloat16, torch.float16)
    if x2.is_cuda:
        pieces = 2 if native else 3
    else:  # the interpreter cannot multiply bf16 operands: exact fp32 products instead
        native, pieces = x2.dtype == torch.float16, 1

    def run(cfg: dict[str, int | None]) -> None:
        bm = _block_rows(padded, modes, cfg["tile_elems"])
        num_tiles = triton.cdiv(x2.shape[0], bm)
        programs = num_tiles
        if cfg["programs_per_sm"] and x2.is_cuda:
            sms = torch.cuda.get_device_properties(x2.device).multi_processor_count
            programs = min(num_tiles, sms * cfg["programs_per_sm"])
        launch(
            _fwht_kernel, (programs,), x2.device,
            x2, out, signs, mats[0], mats[1], mats[2],
            x2.shape[0], num_tiles, n // b, x2.stride(0), x2.stride(1), scale,
            N=b, K0=k0, M0=modes[0], M1=modes[1] if len(modes) > 1 else 1,
            M2=modes[2] if len(modes) > 2 else 1, NUM_MODES=len(modes), BM=bm,
            HAS_SIGNS=sign_row is not None, INVERSE=inverse, NATIVE=native,
            PIECES=pieces, STAGES=cfg["stages"], num_warps=cfg["num_warps"],
        )

    if config:
        cfg = {**_CANDIDATES[0], **config}
    elif x2.is_cuda and out.numel() >= _TUNE_MIN_ELEMENTS:
        size_class = out.numel().bit_length()
        cfg = _tuned_config((b, x2.dtype, sign_row is not None, size_class, x2.device.index), run)
    else:
        cfg = _CANDIDATES[0]
    run(cfg)
    return out.view(rows, n)
