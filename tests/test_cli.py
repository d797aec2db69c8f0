"""``rnndiag analyze`` from the command line: the demo, every option, and one clean error per bad input.

Every bad input is run twice, in-process through click's CliRunner and as a real subprocess
(``sys.executable -m rnndiag``): exit code 2, exactly one line on stderr, no traceback, nothing written.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from _cli_helpers import (
    FIGURES,
    GATED_FIGURE,
    SMALL,
    assert_clean_exit,
    assert_contract_keys,
    assert_one_line_error,
    diff_snapshots,
    hidden_temp_entries,
    invoke,
    run_cli,
    snapshot,
    strict_json,
)

import rnndiag
from rnndiag import init_model, save_weights

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
REPORT_DIR = re.compile(r"^rnn_tanh-\d{8}-\d{6}(-\d+)?$")
WEIGHTS_RUN = ["--seq-len", "20", "--batch-size", "4"]
CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")


def _report_files(cell: str) -> set[str]:
    names = {f"{f}.png" for f in FIGURES} | {"report.html", "metrics.json"}
    if cell in ("lstm", "gru"):
        names.add(f"{GATED_FIGURE}.png")
    return names


def _metrics(folder: Path) -> dict:
    return strict_json((folder / "metrics.json").read_text("utf-8"))


def _run_json(args) -> dict:
    """Run in-process with ``--format none --json - --quiet`` and return the parsed metrics."""
    res = invoke(["analyze", *args, "--format", "none", "--json", "-", "--quiet"])
    assert_clean_exit(res, " ".join(map(str, args)))
    assert res.stderr == ""
    return strict_json(res.stdout)


# ==================================================================================================================
# the demo
# ==================================================================================================================
def test_demo_writes_a_report_and_never_overwrites(tmp_path, monkeypatch):
    """``rnndiag analyze`` alone: a tanh RNN with 0.01*randn init on the adding problem, report under reports/.

    A second run gets its own folder; the first report is left untouched.
    """
    monkeypatch.chdir(tmp_path)
    first = invoke(["analyze"])
    assert_clean_exit(first, "demo")
    folders = sorted((tmp_path / "reports").iterdir())
    assert len(folders) == 1, folders
    report = folders[0]
    assert REPORT_DIR.match(report.name), report.name
    assert {p.name for p in report.iterdir()} == _report_files("rnn_tanh")
    m = _metrics(report)
    assert_contract_keys(m)
    assert (m["cell"], m["init"], m["input_size"], m["hidden_size"], m["num_layers"]) == (
        "rnn_tanh", "tutorial", 2, 64, 1)
    assert (m["seq_len"], m["batch_size"], m["seed"]) == (100, 32, 0)
    assert m["verdict"] == "vanishing"
    assert m["rnndiag_version"] == rnndiag.__version__
    assert len(m["gradient_flow"]["grad_norm"]) == 100
    assert "VANISHING" in first.stdout
    assert str(Path("reports") / report.name / "report.html") in first.stdout.replace("\n", "")
    assert hidden_temp_entries(tmp_path / "reports") == []

    before = snapshot(report)
    second = invoke(["analyze"])
    assert_clean_exit(second, "second demo")
    folders2 = sorted((tmp_path / "reports").iterdir())
    assert len(folders2) == 2, folders2
    new = next(p for p in folders2 if p != report)
    assert REPORT_DIR.match(new.name), new.name
    assert {p.name for p in new.iterdir()} == _report_files("rnn_tanh")
    assert snapshot(report) == before, diff_snapshots(before, snapshot(report))
    assert _metrics(new)["verdict"] == "vanishing"


def test_demo_as_a_subprocess(tmp_path):
    """``python -m rnndiag analyze --quiet`` in a fresh folder: exit 0, silent, one complete report."""
    res = run_cli(["analyze", "--quiet"], cwd=tmp_path)
    assert_clean_exit(res, "demo subprocess")
    assert res.stdout == "" and res.stderr == ""
    (report,) = (tmp_path / "reports").iterdir()
    assert REPORT_DIR.match(report.name)
    assert {p.name for p in report.iterdir()} == _report_files("rnn_tanh")
    assert _metrics(report)["verdict"] == "vanishing"
    assert [p.name for p in tmp_path.iterdir()] == ["reports"]


# ==================================================================================================================
# --json, --format, --quiet, --out, --force
# ==================================================================================================================
def test_json_to_stdout_is_strict_json_with_the_contract_keys(tmp_path, monkeypatch):
    """``--json -`` prints one valid JSON document (no NaN/Infinity) on stdout; the summary goes to stderr."""
    monkeypatch.chdir(tmp_path)
    res = invoke(["analyze", *SMALL, "--format", "none", "--json", "-"])
    assert_clean_exit(res, "--json -")
    m = strict_json(res.stdout)
    assert_contract_keys(m)
    assert (m["cell"], m["hidden_size"], m["seq_len"], m["batch_size"], m["seed"]) == ("rnn_tanh", 8, 20, 4, 0)
    assert len(m["gradient_flow"]["grad_norm"]) == 20
    assert len(m["gradient_flow"]["log10_jacobian_product_norm"]) == 20
    assert "verdict" in res.stderr.lower()  # the human summary moved to stderr, out of the JSON's way
    assert list(tmp_path.iterdir()) == []  # --format none: nothing written


def test_json_to_stdout_subprocess(tmp_path):
    res = run_cli(["analyze", *SMALL, "--format", "none", "--json", "-", "--quiet"], cwd=tmp_path)
    assert_clean_exit(res, "--json - subprocess")
    m = strict_json(res.stdout)
    assert_contract_keys(m)
    assert res.stderr == ""
    assert list(tmp_path.iterdir()) == []


def test_json_stdout_equals_metrics_file(tmp_path):
    out = tmp_path / "out"
    res = invoke(["analyze", *SMALL, "--format", "json", "--out", out, "--json", "-", "--quiet"])
    assert_clean_exit(res)
    assert strict_json(res.stdout) == _metrics(out)


def test_json_stdout_does_not_depend_on_format(tmp_path):
    with_file = invoke(["analyze", *SMALL, "--format", "json", "--out", tmp_path / "o", "--json", "-", "-q"])
    without = invoke(["analyze", *SMALL, "--format", "none", "--json", "-", "-q"])
    a, b = strict_json(with_file.stdout), strict_json(without.stdout)
    assert type(a["command"]) is type(b["command"]), (a["command"], b["command"])
    assert a == b


@pytest.mark.parametrize(("formats", "expected"), [
    ("json", {"metrics.json"}),
    ("html", {"report.html"}),
    ("png", {f"{f}.png" for f in FIGURES}),
    ("html,json", {"report.html", "metrics.json"}),
    ("JSON, png", {"metrics.json"} | {f"{f}.png" for f in FIGURES}),
])
def test_format_writes_only_what_was_asked(tmp_path, formats, expected):
    out = tmp_path / "out"
    res = invoke(["analyze", *SMALL, "--format", formats, "--out", out, "-q"])
    assert_clean_exit(res, formats)
    assert {p.name for p in out.iterdir()} == expected
    assert hidden_temp_entries(tmp_path) == []


@pytest.mark.parametrize("formats", ["none", ""])
def test_format_none_writes_nothing(tmp_path, monkeypatch, formats):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    res = invoke(["analyze", *SMALL, "--format", formats, "--out", out])
    assert_clean_exit(res, "--format none")
    assert "verdict" in res.stdout.lower()
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_quiet_prints_nothing(tmp_path):
    out = tmp_path / "out"
    res = invoke(["analyze", *SMALL, "--out", out, "--quiet"])
    assert_clean_exit(res, "--quiet")
    assert res.stdout == "" and res.stderr == ""
    assert {p.name for p in out.iterdir()} == _report_files("rnn_tanh")


def test_quiet_subprocess(tmp_path):
    res = run_cli(["analyze", *SMALL, "--out", "out", "-q", "--format", "json"], cwd=tmp_path)
    assert_clean_exit(res, "-q subprocess")
    assert res.stdout == "" and res.stderr == ""
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["metrics.json"]


def test_not_quiet_prints_the_summary_and_the_report_path(tmp_path):
    out = tmp_path / "out"
    res = invoke(["analyze", *SMALL, "--out", out, "--format", "html"])
    assert_clean_exit(res)
    text = res.stdout.replace("\n", "")
    assert "verdict:" in res.stdout and "advice" in res.stdout
    assert str(out / "report.html") in text


def test_out_existing_empty_folder_is_fine_without_force(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    res = invoke(["analyze", *SMALL, "--out", out, "-q", "--format", "json"])
    assert_clean_exit(res)
    assert [p.name for p in out.iterdir()] == ["metrics.json"]


def test_out_nested_new_folders_are_created(tmp_path):
    out = tmp_path / "a" / "b" / "c"
    res = invoke(["analyze", *SMALL, "--out", out, "-q", "--format", "json"])
    assert_clean_exit(res)
    assert (out / "metrics.json").is_file()
    assert hidden_temp_entries(out.parent) == []


@pytest.mark.parametrize("runner", ["clirunner", "subprocess"])
def test_force_into_a_non_empty_folder(tmp_path, runner):
    """Without --force: exit 2 and the folder is unchanged (names, sizes, mtimes); with it: the report lands there
    and the other files stay."""
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("my notes\n")
    (out / "metrics.json").write_text('{"old": true}\n')
    os.utime(out / "metrics.json", ns=(1_000_000_000, 1_000_000_000))
    before = snapshot(tmp_path)

    def run(*extra):
        args = ["analyze", *SMALL, "--out", out, "--format", "json,png", *extra]
        return invoke(args) if runner == "clirunner" else run_cli(args, cwd=tmp_path)

    refused = run()
    line = assert_one_line_error(refused)
    assert "--force" in line
    assert snapshot(tmp_path) == before, diff_snapshots(before, snapshot(tmp_path))

    forced = run("--force", "-q")
    assert_clean_exit(forced, "--force")
    names = {p.name for p in out.iterdir()}
    assert names == {"keep.txt", "metrics.json"} | {f"{f}.png" for f in FIGURES}
    assert (out / "keep.txt").read_text() == "my notes\n"
    m = _metrics(out)
    assert_contract_keys(m)
    assert "old" not in m
    assert hidden_temp_entries(out) == [] and hidden_temp_entries(tmp_path) == []


def test_force_twice_replaces_the_report(tmp_path):
    out = tmp_path / "out"
    assert_clean_exit(invoke(["analyze", *SMALL, "--out", out, "-q", "--format", "json", "--seed", "1"]))
    assert _metrics(out)["seed"] == 1
    assert_one_line_error(invoke(["analyze", *SMALL, "--out", out, "-q", "--format", "json", "--seed", "2"]))
    assert _metrics(out)["seed"] == 1
    assert_clean_exit(invoke(["analyze", *SMALL, "--out", out, "-q", "--format", "json", "--seed", "2", "--force"]))
    assert _metrics(out)["seed"] == 2
    assert hidden_temp_entries(out) == []


# ==================================================================================================================
# options that make sense together, for every cell
# ==================================================================================================================
OPTION_CASES = [
    # id, extra args, expected metrics (subset); "seq_len" defaults to 20
    ("lstm-forget-bias-1", ["--cell", "lstm", "--forget-bias", "1"],
     {"cell": "lstm", "init": "pytorch, forget_bias=1"}),
    ("lstm-2-layers", ["--cell", "lstm", "--num-layers", "2"], {"cell": "lstm", "num_layers": 2}),
    ("lstm-keras", ["--cell", "lstm", "--init", "keras"], {"cell": "lstm", "init": "keras, forget_bias=1"}),
    ("lstm-orthogonal-forget", ["--cell", "lstm", "--init", "orthogonal", "--gain", "1", "--forget-bias", "2"],
     {"cell": "lstm"}),
    ("gru", ["--cell", "gru"], {"cell": "gru"}),
    ("gru-2-layers-orthogonal", ["--cell", "gru", "--num-layers", "2", "--init", "orthogonal"],
     {"cell": "gru", "num_layers": 2, "init": "orthogonal"}),
    ("rnn_relu-identity", ["--cell", "rnn_relu", "--init", "identity"], {"cell": "rnn_relu", "init": "identity"}),
    ("rnn_relu-identity-gain", ["--cell", "rnn_relu", "--init", "identity", "--gain", "0.5"],
     {"cell": "rnn_relu", "init": "identity(gain=0.5)"}),
    ("rnn_relu-2-layers", ["--cell", "rnn_relu", "--num-layers", "2"], {"cell": "rnn_relu", "num_layers": 2}),
    ("rnn_tanh-2-layers", ["--cell", "rnn_tanh", "--num-layers", "2"], {"cell": "rnn_tanh", "num_layers": 2}),
    *[(f"init-{s}", ["--init", s], {"init": s}) for s in
      ("tutorial", "pytorch", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal",
       "identity", "keras")],
    *[(f"gain-{s}", ["--init", s, "--gain", "1.5"], {"init": f"{s}(gain=1.5)"}) for s in
      ("xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal", "identity")],
    ("orthogonal-gain-3-explodes", ["--cell", "rnn_relu", "--init", "orthogonal", "--gain", "3", "--seq-len", "60"],
     {"verdict": "exploding", "seq_len": 60}),
    ("input-size-3-noise", ["--input-size", "3"], {"input_size": 3}),  # task falls back to noise
    ("task-copy", ["--task", "copy"], {"input_size": 10, "seq_len": 40}),  # T = seq_len + 20 for copy
    ("task-copy-lstm", ["--cell", "lstm", "--task", "copy"], {"cell": "lstm", "seq_len": 40}),
    ("task-sine", ["--task", "sine"], {"input_size": 1}),
    ("task-sine-gru-loss-all", ["--cell", "gru", "--task", "sine", "--loss", "all"], {"cell": "gru"}),
    ("task-noise", ["--task", "noise"], {"input_size": 1}),
    ("task-noise-loss-all", ["--task", "noise", "--loss", "all"], {}),
    ("task-adding-loss-all", ["--task", "adding", "--loss", "all"], {"input_size": 2}),
    ("loss-last", ["--loss", "last"], {}),
    ("seed-7", ["--seed", "7"], {"seed": 7}),
    ("float32", ["--dtype", "float32", "--cell", "gru"], {"dtype": "float32"}),
    ("horizon-factor", ["--horizon-factor", "0.01"], {}),
    ("case-insensitive", ["--cell", "LSTM", "--task", "Sine"], {"cell": "lstm"}),
]


@pytest.mark.parametrize(("extra", "expected"), [c[1:] for c in OPTION_CASES], ids=[c[0] for c in OPTION_CASES])
def test_option_combinations(extra, expected):
    m = _run_json([*SMALL, *extra])
    assert_contract_keys(m)
    want = {"hidden_size": 8, "batch_size": 4, "seq_len": 20, "num_layers": 1, **expected}
    got = {k: m[k] for k in want}
    assert got == want
    if m["nonfinite"] is None:
        assert len(m["gradient_flow"]["grad_norm"]) == m["seq_len"]
    if "--forget-bias" in extra:
        fb = float(extra[extra.index("--forget-bias") + 1])
        assert all(layer["forget_bias"] == pytest.approx(fb) for layer in m["layers"])
    if "--horizon-factor" in extra:
        assert m["gradient_flow"]["horizon_factor"] == pytest.approx(0.01)
    if "--loss" in extra and extra[extra.index("--loss") + 1] == "all":
        assert m["settings"]["loss"] == "all"


def test_loss_all_on_a_last_step_task_uses_the_probe():
    m = _run_json([*SMALL, "--task", "adding", "--loss", "all"])
    assert m["settings"]["loss"] == "all"
    assert "probe" in m["loss_detail"] and "adding" in m["loss_detail"]


def test_identity_relu_is_not_vanishing_like_the_tutorial_init():
    tutorial = _run_json([*SMALL, "--init", "tutorial"])
    identity = _run_json([*SMALL, "--cell", "rnn_relu", "--init", "identity"])
    assert tutorial["verdict"] == "vanishing"
    assert identity["verdict"] != "vanishing"


def test_input_file(tmp_path):
    x = np.random.default_rng(0).standard_normal((15, 3, 2))
    np.save(tmp_path / "x.npy", x)
    m = _run_json(["--input", tmp_path / "x.npy", "--hidden-size", "8"])
    assert_contract_keys(m)
    assert (m["seq_len"], m["batch_size"], m["input_size"]) == (15, 3, 2)
    assert len(m["gradient_flow"]["grad_norm"]) == 15
    assert "x.npy" in m["input"]


def test_input_file_sets_the_input_size_of_a_fresh_model(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((12, 2, 5), dtype=np.float32))
    m = _run_json(["--input", tmp_path / "x.npy", "--cell", "gru", "--hidden-size", "4"])
    assert (m["input_size"], m["cell"], m["seq_len"], m["batch_size"]) == (5, "gru", 12, 2)


# ==================================================================================================================
# --weights
# ==================================================================================================================
@pytest.mark.parametrize("cell", CELLS)
def test_weights_npz_from_save_weights(tmp_path, cell):
    """A file written by rnndiag.save_weights gives the sizes (and the very numbers) of the same fresh model."""
    model = init_model(cell, 3, 8, num_layers=2, init="pytorch", seed=0)
    path = save_weights(model, tmp_path / f"{cell}.npz")
    loaded = _run_json(["--weights", path, "--task", "noise", *WEIGHTS_RUN])
    assert_contract_keys(loaded)
    assert (loaded["cell"], loaded["input_size"], loaded["hidden_size"], loaded["num_layers"]) == (cell, 3, 8, 2)
    assert (loaded["seq_len"], loaded["batch_size"]) == (20, 4)
    fresh = _run_json(["--cell", cell, "--input-size", "3", "--hidden-size", "8", "--num-layers", "2",
                       "--init", "pytorch", "--seed", "0", "--task", "noise", *WEIGHTS_RUN])
    for a, b in zip(loaded["layers"], fresh["layers"], strict=True):
        assert a["spectral_radius"] == pytest.approx(b["spectral_radius"], rel=1e-12)
        assert a["sigma_max"] == pytest.approx(b["sigma_max"], rel=1e-12)
    assert loaded["gradient_flow"]["grad_norm"] == pytest.approx(fresh["gradient_flow"]["grad_norm"], rel=1e-9)
    assert loaded["verdict"] == fresh["verdict"]


def test_weights_npz_with_prefix(tmp_path):
    model = init_model("gru", 2, 8, seed=0)
    state = {f"encoder.rnn.{k}": v for k, v in model.params.items()}
    state["head.weight"] = np.zeros((1, 8))
    np.savez(tmp_path / "whole.npz", **state)
    found = _run_json(["--weights", tmp_path / "whole.npz", *WEIGHTS_RUN])  # one recurrent module: found alone
    m = _run_json(["--weights", tmp_path / "whole.npz", "--prefix", "encoder.rnn", *WEIGHTS_RUN])
    assert (m["cell"], m["input_size"], m["hidden_size"]) == ("gru", 2, 8)
    assert found["layers"] == m["layers"]


def test_weights_npz_subprocess(tmp_path):
    save_weights(init_model("lstm", 2, 8, seed=0), tmp_path / "w.npz")
    res = run_cli(["analyze", "--weights", "w.npz", *WEIGHTS_RUN, "--out", "out", "-q"], cwd=tmp_path)
    assert_clean_exit(res, "--weights subprocess")
    m = _metrics(tmp_path / "out")
    assert (m["cell"], m["input_size"], m["hidden_size"], m["num_layers"]) == ("lstm", 2, 8, 1)
    assert {p.name for p in (tmp_path / "out").iterdir()} == _report_files("lstm")


@pytest.mark.torch
@pytest.mark.parametrize(("module", "cell"), [("RNN", "rnn_tanh"), ("LSTM", "lstm"), ("GRU", "gru")])
def test_weights_torch_state_dict(tmp_path, module, cell):
    """A real ``nn.RNN/LSTM/GRU.state_dict()`` saved with torch.save gives the same sizes and numbers as its npz."""
    torch = pytest.importorskip("torch", reason="torch is not installed: .pt files cannot be tested")
    torch.manual_seed(0)
    net = getattr(torch.nn, module)(3, 8, num_layers=2)
    sd = net.state_dict()
    torch.save(sd, tmp_path / "net.pt")
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ckpt.pth")
    np.savez(tmp_path / "net.npz", **{k: v.detach().numpy() for k, v in sd.items()})
    results = [_run_json(["--weights", tmp_path / name, "--task", "noise", *WEIGHTS_RUN])
               for name in ("net.pt", "ckpt.pth", "net.npz")]
    for m in results:
        assert_contract_keys(m)
        assert (m["cell"], m["input_size"], m["hidden_size"], m["num_layers"]) == (cell, 3, 8, 2)
    pt, ckpt, npz = results
    want = [lay["sigma_max"] for lay in pt["layers"]]
    for other in (ckpt, npz):
        assert [lay["sigma_max"] for lay in other["layers"]] == pytest.approx(want)


@pytest.mark.torch
def test_weights_torch_relu_needs_cell(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed: .pt files cannot be tested")
    net = torch.nn.RNN(2, 8, nonlinearity="relu")
    torch.save(net.state_dict(), tmp_path / "relu.pt")
    m = _run_json(["--weights", tmp_path / "relu.pt", "--cell", "rnn_relu", *WEIGHTS_RUN])
    assert (m["cell"], m["input_size"], m["hidden_size"]) == ("rnn_relu", 2, 8)


# ==================================================================================================================
# help and version
# ==================================================================================================================
@pytest.mark.parametrize("args", [["--help"], ["-h"], ["analyze", "--help"], ["analyze", "-h"]])
def test_help(args):
    res = invoke(args)
    assert_clean_exit(res, " ".join(args))
    assert "Examples" in res.stdout
    assert "rnndiag analyze" in res.stdout
    if "analyze" in args:
        for opt in ("--weights", "--cell", "--input-size", "--hidden-size", "--num-layers", "--init", "--gain",
                    "--forget-bias", "--seed", "--input", "--task", "--seq-len", "--batch-size", "--loss", "--out",
                    "--format", "--json", "--quiet", "--force"):
            assert opt in res.stdout, opt


@pytest.mark.parametrize("args", [["--help"], ["analyze", "--help"]])
def test_help_subprocess(tmp_path, args):
    res = run_cli(args, cwd=tmp_path)
    assert_clean_exit(res)
    assert "Examples" in res.stdout
    assert res.stdout.startswith("Usage: rnndiag")


def test_version(tmp_path):
    res = invoke(["--version"])
    assert_clean_exit(res)
    assert res.stdout.strip() == f"rnndiag, version {rnndiag.__version__}"
    sub = run_cli(["--version"], cwd=tmp_path)
    assert_clean_exit(sub)
    assert sub.stdout.strip() == f"rnndiag, version {rnndiag.__version__}"
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*", rnndiag.__version__)


def test_bare_rnndiag_prints_plain_help():
    res = invoke([])
    text = res.stdout + res.stderr
    assert "Usage: rnndiag" in text
    assert "rnndiag: error: Usage" not in text


# ==================================================================================================================
# bad inputs: one line on stderr, exit code 2, nothing written
# ==================================================================================================================
def _make_bad_files(d: Path) -> None:
    """Every bad (and one good) input file in folder ``d``."""
    rng = np.random.default_rng(0)
    good = init_model("rnn_tanh", 2, 8, seed=0)
    save_weights(good, d / "good.npz")
    raw = (d / "good.npz").read_bytes()
    (d / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    (d / "empty.npz").write_bytes(b"")
    (d / "corrupt.npz").write_bytes(rng.bytes(700))
    (d / "good.txt").write_bytes(raw)
    (d / "corrupt.pt").write_bytes(b"this is not a torch file" * 20)
    (d / "folder.npz").mkdir()
    np.savez(d / "pickled.npz", weight_ih_l0=np.array([{"evil": 1}], dtype=object),
             weight_hh_l0=np.zeros((8, 8)))
    with open(d / "single.npz", "wb") as fh:  # a bare .npy under an .npz name
        np.save(fh, np.zeros((8, 8)))
    np.savez(d / "wrong_keys.npz", encoder=np.zeros((8, 2)), decoder=np.zeros((8, 8)))
    np.savez(d / "missing_key.npz", weight_hh_l0=np.zeros((8, 8)))
    p = dict(good.params)
    np.savez(d / "wrong_shape_hh.npz", **{**p, "weight_hh_l0": np.zeros((8, 5))})
    np.savez(d / "wrong_shape_bias.npz", **{**p, "bias_ih_l0": np.zeros(7)})
    np.savez(d / "gates_5.npz", **{**p, "weight_hh_l0": np.zeros((40, 8))})
    np.savez(d / "layer_gap.npz", **p, **{k.replace("_l0", "_l2"): v for k, v in p.items()})
    # a reverse direction without its recurrent weights: the keys cannot pin the architecture down
    np.savez(d / "partly_reverse.npz", **p, **{f"{k}_reverse": v for k, v in p.items() if k != "weight_hh_l0"})
    np.savez(d / "strings.npz", **{**p, "weight_hh_l0": np.array([["a"] * 8] * 8)})
    for name, bad in (("nan", np.nan), ("inf", np.inf)):
        w = p["weight_hh_l0"].copy()
        w[3, 4] = bad
        np.savez(d / f"{name}.npz", **{**p, "weight_hh_l0": w})
    (d / "unreadable.npz").write_bytes(raw)
    os.chmod(d / "unreadable.npz", 0)
    np.save(d / "x_2d.npy", np.zeros((10, 2)))
    np.save(d / "x_4d.npy", np.zeros((10, 2, 2, 1)))
    np.save(d / "x_empty.npy", np.zeros((0, 2, 2)))
    x = rng.standard_normal((10, 2, 2))
    x_nan, x_inf = x.copy(), x.copy()
    x_nan[4, 1, 0] = np.nan
    x_inf[2, 0, 1] = -np.inf
    np.save(d / "x_nan.npy", x_nan)
    np.save(d / "x_inf.npy", x_inf)
    np.save(d / "x_pickle.npy", np.array([{"evil": 1}, 2], dtype=object), allow_pickle=True)
    np.save(d / "x_strings.npy", np.full((10, 2, 2), "a"))
    np.save(d / "x_1ch.npy", x[:, :, :1])
    np.save(d / "x_good.npy", x)
    raw_x = (d / "x_good.npy").read_bytes()
    (d / "x_truncated.npy").write_bytes(raw_x[:100])
    (d / "x_corrupt.npy").write_bytes(b"\x00garbage\xff" * 30)
    (d / "x_folder.npy").mkdir()
    np.savez(d / "x_archive.npz", x=x)
    (d / "file.txt").write_text("not a folder\n")
    (d / "nonempty").mkdir()
    (d / "nonempty" / "old.txt").write_text("old\n")
    (d / "locked").mkdir()
    os.chmod(d / "locked", 0o555)


def _read_only_folder() -> str | None:
    """A folder that even root cannot write into (a read-only mount), or None."""
    for cand in ("/proc/sys",):
        if os.path.isdir(cand) and not os.access(cand, os.W_OK):
            return cand
    return None


_RO = _read_only_folder()
_ROOT_REASON = ("runs as root: chmod does not stop root from reading or writing, so this case cannot be produced "
                "here (see out-read-only and out-under-proc for the root-proof variants)")

# id -> (args builder (in-folder d, work-folder w) -> list, marks). An ``--out`` in the args replaces the default
# ``--out w/out``.
BAD_CASES = {
    # weights files
    "weights-missing": lambda d, w: ["--weights", d / "nope.npz", *WEIGHTS_RUN],
    "weights-is-a-folder": lambda d, w: ["--weights", d / "folder.npz", *WEIGHTS_RUN],
    "weights-unreadable": (lambda d, w: ["--weights", d / "unreadable.npz", *WEIGHTS_RUN],
                           pytest.mark.skipif(IS_ROOT, reason=_ROOT_REASON)),
    "weights-empty-file": lambda d, w: ["--weights", d / "empty.npz", *WEIGHTS_RUN],
    "weights-corrupt": lambda d, w: ["--weights", d / "corrupt.npz", *WEIGHTS_RUN],
    "weights-truncated": lambda d, w: ["--weights", d / "truncated.npz", *WEIGHTS_RUN],
    "weights-pickled": lambda d, w: ["--weights", d / "pickled.npz", *WEIGHTS_RUN],
    "weights-single-array": lambda d, w: ["--weights", d / "single.npz", *WEIGHTS_RUN],
    "weights-wrong-keys": lambda d, w: ["--weights", d / "wrong_keys.npz", *WEIGHTS_RUN],
    "weights-missing-key": lambda d, w: ["--weights", d / "missing_key.npz", *WEIGHTS_RUN],
    "weights-wrong-shape": lambda d, w: ["--weights", d / "wrong_shape_hh.npz", *WEIGHTS_RUN],
    "weights-wrong-bias-shape": lambda d, w: ["--weights", d / "wrong_shape_bias.npz", *WEIGHTS_RUN],
    "weights-5-gates": lambda d, w: ["--weights", d / "gates_5.npz", *WEIGHTS_RUN],
    "weights-layer-gap": lambda d, w: ["--weights", d / "layer_gap.npz", *WEIGHTS_RUN],
    "weights-partly-reverse": lambda d, w: ["--weights", d / "partly_reverse.npz", *WEIGHTS_RUN],
    "weights-strings": lambda d, w: ["--weights", d / "strings.npz", *WEIGHTS_RUN],
    "weights-nan": lambda d, w: ["--weights", d / "nan.npz", *WEIGHTS_RUN],
    "weights-inf": lambda d, w: ["--weights", d / "inf.npz", *WEIGHTS_RUN],
    "weights-unknown-extension": lambda d, w: ["--weights", d / "good.txt", *WEIGHTS_RUN],
    "weights-corrupt-pt": lambda d, w: ["--weights", d / "corrupt.pt", *WEIGHTS_RUN],
    "weights-cell-mismatch": lambda d, w: ["--weights", d / "good.npz", "--cell", "lstm", *WEIGHTS_RUN],
    "weights-with-hidden-size": lambda d, w: ["--weights", d / "good.npz", "--hidden-size", "8", *WEIGHTS_RUN],
    "weights-with-init": lambda d, w: ["--weights", d / "good.npz", "--init", "orthogonal", *WEIGHTS_RUN],
    "weights-unknown-prefix": lambda d, w: ["--weights", d / "good.npz", "--prefix", "nope", *WEIGHTS_RUN],
    # names and sizes
    "cell-unknown": lambda d, w: ["--cell", "transformer", *SMALL],
    "init-unknown": lambda d, w: ["--init", "he_magic", *SMALL],
    "task-unknown": lambda d, w: ["--task", "parity", *SMALL],
    "loss-unknown": lambda d, w: ["--loss", "first", *SMALL],
    "format-unknown": lambda d, w: ["--format", "html,pdf", *SMALL],
    "dtype-unknown": lambda d, w: ["--dtype", "float16", *SMALL],
    "option-unknown": lambda d, w: ["--hidden", "8", *SMALL],
    "hidden-size-zero": lambda d, w: [*SMALL, "--hidden-size", "0"],
    "hidden-size-negative": lambda d, w: [*SMALL, "--hidden-size", "-4"],
    "hidden-size-not-a-number": lambda d, w: [*SMALL, "--hidden-size", "eight"],
    "input-size-zero": lambda d, w: [*SMALL, "--input-size", "0"],
    "input-size-negative": lambda d, w: [*SMALL, "--input-size", "-1"],
    "num-layers-zero": lambda d, w: [*SMALL, "--num-layers", "0"],
    "num-layers-negative": lambda d, w: [*SMALL, "--num-layers", "-2"],
    "batch-size-zero": lambda d, w: [*SMALL, "--batch-size", "0"],
    "seq-len-zero": lambda d, w: [*SMALL, "--seq-len", "0"],
    "seq-len-negative": lambda d, w: [*SMALL, "--seq-len", "-5"],
    "seq-len-1-adding": lambda d, w: [*SMALL, "--seq-len", "1", "--task", "adding"],
    "seed-negative": lambda d, w: [*SMALL, "--seed", "-1"],
    "gain-zero": lambda d, w: [*SMALL, "--init", "orthogonal", "--gain", "0"],
    "gain-nan": lambda d, w: [*SMALL, "--init", "orthogonal", "--gain", "nan"],
    "gain-inf": lambda d, w: [*SMALL, "--init", "orthogonal", "--gain", "inf"],
    "gain-with-pytorch-init": lambda d, w: [*SMALL, "--init", "pytorch", "--gain", "2"],
    "forget-bias-nan": lambda d, w: [*SMALL, "--cell", "lstm", "--forget-bias", "nan"],
    "forget-bias-on-gru": lambda d, w: [*SMALL, "--cell", "gru", "--forget-bias", "1"],
    "horizon-factor-1": lambda d, w: [*SMALL, "--horizon-factor", "1"],
    "task-does-not-fit-input-size": lambda d, w: [*SMALL, "--task", "copy", "--input-size", "3"],
    "prefix-without-weights": lambda d, w: [*SMALL, "--prefix", "encoder.rnn"],
    "too-large": lambda d, w: ["--task", "noise", "--hidden-size", "2", "--seq-len", "100000000000",
                               "--batch-size", "100000"],
    # output location
    "out-is-a-file": lambda d, w: [*SMALL, "--out", d / "file.txt"],
    "out-parent-is-a-file": lambda d, w: [*SMALL, "--out", d / "file.txt" / "report"],
    "out-not-empty": lambda d, w: [*SMALL, "--out", d / "nonempty"],
    "out-unwritable-chmod": (lambda d, w: [*SMALL, "--out", d / "locked" / "report"],
                             pytest.mark.skipif(IS_ROOT, reason=_ROOT_REASON)),
    "out-read-only": (lambda d, w: [*SMALL, "--out", Path(_RO or "/") / f"rnndiag-test-{uuid.uuid4().hex}"],
                      pytest.mark.skipif(_RO is None, reason="no read-only folder (a read-only mount such as "
                                         "/proc/sys) is available here")),
    # /proc accepts access(W_OK) for root but refuses to create anything: the write itself fails, late
    "out-under-proc": (lambda d, w: [*SMALL, "--out", f"/proc/rnndiag-test-{uuid.uuid4().hex}"],
                       pytest.mark.skipif(not Path("/proc/self").exists(), reason="no /proc")),
    # --input
    "input-missing": lambda d, w: [*SMALL, "--input", d / "nope.npy"],
    "input-is-a-folder": lambda d, w: [*SMALL, "--input", d / "x_folder.npy"],
    "input-2d": lambda d, w: [*SMALL, "--input", d / "x_2d.npy"],
    "input-4d": lambda d, w: [*SMALL, "--input", d / "x_4d.npy"],
    "input-empty": lambda d, w: [*SMALL, "--input", d / "x_empty.npy"],
    "input-nan": lambda d, w: [*SMALL, "--input", d / "x_nan.npy"],
    "input-inf": lambda d, w: [*SMALL, "--input", d / "x_inf.npy"],
    "input-pickle": lambda d, w: [*SMALL, "--input", d / "x_pickle.npy"],
    "input-strings": lambda d, w: [*SMALL, "--input", d / "x_strings.npy"],
    "input-truncated": lambda d, w: [*SMALL, "--input", d / "x_truncated.npy"],
    "input-corrupt": lambda d, w: [*SMALL, "--input", d / "x_corrupt.npy"],
    "input-npz-archive": lambda d, w: [*SMALL, "--input", d / "x_archive.npz"],
    "input-wrong-channels": lambda d, w: [*SMALL, "--input-size", "2", "--input", d / "x_1ch.npy"],
    "input-wrong-channels-weights": lambda d, w: ["--weights", d / "good.npz", "--input", d / "x_1ch.npy"],
    "input-and-task": lambda d, w: [*SMALL, "--input", d / "x_good.npy", "--task", "noise"],
}


def _bad_params():
    params = []
    for cid, spec in BAD_CASES.items():
        build, marks = (spec, ()) if callable(spec) else (spec[0], (spec[1],))
        params.append(pytest.param(build, id=cid, marks=marks))
    return params


def _setup_bad(tmp_path):
    d = tmp_path / "in"
    w = tmp_path / "work"
    d.mkdir()
    w.mkdir()
    _make_bad_files(d)
    return d, w


def _full_args(build, d, w):
    args = build(d, w)
    if "--out" not in args:
        args = [*args, "--out", w / "out"]
    return ["analyze", *args], Path(args[args.index("--out") + 1])


def _assert_nothing_written(tmp_path, before, out):
    after = snapshot(tmp_path)
    assert after == before, "the failed run changed files: " + diff_snapshots(before, after)
    if not str(out).startswith(str(tmp_path)):
        assert not out.exists(), f"{out} was created"
        assert hidden_temp_entries(out.parent) == []


@pytest.mark.parametrize("build", _bad_params())
def test_bad_input_clirunner(tmp_path, monkeypatch, build):
    d, w = _setup_bad(tmp_path)
    monkeypatch.chdir(w)
    args, out = _full_args(build, d, w)
    before = snapshot(tmp_path)
    res = invoke(args)
    assert_one_line_error(res)
    _assert_nothing_written(tmp_path, before, out)


@pytest.mark.parametrize("build", _bad_params())
def test_bad_input_subprocess(tmp_path, build):
    d, w = _setup_bad(tmp_path)
    args, out = _full_args(build, d, w)
    before = snapshot(tmp_path)
    res = run_cli(args, cwd=w)
    assert_one_line_error(res)
    _assert_nothing_written(tmp_path, before, out)


def test_bad_input_messages_name_the_problem(tmp_path, monkeypatch):
    """Spot checks that the one line says what is wrong and what to do."""
    d, w = _setup_bad(tmp_path)
    monkeypatch.chdir(w)

    def line(*args):
        out = [] if "--out" in args else ["--out", w / "out"]
        return assert_one_line_error(invoke(["analyze", *args, *out]))

    assert "nope.npz" in line("--weights", d / "nope.npz") and "does not exist" in line("--weights", d / "nope.npz")
    assert "pickle" in line("--weights", d / "pickled.npz")
    assert "NaN or Inf" in line("--weights", d / "nan.npz")
    assert "weight_hh_l0" in line("--weights", d / "wrong_shape_hh.npz")
    assert "--hidden-size" in line(*SMALL, "--hidden-size", "0")
    assert "--seq-len" in line(*SMALL, "--seq-len", "0")
    assert "transformer" in line("--cell", "transformer")
    assert "(T, B, I)" in line(*SMALL, "--input", d / "x_2d.npy")
    assert "NaN or Inf" in line(*SMALL, "--input", d / "x_nan.npy")
    assert "pickle" in line(*SMALL, "--input", d / "x_pickle.npy")
    assert "is a file" in line(*SMALL, "--out", d / "file.txt")
    assert "--force" in line(*SMALL, "--out", d / "nonempty")
    assert "see 'rnndiag analyze --help'" in line("--cell", "transformer")


def test_corrupt_npz_message_does_not_suggest_unpickling(tmp_path):
    d, _ = _setup_bad(tmp_path)
    line = assert_one_line_error(invoke(["analyze", "--weights", d / "corrupt.npz", "--out", tmp_path / "o"]))
    assert "allow_pickle" not in line
    assert "not an .npz archive" in line


# -- .pt without torch -----------------------------------------------------------------------------------------------
def _pt_file(folder: Path) -> Path:
    """A real state_dict .pt when torch is importable, else bytes under a .pt name (the suffix decides the path)."""
    path = folder / "lstm.pt"
    try:
        import torch
    except ImportError:
        path.write_bytes(b"PK\x03\x04 not really a torch file")
        return path
    torch.save(torch.nn.LSTM(2, 8).state_dict(), path)
    return path


def test_pt_without_torch_clirunner(tmp_path, monkeypatch):
    """``sys.modules['torch'] = None`` makes ``import torch`` raise ImportError, as if torch were not installed."""
    pt = _pt_file(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setitem(sys.modules, "torch", None)
    before = snapshot(tmp_path)
    line = assert_one_line_error(invoke(["analyze", "--weights", pt, *WEIGHTS_RUN, "--out", work / "out"]))
    assert "torch is not installed" in line and ".npz" in line
    _assert_nothing_written(tmp_path, before, work / "out")


def _torch_stub(folder: Path) -> dict:
    stub = folder / "no_torch"
    stub.mkdir()
    (stub / "torch.py").write_text('raise ImportError("No module named \'torch\' (test stub)")\n')
    old = os.environ.get("PYTHONPATH")
    return {"PYTHONPATH": str(stub) + (os.pathsep + old if old else "")}


def test_pt_without_torch_subprocess(tmp_path):
    """A ``torch.py`` that raises ImportError first on PYTHONPATH hides the real torch from the subprocess."""
    pt = _pt_file(tmp_path)
    env = _torch_stub(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    probe = run_cli(["--version"], cwd=work, env_extra=env)
    assert_clean_exit(probe)
    before = snapshot(tmp_path)
    res = run_cli(["analyze", "--weights", pt, *WEIGHTS_RUN, "--out", work / "out"], cwd=work, env_extra=env)
    line = assert_one_line_error(res)
    assert "torch is not installed" in line
    _assert_nothing_written(tmp_path, before, work / "out")


def test_npz_works_without_torch_subprocess(tmp_path):
    env = _torch_stub(tmp_path)
    save_weights(init_model("gru", 2, 8, seed=0), tmp_path / "w.npz")
    res = run_cli(["analyze", "--weights", "w.npz", *WEIGHTS_RUN, "--format", "none", "--json", "-", "-q"],
                  cwd=tmp_path, env_extra=env)
    assert_clean_exit(res, "npz without torch")
    assert strict_json(res.stdout)["cell"] == "gru"


# -- --json PATH -----------------------------------------------------------------------------------------------------
def test_json_path_writes_metrics_there_too(tmp_path):
    res = invoke(["analyze", *SMALL, "--out", tmp_path / "out", "--format", "html", "--json", tmp_path / "m.json",
                  "-q"])
    assert_clean_exit(res)
    assert strict_json((tmp_path / "m.json").read_text()) == _metrics(tmp_path / "out")
    assert hidden_temp_entries(tmp_path) == []


def test_json_path_exists_refused_before_writing(tmp_path):
    (tmp_path / "m.json").write_text("{}")
    before = snapshot(tmp_path)
    res = invoke(["analyze", *SMALL, "--out", tmp_path / "out", "--json", tmp_path / "m.json"])
    assert_one_line_error(res)
    assert snapshot(tmp_path) == before, diff_snapshots(before, snapshot(tmp_path))


def test_json_path_inside_a_new_out_folder_says_so(tmp_path):
    """--out r --json r/m.json with r not yet made: one line naming the clash (not "folder 'r' does not exist");
    with r existing, both are written."""
    before = snapshot(tmp_path)
    res = invoke(["analyze", *SMALL, "--out", tmp_path / "r", "--json", tmp_path / "r" / "m.json", "-q"])
    assert_one_line_error(res)
    assert "inside the --out folder" in res.stderr and "does not exist yet" in res.stderr
    assert snapshot(tmp_path) == before, diff_snapshots(before, snapshot(tmp_path))
    (tmp_path / "r").mkdir()
    res = invoke(["analyze", *SMALL, "--out", tmp_path / "r", "--json", tmp_path / "r" / "m.json", "-q"])
    assert_clean_exit(res)
    assert strict_json((tmp_path / "r" / "m.json").read_text()) == _metrics(tmp_path / "r")


@pytest.mark.parametrize("where", ["missing-folder", "is-a-folder"])
def test_json_path_unwritable_is_one_line(tmp_path, where):
    dest = tmp_path / "no" / "such" / "m.json" if where == "missing-folder" else tmp_path
    work = tmp_path / "work"
    work.mkdir()
    before = snapshot(tmp_path)
    res = run_cli(["analyze", *SMALL, "--out", "out", "--json", dest, "--force"], cwd=work)
    assert_one_line_error(res)
    assert snapshot(tmp_path) == before, diff_snapshots(before, snapshot(tmp_path))
