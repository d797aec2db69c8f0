"""Shared helpers for the test suite: problem builders, finite differences and verbose comparisons."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

import rnndiag

CELLS = ("rnn_tanh", "rnn_relu", "lstm", "gru")
GATES = {"rnn_tanh": 1, "rnn_relu": 1, "lstm": 4, "gru": 3}

# ReLU is not differentiable at 0; finite differences with step eps ~1e-6 move a pre-activation by
# O(eps), so every pre-activation must stay this far from the kink.
RELU_MARGIN = 1e-3


# -- problems --------------------------------------------------------------------------------------
def random_state0(cell: str, num_layers: int, batch: int, hidden: int, rng: np.random.Generator, scale=0.5):
    h0 = scale * rng.standard_normal((num_layers, batch, hidden))
    if cell == "lstm":
        return h0, scale * rng.standard_normal((num_layers, batch, hidden))
    return h0


def make_problem(cell, *, input_size=3, hidden=3, T=4, B=2, num_layers=1, bias=True, seed=0,
                 with_state=True, init="pytorch"):
    """A float64 model, input ``x``, direct gradient ``g`` (T, B, H) and ``state0`` (or None).

    For ``rnn_relu`` the seed is advanced until every pre-activation of every layer is at least
    :data:`RELU_MARGIN` away from the kink, so that central differences are valid.
    """
    for attempt in range(200):
        rng = np.random.default_rng([seed, attempt])
        model = rnndiag.init_model(cell, input_size, hidden, num_layers=num_layers, bias=bias, init=init,
                                   seed=rng)
        x = rng.standard_normal((T, B, input_size))
        g = rng.standard_normal((T, B, hidden))
        state0 = random_state0(cell, num_layers, B, hidden, rng) if with_state else None
        if cell != "rnn_relu":
            return model, x, g, state0
        tr = rnndiag.forward(model, x, state0)
        if all(np.abs(layer_preactivations(model, tr, k)).min() > RELU_MARGIN for k in range(num_layers)):
            return model, x, g, state0
    raise RuntimeError("could not find a kink-free rnn_relu problem")


def layer_preactivations(model, trace, layer: int) -> np.ndarray:
    """``W_ih in_t + b_ih + W_hh h_{t-1} + b_hh`` (T, B, G*H), recomputed from the parameters.

    This is an independent re-implementation (not read from the engine's internal arrays). For RNN it is
    ``a_t``; for LSTM the four gate pre-activations [i, f, g, o]. (For GRU the n-block is not n's
    pre-activation, because of the reset gate.)
    """
    lt = trace.layers[layer]
    w_ih, w_hh, b_ih, b_hh = model.layer_params(layer)
    inp = trace.x if layer == 0 else trace.layers[layer - 1].h
    h_prev = np.concatenate([lt.h0[None], lt.h[:-1]], axis=0)
    a = inp @ w_ih.T + h_prev @ w_hh.T
    if b_ih is not None:
        a = a + b_ih + b_hh
    return a


def lstm_output_gate(model, trace, layer: int = -1) -> np.ndarray:
    """``o_t`` (T, B, H) of an LSTM layer, recomputed independently from the parameters."""
    layer = range(model.num_layers)[layer]
    H = model.hidden_size
    a_o = layer_preactivations(model, trace, layer)[..., 3 * H :]
    return 1.0 / (1.0 + np.exp(-a_o))


def lstm_kc(model, trace, layer: int = -1) -> np.ndarray:
    """``o_t * (1 - tanh(c_t)^2)`` (T, B, H) = d h_t / d c_t of an LSTM layer, recomputed independently."""
    return lstm_output_gate(model, trace, layer) * (1.0 - np.tanh(trace.layers[layer].c) ** 2)


def sub_model(model, layer: int):
    """Layer ``layer`` of a stacked model as a single-layer model (its input is the layer below's output)."""
    params = {k.replace(f"_l{layer}", "_l0"): v for k, v in model.params.items() if k.endswith(f"_l{layer}")}
    in_size = model.input_size if layer == 0 else model.hidden_size
    return rnndiag.RNNModel(model.cell, in_size, model.hidden_size, 1, model.bias, params)


def state_of(cell: str, s: np.ndarray):
    """A (B, S) state as ``state0`` for a single-layer model."""
    if cell == "lstm":
        H = s.shape[1] // 2
        return s[None, :, :H].copy(), s[None, :, H:].copy()
    return s[None].copy()


def loss(model, x, g, state0=None) -> float:
    """The scalar test loss ``L = sum(g * h)`` over the last layer's outputs."""
    return float(np.sum(g * rnndiag.forward(model, x, state0).h))


# -- finite differences ----------------------------------------------------------------------------
def central_diff(f: Callable[[np.ndarray], float], a: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d f / d a by central differences, one entry at a time (``a`` is not modified)."""
    a = np.array(a, dtype=np.float64)
    grad = np.empty_like(a)
    flat, gflat = a.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f(a)
        flat[i] = old - eps
        fm = f(a)
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return grad


def rel_err(ours, ref) -> float:
    """``max|ours - ref| / max(1, max|ref|)``: relative for large values, absolute for small ones."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.max(np.abs(ours - ref)) / max(1.0, float(np.max(np.abs(ref)))))


def assert_close(name: str, ours, theirs, tol: float, *, relative: bool = True):
    """Assert agreement (``rel_err`` if ``relative`` else max abs); on failure print ours vs theirs."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{name}: shape ours {ours.shape} vs theirs {theirs.shape}"
    if relative:
        err = rel_err(ours, theirs)
    else:
        err = float(np.max(np.abs(ours.astype(np.float64) - theirs.astype(np.float64))))
    if not err < tol:
        with np.printoptions(precision=10, suppress=False, threshold=200, linewidth=110):
            msg = (f"{name}: error {err:.3e} >= {tol:.1e}\n"
                   f"ours ({ours.dtype}):\n{ours}\ntheirs ({theirs.dtype}):\n{theirs}\n"
                   f"|diff|:\n{np.abs(ours.astype(np.float64) - theirs.astype(np.float64))}")
        raise AssertionError(msg)
