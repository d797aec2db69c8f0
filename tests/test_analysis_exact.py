"""The analysis layer against closed-form answers: Lyapunov exponents, Jacobian-product norms, gate timescales.

Every case is built so that the exact answer is known:

* a tanh RNN with zero input, zero bias and zero initial state stays at h = 0, so every step Jacobian is
  ``diag(1 - 0^2) W_hh = W_hh``; with ``W_hh = a Q`` (Q orthogonal) every Lyapunov exponent is ``ln a`` and
  ``||d h_{T-1} / d h_t||_2 = a^(T-1-t)``; with a diagonal ``W_hh = D`` the exponents are ``ln |d_i|``;
* an LSTM with ``W_hh = 0``, zero input and zero biases except the forget gate stays at h = c = 0, and
  ``J_t = [[0, k_c f], [0, f]]`` with ``f = sigmoid(b_f)``, ``k_c = o = sigmoid(0) = 1/2``;
* a GRU with ``W_hh = 0`` and ``b_hh = 0`` has ``J_t = diag(z_t)``, ``z_t = sigmoid(W_iz x_t + b_iz)``;
* for any driven network, the sum of all S exponents (QR method, no warm-up) is the mean of ``ln |det J_t|``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import rnndiag
from rnndiag.analysis import analyze, gate_stats, last_step_chain, lyapunov_spectrum, product_norms
from rnndiag.init import orthogonal

LN10 = math.log(10.0)


# -- builders ------------------------------------------------------------------------------------------------
def haar(H: int, seed: int) -> np.ndarray:
    """A Haar-random orthogonal (H, H) matrix."""
    return orthogonal(np.random.default_rng(seed), H, H)


def with_params(model: rnndiag.RNNModel, **updates) -> rnndiag.RNNModel:
    p = model.state_dict()
    for name, value in updates.items():
        p[name] = np.asarray(value, dtype=np.float64)
    return model.with_params(p)


def tanh_rnn(w_hh: np.ndarray, input_size: int = 1) -> rnndiag.RNNModel:
    """A 1-layer tanh RNN with recurrent weights ``w_hh``, random input weights and zero biases."""
    H = w_hh.shape[0]
    base = rnndiag.init_model("rnn_tanh", input_size, H, init="xavier_normal", seed=3)  # zero biases
    assert not base.params["bias_ih_l0"].any() and not base.params["bias_hh_l0"].any()
    return with_params(base, weight_hh_l0=w_hh)


def lstm_no_recurrence(H: int, b_f: float) -> rnndiag.RNNModel:
    """LSTM with W_hh = 0 and all biases zero except the forget gate's (b_ih_f = b_f)."""
    base = rnndiag.init_model("lstm", 1, H, init="xavier_normal", seed=4)
    b_ih = np.zeros(4 * H)
    b_ih[H : 2 * H] = b_f
    return with_params(base, weight_hh_l0=np.zeros((4 * H, H)), bias_ih_l0=b_ih, bias_hh_l0=np.zeros(4 * H))


def gru_no_recurrence(I: int, H: int) -> rnndiag.RNNModel:
    """GRU with random W_ih and b_ih (PyTorch init), W_hh = 0 and b_hh = 0."""
    base = rnndiag.init_model("gru", I, H, init="pytorch", seed=5)
    return with_params(base, weight_hh_l0=np.zeros((3 * H, H)), bias_hh_l0=np.zeros(3 * H))


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-np.asarray(a, dtype=np.float64)))


def full_product(lt, T: int) -> np.ndarray:
    """``d s_{T-1} / d s_{-1} = J_{T-1} ... J_0`` (B, S, S) from the step Jacobians."""
    prod = np.broadcast_to(np.eye(lt.state_size), (lt.h0.shape[0], lt.state_size, lt.state_size)).copy()
    for t in range(T):
        prod = lt.step_jacobian(t) @ prod
    return prod


# -- 1. W_hh = a Q at the fixed point h = 0 -------------------------------------------------------------------
GAINS = (0.5, 0.9, 1.0, 1.5)


@pytest.mark.parametrize("a", GAINS)
def test_scaled_orthogonal_exact_through_analyze(a):
    H, T, B = 16, 80, 2
    model = tanh_rnn(a * haar(H, seed=1))
    d = analyze(model, np.zeros((T, B, 1)), lyapunov_warmup=0, batch_sample="all")
    ld = d.layers[0]
    # the state never leaves 0
    assert d.nonfinite is None
    # every Lyapunov exponent is ln a
    ly = ld.lyapunov
    assert ly.exponents.shape == (H,)  # default k = min(S, 32) = H
    assert ly.steps == T and ly.warmup == 0
    np.testing.assert_allclose(ly.exponents, math.log(a), rtol=0, atol=1e-10)
    np.testing.assert_allclose(ly.per_sequence, math.log(a), rtol=0, atol=1e-10)
    assert ly.top == pytest.approx(math.log(a), abs=1e-10)
    # log10 ||d h_{T-1} / d h_t||_2 = (T-1-t) log10 a; index T-1 (the identity) is 0
    expected = (T - 1 - np.arange(T)) * math.log10(a)
    prod = ld.flow.log10_jacobian_product_norm
    assert prod.shape == (T, B)
    assert np.all(prod[T - 1] == 0.0)
    np.testing.assert_allclose(prod, np.repeat(expected[:, None], B, axis=1), rtol=0, atol=1e-10)
    np.testing.assert_allclose(ld.flow.log10_step_jacobian_norm, math.log10(a), rtol=0, atol=1e-12)
    # the probe is a unit vector and J^T = a Q^T: the last-step gradient has norm a^(T-1-t) exactly
    np.testing.assert_allclose(ld.flow.log10_last_step, np.repeat(expected[:, None], B, axis=1), atol=1e-10)
    np.testing.assert_allclose(ld.flow.grad_norm_per_sequence, 10.0 ** expected[:, None] * np.ones(B),
                               rtol=1e-10)
    assert ld.flow.fit.rate == pytest.approx(math.log10(a), abs=1e-10)
    if a != 1.0:  # a flat curve: see test_flat_decay_curve_r2
        assert ld.flow.fit.r2 == pytest.approx(1.0, abs=1e-10)
    # the same numbers in the JSON form
    out = d.to_dict()
    np.testing.assert_allclose(out["layers"][0]["lyapunov_exponents"], math.log(a), atol=1e-10)
    np.testing.assert_allclose(out["gradient_flow"]["log10_jacobian_product_norm"], expected, atol=1e-10)


@pytest.mark.parametrize(("a", "verdict", "horizon"), [(0.5, "vanishing", 10), (0.9, "vanishing", 66),
                                                       (1.0, "healthy", 80), (1.5, "exploding", None)])
def test_scaled_orthogonal_verdict_and_horizon(a, verdict, horizon):
    """With gain a per step the gradient falls below 1e-3 after ceil(3 / -log10 a) steps."""
    H, T = 16, 80
    d = analyze(tanh_rnn(a * haar(H, seed=1)), np.zeros((T, 2, 1)), lyapunov_warmup=0)
    assert d.verdict == verdict, d.verdict_detail
    if horizon is not None:
        assert d.layers[0].flow.horizon.steps == horizon
        assert d.to_dict()["gradient_flow"]["horizon_steps"] == horizon
    if a == 1.0:
        assert d.layers[0].flow.horizon.censored
        assert "edge of chaos" in d.verdict_detail
    if a == 1.5:
        assert d.rules[0].rule == "growth"


@pytest.mark.parametrize("exact", [True, False], ids=["svd", "power-iteration"])
@pytest.mark.parametrize("a", GAINS)
def test_scaled_orthogonal_exact_direct(a, exact):
    """``product_norms`` and ``lyapunov_spectrum`` on a trace from ``rnndiag.forward``."""
    H, T, B = 8, 60, 3
    tr = rnndiag.forward(tanh_rnn(a * haar(H, seed=2)), np.zeros((T, B, 1)))
    lt = tr.layers[0]
    assert not lt.h.any()
    log_prod, log_step, converged, _ = product_norms(lt, np.arange(B), exact=exact)
    assert converged
    expected = (T - 1 - np.arange(T)) * math.log10(a)
    np.testing.assert_allclose(log_prod, np.repeat(expected[:, None], B, axis=1), rtol=0, atol=1e-10)
    np.testing.assert_allclose(log_step, math.log10(a), rtol=0, atol=1e-6 if not exact else 1e-12)
    for q0 in ("identity", "random"):
        ly = lyapunov_spectrum(lt, np.arange(B), k=H, warmup=0, q0=q0)
        np.testing.assert_allclose(ly.per_sequence, math.log(a), rtol=0, atol=1e-10)
    ly = lyapunov_spectrum(lt, [1], k=3, warmup=0)  # k < S: a random frame, still exact here
    assert ly.q0 == "random"
    np.testing.assert_allclose(ly.exponents, math.log(a), atol=1e-10)


# -- 2. diagonal W_hh -----------------------------------------------------------------------------------------
DIAG = np.array([0.3, -0.5, 0.9, 1.0, -1.2, 1.7, 0.05, -2.0])


def test_diagonal_recurrence_exponents_are_log_abs_diagonal():
    T, B = 50, 2
    model = tanh_rnn(np.diag(DIAG))
    expected = np.sort(np.log(np.abs(DIAG)))[::-1]
    d = analyze(model, np.zeros((T, B, 1)), q0="identity", lyapunov_warmup=0, batch_sample="all")
    ly = d.layers[0].lyapunov
    assert ly.q0 == "identity"
    np.testing.assert_allclose(ly.exponents, expected, rtol=0, atol=1e-10)
    np.testing.assert_allclose(ly.per_sequence, np.tile(expected, (B, 1)), rtol=0, atol=1e-10)
    # the product of diagonal Jacobians has norm max|d|^(T-1-t)
    top = np.log10(np.abs(DIAG).max())
    np.testing.assert_allclose(d.layers[0].flow.log10_jacobian_product_norm[:, 0],
                               (T - 1 - np.arange(T)) * top, atol=1e-10)
    # directly on a forward trace, and with reorthonormalisation every 5 steps (still exact: D Q stays upper
    # triangular in the identity frame)
    lt = rnndiag.forward(model, np.zeros((T, B, 1))).layers[0]
    for every in (1, 5, 7):
        ly = lyapunov_spectrum(lt, np.arange(B), warmup=0, q0="identity", reortho_every=every)
        np.testing.assert_allclose(ly.exponents, expected, rtol=0, atol=1e-10)


def test_diagonal_recurrence_random_frame_converges():
    """From a random frame the QR method still finds ln|d_i|, up to a transient of O(1/T)."""
    T = 400
    lt = rnndiag.forward(tanh_rnn(np.diag(DIAG)), np.zeros((T, 1, 1))).layers[0]
    ly = lyapunov_spectrum(lt, [0], warmup=0, q0="random", seed=7)
    np.testing.assert_allclose(ly.exponents, np.sort(np.log(np.abs(DIAG)))[::-1], rtol=0, atol=0.02)


# -- 3. LSTM without recurrent weights --------------------------------------------------------------------------
FORGET_BIASES = (-1.0, 0.0, 1.0, 3.0)


@pytest.mark.parametrize("b_f", FORGET_BIASES)
def test_lstm_forget_gate_carries_the_cell_gradient(b_f):
    H, T, B = 4, 50, 2
    f = float(sigmoid(b_f))
    tr = rnndiag.forward(lstm_no_recurrence(H, b_f), np.zeros((T, B, 1)))
    lt = tr.layers[0]
    assert not lt.h.any() and not lt.c.any()
    J = lt.step_jacobian(7)
    expected_J = np.zeros((B, 2 * H, 2 * H))
    expected_J[:, :H, H:] = 0.5 * f * np.eye(H)  # dh/dc_{t-1} = k_c f, k_c = o (1 - tanh^2 0) = 1/2
    expected_J[:, H:, H:] = f * np.eye(H)
    np.testing.assert_allclose(J, expected_J, rtol=1e-15, atol=0)
    prod = full_product(lt, T)  # d s_{T-1} / d s_{-1}
    np.testing.assert_allclose(prod[:, H:, H:], np.broadcast_to(f**T * np.eye(H), (B, H, H)), rtol=1e-12,
                               atol=0)
    np.testing.assert_allclose(prod[:, H:, H:].diagonal(axis1=1, axis2=2), f**T, rtol=1e-12)
    assert not prod[:, :, :H].any()  # nothing flows from h_{-1}
    # ||J^n||_2 = f^n ||[1/2; 1]|| for n >= 1
    log_prod, _, _, _ = product_norms(lt, np.arange(B))
    n = T - 1 - np.arange(T - 1)
    np.testing.assert_allclose(log_prod[: T - 1, 0], n * math.log10(f) + 0.5 * math.log10(1.25), atol=1e-10)
    assert np.all(log_prod[T - 1] == 0)


@pytest.mark.filterwarnings("ignore:invalid value encountered in subtract:RuntimeWarning")  # the -inf spread bug
@pytest.mark.parametrize("b_f", FORGET_BIASES)
def test_lstm_forget_gate_lyapunov_and_timescale(b_f):
    H, T, B = 4, 50, 2
    f = float(sigmoid(b_f))
    model = lstm_no_recurrence(H, b_f)
    x = np.zeros((T, B, 1))
    lt = rnndiag.forward(model, x).layers[0]
    # top H exponents: ln f. From a random frame the first step maps it into the invariant subspace
    # {[v/2; v]}, after which J acts as f * identity on it: skip that one step.
    ly = lyapunov_spectrum(lt, np.arange(B), k=H, warmup=1)
    assert ly.q0 == "random"
    np.testing.assert_allclose(ly.per_sequence, math.log(f), rtol=0, atol=1e-10)
    # full spectrum from the identity frame: H exponents ln f and H exponents ln 0 = -inf
    ly = lyapunov_spectrum(lt, np.arange(B), warmup=0)
    assert ly.exponents.shape == (2 * H,)
    np.testing.assert_allclose(ly.exponents[:H], math.log(f), rtol=0, atol=1e-10)
    assert np.all(np.isneginf(ly.exponents[H:]))
    # through analyze
    d = analyze(model, x, lyapunov_k=H, lyapunov_warmup=1)
    ld = d.layers[0]
    np.testing.assert_allclose(ld.lyapunov.exponents, math.log(f), rtol=0, atol=1e-10)
    assert ld.forget_bias == pytest.approx(b_f)
    # the forget gate is f everywhere: memory timescale -1 / ln f
    for gs in (ld.gates, gate_stats(lt)):
        assert gs.memory_gate == "f"
        assert gs.memory_gate_mean == pytest.approx(f, rel=1e-14)
        assert gs.memory_timescale == pytest.approx(-1.0 / math.log(f), rel=1e-12)
        np.testing.assert_allclose(gs.unit_timescales, -1.0 / math.log(f), rtol=1e-12)
    assert d.to_dict()["layers"][0]["gates"]["memory_timescale_steps"] == pytest.approx(-1.0 / math.log(f))
    # the -inf exponents of the full spectrum become null in JSON
    d_full = analyze(model, x, lyapunov_warmup=0, q0="identity")
    exps = d_full.to_dict()["layers"][0]["lyapunov_exponents"]
    assert exps[H:] == [None] * H
    np.testing.assert_allclose(exps[:H], math.log(f), atol=1e-10)


# -- 4. GRU without recurrent weights ---------------------------------------------------------------------------
def test_gru_step_jacobian_is_update_gate_zero_input():
    I, H, T, B = 3, 5, 12, 2
    model = gru_no_recurrence(I, H)
    b_iz = model.params["bias_ih_l0"][H : 2 * H]
    lt = rnndiag.forward(model, np.zeros((T, B, I))).layers[0]
    z = sigmoid(b_iz)
    for t in range(T):
        np.testing.assert_allclose(lt.step_jacobian(t), np.broadcast_to(np.diag(z), (B, H, H)), rtol=1e-15,
                                   atol=0)
    # constant diagonal Jacobian: exponents are ln z sorted, products max(z)^(T-1-t)
    ly = lyapunov_spectrum(lt, np.arange(B), warmup=0)
    np.testing.assert_allclose(ly.exponents, np.sort(np.log(z))[::-1], atol=1e-12)
    log_prod, _, _, _ = product_norms(lt, np.arange(B))
    np.testing.assert_allclose(log_prod[:, 1], (T - 1 - np.arange(T)) * np.log10(z.max()), atol=1e-12)
    gs = gate_stats(lt)
    assert gs.memory_gate == "z"
    np.testing.assert_allclose(gs.unit_timescales, -1.0 / np.log(z), rtol=1e-12)


def test_gru_step_jacobian_is_update_gate_random_input():
    I, H, T, B = 3, 5, 12, 4
    model = gru_no_recurrence(I, H)
    x = np.random.default_rng(0).standard_normal((T, B, I))
    w_iz = model.params["weight_ih_l0"][H : 2 * H]
    b_iz = model.params["bias_ih_l0"][H : 2 * H]
    z = sigmoid(x @ w_iz.T + b_iz)  # (T, B, H), independent of h since W_hh = 0, b_hh = 0
    tr = rnndiag.forward(model, x)
    v = np.random.default_rng(1).standard_normal((B, H))
    for t in range(T):
        J = tr.step_jacobian(t)
        expected = np.zeros((B, H, H))
        expected[:, np.arange(H), np.arange(H)] = z[t]
        np.testing.assert_allclose(J, expected, rtol=1e-13, atol=0)
        np.testing.assert_allclose(tr.jvp(t, v), z[t] * v, rtol=1e-13)
        np.testing.assert_allclose(tr.vjp(t, v), z[t] * v, rtol=1e-13)
    ly = lyapunov_spectrum(tr.layers[0], np.arange(B), warmup=0)
    np.testing.assert_allclose(ly.per_sequence.sum(axis=1), np.log(z).sum(axis=2).mean(axis=0), atol=1e-12)


# -- 5. sum of exponents = mean ln|det J_t| ---------------------------------------------------------------------
def mean_logdet(lt, T: int, warmup: int = 0) -> np.ndarray:
    """Mean over t >= warmup of ln|det J_t|, per sequence (B,)."""
    out = []
    for t in range(warmup, T):
        sign, logdet = np.linalg.slogdet(lt.step_jacobian(t))
        assert np.all(sign != 0)
        out.append(logdet)
    return np.mean(out, axis=0)


@pytest.mark.parametrize("reortho_every", [1, 5])
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_exponent_sum_is_mean_log_det(cell, reortho_every):
    I, H, T, B = 3, 6, 103, 3
    model = rnndiag.init_model(cell, I, H, init="pytorch", seed=11)  # random weights and biases
    rng = np.random.default_rng(12)
    x = rng.standard_normal((T, B, I))
    d = analyze(model, x, lyapunov_k=model.state_size, lyapunov_warmup=0, q0="identity",
                reortho_every=reortho_every, batch_sample="all", keep_trace=True)
    lt = d.trace.layers[0]
    expected = mean_logdet(lt, T)
    ly = d.layers[0].lyapunov
    assert ly.exponents.shape == (model.state_size,) and ly.steps == T
    # Exact in exact arithmetic. In floating point, r steps without a QR let the frame's columns separate by
    # exp(r (lambda_1 - lambda_S)), and the smallest diagonal entries of R lose that factor in relative
    # accuracy: the LSTM here has lambda_1 - lambda_S ~ 5, i.e. ~1e11 for r = 5, the others < 1.
    spread = float(ly.exponents[0] - ly.exponents[-1])
    tol = 1e-8 + 1e-15 * math.exp(reortho_every * spread)
    assert tol < (1e-4 if cell == "lstm" else 1e-8 + 1e-12)
    np.testing.assert_allclose(ly.per_sequence.sum(axis=1), expected, rtol=0, atol=tol)
    assert ly.exponents.sum() == pytest.approx(expected.mean(), abs=tol)
    # the same through lyapunov_spectrum on a fresh forward trace
    lt2 = rnndiag.forward(model, x).layers[0]
    ly2 = lyapunov_spectrum(lt2, np.arange(B), warmup=0, q0="identity", reortho_every=reortho_every)
    np.testing.assert_allclose(ly2.per_sequence.sum(axis=1), expected, rtol=0, atol=tol)
    # and after a warm-up (reorthonormalising every step, so the warm-up is exact)
    ly3 = lyapunov_spectrum(lt2, np.arange(B), warmup=20, q0="identity")
    assert ly3.steps == T - 20
    np.testing.assert_allclose(ly3.per_sequence.sum(axis=1), mean_logdet(lt2, T, warmup=20), atol=1e-8)


# -- 7. log domain: 100,000 steps of gain 0.1 or 10 -------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("a", [0.1, 10.0])
def test_products_over_100k_steps_stay_finite(a):
    H, T = 2, 100_000
    tr = rnndiag.forward(tanh_rnn(a * haar(H, seed=3)), np.zeros((T, 1, 1)))
    lt = tr.layers[0]
    assert not lt.h.any()  # h stays at 0 even for a = 10
    expected = (T - 1 - np.arange(T)) * math.log10(a)
    with np.errstate(all="raise"):  # no overflow, no underflow, no log(0)
        log_prod, log_step, converged, _ = product_norms(lt, np.arange(1))
        chain = last_step_chain(lt, np.array([[0.6, 0.8]]))
    assert converged
    for got in (log_prod[:, 0], chain[:, 0]):
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
        assert got[0] == pytest.approx(expected[0], rel=1e-6)  # the far end: +-99,999 decades
    np.testing.assert_allclose(log_step, math.log10(a), atol=1e-12)


# -- bugs found while writing these tests --------------------------------------------------------------------------
@pytest.mark.filterwarnings("error")
def test_singular_jacobian_spread_is_zero_without_warning():
    lt = rnndiag.forward(lstm_no_recurrence(4, 1.0), np.zeros((20, 2, 1))).layers[0]
    ly = lyapunov_spectrum(lt, np.arange(2), warmup=0)  # exponents [ln f] * 4 + [-inf] * 4, same per sequence
    assert np.all(np.isneginf(ly.exponents[4:]))
    np.testing.assert_array_equal(ly.spread, 0.0)


def test_flat_decay_curve_r2():
    d = analyze(tanh_rnn(haar(16, seed=1)), np.zeros((80, 2, 1)), lyapunov_warmup=0)
    fit = d.layers[0].flow.fit
    assert fit.rate == pytest.approx(0.0, abs=1e-12)
    assert np.ptp(d.layers[0].flow.median_last_step) < 1e-12  # flat to rounding
    assert fit.r2 == pytest.approx(1.0, abs=1e-6)


def test_warmup_with_sparse_reorthonormalisation():
    # the LSTM without recurrence: after one step the random frame is in the invariant subspace (exact ln f)
    H = 4
    lt = rnndiag.forward(lstm_no_recurrence(H, 1.0), np.zeros((50, 2, 1))).layers[0]
    ly = lyapunov_spectrum(lt, np.arange(2), k=H, warmup=1, reortho_every=5)
    np.testing.assert_allclose(ly.per_sequence, math.log(sigmoid(1.0)), rtol=0, atol=1e-10)
    # a driven tanh RNN: the sum identity over t >= warmup
    T, B = 103, 3
    model = rnndiag.init_model("rnn_tanh", 3, 6, init="pytorch", seed=11)
    lt = rnndiag.forward(model, np.random.default_rng(12).standard_normal((T, B, 3))).layers[0]
    ly = lyapunov_spectrum(lt, np.arange(B), warmup=22, q0="identity", reortho_every=5)
    np.testing.assert_allclose(ly.per_sequence.sum(axis=1), mean_logdet(lt, T, warmup=22), rtol=0, atol=1e-8)


# -- the iterative norms agree with SVDs on random, driven networks ------------------------------------------------
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_iterative_norms_match_svd_on_random_driven_networks(cell):
    """Lanczos step norms and block-power product norms (the default above S = 96) against SVDs of the formed
    matrices: within the documented relative tolerance (1e-6, i.e. ~4e-7 in log10)."""
    model = rnndiag.init_model(cell, 3, 40, seed=1)
    tr = rnndiag.forward(model, np.random.default_rng(2).standard_normal((30, 3, 3)))
    lt = tr.layers[0]
    batch = np.array([0, 2])
    log_prod, log_step, converged, _ = product_norms(lt, batch, exact=False)
    ref_prod, ref_step, _, _ = product_norms(lt, batch, exact=True)
    assert converged
    np.testing.assert_allclose(log_step, ref_step, rtol=0, atol=1e-6)
    np.testing.assert_allclose(log_prod, ref_prod, rtol=0, atol=1e-6)
    # and the SVD route itself against products formed one by one
    dense = [lt.step_jacobian(t, batch=batch) for t in range(30)]
    prod = np.broadcast_to(np.eye(lt.state_size), dense[0].shape)
    for t in range(29, 0, -1):
        prod = prod @ dense[t]
        np.testing.assert_allclose(ref_prod[t - 1], np.log10(np.linalg.norm(prod, 2, axis=(1, 2))), atol=1e-12)
    np.testing.assert_allclose(ref_step, np.log10(np.linalg.norm(np.array(dense), 2, axis=(2, 3))), atol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_gate_statistics_equal_their_direct_definitions(cell):
    """The one-pass bincount route against np.histogram and the saturation thresholds applied value by value."""
    model = rnndiag.init_model(cell, 3, 6, seed=4)
    lt = rnndiag.forward(model, 3.0 * np.random.default_rng(5).standard_normal((40, 5, 3))).layers[0]
    gs = gate_stats(lt)
    H = 6
    for k, st in enumerate(gs.gates.values()):
        v = lt.arrays["gates"][:, :, k * H : (k + 1) * H]
        low, lo, hi = (0.0, 0.1, 0.9) if st.kind == "sigmoid" else (-1.0, -0.9, 0.9)
        counts, edges = np.histogram(v, bins=20, range=(low, 1.0))
        np.testing.assert_array_equal(st.hist_counts, counts)
        np.testing.assert_allclose(st.hist_edges, edges, rtol=0, atol=1e-15)
        np.testing.assert_allclose(st.unit_left, (v < lo).mean(axis=(0, 1)), rtol=0, atol=1e-15)
        np.testing.assert_allclose(st.unit_right, (v > hi).mean(axis=(0, 1)), rtol=0, atol=1e-15)
        assert st.left_saturated == pytest.approx((v < lo).mean(), abs=1e-15)
        assert st.mean == pytest.approx(v.mean(), rel=1e-14)
        assert 0 < st.left_saturated + st.right_saturated < 1  # the inputs drive some values into each tail


@pytest.mark.parametrize("a", [1e-20, 1e20])
def test_step_norms_of_extreme_scales_stay_in_double_precision(a):
    """Lanczos runs in float32 only when the Jacobians' entries sit well inside its range; W = aQ with a = 1e+-20
    keeps float64 and the exact answer, ||J_t|| = a."""
    H, T = 100, 5  # S > 96: the iterative route
    lt = rnndiag.forward(tanh_rnn(a * haar(H, seed=6)), np.zeros((T, 1, 1))).layers[0]
    log_prod, log_step, converged, _ = product_norms(lt, np.arange(1), exact=False)
    assert converged
    np.testing.assert_allclose(log_step, math.log10(a), rtol=0, atol=1e-10)
    np.testing.assert_allclose(log_prod[:, 0], (T - 1 - np.arange(T)) * math.log10(a), rtol=0, atol=1e-8)


# -- cases from the review of the iterative norms (each failed once: overshoot, a stuck warm start, overflow) ---
@pytest.mark.parametrize(("cell", "init"), [("rnn_tanh", "identity"), ("gru", "identity"), ("lstm", "identity"),
                                            ("rnn_relu", "keras"), ("lstm", "tutorial")])
def test_product_norms_of_clustered_spectra_match_svd(cell, init):
    """Identity-like weights cluster the top singular values of the products (the hard case for Lanczos from a
    warm start): the iterative route stays within its tolerance of the SVDs, and never above them."""
    H = 50 if cell == "lstm" else 100  # S = 100 > 96: the iterative route
    model = rnndiag.init_model(cell, 4, H, seed=1, init=init)
    lt = rnndiag.forward(model, np.random.default_rng(1).standard_normal((60, 3, 4))).layers[0]
    got, _, _, _ = product_norms(lt, np.arange(3), exact=False)
    ref, _, _, _ = product_norms(lt, np.arange(3), exact=True)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    assert np.all(got <= ref + 1e-9)  # Lanczos values are lower bounds


def test_product_norms_survive_a_1e40_gain_per_step():
    model = rnndiag.init_model("rnn_relu", 2, 100, seed=0, init="xavier_normal", gain=1e40)
    lt = rnndiag.forward(model, np.random.default_rng(0).standard_normal((3, 2, 2))).layers[0]
    assert np.isfinite(lt.h).all()
    got, _, converged, _ = product_norms(lt, np.arange(2), exact=False)
    ref, _, _, _ = product_norms(lt, np.arange(2), exact=True)
    assert converged and np.all(np.isfinite(got))
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_tiny_step_norms_fall_back_to_double_precision():
    """A saturated tanh RNN with W_hh ~ 1e-8: ||J_t|| ~ 1e-22, below what float32 Lanczos can square."""
    H = 100
    model = rnndiag.init_model("rnn_tanh", 2, H, seed=0)
    rng = np.random.default_rng(0)
    p = dict(model.params)
    p["weight_hh_l0"] = 1e-8 * rng.standard_normal((H, H))
    p["bias_ih_l0"] = 18.0 + rng.uniform(0, 0.5, H)
    p["weight_ih_l0"] = np.zeros_like(p["weight_ih_l0"])
    model = with_params(model, **{k: v for k, v in p.items() if k != "weight_ih_l0"}, weight_ih_l0=p["weight_ih_l0"])
    lt = rnndiag.forward(model, rng.standard_normal((6, 2, 2))).layers[0]
    _, got, _, _ = product_norms(lt, np.arange(2), exact=False)
    _, ref, _, _ = product_norms(lt, np.arange(2), exact=True)
    assert np.all(ref < -20)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_dead_relu_units_give_minus_infinite_exponents_by_default():
    """Singular Jacobians (dead ReLU units): exact zeros on diag(R) need a QR every step (the default)."""
    model = rnndiag.init_model("rnn_relu", 3, 8, seed=0, init="orthogonal")
    d = analyze(model, np.random.default_rng(1).standard_normal((40, 3, 3)), batch_sample="all")
    exps = d.to_dict()["layers"][0]["lyapunov_exponents"]
    assert exps[0] is not None and all(e is None for e in exps[1:])


def test_product_norms_follow_a_crossing_of_the_top_singular_values():
    """An identity RNN with 10 free units and the rest saturated: the products' top two singular values (12%
    apart) cross along the sequence; the tracked top subspace sees the new top at once."""
    H = 128
    model = rnndiag.init_model("rnn_tanh", 8, H, seed=1, init="identity")
    rng = np.random.default_rng(1)
    bias = rng.choice([-1, 1], H) * rng.uniform(3, 5, H)
    bias[:10] = 0.0
    model = with_params(model, bias_ih_l0=bias, weight_ih_l0=rng.normal(0, 0.4, (H, 8)))
    lt = rnndiag.forward(model, rng.standard_normal((100, 4, 8))).layers[0]
    got, _, _, _ = product_norms(lt, np.arange(4), exact=False)
    ref, _, _, _ = product_norms(lt, np.arange(4), exact=True)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6)


@pytest.mark.parametrize(("cell", "init", "gain"), [("rnn_tanh", "identity", 0.5), ("gru", "identity", 2.0)])
def test_product_norms_find_a_unit_that_climbs_from_far_below_the_tracked_subspace(cell, init, gain):
    """Identity weights scaled by 3 with strongly driven inputs: the Jacobians are (nearly) diagonal, so the
    products never mix their axes, and a unit that spends many steps below the tracked top 8 -- the subspace
    keeps no component of it -- later climbs to the top. Without the column probe these norms came out 0.9 to
    2.6 decades low, silently; now they match the SVDs."""
    model = rnndiag.init_model(cell, 6, 128, seed=0, init=init, gain=gain)
    model = with_params(model, weight_hh_l0=3.0 * model.params["weight_hh_l0"])
    lt = rnndiag.forward(model, 3.0 * np.random.default_rng(0).standard_normal((150, 5, 6))).layers[0]
    got, _, _, _ = product_norms(lt, np.array([0, 3, 4]), exact=False)
    ref, _, _, _ = product_norms(lt, np.array([0, 3, 4]), exact=True)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6)
    assert np.all(got <= ref + 1e-9)


def test_product_norms_when_the_first_product_has_an_isolated_top_direction():
    """A saturated identity LSTM: the first product J_{T-1} has units that are (nearly) decoupled, so the
    column probe hands Rayleigh-Ritz an exact eigenvector of the *second* singular value, 1% below the top,
    with no residual. Neither the block nor Lanczos started there can see past it; Lanczos restarts from a
    random vector instead (this came out 0.4% low before)."""
    model = rnndiag.init_model("lstm", 6, 64, seed=166, init="identity", gain=2.0)
    rng = np.random.default_rng(166)
    biases = {k: v + rng.normal(0, 3, v.shape) for k, v in model.params.items() if k.startswith("bias")}
    model = with_params(model, **biases)
    lt = rnndiag.forward(model, rng.standard_normal((40, 5, 6))).layers[0]
    got, _, _, _ = product_norms(lt, np.array([0, 3, 4]), exact=False)
    ref, _, _, _ = product_norms(lt, np.array([0, 3, 4]), exact=True)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6)
    assert np.all(got <= ref + 1e-9)


@pytest.mark.parametrize(("cell", "H", "kind"), [("gru", 128, "blockdiag"), ("lstm", 64, "diag")])
def test_product_norms_of_reducible_weights_do_not_stop_lanczos_early(cell, H, kind):
    """Block-diagonal (4 x 4 blocks) or diagonal W_hh: the products are reducible, and the top direction of the
    first short products hides from a Lanczos run of two or three steps, whose second Ritz value then sits far
    below the second eigenvalue; stopping that early came out 5% low. Lanczos now takes at least MIN_LANCZOS
    steps before its stopping test."""
    rng = np.random.default_rng(0)
    model = rnndiag.init_model(cell, 5, H, seed=0)
    if kind == "diag":
        w = np.diag(rng.uniform(0.5, 1.6, H))
    else:
        w = np.zeros((H, H))
        for s in range(0, H, 4):
            w[s : s + 4, s : s + 4] = rng.normal(0, 0.6, (4, 4))
    gates = 3 if cell == "gru" else 4
    params = {"weight_hh_l0": np.concatenate([w * (1 + 0.1 * g) for g in range(gates)])}
    if cell == "lstm":
        b = model.params["bias_ih_l0"].copy()
        b[H : 2 * H] += 4.0  # forget gates open: the cell path dominates
        params["bias_ih_l0"] = b
    model = with_params(model, **params)
    lt = rnndiag.forward(model, 0.3 * rng.standard_normal((80, 3, 5))).layers[0]
    got, _, _, _ = product_norms(lt, np.arange(3), exact=False)
    ref, _, _, _ = product_norms(lt, np.arange(3), exact=True)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6)


# -- the small dense solvers behind the per-step norms -----------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 40, 7), (3, 64, 8), (1, 300, 32), (6, 20, 5)])
def test_qr_helpers_on_both_sides_of_the_direct_lapack_limit(shape):
    """Small matrices go to LAPACK directly, big ones (or many) to numpy: the same factorisation either way."""
    from rnndiag.analysis._common import LAPACK_DIRECT_MAX, qr_reduced

    a = np.random.default_rng(0).standard_normal(shape)
    assert (shape[1] * shape[2] > LAPACK_DIRECT_MAX) == (shape == (1, 300, 32))
    q, r = qr_reduced(a)
    np.testing.assert_allclose(q @ r, a, rtol=0, atol=1e-12)
    n, _, k = shape
    np.testing.assert_allclose(np.swapaxes(q, 1, 2) @ q, np.broadcast_to(np.eye(k), (n, k, k)), atol=1e-12)
    _, d = qr_reduced(a, r="diagonal")
    np.testing.assert_allclose(np.abs(d), np.abs(np.diagonal(np.linalg.qr(a)[1], axis1=1, axis2=2)), rtol=1e-12)
    q1 = qr_reduced(a[:1], r=None)[0]
    np.testing.assert_allclose(q1 @ (q1.T @ a[0]), a[0], atol=1e-12)


def test_small_symmetric_and_tridiagonal_solvers_match_numpy():
    from rnndiag.analysis._common import eigh_small, eigh_tridiagonal, tridiagonal_eigenvalues

    rng = np.random.default_rng(0)
    g = rng.standard_normal((8, 8))
    g = g @ g.T
    w, v = eigh_small(g)
    np.testing.assert_allclose(w, np.linalg.eigvalsh(g), rtol=1e-12)
    np.testing.assert_allclose(g @ v, v * w, atol=1e-10)
    d, e = rng.standard_normal(12), rng.standard_normal(11)
    t = np.diag(d) + np.diag(e, 1) + np.diag(e, -1)
    np.testing.assert_allclose(eigh_tridiagonal(d, e)[0], np.linalg.eigvalsh(t), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(tridiagonal_eigenvalues(d, e), np.linalg.eigvalsh(t), rtol=1e-12, atol=1e-12)


def test_the_tracked_subspace_sees_a_block_it_has_no_component_in():
    """An exactly block-diagonal product: a dense part the tracked subspace follows, and a separate 16 x 16 block
    with a larger singular value but shorter columns (so the column probe misses it) in which the subspace has
    no component at all. Lanczos from the top Ritz vector cannot leave the dense part; before a fresh random
    direction joined the subspace every step this came out 17% low (found by review)."""
    from rnndiag.analysis.jacobians import _top_left_one

    rng = np.random.default_rng(0)
    S, p, k = 128, 8, 16
    d = rng.standard_normal((S - k, S - k)) @ np.diag(np.exp(-0.2 * np.arange(S - k))) \
        @ np.linalg.qr(rng.standard_normal((S - k, S - k)))[0]
    m = np.zeros((S, S))
    m[: S - k, : S - k] = d / np.linalg.norm(d, 2)
    m[S - k :, S - k :] = 1.2 / k  # sigma 1.2; columns 0.3, shorter than the dense part's longest
    block = np.zeros((S, p))
    block[: S - k] = np.linalg.qr(rng.standard_normal((S - k, p)))[0]
    sigma, _ = _top_left_one(m, block, 1e-6, 40, np.random.default_rng(1))
    assert sigma == pytest.approx(np.linalg.svd(m, compute_uv=False)[0], rel=1e-6)


def test_a_cholesky_factor_proves_a_ritz_value_or_the_norm_is_computed_exactly():
    """A Ritz value within the tolerance below lambda_max(m m^T) is proved by the Cholesky factor of
    theta (1 + tol) I - m m^T and returned; one that is not (a hidden top direction) fails the factorisation and
    the exact norm comes back; a zero matrix has norm 0."""
    from rnndiag.analysis.jacobians import _proven_or_exact

    rng = np.random.default_rng(0)
    u = np.linalg.qr(rng.standard_normal((64, 64)))[0]
    s = np.linspace(1.0, 0.1, 64)
    s[1] = 0.999  # a clustered top
    m = u @ np.diag(s) @ np.linalg.qr(rng.standard_normal((64, 64)))[0]
    tol = 1e-6
    close = (1.0 - 0.25 * tol) ** 2  # theta within tol of lambda_max = 1
    assert _proven_or_exact(m, close, tol) == pytest.approx(math.sqrt(close), rel=1e-15)
    for low in (0.999**2, (1.0 - 2 * tol) ** 2):  # the second singular value; just outside the tolerance
        assert _proven_or_exact(m, low, tol) == pytest.approx(1.0, rel=1e-12)
    assert _proven_or_exact(np.zeros((8, 8)), 0.0, tol) == 0.0


def test_step_norms_wait_until_every_jacobian_is_steady_at_once():
    """A top Ritz value of the bidiagonalisation can hold steady over one check and then jump (a direction the
    Krylov space had missed). Keeping values that were steady once, and solving only the others at later checks,
    left 1e-3 silent errors on this orthogonal GRU (found by the review sweep): every Jacobian is re-solved
    until all are steady at the same check."""
    from rnndiag.analysis.jacobians import _log10_step_norms

    model = rnndiag.init_model("gru", 6, 128, seed=210, init="orthogonal")
    x = np.random.default_rng(210).standard_normal((40, 5, 6))
    jac = rnndiag.forward(model, x).layers[0].jacobians(np.arange(40), np.array([0, 3, 4]), dtype=np.float64)
    log_step, converged = _log10_step_norms(jac, exact=False)
    expected = np.log10(np.linalg.svd(jac.dense(), compute_uv=False)[..., 0])
    assert converged
    np.testing.assert_allclose(log_step, expected, rtol=0, atol=1e-6)
