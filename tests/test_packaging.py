"""What a normal install (a wheel, not ``pip install -e``) ships: every file of the package, data included.

``.ci/run`` also installs the wheel into a second fresh venv and runs ``rnndiag analyze --task text`` from a
folder outside the checkout; this test is the quick local half of that check.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _package_files() -> set[str]:
    """Every file under rnndiag/ that belongs to the source package (not caches)."""
    root = REPO / "rnndiag"
    return {str(p.relative_to(REPO).as_posix()) for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


@pytest.mark.slow
def test_wheel_ships_every_package_file(tmp_path):
    """Data read through importlib.resources (the text task's text, the report templates) is in the wheel."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copytree(REPO / "rnndiag", src / "rnndiag", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                          str(src)], capture_output=True, text=True, timeout=600, check=False)
    if res.returncode != 0:
        pytest.skip(f"could not build a wheel here (no build backend reachable?): {res.stderr.strip()[-300:]}")
    (wheel,) = (tmp_path / "dist").glob("rnndiag-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = set(zf.namelist())
    missing = sorted(_package_files() - shipped)
    assert not missing, f"the wheel lacks {missing}: add them to [tool.setuptools.package-data] in pyproject.toml"
    assert "rnndiag/data/gettysburg.txt" in shipped


def test_text_task_reads_package_data_only():
    """The text comes from the installed package, not from the checkout's examples/ folder."""
    from rnndiag.tasks import load_text

    assert (REPO / "rnndiag" / "data" / "gettysburg.txt").read_text("utf-8") == load_text()
    assert not (REPO / "examples" / "data" / "gettysburg.txt").exists()
