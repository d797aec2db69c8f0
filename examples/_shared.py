"""Helpers shared by the example scripts: report folders that are never reused, tables, number formatting (the
library's own, under the names the scripts use).

Not an example itself. The scripts import it as a sibling module (``python examples/<script>.py`` puts
``examples/`` on ``sys.path``).
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from rnndiag.files import fresh_folder as fresh_report_dir  # reports/<name>-<time>, never an earlier one's folder
from rnndiag.files import write_report
from rnndiag.jsonsafe import jsonable
from rnndiag.render import fmt_num as fmt  # the numbers as every rnndiag table shows them
from rnndiag.render import terminal

REPO = Path(__file__).resolve().parent.parent
DEFAULT_REPORTS = REPO / "reports"

# Wide enough that a table is never wrapped when stdout is a pipe (rich assumes 80 columns there).
console = Console(width=240, highlight=False)

__all__ = ["DEFAULT_REPORTS", "console", "fmt", "fresh_report_dir", "print_table", "write_json_report"]


def write_json_report(out: Path, metrics: dict, figures: dict | None = None) -> Path:
    """Write ``metrics.json`` (and PNG figures) into the new folder ``out``, atomically; refuses to overwrite."""
    files = {"metrics.json": json.dumps(jsonable(metrics), indent=1, allow_nan=False).encode("utf-8")}
    if figures:
        from rnndiag.render.figures import draw_figures

        # figures as drawn by rnndiag's renderers (name -> builder) or as made by a script (name -> Figure)
        pngs, _ = draw_figures({name: fig if callable(fig) else (lambda fig=fig: fig) for name, fig in figures.items()})
        files.update({f"{name}.png": data for name, data in pngs.items()})
    write_report(out, files, force=False)
    return out


def print_table(title: str, columns: list[str], rows: list[list]) -> None:
    terminal.print_table(console, title, columns, rows)
