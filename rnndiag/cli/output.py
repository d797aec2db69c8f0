"""The one output pipeline of every command: the CLI's error channel, its output options (checked before any
work), and the report they ask for -- a folder staged and renamed into place (``rnndiag.files``),
``--json PATH`` beside it, ``--json -`` on stdout -- with one rich console for everything else.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click
from rich.console import Console
from rich.text import Text

from .._validation import one_line
from .._version import __version__
from ..files import (
    OutputError,
    check_out_dir,
    check_output_file,
    fresh_folder,
    same_path,
    write_atomic,
    write_new_report,
    write_report,
)

FORMATS = ("html", "png", "json")
REPORTS = Path("reports")  # the default report folder, relative to where the command runs


class InputError(click.ClickException):
    """A bad input: one line on stderr, exit code 2."""

    exit_code = 2


class Interrupted(click.ClickException):
    """Ctrl-C, with what was kept: one line on stderr, exit code 130."""

    exit_code = 130


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


def output_options(folder: str):
    """``--out``, ``--format``, ``--json``, ``--force``, ``--quiet``: the same for every command, whose default
    report folder is ``reports/<folder>-<YYYYmmdd-HHMMSS>/``."""
    opts = [
        click.option("--out", type=click.Path(path_type=Path), default=None,
                     help=f"Report folder. [default: reports/{folder}-<YYYYmmdd-HHMMSS>/]"),
        click.option("--format", "formats", default="html,png,json", show_default=True,
                     help="What to write: a comma-separated subset of html,png,json (or none)."),
        click.option("--json", "json_to", default=None,
                     help="Also write the metrics JSON: '-' for stdout, or a file path."),
        click.option("--force", is_flag=True, help="Allow writing into an existing non-empty --out folder."),
        click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors (and --json -)."),
    ]

    def decorate(fn):
        for opt in reversed(opts):
            fn = opt(fn)
        return fn

    return decorate


def _silence(stream) -> None:
    """The reader of ``stream`` went away (``| head``): later writes go to /dev/null instead of failing."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stream.fileno())
        finally:
            os.close(devnull)


class _Console(Console):
    """rich's console, except that a closed pipe (``| head``) silences it and the run goes on: its report is still
    written and its exit code is its own (rich itself would exit 1 at once, as if the run had failed)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        _silence(self.file)


@dataclass(frozen=True)
class OutputRequest:
    """Where a command's results go, checked before any work: a bad destination writes nothing."""

    out: Path | None  # the report folder; None: a new one under reports/, named when it is written
    formats: tuple[str, ...]  # a subset of FORMATS; "json" also when --json names a file
    json_path: Path | None  # --json PATH: the metrics there too
    json_stdout: bool  # --json -: the metrics on stdout (and the terminal output on stderr)
    force: bool
    quiet: bool

    def console(self) -> Console:
        """The one console of a run (stderr when stdout carries the JSON)."""
        return _Console(stderr=self.json_stdout, quiet=self.quiet, highlight=False)

    def folder(self, name: str) -> Path:
        """The report folder: ``--out``, or a new ``reports/<name>-<YYYYmmdd-HHMMSS>`` created now, exclusively."""
        return self.out if self.out is not None else fresh_folder(REPORTS, name)

    def reserve(self, name: str) -> Path:
        """Create the report folder now, for a run that writes into it as it goes (a training checkpoint): a new
        one under reports/, or ``--out`` (created exclusively where it does not exist)."""
        if self.out is None:
            return fresh_folder(REPORTS, name)
        if not self.out.is_dir():
            self.out.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(self.out)  # exclusive: fails if another process made it meanwhile
        return self.out


def parse_formats(text: str) -> tuple[str, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    parts = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    bad = [p for p in parts if p not in FORMATS]
    if bad:
        raise InputError(f"unknown --format {', '.join(bad)}: use a comma-separated subset of {','.join(FORMATS)} "
                         "(or none)")
    return parts


def _json_path(json_to: str | None, force: bool) -> Path | None:
    if json_to in (None, "-"):
        return None
    try:
        return check_output_file(json_to, "--json file", force=force)
    except OutputError as exc:
        raise InputError(one_line(exc)) from None


def output_request(opts: dict) -> OutputRequest:
    """The output options of a command, checked: a destination that cannot take the report is refused before any
    work."""
    out, force = opts["out"], opts["force"]
    chosen = parse_formats(opts["formats"])
    json_to = opts["json_to"]
    if json_to not in (None, "-") and out is not None and not Path(out).exists() and \
            Path(os.path.abspath(out)) in Path(os.path.abspath(json_to)).parents:
        raise InputError(f"--json {json_to!r} is inside the --out folder {str(out)!r}, which does not exist yet; the "
                         "report folder holds metrics.json anyway: give --json a path outside it")
    json_path = _json_path(json_to, force)
    if json_path is not None:  # --json PATH: metrics.json in the report too
        chosen = tuple(sorted(set(chosen) | {"json"}))
        if out is not None and same_path(json_path, out):
            raise InputError(f"--json {str(json_path)!r} and --out name the same path; give the metrics a file name "
                             "of its own (the report folder holds metrics.json anyway)")
    if chosen:
        try:  # the default folder is new: reports/ itself must be (or can become) a writable folder
            check_out_dir(out, force) if out is not None else check_out_dir(REPORTS, force=True)
        except OutputError as exc:
            raise InputError(one_line(exc)) from None
    return OutputRequest(out, chosen, json_path, opts["json_to"] == "-", force, opts["quiet"])


@dataclass(frozen=True)
class Report:
    """What a command hands to the output pipeline: its metrics, and how to draw its figures and HTML page (called
    only for the formats asked for)."""

    metrics: dict
    figures: Callable[[], dict]  # figure name -> a function that draws it (a matplotlib Figure, or None)
    html: Callable[[dict[str, bytes], dict[str, str]], str]  # (PNGs by figure name, figures not drawn) -> the page


@dataclass(frozen=True)
class Written:
    path: Path | None  # the report (None: nothing written)
    figures_s: float
    writing_s: float


def emit(request: OutputRequest, report: Report, console: Console, folder_name: str, *,
         reserved: Path | None = None) -> Written:
    """Write the report the request asks for (a default folder is named ``folder_name``-<time>; ``reserved``: the
    folder this run made at its start and wrote into as it went) and print ``--json -``; a write that fails is one
    line, exit 2."""
    from ..render.figures import draw_figures

    formats = request.formats
    t0 = time.perf_counter()
    pngs: dict[str, bytes] = {}
    failed: dict[str, str] = {}
    if {"png", "html"} & set(formats):
        with console.status("drawing figures...", spinner="dots"):
            pngs, failed = draw_figures(report.figures())
        for figure, reason in failed.items():  # the figure is lost, never the metrics or the other figures
            console.print(Text(f"warning: figure {figure} could not be drawn ({reason}); its numbers are in the "
                               "metrics", style="yellow"))
    figures_s = time.perf_counter() - t0
    files: dict[str, bytes] = {}
    if "png" in formats:
        files.update({f"{figure}.png": data for figure, data in pngs.items()})
    if "html" in formats:
        files["report.html"] = report.html(pngs, failed).encode("utf-8")
    if "json" in formats:
        files["metrics.json"] = json.dumps(report.metrics, indent=1, allow_nan=False).encode("utf-8")
    t0 = time.perf_counter()
    shown = None
    if files:
        folder = reserved or request.out or REPORTS
        try:
            if reserved is not None:  # ours since the run began: file by file, each atomically
                for name, data in files.items():
                    write_atomic(reserved / name, data)
            elif request.out is not None:
                write_report(folder, files, request.force)
            else:  # a new folder, made now (exclusively), filled in one step
                folder = fresh_folder(REPORTS, folder_name)
                write_new_report(folder, files)
        except (OSError, OutputError) as exc:
            raise InputError(f"cannot write the report to {str(folder)!r}: {one_line(exc)}") from None
        if request.json_path is not None:
            try:
                write_atomic(request.json_path, files["metrics.json"])
            except OSError as exc:
                raise InputError(f"the report is in {str(folder)!r}, but the --json file "
                                 f"{str(request.json_path)!r} could not be written: {one_line(exc)}") from None
        shown = folder / "report.html" if "html" in formats else folder
    writing_s = time.perf_counter() - t0
    if request.json_stdout:
        try:
            click.echo(json.dumps(report.metrics, allow_nan=False))
        except BrokenPipeError:  # the reader has what it wanted; the report is written, the run goes on
            _silence(sys.stdout)
    return Written(shown, figures_s, writing_s)


def print_report_path(console: Console, written: Written) -> None:
    if written.path is not None:
        console.print(Text("report: ", style="bold").append(str(written.path)))


def print_results(console: Console, table, headline, *, alarm: bool = False) -> None:
    """A command's table, its headline (red with ``alarm``) and the reasons behind it: what its HTML report shows."""
    from ..render.terminal import print_table

    print_table(console, table.title, table.columns, table.rows)
    console.print(Text(headline.text, style="bold red" if alarm else "bold"))
    for line in headline.reasons:
        console.print(Text(f"  - {line}"))


def comparison_report(kind: str, title: str, table, headline, config, command: str, metrics: dict,
                      figures) -> Report:
    """The report of init, clip or train: the HTML page shows the table, the headline and the configuration;
    the metrics get the version first and the reproducing command last."""
    from ..render.html import render_comparison

    metrics = {"rnndiag_version": __version__, **metrics, "command": command}
    return Report(metrics, figures, lambda pngs, failed: render_comparison(
        kind, title, headline.text, headline.reasons, table.columns, table.rows, config, command, metrics, pngs,
        figure_errors=failed))


def progress_printer(console: Console) -> Callable[[str], None]:
    def show(message: str) -> None:
        console.print(Text(f"  {message}", style="dim"))

    return show

def one_way_only(model, command: str):
    """``train`` and ``clip`` train one-way models without a projection (their readouts, checkpoints and histories
    assume one output of H units per step); a bidirectional or projected model is refused in one line."""
    if model.bidirectional or model.proj_size:
        what = "bidirectional" if model.bidirectional else f"proj_size {model.proj_size}"
        raise InputError(f"rnndiag {command} trains one-way models without proj_size; this one is {what}: diagnose "
                         "it with rnndiag analyze --weights (every architecture), or train it in PyTorch")
    return model
