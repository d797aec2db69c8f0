"""Gradient clipping strategies with the exact semantics of the references, and their statistics.

==============  ===========================================================================================
strategy        what it does to the gradients ``g`` (a dict of arrays)
==============  ===========================================================================================
``global_norm`` ``torch.nn.utils.clip_grad_norm_``: ``total = sqrt(sum ||g_k||^2)``; every ``g_k`` is multiplied by
                ``min(1, max_norm / (total + 1e-6))``; returns the pre-clip ``total``
``per_param``   Keras ``clipnorm`` / ``tf.clip_by_norm`` on each tensor: ``g_k * c / max(||g_k||, c)``
``value``       ``torch.nn.utils.clip_grad_value_`` / Keras ``clipvalue``: ``clip(g_k, -v, v)`` elementwise
                (the seed tutorial's ``np.clip(dparam, -5, 5)``); turns the gradient's direction
``autoclip``    AutoClip (Seetharaman et al. 2020): global-norm clipping at the ``p``-th percentile of the
                history of pre-clip global norms (the current one included)
``none``        nothing
==============  ===========================================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .norms import global_norm

STRATEGIES = ("global_norm", "per_param", "value", "autoclip", "none")


@dataclass
class Clipper:
    """A clipping strategy with its state (AutoClip's history). ``threshold`` is max_norm, clipnorm, clipvalue or
    the percentile p (0 < p <= 100) for ``autoclip``."""

    strategy: str = "global_norm"
    threshold: float | None = 1.0
    history: list[float] = field(default_factory=list, repr=False)

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown clipping strategy {self.strategy!r}: choose one of {', '.join(STRATEGIES)}")
        if self.strategy == "none":
            self.threshold = None
            return
        t = self.threshold
        if t is None or isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ValueError(f"clipping threshold for {self.strategy} must be a positive number; got {t!r}")
        if self.strategy == "autoclip" and t > 100:
            raise ValueError(f"autoclip's threshold is a percentile in (0, 100]; got {t}")

    def __call__(self, grads: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float, bool]:
        """(clipped gradients, pre-clip global norm, whether clipping changed anything). The dict is new; its arrays
        are new unless nothing was clipped (strategy ``none``, or a non-finite norm)."""
        total = global_norm(grads)
        s = self.strategy
        if s == "none" or not math.isfinite(total):
            return dict(grads), total, False
        if s in ("global_norm", "autoclip"):
            if s == "autoclip":
                self.history.append(total)
                max_norm = float(np.percentile(self.history, self.threshold))
            else:
                max_norm = float(self.threshold)
            coef = min(1.0, (1.0 / (total + 1e-6)) * max_norm)  # torch: reciprocal(total + 1e-6) * max_norm
            return {k: g * coef for k, g in grads.items()}, total, coef < 1.0
        if s == "per_param":
            c = float(self.threshold)
            out, fired = {}, False
            for k, g in grads.items():
                n = global_norm({k: g})
                fired |= n > c
                out[k] = g * (c / max(n, c))
            return out, total, fired
        v = float(self.threshold)
        out = {k: np.clip(g, -v, v) for k, g in grads.items()}
        return out, total, any(bool((np.abs(g) > v).any()) for g in grads.values())

    def state(self) -> dict:
        return {"strategy": self.strategy, "threshold": self.threshold, "history": list(self.history)}


def cosine(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Cosine between two gradients (dicts with the same keys), 1.0 when either is zero."""
    dot = sum(float(np.vdot(a[k].astype(np.float64), b[k].astype(np.float64))) for k in a)
    na, nb = global_norm(a), global_norm(b)
    return dot / (na * nb) if na > 0 and nb > 0 else 1.0


@dataclass(frozen=True)
class ClipStats:
    """How a strategy behaved over a run."""

    strategy: str
    threshold: float | None
    fraction_clipped: float
    mean_cosine: float | None  # between clipped and unclipped gradient, over clipped iterations (None: never)
    min_cosine: float | None
    norms: np.ndarray = field(repr=False)  # pre-clip global norm per iteration
    suggested_threshold: float | None

    def to_dict(self) -> dict:
        finite = self.norms[np.isfinite(self.norms)]
        return {
            "strategy": self.strategy,
            "threshold": self.threshold,
            "fraction_clipped": self.fraction_clipped,
            "mean_cosine_clipped_vs_unclipped": self.mean_cosine,
            "min_cosine_clipped_vs_unclipped": self.min_cosine,
            "norm_percentiles": {str(p): float(np.percentile(finite, p)) for p in (10, 50, 90, 99)} if finite.size
            else None,
            "suggested_threshold": self.suggested_threshold,
        }


def suggest_threshold(norms, percentile: float = 90.0) -> float | None:
    """A global-norm threshold from observed pre-clip norms: their ``percentile``-th percentile (AutoClip's rule,
    with 90 by default so that only the largest tenth of the updates -- the spikes -- are scaled down)."""
    norms = np.asarray(norms, dtype=np.float64)
    norms = norms[np.isfinite(norms) & (norms > 0)]
    return float(np.percentile(norms, percentile)) if norms.size else None


def clip_stats(strategy: str, threshold, norms, fired, cosines) -> ClipStats:
    norms = np.asarray(norms, dtype=np.float64)
    fired = np.asarray(fired, dtype=bool)
    if fired.any():
        cos = np.asarray(cosines, dtype=np.float64)[fired]
        mean_cos, min_cos = float(cos.mean()), float(cos.min())
    else:  # never clipped: no direction change to measure (not the same as "clipped without turning")
        mean_cos = min_cos = None
    return ClipStats(strategy, threshold, float(fired.mean()) if fired.size else 0.0, mean_cos, min_cos, norms,
                     suggest_threshold(norms))

