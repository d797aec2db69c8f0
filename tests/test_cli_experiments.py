"""`rnndiag init`, `rnndiag clip` and `rnndiag train`: reports, JSON, and the shared one-line error handling."""

from __future__ import annotations

import base64
import json
import re

import pytest
from _cli_helpers import (
    assert_clean_exit,
    assert_one_line_error,
    invoke,
    png_info,
    run_cli,
    snapshot,
    strict_json,
)

import rnndiag

TINY = ["--hidden-size", "6", "--seq-len", "12", "--batch-size", "4"]


def _report_pngs_ok(html: str) -> int:
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    for data in imgs:
        w, h = png_info(base64.b64decode(data))
        assert w > 0 and h > 0
    return len(imgs)


def test_init_compares_schemes_and_ranks_them(tmp_path):
    out = tmp_path / "r"
    res = invoke(["init", *TINY, "--schemes", "tutorial,orthogonal,identity", "--out", out])
    assert_clean_exit(res, "init")
    m = strict_json((out / "metrics.json").read_text())
    assert m["command"].startswith("rnndiag init")
    assert sorted(m["ranking"]) == ["identity", "orthogonal", "tutorial"]
    by_scheme = {r["scheme"]: r for r in m["results"]}
    assert by_scheme["tutorial"]["at_init"]["verdict"] == "vanishing"
    assert by_scheme["tutorial"]["at_init"]["horizon_steps"] < 12
    # healthy/longer-horizon schemes rank before the tutorial's vanishing one
    assert m["ranking"].index("tutorial") == 2
    html = (out / "report.html").read_text()
    assert _report_pngs_ok(html) >= 2
    assert (out / "horizon_at_init.png").exists()


def test_init_with_training_reports_losses_and_notes(tmp_path):
    out = tmp_path / "r"
    res = invoke(["init", *TINY, "--cell", "gru", "--schemes", "pytorch,orthogonal", "--train-steps", "5",
                  "--out", out, "--format", "json"])
    assert_clean_exit(res, "init --train-steps")
    m = strict_json((out / "metrics.json").read_text())
    for r in m["results"]:
        assert r["training"]["steps"] == 5
        assert len(r["training"]["loss"]) == 5
        assert r["after_training"]["verdict"] in ("vanishing", "exploding", "healthy")
    assert "no scheme learned" in res.stdout  # 5 steps cannot learn the adding problem: the headline says so


def test_clip_compares_strategies_and_recommends(tmp_path):
    out = tmp_path / "r"
    res = invoke(["clip", *TINY, "--strategies", "none,global_norm:1,value:0.1", "--steps", "8", "--out", out])
    assert_clean_exit(res, "clip")
    m = strict_json((out / "metrics.json").read_text())
    labels = [r["label"] for r in m["runs"]]
    assert labels == ["none", "global_norm:1", "value:0.1"]
    assert m["recommended"] in labels
    assert m["reasons"]
    value = m["runs"][2]
    assert value["fraction_clipped"] > 0 and value["mean_cosine_clipped_vs_unclipped"] < 1.0
    assert m["runs"][0]["fraction_clipped"] == 0
    assert _report_pngs_ok((out / "report.html").read_text()) == 3


def test_train_writes_history_heatmap_and_resumes(tmp_path):
    out1, out2, ck = tmp_path / "a", tmp_path / "b", tmp_path / "run.npz"
    res = invoke(["train", *TINY, "--cell", "lstm", "--forget-bias", "1", "--steps", "10", "--checkpoint", ck,
                  "--checkpoint-every", "5", "--out", out1])
    assert_clean_exit(res, "train")
    m = strict_json((out1 / "metrics.json").read_text())
    assert len(m["history"]["loss"]) == 10
    assert m["history"]["diag"][0]["iteration"] == 0
    for name in ("loss", "grad_norm_over_training", "grad_norm_heatmap", "spectral_radius_over_training"):
        assert (out1 / f"{name}.png").exists(), name
    # an existing checkpoint is not started over silently
    again = invoke(["train", *TINY, "--cell", "lstm", "--forget-bias", "1", "--steps", "10", "--checkpoint", ck,
                    "--out", tmp_path / "c"])
    assert_one_line_error(again)
    assert not (tmp_path / "c").exists()
    # resuming a finished run adds nothing
    res2 = invoke(["train", *TINY, "--cell", "lstm", "--forget-bias", "1", "--steps", "10", "--checkpoint", ck,
                   "--resume", "--out", out2, "--format", "json"])
    assert_clean_exit(res2, "resume")
    assert json.loads((out2 / "metrics.json").read_text())["history"]["loss"] == m["history"]["loss"]


@pytest.mark.parametrize("args", [
    ["init", "--schemes", "bogus"],
    ["init", "--schemes", ","],
    ["init", "--hidden-size", "0"],
    ["init", "--seq-len", "1"],
    ["init", "--cell", "transformer"],
    ["init", "--train-steps", "-3"],
    ["clip", "--strategies", "global_norm"],
    ["clip", "--strategies", "sideways:1"],
    ["clip", "--strategies", "value:-5"],
    ["clip", "--strategies", "autoclip:200"],
    ["clip", "--steps", "0"],
    ["clip", "--lr", "0"],
    ["train", "--clip", "none,value:1"],
    ["train", "--resume"],
    ["train", "--optimizer", "rmsprop"],
    ["train", "--forget-bias", "1"],
    ["init", "--format", "html,pdf"],
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args):
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    res = invoke([args[0], *TINY, *args[1:], "--out", out])  # the bad option last, so it wins
    assert_one_line_error(res)
    assert snapshot(tmp_path) == before


def test_output_folder_rules_are_shared(tmp_path):
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    for cmd in (["init", "--schemes", "tutorial"], ["clip", "--strategies", "none", "--steps", "2"],
                ["train", "--steps", "2"]):
        res = invoke([*cmd, *TINY, "--out", out])
        assert_one_line_error(res)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    res = invoke(["init", "--schemes", "tutorial", *TINY, "--out", tmp_path / "f" / "x", "--json", "-",
                  "--format", "none", "-q"])
    assert_clean_exit(res)
    assert strict_json(res.stdout)["command"].startswith("rnndiag init")
    assert not (tmp_path / "f").exists()


def test_commands_have_help_with_examples(tmp_path):
    for cmd in ("init", "clip", "train"):
        res = invoke([cmd, "--help"])
        assert_clean_exit(res)
        assert "Examples" in res.stdout


def test_train_divergence_exits_nonzero_with_the_reason(tmp_path):
    # a relu RNN with identity init at gain 3 and a large learning rate overflows
    out = tmp_path / "r"
    res = run_cli(["train", "--cell", "rnn_relu", "--init", "identity", "--gain", "3", "--hidden-size", "8",
                   "--seq-len", "60", "--batch-size", "4", "--steps", "20", "--optimizer", "sgd", "--lr", "10",
                   "--clip", "none", "--out", out, "--format", "json"], cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["history"]["stopped"] and "iteration" in m["history"]["stopped"]
    assert "stopped: iteration" in res.stdout


def test_text_task_trains_below_its_unigram_baseline(tmp_path):
    """Character-level language modelling on the shipped public-domain text: a GRU beats the memoryless
    (unigram) baseline within a few dozen steps."""
    out = tmp_path / "r"
    res = invoke(["train", "--task", "text", "--cell", "gru", "--hidden-size", "32", "--seq-len", "40",
                  "--batch-size", "16", "--steps", "60", "--lr", "0.01", "--out", out, "--format", "json"])
    assert_clean_exit(res, "train --task text")
    m = strict_json((out / "metrics.json").read_text())
    assert m["test_loss"] < m["baseline"]
    res = invoke(["analyze", "--task", "text", "--cell", "lstm", "--hidden-size", "8", "--seq-len", "30",
                  "--batch-size", "4", "--json", "-", "--format", "none", "-q"])
    assert_clean_exit(res, "analyze --task text")
    assert strict_json(res.stdout)["loss"].startswith("text task loss")


def test_clip_and_train_start_from_a_weights_file(tmp_path):
    model = rnndiag.init_model("gru", 2, 6, seed=4)
    path = tmp_path / "w.npz"
    rnndiag.save_weights(model, path)
    out = tmp_path / "t"
    res = invoke(["train", "--weights", path, "--seq-len", "12", "--batch-size", "4", "--steps", "3", "--out", out,
                  "--format", "json"])
    assert_clean_exit(res, "train --weights")
    m = strict_json((out / "metrics.json").read_text())
    assert m["cell"] == "gru" and "--weights" in m["command"]
    res = invoke(["clip", "--weights", path, "--seq-len", "12", "--batch-size", "4", "--steps", "3",
                  "--strategies", "none", "--out", tmp_path / "c", "--format", "json"])
    assert_clean_exit(res, "clip --weights")
    # sizes belong to the file; a task whose input does not fit the weights is refused in one line
    for bad in (["--hidden-size", "9"], ["--task", "copy"], ["--init", "orthogonal"]):
        res = invoke(["train", "--weights", path, "--seq-len", "12", "--steps", "2", *bad,
                      "--out", tmp_path / "x"])
        assert_one_line_error(res)
    res = invoke(["train", "--weights", tmp_path / "missing.npz", "--out", tmp_path / "y"])
    assert_one_line_error(res)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# -- one problem for every command -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("cell", "scheme", "gain", "task"), [
    ("rnn_tanh", "tutorial", None, "adding"),
    ("rnn_tanh", "orthogonal", "1.3", "sine"),
    ("lstm", "pytorch", None, "copy"),
    ("gru", "xavier_uniform", "0.8", "text"),
])
def test_analyze_and_init_diagnose_the_same_problem(cell, scheme, gain, task):
    """The same flags give bit-identical numbers through ``analyze --task`` and through ``init``'s row for that
    scheme: both see the seed's diagnosis batch, its seeded readout and the task's own loss."""
    flags = ["--cell", cell, "--hidden-size", "6", "--seq-len", "12", "--batch-size", "4", "--seed", "3", "--task",
             task, *(["--gain", gain] if gain else [])]
    out = ["--format", "none", "--json", "-", "--quiet"]
    res = invoke(["analyze", *flags, "--init", scheme, *out])
    assert_clean_exit(res, "analyze")
    analyzed = strict_json(res.stdout)
    res = invoke(["init", *flags, "--schemes", scheme, *out])
    assert_clean_exit(res, "init")
    (row,) = strict_json(res.stdout)["results"]
    at_init = row["at_init"]
    layer = analyzed["layers"][0]
    flow = analyzed["gradient_flow"]
    assert analyzed["loss"] == f"{task} task loss"
    pairs = {
        "verdict": analyzed["verdict"], "verdict_detail": analyzed["verdict_detail"],
        "confidence": analyzed["confidence"], "advice": analyzed["advice"],
        "spectral_radius": layer["spectral_radius"], "sigma_max": layer["sigma_max"],
        "horizon_steps": flow["horizon_steps"], "horizon_censored": flow["horizon_censored"],
        "decay_per_step": flow["decay_per_step"], "top_lyapunov": layer["lyapunov_top"],
        "hidden_saturated": layer["gates"]["hidden_saturated"],
        "gate_saturation": {k: g["left_saturated"] + g["right_saturated"] for k, g in layer["gates"]["gates"].items()
                            if g["kind"] == "sigmoid"},
    }
    for key, value in pairs.items():
        assert at_init[key] == value, (key, at_init[key], value)  # bit for bit: ==, not approx


def test_analyze_task_is_the_library_diagnosis():
    """``analyze --task`` reports what :func:`rnndiag.experiments.diagnose_on_task` computes, number for number."""
    from rnndiag.experiments import diagnose_on_task

    res = invoke(["analyze", "--cell", "lstm", "--hidden-size", "5", "--seq-len", "15", "--batch-size", "3",
                  "--seed", "2", "--task", "adding", "--format", "none", "--json", "-", "--quiet"])
    assert_clean_exit(res, "analyze")
    cli = strict_json(res.stdout)
    model = rnndiag.init_model("lstm", 2, 5, seed=2)
    lib = diagnose_on_task(model, "adding", 15, 3, seed=2).to_dict()
    assert {k: v for k, v in cli.items() if k not in ("loss_detail", "input", "command")} == lib
    assert cli["loss_detail"].startswith("adding task loss on a seeded random linear readout (value ")
