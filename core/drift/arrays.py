"""Array types of the drift package, and how its numbers go into JSON state."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.intp]
BoolArray = NDArray[np.bool_]


def json_float(value: float) -> float | None:
    """A float for JSON: ``None`` for NaN and infinities, which JSON cannot hold."""
    value = float(value)
    return value if math.isfinite(value) else None


def finite_list(array: FloatArray) -> list[float]:
    return [float(v) for v in np.asarray(array, dtype=np.float64).ravel()]


__all__ = ["BoolArray", "FloatArray", "IntArray", "finite_list", "json_float"]
