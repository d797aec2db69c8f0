"""Norms of step Jacobians and of their products, in log space, for a sample of the batch.

The Jacobians stay implicit (:class:`rnndiag.engine.StepJacobians`: their diagonal factors, O(H) numbers per step
and sequence); they act on vectors through one product with ``W_hh``. The running product of the n sampled
sequences is held as an (n, S, S) array, renormalised (its scale kept as a logarithm) whenever its norm leaves
[1e-20, 1e20], so sequences of 100,000 steps with per-step gains anywhere between 0.1 and 10 (or 1e+-40) neither
overflow nor underflow.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ..engine import LayerTrace, StepJacobians
from ._common import eigh_small, eigh_tridiagonal, qr_reduced, tridiagonal_eigenvalues

LOG10_E = math.log10(math.e)
# relative tolerances of the iterative norms (exact cases such as J = aQ converge at once, to rounding): far
# below anything a plot or a decay fit can show, and each decade costs iterations
STEP_TOL = PRODUCT_TOL = 1e-6  # ||J_t||_2 by Lanczos bidiagonalisation, ||P_t||_2 by Lanczos on P P^T
TRACKED = 8  # dimension of the tracked top left singular subspace of the products
MIN_LANCZOS = 5  # Lanczos steps before its stopping test may stop it (see _lanczos_top)
CLUSTER = 1e-1  # top two Ritz values of P P^T closer than this (relative): the product's norm is proved or exact
BLOCK_ELEMENTS = 2**16  # steps x sequences x S per block of factors (a few MB, with their temporaries)
FORMED_ELEMENTS = 2**19  # steps x sequences x S x S per batch of formed Jacobian parts (4 MB)
RENORMALISE = 1e20  # the running product is rescaled when its norm leaves [1 / RENORMALISE, RENORMALISE]
EXACT_MAX_STATE = 96  # state sizes up to this: norms by SVDs of formed matrices (cheap there, and exact)


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


def formed_steps(steps: np.ndarray, jac: StepJacobians, *, reverse: bool = False):
    """``(t, J_t)`` for each step of a block from :func:`jacobian_blocks`, with the dense part of the Jacobians
    formed a few steps at a time (``FORMED_ELEMENTS``, a few MB); backwards in time when ``reverse``."""
    per = max(1, FORMED_ELEMENTS // (jac.shape[1] * jac.state_size**2))
    starts = range(0, len(steps), per)
    for start in reversed(starts) if reverse else starts:
        formed = jac[start : start + per].with_formed()
        within = range(formed.shape[0])
        for a in reversed(within) if reverse else within:
            yield int(steps[start + a]), formed[a]


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
    alphas = np.zeros((K, *lead))  # the upper bidiagonal B: alpha_j on the diagonal, beta_j above it
    betas = np.zeros((K, *lead))
    v, _ = _unit_rows(np.random.default_rng(seed).standard_normal((*lead, S)).astype(jac.w_hh.dtype))
    u, alpha = _unit_rows(jac.jvp(v))
    alphas[0] = alpha
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
        betas[j] = beta
        alphas[j] = alpha
        np.maximum(scale, np.maximum(alpha, beta), out=scale)
        if j + 1 in checks or j == K - 1:
            # every Jacobian is re-solved at every check: a top Ritz value can stall for a check and then jump
            # (a direction the Krylov space had missed), which the review sweep showed (1e-3 silent errors) when
            # values steady once were kept
            new = np.sqrt(np.maximum(_top_eigenvalues_of_gram(alphas[: j + 1], betas[: j + 1]), 0.0))
            done = np.abs(new - sigma) <= tol * np.maximum(new, 1e-300)
            sigma = new
            if done.all():
                return sigma, True
    return sigma, False


def _top_eigenvalues_of_gram(alphas: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """The largest eigenvalue of ``B^T B`` for each upper bidiagonal B with diagonal ``alphas`` (k, ...) and
    superdiagonal ``betas[1:]`` (``betas[0]`` unused): ``B^T B`` is tridiagonal, with diagonal
    ``alpha_i^2 + beta_i^2`` and off-diagonal ``alpha_i beta_{i+1}``, and LAPACK's root-free QR (sterf) takes
    its eigenvalues in O(k^2), one matrix at a time."""
    a = alphas.reshape(len(alphas), -1).T.astype(np.float64)  # (count, k)
    b = betas.reshape(len(betas), -1).T.astype(np.float64)
    diag = a * a + b * b  # b[:, 0] = 0
    off = a[:, :-1] * b[:, 1:]
    out = np.array([tridiagonal_eigenvalues(d, e)[-1] for d, e in zip(diag, off)])
    return out.reshape(alphas.shape[1:])


def _next_basis_vector(w: np.ndarray, prev: np.ndarray, scale: np.ndarray,
                       noise: float) -> tuple[np.ndarray, np.ndarray]:
    """``w`` re-orthogonalised against the previous vector of its side, normalised; and its norm. A norm below
    ``noise * scale`` is rounding noise (the Krylov space is exhausted): the vector and its norm become 0."""
    w -= np.einsum("...s,...s->...", prev, w)[..., None] * prev
    norm = np.sqrt(np.einsum("...s,...s->...", w, w))
    keep = norm > noise * scale
    w *= np.where(keep, 1.0 / np.where(keep, norm, 1.0), 0.0)[..., None]
    return w, np.where(keep, norm, 0.0)


def top_left_singular_value(m: np.ndarray, block: np.ndarray, *, tol: float = 1e-10, max_steps: int = 40,
                             rng: np.random.Generator | None = None):
    """Largest singular value of each matrix in ``m`` (n, S, S), from Rayleigh-Ritz of ``A = m m^T`` on a tracked
    subspace where a rigorous bound vouches for it; by Lanczos, or exactly, where it does not.

    ``block`` (n, S, p) tracks the top-p left singular subspace of the products: products grow on the right
    (``P_t = P_{t+1} J_t``), so it drifts. Its last vector gives way to the longest column ``P e_i`` of the
    product: where the Jacobians are (nearly) diagonal -- identity-initialised weights, an LSTM's cell path -- a
    unit can climb from far below the block, which keeps no component of it, and the column's Rayleigh quotient
    is at least ``||P e_i||^2`` (so the answer is never below the largest column norm: exact for diagonal
    products). One step of subspace iteration with this ``A`` (``orth(A U)``), then Rayleigh-Ritz there, gives
    Ritz values ``theta_1 >= ... >= theta_p`` (lower bounds of the top eigenvalues: the answer is never above
    ``||m||_2``) with residuals ``r_i = ||A y_i - theta_i y_i||``; the Ritz vectors are the next block.

    The largest Ritz value is taken where ``r_1^2 <= tol * theta_1 * (theta_1 - mu)``, with
    ``mu = max(theta_2, trace(A) - sum(theta)) + sqrt(sum_{i>=2} r_i^2)`` below ``theta_1``: ``mu`` bounds the
    spectrum of A on everything but ``y_1`` (A is positive semi-definite, so the part outside the subspace has
    its largest eigenvalue below its trace), and then ``lambda_1 <= theta_1 + r_1^2 / (theta_1 - mu)``. This
    holds once the products' spectra have spread (a few tens of steps); before that, Lanczos on ``A`` starts
    from ``y_1`` (:func:`_lanczos_top`), whose answer is heuristic (Kato-Temple with its own second Ritz value;
    proved by a Cholesky factor, or exact, where the top is clustered). From ``y_1`` Lanczos cannot leave an
    invariant subspace that the top direction lies outside (an exactly reducible product, block-diagonal W_hh,
    whose top block the tracked subspace lost): so with ``rng``, the block's second-to-last vector is a fresh
    random direction every step, which gives every block of the product a component to grow from.
    Returns ``(sigma (n,), the next block (n, S, p))``.
    """
    sigma = np.empty(m.shape[0])
    next_block = np.empty_like(block)
    for i in range(m.shape[0]):  # one sequence at a time: small 2-D products, and plain floats for the rest
        sigma[i], next_block[i] = _top_left_one(m[i], block[i], tol, max_steps, rng)
    return sigma, next_block


def _top_left_one(m: np.ndarray, block: np.ndarray, tol: float, max_steps: int,
                  rng: np.random.Generator | None = None) -> tuple[float, np.ndarray]:
    """:func:`top_left_singular_value` of one (S, S) matrix with its (S, p) block."""
    S, p = block.shape
    cols = np.einsum("ij,ij->j", m, m)  # squared column norms; their sum is trace(A)
    if p > 1:
        block = block.copy()
        block[:, -1] = m[:, int(np.argmax(cols))]
        if p > 3 and rng is not None:
            block[:, -2] = rng.standard_normal(S)
    basis = qr_reduced((m @ (block.T @ m).T)[None], r=None)[0]  # orth(A U)
    w = basis.T @ m  # (p, S)
    theta, vecs = eigh_small(w @ w.T)  # ascending
    theta, vecs = theta[::-1], vecs[:, ::-1]
    next_block = basis @ vecs  # the Ritz vectors, orthonormal
    ay = m @ (w.T @ vecs)  # A y_i
    # ||A y - theta y||^2 = ||A y||^2 - theta^2 (y^T A y = theta): the bound needs it to a few digits
    r2 = [max(r, 0.0) for r in (np.einsum("si,si->i", ay, ay) - theta**2).tolist()]
    th = theta.tolist()
    top = th[0]
    mu = max(th[1] if p > 1 else 0.0, float(cols.sum()) - sum(th)) + math.sqrt(sum(r2[1:]))
    if top > mu and r2[0] <= tol * top * (top - mu):
        return math.sqrt(max(top, 0.0)), next_block
    return _lanczos_top(m, next_block[:, 0], ay[:, 0], th[:2], tol=tol, max_steps=max_steps), next_block


def _lanczos_top(m: np.ndarray, u: np.ndarray, au: np.ndarray, block_theta: list[float], *, tol: float,
                 max_steps: int) -> float:
    """Largest singular value of ``m`` (S, S) by Lanczos on ``A = m m^T`` from the unit vector ``u`` (S,)
    (``au = A u`` given), or proved or exact where Lanczos cannot vouch for its answer.

    Each Lanczos step costs two matrix-vector products; the basis (a few vectors) is fully re-orthogonalised,
    twice. It stops when the top Ritz value ``theta_1`` both stays within ``tol`` (relative) of the previous
    step's and meets the Kato-Temple bound ``||r||^2 / (theta_1 - theta_2) <= tol * theta_1`` (``||r||``:
    ``beta_j`` times the last component of the Ritz vector), or when the Krylov space is exhausted. That bound
    takes the second Ritz value for the second eigenvalue, which fails where the top of the spectrum is
    clustered; so where the top two Ritz values (of the block, ``block_theta``, descending, or of Lanczos)
    are within ``CLUSTER`` (relative), or Lanczos did not converge, or the answer is 0 while ``m`` is not, the
    top Ritz value is proved by a Cholesky factorisation or the norm is computed exactly
    (:func:`_proven_or_exact`).
    """
    S = m.shape[0]
    block_top = block_theta[0]
    block_clustered = len(block_theta) > 1 and block_theta[0] - block_theta[1] < CLUSTER * block_theta[0]
    # u (nearly) an eigenvector -- an isolated unit's axis, or any vector when m = aQ -- would stop Lanczos within
    # a step or two on its own eigenvalue, with no word on the rest of the spectrum (and the block, which could
    # not vouch for it, has none either): start from a random vector instead
    rq = float(u @ au)
    res = au - rq * u
    if float(res @ res) <= tol * max(rq, 1e-300) ** 2:
        u = _unit_rows(np.random.default_rng(0).standard_normal(S))[0]
        au = m @ (u @ m)
    K = min(S, max_steps)
    basis = np.zeros((K, S))
    alphas, betas = np.zeros(K), np.zeros(K)  # the Lanczos tridiagonal matrix: diagonal, off-diagonal
    q, z = u, au.copy()
    theta_old = math.nan
    for j in range(K):
        basis[j] = q
        if j > 0:
            z = m @ (q @ m)  # A q = m (m^T q)
        alphas[j] = float(q @ z)
        done_basis = basis[: j + 1]
        for _ in range(2):  # full re-orthogonalisation, twice (one pass loses it when beta is small)
            z -= (done_basis @ z) @ done_basis
        beta = math.sqrt(float(z @ z))
        exhausted = beta <= 1e-12 * max(alphas[0], 1e-300)
        if j == 0:
            theta, second = float(alphas[0]), None
            converged = exhausted  # a random u is an eigenvector: A is a multiple of the identity (m = aQ)
        elif j < MIN_LANCZOS - 1 and not exhausted and j < K - 1:
            converged = False  # no verdict before MIN_LANCZOS (below): the Ritz values are not needed yet
        else:
            evals, evecs = eigh_tridiagonal(alphas[: j + 1], betas[:j])
            theta, second = float(evals[-1]), float(evals[-2])
            resid2 = (beta * float(evecs[-1, -1])) ** 2
            # the second Ritz value of a Krylov space of two or three vectors can sit far below the second
            # eigenvalue, and a hidden top direction takes a few steps to show: no verdict before MIN_LANCZOS
            converged = (j >= MIN_LANCZOS and resid2 <= tol * theta * (theta - second)
                         and abs(theta - theta_old) <= tol * theta) or exhausted
        theta_old = theta
        if converged or j == K - 1:
            clustered = second is not None and theta - second < CLUSTER * theta and not exhausted
            sigma = math.sqrt(max(theta, block_top, 0.0))
            redo = clustered or (block_clustered and not exhausted) or not converged
            if sigma <= 0:  # a zero product is exact; otherwise u missed the range of m
                redo = redo or bool(m.any())
            if redo:
                sigma = _proven_or_exact(m, sigma * sigma, tol)
            return sigma
        q = z / beta if beta > 0 else z
        betas[j] = beta
    raise AssertionError("unreachable")


def _proven_or_exact(m: np.ndarray, theta: float, tol: float) -> float:
    """The largest singular value of ``m`` (S, S): ``sqrt(theta)`` where a Cholesky factorisation proves it, else
    exactly (from the largest eigenvalue of ``A = m m^T``: half an SVD's cost, and the largest singular value
    loses nothing to the squaring).

    ``theta`` is a Rayleigh quotient of A (a Ritz value), so ``theta <= lambda_max(A)``; if ``theta (1 + tol) I - A``
    has a Cholesky factor it is positive definite, so ``lambda_max(A) < theta (1 + tol)``: the answer is within
    ``tol / 2`` (relative) of the largest singular value, below it, as rigorously as an eigensolver (Cholesky is
    backward stable: its rounding moves the bound by a few ``S eps``, far below ``tol``). The factorisation
    costs about a third of the eigenvalues; where it fails (``theta`` not within ``tol``), the eigenvalues follow.
    """
    a = m @ m.T
    if theta > 0 and math.isfinite(theta):
        shifted = np.negative(a)
        shifted.flat[:: a.shape[0] + 1] += theta * (1.0 + tol)
        try:
            np.linalg.cholesky(shifted)
            return math.sqrt(theta)
        except np.linalg.LinAlgError:
            pass
    return math.sqrt(max(float(np.linalg.eigvalsh(a)[-1]), 0.0))


class ProductNorms(NamedTuple):
    """What :func:`product_norms` measured, and how."""

    log10_product: np.ndarray  # (T, n) log10 ||d s_{T-1} / d s_t||_2
    log10_step: np.ndarray  # (T, n) log10 ||J_t||_2
    converged: bool  # every step norm met its tolerance
    method: str  # how the norms were computed, as the report names it


def product_norms(lt: LayerTrace, batch: np.ndarray, *, exact: bool | None = None) -> ProductNorms:
    """``log10 ||d s_{T-1} / d s_t||_2`` for t = 0..T-1 and ``log10 ||J_t||_2``, for the rows ``batch``.

    Returns :class:`ProductNorms`: both arrays (T, n), whether every step norm met its tolerance (product norms
    that neither a bound nor Lanczos can vouch for are proved by a Cholesky factorisation or computed exactly),
    and the method used. The product at t = T-1 is the identity (0). ``exact`` uses SVDs of formed matrices
    (default: when S <= ``EXACT_MAX_STATE``); otherwise the step norms come from Lanczos bidiagonalisation and
    the product norms from a tracked subspace (:func:`top_left_singular_value`), both to the relative tolerances
    ``STEP_TOL`` and ``PRODUCT_TOL``. The dense part of the Jacobians is formed a few steps at a time, and the products
    alternate between two buffers.
    """
    T = lt.h.shape[0]
    S = lt.state_size
    batch = np.asarray(batch, dtype=int)
    n = batch.size
    if exact is None:
        exact = S <= EXACT_MAX_STATE
    log_prod = np.zeros((T, n))
    log_step = np.empty((T, n))
    # P_{t+1} = J_{T-1} ... J_{t+1}, over exp(log_scale), in two buffers the products alternate between; each
    # matrix column-major, so that the elementwise part of m J (scaling m's columns) runs along memory
    m = np.broadcast_to(np.eye(S), (n, S, S)).copy().transpose(0, 2, 1)
    spare = np.empty((n, S, S)).transpose(0, 2, 1)
    log_scale = np.zeros(n)
    sig_at = np.ones((T, n))  # ||P_t|| over exp(scale_at): combined into logarithms at the end
    scale_at = np.zeros((T, n))
    tracked = np.linalg.qr(np.random.default_rng(0).standard_normal((n, S, min(S, TRACKED))))[0]  # top left subspace
    probes = np.random.default_rng(1)  # a fresh random direction in the tracked subspace every step
    all_converged = True
    for steps, jac in jacobian_blocks(lt, batch, reverse=True):
        log_step[steps], ok = _log10_step_norms(jac, exact)
        all_converged &= ok
        for t, jac_t in formed_steps(steps, jac, reverse=True):
            if t == 0:
                break  # J_0 maps s_{-1} (the initial state) to s_0: not part of any d s_{T-1} / d s_t
            m, spare = jac_t.rmatmul(m, out=spare), m  # P_{t-1} = P_t J_t, over exp(log_scale)
            if exact:
                sig = np.linalg.svd(m, compute_uv=False)[:, 0]
            else:
                sig, tracked = top_left_singular_value(m, tracked, tol=PRODUCT_TOL, rng=probes)
            sig_at[t - 1] = sig
            scale_at[t - 1] = log_scale
            # renormalised only when its norm leaves [1e-20, 1e20]: one step's gain can be 1e40, and m m^T must
            # stay far from overflow and underflow (what is kept is exact either way)
            if any(s > RENORMALISE or 0.0 < s < 1.0 / RENORMALISE for s in sig.tolist()):
                far = (sig > RENORMALISE) | ((sig < 1.0 / RENORMALISE) & (sig > 0))
                log_scale = log_scale + np.where(far, np.log(np.where(far, sig, 1.0)), 0.0)
                m *= np.where(far, 1.0 / np.where(far, sig, 1.0), 1.0)[:, None, None]
    with np.errstate(divide="ignore"):
        log_prod[:-1] = (scale_at[:-1] + np.log(sig_at[:-1])) * LOG10_E
    method = "SVD" if exact else f"Lanczos (relative tolerance {PRODUCT_TOL:g})"
    if not all_converged:
        method += " (not fully converged)"
    return ProductNorms(log_prod, log_step, all_converged, method)


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
