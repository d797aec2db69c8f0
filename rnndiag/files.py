"""Reading and writing files safely.

Reading: :func:`open_regular` opens a user's file only if it is a regular file (a named pipe, a device or a folder
is refused at once, never waited on), with one line naming the file for every problem.

Writing: every destination is checked before any work (:func:`check_output_file`, :func:`check_out_dir`: the
folder exists, files can be created in it -- tried, not guessed from permission bits -- and every name fits the
file system); then

* :func:`write_atomic` writes a file through a temporary name beside it and ``os.replace`` -- reports, weights and
  training checkpoints all go through it, so an interrupted write leaves the old file or none, never half a file.
* :func:`write_report` assembles a report in a hidden temporary folder beside its destination and renames it into
  place in one step; with ``force`` an existing folder is written into, file by file, each atomically.
* :func:`fresh_folder` creates a new report folder named after the time, exclusively (``os.mkdir``), with a
  suffix where that name is taken: two runs in the same second get two folders.
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

NAME_MAX = 255  # bytes in one path component, where the file system does not say
PATH_MAX = 4096  # bytes in a whole path (Linux)


class PathError(ValueError):
    """A path cannot be used as asked; the message names it and says what to do."""


class OutputError(PathError):
    """The output location cannot be used; the message says why and what to do."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "named pipe"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def _label(what: str, path, named: bool) -> str:
    """``what`` and the path, unless ``what`` names the path already (``named``)."""
    return what if named else f"{what} {_short(path)}"


def check_name_length(path: Path, what: str, error: type[PathError] = PathError, *, named: bool = False) -> None:
    """Refuse a path whose whole length or any one name is longer than the file system takes (``OSError``
    "File name too long" otherwise, at the first open)."""
    label = _label(what, path, named)
    raw = os.fsencode(os.path.abspath(path))
    if len(raw) >= PATH_MAX:
        raise error(f"{label} is {len(raw)} bytes long, more than the file system takes ({PATH_MAX}); "
                    "choose a shorter path")
    limit = NAME_MAX
    anchor = _existing_parent(Path(path))
    if anchor is not None:
        try:
            limit = os.pathconf(anchor, "PC_NAME_MAX")
        except (OSError, ValueError):
            pass
    for part in Path(path).parts:
        if len(os.fsencode(part)) > limit:
            raise error(f"{label} has a name of {len(os.fsencode(part))} bytes, more than the file system takes "
                        f"({limit}); choose a shorter name")


def _short(path) -> str:
    """A path for a message: quoted, and cut in the middle when it is too long to read."""
    text = str(path)
    return repr(text if len(text) <= 120 else f"{text[:60]}...{text[-40:]}")


def open_regular(path, what: str, *, named: bool = False) -> BinaryIO:
    """``path`` opened for binary reading if it is an existing regular file (symlinks followed).

    A named pipe, device, socket or folder is refused without blocking (the file is opened with ``O_NONBLOCK`` and
    checked with ``fstat``, so nothing can swap it in between); ``FileNotFoundError`` / ``PermissionError`` /
    :class:`PathError` otherwise, each one line naming ``what`` and the path (``named``: ``what`` names it).
    """
    path = Path(path)
    label = _label(what, path, named)
    check_name_length(path, label, named=True)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{label} does not exist; check the path") from None
    except PermissionError:
        raise PermissionError(f"{label} cannot be read (permission denied); check its permissions") from None
    except OSError as exc:
        raise PathError(f"{label} cannot be opened ({exc.strerror or type(exc).__name__}); pass a regular "
                        "file") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = _kind(st.st_mode)
            hint = "pass the file inside it" if kind == "folder" else "pass a regular file (copy it to disk first)"
            raise PathError(f"{label} is a {kind}, not a regular file; {hint}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def probe_writable(folder: Path, what: str) -> None:
    """Create and remove a temporary file in ``folder``: the one reliable test that files can be made there
    (permission bits say nothing for root, ``/proc`` or a read-only mount)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".rnndiag-probe-", dir=folder)
    except OSError as exc:
        raise OutputError(f"{what}: no file can be created in folder {_short(folder)} "
                          f"({exc.strerror or type(exc).__name__}); choose another place") from None
    os.close(fd)
    os.unlink(tmp)


def check_output_file(path, what: str, *, force: bool) -> Path:
    """Check, before any work, that ``path`` can become a file: its name fits, it is not a folder or a special
    file, it does not exist (unless ``force``), and its folder exists and takes new files. Touches nothing."""
    if str(path).endswith(("/", os.sep)):
        raise OutputError(f"{what} {_short(path)} ends with '/', which names a folder; give a file name")
    path = Path(path)
    check_name_length(path, what, OutputError)
    system = _system_path(path)
    if system:
        raise OutputError(f"{what} {_short(path)} is in {system}, where rnndiag writes no files"
                          f"{' (for standard output use --json -)' if 'json' in what else ''}; choose a file on disk")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise OutputError(f"{what} {_short(path)} cannot be used ({exc.strerror or type(exc).__name__}); choose "
                          "another path") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise OutputError(f"{what} {_short(path)} is a folder; give a file name inside it")
        if not stat.S_ISREG(st.st_mode):
            raise OutputError(f"{what} {_short(path)} is a {_kind(st.st_mode)}, not a regular file; choose another "
                              "path")
        if not force:
            raise OutputError(f"{what} {_short(path)} exists; pass --force to replace it or choose another path")
    parent = path.parent
    if not parent.is_dir():
        raise OutputError(f"{what} {_short(path)}: folder {_short(parent)} does not exist; create it first")
    probe_writable(parent, f"{what} {_short(path)}")
    return path


def _system_path(path: Path) -> str | None:
    """``/dev``, ``/proc`` or ``/sys`` where ``path`` (symlinks resolved) lies there: no place for a report."""
    resolved = Path(os.path.realpath(path))
    top = resolved.parts[1] if len(resolved.parts) > 1 else ""
    return f"/{top}" if top in ("dev", "proc", "sys") else None


def check_out_dir(out: Path, force: bool) -> None:
    """Raise :class:`OutputError` if ``out`` cannot receive a report. Creates nothing that stays."""
    check_name_length(out, "output folder", OutputError)
    if out.is_symlink() and not out.is_dir():
        raise OutputError(f"output folder {_short(out)} is a symbolic link to no folder; choose another --out")
    if out.exists() and not out.is_dir():
        kind = "file" if out.is_file() else _kind(out.stat().st_mode)
        raise OutputError(f"output path {_short(out)} is a {kind}, not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputError(f"output folder {_short(out)} exists and is not empty; pass --force to write into it "
                          "or choose another --out")
    parent = out if out.is_dir() else _existing_parent(out)
    if parent is None:
        raise OutputError(f"output folder {_short(out)} cannot be created (a part of its path is a file); choose "
                          "another --out")
    probe_writable(parent, f"output folder {_short(out)}")


def same_path(a, b) -> bool:
    """Whether two paths name the same place (absolute, symlinks resolved; neither need exist)."""
    return os.path.realpath(a) == os.path.realpath(b)


def _existing_parent(p: Path) -> Path | None:
    for parent in p.absolute().parents:
        if parent.exists():
            return parent if parent.is_dir() else None
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: Path, data: bytes | Callable[[BinaryIO], None], *, mode: int | None = None) -> Path:
    """Write ``path`` atomically: ``data`` (bytes, or a function that writes into the open binary file) goes to a
    temporary file in the same folder, which then replaces ``path``. The file gets the mode a plain ``open``
    would give it (``mkstemp`` makes 0600), or ``mode``. A failure (a full disk, "File too large") removes the
    temporary file and leaves the old ``path`` as it was. Returns ``path``."""
    path = Path(path)
    if path.is_symlink():  # replace the file the link points to, never the link itself
        path = Path(os.path.realpath(path))
    system = _system_path(path)
    if system:  # never replace a device node or a kernel file, whoever calls (the CLI refuses these earlier)
        raise OutputError(f"{_short(path)} is in {system}, where rnndiag writes no files; choose a file on disk")
    if path.exists() and not path.is_file():
        raise OutputError(f"{_short(path)} exists and is not a regular file; choose another path")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:40]}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, (0o666 & ~_umask()) if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_report(out: Path, files: dict[str, bytes], force: bool) -> Path:
    """Write ``files`` (name -> bytes) into the folder ``out`` and return it.

    A new ``out`` gets the whole report in one step: it is created here exclusively (``os.mkdir``), the files are
    written into a hidden temporary folder beside it, which then replaces it. An existing folder (empty, or with
    ``force``) keeps its owner and mode and is written into file by file, each atomically. A symbolic link to a
    folder is written through.
    """
    out = Path(out)
    check_out_dir(out, force)
    if out.is_dir():
        return _write_into(out, files)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(out)  # exclusive: a folder someone else made meanwhile is theirs
    except FileExistsError:
        raise OutputError(f"output folder {_short(out)} was created by another process meanwhile; run again or "
                          "choose another --out") from None
    return _replace_new_folder(out, files)


def write_new_report(out: Path, files: dict[str, bytes]) -> Path:
    """Write ``files`` into ``out``, an empty folder this process has just made (:func:`fresh_folder`): the whole
    report appears in one step."""
    return _replace_new_folder(Path(out), files)


def _write_into(out: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        write_atomic(out / name, data)
    return out


def _replace_new_folder(out: Path, files: dict[str, bytes]) -> Path:
    """Stage ``files`` beside ``out`` (an empty folder of ours) and rename the stage over it; on failure ``out`` is
    removed again."""
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name[:40]}.", suffix=".tmp", dir=out.parent))
    try:
        for name, data in files.items():
            (staging / name).write_bytes(data)
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700
        os.rename(staging, out)  # replaces the empty folder in one step; fails if anything was written into it
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        _rmdir_quietly(out)
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise OutputError(f"output folder {_short(out)} was written into by another process meanwhile; run "
                              "again or choose another --out") from None
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _rmdir_quietly(out)
        raise
    return out


def _rmdir_quietly(folder: Path) -> None:
    try:
        folder.rmdir()  # only if still empty
    except OSError:
        pass


def fresh_folder(root: Path, name: str) -> Path:
    """Create and return a new, empty folder ``root/<name>-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``, ... appended where
    that name is taken). Created with ``os.mkdir``, which fails if the folder exists: two runs in the same second
    can never share a folder, and a new report never lands in an earlier one's."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = root / f"{name}-{stamp}"
    out, n = base, 2
    while True:
        try:
            os.mkdir(out)
            return out
        except FileExistsError:
            out = base.with_name(f"{base.name}-{n}")
            n += 1
