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


def run_torch_example(name: str, reports: Path) -> str:
    """A PyTorch example with ``--quick --reports REPORTS``; its stdout (it must exit 0)."""
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), "--quick", "--reports", str(reports)],
                          capture_output=True, text=True, timeout=300, cwd=EXAMPLES.parent,
                          env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    assert proc.returncode == 0, f"{name} exited with {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_watch_pytorch(tmp_path):
    pytest.importorskip("torch", reason="the watch example trains in PyTorch")
    out = run_torch_example("watch_pytorch.py", tmp_path)
    assert "captures taken: 11 at iterations 0, 1, 2, 3, 4, 6, 8, 10, 20, 30, 40 " in out
    assert re.search(r"loop time with watch: [\d.]+ s for 41 iterations", out)
    assert re.search(r"latest verdict \(rnn, iteration 40\): (HEALTHY|VANISHING|EXPLODING)", out)
    assert "non-finite gradients: 0" in out
    (folder,) = tmp_path.glob("watch-quick-*")
    assert len(list((folder / "run" / "captures").glob("it*.npz"))) == 11
    assert len((folder / "run" / "iterations.jsonl").read_text().splitlines()) == 41
    metrics = json.loads((folder / "report.json").read_text())
    assert metrics["kind"] == "run report" and metrics["iterations"]["count"] == 41
    assert [c["iteration"] for c in metrics["captures"]] == [0, 1, 2, 3, 4, 6, 8, 10, 20, 30, 40]
    assert metrics["nonfinite"] == [] and metrics["latest"]["rnn"]["iteration"] == 40
    assert (folder / "report" / "metrics.json").is_file()
    assert f"report: {folder / 'report'}" in out


def test_watch_exploding(tmp_path):
    pytest.importorskip("torch", reason="the watch example trains in PyTorch")
    out = run_torch_example("watch_exploding.py", tmp_path)
    warned = re.search(r"watch warned: rnndiag\.watch: the gradient of rnn\.\w+ is not finite at iteration 25; the "
                       r"replay finds the gradient of rnn layer 0 \(forward\) non-finite first at time step (\d+)", out)
    assert warned, out
    step = int(warned.group(1))
    assert 0 <= step < 299
    event = re.search(r"iterations\.jsonl: iteration 25, first parameter rnn\.\w+, module rnn, layer 0, direction "
                      r"forward, time step (\d+) \(gradient\), capture captures/it00000025\.npz", out)
    assert event and int(event.group(1)) == step, out
    assert re.search(r"iteration 25: loss [\d.]+ \(finite", out)
    (folder,) = tmp_path.glob("watch-exploding-quick-*")
    captures = sorted(p.name for p in (folder / "run" / "captures").glob("it*.npz"))
    assert captures == ["it00000000.npz", "it00000010.npz", "it00000020.npz", "it00000025.npz"]
    analysis = json.loads((folder / "analyze.json").read_text())
    assert analysis["verdict"] == "exploding" and analysis["global_grad_norm"] > 3.4e38
    assert analysis["capture"]["iteration"] == 25
    run = json.loads((folder / "report.json").read_text())
    (nonfinite,) = run["nonfinite"]
    assert nonfinite["iteration"] == 25 and nonfinite["step"] == step and nonfinite["layer"] == 0
    assert run["latest"]["rnn"] == {**run["latest"]["rnn"], "iteration": 25, "verdict": "exploding"}
    assert "float64 replay of iteration 25: EXPLODING" in out


def test_phase_diagram(tmp_path):
    proc = subprocess.run([sys.executable, str(EXAMPLES / "phase_diagram.py"), "--quick", "--reports", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=EXAMPLES.parent)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert "the Gaussian case's top exponent changes sign between g = 1.0 and 1.5" in proc.stdout
    metrics = json.loads(next(tmp_path.glob("phase-*/zero-input/metrics.json")).read_text())
    assert metrics["counts"]["done"] == 20 and metrics["mean_field"] is not None
