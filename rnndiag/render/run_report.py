"""Figures, HTML page and terminal summary of ``rnndiag report RUN_DIR``: a watched training run, read from the
metrics of :func:`rnndiag.run.run_metrics` (never recomputed).

Per recurrent module, layer and direction (a *series*): a heatmap of log10 ||dL/dh_t|| with one equal-height band
per capture (labelled by its iteration: captures are unevenly spaced) and the time steps across, aligned at the
last step (where the loss is; sequences of other lengths are padded on the left). Per module: the horizon, the
decay rate and top Lyapunov exponent, and what the memory gate learned, over the captured iterations. For the
run: the global gradient norm at every iteration (clipping, skipped steps, non-finite gradients marked) and the
verdict at each capture.

The metrics are JSON (null for what has no finite value) and may come from a run still being written, or from an
older or damaged one: every figure draws what it can and returns None when there is nothing of its kind.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import numbers
import re
from dataclasses import dataclass
from functools import partial

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from rich.console import Console
from rich.text import Text

from .._version import __version__
from . import fmt_num
from .figures import COLORS, MAX_POINTS, FigureBuilder, Tally, drawable, finish_axes, new_axes, plot_curve, thin
from .html import _env, figure_cells, flatten_numbers
from .terminal import VERDICT_STYLE, Column, print_columns

# The report's CSS colours of the verdicts (report.html: .vanishing, .exploding, .healthy).
VERDICT_COLORS = {"vanishing": "#1f5fa8", "exploding": "#b3261e", "healthy": "#2e7d32"}
OTHER_COLOR = "#9e9e9e"  # a verdict this version does not know
MISSING_COLOR = "#e6e6e6"  # no value: a step the capture does not have (padding), or not finite
MAX_TICKS = 24  # at most this many labelled capture bands / columns per axis
MAX_TERMINAL_ROWS = 40  # captures listed in the terminal (all of them are in the HTML report)
EMBED_JSON_LIMIT = 2_000_000  # metrics.json larger than this (characters) is not repeated inside report.html
RUN_TABLE_DROP_ORDER = ("top Lyapunov", "global grad norm")


@dataclass(frozen=True)
class RunFigure:
    """One figure of the run report: its name (the PNG's file stem), how to draw it, its title and caption."""

    name: str
    build: FigureBuilder
    title: str
    caption: str


# ---------------------------------------------------------------------------------------------------------------
# Reading the metrics


def _num(v) -> float:
    """A JSON value as a float; NaN for null, booleans and anything that is not a number."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return math.nan
    return float(v)


def _list(values) -> list:
    return values if isinstance(values, list) else []


def _floats(values) -> np.ndarray:
    return np.array([_num(v) for v in _list(values)], dtype=float)


def _aligned(*lists) -> list[list]:
    """The lists cut to the shortest (a series' lists have one entry per capture)."""
    lists = [_list(x) for x in lists]
    n = min((len(x) for x in lists), default=0)
    return [x[:n] for x in lists]


def _fit(values, n: int) -> list:
    """``values`` (a list, or missing) as exactly ``n`` entries: cut, or padded with None."""
    values = _list(values)
    return values[:n] + [None] * (n - len(values))


def name_part(text: str) -> str:
    """A module name as part of a figure (file) name: letters, digits, ``_`` and ``-`` only.

    >>> name_part("encoder.rnn#1"), name_part("<b>x</b>"), name_part("...")
    ('encoder_rnn_1', 'b_x_b', 'module')
    """
    return re.sub(r"[^A-Za-z0-9_-]+", "_", str(text)).strip("_") or "module"


def is_reverse(s: dict) -> bool:
    return s.get("direction") in ("reverse", 1)


def series_tag(s: dict) -> str:
    """``rnn layer 0``, ``enc layer 1 reverse``."""
    return f"{s.get('module', '?')} layer {s.get('layer', '?')}" + (" reverse" if is_reverse(s) else "")


def _short_tag(s: dict) -> str:
    return f"L{s.get('layer', '?')}{'r' if is_reverse(s) else ''}"


def _series_color(s: dict) -> str:
    layer = s.get("layer") if isinstance(s.get("layer"), int) else 0
    return COLORS[(2 * layer + is_reverse(s)) % len(COLORS)]


def modules_of(metrics: dict) -> list[str]:
    """The modules the report shows, in the run header's order, then any other that has a capture or a series (a
    module called twice in an iteration is ``name#1``)."""
    names = [m.get("name") for m in (metrics.get("run") or {}).get("modules") or [] if isinstance(m, dict)]
    seen = [*(c.get("module") for c in metrics.get("captures") or []),
            *(s.get("module") for s in metrics.get("series") or [])]
    shown = [n for n in names if n in seen]
    return shown + list(dict.fromkeys(n for n in seen if n not in shown and n is not None))


def _module_series(metrics: dict, module: str) -> list[dict]:
    return [s for s in metrics.get("series") or [] if s.get("module") == module]


def _seq_len_by_iteration(series: list[dict]) -> dict:
    out = {}
    for s in series:
        for it, t in zip(*_aligned(s.get("iterations"), s.get("seq_len"))):
            out.setdefault(it, t)
    return out


def _tick_positions(n: int) -> list[int]:
    """At most about MAX_TICKS of ``range(n)``, the last always among them."""
    step = max(1, math.ceil(n / MAX_TICKS))
    ticks = list(range(0, n, step))
    if n and ticks[-1] != n - 1:
        ticks.append(n - 1)
    return ticks


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Figures


def heatmap_figure(s: dict) -> Figure | None:
    """log10 ||dL/dh_t|| of one series: a band per capture (up), time steps across, aligned at the last step."""
    rows, its = _aligned(s.get("log10_grad_norm"), s.get("iterations"))
    n = len(rows)
    verdicts, horizons, censored = (_fit(s.get(k), n) for k in ("verdict", "horizon_steps", "horizon_censored"))
    if n == 0:
        return None
    width = max(1, *(len(r) if isinstance(r, list) else 0 for r in rows))
    heat = np.full((n, width), np.nan)
    tally = Tally()
    for i, r in enumerate(rows):
        vals = tally(_floats(r if isinstance(r, list) else []))
        heat[i, width - vals.size:] = vals
    fig, ax = new_axes(7.0, min(8.0, 3.4 + 0.12 * n))
    finite = heat[~np.isnan(heat)]
    lo, hi = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    cmap = colormaps["viridis"].with_extremes(bad=MISSING_COLOR)
    im = ax.imshow(heat, aspect="auto", origin="lower", cmap=cmap, norm=Normalize(lo, hi), interpolation="nearest",
                   extent=(-width + 0.5, 0.5, -0.5, n - 0.5))
    hz = _floats(horizons)
    shown = np.isfinite(hz) & (hz <= width) & ~np.array([c is True for c in censored], dtype=bool)
    if shown.any():  # where the gradient has fallen below the horizon factor
        ax.plot(-hz[shown], np.flatnonzero(shown), ls="none", marker="|", ms=9, mew=2, color="white")
    ticks = _tick_positions(n)
    ax.set_yticks(ticks)
    ax.set_yticklabels([str(its[i]) for i in ticks], fontsize=7)
    for label, i in zip(ax.get_yticklabels(), ticks):
        label.set_color(VERDICT_COLORS.get(verdicts[i], "black"))
    order = "reverse direction, in its own order (its step k is time T-1-k); " if is_reverse(s) else ""
    ax.set_xlabel(f"time step relative to the last step (0: the last step, where the loss is)\n{order}rows aligned "
                  "at the end (shorter ones padded grey on the left); white ticks: the horizon", fontsize=8)
    ax.set_ylabel("captured iteration")
    ax.set_title(f"{series_tag(s)}: log10 ||dL/dh_t|| over training")
    fig.colorbar(im, ax=ax, label="log10 ||dL/dh_t|| (batch median)")
    tally.note(ax)
    return fig


def horizon_figure(series: list[dict], module: str) -> Figure | None:
    """The horizon of each layer of a module over the captures; hollow: censored (never fell below the factor
    within the sequence, so at least this); the sequence length drawn."""
    if not any(s.get("iterations") for s in series):
        return None
    fig, ax = new_axes()
    tally = Tally()
    for s in series:
        its, hz = _aligned(s.get("iterations"), s.get("horizon_steps"))
        cens = _fit(s.get("horizon_censored"), len(its))
        x, y = _floats(its), tally(_floats(hz))
        c = np.array([v is True for v in cens], dtype=bool)
        color, ls = _series_color(s), "--" if is_reverse(s) else "-"
        ax.plot(x, y, ls=ls, lw=1.2, color=color, label=s.get("name") or series_tag(s))
        ax.plot(x[~c], y[~c], ls="none", marker="o", ms=4, color=color)
        ax.plot(x[c], y[c], ls="none", marker="o", ms=5, mfc="white", mec=color, mew=1.3)
    seq = _seq_len_by_iteration(series)
    if seq:
        xs = sorted(seq, key=_num)
        ax.plot(_floats(xs), tally(_floats([seq[i] for i in xs])), color="grey", ls=":", marker=".", lw=1,
                label="sequence length")
    ax.plot([], [], ls="none", marker="o", mfc="white", mec="grey", label="censored (at least this)")
    ax.set_ylim(bottom=0)
    tally.note(ax)
    finish_axes(ax, xlabel="iteration", ylabel="gradient horizon (steps)", title=f"{module}: gradient horizon",
                legend=7)
    return fig


def decay_lyapunov_figure(series: list[dict], module: str) -> Figure | None:
    """Decay rate (log10 per step) and top Lyapunov exponent (nats per step) of each layer over the captures."""
    if not any(s.get("iterations") for s in series):
        return None
    fig = _new_figure(7.0, 5.0)
    axes = fig.subplots(2, 1, sharex=True)
    for ax, key, ylabel in ((axes[0], "decay_per_step", "decay (log10 per step)"),
                            (axes[1], "lyapunov_top", "top Lyapunov (nats/step)")):
        tally = Tally()
        for s in series:
            its, vals = _aligned(s.get("iterations"), s.get(key))
            plot_curve(ax, _floats(its), tally(_floats(vals)), marker="o", ms=3, lw=1.2, color=_series_color(s),
                       ls="--" if is_reverse(s) else "-", label=s.get("name") or series_tag(s))
        ax.axhline(0.0, color="grey", lw=0.8, ls=":")
        tally.note(ax)
        finish_axes(ax, xlabel="iteration" if ax is axes[1] else "", ylabel=ylabel, legend=7)
    axes[0].set_title(f"{module}: decay rate and top Lyapunov exponent")
    return fig


def memory_figure(series: list[dict], module: str) -> Figure | None:
    """What the memory gate (LSTM f, GRU z) learned: its mean and the timescale it implies, over the captures;
    None for a module with no gated series."""
    gated = [s for s in series if s.get("memory_gate") and s.get("iterations")]
    if not gated:
        return None
    fig = _new_figure(7.0, 5.0)
    top, bottom = fig.subplots(2, 1, sharex=True)
    t_mean, t_scale = Tally(), Tally()
    for s in gated:
        its = _list(s.get("iterations"))
        mean, scale = _fit(s.get("memory_gate_mean"), len(its)), _fit(s.get("memory_timescale_steps"), len(its))
        kw = {"marker": "o", "ms": 3, "lw": 1.2, "color": _series_color(s), "ls": "--" if is_reverse(s) else "-",
              "label": f"{s.get('name') or series_tag(s)} ({s.get('memory_gate')} gate)"}
        plot_curve(top, _floats(its), t_mean(_floats(mean)), **kw)
        plot_curve(bottom, _floats(its), t_scale(_floats(scale), positive=True), **kw)
    seq = _seq_len_by_iteration(gated)
    ref = None
    if seq:
        xs = sorted(seq, key=_num)
        y = t_scale(_floats([seq[i] for i in xs]), positive=True)
        bottom.plot(_floats(xs), y, color="grey", ls=":", marker=".", lw=1, label="sequence length")
        ref = float(np.nanmax(y)) if np.isfinite(y).any() else None
    top.set_ylim(-0.02, 1.02)
    t_mean.note(top)
    t_scale.note(bottom)
    finish_axes(top, xlabel="", ylabel="memory gate mean", legend=7,
                title=f"{module}: what the memory gate learned")
    finish_axes(bottom, xlabel="iteration", ylabel="memory timescale (steps)", legend=7,
                log_y=t_scale.log_range(ref))
    return fig


def global_grad_norm_figure(iterations: dict, nonfinite: list[dict]) -> Figure | None:
    """The recurrent modules' global gradient norm at every logged iteration, log y: before clipping, as stepped
    with (when an optimizer was watched), clipped, skipped (GradScaler) and non-finite iterations marked, and the
    captured ones ticked along the bottom."""
    its, total = _aligned(iterations.get("iteration"), iterations.get("grad_norm_total"))
    if not its:
        return None
    fig, ax = new_axes()
    tally = Tally()
    x = _floats(its)
    y = tally(_floats(total), positive=True)
    at_step = iterations.get("grad_norm_at_step")
    if isinstance(at_step, list):
        stepped = Tally()  # no step norm at a step the GradScaler skipped: not a value left out
        y2 = stepped(_floats([*at_step[:len(its)], *[None] * (len(its) - len(at_step))]), positive=True)
        skipped = set(iterations.get("skipped") or [])
        tally.omitted += sum(1 for i, v in zip(its, y2) if np.isnan(v) and i not in skipped)
        tally.total += y2.size
        tally.lo, tally.hi = min(tally.lo, stepped.lo), max(tally.hi, stepped.hi)
        t, y1, y2 = thin(x, y, y2)
        plot_curve(ax, t, y1, lw=0.9, color=COLORS[1], label="before clipping")
        plot_curve(ax, t, y2, lw=0.9, ls="--", color=COLORS[0], label="as the optimizer stepped (after clipping)")
    else:
        t, y1 = thin(x, y)
        plot_curve(ax, t, y1, lw=0.9, color=COLORS[0], label="global gradient norm")
    _mark_iterations(ax, iterations, dict(zip(its, y)), nonfinite)
    tally.note(ax)
    finish_axes(ax, xlabel="iteration", ylabel="global gradient norm (recurrent modules)",
                title="Global gradient norm over training", legend=7, log_y=tally.log_range())
    return fig


def _mark_iterations(ax, iterations: dict, norm_at: dict, nonfinite: list[dict]) -> None:
    """Clipped iterations on the curve, skipped ones (GradScaler) and non-finite ones as vertical lines, captured
    ones as ticks along the bottom."""
    clipped = [i for i in iterations.get("clipped") or [] if np.isfinite(norm_at.get(i, np.nan))]
    if clipped:
        shown = clipped[:: max(1, math.ceil(len(clipped) / MAX_POINTS))]
        ax.plot(_floats(shown), [norm_at[i] for i in shown], ls="none", marker="v", ms=3, color=COLORS[1],
                label=f"clipped ({len(iterations.get('clipped') or [])} iterations)")
    skipped = _floats(iterations.get("skipped"))
    skipped = skipped[np.isfinite(skipped)]
    for k, i in enumerate(skipped[:: max(1, math.ceil(skipped.size / 200))]):
        ax.axvline(i, color=COLORS[4], lw=0.8, ls="--", alpha=0.7,
                   label=f"step skipped by the GradScaler ({skipped.size})" if k == 0 else None)
    bad = _floats([e.get("iteration") for e in nonfinite if isinstance(e, dict)])
    for k, i in enumerate(bad[np.isfinite(bad)]):
        ax.axvline(i, color="black", lw=1.2, label="non-finite gradient" if k == 0 else None)
    captured = _floats(iterations.get("captured"))
    captured, _ = drawable(captured)
    captured = captured[np.isfinite(captured)]
    if captured.size:
        ax.plot(captured, np.full(captured.size, 0.02), ls="none", marker="|", ms=7, color="grey",
                transform=ax.get_xaxis_transform(), label="captured")


def verdict_timeline_figure(metrics: dict) -> Figure | None:
    """The verdict at each capture: a row per module (its overall verdict) and, for a module of several layers or
    directions, a row per series; a column per captured iteration (equal widths)."""
    rows: list[tuple[str, dict]] = []
    for module in modules_of(metrics):
        caps = [c for c in metrics.get("captures") or [] if c.get("module") == module]
        rows.append((module, {c.get("iteration"): c.get("verdict") for c in caps}))
        series = _module_series(metrics, module)
        if len(series) > 1:
            rows += [(f"{module} {_short_tag(s)}", dict(zip(*_aligned(s.get("iterations"), s.get("verdict")))))
                     for s in series]
    cols = sorted({i for _, r in rows for i in r if i is not None}, key=_num)
    if not cols:
        return None
    kinds = list(VERDICT_COLORS)
    codes = np.full((len(rows), len(cols)), np.nan)
    for r, (_, by_it) in enumerate(rows):
        for c, it in enumerate(cols):
            if it in by_it:
                codes[r, c] = kinds.index(by_it[it]) if by_it[it] in kinds else len(kinds)
    fig, ax = new_axes(7.0, min(9.0, 1.6 + 0.28 * len(rows)))
    cmap = ListedColormap([*VERDICT_COLORS.values(), OTHER_COLOR]).with_extremes(bad="white")
    ax.imshow(codes, aspect="auto", cmap=cmap, vmin=-0.5, vmax=len(kinds) + 0.5, interpolation="nearest")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([label for label, _ in rows], fontsize=7)
    if len(cols) <= 4 * MAX_TICKS:  # white lines between the captures and between the rows
        ax.set_xticks(np.arange(len(cols) + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(len(rows) + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="white", lw=1.5)
        ax.tick_params(which="minor", length=0)
    ticks = _tick_positions(len(cols))
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(cols[i]) for i in ticks], fontsize=7, rotation=45 if len(ticks) > 12 else 0)
    present = {int(v) for v in codes[np.isfinite(codes)]}
    handles = [Patch(color=col, label=k) for j, (k, col) in enumerate(VERDICT_COLORS.items()) if j in present]
    if len(kinds) in present:
        handles.append(Patch(color=OTHER_COLOR, label="other"))
    if np.isnan(codes).any():
        handles.append(Patch(facecolor="white", edgecolor="grey", label="not captured"))
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_xlabel("captured iteration (one column per capture, equal widths)")
    ax.set_title("Verdict at each capture")
    return fig


_CAPTIONS = {
    "heatmap": "log10 of the batch median of ||dL/dh_t|| (colour) at each time step (across; 0 is the last step, "
               "where the loss is) for each captured iteration (up, one band per capture, labelled by iteration and "
               "coloured by the verdict). A band fading to the left: at that point of training the gradient vanishes "
               "going back in time; white ticks mark the horizon. Captures of different lengths are aligned at the "
               "end; grey is no value.",
    "horizon": "Gradient horizon of each layer at each capture: how many steps back the gradient stays above the "
               "horizon factor. Hollow markers are censored (it never fell below the factor within the sequence, so "
               "at least this); dotted: the sequence length. Below the dotted line: vanishing at that length.",
    "decay": "Top: the fitted decay rate of the gradient, log10 per step back (below 0: it shrinks going back). "
             "Bottom: the top Lyapunov exponent of the hidden-state dynamics (above 0: perturbations and gradients "
             "grow). Dotted: 0.",
    "memory": "Top: the mean of the memory gate (LSTM f, GRU z) at each capture. Bottom: the memory timescale it "
              "implies, in steps, log scale; dotted: the sequence length. A timescale far below it: the cell "
              "forgets before the gradient can reach back.",
    "global_grad_norm": "Global gradient norm of the recurrent modules' parameters at every iteration, log scale: "
                        "before clipping and, with a watched optimizer, as it stepped. Triangles: clipped; dashed "
                        "lines: steps the GradScaler skipped; black lines: non-finite gradients; grey ticks at the "
                        "bottom: captured iterations.",
    "verdict_timeline": "The verdict of each module (and of each of its layers and directions) at each capture: "
                        "blue vanishing, red exploding, green healthy; white: not captured then.",
}


def run_figure_list(metrics: dict) -> list[RunFigure]:
    """Every figure of the run report in order, with its title and caption; nothing is drawn yet."""
    figs: list[RunFigure] = []
    used: set[str] = set()

    def add(name: str, build: FigureBuilder, title: str, caption: str) -> None:
        unique, k = name, 2
        while unique in used:  # two modules whose names differ only in punctuation
            unique, k = f"{name}_{k}", k + 1
        used.add(unique)
        figs.append(RunFigure(unique, build, title, caption))

    add("verdict_timeline", partial(verdict_timeline_figure, metrics), "verdict at each capture",
        _CAPTIONS["verdict_timeline"])
    for module in modules_of(metrics):
        series = _module_series(metrics, module)
        part = name_part(module)
        for s in series:
            layer = s.get("layer")
            name = f"grad_flow_heatmap_{part}_{layer}" + ("_reverse" if is_reverse(s) else "")
            add(name, partial(heatmap_figure, s), f"gradient flow over training: {series_tag(s)}",
                _CAPTIONS["heatmap"])
        add(f"horizon_{part}", partial(horizon_figure, series, module), f"gradient horizon: {module}",
            _CAPTIONS["horizon"])
        add(f"decay_lyapunov_{part}", partial(decay_lyapunov_figure, series, module),
            f"decay rate and top Lyapunov exponent: {module}", _CAPTIONS["decay"])
        if any(s.get("memory_gate") for s in series):
            add(f"memory_gate_{part}", partial(memory_figure, series, module), f"memory gate: {module}",
                _CAPTIONS["memory"])
    add("global_grad_norm", partial(global_grad_norm_figure, metrics.get("iterations") or {},
                                    metrics.get("nonfinite") or []),
        "global gradient norm", _CAPTIONS["global_grad_norm"])
    return figs


def run_figures(metrics: dict) -> dict[str, FigureBuilder]:
    """A builder per figure of ``rnndiag report``, by name (the PNG's file stem); nothing is drawn until one is
    called (:func:`rnndiag.render.figures.draw_figures`). A builder returns None when it has nothing to draw."""
    return {f.name: f.build for f in run_figure_list(metrics)}


# ---------------------------------------------------------------------------------------------------------------
# Text shared by the page and the terminal


def nonfinite_text(event: dict) -> str:
    """One line on a non-finite gradient: when, which parameter, and where the replay found it first."""
    params = event.get("parameters") or []
    more = f" (and {len(params) - 1} more parameter(s))" if len(params) > 1 else ""
    text = (f"iteration {event.get('iteration', '?')}: the gradient of {event.get('first_parameter', '?')} is not "
            f"finite{more}")
    if event.get("step") is not None:
        direction = f" ({event['direction']})" if event.get("direction") else ""
        text += (f"; the replay finds the {event.get('kind', 'gradient')} of {event.get('module', '?')} layer "
                 f"{event.get('layer', '?')}{direction} non-finite first at time step {event['step']}")
    elif event.get("not_captured"):
        text += "; that iteration could not be captured: " + "; ".join(map(str, event["not_captured"]))
    return text


def run_warnings(metrics: dict, left_out: bool = True) -> list[str]:
    """What the reader must know before trusting the report: non-finite gradients, captures left out (with
    ``left_out``), a damaged iteration log."""
    out = [f"non-finite gradient at {nonfinite_text(e)}" for e in metrics.get("nonfinite") or []]
    skipped = metrics.get("left_out") or []
    if skipped and left_out:
        out.append(f"{len(skipped)} capture(s) left out (listed below): {'; '.join(map(str, skipped[:3]))}"
                   + (" ..." if len(skipped) > 3 else ""))
    damaged = (metrics.get("iterations") or {}).get("damaged_lines") or 0
    if damaged:
        out.append(f"{damaged} line(s) of iterations.jsonl are damaged and were not read")
    return out


def run_notes(metrics: dict) -> list[str]:
    """What was recorded, in a line or two: iterations logged, steps the GradScaler skipped, a line being
    written."""
    it = metrics.get("iterations") or {}
    caps = metrics.get("captures") or []
    mods = modules_of(metrics)
    notes = [f"{it.get('count', 0)} iteration(s) logged (last: {it.get('last')}), {len(caps)} analysed capture(s) "
             f"of {len(mods)} module(s){': ' + ', '.join(mods) if mods else ''}"]
    if it.get("skipped"):
        notes.append(f"the GradScaler skipped the step of {len(it['skipped'])} iteration(s) (an inf or NaN in a "
                     "scaled gradient: normal while it finds its scale)")
    if it.get("partial_last_line"):
        notes.append("the run is still being written: its last log line is incomplete and was left out")
    return notes


def _capture_layers(metrics: dict) -> dict:
    """(module, iteration) -> the per-series numbers at that capture."""
    out: dict = {}
    for s in metrics.get("series") or []:
        its = _list(s.get("iterations"))
        fields = [_fit(s.get(k), len(its)) for k in ("horizon_steps", "horizon_censored", "seq_len", "lyapunov_top",
                                                     "verdict")]
        for it, hz, cens, t, ly, verdict in zip(its, *fields):
            out.setdefault((s.get("module"), it), []).append(
                {"tag": _short_tag(s), "name": s.get("name") or series_tag(s), "horizon": hz, "censored": cens,
                 "seq_len": t, "lyapunov": ly, "verdict": verdict})
    return out


def _horizon_text(layer: dict) -> str:
    steps = "n/a" if layer["horizon"] is None else f"{layer['horizon']}{'+' if layer['censored'] else ''}"
    return f"{steps} / {layer['seq_len'] if layer['seq_len'] is not None else '?'}"


def _worst(layers: list[dict]) -> dict | None:
    """The layer with the shortest horizon (censored ones count as their full length)."""
    known = [ld for ld in layers if not math.isnan(_num(ld["horizon"]))]
    return min(known, key=lambda ld: (_num(ld["horizon"]), bool(ld["censored"]))) if known else None


def _top_lyapunov(layers: list[dict]) -> float | None:
    vals = [_num(ld["lyapunov"]) for ld in layers]
    vals = [v for v in vals if math.isfinite(v)]
    return max(vals) if vals else None


def _sorted_captures(metrics: dict) -> list[dict]:
    """The captures by iteration, then in the run header's order of the modules."""
    order = {m: i for i, m in enumerate(modules_of(metrics))}
    return sorted((c for c in metrics.get("captures") or [] if isinstance(c, dict)),
                  key=lambda c: (_num(c.get("iteration")), order.get(c.get("module"), len(order))))


# ---------------------------------------------------------------------------------------------------------------
# HTML


def _verdict_class(verdict) -> str:
    return verdict if verdict in VERDICT_COLORS else "other"


def _blank(value) -> str:
    return "" if value is None else str(value)


def _nonfinite_rows(metrics: dict) -> list[dict]:
    rows = []
    for e in metrics.get("nonfinite") or []:
        if isinstance(e, dict):
            what = _blank(e.get("kind"))
            if e.get("not_captured"):
                what += " not captured: " + "; ".join(map(str, e["not_captured"]))
            rows.append({k: _blank(e.get(k)) for k in ("iteration", "first_parameter", "module", "layer", "direction",
                                                       "step")} | {"what": what.strip()})
    return rows


def plain(value) -> str:
    """A value of the run header as text: JSON's spelling of scalars, a mapping as ``key value`` pairs.

    >>> plain({"every": 10, "log_spaced": True}), plain(None), plain("SGD"), plain([1, 2])
    ('every 10, log_spaced true', 'null', 'SGD', '1, 2')
    """
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return ", ".join(f"{k} {plain(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(plain(v) for v in value)
    return json.dumps(value, default=str)


def _html_context(metrics: dict) -> dict:
    layers = _capture_layers(metrics)
    captures = []
    for c in _sorted_captures(metrics):
        per = layers.get((c.get("module"), c.get("iteration")), [])
        captures.append({**{k: c.get(k) for k in ("iteration", "module", "verdict", "verdict_detail", "confidence",
                                                  "global_grad_norm", "file", "advice")},
                         "css": _verdict_class(c.get("verdict")),
                         "horizons": ", ".join(f"{ld['name']}: {_horizon_text(ld)}" for ld in per) or "n/a",
                         "lyapunov": _top_lyapunov(per)})
    latest = []
    for module, last in (metrics.get("latest") or {}).items():
        match = [c for c in captures if c["module"] == module and c["iteration"] == last.get("iteration")]
        keys = ("iteration", "verdict", "verdict_detail", "confidence")
        latest.append({"module": module, **{k: last.get(k) for k in keys}, "css": _verdict_class(last.get("verdict")),
                       "advice": (match[0]["advice"] or []) if match else []})
    header = metrics.get("run") or {}
    modules = [m for m in header.get("modules") or [] if isinstance(m, dict)]
    module_keys = list(dict.fromkeys(k for m in modules for k in m if k != "name"))
    run_rows = [(k, plain(v)) for k, v in header.items() if k != "modules"]
    modules = [{k: plain(v) for k, v in m.items()} for m in modules]
    return {"captures": captures, "latest": latest, "modules": modules, "module_keys": module_keys,
            "run_rows": run_rows}


def render_run_html(metrics: dict, pngs: dict[str, bytes], failed: dict[str, str], config: dict) -> str:
    """The run report as one self-contained HTML page (Jinja2, autoescape: module names, parameter names and the
    ``config`` strings are shown as text). ``config`` holds at least ``command`` and ``title``; ``failed``: figure
    name -> why it could not be drawn, shown in its place."""
    specs = {f.name: f for f in run_figure_list(metrics)}
    order = list(specs)
    cells = figure_cells(pngs, failed)
    cells.sort(key=lambda cell: order.index(cell["name"]) if cell["name"] in order else len(order))
    for cell in cells:
        if cell["name"] in specs:
            cell["title"], cell["caption"] = specs[cell["name"]].title, specs[cell["name"]].caption
    metrics_json = json.dumps(metrics, indent=1, allow_nan=False)
    return _env().get_template("run_report.html").render(
        metrics=metrics, config=config, title=config.get("title", "run"), command=config.get("command", ""),
        looked_at=metrics.get("looked_at", ""), warnings=run_warnings(metrics), notes=run_notes(metrics),
        nonfinite=_nonfinite_rows(metrics), run_dir=str(metrics.get("run_dir", "")),
        skipped=metrics.get("left_out") or [], figures=cells, version=__version__,
        generated=_dt.datetime.now().isoformat(timespec="seconds"), number_rows=flatten_numbers(metrics),
        metrics_json=metrics_json if len(metrics_json) <= EMBED_JSON_LIMIT else None,
        metrics_json_size=len(metrics_json), **_html_context(metrics))


# ---------------------------------------------------------------------------------------------------------------
# Terminal


def _terminal_captures(captures: list[dict]) -> list[dict]:
    """At most MAX_TERMINAL_ROWS captures: each module's first and last, the changes of verdict (the earliest
    first), then evenly spaced others."""
    if len(captures) <= MAX_TERMINAL_ROWS:
        return captures
    first, last, changes, verdict = {}, {}, [], {}
    for i, c in enumerate(captures):
        m = c.get("module")
        first.setdefault(m, i)
        if m in verdict and verdict[m] != c.get("verdict"):
            changes.append(i)
        verdict[m], last[m] = c.get("verdict"), i
    keep: set[int] = set()
    for i in [*sorted({*first.values(), *last.values()}), *changes]:
        if len(keep) < MAX_TERMINAL_ROWS:
            keep.add(i)
    room = MAX_TERMINAL_ROWS - len(keep)
    others = [i for i in range(len(captures)) if i not in keep]
    if room > 0 and others:
        keep |= {others[int(j)] for j in np.linspace(0, len(others) - 1, room)}
    return [captures[i] for i in sorted(keep)]


def _capture_columns(captures: list[dict], layers: dict, several: set) -> list[Column]:
    cells: dict[str, list[Text]] = {h: [] for h in ("iteration", "module", "verdict", "horizon / T", "top Lyapunov",
                                                    "global grad norm")}
    for c in captures:
        per = layers.get((c.get("module"), c.get("iteration")), [])
        worst = _worst(per)
        horizon = "n/a" if worst is None else _horizon_text(worst) + (
            f" ({worst['tag']})" if c.get("module") in several else "")
        verdict = str(c.get("verdict"))
        cells["iteration"].append(Text(str(c.get("iteration"))))
        cells["module"].append(Text(str(c.get("module"))))
        cells["verdict"].append(Text(verdict + (" (low)" if c.get("confidence") == "low" else ""),
                                     style=VERDICT_STYLE.get(verdict, "")))
        cells["horizon / T"].append(Text(horizon))
        cells["top Lyapunov"].append(Text(fmt_num(_top_lyapunov(per), "+.3f")))
        cells["global grad norm"].append(Text(fmt_num(c.get("global_grad_norm"))))
    return [Column(h, tuple(v), justify="left" if h in ("module", "verdict") else "right") for h, v in cells.items()]


def run_summary(console: Console, metrics: dict, report_path: str | None = None) -> None:
    """The terminal summary of a run: what was looked at, a warning per non-finite gradient, a table of the
    captures (fitted to the console), the latest verdict per module, the captures left out, where the report is."""
    console.print(Text("looked at: ", style="bold").append(str(metrics.get("looked_at", ""))))
    for line in run_warnings(metrics, left_out=False):  # the captures left out: dim lines at the end
        console.print(Text("warning: ", style="bold yellow").append(line))
    for line in run_notes(metrics):
        console.print(Text(line, style="dim"))
    captures = _sorted_captures(metrics)
    if captures:
        shown = _terminal_captures(captures)
        layers = _capture_layers(metrics)
        several = {m for m in modules_of(metrics) if len(_module_series(metrics, m)) > 1}
        title = Text("captures (horizon: the shortest layer's; top Lyapunov: the largest)")
        print_columns(console, title, _capture_columns(shown, layers, several), RUN_TABLE_DROP_ORDER)
        if len(shown) < len(captures):
            console.print(Text(f"{len(shown)} of {len(captures)} captures shown (each module's first and last, the "
                               "changes of verdict); all are in the HTML report and metrics.json", style="dim"))
    else:
        console.print(Text("no analysed capture yet: the run has not reached a scheduled iteration, or every "
                           "capture was left out", style="yellow"))
    for module, last in (metrics.get("latest") or {}).items():
        verdict = str(last.get("verdict"))
        line = Text(f"latest {module} (iteration {last.get('iteration')}): ", style="bold")
        line.append(verdict.upper(), style=VERDICT_STYLE.get(verdict, "bold"))
        line.append(f"  {last.get('verdict_detail', '')}")
        if last.get("confidence") == "low":
            line.append("  (low confidence)", style="yellow")
        console.print(line)
    for line in metrics.get("left_out") or []:
        console.print(Text(f"left out: {line}", style="dim"))
    if report_path:
        console.print(Text("report: ", style="bold").append(report_path))
