"""The trainability forecast: its measurements (exact where there is a closed form), the cost rule on a simulated
clock, the fitted model's arithmetic, the words of a forecast, and the commands that show it."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from _cli_helpers import assert_clean_exit, invoke

from rnndiag import forecast as fc
from rnndiag import init_model
from rnndiag.cells import gate_rows
from rnndiag.tasks import DIAGNOSIS_STREAM, task_problem


def _problem(model, task="adding", T=20, B=8, seed=0):
    return task_problem(task, T, B, seed, model.hidden_size, stream=DIAGNOSIS_STREAM, input_size=model.input_size)


# -- measurements -------------------------------------------------------------------------------------------------
def test_reach_is_zero_without_recurrence_and_full_with_a_pure_memory():
    """W_hh = 0: the loss at the last step cannot depend on an earlier input (exact zero gradient); an identity
    recurrence with a linear-range relu keeps every input: the gradient on x_t is the same at every step."""
    m = init_model("rnn_tanh", 2, 8, seed=0)
    p = dict(m.params)
    p["weight_hh_l0"] = np.zeros_like(p["weight_hh_l0"])
    r = fc.gradient_reach(m.with_params(p), _problem(m), "adding", 20)
    assert r.reach == -math.inf
    assert r.horizon_steps == 1 and not r.horizon_censored

    relu = init_model("rnn_relu", 2, 8, seed=0)
    p = dict(relu.params)
    p["weight_hh_l0"] = np.eye(8)
    p["weight_ih_l0"] = np.abs(p["weight_ih_l0"])  # inputs are >= 0: every pre-activation stays positive
    p["bias_ih_l0"] = np.abs(p["bias_ih_l0"]) + 0.1
    p["bias_hh_l0"] = np.zeros(8)
    r = fc.gradient_reach(relu.with_params(p), _problem(relu), "adding", 20)
    assert r.reach == pytest.approx(0.0, abs=1e-12)  # h_T = sum of W x_t + b: dL/dx_t is the same for every t
    assert r.horizon_censored


def test_state_scale_is_the_log_rms_of_the_hidden_state():
    """W_hh = 0 and zero biases: h_t = tanh(W_ih x_t) exactly; zero input weights too: h = 0, scale -inf."""
    m = init_model("rnn_tanh", 2, 8, seed=0)
    p = dict(m.params)
    p.update(weight_hh_l0=np.zeros((8, 8)), bias_ih_l0=np.zeros(8), bias_hh_l0=np.zeros(8))
    problem = _problem(m)
    r = fc.gradient_reach(m.with_params(p), problem, "adding", 20)
    h = np.tanh(problem.x @ p["weight_ih_l0"].T)
    assert r.state_scale == pytest.approx(math.log10(np.sqrt(np.mean(h ** 2))), abs=1e-12)
    p["weight_ih_l0"] = np.zeros((8, 2))
    assert fc.gradient_reach(m.with_params(p), problem, "adding", 20).state_scale == -math.inf
    small = fc.zero_cost(init_model("gru", 2, 16, init="tutorial", seed=0), "adding", 20, seed=0)
    default = fc.zero_cost(init_model("gru", 2, 16, seed=0), "adding", 20, seed=0)
    assert small["state_scale_init"] < default["state_scale_init"] - 1  # 0.01 randn weights: a tiny state


@pytest.mark.parametrize("cell, gate", [("lstm", "f"), ("gru", "z")])
def test_shift_memory_gate_moves_exactly_that_bias(cell, gate):
    m = init_model(cell, 2, 6, num_layers=2, seed=1)
    s = fc.shift_memory_gate(m, 2.0)
    rows = gate_rows(cell, gate, 6)
    for k in range(2):
        b0, b1 = m.params[f"bias_ih_l{k}"], s.params[f"bias_ih_l{k}"]
        np.testing.assert_array_equal(b1[rows], b0[rows] + 2.0)
        mask = np.ones(b0.size, bool)
        mask[rows] = False
        np.testing.assert_array_equal(b1[mask], b0[mask])
        np.testing.assert_array_equal(s.params[f"bias_hh_l{k}"], m.params[f"bias_hh_l{k}"])
    assert fc.shift_memory_gate(init_model("rnn_tanh", 2, 6, seed=0), 2.0) is None


def test_a_raised_update_gate_lets_a_vanishing_gru_reach_back():
    """The seed article's 0.01 randn GRU: the gradient vanishes at initialization; raising the update gate's bias
    (what training the gate can do) lengthens the horizon."""
    m = init_model("gru", 2, 16, init="tutorial", seed=0)
    zc = fc.zero_cost(m, "adding", 50, 0)
    assert zc["input_horizon_init"] < 50 and not zc["input_horizon_init_censored"]
    assert zc["reach_gate"] > zc["reach_init"] + 3
    assert zc["input_horizon_gate"] > zc["input_horizon_init"]


def test_loss_trend_is_the_power_law_exponent():
    steps = np.arange(1, 201)
    assert fc._loss_trend(list(0.5 * steps ** -0.7)) == pytest.approx(-0.7, abs=0.02)
    assert fc._loss_trend(list(np.full(200, 0.3))) == pytest.approx(0.0, abs=1e-12)
    assert fc._loss_trend([1.0] * 5) is None


# -- the model ----------------------------------------------------------------------------------------------------
def test_predict_is_the_logistic_of_the_table(monkeypatch):
    names = fc.ZERO_COST_FEATURES
    model = {"intercept": 0.5, "coefficients": {n: 0.0 for n in names} | {"reach_init": 0.25, "gated": -1.0},
             "centers": {n: 0.0 for n in names} | {"reach_init": -2.0}}
    monkeypatch.setitem(fc.COEFFICIENTS, "zero_cost", model)
    feats = {n: 0.0 for n in names} | {"reach_init": -4.0, "gated": 1.0}
    p, terms = fc.predict(feats, "zero_cost")
    assert terms["reach_init"] == -0.5 and terms["gated"] == -1.0  # 0.25 x (-4 - (-2)); -1 x (1 - 0)
    assert p == pytest.approx(1 / (1 + math.exp(-(0.5 - 0.5 - 1.0))), abs=1e-15)


def test_centering_keeps_the_fitted_model():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 2)) + np.array([3.0, -1.0])
    raw = {"intercept": 0.3, "a": 1.5, "b": -0.7}
    c = fc.centered(raw, X, ["a", "b"])
    for x in X[:5]:
        z_raw = raw["intercept"] + 1.5 * x[0] - 0.7 * x[1]
        z_c = c["intercept"] + sum(c["coefficients"][n] * (v - c["centers"][n]) for n, v in zip("ab", x))
        assert z_c == pytest.approx(z_raw, abs=1e-12)


def test_features_are_clipped_to_their_ranges():
    m = {"reach_init": -math.inf, "reach_gate": 5.0, "lyapunov_top": None, "target_loss": 0.01,
         "state_scale_init": -30.0, "probe_steps": 0, "hidden_size": 16}
    f = fc.features(m, fc.Budget(steps=100), "adding", 20, "gru")
    assert f["reach_init"] == fc.FEATURES["reach_init"][1][0]
    assert f["state_scale"] == fc.FEATURES["state_scale"][1][0]
    assert f["reach_gate"] == fc.FEATURES["reach_gate"][1][1]
    assert set(f) == set(fc.ZERO_COST_FEATURES)


def test_fit_logistic_recovers_a_known_model():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20000, 2)) * [1.0, 3.0] + [2.0, -1.0]
    z = -0.5 + 1.5 * X[:, 0] - 0.4 * X[:, 1]
    y = rng.random(20000) < 1 / (1 + np.exp(-z))
    coef = fc.fit_logistic(X, y, ["a", "b"], l2=1e-6)
    assert coef["a"] == pytest.approx(1.5, abs=0.1)
    assert coef["b"] == pytest.approx(-0.4, abs=0.05)
    assert coef["intercept"] == pytest.approx(-0.5, abs=0.25)


# -- the cost rule, on a simulated clock -------------------------------------------------------------------------
def _ticking_clock():
    counter = itertools.count()
    return lambda: float(next(counter))


def test_the_probe_stops_within_the_allowance(monkeypatch):
    """One clock tick per reading: every step costs the same, so the cost fraction is exact arithmetic."""
    monkeypatch.setattr(fc.time, "perf_counter", _ticking_clock())
    m = init_model("rnn_tanh", 2, 8, seed=0)
    budget = fc.Budget(steps=400)
    measured = fc.measure(m, "adding", 10, budget, seed=0, clock=fc.time.perf_counter)
    cost = measured["seconds"] / (budget.steps * measured["step_seconds"])
    assert measured["probe_steps"] >= fc.MIN_PROBE_STEPS
    assert cost <= fc.MAX_COST_FRACTION
    assert measured["probe_steps"] <= fc.MAX_COST_FRACTION * budget.steps


def test_a_budget_too_small_for_a_probe_uses_zero_cost_evidence_and_says_so():
    m = init_model("rnn_tanh", 2, 8, seed=0)
    f = fc.forecast(m, "adding", 10, fc.Budget(steps=50))
    assert f.method == "zero_cost" and f.probe_steps == 0
    assert any("zero-cost evidence only" in r for r in f.reasons)
    assert set(f.features) == set(fc.ZERO_COST_FEATURES)


# -- the forecast object ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gru_forecast():
    return fc.forecast(init_model("gru", 2, 16, init="tutorial", seed=0), "adding", 40, fc.Budget(steps=400, lr=3e-3))


def test_forecast_dict_holds_the_contract_keys(gru_forecast):
    d = gru_forecast.to_dict()
    for key in ("trains", "probability", "target_loss", "budget_steps", "probe_steps", "cost_fraction", "evidence"):
        assert key in d
    assert isinstance(d["trains"], bool) and 0.0 <= d["probability"] <= 1.0
    assert d["budget_steps"] == 400 and d["target_loss"] == pytest.approx(fc.TARGET_FRACTION / 6)
    ev = d["evidence"]
    assert ev["method"] in ("probe", "zero_cost") and "COEFFICIENTS" in ev["rule"]
    assert set(ev["features"]) == set(ev["contributions"])
    assert d["cost_fraction"] == pytest.approx(d["seconds"] / (400 * d["step_seconds"]))
    json.dumps(d, allow_nan=False)


def test_a_vanishing_gru_forecast_cites_the_gate_sensitivity(gru_forecast):
    text = "\n".join(gru_forecast.reasons)
    assert "update gate bias sensitivity: input horizon" in text and "->" in text
    assert "the gradient vanishes at these weights" in text
    assert "rnndiag" in gru_forecast.looked_at and "synthetic adding task" in gru_forecast.looked_at


@pytest.mark.parametrize(("outcome", "trains"), [("probe_diverged", False), ("probe_reached_target", True)])
def test_a_probe_that_settles_it_decides_by_the_labelled_runs_with_that_outcome(gru_forecast, outcome, trains):
    """A diverged probe, or one already at the target, is an observation: the probability is the share of the
    labelled tuning runs with that outcome that trained, (trained + 1) / (runs + 2); the model's terms stay."""
    assert gru_forecast.method == "probe"
    measured = dict(gru_forecast.measured)
    if outcome == "probe_diverged":
        measured.update(probe_diverged=True, probe_test_loss=None, probe_stopped="non-finite loss")
    else:
        measured.update(probe_test_loss=0.5 * measured["target_loss"])
    m = init_model("gru", 2, 16, init="tutorial", seed=0)
    f = fc.decide(measured, m, "adding", 40, gru_forecast.budget)
    seen = fc.COEFFICIENTS["observed"][outcome]
    assert f.method == "observed" and f.trains is trains and f.decided
    assert f.probability == pytest.approx((seen["trained"] + 1) / (seen["runs"] + 2))
    assert f"{seen['trained']} trained" in f.reasons[0] and f.contributions
    assert "observed" in f.to_dict()["evidence"]["rule"]


def test_a_gated_cells_probe_loss_never_lowers_its_odds_as_it_improves(gru_forecast):
    """A gated cell's probe loss is not a feature (cross-validation found no consistent sign): between the target
    and the baseline it leaves the probability where the zero-cost evidence put it."""
    m = init_model("gru", 2, 16, init="tutorial", seed=0)
    probs = []
    for ratio in (0.9, 0.5, 0.2):
        measured = dict(gru_forecast.measured, probe_test_loss=ratio * gru_forecast.baseline)
        probs.append(fc.decide(measured, m, "adding", 40, gru_forecast.budget).probability)
    assert probs[0] == probs[1] == probs[2]


def test_undecided_forecast_suggests_a_budget(monkeypatch, gru_forecast):
    names = fc.PROBE_FEATURES if gru_forecast.method == "probe" else fc.ZERO_COST_FEATURES
    model = {"intercept": 0.0, "coefficients": {n: 0.0 for n in names} | {"log_steps": 1.0},
             "centers": dict(gru_forecast.features)}  # p = 0.5 at this budget, higher at a larger one
    monkeypatch.setitem(fc.COEFFICIENTS, gru_forecast.method, model)
    m = init_model("gru", 2, 16, init="tutorial", seed=0)
    f = fc.decide(gru_forecast.measured, m, "adding", 40, gru_forecast.budget)
    assert not f.decided and f.probability == pytest.approx(0.5)
    assert f.suggestion is not None and "at 3200 steps" in f.suggestion  # log10(8) = 0.90: p = 0.71
    model["intercept"] = 3.0
    assert fc.decide(gru_forecast.measured, m, "adding", 40, gru_forecast.budget).suggestion is None


@pytest.mark.parametrize("task, message", [("sine", "calibrated on"), ("noise", "calibrated on")])
def test_uncalibrated_tasks_are_refused(task, message):
    m = init_model("rnn_tanh", 1, 8, seed=0)
    with pytest.raises(ValueError, match=message):
        fc.forecast(m, task, 10, fc.Budget(steps=100))


def test_bad_budgets_are_refused():
    with pytest.raises(ValueError, match="steps"):
        fc.Budget(steps=0)
    with pytest.raises(ValueError, match="target_loss"):
        fc.Budget(steps=10, target_loss=-1.0)


# -- commands -----------------------------------------------------------------------------------------------------
def test_forecast_command_json_and_report(tmp_path):
    res = invoke(["forecast", "--cell", "gru", "--init", "tutorial", "--hidden-size", "8", "--seq-len", "20",
                  "--steps", "300", "--json", "-", "--out", tmp_path / "r", "--quiet"])
    assert_clean_exit(res, "forecast")
    d = json.loads(res.stdout)
    assert d["forecast"]["budget_steps"] == 300 and "command" in d
    files = {p.name for p in (tmp_path / "r").iterdir()}
    assert {"report.html", "metrics.json", "forecast_evidence.png"} <= files
    html = (tmp_path / "r" / "report.html").read_text("utf-8")
    assert "forecast:" in html and "log-odds" in html


@pytest.mark.parametrize("args, message", [
    (["--task", "sine"], "calibrated on"),
    (["--target-loss", "-1"], "--target-loss"),
    (["--steps", "0"], "--steps"),
    (["--clip", "bogus:1"], "clip"),
])
def test_forecast_command_bad_input_is_one_line(args, message, tmp_path):
    res = invoke(["forecast", "--hidden-size", "8", "--seq-len", "10", *args, "--out", tmp_path / "r"])
    assert res.exit_code == 2, res.output
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_analyze_forecast_adds_the_same_object(tmp_path):
    res = invoke(["analyze", "--cell", "lstm", "--hidden-size", "8", "--seq-len", "20", "--task", "adding",
                  "--forecast", "--forecast-steps", "200", "--json", "-", "--format", "none", "--quiet"])
    assert_clean_exit(res, "analyze --forecast")
    d = json.loads(res.stdout)
    assert d["forecast"]["budget_steps"] == 200
    assert d["forecast"]["evidence"]["measured"]["verdict"] == d["verdict"]  # the diagnosis was reused
    bad = invoke(["analyze", "--task", "noise", "--forecast", "--format", "none"])
    assert bad.exit_code == 2 and "--forecast" in bad.stderr


def test_init_ranks_schemes_by_the_forecast(tmp_path):
    res = invoke(["init", "--cell", "gru", "--hidden-size", "8", "--seq-len", "20", "--schemes",
                  "tutorial,orthogonal", "--forecast-steps", "200", "--json", "-", "--format", "none", "--quiet"])
    assert_clean_exit(res, "init --forecast-steps")
    d = json.loads(res.stdout)
    assert "forecast probability" in d["ranking_rule"]
    probs = [r["forecast"]["probability"] for r in d["results"]]
    assert probs == sorted(probs, reverse=True)


def test_a_probe_that_diverges_at_once_is_evidence_not_a_missing_probe():
    """relu, orthogonal x 1000, T = 100: the loss overflows at the first step. The probe counts (diverged), the step
    time falls back to the probe's whole time, and the cost is still a number."""
    m = init_model("rnn_relu", 2, 16, init="orthogonal", gain=1000.0, seed=0)
    f = fc.forecast(m, "adding", 100, fc.Budget(steps=1000, lr=0.01, clip="none", clip_threshold=None))
    assert f.measured["probe_diverged"] and f.method == "observed" and not f.trains
    assert f.features["plain_probe_loss"] == fc.FEATURES["plain_probe_loss"][1][1]  # no held-out loss: the worst
    assert math.isfinite(f.cost_fraction) and f.step_seconds > 0
    assert any("the probe diverged" in r for r in f.reasons)
    assert any("exploding" in r for r in f.reasons)
