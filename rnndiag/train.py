"""A numpy training loop over the engine, recording what the diagnostics need at every iteration.

Per iteration: a fresh seeded batch of the task (batch ``i`` depends only on the seed and ``i``, so a resumed run
sees the same data), BPTT through the model and the task's readout, clipping, an SGD-with-momentum or Adam step
(PyTorch's update rules). Recorded every iteration: loss, global gradient norm before and after clipping, per-
parameter gradient norms, whether clipping fired and the cosine between clipped and unclipped gradient. At
scheduled iterations (linear or log spacing): the median ||dL/dh_t|| per step, spectral radius and sigma_max of
each W_hh, the top Lyapunov exponent, gate saturation, and the test loss on a held-out batch.

A non-finite loss or gradient stops the run cleanly, naming the iteration and the parameter; the history is kept.
Checkpoints (``.npz``, no pickle) are written atomically; :func:`train` with ``resume=`` continues a run with
nothing recorded lost or duplicated.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._validation import check_positive_int
from .analysis.gates import gate_stats
from .analysis.lyapunov import lyapunov_spectrum
from .analysis.settings import WARMUP_FRACTION
from .analysis.spectral import weight_spectra
from .clip import Clipper, cosine, global_norm
from .engine import Trace, backward, forward
from .files import write_atomic
from .jsonsafe import jsonable
from .model import RNNModel
from .npyfile import ArrayFileError, NpzArchive
from .tasks import LOSS_TASKS, TEST_STREAM, TRAIN_STREAM, Problem, task_problem, task_readout

OPTIMIZERS = ("adam", "sgd")
READOUT = ("readout.weight", "readout.bias")
# the top Lyapunov exponent at a scheduled diagnostic: one sequence, after the analysis's warm-up fraction of the
# sequence (at most LYAPUNOV_WARMUP_MAX steps)
LYAPUNOV_WARMUP_MAX = 50


@dataclass(frozen=True)
class TrainConfig:
    """What to train and how. Defaults follow common practice for the adding problem."""

    task: str = "adding"  # one of tasks.LOSS_TASKS
    seq_len: int = 100  # T (copy: the number of blanks)
    batch_size: int = 64
    steps: int = 1000  # iterations
    optimizer: str = "adam"  # adam | sgd (with momentum)
    lr: float = 1e-3
    momentum: float = 0.9  # sgd only
    clip: str = "global_norm"  # see rnndiag.clip.STRATEGIES
    clip_threshold: float | None = 1.0
    seed: int = 0
    schedule: str = "log"  # when to run the diagnostics: log | linear
    diag_points: int = 12  # how many scheduled diagnostics
    eval_batch: int = 256  # held-out batch size for the test loss
    checkpoint_every: int = 0  # iterations between checkpoints (0: never)

    def __post_init__(self):
        if self.task not in LOSS_TASKS:
            raise ValueError(f"task must be one of {', '.join(LOSS_TASKS)} for training; got {self.task!r}")
        for name in ("seq_len", "batch_size", "steps", "diag_points", "eval_batch"):
            check_positive_int(getattr(self, name), name)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        for name in ("lr", "momentum"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or \
                    (name == "lr" and v == 0):
                raise ValueError(f"{name} must be a {'positive' if name == 'lr' else 'non-negative'} finite number; "
                                 f"got {v!r}")
        if self.schedule not in ("log", "linear"):
            raise ValueError(f"schedule must be log or linear; got {self.schedule!r}")
        if self.checkpoint_every < 0:
            raise ValueError(f"checkpoint_every must be >= 0; got {self.checkpoint_every}")
        Clipper(self.clip, self.clip_threshold)  # validates

    def schedule_iterations(self) -> list[int]:
        """The iterations (0-based, before the update) at which diagnostics run; always includes 0 and the last."""
        n, last = self.diag_points, self.steps - 1
        if n >= self.steps:  # as many points as steps, or more: one per step
            return list(range(self.steps))
        if self.schedule == "linear":
            its = np.linspace(0, last, n)
        elif n < 3:
            its = np.array([0, last])
        else:
            its = np.concatenate([[0], np.geomspace(1, last, n - 1)])
        return sorted({round(float(i)) for i in its} | {0, last})


@dataclass(frozen=True)
class LayerSnapshot:
    """One layer at a scheduled diagnostic."""

    spectral_radius: float  # of W_hh (gated cells: of the candidate block)
    sigma_max: float
    top_lyapunov: float  # nats/step, one sequence
    gate_saturation: dict[str, float]  # per gate: fraction of values < 0.1 or > 0.9 (|.| > 0.9 for tanh gates)
    memory_timescale: float | None  # steps, from the mean forget/update gate (gated cells)
    hidden_saturated: float | None  # fraction of |h| > 0.9 (tanh outputs)

    def to_dict(self) -> dict:
        return jsonable(dataclasses.asdict(self))


@dataclass(frozen=True)
class TrainDiagnostic:
    """The scheduled measurements at one training iteration, from that step's own trace (no extra BPTT)."""

    iteration: int
    grad_norm_per_step: tuple[float, ...]  # median over the batch of ||dL/dh_t||, t = 0..T-1
    test_loss: float | None  # on the held-out batch, before this iteration's update
    layers: tuple[LayerSnapshot, ...]

    def to_dict(self) -> dict:
        return jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> TrainDiagnostic:
        return cls(int(d["iteration"]), tuple(d["grad_norm_per_step"]), d["test_loss"],
                   tuple(LayerSnapshot(**layer) for layer in d["layers"]))


@dataclass
class History:
    """Everything recorded: a growing record (not frozen). Per-iteration lists grow together; ``diag`` holds one
    :class:`TrainDiagnostic` per scheduled iteration."""

    loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)  # pre-clip global norm
    grad_norm_clipped: list[float] = field(default_factory=list)
    clipped: list[bool] = field(default_factory=list)
    cosine: list[float] = field(default_factory=list)  # clipped vs unclipped
    param_norms: dict[str, list[float]] = field(default_factory=dict)  # per-parameter gradient norms
    diag: list[TrainDiagnostic] = field(default_factory=list)
    stopped: str | None = None  # why the run stopped early

    @property
    def iterations(self) -> int:
        return len(self.loss)

    def to_dict(self) -> dict:
        return jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> History:
        fields = {k: d[k] for k in (f.name for f in dataclasses.fields(cls))}
        fields["diag"] = [TrainDiagnostic.from_dict(x) for x in fields["diag"]]
        return cls(**fields)


@dataclass(frozen=True)
class TrainResult:
    model: RNNModel
    readout_w: np.ndarray
    readout_b: np.ndarray
    config: TrainConfig
    history: History
    baseline: float | None
    test_loss: float | None
    failure: str | None = None  # a fault that ended the run early and is not divergence (out of memory, a full disk)
    checkpoint_saved: int | None = None  # iterations held by the last checkpoint written (None: none written)

    @property
    def diverged(self) -> bool:
        return self.history.stopped is not None

    @property
    def complete(self) -> bool:
        """Every asked iteration ran, with finite numbers and no fault."""
        return not self.diverged and self.failure is None and self.history.iterations == self.config.steps

    def to_dict(self) -> dict:
        return {"config": dataclasses.asdict(self.config), "baseline": self.baseline, "test_loss": self.test_loss,
                "diverged": self.diverged, "failure": self.failure, "history": self.history.to_dict()}


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`train`: says where the run got to and which checkpoint holds what."""

    def __init__(self, iteration: int, checkpoint: Path | None, saved: int | None):
        self.iteration, self.checkpoint, self.saved = iteration, checkpoint, saved
        super().__init__(f"interrupted at iteration {iteration}")


def training_problem(cfg: TrainConfig, model: RNNModel, readout_wb, iteration: int, *,
                     held_out: bool = False) -> Problem:
    """Training batch ``iteration`` (or, ``held_out``, the test batch) with the readout ``(W, b)``: batch i depends
    only on the seed and i, so a resumed run sees the same data."""
    return task_problem(cfg.task, cfg.seq_len, cfg.eval_batch if held_out else cfg.batch_size, cfg.seed,
                        model.hidden_size, stream=TEST_STREAM if held_out else TRAIN_STREAM,
                        index=(0 if held_out else iteration,), readout_wb=readout_wb, dtype=model.dtype)


def loss_and_grads(model: RNNModel, problem: Problem):
    """(loss, gradients of every parameter and the readout, the trace); gradients None when dL/dh overflowed."""
    with np.errstate(all="ignore"):
        fwd = forward(model, problem.x)
        loss, grad_h, gw, gb = problem.loss_and_grads(fwd.h.astype(np.float64))
        grad_h = grad_h.astype(model.dtype)  # in float32 a finite float64 gradient can overflow here
        if not np.isfinite(grad_h).all():
            return loss, None, None
        trace = backward(fwd, grad_h)
    grads = dict(trace.param_grads)
    grads[READOUT[0]], grads[READOUT[1]] = gw, gb
    return loss, grads, trace


class _Optimizer:
    """SGD with momentum and Adam with PyTorch's update rules, state in plain arrays (checkpointable)."""

    def __init__(self, cfg: TrainConfig, params: dict[str, np.ndarray]):
        self.cfg = cfg
        self.step_count = 0
        self.m = {k: np.zeros_like(v, dtype=np.float64) for k, v in params.items()}
        self.v = {k: np.zeros_like(v, dtype=np.float64) for k, v in params.items()}

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cfg = self.cfg
        self.step_count += 1
        out = {}
        if cfg.optimizer == "sgd":
            for k, p in params.items():
                buf = self.m[k]
                buf *= cfg.momentum if self.step_count > 1 else 0.0
                buf += grads[k]
                out[k] = (p - cfg.lr * buf).astype(p.dtype)
            return out
        b1, b2, eps = 0.9, 0.999, 1e-8
        c1, c2 = 1 - b1**self.step_count, 1 - b2**self.step_count
        for k, p in params.items():
            g = grads[k]
            self.m[k] = b1 * self.m[k] + (1 - b1) * g
            self.v[k] = b2 * self.v[k] + (1 - b2) * g * g
            out[k] = (p - cfg.lr * (self.m[k] / c1) / (np.sqrt(self.v[k] / c2) + eps)).astype(p.dtype)
        return out


def diagnose_step(model: RNNModel, trace: Trace, iteration: int, test_loss: float | None) -> TrainDiagnostic:
    """The scheduled measurements, from the training step's own trace (no extra BPTT)."""
    with np.errstate(over="ignore", invalid="ignore"):
        per_step = np.median(np.linalg.norm(trace.grad_h.astype(np.float64), axis=2), axis=1)
    layers = []
    for lt, sp in zip(trace.layers, weight_spectra(model)):
        with np.errstate(all="ignore"):
            ly = lyapunov_spectrum(lt, [0], k=1, warmup=min(lt.h.shape[0] // WARMUP_FRACTION, LYAPUNOV_WARMUP_MAX))
        gs = gate_stats(lt)
        layers.append(LayerSnapshot(sp.spectral_radius, sp.sigma_max, ly.top,
                                    {k: s.left_saturated + s.right_saturated for k, s in gs.gates.items()},
                                    gs.memory_timescale, gs.hidden_saturated))
    return TrainDiagnostic(iteration, tuple(per_step.tolist()), test_loss, tuple(layers))


def train(
    model: RNNModel,
    config: TrainConfig,
    *,
    resume: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    progress: Callable[[int, float, float], None] | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train ``model`` on ``config.task`` and record the history (see the module docstring).

    ``checkpoint``: where to save every ``config.checkpoint_every`` iterations (and at the end); ``resume``: a
    checkpoint to continue from (its model, readout, optimizer state and history replace the arguments').
    ``progress(i, loss, grad_norm)`` is called every iteration; returning ``False`` ends the run there (early
    stopping). ``stop_after`` ends the run after that many
    iterations in this call (for tests of resuming).
    """
    cfg = config
    w, b = task_readout(cfg.task, model.hidden_size, cfg.seed)
    params = {**model.params, READOUT[0]: w.astype(model.dtype), READOUT[1]: b.astype(model.dtype)}
    opt = _Optimizer(cfg, params)
    clipper = Clipper(cfg.clip, cfg.clip_threshold)
    history = History(param_norms={k: [] for k in params})
    if resume is not None:
        params, opt, clipper, history = _load_checkpoint(Path(resume), cfg, model, params, opt, clipper)
    schedule = set(cfg.schedule_iterations())
    held_out = training_problem(cfg, model, (w, b), 0, held_out=True)  # tested through the readout of the time
    start = history.iterations
    done_here = 0
    saved = start if resume is not None else None
    failure = None
    i = start
    try:
        for i in range(start, cfg.steps):
            params, stop = _iteration(i, cfg, model, params, opt, clipper, history, schedule, held_out, progress)
            if stop:
                break
            done_here += 1
            if checkpoint is not None and cfg.checkpoint_every and (i + 1) % cfg.checkpoint_every == 0:
                save_checkpoint(Path(checkpoint), cfg, params, opt, clipper, history, model.cell)
                saved = history.iterations
            if stop_after is not None and done_here >= stop_after:
                break
    except KeyboardInterrupt:
        raise TrainingInterrupted(i, Path(checkpoint) if checkpoint is not None and saved is not None else None,
                                  saved) from None
    except MemoryError:
        if history.iterations == start:  # nothing done yet: not a run that failed midway
            raise
        failure = (f"iteration {i}: out of memory; the {history.iterations} iterations before it are kept -- reduce "
                   "--batch-size, --seq-len or --hidden-size")
    except OSError as exc:  # a checkpoint that could not be written: a full disk, "File too large"
        failure = (f"iteration {i}: the checkpoint {str(checkpoint)!r} could not be written ({exc.strerror or exc}); "
                   f"the run stopped there, its {history.iterations} iterations are kept -- free space or choose "
                   "another --checkpoint")
    final = dataclasses.replace(model.with_params({k: v for k, v in params.items() if k not in READOUT}),
                                stage="trained" if history.iterations else model.stage) \
        if all(np.isfinite(v).all() for v in params.values()) else model
    if checkpoint is not None and failure is None:
        try:
            save_checkpoint(Path(checkpoint), cfg, params, opt, clipper, history, model.cell)
            saved = history.iterations
        except OSError as exc:
            failure = (f"the final checkpoint {str(checkpoint)!r} could not be written ({exc.strerror or exc}); "
                       f"{'the last one written holds ' + str(saved) + ' iterations' if saved else 'none was written'}")
    test = _test_loss(final, params, held_out) if history.stopped is None else None
    return TrainResult(final, params[READOUT[0]], params[READOUT[1]], cfg, history, held_out.batch.baseline, test,
                       failure, saved)


def _iteration(i, cfg, model, params, opt, clipper, history, schedule, held_out, progress):
    """One training iteration, recorded in ``history``: (the new parameters, whether the run stops here).

    Everything is computed before anything is recorded, so a fault midway (out of memory) leaves ``history``
    with whole iterations only."""
    model = model.with_params({k: v for k, v in params.items() if k not in READOUT})
    problem = training_problem(cfg, model, (params[READOUT[0]], params[READOUT[1]]), i)
    loss, grads, trace = loss_and_grads(model, problem)
    bad = _nonfinite(loss, grads)
    if bad:
        history.stopped = f"iteration {i}: {bad}"
        return params, True
    clipped, total, fired = clipper(grads)
    record = {"loss": float(loss), "grad_norm": total, "grad_norm_clipped": global_norm(clipped),
              "clipped": bool(fired), "cosine": cosine(clipped, grads) if fired else 1.0}
    norms = {k: global_norm({k: g}) for k, g in grads.items()}
    diag = diagnose_step(model, trace, i, _test_loss(model, params, held_out)) if i in schedule else None
    with np.errstate(all="ignore"):  # an overflowing update is caught just below, naming the parameter
        new_params = opt.step(params, clipped)
    for name, value in record.items():
        getattr(history, name).append(value)
    for k, norm in norms.items():
        history.param_norms[k].append(norm)
    if diag is not None:
        history.diag.append(diag)
    new_bad = [k for k, v in new_params.items() if not np.isfinite(v).all()]
    if new_bad:
        history.stopped = f"iteration {i}: parameter {new_bad[0]} became non-finite after the update"
        return new_params, True
    # the caller's early stop: this iteration counts, the run ends here
    return new_params, progress is not None and progress(i, float(loss), total) is False


def _nonfinite(loss, grads) -> str | None:
    if grads is None or not math.isfinite(loss):
        return f"the loss is {loss} (non-finite)" if not math.isfinite(loss) else \
            "the loss's gradient on the hidden states (dL/dh) overflowed; no parameter gradient could be formed"
    for k, g in grads.items():
        if not np.isfinite(g).all():
            return f"the gradient of {k} is non-finite"
    return None


def _test_loss(model, params, held_out: Problem) -> float | None:
    """The loss on the held-out batch through the current readout in ``params``."""
    problem = dataclasses.replace(held_out, readout_w=params[READOUT[0]], readout_b=params[READOUT[1]])
    with np.errstate(all="ignore"):
        h = forward(model, problem.x).h
        loss = problem.loss_and_grads(h.astype(np.float64))[0]
    return float(loss) if math.isfinite(loss) else None


# -- checkpoints ------------------------------------------------------------------------------------------------
CHECKPOINT_MODE = 0o600  # a checkpoint is the whole training state: private to its owner, like an ssh key


def save_checkpoint(path: Path, cfg, params, opt, clipper, history, cell: str) -> None:
    """Everything needed to continue, in one ``.npz`` (arrays + a JSON string), written atomically, mode 0600."""
    # the history as recorded (NaN/Inf kept: this JSON is ours, read back by _load_checkpoint only)
    meta = {"config": dataclasses.asdict(cfg), "history": dataclasses.asdict(history), "step_count": opt.step_count,
            "clipper": clipper.state(), "model": {"cell": cell}}
    arrays = {f"param/{k}": v for k, v in params.items()}
    arrays |= {f"m/{k}": v for k, v in opt.m.items()} | {f"v/{k}": v for k, v in opt.v.items()}
    arrays["meta"] = np.array(json.dumps(meta, allow_nan=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda fh: np.savez(fh, **arrays), mode=CHECKPOINT_MODE)


class CheckpointError(ValueError):
    """A checkpoint cannot be resumed; the message names it and says what to do."""


def _load_checkpoint(path: Path, cfg, model, params, opt, clipper):
    """The state saved in ``path``, every part checked against this run before any of it is used: the file is a
    regular ``.npz`` whose arrays are exactly this model's (names and shapes known from the headers, before any
    data is decompressed), its settings are this run's, and its history is whole."""
    what = f"checkpoint {str(path)!r}"

    def refuse(why: str) -> CheckpointError:
        return CheckpointError(f"{what} {why}")

    want = {f"{part}/{k}": params[k].shape for part in ("param", "m", "v") for k in params}
    try:
        with NpzArchive(path, what) as archive:
            if "meta" not in archive.headers:
                raise refuse("has no 'meta' record; it is not an rnndiag checkpoint (or it is damaged): start a new "
                             "run without --resume")
            names = set(archive.headers) - {"meta"}
            if names != set(want) or any(archive.headers[k].shape != shape for k, shape in want.items()):
                raise refuse("belongs to another model (different parameters or shapes); resume with the model that "
                             "made it, or start a new run")
            meta_header = archive.headers["meta"]
            if meta_header.dtype.kind != "U" or meta_header.shape != () or meta_header.nbytes > 512 * 2**20:
                raise refuse("has a damaged 'meta' record; start a new run without --resume")
            archive.check_memory()
            meta = json.loads(str(archive.load("meta")))
            arrays = {k: archive.load(k) for k in want}
    except ArrayFileError as exc:
        raise CheckpointError(f"{exc.problem}; start a new run without --resume") from None
    except json.JSONDecodeError:
        raise refuse("has a damaged 'meta' record (not JSON); start a new run without --resume") from None
    try:
        saved_cfg = meta["config"]
        keys = ("task", "seq_len", "batch_size", "optimizer", "lr", "momentum", "seed", "clip", "clip_threshold")
        saved = {k: saved_cfg[k] for k in keys}  # steps may differ: a run can be extended
        history = History.from_dict(meta["history"])
        step_count = meta["step_count"]
        clip_history = meta["clipper"]["history"]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        missing = f" (no {exc.args[0]!r})" if isinstance(exc, KeyError) else ""
        raise refuse(f"is incomplete or damaged{missing}; start a new run without --resume") from None
    saved_model = meta.get("model")
    if isinstance(saved_model, dict) and saved_model.get("cell") != model.cell:
        raise refuse(f"was made by a {saved_model.get('cell')} model, not a {model.cell}; resume with the same cell")
    now = {k: getattr(cfg, k) for k in saved}
    if saved != now:
        diff = ", ".join(f"{k}: {saved[k]!r} vs {now[k]!r}" for k in saved if saved[k] != now[k])
        raise refuse(f"was made with other settings ({diff}); resume with the same")
    _check_history(history, set(params), step_count, clip_history, refuse)
    _check_record_types(history, model.num_layers, refuse)
    if history.stopped is not None:
        raise refuse(f"holds a run that stopped ({history.stopped}); it cannot continue: start a new run")
    if history.iterations > cfg.steps:
        raise refuse(f"already holds {history.iterations} iterations, more than --steps {cfg.steps}; pass --steps "
                     f"{history.iterations} or more to continue it (--steps {history.iterations} reports it as it is)")
    for k, v in arrays.items():
        if v.dtype.kind != "f" or not np.isfinite(v).all():
            raise refuse(f"array {k!r} is not finite floats; start a new run without --resume")
    opt.m = {k: arrays[f"m/{k}"] for k in params}
    opt.v = {k: arrays[f"v/{k}"] for k in params}
    opt.step_count = step_count
    clipper.history = [float(x) for x in clip_history]
    return {k: arrays[f"param/{k}"].astype(params[k].dtype) for k in params}, opt, clipper, history


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_record_types(history: History, num_layers: int, refuse) -> None:
    """Every recorded value has the type the reports read: numbers (NaN allowed), flags, per-layer records."""
    def damaged(what: str) -> CheckpointError:
        return refuse(f"has a damaged history ({what}); start a new run without --resume")

    for name in ("loss", "grad_norm", "grad_norm_clipped", "cosine"):
        if not all(_number(x) for x in getattr(history, name)):
            raise damaged(f"{name} holds values that are not numbers")
    if not all(isinstance(x, bool) for x in history.clipped):
        raise damaged("clipped holds values that are not true/false")
    if not all(all(_number(x) for x in v) for v in history.param_norms.values()):
        raise damaged("per-parameter norms that are not numbers")
    if history.stopped is not None and not isinstance(history.stopped, str):
        raise damaged("a stop reason that is not text")
    for d in history.diag:
        if not (d.grad_norm_per_step and all(_number(x) for x in d.grad_norm_per_step)) or \
                not (d.test_loss is None or _number(d.test_loss)) or len(d.layers) != num_layers:
            raise damaged(f"the diagnostic at iteration {d.iteration} is malformed")
        for layer in d.layers:
            values = [layer.spectral_radius, layer.sigma_max, layer.top_lyapunov, layer.memory_timescale,
                      layer.hidden_saturated]
            if not all(v is None or _number(v) for v in values) or not isinstance(layer.gate_saturation, dict) or \
                    not all(_number(v) for v in layer.gate_saturation.values()):
                raise damaged(f"the diagnostic at iteration {d.iteration} is malformed")


def _check_history(history: History, names: set[str], step_count, clip_history, refuse) -> None:
    """A saved history is whole: every per-iteration list as long as the loss list, one per-parameter list per
    parameter, diagnostics at increasing iterations inside the run, the optimizer's step count equal to it."""
    if not isinstance(history.loss, list) or not isinstance(history.param_norms, dict) or \
            not isinstance(history.diag, list):
        raise refuse("has a damaged history (not lists); start a new run without --resume")
    n = history.iterations
    lists = {"grad_norm": history.grad_norm, "grad_norm_clipped": history.grad_norm_clipped,
             "clipped": history.clipped, "cosine": history.cosine}
    lists |= {f"param_norms[{k!r}]": history.param_norms.get(k) for k in names}
    for name, values in lists.items():
        if not isinstance(values, list) or len(values) != n:
            got = "missing" if not isinstance(values, list) else f"{len(values)} entries"
            raise refuse(f"has a damaged history: {name} is {got}, the loss has {n}; start a new run without "
                         "--resume")
    if set(history.param_norms) != names:
        raise refuse("has a damaged history (per-parameter norms of other parameters); start a new run")
    its = [d.iteration for d in history.diag]
    if its != sorted(set(its)) or (its and not 0 <= its[-1] < n):
        raise refuse("has a damaged history (diagnostics out of order or past its end); start a new run")
    if isinstance(step_count, bool) or not isinstance(step_count, int) or step_count != n:
        raise refuse(f"has a damaged optimizer state (step count {step_count!r} for {n} iterations); start a new "
                     "run without --resume")
    if not isinstance(clip_history, list) or not all(isinstance(x, (int, float)) for x in clip_history):
        raise refuse("has a damaged clipping state; start a new run without --resume")
