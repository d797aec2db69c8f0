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
            rows.append((prefix, f"{len(obj)} values: min {fmt_num(arr.min(), '.4g')}, median "
                                 f"{fmt_num(np.median(arr), '.4g')}, max {fmt_num(arr.max(), '.4g')} (all in "
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


def render_html(diag, metrics: dict, figures_png: dict[str, bytes], config: dict) -> str:
    """The report as one HTML string. ``config`` holds user-facing strings (command line, file names): escaped."""
    figures = [{"name": name, "title": name.replace("_", " "),
                "data": base64.b64encode(png).decode("ascii")} for name, png in figures_png.items()]
    template = _env().get_template("report.html")
    versions = {"rnndiag": __version__, "python": platform.python_version(), "numpy": np.__version__}
    return template.render(
        diag=diag,
        metrics=metrics,
        figures=figures,
        config=config,
        versions=versions,
        generated=_dt.datetime.now().isoformat(timespec="seconds"),
        number_rows=flatten_numbers(metrics),
        metrics_json=json.dumps(metrics, indent=1, allow_nan=False),
    )


def render_comparison(kind: str, title: str, headline: str, reasons, columns, rows, config, command: str,
                      metrics: dict, figures_png: dict[str, bytes]) -> str:
    """The report of `rnndiag init`, `clip` or `train` as one HTML string (every string escaped)."""
    figures = [{"name": name, "title": name.replace("_", " "),
                "data": base64.b64encode(png).decode("ascii")} for name, png in figures_png.items()]
    return _env().get_template("comparison.html").render(
        kind=kind, title=title, headline=headline, reasons=list(reasons), columns=list(columns),
        rows=[list(r) for r in rows], config=list(config), command=command, figures=figures, version=__version__,
        generated=_dt.datetime.now().isoformat(timespec="seconds"),
        metrics_json=json.dumps(metrics, indent=1, allow_nan=False))
