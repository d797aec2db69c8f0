"""Exact BPTT against central finite differences (float64); the step Jacobian operators against each other.

Loss throughout: ``L = sum(g * h)`` with a random direct gradient ``g`` on the last layer's outputs, so that
``bptt(model, x, g)`` returns ``dL/d(.)`` for every parameter, the input and the initial state.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from _helpers import (
    CELLS,
    central_diff,
    loss,
    lstm_kc,
    lstm_output_gate,
    make_problem,
    rel_err,
    state_of,
    sub_model,
)

import rnndiag

EPS = 1e-6
TOL = 1e-6  # rel_err of analytic vs central-difference gradients; FD error here is ~1e-9

CONFIGS = list(itertools.product(CELLS, (True, False), (1, 2)))
CONFIG_IDS = [f"{c}-{'bias' if b else 'nobias'}-L{n}" for c, b, n in CONFIGS]


# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("cell", "bias", "num_layers"), CONFIGS, ids=CONFIG_IDS)
def test_every_gradient_matches_finite_differences(cell, bias, num_layers):
    """Every parameter entry, every input entry, h0 (and c0): analytic == central differences."""
    model, x, g, state0 = make_problem(cell, input_size=3, hidden=3, T=4, B=2, num_layers=num_layers,
                                       bias=bias, seed=11)
    tr = rnndiag.bptt(model, x, g, state0)
    assert set(tr.param_grads) == set(model.params)

    errors = {}
    for name, value in model.params.items():
        def f(p, name=name):
            return loss(model.with_params({**model.params, name: p}), x, g, state0)
        errors[name] = rel_err(tr.param_grads[name], central_diff(f, value, EPS))

    errors["x"] = rel_err(tr.grad_x, central_diff(lambda xx: loss(model, xx, g, state0), x, EPS))
    if cell == "lstm":
        h0, c0 = state0
        errors["h0"] = rel_err(tr.grad_h0, central_diff(lambda a: loss(model, x, g, (a, c0)), h0, EPS))
        errors["c0"] = rel_err(tr.grad_c0, central_diff(lambda a: loss(model, x, g, (h0, a)), c0, EPS))
    else:
        assert tr.grad_c0 is None
        errors["h0"] = rel_err(tr.grad_h0, central_diff(lambda a: loss(model, x, g, a), state0, EPS))

    bad = {k: v for k, v in errors.items() if not v < TOL}
    assert not bad, f"relative errors above {TOL}: {bad}"


@pytest.mark.parametrize("cell", CELLS)
def test_initial_state_gradient_without_state0(cell):
    """state0=None means zeros, and grad_h0 (grad_c0) is still the gradient at that zero state."""
    model, x, g, _ = make_problem(cell, num_layers=2, seed=3, with_state=False)
    tr = rnndiag.bptt(model, x, g)
    zeros = np.zeros((2, 2, 3))
    if cell == "lstm":
        fd_h = central_diff(lambda a: loss(model, x, g, (a, zeros)), zeros, EPS)
        fd_c = central_diff(lambda a: loss(model, x, g, (zeros, a)), zeros, EPS)
        assert rel_err(tr.grad_c0, fd_c) < TOL
    else:
        fd_h = central_diff(lambda a: loss(model, x, g, a), zeros, EPS)
    assert rel_err(tr.grad_h0, fd_h) < TOL


# -- the recorded total dL/dh_t (dL/dc_t) ----------------------------------------------------------
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_total_grad_h_by_splitting_the_sequence(cell, num_layers):
    """Finite differences of the total ``dL/dh_t`` (and ``dL/dc_t``) of the last layer.

    Cut the sequence after step t: ``L = sum_{s<=t} g_s h_s + L_tail(s_t)`` where the tail is a forward pass
    over ``x[t+1:]`` from the state at t. Perturbing the last layer's h_t in that state (lower layers do not
    depend on it) gives ``dL/dh_t = g_t + dL_tail/dh_t``. For LSTM, a perturbation of c_t also moves
    ``h_t = o_t tanh(c_t)`` (o_t does not depend on c_t), which gives the *total* ``dL/dc_t`` that the trace
    records.
    """
    T, H = 5, 3
    model, x, g, state0 = make_problem(cell, hidden=H, T=T, B=2, num_layers=num_layers, seed=5)
    tr = rnndiag.bptt(model, x, g, state0)
    np.testing.assert_array_equal(tr.grad_h[T - 1], g[T - 1])  # nothing after the last step

    for t in range(T - 1):
        hs = np.stack([lt.h[t] for lt in tr.layers])
        if cell != "lstm":
            def tail_h(a, t=t, hs=hs):
                return loss(model, x[t + 1 :], g[t + 1 :], np.concatenate([hs[:-1], a[None]]))
            fd = g[t] + central_diff(tail_h, hs[-1], EPS)
            assert rel_err(tr.grad_h[t], fd) < TOL, f"grad_h[{t}]"
            continue

        cs = np.stack([lt.c[t] for lt in tr.layers])
        o_t = lstm_output_gate(model, tr)[t]
        np.testing.assert_allclose(o_t * np.tanh(tr.c[t]), tr.h[t], rtol=1e-13, atol=1e-15)

        def tail(h_last, c_last, t=t, hs=hs, cs=cs):
            state = (np.concatenate([hs[:-1], h_last[None]]), np.concatenate([cs[:-1], c_last[None]]))
            return loss(model, x[t + 1 :], g[t + 1 :], state)

        fd_h = g[t] + central_diff(lambda a, t=t, cs=cs: tail(a, cs[-1]), hs[-1], EPS)

        def total_c(a, t=t, o_t=o_t):
            h_t = o_t * np.tanh(a)
            return np.sum(g[t] * h_t) + tail(h_t, a)

        fd_c = central_diff(total_c, cs[-1], EPS)
        assert rel_err(tr.grad_h[t], fd_h) < TOL, f"grad_h[{t}]"
        assert rel_err(tr.grad_c[t], fd_c) < TOL, f"grad_c[{t}]"


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_total_grad_h_satisfies_the_adjoint_recurrence(cell, num_layers):
    """``grad_h[t] = g_t + u_{t+1}^T J_{t+1}`` per layer, consistent with ``vjp`` and ``grad_h0``.

    RNN/GRU: u_t = grad_h[t]. LSTM: the trace's grad_c[t] is the *total* dL/dc_t (it includes the path
    through h_t = o_t tanh(c_t)), whereas the adjoint of the state [h; c] needs the partial dL/dc_t holding
    h_t fixed, grad_c[t] - kc_t * grad_h[t] with kc_t = o_t (1 - tanh^2 c_t). So
    u_t = [grad_h[t], grad_c[t] - kc_t grad_h[t]] and the identity reads
    ``vjp(t+1, u_{t+1}) = [grad_h[t] - g_t, grad_c[t] - kc_t grad_h[t]]``, while
    ``vjp(0, u_0) = [grad_h0, grad_c0]``.
    """
    T = 5
    model, x, g, state0 = make_problem(cell, T=T, B=3, num_layers=num_layers, seed=8)
    tr = rnndiag.bptt(model, x, g, state0)
    layer = num_layers - 1
    lt = tr.layers[layer]
    if cell == "lstm":
        kc = lstm_kc(model, tr, layer)
        u = np.concatenate([lt.grad_h, lt.grad_c - kc * lt.grad_h], axis=2)  # (T, B, 2H)
        lhs = np.concatenate([lt.grad_h - g, lt.grad_c - kc * lt.grad_h], axis=2)
        init = np.concatenate([tr.grad_h0[layer], tr.grad_c0[layer]], axis=1)
        np.testing.assert_allclose(lt.grad_h[T - 1], g[T - 1], rtol=0, atol=0)
        np.testing.assert_allclose(lt.grad_c[T - 1], kc[T - 1] * g[T - 1], rtol=1e-13, atol=1e-14)
    else:
        u = lt.grad_h
        lhs = lt.grad_h - g
        init = tr.grad_h0[layer]
    for t in range(T - 1):
        assert rel_err(lhs[t], tr.vjp(t + 1, u[t + 1], layer=layer)) < 1e-12, f"t={t}"
    assert rel_err(init, tr.vjp(0, u[0], layer=layer)) < 1e-12


# -- step Jacobians --------------------------------------------------------------------------------
def _fd_step_jacobian(model1, layer_input, s_prev, t):
    """d s_t / d s_{t-1} (B, S, S) of a single-layer model, by central differences through ``forward``.

    Batch rows are independent, so column j is perturbed in every row at once.
    """
    cell = model1.cell
    B, S = s_prev.shape
    jac = np.empty((B, S, S))

    def step(s):
        tr = rnndiag.forward(model1, layer_input[t : t + 1], state_of(cell, s))
        return tr.layers[0].state(0)

    for j in range(S):
        sp, sm = s_prev.copy(), s_prev.copy()
        sp[:, j] += EPS
        sm[:, j] -= EPS
        jac[:, :, j] = (step(sp) - step(sm)) / (2 * EPS)
    return jac


@pytest.mark.parametrize(("num_layers", "layer"), [(1, 0), (2, 1), (2, 0)])
@pytest.mark.parametrize("cell", CELLS)
def test_step_jacobian_matches_finite_differences(cell, num_layers, layer):
    """``trace.step_jacobian(t, layer, batch)`` == FD of one step run from ``state0 = s_{t-1}``."""
    T, B = 5, 3
    model, x, _, state0 = make_problem(cell, input_size=2, hidden=4, T=T, B=B, num_layers=num_layers, seed=21)
    tr = rnndiag.forward(model, x, state0)
    lt = tr.layers[layer]
    single = sub_model(model, layer)
    layer_input = x if layer == 0 else tr.layers[layer - 1].h
    assert lt.state_size == model.state_size == (8 if cell == "lstm" else 4)

    for t in (0, 2, T - 1):
        s_prev = lt.initial_state if t == 0 else lt.state(t - 1)
        fd = _fd_step_jacobian(single, layer_input, s_prev, t)
        full = tr.step_jacobian(t, layer=layer)
        assert full.shape == (B, model.state_size, model.state_size)
        assert rel_err(full, fd) < TOL, f"t={t}"
        for batch, rows in [(1, [1]), (slice(0, 2), [0, 1]), (np.array([2, 0]), [2, 0]), ([1, 1], [1, 1])]:
            np.testing.assert_array_equal(tr.step_jacobian(t, layer=layer, batch=batch), full[rows])
        # negative t indexes from the end, as for a sequence
        np.testing.assert_array_equal(tr.step_jacobian(t - T, layer=layer), full)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_jvp_vjp_and_explicit_jacobian_agree(cell, num_layers):
    """check_vjp-style dot-product test: <u, J v> via jvp, via vjp and via the explicit J agree to 1e-12."""
    T, B = 4, 3
    model, x, g, state0 = make_problem(cell, input_size=3, hidden=5, T=T, B=B, num_layers=num_layers, seed=2)
    tr = rnndiag.bptt(model, x, g, state0)
    rng = np.random.default_rng(99)
    S = model.state_size
    for layer, t in itertools.product(range(num_layers), range(T)):
        u, v = rng.standard_normal((B, S)), rng.standard_normal((B, S))
        J = tr.step_jacobian(t, layer=layer)
        Jv, uJ = tr.jvp(t, v, layer=layer), tr.vjp(t, u, layer=layer)
        assert Jv.shape == uJ.shape == (B, S)
        via_jvp = np.sum(u * Jv, axis=1)
        via_vjp = np.sum(uJ * v, axis=1)
        via_jac = np.einsum("bi,bij,bj->b", u, J, v)
        scale = max(1.0, float(np.abs(via_jac).max()))
        assert np.abs(via_jvp - via_jac).max() / scale < 1e-12, (layer, t)
        assert np.abs(via_vjp - via_jac).max() / scale < 1e-12, (layer, t)
        assert rel_err(Jv, np.einsum("bij,bj->bi", J, v)) < 1e-12
        assert rel_err(uJ, np.einsum("bi,bij->bj", u, J)) < 1e-12
