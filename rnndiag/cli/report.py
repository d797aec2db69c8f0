"""``rnndiag report RUN_DIR``: render a run recorded by ``rnndiag.pytorch.watch`` -- the gradient flow of every
recurrent module over timesteps and iterations -- as the same terminal summary, HTML, PNG and JSON as the other
commands. Reads what is complete (a run may still be writing); each capture's analysis is cached beside it."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import click
import numpy as np

from ..analysis import HORIZON_FACTOR
from .output import Report, emit, library_errors, output_options, output_request


@click.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--module", default=None, metavar="NAME",
              help="Only this recurrent module of the run (its name, or a unique ending). [default: all]")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the analysis's sampling and probe vectors (the same as for analyze --capture).")
@click.option("--horizon-factor", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=HORIZON_FACTOR,
              show_default=True, help="Horizon: steps back until the gradient falls below this factor.")
@output_options("run")
def report_cmd(run_dir, module, seed, horizon_factor, **opts):
    """Render a run recorded with rnndiag.pytorch.watch: per-step gradient flow over iterations.

    A heatmap of log10 ||dL/dh_t|| (iteration x timestep) per recurrent module, layer and direction; horizon,
    decay rate, top Lyapunov exponent, global gradient norm and clipping over iterations; the verdict at each
    capture; what the gates learned. Works on a run that is still being written.

    \b
    Examples:
      rnndiag report runs/lm
      rnndiag report runs/lm --module encoder.rnn --json - --format none
    """
    from ..render.run_report import render_run_html, run_figures, run_summary
    from ..run import analyze_run, run_metrics

    t_start = time.perf_counter()
    output = output_request(opts)
    console = output.console()
    with library_errors():
        with console.status("replaying and analysing the captures (cached per capture)...", spinner="dots") as st:
            ra = analyze_run(run_dir, module, progress=lambda name: st.update(f"analysing {name}..."), seed=seed,
                             horizon_factor=horizon_factor, dtype=np.float64)
    command = shlex.join(["rnndiag", "report", str(run_dir), *(["--module", module] if module else []),
                          *(["--seed", str(seed)] if seed else []), "--horizon-factor", repr(horizon_factor)])
    metrics = {**run_metrics(ra), "command": command}
    config = {"command": command, "title": f"run {run_dir}"}
    report = Report(metrics, lambda: run_figures(metrics),
                    lambda pngs, failed: render_run_html(metrics, pngs, failed, config))
    written = emit(output, report, console, "run")
    run_summary(console, metrics, str(written.path) if written.path else None)
    if not output.quiet:
        cached = sum(1 for a in ra.analyses if a.cached)
        console.print(f"[dim]done in {time.perf_counter() - t_start:.2f} s ({len(ra.analyses)} analyses, {cached} "
                      f"from the cache; figures {written.figures_s:.2f} s, writing {written.writing_s:.2f} s)[/dim]")
