"""``rnndiag train``: one training run with diagnostics over time, checkpointed and resumable."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.text import Text

from .compare import comparison_report, training_model, training_requests
from .output import emit, output_options, print_report_path, versioned
from .requests import (
    InputError,
    init_option,
    library_errors,
    one_line,
    training_command,
    training_options,
    weights_options,
)


def _clip_spec(text: str) -> tuple[str, float | None]:
    from ..experiments import parse_strategies

    try:
        ((name, threshold),) = parse_strategies(text)
    except ValueError as exc:
        raise InputError(one_line(exc) if "," not in text else "--clip takes one strategy, e.g. global_norm:1") \
            from None
    return name, threshold


def _check_checkpoint(checkpoint: Path | None, resume: bool, force: bool) -> None:
    if resume and checkpoint is None:
        raise InputError("--resume needs --checkpoint FILE")
    if checkpoint is not None and checkpoint.exists() and not resume and not force:
        raise InputError(f"checkpoint {str(checkpoint)!r} exists; pass --resume to continue it or --force to start "
                         "over")


@click.command("train")
@training_options
@weights_options
@init_option("pytorch", "Initialization of a fresh model.")
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True, help="Training iterations.")
@click.option("--clip", "clip_spec", default="global_norm:1", show_default=True,
              help="Clipping strategy:threshold (none, global_norm, per_param, value, autoclip:percentile).")
@click.option("--schedule", type=click.Choice(("log", "linear")), default="log", show_default=True,
              help="Spacing of the diagnostics over training.")
@click.option("--diag-points", type=click.IntRange(min=2), default=12, show_default=True)
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="Checkpoint file (.npz).")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from --checkpoint.")
@output_options("train-<cell>")
def train_cmd(**opts):
    """Train one configuration with diagnostics over time (loss, gradient norms, spectra, Lyapunov, gates).

    \b
    Examples:
      rnndiag train --cell gru --task adding --seq-len 100 --steps 2000 --lr 0.003
      rnndiag train --cell lstm --forget-bias 1 --checkpoint run.npz --resume
    """
    from ..render.compare import train_figures, train_headline, train_table
    from ..train import train

    model_req, training, output = training_requests(opts)
    console = output.console()
    clip_name, clip_threshold = _clip_spec(opts["clip_spec"])
    _check_checkpoint(opts["checkpoint"], opts["resume"], opts["force"])
    with library_errors():
        model = training_model(model_req, training)
        cfg = training.config(opts["steps"], clip=clip_name, clip_threshold=clip_threshold, schedule=opts["schedule"],
                              diag_points=opts["diag_points"],
                              checkpoint_every=opts["checkpoint_every"] if opts["checkpoint"] else 0)
        with Progress(TextColumn("training"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TextColumn("loss {task.fields[loss]}  |g| {task.fields[norm]}"), TimeRemainingColumn(),
                      console=console, transient=True, disable=output.quiet) as bar:
            task = bar.add_task("train", total=cfg.steps, loss="-", norm="-")

            def progress(i, loss, norm):
                bar.update(task, completed=i + 1, loss=f"{loss:.4g}", norm=f"{norm:.3g}")

            result = train(model, cfg, resume=opts["checkpoint"] if opts["resume"] else None,
                           checkpoint=opts["checkpoint"], progress=progress)
    title = f"{model.describe()} on {training.task}"
    table, headline = train_table(result, f"{title}: diagnostics over training"), train_headline(result)
    from ..render.terminal import print_table

    print_table(console, table.title, table.columns, table.rows)
    console.print(Text(headline.text, style="bold red" if result.diverged else "bold"))
    command = training_command("train", model_req, training, [
        "--steps", str(opts["steps"]), "--clip", opts["clip_spec"], "--schedule", opts["schedule"],
        "--diag-points", str(opts["diag_points"])], model=model)
    config = [("model", model.describe()), ("init", model.init), ("task", f"{training.task}, T = {training.seq_len}"),
              ("optimizer", f"{training.optimizer}, lr {training.lr:g}"), ("clipping", opts["clip_spec"]),
              ("steps", opts["steps"]), ("seed", training.seed)]
    report = comparison_report("train", title, table, headline, config, command,
                               versioned({"cell": model.cell, **result.to_dict()}, command),
                               lambda: train_figures(result))
    print_report_path(console, emit(output, report, console, f"train-{model.cell}"))
    if result.diverged:
        sys.exit(1)
