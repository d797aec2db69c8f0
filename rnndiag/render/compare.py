"""Figures, tables and headlines for `rnndiag init`, `rnndiag clip` and `rnndiag train` (read results, never
recompute)."""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from . import fmt_num
from .figures import COLORS, FigureBuilder, Tally, drawable, finish_axes, new_axes, plot_curve, thin


class Table(NamedTuple):
    """A results table: every cell a string."""

    title: str
    columns: list[str]
    rows: list[list[str]]


class Headline(NamedTuple):
    """The one-line conclusion and the reasons behind it."""

    text: str
    reasons: list[str]


def init_table(cmp, *, notes: bool = True) -> Table:
    """One row per scheme, ranked; with training, the final test loss, the verdict after it and (``notes``) a
    note."""
    trained = cmp.trained
    columns = ["rank", "scheme", "verdict", "spectral radius", "sigma_max", f"horizon / {cmp.seq_len}",
               "decay log10/step", "top Lyapunov"]
    forecasts = any(r.forecast is not None for r in cmp.results)
    if forecasts:
        columns.append("forecast")
    if trained:
        columns += ["final test loss", "after training"] + (["note"] if notes else [])
    rows = []
    for i, r in enumerate(cmp.results, 1):
        d = r.at_init
        ld = d.layers[0]
        hz = d.gradient_flow.horizon
        row = [str(i), r.label, d.verdict, fmt_num(ld.spectrum.spectral_radius), fmt_num(ld.spectrum.sigma_max),
               f"{hz.steps}{'+' if hz.censored else ''}", fmt_num(d.gradient_flow.fit.rate, "+.4f"),
               fmt_num(ld.lyapunov.top, "+.4f")]
        if forecasts:
            row.append(forecast_call(r.forecast) if r.forecast is not None else "")
        if trained:
            row += [fmt_num(r.final_loss, ".4g"), r.after.verdict if r.after else "diverged"]
            row += [r.note or ""] if notes else []
        rows.append(row)
    return Table(f"initialization schemes for {cmp.cell} (ranked: {cmp.ranking_rule})", columns, rows)


def forecast_call(f) -> str:
    """The forecast in a few words: 'trains', 'does not train' or 'undecided', with its probability."""
    if not f.decided:
        return f"undecided (p = {f.probability:.2f})"
    return f"{'trains' if f.trains else 'does not train'} (p = {f.probability:.2f})"


def init_headline(cmp, learned_fraction: float) -> Headline:
    best = cmp.results[0]
    text = f"best: {best.label} ({cmp.ranking_rule})"
    if cmp.trained and not cmp.learned:
        text = (f"no scheme learned the {cmp.task} task in {cmp.train_steps} steps (every test loss is above "
                f"{learned_fraction:g} x the baseline); lowest test loss: {best.label} -- train longer before "
                "choosing")
    return Headline(text, [f"{r.scheme}: {r.note}" for r in cmp.results if r.note])


def clip_table(cmp, model_label: str) -> Table:
    columns = ["strategy", "diverged", "final test loss", "fraction clipped", "mean cosine", "oscillation",
               "suggested threshold"]
    rows = [[r.label, "yes" if r.trained.diverged else "no", fmt_num(r.trained.test_loss, ".4g"),
             f"{100 * r.stats.fraction_clipped:.0f}%", fmt_num(r.stats.mean_cosine, ".3f"),
             fmt_num(r.oscillation, ".2f"), fmt_num(r.stats.suggested_threshold)] for r in cmp.runs]
    return Table(f"clipping strategies, {model_label} on {cmp.task}", columns, rows)


def clip_headline(cmp) -> Headline:
    text = f"recommended: {cmp.recommended}" if cmp.recommended else "no strategy trained without diverging"
    return Headline(text, list(cmp.reasons))


def train_table(result, title: str) -> Table:
    columns = ["iteration", "test loss", "spectral radius", "sigma_max", "top Lyapunov", "grad norm at t=0"]
    rows = [[str(d.iteration), fmt_num(d.test_loss, ".4g"), fmt_num(d.layers[0].spectral_radius),
             fmt_num(d.layers[0].sigma_max), fmt_num(d.layers[0].top_lyapunov, "+.4f"),
             fmt_num(d.grad_norm_per_step[0])] for d in result.history.diag]
    return Table(title, columns, rows)


def train_headline(result) -> Headline:
    h = result.history
    if h.stopped:
        return Headline(f"stopped: {h.stopped}", [])
    fired = 100 * (sum(h.clipped) / max(len(h.clipped), 1))
    return Headline(f"final test loss {fmt_num(result.test_loss, '.4g')} (baseline {fmt_num(result.baseline, '.4g')}) "
                    f"after {h.iterations} iterations; clipping fired in {fired:.0f}% of them", [])


def _color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def _loss_axes(ax, tally: Tally, baseline: float | None) -> None:
    """A loss axes' baseline, note on what was left out, labels; log y where positive losses were drawn."""
    if baseline is not None and not np.isnan(drawable([baseline], positive=True)[0][0]):
        ax.axhline(baseline, color="grey", ls=":", lw=1, label=f"baseline {baseline:.3g}")
    else:
        baseline = None
    tally.note(ax)
    finish_axes(ax, log_y=tally.log_range(baseline), xlabel="iteration", ylabel="training loss", legend=7)


def init_figures(cmp) -> dict[str, FigureBuilder]:
    """A builder per figure of ``rnndiag init``, by name; nothing is drawn until one is called (``draw_figures``)."""
    figs = {"grad_flow_at_init": partial(_init_grad_flow_figure, cmp),
            "horizon_at_init": partial(_init_horizon_figure, cmp)}
    if any(r.trained is not None for r in cmp.results):
        figs["training_loss"] = partial(_init_loss_figure, cmp)
    return figs


def _init_grad_flow_figure(cmp) -> Figure:
    fig, ax = new_axes()
    tally = Tally()
    for i, r in enumerate(cmp.results):
        fl = r.at_init.gradient_flow
        with np.errstate(invalid="ignore"):
            y = tally(fl.median_last_step - fl.median_last_step[-1])
        t, yy = thin(np.arange(y.size), y)
        plot_curve(ax, t, yy, color=_color(i), lw=1.3, label=r.scheme)
    ax.axhline(np.log10(cmp.results[0].at_init.gradient_flow.horizon.factor), color="grey", ls=":", lw=1)
    tally.note(ax)
    finish_axes(ax, xlabel="timestep t", ylabel="log10 ||dL/dh_t|| relative to the last step",
                title="Gradient flow at initialization", legend=7)
    return fig


def _init_horizon_figure(cmp) -> Figure:
    fig, ax = new_axes()
    names = [r.scheme for r in cmp.results]
    ax.bar(names, [r.at_init.gradient_flow.horizon.steps for r in cmp.results],
           color=[_color(i) for i in range(len(names))])
    ax.axhline(cmp.seq_len, color="grey", ls=":", lw=1, label=f"sequence length {cmp.seq_len}")
    ax.set_ylabel("gradient horizon (steps)")
    ax.set_title("Gradient horizon at initialization")
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax.legend(fontsize=7)
    return fig


def _init_loss_figure(cmp) -> Figure:
    fig, ax = new_axes()
    tally = Tally()
    for i, r in enumerate(cmp.results):
        if r.trained is not None and r.trained.history.loss:
            loss = tally(r.trained.history.loss, positive=True)
            t, yy = thin(np.arange(loss.size), loss)
            plot_curve(ax, t, yy, color=_color(i), lw=1, label=r.scheme)
    _loss_axes(ax, tally, cmp.results[0].trained.baseline if cmp.results[0].trained else None)
    ax.set_title("Training loss per initialization")
    return fig


def clip_figures(cmp) -> dict[str, FigureBuilder]:
    """A builder per figure of ``rnndiag clip``, by name; nothing is drawn until one is called (``draw_figures``)."""
    return {"loss_per_strategy": partial(_clip_loss_figure, cmp),
            "grad_norm_distribution": partial(_clip_norm_figure, cmp),
            "fraction_clipped_and_cosine": partial(_clip_fraction_figure, cmp)}


def _clip_loss_figure(cmp) -> Figure:
    fig, ax = new_axes()
    tally = Tally()
    for i, r in enumerate(cmp.runs):
        loss = tally(r.trained.history.loss, positive=True)
        if loss.size:
            t, yy = thin(np.arange(loss.size), loss)
            plot_curve(ax, t, yy, color=_color(i), lw=1,
                       label=r.label + (" (diverged)" if r.trained.diverged else ""))
    _loss_axes(ax, tally, cmp.runs[0].trained.baseline)
    ax.set_title("Training loss per clipping strategy")
    return fig


def _clip_norm_figure(cmp) -> Figure:
    fig, ax = new_axes()
    tally = Tally()
    for i, r in enumerate(cmp.runs):
        with np.errstate(divide="ignore", invalid="ignore"):
            log_norms = tally(np.log10(np.asarray(r.stats.norms, dtype=float)))  # 0, inf, nan: not drawn
        log_norms = log_norms[~np.isnan(log_norms)]
        if log_norms.size:
            ax.hist(log_norms, bins=40, histtype="step", color=_color(i), label=r.label)
            if r.strategy in ("global_norm",) and r.threshold:
                ax.axvline(np.log10(r.threshold), color=_color(i), ls="--", lw=1)
    tally.note(ax)
    finish_axes(ax, xlabel="log10 pre-clip global gradient norm (dashed: threshold)", ylabel="iterations",
                title="Gradient norm distribution", legend=7)
    return fig


def _clip_fraction_figure(cmp) -> Figure:
    fig, ax = new_axes()
    tally = Tally()
    labels = [r.label for r in cmp.runs]
    ax.bar(labels, tally([r.stats.fraction_clipped for r in cmp.runs]), color=[_color(i) for i in range(len(labels))])
    ax.set_ylabel("fraction of iterations clipped")
    ax.set_ylim(0, 1)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    ax2 = ax.twinx()
    cosines = np.full(len(labels), np.nan)  # a gap where a strategy never clipped (no cosine)
    measured = [i for i, r in enumerate(cmp.runs) if r.stats.mean_cosine is not None]
    cosines[measured] = tally([cmp.runs[i].stats.mean_cosine for i in measured])
    ax2.plot(labels, cosines, "ko-", ms=4, label="mean cosine clipped vs unclipped (gap: never clipped)")
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("cosine")
    ax2.legend(fontsize=7, loc="lower right")
    tally.note(ax)
    ax.set_title("How often each strategy clipped, and how much it turned the gradient")
    return fig


def train_figures(result) -> dict[str, FigureBuilder]:
    """A builder per figure of ``rnndiag train``, by name; nothing is drawn until one is called
    (``draw_figures``)."""
    figs = {"loss": partial(_train_loss_figure, result),
            "grad_norm_over_training": partial(_train_grad_norm_figure, result)}
    if result.history.diag:
        figs["grad_norm_heatmap"] = partial(_train_heatmap_figure, result)
        figs["spectral_radius_over_training"] = partial(_train_spectral_figure, result)
    return figs


def _train_loss_figure(result) -> Figure:
    h = result.history
    fig, ax = new_axes()
    tally = Tally()
    if h.loss:
        loss = tally(h.loss, positive=True)
        t, yy = thin(np.arange(loss.size), loss)
        plot_curve(ax, t, yy, lw=1, color=_color(0), label="training loss")
        tests = [(d.iteration, d.test_loss) for d in h.diag if d.test_loss is not None]
        if tests:
            its, test_loss = zip(*tests)
            ax.plot(its, tally(test_loss, positive=True), "o-", ms=3, color=_color(1), label="test loss")
    _loss_axes(ax, tally, result.baseline)
    ax.set_title("Loss")
    return fig


def _train_grad_norm_figure(result) -> Figure:
    h = result.history
    fig, ax = new_axes()
    tally = Tally()
    if h.grad_norm:
        g = tally(h.grad_norm, positive=True)
        t, g1, g2 = thin(np.arange(g.size), g, tally(h.grad_norm_clipped, positive=True))
        plot_curve(ax, t, g1, lw=0.8, color=_color(1), label="before clipping")
        plot_curve(ax, t, g2, lw=0.8, color=_color(0), label="after clipping")
    tally.note(ax)
    finish_axes(ax, xlabel="iteration", ylabel="global gradient norm", title="Gradient norm", legend=7,
                log_y=tally.log_range())
    return fig


def _train_heatmap_figure(result) -> Figure:
    h = result.history
    its = [d.iteration for d in h.diag]
    rows = np.array([d.grad_norm_per_step for d in h.diag], dtype=float)  # (diagnostics, T)
    tally = Tally()
    with np.errstate(divide="ignore", invalid="ignore"):
        heat = tally(np.log10(rows))  # 0, inf, nan: not drawn
    fig, ax = new_axes(7.0, 4.0)
    finite = heat[~np.isnan(heat)]
    norm = Normalize(*(np.percentile(finite, [1, 99]) if finite.size else (0, 1)))
    im = ax.imshow(heat, aspect="auto", origin="lower", cmap="viridis", norm=norm, interpolation="nearest")
    ax.set_yticks(range(len(its)))
    ax.set_yticklabels([str(i) for i in its], fontsize=7)
    ax.set_xlabel("timestep t")
    ax.set_ylabel("training iteration")
    ax.set_title("log10 ||dL/dh_t|| over training")
    fig.colorbar(im, ax=ax, label="log10 ||dL/dh_t||")
    tally.note(ax)
    return fig


def _train_spectral_figure(result) -> Figure:
    h = result.history
    its = [d.iteration for d in h.diag]
    fig, ax = new_axes()
    tally = Tally()
    for k in range(len(h.diag[0].layers)):
        ax.plot(its, tally([d.layers[k].spectral_radius for d in h.diag]), "o-", ms=3, color=_color(k),
                label=f"layer {k} spectral radius")
        ax.plot(its, tally([d.layers[k].sigma_max for d in h.diag]), "s--", ms=3, color=_color(k),
                label=f"layer {k} sigma_max")
    ax.axhline(1.0, color="grey", ls=":", lw=1)
    tally.note(ax)
    finish_axes(ax, xlabel="iteration", title="Recurrent weights over training", legend=7)
    return fig
