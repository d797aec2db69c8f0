"""The sweep engine (``rnndiag.sweep.run``) and ``rnndiag sweep``: grids, the SQLite database (resume, retry,
lock, a changed grid), a real Dask ``LocalCluster``, a ``dask scheduler`` + ``dask worker`` started as separate
processes, a worker that dies, and a point's numbers equal to ``rnndiag analyze``'s bit for bit."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sweep_toy
from _cli_helpers import invoke, result_stderr
from threadpoolctl import threadpool_limits

from rnndiag.sweep import GridError, SweepDB, SweepDBError, make_grid, parse_axis, run
from rnndiag.sweep import engine as engine_mod
from rnndiag.sweep.grid import check_size

TESTS = str(Path(__file__).resolve().parent)


# -- grids --------------------------------------------------------------------------------------------------------
def test_axis_specs():
    assert parse_axis("gain=0.5:3:6") == ("gain", (0.5, 1.0, 1.5, 2.0, 2.5, 3.0))
    assert parse_axis("lr=1e-4:1e-2:3:log") == ("lr", (1e-4, 1e-3, 1e-2))
    assert parse_axis("seed=0..3") == ("seed", (0, 1, 2, 3))
    assert parse_axis("cell=lstm,gru") == ("cell", ("lstm", "gru"))
    assert parse_axis("hidden-size=16,32") == ("hidden_size", (16, 32))


@pytest.mark.parametrize("spec, fragment", [
    ("gain", "write NAME=VALUES"), ("gain=", "has no values"), ("gain=1:2", "START:STOP:COUNT"),
    ("gain=1:2:0", "COUNT must be a positive integer"), ("lr=0:1:3:log", "positive ends"),
    ("seed=3..1", "A <= B"), ("gain=1:x:3", "not a number"),
])
def test_bad_axis_specs(spec, fragment):
    with pytest.raises(GridError, match=fragment):
        parse_axis(spec)


def test_grid_file_and_limits(tmp_path):
    f = tmp_path / "g.toml"
    f.write_text('[grid]\ngain = {start = 0.5, stop = 1.5, num = 3}\ncell = ["lstm", "gru"]\nseed = "0..1"\n')
    grid = make_grid(["hidden_size=8"], f)
    assert grid == {"gain": (0.5, 1.0, 1.5), "cell": ("lstm", "gru"), "seed": (0, 1), "hidden_size": (8,)}
    assert check_size(grid, 100) == 12
    with pytest.raises(GridError, match=r"has 12 points .* --max-points 12"):
        check_size(grid, 10)
    with pytest.raises(GridError, match="the grid is empty"):
        check_size({}, 10)
    with pytest.raises(GridError, match="given twice"):
        make_grid(["gain=1,2", "gain=3"])


# -- the engine, in-process ---------------------------------------------------------------------------------------
def test_in_process_resume_and_retry(tmp_path):
    db = tmp_path / "s.sqlite"
    grid = make_grid(["a=1..3", "b=1,2"])
    r = run(grid, sweep_toy.fails_on_two, db, workers=1)
    assert r.counts == {"pending": 0, "running": 0, "done": 4, "failed": 2} and r.mode == "in-process"
    with SweepDB(db) as s:
        failed = s.rows("failed")
    assert {f["params"]["a"] for f in failed} == {2} and "a = 2 is not allowed" in failed[0]["error"]
    again = run(grid, sweep_toy.fails_on_two, db, workers=1)  # nothing new: finished and failed points stay
    assert again.mode == "nothing to do" and again.counts["done"] == 4 and again.counts["failed"] == 2
    retried = run(grid, sweep_toy.fails_on_two, db, workers=1, retry_failed=True)
    assert retried.mode == "in-process" and retried.counts["failed"] == 2
    with SweepDB(db) as s:
        assert {f["attempts"] for f in s.rows("failed")} == {2}
    with pytest.raises(SweepDBError, match=r"holds a sweep of sweep_toy\.fails_on_two, not sweep_toy\.product"):
        run(grid, sweep_toy.product, db, workers=1)


def test_running_points_of_a_killed_client_become_pending(tmp_path):
    db = tmp_path / "s.sqlite"
    grid = make_grid(["a=1..4", "b=1"])
    run(grid, sweep_toy.product, db, workers=1)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE points SET status = 'running', metrics = NULL WHERE json_extract(params, '$.a') > 2")
    r = run(grid, sweep_toy.product, db, workers=1)
    assert r.counts["done"] == 4 and r.mode == "in-process"


def test_a_second_client_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path):
    db = tmp_path / "s.sqlite"
    grid = make_grid(["a=1,2", "b=1"])
    run(grid, sweep_toy.product, db, workers=1)
    with sqlite3.connect(db) as conn:  # a live client: this test's parent process
        conn.execute("INSERT INTO lock (id, pid, host, since) VALUES (1, ?, ?, ?)",
                     (os.getppid(), socket.gethostname(), time.time()))
    with pytest.raises(SweepDBError, match=r"in use by another sweep client \(pid"):
        run(grid, sweep_toy.product, db, workers=1)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE lock SET pid = ?", (int(dead.stdout),))
    assert run(grid, sweep_toy.product, db, workers=1).counts["done"] == 2


def test_a_changed_grid_is_refused_unless_extended(tmp_path):
    db = tmp_path / "s.sqlite"
    run(make_grid(["a=1,2", "b=1"]), sweep_toy.product, db, workers=1)
    with pytest.raises(SweepDBError, match=r"the grid differs .* --extend"):
        run(make_grid(["a=1,2,3", "b=1"]), sweep_toy.product, db, workers=1)
    r = run(make_grid(["a=1,2,3", "b=1"]), sweep_toy.product, db, workers=1, extend=True)
    assert r.counts["done"] == 3
    with pytest.raises(SweepDBError, match="cannot add or remove axes"):
        run(make_grid(["a=1,2,3", "c=1"]), sweep_toy.product, db, workers=1, extend=True)


def test_without_dask_it_runs_in_process_and_says_how(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_mod, "dask_available", lambda: False)
    r = run(make_grid(["a=1,2", "b=1"]), sweep_toy.product, tmp_path / "s.sqlite", workers=2)
    assert r.mode == "in-process" and any("pip install 'rnndiag[dask]'" in n for n in r.notes)


# -- Dask ---------------------------------------------------------------------------------------------------------
distributed = pytest.importorskip("distributed", reason="the cluster tests need dask[distributed]")


@pytest.fixture
def worker_path(monkeypatch):
    """Worker processes import the point functions from this folder."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]))


@pytest.mark.slow
def test_local_cluster_matches_in_process(tmp_path, worker_path):
    grid = make_grid(["a=0:1:5", "b=1,2"])
    r = run(grid, sweep_toy.product, tmp_path / "c.sqlite", workers=2)
    assert r.mode.startswith("local cluster of 2") and r.counts["done"] == 10
    local = run(grid, sweep_toy.product, tmp_path / "l.sqlite", workers=1)
    with SweepDB(tmp_path / "c.sqlite") as c, SweepDB(tmp_path / "l.sqlite") as lo:
        assert {(json.dumps(x["params"]), json.dumps(x["metrics"])) for x in c.rows()} == \
            {(json.dumps(x["params"]), json.dumps(x["metrics"])) for x in lo.rows()}
        assert len({x["worker"] for x in c.rows()}) == 2  # two worker processes took part
    assert local.mode == "in-process"


@pytest.mark.slow
def test_a_point_that_kills_its_worker_is_resubmitted_once_then_failed(tmp_path, worker_path):
    grid = make_grid(["a=1..3", "b=1"])
    r = run(grid, sweep_toy.dies_on_two, tmp_path / "k.sqlite", workers=2)
    assert r.counts == {"pending": 0, "running": 0, "done": 2, "failed": 1}
    with SweepDB(tmp_path / "k.sqlite") as s:
        failed = s.rows("failed")[0]
    assert failed["params"]["a"] == 2 and failed["attempts"] == 2
    assert "worker died running this point (2 attempt(s)); worker memory limit" in failed["error"]


@pytest.mark.slow
def test_scheduler_and_worker_started_as_separate_processes(tmp_path, worker_path):
    dask_bin = Path(sys.executable).parent / "dask"
    info = tmp_path / "scheduler.json"
    env = dict(os.environ)
    sched = subprocess.Popen([str(dask_bin), "scheduler", "--scheduler-file", str(info), "--port", "0",
                              "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        for _ in range(300):
            if info.exists() and info.stat().st_size > 0:
                break
            time.sleep(0.1)
        address = json.loads(info.read_text())["address"]
        worker = subprocess.Popen([str(dask_bin), "worker", address, "--nworkers", "1", "--nthreads", "1",
                                   "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        r = run(make_grid(["a=1..4", "b=2"]), sweep_toy.product, tmp_path / "s.sqlite", scheduler=address)
        assert r.mode == f"scheduler {address}" and r.counts["done"] == 4
        assert any("allowed-failures" in n for n in r.notes)
    finally:
        for p in (worker, sched):
            if p is not None:
                p.terminate()
                p.wait(timeout=30)


def test_an_unreachable_scheduler_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_mod, "CONNECT_TIMEOUT", 2)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    r = invoke(["sweep", "--grid", "gain=1,2", "--scheduler", f"tcp://127.0.0.1:{port}", "--db",
                tmp_path / "u.sqlite", "--format", "none"])
    err = result_stderr(r)
    assert r.exit_code == 2 and f"tcp://127.0.0.1:{port}" in err and len(err.strip().splitlines()) == 1, err
    assert time.perf_counter() - t0 < 30


# -- rnndiag sweep --------------------------------------------------------------------------------------------------
def test_a_point_equals_rnndiag_analyze_bit_for_bit(tmp_path):
    args = ["--cell", "gru", "--init", "orthogonal", "--gain", "1.5", "--hidden-size", "12", "--task", "adding",
            "--seq-len", "30", "--batch-size", "4", "--seed", "3"]
    with threadpool_limits(limits=1):
        single = invoke(["analyze", *args, "--format", "none", "--json", "-", "--quiet"])
    assert single.exit_code == 0, result_stderr(single)
    one = json.loads(single.stdout)
    r = invoke(["sweep", "--grid", "cell=gru", "--grid", "init=orthogonal", "--grid", "gain=1.5", "--grid",
                "hidden_size=12", "--grid", "task=adding", "--grid", "seq_len=30", "--grid", "batch_size=4",
                "--grid", "seed=3", "--workers", "1", "--db", tmp_path / "b.sqlite", "--format", "none",
                "--json", "-", "--quiet"])
    assert r.exit_code == 0, result_stderr(r)
    point = json.loads(r.stdout)["points"][0]
    top = one["layers"][-1]
    assert point["verdict"] == one["verdict"] and point["horizon_steps"] == top["horizon_steps"]
    assert point["lyapunov_top"] == top["lyapunov_top"] and point["decay_per_step"] == top["decay_per_step"]
    assert point["global_grad_norm"] == one["global_grad_norm"]
    assert point["spectral_radius"] == top["spectral_radius"]


@pytest.mark.parametrize("args, fragment", [
    (["--grid", "colour=red"], "unknown axis 'colour'"),
    (["--grid", "cell=transformer"], "axis cell: unknown value 'transformer'"),
    (["--grid", "gain=0.5:3:200", "--grid", "seed=0..99", "--max-points", "1000"], "20,000 points"),
    ([], "the grid is empty"),
    (["--grid", "hidden_size=0"], "not a positive integer"),
])
def test_bad_sweeps_are_one_line(tmp_path, args, fragment):
    r = invoke(["sweep", *args, "--db", tmp_path / "x.sqlite", "--format", "none", "--workers", "1"])
    err = result_stderr(r)
    assert r.exit_code == 2 and fragment in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_cli_sweep_report_and_export(tmp_path):
    out, csv_path = tmp_path / "rep", tmp_path / "points.csv"
    args = ["sweep", "--grid", "gain=0.5,1.5", "--grid", "init=xavier_normal,orthogonal", "--grid", "hidden_size=8",
            "--grid", "seq_len=20", "--grid", "input_scale=0", "--grid", "batch_size=2", "--workers", "1", "--db",
            tmp_path / "r.sqlite", "--out", out, "--export", csv_path]
    r = invoke(args)
    assert r.exit_code == 0, result_stderr(r)
    m = json.loads((out / "metrics.json").read_text())
    assert m["counts"]["done"] == 4 and m["x_axis"] == "gain" and m["y_axis"] == "init"
    assert m["mean_field"] is not None and m["phases"]["lyapunov_top"]["z"]
    assert [p.name for p in sorted(out.glob("*.png"))] == ["mean_field.png", "phase_decay_per_step.png",
                                                          "phase_horizon_fraction.png", "phase_lyapunov_top.png"]
    assert csv_path.read_text().splitlines()[0].startswith("batch_size,gain,hidden_size,init")
    assert m["ranking"][0]["rank"] == 1 and "looked_at" in m
