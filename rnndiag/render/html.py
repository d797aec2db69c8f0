"""The self-contained HTML report: Jinja2 with autoescape on, one template shipped as package data, figures as
base64 PNG. No external URL, script or font: it opens offline."""

from __future__ import annotations

import base64
import datetime as _dt
import json
import platform
from importlib import resources

import jinja2
import numpy as np

from .._version import __version__
from . import fmt_num


def _env() -> jinja2.Environment:
    loader = jinja2.FunctionLoader(
        lambda name: resources.files("rnndiag.render").joinpath("templates", name).read_text("utf-8"))
    env = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["num"] = fmt_num  # {{ value|num(".4g") }}: numbers as every table shows them
    return env


def flatten_numbers(obj, prefix: str = "") -> list[tuple[str, str]]:
    """Every number in the metrics as (key path, value) rows; long lists summarised (they are in metrics.json)."""
    rows: list[tuple[str, str]] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            rows += flatten_numbers(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        nums = [v for v in obj if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if obj and len(nums) == len(obj) and len(obj) > 12:
            arr = np.asarray(nums, dtype=float)
            with np.errstate(all="ignore"):  # the median of values near 1e308 overflows: n/a, not a warning
                median = np.median(arr)
            rows.append((prefix, f"{len(obj)} values: min {fmt_num(arr.min(), '.4g')}, median "
                                 f"{fmt_num(median, '.4g')}, max {fmt_num(arr.max(), '.4g')} (all in "
                                 "metrics.json)"))
        elif obj and all(isinstance(v, (dict, list)) for v in obj):
            for i, v in enumerate(obj):
                rows += flatten_numbers(v, f"{prefix}[{i}]")
        elif (obj and any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in obj)) or \
                any(v is None for v in obj):
            shown = ("null" if v is None else fmt_num(v, ".6g") if isinstance(v, float) else str(v) for v in obj)
            rows.append((prefix, ", ".join(shown)))
    elif isinstance(obj, bool) or obj is None:
        if obj is None:
            rows.append((prefix, "null"))
    elif isinstance(obj, (int, float)):
        rows.append((prefix, fmt_num(obj, ".6g") if isinstance(obj, float) else str(obj)))
    return rows


# How to read each figure, by figure name (the PNG's file stem): one or two sentences under it in the report.
CAPTIONS = {
    # rnndiag analyze
    "grad_norm_per_step": "Median and min-max over the batch of ||dL/dh_t||, log scale. A line falling to the left "
                          "means the gradient vanishes going back in time; rising, it explodes.",
    "jacobian_product_norm": "log10 of the norm of the Jacobian product from step t to the last step (solid) and of "
                             "the last-step gradient relative to its end value (dashed), per layer. Where a line "
                             "drops below the dotted horizon factor, the end of the sequence no longer reaches "
                             "step t.",
    "step_jacobian_norm": "Spectral norm of each one-step Jacobian ||J_t||_2, median over the batch. Below the dotted "
                          "line at 1 a step shrinks the gradient; above it, it can grow it.",
    "eigenvalues_w_hh": "Eigenvalues of each layer's recurrent weight matrix in the complex plane, with the unit "
                        "circle. All inside: the recurrence contracts; points outside can make it expand.",
    "singular_values": "Singular values of the recurrent weights (and of each gate block), largest first, log scale. "
                       "The largest below the dotted line at 1: every direction shrinks at each step, so with a "
                       "tanh or sigmoid cell the gradient must vanish.",
    "lyapunov_spectrum": "Lyapunov exponents of the hidden-state dynamics, nats per step (mean and sd over "
                         "sequences). The top one below 0: perturbations and gradients decay; above 0: they grow "
                         "(chaos).",
    "gate_saturation": "Histogram of each gate's activations, per layer; the shaded ends are saturated (sigmoid "
                       "below 0.1 or above 0.9, tanh beyond ±0.9). Much mass there: those gates pass little "
                       "gradient.",
    # rnndiag init
    "grad_flow_at_init": "log10 of the median ||dL/dh_t|| relative to the last step at initialization, one line per "
                         "scheme. The flatter a line to the left, the further back the gradient reaches; dotted: "
                         "the horizon factor.",
    "horizon_at_init": "Gradient horizon at initialization: how many steps back the gradient stays above the horizon "
                       "factor, per scheme. A bar at the dotted line (the sequence length) reaches the whole "
                       "sequence.",
    "training_loss": "Training loss per scheme over the iterations, log scale; dotted: the loss of the trivial "
                     "predictor. A curve well below it learned the task.",
    # rnndiag clip
    "loss_per_strategy": "Training loss per clipping strategy, log scale; dotted: the loss of the trivial predictor. "
                         "Gaps are non-finite losses; a curve that stops early diverged.",
    "grad_norm_distribution": "Histogram of the pre-clip global gradient norm (log10) per strategy; dashed: the "
                              "global-norm thresholds. A threshold left of the bulk clips almost every step; right "
                              "of it, almost never.",
    "fraction_clipped_and_cosine": "Bars: the fraction of iterations each strategy clipped. Dots: the mean cosine "
                                   "between the clipped and the unclipped gradient when it fired; near 1 the "
                                   "direction was kept, lower means clipping turned it.",
    # rnndiag train
    "loss": "Training loss (line) and held-out test loss (dots) over the iterations, log scale; dotted: the loss of "
            "the trivial predictor. Well below it, the model learned.",
    "grad_norm_over_training": "Global gradient norm per iteration before and after clipping, log scale. Where the "
                               "two differ, clipping fired; spikes before clipping are exploding gradients.",
    "grad_norm_heatmap": "log10 ||dL/dh_t|| (colour) per timestep (across) at each diagnosed iteration (up). A row "
                         "fading to the left: at that point of training the gradient vanishes going back in time.",
    "spectral_radius_over_training": "Spectral radius (solid) and sigma_max (dashed) of each layer's recurrent "
                                     "weights at each diagnosed iteration; dotted: 1. Above 1 warns of exploding "
                                     "gradients, far below of vanishing ones.",
    # rnndiag forecast
    "forecast_evidence": "Each feature's term in the log-odds that the model trains within the budget: green bars "
                         "argue for, red against; their sum plus the intercept gives the probability in the title.",
    "probe_loss": "The probe's training loss (rnndiag, at most 10% of the budget's compute), log-log, with the "
                  "trivial baseline (dotted), the target (dashed green) and the trend extrapolated to the budget "
                  "(dashed). Where the dashed line ends below the target, the trend says the budget suffices.",
}
GENERIC_CAPTION = "Read the axis labels and the title; every number drawn here is in metrics.json."
WIDE_FIGURE_PX = 1000  # a figure drawn at least this wide takes a whole row of the grid


def png_width(png: bytes) -> int:
    """The pixel width in a PNG's header (0 if it is not a PNG)."""
    return int.from_bytes(png[16:20], "big") if png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) >= 24 else 0


def figure_cells(figures_png: dict[str, bytes], figure_errors: dict[str, str] | None = None) -> list[dict]:
    """The report's figure grid: one cell per figure, drawn (base64 PNG) or not (the reason), each with its
    caption; in the order of :data:`CAPTIONS`, unknown names after, in the order given."""
    errors = {k: v for k, v in (figure_errors or {}).items() if k not in figures_png}
    names = [*figures_png, *errors]
    known = list(CAPTIONS)
    names.sort(key=lambda n: known.index(n) if n in known else len(known))
    return [{"name": name, "title": name.replace("_", " "), "caption": CAPTIONS.get(name, GENERIC_CAPTION),
             "data": base64.b64encode(figures_png[name]).decode("ascii") if name in figures_png else None,
             "wide": png_width(figures_png.get(name, b"")) >= WIDE_FIGURE_PX,
             "error": errors.get(name)} for name in names]


def render_html(diag, metrics: dict, figures_png: dict[str, bytes], config: dict,
                figure_errors: dict[str, str] | None = None) -> str:
    """The report as one HTML string. ``config`` holds user-facing strings (command line, file names): escaped.
    ``figure_errors``: figure name -> why it could not be drawn, shown in its place."""
    template = _env().get_template("report.html")
    versions = {"rnndiag": __version__, "python": platform.python_version(), "numpy": np.__version__}
    return template.render(
        diag=diag,
        metrics=metrics,
        figures=figure_cells(figures_png, figure_errors),
        config=config,
        versions=versions,
        generated=_dt.datetime.now().isoformat(timespec="seconds"),
        number_rows=flatten_numbers(metrics),
        metrics_json=json.dumps(metrics, indent=1, allow_nan=False),
    )


def render_comparison(kind: str, title: str, headline: str, reasons, columns, rows, config, command: str,
                      metrics: dict, figures_png: dict[str, bytes], figure_errors: dict[str, str] | None = None) -> str:
    """The report of `rnndiag init`, `clip` or `train` as one HTML string (every string escaped)."""
    return _env().get_template("comparison.html").render(
        kind=kind, title=title, headline=headline, reasons=list(reasons), columns=list(columns),
        rows=[list(r) for r in rows], config=list(config), command=command,
        figures=figure_cells(figures_png, figure_errors), version=__version__,
        generated=_dt.datetime.now().isoformat(timespec="seconds"),
        metrics_json=json.dumps(metrics, indent=1, allow_nan=False))
