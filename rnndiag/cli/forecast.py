"""``rnndiag forecast``: will this model learn this task within this training budget?"""

from __future__ import annotations

from dataclasses import dataclass

import click

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
    check_memory,
    given_options,
    init_option,
    training_command,
    training_options,
    weights_options,
)
from .train import clip_strategy


@dataclass(frozen=True)
class ForecastRequest:
    """Everything ``rnndiag forecast`` was asked, checked."""

    model: ModelRequest
    training: TrainingRequest
    steps: int
    clip: tuple[str, float | None]
    clip_text: str
    target_loss: float | None
    output: OutputRequest


def forecast_request(opts: dict) -> ForecastRequest:
    from ..forecast import TASKS

    output = output_request(opts)
    model, training = ModelRequest.from_options(opts, given_options()), TrainingRequest.from_options(opts)
    if training.task not in TASKS:
        raise InputError(f"the forecast is calibrated on the {', '.join(TASKS)} tasks; got --task {training.task}: "
                         "choose one of them, or see with rnndiag train")
    return ForecastRequest(model, training, opts["steps"], clip_strategy(opts["clip_spec"]), opts["clip_spec"],
                           opts["target_loss"], output)


def budget_of(request: ForecastRequest):
    from ..forecast import Budget

    t = request.training
    return Budget(steps=request.steps, optimizer=t.optimizer, lr=t.lr, batch_size=t.batch_size, momentum=t.momentum,
                  clip=request.clip[0], clip_threshold=request.clip[1], target_loss=request.target_loss)


@click.command("forecast")
@training_options
@weights_options
@init_option("pytorch", "Initialization of a fresh model.")
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True,
              help="The training budget: iterations you plan to train.")
@click.option("--clip", "clip_spec", default="global_norm:1", show_default=True,
              help="Clipping strategy:threshold of the planned training (none, global_norm, per_param, value).")
@click.option("--target-loss", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Success: the held-out loss reaches this. [default: 0.1 x the task's trivial baseline]")
@output_options("forecast-<cell>")
def forecast_cmd(**opts):
    """Forecast whether a model learns a task within a training budget, spending at most 10% of its compute.

    The forecast measures the gradient's reach at the weights, what the memory gate's bias can change, and a
    short probe training by rnndiag, and answers with a calibrated probability and the numbers behind it.

    \b
    Examples:
      rnndiag forecast --cell gru --init tutorial --task adding --seq-len 200 --steps 2000
      rnndiag forecast --cell rnn_tanh --init orthogonal --seq-len 75 --steps 1000 --lr 0.003
      rnndiag forecast --weights ckpt.pt --task copy --seq-len 50 --steps 2000 --json - --format none
    """
    from ..forecast import forecast
    from ..memory import estimate_train
    from ..render.forecast import forecast_figures, forecast_headline, forecast_table

    request = forecast_request(opts)
    training = request.training
    console = request.output.console()
    with library_errors():
        model = request.model.build_for_task(training.task)
        check_memory(estimate_train(model.cell, model.input_size, model.hidden_size, model.num_layers,
                                    training.seq_len, training.batch_size, model.dtype, task=training.task,
                                    steps=max(1, request.steps // 10), diag_points=2))
        with console.status("forecasting (zero-cost measurements, then a probe of <= 10% of the budget)...",
                            spinner="dots"):
            f = forecast(model, training.task, training.seq_len, budget_of(request), seed=request.model.seed)
    headline, table = forecast_headline(f), forecast_table(f)
    print_results(console, table, headline, alarm=f.decided and not f.trains)
    command = training_command("forecast", request.model, training, [
        "--steps", str(request.steps), "--clip", request.clip_text,
        *(["--target-loss", repr(request.target_loss)] if request.target_loss is not None else [])], model=model)
    config = training.config_rows(model, ("clipping", request.clip_text), ("budget", f"{request.steps} steps"),
                                  ("target loss", f"{f.target_loss:.4g}"), ("looked at", f.looked_at))
    report = comparison_report("forecast", f"{model.describe()} on {training.task}", table, headline, config, command,
                               {"cell": model.cell, "forecast": f.to_dict()}, lambda: forecast_figures(f))
    print_report_path(console, emit(request.output, report, console, f"forecast-{model.cell}"))
