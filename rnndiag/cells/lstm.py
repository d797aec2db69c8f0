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

BPTT, with :math:`\bar h_t` the total gradient on :math:`h_t` (the loss's direct gradient plus what flows back
from step t+1) and :math:`\bar c_T = 0`:

.. math::

    \bar c_t = f_{t+1} \bar c_{t+1} + k^c \bar h_t,\quad
    \bar a_t = [k^i \bar c_t;\ k^f \bar c_t;\ k^g \bar c_t;\ k^o \bar h_t],\quad
    \bar h_{t-1} \mathrel{+}= W_{hh}^\top \bar a_t.

With a projection (``nn.LSTM(proj_size=P)``) the output is :math:`h_t = W_{hr} m_t`, :math:`m_t = o_t \odot
\tanh(c_t)` (:math:`W_{hr}` is P x H and :math:`W_{hh}` 4H x P); the state is :math:`[h (P); c (H)]` and

.. math::

    J_t = \begin{bmatrix} W_{hr} & 0 \\ 0 & I \end{bmatrix} \tilde J_t,

where :math:`\tilde J_t` (2H x (P+H)) is the Jacobian above with :math:`\partial m_t` in place of
:math:`\partial h_t`. BPTT then carries :math:`\bar m_t = W_{hr}^\top \bar h_t` into the formulas in place of
:math:`\bar h_t`, and :math:`\bar W_{hr} = \sum_t \bar h_t m_t^\top`. The functions below take ``w_hr=None``
(no projection) or the (P, H) matrix; without it P = H and :math:`m_t = h_t`.

``forward`` evaluates the sigmoids as :math:`\sigma(a) = (1 + \tanh(a/2)) / 2`, so that one ``tanh`` covers the
whole (B, 4H) gate row (see ``GATE_SCALE``).
"""

from __future__ import annotations

import numpy as np

from ._rows import matmul_rows, prev_rows, row_scaled_sum, rows

GATE_NAMES = ("i", "f", "g", "o")  # PyTorch's order of the gate blocks
CANDIDATE_GATE = "g"  # the tanh block that makes the new content
MEMORY_GATE = "f"  # keeps the memory: c_t = f c_{t-1} + ...; a mean f keeps about -1/ln f steps
MEMORY_GATE_NAME = "forget"
FORGET_GATE = "f"  # the gate whose bias ``forget_bias`` sets (Jozefowicz et al. 2015)
STATE_NAMES = ("h", "c")  # the state s = [h; c]
STATE_FACTOR = len(STATE_NAMES)
HIDDEN_BIAS_FOLDED = True  # b_hh is folded into pre with b_ih
GAMMA = None  # no single max |phi'| bounds the Jacobian: the additive path f * c
# forward() evaluates all four gates with one tanh over the (B, 4H) row, using sigma(a) = (1 + tanh(a/2)) / 2:
# the engine hands it ``pre`` and ``W_hh`` with the sigmoid gates' rows (i, f, o) halved -- exact, a power of two.
GATE_SCALE = (0.5, 0.5, 1.0, 0.5)


def folded_bias(b_ih, b_hh):
    """The bias the engine folds into the input projection: ``b_ih + b_hh``."""
    return b_ih + b_hh


def rmatmul_flops(hidden_size: int) -> float:
    """Flops of ``rmatmul`` on one (S, S) block (S = 2H): one (S, 2H) @ (2H, H) product with the left column."""
    return 4.0 * (2 * hidden_size) * hidden_size**2


def _gate_vectors(H, dtype):
    """Per-column constants over a (B, 4H) gate row [i, f, g, o]: ``one`` is 1 on the sigmoid gates and 0 on g,
    ``half`` is 1/2 on the sigmoid gates and 1 on g."""
    one = np.ones(4 * H, dtype)
    one[2 * H : 3 * H] = 0.0
    half = np.full(4 * H, 0.5, dtype)
    half[2 * H : 3 * H] = 1.0
    return one, half


def forward(pre, h0, c0, w_hh, b_hh, *, w_hr=None) -> dict[str, np.ndarray]:
    """Run the recurrence; on return ``pre[t]`` holds the gate activations ``[i, f, g, o]`` at step t.

    ``pre`` and ``w_hh`` come with their i, f, o rows scaled by ``GATE_SCALE`` (1/2); ``b_hh`` is already in ``pre``.
    ``w_hr`` (P, H): the projection; then ``h`` is (T, B, P).
    """
    del b_hh
    T, B, G = pre.shape
    H = G // 4
    dtype = pre.dtype
    # h and c in one allocation: first-touching fresh memory is a good part of the run time, and one large block
    # faults in faster than several (huge pages). tanh(c_t) is not kept: backward and the Jacobians recompute it
    # (one tanh per step), which keeps the trace and the BPTT peak one (T, B, H) array smaller.
    if w_hr is None:
        h, c = np.empty((2, T, B, H), dtype)
    else:
        h, c = np.empty((T, B, w_hr.shape[0]), dtype), np.empty((T, B, H), dtype)
        w_hr_t = np.ascontiguousarray(w_hr.T)  # (H, P)
        m = np.empty((B, H), dtype)  # o_t tanh(c_t), before the projection
    i, f, g, o = (pre[:, :, k * H : (k + 1) * H] for k in range(4))  # (T, B, H) views of each gate
    one, half = _gate_vectors(H, dtype)
    sig_offset = one * 0.5  # 1/2 on the sigmoid gates, 0 on g
    w_hh_t = np.ascontiguousarray(w_hh.T)  # (H or P, 4H), contiguous: a faster product than the transposed view
    rec = np.empty((B, G), dtype)
    ig = np.empty((B, H), dtype)
    h_prev, c_prev = h0, c0
    for t in range(T):
        gates = pre[t]  # (B, 4H): [a_i/2, a_f/2, a_g, a_o/2], input part
        np.matmul(h_prev, w_hh_t, out=rec)
        gates += rec
        np.tanh(gates, out=gates)  # [tanh(a_i/2), tanh(a_f/2), g, tanh(a_o/2)]
        gates *= half  # sigma(a) = tanh(a/2)/2 + 1/2 on i, f, o; g unchanged (x 1 + 0)
        gates += sig_offset
        # c_t = f c_{t-1} + i g;  h_t = o tanh(c_t)  (or W_hr (o tanh c_t))
        np.multiply(f[t], c_prev, out=c[t])
        np.multiply(i[t], g[t], out=ig)
        c[t] += ig
        if w_hr is None:
            np.tanh(c[t], out=h[t])
            h[t] *= o[t]
        else:
            np.tanh(c[t], out=m)
            m *= o[t]
            np.matmul(m, w_hr_t, out=h[t])
        h_prev, c_prev = h[t], c[t]
    return {"h": h, "c": c, "gates": pre}


def backward(arrays, h0, c0, w_hh, grad_h, *, grad_c=None, w_hr=None) -> dict[str, np.ndarray]:
    """BPTT through all steps: total ``grad_h``, ``grad_c``, gate pre-activation gradients, initial-state grads.

    Walking t = T-1 .. 0, with ``dh`` the total gradient on h_t (``dm = W_hr^T dh`` with a projection, else
    ``dm = dh``)::

        dc_t     = f_{t+1} dc_{t+1} + grad_c[t] + dm o (1 - tanh^2 c_t)
        da_t     = [i(1-i), f(1-f), 1-g^2, o(1-o)] * [g dc_t, c_{t-1} dc_t, i dc_t, tanh(c_t) dm]
        dh_{t-1} = grad_h[t-1] + da_t @ W_hh

    ``grad_c`` (T, B, H), optional: the loss's direct gradient on each ``c_t`` (a final cell state ``c_n`` the
    loss reads). With ``w_hr`` the result also holds ``grad_w_hr`` (P, H), one product over all steps.
    """
    del h0
    h, c, gates = arrays["h"], arrays["c"], arrays["gates"]
    T, B, P = h.shape
    H = c.shape[2]
    dtype = h.dtype
    # one allocation when h and c have one size, as in forward
    total_h, total_c = np.empty((2, T, B, H), dtype) if w_hr is None else (np.empty((T, B, P), dtype),
                                                                          np.empty((T, B, H), dtype))
    dm = np.empty((B, H), dtype)  # W_hr^T dh, with a projection
    total_h[...] = grad_h  # -> dL/dh_t; step t adds W_hh^T da_t into row t-1
    if grad_c is None:
        total_c[T - 1] = 0.0  # -> dL/dc_t; step t writes f_t dc_t into row t-1
    else:
        total_c[...] = grad_c  # step t adds f_t dc_t into row t-1
    d_pre = np.empty_like(gates)  # (T, B, 4H)
    grad_h0 = np.empty((B, P), dtype)
    grad_c0 = np.empty((B, H), dtype)
    i, f, g, o = (gates[:, :, k * H : (k + 1) * H] for k in range(4))  # (T, B, H) views
    one = _gate_vectors(H, dtype)[0]  # 1 on the sigmoid gates, 0 on g
    zero_one = 1.0 - one  # its complement
    tmp = np.empty((B, H), dtype)
    rec = np.empty((B, P), dtype)
    mult = np.empty((B, 4, H), dtype)  # what each gate's derivative is multiplied by
    tct = np.empty((B, H), dtype)  # tanh(c_t), recomputed
    for t in range(T - 1, -1, -1):
        dh, dc = total_h[t], total_c[t]  # dh is complete; dc holds f_{t+1} dc_{t+1} (+ grad_c[t])
        c_prev = c0 if t == 0 else c[t - 1]
        np.tanh(c[t], out=tct)
        if w_hr is None:  # dc += dh o (1 - tanh^2 c) = dh (o - h tanh c)
            np.multiply(h[t], tct, out=tmp)
            np.subtract(o[t], tmp, out=tmp)
            grad_m = dh
        else:  # dm = W_hr^T dh;  dc += dm o (1 - tanh^2 c)
            grad_m = np.matmul(dh, w_hr, out=dm)
            np.multiply(tct, tct, out=tmp)
            np.subtract(1.0, tmp, out=tmp)
            tmp *= o[t]
        tmp *= grad_m
        dc += tmp
        # the activations' derivatives over the whole row: s (1 - s) on i, f, o and (0 - g) g + 1 on g
        da = d_pre[t]  # (B, 4H)
        np.subtract(one, gates[t], out=da)
        da *= gates[t]
        da += zero_one
        # times what each gate multiplies and the incoming gradient: [g dc, c_{t-1} dc, i dc, tanh(c_t) dm]
        np.multiply(g[t], dc, out=mult[:, 0])
        np.multiply(c_prev, dc, out=mult[:, 1])
        np.multiply(i[t], dc, out=mult[:, 2])
        np.multiply(tct, grad_m, out=mult[:, 3])
        da *= mult.reshape(B, 4 * H)
        # to step t-1: dc_{t-1} gets f dc; dh_{t-1} gets W_hh^T da (one (B, 4H) @ (4H, P) product)
        if t > 0:
            if grad_c is None:
                np.multiply(dc, f[t], out=total_c[t - 1])
            else:
                np.multiply(dc, f[t], out=tmp)
                total_c[t - 1] += tmp
            np.matmul(da, w_hh, out=rec)
            total_h[t - 1] += rec
        else:
            np.multiply(dc, f[t], out=grad_c0)
            np.matmul(da, w_hh, out=grad_h0)
    out = {"grad_h": total_h, "grad_c": total_c, "d_pre": d_pre, "grad_h0": grad_h0, "grad_c0": grad_c0}
    if w_hr is not None:
        out["grad_w_hr"] = _projection_grad(total_h, c, o)
    return out


def _projection_grad(total_h, c, o) -> np.ndarray:
    """``dL/dW_hr = sum_t dh_t m_t^T`` with ``m_t = o_t tanh(c_t)`` recomputed: one product over all steps."""
    T, B, P = total_h.shape
    m_all = np.tanh(c)
    m_all *= o
    return total_h.reshape(T * B, P).T @ m_all.reshape(T * B, -1)


def recurrent_grad(arrays, d_pre) -> np.ndarray:
    """The gradient on ``W_hh h_{t-1} + b_hh``: the same as on the input pre-activations."""
    del arrays
    return d_pre


def jacobian_factors(arrays, h0, c0, t, batch) -> tuple[np.ndarray, ...]:
    """The diagonal factors of ``J_t`` for the steps ``t`` and rows ``batch``: k_i, k_f, k_g, k_o, k_c and f,
    each (..., H)."""
    del h0
    gt = rows(arrays["gates"], t, batch)
    H = gt.shape[-1] // 4
    i, f, g, o = gt[..., :H], gt[..., H : 2 * H], gt[..., 2 * H : 3 * H], gt[..., 3 * H :]
    tct = np.tanh(rows(arrays["c"], t, batch))
    c_prev = prev_rows(arrays["c"], c0, t, batch)
    k_i = g * i * (1.0 - i)
    k_f = c_prev * f * (1.0 - f)
    k_g = i * (1.0 - g * g)
    k_o = tct * o * (1.0 - o)
    k_c = o * (1.0 - tct * tct)
    return k_i, k_f, k_g, k_o, k_c, f


def _project_rows(out_m: np.ndarray, w_hr, H: int) -> np.ndarray:
    """Rows ``[m; c]`` (..., 2H) -> ``[W_hr m; c]`` (..., P + H)."""
    if w_hr is None:
        return out_m
    P = w_hr.shape[0]
    out = np.empty((*out_m.shape[:-1], P + H), out_m.dtype)
    out[..., :P] = matmul_rows(out_m[..., :H], w_hr.T)
    out[..., P:] = out_m[..., H:]
    return out


def _unproject_rows(u: np.ndarray, w_hr, H: int) -> np.ndarray:
    """Row vectors ``[u_h (P); u_c]`` -> ``[u_h W_hr (H); u_c]``: ``u^T`` times the block ``diag(W_hr, I)``."""
    if w_hr is None:
        return u
    P = w_hr.shape[0]
    out = np.empty((*u.shape[:-1], 2 * H), np.result_type(u, w_hr))
    out[..., :H] = matmul_rows(u[..., :P], w_hr)
    out[..., H:] = u[..., P:]
    return out


def jvp_rows(factors, w_hh, v, *, w_hr=None) -> np.ndarray:
    """``J v`` for each row vector ``v = [v_h, v_c]`` (..., P + H)."""
    k_i, k_f, k_g, k_o, k_c, f = factors
    H = f.shape[-1]
    P = w_hh.shape[1]
    v_h, v_c = v[..., :P], v[..., P:]
    a = matmul_rows(v_h, w_hh.T)  # (..., 4H)
    out = np.empty(np.broadcast_shapes((*v.shape[:-1], 2 * H), (*f.shape[:-1], 2 * H)), a.dtype)
    dh, dc = out[..., :H], out[..., H:]
    np.multiply(f, v_c, out=dc)
    dc += k_i * a[..., :H]
    dc += k_f * a[..., H : 2 * H]
    dc += k_g * a[..., 2 * H : 3 * H]
    np.multiply(k_c, dc, out=dh)
    dh += k_o * a[..., 3 * H :]
    return _project_rows(out, w_hr, H)


def vjp_rows(factors, w_hh, u, *, w_hr=None) -> np.ndarray:
    """``u^T J`` for each row vector ``u = [u_h, u_c]`` (..., P + H)."""
    k_i, k_f, k_g, k_o, k_c, f = factors
    H = f.shape[-1]
    P = w_hh.shape[1]
    u = _unproject_rows(u, w_hr, H)
    u_h, u_c = u[..., :H], u[..., H:]
    dc = k_c * u_h
    dc += u_c
    da = np.empty((*dc.shape[:-1], 4 * H), dc.dtype)
    np.multiply(k_i, dc, out=da[..., :H])
    np.multiply(k_f, dc, out=da[..., H : 2 * H])
    np.multiply(k_g, dc, out=da[..., 2 * H : 3 * H])
    np.multiply(k_o, u_h, out=da[..., 3 * H :])
    out = np.empty((*dc.shape[:-1], P + H), dc.dtype)
    out[..., :P] = matmul_rows(da, w_hh)
    np.multiply(f, dc, out=out[..., P:])
    return out


def _left_column(factors, w_hh, dtype) -> np.ndarray:
    """The left block column ``[dm_t/dh_{t-1}; dc_t/dh_{t-1}]`` (..., 2H, P) (``m = h`` without a projection):
    the gate blocks of ``W_hh`` with their rows scaled (O(H P) work per Jacobian), elementwise, so that each
    Jacobian's numbers do not depend on the rest of the stack (:func:`dense_jacobian`; products go through the
    faster :func:`formed_part`)."""
    k_i, k_f, k_g, k_o, k_c, _ = (k[..., :, None] for k in factors)  # (..., H, 1): scale the rows of W blocks
    H = factors[5].shape[-1]
    P = w_hh.shape[1]
    left = np.empty((*factors[0].shape[:-1], 2 * H, P), dtype)
    scaled = np.empty_like(left[..., :H, :])  # one block of W_hh with its rows scaled
    dc_dh = left[..., H:, :]
    np.multiply(k_i, w_hh[:H], out=dc_dh)
    dc_dh += np.multiply(k_f, w_hh[H : 2 * H], out=scaled)
    dc_dh += np.multiply(k_g, w_hh[2 * H : 3 * H], out=scaled)
    dh_dh = left[..., :H, :]
    np.multiply(k_c, dc_dh, out=dh_dh)
    dh_dh += np.multiply(k_o, w_hh[3 * H :], out=scaled)
    return left


def formed_part(factors, w_hh, *, w_hr=None) -> np.ndarray:
    """What ``rmatmul`` multiplies by: the left block column ``[dm_t/dh_{t-1}; dc_t/dh_{t-1}]`` (..., 2H, P), for
    a stack of Jacobians: :func:`_left_column` by :func:`row_scaled_sum` (4x faster, equal to rounding),

        dc/dh = k^i W^i + k^f W^f + k^g W^g,   dm/dh = (k^c k^i) W^i + (k^c k^f) W^f + (k^c k^g) W^g + k^o W^o

    (the projection ``W_hr`` is applied by ``rmatmul`` and ``matmul`` themselves)."""
    del w_hr
    k_i, k_f, k_g, k_o, k_c, _ = factors
    H = factors[5].shape[-1]
    P = w_hh.shape[1]
    lead = k_i.shape[:-1]
    left = np.empty((*lead, 2 * H, P), np.result_type(factors[0], w_hh))
    flat = left.reshape(-1, 2 * H, P)
    blocks = w_hh.reshape(4, H, P)
    row_scaled_sum((k_i, k_f, k_g), blocks[:3], flat[:, H:])
    row_scaled_sum((k_c * k_i, k_c * k_f, k_c * k_g, k_o), blocks, flat[:, :H])
    return left


def rmatmul(factors, w_hh, m, out=None, formed=None, *, w_hr=None) -> np.ndarray:
    r"""``m J`` for blocks of row vectors ``m`` (..., R, P + H): half the flops of ``m @ dense_jacobian``.

    The left block column :math:`[\partial m_t / \partial h_{t-1}; \partial c_t / \partial h_{t-1}]` (2H x P)
    is formed once and multiplied in one (R, 2H) @ (2H, P) product; the right block column is diagonal,
    ``[k^c f; f]``, and costs two scaled copies of ``m``'s halves. A projection first turns ``m_h`` into
    ``m_h W_hr``.
    """
    H = factors[5].shape[-1]
    P = w_hh.shape[1]
    m = _unproject_rows(m, w_hr, H)
    dtype = np.result_type(m, w_hh)
    if out is None:
        out = np.empty((*m.shape[:-1], P + H), dtype)
    np.matmul(m, formed_part(factors, w_hh) if formed is None else formed, out=out[..., :P])
    # the right block column: m_h (k^c f) + m_c f = (m_h k^c + m_c) f
    right = out[..., P:]
    np.multiply(m[..., :H], factors[4][..., None, :], out=right)
    right += m[..., H:]
    right *= factors[5][..., None, :]
    return out


def matmul(factors, w_hh, x, out=None, formed=None, *, w_hr=None) -> np.ndarray:
    """``J x`` for blocks of column vectors ``x`` (..., P + H, K) (a Lyapunov frame): the left block column
    (formed once, or given) times ``x_h`` in one product, plus the diagonal right block column ``[k^c f; f]``
    times ``x_c``; a projection maps the ``m`` rows by ``W_hr``."""
    H = factors[5].shape[-1]
    P = w_hh.shape[1]
    if formed is None:
        formed = formed_part(factors, w_hh)
    if w_hr is not None:
        inner = matmul(factors, w_hh, x, None, formed)  # (..., 2H, K): [dm; dc]
        if out is None:
            shape = (*inner.shape[:-2], P + H, inner.shape[-1])
            out = np.swapaxes(np.empty((*shape[:-2], shape[-1], shape[-2]), inner.dtype), -1, -2)
        np.matmul(w_hr, inner[..., :H, :], out=out[..., :P, :])
        out[..., P:, :] = inner[..., H:, :]
        return out
    if out is None:  # column-major matrices, as a QR of the frame takes them
        lead = np.broadcast_shapes(x.shape[:-2], formed.shape[:-2])
        out = np.swapaxes(np.empty((*lead, x.shape[-1], 2 * H), np.result_type(x, formed)), -1, -2)
    np.matmul(np.swapaxes(x[..., :P, :], -1, -2), np.swapaxes(formed, -1, -2), out=np.swapaxes(out, -1, -2))
    x_c = x[..., P:, :]
    f = factors[5][..., :, None]
    out[..., H:, :] += f * x_c
    out[..., :H, :] += (factors[4][..., :, None] * f) * x_c
    return out


def dense_jacobian(factors, w_hh, *, w_hr=None) -> np.ndarray:
    """``J`` itself, (..., P + H, P + H), in the state order [h; c]."""
    k_c, f = factors[4], factors[5]
    H = f.shape[-1]
    P = w_hh.shape[1]
    dtype = np.result_type(f, w_hh)
    jac = np.zeros((*f.shape[:-1], 2 * H, P + H), dtype=dtype)  # [m; c] by [h; c]
    jac[..., :, :P] = _left_column(factors, w_hh, dtype)
    idx = np.arange(H)
    jac[..., idx, P + idx] = k_c * f
    jac[..., H + idx, P + idx] = f
    if w_hr is None:
        return jac
    out = np.empty((*f.shape[:-1], w_hr.shape[0] + H, P + H), dtype)
    np.matmul(w_hr, jac[..., :H, :], out=out[..., : w_hr.shape[0], :])
    out[..., w_hr.shape[0] :, :] = jac[..., H:, :]
    return out
