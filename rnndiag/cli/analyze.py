"""``rnndiag analyze``: diagnose one model on one batch and write its report."""

from __future__ import annotations

import dataclasses
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from ..analysis import HORIZON_FACTOR
from ..cells import CELLS
from ..model import RNNModel
from ..tasks import TASKS, AnalysedLoss, Problem
from .output import InputError, OutputRequest, Report, emit, library_errors, output_options, output_request
from .requests import ModelRequest, check_memory, gain_options, given_options, init_option, weights_options

# the built-in demo: a tanh RNN with the seed tutorial's 0.01*randn initialization on the adding problem
DEMO_CELL, DEMO_INIT, DEMO_TASK = "rnn_tanh", "tutorial", "adding"
DEFAULT_HIDDEN, DEFAULT_INIT = 64, "pytorch"
# typing any of these (or --weights, --input, --task) leaves the demo
MODEL_CHOICES = ("cell", "init_name", "input_size", "hidden_size", "num_layers", "gain", "forget_bias")


@dataclass(frozen=True)
class DataRequest:
    """What the model runs on: an input file, or a task's batch (and its loss, where ``loss`` allows)."""

    input_path: Path | None
    batch_first: bool  # the input file is (B, T, I)
    lengths_path: Path | None  # per-sequence lengths (B,) of the input file's batch
    task: str | None  # the task asked for; None: the demo's (noise where the model's input size does not fit)
    seq_len: int
    batch_size: int
    loss: str | None  # --loss: "last" or "all"; None: the task's own


@dataclass(frozen=True)
class AnalyzeRequest:
    """Everything ``rnndiag analyze`` was asked, checked (the output part: see :func:`output_request`)."""

    model: ModelRequest
    data: DataRequest
    horizon_factor: float
    output: OutputRequest


@dataclass(frozen=True)
class Inputs:
    """The batch the analysis runs on, and how to say and reproduce where it came from."""

    x: np.ndarray  # (T, B, I), time-major
    problem: Problem | None  # None: an input file (the probe loss)
    label: str
    command_args: tuple[str, ...]
    lengths: np.ndarray | None = None  # (B,) per-sequence lengths of an input file's batch


def analyze_request(opts: dict) -> AnalyzeRequest:
    given = given_options()
    demo = opts["weights"] is None and opts["input_path"] is None and opts["task"] is None and \
        not given.intersection(MODEL_CHOICES)
    model = ModelRequest.from_options(opts, given, default_cell=DEMO_CELL, hidden_size=DEFAULT_HIDDEN,
                                      init=DEMO_INIT if demo else DEFAULT_INIT)
    if opts["input_path"] is not None and opts["task"] is not None:
        raise InputError("--input and --task both give inputs; pass one of them")
    if opts["input_path"] is None and (opts["batch_first"] or opts["lengths_path"] is not None):
        raise InputError(f"{'--batch-first' if opts['batch_first'] else '--lengths'} describes an --input file; "
                         "pass --input FILE.npy with it")
    data = DataRequest(opts["input_path"], opts["batch_first"], opts["lengths_path"], opts["task"], opts["seq_len"],
                       opts["batch_size"], opts["loss"])
    return AnalyzeRequest(model, data, opts["horizon_factor"], output_request(opts))


def build_model(request: AnalyzeRequest) -> tuple[RNNModel, np.ndarray | None]:
    """The model, and the input file's array when it had to be read to size a fresh model."""
    from ..inputs import load_input
    from ..tasks import input_size as task_input_size

    req, data = request.model, request.data
    if req.weights is not None:
        return req.build(), None
    if data.input_path is not None:  # a fresh model sized by the input file: read it once, keep it
        x = _time_major(load_input(data.input_path, req.dtype or np.float64), data.batch_first)
        _check_fresh(req, req.input_size or x.shape[2], x.shape[0], x.shape[1], None, data.loss)
        return req.build(x.shape[2]), x
    task = data.task or DEMO_TASK
    input_size = req.input_size or task_input_size(task)
    fits = task == "noise" or task_input_size(task) == input_size
    _check_fresh(req, input_size, data.seq_len, data.batch_size, task if fits else "noise", data.loss)
    return req.build(input_size), None


def _check_fresh(req: ModelRequest, input_size: int, seq_len: int, batch_size: int, task: str | None,
                 loss: str | None) -> None:
    """A fresh model's whole analysis against the memory available, from the sizes alone: before its weights
    (H x H, and an orthogonal init's QR) are made."""
    _check_analysis_memory(req.cell, input_size, req.hidden_size, req.num_layers, req.dtype or "float64", seq_len,
                           batch_size, task, loss)


def _check_analysis_memory(cell, input_size, hidden_size, num_layers, dtype, seq_len: int, batch_size: int,
                           task: str | None, loss: str | None) -> None:
    """The analysis of these sizes against the memory available (``task`` None: an input file's batch)."""
    from ..memory import INPUT_FILE_OPTION, estimate_analyze

    estimate = estimate_analyze(cell, input_size, hidden_size, num_layers, seq_len, batch_size, dtype, task=task,
                                loss=loss)
    check_memory(estimate if task is not None else dataclasses.replace(estimate, option=INPUT_FILE_OPTION))


def build_inputs(data: DataRequest, model: RNNModel, seed: int, file_x: np.ndarray | None) -> Inputs:
    from ..inputs import load_input
    from ..tasks import input_size as task_input_size
    from ..tasks import task_problem

    if data.input_path is not None:
        x = _time_major(load_input(data.input_path, model.dtype), data.batch_first) if file_x is None else \
            file_x.astype(model.dtype, copy=False)
        layout = "(B, T, I) with --batch-first" if data.batch_first else "(T, B, I)"
        if x.shape[2] != model.input_size:
            raise InputError(f"input file {str(data.input_path)!r} has {x.shape[2]} input channels (read as "
                             f"{layout}: T = {x.shape[0]}, B = {x.shape[1]}); the model takes {model.input_size}")
        lengths = None
        if data.lengths_path is not None:
            lengths = load_lengths(data.lengths_path, x.shape[0], x.shape[1])
        _check_analysis_memory(model.cell, model.input_size, model.hidden_size, _layer_traces(model), model.dtype,
                               x.shape[0], x.shape[1], None, data.loss)
        label = f"{data.input_path} (T = {x.shape[0]}, B = {x.shape[1]}, I = {x.shape[2]}, read as {layout})"
        args = ("--input", str(data.input_path), *(["--batch-first"] if data.batch_first else []))
        if lengths is not None:
            label += f", lengths {int(lengths.min())}..{int(lengths.max())} from {data.lengths_path}"
            args += ("--lengths", str(data.lengths_path))
        return Inputs(x, None, label, args, lengths)
    task = data.task or DEMO_TASK
    if task != "noise" and task_input_size(task) != model.input_size:
        if data.task is not None:
            raise InputError(f"task {task} feeds {task_input_size(task)} input channels but the model takes "
                             f"{model.input_size}; use --task noise or --input FILE.npy")
        task = "noise"
    _check_analysis_memory(model.cell, model.input_size, model.hidden_size, _layer_traces(model), model.dtype,
                           data.seq_len, data.batch_size, task, data.loss)
    problem = task_problem(task, data.seq_len, data.batch_size, seed, model.num_directions * model.output_size,
                           input_size=model.input_size, dtype=model.dtype)
    T, B, _ = problem.x.shape
    return Inputs(problem.x, problem, f"task {task}, T = {T}, B = {B}, seed {seed}",
                  ("--task", task, "--seq-len", str(data.seq_len), "--batch-size", str(data.batch_size)))


def _layer_traces(model: RNNModel) -> int:
    """What the memory estimate counts as layers: one per layer and direction."""
    return model.num_layers * model.num_directions


def _time_major(x: np.ndarray, batch_first: bool) -> np.ndarray:
    return np.ascontiguousarray(x.swapaxes(0, 1)) if batch_first else x


def load_lengths(path: Path, seq_len: int, batch_size: int) -> np.ndarray:
    """Per-sequence lengths (B,) from a ``.npy`` file: integers in 1..T, one per sequence of the input batch."""
    from ..engine import check_lengths
    from ..npyfile import ArrayFileError, read_npy

    what = f"lengths file {str(path)!r}"

    def check(header) -> None:
        if header.dtype.kind not in "iu" or header.shape != (batch_size,):
            raise ArrayFileError(f"{what} holds {header.dtype} of shape {header.shape}; it must hold {batch_size} "
                                 "integers, one length per sequence of the --input batch")

    lengths = read_npy(path, what, check=check)
    try:
        checked = check_lengths(lengths, seq_len, batch_size)
    except ValueError as exc:
        raise InputError(f"{what}: {exc}") from None
    return checked if checked is not None else np.full(batch_size, seq_len)


def diagnose(request: AnalyzeRequest, model: RNNModel, inputs: Inputs):
    """The library call: the task's loss through its readout, or the probe; returns (Diagnosis, AnalysedLoss)."""
    from ..analysis import analyze as run_analysis
    from ..experiments import diagnose_problem

    seed, steps = request.model.seed, request.data.loss
    if inputs.problem is not None:
        return diagnose_problem(model, inputs.problem, seed, steps=steps, horizon_factor=request.horizon_factor)
    loss = AnalysedLoss.probe(steps or "last", "seeded random unit vectors")
    diag = run_analysis(model, inputs.x, loss=loss.steps, seed=seed, horizon_factor=request.horizon_factor,
                        loss_label=loss.label, lengths=inputs.lengths)
    return diag, loss


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
              help="Compute dtype. [default: float64 for fresh models; a file's own dtype]")
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
    """
    from ..render.figures import all_figures
    from ..render.html import render_html
    from ..render.terminal import summary

    t_start = time.perf_counter()
    request = analyze_request(opts)
    output = request.output
    console = output.console()
    with library_errors():
        model, file_x = build_model(request)
        inputs = build_inputs(request.data, model, request.model.seed, file_x)
        model_s = time.perf_counter() - t_start
        t0 = time.perf_counter()
        with console.status("analysing (BPTT, Jacobian products, Lyapunov exponents)...", spinner="dots"):
            diag, loss = diagnose(request, model, inputs)
        analysis_s = time.perf_counter() - t0
    from_file = request.model.weights is not None
    command = shlex.join(["rnndiag", "analyze", *request.model.command_args(model), *inputs.command_args,
                          *(["--seed", str(request.model.seed)] if from_file and request.model.seed else []),
                          *(["--loss", request.data.loss] if request.data.loss else []),
                          "--horizon-factor", repr(request.horizon_factor),
                          *(["--dtype", request.model.dtype] if request.model.dtype else [])])
    metrics = {**diag.to_dict(), "loss_detail": loss.detail, "input": inputs.label, "command": command}
    if from_file:
        model_label = f"{model.describe()} from {request.model.weights}"
    else:
        model_label = f"{model.describe()}, init {model.init}, seed {request.model.seed}"
    config = {"model_label": model_label, "command": command, "rows": [
        ("model", model_label), ("cell", diag.cell), ("input size", diag.input_size),
        ("hidden size", diag.hidden_size), ("layers", diag.num_layers), ("init", diag.init),
        ("seed", request.model.seed), ("input", inputs.label), ("loss", loss.detail),
        ("dtype", diag.dtype if not diag.source_dtype else f"{diag.dtype} (weights stored as {diag.source_dtype})"),
        ("directions", "2 (bidirectional)" if diag.bidirectional else "1"),
        *([("proj_size", diag.proj_size)] if diag.proj_size else []), ("dropout", diag.dropout),
        ("horizon factor", request.horizon_factor)]}
    report = Report(metrics, lambda: all_figures(diag),
                    lambda pngs, failed: render_html(diag, metrics, pngs, config, figure_errors=failed))
    written = emit(output, report, console, model.cell)
    summary(console, diag, str(written.path) if written.path else None)
    if not output.quiet:
        console.print(f"[dim]done in {time.perf_counter() - t_start:.2f} s (model {model_s:.2f} s, analysis "
                      f"{analysis_s:.2f} s, figures {written.figures_s:.2f} s, writing {written.writing_s:.2f} s)"
                      "[/dim]")
