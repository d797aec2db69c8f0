"""Figures of a Diagnosis, built on ``matplotlib.figure.Figure`` with the Agg canvas (no pyplot global state).

Long sequences are thinned for drawing only (at most ``MAX_POINTS`` points per curve, keeping each bucket's
minimum and maximum so spikes stay visible); the numbers in the JSON are never thinned.
"""

from __future__ import annotations

import io
import itertools

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MAX_POINTS = 2000
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


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


def finish_axes(ax, *, xlabel: str, ylabel: str | None = None, title: str | None = None, legend: int | None = None,
            legend_loc: str = "best", log_y: bool = False) -> None:
    """The labels, legend and grid every figure here ends with."""
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    if title is not None:
        ax.set_title(title)
    if legend is not None:
        ax.legend(loc=legend_loc, fontsize=legend)
    ax.grid(alpha=0.3)


def grad_norm_figure(diag) -> Figure:
    """||dL/dh_t|| per step: median and min-max band over the batch, log y."""
    fig, ax = new_axes()
    g = diag.gradient_flow.grad_norm_per_sequence  # (T, B)
    t = np.arange(g.shape[0])
    with np.errstate(all="ignore"):
        med, lo, hi = np.median(g, axis=1), g.min(axis=1), g.max(axis=1)
    pos = lambda a: np.where(np.isfinite(a) & (a > 0), a, np.nan)  # noqa: E731
    tt, m, l, h = thin(t, pos(med), pos(lo), pos(hi))
    ax.fill_between(tt, l, h, color=COLORS[0], alpha=0.2, label="min-max over batch")
    ax.plot(tt, m, color=COLORS[0], lw=1.5, label="median")
    if np.isfinite(m).any():
        ax.set_yscale("log")
    finish_axes(ax, xlabel="timestep t", ylabel="||dL/dh_t||", title=f"Gradient norm per timestep ({diag.loss})",
            legend=8)
    return fig


def jacobian_product_figure(diag) -> Figure:
    """log10 ||d s_{T-1} / d s_t||_2 and the last-step gradient, per layer."""
    fig, ax = new_axes()
    for ld in diag.layers:
        fl = ld.flow
        T = fl.log10_jacobian_product_norm.shape[0]
        t = np.arange(T)
        tt, y = thin(t, np.median(fl.log10_jacobian_product_norm, axis=1))
        ax.plot(tt, y, color=COLORS[ld.layer % 6], lw=1.5, label=f"layer {ld.layer}: ||d s_T-1 / d s_t||_2")
        tt, y = thin(t, fl.median_last_step - fl.median_last_step[-1])
        ax.plot(tt, y, color=COLORS[ld.layer % 6], lw=1, ls="--", label=f"layer {ld.layer}: last-step gradient (rel.)")
    fl = diag.gradient_flow
    ax.axhline(np.log10(fl.horizon.factor), color="grey", lw=0.8, ls=":", label=f"horizon factor {fl.horizon.factor:g}")
    finish_axes(ax, xlabel="timestep t", ylabel="log10 norm", title="Jacobian products back from the last step",
                legend=8)
    return fig


def step_jacobian_figure(diag) -> Figure:
    """log10 ||J_t||_2 per step."""
    fig, ax = new_axes()
    for ld in diag.layers:
        y = np.median(ld.flow.log10_step_jacobian_norm, axis=1)
        tt, yy = thin(np.arange(y.size), y)
        ax.plot(tt, 10.0**yy, color=COLORS[ld.layer % 6], lw=1.2, label=f"layer {ld.layer}")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
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
        ax.scatter(sp.eigenvalues.real, sp.eigenvalues.imag, s=8, color=COLORS[i % 6])
        ax.set_aspect("equal")
        ax.set_title(f"layer {ld.layer}: eig({sp.name}), radius {sp.spectral_radius:.3g}", fontsize=9)
        ax.grid(alpha=0.3)
    return fig


def singular_value_figure(diag) -> Figure:
    fig, ax = new_axes()
    for ld in diag.layers:
        mats = {ld.spectrum.recurrent.name: ld.spectrum.recurrent, **{m.name: m for m in ld.spectrum.blocks.values()}}
        for j, (name, sp) in enumerate(mats.items()):
            ax.plot(np.arange(1, sp.singular_values.size + 1), sp.singular_values, lw=1.2,
                    color=COLORS[(ld.layer + j) % 6], ls="-" if j == 0 else "--", label=f"layer {ld.layer} {name}")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    finish_axes(ax, log_y=True, xlabel="index", ylabel="singular value",
                title="Singular values of the recurrent weights", legend=7)
    return fig


def lyapunov_figure(diag) -> Figure:
    fig, ax = new_axes()
    for ld in diag.layers:
        ly = ld.lyapunov
        i = np.arange(1, ly.exponents.size + 1)
        ex = np.where(np.isfinite(ly.exponents), ly.exponents, np.nan)
        ax.errorbar(i, ex, yerr=ly.spread, fmt="o-", ms=3, lw=1, color=COLORS[ld.layer % 6],
                    label=f"layer {ld.layer} (mean ± sd over {len(ly.batch)} seq.)")
    ax.axhline(0.0, color="grey", lw=0.8, ls=":")
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
            ax.bar(e[:-1], st.hist_counts / max(st.hist_counts.sum(), 1), width=np.diff(e), align="edge",
                   color=COLORS[c % 6], alpha=0.8)
            lo, hi = (0.1, 0.9) if st.kind == "sigmoid" else (-0.9, 0.9)
            ax.axvspan(e[0], lo, color="grey", alpha=0.15)
            ax.axvspan(hi, e[-1], color="grey", alpha=0.15)
            low, high = 100 * st.left_saturated, 100 * st.right_saturated
            ax.set_title(f"L{ld.layer} {name}: {low:.0f}% low, {high:.0f}% high", fontsize=8)
            ax.tick_params(labelsize=7)
    return fig


def all_figures(diag) -> dict[str, Figure]:
    """Every figure, keyed by a file-name stem that says what it shows."""
    figs = {
        "grad_norm_per_step": grad_norm_figure(diag),
        "jacobian_product_norm": jacobian_product_figure(diag),
        "step_jacobian_norm": step_jacobian_figure(diag),
        "eigenvalues_w_hh": eigenvalue_figure(diag),
        "singular_values": singular_value_figure(diag),
        "lyapunov_spectrum": lyapunov_figure(diag),
    }
    g = gates_figure(diag)
    if g is not None:
        figs["gate_saturation"] = g
    return figs


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
