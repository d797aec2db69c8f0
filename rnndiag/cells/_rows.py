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


def row_scaled_sum(scales, blocks: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``sum_g diag(scales[g]) @ blocks[g]`` for every Jacobian of a stack, into ``out``.

    ``scales``: G arrays (..., H) of the same shape, n Jacobians in all; ``blocks`` (G, H, K); ``out`` (n, H, K),
    a view of the caller's array. Formed unit by unit: row r of every result is the small product (n, G) @ (G, K)
    of the Jacobians' scales with row r of the blocks, one batched product over the H units. Scaling the blocks'
    rows elementwise costs 4x more (numpy's broadcasting runs short inner loops). Equal to the elementwise sum to
    rounding, not bit for bit: the summation order depends on the size of the stack.
    """
    H = scales[0].shape[-1]
    n = out.shape[0]
    by_unit = np.empty((H, n, len(scales)), out.dtype)  # unit r, Jacobian, block
    for g, k in enumerate(scales):
        by_unit[:, :, g] = k.reshape(n, H).T
    np.matmul(by_unit, blocks.transpose(1, 0, 2), out=out.transpose(1, 0, 2))
    return out
