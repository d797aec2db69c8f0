"""A verdict that knows what it looks at: the stage of the weights, the source of the input and the loss, the
dependency length the horizon is judged against, and the gradient-magnitude rules (``weights``, ``grad_norm``,
``grad_spike``) of the thresholds table -- each rule with a case that fires it and one that does not."""

from __future__ import annotations

import json

import numpy as np
import pytest

import rnndiag
from rnndiag.analysis.verdict import THRESHOLDS

INIT_RECIPES = ("orthogonal", "forget-gate bias", "--init", "rnndiag train", "identity", "Jozefowicz")


def rng_x(T=30, B=4, I=2, seed=0):
    return np.random.default_rng(seed).standard_normal((T, B, I))


def test_stage_defaults_follow_where_the_weights_came_from(tmp_path):
    fresh = rnndiag.init_model("lstm", 2, 8, seed=0)
    assert fresh.stage == "init"
    assert rnndiag.analyze(fresh, rng_x()).stage == "init"
    p = rnndiag.save_weights(fresh, tmp_path / "w.npz")
    loaded = rnndiag.load_weights(p)
    assert loaded.stage == "unknown"
    d = rnndiag.analyze(loaded, rng_x())
    assert d.stage == "unknown"
    assert d.looked_at.startswith("weights of unknown stage (pass --stage init|trained)")
    assert d.warnings and "probe loss" in d.warnings[0] and "rnndiag.pytorch.capture" in d.warnings[0]
    trained = rnndiag.analyze(loaded, rng_x(), stage="trained")
    assert trained.stage == "trained" and trained.looked_at.startswith("trained weights")
    assert not rnndiag.analyze(fresh, rng_x(), stage="trained").warnings  # not loaded: nothing to warn about


def test_json_says_what_was_looked_at_in_its_first_keys():
    m = rnndiag.init_model("gru", 2, 8, seed=0)
    d = rnndiag.analyze(m, rng_x(), input_source="user", input_label="batch.npy")
    keys = list(d.to_dict())
    assert keys[1:7] == ["looked_at", "stage", "input_source", "loss_source", "warnings", "dependency_length"]
    out = json.loads(json.dumps(d.to_dict()))
    assert out["stage"] == "init" and out["input_source"] == "user" and out["loss_source"] == "probe"
    assert "weights at initialization" in out["looked_at"] and "batch.npy" in out["looked_at"]
    assert "probe" in out["looked_at"]


@pytest.mark.parametrize("bad, fragment", [
    ({"stage": "done"}, "stage must be one of"),
    ({"input_source": "mine"}, "input_source must be one of"),
    ({"loss_source": "user"}, "needs the loss's gradient"),
    ({"dependency_length": 0}, "dependency_length must be a positive integer"),
    ({"earlier_grad_norms": [1.0, float("nan")]}, "earlier_grad_norms"),
])
def test_bad_context_is_one_line(bad, fragment):
    m = rnndiag.init_model("rnn_tanh", 2, 8, seed=0)
    with pytest.raises(ValueError, match=fragment) as info:
        rnndiag.analyze(m, rng_x(), **bad)
    assert "\n" not in str(info.value)


def test_horizon_is_judged_against_the_dependency_length():
    m = rnndiag.init_model("rnn_tanh", 2, 16, init="tutorial", seed=0)  # horizon of a few steps
    x = rng_x(T=40)
    base = rnndiag.analyze(m, x)
    hz = base.layers[0].flow.horizon
    assert base.verdict == "vanishing" and not hz.censored
    short = rnndiag.analyze(m, x, dependency_length=hz.steps)  # the gradient reaches what the task needs
    assert short.verdict == "healthy" and short.rules[0].threshold == hz.steps
    assert "dependency length" in short.rules[0].text
    longer = rnndiag.analyze(m, x, dependency_length=hz.steps + 1)
    assert longer.verdict == "vanishing" and longer.rules[0].threshold == hz.steps + 1
    assert f"dependency length {hz.steps + 1}" in longer.rules[0].text
    assert longer.to_dict()["dependency_length"] == hz.steps + 1


def test_a_dependency_longer_than_the_sequence_is_not_decided():
    m = rnndiag.init_model("rnn_tanh", 2, 16, init="orthogonal", seed=0)
    d = rnndiag.analyze(m, np.zeros((30, 2, 2)), dependency_length=500)  # orthogonal, zero input: no decay
    assert d.verdict == "healthy" and d.confidence == "low"
    assert any("500" in c and "not measured" in c for c in d.caveats)


def test_weights_far_beyond_their_init_bound_read_exploding():
    m = rnndiag.init_model("rnn_tanh", 2, 16, seed=0)
    params = m.state_dict()
    bound = 1 / np.sqrt(16)
    params["weight_ih_l0"][0, 0] = 2 * THRESHOLDS["weights_init_bound"] * bound
    big = m.with_params(params)
    d = rnndiag.analyze(big, rng_x())
    assert d.verdict == "exploding" and d.rules[0].rule == "weights"
    assert d.rules[0].value == pytest.approx(2 * THRESHOLDS["weights_init_bound"])
    params["weight_ih_l0"][0, 0] = 0.5 * THRESHOLDS["weights_init_bound"] * bound
    assert rnndiag.analyze(m.with_params(params), rng_x()).rules[0].rule != "weights"


def _last_step_grad(m, x, scale):
    T, B, _ = x.shape
    g = np.zeros((T, B, m.hidden_size))
    g[-1] = scale * np.random.default_rng(1).standard_normal((B, m.hidden_size))
    return g


def test_a_real_gradient_far_above_trained_parameters_reads_exploding_other_losses_never():
    m = rnndiag.init_model("gru", 2, 8, seed=0)
    x = rng_x()
    pnorm = np.sqrt(sum(float((v ** 2).sum()) for v in m.params.values()))
    small = rnndiag.analyze(m, x, grad_h=_last_step_grad(m, x, 1e-3), loss_source="user", stage="trained")
    assert small.rules[0].rule != "grad_norm"
    big = rnndiag.analyze(m, x, grad_h=_last_step_grad(m, x, 1e4), loss_source="user", stage="trained")
    assert big.verdict == "exploding" and big.rules[0].rule == "grad_norm"
    assert big.rules[0].value > THRESHOLDS["grad_param_ratio"] and big.global_grad_norm > pnorm
    assert "scales with the loss" in big.rules[0].text
    for other in ({"loss_source": "task", "stage": "trained"}, {"loss_source": "given", "stage": "trained"},
                  {"loss_source": "user", "stage": "init"}):  # a random readout, a caller's array, tiny init weights
        d = rnndiag.analyze(m, x, grad_h=_last_step_grad(m, x, 1e4), **other)
        assert d.rules[0].rule != "grad_norm", other


def test_a_spike_over_earlier_captures_reads_exploding():
    m = rnndiag.init_model("gru", 2, 8, seed=0)
    x = rng_x()
    g = _last_step_grad(m, x, 1e-2)
    norm = rnndiag.analyze(m, x, grad_h=g, loss_source="user").global_grad_norm
    calm = [norm] * 5
    assert rnndiag.analyze(m, x, grad_h=g, loss_source="user", earlier_grad_norms=calm).rules[0].rule != "grad_spike"
    low = [norm / (2 * THRESHOLDS["grad_spike"])] * 5
    spiked = rnndiag.analyze(m, x, grad_h=g, loss_source="user", earlier_grad_norms=low)
    assert spiked.verdict == "exploding" and spiked.rules[0].rule == "grad_spike"
    assert spiked.rules[0].value == pytest.approx(2 * THRESHOLDS["grad_spike"])
    too_few = rnndiag.analyze(m, x, grad_h=g, loss_source="user", earlier_grad_norms=low[:2])
    assert too_few.rules[0].rule != "grad_spike"


def test_trained_advice_speaks_of_the_run_not_of_initialization():
    m = rnndiag.init_model("lstm", 2, 16, init="tutorial", seed=0)  # vanishes: forget gate ~0.5
    x = rng_x(T=50)
    at_init = rnndiag.analyze(m, x)
    assert at_init.verdict == "vanishing"
    assert any(word in " ".join(at_init.advice) for word in INIT_RECIPES)
    trained = rnndiag.analyze(m, x, stage="trained")
    text = " ".join(trained.advice)
    assert trained.verdict == "vanishing" and trained.advice
    assert not any(word in text for word in INIT_RECIPES), text
    assert "trained f gate" in text and "steps" in text
    assert not any("gates can learn" in c for c in trained.caveats)


def test_trained_exploding_advice_says_whether_clipping_fires():
    m = rnndiag.init_model("rnn_tanh", 2, 16, init="orthogonal", gain=3.0, seed=0)
    d = rnndiag.analyze(m, rng_x(T=60) * 0.01, stage="trained")
    assert d.verdict == "exploding"
    text = " ".join(d.advice)
    assert "clip_grad_norm_" in text and not any(word in text for word in INIT_RECIPES), text
