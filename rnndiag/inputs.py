"""Reading a user's input batch: one ``.npy`` array of shape (T, B, I), checked, never unpickled.

Every problem raises :class:`InputFileError` (a ``ValueError``) with one line that names the file and says what
to do; a missing file is a ``FileNotFoundError``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ._validation import one_line


class InputFileError(ValueError):
    """An input file cannot be used; the message says why and how to fix it."""


def _read(path: Path) -> np.ndarray:
    """The array in ``path``, refusing pickles, archives and anything that is not a .npy file."""
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "object arrays" in str(exc).lower():
            raise InputFileError(f"input file {str(path)!r} holds a pickled object array, which rnndiag never "
                                 "loads; save a numeric array with np.save") from None
        if "pickled" in str(exc).lower():  # numpy's word for bytes that are not a .npy file
            raise InputFileError(f"input file {str(path)!r} is not a .npy file (corrupt, or another format); save "
                                 "it with np.save(path, x) with x of shape (T, B, I)") from None
        raise InputFileError(f"input file {str(path)!r} is not a readable .npy ({one_line(exc)}); save it with "
                             "np.save") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputFileError(f"input file {str(path)!r} cannot be read ({one_line(exc)}); save it with "
                             "np.save") from None
    if isinstance(arr, np.lib.npyio.NpzFile):
        keys = arr.files
        arr.close()
        raise InputFileError(f"input file {str(path)!r} is an .npz archive ({', '.join(keys[:3])}); pass one .npy "
                             "array of shape (T, B, I)")
    return arr


def load_input(path, dtype=np.float64) -> np.ndarray:
    """The inputs (T, B, I) saved with ``np.save`` at ``path``, as ``dtype``.

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "x.npy"); np.save(p, np.zeros((5, 2, 3)))
    >>> load_input(p).shape
    (5, 2, 3)
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input file {str(path)!r} does not exist; check the path")
    if path.is_dir():
        raise InputFileError(f"input {str(path)!r} is a folder; pass a .npy file of shape (T, B, I)")
    arr = _read(path)
    if arr.dtype.kind not in "biuf":
        raise InputFileError(f"input file {str(path)!r} has dtype {arr.dtype}; it must hold numbers of shape "
                             "(T, B, I)")
    if arr.ndim == 2:
        raise InputFileError(f"input file {str(path)!r} has shape {arr.shape}; it must be (T, B, I) -- for one "
                             "sequence use x[:, None, :]")
    if arr.ndim != 3 or 0 in arr.shape:
        raise InputFileError(f"input file {str(path)!r} has shape {arr.shape}; it must be (T, B, I) with every "
                             "size >= 1")
    if not np.isfinite(arr).all():
        raise InputFileError(f"input file {str(path)!r} contains NaN or Inf; pass finite values")
    return arr.astype(dtype, copy=False)
