"""A sweep's results as numbers: the rows of its database, a phase diagram over two axes (the median over the
other axes, e.g. seeds), a ranking of configurations, the mean-field prediction where it applies, and exports
to CSV / JSON lines. No drawing here (see :mod:`rnndiag.render.sweep_report`)."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Mapping

from ..analysis.verdict import SEVERITY
from .points import DEFAULTS, PHASE_METRICS

EXPORT_COLUMNS = ("status", "seconds", "verdict", "confidence", "horizon_steps", "horizon_fraction", "seq_len",
                  "decay_per_step", "lyapunov_top", "spectral_radius", "sigma_max", "global_grad_norm",
                  "final_test_loss", "diverged", "error")


def flat(row: dict) -> dict:
    """One point as a flat record: its parameters, then :data:`EXPORT_COLUMNS` (training numbers when trained)."""
    m = row.get("metrics") or {}
    trained = m.get("trained") or {}
    out = dict(row["params"])
    for key in EXPORT_COLUMNS:
        if key in ("status", "seconds", "error"):
            out[key] = row.get(key)
        elif key in ("final_test_loss", "diverged"):
            out[key] = trained.get(key)
        else:
            out[key] = m.get(key)
    return out


def export(rows: list[dict], path) -> str:
    """Write the rows to ``path``: ``.csv`` or ``.jsonl`` (one flat record per line); returns the format."""
    from pathlib import Path

    from ..files import write_atomic

    path = Path(path)
    records = [flat(r) for r in rows]
    if path.suffix.lower() == ".csv":
        buf = io.StringIO()
        fields = list(dict.fromkeys(k for r in records for k in r))
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(records)
        write_atomic(path, buf.getvalue().encode())
        return "csv"
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in records).encode())
        return "jsonl"
    raise ValueError(f"--export {str(path)!r}: give a file ending in .csv or .jsonl")


def swept_axes(grid: Mapping[str, list]) -> list[str]:
    """The axes with more than one value, in grid order."""
    return [k for k, v in grid.items() if len(v) > 1]


def choose_axes(grid: Mapping[str, list], x: str | None = None, y: str | None = None) -> tuple[str | None, str | None]:
    """The phase diagram's axes: as asked, else the first two swept axes other than seed (seeds are the repeats
    the diagram takes the median over)."""
    swept = [a for a in swept_axes(grid) if a != "seed"]
    for name in (x, y):
        if name is not None and name not in grid:
            raise ValueError(f"--x/--y {name!r} is not an axis of this sweep ({', '.join(grid)})")
    x = x or (swept[0] if swept else None)
    y = y or next((a for a in swept if a != x), None)
    return x, y


def metric_value(row: dict, metric: str):
    m = row.get("metrics") or {}
    if metric == "final_test_loss":
        v = (m.get("trained") or {}).get("final_test_loss")
    else:
        v = m.get(metric)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def phase_table(rows: list[dict], grid: Mapping[str, list], x: str, y: str | None, metric: str) -> dict:
    """``{"x": values, "y": values or [None], "z": [[median over the other axes]], "n": [[points]]}``."""
    xs = list(grid[x])
    ys = list(grid[y]) if y else [None]
    cells: dict[tuple, list] = {}
    for r in rows:
        if r["status"] != "done":
            continue
        v = metric_value(r, metric)
        if v is None:
            continue
        p = {**DEFAULTS, **r["params"]}
        cells.setdefault((p.get(x), p.get(y) if y else None), []).append(v)
    z = [[_median(cells.get((xv, yv))) for xv in xs] for yv in ys]
    n = [[len(cells.get((xv, yv), [])) for xv in xs] for yv in ys]
    return {"x_axis": x, "y_axis": y, "x": xs, "y": ys, "metric": metric, "z": z, "n": n}


def _median(values):
    return statistics.median(values) if values else None


def mean_field_applies(grid: Mapping[str, list]) -> bool:
    """Mean-field theory describes a tanh RNN with zero input and a Gaussian N(0, g^2/N) W_hh over gain."""
    one = {k: v[0] for k, v in grid.items() if len(v) == 1}
    cells = list(grid.get("cell", [DEFAULTS["cell"]]))
    return "gain" in grid and cells == ["rnn_tanh"] and one.get("input_scale", DEFAULTS["input_scale"]) == 0 and \
        "xavier_normal" in grid.get("init", [DEFAULTS["init"]])


def mean_field_curve(grid: Mapping[str, list]) -> dict | None:
    """The mean-field top exponent at each gain of the grid (and on a fine mesh), or None where it does not
    apply."""
    if not mean_field_applies(grid):
        return None
    from ..analysis.meanfield import mean_field_exponent

    gains = sorted(float(g) for g in grid["gain"])
    lo, hi = min(gains), max(gains)
    mesh = [lo + (hi - lo) * i / 100 for i in range(101)] if hi > lo else [lo]
    return {"gain": gains, "lyapunov_top": [mean_field_exponent(g) for g in gains], "mesh": mesh,
            "mesh_lyapunov_top": [mean_field_exponent(g) for g in mesh], "boundary_gain": 1.0,
            "applies_to": "init xavier_normal (W_hh ~ N(0, g^2/N)), rnn_tanh, zero input"}


def ranking(rows: list[dict], grid: Mapping[str, list], limit: int = 20) -> list[dict]:
    """Configurations (the parameters but the seed) ranked: by the median final test loss when trained, else
    healthy before vanishing before exploding (the majority verdict over seeds), the longer horizon / T, then the
    top exponent closer to 0."""
    groups: dict[str, list] = {}
    shown = [a for a in swept_axes(grid) if a != "seed"]  # what tells configurations apart
    for r in rows:
        if r["status"] != "done":
            continue
        key = json.dumps({k: r["params"].get(k) for k in shown}, sort_keys=True)
        groups.setdefault(key, []).append(r)
    out = []
    for key, rs in groups.items():
        verdicts = [r["metrics"]["verdict"] for r in rs]
        verdict = max(set(verdicts), key=lambda v: (verdicts.count(v), SEVERITY[v]))
        lam = _median([v for r in rs if (v := metric_value(r, "lyapunov_top")) is not None])
        out.append({"params": json.loads(key), "points": len(rs), "verdict": verdict,
                    "horizon_fraction": _median(
                        [v for r in rs if (v := metric_value(r, "horizon_fraction")) is not None]),
                    "lyapunov_top": lam, "final_test_loss": _median(
                        [v for r in rs if (v := metric_value(r, "final_test_loss")) is not None])})
    trained = any(o["final_test_loss"] is not None for o in out)

    def key(o):
        if trained:
            return (o["final_test_loss"] is None, o["final_test_loss"] or 0.0)
        return (SEVERITY[o["verdict"]], -(o["horizon_fraction"] or 0.0),
                abs(o["lyapunov_top"]) if o["lyapunov_top"] is not None else math.inf)

    out.sort(key=key)
    for i, o in enumerate(out, 1):
        o["rank"] = i
    return out[:limit]


def sweep_metrics(result, rows: list[dict], grid: Mapping[str, list], x=None, y=None) -> dict:
    """The JSON of ``rnndiag sweep``: the run, every point (flat), the phase tables, the ranking, failures."""
    from .._version import __version__
    from ..jsonsafe import jsonable

    gx, gy = choose_axes(grid, x, y)
    metrics = [m for m in PHASE_METRICS if any(metric_value(r, m) is not None for r in rows)]
    phases = {m: phase_table(rows, grid, gx, gy, m) for m in metrics} if gx else {}
    failed = [{"params": r["params"], "error": r["error"], "attempts": r["attempts"]} for r in rows
              if r["status"] == "failed"]
    return jsonable({
        "rnndiag_version": __version__, "kind": "sweep",
        "looked_at": "fresh models at initialization (and after training where train_steps > 0) on built-in task "
                     "inputs, or zero input with h0 ~ N(0, 1) where input_scale = 0",
        "db": result.db_path, "mode": result.mode, "wall_s": result.wall_s, "counts": result.counts,
        "notes": list(result.notes), "grid": {k: list(v) for k, v in grid.items()}, "x_axis": gx, "y_axis": gy,
        "phases": phases, "mean_field": mean_field_curve(grid), "ranking": ranking(rows, grid), "failed": failed,
        "points": [flat(r) for r in rows],
    })
