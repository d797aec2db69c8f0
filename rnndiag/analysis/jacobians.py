"""Norms of step Jacobians and of their products, in log space, for a sample of the batch.

The Jacobians stay implicit (:class:`rnndiag.engine.StepJacobians`: their diagonal factors, O(H) numbers per step
and sequence); they act on vectors through one product with ``W_hh``. The running product of the n sampled
sequences is held as an (n, S, S) array, renormalised at every step with its scale kept as a logarithm, so
sequences of 100,000 steps with per-step gains anywhere between 0.1 and 10 neither overflow nor underflow.
"""

from __future__ import annotations

import math

import numpy as np

from ..engine import LayerTrace, StepJacobians

LOG10_E = math.log10(math.e)
# relative tolerances of the iterative norms (exact cases such as J = aQ converge at once, to rounding): far
# below anything a plot or a decay fit can show, and each decade costs iterations
STEP_TOL = PRODUCT_TOL = 1e-6  # ||J_t||_2 by Lanczos, ||P_t||_2 by block power iteration
RESCALE_AT = 115.0  # |ln ||m|| | above which the running product is rescaled (e^115 ~ 1e50)
BLOCK_ELEMENTS = 2**16  # steps x sequences x S per block of factors (a few MB, with their temporaries)


def _unit_rows(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a / ||a||`` along the last axis (zero rows stay zero) and the norms."""
    norm = np.sqrt(np.einsum("...i,...i->...", a, a))
    return a / np.where(norm > 0, norm, 1.0)[..., None], norm


def top_singular_values(jac: StepJacobians, *, tol: float = 1e-12, max_steps: int = 64, seed: int = 0):
    """``||J||_2`` of every Jacobian in ``jac`` by Golub-Kahan-Lanczos bidiagonalisation, batched over them all.

    Returns ``(sigma jac.shape, converged bool)``. Each Lanczos step is one ``J v`` and one ``u^T J`` for every
    Jacobian at once (a product with ``W_hh``), re-orthogonalised against the previous basis vector of its side
    (the extreme Ritz values are robust to the slow loss of orthogonality further back, and full
    re-orthogonalisation would cost more than the products, and memory); the top singular value of the
    bidiagonal matrix converges from below to ``||J||_2`` and is checked every few steps against ``tol``
    (relative). It is exact as soon as the Krylov space is invariant (e.g. ``J = aQ`` after one step).
    """
    lead, S = jac.shape, jac.state_size
    K = min(S, max_steps)
    bidiag = np.zeros((*lead, K, K))  # upper bidiagonal: alpha_j on the diagonal, beta_j above it
    v, _ = _unit_rows(np.random.default_rng(seed).standard_normal((*lead, S)))
    u, alpha = _unit_rows(jac.jvp(v))
    bidiag[..., 0, 0] = alpha
    scale = alpha.copy()  # the largest entry so far: below 1e-13 of it a new direction is rounding noise
    sigma = alpha.copy()
    checks = set(range(16, K, 4))
    for j in range(1, K):
        w = jac.vjp(u)
        w -= alpha[..., None] * v  # A^T u_{j-1} - alpha_{j-1} v_{j-1}
        v, beta = _next_basis_vector(w, v, scale)
        u_new = jac.jvp(v)
        u_new -= beta[..., None] * u  # A v_j - beta_j u_{j-1}
        u, alpha = _next_basis_vector(u_new, u, np.maximum(scale, beta))
        bidiag[..., j - 1, j] = beta
        bidiag[..., j, j] = alpha
        np.maximum(scale, np.maximum(alpha, beta), out=scale)
        if j + 1 in checks or j == K - 1:
            b = bidiag[..., : j + 1, : j + 1]
            new = np.sqrt(np.maximum(np.linalg.eigvalsh(np.swapaxes(b, -1, -2) @ b)[..., -1], 0.0))
            done = np.abs(new - sigma) <= tol * np.maximum(new, 1e-300)
            sigma = new
            if done.all():
                return sigma, True
    return sigma, False


def _next_basis_vector(w: np.ndarray, prev: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``w`` re-orthogonalised against the previous vector of its side, normalised; and its norm. A norm below
    1e-13 of ``scale`` is rounding noise (the Krylov space is exhausted): the vector and its norm become 0."""
    w -= np.einsum("...s,...s->...", prev, w)[..., None] * prev
    norm = np.sqrt(np.einsum("...s,...s->...", w, w))
    keep = norm > 1e-13 * scale
    w *= np.where(keep, 1.0 / np.where(keep, norm, 1.0), 0.0)[..., None]
    return w, np.where(keep, norm, 0.0)


def top_left_singular_value(m: np.ndarray, u: np.ndarray, *, tol: float = 1e-10, max_iter: int = 100):
    """Largest singular value of each matrix in ``m`` (n, S, S) by block power iteration on ``m m^T``.

    ``u`` (n, S, p) is the warm start: an orthonormal basis of the top-p left singular subspace of the previous,
    one step shorter product. Each iteration takes the Rayleigh-Ritz value on the block (the top eigenvalue of the
    p x p matrix ``u^T m m^T u``), which converges from below at the rate ``(sigma_{p+1} / sigma_1)^2`` even
    where the top two singular values nearly coincide; it stops when the error estimated from the last two
    changes of the value is below ``tol`` (relative). Returns ``(sigma (n,), u, converged (n,))``.
    """
    sigma_old = np.full(m.shape[0], np.nan)
    change_old = np.full(m.shape[0], np.nan)
    converged = np.zeros(m.shape[0], dtype=bool)
    for _ in range(max_iter):
        wT = np.swapaxes(np.swapaxes(u, 1, 2) @ m, 1, 2)  # m^T u (n, S, p), m read in its own (row) order
        gram = np.swapaxes(wT, 1, 2) @ wT  # u^T m m^T u, (n, p, p)
        sigma = np.sqrt(np.maximum(np.linalg.eigvalsh(gram)[:, -1], 0.0))
        change = np.abs(sigma - sigma_old)  # NaN on the first iteration
        # the error left after a linearly converging iteration with ratio r is about change * r / (1 - r), with
        # r estimated from two successive changes; with one change only, it must be 100x below tol
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.minimum(change / change_old, 0.99)
            error = np.where(np.isnan(change_old), 100.0 * change, np.where(change == 0, 0.0,
                                                                             change * ratio / (1.0 - ratio)))
        converged = error <= tol * np.maximum(sigma, 1e-300)  # False while NaN
        sigma_old, change_old = sigma, change
        if converged.all():
            break
        u = np.linalg.qr(m @ wT)[0]
    return sigma_old, u, converged


def product_norms(lt: LayerTrace, batch: np.ndarray, *, exact: bool | None = None):
    """``log10 ||d s_{T-1} / d s_t||_2`` for t = 0..T-1 and ``log10 ||J_t||_2``, for the rows ``batch``.

    Returns ``(log10_product (T, n), log10_step (T, n), converged: bool)``. The product at t = T-1 is the
    identity (0). ``exact`` uses SVDs of formed matrices (default: when S <= 96); otherwise the step norms come
    from Lanczos bidiagonalisation and the product norms from warm-started block power iteration, both to the
    relative tolerances ``STEP_TOL`` and ``PRODUCT_TOL``.
    """
    T = lt.h.shape[0]
    S = lt.state_size
    batch = np.asarray(batch, dtype=int)
    n = batch.size
    if exact is None:
        exact = S <= 96
    log_prod = np.zeros((T, n))
    log_step = np.empty((T, n))
    m = np.broadcast_to(np.eye(S), (n, S, S)).copy()  # P_{t+1} = J_{T-1} ... J_{t+1}, over exp(log_scale)
    log_scale = np.zeros(n)
    u = np.linalg.qr(np.random.default_rng(0).standard_normal((n, S, min(S, 4))))[0]
    all_converged = True
    block = max(1, BLOCK_ELEMENTS // (n * S))
    for start in range((T - 1) // block * block, -1, -block):
        steps = np.arange(start, min(start + block, T))
        jac = lt.jacobians(steps, batch, dtype=np.float64)  # (len(steps), n) implicit Jacobians
        log_step[steps], ok = _log10_step_norms(jac, exact)
        all_converged &= ok
        for a in range(len(steps) - 1, -1, -1):
            t = int(steps[a])
            if t == 0:
                break  # J_0 maps s_{-1} (the initial state) to s_0: not part of any d s_{T-1} / d s_t
            m = jac[a].rmatmul(m)  # P_{t-1} = P_t J_t (times exp(-log_scale))
            if exact:
                sig = np.linalg.svd(m, compute_uv=False)[:, 0]
            else:
                sig, u, conv = top_left_singular_value(m, u, tol=PRODUCT_TOL)
                all_converged &= bool(conv.all())
            with np.errstate(divide="ignore"):
                log_sig = np.log(sig)
            log_prod[t - 1] = (log_scale + log_sig) * LOG10_E
            # rescale only when the norm leaves [1e-50, 1e50] (one step grows it by at most ||J_t||): no pass
            # over m on most steps, and no overflow or underflow on any
            far = np.abs(log_sig) > RESCALE_AT
            if far.any():
                ok = far & np.isfinite(log_sig)
                m[ok] /= sig[ok, None, None]
                log_scale[ok] += log_sig[ok]
    return log_prod, log_step, all_converged


def _log10_step_norms(jac: StepJacobians, exact: bool) -> tuple[np.ndarray, bool]:
    """``log10 ||J||_2`` for a block of implicit Jacobians (m, n), in sub-blocks that bound the memory."""
    m, n = jac.shape
    S = jac.state_size
    out = np.empty((m, n))
    ok = True
    per = max(1, BLOCK_ELEMENTS // (n * S * S)) if exact else m
    for s in range(0, m, per):
        sub = jac[s : s + per]
        if exact:
            sigma = np.linalg.svd(sub.dense(), compute_uv=False)[..., 0]
        else:
            sigma, conv = top_singular_values(sub, tol=STEP_TOL)
            ok &= conv
        with np.errstate(divide="ignore"):
            out[s : s + per] = np.log10(sigma)
    return out, ok
