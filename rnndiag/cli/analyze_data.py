"""The data of ``rnndiag analyze``: the model to build (fresh, sized by the data, or loaded) and the batch it runs
on (an input file with its layout and lengths, or a task's batch), each checked against the memory first."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..model import RNNModel
from ..tasks import Problem
from .output import InputError
from .requests import ModelRequest, check_memory

DEMO_TASK = "adding"  # the built-in demo's task


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
class Inputs:
    """The batch the analysis runs on, and how to say and reproduce where it came from."""

    x: np.ndarray  # (T, B, I), time-major
    problem: Problem | None  # None: an input file (the probe loss)
    label: str
    command_args: tuple[str, ...]
    lengths: np.ndarray | None = None  # (B,) per-sequence lengths of an input file's batch


def build_model(request) -> tuple[RNNModel, np.ndarray | None]:
    """``request`` (an ``AnalyzeRequest``)'s model, and the input file's array when it had to be read to size a
    fresh model."""
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
    check_analysis_memory(req.cell, input_size, req.hidden_size, req.num_layers, req.dtype or "float64", seq_len,
                           batch_size, task, loss)


def check_analysis_memory(cell, input_size, hidden_size, num_layers, dtype, seq_len: int, batch_size: int,
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
        check_analysis_memory(model.cell, model.input_size, model.hidden_size, layer_traces(model), model.dtype,
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
    check_analysis_memory(model.cell, model.input_size, model.hidden_size, layer_traces(model), model.dtype,
                           data.seq_len, data.batch_size, task, data.loss)
    problem = task_problem(task, data.seq_len, data.batch_size, seed, model.num_directions * model.output_size,
                           input_size=model.input_size, dtype=model.dtype)
    T, B, _ = problem.x.shape
    return Inputs(problem.x, problem, f"task {task}, T = {T}, B = {B}, seed {seed}",
                  ("--task", task, "--seq-len", str(data.seq_len), "--batch-size", str(data.batch_size)))


def layer_traces(model: RNNModel) -> int:
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
