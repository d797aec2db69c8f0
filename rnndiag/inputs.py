"""Reading a user's input batch: one ``.npy`` array of shape (T, B, I), checked, never unpickled.

Every problem raises a ``ValueError`` (:class:`InputFileError`, or the reader's
:class:`~rnndiag.npyfile.ArrayFileError`) with one line that names the file and says what to do; a missing file
is a ``FileNotFoundError``. The header is read first: a file that declares more than it holds or more than the
memory available is refused before its data is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._validation import first_overflow
from .npyfile import ArrayFileError, NpyHeader, read_npy


class InputFileError(ArrayFileError):
    """An input file cannot be used; the message says why and how to fix it."""


def load_input(path, dtype=np.float64) -> np.ndarray:
    """The inputs (T, B, I) saved with ``np.save`` at ``path``, as ``dtype``.

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "x.npy"); np.save(p, np.zeros((5, 2, 3)))
    >>> load_input(p).shape
    (5, 2, 3)
    """
    path = Path(path)
    what = f"input file {str(path)!r}"

    def check(header: NpyHeader) -> None:  # before any data is read
        shape = header.shape
        if header.dtype.kind in "iu":
            raise InputFileError(f"{what} holds integers (dtype {header.dtype}): these look like token ids: pass "
                                 "the embedded inputs (the recurrent module's input), or record a capture")
        if header.dtype.kind not in "bf":
            raise InputFileError(f"{what} has dtype {header.dtype}; it must hold numbers of shape (T, B, I)")
        if len(shape) == 2:
            raise InputFileError(f"{what} has shape {shape}; it must be (T, B, I) -- for one sequence use "
                                 "x[:, None, :]")
        if len(shape) != 3 or 0 in shape:
            raise InputFileError(f"{what} has shape {shape}; it must be (T, B, I) with every size >= 1")

    arr = read_npy(path, what, check=check)
    check_finite(arr, what)
    return as_dtype(arr, dtype, what, "--dtype float64")


def check_finite(arr: np.ndarray, what: str) -> None:
    """Refuse NaN or Inf, naming where the first one is."""
    with np.errstate(all="ignore"):
        bad = ~np.isfinite(arr) if arr.dtype.kind == "f" else None
    if bad is not None and bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise InputFileError(f"{what} contains NaN or Inf (first at index {where}); pass finite values")


def as_dtype(arr: np.ndarray, dtype, what: str, fix: str) -> np.ndarray:
    """``arr`` as ``dtype``; a finite value that the narrower dtype cannot hold (1e300 as float32) is refused as
    an overflow, naming the value and ``fix``, not reported as NaN or Inf."""
    where = first_overflow(arr, dtype)
    if where is not None:
        raise InputFileError(f"{what} holds {float(arr[where]):.3g} at index {where}, which overflows "
                             f"{np.dtype(dtype).name} (largest {float(np.finfo(dtype).max):.3g}); pass {fix} or "
                             "rescale the values")
    return arr.astype(dtype, copy=False)
