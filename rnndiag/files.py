"""Writing files safely: every file atomically, a report folder in one step, never over an earlier report.

* :func:`write_atomic` writes a file through a temporary name beside it and ``os.replace`` -- reports, weights and
  training checkpoints all go through it, so an interrupted write leaves the old file or none, never half a file.
* :func:`write_report` assembles a report in a hidden temporary folder beside its destination and renames it into
  place in one step; with ``force`` an existing folder is written into, file by file, each atomically.
* :func:`fresh_folder` names a report folder after the time, with a suffix where that name is taken.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


class OutputError(ValueError):
    """The output location cannot be used; the message says why and what to do."""


def check_out_dir(out: Path, force: bool) -> None:
    """Raise :class:`OutputError` if ``out`` cannot receive a report. Touches nothing."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path {str(out)!r} is a file, not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputError(f"output folder {str(out)!r} exists and is not empty; pass --force to write into it "
                          "or choose another --out")
    parent = out if out.is_dir() else _existing_parent(out)
    if parent is None or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {str(out)!r} is not writable (no write permission on "
                          f"{str(parent) if parent else 'its parent'}); choose another --out")


def _existing_parent(p: Path) -> Path | None:
    for parent in p.absolute().parents:
        if parent.exists():
            return parent if parent.is_dir() else None
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes | Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` atomically: ``data`` (bytes, or a function that writes into the open binary file) goes to a
    temporary file in the same folder, which then replaces ``path``. The file gets the mode a plain ``open``
    would give it (``mkstemp`` makes 0600). Returns ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_report(out: Path, files: dict[str, bytes], force: bool) -> list[Path]:
    """Write ``files`` (name -> bytes) into ``out``; returns the paths written."""
    check_out_dir(out, force)
    if out.is_dir():  # --force into an existing folder (or an empty one): file by file, each atomic
        return [write_atomic(out / name, data) for name, data in files.items()]
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700
        os.rename(staging, out)  # atomic; fails if someone created ``out`` meanwhile
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [out / name for name in files]


def fresh_folder(root: Path, name: str) -> Path:
    """``root/<name>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``, ... appended where that folder exists already: a
    new report never lands in an earlier one's folder."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{name}-{stamp}"
    out, n = base, 2
    while out.exists():
        out = base.with_name(f"{base.name}-{n}")
        n += 1
    return out
