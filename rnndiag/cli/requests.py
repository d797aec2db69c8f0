"""What a command was asked: the options the commands share, and the frozen request objects built from them with
the checks that hold before any work starts (conflicting options, a task that does not fit the weights).

Each command module builds its own request (``AnalyzeRequest``, ``InitRequest``, ``ClipRequest``,
``TrainRequest``) from these parts; every bad input ends as :class:`~.output.InputError` (one line, exit code 2).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

from ..cells import CELLS
from ..init import SCHEMES
from ..model import RNNModel
from ..tasks import LOSS_TASKS
from .output import InputError

# the options that describe a fresh model, which a weights file's shapes decide instead
FRESH_MODEL_OPTIONS = ("input_size", "hidden_size", "num_layers", "init_name", "gain", "forget_bias")
# the fresh model of init, clip and train, unless the options say otherwise
TRAINING_CELL, TRAINING_HIDDEN, TRAINING_INIT = "rnn_tanh", 32, "pytorch"


def option_name(param: str) -> str:
    """The command-line spelling of a parameter: ``init_name`` -> ``--init``."""
    return "--" + param.removesuffix("_name").replace("_", "-")


def given_options() -> set[str]:
    """The parameters typed on the command line (not left at their defaults) in the running command."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return {name for name in ctx.params if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}


def _decorate(fn, opts):
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def init_option(default: str | None, help: str):
    return click.option("--init", "init_name", type=click.Choice(SCHEMES, case_sensitive=False), default=default,
                        show_default=default is not None, help=help)


def weights_options(fn):
    """``--weights``, ``--module`` and ``--prefix``: start from a trained model instead of a fresh one."""
    return _decorate(fn, [
        click.option("--weights", type=click.Path(path_type=Path), default=None,
                     help="Weights file to use instead of a fresh model: .npz with PyTorch key names, or a "
                          ".pt/.pth/.ckpt state_dict or training checkpoint (needs torch)."),
        click.option("--module", default=None, metavar="NAME",
                     help="The recurrent module to analyse when the weights hold several, by its name as the error "
                          "lists it or a unique ending (e.g. --module encoder.rnn, or --module rnn)."),
        click.option("--prefix", default=None, help="Exact key prefix of the recurrent module inside a whole "
                     "model's state_dict (e.g. model.encoder.rnn)."),
    ])


def gain_options(fn):
    """``--gain`` and ``--forget-bias`` of a fresh model's initialization."""
    return _decorate(fn, [
        click.option("--gain", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Gain of the init (orthogonal, xavier, kaiming) or scale of identity."),
        click.option("--forget-bias", type=float, default=None, help="LSTM forget-gate bias."),
    ])


def training_options(fn):
    """The model, task and optimizer options of init, clip and train."""
    return _decorate(fn, [
        click.option("--cell", type=click.Choice(CELLS, case_sensitive=False), default=TRAINING_CELL,
                     show_default=True, help="Cell type."),
        click.option("--hidden-size", type=click.IntRange(min=1), default=TRAINING_HIDDEN, show_default=True),
        click.option("--num-layers", type=click.IntRange(min=1), default=1, show_default=True),
        gain_options,
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
        click.option("--task", type=click.Choice(LOSS_TASKS, case_sensitive=False), default="adding",
                     show_default=True, help="Task to diagnose and train on."),
        click.option("--seq-len", type=click.IntRange(min=2), default=100, show_default=True),
        click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True),
        click.option("--optimizer", type=click.Choice(("adam", "sgd")), default="adam", show_default=True),
        click.option("--momentum", type=click.FloatRange(min=0), default=0.9, show_default=True,
                     help="SGD momentum (0: plain SGD, as in the seed tutorial)."),
    ])


@dataclass(frozen=True)
class ModelRequest:
    """The model a command works on: the weights in a file, or a fresh initialization."""

    weights: Path | None
    prefix: str | None
    module: str | None  # the recurrent module's name in a file that holds several
    cell: str | None  # with weights: None = from the file
    input_size: int | None  # fresh: None = what the data feeds
    hidden_size: int
    num_layers: int
    init: str
    gain: float | None
    forget_bias: float | None
    seed: int  # of the weights; commands also seed their data and probe with it
    dtype: str | None  # None: float64 for fresh models, a file's own dtype

    @classmethod
    def from_options(cls, opts: dict, given: set[str], *, default_cell: str = TRAINING_CELL,
                     hidden_size: int = TRAINING_HIDDEN, init: str = TRAINING_INIT) -> ModelRequest:
        """From a command's options (``given``: those typed); the keyword arguments are the command's defaults
        where it has no such option or leaves it unset. Refuses fresh-model options next to ``--weights``, and
        ``--module``/``--prefix`` without it (or both at once)."""
        weights = opts.get("weights")
        for name in ("module", "prefix"):
            if weights is None and opts.get(name) is not None and \
                    not (name == "module" and opts.get("capture") is not None):
                also = " or --capture" if name == "module" and "capture" in opts else ""
                raise InputError(f"--{name} applies to --weights{also} only")
        if opts.get("module") is not None and opts.get("prefix") is not None:
            raise InputError("--module and --prefix both choose the recurrent module; pass one of them")
        if weights is not None:
            for name in FRESH_MODEL_OPTIONS:
                if name in given:
                    raise InputError(f"{option_name(name)} describes a fresh model; it cannot be combined with "
                                     "--weights (sizes come from the file)")
            cell = opts["cell"] if "cell" in given else None  # the file's, unless --cell says (rnn_relu)
        else:
            cell = opts.get("cell") or default_cell
        return cls(weights, opts.get("prefix"), opts.get("module"), cell, opts.get("input_size"),
                   opts.get("hidden_size") or hidden_size, opts.get("num_layers") or 1, opts.get("init_name") or init,
                   opts.get("gain"), opts.get("forget_bias"), opts["seed"], opts.get("dtype"))

    def build(self, input_size: int | None = None) -> RNNModel:
        """Load or initialise the model (``input_size``: what the data feeds, where ``--input-size`` is unset).
        Raises the library's errors; commands call it inside ``library_errors()``."""
        from .. import init_model, load_weights

        if self.weights is not None:
            return load_weights(self.weights, self.cell, dtype=self.dtype, prefix=self.prefix, module=self.module)
        return init_model(self.cell, self.input_size or input_size, self.hidden_size, num_layers=self.num_layers,
                          init=self.init, seed=self.seed, dtype=self.dtype or np.float64, gain=self.gain,
                          forget_bias=self.forget_bias)

    def build_for_task(self, task: str) -> RNNModel:
        """The model clip and train start from: fresh, sized by the task, or loaded (then the task must fit)."""
        from ..tasks import input_size as task_input_size

        need = task_input_size(task)
        model = self.build(need)
        if model.input_size != need:
            raise InputError(f"the {task} task feeds {need} input channels but the weights in "
                             f"{str(self.weights)!r} take {model.input_size}; choose a task that fits")
        return model

    def command_args(self, model: RNNModel) -> list[str]:
        """The options that make this model again."""
        if self.weights is not None:
            return ["--weights", str(self.weights), *(["--prefix", self.prefix] if self.prefix else []),
                    *(["--module", self.module] if self.module is not None else []),
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
        return cls(opts["task"], opts["seq_len"], opts["batch_size"], opts["lr"], opts["optimizer"],
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

    def config_rows(self, model: RNNModel, *rows: tuple[str, object]) -> list[tuple[str, object]]:
        """The configuration table of a clip or train report: the model, the task, the optimizer, then ``rows``."""
        return [("model", model.describe()), ("init", model.init), ("task", f"{self.task}, T = {self.seq_len}"),
                ("optimizer", f"{self.optimizer}, lr {self.lr:g}"), *rows, ("seed", self.seed)]


def check_memory(estimate) -> None:
    """Refuse, before allocating, work whose estimated peak does not fit the memory available now: one line with
    the estimate, the limit and the option to change (exit code 2)."""
    from ..memory import ResourceError, check_fits

    try:
        check_fits(estimate)
    except ResourceError as exc:
        raise InputError(str(exc)) from None


def training_command(kind: str, model_req: ModelRequest, training: TrainingRequest, extra: list[str], *,
                     model: RNNModel | None = None, with_init: bool = True) -> str:
    """The command line that reproduces an init, clip or train run: ``model`` is the one loaded from weights
    (needed then); a fresh model's ``--init`` goes in ``with_init`` (init compares schemes instead)."""
    if model_req.weights is not None:
        head, tail = model_req.command_args(model), []
    else:
        head = ["--cell", model_req.cell, "--hidden-size", str(model_req.hidden_size), "--num-layers",
                str(model_req.num_layers)]
        tail = [*model_req.init_args(), *(["--init", model_req.init] if with_init else [])]
    return shlex.join(["rnndiag", kind, *head, *training.command_args(), *tail, *extra])
