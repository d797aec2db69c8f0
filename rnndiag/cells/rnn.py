r"""Vanilla (Elman) RNN cell, PyTorch ``nn.RNN`` layout.

.. math::

    a_t = W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}, \qquad h_t = \phi(a_t)

with :math:`\phi = \tanh` (``rnn_tanh``) or :math:`\phi = \max(0, \cdot)` (``rnn_relu``). Both biases are folded
into the input projection ``pre``. The state is :math:`s = h` and the step Jacobian is

.. math::

    J_t = \frac{\partial h_t}{\partial h_{t-1}} = \operatorname{diag}(\phi'(a_t))\, W_{hh},
    \qquad \phi'(a_t) = 1 - h_t^2 \ (\tanh), \quad [h_t > 0] \ (\mathrm{relu}).

BPTT: :math:`\bar h_t = g_t + W_{hh}^\top \bar a_{t+1}` and :math:`\bar a_t = \phi'(a_t) \odot \bar h_t`, where
:math:`g_t` is the loss's direct gradient on :math:`h_t`.
"""

from __future__ import annotations

import numpy as np

from ._rows import matmul_rows, rows

GATE_NAMES = ("h",)  # one block: W_hh itself
CANDIDATE_GATE = "h"  # the block whose nonlinearity makes the new content (here the whole step)
MEMORY_GATE = None  # no gate keeps the state: not a gated cell
MEMORY_GATE_NAME = None
FORGET_GATE = None  # no forget-gate bias to set
STATE_NAMES = ("h",)  # the state s
STATE_FACTOR = len(STATE_NAMES)  # state size = STATE_FACTOR * H
GATE_SCALE = (1.0,)  # forward takes pre and W_hh unscaled
HIDDEN_BIAS_FOLDED = True  # b_hh is folded into pre with b_ih
GAMMA = 1.0  # max |phi'| for tanh and relu: the Pascanu et al. (2013) bound sigma_max(W_hh) < 1/gamma


def folded_bias(b_ih, b_hh):
    """The bias the engine folds into the input projection: ``b_ih + b_hh``."""
    return b_ih + b_hh


def rmatmul_flops(hidden_size: int) -> float:
    """Flops of ``rmatmul`` on one (S, S) block (S = H): the column scaling and one product with ``W_hh``."""
    return 2.0 * hidden_size**3


def _derivative(h: np.ndarray, nonlinearity: str) -> np.ndarray:
    """phi'(a_t) written in terms of h_t = phi(a_t)."""
    if nonlinearity == "tanh":
        return 1.0 - h * h
    return (h > 0).astype(h.dtype)


def forward(pre, h0, c0, w_hh, b_hh, *, nonlinearity: str = "tanh") -> dict[str, np.ndarray]:
    """Run the recurrence in place: on return ``pre[t]`` holds ``h_t``. ``b_hh`` is already in ``pre``."""
    del c0, b_hh
    T = pre.shape[0]
    w_hh_t = np.ascontiguousarray(w_hh.T)  # (H, H), contiguous: a faster product than the transposed view
    rec = np.empty_like(h0)
    h_prev = h0
    for t in range(T):
        a = pre[t]  # (B, H)
        np.matmul(h_prev, w_hh_t, out=rec)
        a += rec
        if nonlinearity == "tanh":
            np.tanh(a, out=a)
        else:
            np.maximum(a, 0, out=a)
        h_prev = a
    return {"h": pre}


def backward(arrays, h0, c0, w_hh, grad_h, *, nonlinearity: str = "tanh") -> dict[str, np.ndarray]:
    """BPTT through all steps. Returns total ``grad_h``, pre-activation gradient ``d_pre`` and ``grad_h0``."""
    del h0, c0
    h = arrays["h"]
    T = h.shape[0]
    total = grad_h.copy()  # (T, B, H): becomes the total dL/dh_t; step t adds W_hh^T da_t into row t-1
    d_pre = np.empty_like(h)  # (T, B, H): dL/da_t
    grad_h0 = np.empty_like(h[0])
    rec = np.empty_like(h[0])
    for t in range(T - 1, -1, -1):
        dh, da = total[t], d_pre[t]
        if nonlinearity == "tanh":  # da = (1 - h^2) dh
            np.multiply(h[t], h[t], out=da)
            np.subtract(1.0, da, out=da)
            da *= dh
        else:
            np.multiply(dh, h[t] > 0, out=da)
        if t > 0:
            np.matmul(da, w_hh, out=rec)  # (B, H) @ (H, H) = W_hh^T da per row
            total[t - 1] += rec
        else:
            np.matmul(da, w_hh, out=grad_h0)
    return {"grad_h": total, "d_pre": d_pre, "grad_h0": grad_h0}


def recurrent_grad(arrays, d_pre) -> np.ndarray:
    """The gradient on ``W_hh h_{t-1} + b_hh``: the same as on the input pre-activations."""
    del arrays
    return d_pre


def jacobian_factors(arrays, h0, c0, t, batch, *, nonlinearity: str = "tanh") -> tuple[np.ndarray, ...]:
    """The diagonal factor of ``J_t`` for the steps ``t`` and rows ``batch``: ``(phi'(a_t),)``, each (..., H)."""
    del h0, c0
    return (_derivative(rows(arrays["h"], t, batch), nonlinearity),)


def jvp_rows(factors, w_hh, v) -> np.ndarray:
    """``J v`` for each row vector ``v`` (..., H): ``phi' * (W_hh v)``."""
    (d,) = factors
    return d * matmul_rows(v, w_hh.T)


def vjp_rows(factors, w_hh, u) -> np.ndarray:
    """``u^T J`` for each row vector ``u`` (..., H): ``W_hh^T (phi' * u)``."""
    (d,) = factors
    return matmul_rows(d * u, w_hh)


def formed_part(factors, w_hh) -> None:
    """Nothing to form: ``rmatmul`` scales ``m``'s columns, then multiplies by ``W_hh``."""
    del factors, w_hh


def rmatmul(factors, w_hh, m, out=None, formed=None) -> np.ndarray:
    """``m J = (m diag(phi')) W_hh`` for blocks of row vectors ``m`` (..., R, H): one product."""
    del formed
    (d,) = factors
    return np.matmul(m * d[..., None, :], w_hh, out=out)


def matmul(factors, w_hh, x, out=None, formed=None) -> np.ndarray:
    """``J x = diag(phi') (W_hh x)`` for blocks of column vectors ``x`` (..., H, K): one product."""
    del formed
    (d,) = factors
    out = np.matmul(w_hh, x, out=out)
    out *= d[..., :, None]
    return out


def dense_jacobian(factors, w_hh) -> np.ndarray:
    """``J = diag(phi') W_hh`` itself, (..., H, H)."""
    (d,) = factors
    return d[..., :, None] * w_hh
