"""The training loop: determinism, the recorded history, clipping, diagnostics, optimizers, divergence, checkpoints.

Every test here turns warnings into errors: a RuntimeWarning escaping from the loop is a failure.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from _helpers import central_diff

import rnndiag
from rnndiag.clip import global_norm
from rnndiag.tasks import Problem, input_size, make_task, out_size, readout, task_loss_grads
from rnndiag.train import History, TrainConfig, TrainResult, _Optimizer, loss_and_grads, train, training_problem

pytestmark = pytest.mark.filterwarnings("error")

REPO = Path(__file__).resolve().parents[1]
READOUT = ("readout.weight", "readout.bias")


def _model(cell="gru", task="adding", H=6, seed=0, **kw):
    return rnndiag.init_model(cell, input_size(task), H, seed=seed, **kw)


def _cfg(**kw):
    base = {"task": "adding", "seq_len": 8, "batch_size": 4, "steps": 10, "lr": 1e-2, "eval_batch": 8,
            "diag_points": 4}
    return TrainConfig(**{**base, **kw})


def _assert_consistent(h: History, params):
    n = h.iterations
    assert len(h.loss) == len(h.grad_norm) == len(h.grad_norm_clipped) == len(h.clipped) == len(h.cosine) == n
    assert set(h.param_norms) == set(params) | set(READOUT)
    for k, v in h.param_norms.items():
        assert len(v) == n, k


def _assert_same_history(a: History, b: History):
    for f in dataclasses.fields(History):
        assert getattr(a, f.name) == getattr(b, f.name), f"history.{f.name} differs"


def _assert_same_params(a: TrainResult, b: TrainResult, tol=1e-12):
    for k, v in a.model.params.items():
        np.testing.assert_allclose(b.model.params[k], v, rtol=0, atol=tol, err_msg=k)
    np.testing.assert_allclose(b.readout_w, a.readout_w, rtol=0, atol=tol)
    np.testing.assert_allclose(b.readout_b, a.readout_b, rtol=0, atol=tol)


# -- TrainConfig ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kw", "exc", "match"), [
    ({"task": "noise"}, ValueError, "task"),
    ({"task": "bogus"}, ValueError, "task"),
    ({"steps": 0}, ValueError, "steps"),
    ({"steps": -5}, ValueError, "steps"),
    ({"steps": 2.5}, TypeError, "steps"),
    ({"seq_len": 0}, ValueError, "seq_len"),
    ({"batch_size": -1}, ValueError, "batch_size"),
    ({"eval_batch": 0}, ValueError, "eval_batch"),
    ({"diag_points": 0}, ValueError, "diag_points"),
    ({"lr": 0}, ValueError, "lr"),
    ({"lr": 0.0}, ValueError, "lr"),
    ({"lr": -1e-3}, ValueError, "lr"),
    ({"lr": float("nan")}, ValueError, "lr"),
    ({"lr": float("inf")}, ValueError, "lr"),
    ({"lr": "0.1"}, ValueError, "lr"),
    ({"optimizer": "rmsprop"}, ValueError, "optimizer"),
    ({"optimizer": "Adam"}, ValueError, "optimizer"),
    ({"clip": "clipnorm"}, ValueError, "clipping strategy"),
    ({"clip": "global_norm", "clip_threshold": 0.0}, ValueError, "threshold"),
    ({"clip": "value", "clip_threshold": -1.0}, ValueError, "threshold"),
    ({"clip": "per_param", "clip_threshold": float("nan")}, ValueError, "threshold"),
    ({"clip": "autoclip", "clip_threshold": 150.0}, ValueError, "percentile"),
    ({"schedule": "cubic"}, ValueError, "schedule"),
    ({"checkpoint_every": -1}, ValueError, "checkpoint_every"),
])
def test_config_validation(kw, exc, match):
    with pytest.raises(exc, match=match):
        _cfg(**kw)


def test_config_accepts_valid_settings():
    for clip, thr in [("none", None), ("none", 3.0), ("value", 5), ("autoclip", 100.0), ("per_param", 0.1)]:
        _cfg(clip=clip, clip_threshold=thr)
    _cfg(optimizer="sgd", momentum=0.0, schedule="linear", checkpoint_every=0)


@pytest.mark.parametrize("kw", [{"momentum": float("nan")}, {"momentum": -0.5}, {"momentum": float("inf")},
                                {"lr": True}])
def test_config_rejects_bad_momentum_and_bool_lr(kw):
    with pytest.raises((ValueError, TypeError)):
        _cfg(optimizer="sgd", **kw)


# -- the diagnostic schedule --------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["log", "linear"])
@pytest.mark.parametrize("steps", [2, 3, 7, 50, 1000])
@pytest.mark.parametrize("points", [1, 2, 3, 5, 12])
def test_schedule_iterations(schedule, steps, points):
    its = _cfg(steps=steps, diag_points=points, schedule=schedule).schedule_iterations()
    assert its == sorted(set(its)) and all(isinstance(i, int) for i in its)
    assert its[0] == 0 and its[-1] == steps - 1
    assert all(0 <= i < steps for i in its)
    if points >= 3 or schedule == "linear":  # (log with 1 or 2 points: test_log_schedule_with_few_points)
        assert len(its) <= max(points, 2)
    if schedule == "linear" and steps >= points >= 2:
        assert len(its) == points
        np.testing.assert_allclose(its, np.linspace(0, steps - 1, points), atol=0.5 + 1e-9)
    if schedule == "log" and steps > 100 and points >= 5:
        assert its[1] == 1 and len(its) == points
        gaps = np.diff(its)
        assert (gaps[1:] >= gaps[:-1]).all()  # geometric: the gaps grow
        ratios = np.array(its[2:]) / np.array(its[1:-1])
        np.testing.assert_allclose(ratios, (steps - 1) ** (1 / (points - 2)), rtol=0.35)


def test_log_schedule_single_step():
    assert _cfg(steps=1, schedule="log").schedule_iterations() == [0]


def test_linear_schedule_single_step():
    assert _cfg(steps=1, schedule="linear").schedule_iterations() == [0]


@pytest.mark.parametrize("points", [1, 2])
def test_log_schedule_with_few_points(points):
    assert _cfg(steps=50, diag_points=points, schedule="log").schedule_iterations() == [0, 49]


@pytest.mark.parametrize("schedule", ["log", "linear"])
@pytest.mark.parametrize("steps", [1, 5, 100])
def test_more_points_than_steps_is_one_per_step_not_a_huge_array(schedule, steps):
    for points in (steps, steps + 1, 10**12):
        assert _cfg(steps=steps, diag_points=points, schedule=schedule).schedule_iterations() == list(range(steps))


# -- determinism and the history ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("cell", "task", "opt", "clip", "thr"), [
    ("gru", "adding", "adam", "global_norm", 0.5),
    ("lstm", "copy", "sgd", "autoclip", 50.0),
    ("rnn_tanh", "sine", "adam", "value", 0.05),
    ("rnn_relu", "adding", "sgd", "per_param", 0.1),
])
def test_deterministic_and_consistent(cell, task, opt, clip, thr):
    m = _model(cell, task)
    cfg = _cfg(task=task, optimizer=opt, clip=clip, clip_threshold=thr, steps=8, seed=5)
    a, b = train(m, cfg), train(m, cfg)
    _assert_same_history(a.history, b.history)
    _assert_same_params(a, b, tol=0)
    assert a.test_loss == b.test_loss and a.history.stopped is None and not a.diverged
    assert a.history.iterations == 8
    _assert_consistent(a.history, m.params)
    assert all(math.isfinite(x) for x in a.history.loss)
    assert a.baseline == make_task(task, 8, 1).baseline
    # another seed: other data, other history
    c = train(m, dataclasses.replace(cfg, seed=6))
    assert c.history.loss != a.history.loss
    # the model passed in is not modified
    for k, v in _model(cell, task).params.items():
        np.testing.assert_array_equal(m.params[k], v)


def test_history_records_what_loss_and_grads_returns():
    """Iteration 0: the recorded loss / norms are those of loss_and_grads on batch 0 with the seeded readout."""
    m = _model("lstm", "adding", H=5)
    cfg = _cfg(steps=1, clip="none", clip_threshold=None, seed=3)
    res = train(m, cfg)
    w, b = readout(5, 1, seed=np.random.default_rng([3, 7]))  # the seeded readout
    tb = make_task("adding", cfg.seq_len, cfg.batch_size, np.random.default_rng([3, 0, 0]))  # batch 0 of seed 3
    loss, grads, trace = loss_and_grads(m, Problem(tb, w, b, "test"))
    h = res.history
    assert h.loss[0] == loss
    assert h.grad_norm[0] == pytest.approx(global_norm(grads), rel=1e-15)
    assert h.grad_norm_clipped[0] == h.grad_norm[0] and h.clipped == [False] and h.cosine == [1.0]
    for k, g in grads.items():
        assert h.param_norms[k][0] == pytest.approx(float(np.linalg.norm(g)), rel=1e-15), k
    # the diagnostics at iteration 0 come from the same trace
    np.testing.assert_allclose(h.diag[0].grad_norm_per_step,
                               np.median(np.linalg.norm(trace.grad_h, axis=2), axis=1), rtol=1e-14)


def test_progress_callback():
    calls = []
    res = train(_model(), _cfg(steps=6), progress=lambda i, loss, gn: calls.append((i, loss, gn)))
    assert [c[0] for c in calls] == list(range(6))
    assert [c[1] for c in calls] == res.history.loss
    assert [c[2] for c in calls] == res.history.grad_norm


def test_result_serialises():
    res = train(_model("gru"), _cfg(steps=4))
    d = res.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["diverged"] is False and d["config"]["steps"] == 4
    assert History.from_dict(res.history.to_dict()) == res.history


# -- clipping inside the loop ---------------------------------------------------------------------------------------
def test_global_norm_clipping_in_the_loop():
    m = _model("rnn_tanh", H=8, init="orthogonal", gain=1.5)
    thr = 0.05
    res = train(m, _cfg(steps=12, clip="global_norm", clip_threshold=thr, lr=0.05, optimizer="sgd"))
    h = res.history
    assert any(h.clipped), "the threshold is meant to fire"
    for g, g_clip, fired, cos in zip(h.grad_norm, h.grad_norm_clipped, h.clipped, h.cosine):
        if fired:
            assert g_clip <= thr + 1e-6
            assert g_clip == pytest.approx(thr * g / (g + 1e-6), rel=1e-12)
            assert cos == pytest.approx(1.0, abs=1e-12)
        else:
            assert g <= thr + 1e-6 and g_clip == pytest.approx(g, rel=1e-15) and cos == 1.0


def test_value_clipping_in_the_loop_turns_the_direction():
    m = _model("rnn_tanh", H=8, init="orthogonal", gain=1.5)
    res = train(m, _cfg(steps=8, clip="value", clip_threshold=1e-3, optimizer="sgd"))
    h = res.history
    assert all(h.clipped)
    assert all(c < 1.0 for c in h.cosine)
    assert all(g_clip < g for g, g_clip in zip(h.grad_norm, h.grad_norm_clipped))


def test_no_clipping_in_the_loop():
    res = train(_model("gru"), _cfg(steps=5, clip="none", clip_threshold=None))
    h = res.history
    assert not any(h.clipped) and h.grad_norm == h.grad_norm_clipped and h.cosine == [1.0] * 5


# -- scheduled diagnostics ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("cell", "task", "schedule"), [
    ("lstm", "adding", "log"),
    ("gru", "copy", "linear"),
    ("rnn_tanh", "sine", "log"),
    ("rnn_relu", "adding", "linear"),
])
def test_scheduled_diagnostics(cell, task, schedule):
    T, L = 6, 2
    m = _model(cell, task, H=5, num_layers=L)
    cfg = _cfg(task=task, seq_len=T, steps=14, schedule=schedule, diag_points=5)
    res = train(m, cfg)
    diag = res.history.diag
    assert [d.iteration for d in diag] == cfg.schedule_iterations()
    steps = T + 20 if task == "copy" else T
    gates = {"lstm": {"i", "f", "g", "o"}, "gru": {"r", "z", "n"}}.get(cell, set())
    for d in diag:
        assert len(d.grad_norm_per_step) == steps
        assert all(math.isfinite(v) and v >= 0 for v in d.grad_norm_per_step)
        assert d.test_loss is not None and math.isfinite(d.test_loss) and d.test_loss >= 0
        assert len(d.layers) == L
        for layer in d.layers:
            assert math.isfinite(layer.spectral_radius) and layer.spectral_radius >= 0
            assert math.isfinite(layer.sigma_max) and layer.sigma_max >= layer.spectral_radius - 1e-12
            assert isinstance(layer.top_lyapunov, float)
            assert set(layer.gate_saturation) == gates
            assert all(0.0 <= s <= 1.0 for s in layer.gate_saturation.values())
        assert d.to_dict()["layers"][0]["spectral_radius"] == d.layers[0].spectral_radius
    # iteration 0 looks at the initial weights
    if cell.startswith("rnn"):
        for k, layer in enumerate(diag[0].layers):
            w = m.params[f"weight_hh_l{k}"]
            assert layer.spectral_radius == pytest.approx(np.abs(np.linalg.eigvals(w)).max(), rel=1e-10)
            assert layer.sigma_max == pytest.approx(np.linalg.norm(w, 2), rel=1e-10)


def test_test_loss_is_the_held_out_loss_of_the_final_model():
    m = _model("gru", H=4)
    cfg = _cfg(steps=5, eval_batch=16, seed=2)
    res = train(m, cfg)
    eb = training_problem(cfg, res.model, None, 0, held_out=True).batch
    assert eb.x.shape[1] == 16
    h = rnndiag.forward(res.model, eb.x).h
    assert res.test_loss == pytest.approx(task_loss_grads(eb, h, res.readout_w, res.readout_b)[0], rel=1e-14)
    # and differs from every training batch's data (held out)
    for i in range(5):
        assert not np.array_equal(training_problem(cfg, m, None, i).x[:, :4], eb.x[:, :4])


# -- optimizers against torch -----------------------------------------------------------------------------------------
def _opt_problem(seed=0):
    rng = np.random.default_rng(seed)
    params = {"weight_hh_l0": rng.standard_normal((4, 3)), "bias": rng.standard_normal(4),
              "readout.weight": rng.standard_normal((1, 3))}
    grads = [{k: rng.standard_normal(v.shape) * 10 ** rng.uniform(-2, 1) for k, v in params.items()}
             for _ in range(4)]
    return params, grads


def _run_ours(cfg, params, grads):
    opt = _Optimizer(cfg, params)
    out = []
    p = {k: v.copy() for k, v in params.items()}
    for g in grads:
        p = opt.step(p, g)
        out.append({k: v.copy() for k, v in p.items()})
    return out, opt


def _run_torch(torch, make_opt, params, grads):
    tp = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
    opt = make_opt(list(tp.values()))
    out = []
    for g in grads:
        for k, p in tp.items():
            p.grad = torch.from_numpy(g[k].copy())
        opt.step()
        out.append({k: p.detach().numpy().copy() for k, p in tp.items()})
    return out


@pytest.mark.torch
@pytest.mark.parametrize("momentum", [0.9, 0.0, 0.5])
def test_sgd_matches_torch(momentum):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    params, grads = _opt_problem(1)
    cfg = _cfg(optimizer="sgd", lr=0.03, momentum=momentum)
    ours, opt = _run_ours(cfg, params, grads)
    ref = _run_torch(torch, lambda ps: torch.optim.SGD(ps, lr=0.03, momentum=momentum), params, grads)
    assert opt.step_count == len(grads)
    for step, (a, b) in enumerate(zip(ours, ref)):
        for k in params:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-14, atol=1e-15, err_msg=f"step {step} {k}")


@pytest.mark.torch
@pytest.mark.parametrize("lr", [1e-3, 0.1])
def test_adam_matches_torch(lr):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    params, grads = _opt_problem(2)
    ours, _ = _run_ours(_cfg(optimizer="adam", lr=lr), params, grads)
    ref = _run_torch(torch, lambda ps: torch.optim.Adam(ps, lr=lr), params, grads)
    for step, (a, b) in enumerate(zip(ours, ref)):
        for k in params:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-13, atol=1e-15, err_msg=f"step {step} {k}")


def test_first_steps_by_hand():
    """SGD's first step is p - lr g (the buffer starts as g); Adam's first step moves each entry by ~lr."""
    p = {"w": np.array([1.0, -2.0, 3.0])}
    g = {"w": np.array([0.5, -4.0, 1e-3])}
    out = _Optimizer(_cfg(optimizer="sgd", lr=0.1, momentum=0.9), p).step(p, g)
    np.testing.assert_allclose(out["w"], p["w"] - 0.1 * g["w"], rtol=1e-15)
    out = _Optimizer(_cfg(optimizer="adam", lr=0.1), p).step(p, g)
    np.testing.assert_allclose(out["w"], p["w"] - 0.1 * np.sign(g["w"]), rtol=1e-6)
    np.testing.assert_array_equal(p["w"], [1.0, -2.0, 3.0])  # the input is not modified


# -- learning ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_loss_decreases_on_the_adding_task(cell):
    m = _model(cell, "adding", H=8, seed=0)
    res = train(m, _cfg(seq_len=10, batch_size=8, steps=50, lr=1e-2, optimizer="adam", seed=0))
    loss = res.history.loss
    first, last = float(np.mean(loss[:5])), float(np.mean(loss[-5:]))
    assert last < 0.6 * first, (first, last)
    assert res.test_loss < 0.35  # near (or under) the predict-1 baseline 1/6 from ~1 at the start


# -- gradients against finite differences ------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
@pytest.mark.parametrize("task", ["adding", "copy", "sine"])
def test_loss_and_grads_against_finite_differences(cell, task):
    T, B, H = 4 if task != "copy" else 1, 2, 3
    m = _model(cell, task, H=H, seed=4)
    rng = np.random.default_rng(9)
    w, b = rng.standard_normal((out_size(task), H)), rng.standard_normal(out_size(task))
    tb = make_task(task, T, B, seed=4)
    loss, grads, trace = loss_and_grads(m, Problem(tb, w, b, "test"))
    assert set(grads) == set(m.params) | set(READOUT)

    def total(params, ww, bb):
        h = rnndiag.forward(m.with_params(params), tb.x).h
        return task_loss_grads(tb, h, ww, bb)[0]

    assert loss == pytest.approx(total(m.params, w, b), rel=1e-15)
    fds = {READOUT[0]: central_diff(lambda a: total(m.params, a, b), w),
           READOUT[1]: central_diff(lambda a: total(m.params, w, a), b)}
    for k, v in m.params.items():
        fds[k] = central_diff(lambda a, k=k: total({**m.params, k: a}, w, b), v)
    for k, fd in fds.items():
        scale = float(np.max(np.abs(fd)))
        assert scale > 0, k
        err = float(np.max(np.abs(grads[k] - fd))) / scale
        assert err < 1e-6, f"{k}: relative error {err:.2e}"


# -- divergence --------------------------------------------------------------------------------------------------------
_STOP = re.compile(r"^iteration (\d+): ")


def _stopped_iteration(h: History) -> int:
    assert h.stopped is not None
    m = _STOP.match(h.stopped)
    assert m, h.stopped
    return int(m.group(1))


def test_exploding_relu_rnn_stops_cleanly():
    """IRNN with gain 3 and lr 10: the loss overflows; the run stops naming the iteration and the loss."""
    m = rnndiag.init_model("rnn_relu", 2, 8, init="identity", gain=3.0, seed=0)
    cfg = _cfg(seq_len=20, batch_size=8, steps=30, optimizer="sgd", lr=10.0, clip="none", clip_threshold=None)
    res = train(m, cfg)
    h = res.history
    it = _stopped_iteration(h)
    assert "loss" in h.stopped
    assert res.diverged and res.test_loss is None
    assert 0 < it < 30
    assert h.iterations == it  # the iterations before it are kept; the bad one is not recorded
    _assert_consistent(h, m.params)
    assert all(math.isfinite(x) for x in h.loss)
    assert all(np.isfinite(v).all() for v in res.model.params.values())
    json.dumps(res.to_dict(), allow_nan=False)


def test_huge_weights_stop_at_iteration_0():
    m = rnndiag.init_model("rnn_relu", 2, 4, init="identity", gain=1e20, seed=0)
    res = train(m, _cfg(seq_len=20, steps=5, optimizer="sgd", clip="none", clip_threshold=None))
    h = res.history
    assert _stopped_iteration(h) == 0 and "loss" in h.stopped
    assert h.iterations == 0 and h.diag == []
    _assert_consistent(h, m.params)
    for k, v in m.params.items():
        np.testing.assert_array_equal(res.model.params[k], v)


def _names_param_or_loss(msg, params):
    return "loss" in msg or any(k in msg for k in [*params, *READOUT])


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_update_that_overflows_a_parameter_stops_cleanly(opt):
    m = rnndiag.init_model("rnn_relu", 2, 8, init="identity", gain=3.0, seed=0)
    lr = 1e300 if opt == "sgd" else 1e308
    res = train(m, _cfg(seq_len=20, batch_size=8, steps=5, optimizer=opt, lr=lr, clip="none", clip_threshold=None))
    h = res.history
    assert _stopped_iteration(h) == 0 and h.iterations == 1
    assert "parameter" in h.stopped and _names_param_or_loss(h.stopped, m.params)
    _assert_consistent(h, m.params)


def test_global_norm_clipping_holds_when_the_norm_overflows():
    m = rnndiag.init_model("rnn_relu", 2, 8, init="identity", gain=3.0, seed=0)
    thr = 1.0
    res = train(m, _cfg(seq_len=20, batch_size=8, steps=20, optimizer="sgd", lr=1e8, clip="global_norm",
                        clip_threshold=thr))
    h = res.history
    _assert_consistent(h, m.params)
    for i, g_clip in enumerate(h.grad_norm_clipped):
        assert g_clip <= thr + 1e-6, f"iteration {i}: clipped norm {g_clip} above the threshold {thr}"


# -- checkpoints -------------------------------------------------------------------------------------------------------
RESUME_CASES = [
    ("gru", "adding", "adam", "global_norm", 0.5),
    ("lstm", "copy", "sgd", "autoclip", 50.0),
    ("rnn_tanh", "sine", "adam", "value", 0.01),
]


@pytest.mark.parametrize(("cell", "task", "opt", "clip", "thr"), RESUME_CASES)
def test_stop_and_resume_equals_an_uninterrupted_run(tmp_path, cell, task, opt, clip, thr):
    m = _model(cell, task, H=5, seed=1)
    cfg = _cfg(task=task, seq_len=6, steps=20, optimizer=opt, clip=clip, clip_threshold=thr, checkpoint_every=5,
               diag_points=6, seed=3)
    full = train(m, cfg, checkpoint=tmp_path / "full.npz")
    ck = tmp_path / "run.npz"
    part = train(m, cfg, checkpoint=ck, stop_after=12)  # a "kill" after 12 iterations
    assert part.history.iterations == 12
    with np.load(ck, allow_pickle=False) as z:
        assert len(json.loads(str(z["meta"]))["history"]["loss"]) == 12
    calls = []
    res = train(m, cfg, resume=ck, checkpoint=ck, progress=lambda i, *_: calls.append(i))
    assert calls == list(range(12, 20))  # nothing repeated, nothing skipped
    _assert_same_history(full.history, res.history)
    _assert_same_params(full, res)
    assert res.test_loss == pytest.approx(full.test_loss, rel=1e-12)
    # the optimizer state (and AutoClip's history) too
    with np.load(tmp_path / "full.npz", allow_pickle=False) as a, np.load(ck, allow_pickle=False) as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            if k != "meta":
                np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-12, err_msg=k)
        ma, mb = json.loads(str(a["meta"])), json.loads(str(b["meta"]))
        assert ma["step_count"] == mb["step_count"] == 20
        assert ma["clipper"] == mb["clipper"]
        assert ma["history"] == mb["history"]


def test_resume_twice_and_resume_a_finished_run(tmp_path):
    m = _model("gru", H=4)
    cfg = _cfg(steps=12, checkpoint_every=3)
    full = train(m, cfg)
    ck = tmp_path / "c.npz"
    train(m, cfg, checkpoint=ck, stop_after=4)
    train(m, cfg, resume=ck, checkpoint=ck, stop_after=5)
    res = train(m, cfg, resume=ck, checkpoint=ck)
    _assert_same_history(full.history, res.history)
    _assert_same_params(full, res)
    again = train(m, cfg, resume=ck)
    _assert_same_history(full.history, again.history)
    _assert_same_params(full, again)


def test_checkpoint_file_format(tmp_path):
    m = _model("lstm", H=4)
    cfg = _cfg(steps=7, checkpoint_every=5)
    ck = tmp_path / "sub" / "ck.npz"
    res = train(m, cfg, checkpoint=ck)
    assert ck.exists()
    assert [p.name for p in ck.parent.iterdir()] == ["ck.npz"]  # no temporary files left behind
    with np.load(ck, allow_pickle=False) as z:
        files = set(z.files)
        meta = json.loads(str(z["meta"]))
        names = [*m.params, *READOUT]
        assert files == {"meta"} | {f"{p}/{k}" for p in ("param", "m", "v") for k in names}
        for k in m.params:
            np.testing.assert_array_equal(z[f"param/{k}"], res.model.params[k])
        np.testing.assert_array_equal(z["param/readout.weight"], res.readout_w)
    assert meta["config"] == dataclasses.asdict(cfg)
    assert meta["step_count"] == 7 and len(meta["history"]["loss"]) == 7
    assert History.from_dict(meta["history"]) == res.history


def test_checkpoint_cadence(tmp_path):
    """Seen from inside the run: the file on disk always holds the last multiple of checkpoint_every."""
    ck = tmp_path / "c.npz"
    seen = []

    def progress(i, *_):
        if ck.exists():
            with np.load(ck, allow_pickle=False) as z:
                seen.append((i, len(json.loads(str(z["meta"]))["history"]["loss"])))
        else:
            seen.append((i, None))

    train(_model("gru", H=4), _cfg(steps=12, checkpoint_every=5), checkpoint=ck, progress=progress)
    assert seen == [(i, None if i < 5 else 5 * (i // 5)) for i in range(12)]
    with np.load(ck, allow_pickle=False) as z:  # and the final one at the end
        assert len(json.loads(str(z["meta"]))["history"]["loss"]) == 12


def test_real_kill_then_resume(tmp_path):
    """A subprocess trains with checkpoints and is SIGKILLed mid-way; resuming gives the uninterrupted run."""
    if not hasattr(signal, "SIGKILL"):
        pytest.skip("needs SIGKILL")
    ck = tmp_path / "killed.npz"
    cfg_kw = {"task": "adding", "seq_len": 8, "batch_size": 4, "steps": 40, "lr": 1e-2, "eval_batch": 8,
              "diag_points": 6, "checkpoint_every": 5, "seed": 11, "clip": "autoclip", "clip_threshold": 90.0}
    script = tmp_path / "victim.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        import rnndiag
        from rnndiag.train import TrainConfig, train
        m = rnndiag.init_model("lstm", 2, 5, seed=2)
        train(m, TrainConfig(**{cfg_kw!r}), checkpoint=sys.argv[1], progress=lambda *a: time.sleep(0.05))
        print("finished")
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(script), str(ck)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not ck.exists():
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"the training subprocess ended early ({proc.returncode}): {err.decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint appeared within 60 s")
            time.sleep(0.01)
        time.sleep(0.15)  # let it get a little further, then kill it mid-way
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert b"finished" not in out
    with np.load(ck, allow_pickle=False) as z:
        done = len(json.loads(str(z["meta"]))["history"]["loss"])
    assert done % 5 == 0 and 5 <= done < 40, done

    cfg = TrainConfig(**cfg_kw)
    m = rnndiag.init_model("lstm", 2, 5, seed=2)
    res = train(m, cfg, resume=ck)
    full = train(m, cfg)
    _assert_same_history(full.history, res.history)
    _assert_same_params(full, res)


def test_resume_with_nonfinite_diagnostics(tmp_path):
    m = _model("rnn_relu", H=4, seed=1)
    p = m.state_dict()
    p["weight_ih_l0"][:] = 0.0
    p["bias_ih_l0"][:] = -50.0  # every unit dead: zero Jacobians, top Lyapunov exponent -inf
    m = m.with_params(p)
    cfg = _cfg(steps=10, optimizer="sgd", lr=0.05, diag_points=3, checkpoint_every=5)
    full = train(m, cfg)
    assert full.history.diag[0].layers[0].top_lyapunov == -math.inf
    ck = tmp_path / "c.npz"
    train(m, cfg, checkpoint=ck, stop_after=6)
    res = train(m, cfg, resume=ck)
    _assert_same_history(full.history, res.history)


@pytest.mark.parametrize(("field", "value"), [
    ("seed", 99), ("batch_size", 3), ("seq_len", 7), ("optimizer", "sgd"), ("clip", "value"),
])
def test_resume_with_a_different_config(tmp_path, field, value):
    m = _model("gru", H=4)
    cfg = _cfg(steps=6)
    ck = tmp_path / "c.npz"
    train(m, cfg, checkpoint=ck, stop_after=3)
    with pytest.raises(ValueError, match=field):
        train(m, dataclasses.replace(cfg, **{field: value}), resume=ck)


def test_resume_with_a_different_task(tmp_path):
    m = _model("gru", "adding", H=4)
    ck = tmp_path / "c.npz"
    train(m, _cfg(steps=4), checkpoint=ck, stop_after=2)
    with pytest.raises(ValueError, match="checkpoint"):
        train(m, _cfg(steps=4, task="sine"), resume=ck)


@pytest.mark.parametrize(("field", "value"), [("lr", 0.5), ("momentum", 0.1), ("clip_threshold", 0.01)])
def test_resume_with_different_hyperparameters(tmp_path, field, value):
    m = _model("gru", H=4)
    cfg = _cfg(steps=6, optimizer="sgd")
    ck = tmp_path / "c.npz"
    train(m, cfg, checkpoint=ck, stop_after=3)
    with pytest.raises(ValueError, match=field):
        train(m, dataclasses.replace(cfg, **{field: value}), resume=ck)


def test_resume_with_another_model(tmp_path):
    ck = tmp_path / "c.npz"
    train(_model("gru", H=4), _cfg(steps=4), checkpoint=ck, stop_after=2)
    for other in (_model("gru", H=5), _model("lstm", H=4), _model("gru", H=4, num_layers=2)):
        with pytest.raises(ValueError, match="another model"):
            train(other, _cfg(steps=4), resume=ck)


def test_resume_from_a_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train(_model(), _cfg(steps=3), resume=tmp_path / "nope.npz")


def _corrupt_files(tmp_path, good: Path):
    raw = good.read_bytes()
    (tmp_path / "garbage.npz").write_bytes(b"this is not a zip file at all" * 10)
    (tmp_path / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "empty.npz").write_bytes(b"")
    with np.load(good, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(tmp_path / "nometa.npz", **{k: v for k, v in arrays.items() if k != "meta"})
    np.savez(tmp_path / "badjson.npz", **{**arrays, "meta": np.array("{not json")})
    np.savez(tmp_path / "pickled.npz", **{**arrays, "meta": np.array([{"a": 1}], dtype=object)})
    return ["garbage", "truncated", "empty", "nometa", "badjson", "pickled"]


def test_resume_from_a_corrupt_checkpoint(tmp_path):
    good = tmp_path / "good.npz"
    m = _model("gru", H=4)
    train(m, _cfg(steps=4), checkpoint=good, stop_after=2)
    # (the truncated zip leaks its file handle: test_corrupt_checkpoint_does_not_leak_the_file; keep the
    # ResourceWarning inside this test instead of letting it surface in a later one)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        for name in _corrupt_files(tmp_path, good):
            with pytest.raises(ValueError, match=r"cannot be read|not an rnndiag checkpoint|damaged|pickled"):
                train(m, _cfg(steps=4), resume=tmp_path / f"{name}.npz")
        gc.collect()


def test_corrupt_checkpoint_does_not_leak_the_file(tmp_path):
    good = tmp_path / "good.npz"
    m = _model("gru", H=4)
    train(m, _cfg(steps=4), checkpoint=good, stop_after=2)
    bad = tmp_path / "truncated.npz"
    raw = good.read_bytes()
    bad.write_bytes(raw[: len(raw) // 2])
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="cannot be read"):
            train(m, _cfg(steps=4), resume=bad)
        gc.collect()
    leaks = [str(w.message) for w in rec if issubclass(w.category, ResourceWarning)]
    assert not leaks, leaks
