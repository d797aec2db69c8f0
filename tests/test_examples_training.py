"""The training examples run in --quick mode, exit 0, print their key claims and write their reports.

Each script is run as a subprocess (``sys.executable``) with ``--reports`` pointing into ``tmp_path``, so nothing is
written to the repository's ``reports/``. The quick runs are too short for anything to learn; they check the wiring
and the claims that hold at any size (the verdicts at initialization, the exploding run's divergence, the
recommendation, the cosine of value vs norm clipping).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_quick(name: str, reports: Path) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / name), "--quick", "--reports", str(reports)],
                          capture_output=True, text=True, timeout=120, cwd=EXAMPLES.parent)
    assert proc.returncode == 0, f"{name} exited with {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def report_dir(out: str, prefix: str) -> Path:
    m = re.search(r"^report: (.+)$", out, re.MULTILINE)
    assert m, f"no 'report:' line in:\n{out}"
    path = Path(m.group(1).strip())
    assert path.is_dir() and path.name.startswith(prefix), path
    return path


def test_adding_problem_quick(tmp_path):
    out = run_quick("adding_problem.py", tmp_path)
    # (a) the tutorial's 0.01*randn tanh RNN: the gradient vanishes within a few steps
    m = re.search(r"^\[rnn_tutorial\] .*verdict at init: vanishing \(horizon (\d+) steps", out, re.MULTILINE)
    assert m, out
    assert int(m.group(1)) < 10
    # gated cells vanish at initialization too (low confidence); identity / orthogonal tanh RNNs do not
    for key in ("gru", "lstm"):
        assert re.search(rf"^\[{key}\] .*verdict at init: vanishing", out, re.MULTILINE), out
    for key in ("rnn_identity", "rnn_orthogonal"):
        assert re.search(rf"^\[{key}\] .*verdict at init: healthy", out, re.MULTILINE), out
    for key in ("rnn_tutorial", "gru", "lstm", "rnn_identity", "rnn_orthogonal"):
        assert re.search(rf"^\[{key}\] verdict after training: ", out, re.MULTILINE), out
        assert re.search(rf"^\[{key}\] wall time: [\d.]+ s$", out, re.MULTILINE), out
    assert "total wall time:" in out
    rep = report_dir(out, "adding_problem-quick-")
    metrics = json.loads((rep / "metrics.json").read_text())
    assert [r["key"] for r in metrics["runs"]] == ["rnn_tutorial", "gru", "lstm", "rnn_identity", "rnn_orthogonal"]
    assert metrics["runs"][0]["at_init"]["verdict"] == "vanishing"
    assert all(r["after_training"] is not None and r["iterations"] > 0 for r in metrics["runs"])
    assert (rep / "test_mse.png").stat().st_size > 0 and (rep / "grad_flow.png").stat().st_size > 0


@pytest.mark.slow  # 5-12 s, depending on the machine's load
def test_exploding_quick(tmp_path):
    out = run_quick("exploding.py", tmp_path)
    assert re.search(r"^seed 0: verdict at init: exploding", out, re.MULTILINE), out
    assert re.search(r"^seed 0: none: diverged \(iteration \d+: ", out, re.MULTILINE), out
    assert re.search(r"^seed 0: recommended: global_norm", out, re.MULTILINE), out
    assert re.search(r"^control \(gain 1.0, seed 0\): verdict at init: healthy", out, re.MULTILINE), out
    assert "claim: without clipping training diverges or blows up, and global_norm is recommended in 1/1 seeds" in out
    rep = report_dir(out, "exploding-quick-")
    summary = json.loads((rep / "summary.json").read_text())
    assert summary["seeds"]["0"]["recommended"].startswith("global_norm")
    clip = json.loads((rep / "seed0-clip" / "metrics.json").read_text())  # written by `rnndiag clip`
    assert clip["command"].startswith("rnndiag clip") and clip["recommended"].startswith("global_norm")


def test_seed_tutorial_clipping_quick(tmp_path):
    out = run_quick("seed_tutorial_clipping.py", tmp_path)
    assert re.search(r"^seed 0: verdict at init: exploding", out, re.MULTILINE), out
    number = r"([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)"
    # value clipping turns the gradient when it fires; global-norm clipping never does
    m = re.search(rf"^seed 0: value:5 \[.*\]: .*clipped [\d.]+% \((\d+) iterations\), mean cosine {number}", out,
                  re.MULTILINE)
    assert m, out
    assert int(m.group(1)) > 0 and float(m.group(2)) < 0.99
    for m in re.finditer(r"^seed 0: global_norm:\S+ \[.*\]: .*clipped [\d.]+% \((\d+) iterations\), mean cosine "
                         r"(\S+),", out, re.MULTILINE):
        assert m.group(2) == ("n/a" if m.group(1) == "0" else "1.000"), m.group(0)
    assert re.search(r"^seed 0: recommended: ", out, re.MULTILINE), out
    rep = report_dir(out, "seed_tutorial_clipping-quick-")
    assert (rep / "summary.json").is_file() and (rep / "seed0" / "metrics.json").is_file()
