"""``rnndiag init`` and ``rnndiag clip``: compare initialization schemes and clipping strategies side by side."""

from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass

import click
from rich.text import Text

from ..files import write_atomic
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
    progress_printer,
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
class InitRequest:
    """Everything ``rnndiag init`` was asked, checked."""

    model: ModelRequest  # the sizes and gains; each scheme makes its own weights
    training: TrainingRequest
    schemes: tuple[str, ...]
    train_steps: int
    output: OutputRequest
    forecast_steps: int = 0


def init_request(opts: dict) -> InitRequest:
    from ..init import check_scheme

    output = output_request(opts)
    with library_errors():
        schemes = tuple(check_scheme(s.strip()) for s in opts["schemes"].split(",") if s.strip())
    if not schemes:
        raise InputError("--schemes is empty; e.g. --schemes tutorial,orthogonal")
    training = TrainingRequest.from_options(opts)
    if opts["forecast_steps"]:
        from ..forecast import TASKS

        if training.task not in TASKS:
            raise InputError(f"--forecast-steps: the forecast is calibrated on the {', '.join(TASKS)} tasks; got "
                             f"--task {training.task}")
    return InitRequest(ModelRequest.from_options(opts, given_options()), training, schemes, opts["train_steps"],
                       output, opts["forecast_steps"])


@click.command("init")
@training_options
@click.option("--schemes", default="tutorial,pytorch,xavier_uniform,orthogonal,identity,keras", show_default=True,
              help="Comma-separated initialization schemes to compare.")
@click.option("--train-steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also train each scheme this many steps and compare the final test loss.")
@click.option("--forecast-steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="Forecast whether each scheme trains within this many steps (with --lr, --optimizer, "
                   "--batch-size) and rank the schemes by it (each forecast costs <= 10% of the budget).")
@output_options("init-<cell>")
def init_cmd(**opts):
    """Compare initialization schemes side by side: at initialization and, with --train-steps, after training.

    \b
    Examples:
      rnndiag init --cell rnn_tanh --seq-len 100
      rnndiag init --cell lstm --schemes pytorch,keras,orthogonal --train-steps 500
    """
    from ..experiments import LEARNED_FRACTION, compare_inits
    from ..memory import estimate_init
    from ..render.compare import init_figures, init_headline, init_table
    from ..tasks import input_size as task_input_size

    request = init_request(opts)
    model_req, training = request.model, request.training
    console = request.output.console()
    with library_errors():
        check_memory(estimate_init(model_req.cell, None, model_req.hidden_size, model_req.num_layers, training.seq_len,
                                   training.batch_size, "float64", task=training.task, schemes=len(request.schemes),
                                   train_steps=request.train_steps))
        cmp = compare_inits(model_req.cell, task_input_size(training.task), model_req.hidden_size,
                            schemes=request.schemes, num_layers=model_req.num_layers, task=training.task,
                            seq_len=training.seq_len, batch_size=training.batch_size, seed=training.seed,
                            gain=model_req.gain, forget_bias=model_req.forget_bias, train_steps=request.train_steps,
                            train_kwargs={"lr": training.lr, "optimizer": training.optimizer,
                                          "momentum": training.momentum, "batch_size": training.batch_size},
                            progress=progress_printer(console), forecast_steps=request.forecast_steps)
    table, headline = init_table(cmp), init_headline(cmp, LEARNED_FRACTION)
    print_results(console, init_table(cmp, notes=False), headline)  # the notes print as the headline's reasons
    command = training_command("init", model_req, training, ["--schemes", ",".join(request.schemes),
                                                             "--train-steps", str(request.train_steps),
                                                             *(["--forecast-steps", str(request.forecast_steps)]
                                                               if request.forecast_steps else [])],
                               with_init=False)
    config = [("cell", cmp.cell), ("hidden size", cmp.hidden_size), ("layers", cmp.num_layers),
              ("task", f"{cmp.task}, T = {cmp.seq_len}"), ("seed", cmp.seed), ("train steps", cmp.train_steps)]
    report = comparison_report("init", f"{cmp.cell} on {cmp.task}", table, headline, config, command, cmp.to_dict(),
                               lambda: init_figures(cmp))
    print_report_path(console, emit(request.output, report, console, f"init-{cmp.cell}"))


@dataclass(frozen=True)
class ClipRequest:
    """Everything ``rnndiag clip`` was asked, checked."""

    model: ModelRequest
    training: TrainingRequest
    strategies: tuple[tuple[str, float | None], ...]  # (name, threshold)
    strategies_text: str  # as typed, for the reproducing command
    steps: int
    output: OutputRequest


def clip_request(opts: dict) -> ClipRequest:
    from ..experiments import parse_strategies

    output = output_request(opts)
    model, training = ModelRequest.from_options(opts, given_options()), TrainingRequest.from_options(opts)
    with library_errors():
        strategies = tuple(parse_strategies(opts["strategies"]))
    return ClipRequest(model, training, strategies, opts["strategies"], opts["steps"], output)


@click.command("clip")
@training_options
@weights_options
@init_option("pytorch", "Initialization of a fresh model.")
@click.option("--strategies", default="none,global_norm:1,value:5,per_param:1,autoclip:10", show_default=True,
              help="Comma-separated strategy:threshold list (none, global_norm, per_param, value, "
                   "autoclip:percentile).")
@click.option("--steps", type=click.IntRange(min=1), default=300, show_default=True, help="Training iterations.")
@output_options("clip-<cell>")
def clip_cmd(**opts):
    """Train the same model from the same seed under several clipping strategies and recommend one.

    \b
    Examples:
      rnndiag clip --cell rnn_tanh --init orthogonal --gain 2 --optimizer sgd --lr 0.05
      rnndiag clip --strategies none,global_norm:1,value:5 --steps 500
    """
    from ..experiments import compare_clipping
    from ..memory import estimate_clip
    from ..render.compare import clip_figures, clip_headline, clip_table

    request = clip_request(opts)
    training, output = request.training, request.output
    console = output.console()
    with library_errors():
        if request.model.weights is None:  # a fresh model: its sizes are known before anything is allocated
            check_memory(estimate_clip(request.model.cell, None, request.model.hidden_size, request.model.num_layers,
                                       training.seq_len, training.batch_size, request.model.dtype or "float64",
                                       task=training.task, steps=request.steps, strategies=len(request.strategies)))
        model = one_way_only(request.model.build_for_task(training.task), "clip")
        check_memory(estimate_clip(model.cell, model.input_size, model.hidden_size, model.num_layers, training.seq_len,
                                   training.batch_size, model.dtype, task=training.task, steps=request.steps,
                                   strategies=len(request.strategies)))
        run_folder = output.reserve(f"clip-{model.cell}") if output.formats else None

        kept: list = []

        def keep(runs) -> None:  # each finished run is on disk at once: a killed comparison loses one run at most
            kept[:] = runs
            try:
                write_atomic(run_folder / "runs_so_far.json",
                             json.dumps({"runs": [r.to_dict() for r in runs]}, allow_nan=False).encode("utf-8"))
            except OSError as exc:  # the comparison goes on; only the copy kept along the way is missing
                console.print(Text(f"warning: could not keep the finished runs in {str(run_folder)!r} "
                                   f"({exc.strerror or exc})", style="yellow"))

        try:
            cmp = compare_clipping(model, request.strategies, training.config(request.steps),
                                   progress=progress_printer(console), on_run=keep if run_folder else None)
        except KeyboardInterrupt:
            done = (f"{run_folder / 'runs_so_far.json'} holds the {len(kept)} finished run(s)" if kept
                    else "no run had finished")
            if run_folder is not None and not kept:
                with contextlib.suppress(OSError):
                    run_folder.rmdir()
            raise Interrupted(f"interrupted during the clipping comparison; {done}") from None
    table, headline = clip_table(cmp, f"{model.cell} ({model.init})"), clip_headline(cmp)
    print_results(console, table, headline)
    command = training_command("clip", request.model, training, ["--strategies", request.strategies_text,
                                                                 "--steps", str(request.steps)], model=model)
    config = training.config_rows(model, ("steps", request.steps))
    report = comparison_report("clip", f"{model.cell} on {training.task}", table, headline, config, command,
                               cmp.to_dict(), lambda: clip_figures(cmp))
    written = emit(output, report, console, f"clip-{model.cell}", reserved=run_folder)
    if run_folder is not None:  # the whole comparison is in metrics.json now
        (run_folder / "runs_so_far.json").unlink(missing_ok=True)
    print_report_path(console, written)
    failed = [f"{r.label}: {r.trained.failure}" for r in cmp.runs if r.trained.failure]
    if failed:  # a fault, not divergence (which is what clip shows): stderr whatever the verbosity, exit 1
        click.echo(f"rnndiag: {len(failed)} run(s) did not finish: {'; '.join(failed)}", err=True)
        sys.exit(1)
