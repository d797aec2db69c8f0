"""Reading ``.npy`` and ``.npz`` files header first: every array's shape and dtype are known before any of its data
is read or decompressed, so a file that declares more than it holds, more than the memory has, or keys that
cannot be right is refused before it costs anything. Never a pickle (``allow_pickle=False`` throughout).

* :func:`read_npy` -- one array from a ``.npy`` file, its header checked against the file's size.
* :class:`NpzArchive` -- an ``.npz`` opened lazily: :attr:`NpzArchive.headers` (name -> :class:`NpyHeader`) from
  the members' headers alone; :meth:`NpzArchive.load` reads one member when the caller has decided it needs it.

Problems raise :class:`ArrayFileError` (a ``ValueError``) whose one line names the file (``what``) and says what
to do.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Callable
from typing import BinaryIO, NamedTuple

import numpy as np

from .files import open_regular


class ArrayFileError(ValueError):
    """A ``.npy``/``.npz`` file cannot be used; the message names it and says what to do. ``problem`` is the
    message without the fix, for callers that know a better one."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        super().__init__(problem if fix is None else f"{problem}; {fix}")


class NpyHeader(NamedTuple):
    """What a ``.npy`` header declares."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int  # bytes of magic and header before the data

    @property
    def nbytes(self) -> int:
        """The bytes the data takes (an exact integer: a forged shape cannot overflow it)."""
        return math.prod(self.shape) * self.dtype.itemsize


def read_header(fh: BinaryIO, what: str) -> NpyHeader:
    """The header at the start of ``fh`` (positioned just after it on return)."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fh)
        elif version in ((2, 0), (3, 0)):  # 3.0 differs from 2.0 only by utf-8 field names
            shape, fortran, dtype = fmt.read_array_header_2_0(fh)
        else:
            raise ArrayFileError(f"{what} is a .npy file of format version {version[0]}.{version[1]}, which rnndiag "
                                 "does not know", "save it again with np.save")
    except ArrayFileError:
        raise
    except Exception as exc:  # numpy raises many kinds for a bad header (ValueError, SyntaxError, TypeError, ...)
        raise ArrayFileError(f"{what} is not a valid .npy array (its header cannot be read: "
                             f"{str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__})",
                             "save it again with numpy") from None
    if dtype.hasobject:
        raise ArrayFileError(f"{what} holds a pickled object array, which rnndiag never loads", "save numeric arrays")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise ArrayFileError(f"{what} declares an impossible shape {shape}", "the file is corrupt: save it again")
    return NpyHeader(tuple(int(n) for n in shape), dtype, bool(fortran), fh.tell())


def _check_holds(header: NpyHeader, size: int, what: str) -> None:
    """Refuse a header that declares more data than the bytes that follow it."""
    have = size - header.offset
    if header.nbytes > have:
        raise ArrayFileError(f"{what} declares a {header.dtype} array of shape {header.shape} "
                             f"({_bytes(header.nbytes)}) but holds only {_bytes(max(have, 0))} of data",
                             "the file is truncated or corrupt: save it again")


def _bytes(n: int) -> str:
    from .memory import format_bytes  # only on the way to an error message

    return format_bytes(n)


def check_memory(nbytes: int, what: str, fix: str = "pass a smaller file", budget: int | None = None) -> None:
    """Refuse to load ``nbytes`` when the memory available now (or ``budget``) is smaller, with one line naming
    ``what``, both sizes and ``fix``."""
    if budget is None:
        from .memory import available_memory

        budget, source = available_memory()
    else:
        source = "the limit given"
    if nbytes > budget:
        raise ArrayFileError(f"{what} needs {_bytes(nbytes)} of memory but {_bytes(budget)} is available "
                             f"({source})", fix)


def read_npy(path, what: str, *, check: Callable[[NpyHeader], None] | None = None,
             memory_budget: int | None = None) -> np.ndarray:
    """The array in the ``.npy`` file ``path``: a regular file whose header is valid, passes ``check`` (the
    caller's test of shape and dtype), declares no more data than the file holds and no more than the memory
    available (or ``memory_budget`` bytes) -- all before any data is read. An ``.npz`` archive is refused with the
    names of its arrays."""
    with open_regular(path, what, named=True) as fh:
        head = fh.read(6)
        fh.seek(0)
        if head[:2] == b"PK":  # a zip: an .npz archive
            try:
                with zipfile.ZipFile(fh) as zf:
                    names = [n.removesuffix(".npy") for n in zf.namelist()]
            except (zipfile.BadZipFile, OSError, EOFError):
                names = []
            raise ArrayFileError(f"{what} is an .npz archive{f' ({chr(44).join(names[:3])})' if names else ''}; "
                                 "pass one .npy array")
        header = read_header(fh, what)
        if check is not None:
            check(header)
        _check_holds(header, os.fstat(fh.fileno()).st_size, what)
        check_memory(header.nbytes, f"{what} (loading)", budget=memory_budget)
        fh.seek(0)
        try:
            return np.lib.format.read_array(fh, allow_pickle=False)
        except (ValueError, TypeError, OSError, EOFError) as exc:
            raise ArrayFileError(f"{what} cannot be read ({str(exc).strip()[:120] or type(exc).__name__})",
                                 "save it again with np.save") from None


class NpzArchive:
    """An ``.npz`` file opened for reading member by member (use as a context manager).

    Opening reads only the zip directory and each member's ``.npy`` header; a member's data is decompressed by
    :meth:`load` alone, after the caller has checked the names, shapes and total size it needs.
    """

    def __init__(self, path, what: str):
        self.what = what
        self._fh = open_regular(path, what, named=True)
        try:
            self._zip = zipfile.ZipFile(self._fh)
            self.headers: dict[str, NpyHeader] = {}
            self._members: dict[str, zipfile.ZipInfo] = {}
            for info in self._zip.infolist():
                if info.is_dir():
                    continue
                name = info.filename.removesuffix(".npy")
                member = f"{what}, array {name!r}"
                with self._zip.open(info) as zf:
                    header = read_header(zf, member)
                _check_holds(header, info.file_size, member)
                self.headers[name] = header
                self._members[name] = info
        except ArrayFileError:
            self.close()
            raise
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError,
                RuntimeError) as exc:
            self.close()
            raise ArrayFileError(f"{what} cannot be read as an .npz archive ({type(exc).__name__}: "
                                 f"{str(exc).strip()[:120]})", "save it again with np.savez") from None

    def nbytes(self, names=None) -> int:
        """The bytes that loading ``names`` (default: every member) takes."""
        return sum(self.headers[n].nbytes for n in (self.headers if names is None else names))

    def check_memory(self, names=None, *, memory_budget: int | None = None) -> None:
        """Refuse, before decompressing anything, members larger together than the memory available."""
        check_memory(self.nbytes(names), f"{self.what} (loading)", budget=memory_budget)

    def load(self, name: str) -> np.ndarray:
        """Member ``name``'s array (its data decompressed now)."""
        try:
            with self._zip.open(self._members[name]) as zf:
                return np.lib.format.read_array(zf, allow_pickle=False)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, TypeError, RuntimeError) as exc:
            raise ArrayFileError(f"{self.what}: array {name!r} cannot be read ({type(exc).__name__}: "
                                 f"{str(exc).strip()[:120]})", "the file is corrupt: save it again") from None

    def close(self) -> None:
        zf = getattr(self, "_zip", None)
        if zf is not None:
            zf.close()
        self._fh.close()

    def __enter__(self) -> NpzArchive:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
