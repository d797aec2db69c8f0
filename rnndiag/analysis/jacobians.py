"""Products of step Jacobians, in log space, for a sample of the batch.

Nothing here holds more than one step's Jacobians (n, S, S) for the n sampled sequences at a time; products are
renormalised at every step and their scale kept as a logarithm, so sequences of 100,000 steps with per-step gains
anywhere between 0.1 and 10 neither overflow nor underflow.
"""

from __future__ import annotations

import math

import numpy as np

from ..engine import LayerTrace

LOG10_E = math.log10(math.e)


def top_singular_value(m: np.ndarray, v: np.ndarray, *, tol: float = 1e-12, max_iter: int = 200):
    """Largest singular value of each matrix in ``m`` (n, R, C) by power iteration on ``m^T m``.

    ``v`` (n, C, 1) is the warm start (the previous step's answer); returns ``(sigma (n,), v, converged (n,))``.
    ``sigma = ||m v||`` for a unit ``v`` is a lower bound that converges from below. It is exact at once when the
    top singular values coincide (orthogonal products) and converges fast for long products, whose top singular
    value separates from the rest; each iteration is two matrix-vector products (no factorisation).
    """
    mT = np.swapaxes(m, 1, 2)
    mv = m @ v  # (n, R, 1)
    sigma_old = np.sqrt(np.einsum("nri,nri->n", mv, mv))
    converged = np.zeros(m.shape[0], dtype=bool)
    for _ in range(max_iter):
        v = mT @ mv  # (n, C, 1)
        norm = np.sqrt(np.einsum("nci,nci->n", v, v))
        v /= np.where(norm > 0, norm, 1.0)[:, None, None]
        mv = m @ v
        sigma = np.sqrt(np.einsum("nri,nri->n", mv, mv))
        converged = np.abs(sigma - sigma_old) <= tol * np.maximum(sigma, 1e-300)
        sigma_old = sigma
        if converged.all():
            break
    return sigma_old, v, converged


def exact_top_singular_value(m: np.ndarray) -> np.ndarray:
    """``||m||_2`` of each (n, R, C) matrix by SVD."""
    return np.linalg.svd(m, compute_uv=False)[:, 0]


def product_norms(lt: LayerTrace, batch: np.ndarray, *, exact: bool | None = None):
    """``log10 ||d s_{T-1} / d s_t||_2`` for t = 0..T-1 and ``log10 ||J_t||_2``, for the rows ``batch``.

    Returns ``(log10_product (T, n), log10_step (T, n), converged: bool)``. The product at t = T-1 is the
    identity (0). ``exact`` uses an SVD every step (default: when S <= 96); otherwise warm-started block power
    iteration to a relative tolerance of 1e-12.
    """
    T = lt.h.shape[0]
    S = lt.state_size
    n = len(batch)
    if exact is None:
        exact = S <= 96
    dtype = np.float64
    log_prod = np.zeros((T, n))
    log_step = np.empty((T, n))
    m = np.broadcast_to(np.eye(S, dtype=dtype), (n, S, S)).copy()  # normalised P_t
    log_scale = np.zeros(n)
    p = 1
    rng = np.random.default_rng(0)
    v_prod = np.linalg.qr(rng.standard_normal((n, S, p)))[0]
    v_step = v_prod.copy()
    all_converged = True
    jac_next = None  # J_{t+1}, carried from the previous round
    for t in range(T - 1, -1, -1):
        jac = lt.step_jacobian(t, batch).astype(dtype, copy=False)  # (n, S, S): J_t
        if exact:
            log_step[t] = np.log10(exact_top_singular_value(jac))
        else:
            # a plotted quantity: 10 power iterations warm-started from the previous step's vector
            s, v_step, _ = top_singular_value(jac, v_step, tol=1e-6, max_iter=10)
            log_step[t] = np.log10(s)
        if t < T - 1:
            _advance(m, jac_next, log_scale)
            if exact:
                sig = exact_top_singular_value(m)
            else:
                sig, v_prod, ok = top_singular_value(m, v_prod, tol=1e-10, max_iter=100)
                all_converged &= bool(ok.all())
            with np.errstate(divide="ignore"):
                log_prod[t] = (log_scale + np.log(sig)) * LOG10_E
        jac_next = jac  # P_{t-1} = P_t J_t
    return log_prod, log_step, all_converged


def _advance(m: np.ndarray, jac: np.ndarray, log_scale: np.ndarray) -> None:
    """``m <- m @ jac`` renormalised to unit Frobenius norm, the scale added to ``log_scale`` (in place)."""
    m[...] = m @ jac
    f = np.linalg.norm(m, axis=(1, 2))
    with np.errstate(divide="ignore"):
        log_scale += np.log(f)
    m /= np.where(f > 0, f, 1.0)[:, None, None]
