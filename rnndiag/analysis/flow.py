r"""Gradient flow through time: per-step gradient norms, their decay rate and the gradient horizon.

Two curves per layer:

* ``grad_norm``: :math:`\|\partial L / \partial h_t\|` from BPTT of the analysed loss (the task's, the user's
  ``grad_h``, or the probe), per sequence, with mean / median / min / max over the batch.
* ``log10_last_step``: :math:`\log_{10} \|\partial \ell / \partial h_t\|` for a loss :math:`\ell` that looks at the
  last step only (the analysed loss when it does, else the probe :math:`\langle u, h_{T-1} \rangle`), carried back
  through the layer's own step Jacobians with vector-Jacobian products and renormalised every step (log space).

The decay rate is the least-squares slope of the median ``log10_last_step`` against the number of steps back
(log10 per step, negative = vanishing), with its R^2. The horizon is the first number of steps back at which the
median gradient falls below ``horizon_factor`` times its value at the loss; when it never does within the sequence
it is censored at ``T`` and, for a decaying gradient, extrapolated from the rate.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from ..engine import LayerTrace
from ..jsonsafe import finite_or_none, list_or_none
from .jacobians import jacobian_blocks

MIN_FIT_STEPS = 10  # fewer steps than this: no decay rate is fitted


@dataclass(frozen=True)
class DecayFit:
    rate: float | None  # log10 per step back
    r2: float | None
    points: int
    reason: str | None = None  # why there is no rate

    def to_dict(self) -> dict:
        return {"decay_per_step": finite_or_none(self.rate), "r2": finite_or_none(self.r2), "points": self.points,
                "reason": self.reason}


def batch_median(a: np.ndarray, ragged: bool) -> np.ndarray:
    """The median over the batch axis of a (T, B) array; for sequences of their own lengths (``ragged``, end-
    aligned) over the values present (NaN: a step the sequence does not have). Otherwise plain ``np.median``,
    which keeps a NaN from an overflow as NaN."""
    if not ragged:
        return np.median(a, axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(a, axis=1)


def fit_decay(log10_norm: np.ndarray) -> DecayFit:
    """Slope of ``log10_norm[T-1-k]`` against ``k`` (steps back from the last step)."""
    y = np.asarray(log10_norm, dtype=np.float64)[::-1]  # y[k] = value k steps back
    k = np.arange(y.size, dtype=np.float64)
    ok = np.isfinite(y)
    n = int(ok.sum())
    if y.size < MIN_FIT_STEPS:
        return DecayFit(None, None, n, f"sequence of {y.size} steps is too short to fit a rate "
                                       f"(needs >= {MIN_FIT_STEPS})")
    if n < MIN_FIT_STEPS:
        return DecayFit(None, None, n, f"only {n} finite points (gradient underflowed or became non-finite)")
    k, y = k[ok], y[ok]
    slope, intercept = np.polyfit(k, y, 1)
    resid = y - (slope * k + intercept)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    flat = ss_tot <= (1e-12 * max(1.0, float(np.abs(y).max()))) ** 2 * y.size  # flat up to rounding
    r2 = 1.0 if flat else 1.0 - float((resid**2).sum()) / ss_tot
    return DecayFit(float(slope), r2, n)


@dataclass(frozen=True)
class Horizon:
    steps: int  # first number of steps back where the gradient fell below factor * its value at the loss
    censored: bool  # True: it never fell below within the sequence; steps = T
    factor: float
    extrapolated: float | None  # log10(factor) / rate for a decaying gradient

    def to_dict(self) -> dict:
        return {"horizon_steps": self.steps, "horizon_censored": self.censored, "horizon_factor": self.factor,
                "horizon_extrapolated": finite_or_none(self.extrapolated)}


def horizon(log10_norm: np.ndarray, factor: float, rate: float | None) -> Horizon:
    """See the module docstring. ``log10_norm`` is indexed by t (the loss at t = T-1)."""
    y = np.asarray(log10_norm, dtype=np.float64)[::-1]
    T = y.size
    drop = y - y[0]
    below = np.nonzero(~(drop >= math.log10(factor)))[0]  # NaN (non-finite) counts as fallen
    extrap = math.log10(factor) / rate if rate is not None and rate < 0 else None
    if below.size:
        return Horizon(int(below[0]), False, factor, extrap)
    return Horizon(T, True, factor, extrap)


@dataclass(frozen=True)
class GradientFlow:
    """Gradient-flow measurements of one layer."""

    layer: int
    grad_norm_per_sequence: np.ndarray = field(repr=False)  # (T, B) ||dL/dh_t|| from BPTT
    log10_last_step: np.ndarray = field(repr=False)  # (T, B) log10 ||dl/dh_t|| for the last-step loss
    log10_jacobian_product_norm: np.ndarray = field(repr=False)  # (T, n) log10 ||d s_{T-1}/d s_t||_2, sampled
    log10_step_jacobian_norm: np.ndarray = field(repr=False)  # (T, n) log10 ||J_t||_2, sampled
    jacobian_batch: tuple[int, ...]
    fit: DecayFit
    jacobian_fit: DecayFit
    horizon: Horizon
    horizon_per_sequence: np.ndarray = field(repr=False)  # (B,)
    norm_method: str  # how ||.||_2 of the products was computed
    lengths: np.ndarray | None = field(default=None, repr=False)  # (B,): sequences of their own lengths, whose
    # per-step arrays are end-aligned (row -1-k is k steps back from each sequence's own last step; NaN before
    # its first)

    @property
    def ragged(self) -> bool:
        return self.lengths is not None

    @property
    def grad_norm(self) -> np.ndarray:
        """Median over the batch of ||dL/dh_t||, (T,) (over the sequences that have step t, when they differ in
        length: then t counts back from each sequence's own end)."""
        return batch_median(self.grad_norm_per_sequence, self.ragged)

    @property
    def median_last_step(self) -> np.ndarray:
        """Median over the batch of log10 ||dl/dh_t|| for the last-step loss, (T,)."""
        return batch_median(self.log10_last_step, self.ragged)

    @property
    def decay_per_step(self) -> float | None:
        return self.fit.rate

    def to_dict(self) -> dict:
        g = self.grad_norm_per_sequence
        ragged = self.ragged
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN step: null
            return {
                "layer": self.layer,
                "grad_norm": list_or_none(self.grad_norm),
                "grad_norm_mean": list_or_none(np.nanmean(g, axis=1) if ragged else g.mean(axis=1)),
                "grad_norm_min": list_or_none(np.nanmin(g, axis=1) if ragged else g.min(axis=1)),
                "grad_norm_max": list_or_none(np.nanmax(g, axis=1) if ragged else g.max(axis=1)),
                "log10_last_step_grad_norm": list_or_none(batch_median(self.log10_last_step, ragged)),
                "log10_jacobian_product_norm": list_or_none(batch_median(self.log10_jacobian_product_norm, ragged)),
                "log10_step_jacobian_norm": list_or_none(batch_median(self.log10_step_jacobian_norm, ragged)),
                "jacobian_sampled_sequences": list(self.jacobian_batch),
                "jacobian_norm_method": self.norm_method,
                "decay_per_step": finite_or_none(self.fit.rate),
                "decay_fit_r2": finite_or_none(self.fit.r2),
                "decay_fit_note": self.fit.reason,
                "jacobian_decay_per_step": finite_or_none(self.jacobian_fit.rate),
                **self.horizon.to_dict(),
                "horizon_per_sequence": [int(h) for h in self.horizon_per_sequence],
                "sequence_lengths": None if self.lengths is None else [int(n) for n in self.lengths],
            }


def last_step_chain(lt: LayerTrace, start: np.ndarray) -> np.ndarray:
    """``log10 ||dl/dh_t||`` (T, B) for ``l = <start, s_last>`` carried back by VJPs, renormalised each step.

    ``s_last`` is each sequence's own last step (T-1, or ``length - 1`` with per-sequence lengths: the chain of
    a sequence starts there, and its steps past its length are NaN)."""
    T = lt.h.shape[0]
    H = lt.hidden_size
    B = start.shape[0]
    last = None if lt.lengths is None else lt.lengths - 1
    out = np.empty((T, B))
    g = np.array(start, dtype=np.float64)
    log_scale = np.zeros(B)
    for steps, jac in jacobian_blocks(lt, None, reverse=True):  # all B rows
        for a in range(len(steps) - 1, -1, -1):
            t = int(steps[a])
            started = None if last is None else t <= last  # (B,): the sequences whose chain has begun
            with np.errstate(divide="ignore", invalid="ignore"):
                out[t] = (log_scale + np.log(np.linalg.norm(g[:, :H], axis=1))) / math.log(10)
            if started is not None:
                out[t, ~started] = np.nan
            if t == 0:
                break
            g_back = jac[a].vjp(g)  # dl/ds_{t-1}
            f = np.linalg.norm(g_back, axis=1)
            if started is not None:  # the others keep their start vector until their own last step
                f = np.where(started, f, 1.0)
                g_back[~started] = g[~started]
            g = g_back
            with np.errstate(divide="ignore"):
                log_scale += np.log(f)
            g /= np.where(f > 0, f, 1.0)[:, None]
    return out


def end_aligned(a: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """A (T, B) per-step array with each sequence moved to end at the last row: (max(lengths), B), NaN before a
    sequence's first step. Then row -1-k is k steps back from every sequence's own last step."""
    T_eff = int(lengths.max())
    k = np.arange(T_eff)[:, None] - (T_eff - lengths[None, :])  # the sequence's own step at each row
    out = np.take_along_axis(a, np.clip(k, 0, a.shape[0] - 1), axis=0).astype(np.float64)
    out[k < 0] = np.nan
    return out


def per_sequence_horizon(log10_last: np.ndarray, factor: float) -> np.ndarray:
    """The horizon of each sequence (B,)."""
    return np.array([horizon(log10_last[:, b], factor, None).steps for b in range(log10_last.shape[1])], dtype=int)
