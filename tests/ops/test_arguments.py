"""A user's mistake in a public op's arguments raises a one-line TypeError, ValueError or IndexError that names
the argument, before any work starts (never an AttributeError, a reshape error or a silently wrong result)."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
import torch

from hlwq_kernels import (
    Codebook, absmax_scale, dequantize_int4, dequantize_int4_asym, fwht, hlwq_dequantize, hlwq_int4, hlwq_quantize,
    int4_codes, is_hadamard_size, lloyd_max, marlin_pack, marlin_unpack, original_release_codebook, pack_int4,
    quantize_int4, quantize_int4_asym, quantize_int4_asym_with_params, quantize_int4_with_scale, random_signs,
    unpack_int4,
)
from hlwq_kernels.ops.int4_asym import unpack_zero_points

_W = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
_SYM = quantize_int4(_W, 16)
_ASYM = quantize_int4_asym(_W, 16)

CASES: list[tuple[str, Callable[[], object], type, str]] = [
    # fwht
    ("fwht dim out of range", lambda: fwht(torch.randn(3, 16), dim=2), IndexError, r"dim=2 is out of range.* 2 dim"),
    ("fwht negative dim out of range", lambda: fwht(torch.randn(3, 16), dim=-3), IndexError, "dim=-3"),
    ("fwht dim None", lambda: fwht(torch.randn(3, 16), dim=None), TypeError, "dim must be an integer"),
    ("fwht float block_size", lambda: fwht(torch.randn(3, 16), block_size=8.5), TypeError, "block_size must be an int"),
    ("fwht bool block_size", lambda: fwht(torch.randn(3, 16), block_size=True), TypeError, "block_size"),
    ("fwht list signs", lambda: fwht(torch.randn(3, 16), signs=[1.0] * 16), TypeError, "signs must be a torch.Tensor"),
    ("fwht numpy signs", lambda: fwht(torch.randn(3, 16), signs=np.ones(16)), TypeError, "signs must be a torch"),
    # Hadamard helpers
    ("random_signs negative n", lambda: random_signs(-1), ValueError, "n must be at least 0"),
    ("random_signs float n", lambda: random_signs(4.0), TypeError, "n must be an integer"),
    ("random_signs float seed", lambda: random_signs(4, seed=1.5), TypeError, "seed must be an integer"),
    ("random_signs uint8", lambda: random_signs(4, dtype=torch.uint8), TypeError, "signed integer"),
    ("random_signs bool", lambda: random_signs(4, dtype=torch.bool), TypeError, "signed integer"),
    # symmetric INT4
    ("quantize_int4 empty rows", lambda: quantize_int4(torch.ones(0, 8), 8), ValueError, r"\(0, 8\) is empty"),
    ("quantize_int4 empty columns (triton)", lambda: quantize_int4(torch.randn(2, 0), 8, backend="triton"),
     ValueError, r"\(2, 0\) is empty"),
    ("quantize_int4 float group_size", lambda: quantize_int4(_W, 16.0), TypeError, "group_size must be an integer"),
    ("quantize_int4 str group_size", lambda: quantize_int4(_W, "16"), TypeError, "group_size"),
    ("quantize_int4_with_scale list weight", lambda: quantize_int4_with_scale(_W.tolist(), torch.ones(64, 2)),
     TypeError, "weight must be a torch.Tensor"),
    ("int4_codes scale shape", lambda: int4_codes(_W, torch.ones(64, 3)), ValueError, r"scale shape \(64, 3\)"),
    ("int4_codes 1-D scale", lambda: int4_codes(_W, torch.ones(64)), ValueError, "scale shape"),
    ("int4_codes zero scale", lambda: int4_codes(_W, torch.zeros(64, 2)), ValueError, "finite and positive"),
    ("absmax_scale zero divisor", lambda: absmax_scale(_W, 16, 0), ValueError, "divisor must be a finite positive"),
    ("absmax_scale negative divisor", lambda: absmax_scale(_W, 16, -1.0), ValueError, "divisor"),
    ("absmax_scale nan divisor", lambda: absmax_scale(_W, 16, float("nan")), ValueError, "divisor"),
    ("pack_int4 list", lambda: pack_int4([[0] * 8]), TypeError, "codes must be a torch.Tensor"),
    ("unpack_int4 list", lambda: unpack_int4([[0]], 8), TypeError, "packed must be a torch.Tensor"),
    ("unpack_int4 negative k", lambda: unpack_int4(torch.zeros(1, 1, dtype=torch.int32), -1), ValueError,
     "k must be at least 0"),
    ("unpack_int4 float k", lambda: unpack_int4(torch.zeros(1, 1, dtype=torch.int32), 4.0), TypeError, "k must be"),
    ("dequantize_int4 None", lambda: dequantize_int4(None), TypeError, "q must be of type Int4Weight"),
    ("dequantize_int4 of an asymmetric weight", lambda: dequantize_int4(_ASYM), TypeError, "dequantize_int4_asym"),
    ("dequantize_int4 one scale for two groups",
     lambda: dequantize_int4(type(_SYM)(_SYM.packed, _SYM.scale[:, :1], _SYM.shape, 16)), ValueError,
     r"scale \[64, 2\]"),
    ("dequantize_int4 packed too wide",
     lambda: dequantize_int4(type(_SYM)(torch.zeros(64, 8, dtype=torch.int32), _SYM.scale, _SYM.shape, 16)),
     ValueError, r"packed \[64, 4\]"),
    ("dequantize_int4 str dtype", lambda: dequantize_int4(_SYM, dtype="float16"), TypeError, "floating-point"),
    ("dequantize_int4 int dtype", lambda: dequantize_int4(_SYM, dtype=torch.int32), TypeError, "floating-point"),
    ("marlin_pack of an asymmetric weight", lambda: marlin_pack(_ASYM), TypeError, "symmetric INT4 only"),
    ("marlin_pack None", lambda: marlin_pack(None), TypeError, "Int4Weight"),
    ("marlin_unpack None", lambda: marlin_unpack(None), TypeError, "MarlinWeight"),
    # asymmetric INT4
    ("dequantize_int4_asym of a symmetric weight", lambda: dequantize_int4_asym(_SYM), TypeError,
     "dequantize_int4.$"),
    ("dequantize_int4_asym zero points of other rows",
     lambda: dequantize_int4_asym(type(_ASYM)(_ASYM.packed, _ASYM.scale, _ASYM.zero_point_packed[:4], _ASYM.shape,
                                              16)), ValueError, r"zero_point_packed \[8, 2\]"),
    ("quantize_int4_asym_with_params list weight",
     lambda: quantize_int4_asym_with_params(_W.tolist(), torch.ones(64, 2), torch.zeros(64, 2, dtype=torch.int8)),
     TypeError, "weight must be a torch.Tensor"),
    ("complex importance", lambda: quantize_int4_asym(_W, 16, "clip", importance=torch.ones(32, dtype=torch.complex64)),
     TypeError, "importance must be real"),
    ("unpack_zero_points float n", lambda: unpack_zero_points(_ASYM.zero_point_packed, 8.0), TypeError, "n must be"),
    # HLWQ
    ("hlwq list weight", lambda: hlwq_int4([[1.0] * 128]), TypeError, "weight must be a torch.Tensor"),
    ("hlwq float64 weight", lambda: hlwq_quantize(torch.randn(4, 128, dtype=torch.float64)), TypeError, "float64"),
    ("hlwq float bits", lambda: hlwq_int4(torch.randn(4, 128), bits=5.5), TypeError, "bits must be an integer"),
    ("hlwq float block_size", lambda: hlwq_int4(torch.randn(4, 128), block_size=128.0), TypeError, "block_size"),
    ("hlwq list codebook", lambda: hlwq_int4(torch.randn(4, 128), codebook=[0.0] * 32), TypeError,
     "codebook must be of type Codebook"),
    ("hlwq_dequantize None", lambda: hlwq_dequantize(None), TypeError, "codes must be of type HLWQCodes"),
    # Lloyd-Max
    ("lloyd_max negative bits", lambda: lloyd_max(bits=-1), ValueError, "bits must be at least 0"),
    ("lloyd_max float bits", lambda: lloyd_max(bits=2.5), TypeError, "bits must be an integer"),
    ("lloyd_max bool levels", lambda: lloyd_max(levels=True), TypeError, "levels must be an integer"),
    ("lloyd_max str levels", lambda: lloyd_max(levels="4"), TypeError, "levels"),
    ("lloyd_max too many bits", lambda: lloyd_max(bits=100), ValueError, "bits must be at most 24"),
    ("lloyd_max negative tol", lambda: lloyd_max(levels=4, tol=-1), ValueError, "tol"),
    ("lloyd_max nan tol", lambda: lloyd_max(levels=4, tol=float("nan")), ValueError, "tol"),
    ("lloyd_max negative max_iter", lambda: lloyd_max(levels=4, max_iter=-5), ValueError, "max_iter"),
    ("original_release_codebook negative bits", lambda: original_release_codebook(-1), ValueError, "bits"),
]


@pytest.mark.parametrize(("call", "error", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_argument_raises_a_clear_error(call: Callable[[], object], error: type, match: str) -> None:
    with pytest.raises(error, match=match) as raised:
        call()
    assert type(raised.value) is error and "\n" not in str(raised.value)


def test_bool_is_not_a_hadamard_size() -> None:
    assert not is_hadamard_size(True) and is_hadamard_size(1) and is_hadamard_size(np.int64(12))


def test_integer_like_arguments_still_work() -> None:
    """NumPy integers are integers; signed integer signs are ±1."""
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(1))
    assert torch.equal(fwht(x, dim=np.int64(1), block_size=np.int64(8)), fwht(x, block_size=8))
    assert torch.equal(random_signs(np.int64(16), seed=np.int64(3), dtype=torch.int8), random_signs(16, 3).to(torch.int8))
    assert quantize_int4(_W, np.int64(16)).group_size == 16
    assert isinstance(lloyd_max(bits=np.int64(2)), Codebook)


def test_lloyd_max_takes_samples_that_require_grad() -> None:
    samples = torch.randn(500, generator=torch.Generator().manual_seed(2))
    fitted = lloyd_max(levels=4, samples=samples.clone().requires_grad_(True))
    assert np.array_equal(fitted.levels, lloyd_max(levels=4, samples=samples).levels)
