"""Argument checks shared by the public ops: a user's mistake raises a one-line TypeError or ValueError that
names the argument, before any work starts."""

from __future__ import annotations

import operator
from typing import Any

import torch

__all__ = ["as_int", "check_tensor", "check_instance", "check_float_dtype"]


def as_int(value: Any, name: str, minimum: int | None = None) -> int:
    """``value`` as an int: TypeError unless it is an integer (bools and floats are not), ValueError below
    ``minimum``."""
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    number = operator.index(value)
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {number}")
    return number


def check_tensor(value: Any, name: str) -> torch.Tensor:
    """``value`` if it is a torch.Tensor, else TypeError naming ``name``."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_instance(value: Any, cls: type, name: str, hint: str = "") -> Any:
    """``value`` if it is a ``cls``, else TypeError naming ``name`` (and ``hint``, e.g. the function to use instead)."""
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be of type {cls.__name__}, got {type(value).__name__}" + (f" ({hint})" if hint else ""))
    return value


def check_float_dtype(dtype: Any, name: str = "dtype") -> torch.dtype:
    """``dtype`` if it is a floating-point torch.dtype, else TypeError."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point torch.dtype, got {dtype!r}")
    return dtype
