r"""Lyapunov exponents of the driven state dynamics by the QR method (Benettin et al. 1980; Shimada & Nagashima 1979).

.. math::

    Q_t R_t = \operatorname{qr}(J_t Q_{t-1}),\ \operatorname{diag}(R_t) > 0, \qquad
    \lambda_i = \frac{1}{N} \sum_{t \ge t_0} \ln (R_t)_{ii}

in natural-log units per step (nats/step), after a warm-up of ``t_0`` steps. With ``k = S`` the exponents sum to
the mean of ``ln |det J_t|`` over the same steps. A positive top exponent means nearby trajectories separate
(chaos; gradients can explode); a negative one that they converge (gradients vanish at that rate).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..engine import LayerTrace
from ..jsonsafe import list_or_none
from ._common import qr_reduced
from .jacobians import formed_steps, jacobian_blocks


@dataclass(frozen=True)
class LyapunovSpectrum:
    """The top-k exponents, mean and spread over the sampled sequences."""

    exponents: np.ndarray = field(repr=False)  # (k,) mean over the sample, descending, nats/step
    spread: np.ndarray = field(repr=False)  # (k,) standard deviation over the sample
    per_sequence: np.ndarray = field(repr=False)  # (n, k)
    batch: tuple[int, ...]
    warmup: int
    reortho_every: int
    steps: int  # steps averaged over
    q0: str  # "identity" or "random"

    @property
    def top(self) -> float:
        return float(self.exponents[0]) if self.exponents.size else float("nan")

    def to_dict(self) -> dict:
        return {
            "units": "nats per step (natural log)",
            "exponents": list_or_none(self.exponents),
            "spread": list_or_none(self.spread),
            "top": list_or_none([self.top])[0],
            "k": int(self.exponents.size),
            "sampled_sequences": list(self.batch),
            "warmup": self.warmup,
            "reortho_every": self.reortho_every,
            "steps_averaged": self.steps,
            "q0": self.q0,
        }


def lyapunov_spectrum(
    lt: LayerTrace,
    batch,
    *,
    k: int | None = None,
    warmup: int = 0,
    reortho_every: int = 1,
    q0: str | None = None,
    seed: int = 0,
) -> LyapunovSpectrum:
    """Top-``k`` Lyapunov exponents of one layer for the batch rows ``batch``.

    ``q0`` is the initial orthonormal frame: ``"identity"`` (the first k axes) or ``"random"``; the default is
    the identity when ``k`` is the full state size and random otherwise (k axes could miss the top direction).
    """
    T = lt.h.shape[0]
    S = lt.state_size
    batch = np.asarray(batch, dtype=int)
    n = batch.size
    k = S if k is None else int(k)
    if not 1 <= k <= S:
        raise ValueError(f"lyapunov k must be between 1 and the state size {S}; got {k}")
    if not 0 <= warmup < T:
        raise ValueError(f"lyapunov warmup must be in 0..{T - 1} for a sequence of {T} steps; got {warmup}")
    if reortho_every < 1:
        raise ValueError(f"reortho_every must be >= 1; got {reortho_every}")
    if q0 is None:
        q0 = "identity" if k == S else "random"
    if q0 == "identity":
        q = np.broadcast_to(np.eye(S, k), (n, S, k)).copy()  # the frame's k vectors as columns
    elif q0 == "random":
        q = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, S, k)))[0]
    else:
        raise ValueError(f"q0 must be 'identity' or 'random'; got {q0!r}")
    log_sum = np.zeros((n, k))
    steps = 0
    pending = 0  # steps applied since the last QR
    with np.errstate(divide="ignore"):  # log 0 = -inf: a singular Jacobian's exponent
        for block_steps, jac in jacobian_blocks(lt, batch):
            # through the dense part of the Jacobians (LSTM: the left block column; GRU: J): one product per step
            # with it costs less than a product with W_hh and the elementwise rest
            for t, jac_t in formed_steps(block_steps, jac):
                q = jac_t.matmul(q)  # J_t Q_{t-1}
                pending += 1
                if pending < reortho_every and t != T - 1 and t != warmup - 1:  # a QR at the warm-up's end too
                    continue
                # |R_ii| is what counts: flipping a column of Q (to make R_ii > 0) flips the same column of J Q
                # next step and leaves every |R_ii| as it is, so the signs are never fixed
                q, d = qr_reduced(q, r="diagonal")  # (n, S, k), (n, k)
                if t >= warmup:
                    counted = min(pending, t - warmup + 1)
                    logs = np.log(np.abs(d))
                    log_sum += logs if counted == pending else logs * (counted / pending)
                    steps += counted
                pending = 0
    per_seq = log_sum / max(steps, 1)
    per_seq = -np.sort(-per_seq, axis=1)
    with np.errstate(invalid="ignore"):  # -inf exponents (singular Jacobians): equal values have no spread
        spread = np.where(np.all(per_seq == per_seq[:1], axis=0), 0.0, per_seq.std(axis=0))
    return LyapunovSpectrum(per_seq.mean(axis=0), spread, per_seq, tuple(int(b) for b in batch),
                            warmup, reortho_every, steps, q0)
