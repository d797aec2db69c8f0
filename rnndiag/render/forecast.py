"""Table, headline and figures of a trainability forecast (read the :class:`~rnndiag.forecast.Forecast`, never
recompute)."""

from __future__ import annotations

from functools import partial

import numpy as np
from matplotlib.figure import Figure

from ..forecast import UNDECIDED
from . import fmt_num
from .compare import Headline, Table, forecast_call
from .figures import COLORS, FigureBuilder, finish_axes, new_axes, plot_curve


def forecast_headline(f) -> Headline:
    text = (f"forecast: {forecast_call(f)} -- reaching loss {f.target_loss:.4g} on {f.task} (T = {f.seq_len}) "
            f"within {f.budget.steps} steps")
    reasons = list(f.reasons)
    if f.suggestion:
        reasons.insert(0, f.suggestion)
    reused = "; the diagnosis already made at these weights was reused, its time not counted" \
        if f.measured.get("diagnosis_reused") else ""
    reasons.append(f"cost: {f.seconds:.2f} s = {f.cost_fraction:.3f} of the budget's compute ({f.budget.steps} steps "
                   f"x {f.step_seconds * 1e3:.1f} ms per rnndiag training step, measured in the probe{reused}); "
                   f"looked at: {f.looked_at}")
    return Headline(text, reasons)


def forecast_table(f) -> Table:
    """One row per feature: its value, what it is, and its term in the log-odds."""
    rows = [[name, fmt_num(value), f"{f.contributions.get(name, 0.0):+.3f}"] for name, value in f.features.items()]
    return Table(f"forecast evidence (model '{f.method}'; undecided between {UNDECIDED[0]} and {UNDECIDED[1]})",
                 ["feature", "value", "log-odds term"], rows)


def forecast_figures(f) -> dict[str, FigureBuilder]:
    figs = {"forecast_evidence": partial(_contributions_figure, f)}
    if f.measured.get("probe_curve"):
        figs["probe_loss"] = partial(_probe_figure, f)
    return figs


def _contributions_figure(f) -> Figure:
    fig, ax = new_axes(height=3.2)
    names = list(f.contributions)
    values = [f.contributions[n] for n in names]
    ax.barh(names, values, color=[COLORS[2] if v > 0 else COLORS[1] for v in values])
    ax.axvline(0, color="grey", lw=0.8)
    finish_axes(ax, xlabel="term in the log-odds of training (positive: for)",
                title=f"Forecast evidence: p = {f.probability:.2f} ({f.method})")
    return fig


def _probe_figure(f) -> Figure:
    fig, ax = new_axes()
    curve = np.array([[s, np.nan if v is None else v] for s, v in f.measured["probe_curve"]], dtype=float)
    plot_curve(ax, curve[:, 0], curve[:, 1], color=COLORS[0], lw=1.2, label="probe training loss (rnndiag)")
    ax.axhline(f.baseline, color="grey", ls=":", lw=1, label=f"trivial baseline {f.baseline:.3g}")
    ax.axhline(f.target_loss, color=COLORS[2], ls="--", lw=1, label=f"target {f.target_loss:.3g}")
    m = f.measured
    if m.get("probe_trend") is not None and m.get("probe_end_loss"):
        trend = min(max(m["probe_trend"], -3.0), 0.5)
        xs = np.geomspace(max(1, f.probe_steps), f.budget.steps, 30)
        ax.plot(xs, m["probe_end_loss"] * (xs / f.probe_steps) ** trend, color=COLORS[0], ls="--", lw=1,
                label="extrapolated to the budget")
    ax.set_xscale("log")
    ax.set_yscale("log")
    finish_axes(ax, xlabel="training step", ylabel="loss", title="Probe training and its extrapolation", legend=7)
    return fig
