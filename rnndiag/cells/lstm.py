r"""LSTM cell, PyTorch ``nn.LSTM`` layout (gate rows in the order i, f, g, o).

.. math::

    \begin{aligned}
    [a^i; a^f; a^g; a^o] &= W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh} \\
    i_t = \sigma(a^i),\ f_t &= \sigma(a^f),\ g_t = \tanh(a^g),\ o_t = \sigma(a^o) \\
    c_t &= f_t \odot c_{t-1} + i_t \odot g_t \\
    h_t &= o_t \odot \tanh(c_t)
    \end{aligned}

Both biases are folded into the input projection ``pre``. The state is :math:`s = [h; c]` (size 2H). With the
per-step diagonal factors

.. math::

    k^f = c_{t-1} f(1-f),\ k^i = g\, i(1-i),\ k^g = i(1-g^2),\ k^o = \tanh(c_t)\, o(1-o),\
    k^c = o(1 - \tanh^2 c_t)

and the gate blocks :math:`W^i, W^f, W^g, W^o` of :math:`W_{hh}`, the step Jacobian is

.. math::

    \frac{\partial c_t}{\partial h_{t-1}} = k^f W^f + k^i W^i + k^g W^g,\quad
    \frac{\partial c_t}{\partial c_{t-1}} = \operatorname{diag}(f),\quad
    \frac{\partial h_t}{\partial h_{t-1}} = k^o W^o + k^c \frac{\partial c_t}{\partial h_{t-1}},\quad
    \frac{\partial h_t}{\partial c_{t-1}} = \operatorname{diag}(k^c f)

(:math:`k W` meaning :math:`\operatorname{diag}(k) W`), assembled as :math:`J_t = [[h h, h c], [c h, c c]]`.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

STATE_FACTOR = 2


def _prev(arr, init, t):
    return init if t == 0 else arr[t - 1]


def forward(pre, h0, c0, w_hh, b_hh) -> dict[str, np.ndarray]:
    """Run the recurrence; on return ``pre[t]`` holds the gate activations ``[i, f, g, o]`` at step t."""
    del b_hh
    T, B, G = pre.shape
    H = G // 4
    dtype = pre.dtype
    c = np.empty((T, B, H), dtype)
    tc = np.empty((T, B, H), dtype)  # tanh(c_t), kept for backward and the Jacobians
    h = np.empty((T, B, H), dtype)
    w_hh_t = w_hh.T
    rec = np.empty((B, G), dtype)
    ig = np.empty((B, H), dtype)
    h_prev, c_prev = h0, c0
    for t in range(T):
        gates = pre[t]  # (B, 4H)
        np.matmul(h_prev, w_hh_t, out=rec)
        gates += rec
        expit(gates[:, : 2 * H], out=gates[:, : 2 * H])
        np.tanh(gates[:, 2 * H : 3 * H], out=gates[:, 2 * H : 3 * H])
        expit(gates[:, 3 * H :], out=gates[:, 3 * H :])
        i, f, g, o = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
        np.multiply(f, c_prev, out=c[t])
        np.multiply(i, g, out=ig)
        c[t] += ig
        np.tanh(c[t], out=tc[t])
        np.multiply(o, tc[t], out=h[t])
        h_prev, c_prev = h[t], c[t]
    return {"h": h, "c": c, "tc": tc, "gates": pre}


def backward(arrays, h0, c0, w_hh, grad_h) -> dict[str, np.ndarray]:
    """BPTT through all steps: total ``grad_h``, ``grad_c``, gate pre-activation gradients, initial-state grads."""
    del h0
    h, c, tc, gates = arrays["h"], arrays["c"], arrays["tc"], arrays["gates"]
    T, B, H = h.shape
    total_h = grad_h.copy()  # (T, B, H) -> dL/dh_t
    total_c = np.empty_like(h)  # (T, B, H) -> dL/dc_t
    d_pre = np.empty_like(gates)  # (T, B, 4H)
    dh_rec = np.zeros((B, H), h.dtype)
    dc_next = np.zeros((B, H), h.dtype)
    tmp = np.empty((B, H), h.dtype)
    for t in range(T - 1, -1, -1):
        dh = total_h[t]
        if t < T - 1:
            dh += dh_rec
        gt = gates[t]
        i, f, g, o = gt[:, :H], gt[:, H : 2 * H], gt[:, 2 * H : 3 * H], gt[:, 3 * H :]
        tct = tc[t]
        c_prev = _prev(c, c0, t)
        dc = total_c[t]
        # dc = dc_next + dh * o * (1 - tanh(c)^2)
        np.multiply(tct, tct, out=tmp)
        np.subtract(1.0, tmp, out=tmp)
        tmp *= o
        tmp *= dh
        np.add(dc_next, tmp, out=dc)
        da = d_pre[t]
        da_i, da_f, da_g, da_o = da[:, :H], da[:, H : 2 * H], da[:, 2 * H : 3 * H], da[:, 3 * H :]
        # sigmoid'(a) = s (1 - s); tanh'(a) = 1 - g^2
        np.subtract(1.0, i, out=da_i)
        da_i *= i
        da_i *= g
        da_i *= dc
        np.subtract(1.0, f, out=da_f)
        da_f *= f
        da_f *= c_prev
        da_f *= dc
        np.multiply(g, g, out=da_g)
        np.subtract(1.0, da_g, out=da_g)
        da_g *= i
        da_g *= dc
        np.subtract(1.0, o, out=da_o)
        da_o *= o
        da_o *= tct
        da_o *= dh
        np.multiply(dc, f, out=dc_next)
        np.matmul(da, w_hh, out=dh_rec)  # (B, 4H) @ (4H, H)
    return {"grad_h": total_h, "grad_c": total_c, "d_pre": d_pre, "d_pre_rec": d_pre,
            "grad_h0": dh_rec, "grad_c0": dc_next}


def _factors(arrays, c0, t):
    """The diagonal factors (B, H) of J_t: k_i, k_f, k_g, k_o, k_c and f."""
    gt = arrays["gates"][t]
    H = gt.shape[1] // 4
    i, f, g, o = gt[:, :H], gt[:, H : 2 * H], gt[:, 2 * H : 3 * H], gt[:, 3 * H :]
    tct = arrays["tc"][t]
    c_prev = _prev(arrays["c"], c0, t)
    k_i = g * i * (1.0 - i)
    k_f = c_prev * f * (1.0 - f)
    k_g = i * (1.0 - g * g)
    k_o = tct * o * (1.0 - o)
    k_c = o * (1.0 - tct * tct)
    return k_i, k_f, k_g, k_o, k_c, f


def jvp(arrays, h0, c0, w_hh, t, v) -> np.ndarray:
    """``J_t v`` for v = [v_h, v_c] of shape (B, 2H)."""
    k_i, k_f, k_g, k_o, k_c, f = _factors(arrays, c0, t)
    H = f.shape[1]
    v_h, v_c = v[:, :H], v[:, H:]
    a = v_h @ w_hh.T  # (B, 4H)
    dc = k_i * a[:, :H] + k_f * a[:, H : 2 * H] + k_g * a[:, 2 * H : 3 * H] + f * v_c
    dh = k_o * a[:, 3 * H :] + k_c * dc
    return np.concatenate([dh, dc], axis=1)


def vjp(arrays, h0, c0, w_hh, t, u) -> np.ndarray:
    """``u^T J_t`` for u = [u_h, u_c] of shape (B, 2H)."""
    k_i, k_f, k_g, k_o, k_c, f = _factors(arrays, c0, t)
    H = f.shape[1]
    u_h, u_c = u[:, :H], u[:, H:]
    dc = u_c + k_c * u_h
    da = np.concatenate([k_i * dc, k_f * dc, k_g * dc, k_o * u_h], axis=1)  # (B, 4H)
    return np.concatenate([da @ w_hh, f * dc], axis=1)


def step_jacobian(arrays, h0, c0, w_hh, t, batch) -> np.ndarray:
    """``J_t`` (len(batch), 2H, 2H) in the state order [h; c]."""
    k_i, k_f, k_g, k_o, k_c, f = (k[batch] for k in _factors(arrays, c0, t))
    n, H = f.shape
    w_i, w_f, w_g, w_o = w_hh[:H], w_hh[H : 2 * H], w_hh[2 * H : 3 * H], w_hh[3 * H :]
    dc_dh = k_i[:, :, None] * w_i + k_f[:, :, None] * w_f + k_g[:, :, None] * w_g
    jac = np.zeros((n, 2 * H, 2 * H), dtype=w_hh.dtype)
    jac[:, :H, :H] = k_o[:, :, None] * w_o + k_c[:, :, None] * dc_dh
    jac[:, H:, :H] = dc_dh
    idx = np.arange(H)
    jac[:, idx, H + idx] = k_c * f
    jac[:, H + idx, H + idx] = f
    return jac
