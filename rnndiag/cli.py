"""The ``rnndiag`` command line: a thin layer over the library.

Every bad input ends as one line on stderr (``rnndiag: error: ...``) and exit code 2, with nothing written.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import shlex
import sys
import time
import zipfile
from pathlib import Path

import click
import numpy as np
from rich.console import Console
from rich.text import Text

from ._validation import CELLS
from ._version import __version__

FORMATS = ("html", "png", "json")
INIT_CHOICES = ("tutorial", "pytorch", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
                "orthogonal", "identity", "keras")
DEMO = {"cell": "rnn_tanh", "init": "tutorial", "task": "adding", "hidden_size": 64, "seq_len": 100,
        "batch_size": 32, "seed": 0}


class InputError(click.ClickException):
    """A bad input: one line, exit code 2."""

    exit_code = 2


class OneLineGroup(click.Group):
    """Click group whose usage errors are one line too (no usage block), exit code 2, never a traceback."""

    def main(self, args=None, prog_name=None, **extra):
        try:
            rv = super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # bare `rnndiag`: show the help, as help
            click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
            sys.exit(0)
        except click.exceptions.UsageError as exc:
            cmd = exc.ctx.command_path if exc.ctx else "rnndiag"
            click.echo(f"rnndiag: error: {exc.format_message()} (see '{cmd} --help')", err=True)
            sys.exit(2)
        except click.ClickException as exc:
            click.echo(f"rnndiag: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("rnndiag: aborted", err=True)
            sys.exit(130)
        except KeyboardInterrupt:
            click.echo("rnndiag: interrupted; nothing was written", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().replace("\n", " ")
    if isinstance(exc, FileNotFoundError) and not msg:
        msg = f"file not found: {exc.filename}"
    return msg or type(exc).__name__


def _load_input(path: Path, dtype) -> np.ndarray:
    if not path.exists():
        raise InputError(f"input file {str(path)!r} does not exist; check the path")
    if path.is_dir():
        raise InputError(f"input {str(path)!r} is a folder; pass a .npy file of shape (T, B, I)")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "object arrays" in str(exc).lower():
            raise InputError(f"input file {str(path)!r} holds a pickled object array, which rnndiag never loads; "
                             "save a numeric array with np.save") from None
        if "pickled" in str(exc).lower():  # numpy's word for bytes that are not a .npy file
            raise InputError(f"input file {str(path)!r} is not a .npy file (corrupt, or another format); save it "
                             "with np.save(path, x) with x of shape (T, B, I)") from None
        raise InputError(f"input file {str(path)!r} is not a readable .npy ({_one_line(exc)}); save it with "
                         "np.save") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"input file {str(path)!r} cannot be read ({_one_line(exc)}); save it with np.save") from None
    if isinstance(arr, np.lib.npyio.NpzFile):
        keys = arr.files
        arr.close()
        raise InputError(f"input file {str(path)!r} is an .npz archive ({', '.join(keys[:3])}); pass one .npy array "
                         "of shape (T, B, I)")
    if arr.dtype.kind not in "biuf":
        raise InputError(f"input file {str(path)!r} has dtype {arr.dtype}; it must hold numbers of shape (T, B, I)")
    if arr.ndim == 2:
        raise InputError(f"input file {str(path)!r} has shape {arr.shape}; it must be (T, B, I) -- for one sequence "
                         "use x[:, None, :]")
    if arr.ndim != 3 or 0 in arr.shape:
        raise InputError(f"input file {str(path)!r} has shape {arr.shape}; it must be (T, B, I) with every size >= 1")
    if not np.isfinite(arr).all():
        raise InputError(f"input file {str(path)!r} contains NaN or Inf; pass finite values")
    return arr.astype(dtype, copy=False)


def _default_out(cell: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("reports") / f"{cell}-{stamp}"
    out, n = base, 2
    while out.exists():  # never reuse an earlier report's folder
        out = base.with_name(f"{base.name}-{n}")
        n += 1
    return out


def _parse_formats(text: str) -> tuple[str, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    parts = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    bad = [p for p in parts if p not in FORMATS]
    if bad:
        raise InputError(f"unknown --format {', '.join(bad)}: use a comma-separated subset of {','.join(FORMATS)} "
                         "(or none)")
    return parts


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="rnndiag")
def main():
    """rnndiag: whether, where and why a recurrent network's gradients vanish or explode, and what to change.

    \b
    Examples:
      rnndiag analyze                              # the built-in demo
      rnndiag analyze --weights lstm.pt            # your trained nn.LSTM state_dict
      rnndiag analyze --cell gru --hidden-size 128 --init orthogonal --task copy --seq-len 200
    """


@main.command()
@click.option("--weights", type=click.Path(path_type=Path, dir_okay=True), default=None,
              help="Weights file: .npz with PyTorch key names, or .pt/.pth (needs torch).")
@click.option("--prefix", default=None, help="Key prefix of the RNN inside a whole model's state_dict "
              "(e.g. encoder.rnn).")
@click.option("--cell", type=click.Choice(CELLS, case_sensitive=False), default=None,
              help="Cell type (inferred from --weights except rnn_relu). [default for a fresh model: rnn_tanh]")
@click.option("--input-size", type=click.IntRange(min=1), default=None,
              help="Input size of a fresh model. [default: what the task feeds]")
@click.option("--hidden-size", type=click.IntRange(min=1), default=None, help="Hidden size of a fresh model. "
              "[default: 64]")
@click.option("--num-layers", type=click.IntRange(min=1), default=None, help="Stacked layers. [default: 1]")
@click.option("--init", "init_name", type=click.Choice(INIT_CHOICES, case_sensitive=False), default=None,
              help="Initialization of a fresh model. [default: pytorch; the demo uses tutorial]")
@click.option("--gain", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Gain of the init (orthogonal, xavier, kaiming) or scale of identity.")
@click.option("--forget-bias", type=float, default=None, help="LSTM forget-gate bias.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the weights, the task data and the probe.")
@click.option("--input", "input_path", type=click.Path(path_type=Path), default=None,
              help="Inputs as a .npy array of shape (T, B, I) instead of a task.")
@click.option("--task", type=click.Choice(("adding", "adding_hs97", "copy", "sine", "text", "noise"),
                                         case_sensitive=False),
              default=None,
              help="Generated inputs (and their loss on a seeded readout). [default: adding; noise if the model's "
                   "input size does not fit the task]")
@click.option("--seq-len", type=click.IntRange(min=1), default=100, show_default=True, help="Sequence length T.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Batch size B.")
@click.option("--loss", type=click.Choice(("last", "all"), case_sensitive=False), default=None,
              help="Inject the gradient at the last step or at every step: the task's loss where it looks there, "
                   "else the probe loss. [default: the task's own]")
@click.option("--horizon-factor", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=1e-3,
              show_default=True, help="Horizon: steps back until the gradient falls below this factor.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Report folder. [default: reports/<cell>-<YYYYmmdd-HHMMSS>/]")
@click.option("--format", "formats", default="html,png,json", show_default=True,
              help="What to write: a comma-separated subset of html,png,json (or none).")
@click.option("--json", "json_to", default=None, help="Also print the metrics JSON: '-' for stdout.")
@click.option("--force", is_flag=True, help="Allow writing into an existing non-empty --out folder.")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors (and --json -).")
@click.option("--dtype", type=click.Choice(("float64", "float32")), default=None,
              help="Compute dtype. [default: float64 for fresh models; a file's own dtype]")
def analyze(**opts):
    """Diagnose vanishing / exploding gradients of a recurrent network and write a report.

    With no options it runs the built-in demo: a tanh RNN with the seed tutorial's 0.01*randn initialization on
    the adding problem (T = 100), whose gradient vanishes within a few steps.

    \b
    Examples:
      rnndiag analyze
      rnndiag analyze --weights model.npz --task noise --seq-len 500
      rnndiag analyze --weights lstm.pt --prefix encoder.rnn --input batch.npy
      rnndiag analyze --cell rnn_tanh --init orthogonal --gain 2 --task adding --out reports/orth2
      rnndiag analyze --cell lstm --forget-bias 1 --json - --format none
    """
    from .analysis import analyze as run_analysis
    from .files import OutputError, check_out_dir

    t_start = time.perf_counter()
    quiet = opts["quiet"]
    to_stdout = opts["json_to"] == "-"
    console = Console(stderr=to_stdout, quiet=quiet, highlight=False)
    formats = _parse_formats(opts["formats"])
    if opts["json_to"] not in (None, "-"):
        formats = tuple(sorted(set(formats) | {"json"}))  # --json PATH: write metrics.json there too
    try:
        model, model_label, cmd = _build_model(opts)
        x, task_batch, input_label = _build_input(opts, model)
        out = opts["out"] or _default_out(model.cell)
        if formats:
            check_out_dir(out, opts["force"])
        json_path = _check_json_path(opts)
        grad_h, loss_label = _loss_for(opts, model, x, task_batch)
        opts["_command"] = shlex.join([*cmd, *opts["_cmd_input"], *(["--loss", opts["loss"]] if opts["loss"] else []),
                                       "--horizon-factor", repr(opts["horizon_factor"])])
        timings = {"model": time.perf_counter() - t_start}
        t0 = time.perf_counter()
        with console.status("analysing (BPTT, Jacobian products, Lyapunov exponents)...", spinner="dots"):
            diag = run_analysis(model, x, loss="all" if (opts["loss"] or "last") == "all" else "last", grad_h=grad_h,
                                seed=opts["seed"], horizon_factor=opts["horizon_factor"],
                                loss_label=loss_label.split(":")[0].split(" (")[0])
        timings["analysis"] = time.perf_counter() - t0
    except (ValueError, TypeError, FileNotFoundError, PermissionError, IsADirectoryError, OutputError) as exc:
        raise InputError(_one_line(exc)) from None
    except MemoryError:
        raise InputError("the problem is too large for this machine's memory; reduce --seq-len, --batch-size or "
                         "--hidden-size") from None
    metrics = diag.to_dict()
    metrics["loss_detail"] = loss_label
    metrics["input"] = input_label
    metrics["command"] = opts["_command"]
    report = _write_outputs(diag, metrics, formats, out, opts, model_label, input_label, loss_label, timings,
                            console, json_path)
    if to_stdout:
        click.echo(json.dumps(metrics, allow_nan=False))
    from .render.terminal import summary

    summary(console, diag, str(report) if report else None)
    if not quiet:
        total = time.perf_counter() - t_start
        console.print(f"[dim]done in {total:.2f} s (analysis {timings['analysis']:.2f} s, figures "
                      f"{timings.get('figures', 0):.2f} s, writing {timings.get('writing', 0):.2f} s)[/dim]")


def _build_model(opts):
    from . import init_model, load_weights

    dtype = opts["dtype"]
    is_demo = opts["weights"] is None and all(opts[k] is None for k in (
        "cell", "init_name", "input_size", "hidden_size", "num_layers", "gain", "forget_bias")) and \
        opts["input_path"] is None and opts["task"] is None
    opts["_demo"] = is_demo
    if opts["weights"] is not None:
        for k in ("input_size", "hidden_size", "num_layers", "init_name", "gain", "forget_bias"):
            if opts[k] is not None:
                raise InputError(f"--{k.replace('_name', '').replace('_', '-')} describes a fresh model; it cannot be "
                                 "combined with --weights (sizes come from the file)")
        model = load_weights(opts["weights"], opts["cell"], dtype=dtype, prefix=opts["prefix"])
        cmd = ["rnndiag", "analyze", "--weights", str(opts["weights"])]
        if opts["prefix"]:
            cmd += ["--prefix", opts["prefix"]]
        if opts["cell"]:
            cmd += ["--cell", model.cell]
        return model, f"{model.describe()} from {opts['weights']}", cmd
    if opts["prefix"]:
        raise InputError("--prefix applies to --weights only")
    cell = opts["cell"] or DEMO["cell"]
    init = opts["init_name"] or (DEMO["init"] if is_demo else "pytorch")
    hidden = opts["hidden_size"] or DEMO["hidden_size"]
    layers = opts["num_layers"] or 1
    from .tasks import input_size as task_input_size

    if opts["input_size"] is not None:
        input_size = opts["input_size"]
    elif opts["input_path"] is not None:
        input_size = None  # from the file
    else:
        input_size = task_input_size(opts["task"] or DEMO["task"])
    if input_size is None:  # a fresh model sized by the input file: read it once, keep it for _build_input
        opts["_input"] = _load_input(opts["input_path"], dtype or np.float64)
        input_size = opts["_input"].shape[2]
    model = init_model(cell, input_size, hidden, num_layers=layers, init=init, seed=opts["seed"],
                       dtype=dtype or np.float64, gain=opts["gain"], forget_bias=opts["forget_bias"])
    cmd = ["rnndiag", "analyze", "--cell", cell, "--init", init, "--input-size", str(input_size),
           "--hidden-size", str(hidden), "--num-layers", str(layers), "--seed", str(opts["seed"])]
    if opts["gain"] is not None:
        cmd += ["--gain", repr(opts["gain"])]
    if opts["forget_bias"] is not None:
        cmd += ["--forget-bias", repr(opts["forget_bias"])]
    return model, f"{model.describe()}, init {model.init}, seed {opts['seed']}", cmd


def _build_input(opts, model):
    from .tasks import input_size as task_input_size
    from .tasks import make_task

    cmd_extra = []
    if opts["input_path"] is not None:
        if opts["task"] is not None:
            raise InputError("--input and --task both give inputs; pass one of them")
        x = opts.get("_input")
        x = _load_input(opts["input_path"], model.dtype) if x is None else x.astype(model.dtype, copy=False)
        if x.shape[2] != model.input_size:
            raise InputError(f"input file {str(opts['input_path'])!r} has {x.shape[2]} input channels (shape "
                             f"{x.shape}); the model takes {model.input_size}")
        label = f"{opts['input_path']} (shape {x.shape})"
        cmd_extra = ["--input", str(opts["input_path"])]
        task_batch = None
    else:
        task = opts["task"] or DEMO["task"]
        if task != "noise" and task_input_size(task) != model.input_size:
            if opts["task"] is not None:
                raise InputError(f"task {task} feeds {task_input_size(task)} input channels but the model takes "
                                 f"{model.input_size}; use --task noise or --input FILE.npy")
            task = "noise"
        task_batch = make_task(task, opts["seq_len"], opts["batch_size"], opts["seed"], input_size=model.input_size,
                               dtype=model.dtype)
        x = task_batch.x
        label = f"task {task}, T = {x.shape[0]}, B = {x.shape[1]}, seed {opts['seed']}"
        cmd_extra = ["--task", task, "--seq-len", str(opts["seq_len"]), "--batch-size", str(opts["batch_size"])]
        if task == "noise":
            task_batch = None
    opts["_cmd_input"] = cmd_extra
    return x, task_batch, label


def _loss_for(opts, model, x, task_batch):
    """The task's loss gradient through a seeded readout, or None for the probe."""
    from .engine import forward
    from .tasks import out_size, readout, task_loss_grad

    want = opts["loss"]
    if task_batch is None:
        return None, f"probe loss <u, h> ({want or 'last'}): seeded random unit vectors"
    steps = "last" if task_batch.loss_steps in ("last", "window") else "all"
    if want is not None and want != steps:
        return None, (f"probe loss ({want}): the {task_batch.name} task's own loss looks at "
                      f"{task_batch.loss_steps} steps")
    w, b = readout(model.hidden_size, out_size(task_batch.name), seed=opts["seed"] + 1)
    with np.errstate(all="ignore"):
        h = forward(model, x).h
    if not np.isfinite(h).all():
        return None, f"probe loss: the {task_batch.name} task loss is undefined (the state overflowed)"
    value, grad_h = task_loss_grad(task_batch, h.astype(np.float64), w, b)
    opts["loss"] = steps
    return grad_h, (f"{task_batch.name} task loss on a seeded random linear readout (value {value:.4g}; "
                    f"trivial baseline {task_batch.baseline:.4g})")


def _check_json_path(opts) -> Path | None:
    """Check a ``--json PATH`` destination before any work, so a bad one writes nothing."""
    if opts["json_to"] in (None, "-"):
        return None
    dest = Path(opts["json_to"])
    if dest.is_dir():
        raise InputError(f"--json path {str(dest)!r} is a folder; give a file name such as metrics.json")
    if dest.exists() and not opts["force"]:
        raise InputError(f"--json file {str(dest)!r} exists; pass --force or choose another path")
    if not dest.parent.is_dir():
        raise InputError(f"--json path {str(dest)!r}: folder {str(dest.parent)!r} does not exist; create it first")
    return dest


def _write_outputs(diag, metrics, formats, out, opts, model_label, input_label, loss_label, timings, console,
                   json_path):
    from .render.figures import all_figures, png_bytes
    from .render.html import render_html
    from .files import OutputError, write_atomic, write_report

    if not formats:
        return None
    full_cmd = opts["_command"]
    files: dict[str, bytes] = {}
    t0 = time.perf_counter()
    pngs = {}
    if "png" in formats or "html" in formats:
        with console.status("drawing figures...", spinner="dots"):
            pngs = {name: png_bytes(fig) for name, fig in all_figures(diag).items()}
    timings["figures"] = time.perf_counter() - t0
    if "png" in formats:
        files.update({f"{name}.png": data for name, data in pngs.items()})
    if "html" in formats:
        config = {
            "model_label": model_label,
            "command": full_cmd,
            "rows": [("model", model_label), ("cell", diag.cell), ("input size", diag.input_size),
                     ("hidden size", diag.hidden_size), ("layers", diag.num_layers), ("init", diag.init),
                     ("seed", opts["seed"]), ("input", input_label), ("loss", loss_label),
                     ("dtype", diag.dtype), ("horizon factor", opts["horizon_factor"])],
        }
        files["report.html"] = render_html(diag, metrics, pngs, config).encode("utf-8")
    if "json" in formats:
        files["metrics.json"] = json.dumps(metrics, indent=1, allow_nan=False).encode("utf-8")
    t0 = time.perf_counter()
    try:
        write_report(out, files, opts["force"])
        if json_path is not None:  # --json PATH: the metrics also at PATH
            write_atomic(json_path, files["metrics.json"])
    except (OSError, OutputError) as exc:
        raise InputError(f"cannot write the report to {str(out)!r}: {_one_line(exc)}") from None
    timings["writing"] = time.perf_counter() - t0
    return out / "report.html" if "html" in formats else out


# -- init / clip / train -----------------------------------------------------------------------------------------
def _common_options(fn):
    """Options shared by init, clip and train (the model, the task, the output)."""
    opts = [
        click.option("--cell", type=click.Choice(CELLS, case_sensitive=False), default="rnn_tanh", show_default=True,
                     help="Cell type."),
        click.option("--hidden-size", type=click.IntRange(min=1), default=32, show_default=True),
        click.option("--num-layers", type=click.IntRange(min=1), default=1, show_default=True),
        click.option("--gain", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="Gain of the init (orthogonal, xavier, kaiming) or scale of identity."),
        click.option("--forget-bias", type=float, default=None, help="LSTM forget-gate bias."),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
        click.option("--task", type=click.Choice(("adding", "adding_hs97", "copy", "sine", "text"),
                                                 case_sensitive=False),
                     default="adding",
                     show_default=True, help="Task to diagnose and train on."),
        click.option("--seq-len", type=click.IntRange(min=2), default=100, show_default=True),
        click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True),
        click.option("--optimizer", type=click.Choice(("adam", "sgd")), default="adam", show_default=True),
        click.option("--momentum", type=click.FloatRange(min=0), default=0.9, show_default=True,
                     help="SGD momentum (0: plain SGD, as in the seed tutorial)."),
        click.option("--out", type=click.Path(path_type=Path), default=None,
                     help="Report folder. [default: reports/<command>-<cell>-<YYYYmmdd-HHMMSS>/]"),
        click.option("--format", "formats", default="html,png,json", show_default=True,
                     help="A comma-separated subset of html,png,json (or none)."),
        click.option("--json", "json_to", default=None, help="Also print the metrics JSON: '-' for stdout."),
        click.option("--force", is_flag=True, help="Allow writing into an existing non-empty --out folder."),
        click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors (and --json -)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _prepare(opts, kind: str):
    """Console, formats and a checked output folder -- before any work, so bad options write nothing."""
    from .files import OutputError, check_out_dir

    to_stdout = opts["json_to"] == "-"
    console = Console(stderr=to_stdout, quiet=opts["quiet"], highlight=False)
    formats = _parse_formats(opts["formats"])
    out = opts["out"] or _default_out(f"{kind}-{opts['cell']}")
    try:
        if formats:
            check_out_dir(out, opts["force"])
        json_path = _check_json_path(opts)
    except OutputError as exc:
        raise InputError(_one_line(exc)) from None
    return console, formats, out, json_path


def _emit(kind, title, headline, reasons, columns, rows, config, command, metrics, figs, formats, out, opts,
          json_path, console):
    from .render.figures import png_bytes
    from .render.html import render_comparison
    from .files import OutputError, write_atomic, write_report

    metrics = {"rnndiag_version": __version__, **metrics, "command": command}
    files: dict[str, bytes] = {}
    pngs = {name: png_bytes(fig) for name, fig in figs().items()} if {"png", "html"} & set(formats) else {}
    if "png" in formats:
        files.update({f"{n}.png": d for n, d in pngs.items()})
    if "html" in formats:
        files["report.html"] = render_comparison(kind, title, headline, reasons, columns, rows, config, command,
                                                 metrics, pngs).encode("utf-8")
    if "json" in formats:
        files["metrics.json"] = json.dumps(metrics, indent=1, allow_nan=False).encode("utf-8")
    if files:
        try:
            write_report(out, files, opts["force"])
            if json_path is not None:
                write_atomic(json_path, files["metrics.json"])
        except (OSError, OutputError) as exc:
            raise InputError(f"cannot write the report to {str(out)!r}: {_one_line(exc)}") from None
        console.print(Text("report: ", style="bold").append(str(out / "report.html" if "html" in formats else out)))
    if opts["json_to"] == "-":
        click.echo(json.dumps(metrics, allow_nan=False))


def _fmt_num(v, spec=".3g") -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def _base_cmd(kind: str, opts, extra: list[str]) -> str:
    parts = ["rnndiag", kind, "--cell", opts["cell"], "--hidden-size", str(opts["hidden_size"]), "--num-layers",
             str(opts["num_layers"]), "--seed", str(opts["seed"]), "--task", opts["task"], "--seq-len",
             str(opts["seq_len"]), "--batch-size", str(opts["batch_size"]), "--lr", repr(opts["lr"]),
             "--optimizer", opts["optimizer"], "--momentum", repr(opts["momentum"])]
    if opts["gain"] is not None:
        parts += ["--gain", repr(opts["gain"])]
    if opts["forget_bias"] is not None:
        parts += ["--forget-bias", repr(opts["forget_bias"])]
    return shlex.join(parts + extra)


def _weights_args(opts) -> list[str]:
    if opts.get("weights") is None:
        return []
    return ["--weights", str(opts["weights"]), *(["--prefix", opts["prefix"]] if opts.get("prefix") else [])]


def _progress_printer(console):
    def show(message: str) -> None:
        console.print(Text(f"  {message}", style="dim"))

    return show


@main.command("init")
@_common_options
@click.option("--schemes", default="tutorial,pytorch,xavier_uniform,orthogonal,identity,keras", show_default=True,
              help="Comma-separated initialization schemes to compare.")
@click.option("--train-steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also train each scheme this many steps and compare the final test loss.")
def init_cmd(**opts):
    """Compare initialization schemes side by side: at initialization and, with --train-steps, after training.

    \b
    Examples:
      rnndiag init --cell rnn_tanh --seq-len 100
      rnndiag init --cell lstm --schemes pytorch,keras,orthogonal --train-steps 500
    """
    from .experiments import compare_inits
    from .render.compare import init_figures
    from .tasks import input_size as task_input_size

    console, formats, out, json_path = _prepare(opts, "init")
    schemes = [s.strip() for s in opts["schemes"].split(",") if s.strip()]
    try:
        from .init import check_scheme

        schemes = [check_scheme(s) for s in schemes]
        if not schemes:
            raise ValueError("--schemes is empty; e.g. --schemes tutorial,orthogonal")
        cmp = compare_inits(opts["cell"], task_input_size(opts["task"]), opts["hidden_size"], schemes=schemes,
                            num_layers=opts["num_layers"], task=opts["task"], seq_len=opts["seq_len"],
                            batch_size=opts["batch_size"], seed=opts["seed"], gain=opts["gain"],
                            forget_bias=opts["forget_bias"], train_steps=opts["train_steps"],
                            train_kwargs={"lr": opts["lr"], "optimizer": opts["optimizer"],
                                          "momentum": opts["momentum"], "batch_size": opts["batch_size"]},
                            progress=_progress_printer(console))
    except (ValueError, TypeError) as exc:
        raise InputError(_one_line(exc)) from None
    trained = opts["train_steps"] > 0
    columns = ["rank", "scheme", "verdict", "spectral radius", "sigma_max", f"horizon / {cmp.seq_len}",
               "decay log10/step", "top Lyapunov"] + (["final test loss", "after training", "note"] if trained else [])
    rows = []
    for i, r in enumerate(cmp.results, 1):
        d = r.at_init
        ld = d.layers[0]
        hz = d.gradient_flow.horizon
        row = [str(i), r.label, d.verdict, _fmt_num(ld.spectrum.spectral_radius), _fmt_num(ld.spectrum.sigma_max),
               f"{hz.steps}{'+' if hz.censored else ''}", _fmt_num(d.gradient_flow.fit.rate, "+.4f"),
               _fmt_num(ld.lyapunov.top if ld.lyapunov else None, "+.4f")]
        if trained:
            row += [_fmt_num(r.final_loss, ".4g"), r.after.verdict if r.after else "diverged", r.note or ""]
        rows.append(row)
    _print_table(console, f"initialization schemes for {opts['cell']} (ranked: {cmp.ranking_rule})",
                 columns[:-1] if trained else columns, [r[:-1] for r in rows] if trained else rows)
    best = cmp.results[0]
    headline = f"best: {best.label} ({cmp.ranking_rule})"
    if trained:
        from .experiments import LEARNED_FRACTION

        learned = [r for r in cmp.results if r.final_loss is not None and r.trained.baseline is not None
                   and r.final_loss < LEARNED_FRACTION * r.trained.baseline]
        if not learned:
            headline = (f"no scheme learned the {opts['task']} task in {opts['train_steps']} steps (every test loss "
                        f"is above {LEARNED_FRACTION:g} x the baseline); lowest test loss: {best.label} -- train "
                        "longer before choosing")
    reasons = [f"{r.scheme}: {r.note}" for r in cmp.results if r.note]
    console.print(Text(headline, style="bold"))
    for line in reasons:
        console.print(Text(f"  - {line}"))
    cmd = _base_cmd("init", opts, ["--schemes", ",".join(schemes), "--train-steps", str(opts["train_steps"])])
    config = [("cell", opts["cell"]), ("hidden size", opts["hidden_size"]), ("layers", opts["num_layers"]),
              ("task", f"{opts['task']}, T = {opts['seq_len']}"), ("seed", opts["seed"]),
              ("train steps", opts["train_steps"])]
    _emit("init", f"{opts['cell']} on {opts['task']}", headline, reasons, columns, rows, config, cmd, cmp.to_dict(),
          lambda: init_figures(cmp), formats, out, opts, json_path, console)


def _print_table(console, title, columns, rows):
    from .render.terminal import print_table

    print_table(console, title, columns, rows)


def _given(name: str) -> bool:
    """Whether option ``name`` was typed on the command line (not a default)."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    return ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE


def _weights_options(fn):
    fn = click.option("--prefix", default=None, help="Key prefix of the RNN inside a whole model's state_dict.")(fn)
    return click.option("--weights", type=click.Path(path_type=Path), default=None,
                        help="Start from these weights (.npz with PyTorch names, or .pt/.pth with torch) instead of "
                             "a fresh model.")(fn)


def _fresh_model(opts, init_name: str):
    from . import init_model, load_weights
    from .tasks import input_size as task_input_size

    if opts.get("weights") is not None:
        for name in ("hidden_size", "num_layers", "init_name", "gain", "forget_bias"):
            if _given(name):
                raise ValueError(f"--{name.replace('_name', '').replace('_', '-')} describes a fresh model; it cannot "
                                 "be combined with --weights (sizes come from the file)")
        model = load_weights(opts["weights"], opts["cell"] if _given("cell") else None, prefix=opts["prefix"])
        need = task_input_size(opts["task"])
        if model.input_size != need:
            raise ValueError(f"the {opts['task']} task feeds {need} input channels but the weights in "
                             f"{str(opts['weights'])!r} take {model.input_size}; choose a task that fits")
        opts["cell"] = model.cell
        return model
    if opts.get("prefix"):
        raise ValueError("--prefix applies to --weights only")
    return init_model(opts["cell"], task_input_size(opts["task"]), opts["hidden_size"], num_layers=opts["num_layers"],
                      init=init_name, seed=opts["seed"], gain=opts["gain"], forget_bias=opts["forget_bias"])


@main.command("clip")
@_common_options
@_weights_options
@click.option("--init", "init_name", type=click.Choice(INIT_CHOICES, case_sensitive=False), default="pytorch",
              show_default=True)
@click.option("--strategies", default="none,global_norm:1,value:5,per_param:1,autoclip:10", show_default=True,
              help="Comma-separated strategy:threshold list (none, global_norm, per_param, value, "
                   "autoclip:percentile).")
@click.option("--steps", type=click.IntRange(min=1), default=300, show_default=True, help="Training iterations.")
def clip_cmd(**opts):
    """Train the same model from the same seed under several clipping strategies and recommend one.

    \b
    Examples:
      rnndiag clip --cell rnn_tanh --init orthogonal --gain 2 --optimizer sgd --lr 0.05
      rnndiag clip --strategies none,global_norm:1,value:5 --steps 500
    """
    from .experiments import compare_clipping, parse_strategies
    from .render.compare import clip_figures
    from .train import TrainConfig

    console, formats, out, json_path = _prepare(opts, "clip")
    try:
        strategies = parse_strategies(opts["strategies"])
        model = _fresh_model(opts, opts["init_name"])
        base = TrainConfig(task=opts["task"], seq_len=opts["seq_len"], batch_size=opts["batch_size"],
                           steps=opts["steps"], optimizer=opts["optimizer"], lr=opts["lr"],
                           momentum=opts["momentum"], seed=opts["seed"])
        cmp = compare_clipping(model, strategies, base, progress=_progress_printer(console))
    except (ValueError, TypeError, FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        raise InputError(_one_line(exc)) from None
    columns = ["strategy", "diverged", "final test loss", "fraction clipped", "mean cosine", "oscillation",
               "suggested threshold"]
    rows = [[r.label, "yes" if r.trained.diverged else "no", _fmt_num(r.trained.test_loss, ".4g"),
             f"{100 * r.stats.fraction_clipped:.0f}%", _fmt_num(r.stats.mean_cosine, ".3f"),
             _fmt_num(r.oscillation, ".2f"), _fmt_num(r.stats.suggested_threshold)] for r in cmp.runs]
    _print_table(console, f"clipping strategies, {opts['cell']} ({model.init}) on {opts['task']}", columns, rows)
    headline = f"recommended: {cmp.recommended}" if cmp.recommended else "no strategy trained without diverging"
    console.print(Text(headline, style="bold"))
    for line in cmp.reasons:
        console.print(Text(f"  - {line}"))
    cmd = _base_cmd("clip", opts, [*_weights_args(opts), "--init", opts["init_name"], "--strategies",
                                   opts["strategies"], "--steps", str(opts["steps"])])
    config = [("model", model.describe()), ("init", model.init), ("task", f"{opts['task']}, T = {opts['seq_len']}"),
              ("optimizer", f"{opts['optimizer']}, lr {opts['lr']:g}"), ("steps", opts["steps"]),
              ("seed", opts["seed"])]
    _emit("clip", f"{opts['cell']} on {opts['task']}", headline, cmp.reasons, columns, rows, config, cmd,
          cmp.to_dict(), lambda: clip_figures(cmp), formats, out, opts, json_path, console)


@main.command("train")
@_common_options
@_weights_options
@click.option("--init", "init_name", type=click.Choice(INIT_CHOICES, case_sensitive=False), default="pytorch",
              show_default=True)
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True, help="Training iterations.")
@click.option("--clip", "clip_spec", default="global_norm:1", show_default=True,
              help="Clipping strategy:threshold (none, global_norm, per_param, value, autoclip:percentile).")
@click.option("--schedule", type=click.Choice(("log", "linear")), default="log", show_default=True,
              help="Spacing of the diagnostics over training.")
@click.option("--diag-points", type=click.IntRange(min=2), default=12, show_default=True)
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None, help="Checkpoint file (.npz).")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from --checkpoint.")
def train_cmd(**opts):
    """Train one configuration with diagnostics over time (loss, gradient norms, spectra, Lyapunov, gates).

    \b
    Examples:
      rnndiag train --cell gru --task adding --seq-len 100 --steps 2000 --lr 0.003
      rnndiag train --cell lstm --forget-bias 1 --checkpoint run.npz --resume
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from .experiments import parse_strategies
    from .render.compare import train_figures
    from .train import TrainConfig, train

    console, formats, out, json_path = _prepare(opts, "train")
    try:
        ((clip_name, clip_thr),) = parse_strategies(opts["clip_spec"])
    except ValueError as exc:
        raise InputError(_one_line(exc) if "," not in opts["clip_spec"] else
                         "--clip takes one strategy, e.g. global_norm:1") from None
    if opts["resume"] and opts["checkpoint"] is None:
        raise InputError("--resume needs --checkpoint FILE")
    if opts["checkpoint"] is not None and opts["checkpoint"].exists() and not opts["resume"] and not opts["force"]:
        raise InputError(f"checkpoint {str(opts['checkpoint'])!r} exists; pass --resume to continue it or --force to "
                         "start over")
    try:
        model = _fresh_model(opts, opts["init_name"])
        cfg = TrainConfig(task=opts["task"], seq_len=opts["seq_len"], batch_size=opts["batch_size"],
                          steps=opts["steps"], optimizer=opts["optimizer"], lr=opts["lr"],
                          momentum=opts["momentum"], clip=clip_name,
                          clip_threshold=clip_thr, seed=opts["seed"], schedule=opts["schedule"],
                          diag_points=opts["diag_points"],
                          checkpoint_every=opts["checkpoint_every"] if opts["checkpoint"] else 0)
        with Progress(TextColumn("training"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TextColumn("loss {task.fields[loss]}  |g| {task.fields[norm]}"), TimeRemainingColumn(),
                      console=console, transient=True, disable=opts["quiet"]) as bar:
            task = bar.add_task("train", total=cfg.steps, loss="-", norm="-")

            def progress(i, loss, norm):
                bar.update(task, completed=i + 1, loss=f"{loss:.4g}", norm=f"{norm:.3g}")

            result = train(model, cfg, resume=opts["checkpoint"] if opts["resume"] else None,
                           checkpoint=opts["checkpoint"], progress=progress)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise InputError(_one_line(exc)) from None
    h = result.history
    columns = ["iteration", "test loss", "spectral radius", "sigma_max", "top Lyapunov", "grad norm at t=0"]
    rows = [[str(d["iteration"]), _fmt_num(d["test_loss"], ".4g"), _fmt_num(d["layers"][0]["spectral_radius"]),
             _fmt_num(d["layers"][0]["sigma_max"]), _fmt_num(d["layers"][0]["top_lyapunov"], "+.4f"),
             _fmt_num(d["grad_norm_per_step"][0])] for d in h.diag]
    _print_table(console, f"{model.describe()} on {opts['task']}: diagnostics over training", columns, rows)
    if h.stopped:
        headline = f"stopped: {h.stopped}"
    else:
        headline = (f"final test loss {_fmt_num(result.test_loss, '.4g')} "
                    f"(baseline {_fmt_num(result.baseline, '.4g')}) after {h.iterations} iterations; clipping fired in "
                    f"{100 * (sum(h.clipped) / max(len(h.clipped), 1)):.0f}% of them")
    console.print(Text(headline, style="bold red" if h.stopped else "bold"))
    cmd = _base_cmd("train", opts, [*_weights_args(opts), "--init", opts["init_name"], "--steps", str(opts["steps"]),
                                    "--clip",
                                    opts["clip_spec"], "--schedule", opts["schedule"], "--diag-points",
                                    str(opts["diag_points"])])
    config = [("model", model.describe()), ("init", model.init), ("task", f"{opts['task']}, T = {opts['seq_len']}"),
              ("optimizer", f"{opts['optimizer']}, lr {opts['lr']:g}"), ("clipping", opts["clip_spec"]),
              ("steps", opts["steps"]), ("seed", opts["seed"])]
    _emit("train", f"{model.describe()} on {opts['task']}", headline, [], columns, rows, config, cmd,
          {"cell": model.cell, **result.to_dict()}, lambda: train_figures(result), formats, out, opts, json_path,
          console)
    if h.stopped:
        sys.exit(1)
