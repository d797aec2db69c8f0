"""Plain, JSON-safe values from numpy results: JSON has no NaN or Infinity, so they become null (the surrounding
keys say why)."""

from __future__ import annotations

import math

import numpy as np


def finite_or_none(value) -> float | None:
    """A plain float, or None for NaN/Inf (JSON has neither)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def list_or_none(values) -> list:
    """A list of plain floats with NaN/Inf written as None."""
    arr = np.asarray(values, dtype=np.float64).ravel()
    return [float(v) if math.isfinite(v) else None for v in arr]


def jsonable(obj):
    """Recursively turn numpy scalars/arrays into plain Python, NaN/Inf into None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return finite_or_none(obj)
    return obj
