"""``rnndiag analyze``: diagnose one model on one batch and write its report."""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from ..analysis import HORIZON_FACTOR
from ..cells import CELLS
from ..model import RNNModel
from ..tasks import TASKS, AnalysedLoss
from .analyze_data import DEMO_TASK, DataRequest, Inputs, build_inputs, build_model
from .output import InputError, OutputRequest, Report, emit, library_errors, output_options, output_request
from .requests import ModelRequest, gain_options, given_options, init_option, weights_options

# the built-in demo: a tanh RNN with the seed tutorial's 0.01*randn initialization on the adding problem
DEMO_CELL, DEMO_INIT = "rnn_tanh", "tutorial"  # (and DEMO_TASK, in .analyze_data)
DEFAULT_HIDDEN, DEFAULT_INIT = 64, "pytorch"
# typing any of these (or --weights, --input, --task) leaves the demo
MODEL_CHOICES = ("cell", "init_name", "input_size", "hidden_size", "num_layers", "gain", "forget_bias")


@dataclass(frozen=True)
class AnalyzeRequest:
    """Everything ``rnndiag analyze`` was asked, checked (the output part: see :func:`output_request`)."""

    model: ModelRequest
    data: DataRequest
    horizon_factor: float
    output: OutputRequest
    capture: Path | None = None  # a capture file: the user's input and loss instead of the data options
    stage: str | None = None  # --stage: the weights are at initialization or trained
    dependency_length: int | None = None  # --dependency-length: the steps the horizon must reach
    forecast_steps: int | None = None  # --forecast: the budget of the trainability forecast (None: no forecast)
    forecast_lr: float = 1e-3


# the options that choose data or a model, which a capture decides instead
CAPTURE_DECIDES = ("weights", "prefix", "input_path", "task", "batch_first", "lengths_path", "loss", "seq_len",
                   "batch_size", *MODEL_CHOICES)


def analyze_request(opts: dict) -> AnalyzeRequest:
    given = given_options()
    if opts["capture"] is not None:
        clash = [name for name in CAPTURE_DECIDES if name in given]
        if clash:
            from .requests import option_name

            spelled = {"input_path": "--input", "lengths_path": "--lengths"}.get(clash[0], option_name(clash[0]))
            raise InputError(f"{spelled} cannot be combined with --capture: the capture holds the "
                             "model, its input and its loss")
    demo = opts["weights"] is None and opts["input_path"] is None and opts["task"] is None and \
        opts["capture"] is None and not given.intersection(MODEL_CHOICES)
    model = ModelRequest.from_options(opts, given, default_cell=DEMO_CELL, hidden_size=DEFAULT_HIDDEN,
                                      init=DEMO_INIT if demo else DEFAULT_INIT)
    if opts["input_path"] is not None and opts["task"] is not None:
        raise InputError("--input and --task both give inputs; pass one of them")
    if opts["input_path"] is None and (opts["batch_first"] or opts["lengths_path"] is not None):
        raise InputError(f"{'--batch-first' if opts['batch_first'] else '--lengths'} describes an --input file; "
                         "pass --input FILE.npy with it")
    data = DataRequest(opts["input_path"], opts["batch_first"], opts["lengths_path"], opts["task"], opts["seq_len"],
                       opts["batch_size"], opts["loss"])
    if opts["forecast"] and (opts["capture"] is not None or opts["input_path"] is not None):
        raise InputError("--forecast probes by training on a task; it cannot be combined with "
                         f"{'--capture' if opts['capture'] is not None else '--input'} (use rnndiag forecast)")
    return AnalyzeRequest(model, data, opts["horizon_factor"], output_request(opts), opts["capture"], opts["stage"],
                          opts["dependency_length"], opts["forecast_steps"] if opts["forecast"] else None,
                          opts["forecast_lr"])


def diagnose(request: AnalyzeRequest, model: RNNModel, inputs: Inputs):
    """The library call: the task's loss through its readout, or the probe; returns (Diagnosis, AnalysedLoss)."""
    from ..analysis import analyze as run_analysis
    from ..experiments import diagnose_problem

    seed, steps = request.model.seed, request.data.loss
    if inputs.problem is not None:
        return diagnose_problem(model, inputs.problem, seed, steps=steps, horizon_factor=request.horizon_factor,
                                stage=request.stage, dependency_length=request.dependency_length)
    loss = AnalysedLoss.probe(steps or "last", "seeded random unit vectors")
    diag = run_analysis(model, inputs.x, loss=loss.steps, seed=seed, horizon_factor=request.horizon_factor,
                        loss_label=loss.label, lengths=inputs.lengths, stage=request.stage, input_source="user",
                        dependency_length=request.dependency_length, input_label=inputs.label)
    return diag, loss


def diagnose_capture(request: AnalyzeRequest):
    """The capture's module on the user's input and loss: (Diagnosis, loss detail, input label, command args, the
    capture's facts for metrics.json)."""
    from ..capture import analyze_capture, load_capture
    from .analyze_data import check_analysis_memory, layer_traces

    cap = load_capture(request.capture)
    mc = cap.module(request.model.module)
    model = mc.model(request.model.dtype or np.float64)
    check_analysis_memory(model.cell, model.input_size, model.hidden_size, layer_traces(model), model.dtype,
                          mc.seq_len, mc.batch_size, None, None)
    diag = analyze_capture(cap, request.model.module, stage=request.stage,
                           dependency_length=request.dependency_length, dtype=request.model.dtype or np.float64,
                           seed=request.model.seed, horizon_factor=request.horizon_factor)
    detail = (f"the user's loss, captured{f' at iteration {cap.iteration}' if cap.iteration is not None else ''}"
              f"{f' (value {cap.loss_value:.6g})' if cap.loss_value is not None else ''}: its gradient on the "
              f"module's output and final states, replayed exactly")
    args = ["--capture", str(request.capture), *(["--module", request.model.module] if request.model.module else []),
            *(["--seed", str(request.model.seed)] if request.model.seed else [])]
    facts = {"file": str(request.capture), "module": mc.name, "modules": list(cap.names), "iteration": cap.iteration,
             "loss_value": cap.loss_value, "torch_version": cap.torch_version, "recorded_by": cap.rnndiag_version,
             "packed": mc.packed, "batch_first": mc.batch_first, "train_mode": mc.training,
             "weights_dtype": mc.weights_dtype}
    return diag, detail, diag.input_label, args, facts


@click.command("analyze")
@weights_options
@click.option("--cell", type=click.Choice(CELLS, case_sensitive=False), default=None,
              help="Cell type (inferred from --weights except rnn_relu). [default for a fresh model: rnn_tanh]")
@click.option("--input-size", type=click.IntRange(min=1), default=None,
              help="Input size of a fresh model. [default: what the task feeds]")
@click.option("--hidden-size", type=click.IntRange(min=1), default=None,
              help=f"Hidden size of a fresh model. [default: {DEFAULT_HIDDEN}]")
@click.option("--num-layers", type=click.IntRange(min=1), default=None, help="Stacked layers. [default: 1]")
@init_option(None, f"Initialization of a fresh model. [default: {DEFAULT_INIT}; the demo uses {DEMO_INIT}]")
@gain_options
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the weights, the task data and the probe.")
@click.option("--input", "input_path", type=click.Path(path_type=Path), default=None,
              help="Inputs as a .npy array of shape (T, B, I) instead of a task.")
@click.option("--batch-first", is_flag=True, default=False,
              help="The --input file is (B, T, I), as for nn.RNN(batch_first=True).")
@click.option("--lengths", "lengths_path", type=click.Path(path_type=Path), default=None,
              help="Per-sequence lengths of the --input batch: a .npy of B integers in 1..T (a padded batch, as "
                   "pack_padded_sequence reads it); each sequence's flow is measured over its own steps.")
@click.option("--task", type=click.Choice(TASKS, case_sensitive=False), default=None,
              help=f"Generated inputs (and their loss on a seeded readout). [default: {DEMO_TASK}; noise if the "
                   "model's input size does not fit the task]")
@click.option("--seq-len", type=click.IntRange(min=1), default=100, show_default=True, help="Sequence length T.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Batch size B.")
@click.option("--loss", type=click.Choice(("last", "all"), case_sensitive=False), default=None,
              help="Inject the gradient at the last step or at every step: the task's loss where it looks there, "
                   "else the probe loss. [default: the task's own]")
@click.option("--horizon-factor", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=HORIZON_FACTOR,
              show_default=True, help="Horizon: steps back until the gradient falls below this factor.")
@output_options("<cell>")
@click.option("--dtype", type=click.Choice(("float64", "float32")), default=None,
              help="Compute dtype. [default: float64 for fresh models and captures; a weights file's own dtype]")
@click.option("--capture", type=click.Path(path_type=Path), default=None,
              help="A capture of your training (rnndiag.pytorch.capture(...).save(FILE)): your model's recurrent "
                   "module on your input and your loss, replayed exactly. Use --module NAME when it holds several.")
@click.option("--stage", type=click.Choice(("init", "trained")), default=None,
              help="The weights are at initialization or trained (advice differs). [default: a capture's "
                   "iteration; init for a fresh model; unknown for --weights]")
@click.option("--dependency-length", type=click.IntRange(min=1), default=None,
              help="Steps back the gradient must reach for your task; the horizon is judged against it. "
                   "[default: the sequence length T]")
@click.option("--forecast", is_flag=True,
              help="Also forecast whether the model trains on the task within --forecast-steps (Adam, --forecast-lr, "
                   "batch --batch-size, global-norm clipping at 1); rnndiag forecast takes every budget option.")
@click.option("--forecast-steps", type=click.IntRange(min=1), default=1000, show_default=True,
              help="The training budget the --forecast answers about.")
@click.option("--forecast-lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
def analyze_cmd(**opts):
    """Diagnose vanishing / exploding gradients of a recurrent network and write a report.

    With no options it runs the built-in demo: a tanh RNN with the seed tutorial's 0.01*randn initialization on
    the adding problem (T = 100), whose gradient vanishes within a few steps.

    \b
    Examples:
      rnndiag analyze
      rnndiag analyze --weights model.npz --task noise --seq-len 500
      rnndiag analyze --weights ckpt.pt --module encoder.rnn --input batch.npy
      rnndiag analyze --weights ckpt.pt --input x.npy --batch-first --lengths lengths.npy
      rnndiag analyze --cell rnn_tanh --init orthogonal --gain 2 --task adding --out reports/orth2
      rnndiag analyze --cell lstm --forget-bias 1 --json - --format none
      rnndiag analyze --capture capture.npz --dependency-length 50
    """
    from ..render.figures import all_figures
    from ..render.html import render_html
    from ..render.terminal import summary

    t_start = time.perf_counter()
    request = analyze_request(opts)
    output = request.output
    console = output.console()
    with library_errors():
        run = _run_capture(request, console) if request.capture is not None else _run_model(request, console)
    diag = run.diag
    command = shlex.join(["rnndiag", "analyze", *run.command_args,
                          "--horizon-factor", repr(request.horizon_factor),
                          *(["--stage", request.stage] if request.stage else []),
                          *(["--dependency-length", str(request.dependency_length)] if request.dependency_length
                            else []),
                          *(["--dtype", request.model.dtype] if request.model.dtype else [])])
    metrics = {**diag.to_dict(), "loss_detail": run.loss_detail, "input": run.input_label, "command": command,
               **({"capture": run.capture} if run.capture else {}),
               **({"forecast": run.forecast.to_dict()} if run.forecast is not None else {})}
    config = {"model_label": run.model_label, "command": command, "rows": [
        ("looked at", diag.looked_at), ("model", run.model_label), ("cell", diag.cell),
        ("input size", diag.input_size), ("hidden size", diag.hidden_size), ("layers", diag.num_layers),
        ("init", diag.init), ("stage", diag.stage), ("seed", request.model.seed), ("input", run.input_label),
        ("loss", run.loss_detail),
        ("dtype", diag.dtype if not diag.source_dtype else f"{diag.dtype} (weights stored as {diag.source_dtype})"),
        ("directions", "2 (bidirectional)" if diag.bidirectional else "1"),
        *([("proj_size", diag.proj_size)] if diag.proj_size else []), ("dropout", diag.dropout),
        ("dependency length", diag.dependency_length or diag.seq_len), ("horizon factor", request.horizon_factor)]}
    report = Report(metrics, lambda: all_figures(diag),
                    lambda pngs, failed: render_html(diag, metrics, pngs, config, figure_errors=failed))
    written = emit(output, report, console, diag.cell)
    summary(console, diag, str(written.path) if written.path else None)
    if run.forecast is not None:
        from ..render.forecast import forecast_headline

        headline = forecast_headline(run.forecast)
        console.print(f"[bold]{headline.text}[/bold]")
        for line in headline.reasons:
            console.print(f"  - {line}", markup=False)
    if not output.quiet:
        console.print(f"[dim]done in {time.perf_counter() - t_start:.2f} s (model {run.model_s:.2f} s, analysis "
                      f"{run.analysis_s:.2f} s, figures {written.figures_s:.2f} s, writing {written.writing_s:.2f} s)"
                      "[/dim]")


@dataclass(frozen=True)
class _Analysed:
    """One analysis and how to say what it ran on."""

    diag: object
    loss_detail: str
    input_label: str
    model_label: str
    command_args: tuple[str, ...]
    model_s: float
    analysis_s: float
    capture: dict | None = None  # the capture file's header facts, for metrics.json
    forecast: object | None = None  # the trainability forecast (--forecast)


def _run_model(request: AnalyzeRequest, console) -> _Analysed:
    """A fresh or loaded model on an input file or a task."""
    t_start = time.perf_counter()
    model, file_x = build_model(request)
    inputs = build_inputs(request.data, model, request.model.seed, file_x)
    model_s = time.perf_counter() - t_start
    t0 = time.perf_counter()
    with console.status("analysing (BPTT, Jacobian products, Lyapunov exponents)...", spinner="dots"):
        diag, loss = diagnose(request, model, inputs)
    from_file = request.model.weights is not None
    args = (*request.model.command_args(model), *inputs.command_args,
            *(["--seed", str(request.model.seed)] if from_file and request.model.seed else []),
            *(["--loss", request.data.loss] if request.data.loss else []))
    if from_file:
        model_label = f"{model.describe()} from {request.model.weights}"
    else:
        model_label = f"{model.describe()}, init {model.init}, seed {request.model.seed}"
    fc = _forecast(request, model, inputs, diag, console) if request.forecast_steps is not None else None
    if fc is not None:
        args = (*args, "--forecast", "--forecast-steps", str(request.forecast_steps), "--forecast-lr",
                repr(request.forecast_lr))
    return _Analysed(diag, loss.detail, inputs.label, model_label, args, model_s, time.perf_counter() - t0,
                     forecast=fc)


def _forecast(request: AnalyzeRequest, model, inputs, diag, console):
    """The trainability forecast of ``--forecast``, reusing the diagnosis just made."""
    from ..forecast import TASKS, Budget, forecast

    task = inputs.problem.batch.name if inputs.problem is not None else None
    if task not in TASKS:
        raise InputError(f"--forecast needs one of the tasks it is calibrated on ({', '.join(TASKS)}); the inputs "
                         f"here are {task or 'a file'}: pass --task adding or --task copy")
    with console.status("forecasting (a probe of <= 10% of the budget)...", spinner="dots"):
        return forecast(model, task, request.data.seq_len, Budget(steps=request.forecast_steps, lr=request.forecast_lr,
                                                                  batch_size=request.data.batch_size),
                        seed=request.model.seed, diagnosis=diag)


def _run_capture(request: AnalyzeRequest, console) -> _Analysed:
    """A capture's module on the user's input and loss."""
    t0 = time.perf_counter()
    with console.status("replaying the captured BPTT and analysing...", spinner="dots"):
        diag, detail, label, args, facts = diagnose_capture(request)
    model_label = f"{diag.architecture} from capture {request.capture}"
    return _Analysed(diag, detail, label, model_label, tuple(args), 0.0, time.perf_counter() - t0, facts)
