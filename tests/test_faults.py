"""Bad input, faults and resource abuse in every command: each destination checked before any work, regular files
only, headers read before data, forged checkpoints refused, faults midway ending as one line with the work kept.

Each test here failed before its fix (issue 13).
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import resource
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from _cli_helpers import (
    SMALL,
    assert_clean_exit,
    assert_one_line_error,
    freeze_report_clock,
    interruptible,
    invoke,
    run_cli,
    snapshot,
)

import rnndiag.train as train_mod
from rnndiag import init_model, save_weights

TRAIN = ["train", "--hidden-size", "8", "--seq-len", "10", "--batch-size", "4"]
LONG_NAME = "x" * 300


def _fast_refusal(args, cwd=None, *, limit_s: float = 20.0) -> str:
    """One line, exit 2, and long before the work it asked for could have run."""
    t0 = time.perf_counter()
    line = assert_one_line_error(invoke(args))
    assert time.perf_counter() - t0 < limit_s
    return line


# -- output paths: checked while building the request, before any work ----------------------------------------------
@pytest.mark.parametrize(("where", "expect"), [
    (lambda p: p, "is a folder"),
    (lambda p: Path("/proc/rnndiag-run.npz"), "is in /proc"),
    (lambda p: p / "missing" / "run.npz", "does not exist; create it first"),
    (lambda p: p / LONG_NAME, "choose a shorter name"),
])
def test_train_checkpoint_is_checked_before_training(tmp_path, where, expect):
    before = snapshot(tmp_path)
    line = _fast_refusal([*TRAIN, "--steps", "1000000", "--checkpoint", where(tmp_path), "--force",
                          "--out", tmp_path / "r"])
    assert expect in line and "checkpoint" in line
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("command", [["analyze", *SMALL], [*TRAIN, "--steps", "3"],
                                     ["init", "--hidden-size", "8", "--seq-len", "10", "--schemes", "pytorch"]])
@pytest.mark.parametrize(("json_to", "expect"), [
    (lambda p: "/proc/m.json", "is in /proc"),
    (lambda p: p / "nofolder" / "m.json", "does not exist"),
    (lambda p: p / (LONG_NAME + ".json"), "choose a shorter name"),
    (lambda p: "/dev/null", "is in /dev"),
    (lambda p: f"{p}/newdir/", "ends with '/'"),
])
def test_unwritable_json_is_refused_before_the_report(tmp_path, command, json_to, expect):
    out = tmp_path / "r"
    line = _fast_refusal([*command, "--out", out, "--json", json_to(tmp_path), "--force"])
    assert expect in line and "--json" in line
    assert not out.exists()


def test_a_run_that_takes_the_folder_name_while_we_write_does_not_cost_our_report(tmp_path, monkeypatch):
    """The race of two runs in one second: another run takes reports/<name>-<time> between our choosing that name
    and our report landing. The name is taken with os.mkdir, so the other run gets its own suffix."""
    import rnndiag.files as files

    freeze_report_clock(monkeypatch, dt.datetime(2026, 12, 6, 12, 0, 0))
    monkeypatch.chdir(tmp_path)
    real_mkdtemp, others = files.tempfile.mkdtemp, []

    def another_run_meanwhile(*args, **kwargs):
        if not others:
            theirs = files.fresh_folder(Path("reports"), "rnn_tanh")
            theirs.mkdir(exist_ok=True)
            (theirs / "metrics.json").write_text('{"theirs": true}')
            others.append(theirs)
        return real_mkdtemp(*args, **kwargs)

    monkeypatch.setattr(files.tempfile, "mkdtemp", another_run_meanwhile)
    assert_clean_exit(invoke(["analyze", *SMALL, "--format", "json", "-q"]))
    folders = sorted((tmp_path / "reports").iterdir())
    assert len(folders) == 2
    contents = sorted(json.loads((f / "metrics.json").read_text()).get("theirs", False) for f in folders)
    assert contents == [False, True]  # ours and theirs, each whole


@pytest.mark.parametrize("option", ["--weights", "--input", "--out"])
def test_too_long_file_names_are_one_line(tmp_path, option):
    line = _fast_refusal(["analyze", *([] if option == "--weights" else SMALL), option, tmp_path / LONG_NAME])
    assert "shorter" in line


def test_two_runs_in_the_same_second_keep_both_reports(tmp_path, monkeypatch):
    freeze_report_clock(monkeypatch, dt.datetime(2026, 12, 6, 12, 0, 0))
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert_clean_exit(invoke(["analyze", *SMALL, "--format", "json", "-q"]))
    names = sorted(p.name for p in (tmp_path / "reports").iterdir())
    assert names == ["rnn_tanh-20261206-120000", "rnn_tanh-20261206-120000-2"]
    assert all((tmp_path / "reports" / n / "metrics.json").is_file() for n in names)


# -- regular files only: a named pipe never blocks -------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    lambda fifo: ["analyze", "--weights", fifo],
    lambda fifo: ["analyze", *SMALL, "--input", fifo],
    lambda fifo: [*TRAIN, "--checkpoint", fifo, "--resume", "--format", "none"],
])
def test_a_named_pipe_is_refused_at_once(tmp_path, args):
    fifo = tmp_path / "pipe.npz"
    os.mkfifo(fifo)
    res = run_cli(args(fifo), cwd=tmp_path, timeout=60)  # a hang would time out
    assert res.returncode == 2, res.stderr
    assert "named pipe, not a regular file" in res.stderr and "Traceback" not in res.stderr


# -- headers before data ---------------------------------------------------------------------------------------------
def test_npy_header_declaring_exabytes_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "huge.npy"
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False,
                                                  "shape": (1_000_000_000, 1_000_000, 1)})
        fh.write(b"\0" * 64)
    line = _fast_refusal(["analyze", *SMALL, "--input", path])
    assert "huge.npy" in line and ("truncated" in line or "memory" in line)


def _zip_bomb_member(zf: zipfile.ZipFile, name: str, nbytes: int) -> None:
    """A member whose data is ``nbytes`` of zeros: a few MB on disk, ``nbytes`` once decompressed."""
    n = nbytes // 8
    with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False, "shape": (n,)})
        chunk = bytes(64 << 20)
        left = n * 8
        while left:
            fh.write(chunk[: min(left, len(chunk))])
            left -= min(left, len(chunk))


@pytest.fixture(scope="module")
def inflating_weights(tmp_path_factory) -> Path:
    """A valid LSTM's weights plus one 1 GiB (decompressed) member under a key no RNN has."""
    path = tmp_path_factory.mktemp("bomb") / "w.npz"
    params = init_model("lstm", 3, 4, seed=0).state_dict()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for k, v in params.items():
            with zf.open(f"{k}.npy", "w") as fh:
                np.lib.format.write_array(fh, v)
        _zip_bomb_member(zf, "optimizer_state", 1 << 30)
    assert path.stat().st_size < 8 << 20
    return path


def test_an_inflating_npz_member_is_not_decompressed_before_its_keys_are_checked(inflating_weights):
    import tracemalloc

    from rnndiag import load_weights

    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="optimizer_state"):
            load_weights(inflating_weights)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, peak
    line = _fast_refusal(["analyze", "--weights", inflating_weights])
    assert "optimizer_state" in line


def test_a_checkpoint_with_an_inflating_member_is_refused_before_decompressing(tmp_path):
    ck = tmp_path / "run.npz"
    assert_clean_exit(invoke([*TRAIN, "--steps", "2", "--checkpoint", ck, "--format", "none"]))
    with zipfile.ZipFile(ck, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        _zip_bomb_member(zf, "param/extra", 1 << 30)
    t0 = time.perf_counter()
    line = _fast_refusal([*TRAIN, "--steps", "4", "--checkpoint", ck, "--resume", "--format", "none"])
    assert "another model" in line and str(ck) in line
    assert time.perf_counter() - t0 < 10


def test_npz_weights_larger_than_memory_are_refused_before_reading(tmp_path, monkeypatch):
    path = save_weights(init_model("gru", 3, 16, seed=0), tmp_path / "w.npz")
    monkeypatch.setattr("rnndiag.memory.available_memory", lambda: (4096, "test limit"))
    line = _fast_refusal(["analyze", "--weights", path])
    assert "w.npz" in line and "available" in line and "test limit" in line


# -- float32 overflow is not "NaN or Inf" ----------------------------------------------------------------------------
def test_float32_overflow_of_an_input_names_the_file_and_the_fix(tmp_path):
    x = np.zeros((5, 2, 1))
    x[3, 1, 0] = 1e300
    np.save(tmp_path / "x.npy", x)
    line = _fast_refusal(["analyze", "--input", tmp_path / "x.npy", "--dtype", "float32", "--hidden-size", "4"])
    assert "x.npy" in line and "overflows float32" in line and "(3, 1, 0)" in line


def test_float32_overflow_of_weights_names_the_file_and_the_key(tmp_path):
    model = init_model("rnn_tanh", 2, 4, seed=0)
    params = dict(model.params)
    params["weight_hh_l0"] = params["weight_hh_l0"].copy()
    params["weight_hh_l0"][1, 2] = -1e300
    np.savez(tmp_path / "w.npz", **params)
    line = _fast_refusal(["analyze", "--weights", tmp_path / "w.npz", "--dtype", "float32"])
    assert "w.npz" in line and "weight_hh_l0" in line and "overflows float32" in line


# -- PyTorch tensors that hold no readable numbers -------------------------------------------------------------------
def test_meta_and_sparse_tensors_are_one_line_naming_file_and_tensor(tmp_path):
    torch = pytest.importorskip("torch")
    sd = {k: torch.from_numpy(v) for k, v in init_model("gru", 3, 4, seed=0).params.items()}
    meta = dict(sd, weight_hh_l0=torch.empty(12, 4, device="meta"))
    sparse = dict(sd, weight_hh_l0=sd["weight_hh_l0"].to_sparse())
    float8 = dict(sd, weight_hh_l0=sd["weight_hh_l0"].to(torch.float8_e4m3fn))
    for name, state, expect in (("meta.pt", meta, "meta device"), ("sparse.pt", sparse, "sparse tensor"),
                                ("float8.pt", float8, "numpy cannot hold")):
        torch.save(state, tmp_path / name)
        line = _fast_refusal(["analyze", "--weights", tmp_path / name])
        assert name in line and "weight_hh_l0" in line and expect in line, line


# -- forged and inconsistent checkpoints -----------------------------------------------------------------------------
def _rewrite_checkpoint(path: Path, change) -> None:
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    meta = json.loads(str(arrays["meta"]))
    result = change(meta, arrays)
    if isinstance(result, dict) and all(isinstance(v, np.ndarray) for v in result.values()):  # new arrays
        arrays = result
    elif "meta" in arrays:
        arrays["meta"] = np.array(json.dumps(meta))
    path.unlink()
    np.savez(path, **arrays)


FORGERIES = {
    "no meta": lambda m, a: {k: v for k, v in a.items() if k != "meta"},
    "meta not JSON": lambda m, a: {**a, "meta": np.array("{not json")},
    "meta a number": lambda m, a: {**a, "meta": np.array(3.0)},
    "no history": lambda m, a: m.pop("history"),
    "no step count": lambda m, a: m.pop("step_count"),
    "no clipper": lambda m, a: m.pop("clipper"),
    "no config key": lambda m, a: m["config"].pop("lr"),
    "history key missing": lambda m, a: m["history"].pop("cosine"),
    "history lengths differ": lambda m, a: m["history"]["grad_norm"].pop(),
    "param norms short": lambda m, a: next(iter(m["history"]["param_norms"].values())).pop(),
    "diag out of order": lambda m, a: m["history"]["diag"].reverse(),
    "step count wrong": lambda m, a: m.update(step_count=99),
    "optimizer state missing": lambda m, a: {k: v for k, v in a.items() if not k.startswith("m/")},
    "diag layer missing key": lambda m, a: m["history"]["diag"][0]["layers"][0].pop("sigma_max"),
    "per-step norms text": lambda m, a: m["history"]["diag"][0].update(grad_norm_per_step="abc"),
    "test loss text": lambda m, a: m["history"]["diag"][0].update(test_loss="q"),
    "clipped not flags": lambda m, a: m["history"].update(clipped=[{}] * len(m["history"]["clipped"])),
    "param norms a list": lambda m, a: m["history"].update(param_norms=[1, 2]),
    "diag without layers": lambda m, a: m["history"]["diag"][0].update(layers=[]),
    "loss a number": lambda m, a: m["history"].update(loss=5),
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_forged_checkpoints_are_refused_in_one_line(tmp_path, forgery):
    ck = tmp_path / "run.npz"
    assert_clean_exit(invoke([*TRAIN, "--steps", "6", "--diag-points", "3", "--checkpoint", ck, "--format", "none"]))
    _rewrite_checkpoint(ck, FORGERIES[forgery])
    line = _fast_refusal([*TRAIN, "--steps", "8", "--diag-points", "3", "--checkpoint", ck, "--resume",
                          "--format", "none"])
    assert "run.npz" in line and "start a new run" in line, line


def test_resume_with_another_cell_of_the_same_shapes_is_refused(tmp_path):
    ck = tmp_path / "tanh.npz"
    assert_clean_exit(invoke([*TRAIN, "--steps", "4", "--checkpoint", ck, "--format", "none"]))
    line = _fast_refusal([*TRAIN, "--steps", "6", "--cell", "rnn_relu", "--checkpoint", ck, "--resume",
                          "--format", "none"])
    assert "rnn_tanh model, not a rnn_relu" in line


def test_outputs_that_name_the_same_place_are_refused_before_work(tmp_path):
    line = _fast_refusal([*TRAIN, "--steps", "100000", "--checkpoint", tmp_path / "same.npz", "--json",
                          tmp_path / "same.npz", "--format", "none"])
    assert "--checkpoint and --json" in line
    line = _fast_refusal(["analyze", *SMALL, "--out", tmp_path / "x", "--json", tmp_path / "x"])
    assert "--json" in line and "--out" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_checkpoint_inside_the_report_folder_is_the_run_s_own(tmp_path):
    out = tmp_path / "t1"
    out.mkdir()
    assert_clean_exit(invoke([*TRAIN, "--steps", "6", "--out", out, "--checkpoint", out / "ck.npz", "-q"]))
    assert {"ck.npz", "metrics.json", "report.html"} <= {p.name for p in out.iterdir()}


def test_npy_of_an_unknown_format_version_is_one_line(tmp_path):
    buf = tmp_path / "v9.npy"
    np.save(buf, np.zeros((3, 2, 1)))
    raw = bytearray(buf.read_bytes())
    raw[6] = 9  # major version 9
    buf.write_bytes(bytes(raw))
    line = _fast_refusal(["analyze", *SMALL, "--input", buf])
    assert "v9.npy" in line and "version 9.0" in line
    v3 = tmp_path / "v3.npy"  # version 3.0 (utf-8 field names) reads like 2.0
    np.save(v3, np.zeros((3, 2, 1)))
    raw = bytearray(v3.read_bytes())
    header_len = int.from_bytes(raw[8:10], "little")  # 1.0: a 2-byte length; 3.0: 4 bytes
    header = bytes(raw[10:10 + header_len - 1]) + b"  \n"  # two bytes longer: 4-byte length, same alignment
    v3.write_bytes(b"\x93NUMPY\x03\x00" + len(header).to_bytes(4, "little") + header + bytes(raw[10 + header_len:]))
    assert_clean_exit(invoke(["analyze", "--input", v3, "--hidden-size", "4", "--format", "none", "-q"]))


def test_resume_with_fewer_steps_than_the_checkpoint_holds_is_refused(tmp_path):
    ck = tmp_path / "run.npz"
    assert_clean_exit(invoke([*TRAIN, "--steps", "20", "--checkpoint", ck, "--format", "none"]))
    line = _fast_refusal([*TRAIN, "--steps", "10", "--checkpoint", ck, "--resume", "--format", "none"])
    assert "already holds 20 iterations" in line and "--steps 20" in line
    res = invoke([*TRAIN, "--steps", "20", "--checkpoint", ck, "--resume", "--format", "none"])
    assert_clean_exit(res)
    assert "nothing was trained" in res.stdout


def test_checkpoints_are_private_and_reports_follow_the_umask(tmp_path):
    ck, out = tmp_path / "run.npz", tmp_path / "r"
    assert_clean_exit(invoke([*TRAIN, "--steps", "3", "--checkpoint", ck, "--out", out, "--format", "json"]))
    assert ck.stat().st_mode & 0o777 == 0o600
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "metrics.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert_clean_exit(invoke([*TRAIN, "--steps", "5", "--checkpoint", ck, "--resume", "--format", "none"]))
    assert ck.stat().st_mode & 0o777 == 0o600


# -- faults midway: one line, the work kept --------------------------------------------------------------------------
def _interrupt_training_at(monkeypatch, iteration: int):
    """Ctrl-C as training iteration ``iteration`` starts; returns a function that undoes it."""
    real = train_mod._iteration

    def interrupted(i, *args):
        if i == iteration:
            raise KeyboardInterrupt
        return real(i, *args)

    monkeypatch.setattr(train_mod, "_iteration", interrupted)
    return lambda: monkeypatch.setattr(train_mod, "_iteration", real)


def test_ctrl_c_after_a_checkpoint_names_it(tmp_path, monkeypatch):
    undo = _interrupt_training_at(monkeypatch, 25)
    ck = tmp_path / "run.npz"
    res = invoke([*TRAIN, "--steps", "100", "--checkpoint", ck, "--checkpoint-every", "10", "--format", "none"])
    assert res.exit_code == 130, (res.exit_code, res.stderr)
    assert "Traceback" not in res.stderr
    assert "iteration 25" in res.stderr and str(ck) in res.stderr and "holds 20 iterations" in res.stderr
    assert "--resume" in res.stderr
    undo()
    assert_clean_exit(invoke([*TRAIN, "--steps", "30", "--checkpoint", ck, "--resume", "--format", "none"]))


def test_a_train_run_writes_its_checkpoint_into_its_report_folder_as_it_goes(tmp_path, monkeypatch):
    """Without --checkpoint a killed run still keeps its work: the report folder holds a checkpoint from the
    first interval on."""
    undo = _interrupt_training_at(monkeypatch, 15)
    out = tmp_path / "r"
    res = invoke([*TRAIN, "--steps", "50", "--checkpoint-every", "10", "--out", out])
    assert res.exit_code == 130
    assert (out / "checkpoint.npz").is_file() and "holds 10 iterations" in res.stderr
    undo()
    res = invoke([*TRAIN, "--steps", "50", "--checkpoint", out / "checkpoint.npz", "--resume", "--out",
                  tmp_path / "r2", "--format", "json"])
    assert_clean_exit(res)
    assert len(json.loads((tmp_path / "r2" / "metrics.json").read_text())["history"]["loss"]) == 50


@pytest.mark.parametrize("quiet", [[], ["-q"]])
def test_a_full_disk_while_checkpointing_exits_1_with_the_history_kept(tmp_path, monkeypatch, quiet):
    real = train_mod.write_atomic
    calls = []

    def disk_full_on_third(path, data, **kw):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data, **kw)

    monkeypatch.setattr(train_mod, "write_atomic", disk_full_on_third)
    ck, out = tmp_path / "run.npz", tmp_path / "r"
    res = invoke([*TRAIN, "--steps", "50", "--checkpoint", ck, "--checkpoint-every", "10", "--out", out,
                  "--format", "json", *quiet])
    assert res.exit_code == 1, (res.exit_code, res.stderr, res.exception)
    assert "Traceback" not in res.stderr
    assert "No space left on device" in res.stderr and "run.npz" in res.stderr  # even with -q
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["history"]["loss"]) == 30 and m["failure"]
    with np.load(ck) as data:  # the last good checkpoint is whole
        assert len(json.loads(str(data["meta"]))["history"]["loss"]) == 20


def test_file_too_large_while_checkpointing_in_a_real_process(tmp_path):
    """RLIMIT_FSIZE: the kernel's "File too large" (EFBIG) on the checkpoint; exit 1, one reason on stderr."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    args = [sys.executable, "-m", "rnndiag", *TRAIN, "--hidden-size", "32", "--steps", "20", "--checkpoint",
            str(tmp_path / "run.npz"), "--checkpoint-every", "5", "--format", "none"]
    res = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120, preexec_fn=limit,
                         check=False)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr and "File too large" in res.stderr
    assert not list(tmp_path.glob(".run.npz*"))  # no temporary left behind


@pytest.mark.parametrize("command", [["init", "--hidden-size", "8", "--seq-len", "10", "--schemes", "pytorch"],
                                     ["clip", "--hidden-size", "8", "--seq-len", "10", "--steps", "3",
                                      "--strategies", "none"],
                                     [*TRAIN, "--steps", "3"]])
def test_memory_error_in_any_command_is_one_line(tmp_path, monkeypatch, command):
    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr("rnndiag.engine.forward", no_memory)
    monkeypatch.setattr("rnndiag.train.forward", no_memory)
    res = invoke([*command, "--out", tmp_path / "r", "--format", "json"])
    rc = res.exit_code
    assert ("Traceback" not in res.stderr and res.exception is None) or isinstance(res.exception, SystemExit)
    assert rc in (1, 2), (rc, res.stderr)
    assert "memory" in res.stderr


@pytest.mark.parametrize("command", [
    ["analyze", "--hidden-size", "64", "--seq-len", "200", "--batch-size", "200000"],
    ["init", "--hidden-size", "64", "--seq-len", "200", "--batch-size", "200000", "--schemes", "pytorch"],
    ["clip", "--hidden-size", "64", "--seq-len", "200", "--batch-size", "200000", "--strategies", "none"],
    ["train", "--hidden-size", "64", "--seq-len", "200", "--batch-size", "200000", "--steps", "2"],
])
def test_a_real_memory_error_under_an_address_space_cap_is_one_line(tmp_path, command):
    """Past the estimate (switched off here), a real MemoryError under RLIMIT_AS is still one line, exit 2."""
    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    code = ("import sys, rnndiag.memory as m; m.check_fits = lambda *a, **k: None; from rnndiag.cli import main; "
            f"sys.argv = ['rnndiag', *{[*command, '--format', 'none']!r}]; main()")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         preexec_fn=cap, check=False, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.splitlines()) == 1, res.stderr
    assert "memory" in res.stderr and "--batch-size" in res.stderr


def test_the_estimate_refuses_before_allocating(tmp_path):
    """--batch-size 1000000 is refused at once with the estimate, the limit and the option; nothing written."""
    for command in (["analyze"], ["init"], ["clip"], ["train"], ["forecast"]):
        line = _fast_refusal([*command, "--batch-size", "1000000", "--out", tmp_path / "r"], limit_s=10)
        assert "(estimate)" in line and "available" in line and "--batch-size" in line, line
        assert not (tmp_path / "r").exists()


# -- training runs that diverge are not bad input --------------------------------------------------------------------
def test_float32_weights_that_diverge_exit_1_with_the_history_kept(tmp_path):
    weights = save_weights(init_model("rnn_relu", 2, 8, init="identity", gain=3.0, seed=0, dtype=np.float32),
                           tmp_path / "w.npz")
    out = tmp_path / "r"
    res = invoke(["train", "--weights", weights, "--cell", "rnn_relu", "--task", "adding", "--seq-len", "60",
                  "--batch-size", "4", "--steps", "40", "--optimizer", "sgd", "--lr", "10", "--clip", "none",
                  "--out", out, "--format", "json", "-q"])
    assert res.exit_code == 1, (res.exit_code, res.stderr, res.exception)
    assert "training stopped: iteration" in res.stderr  # even with -q
    m = json.loads((out / "metrics.json").read_text())
    assert m["history"]["stopped"] and m["diverged"]
    res = invoke(["clip", "--weights", weights, "--cell", "rnn_relu", "--task", "adding", "--seq-len", "60",
                  "--batch-size", "4", "--steps", "40", "--optimizer", "sgd", "--lr", "10", "--strategies",
                  "none,global_norm:1", "--out", tmp_path / "c", "--format", "json", "-q"])
    assert res.exit_code in (0, 1) and "NaN or Inf" not in res.stderr, (res.exit_code, res.stderr)
    runs = json.loads((tmp_path / "c" / "metrics.json").read_text())["runs"]
    assert runs[0]["diverged"]


def test_clip_keeps_each_finished_run_on_disk_as_it_goes(tmp_path, monkeypatch):
    """A comparison killed in its second run keeps the first: runs_so_far.json in the report folder."""
    import rnndiag.experiments as experiments

    real, calls = experiments.train, []

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(experiments, "train", interrupt_second)
    out = tmp_path / "c"
    res = invoke(["clip", "--hidden-size", "8", "--seq-len", "10", "--batch-size", "4", "--steps", "5",
                  "--strategies", "none,global_norm:1", "--out", out])
    assert res.exit_code == 130 and "Traceback" not in res.stderr
    assert "runs_so_far.json holds the 1 finished run" in res.stderr
    kept = json.loads((out / "runs_so_far.json").read_text())["runs"]
    assert [r["label"] for r in kept] == ["none"] and len(kept[0]["loss"]) == 5


def test_ctrl_c_before_the_first_checkpoint_leaves_no_empty_folder(tmp_path, monkeypatch):
    _interrupt_training_at(monkeypatch, 3)
    monkeypatch.chdir(tmp_path)
    res = invoke([*TRAIN, "--steps", "50", "--checkpoint-every", "10"])
    assert res.exit_code == 130 and "no checkpoint had been written" in res.stderr
    assert list((tmp_path / "reports").iterdir()) == []


def _piped(tmp_path, args: str) -> subprocess.CompletedProcess:
    """``rnndiag ARGS | true``: the reader closes the pipe at once; the status is rnndiag's own."""
    return subprocess.run(f"{sys.executable} -m rnndiag {args} | true; exit ${{PIPESTATUS[0]}}", shell=True,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
                          executable="/bin/bash", env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


@pytest.mark.parametrize("args", [
    f"analyze {' '.join(SMALL)} --format none",
    f"analyze {' '.join(SMALL)} --json - --format json --out piped",
    f"{' '.join(TRAIN)} --steps 3 --format json --out piped",  # prints its table before writing the report
    "",  # bare rnndiag: the help
])
def test_a_closed_pipe_is_not_an_error(tmp_path, args):
    """The reader of stdout stops early (| head): no traceback, no error line, the command's own exit status
    (0 here; click and rich alone would exit 1), and the report is written all the same."""
    proc = _piped(tmp_path, args)
    assert "Traceback" not in proc.stderr and "Broken pipe" not in proc.stderr, proc.stderr
    assert "error" not in proc.stderr and proc.returncode == 0, (proc.returncode, proc.stderr)
    if "--out piped" in args:
        assert json.loads((tmp_path / "piped" / "metrics.json").read_text())


def test_train_clip_empty_names_the_clip_option(tmp_path):
    line = _fast_refusal([*TRAIN, "--clip", "", "--format", "none"])
    assert "--clip" in line and "--strategies" not in line


def test_sigint_during_training_names_the_checkpoint_in_a_real_process(tmp_path):
    ck = tmp_path / "run.npz"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rnndiag", *TRAIN, "--hidden-size", "32", "--seq-len", "50",
                             "--steps", "100000", "--checkpoint", ck, "--checkpoint-every", "5", "--format", "none"],
                            cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                            preexec_fn=interruptible)
    deadline = time.time() + 60
    while not ck.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert ck.exists()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and str(ck) in stderr and "--resume" in stderr
