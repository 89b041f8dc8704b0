"""Argument checks shared by the Python wrappers: a bad argument is an ef.InvalidArgument naming
it, never pybind's TypeError for a type the binding does not take or ValueError from float()."""

from __future__ import annotations

import numbers
from typing import Optional

from .errors import InvalidArgument


def floats(values, what: str) -> list:
    """values as a list of floats (weights): a sequence of real numbers."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise InvalidArgument(f"{what} must be a sequence of numbers, got {values!r}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise InvalidArgument(f"{what} must be a sequence of numbers, got {values!r}")
        out.append(float(v))
    return out


def integer(v, what: str, low: int, high: Optional[int] = None) -> int:
    """v as an int in [low, high] (high None: below 2**63)."""
    high = (1 << 63) - 1 if high is None else high
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not low <= int(v) <= high:
        raise InvalidArgument(f"{what} must be an int in [{low}, {high}], got {v!r}")
    return int(v)
