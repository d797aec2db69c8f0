"""Initialisation schemes: determinism, per-gate-block properties, options and argument errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from _helpers import CELLS, GATES

import rnndiag
from rnndiag import SCHEMES, init_model


def _blocks(w, H):
    """The (H, fan_in) gate blocks of a (G*H, fan_in) weight."""
    return [w[k * H : (k + 1) * H] for k in range(w.shape[0] // H)]


@pytest.mark.parametrize(("cell", "scheme"), list(itertools.product(CELLS, SCHEMES)))
def test_every_scheme_builds_for_every_cell(cell, scheme):
    m = init_model(cell, 3, 4, num_layers=2, init=scheme, seed=0)
    assert m.cell == cell and m.init.startswith(scheme)
    G = GATES[cell]
    assert m.params["weight_ih_l0"].shape == (G * 4, 3)
    assert m.params["weight_hh_l1"].shape == (G * 4, 4)
    assert m.params["weight_ih_l1"].shape == (G * 4, 4)
    assert all(np.isfinite(v).all() and v.dtype == np.float64 for v in m.params.values())
    tr = rnndiag.forward(m, np.ones((2, 1, 3)))
    assert np.isfinite(tr.h).all()


@pytest.mark.parametrize("scheme", SCHEMES)
def test_seed_determinism(scheme):
    a = init_model("lstm", 3, 4, num_layers=2, init=scheme, seed=123)
    b = init_model("lstm", 3, 4, num_layers=2, init=scheme, seed=123)
    c = init_model("lstm", 3, 4, num_layers=2, init=scheme, seed=124)
    assert a.params.keys() == b.params.keys() == c.params.keys()
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    # every scheme draws the input weights at random, so a different seed changes them
    assert any(not np.array_equal(a.params[k], c.params[k]) for k in a.params)
    assert not np.array_equal(a.params["weight_ih_l0"], c.params["weight_ih_l0"])


@pytest.mark.parametrize("gain", [None, 0.7, 1.3])
@pytest.mark.parametrize("cell", CELLS)
def test_orthogonal_blocks(cell, gain):
    """Each (H, H) recurrent gate block / gain is orthogonal; input blocks are semi-orthogonal; biases 0."""
    H = 6
    m = init_model(cell, 4, H, num_layers=2, init="orthogonal", gain=gain, seed=1)
    g = 1.0 if gain is None else gain
    for layer in range(2):
        for q in _blocks(m.params[f"weight_hh_l{layer}"], H):
            np.testing.assert_allclose((q / g).T @ (q / g), np.eye(H), rtol=0, atol=1e-12)
        for q in _blocks(m.params[f"weight_ih_l{layer}"], H):
            q = q / g
            gram = q.T @ q if q.shape[0] >= q.shape[1] else q @ q.T  # (H, 4): rows orthonormal
            np.testing.assert_allclose(gram, np.eye(min(q.shape)), rtol=0, atol=1e-12)
        np.testing.assert_array_equal(m.params[f"bias_ih_l{layer}"], 0.0)
    # the stacked (G*H, H) matrix is NOT what is orthogonalised: distinct gates get distinct blocks
    if GATES[cell] > 1:
        b = _blocks(m.params["weight_hh_l0"], H)
        assert not np.allclose(b[0], b[1])


@pytest.mark.parametrize("gain", [None, 0.5])
@pytest.mark.parametrize("cell", CELLS)
def test_identity_blocks(cell, gain):
    H = 5
    m = init_model(cell, 3, H, init="identity", gain=gain, seed=0)
    for q in _blocks(m.params["weight_hh_l0"], H):
        np.testing.assert_array_equal(q, (1.0 if gain is None else gain) * np.eye(H))
    assert np.abs(m.params["weight_ih_l0"]).max() < 0.01  # N(0, 0.001^2)


@pytest.mark.parametrize("cell", CELLS)
def test_pytorch_range(cell):
    H = 7
    m = init_model(cell, 5, H, num_layers=2, init="pytorch", seed=3)
    k = 1.0 / np.sqrt(H)
    for name, v in m.params.items():
        assert np.abs(v).max() <= k, name
    # and it actually fills the range (not a degenerate narrower distribution)
    allv = np.concatenate([v.ravel() for v in m.params.values()])
    assert allv.min() < -0.9 * k and allv.max() > 0.9 * k


def test_tutorial_std():
    m = init_model("rnn_tanh", 400, 400, init="tutorial", seed=0)
    for name in ("weight_ih_l0", "weight_hh_l0"):
        assert abs(m.params[name].std() - 0.01) < 5e-4, name
        assert abs(m.params[name].mean()) < 5e-4
    np.testing.assert_array_equal(m.params["bias_ih_l0"], 0.0)


@pytest.mark.parametrize(("scheme", "std", "bound"), [
    # per gate block: fan_in = columns, fan_out = H; default gains 1 (xavier) and sqrt(2) (kaiming)
    ("xavier_uniform", None, lambda fi, H: np.sqrt(6 / (fi + H))),
    ("xavier_normal", lambda fi, H: np.sqrt(2 / (fi + H)), None),
    ("kaiming_uniform", None, lambda fi, H: np.sqrt(2) * np.sqrt(3 / fi)),
    ("kaiming_normal", lambda fi, H: np.sqrt(2 / fi), None),
])
def test_variance_scaling_schemes(scheme, std, bound):
    I, H = 100, 300
    m = init_model("gru", I, H, init=scheme, seed=0)
    for name, fan_in in (("weight_ih_l0", I), ("weight_hh_l0", H)):
        for q in _blocks(m.params[name], H):
            if bound is not None:
                b = bound(fan_in, H)
                assert np.abs(q).max() <= b and np.abs(q).max() > 0.99 * b, (name, np.abs(q).max(), b)
            else:
                assert abs(q.std() / std(fan_in, H) - 1) < 0.02, (name, q.std(), std(fan_in, H))
    np.testing.assert_array_equal(m.params["bias_hh_l0"], 0.0)


def test_keras_lstm():
    H = 4
    m = init_model("lstm", 3, H, num_layers=2, init="keras", seed=0)
    for layer in range(2):
        b = m.params[f"bias_ih_l{layer}"] + m.params[f"bias_hh_l{layer}"]
        np.testing.assert_array_equal(b[H : 2 * H], 1.0)  # forget gate
        np.testing.assert_array_equal(np.delete(b, np.s_[H : 2 * H]), 0.0)
        for q in _blocks(m.params[f"weight_hh_l{layer}"], H):
            np.testing.assert_allclose(q.T @ q, np.eye(H), rtol=0, atol=1e-12)
    # glorot_uniform input blocks: |w| <= sqrt(6 / (fan_in + fan_out)) per block
    assert np.abs(m.params["weight_ih_l0"]).max() <= np.sqrt(6 / (3 + H))


@pytest.mark.parametrize("scheme", ["pytorch", "xavier_uniform", "keras"])
@pytest.mark.parametrize("fb", [0.0, 1.0, 2.5])
def test_forget_bias_sets_effective_forget_bias(scheme, fb):
    H = 3
    m = init_model("lstm", 2, H, num_layers=2, init=scheme, forget_bias=fb, seed=0)
    ref = init_model("lstm", 2, H, num_layers=2, init=scheme, seed=0)
    for layer in range(2):
        b_ih, b_hh = m.params[f"bias_ih_l{layer}"], m.params[f"bias_hh_l{layer}"]
        np.testing.assert_array_equal(b_ih[H : 2 * H] + b_hh[H : 2 * H], fb)
        # the other gates' biases are untouched
        for name in (f"bias_ih_l{layer}", f"bias_hh_l{layer}"):
            np.testing.assert_array_equal(np.delete(m.params[name], np.s_[H : 2 * H]),
                                          np.delete(ref.params[name], np.s_[H : 2 * H]))


@pytest.mark.parametrize("scheme", ["pytorch", "orthogonal", "identity"])
@pytest.mark.parametrize("cell", CELLS)
def test_dtype_float32(cell, scheme):
    m = init_model(cell, 3, 4, num_layers=2, init=scheme, dtype=np.float32, seed=0)
    assert m.dtype == np.float32
    assert all(v.dtype == np.float32 for v in m.params.values())
    # same draws as float64, rounded
    m64 = init_model(cell, 3, 4, num_layers=2, init=scheme, seed=0)
    for k in m.params:
        np.testing.assert_array_equal(m.params[k], m64.params[k].astype(np.float32))


@pytest.mark.parametrize("cell", CELLS)
def test_bias_false(cell):
    m = init_model(cell, 3, 4, num_layers=2, bias=False, seed=0)
    assert not m.bias
    assert sorted(m.params) == ["weight_hh_l0", "weight_hh_l1", "weight_ih_l0", "weight_ih_l1"]


# -- argument errors -------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "exc", "names"), [
    ({"init": "he_xavier"}, ValueError, "init"),
    ({"init": 3}, TypeError, "init"),
    ({"cell": "transformer"}, ValueError, "cell"),
    ({"cell": None}, TypeError, "cell"),
    ({"hidden_size": 0}, ValueError, "hidden_size"),
    ({"hidden_size": -1}, ValueError, "hidden_size"),
    ({"hidden_size": 2.0}, TypeError, "hidden_size"),
    ({"hidden_size": True}, TypeError, "hidden_size"),
    ({"input_size": False}, TypeError, "input_size"),
    ({"input_size": 0}, ValueError, "input_size"),
    ({"num_layers": 0}, ValueError, "num_layers"),
    ({"num_layers": True}, TypeError, "num_layers"),
    ({"init": "orthogonal", "gain": 0}, ValueError, "gain"),
    ({"init": "orthogonal", "gain": -1.0}, ValueError, "gain"),
    ({"init": "orthogonal", "gain": float("nan")}, ValueError, "gain"),
    ({"init": "orthogonal", "gain": True}, ValueError, "gain"),
    ({"init": "pytorch", "gain": 2.0}, ValueError, "gain"),
    ({"cell": "gru", "forget_bias": 1.0}, ValueError, "forget_bias"),
    ({"cell": "rnn_tanh", "forget_bias": 1.0}, ValueError, "forget_bias"),
    ({"forget_bias": 1.0, "bias": False}, ValueError, "forget_bias"),
    ({"forget_bias": float("inf")}, ValueError, "forget_bias"),
    ({"dtype": np.float16}, TypeError, "dtype"),
    ({"dtype": np.int64}, TypeError, "dtype"),
    ({"seed": -1}, ValueError, "seed"),
    ({"seed": 1.5}, ValueError, "seed"),
])
def test_bad_arguments_name_the_argument(kwargs, exc, names):
    args = {"cell": "lstm", "input_size": 3, "hidden_size": 4}
    args.update(kwargs)
    with pytest.raises(exc) as info:
        init_model(args.pop("cell"), args.pop("input_size"), args.pop("hidden_size"), **args)
    msg = str(info.value)
    assert names in msg and "\n" not in msg, msg


def test_aliases():
    assert init_model("RNN", 2, 3, seed=0).cell == "rnn_tanh"
    assert init_model("relu", 2, 3, seed=0).cell == "rnn_relu"
    assert init_model("lstm", 2, 3, init="Glorot-Uniform", seed=0).init == "xavier_uniform"
    assert init_model("gru", 2, 3, init="irnn", seed=0).init == "identity"
