r"""GRU cell, PyTorch ``nn.GRU`` layout (gate rows in the order r, z, n; ``b_hn`` inside the reset product).

.. math::

    \begin{aligned}
    r_t &= \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}) \\
    z_t &= \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz}) \\
    \hat n_t &= W_{hn} h_{t-1} + b_{hn}, \qquad n_t = \tanh(W_{in} x_t + b_{in} + r_t \odot \hat n_t) \\
    h_t &= (1 - z_t) \odot n_t + z_t \odot h_{t-1}
    \end{aligned}

``pre`` holds :math:`W_{ih} x_t + b_{ih}` plus :math:`b_{hr}, b_{hz}`; :math:`b_{hn}` is added per step with
:math:`W_{hn} h_{t-1}` because :math:`r_t` multiplies :math:`\hat n_t`. ``forward`` evaluates the sigmoids as
:math:`\sigma(a) = (1 + \tanh(a/2)) / 2` (see ``GATE_SCALE``). The state is :math:`s = h` and

.. math::

    J_t = \operatorname{diag}(z) + \operatorname{diag}((h_{t-1} - n) z(1-z)) W_{hz}
        + \operatorname{diag}((1-z)(1-n^2)) \left[\operatorname{diag}(\hat n\, r(1-r)) W_{hr}
        + \operatorname{diag}(r) W_{hn}\right].

BPTT, with :math:`\bar h_t` the total gradient on :math:`h_t`:
:math:`\bar a^n = \bar h_t (1-z)(1-n^2)`, :math:`\bar a^z = \bar h_t (h_{t-1} - n) z(1-z)`,
:math:`\bar a^r = \bar a^n \hat n\, r(1-r)`; the recurrent pre-activation (``W_hh h + b_hh``) gets
:math:`[\bar a^r; \bar a^z; r \bar a^n]` and :math:`\bar h_{t-1} \mathrel{+}= z \bar h_t + W_{hh}^\top
[\bar a^r; \bar a^z; r \bar a^n]`.
"""

from __future__ import annotations

import numpy as np

from ._rows import matmul_rows, prev_rows, row_scaled_sum, rows

GATE_NAMES = ("r", "z", "n")  # PyTorch's order of the gate blocks
CANDIDATE_GATE = "n"  # the tanh block that makes the new content
MEMORY_GATE = "z"  # keeps the memory: h_t = (1 - z) n + z h_{t-1}; a mean z keeps about -1/ln z steps
MEMORY_GATE_NAME = "update"
FORGET_GATE = None  # forget_bias is an LSTM setting
STATE_NAMES = ("h",)  # the state s
STATE_FACTOR = len(STATE_NAMES)
HIDDEN_BIAS_FOLDED = False  # b_hn stays out of pre: it sits inside r * (W_hn h + b_hn)
GAMMA = None  # no single max |phi'| bounds the Jacobian: the additive path z * h
# forward() evaluates r and z with one tanh, using sigma(a) = (1 + tanh(a/2)) / 2: the engine hands it ``pre``
# and ``W_hh`` with the r and z rows halved (exact: a power of two).
GATE_SCALE = (0.5, 0.5, 1.0)


def folded_bias(b_ih, b_hh):
    """The bias the engine folds into the input projection: ``b_ih + b_hh`` except for the n block, where only
    ``b_in`` can go (``forward`` adds ``b_hn`` per step, inside the reset product)."""
    H = b_ih.shape[0] // 3
    b = b_ih + b_hh
    b[2 * H :] = b_ih[2 * H :]
    return b


def rmatmul_flops(hidden_size: int) -> float:
    """Flops of ``rmatmul`` on one (S, S) block (S = H): one product with the formed Jacobian."""
    return 2.0 * hidden_size**3


def forward(pre, h0, c0, w_hh, b_hh) -> dict[str, np.ndarray]:
    """Run the recurrence; on return ``pre[t]`` holds ``[r, z, n]`` and ``hn[t]`` holds ``W_hn h_{t-1} + b_hn``.

    ``pre`` and ``w_hh`` come with their r, z rows scaled by ``GATE_SCALE`` (1/2) and ``pre`` already holds
    ``b_hr, b_hz``; of ``b_hh`` only ``b_hn`` is used here.
    """
    del c0
    T, B, G = pre.shape
    H = G // 3
    dtype = pre.dtype
    h, hn = np.empty((2, T, B, H), dtype)  # one allocation, as in the LSTM: cheaper to fault in
    rz = pre[:, :, : 2 * H]  # (T, B, 2H): the sigmoid gates side by side
    r, z, n = (pre[:, :, k * H : (k + 1) * H] for k in range(3))  # (T, B, H) views
    b_hn = b_hh[2 * H :] if b_hh is not None else None
    w_hh_t = np.ascontiguousarray(w_hh.T)  # (H, 3H), contiguous: a faster product than the transposed view
    rec = np.empty((B, G), dtype)
    tmp = np.empty((B, H), dtype)
    h_prev = h0
    for t in range(T):
        np.matmul(h_prev, w_hh_t, out=rec)  # (B, 3H): [W_hr h / 2, W_hz h / 2, W_hn h]
        rz[t] += rec[:, : 2 * H]
        if b_hn is not None:
            np.add(rec[:, 2 * H :], b_hn, out=hn[t])
        else:
            hn[t] = rec[:, 2 * H :]
        np.tanh(rz[t], out=rz[t])  # tanh(a/2) -> sigma(a) = (1 + tanh(a/2)) / 2
        rz[t] *= 0.5
        rz[t] += 0.5
        # n = tanh(W_in x + b_in + r * hn)
        np.multiply(r[t], hn[t], out=tmp)
        n[t] += tmp
        np.tanh(n[t], out=n[t])
        # h_t = n + z * (h_prev - n)
        np.subtract(h_prev, n[t], out=tmp)
        tmp *= z[t]
        np.add(n[t], tmp, out=h[t])
        h_prev = h[t]
    return {"h": h, "gates": pre, "hn": hn}


def backward(arrays, h0, c0, w_hh, grad_h) -> dict[str, np.ndarray]:
    """BPTT: total ``grad_h``; ``d_pre`` on the input pre-activations (``recurrent_grad`` turns it into the
    gradient on ``W_hh h + b_hh``).

    Walking t = T-1 .. 0, with ``dh`` the total gradient on h_t::

        da_n = dh (1 - z) (1 - n^2),  da_z = dh (h_{t-1} - n) z (1 - z),  da_r = da_n hn r (1 - r)
        d_pre = [da_r, da_z, da_n],   d_rec = [da_r, da_z, da_n r]
        dh_{t-1} = grad_h[t-1] + dh z + d_rec @ W_hh
    """
    del c0
    h, gates, hn = arrays["h"], arrays["gates"], arrays["hn"]
    T, B, H = h.shape
    dtype = h.dtype
    total = grad_h.copy()  # (T, B, H) -> dL/dh_t; step t adds its share into row t-1
    d_pre = np.empty_like(gates)  # (T, B, 3H): dL/d(W_ih x + b_ih)
    grad_h0 = np.empty((B, H), dtype)
    r, z, n = (gates[:, :, k * H : (k + 1) * H] for k in range(3))  # (T, B, H) views
    da_r, da_n = d_pre[:, :, :H], d_pre[:, :, 2 * H :]
    da_zn = d_pre[:, :, H:]
    # per-column constants over a (B, 3H) row [r, z, n]: 1 on the sigmoid gates and 0 on n, and its complement
    one = np.ones(3 * H, dtype)
    one[2 * H :] = 0.0
    zero_one = 1.0 - one
    dhz = np.empty((B, H), dtype)
    rec = np.empty((B, H), dtype)
    mult = np.empty((B, 2, H), dtype)  # what z's and n's derivatives are multiplied by
    drec = np.empty((B, 3 * H), dtype)  # this step's dL/d(W_hh h + b_hh)
    for t in range(T - 1, -1, -1):
        dh = total[t]
        h_prev = prev_rows(h, h0, t, None)
        # the activations' derivatives over the whole row: s (1 - s) on r, z and (0 - n) n + 1 on n
        da = d_pre[t]  # (B, 3H)
        np.subtract(one, gates[t], out=da)
        da *= gates[t]
        da += zero_one
        # times [.., dh (h_prev - n), dh (1 - z)]: h_t = n + z (h_prev - n)
        np.multiply(dh, z[t], out=dhz)  # also the direct path h_t = ... + z h_{t-1}
        np.subtract(h_prev, n[t], out=mult[:, 0])
        mult[:, 0] *= dh
        np.subtract(dh, dhz, out=mult[:, 1])
        da_zn[t] *= mult.reshape(B, 2 * H)
        # da_r = da_n hn r (1 - r)
        da_r[t] *= hn[t]
        da_r[t] *= da_n[t]
        # the recurrent pre-activation gradient: [da_r, da_z, da_n r] (b_hn sits inside r * (...))
        drec[:, : 2 * H] = da[:, : 2 * H]
        np.multiply(da_n[t], r[t], out=drec[:, 2 * H :])
        # dh_{t-1} += dh z + d_rec @ W_hh
        if t > 0:
            total[t - 1] += dhz
            np.matmul(drec, w_hh, out=rec)
            total[t - 1] += rec
        else:
            np.matmul(drec, w_hh, out=grad_h0)
            grad_h0 += dhz
    return {"grad_h": total, "d_pre": d_pre, "grad_h0": grad_h0}


def recurrent_grad(arrays, d_pre) -> np.ndarray:
    """Turn ``d_pre`` in place into the gradient on ``W_hh h_{t-1} + b_hh``: [da_r, da_z, da_n r]."""
    H = d_pre.shape[2] // 3
    d_pre[:, :, 2 * H :] *= arrays["gates"][:, :, :H]
    return d_pre


def jacobian_factors(arrays, h0, c0, t, batch) -> tuple[np.ndarray, ...]:
    """The diagonal factors of ``J_t`` for the steps ``t`` and rows ``batch``: k_r, k_z, k_hn and z, each (..., H)."""
    del c0
    gt = rows(arrays["gates"], t, batch)
    H = gt.shape[-1] // 3
    r, z, n = gt[..., :H], gt[..., H : 2 * H], gt[..., 2 * H :]
    hn = rows(arrays["hn"], t, batch)
    h_prev = prev_rows(arrays["h"], h0, t, batch)
    k_z = (h_prev - n) * z * (1.0 - z)
    k_n = (1.0 - z) * (1.0 - n * n)
    k_r = k_n * hn * r * (1.0 - r)
    k_hn = k_n * r
    return k_r, k_z, k_hn, z


def jvp_rows(factors, w_hh, v) -> np.ndarray:
    """``J v`` for each row vector ``v`` (..., H)."""
    k_r, k_z, k_hn, z = factors
    H = v.shape[-1]
    a = matmul_rows(v, w_hh.T)  # (..., 3H)
    return z * v + k_r * a[..., :H] + k_z * a[..., H : 2 * H] + k_hn * a[..., 2 * H :]


def vjp_rows(factors, w_hh, u) -> np.ndarray:
    """``u^T J`` for each row vector ``u`` (..., H)."""
    k_r, k_z, k_hn, z = factors
    H = u.shape[-1]
    da = np.empty((*np.broadcast_shapes(u.shape, z.shape)[:-1], 3 * H), np.result_type(u, z))
    np.multiply(k_r, u, out=da[..., :H])
    np.multiply(k_z, u, out=da[..., H : 2 * H])
    np.multiply(k_hn, u, out=da[..., 2 * H :])
    out = matmul_rows(da, w_hh)
    out += z * u
    return out


def formed_part(factors, w_hh) -> np.ndarray:
    """What ``rmatmul`` multiplies by: J itself, for a stack of Jacobians, by :func:`row_scaled_sum` (4x faster
    than :func:`dense_jacobian`'s elementwise form, equal to rounding)."""
    k_r, k_z, k_hn, z = factors
    H = z.shape[-1]
    jac = np.empty((*z.shape[:-1], H, H), np.result_type(z, w_hh))
    flat = jac.reshape(-1, H, H)
    row_scaled_sum((k_r, k_z, k_hn), w_hh.reshape(3, H, H), flat)
    idx = np.arange(H)
    flat[:, idx, idx] += z.reshape(-1, H)
    return jac


def rmatmul(factors, w_hh, m, out=None, formed=None) -> np.ndarray:
    """``m J`` for blocks of row vectors ``m`` (..., R, H): through the formed J (2H^3 flops, where the row-wise
    ``vjp_rows`` would take 6H^3)."""
    return np.matmul(m, formed_part(factors, w_hh) if formed is None else formed, out=out)


def matmul(factors, w_hh, x, out=None, formed=None) -> np.ndarray:
    """``J x`` for blocks of column vectors ``x`` (..., H, K) (a Lyapunov frame): through the formed J."""
    return np.matmul(formed_part(factors, w_hh) if formed is None else formed, x, out=out)


def dense_jacobian(factors, w_hh) -> np.ndarray:
    """``J`` itself, (..., H, H)."""
    k_r, k_z, k_hn, z = factors
    H = z.shape[-1]
    jac = k_r[..., :, None] * w_hh[:H] + k_z[..., :, None] * w_hh[H : 2 * H] + k_hn[..., :, None] * w_hh[2 * H :]
    idx = np.arange(H)
    jac[..., idx, idx] += z
    return jac
