"""``rnndiag init`` and ``rnndiag clip``: compare initialization schemes and clipping strategies side by side."""

from __future__ import annotations

import click
from rich.console import Console
from rich.text import Text

from .output import (
    OutputRequest,
    Report,
    emit,
    output_options,
    output_request,
    print_report_path,
    progress_printer,
    versioned,
)
from .requests import (
    InputError,
    ModelRequest,
    TrainingRequest,
    given_options,
    init_option,
    library_errors,
    training_command,
    training_options,
    weights_options,
)


def training_requests(opts: dict) -> tuple[ModelRequest, TrainingRequest, OutputRequest]:
    """The checked requests of init, clip and train: the model (fresh: a tanh RNN, hidden 32, PyTorch's init by
    default), the task and optimizer, the output."""
    model_req = ModelRequest.from_options(opts, given_options(), default_cell="rnn_tanh", hidden_size=32,
                                          num_layers=1, init="pytorch")
    return model_req, TrainingRequest.from_options(opts), output_request(opts)


def print_results(console: Console, table, headline) -> None:
    """A command's table, its headline and the reasons behind it (the same the HTML report shows)."""
    from ..render.terminal import print_table

    print_table(console, table.title, table.columns, table.rows)
    console.print(Text(headline.text, style="bold"))
    for line in headline.reasons:
        console.print(Text(f"  - {line}"))


def comparison_report(kind: str, title: str, table, headline, config, command: str, metrics: dict, figures):
    """The report of a comparison or a training run: the HTML page shows the table, headline and configuration."""
    from ..render.html import render_comparison

    return Report(metrics, figures, lambda pngs: render_comparison(
        kind, title, headline.text, headline.reasons, table.columns, table.rows, config, command, metrics, pngs))


def _parse_schemes(text: str) -> list[str]:
    from ..init import check_scheme

    schemes = [check_scheme(s.strip()) for s in text.split(",") if s.strip()]
    if not schemes:
        raise InputError("--schemes is empty; e.g. --schemes tutorial,orthogonal")
    return schemes


@click.command("init")
@training_options
@click.option("--schemes", default="tutorial,pytorch,xavier_uniform,orthogonal,identity,keras", show_default=True,
              help="Comma-separated initialization schemes to compare.")
@click.option("--train-steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also train each scheme this many steps and compare the final test loss.")
@output_options("init-<cell>")
def init_cmd(**opts):
    """Compare initialization schemes side by side: at initialization and, with --train-steps, after training.

    \b
    Examples:
      rnndiag init --cell rnn_tanh --seq-len 100
      rnndiag init --cell lstm --schemes pytorch,keras,orthogonal --train-steps 500
    """
    from ..experiments import LEARNED_FRACTION, compare_inits
    from ..render.compare import init_figures, init_headline, init_table
    from ..tasks import input_size as task_input_size

    model_req, training, output = training_requests(opts)
    console = output.console()
    with library_errors():
        schemes = _parse_schemes(opts["schemes"])
        cmp = compare_inits(model_req.cell, task_input_size(training.task), model_req.hidden_size, schemes=schemes,
                            num_layers=model_req.num_layers, task=training.task, seq_len=training.seq_len,
                            batch_size=training.batch_size, seed=training.seed, gain=model_req.gain,
                            forget_bias=model_req.forget_bias, train_steps=opts["train_steps"],
                            train_kwargs={"lr": training.lr, "optimizer": training.optimizer,
                                          "momentum": training.momentum, "batch_size": training.batch_size},
                            progress=progress_printer(console))
    table, headline = init_table(cmp), init_headline(cmp, LEARNED_FRACTION)
    note_dropped = table._replace(columns=table.columns[:-1], rows=[r[:-1] for r in table.rows])
    print_results(console, note_dropped if cmp.trained else table, headline)  # the notes print as reasons
    command = training_command("init", model_req, training, ["--schemes", ",".join(schemes), "--train-steps",
                                                             str(opts["train_steps"])])
    config = [("cell", cmp.cell), ("hidden size", cmp.hidden_size), ("layers", cmp.num_layers),
              ("task", f"{cmp.task}, T = {cmp.seq_len}"), ("seed", cmp.seed), ("train steps", cmp.train_steps)]
    report = comparison_report("init", f"{cmp.cell} on {cmp.task}", table, headline, config, command,
                               versioned(cmp.to_dict(), command), lambda: init_figures(cmp))
    print_report_path(console, emit(output, report, console, f"init-{cmp.cell}"))


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
    from ..experiments import compare_clipping, parse_strategies
    from ..render.compare import clip_figures, clip_headline, clip_table

    model_req, training, output = training_requests(opts)
    console = output.console()
    with library_errors():
        strategies = parse_strategies(opts["strategies"])
        model = training_model(model_req, training)
        cmp = compare_clipping(model, strategies, training.config(opts["steps"]), progress=progress_printer(console))
    table, headline = clip_table(cmp, f"{model.cell} ({model.init})"), clip_headline(cmp)
    print_results(console, table, headline)
    command = training_command("clip", model_req, training, ["--strategies", opts["strategies"], "--steps",
                                                             str(opts["steps"])], model=model)
    config = [("model", model.describe()), ("init", model.init), ("task", f"{training.task}, T = {training.seq_len}"),
              ("optimizer", f"{training.optimizer}, lr {training.lr:g}"), ("steps", opts["steps"]),
              ("seed", training.seed)]
    report = comparison_report("clip", f"{model.cell} on {training.task}", table, headline, config, command,
                               versioned(cmp.to_dict(), command), lambda: clip_figures(cmp))
    print_report_path(console, emit(output, report, console, f"clip-{model.cell}"))


def training_model(model_req: ModelRequest, training: TrainingRequest):
    """The model clip and train start from: fresh, sized by the task, or loaded (and then the task must fit)."""
    from ..tasks import input_size as task_input_size

    need = task_input_size(training.task)
    model = model_req.build(need)
    if model.input_size != need:
        raise InputError(f"the {training.task} task feeds {need} input channels but the weights in "
                         f"{str(model_req.weights)!r} take {model.input_size}; choose a task that fits")
    return model

