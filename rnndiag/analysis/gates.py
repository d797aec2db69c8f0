"""Gate statistics of LSTM and GRU layers, and hidden-state saturation.

Saturation follows Karpathy, Johnson & Fei-Fei (2015): a sigmoid gate is left-saturated when its activation is
below 0.1 and right-saturated above 0.9; the fraction of time each unit spends there is reported per unit. A tanh
activation (LSTM's g, GRU's n, a tanh RNN's h) counts as saturated when |value| > 0.9.

A forget gate (LSTM f) or update gate (GRU z, which keeps ``z * h_{t-1}``) with mean value ``f`` keeps a memory
for about ``-1 / ln f`` steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..cells import cell_module, is_gated, nonlinearity
from ..engine import LayerTrace, padding_mask
from ..jsonsafe import finite_or_none, list_or_none

LEFT, RIGHT, TANH_SAT = 0.1, 0.9, 0.9
BINS = 20


@dataclass(frozen=True)
class GateStat:
    name: str
    kind: str  # "sigmoid" or "tanh"
    mean: float
    hist_counts: np.ndarray = field(repr=False)  # (BINS,)
    hist_edges: np.ndarray = field(repr=False)  # (BINS + 1,)
    left_saturated: float  # fraction of (t, b, unit) values < 0.1 (sigmoid) / < -0.9 (tanh)
    right_saturated: float  # >= 0.9 (the bin edge; exactly 0.9 has probability zero)
    unit_left: np.ndarray = field(repr=False)  # (H,) fraction of time per unit
    unit_right: np.ndarray = field(repr=False)  # (H,)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "mean": self.mean,
            "left_saturated": self.left_saturated,
            "right_saturated": self.right_saturated,
            "units_mostly_left_saturated": int((self.unit_left > 0.5).sum()),
            "units_mostly_right_saturated": int((self.unit_right > 0.5).sum()),
            "hist_counts": [int(c) for c in self.hist_counts],
            "hist_edges": list_or_none(self.hist_edges),
        }


@dataclass(frozen=True)
class GateStats:
    layer: int
    gates: dict[str, GateStat]
    memory_gate: str | None  # "f" (LSTM) or "z" (GRU)
    memory_gate_mean: float | None
    memory_timescale: float | None  # -1 / ln(mean), steps
    unit_timescales: np.ndarray | None = field(repr=False)  # (H,) -1/ln(mean_t f_j)
    hidden_saturated: float | None = None  # fraction of |h| > 0.9 (tanh outputs)

    def to_dict(self) -> dict:
        d = {"layer": self.layer, "gates": {k: v.to_dict() for k, v in self.gates.items()},
             "hidden_saturated": finite_or_none(self.hidden_saturated)}
        if self.memory_gate is not None:
            ts = self.unit_timescales
            d.update(memory_gate=self.memory_gate, memory_gate_mean=finite_or_none(self.memory_gate_mean),
                     memory_timescale_steps=finite_or_none(self.memory_timescale),
                     unit_timescale_median=finite_or_none(np.median(ts)))
        return d


def _timescale(f):
    f = np.clip(np.asarray(f, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore"):
        return np.where(f >= 1.0, np.inf, np.where(f <= 0.0, 0.0, -1.0 / np.log(np.where(f > 0, f, 0.5))))


def _stat(name: str, values: np.ndarray, kind: str) -> GateStat:
    """``values`` (T, B, H), in one pass: each value's histogram bin, offset by its unit, so that one ``bincount``
    gives every unit's histogram; the saturation fractions are sums of its outer bins (the thresholds 0.1 / 0.9
    on [0, 1] and -0.9 / 0.9 on [-1, 1] are bin edges), the overall histogram the sum over units."""
    T, B, H = values.shape
    low, high, left, right = (0.0, 1.0, LEFT, RIGHT) if kind == "sigmoid" else (-1.0, 1.0, -TANH_SAT, TANH_SAT)
    per_bin = (high - low) / BINS
    bins = np.empty(values.shape, np.intp)  # (value - low) / per_bin, truncated (it is >= 0): the bin
    np.multiply(values - low if low else values, BINS / (high - low), out=bins, casting="unsafe")
    np.clip(bins, 0, BINS - 1, out=bins)  # the top edge belongs to the last bin, as in np.histogram
    bins += np.arange(H) * BINS
    unit_counts = np.bincount(bins.ravel(), minlength=H * BINS).reshape(H, BINS)  # (H, BINS)
    n_left, n_right = round((left - low) / per_bin), round((high - right) / per_bin)
    unit_left = unit_counts[:, :n_left].sum(axis=1) / (T * B)
    unit_right = unit_counts[:, BINS - n_right :].sum(axis=1) / (T * B)
    return GateStat(name, kind, float(values.mean()), unit_counts.sum(axis=0), np.linspace(low, high, BINS + 1),
                    float(unit_left.mean()), float(unit_right.mean()), unit_left, unit_right)


def gate_stats(lt: LayerTrace, t_range: slice = slice(None)) -> GateStats:
    """Gate activation statistics of one layer (over the steps ``t_range``; only each sequence's own steps when
    the trace has per-sequence lengths)."""
    H = lt.cell_size
    h = lt.h[t_range]
    valid = None
    if lt.lengths is not None:  # the steps of every sequence, as one (N, 1, .) block: padding is not data
        valid = ~padding_mask(lt.lengths, lt.h.shape[0])[t_range]
        h = h[valid][:, None, :]
    # |h| near 1 saturates a bounded (tanh) output; a relu output has no such bound
    hidden_sat = float((np.abs(h) > TANH_SAT).mean()) if nonlinearity(lt.cell) == "tanh" else None
    if not is_gated(lt.cell):
        return GateStats(lt.layer, {}, None, None, None, None, hidden_sat)
    gates = lt.arrays["gates"][t_range]
    if valid is not None:
        gates = gates[valid][:, None, :]
    mod = cell_module(lt.cell)
    names = mod.GATE_NAMES
    stats = {name: _stat(name, gates[:, :, k * H : (k + 1) * H], "tanh" if name == mod.CANDIDATE_GATE else "sigmoid")
             for k, name in enumerate(names)}
    mem = mod.MEMORY_GATE
    k = names.index(mem)
    unit_mean = gates[:, :, k * H : (k + 1) * H].mean(axis=(0, 1))
    mean = float(unit_mean.mean())
    scale = float(_timescale(mean))
    return GateStats(lt.layer, stats, mem, mean, scale if math.isfinite(scale) else math.inf,
                     _timescale(unit_mean), hidden_sat)
