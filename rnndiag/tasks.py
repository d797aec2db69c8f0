"""Seeded generators for the standard long-dependency tasks, each with its loss on a linear readout.

* ``adding`` (Arjovsky et al. 2016 form): channel 0 ~ U[0, 1], channel 1 marks one position in each half of the
  sequence; target = the sum of the two marked values; loss MSE at the last step. Predicting 1 scores 1/6.
* ``adding_hs97``: the original form (Hochreiter & Schmidhuber 1997, experiment 4): channel 0 ~ U[-1, 1]; channel
  1 marks one of the first ten steps (X1; zero if it is the very first step) and one other of the first T/2 - 1
  (X2), and is -1 at the first and last step, 0 elsewhere; target 0.5 + (X1 + X2)/4. Sequences here have the fixed
  length T (the paper draws lengths in [T, T + T/10]). Predicting 0.5 scores (0.3 + 1/3)/16 = 0.0396.
* ``copy`` (Arjovsky et al. 2016): 10 symbols from 8, then T-1 blanks, a delimiter, 10 blanks; the output must
  repeat the 10 symbols over the last 10 steps; one-hot input of 10 channels (0 blank, 1-8 symbols, 9 delimiter);
  cross-entropy over those 10 steps. A memoryless predictor scores 10 ln 8 / (T + 20) per step.
* ``sine``: a sine wave with random frequency and phase; predict the next value at every step (MSE).
* ``text``: character-level language modelling on a text file (default: the public-domain Gettysburg Address,
  shipped as package data in ``rnndiag/data/``): one-hot characters in, the next character out at every step,
  cross-entropy. A memoryless (unigram) predictor scores the text's character entropy.
* ``noise``: standard normal inputs and no loss of its own (the analysis uses its probe loss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from ._validation import check_positive_int, make_rng

TASKS = ("adding", "adding_hs97", "copy", "sine", "text", "noise")
LOSS_TASKS = tuple(t for t in TASKS if t != "noise")  # the tasks with a loss of their own: what can be trained
# Independent random streams of one seed (a SeedSequence of [seed, stream, ...]): training batch i is drawn from
# [seed, TRAIN_STREAM, i], the held-out test batch from [seed, TEST_STREAM, 0], the batch a diagnosis looks at
# from [seed, DIAGNOSIS_STREAM] and the readout from [seed, READOUT_STREAM]. None is drawn from another.
TRAIN_STREAM, TEST_STREAM, DIAGNOSIS_STREAM, READOUT_STREAM = 0, 1, 3, 7
DEFAULT_TEXT = "gettysburg.txt"  # package data in rnndiag/data/, read through importlib.resources
COPY_SYMBOLS, COPY_LENGTH = 8, 10


@dataclass(frozen=True)
class TaskBatch:
    """Inputs (T, B, I), targets, and where the loss looks."""

    name: str
    x: np.ndarray = field(repr=False)
    targets: np.ndarray | None = field(repr=False)  # adding (B,), copy (10, B) ints, sine (T, B)
    baseline: float | None  # loss of the trivial predictor
    loss_steps: str  # "last", "window" (copy: the last 10) or "all"

    @property
    def input_size(self) -> int:
        return self.x.shape[2]


def input_size(task: str) -> int:
    task = check_task(task)
    if task == "text":
        return len(text_vocab())
    return {"adding": 2, "adding_hs97": 2, "copy": COPY_SYMBOLS + 2, "sine": 1, "noise": 1}[task]


@lru_cache(maxsize=8)
def load_text(path: str | None = None) -> str:
    """The text of ``path`` (default: the shipped Gettysburg Address), checked: readable UTF-8, >= 2 characters."""
    if path is None:  # package data: present in every install, wheel or editable
        source = resources.files("rnndiag").joinpath("data", DEFAULT_TEXT)
        where = f"rnndiag/data/{DEFAULT_TEXT}"
    else:
        source = Path(path)
        where = str(source)
        if not source.exists():
            raise FileNotFoundError(f"text file {where!r} does not exist; pass a text file")
    try:
        text = source.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as exc:
        raise ValueError(f"text file {where!r} is not readable UTF-8 text ({type(exc).__name__})") from None
    if len(text) < 2:
        raise ValueError(f"text file {where!r} has {len(text)} characters; a language model needs at least 2")
    return text


def text_vocab(path: str | None = None) -> str:
    """The sorted distinct characters of the text: the one-hot alphabet."""
    return "".join(sorted(set(load_text(path))))


def check_task(task: str, choices: tuple[str, ...] = TASKS) -> str:
    """The canonical name of ``task`` (case-insensitive), one of ``choices``."""
    if not isinstance(task, str) or task.lower() not in choices:
        raise ValueError(f"unknown task {task!r}: choose one of {', '.join(choices)}")
    return task.lower()


def make_task(task: str, seq_len: int, batch_size: int, seed=None, *, input_size: int | None = None,
              dtype=np.float64) -> TaskBatch:
    """A batch of ``task``. For ``copy`` the sequence is ``seq_len + 20`` steps long (``seq_len`` blanks)."""
    task = check_task(task)
    T = check_positive_int(seq_len, "seq_len")
    B = check_positive_int(batch_size, "batch_size")
    rng = make_rng(seed)
    if task == "adding":
        if T < 2:
            raise ValueError("seq_len must be >= 2 for the adding task (one marker in each half)")
        x = np.zeros((T, B, 2))
        x[:, :, 0] = rng.uniform(0, 1, (T, B))
        half = T // 2
        i1 = rng.integers(0, half, B)
        i2 = rng.integers(half, T, B)
        x[i1, np.arange(B), 1] = 1.0
        x[i2, np.arange(B), 1] = 1.0
        target = x[i1, np.arange(B), 0] + x[i2, np.arange(B), 0]
        return TaskBatch(task, x.astype(dtype), target, 1.0 / 6.0, "last")
    if task == "adding_hs97":
        if T < 4:
            raise ValueError("seq_len must be >= 4 for the adding_hs97 task (markers among the first T/2 - 1 steps)")
        x = np.zeros((T, B, 2))
        x[:, :, 0] = rng.uniform(-1, 1, (T, B))
        x[0, :, 1] = -1.0
        x[T - 1, :, 1] = -1.0
        cols = np.arange(B)
        i1 = rng.integers(0, min(10, T - 1), B)
        # X2: one of the first T/2 - 1 steps other than i1
        span = max(T // 2 - 1, 2)
        i2 = rng.integers(0, span - 1, B)
        i2 = np.where(i2 >= i1, i2 + 1, i2)
        x[i1, cols, 1] = 1.0
        x[i2, cols, 1] = 1.0
        x1 = np.where(i1 == 0, 0.0, x[i1, cols, 0])
        x[i1, cols, 0] = x1  # "in the rare case where the first pair gets marked, we set X1 to zero"
        target = 0.5 + (x1 + x[i2, cols, 0]) / 4.0
        return TaskBatch(task, x.astype(dtype), target, (0.3 + 1.0 / 3.0) / 16.0, "last")
    if task == "copy":
        total = T + 2 * COPY_LENGTH
        sym = rng.integers(1, COPY_SYMBOLS + 1, (COPY_LENGTH, B))
        x = np.zeros((total, B, COPY_SYMBOLS + 2))
        x[np.arange(COPY_LENGTH)[:, None], np.arange(B)[None, :], sym] = 1.0
        x[COPY_LENGTH:, :, 0] = 1.0
        x[T + COPY_LENGTH - 1, :, 0] = 0.0
        x[T + COPY_LENGTH - 1, :, COPY_SYMBOLS + 1] = 1.0  # delimiter
        baseline = COPY_LENGTH * math.log(COPY_SYMBOLS) / total
        return TaskBatch(task, x.astype(dtype), sym - 1, baseline, "window")
    if task == "sine":
        t = np.arange(T + 1)[:, None]
        freq = rng.uniform(0.02, 0.2, B)[None, :]
        phase = rng.uniform(0, 2 * math.pi, B)[None, :]
        wave = np.sin(2 * math.pi * freq * t + phase)
        return TaskBatch(task, wave[:-1, :, None].astype(dtype), wave[1:], 0.5, "all")
    if task == "text":
        text = load_text(None)
        vocab = text_vocab(None)
        if T + 1 > len(text):
            raise ValueError(f"seq_len {T} is too long for a text of {len(text)} characters; use at most "
                             f"{len(text) - 1}")
        index = {ch: i for i, ch in enumerate(vocab)}
        codes = np.fromiter((index[ch] for ch in text), dtype=np.int64, count=len(text))
        starts = rng.integers(0, len(text) - T, B)
        windows = codes[starts[None, :] + np.arange(T + 1)[:, None]]  # (T + 1, B)
        x = np.zeros((T, B, len(vocab)), dtype)
        np.put_along_axis(x, windows[:-1, :, None], 1.0, axis=2)
        counts = np.bincount(codes, minlength=len(vocab)) / len(codes)
        entropy = float(-(counts[counts > 0] * np.log(counts[counts > 0])).sum())
        return TaskBatch(task, x, windows[1:], entropy, "all")
    size = 1 if input_size is None else check_positive_int(input_size, "input_size")
    return TaskBatch(task, rng.standard_normal((T, B, size)).astype(dtype), None, None, "all")


def readout(hidden_size: int, out_size: int, seed=None) -> tuple[np.ndarray, np.ndarray]:
    """A seeded linear readout (W (O, H), b (O,)) with PyTorch's nn.Linear initialisation."""
    rng = make_rng(seed)
    k = 1.0 / math.sqrt(hidden_size)
    return rng.uniform(-k, k, (out_size, hidden_size)), rng.uniform(-k, k, out_size)


def task_loss_grad(batch: TaskBatch, h: np.ndarray, w: np.ndarray, b: np.ndarray):
    """Loss (mean over the batch) of the readout ``y = W h + b`` and its gradient on ``h`` (T, B, H)."""
    loss, grad_h, _, _ = task_loss_grads(batch, h, w, b)
    return loss, grad_h


def task_loss_grads(batch: TaskBatch, h: np.ndarray, w: np.ndarray, b: np.ndarray):
    """``(loss, dL/dh (T, B, H), dL/dW (O, H), dL/db (O,))`` of the readout ``y = W h + b``.

    adding: MSE of ``y_{T-1}``; copy: cross-entropy of the last 10 steps, averaged over all ``T`` steps and the
    batch (so the memoryless baseline is ``10 ln 8 / T``); sine: MSE over every step.
    """
    T, B, H = h.shape
    grad_h = np.zeros(h.shape, dtype=np.float64)
    if batch.name in ("adding", "adding_hs97"):
        y = h[-1] @ w.T + b  # (B, 1)
        err = y[:, 0] - batch.targets
        dy = (2.0 / B) * err[:, None]  # (B, 1)
        grad_h[-1] = dy @ w
        return float((err**2).mean()), grad_h, dy.T @ h[-1], dy.sum(axis=0)
    if batch.name == "copy":
        hs = h[-COPY_LENGTH:]  # (10, B, H)
        logits = hs @ w.T + b  # (10, B, 8)
        logits = logits - logits.max(axis=2, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=2, keepdims=True)
        tgt = batch.targets
        nll = -np.log(np.take_along_axis(p, tgt[:, :, None], axis=2)[:, :, 0])
        d = p.copy()
        np.put_along_axis(d, tgt[:, :, None], np.take_along_axis(d, tgt[:, :, None], axis=2) - 1.0, axis=2)
        d /= B * T  # mean over all T steps and the batch
        grad_h[-COPY_LENGTH:] = d @ w
        return (float(nll.sum() / (B * T)), grad_h, d.reshape(-1, d.shape[2]).T @ hs.reshape(-1, H),
                d.sum(axis=(0, 1)))
    if batch.name == "text":
        logits = h @ w.T + b  # (T, B, V)
        logits = logits - logits.max(axis=2, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=2, keepdims=True)
        tgt = batch.targets  # (T, B)
        nll = -np.log(np.take_along_axis(p, tgt[:, :, None], axis=2)[:, :, 0])
        d = p
        np.put_along_axis(d, tgt[:, :, None], np.take_along_axis(d, tgt[:, :, None], axis=2) - 1.0, axis=2)
        d /= B * T  # mean over every step and the batch
        grad_h[:] = d @ w
        return float(nll.mean()), grad_h, d.reshape(-1, d.shape[2]).T @ h.reshape(-1, H), d.sum(axis=(0, 1))
    if batch.name == "sine":
        y = h @ w.T + b  # (T, B, 1)
        err = y[:, :, 0] - batch.targets
        dy = (2.0 / (T * B)) * err[:, :, None]  # (T, B, 1)
        grad_h[:] = dy @ w
        return float((err**2).mean()), grad_h, dy.reshape(-1, 1).T @ h.reshape(-1, H), dy.sum(axis=(0, 1))
    raise ValueError(f"task {batch.name!r} has no loss of its own; use the probe loss")


def out_size(task: str) -> int:
    task = check_task(task)
    if task == "text":
        return len(text_vocab())
    return {"adding": 1, "adding_hs97": 1, "copy": COPY_SYMBOLS, "sine": 1}[task]


def stream_rng(seed: int, stream: int, *index: int) -> np.random.Generator:
    """The generator of one of a seed's independent streams (see ``TRAIN_STREAM``)."""
    return np.random.default_rng([seed, stream, *index])


def task_readout(task: str, hidden_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The seeded random readout of ``task`` (its ``READOUT_STREAM``), as training starts from and as a diagnosis
    at initialization reads the hidden states through."""
    return readout(hidden_size, out_size(task), seed=stream_rng(seed, READOUT_STREAM))


@dataclass(frozen=True)
class AnalysedLoss:
    """The loss an analysis differentiates: a task's own, through a readout, or the probe (``grad_h`` None)."""

    grad_h: np.ndarray | None = field(repr=False)  # (T, B, H) dL/dh_t, float64; None: the probe loss
    steps: str  # where the loss looks, as ``analyze(loss=...)`` takes it: "last" or "all"
    label: str | None  # the loss's name in a Diagnosis; None for the probe (the analysis names it)
    detail: str  # one line on what was differentiated, for reports
    value: float | None = None

    @classmethod
    def probe(cls, steps: str, why: str) -> AnalysedLoss:
        return cls(None, steps, None, f"probe loss <u, h> ({steps}): {why}")


@dataclass(frozen=True)
class Problem:
    """A task's batch and the linear readout ``y = W h + b`` through which its loss is taken."""

    batch: TaskBatch
    readout_w: np.ndarray | None = field(repr=False)  # (O, H); None for a task without a loss (noise)
    readout_b: np.ndarray | None = field(repr=False)  # (O,)
    readout_label: str  # where the readout came from

    @property
    def x(self) -> np.ndarray:
        return self.batch.x

    @property
    def has_loss(self) -> bool:
        return self.readout_w is not None

    @property
    def loss_steps(self) -> str:
        """Where the task's loss looks, as the analysis injects it: "last" (also copy's last-10 window) or "all"."""
        return "all" if self.batch.loss_steps == "all" else "last"

    def loss_and_grads(self, h: np.ndarray):
        """``(loss, dL/dh (T, B, H), dL/dW, dL/db)`` for the hidden states ``h`` (see :func:`task_loss_grads`)."""
        return task_loss_grads(self.batch, h, self.readout_w, self.readout_b)

    def own_loss_applies(self, steps: str | None = None) -> bool:
        """Whether an analysis asking for ``steps`` (None: the task's own) differentiates the task's loss, which
        needs the model's states; otherwise it uses the probe."""
        return self.has_loss and steps in (None, self.loss_steps)

    def analysed_loss(self, h: np.ndarray | None, steps: str | None = None) -> AnalysedLoss:
        """The loss an analysis differentiates: the task's own through the readout, for the model whose last-layer
        states on ``x`` are ``h`` (needed only where :meth:`own_loss_applies`); or the probe, where the task has
        no loss, where ``steps`` asks for other steps than the task's loss looks at, or where the states
        overflowed (no loss is defined)."""
        name = self.batch.name
        if not self.has_loss:
            return AnalysedLoss.probe(steps or "last", "seeded random unit vectors")
        if not self.own_loss_applies(steps):
            return AnalysedLoss.probe(steps, f"the {name} task's own loss looks at {self.batch.loss_steps} steps")
        if not np.isfinite(h).all():
            return AnalysedLoss.probe(self.loss_steps, f"the {name} task loss is undefined (the state overflowed)")
        value, grad_h, _, _ = self.loss_and_grads(h.astype(np.float64))
        return AnalysedLoss(grad_h, self.loss_steps, f"{name} task loss",
                            f"{name} task loss on {self.readout_label} (value {value:.4g}; trivial baseline "
                            f"{self.batch.baseline:.4g})", value)


def task_problem(task: str, seq_len: int, batch_size: int, seed: int, hidden_size: int, *,
                 stream: int = DIAGNOSIS_STREAM, index: tuple[int, ...] = (), readout_wb=None,
                 input_size: int | None = None, dtype=np.float64) -> Problem:
    """``task``'s batch from the seed's ``stream`` (``index`` numbers batches within it) and its readout: the
    seeded random one (:func:`task_readout`) or ``readout_wb = (W, b)``, e.g. a trained one. The one place that
    decides which data and which readout a diagnosis, a training step and a comparison of schemes see.

    >>> p = task_problem("adding", 20, 4, seed=0, hidden_size=8)
    >>> p.x.shape, p.readout_w.shape, p.loss_steps
    ((20, 4, 2), (1, 8), 'last')
    """
    batch = make_task(task, seq_len, batch_size, stream_rng(seed, stream, *index), input_size=input_size,
                      dtype=dtype)
    if batch.name == "noise":
        return Problem(batch, None, None, "no readout")
    if readout_wb is not None:
        return Problem(batch, *readout_wb, "the trained readout")
    return Problem(batch, *task_readout(batch.name, hidden_size, seed), "a seeded random linear readout")
