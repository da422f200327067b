"""The launch path shared by every kernel: on CUDA a compiled kernel is reused only for arguments
that Triton would have specialized the same way (alignment, integers equal to 1 or divisible by
16, dtypes); in the interpreter on CPU every call runs the kernel."""

from __future__ import annotations

import pytest
import torch

from hlwq_kernels.ops._triton import HAVE_TRITON, cdiv, launch, next_power_of_2, tl, triton
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
    launch(_scaled_copy_kernel, (cdiv(n, block),), x.device, x, out, n, stride, factor, BLOCK=block,
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


def test_host_geometry_helpers_match_triton() -> None:
    """``cdiv`` and ``next_power_of_2`` (plain host functions) agree with Triton's own."""
    for n in [*range(0, 70), 127, 128, 129, 4095, 4096, 4097, 65535, 1 << 20, (1 << 20) + 1]:
        assert next_power_of_2(n) == triton.next_power_of_2(n)
        for d in (1, 3, 16, 128, 1000):
            assert cdiv(n, d) == triton.cdiv(n, d)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the cache of compiled kernels runs there only")
def test_launch_hooks_see_every_cached_launch_cuda() -> None:
    """The cached launch skips Triton's hooks only while none is installed: an installed enter hook
    sees every launch, also those that reuse a compiled kernel, and results stay right after removal."""
    x = random_weight((256,), torch.float32, seed=3, device="cuda")
    hooks = triton.knobs.runtime
    seen: list = []
    _run(x, 256, 1, 2.0, 64)  # compiled and cached before the hook exists
    hooks.launch_enter_hook.add(seen.append)
    try:
        for _ in range(3):
            torch.testing.assert_close(_run(x, 256, 1, 2.0, 64), x * 2.0, rtol=0, atol=0)
    finally:
        hooks.launch_enter_hook.remove(seen.append)
    torch.cuda.synchronize()
    assert len(seen) == 3 and all("_scaled_copy_kernel" in m.get()["name"] for m in seen)
    torch.testing.assert_close(_run(x, 256, 1, 0.5, 64), x * 0.5, rtol=0, atol=0)


@pytest.mark.cuda
def test_public_ops_reuse_prepared_launches_cuda(monkeypatch) -> None:
    """quantize_int4, quantize_int4_asym (min-max and clip with importance) and marlin_pack keep one launch per
    kind of input (shape, strides, dtype, 16-byte alignment, options) and repeat it for new values: three
    rounds of new weights on three kinds (aligned bf16, a misaligned bf16 view, fp16) give each kind one
    launch, and every result equals the torch path's (the clip kernel's: a launch planned afresh)."""
    from hlwq_kernels import marlin_pack, quantize_int4, quantize_int4_asym
    from hlwq_kernels.ops import int4_asym_triton, int4_triton, marlin_triton
    from hlwq_kernels.ops._triton import PreparedCalls

    for module in (int4_triton, int4_asym_triton, marlin_triton):
        monkeypatch.setattr(module, "_PREPARED", PreparedCalls())
    buf = torch.empty(256 * 1024 + 8, dtype=torch.bfloat16, device="cuda")
    kinds = [lambda: buf[: 256 * 1024].view(256, 1024), lambda: buf[1: 1 + 256 * 1024].view(256, 1024),
             lambda: buf[: 128 * 512].view(128, 512).to(torch.float16)]
    for rnd in range(3):
        buf.copy_(random_weight(buf.shape, torch.bfloat16, seed=rnd, device="cuda"))
        importance = random_weight((1024,), torch.float32, seed=10 + rnd, device="cuda").abs() + 0.1
        for kind in kinds:
            w = kind()
            for got, want in ((quantize_int4(w), quantize_int4(w, backend="torch")),
                              (quantize_int4_asym(w), quantize_int4_asym(w, backend="torch"))):
                for a, b in zip((got.packed, got.scale), (want.packed, want.scale)):
                    assert torch.equal(a, b)
            mp, mt = marlin_pack(quantize_int4(w)), marlin_pack(quantize_int4(w), backend="torch")
            assert torch.equal(mp.qweight, mt.qweight) and torch.equal(mp.scales, mt.scales)
        w = kinds[0]()
        got = quantize_int4_asym(w, method="clip", importance=importance)
        with monkeypatch.context() as fresh:
            fresh.setattr(int4_asym_triton, "_PREPARED", PreparedCalls())
            want = quantize_int4_asym(w, method="clip", importance=importance)
        assert torch.equal(got.packed, want.packed) and torch.equal(got.zero_point_packed, want.zero_point_packed)
    assert len(int4_triton._PREPARED) == 3 and len(marlin_triton._PREPARED) == 2  # kinds 1, 2: the same words
    assert len(int4_asym_triton._PREPARED) == 4  # min-max on three kinds, clip with importance on one


@pytest.mark.cuda
def test_codebook_calls_reuse_prepared_launches_cuda(monkeypatch) -> None:
    """Codebook.quantize (bf16 lookup, fp32 assignment) and dequantize repeat their launch for new values of
    one kind of input and match the torch path."""
    from hlwq_kernels.ops import lloyd_max_triton
    from hlwq_kernels.ops._triton import PreparedCalls
    from hlwq_kernels.ops.lloyd_max import gaussian_codebook

    monkeypatch.setattr(lloyd_max_triton, "_PREPARED", PreparedCalls())
    cb = gaussian_codebook(16)
    for rnd in range(3):
        for dt in (torch.bfloat16, torch.float32):
            x = random_weight((4096,), dt, seed=rnd, device="cuda")
            idx = cb.quantize(x)
            assert torch.equal(idx, cb.quantize(x, backend="torch"))
            assert torch.equal(cb.dequantize(idx), cb.dequantize(idx, backend="torch"))
    assert len(lloyd_max_triton._PREPARED) == 3  # lookup (bf16), assignment (fp32), gather (one index dtype)


@pytest.mark.cuda
def test_hlwq_calls_reuse_prepared_launches_cuda(monkeypatch) -> None:
    """The fused HLWQ kernel repeats its launch for new weights of one kind: the same INT4 words and codes as a
    launch planned afresh, and the finiteness flag is a new one per call (a NaN in round 3 is reported)."""
    from hlwq_kernels import hlwq_int4, hlwq_quantize
    from hlwq_kernels.ops import hlwq_triton
    from hlwq_kernels.ops._triton import PreparedCalls

    monkeypatch.setattr(hlwq_triton, "_PREPARED", PreparedCalls())
    for rnd in range(3):
        w = random_weight((64, 512), torch.bfloat16, seed=rnd, device="cuda") * 0.02
        got, codes = hlwq_int4(w), hlwq_quantize(w)
        with monkeypatch.context() as fresh:
            fresh.setattr(hlwq_triton, "_PREPARED", PreparedCalls())
            want, want_codes = hlwq_int4(w), hlwq_quantize(w)
        assert torch.equal(got.packed, want.packed) and torch.equal(got.scale, want.scale)
        assert torch.equal(codes.codes, want_codes.codes) and torch.equal(codes.norms, want_codes.norms)
    assert len(hlwq_triton._PREPARED) == 2  # INT4 words, codes + norms
    w[3, 7] = float("nan")
    with pytest.raises(ValueError):
        hlwq_int4(w)
    assert isinstance(hlwq_int4(w, check_finite=False).packed, torch.Tensor)


def test_prepared_calls_keep_the_newest_launches() -> None:
    """PreparedCalls repeats a kept launch with the new leading tensors and the stored rest of its arguments,
    reports a miss for unknown and None keys, ignores launches it cannot keep, and drops the oldest when full
    (a plain callable stands in for the compiled launch, which only exists on CUDA)."""
    from hlwq_kernels.ops._triton import PreparedCalls

    calls: list = []
    prepared = PreparedCalls(size=2)
    launches = {name: (lambda *args, name=name: calls.append((name, args))) for name in "abc"}
    prepared.add(None, launches["a"], (1,))
    prepared.add(("b",), None, (1,))
    assert len(prepared) == 0 and not prepared.run(None, "x") and not prepared.run(("a",), "x")
    for name in "abc":
        prepared.add((name,), launches[name], (name.upper(), 7))
    assert len(prepared) == 2 and not prepared.run(("a",), "x")
    assert prepared.run(("b",), "x", "y") and prepared.run(("c",), "z")
    assert calls == [("b", ("x", "y", "B", 7)), ("c", ("z", "C", 7))]
