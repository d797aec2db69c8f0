r"""GRU cell, PyTorch ``nn.GRU`` layout (gate rows in the order r, z, n; ``b_hn`` inside the reset product).

.. math::

    \begin{aligned}
    r_t &= \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
    z_t &= \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
    \hat n_t &= W_{hn} h_{t-1} + b_{hn}, \qquad n_t = \tanh(W_{in} x_t + b_{in} + r_t \odot \hat n_t) \\
    h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1}
    \end{aligned}

``pre`` holds :math:`W_{ih} x_t + b_{ih}` only; the recurrent part (with :math:`b_{hh}`) is added per step because
:math:`r_t` multiplies :math:`\hat n_t`. The state is :math:`s = h` and

.. math::

    J_t = \operatorname{diag}(z) + \operatorname{diag}((h_{t-1} - n) z(1-z)) W_{hz}
        + \operatorname{diag}((1-z)(1-n^2)) \left[\operatorname{diag}(\hat n\, r(1-r)) W_{hr}
        + \operatorname{diag}(r) W_{hn}\right].
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

STATE_FACTOR = 1


def _prev(arr, init, t):
    return init if t == 0 else arr[t - 1]


def forward(pre, h0, c0, w_hh, b_hh) -> dict[str, np.ndarray]:
    """Run the recurrence; on return ``pre[t]`` holds ``[r, z, n]`` and ``hn[t]`` holds ``W_hn h_{t-1} + b_hn``."""
    del c0
    T, B, G = pre.shape
    H = G // 3
    dtype = pre.dtype
    h = np.empty((T, B, H), dtype)
    hn = np.empty((T, B, H), dtype)
    w_hh_t = w_hh.T
    rec = np.empty((B, G), dtype)
    tmp = np.empty((B, H), dtype)
    h_prev = h0
    for t in range(T):
        gates = pre[t]  # (B, 3H)
        np.matmul(h_prev, w_hh_t, out=rec)
        if b_hh is not None:
            rec += b_hh
        rz = gates[:, : 2 * H]
        rz += rec[:, : 2 * H]
        expit(rz, out=rz)
        r, z, n = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H :]
        hn[t] = rec[:, 2 * H :]
        np.multiply(r, hn[t], out=tmp)
        n += tmp
        np.tanh(n, out=n)
        # h_t = n + z * (h_prev - n)
        np.subtract(h_prev, n, out=tmp)
        tmp *= z
        np.add(n, tmp, out=h[t])
        h_prev = h[t]
    return {"h": h, "gates": pre, "hn": hn}


def backward(arrays, h0, c0, w_hh, grad_h) -> dict[str, np.ndarray]:
    """BPTT: total ``grad_h``; ``d_pre`` on the input pre-activations; ``d_pre_rec`` on ``W_hh h + b_hh``."""
    del c0
    h, gates, hn = arrays["h"], arrays["gates"], arrays["hn"]
    T, B, H = h.shape
    total = grad_h.copy()
    d_pre = np.empty_like(gates)  # (T, B, 3H): dL/d(W_ih x + b_ih)
    d_pre_rec = np.empty_like(gates)  # (T, B, 3H): dL/d(W_hh h + b_hh)
    dh_rec = np.zeros((B, H), h.dtype)
    tmp = np.empty((B, H), h.dtype)
    for t in range(T - 1, -1, -1):
        dh = total[t]
        if t < T - 1:
            dh += dh_rec
        gt = gates[t]
        r, z, n = gt[:, :H], gt[:, H : 2 * H], gt[:, 2 * H :]
        h_prev = _prev(h, h0, t)
        da = d_pre[t]
        da_r, da_z, da_n = da[:, :H], da[:, H : 2 * H], da[:, 2 * H :]
        # dn = dh (1 - z); da_n = dn (1 - n^2)
        np.multiply(n, n, out=da_n)
        np.subtract(1.0, da_n, out=da_n)
        np.subtract(1.0, z, out=tmp)
        da_n *= tmp
        da_n *= dh
        # dz = dh (h_prev - n); da_z = dz z (1 - z)
        np.subtract(h_prev, n, out=da_z)
        da_z *= dh
        np.multiply(z, tmp, out=tmp)  # z (1 - z)
        da_z *= tmp
        # da_r = da_n hn r (1 - r)
        np.subtract(1.0, r, out=da_r)
        da_r *= r
        da_r *= hn[t]
        da_r *= da_n
        # the recurrent pre-activation gradient: [da_r, da_z, da_n r] (b_hn sits inside r * (...))
        drec = d_pre_rec[t]
        drec[:, : 2 * H] = da[:, : 2 * H]
        np.multiply(da_n, r, out=drec[:, 2 * H :])
        # dh_prev = dh z + drec @ W_hh
        np.matmul(drec, w_hh, out=dh_rec)
        np.multiply(dh, z, out=tmp)
        dh_rec += tmp
    return {"grad_h": total, "d_pre": d_pre, "d_pre_rec": d_pre_rec, "grad_h0": dh_rec}


def _factors(arrays, h0, t):
    gt = arrays["gates"][t]
    H = gt.shape[1] // 3
    r, z, n = gt[:, :H], gt[:, H : 2 * H], gt[:, 2 * H :]
    hn = arrays["hn"][t]
    h_prev = _prev(arrays["h"], h0, t)
    k_z = (h_prev - n) * z * (1.0 - z)
    k_n = (1.0 - z) * (1.0 - n * n)
    k_r = k_n * hn * r * (1.0 - r)
    k_hn = k_n * r
    return k_r, k_z, k_hn, z


def jvp(arrays, h0, c0, w_hh, t, v) -> np.ndarray:
    """``J_t v`` for v (B, H)."""
    k_r, k_z, k_hn, z = _factors(arrays, h0, t)
    H = z.shape[1]
    a = v @ w_hh.T
    return z * v + k_r * a[:, :H] + k_z * a[:, H : 2 * H] + k_hn * a[:, 2 * H :]


def vjp(arrays, h0, c0, w_hh, t, u) -> np.ndarray:
    """``u^T J_t`` for u (B, H)."""
    k_r, k_z, k_hn, z = _factors(arrays, h0, t)
    return z * u + np.concatenate([k_r * u, k_z * u, k_hn * u], axis=1) @ w_hh


def step_jacobian(arrays, h0, c0, w_hh, t, batch) -> np.ndarray:
    """``J_t`` (len(batch), H, H)."""
    k_r, k_z, k_hn, z = (k[batch] for k in _factors(arrays, h0, t))
    H = z.shape[1]
    jac = k_r[:, :, None] * w_hh[:H] + k_z[:, :, None] * w_hh[H : 2 * H] + k_hn[:, :, None] * w_hh[2 * H :]
    idx = np.arange(H)
    jac[:, idx, idx] += z
    return jac
