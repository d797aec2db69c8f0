"""Small linear-algebra helpers shared by the analysis modules (LAPACK called directly where its wrappers cost
more than the work)."""

from __future__ import annotations

import functools

import numpy as np

# SciPy's LAPACK runs on SciPy's own OpenBLAS, with its own thread pool: a call big enough to be threaded there,
# interleaved with numpy's BLAS, leaves the two pools spinning against each other on the same cores (a 512 x 32
# QR next to a matrix product went from 1 ms to 11 ms). Direct LAPACK calls are kept to matrices of at most this
# many entries, which OpenBLAS runs on the calling thread.
LAPACK_DIRECT_MAX = 8192


@functools.cache
def _lapack(names: tuple[str, ...], dtype: np.dtype):
    # SciPy is imported here, on the first solve: it takes longer to import than the rest of rnndiag, and
    # `import rnndiag` (and with it every `rnndiag --help` and one-line error) should not wait for it
    import scipy.linalg.lapack

    return scipy.linalg.lapack.get_lapack_funcs(names, dtype=dtype)


def _checked(info: int, what: str) -> None:
    if info != 0:
        raise np.linalg.LinAlgError(f"{what} failed (LAPACK info {info})")


def eigh_small(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of one small symmetric matrix, by LAPACK directly (syevd):
    ``np.linalg.eigh``'s checks and error-state handling cost more than the solve at 8 x 8."""
    (syevd,) = _lapack(("syevd",), a.dtype)
    w, v, info = syevd(a)
    _checked(info, "symmetric eigensolver")
    return w, v


def eigh_tridiagonal(d: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric tridiagonal matrix with diagonal ``d`` and
    off-diagonal ``e``, by LAPACK directly (stev): ``scipy.linalg.eigh_tridiagonal`` validates its input for
    ~10 us a call, more than the solve at the sizes of a few Lanczos steps."""
    (stev,) = _lapack(("stev",), d.dtype)
    w, v, info = stev(d, e)
    _checked(info, "tridiagonal eigensolver")
    return w, v


def tridiagonal_eigenvalues(d: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Eigenvalues (ascending) of the symmetric tridiagonal matrix with diagonal ``d`` and off-diagonal ``e``,
    by LAPACK's root-free QR (sterf), O(k^2) (``scipy.linalg.eigvalsh_tridiagonal`` adds ~10 us of checks a
    call)."""
    (sterf,) = _lapack(("sterf",), d.dtype)
    w, info = sterf(d, e)
    _checked(info, "tridiagonal eigenvalues")
    return w


def qr_reduced(a: np.ndarray, *, r: str | None = "full"):
    """Reduced QR of each (S, k) matrix (S >= k) in ``a`` (n, S, k): ``(Q (n, S, k), R (n, k, k))``; with
    ``r="diagonal"`` only R's diagonal (n, k), and with ``r=None`` Q alone. R's diagonal has LAPACK's signs.

    Small matrices (``LAPACK_DIRECT_MAX``), one or a few at a time, go to LAPACK's ``geqrf``/``orgqr`` directly
    (the stacked ``np.linalg.qr`` costs 2-3x more per call at these sizes); the rest to ``np.linalg.qr``."""
    if a.shape[0] > 4 or a.shape[1] * a.shape[2] > LAPACK_DIRECT_MAX:
        q, rr = np.linalg.qr(a)
        return q if r is None else (q, np.diagonal(rr, axis1=1, axis2=2) if r == "diagonal" else rr)
    k = a.shape[2]
    geqrf, orgqr = _lapack(("geqrf", "orgqr"), a.dtype)
    qs, rs = [], []
    for x in a:
        f, tau, _, info = geqrf(x)
        _checked(info, "QR factorisation")
        if r is not None:
            rs.append(np.diagonal(f).copy() if r == "diagonal" else np.triu(f[:k]))
        q, _, info = orgqr(f, tau)
        _checked(info, "QR factorisation")
        qs.append(q)
    if len(qs) == 1:
        return qs[0][None] if r is None else (qs[0][None], rs[0][None])
    return np.stack(qs) if r is None else (np.stack(qs), np.stack(rs))
