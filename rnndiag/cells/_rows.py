"""Row selection and row-wise products shared by the cells' Jacobian functions.

A cell's step Jacobians are held implicitly by their diagonal factors (each ``(..., H)``: one row per selected
timestep and batch element). These helpers pick those rows out of a trace's (T, B, K) arrays and apply a weight
matrix to a stack of row vectors with one 2-D product.
"""

from __future__ import annotations

import numpy as np


def rows(arr: np.ndarray, t, batch) -> np.ndarray:
    """``arr[t, batch]`` of a (T, B, K) array: ``t`` an int (-> (n, K)) or a 1-D index array (-> (m, n, K));
    ``batch`` a 1-D index array or None (all rows)."""
    if np.ndim(t) == 0:
        return arr[t] if batch is None else arr[t][batch]
    t = np.asarray(t)
    return arr[t] if batch is None else arr[t[:, None], np.asarray(batch)[None, :]]


def prev_rows(arr: np.ndarray, init: np.ndarray, t, batch) -> np.ndarray:
    """``arr[t - 1, batch]``, with the initial state ``init`` (B, K) where ``t == 0``."""
    if np.ndim(t) == 0:
        if t == 0:
            return init if batch is None else init[batch]
        return rows(arr, t - 1, batch)
    t = np.asarray(t)
    out = rows(arr, np.maximum(t - 1, 0), batch)  # fancy indexing: a fresh array
    first = t == 0
    if first.any():
        out[first] = init if batch is None else init[batch]
    return out


def matmul_rows(v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``v @ w`` for a stack of row vectors ``v`` (..., K) and one matrix ``w`` (K, N), as a single 2-D product."""
    lead = v.shape[:-1]
    return (v.reshape(-1, v.shape[-1]) @ w).reshape(*lead, w.shape[1])
