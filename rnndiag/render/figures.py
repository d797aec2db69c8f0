"""Figures of a Diagnosis, built on ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot global state).

Long sequences are thinned for drawing only (at most ``MAX_POINTS`` points per curve, keeping each bucket's
minimum and maximum so spikes stay visible); the numbers in the JSON are never thinned.

A figure draws only what can be drawn (:func:`drawable`): NaN, infinities and magnitudes beyond ``DRAW_LIMIT``
(where matplotlib's transforms, margins and tick locators overflow) become gaps, and the figure says how many
values it left out (:func:`note_omitted`); metrics.json keeps them all. Figures are built lazily, one builder per
figure, and :func:`draw_figures` renders each in isolation: one that fails is reported, the others are drawn.
"""

from __future__ import annotations

import io
import itertools
import warnings
from collections.abc import Callable
from functools import partial

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator

from .._validation import one_line

MAX_POINTS = 2000
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
DRAW_LIMIT = 1e300  # larger magnitudes (and, on a log axis, positive values below 1 / DRAW_LIMIT) are not drawn
LOG_VIEW_DECADES = 305  # a log axis never reaches past 10**(+-305): its margins and ticks must stay finite

FigureBuilder = Callable[[], "Figure | None"]


def drawable(a, *, positive: bool = False, limit: float = DRAW_LIMIT) -> tuple[np.ndarray, int]:
    """``a`` as a new float array in which every value a figure cannot draw is NaN (a gap), and how many those are.

    Not drawable: NaN, infinities, ``|x| > limit``; with ``positive`` (a log axis) also ``x < 1 / limit``.

    >>> drawable([1.0, np.inf, -2e305, np.nan, 0.0])
    (array([ 1., nan, nan, nan,  0.]), 3)
    >>> drawable([2.0, 0.0, -1.0, 1e-320], positive=True)
    (array([ 2., nan, nan, nan]), 3)
    """
    a = np.array(a, dtype=float)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(a) & (np.abs(a) <= limit)
        if positive:
            ok &= a >= 1.0 / limit
    a[~ok] = np.nan
    return a, int(a.size - np.count_nonzero(ok))


def note_omitted(ax, omitted: int, total: int) -> None:
    """Say on ``ax`` that ``omitted`` of ``total`` values were not drawn: a corner note, or, when nothing could be
    drawn, a centred one on the otherwise empty axes. Nothing when nothing was left out."""
    if omitted <= 0:
        return
    text = f"{omitted} of {total} values non-finite or out of range,\nnot drawn; see metrics.json"
    if omitted >= total:
        ax.text(0.5, 0.5, f"no finite values to draw\n{text}", transform=ax.transAxes, ha="center", va="center",
                fontsize=8, color="dimgrey")
    else:
        ax.text(0.01, 0.01, text, transform=ax.transAxes, ha="left", va="bottom", fontsize=7, color="dimgrey",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none", "pad": 1.5})


class Tally:
    """What the curves of one axes drew and left out: for :func:`note_omitted` and the range of a log axis."""

    def __init__(self):
        self.omitted = self.total = 0
        self.lo, self.hi = np.inf, -np.inf  # the smallest and largest positive value drawn

    def __call__(self, a, *, positive: bool = False) -> np.ndarray:
        """``a`` made :func:`drawable`, counted."""
        a, omitted = drawable(a, positive=positive)
        self.omitted += omitted
        self.total += a.size
        pos = a[a > 0]
        if pos.size:
            self.lo, self.hi = min(self.lo, pos.min()), max(self.hi, pos.max())
        return a

    def note(self, ax) -> None:
        note_omitted(ax, self.omitted, self.total)

    def log_range(self, *references: float | None) -> tuple[float, float] | None:
        """The positive range drawn, widened to the ``references`` (lines drawn across the axes) that a log axis can
        show; None when no positive value was drawn (then the axis stays linear)."""
        if self.lo > self.hi:
            return None
        refs = drawable([r for r in references if r is not None], positive=True)[0]
        refs = refs[~np.isnan(refs)]
        return float(min([self.lo, *refs])), float(max([self.hi, *refs]))


def thin(t: np.ndarray, *ys: np.ndarray, max_points: int = MAX_POINTS):
    """Keep at most ``max_points`` points: per bucket the min and max of the first curve (others follow)."""
    n = t.size
    if n <= max_points:
        return (t, *ys)
    buckets = max_points // 2
    edges = np.linspace(0, n, buckets + 1).astype(int)
    idx = []
    first = np.where(np.isfinite(ys[0]), ys[0], 0.0) if ys else t
    for a, b in itertools.pairwise(edges):
        if b <= a:
            continue
        seg = first[a:b]
        i, j = a + int(np.argmin(seg)), a + int(np.argmax(seg))
        idx.extend(sorted({i, j}))
    idx = np.asarray(idx)
    return (t[idx], *(y[idx] for y in ys))


def new_axes(width=7.0, height=3.6) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def plot_curve(ax, x, y, **kwargs):
    """``ax.plot`` of a curve with gaps (NaN), and a marker on every point with no drawn neighbour (a line alone
    would not show it)."""
    (line,) = ax.plot(x, y, **kwargs)
    y = np.asarray(y, dtype=float)
    shown = ~np.isnan(y)
    lone = shown & ~np.r_[False, shown[:-1]] & ~np.r_[shown[1:], False]
    if lone.any():
        ax.plot(np.asarray(x)[lone], y[lone], ls="none", marker="o", ms=3, color=line.get_color())
    return line


class _FiniteLogLocator(LogLocator):
    """Matplotlib's log locator without ticks past the float range: over hundreds of decades its stride can put a
    tick at 1e400 = inf, which the tick formatter cannot round."""

    def tick_values(self, vmin, vmax):
        ticks = super().tick_values(vmin, vmax)
        return ticks[np.isfinite(ticks)]


def set_log_y(ax, lo: float, hi: float) -> None:
    """A log y axis showing ``lo..hi`` (positive) with 5% margins in decades, that survives values near the float
    range: only finite ticks, and limits set here, within 10**(+-LOG_VIEW_DECADES), where matplotlib's own margins
    would overflow."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(_FiniteLogLocator(10.0))
    ax.yaxis.set_minor_locator(_FiniteLogLocator(10.0, None))
    a, b = np.log10(lo), np.log10(hi)
    pad = 0.05 * (b - a) if b > a else 0.5
    ax.set_ylim(10.0 ** max(a - pad, -LOG_VIEW_DECADES), 10.0 ** min(b + pad, LOG_VIEW_DECADES))


def finish_axes(ax, *, xlabel: str, ylabel: str | None = None, title: str | None = None, legend: int | None = None,
            legend_loc: str = "best", log_y: tuple[float, float] | None = None) -> None:
    """The labels, legend and grid every figure here ends with; ``log_y``: the positive range to show on a log
    axis (:meth:`Tally.log_range`; None: a linear axis)."""
    if log_y is not None:
        set_log_y(ax, *log_y)
    ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    if legend is not None and ax.get_legend_handles_labels()[0]:
        ax.legend(loc=legend_loc, fontsize=legend)
    ax.grid(alpha=0.3)


def grad_norm_figure(diag) -> Figure:
    """||dL/dh_t|| per step: median and min-max band over the batch, log y."""
    fig, ax = new_axes()
    g = diag.gradient_flow.grad_norm_per_sequence  # (T, B)
    t = np.arange(g.shape[0])
    with np.errstate(all="ignore"):
        med, lo, hi = np.median(g, axis=1), g.min(axis=1), g.max(axis=1)
    tally = Tally()
    tt, m, l, h = thin(t, tally(med, positive=True), tally(lo, positive=True), tally(hi, positive=True))
    ax.fill_between(tt, l, h, color=COLORS[0], alpha=0.2, label="min-max over batch")
    plot_curve(ax, tt, m, color=COLORS[0], lw=1.5, label="median")
    tally.note(ax)
    finish_axes(ax, xlabel="timestep t", ylabel="||dL/dh_t||", title=f"Gradient norm per timestep ({diag.loss})",
                legend=8, log_y=tally.log_range())
    return fig


def jacobian_product_figure(diag) -> Figure:
    """log10 ||d s_{T-1} / d s_t||_2 and the last-step gradient, per layer."""
    fig, ax = new_axes()
    tally = Tally()
    for ld in diag.layers:
        fl = ld.flow
        T = fl.log10_jacobian_product_norm.shape[0]
        t = np.arange(T)
        with np.errstate(all="ignore"):
            product = np.median(fl.log10_jacobian_product_norm, axis=1)
            last_step = fl.median_last_step - fl.median_last_step[-1]
        tt, y = thin(t, tally(product))
        plot_curve(ax, tt, y, color=COLORS[_color_index(ld) % 6], lw=1.5, label=f"{ld.name}: ||d s_T-1 / d s_t||_2")
        tt, y = thin(t, tally(last_step))
        plot_curve(ax, tt, y, color=COLORS[_color_index(ld) % 6], lw=1, ls="--",
                   label=f"{ld.name}: last-step gradient (rel.)")
    fl = diag.gradient_flow
    ax.axhline(np.log10(fl.horizon.factor), color="grey", lw=0.8, ls=":", label=f"horizon factor {fl.horizon.factor:g}")
    tally.note(ax)
    finish_axes(ax, xlabel="timestep t", ylabel="log10 norm", title="Jacobian products back from the last step",
                legend=8)
    return fig


def step_jacobian_figure(diag) -> Figure:
    """log10 ||J_t||_2 per step."""
    fig, ax = new_axes()
    tally = Tally()
    for ld in diag.layers:
        with np.errstate(all="ignore"):
            norm = 10.0 ** np.median(ld.flow.log10_step_jacobian_norm, axis=1)  # overflows to inf: not drawn
        tt, yy = thin(np.arange(norm.size), tally(norm))
        plot_curve(ax, tt, yy, color=COLORS[_color_index(ld) % 6], lw=1.2, label=ld.name)
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    tally.note(ax)
    finish_axes(ax, xlabel="timestep t", ylabel="||J_t||_2", title="Per-step Jacobian spectral norm", legend=8)
    return fig


def eigenvalue_figure(diag) -> Figure:
    """Eigenvalues of each layer's recurrent matrix in the complex plane, with the unit circle."""
    n = len(diag.layers)
    fig = Figure(figsize=(3.6 * n, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for i, ld in enumerate(diag.layers):
        ax = fig.add_subplot(1, n, i + 1)
        sp = ld.spectrum.recurrent
        theta = np.linspace(0, 2 * np.pi, 361)
        ax.plot(np.cos(theta), np.sin(theta), color="grey", lw=0.8)
        ev = np.asarray(sp.eigenvalues, dtype=complex)
        re, _ = drawable(ev.real)
        im, _ = drawable(ev.imag)
        shown = ~(np.isnan(re) | np.isnan(im))
        ax.scatter(re[shown], im[shown], s=8, color=COLORS[i % 6])
        note_omitted(ax, int(ev.size - shown.sum()), ev.size)
        ax.set_aspect("equal")
        ax.set_title(f"{ld.name}: eig({sp.name}), radius {sp.spectral_radius:.3g}", fontsize=9)
        ax.grid(alpha=0.3)
    return fig


def singular_value_figure(diag) -> Figure:
    fig, ax = new_axes()
    tally = Tally()
    for ld in diag.layers:
        mats = {ld.spectrum.recurrent.name: ld.spectrum.recurrent, **{m.name: m for m in ld.spectrum.blocks.values()}}
        for j, (name, sp) in enumerate(mats.items()):
            plot_curve(ax, np.arange(1, sp.singular_values.size + 1), tally(sp.singular_values, positive=True), lw=1.2,
                    color=COLORS[(_color_index(ld) + j) % 6], ls="-" if j == 0 else "--", label=f"{ld.name} {name}")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    tally.note(ax)
    finish_axes(ax, log_y=tally.log_range(1.0), xlabel="index", ylabel="singular value",
                title="Singular values of the recurrent weights", legend=7)
    return fig


def lyapunov_figure(diag) -> Figure:
    fig, ax = new_axes()
    tally = Tally()
    for ld in diag.layers:
        ly = ld.lyapunov
        i = np.arange(1, ly.exponents.size + 1)
        ex = tally(ly.exponents)
        spread, _ = drawable(ly.spread)  # an error bar that cannot be drawn is left off; its point stays
        with np.errstate(invalid="ignore"):
            spread[~(np.abs(ex) + spread <= DRAW_LIMIT) | (spread < 0)] = np.nan
        ax.errorbar(i, ex, yerr=spread, fmt="o-", ms=3, lw=1, color=COLORS[_color_index(ld) % 6],
                    label=f"{ld.name} (mean ± sd over {len(ly.batch)} seq.)")
    ax.axhline(0.0, color="grey", lw=0.8, ls=":")
    tally.note(ax)
    finish_axes(ax, xlabel="exponent index", ylabel="nats per step", title="Lyapunov spectrum", legend=8)
    return fig


def gates_figure(diag) -> Figure | None:
    """Gate activation histograms with the saturated regions shaded (LSTM/GRU)."""
    layers = [ld for ld in diag.layers if ld.gates.gates]
    if not layers:
        return None
    names = list(layers[0].gates.gates)
    fig = Figure(figsize=(3.0 * len(names), 2.6 * len(layers)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    for r, ld in enumerate(layers):
        for c, name in enumerate(names):
            st = ld.gates.gates[name]
            ax = fig.add_subplot(len(layers), len(names), r * len(names) + c + 1)
            e = st.hist_edges
            tally = Tally()
            counts = tally(st.hist_counts)
            ax.bar(e[:-1], counts / max(np.nansum(counts), 1), width=np.diff(e), align="edge",
                   color=COLORS[c % 6], alpha=0.8)
            lo, hi = (0.1, 0.9) if st.kind == "sigmoid" else (-0.9, 0.9)
            ax.axvspan(e[0], lo, color="grey", alpha=0.15)
            ax.axvspan(hi, e[-1], color="grey", alpha=0.15)
            tally.note(ax)
            low, high = 100 * st.left_saturated, 100 * st.right_saturated
            tag = f"L{ld.layer}{'r' if ld.direction else ''}"
            ax.set_title(f"{tag} {name}: {low:.0f}% low, {high:.0f}% high", fontsize=8)
            ax.tick_params(labelsize=7)
    return fig


def all_figures(diag) -> dict[str, FigureBuilder]:
    """A builder for every figure, keyed by a file-name stem that says what it shows; nothing is drawn until a
    builder is called (:func:`draw_figures`)."""
    figs = {
        "grad_norm_per_step": partial(grad_norm_figure, diag),
        "jacobian_product_norm": partial(jacobian_product_figure, diag),
        "step_jacobian_norm": partial(step_jacobian_figure, diag),
        "eigenvalues_w_hh": partial(eigenvalue_figure, diag),
        "singular_values": partial(singular_value_figure, diag),
        "lyapunov_spectrum": partial(lyapunov_figure, diag),
    }
    if any(ld.gates.gates for ld in diag.layers):
        figs["gate_saturation"] = partial(gates_figure, diag)
    return figs


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def draw_figures(builders: dict[str, FigureBuilder]) -> tuple[dict[str, bytes], dict[str, str]]:
    """Build and render every figure on its own: ``(PNG bytes by name, failures: name -> "Error: reason")``.

    A builder that raises, or a figure that fails to render, costs only that figure; one that returns None (no
    such figure for this model) is skipped. Warnings raised while drawing are not printed.

    >>> def broken():
    ...     raise ValueError("axis limits cannot be NaN")
    >>> pngs, failures = draw_figures({"empty": lambda: new_axes()[0], "broken": broken, "none": lambda: None})
    >>> sorted(pngs), failures
    (['empty'], {'broken': 'ValueError: axis limits cannot be NaN'})
    """
    pngs: dict[str, bytes] = {}
    failures: dict[str, str] = {}
    for name, build in builders.items():
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")
                fig = build()
                if fig is not None:
                    pngs[name] = png_bytes(fig)
        except Exception as exc:  # one figure's failure must not cost the report or the other figures
            failures[name] = f"{type(exc).__name__}: {one_line(exc)}"
    return pngs, failures


def _color_index(ld) -> int:
    """One color per layer trace: layer k's directions get 2k and 2k+1."""
    return 2 * ld.layer + ld.direction if getattr(ld, "direction", 0) or ld.layer else 0
