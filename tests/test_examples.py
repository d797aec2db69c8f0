"""The scripts in examples/ run, exit 0 and print what they promise."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=60,
                          cwd=EXAMPLES.parent)
    assert proc.returncode == 0, f"{name} exited with {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def grab(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"no line matching {pattern!r} in:\n{text}"
    return float(match.group(1))


def test_tutorial_rnn():
    out = run_example("tutorial_rnn.py")
    number = r"([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"
    assert grab(r"gradient check: max relative error " + number, out) < 1e-6
    assert grab(r"final loss: " + number, out) < 1e-2
    # the article's shape bug is shown with numpy's real message
    assert "ValueError: shapes (4,3) and (1,) not aligned" in out or "ValueError: matmul" in out


def test_capture_pytorch(tmp_path):
    pytest.importorskip("torch", reason="the capture example trains in PyTorch")
    proc = subprocess.run([sys.executable, str(EXAMPLES / "capture_pytorch.py"), "--quick", "--reports",
                           str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=EXAMPLES.parent,
                          env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    out = proc.stdout
    assert "iteration 0: looked at weights at initialization; the user's input" in out
    assert "iteration 40: looked at trained weights; the user's input" in out
    reports = sorted(tmp_path.glob("capture-*/report-*.json"))
    assert len(reports) == 2
    for path in reports:
        metrics = json.loads(path.read_text())
        assert metrics["input_source"] == "user" and metrics["loss_source"] == "user"
        assert metrics["dependency_length"] == 20 and "--capture" in metrics["command"]
