"""What an analysis measures with, checked once before any work: the loss, the horizon factor, the Lyapunov
settings, the sample of sequences, and the probe.

:func:`analysis_settings` turns ``analyze``'s keyword arguments into a frozen :class:`AnalysisSettings` (or raises
one clear ``ValueError``); every default and size limit is named here once.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from .._validation import make_rng
from ..cells import cell_module
from ..model import RNNModel

LOSSES = ("last", "all")  # where the loss looks: the last step, or every step
HORIZON_FACTOR = 1e-3  # the horizon: steps back until the gradient falls below this fraction of its value
LYAPUNOV_K = 32  # exponents computed by default (the top ones), or the state size when smaller
WARMUP_FRACTION = 10  # Lyapunov warm-up by default: a tenth of the sequence ...
WARMUP_MAX = 100  # ... but at most this many steps
# The sample of sequences for the Jacobian products and Lyapunov exponents ("auto"): as many as cost about
# SAMPLE_COST_RATIO times the BPTT, and never fewer than SAMPLE_MIN_FLOPS (~0.1 s) buy.
SAMPLE_COST_RATIO = 2.0
SAMPLE_MIN_FLOPS = 1e9
LANCZOS_STEPS = 40  # Lanczos steps per step norm ||J_t||, in the cost model
TRACKED_COST = 16.0  # flops per S^2 of the tracked-subspace norm of one product, in the cost model


@dataclass(frozen=True)
class AnalysisSettings:
    """The checked settings of one analysis (``Diagnosis.settings``)."""

    loss: str  # "last" or "all"
    horizon_factor: float
    lyapunov_k: int
    lyapunov_warmup: int
    reortho_every: int
    q0: str | None  # initial Lyapunov frame: "identity", "random", or None (by k)
    batch_sample: tuple[int, ...]  # the sequences the Jacobian products and Lyapunov exponents use

    def to_dict(self) -> dict:
        return {"horizon_factor": self.horizon_factor, "lyapunov_k": self.lyapunov_k,
                "lyapunov_warmup": self.lyapunov_warmup, "reortho_every": self.reortho_every,
                "batch_sample": list(self.batch_sample), "loss": self.loss}


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def analysis_settings(model: RNNModel, T: int, B: int, *, loss="last", horizon_factor=HORIZON_FACTOR,
                      batch_sample="auto",
                      lyapunov_k=None, lyapunov_warmup=None, reortho_every=1, q0=None,
                      seed: int | None = 0) -> AnalysisSettings:
    """Check ``analyze``'s settings for a (T, B) input and fill in the defaults; one ``ValueError`` per bad one."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}")
    if isinstance(horizon_factor, bool) or not isinstance(horizon_factor, (int, float)) or \
            not 0 < horizon_factor < 1:
        raise ValueError(f"horizon_factor must be in (0, 1), e.g. {HORIZON_FACTOR:g}; got {horizon_factor!r}")
    S = model.state_size
    if lyapunov_k is not None and (not _is_int(lyapunov_k) or not 1 <= lyapunov_k <= S):
        raise ValueError(f"lyapunov_k must be an integer from 1 to the state size {S}; got {lyapunov_k!r}")
    k = int(lyapunov_k) if lyapunov_k is not None else min(S, LYAPUNOV_K)
    warmup = min(T // WARMUP_FRACTION, WARMUP_MAX) if lyapunov_warmup is None else lyapunov_warmup
    if not _is_int(warmup) or not 0 <= warmup < T:
        raise ValueError(f"lyapunov_warmup must be an integer in 0..{T - 1}; got {warmup!r}")
    if not _is_int(reortho_every) or reortho_every < 1:
        raise ValueError(f"reortho_every must be a positive integer; got {reortho_every!r}")
    batch = sample_indices(batch_sample, model, T, B, k, seed)
    return AnalysisSettings(loss, horizon_factor, k, int(warmup), int(reortho_every), q0,
                            tuple(int(b) for b in batch))


def auto_sample(model: RNNModel, T: int, B: int, k: int) -> int:
    """How many sequences the Jacobian products and Lyapunov exponents can afford: about ``SAMPLE_COST_RATIO``
    times the BPTT's flops, and never less than what ``SAMPLE_MIN_FLOPS`` of work buys (so small problems use the
    whole batch).

    Per sequence and step: the product ``P_t J_t`` (the cell's ``rmatmul_flops``), its norm (``TRACKED_COST S^2``
    per thin product with the tracked subspace), ``LANCZOS_STEPS`` Lanczos steps of one ``J v`` and one ``u^T J``
    (``2 G H^2`` each) for ``||J_t||``, and the Lyapunov frame (k Jacobian-vector products and a QR).
    """
    G, H, I, L, S = model.gate_count, model.hidden_size, model.input_size, \
        model.num_layers * getattr(model, "num_directions", 1), model.state_size
    bptt_flops = 6.0 * T * B * G * H * (H + I) * L
    product = cell_module(model.cell).rmatmul_flops(H)
    per_seq = T * L * (product + TRACKED_COST * S * S + 4.0 * LANCZOS_STEPS * G * H * H + 2.0 * k * G * H * H
                       + 4.0 * S * k * k)
    return int(max(1, min(B, max(SAMPLE_COST_RATIO * bptt_flops, SAMPLE_MIN_FLOPS) // per_seq)))


def sample_indices(batch_sample, model: RNNModel, T: int, B: int, k: int, seed) -> np.ndarray:
    """The sorted sequence indices ``batch_sample`` asks for: ``"auto"``, ``"all"``, a count (drawn with the seed)
    or a list of indices."""
    if isinstance(batch_sample, str):
        if batch_sample == "all":
            return np.arange(B)
        if batch_sample != "auto":
            raise ValueError(f"batch_sample must be 'auto', 'all', a count or a list of indices; got {batch_sample!r}")
        n = auto_sample(model, T, B, k)
    elif _is_int(batch_sample):
        if not 1 <= batch_sample <= B:
            raise ValueError(f"batch_sample must be between 1 and the batch size {B}; got {batch_sample}")
        n = int(batch_sample)
    else:
        idx = np.asarray(batch_sample)
        if idx.ndim != 1 or idx.size == 0 or idx.dtype.kind not in "iu" or idx.min() < 0 or idx.max() >= B:
            raise ValueError(f"batch_sample indices must be a non-empty list of integers in 0..{B - 1}")
        return np.unique(idx)
    if n >= B:
        return np.arange(B)
    return np.sort(np.random.default_rng(seed).choice(B, n, replace=False))


def probe_vectors(B: int, H: int, seed: int | None, directions: int = 1) -> np.ndarray:
    """The probe's seeded random unit vectors u (B, D*H) at the last step: one unit vector per direction."""
    u = make_rng(seed).standard_normal((B, directions * H)).reshape(B, directions, H)
    u /= np.linalg.norm(u, axis=2, keepdims=True)
    return u.reshape(B, directions * H)


def probe_grad_h(loss: str, T: int, B: int, H: int, seed: int | None, dtype, *, directions: int = 1,
                 lengths: np.ndarray | None = None) -> np.ndarray:
    """The probe loss's gradient (T, B, D*H), time order: seeded random unit vectors u at the last step (or u_t
    at every step). "The last step" is each direction's last: a sequence's own last step for the forward
    direction, time 0 for the reverse one (where it ends) -- a loss on ``h_n``."""
    g = np.zeros((T, B, directions * H), dtype)
    if loss == "last":
        u = probe_vectors(B, H, seed, directions)
        last = np.full(B, T - 1) if lengths is None else lengths - 1
        g[last, np.arange(B), :H] = u[:, :H]
        if directions == 2:
            g[0, :, H:] = u[:, H:]
    else:
        rng = make_rng(seed)
        for t in range(T):  # drawn step by step: the same u_t for any T' >= t
            u = rng.standard_normal((B, directions, H))
            g[t] = (u / np.linalg.norm(u, axis=2, keepdims=True)).reshape(B, directions * H)
    return g
