"""The one atomic writer and the one fresh-folder helper that reports, weights and checkpoints share, and the one
number formatter of every table."""

from __future__ import annotations

import datetime as dt
import errno
import math
import os
from pathlib import Path

import numpy as np
import pytest
from _cli_helpers import freeze_report_clock, hidden_temp_entries

from rnndiag.files import (
    OutputError,
    PathError,
    check_out_dir,
    check_output_file,
    fresh_folder,
    open_regular,
    write_atomic,
    write_new_report,
    write_report,
)
from rnndiag.render import fmt_num


@pytest.mark.parametrize("data", [b"hello", lambda fh: fh.write(b"hello")])
def test_write_atomic_writes_bytes_or_through_a_writer(tmp_path, data):
    path = write_atomic(tmp_path / "f.bin", data)
    assert path == tmp_path / "f.bin" and path.read_bytes() == b"hello"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open() would make it, not mkstemp's 0600


def test_write_atomic_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "w.npz"
    path.write_bytes(b"old")

    def half_then_fail(fh):
        fh.write(b"new, half written")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, half_then_fail)
    assert path.read_bytes() == b"old"
    assert hidden_temp_entries(tmp_path) == []


def test_write_atomic_through_numpy(tmp_path):
    path = write_atomic(tmp_path / "a.npz", lambda fh: np.savez(fh, x=np.arange(3)))
    with np.load(path) as data:
        np.testing.assert_array_equal(data["x"], np.arange(3))


def test_fresh_folder_creates_a_new_folder_exclusively(tmp_path):
    first = fresh_folder(tmp_path, "lstm")
    assert first.parent == tmp_path and first.name.startswith("lstm-") and first.is_dir()
    assert not any(first.iterdir())
    second = fresh_folder(tmp_path, "lstm")
    if second.name[: len(first.name)] == first.name:  # the same second: a suffix
        assert second.name == f"{first.name}-2"
    assert second != first and second.is_dir()


def test_fresh_folder_takes_a_suffix_when_another_run_holds_the_name(tmp_path, monkeypatch):
    """Two runs finishing in the same second: os.mkdir is the test, never exists()-then-create."""
    freeze_report_clock(monkeypatch, dt.datetime(2026, 12, 6, 3, 0, 0))
    made = [fresh_folder(tmp_path, "gru") for _ in range(3)]
    assert [p.name for p in made] == ["gru-20261206-030000", "gru-20261206-030000-2", "gru-20261206-030000-3"]


def test_a_new_report_folder_is_filled_in_one_step(tmp_path):
    out = fresh_folder(tmp_path, "rnn")
    assert write_new_report(out, {"a.txt": b"1", "b.txt": b"2"}) == out
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt"]
    assert hidden_temp_entries(tmp_path) == []
    with pytest.raises(OutputError, match="not empty"):
        write_report(out, {"a.txt": b"3"}, force=False)


def test_open_regular_refuses_a_named_pipe_without_waiting(tmp_path):
    fifo = tmp_path / "w.npz"
    os.mkfifo(fifo)
    with pytest.raises(PathError, match="named pipe, not a regular file"):
        open_regular(fifo, "weights file")
    with pytest.raises(PathError, match="folder, not a regular file"):
        open_regular(tmp_path, "input file")
    with pytest.raises(PathError, match="character device"):
        open_regular("/dev/zero", "input file")
    with pytest.raises(FileNotFoundError, match=r"input file .* does not exist"):
        open_regular(tmp_path / "nope.npy", "input file")


@pytest.mark.parametrize("make", [lambda p: p / ("x" * 300 + ".npz"), lambda p: p / "/".join(["d" * 200] * 25)])
def test_too_long_names_are_one_clear_error(tmp_path, make):
    path = make(tmp_path)
    with pytest.raises(PathError, match="choose a shorter"):
        open_regular(path, "weights file")
    with pytest.raises(OutputError, match="choose a shorter"):
        check_output_file(path, "--json file", force=False)
    with pytest.raises(OutputError, match="choose a shorter"):
        check_out_dir(path, force=False)


def test_a_folder_where_no_file_can_be_made_is_found_by_trying(tmp_path, monkeypatch):
    """Permission bits say nothing for root or a read-only mount: the check creates (and removes) a file."""
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr("rnndiag.files.tempfile.mkstemp", read_only)
    with pytest.raises(OutputError, match=r"no file can be created .*Read-only file system"):
        check_output_file(tmp_path / "m.json", "--json file", force=False)
    with pytest.raises(OutputError, match="no file can be created"):
        check_out_dir(tmp_path / "report", force=False)


def test_output_through_a_symlink_writes_its_target_and_keeps_the_link(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_atomic(check_output_file(link, "--json file", force=True), b"new")
    assert link.is_symlink() and target.read_text() == "new"


@pytest.mark.parametrize("target", ["/dev/full", "/dev/null", "/proc/self/rnndiag-x"])
def test_write_atomic_never_replaces_a_device_or_kernel_file(target):
    """The library's own writer refuses them too (train(checkpoint="/dev/full") once replaced the device node)."""
    before = os.stat(target).st_mode if os.path.exists(target) else None
    with pytest.raises(OutputError, match="writes no files"):
        write_atomic(Path(target), b"x")
    assert (os.stat(target).st_mode if os.path.exists(target) else None) == before


def test_write_atomic_refuses_a_folder_or_pipe_in_the_way(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    for name in ("pipe", "."):
        with pytest.raises(OutputError, match="not a regular file"):
            write_atomic(tmp_path / name, b"x")


def test_write_report_keeps_an_existing_empty_folder(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    out.chmod(0o2750)
    inode = out.stat().st_ino
    write_report(out, {"metrics.json": b"{}"}, force=False)
    assert out.stat().st_ino == inode and out.stat().st_mode & 0o7777 == 0o2750


def test_check_output_file_refuses_before_any_work(tmp_path):
    with pytest.raises(OutputError, match="is a folder"):
        check_output_file(tmp_path, "--checkpoint", force=True)
    with pytest.raises(OutputError, match="does not exist; create it first"):
        check_output_file(tmp_path / "missing" / "run.npz", "--checkpoint", force=False)
    with pytest.raises(OutputError, match="is in /proc"):
        check_output_file(Path("/proc/rnndiag-run.npz"), "--checkpoint", force=False)
    with pytest.raises(OutputError, match="ends with '/'"):
        check_output_file(f"{tmp_path}/new/", "--checkpoint", force=False)
    (tmp_path / "old.json").write_text("{}")
    with pytest.raises(OutputError, match="exists; pass --force"):
        check_output_file(tmp_path / "old.json", "--json file", force=False)
    assert check_output_file(tmp_path / "old.json", "--json file", force=True) == tmp_path / "old.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]  # the probe left nothing


@pytest.mark.parametrize(("value", "spec", "shown"), [
    (0.123456, ".3g", "0.123"), (-1.5, "+.4f", "-1.5000"), (None, ".3g", "n/a"), (math.nan, ".3g", "n/a"),
    (-math.inf, "+.4f", "n/a"), (math.inf, ".3g", "n/a"), (3, ".3g", "3"), (np.float32(0.5), ".2f", "0.50"),
    (np.float32("nan"), ".3g", "n/a"),
])
def test_fmt_num(value, spec, shown):
    assert fmt_num(value, spec) == shown
