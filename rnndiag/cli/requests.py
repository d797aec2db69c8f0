"""What a command was asked: the shared model and task options, the frozen request objects built from them, and
the checks that hold before any work starts (conflicting options, a task that does not fit the weights).

Every bad input ends as :class:`InputError`: one line on stderr, exit code 2.
"""

from __future__ import annotations

import contextlib
import shlex
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from ..cells import CELLS
from ..init import SCHEMES
from ..model import RNNModel
from ..tasks import LOSS_TASKS

# the options that describe a fresh model, which a weights file's shapes decide instead
FRESH_MODEL_OPTIONS = ("input_size", "hidden_size", "num_layers", "init_name", "gain", "forget_bias")


class InputError(click.ClickException):
    """A bad input: one line, exit code 2."""

    exit_code = 2


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    msg = str(exc).strip().replace("\n", " ")
    if isinstance(exc, FileNotFoundError) and not msg:
        msg = f"file not found: {exc.filename}"
    return msg or type(exc).__name__


def option_name(param: str) -> str:
    """The command-line spelling of a parameter: ``init_name`` -> ``--init``."""
    return "--" + param.removesuffix("_name").replace("_", "-")


def given_options() -> set[str]:
    """The parameters typed on the command line (not left at their defaults) in the running command."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return {name for name in ctx.params if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}


def init_option(default: str | None, help: str):
    return click.option("--init", "init_name", type=click.Choice(SCHEMES, case_sensitive=False), default=default,
                        show_default=default is not None, help=help)


def weights_options(fn):
    """``--weights`` and ``--prefix``: start from a trained model instead of a fresh one."""
    fn = click.option("--prefix", default=None, help="Key prefix of the RNN inside a whole model's state_dict "
                      "(e.g. encoder.rnn).")(fn)
    return click.option("--weights", type=click.Path(path_type=Path), default=None,
                        help="Weights file: .npz with PyTorch key names, or .pt/.pth (needs torch).")(fn)


def training_options(fn):
    """The model, task and optimizer options of init, clip and train."""
    opts = [
        click.option("--cell", type=click.Choice(CELLS, case_sensitive=False), default="rnn_tanh", show_default=True,
                     help="Cell type."),
        click.option("--hidden-size", type=click.IntRange(min=1), default=32, show_default=True),
        click.option("--num-layers", type=click.IntRange(min=1), default=1, show_default=True),
        click.option("--gain", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Gain of the init (orthogonal, xavier, kaiming) or scale of identity."),
        click.option("--forget-bias", type=float, default=None, help="LSTM forget-gate bias."),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
        click.option("--task", type=click.Choice(LOSS_TASKS, case_sensitive=False), default="adding",
                     show_default=True, help="Task to diagnose and train on."),
        click.option("--seq-len", type=click.IntRange(min=2), default=100, show_default=True),
        click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True),
        click.option("--optimizer", type=click.Choice(("adam", "sgd")), default="adam", show_default=True),
        click.option("--momentum", type=click.FloatRange(min=0), default=0.9, show_default=True,
                     help="SGD momentum (0: plain SGD, as in the seed tutorial)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


@dataclass(frozen=True)
class ModelRequest:
    """The model a command works on: the weights in a file, or a fresh initialization."""

    weights: Path | None
    prefix: str | None
    cell: str | None  # with weights: None = from the file
    input_size: int | None  # fresh: None = what the data feeds
    hidden_size: int
    num_layers: int
    init: str
    gain: float | None
    forget_bias: float | None
    seed: int
    dtype: str | None  # None: float64 for fresh models, a file's own dtype

    @classmethod
    def from_options(cls, opts: dict, given: set[str], *, default_cell: str, hidden_size: int, num_layers: int,
                     init: str) -> ModelRequest:
        """From a command's options (``given``: those typed); the keyword arguments are the command's defaults
        for what was not given. Refuses fresh-model options next to ``--weights``, ``--prefix`` without it."""
        weights = opts.get("weights")
        if weights is None and opts.get("prefix"):
            raise InputError("--prefix applies to --weights only")
        if weights is not None:
            for name in FRESH_MODEL_OPTIONS:
                if name in given:
                    raise InputError(f"{option_name(name)} describes a fresh model; it cannot be combined with "
                                     "--weights (sizes come from the file)")
            cell = opts["cell"] if "cell" in given else None  # the file's, unless --cell says (rnn_relu)
        else:
            cell = opts.get("cell") or default_cell
        return cls(weights, opts.get("prefix"), cell,
                   opts.get("input_size"), opts.get("hidden_size") or hidden_size,
                   opts.get("num_layers") or num_layers, opts.get("init_name") or init, opts.get("gain"),
                   opts.get("forget_bias"), opts.get("seed", 0), opts.get("dtype"))

    def build(self, input_size: int | None = None) -> RNNModel:
        """Load or initialise the model (``input_size``: what the data feeds, where ``--input-size`` is unset).
        Raises the library's errors; commands call it inside :func:`library_errors`."""
        from .. import init_model, load_weights

        if self.weights is not None:
            return load_weights(self.weights, self.cell, dtype=self.dtype, prefix=self.prefix)
        return init_model(self.cell, self.input_size or input_size, self.hidden_size, num_layers=self.num_layers,
                          init=self.init, seed=self.seed, dtype=self.dtype or np.float64, gain=self.gain,
                          forget_bias=self.forget_bias)

    def command_args(self, model: RNNModel) -> list[str]:
        """The options that make this model again."""
        if self.weights is not None:
            return ["--weights", str(self.weights), *(["--prefix", self.prefix] if self.prefix else []),
                    *(["--cell", model.cell] if self.cell else [])]
        return ["--cell", model.cell, "--init", self.init, "--input-size", str(model.input_size), "--hidden-size",
                str(model.hidden_size), "--num-layers", str(model.num_layers), "--seed", str(self.seed),
                *self.init_args()]

    def init_args(self) -> list[str]:
        """``--gain`` and ``--forget-bias``, where given."""
        return [*(["--gain", repr(self.gain)] if self.gain is not None else []),
                *(["--forget-bias", repr(self.forget_bias)] if self.forget_bias is not None else [])]


@dataclass(frozen=True)
class TrainingRequest:
    """The task and optimizer options of init, clip and train (the model is a :class:`ModelRequest`)."""

    task: str
    seq_len: int
    batch_size: int
    lr: float
    optimizer: str
    momentum: float
    seed: int

    @classmethod
    def from_options(cls, opts: dict) -> TrainingRequest:
        return cls(opts["task"].lower(), opts["seq_len"], opts["batch_size"], opts["lr"], opts["optimizer"],
                   opts["momentum"], opts["seed"])

    def config(self, steps: int, **settings):
        """The library's ``TrainConfig`` of these options, for ``steps`` iterations (``settings``: the rest)."""
        from ..train import TrainConfig

        return TrainConfig(task=self.task, seq_len=self.seq_len, batch_size=self.batch_size, steps=steps,
                           optimizer=self.optimizer, lr=self.lr, momentum=self.momentum, seed=self.seed, **settings)

    def command_args(self) -> list[str]:
        return ["--seed", str(self.seed), "--task", self.task, "--seq-len", str(self.seq_len), "--batch-size",
                str(self.batch_size), "--lr", repr(self.lr), "--optimizer", self.optimizer, "--momentum",
                repr(self.momentum)]


def training_command(kind: str, model_req: ModelRequest, training: TrainingRequest, extra: list[str], *,
                     model: RNNModel | None = None) -> str:
    """The command line that reproduces an init, clip or train run (``model``: the one loaded from weights, or the
    fresh one, whose ``--init`` then goes in)."""
    if model_req.weights is not None:
        head = model_req.command_args(model)
        tail = []
    else:
        head = ["--cell", model_req.cell, "--hidden-size", str(model_req.hidden_size), "--num-layers",
                str(model_req.num_layers)]
        tail = [*model_req.init_args(), *(["--init", model_req.init] if model is not None else [])]
    return shlex.join(["rnndiag", kind, *head, *training.command_args(), *tail, *extra])


@contextlib.contextmanager
def library_errors():
    """The library's errors about the user's input, as one line and exit code 2."""
    try:
        yield
    except (ValueError, TypeError, OSError) as exc:
        raise InputError(one_line(exc)) from None
    except MemoryError:
        raise InputError("the problem is too large for this machine's memory; reduce --seq-len, --batch-size or "
                         "--hidden-size") from None
