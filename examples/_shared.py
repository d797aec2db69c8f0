"""Helpers shared by the example scripts: report folders that are never reused, tables, number formatting.

Not an example itself. The scripts import it as a sibling module (``python examples/<script>.py`` puts
``examples/`` on ``sys.path``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path

from rich.console import Console
from rnndiag.files import write_report

from rnndiag.render import terminal

REPO = Path(__file__).resolve().parent.parent
DEFAULT_REPORTS = REPO / "reports"

# Wide enough that a table is never wrapped when stdout is a pipe (rich assumes 80 columns there).
console = Console(width=240, highlight=False)


def fresh_report_dir(root: Path, name: str) -> Path:
    """``root/<name>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``, ... appended when that folder exists already."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{name}-{stamp}"
    out, n = base, 2
    while out.exists():
        out = base.with_name(f"{base.name}-{n}")
        n += 1
    return out


def write_json_report(out: Path, metrics: dict, figures: dict | None = None) -> Path:
    """Write ``metrics.json`` (and PNG figures) into the new folder ``out``, atomically; refuses to overwrite."""
    from rnndiag.jsonsafe import jsonable

    files = {"metrics.json": json.dumps(jsonable(metrics), indent=1, allow_nan=False).encode("utf-8")}
    if figures:
        from rnndiag.render.figures import png_bytes

        files.update({f"{name}.png": png_bytes(fig) for name, fig in figures.items()})
    write_report(out, files, force=False)
    return out


def print_table(title: str, columns: list[str], rows: list[list]) -> None:
    terminal.print_table(console, title, columns, rows)


def fmt(v, spec: str = ".3g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return format(v, spec)
