"""Writing a report folder safely: refuse to overwrite, write every file atomically.

A report is assembled in a hidden temporary folder beside its destination and renamed into place in one step, so
an interrupted run leaves no half-written report. With ``force`` an existing folder is written into, each file
through a temporary name and ``os.replace``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


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


def write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; reports are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_report(out: Path, files: dict[str, bytes], force: bool) -> list[Path]:
    """Write ``files`` (name -> bytes) into ``out``; returns the paths written."""
    check_out_dir(out, force)
    if out.is_dir():  # --force into an existing folder (or an empty one): file by file, each atomic
        paths = []
        for name, data in files.items():
            write_atomic(out / name, data)
            paths.append(out / name)
        return paths
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
