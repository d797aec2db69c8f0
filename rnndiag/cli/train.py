"""``rnndiag train``: one training run with diagnostics over time, checkpointed and resumable."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import click

from .._validation import one_line
from .output import (
    InputError,
    OutputRequest,
    comparison_report,
    emit,
    library_errors,
    output_options,
    output_request,
    print_report_path,
    print_results,
)
from .requests import (
    ModelRequest,
    TrainingRequest,
    given_options,
    init_option,
    training_command,
    training_options,
    weights_options,
)


@dataclass(frozen=True)
class TrainRequest:
    """Everything ``rnndiag train`` was asked, checked."""

    model: ModelRequest
    training: TrainingRequest
    steps: int
    clip: tuple[str, float | None]  # strategy, threshold
    clip_text: str  # as typed, for the reproducing command
    schedule: str
    diag_points: int
    checkpoint: Path | None
    checkpoint_every: int
    resume: bool
    output: OutputRequest


def _clip_strategy(text: str) -> tuple[str, float | None]:
    from ..experiments import parse_strategies

    try:
        ((name, threshold),) = parse_strategies(text)
    except ValueError as exc:
        raise InputError(one_line(exc) if "," not in text else "--clip takes one strategy, e.g. global_norm:1") \
            from None
    return name, threshold


def train_request(opts: dict) -> TrainRequest:
    output = output_request(opts)
    model, training = ModelRequest.from_options(opts, given_options()), TrainingRequest.from_options(opts)
    clip = _clip_strategy(opts["clip_spec"])
    checkpoint, resume = opts["checkpoint"], opts["resume"]
    if resume and checkpoint is None:
        raise InputError("--resume needs --checkpoint FILE")
    if checkpoint is not None and checkpoint.exists() and not resume and not opts["force"]:
        raise InputError(f"checkpoint {str(checkpoint)!r} exists; pass --resume to continue it or --force to start "
                         "over")
    return TrainRequest(model, training, opts["steps"], clip, opts["clip_spec"], opts["schedule"], opts["diag_points"],
                        checkpoint, opts["checkpoint_every"] if checkpoint else 0, resume, output)


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
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from ..render.compare import train_figures, train_headline, train_table
    from ..train import train

    request = train_request(opts)
    training, output = request.training, request.output
    console = output.console()
    with library_errors():
        model = request.model.build_for_task(training.task)
        cfg = training.config(request.steps, clip=request.clip[0], clip_threshold=request.clip[1],
                              schedule=request.schedule, diag_points=request.diag_points,
                              checkpoint_every=request.checkpoint_every)
        with Progress(TextColumn("training"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TextColumn("loss {task.fields[loss]}  |g| {task.fields[norm]}"), TimeRemainingColumn(),
                      console=console, transient=True, disable=output.quiet) as bar:
            task = bar.add_task("train", total=cfg.steps, loss="-", norm="-")

            def progress(i, loss, norm):
                bar.update(task, completed=i + 1, loss=f"{loss:.4g}", norm=f"{norm:.3g}")

            result = train(model, cfg, resume=request.checkpoint if request.resume else None,
                           checkpoint=request.checkpoint, progress=progress)
    title = f"{model.describe()} on {training.task}"
    table, headline = train_table(result, f"{title}: diagnostics over training"), train_headline(result)
    print_results(console, table, headline, alarm=result.diverged)
    command = training_command("train", request.model, training, [
        "--steps", str(request.steps), "--clip", request.clip_text, "--schedule", request.schedule,
        "--diag-points", str(request.diag_points)], model=model)
    config = training.config_rows(model, ("clipping", request.clip_text), ("steps", request.steps))
    report = comparison_report("train", title, table, headline, config, command,
                               {"cell": model.cell, **result.to_dict()}, lambda: train_figures(result))
    print_report_path(console, emit(output, report, console, f"train-{model.cell}"))
    if result.diverged:
        sys.exit(1)
