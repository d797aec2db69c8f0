"""The report of ``rnndiag sweep``: phase diagrams over two swept axes (horizon / T, top Lyapunov exponent with its
lambda = 0 contour, decay rate, final training loss), the mean-field prediction where it applies, the ranking, the
failed points -- drawn from the sweep's metrics dict alone."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from rich.console import Console
from rich.text import Text

from . import fmt_num
from .figures import FigureBuilder, finish_axes, new_axes

LABELS = {"horizon_fraction": "gradient horizon / T", "lyapunov_top": "top Lyapunov exponent (nats/step)",
          "decay_per_step": "decay rate (log10 per step)", "final_test_loss": "final test loss (median)"}
RANK_COLUMNS = ("rank", "configuration", "points", "verdict", "horizon / T", "top Lyapunov", "final test loss")


def _ticks(values) -> list[str]:
    return [fmt_num(v, ".3g") if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v) for v in values]


def _grid(table: dict) -> np.ndarray:
    return np.array([[np.nan if v is None else float(v) for v in row] for row in table["z"]], dtype=float)


def phase_figure(table: dict, mean_field: dict | None) -> Figure:
    """A heatmap of one metric over (x, y) -- or a line over x when only one axis is swept."""
    z = _grid(table)
    label = LABELS.get(table["metric"], table["metric"])
    fig, ax = new_axes(7.0, 4.2)
    if table["y_axis"] is None:
        ax.plot(range(len(table["x"])), z[0], "o-")
        ax.set_xticks(range(len(table["x"])), _ticks(table["x"]), rotation=45)
        if table["metric"] == "lyapunov_top":
            ax.axhline(0.0, color="grey", lw=0.8)
        finish_axes(ax, xlabel=table["x_axis"], ylabel=label, title=f"{label} over {table['x_axis']}")
        return fig
    finite = z[np.isfinite(z)]
    kwargs = {"cmap": "viridis"}
    if table["metric"] == "lyapunov_top" and finite.size and finite.min() < 0 < finite.max():
        kwargs = {"cmap": "RdBu_r", "norm": TwoSlopeNorm(0.0, finite.min(), finite.max())}
    im = ax.imshow(np.ma.masked_invalid(z), origin="lower", aspect="auto", **kwargs)
    fig.colorbar(im, ax=ax, label=label)
    if table["metric"] == "lyapunov_top" and finite.size and finite.min() < 0 < finite.max():
        ax.contour(np.ma.masked_invalid(z), levels=[0.0], colors="k", linewidths=1.5)
    if mean_field is not None and table["x_axis"] == "gain":
        xs = [float(v) for v in table["x"]]
        pos = float(np.interp(mean_field["boundary_gain"], xs, range(len(xs)))) if len(xs) > 1 else 0.0
        ax.axvline(pos, color="w", ls="--", lw=1.2, label="mean field: lambda = 0 at g = 1")
        ax.legend(loc="upper left", fontsize=7)
    ax.set_xticks(range(len(table["x"])), _ticks(table["x"]), rotation=45)
    ax.set_yticks(range(len(table["y"])), _ticks(table["y"]))
    finish_axes(ax, xlabel=table["x_axis"], ylabel=table["y_axis"],
                title=f"{label} (median over the other axes)")
    return fig


def mean_field_figure(metrics: dict) -> Figure | None:
    """Measured top exponent against gain per init scheme, and the mean-field curve."""
    mf = metrics.get("mean_field")
    if not mf:
        return None
    fig, ax = new_axes(7.0, 4.0)
    ax.plot(mf["mesh"], mf["mesh_lyapunov_top"], "k-", lw=1.2, label="mean field (N -> inf)")
    by_init: dict[str, dict[float, list]] = {}
    for p in metrics["points"]:
        lam = p.get("lyapunov_top")
        if p.get("status") == "done" and lam is not None and "gain" in p:
            by_init.setdefault(str(p.get("init", "?")), {}).setdefault(float(p["gain"]), []).append(lam)
    for init, pts in sorted(by_init.items()):
        g = sorted(pts)
        ax.plot(g, [float(np.median(pts[v])) for v in g], "o", label=f"measured, init {init} (median)")
    ax.axhline(0.0, color="grey", lw=0.8)
    finish_axes(ax, xlabel="gain g", ylabel="top Lyapunov exponent (nats/step)",
                title="order-chaos transition: measured vs mean field", legend=4)
    return fig


def sweep_figures(metrics: dict) -> dict[str, FigureBuilder]:
    out: dict[str, FigureBuilder] = {}
    for metric, table in (metrics.get("phases") or {}).items():
        out[f"phase_{metric}"] = lambda t=table: phase_figure(t, metrics.get("mean_field"))
    if metrics.get("mean_field"):
        out["mean_field"] = lambda: mean_field_figure(metrics)
    return out


def _config_text(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "(all defaults)"


def ranking_rows(metrics: dict) -> list[list[str]]:
    return [[str(r["rank"]), _config_text(r["params"]), str(r["points"]), r["verdict"],
             fmt_num(r["horizon_fraction"], ".3g"), fmt_num(r["lyapunov_top"], "+.4f"),
             fmt_num(r["final_test_loss"], ".4g")] for r in metrics.get("ranking", [])]


def headline(metrics: dict) -> str:
    c = metrics["counts"]
    return (f"{c.get('done', 0)} point(s) done, {c.get('failed', 0)} failed, {c.get('pending', 0)} pending "
            f"({metrics['mode']}, {metrics['wall_s']:.1f} s)")


def render_sweep_html(metrics: dict, pngs: dict[str, bytes], failed: dict[str, str], config: dict) -> str:
    from .html import render_comparison

    reasons = [f"Looked at: {metrics['looked_at']}", *metrics.get("notes", []),
               *(f"failed: {_config_text(f['params'])}: {f['error']}" for f in metrics.get("failed", [])[:20])]
    rows = [("grid", "; ".join(f"{k} = {', '.join(map(str, v))}" for k, v in metrics["grid"].items())),
            ("database", metrics["db"]), ("phase diagram axes", f"{metrics['x_axis']} x {metrics['y_axis']}")]
    return render_comparison("sweep", config.get("title", "sweep"), headline(metrics), reasons, RANK_COLUMNS,
                             ranking_rows(metrics), rows, config["command"], metrics, pngs, failed)


def sweep_summary(console: Console, metrics: dict, report_path: str | None) -> None:
    from .terminal import print_table

    console.print(Text("looked at: ", style="bold").append(metrics["looked_at"]))
    console.print(Text(headline(metrics)))
    for note in metrics.get("notes", []):
        console.print(Text(f"note: {note}", style="yellow"))
    rows = ranking_rows(metrics)[:10]
    if rows:
        print_table(console, "best configurations (ranked)", RANK_COLUMNS, rows)
    for f in metrics.get("failed", [])[:5]:
        console.print(Text(f"failed: {_config_text(f['params'])}: {f['error']}", style="red"))
    if len(metrics.get("failed", [])) > 5:
        console.print(Text(f"... and {len(metrics['failed']) - 5} more failed point(s) (in the report)", style="red"))
    if report_path:
        console.print(Text("report: ", style="bold").append(report_path))

