"""Small helpers shared by the analysis modules."""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg.lapack


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


def qr_reduced(a: np.ndarray, *, r: str | None = "full"):
    """Reduced QR of each (S, k) matrix (S >= k) in ``a`` (n, S, k): ``(Q (n, S, k), R (n, k, k))``; with
    ``r="diagonal"`` only R's diagonal (n, k), and with ``r=None`` Q alone. R's diagonal has LAPACK's signs.

    For the few matrices the analysis factors at every step, LAPACK's ``geqrf``/``orgqr`` are called directly:
    the stacked ``np.linalg.qr`` and ``scipy.linalg.qr`` cost 2-3x more per call at these sizes (wrapping,
    checks). Many matrices at once go through ``np.linalg.qr``."""
    if a.shape[0] > 4:
        q, rr = np.linalg.qr(a)
        return q if r is None else (q, np.diagonal(rr, axis1=1, axis2=2) if r == "diagonal" else rr)
    k = a.shape[2]
    geqrf, orgqr = scipy.linalg.lapack.get_lapack_funcs(("geqrf", "orgqr"), (a,))
    qs, rs = [], []
    for x in a:
        f, tau, _, info = geqrf(x)
        if info != 0:
            raise np.linalg.LinAlgError(f"QR factorisation failed (LAPACK geqrf info {info})")
        if r is not None:
            rs.append(np.diagonal(f).copy() if r == "diagonal" else np.triu(f[:k]))
        q, _, info = orgqr(f, tau)
        if info != 0:
            raise np.linalg.LinAlgError(f"QR factorisation failed (LAPACK orgqr info {info})")
        qs.append(q)
    if len(qs) == 1:
        return qs[0][None] if r is None else (qs[0][None], rs[0][None])
    return np.stack(qs) if r is None else (np.stack(qs), np.stack(rs))
