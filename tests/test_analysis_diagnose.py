"""``analyze`` end to end: the JSON contract, verdicts on clear cases, argument checking, the probe, batch
sampling, stacked layers and memory."""

from __future__ import annotations

import json
import math
import re
import tracemalloc

import numpy as np
import pytest

import rnndiag
from rnndiag.analysis import (
    Diagnosis,
    analyze,
    lyapunov_spectrum,
    probe_grad_h,
    product_norms,
    weight_spectra,
)
from rnndiag.init import orthogonal

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")


def with_params(model, **updates):
    p = model.state_dict()
    for name, value in updates.items():
        p[name] = np.asarray(value, dtype=np.float64)
    return model.with_params(p)


def scaled_orthogonal_rnn(a: float, H: int = 8, num_layers: int = 1, seed: int = 1):
    """tanh RNN, zero biases, W_hh = a Q per layer (``a`` a float or one per layer)."""
    gains = [a] * num_layers if np.isscalar(a) else list(a)
    base = rnndiag.init_model("rnn_tanh", 1, H, num_layers=num_layers, init="xavier_normal", seed=seed)
    rng = np.random.default_rng(seed)
    return with_params(base, **{f"weight_hh_l{k}": gains[k] * orthogonal(rng, H, H) for k in range(num_layers)})


def randn(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def one_line_error(exc, fragment, fn, *args, **kwargs):
    with pytest.raises(exc, match=re.escape(fragment)) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)


# -- the JSON contract ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_to_dict_contract(cell, num_layers):
    I, H, T, B = 3, 5, 30, 3
    model = rnndiag.init_model(cell, I, H, num_layers=num_layers, seed=0)
    d = analyze(model, randn(T, B, I), seed=4)
    assert isinstance(d, Diagnosis)
    out = d.to_dict()
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text) == out  # plain JSON types only
    assert out["rnndiag_version"] == rnndiag.__version__
    assert (out["cell"], out["input_size"], out["hidden_size"], out["num_layers"]) == (cell, I, H, num_layers)
    assert (out["seq_len"], out["batch_size"], out["seed"]) == (T, B, 4)
    assert out["verdict"] in ("vanishing", "exploding", "healthy")
    assert out["verdict"] == d.verdict
    assert isinstance(out["advice"], list) and out["advice"]
    assert all(isinstance(a, str) and a for a in out["advice"])
    assert isinstance(out["layers"], list) and len(out["layers"]) == num_layers
    S = 2 * H if cell == "lstm" else H
    for k, layer in enumerate(out["layers"]):
        assert layer["layer"] == k
        for key in ("spectral_radius", "sigma_max"):
            assert isinstance(layer[key], float) and layer[key] > 0
        assert len(layer["lyapunov_exponents"]) == min(S, 32) == d.settings.lyapunov_k
        assert all(v is None or isinstance(v, float) for v in layer["lyapunov_exponents"])
        assert layer["verdict"] in ("vanishing", "exploding", "healthy")
    assert out["layers"][0]["spectral_radius"] == pytest.approx(d.layers[0].spectrum.spectral_radius)
    gf = out["gradient_flow"]
    for key in ("grad_norm", "log10_jacobian_product_norm"):
        assert isinstance(gf[key], list) and len(gf[key]) == T
        assert all(isinstance(v, float) for v in gf[key])
    assert gf["log10_jacobian_product_norm"][-1] == 0.0
    assert gf["decay_per_step"] is None or isinstance(gf["decay_per_step"], float)
    assert isinstance(gf["horizon_steps"], int) and 1 <= gf["horizon_steps"] <= T
    assert gf["grad_norm"] == pytest.approx(list(d.gradient_flow.grad_norm))
    assert out["settings"]["batch_sample"] == list(range(B))


def test_to_dict_writes_non_finite_as_null():
    """An exponent of -inf (W_hh = 0: a singular Jacobian) and an infinite memory timescale become null."""
    H = 3
    base = rnndiag.init_model("lstm", 1, H, init="xavier_normal", seed=0)
    b = np.zeros(4 * H)
    b[H : 2 * H] = 40.0  # sigmoid(40) == 1.0 in float64: infinite timescale
    model = with_params(base, weight_hh_l0=np.zeros((4 * H, H)), bias_ih_l0=b)
    with np.errstate(all="ignore"):
        d = analyze(model, np.zeros((20, 2, 1)), q0="identity", lyapunov_warmup=0)
    assert np.isneginf(d.layers[0].lyapunov.exponents).any()
    assert d.layers[0].gates.memory_timescale == math.inf
    out = d.to_dict()
    json.dumps(out, allow_nan=False)
    assert None in out["layers"][0]["lyapunov_exponents"]
    assert out["layers"][0]["gates"]["memory_timescale_steps"] is None


# -- verdicts on clear cases ----------------------------------------------------------------------------------
def test_tutorial_init_tanh_rnn_vanishes():
    T = 100
    model = rnndiag.init_model("rnn_tanh", 4, 32, init="tutorial", seed=0)
    d = analyze(model, randn(T, 4, 4))
    assert d.verdict == "vanishing"
    assert d.confidence == "high" and not d.caveats
    hz = d.gradient_flow.horizon
    assert not hz.censored and hz.steps <= 10  # << T
    assert d.to_dict()["gradient_flow"]["horizon_steps"] == hz.steps
    assert d.rules[0].rule == "horizon"
    assert d.gradient_flow.decay_per_step < -0.5  # sigma_max ~ 0.1: about a decade per step
    assert d.layers[0].spectrum.sure_to_vanish is True
    assert any("orthogonal" in a for a in d.advice)
    assert any("Pascanu" in a for a in d.advice)


@pytest.mark.parametrize("gain", [2.0, 3.0])
def test_large_orthogonal_tanh_rnn_explodes(gain):
    model = rnndiag.init_model("rnn_tanh", 4, 32, init="orthogonal", gain=gain, seed=0)
    d = analyze(model, randn(100, 4, 4))
    assert d.verdict == "exploding", d.verdict_detail
    assert d.layers[0].lyapunov.top > 0
    assert d.layers[0].spectrum.can_explode is True
    assert d.suggested_clip_norm is not None and d.suggested_clip_norm > 0
    clip = [a for a in d.advice if "clip" in a]
    assert clip and "clip_grad_norm_" in clip[0]
    assert f"{d.suggested_clip_norm:.3g}" in clip[0]
    assert d.to_dict()["suggested_clip_norm"] == pytest.approx(d.suggested_clip_norm)


def relu_overflow_model():
    """relu RNN, W_hh = 1.5 I, W_ih = 1, zero biases: h_t = 2 (1.5^(t+1) - 1) overflows near t = 1749."""
    H = 3
    base = rnndiag.init_model("rnn_relu", 1, H, init="identity", gain=1.5, seed=0)
    return with_params(base, weight_ih_l0=np.ones((H, 1)))


@pytest.mark.filterwarnings("error")  # overflow is a measurement, not a warning
def test_relu_overflow_is_exploding_without_exception_or_warning():
    T = 1800
    model = relu_overflow_model()
    x = np.ones((T, 2, 1))
    with np.errstate(all="ignore"):
        h = rnndiag.forward(model, x).h
    first_bad = int(np.nonzero(~np.isfinite(h).all(axis=(1, 2)))[0][0])
    assert 1700 < first_bad < T
    d = analyze(model, x)
    assert d.verdict == "exploding"
    assert d.verdict_detail == f"exploded at step {first_bad}"
    assert d.nonfinite is not None
    assert (d.nonfinite.kind, d.nonfinite.layer, d.nonfinite.step) == ("state", 0, first_bad)
    assert d.rules[0].rule == "non_finite"
    assert d.seq_len == T
    assert any(f"overflowed at step {first_bad}" in a for a in d.advice)
    assert any(f"{first_bad} finite steps" in n for n in d.notes)
    out = d.to_dict()
    json.dumps(out, allow_nan=False)
    assert out["nonfinite"] == {"kind": "state", "layer": 0, "step": first_bad}
    assert out["verdict_detail"] == f"exploded at step {first_bad}"
    # the measurements cover the finite steps; the per-step lists keep length T, null after the overflow
    # (the BPTT gradient itself reaches 1.5^1747 ~ 1e308 at the start: null there; the log-domain curves don't)
    for key in ("grad_norm", "log10_jacobian_product_norm", "log10_last_step_grad_norm"):
        values = out["gradient_flow"][key]
        assert len(values) == T, key
        assert values[first_bad:] == [None] * (T - first_bad), key
        assert all(isinstance(v, float) for v in values[first_bad - 100 : first_bad]), key
        if key != "grad_norm":
            assert all(isinstance(v, float) for v in values[:first_bad]), key
    assert d.layers[0].lyapunov.top == pytest.approx(math.log(1.5), abs=1e-6)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("kwargs", [{"loss": "all"}, {"grad_h": np.ones((1800, 2, 3))}], ids=["all", "grad_h"])
def test_relu_overflow_other_losses(kwargs):
    d = analyze(relu_overflow_model(), np.ones((1800, 2, 1)), **kwargs)
    assert d.verdict == "exploding" and d.nonfinite.kind == "state"
    assert d.verdict_detail == f"exploded at step {d.nonfinite.step}"
    json.dumps(d.to_dict(), allow_nan=False)


@pytest.mark.filterwarnings("error")
def test_gradient_overflow_with_a_finite_state():
    """W_hh = 10 Q at h = 0: the state stays 0 but ||dL/dh_t|| = 10^(T-1-t) overflows for T-1-t >= 309.
    The log-domain measurements stay exact."""
    T = 400
    d = analyze(scaled_orthogonal_rnn(10.0), np.zeros((T, 2, 1)), lyapunov_warmup=0)
    assert d.verdict == "exploding"
    assert (d.nonfinite.kind, d.nonfinite.step) == ("gradient", T - 310)  # the last non-finite step
    assert d.verdict_detail == f"exploded at step {T - 310}"
    ld = d.layers[0]
    np.testing.assert_allclose(ld.flow.log10_jacobian_product_norm[:, 0], T - 1 - np.arange(T), rtol=1e-12)
    np.testing.assert_allclose(ld.flow.log10_last_step[:, 0], T - 1 - np.arange(T), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ld.lyapunov.exponents, math.log(10.0), atol=1e-10)
    out = d.to_dict()
    json.dumps(out, allow_nan=False)
    gn = out["gradient_flow"]["grad_norm"]
    assert len(gn) == T and gn[0] is None and gn[-1] == pytest.approx(1.0)
    assert out["global_grad_norm"] is None
    assert out["nonfinite"] == {"kind": "gradient", "layer": 0, "step": T - 310}
    assert d.suggested_clip_norm is not None and math.isfinite(d.suggested_clip_norm)


def test_overflow_at_the_first_steps_is_an_error():
    model = with_params(relu_overflow_model(), weight_ih_l0=np.full((3, 1), 1e300))
    with np.errstate(over="ignore"):
        one_line_error(ValueError, "the state overflowed at step 0", analyze, model, np.full((10, 1, 1), 1e10))


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gated_cell_vanishing_has_low_confidence(cell):
    model = rnndiag.init_model(cell, 4, 16, init="tutorial", seed=0)
    d = analyze(model, randn(100, 4, 4))
    assert d.verdict == "vanishing"
    assert d.confidence == "low"
    assert any("gated cell" in c for c in d.caveats)
    out = d.to_dict()
    assert out["confidence"] == "low" and out["caveats"] == list(d.caveats)
    assert d.layers[0].spectrum.gamma is None and d.layers[0].spectrum.sure_to_vanish is None
    if cell == "lstm":  # forget-gate bias 0 < 0.5: the Jozefowicz advice, quoting the measured timescale
        assert d.layers[0].forget_bias == 0.0
        assert any("forget-gate bias 0.00 -> set 1" in a for a in d.advice)


def test_short_sequence_has_no_decay_rate():
    model = rnndiag.init_model("rnn_tanh", 3, 8, seed=0)
    d = analyze(model, randn(5, 2, 3))
    fit = d.gradient_flow.fit
    assert fit.rate is None and fit.reason and "too short" in fit.reason
    gf = d.to_dict()["gradient_flow"]
    assert gf["decay_per_step"] is None
    assert gf["decay_fit_note"] == fit.reason
    assert d.to_dict()["layers"][0]["decay_per_step"] is None
    assert d.confidence == "low"
    assert any(c.startswith("no decay rate") for c in d.caveats)


@pytest.mark.parametrize("T", [1, 2, 3])
def test_very_short_sequences(T):
    for cell in CELLS:
        model = rnndiag.init_model(cell, 2, 4, seed=0)
        d = analyze(model, randn(T, 2, 2))
        out = d.to_dict()
        json.dumps(out, allow_nan=False)
        assert len(out["gradient_flow"]["grad_norm"]) == T
        assert out["gradient_flow"]["decay_per_step"] is None


# -- Pascanu et al. (2013) -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("cell", "a", "vanish"), [("rnn_tanh", 0.5, True), ("rnn_tanh", 0.99, True),
                                                   ("rnn_tanh", 1.5, False), ("rnn_relu", 0.8, True),
                                                   ("rnn_relu", 1.2, False)])
def test_pascanu_conditions(cell, a, vanish):
    H = 8
    base = rnndiag.init_model(cell, 2, H, init="orthogonal", seed=0)
    model = with_params(base, weight_hh_l0=a * orthogonal(np.random.default_rng(2), H, H))
    sp = weight_spectra(model)[0]
    assert sp.gamma == 1.0
    assert sp.sigma_max == pytest.approx(a, rel=1e-12)
    assert sp.spectral_radius == pytest.approx(a, rel=1e-12)
    assert sp.sure_to_vanish is vanish
    assert sp.can_explode is (not vanish)
    pas = analyze(model, randn(20, 2, 2)).to_dict()["layers"][0]["spectrum"]["pascanu"]
    assert pas["sure_to_vanish"] is vanish and pas["threshold"] == 1.0
    assert pas["sigma_max"] == pytest.approx(a)


def test_pascanu_not_applicable_to_gated_cells():
    for cell in ("lstm", "gru"):
        sp = weight_spectra(rnndiag.init_model(cell, 2, 4, seed=0))[0]
        assert (sp.gamma, sp.sure_to_vanish, sp.can_explode) == (None, None, None)
        assert "not applicable" in sp.to_dict()["pascanu"]["note"]


# -- argument checking -----------------------------------------------------------------------------------------
@pytest.fixture
def small():
    return rnndiag.init_model("lstm", 2, 3, seed=0), randn(12, 4, 2)  # S = 6, B = 4


@pytest.mark.parametrize("value", [0, 0.0, 1, 1.0, 1.5, -0.1, True, "0.1", None, float("nan")])
def test_bad_horizon_factor(small, value):
    model, x = small
    one_line_error(ValueError, "horizon_factor must be in (0, 1)", analyze, model, x, horizon_factor=value)


@pytest.mark.parametrize("value", [0, 7, -1, 2.0, True])
def test_bad_lyapunov_k(small, value):
    model, x = small
    one_line_error(ValueError, "lyapunov_k must be an integer from 1 to the state size 6", analyze, model, x,
                   lyapunov_k=value)


def test_lyapunov_k_up_to_the_state_size(small):
    model, x = small
    assert analyze(model, x, lyapunov_k=6).layers[0].lyapunov.exponents.shape == (6,)
    assert analyze(model, x, lyapunov_k=np.int64(2)).layers[0].lyapunov.exponents.shape == (2,)


def test_bad_loss(small):
    model, x = small
    one_line_error(ValueError, "loss must be one of last, all; got 'bogus'", analyze, model, x, loss="bogus")


def test_empty_sequence(small):
    model, _ = small
    one_line_error(ValueError, "x is empty", analyze, model, np.zeros((0, 4, 2)))
    one_line_error(ValueError, "x is empty", analyze, model, np.zeros((5, 0, 2)))


@pytest.mark.parametrize(("value", "fragment"), [
    ("some", "batch_sample must be 'auto', 'all', a count or a list of indices; got 'some'"),
    (0, "batch_sample must be between 1 and the batch size 4; got 0"),
    (5, "batch_sample must be between 1 and the batch size 4; got 5"),
    ([], "batch_sample indices must be a non-empty list of integers in 0..3"),
    ([4], "batch_sample indices must be a non-empty list of integers in 0..3"),
    ([-1, 2], "batch_sample indices must be a non-empty list of integers in 0..3"),
    ([0.5], "batch_sample indices must be a non-empty list of integers in 0..3"),
    ([[0, 1]], "batch_sample indices must be a non-empty list of integers in 0..3"),
])
def test_bad_batch_sample(small, value, fragment):
    model, x = small
    one_line_error(ValueError, fragment, analyze, model, x, batch_sample=value)


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"lyapunov_warmup": 12}, "lyapunov_warmup must be an integer in 0..11"),
    ({"lyapunov_warmup": -1}, "lyapunov_warmup must be an integer in 0..11"),
    ({"reortho_every": 0}, "reortho_every must be a positive integer"),
    ({"q0": "bogus"}, "q0 must be 'identity' or 'random'"),
])
def test_bad_lyapunov_settings(small, kwargs, fragment):
    model, x = small
    one_line_error(ValueError, fragment, analyze, model, x, **kwargs)


def test_bad_model_and_grad_h(small):
    model, x = small
    one_line_error(TypeError, "model must be an RNNModel", analyze, "lstm", x)
    one_line_error(ValueError, "grad_h must have shape (12, 4, 3)", analyze, model, x, grad_h=np.ones((12, 4, 2)))


# -- the probe and a given grad_h --------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["last", "all"])
def test_probe_gives_gradients_at_the_zero_state(loss):
    """h stays exactly 0 (zero input, bias and state), yet the probe's gradient flows: ||dL/dh_t|| > 0."""
    T, B, a = 30, 3, 0.8
    model = scaled_orthogonal_rnn(a)
    d = analyze(model, np.zeros((T, B, 1)), loss=loss, keep_trace=True)
    assert not d.trace.h.any()
    g = d.gradient_flow.grad_norm_per_sequence
    assert g.shape == (T, B) and np.all(g > 0)
    assert d.global_grad_norm is not None and d.global_grad_norm > 0
    assert d.loss == f"probe ({loss})"
    if loss == "last":  # unit probe, J^T = a Q^T: ||dL/dh_t|| = a^(T-1-t)
        np.testing.assert_allclose(g, (a ** (T - 1 - np.arange(T)))[:, None] * np.ones(B), rtol=1e-12)


def test_probe_vectors_do_not_depend_on_the_length():
    last = probe_grad_h("last", 10, 3, 4, 0, np.float64)
    assert not last[:-1].any()
    np.testing.assert_allclose(np.linalg.norm(last[-1], axis=1), 1.0)
    np.testing.assert_array_equal(last[-1], probe_grad_h("last", 25, 3, 4, 0, np.float64)[-1])
    every = probe_grad_h("all", 10, 3, 4, 0, np.float64)
    np.testing.assert_allclose(np.linalg.norm(every, axis=2), 1.0)
    np.testing.assert_array_equal(every[:6], probe_grad_h("all", 6, 3, 4, 0, np.float64))


def test_seed_none_and_float32():
    model = rnndiag.init_model("rnn_tanh", 4, 32, init="tutorial", seed=0)
    x = randn(100, 4, 4)
    assert analyze(model, x, seed=None).seed is None
    d64, d32 = analyze(model, x), analyze(model.astype(np.float32), x)
    assert d32.dtype == "float32" and d32.verdict == d64.verdict == "vanishing"
    assert d32.gradient_flow.horizon.steps == d64.gradient_flow.horizon.steps
    assert d32.layers[0].lyapunov.top == pytest.approx(d64.layers[0].lyapunov.top, abs=1e-5)
    json.dumps(d32.to_dict(), allow_nan=False)


def test_probe_is_seeded():
    model = rnndiag.init_model("gru", 2, 4, seed=0)
    x = randn(15, 3, 2)
    g0 = analyze(model, x, seed=0).gradient_flow.grad_norm_per_sequence
    np.testing.assert_array_equal(g0, analyze(model, x, seed=0).gradient_flow.grad_norm_per_sequence)
    assert not np.allclose(g0, analyze(model, x, seed=1).gradient_flow.grad_norm_per_sequence)


@pytest.mark.parametrize("cell", CELLS)
def test_given_grad_h_is_used(cell):
    I, H, T, B = 2, 4, 20, 3
    model = rnndiag.init_model(cell, I, H, seed=0)
    x, g = randn(T, B, I, seed=1), randn(T, B, H, seed=2)
    d1 = analyze(model, x, grad_h=g)
    d3 = analyze(model, x, grad_h=3.0 * g)
    assert d1.loss == "given grad_h"
    ref = np.linalg.norm(rnndiag.bptt(model, x, g).grad_h, axis=2)
    np.testing.assert_allclose(d1.gradient_flow.grad_norm_per_sequence, ref, rtol=1e-12)
    np.testing.assert_allclose(d3.gradient_flow.grad_norm_per_sequence, 3.0 * ref, rtol=1e-12)
    assert d3.global_grad_norm == pytest.approx(3.0 * d1.global_grad_norm, rel=1e-12)
    # loss "last": the last-step chain starts from the given grad_h[-1] (its norm at t = T-1)
    np.testing.assert_allclose(d1.gradient_flow.log10_last_step[-1], np.log10(np.linalg.norm(g[-1], axis=1)),
                               rtol=1e-12)
    np.testing.assert_allclose(d3.gradient_flow.log10_last_step, d1.gradient_flow.log10_last_step + math.log10(3),
                               rtol=0, atol=1e-12)
    # a different grad_h gives different norms than the probe
    assert not np.allclose(analyze(model, x).gradient_flow.grad_norm_per_sequence, ref)


def test_given_grad_h_loss_all():
    model = scaled_orthogonal_rnn(0.9)
    T, B = 25, 2
    g = np.ones((T, B, 8))
    d = analyze(model, np.zeros((T, B, 1)), loss="all", grad_h=g)
    ref = np.linalg.norm(rnndiag.bptt(model, np.zeros((T, B, 1)), g).grad_h, axis=2)
    np.testing.assert_allclose(d.gradient_flow.grad_norm_per_sequence, ref, rtol=1e-12)


# -- batch sampling -----------------------------------------------------------------------------------------------
def test_batch_sample_count_is_respected_and_recorded():
    I, H, T, B = 2, 5, 20, 6
    model = rnndiag.init_model("lstm", I, H, seed=0)
    x = randn(T, B, I)
    d = analyze(model, x, batch_sample=2, keep_trace=True)
    idx = list(d.settings.batch_sample)
    assert len(idx) == 2 and idx == sorted(set(idx)) and all(0 <= i < B for i in idx)
    out = d.to_dict()
    assert out["settings"]["batch_sample"] == idx
    assert out["gradient_flow"]["jacobian_sampled_sequences"] == idx
    assert out["layers"][0]["lyapunov"]["sampled_sequences"] == idx
    ld = d.layers[0]
    assert ld.flow.jacobian_batch == tuple(idx) and ld.lyapunov.batch == tuple(idx)
    assert ld.flow.log10_jacobian_product_norm.shape == (T, 2)
    assert ld.lyapunov.per_sequence.shape == (2, d.settings.lyapunov_k)
    assert any("2 of 6 sequences" in n for n in d.notes)
    # the sampled rows are exactly those sequences
    log_prod, _, _, _ = product_norms(d.trace.layers[0], np.array(idx))
    np.testing.assert_allclose(ld.flow.log10_jacobian_product_norm, log_prod, rtol=1e-12)
    # the gradient norms (cheap) still cover the whole batch
    assert ld.flow.grad_norm_per_sequence.shape == (T, B)


def test_batch_sample_list_all_and_auto():
    model = rnndiag.init_model("gru", 2, 4, seed=0)
    x = randn(15, 5, 2)
    d = analyze(model, x, batch_sample=[4, 1, 4])
    assert d.settings.batch_sample == (1, 4)
    assert d.to_dict()["settings"]["batch_sample"] == [1, 4]
    assert analyze(model, x, batch_sample="all").settings.batch_sample == (0, 1, 2, 3, 4)
    assert analyze(model, x).settings.batch_sample == (0, 1, 2, 3, 4)  # small: auto takes everything
    assert not analyze(model, x).notes


# -- stacked layers -------------------------------------------------------------------------------------------------
def test_two_layer_model_gives_per_layer_results():
    """Layer 0 contracts (W = 0.5 Q), layer 1 expands (W = 1.2 Q'); both stay at h = 0 with zero input."""
    T, B, H = 60, 2, 8
    model = scaled_orthogonal_rnn([0.5, 1.2], H=H, num_layers=2)
    x = np.zeros((T, B, 1))
    d = analyze(model, x, lyapunov_warmup=0)
    assert len(d.layers) == 2 and [ld.layer for ld in d.layers] == [0, 1]
    for ld, a in zip(d.layers, (0.5, 1.2)):
        np.testing.assert_allclose(ld.lyapunov.exponents, math.log(a), atol=1e-10)
        assert ld.spectrum.sigma_max == pytest.approx(a)
        np.testing.assert_allclose(ld.flow.log10_jacobian_product_norm[:, 0],
                                   (T - 1 - np.arange(T)) * math.log10(a), atol=1e-10)
    assert [ld.verdict for ld in d.layers] == ["vanishing", "exploding"]
    assert d.verdict == "exploding" and d.verdict_detail.startswith("layer 1: ")
    assert d.gradient_flow is d.layers[1].flow
    out = d.to_dict()
    assert [layer["verdict"] for layer in out["layers"]] == ["vanishing", "exploding"]
    assert [rule["layer"] for rule in out["rules"]] == [0, 1]
    assert any(a.startswith("layer 0: ") for a in d.advice) and any(a.startswith("layer 1: ") for a in d.advice)


def test_two_layer_lstm_matches_direct_per_layer_analysis():
    model = rnndiag.init_model("lstm", 3, 4, num_layers=2, seed=0)
    x = randn(40, 3, 3)
    d = analyze(model, x, lyapunov_warmup=5, batch_sample="all")
    tr = rnndiag.forward(model, x)
    for k in range(2):
        ly = lyapunov_spectrum(tr.layers[k], np.arange(3), k=8, warmup=5, seed=0)
        np.testing.assert_allclose(d.layers[k].lyapunov.exponents, ly.exponents, rtol=1e-12)
        log_prod, _, _, _ = product_norms(tr.layers[k], np.arange(3))
        np.testing.assert_allclose(d.layers[k].flow.log10_jacobian_product_norm, log_prod, rtol=1e-12)
    assert d.layers[0].lyapunov.exponents[0] != d.layers[1].lyapunov.exponents[0]


# -- memory -----------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_peak_memory_scales_with_the_trace():
    """A scaled-down stand-in for "an LSTM with B=32, T=1000, I=32, H=256 analyses within 1 GB" (that run
    takes minutes): the same per-(t, b, unit) budget, 1e9 / (1000 * 32 * 256) bytes, at T=120, H=64.
    Everything analyze holds is O(T B H); only one step's (n, S, S) Jacobians exist at a time."""
    T, B, I, H = 120, 32, 32, 64
    model = rnndiag.init_model("lstm", I, H, seed=0)
    x = randn(T, B, I)
    budget = 1e9 * (T * B * H) / (1000 * 32 * 256)
    tracemalloc.start()
    try:
        d = analyze(model, x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert d.verdict in ("vanishing", "exploding", "healthy")
    assert peak < budget, f"peak {peak / 1e6:.0f} MB > budget {budget / 1e6:.0f} MB"
