"""The public bptt/forward API: argument checking, dtype handling, what a Trace holds and how big it is."""

from __future__ import annotations

import re

import numpy as np
import pytest
from _helpers import CELLS, random_state0

import rnndiag
from rnndiag import bptt, forward, init_model

I, H, L, T, B = 3, 4, 2, 5, 2


@pytest.fixture(params=CELLS)
def setup(request):
    cell = request.param
    rng = np.random.default_rng(0)
    model = init_model(cell, I, H, num_layers=L, seed=0)
    x, g = rng.standard_normal((T, B, I)), rng.standard_normal((T, B, H))
    return model, x, g, random_state0(cell, L, B, H, rng)


def _raises(exc, fragment, fn, *args, **kwargs):
    """``fn`` raises ``exc`` whose one-line message contains ``fragment`` verbatim."""
    with pytest.raises(exc, match=re.escape(fragment)) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


# -- bad inputs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [forward, lambda m, x: bptt(m, x, np.zeros((20, 3, H)))],
                         ids=["forward", "bptt"])
def test_x_shape(fn):
    model = init_model("gru", 3, H, seed=0)
    _raises(ValueError, "x must have shape (T, B, 3); got (20, 3)", fn, model, np.zeros((20, 3)))
    _raises(ValueError, "x must have shape (T, B, 3); got (20, 3, 2)", fn, model, np.zeros((20, 3, 2)))
    _raises(ValueError, "x must have shape (T, B, 3); got (20, 3, 3, 1)", fn, model, np.zeros((20, 3, 3, 1)))
    _raises(ValueError, "x is empty", fn, model, np.zeros((0, 3, 3)))


def test_x_values_and_types(setup):
    model, x, g, _ = setup
    bad = x.copy()
    bad[2, 1, 0] = np.nan
    _raises(ValueError, "x contains NaN or Inf (first at index (2, 1, 0))", forward, model, bad)
    bad[2, 1, 0] = np.inf
    _raises(ValueError, "x contains NaN or Inf", bptt, model, bad, g)
    _raises(TypeError, "x must hold real numbers", forward, model, x.astype(complex))
    _raises(TypeError, "x must hold real numbers", forward, model, np.full((T, B, I), "a"))
    _raises(TypeError, "x must", forward, model, [[[1.0, 2.0, 3.0]], [[1.0]]])  # ragged


def test_grad_h_shape_and_values(setup):
    model, x, g, _ = setup
    _raises(ValueError, f"grad_h must have shape ({T}, {B}, {H}); got ({T}, {B}, {H + 1})", bptt, model, x,
            np.zeros((T, B, H + 1)))
    _raises(ValueError, f"grad_h must have shape ({T}, {B}, {H}); got ({T - 1}, {B}, {H})", bptt, model, x,
            g[1:])
    _raises(ValueError, "grad_h must have shape", bptt, model, x, g[-1])
    g = g.copy()
    g[0, 0, 0] = np.nan
    _raises(ValueError, "grad_h contains NaN or Inf", bptt, model, x, g)


def test_state0_checks(setup):
    model, x, g, state0 = setup
    if model.cell == "lstm":
        h0, c0 = state0
        _raises(TypeError, "state0 for an LSTM must be the tuple (h0, c0)", forward, model, x, h0)
        _raises(TypeError, "state0 for an LSTM must be the tuple (h0, c0)", forward, model, x, (h0,))
        _raises(ValueError, f"state0 h0 must have shape ({L}, {B}, {H}); got ({B}, {H})", forward, model, x,
                (h0[0], c0))
        _raises(ValueError, f"state0 c0 must have shape ({L}, {B}, {H}); got (1, {B}, {H})", bptt, model,
                x, g, (h0, c0[:1]))
        forward(model, x, [h0, c0])  # a list is fine
    else:
        _raises(TypeError, f"state0 for a {model.cell} is h0 of shape ({L}, {B}, {H}), not a tuple", forward,
                model, x, (state0, state0))
        _raises(ValueError, f"state0 must have shape ({L}, {B}, {H}); got ({L}, {B + 1}, {H})", bptt, model,
                x, g, np.zeros((L, B + 1, H)))
        bad = state0.copy()
        bad[1, 0, 0] = np.inf
        _raises(ValueError, "state0 contains NaN or Inf", forward, model, x, bad)


@pytest.mark.parametrize("not_a_model", [None, {"weight_ih_l0": np.zeros((4, 3))}, "lstm"])
def test_model_type(not_a_model):
    _raises(TypeError, "model must be an RNNModel", forward, not_a_model, np.zeros((2, 1, 3)))
    _raises(TypeError, "model must be an RNNModel", bptt, not_a_model, np.zeros((2, 1, 3)),
            np.zeros((2, 1, 4)))


def test_jacobian_index_errors(setup):
    model, x, g, _ = setup
    tr = bptt(model, x, g)
    S = model.state_size
    for t in (T, -T - 1, 100):
        _raises(IndexError, f"t={t} is out of range for a sequence of length {T}", tr.step_jacobian, t)
        _raises(IndexError, f"t={t} is out of range", tr.jvp, t, np.zeros((B, S)))
        _raises(IndexError, f"t={t} is out of range", tr.vjp, t, np.zeros((B, S)))
    for t in (1.0, True, "1", None):
        _raises(TypeError, "t must be an integer timestep", tr.step_jacobian, t)
    for layer in (L, -L - 1, True, 0.0):
        _raises(IndexError, f"is out of range for a {L}-layer model", tr.step_jacobian, 0, layer=layer)
        _raises(IndexError, f"is out of range for a {L}-layer model", tr.jvp, 0, np.zeros((B, S)),
                layer=layer)
    _raises(ValueError, f"v must have shape ({B}, {S}); got ({B}, {S + 1})", tr.jvp, 0, np.zeros((B, S + 1)))
    _raises(ValueError, f"u must have shape ({B}, {S}); got ({S},)", tr.vjp, 0, np.zeros(S))
    with pytest.raises(IndexError):
        tr.step_jacobian(0, batch=B)
    np.testing.assert_array_equal(tr.step_jacobian(np.int64(2), layer=np.int64(1)),
                                  tr.step_jacobian(2, layer=-1))


# -- dtypes and array-likes ------------------------------------------------------------------------
def test_inputs_are_cast_to_the_model_dtype(setup):
    model, x, g, state0 = setup
    as32 = (lambda s: tuple(a.astype(np.float32) for a in s)) if model.cell == "lstm" else \
        (lambda s: s.astype(np.float32))
    ref = bptt(model, x, g, state0)
    tr = bptt(model, x.astype(np.float32), g.astype(np.float32), as32(state0))
    assert tr.x.dtype == tr.h.dtype == tr.grad_x.dtype == tr.grad_h0.dtype == np.float64
    assert all(v.dtype == np.float64 for v in tr.param_grads.values())
    np.testing.assert_allclose(tr.h, ref.h, rtol=0, atol=1e-6)  # only the float32 rounding of the inputs
    # and a float32 model casts float64 inputs down
    tr32 = bptt(model.astype(np.float32), x, g, state0)
    assert tr32.x.dtype == tr32.h.dtype == tr32.grad_x.dtype == np.float32


def test_integer_and_list_inputs_are_accepted(setup):
    model, x, g, state0 = setup
    xi = np.round(3 * x).astype(np.int64)
    ref = bptt(model, xi.astype(np.float64), g, state0)
    # (a nested-list h0 for RNN/GRU is refused as "a tuple": see test_nested_list_h0_is_accepted)
    s_list = [s.tolist() for s in state0] if model.cell == "lstm" else state0
    tr = bptt(model, xi.tolist(), g.tolist(), s_list)
    assert tr.x.dtype == np.float64
    for name in ("h", "grad_x", "grad_h0", "grad_h"):
        np.testing.assert_array_equal(getattr(tr, name), getattr(ref, name), err_msg=name)
    np.testing.assert_array_equal(forward(model, xi).h, forward(model, xi.astype(np.float64)).h)


@pytest.mark.parametrize("cell", ["rnn_tanh", "gru"])
def test_nested_list_h0_is_accepted(cell):
    model = init_model(cell, I, H, num_layers=L, seed=0)
    x, h0 = np.ones((T, B, I)), np.full((L, B, H), 0.5)
    np.testing.assert_array_equal(forward(model, x, h0.tolist()).h, forward(model, x, h0).h)


def test_inputs_are_not_modified(setup):
    model, x, g, state0 = setup
    copies = [a.copy() for a in (x, g, *(state0 if model.cell == "lstm" else (state0,)))]
    params = {k: v.copy() for k, v in model.params.items()}
    tr = bptt(model, x, g, state0)
    tr.step_jacobian(1), tr.jvp(1, np.ones((B, model.state_size))), tr.vjp(1, np.ones((B, model.state_size)))
    for before, after in zip(copies, (x, g, *(state0 if model.cell == "lstm" else (state0,)))):
        np.testing.assert_array_equal(before, after)
    for k in params:
        np.testing.assert_array_equal(params[k], model.params[k])


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_trace_is_a_snapshot_of_its_inputs(cell):
    model = init_model(cell, I, H, seed=0)
    rng = np.random.default_rng(0)
    x, h0, c0 = rng.standard_normal((T, B, I)), rng.standard_normal((1, B, H)), rng.standard_normal((1, B, H))
    tr = forward(model, x, (h0, c0) if cell == "lstm" else h0)
    before = tr.step_jacobian(0).copy(), tr.layers[0].initial_state.copy(), tr.x.copy()
    x[:], h0[:], c0[:] = 0.0, 0.0, 0.0  # the caller reuses its buffers
    after = tr.step_jacobian(0), tr.layers[0].initial_state, tr.x
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)


# -- what a trace holds ----------------------------------------------------------------------------
def test_forward_records_no_gradients(setup):
    model, x, g, state0 = setup
    tr = forward(model, x, state0)
    assert tr.grad_x is None and tr.grad_h0 is None and tr.grad_c0 is None and tr.param_grads is None
    assert tr.grad_h is None and tr.grad_c is None
    assert all(lt.grad_h is None and lt.grad_c is None for lt in tr.layers)
    # the same forward pass as bptt records
    full = bptt(model, x, g, state0)
    np.testing.assert_array_equal(tr.h, full.h)
    np.testing.assert_array_equal(tr.h_n, full.h_n)
    np.testing.assert_array_equal(tr.step_jacobian(2, layer=0), full.step_jacobian(2, layer=0))


def test_trace_shapes(setup):
    model, x, g, state0 = setup
    tr = bptt(model, x, g, state0)
    S = model.state_size
    assert (tr.seq_len, tr.batch_size, len(tr.layers)) == (T, B, L)
    assert tr.h.shape == tr.grad_h.shape == (T, B, H)
    assert tr.grad_x.shape == (T, B, I)
    assert tr.grad_h0.shape == tr.h_n.shape == (L, B, H)
    assert tr.step_jacobian(0).shape == (B, S, S)
    assert tr.step_jacobian(0, batch=[1]).shape == (1, S, S)
    assert {k: v.shape for k, v in tr.param_grads.items()} == {k: v.shape for k, v in model.params.items()}
    if model.cell == "lstm":
        assert tr.c.shape == tr.grad_c.shape == (T, B, H) and tr.grad_c0.shape == tr.c_n.shape == (L, B, H)
        np.testing.assert_array_equal(tr.layers[0].state(1), np.concatenate([tr.layers[0].h[1],
                                                                             tr.layers[0].c[1]], axis=1))
    else:
        assert tr.c is None and tr.grad_c is None and tr.grad_c0 is None and tr.c_n is None
    np.testing.assert_array_equal(tr.h_n[-1], tr.h[-1])


def test_param_grads_false(setup):
    model, x, g, state0 = setup
    full = bptt(model, x, g, state0)
    tr = bptt(model, x, g, state0, param_grads=False)
    assert tr.param_grads is None
    np.testing.assert_array_equal(tr.grad_x, full.grad_x)
    np.testing.assert_array_equal(tr.grad_h, full.grad_h)


@pytest.mark.parametrize("cell", CELLS)
def test_trace_memory_is_linear_in_T(cell):
    """Trace.nbytes is O(T*B*H): doubling T doubles it (within 1%), and the constant is modest."""
    model = init_model(cell, 3, 5, num_layers=2, seed=0)
    rng = np.random.default_rng(0)

    def nbytes(T):
        return bptt(model, rng.standard_normal((T, 3, 3)), rng.standard_normal((T, 3, 5))).nbytes

    n1, n2 = nbytes(200), nbytes(400)
    assert abs(n2 / n1 - 2) < 0.02
    per_step = n2 / (400 * 3 * 5 * 2 * 8)  # bytes per (t, b, hidden unit, layer) in float64 units
    assert per_step < 20, per_step
    assert forward(model, rng.standard_normal((200, 3, 3))).nbytes < n1  # no gradients recorded


def test_backward_on_a_forward_trace_equals_bptt():
    """forward + backward (what a training loop does) gives exactly bptt's result and leaves the trace alone."""
    rng = np.random.default_rng(3)
    for cell in ("rnn_tanh", "lstm", "gru"):
        m = rnndiag.init_model(cell, 3, 5, num_layers=2, seed=1)
        x = rng.standard_normal((7, 2, 3))
        g = rng.standard_normal((7, 2, 5))
        fwd = rnndiag.forward(m, x)
        h_before = fwd.h.copy()
        tr = rnndiag.backward(fwd, g)
        ref = rnndiag.bptt(m, x, g)
        assert np.array_equal(fwd.h, h_before)
        assert np.array_equal(tr.grad_h, ref.grad_h)
        assert np.array_equal(tr.grad_x, ref.grad_x)
        for k in ref.param_grads:
            assert np.array_equal(tr.param_grads[k], ref.param_grads[k]), (cell, k)
    with pytest.raises(TypeError, match="trace must be a Trace"):
        rnndiag.backward("not a trace", g)


def test_implicit_jacobians_of_many_steps_match_the_dense_ones(setup):
    """``LayerTrace.jacobians(steps, rows)``: one block of implicit Jacobians equals the per-step dense ones, and
    its jvp/vjp on stacks of k vectors per Jacobian equal J @ v and u @ J."""
    model, x, g, state0 = setup
    tr = bptt(model, x, g, state0)
    S = model.state_size
    steps, rows = np.array([0, 3, 1]), np.array([1, 0])
    for lt in tr.layers:
        jac = lt.jacobians(steps, rows)
        assert jac.shape == (3, 2) and jac.state_size == S
        dense = jac.dense()
        for a, t in enumerate(steps):
            np.testing.assert_array_equal(dense[a], lt.step_jacobian(int(t), batch=rows))
        v = np.random.default_rng(0).standard_normal((3, 2, 4, S))  # 4 vectors per Jacobian
        np.testing.assert_allclose(jac.jvp(v), np.einsum("mnij,mnkj->mnki", dense, v), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(jac.vjp(v), np.einsum("mnki,mnij->mnkj", v, dense), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(jac[1].jvp(v[1, :, 0]), np.einsum("nij,nj->ni", dense[1], v[1, :, 0]),
                                   rtol=1e-12, atol=1e-14)
    with pytest.raises(IndexError, match="steps must be a 1-D array of integers"):
        tr.layers[0].jacobians(np.array([0, T]))
    with pytest.raises(ValueError, match="vectors must have shape"):
        tr.layers[0].jacobians(steps, rows).jvp(np.zeros((3, S)))


def test_rmatmul_is_the_row_block_product_with_the_jacobian(setup):
    model, x, g, state0 = setup
    tr = bptt(model, x, g, state0)
    S = model.state_size
    jac = tr.layers[1].jacobians(np.array([4, 0]), np.array([1, 0]))
    m = np.random.default_rng(1).standard_normal((2, 2, 3, S))  # 3 row vectors per Jacobian
    np.testing.assert_allclose(jac.rmatmul(m), m @ jac.dense(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(jac[0].rmatmul(m[0]), m[0] @ jac.dense()[0], rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="m must have shape"):
        jac.rmatmul(m[0])


def test_rmatmul_with_formed_parts_buffers_and_scratch_equals_the_product(setup):
    """The product loop's route: dense parts formed for several steps at once, a column-major m, the result
    written into a given buffer -- the same m J as the plain call."""
    model, x, g, state0 = setup
    tr = bptt(model, x, g, state0)
    S = model.state_size
    for lt in tr.layers:
        jac = lt.jacobians(np.array([4, 0, 2]), np.array([1, 0]))
        formed = jac.with_formed()
        assert (formed.formed is None) == (lt.cell.startswith("rnn"))  # an RNN has nothing to form
        dense = jac.dense()
        m = np.random.default_rng(1).standard_normal((2, S, S))
        for a in range(3):
            want = m @ dense[a]
            for order in ("C", "F"):
                # F: each (S, S) matrix column-major, as the product loop holds it
                src = m.copy() if order == "C" else np.ascontiguousarray(np.swapaxes(m, 1, 2)).transpose(0, 2, 1)
                out = np.empty((2, S, S))
                got = formed[a].rmatmul(src, out=out)
                assert got is out
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-13)
            np.testing.assert_allclose(formed[a].rmatmul(m), want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("lead", [(), (3,), (2, 0), (2, 3)], ids=["one", "steps", "empty", "steps-x-rows"])
def test_formed_parts_of_any_stack_equal_the_dense_jacobians(cell, lead):
    """The stacked route (one batched product over the units) forms what the elementwise dense Jacobian holds,
    for any stack shape, empty ones included."""
    from rnndiag.cells import gru, lstm

    module = lstm if cell == "lstm" else gru
    H = 16
    rng = np.random.default_rng(0)
    w_hh = rng.standard_normal(((4 if cell == "lstm" else 3) * H, H))
    factors = tuple(rng.standard_normal((*lead, H)) for _ in range(6 if cell == "lstm" else 4))
    formed = module.formed_part(factors, w_hh)
    dense = module.dense_jacobian(factors, w_hh)
    want = dense[..., :, :H] if cell == "lstm" else dense  # LSTM: the left block column
    assert formed.shape == want.shape
    np.testing.assert_allclose(formed, want, rtol=1e-13, atol=1e-13)


def test_matmul_is_the_column_block_product_with_the_jacobian(setup):
    """``J @ x`` for a frame of column vectors per Jacobian (the Lyapunov route), with and without formed
    parts, into a given buffer; a wrong shape is refused."""
    model, x, g, state0 = setup
    tr = bptt(model, x, g, state0)
    S = model.state_size
    jac = tr.layers[1].jacobians(np.array([4, 0]), np.array([1, 0]))
    frame = np.random.default_rng(1).standard_normal((2, 2, S, 3))  # 3 column vectors per Jacobian
    want = jac.dense() @ frame
    for j in (jac, jac.with_formed()):
        np.testing.assert_allclose(j.matmul(frame), want, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(j[1].matmul(frame[1]), want[1], rtol=1e-12, atol=1e-14)
        out = np.empty_like(frame)
        assert j.matmul(frame, out=out) is out
        np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="x must have shape"):
        jac.matmul(frame[0])
