"""The global gradient norm, shared by the analysis and by clipping."""

from __future__ import annotations

import math

import numpy as np


def global_norm(grads: dict[str, np.ndarray]) -> float:
    """``sqrt(sum_k ||g_k||^2)`` over every array, in float64; finite whenever every entry is (rescaled sums)."""
    flat = [g.ravel().astype(np.float64) for g in grads.values()]
    with np.errstate(over="ignore", invalid="ignore"):
        total = math.sqrt(sum(float(np.dot(v, v)) for v in flat))
    if math.isinf(total) and all(np.isfinite(v).all() for v in flat):
        m = max(float(np.abs(v).max()) for v in flat if v.size)  # entries ~1e154 and above: scale first
        total = m * math.sqrt(sum(float(np.dot(v / m, v / m)) for v in flat))
    return total
