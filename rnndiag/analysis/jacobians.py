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
STEP_TOL = PRODUCT_TOL = 1e-6  # ||J_t||_2 by Lanczos bidiagonalisation, ||P_t||_2 by Lanczos on P P^T
TRACKED = 8  # dimension of the tracked top left singular subspace of the products
CLUSTER = 1e-1  # top two Ritz values of P P^T closer than this (relative): the product's norm is computed exactly
BLOCK_ELEMENTS = 2**16  # steps x sequences x S per block of factors (a few MB, with their temporaries)


def jacobian_blocks(lt: LayerTrace, batch, *, reverse: bool = False):
    """The implicit step Jacobians (float64) of the rows ``batch`` (None: all), a block of steps at a time, so
    that their factors stay a few MB: yields ``(steps, jac)`` with ``jac`` of shape (len(steps), n); the blocks
    run backwards in time when ``reverse`` (the steps within a block stay in order)."""
    T = lt.h.shape[0]
    n = lt.h0.shape[0] if batch is None else len(batch)
    block = max(1, BLOCK_ELEMENTS // (n * lt.state_size))
    starts = range(0, T, block)
    for start in reversed(starts) if reverse else starts:
        steps = np.arange(start, min(start + block, T))
        yield steps, lt.jacobians(steps, batch, dtype=np.float64)


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
    v, _ = _unit_rows(np.random.default_rng(seed).standard_normal((*lead, S)).astype(jac.w_hh.dtype))
    u, alpha = _unit_rows(jac.jvp(v))
    bidiag[..., 0, 0] = alpha
    scale = alpha.copy()  # the largest entry so far: a new direction far below it is rounding noise
    sigma = alpha.copy()
    noise = 100.0 * np.finfo(jac.w_hh.dtype).eps
    checks = set(range(24, K, 4))  # Lanczos needs ~25-35 steps for 1e-6 on typical recurrent Jacobians
    for j in range(1, K):
        w = jac.vjp(u)
        w -= alpha[..., None] * v  # A^T u_{j-1} - alpha_{j-1} v_{j-1}
        v, beta = _next_basis_vector(w, v, scale, noise)
        u_new = jac.jvp(v)
        u_new -= beta[..., None] * u  # A v_j - beta_j u_{j-1}
        u, alpha = _next_basis_vector(u_new, u, np.maximum(scale, beta), noise)
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


def _next_basis_vector(w: np.ndarray, prev: np.ndarray, scale: np.ndarray,
                       noise: float) -> tuple[np.ndarray, np.ndarray]:
    """``w`` re-orthogonalised against the previous vector of its side, normalised; and its norm. A norm below
    ``noise * scale`` is rounding noise (the Krylov space is exhausted): the vector and its norm become 0."""
    w -= np.einsum("...s,...s->...", prev, w)[..., None] * prev
    norm = np.sqrt(np.einsum("...s,...s->...", w, w))
    keep = norm > noise * scale
    w *= np.where(keep, 1.0 / np.where(keep, norm, 1.0), 0.0)[..., None]
    return w, np.where(keep, norm, 0.0)


def top_left_singular_value(m: np.ndarray, block: np.ndarray, *, tol: float = 1e-10, max_steps: int = 40):
    """Largest singular value of each matrix in ``m`` (n, S, S) by Lanczos on ``A = m m^T``, or exactly where
    Lanczos cannot vouch for its answer.

    ``block`` (n, S, p) tracks the top-p left singular subspace of the products: products grow on the right
    (``P_t = P_{t+1} J_t``), so it drifts; one step of subspace iteration with Rayleigh-Ritz per product follows
    it, and a crossing among the top p singular values is seen at once. Lanczos starts from the block's top
    Ritz vector. Each Lanczos step costs two matrix-vector products; the basis (a few vectors) is fully
    re-orthogonalised, twice. It stops when the top Ritz value ``theta_1`` both stays within ``tol`` (relative)
    of the previous step's and meets the Kato-Temple bound ``||r||^2 / (theta_1 - theta_2) <= tol * theta_1``
    (``||r||``: ``beta_j`` times the last component of the Ritz vector), or when the Krylov space is exhausted.
    That bound takes the second Ritz value for the second eigenvalue, which fails where the top of the spectrum
    is clustered; so where the top two Ritz values (of the block or of Lanczos) are within ``CLUSTER``
    (relative), or Lanczos did not converge, the norm is computed exactly (the top eigenvalue of ``m m^T``). A
    singular value that climbs from below the top p past all of them in one step, with no cluster in sight, can
    still be missed: the answer is then the second.
    Returns ``(sigma (n,), the next block (n, S, p))``: after the exact fallback every value is converged.
    """
    w = np.swapaxes(block, 1, 2) @ m  # U^T m (n, p, S)
    wT = np.swapaxes(w, 1, 2)
    block_vals, block_vecs = np.linalg.eigh(w @ wT)  # Rayleigh-Ritz of A on the block, ascending
    block_vecs = block_vecs[:, :, ::-1]
    next_block = np.linalg.qr(m @ (wT @ block_vecs))[0]  # A times the Ritz vectors: one subspace iteration
    u = (block @ block_vecs[:, :, :1])[:, :, 0]  # the block's top Ritz vector
    block_top = block_vals[:, -1]
    block_clustered = block_vals[:, -1] - block_vals[:, -2] < CLUSTER * block_vals[:, -1] if block.shape[2] > 1 \
        else np.zeros(m.shape[0], dtype=bool)
    n, S, _ = m.shape
    K = min(S, max_steps)
    basis = np.zeros((n, K, S))
    tri = np.zeros((n, K, K))  # the Lanczos tridiagonal matrix
    q = _unit_rows(u)[0]
    theta_old = np.full(n, np.nan)
    for j in range(K):
        basis[:, j] = q
        z = (m @ (q[:, None, :] @ m)[:, 0, :, None])[:, :, 0]  # A q = m (m^T q)
        tri[:, j, j] = np.einsum("ns,ns->n", q, z)
        done_basis = basis[:, : j + 1]
        for _ in range(2):  # full re-orthogonalisation, twice (one pass loses it when beta is small)
            z -= np.einsum("nj,njs->ns", np.einsum("njs,ns->nj", done_basis, z), done_basis)
        beta = np.sqrt(np.einsum("ns,ns->n", z, z))
        exhausted = beta <= 1e-12 * np.maximum(tri[:, 0, 0], 1e-300)
        if j == 0:
            theta = tri[:, 0, 0].copy()
            evals = theta[:, None]
            evecs = np.ones((n, 1, 1))
            converged = exhausted  # u is an eigenvector (e.g. m = aQ)
        else:
            evals, evecs = np.linalg.eigh(tri[:, : j + 1, : j + 1])
            theta = evals[:, -1]
            resid2 = (beta * evecs[:, -1, -1]) ** 2
            with np.errstate(invalid="ignore"):
                converged = ((resid2 <= tol * theta * (theta - evals[:, -2]))
                             & (np.abs(theta - theta_old) <= tol * theta)) | exhausted
        theta_old = theta
        if converged.all() or j == K - 1:
            sigma = np.sqrt(np.maximum(np.maximum(theta, block_top), 0.0))
            clustered = (evals[:, -1] - evals[:, -2] < CLUSTER * evals[:, -1]) & ~exhausted if j > 0 else \
                np.zeros(n, dtype=bool)
            redo = clustered | (block_clustered & ~exhausted) | ~converged
            if redo.any():  # exactly, from the largest eigenvalue of m m^T (half an SVD's cost; the largest
                # singular value loses nothing to the squaring)
                mr = m[redo]
                sigma[redo] = np.sqrt(np.maximum(np.linalg.eigvalsh(mr @ np.swapaxes(mr, 1, 2))[:, -1], 0.0))
            return sigma, next_block
        q = z / np.where(beta > 0, beta, 1.0)[:, None]
        tri[:, j, j + 1] = tri[:, j + 1, j] = beta
    raise AssertionError("unreachable")


def product_norms(lt: LayerTrace, batch: np.ndarray, *, exact: bool | None = None):
    """``log10 ||d s_{T-1} / d s_t||_2`` for t = 0..T-1 and ``log10 ||J_t||_2``, for the rows ``batch``.

    Returns ``(log10_product (T, n), log10_step (T, n), converged: bool)``, ``converged`` saying whether every
    step norm met its tolerance (product norms that Lanczos cannot vouch for are computed exactly). The product
    at t = T-1 is the identity (0). ``exact`` uses SVDs of formed matrices (default: when S <= 96); otherwise the
    step norms come from Lanczos bidiagonalisation and the product norms from warm-started Lanczos on ``P P^T``,
    both to the relative tolerances ``STEP_TOL`` and ``PRODUCT_TOL``.
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
    tracked = np.linalg.qr(np.random.default_rng(0).standard_normal((n, S, min(S, TRACKED))))[0]  # top left subspace
    all_converged = True
    for steps, jac in jacobian_blocks(lt, batch, reverse=True):
        log_step[steps], ok = _log10_step_norms(jac, exact)
        all_converged &= ok
        for a in range(len(steps) - 1, -1, -1):
            t = int(steps[a])
            if t == 0:
                break  # J_0 maps s_{-1} (the initial state) to s_0: not part of any d s_{T-1} / d s_t
            m = jac[a].rmatmul(m)  # P_{t-1} = P_t J_t, over exp(log_scale)
            f = np.sqrt(np.einsum("nij,nij->n", m, m))  # renormalised every step: one step can grow it 1e40x
            with np.errstate(divide="ignore"):
                log_scale += np.log(f)
            m /= np.where(f > 0, f, 1.0)[:, None, None]
            if exact:
                sig = np.linalg.svd(m, compute_uv=False)[:, 0]
            else:
                sig, tracked = top_left_singular_value(m, tracked, tol=PRODUCT_TOL)
            with np.errstate(divide="ignore"):
                log_prod[t - 1] = (log_scale + np.log(sig)) * LOG10_E
    return log_prod, log_step, all_converged


def _single_precision_if_safe(jac: StepJacobians) -> StepJacobians:
    """Lanczos for ``||J_t||`` in float32 when the Jacobians' entries sit well inside its range: each product
    costs half as much, and the top Ritz value is still accurate to a few 1e-7 relative (float32 rounding on
    ``||J||``, either side), inside ``STEP_TOL``. Where the top singular values of a J cluster, the stopping
    test (the value steady over 4 Lanczos steps) can let through up to ~5e-5 (a display quantity). Entries are
    bounded by ``G (1 + max|k|)^2 max|W_hh|``; norms that come out below 1e-12 or above 1e12 are recomputed in
    float64 by the caller."""
    bound = jac.w_hh.shape[0] / jac.w_hh.shape[1] * (1.0 + max(float(np.abs(f).max(initial=0.0))
                                                               for f in jac.factors)) ** 2 \
        * float(np.abs(jac.w_hh).max(initial=0.0))
    if STEP_TOL >= 1e-6 and 1e-15 < bound < 1e15:
        return jac.astype(np.float32)
    return jac


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
            single = _single_precision_if_safe(sub)
            sigma, conv = top_singular_values(single, tol=STEP_TOL)
            if single is not sub and not np.all((sigma > 1e-12) & (sigma < 1e12)):
                # tiny or huge norms: float32 squares leave its normal range; redo the block in float64
                sigma, conv = top_singular_values(sub, tol=STEP_TOL)
            ok &= conv
        with np.errstate(divide="ignore"):
            out[s : s + per] = np.log10(sigma)
    return out, ok
