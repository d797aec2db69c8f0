"""Input checks shared by every public entry point.

Every check raises ``ValueError`` or ``TypeError`` with one line that names the argument, says what was
expected and what was given, and (where there is one) how to fix it -- in the manner of scikit-learn's
``sklearn/utils/validation.py``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np

from .cells import CELL_ALIASES, CELLS


def check_choice(value: object, name: str, choices: tuple[str, ...], aliases: dict[str, str] | None = None) -> str:
    """The canonical spelling of ``value``, one of ``choices`` (case-insensitive, ``-`` read as ``_``, with
    ``aliases``): a ``TypeError`` for a non-string, a ``ValueError`` naming the choices for an unknown name."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {', '.join(choices)}; got {type(value).__name__}")
    key = value.strip().lower().replace("-", "_")
    key = (aliases or {}).get(key, key)
    if key not in choices:
        raise ValueError(f"unknown {name} {value!r}: choose one of {', '.join(choices)}")
    return key


def check_cell(cell: object, name: str = "cell") -> str:
    """Return the canonical cell name for ``cell`` (case-insensitive, with aliases)."""
    return check_choice(cell, name, CELLS, CELL_ALIASES)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    msg = str(exc).strip().replace("\n", " ")
    if isinstance(exc, FileNotFoundError) and not msg:
        msg = f"file not found: {exc.filename}"
    return msg or type(exc).__name__


def check_positive_int(value: object, name: str) -> int:
    """An integer >= 1 (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer; got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value}")
    return int(value)


def check_dtype(dtype: object, name: str = "dtype") -> np.dtype:
    """float32 or float64."""
    try:
        dt = np.dtype(dtype)  # type: ignore[arg-type]
    except TypeError as exc:
        raise TypeError(f"{name} must be float32 or float64; got {dtype!r}") from exc
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"{name} must be float32 or float64; got {dt}")
    return dt


def shape_str(shape: Sequence[object]) -> str:
    """``(T, B, 7)`` style, with ``None`` shown as a letter placeholder by the caller."""
    inner = ", ".join(str(s) for s in shape)
    return f"({inner},)" if len(shape) == 1 else f"({inner})"


def check_array(
    value: object,
    name: str,
    shape: Sequence[int | str | None],
    dtype: np.dtype,
    *,
    allow_empty: bool = False,
    copy: bool = False,
) -> np.ndarray:
    """Convert ``value`` to a C-contiguous array of ``dtype`` and check its shape and finiteness.

    ``shape`` holds an int where the size is fixed and a name (``"T"``, ``"B"``) where it is free.
    """
    expected = shape_str(shape)
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be a numeric array of shape {expected}; got {type(value).__name__}") from exc
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers (float32/float64); got dtype {arr.dtype}")
    if arr.ndim != len(shape) or any(isinstance(s, int) and s != a for s, a in zip(shape, arr.shape)):
        raise ValueError(f"{name} must have shape {expected}; got {shape_str(arr.shape)}")
    if not allow_empty and arr.size == 0:
        raise ValueError(f"{name} is empty (shape {shape_str(arr.shape)}); every dimension of {expected} must be >= 1")
    arr = np.array(arr, dtype=dtype, order="C", copy=True) if copy else np.ascontiguousarray(arr, dtype=dtype)
    if not np.isfinite(arr).all():
        bad = np.argwhere(~np.isfinite(arr))[0]
        where = tuple(int(i) for i in bad)
        raise ValueError(f"{name} contains NaN or Inf (first at index {where}); pass finite values")
    return arr


def first_overflow(arr: np.ndarray, dtype) -> tuple[int, ...] | None:
    """The index of the first finite value of ``arr`` that ``dtype`` cannot hold (1e300 as float32), or None."""
    dtype = np.dtype(dtype)
    if dtype.kind != "f" or arr.dtype.kind not in "fiu" or float(np.finfo(dtype).max) >= _largest(arr.dtype):
        return None
    with np.errstate(all="ignore"):
        over = np.isfinite(arr) & (np.abs(arr) > np.finfo(dtype).max)
    return tuple(int(i) for i in np.argwhere(over)[0]) if over.any() else None


def _largest(dtype: np.dtype) -> float:
    return float(np.finfo(dtype).max) if dtype.kind == "f" else float(np.iinfo(dtype).max)


def make_rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    """The one place seeds become generators."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer or None; got {seed!r}")
    return np.random.default_rng(seed)
