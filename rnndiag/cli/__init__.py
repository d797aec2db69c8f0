"""The ``rnndiag`` command line: thin commands over the library.

Each command parses its options into a frozen request (:mod:`.requests`), calls the library, and hands the
results to the renderers through the one output pipeline (:mod:`.output`). Every bad input ends as one line on
stderr (``rnndiag: error: ...``) and exit code 2, with nothing written.
"""

from __future__ import annotations

import contextlib
import sys
import warnings

import click

from .._validation import one_line
from .._version import __version__
from .analyze import analyze_cmd
from .compare import clip_cmd, init_cmd
from .forecast import forecast_cmd
from .report import report_cmd
from .sweep import sweep_cmd
from .train import train_cmd

__all__ = ["main"]


class _Interrupted(Exception):
    """Ctrl-C, carried past click's own handling of KeyboardInterrupt."""


class OneLineGroup(click.Group):
    """Click group whose usage errors are one line too (no usage block), exit code 2, never a traceback."""

    def invoke(self, ctx):
        """Ctrl-C inside a command reaches :meth:`main` as it is (click would print a blank line and abort)."""
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise _Interrupted() from None

    def main(self, args=None, prog_name=None, **extra):
        try:
            with warnings.catch_warnings():
                # numpy's floating-point warnings (overflow in a product at gain 1e308): the results already say
                # what is non-finite, in words; a warning line with a source path would only look like a crash
                warnings.simplefilter("ignore", RuntimeWarning)
                rv = super().main(args=args, prog_name=prog_name, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:  # bare `rnndiag`: show the help, as help
            with contextlib.suppress(BrokenPipeError):  # `rnndiag | head`: the reader had enough
                click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
            sys.exit(0)
        except click.exceptions.UsageError as exc:
            cmd = exc.ctx.command_path if exc.ctx else "rnndiag"
            click.echo(f"rnndiag: error: {exc.format_message()} (see '{cmd} --help')", err=True)
            sys.exit(2)
        except click.ClickException as exc:
            click.echo(f"rnndiag: error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except MemoryError:  # past every command's own estimate: still one line, never a traceback
            click.echo("rnndiag: error: out of memory; reduce --batch-size, --seq-len or --hidden-size", err=True)
            sys.exit(2)
        except OSError as exc:  # a file system fault outside the commands' own checks (a full disk while writing)
            click.echo(f"rnndiag: error: {one_line(exc)}", err=True)
            sys.exit(2)
        except click.exceptions.Abort:
            click.echo("rnndiag: aborted", err=True)
            sys.exit(130)
        except (KeyboardInterrupt, _Interrupted):  # reports are staged and renamed into place: none was left
            click.echo("rnndiag: interrupted; no report was written", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=OneLineGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="rnndiag")
def main():
    """rnndiag: whether, where and why a recurrent network's gradients vanish or explode, and what to change.

    \b
    Examples:
      rnndiag analyze                              # the built-in demo
      rnndiag analyze --weights lstm.pt            # your trained nn.LSTM state_dict
      rnndiag analyze --cell gru --hidden-size 128 --init orthogonal --task copy --seq-len 200
      rnndiag analyze --capture capture.npz        # your run: rnndiag.pytorch.capture(...).save(...)
      rnndiag report runs/lm                       # a run recorded with rnndiag.pytorch.watch
    """


for command in (analyze_cmd, init_cmd, clip_cmd, train_cmd, forecast_cmd, report_cmd, sweep_cmd):
    main.add_command(command)
