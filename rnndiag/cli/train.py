"""``rnndiag train``: one training run with diagnostics over time, checkpointed and resumable."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

import click
from rich.text import Text

from .._validation import one_line
from .output import (
    InputError,
    Interrupted,
    OutputRequest,
    comparison_report,
    emit,
    library_errors,
    one_way_only,
    output_options,
    output_request,
    print_report_path,
    print_results,
)
from .requests import (
    ModelRequest,
    TrainingRequest,
    check_memory,
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


def clip_strategy(text: str) -> tuple[str, float | None]:
    from ..experiments import parse_strategies

    if not text.strip():
        raise InputError("--clip is empty; give one strategy, e.g. --clip global_norm:1 (or --clip none)")
    try:
        ((name, threshold),) = parse_strategies(text)
    except ValueError as exc:
        raise InputError(one_line(exc).replace("--strategies", "--clip") if "," not in text.strip(",") else
                         "--clip takes one strategy, e.g. global_norm:1") from None
    return name, threshold


def _checkpoint(opts: dict, output: OutputRequest) -> Path | None:
    """--checkpoint, checked before any training: a file (not a folder or a pipe) that can be created in an
    existing folder, not the --json file or the --out folder; with --resume an existing regular file."""
    from ..files import PathError, check_output_file, open_regular, same_path

    checkpoint, resume = opts["checkpoint"], opts["resume"]
    if checkpoint is None:
        if resume:
            raise InputError("--resume needs --checkpoint FILE")
        return None
    try:
        if resume:
            open_regular(checkpoint, "checkpoint").close()  # exists, is a regular file, is readable
            check_output_file(checkpoint, "checkpoint", force=True)  # and can be replaced as the run goes on
        else:
            check_output_file(checkpoint, "checkpoint", force=opts["force"])
    except (PathError, OSError) as exc:
        text = one_line(exc)
        if "exists; pass --force" in text:
            text = f"checkpoint {checkpoint!r} exists; pass --resume to continue it or --force to start over"
        raise InputError(text) from None
    for other, option in ((output.json_path, "--json"), (output.out, "--out")):
        if other is not None and same_path(checkpoint, other):
            raise InputError(f"--checkpoint and {option} both name {str(other)!r}; give each its own path")
    return Path(checkpoint)


def train_request(opts: dict) -> TrainRequest:
    output = output_request(opts)
    model, training = ModelRequest.from_options(opts, given_options()), TrainingRequest.from_options(opts)
    clip = clip_strategy(opts["clip_spec"])
    checkpoint = _checkpoint(opts, output)
    return TrainRequest(model, training, opts["steps"], clip, opts["clip_spec"], opts["schedule"], opts["diag_points"],
                        checkpoint, opts["checkpoint_every"], opts["resume"], output)


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
@click.option("--checkpoint", type=click.Path(), default=None,
              help="Checkpoint file (.npz), written every --checkpoint-every iterations. [default: checkpoint.npz in "
                   "the report folder]")
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

    from ..files import same_path
    from ..memory import estimate_train
    from ..render.compare import train_figures, train_headline, train_table
    from ..train import TrainingInterrupted, train

    request = train_request(opts)
    training, output = request.training, request.output
    console = output.console()
    with library_errors():
        if request.model.weights is None:  # a fresh model: its sizes are known before anything is allocated
            check_memory(estimate_train(request.model.cell, None, request.model.hidden_size,
                                        request.model.num_layers, training.seq_len, training.batch_size,
                                        request.model.dtype or "float64", task=training.task, steps=request.steps,
                                        diag_points=request.diag_points))
        model = one_way_only(request.model.build_for_task(training.task), "train")
        check_memory(estimate_train(model.cell, model.input_size, model.hidden_size, model.num_layers,
                                    training.seq_len, training.batch_size, model.dtype, task=training.task,
                                    steps=request.steps, diag_points=request.diag_points))
        checkpoint, run_folder = request.checkpoint, None
        if checkpoint is not None and output.out is not None and output.formats and \
                same_path(checkpoint.parent, output.out):  # the checkpoint lives in the report folder: ours
            run_folder = output.reserve(f"train-{model.cell}")
        elif checkpoint is None and output.formats:  # the run writes its checkpoint into its report folder
            run_folder = output.reserve(f"train-{model.cell}")
            checkpoint = run_folder / "checkpoint.npz"
            if not output.quiet:
                console.print(Text(f"checkpoint every {request.checkpoint_every} iterations: {checkpoint} (continue "
                                   "a stopped run with --checkpoint PATH --resume)", style="dim"))
        cfg = training.config(request.steps, clip=request.clip[0], clip_threshold=request.clip[1],
                              schedule=request.schedule, diag_points=request.diag_points,
                              checkpoint_every=request.checkpoint_every if checkpoint is not None else 0)
        trained = 0
        with Progress(TextColumn("training"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TextColumn("loss {task.fields[loss]}  |g| {task.fields[norm]}"), TimeRemainingColumn(),
                      console=console, transient=True, disable=output.quiet or not console.is_terminal) as bar:
            task = bar.add_task("train", total=cfg.steps, loss="-", norm="-")

            def progress(i, loss, norm):
                nonlocal trained
                trained += 1
                bar.update(task, completed=i + 1, loss=f"{loss:.4g}", norm=f"{norm:.3g}")

            try:
                result = train(model, cfg, resume=checkpoint if request.resume else None, checkpoint=checkpoint,
                               progress=progress)
            except TrainingInterrupted as exc:
                if run_folder is not None and request.checkpoint is None:
                    with contextlib.suppress(OSError):
                        run_folder.rmdir()  # only if still empty: no checkpoint was written into it
                raise Interrupted(_interrupted(exc, explicit=request.checkpoint is not None)) from None
    title = f"{model.describe()} on {training.task}"
    table, headline = train_table(result, f"{title}: diagnostics over training"), train_headline(result)
    print_results(console, table, headline, alarm=result.diverged or result.failure is not None)
    command = training_command("train", request.model, training, [
        "--steps", str(request.steps), "--clip", request.clip_text, "--schedule", request.schedule,
        "--diag-points", str(request.diag_points)], model=model)
    config = training.config_rows(model, ("clipping", request.clip_text), ("steps", request.steps))
    report = comparison_report("train", title, table, headline, config, command,
                               {"cell": model.cell, **result.to_dict()}, lambda: train_figures(result))
    if request.resume and trained == 0 and result.complete and not output.quiet:
        console.print(Text(f"the checkpoint already held all {request.steps} iterations: nothing was trained; pass a "
                           "larger --steps to continue it", style="yellow"))
    stop = result.failure or result.history.stopped
    if stop:  # why the run ended early goes to stderr whatever the verbosity, before the report is written
        kept = f"; checkpoint {str(checkpoint)!r} holds {result.checkpoint_saved} iterations" \
            if checkpoint is not None and result.checkpoint_saved else ""
        click.echo(f"rnndiag: training stopped: {stop}{kept}", err=True)
    print_report_path(console, emit(output, report, console, f"train-{model.cell}", reserved=run_folder))
    if stop:
        sys.exit(1)


def _interrupted(exc, *, explicit: bool) -> str:
    """What Ctrl-C kept: the checkpoint to continue from, and how."""
    if exc.checkpoint is None:
        return (f"interrupted at iteration {exc.iteration}; no checkpoint had been written yet (--checkpoint-every "
                "sets how often)")
    how = "the same command and --resume" if explicit else f"--checkpoint {str(exc.checkpoint)!r} --resume"
    return (f"interrupted at iteration {exc.iteration}; checkpoint {str(exc.checkpoint)!r} holds {exc.saved} "
            f"iterations: continue with {how}")

