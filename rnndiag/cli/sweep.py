"""``rnndiag sweep``: the analysis (and training) of fresh models over a grid of choices -- phase diagrams of
initialization -- on a Dask cluster or in-process, resumable from its SQLite database."""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

import click

from .output import InputError, Report, emit, library_errors, output_options, output_request

DB_FOLDER = Path("reports")


def default_db(grid: dict) -> Path:
    """The database of a grid when --db is not given: the same grid, the same file (so re-running resumes)."""
    digest = hashlib.sha256(json.dumps({k: list(v) for k, v in grid.items()}, sort_keys=True).encode()).hexdigest()
    return DB_FOLDER / f"sweep-{digest[:12]}.sqlite"


def _live_progress(console, total_hint: int, swept: list[str]):
    """A rich progress bar (done / failed / running, rate, ETA) with a table of the last results under it."""
    from rich.console import Group
    from rich.live import Live
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table

    bar = Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                   TimeRemainingColumn(), console=console)
    task = bar.add_task("", total=total_hint)
    live = Live(Group(bar), console=console, refresh_per_second=4, transient=False)

    def update(state) -> None:
        before = f", {state.skipped} before" if state.skipped else ""
        bar.update(task, total=state.total - state.skipped, completed=state.done + state.failed,
                   description=f"done {state.done} failed {state.failed} running {state.running}{before} "
                               f"({state.rate:.2f}/s)")
        table = Table(title="last results", title_justify="left")
        for col in ("point", "verdict", "horizon", "top Lyapunov", "s"):
            table.add_column(col)
        for params, result, seconds in state.last[-5:]:
            text = ", ".join(f"{k}={params[k]}" for k in swept if k in params) or "(the one point)"
            if isinstance(result, dict):
                table.add_row(text, str(result.get("verdict")), str(result.get("horizon_steps")),
                              f"{result.get('lyapunov_top') or float('nan'):+.4f}", f"{seconds or 0:.2f}")
            else:
                table.add_row(text, "[red]failed[/red]", str(result)[:60], "", f"{seconds or 0:.2f}")
        live.update(Group(bar, table))

    return live, update


@click.command("sweep")
@click.option("--grid", "grid_specs", multiple=True, metavar="AXIS=VALUES",
              help="An axis and its values: gain=0.5:3:11 (11 values), lr=1e-4:1e-2:5:log, cell=lstm,gru, seed=0..3. "
                   "Repeat for more axes. Axes: cell, init, gain, forget_bias, hidden_size, num_layers, seq_len, "
                   "batch_size, input_scale (0: zero input, h0 ~ N(0, 1)), task, seed, train_steps, lr, optimizer, "
                   "clip, clip_threshold.")
@click.option("--grid-file", type=click.Path(path_type=Path), default=None,
              help="Axes from a TOML file: [grid] gain = {start = 0.5, stop = 3, num = 11}, lists, or single values.")
@click.option("--train-steps", type=click.IntRange(min=0), default=None,
              help="Also train each point this many steps (rnndiag train's loop) and record the final loss.")
@click.option("--db", "db_path", type=click.Path(path_type=Path), default=None,
              help="The sweep's SQLite database; re-running resumes it. [default: reports/sweep-<grid hash>.sqlite]")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes of the local Dask cluster (1: in this process). [default: the CPU count]")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run on an existing Dask cluster (e.g. tcp://10.0.0.5:8786) instead of a local one.")
@click.option("--retry-failed", is_flag=True, help="Run the points that failed before again.")
@click.option("--extend", is_flag=True, help="Add the new values of a changed grid to an existing database.")
@click.option("--max-points", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Refuse grids with more points than this.")
@click.option("--export", "export_path", type=click.Path(path_type=Path), default=None,
              help="Also write every point as CSV (.csv) or JSON lines (.jsonl).")
@click.option("--x", "x_axis", default=None, help="Phase diagram x axis. [default: the first swept axis]")
@click.option("--y", "y_axis", default=None, help="Phase diagram y axis. [default: the second swept axis]")
@output_options("sweep")
def sweep_cmd(grid_specs, grid_file, train_steps, db_path, workers, scheduler, retry_failed, extend, max_points,
              export_path, x_axis, y_axis, **opts):
    """Phase diagrams of initialization choices: analyse (and train) fresh models over a grid.

    \b
    Examples:
      rnndiag sweep --grid gain=0.5:3:11 --grid init=xavier_normal,orthogonal --grid seed=0..3 \\
                    --grid input_scale=0 --grid hidden_size=256 --grid seq_len=200
      rnndiag sweep --grid cell=rnn_tanh,lstm,gru --grid seq_len=50,100,200 --train-steps 300
      rnndiag sweep --grid-file grid.toml --scheduler tcp://10.0.0.5:8786
    """
    from ..render.sweep_report import render_sweep_html, sweep_figures, sweep_summary
    from ..sweep import run
    from ..sweep.grid import check_size, make_grid
    from ..sweep.points import analysis_point, check_grid_axes, memory_estimate
    from ..sweep.results import export, sweep_metrics

    output = output_request(opts)
    console = output.console()
    with library_errors():
        grid = make_grid(grid_specs, grid_file, {"train_steps": train_steps} if train_steps is not None else None)
        check_grid_axes(grid)
        total = check_size(grid, max_points)
        db = db_path or default_db(grid)
        if db_path is None:
            DB_FOLDER.mkdir(exist_ok=True)
        if export_path is not None and export_path.suffix.lower() not in (".csv", ".jsonl", ".ndjson"):
            raise InputError(f"--export {str(export_path)!r}: give a file ending in .csv or .jsonl")
    live, update = _live_progress(console, total, [k for k, v in grid.items() if len(v) > 1])
    with library_errors():
        with (live if not output.quiet else _Quiet()):
            result = run(grid, analysis_point, db, workers=workers, scheduler=scheduler, retry_failed=retry_failed,
                         extend=extend, max_points=max_points, progress=None if output.quiet else update,
                         memory_estimate=memory_estimate)
        if not output.quiet:
            console.print()
        from ..sweep.db import SweepDB

        reader = SweepDB(db)
        rows = reader.rows()
        stored = {k: tuple(v) for k, v in (reader.meta("grid") or grid).items()}
        reader.close()
        metrics = sweep_metrics(result, rows, stored, x_axis, y_axis)
        if export_path is not None:
            export(rows, export_path)
    command = shlex.join(["rnndiag", "sweep", *[a for s in grid_specs for a in ("--grid", s)],
                          *(["--grid-file", str(grid_file)] if grid_file else []),
                          *(["--train-steps", str(train_steps)] if train_steps is not None else []),
                          "--db", str(db)])
    metrics["command"] = command
    report = Report(metrics, lambda: sweep_figures(metrics),
                    lambda pngs, failed: render_sweep_html(metrics, pngs, failed, {"command": command,
                                                                                  "title": str(db)}))
    written = emit(output, report, console, "sweep")
    if not output.quiet:
        sweep_summary(console, metrics, str(written.path) if written.path else None)


class _Quiet:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
