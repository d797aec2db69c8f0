"""The one atomic writer and the one fresh-folder helper that reports, weights and checkpoints share, and the one
number formatter of every table."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from _cli_helpers import hidden_temp_entries

from rnndiag.files import fresh_folder, write_atomic
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


def test_fresh_folder_never_names_an_existing_folder(tmp_path):
    first = fresh_folder(tmp_path, "lstm")
    assert first.parent == tmp_path and first.name.startswith("lstm-") and not first.exists()
    first.mkdir()
    second = fresh_folder(tmp_path, "lstm")
    if second.name[: len(first.name)] == first.name:  # the same second: a suffix
        assert second.name == f"{first.name}-2"
    assert second != first and not second.exists()
    assert isinstance(second, Path)


@pytest.mark.parametrize(("value", "spec", "shown"), [
    (0.123456, ".3g", "0.123"), (-1.5, "+.4f", "-1.5000"), (None, ".3g", "n/a"), (math.nan, ".3g", "n/a"),
    (-math.inf, "+.4f", "n/a"), (math.inf, ".3g", "n/a"), (3, ".3g", "3"), (np.float32(0.5), ".2f", "0.50"),
    (np.float32("nan"), ".3g", "n/a"),
])
def test_fmt_num(value, spec, shown):
    assert fmt_num(value, spec) == shown
