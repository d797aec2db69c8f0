"""The rich terminal summary. User strings are printed as text, never parsed as markup.

Tables fit the console without cutting anything: a number or a label stays whole on one line, a header wraps at
its spaces, free text (a scheme label, a note) wraps at its spaces. When even that is too wide, whole columns are
left out in a stated order (:data:`SUMMARY_DROP_ORDER`, :data:`TABLE_DROP_ORDER`) and one dim line says which; the
HTML report and metrics.json have them all. Columns that no order names are never left out.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import fmt_num

VERDICT_STYLE = {"vanishing": "bold blue", "exploding": "bold red", "healthy": "bold green"}

# `rnndiag analyze`'s per-layer table, least important first; layer, verdict and horizon / T always stay.
SUMMARY_DROP_ORDER = ("decay log10/step", "sigma_max", "gate saturation", "memory (steps)", "top Lyapunov",
                      "spectral radius")
# The tables of `rnndiag init`, `clip` and `train` (see render/compare.py), least important first. Never left out:
# rank, scheme, verdict, horizon, final test loss (init); strategy, diverged, final test loss (clip); iteration,
# test loss (train).
TABLE_DROP_ORDER = ("note", "decay log10/step", "sigma_max", "oscillation", "mean cosine", "top Lyapunov",
                    "grad norm at t=0", "suggested threshold", "after training", "spectral radius",
                    "fraction clipped")
# Columns of free text that may wrap at spaces; every other cell is kept whole on one line.
WRAP_COLUMNS = ("scheme", "strategy", "note")
WRAP_MIN_WIDTH = 16  # a wrapping column gets at least this many characters (or its longest line if shorter)


@dataclass(frozen=True)
class Column:
    """One column to lay out: its header, its cells (one per row) and how its cells may break."""

    header: str
    cells: tuple[Text, ...]
    wrap: bool = False  # free text: may wrap at spaces; otherwise each cell stays whole on one line
    justify: str = "left"

    def natural_width(self) -> int:
        """Characters that show the header and every cell on one line."""
        return max([cell_len(self.header), *(c.cell_len for c in self.cells)])

    def min_width(self) -> int:
        """The narrowest this column can be without cutting anything: the header may wrap at its spaces."""
        words = [cell_len(w) for w in self.header.split()] or [1]
        if not self.wrap:
            return max([*words, *(c.cell_len for c in self.cells)])
        words += [cell_len(w) for c in self.cells for w in c.plain.split()]
        return max(max(words), min(self.natural_width(), WRAP_MIN_WIDTH))


def _table_overhead(n_columns: int) -> int:
    """Border and padding characters of a rich Table with the default box: two edges, a rule between columns and
    one space either side of every cell."""
    return 3 * n_columns + 1


def fit_columns(columns: list[Column], width: int, drop_order) -> tuple[list[Column], list[int], list[str]]:
    """The columns to show in ``width`` characters, the content width of each, and the headers left out.

    Columns named in ``drop_order`` are left out in that order until the minimum widths fit; then the room that is
    left goes to whole-cell columns, the smallest need first and each only if its header then fits on one line (so
    that as many headers as possible sit on one line), and then evenly to the wrapping ones. If the columns that
    must stay still do not fit, the widths are their minimum and rich decides (only on a console far narrower than
    60 characters).
    """
    kept = list(columns)
    dropped: list[str] = []
    for header in drop_order:
        if sum(c.min_width() for c in kept) + _table_overhead(len(kept)) <= width:
            break
        if any(c.header == header for c in kept):
            kept = [c for c in kept if c.header != header]
            dropped.append(header)
    widths = [c.min_width() for c in kept]
    room = width - _table_overhead(len(kept)) - sum(widths)
    order = sorted((i for i, c in enumerate(kept) if not c.wrap), key=lambda i: kept[i].natural_width() - widths[i])
    for i in order:  # a whole-cell column is widened only all the way (its header on one line), else not at all
        extra = kept[i].natural_width() - widths[i]
        if 0 < extra <= room:
            widths[i] += extra
            room -= extra
    wrapping = [i for i, c in enumerate(kept) if c.wrap]
    while room > 0 and wrapping:
        short = [i for i in wrapping if widths[i] < kept[i].natural_width()]
        if not short:
            break
        i = min(short, key=lambda j: widths[j] - kept[j].natural_width())  # the one furthest from its natural width
        widths[i] += 1
        room -= 1
    return kept, widths, dropped


def print_columns(console: Console, title: Text, columns: list[Column], drop_order) -> None:
    """Lay ``columns`` out in the console's width (see :func:`fit_columns`), print the table and, if columns were
    left out, one dim line naming them."""
    kept, widths, dropped = fit_columns(columns, console.width, drop_order)
    table = Table(title=title, expand=False)
    for col, w in zip(kept, widths):
        table.add_column(Text(col.header), justify=col.justify, width=w, overflow="fold")
    for r in range(len(columns[0].cells) if columns else 0):
        table.add_row(*[col.cells[r] for col in kept])
    console.print(table)
    if dropped:
        console.print(Text(f"not shown at {console.width} columns: {', '.join(dropped)} (in the HTML report and "
                           "metrics.json)", style="dim"))


def summary(console: Console, diag, report_path: str | None = None) -> None:
    """Print what was looked at, the verdict, the per-layer table, advice, caveats and where the report is."""
    console.print(Text("looked at: ", style="bold").append(diag.looked_at))
    for warning in diag.warnings:
        console.print(Text("warning: ", style="bold yellow").append(warning))
    head = Text("verdict: ")
    head.append(diag.verdict.upper(), style=VERDICT_STYLE.get(diag.verdict, "bold"))
    head.append(f"  {diag.verdict_detail}")
    if diag.confidence == "low":
        head.append("  (low confidence, see caveats)", style="yellow")
    console.print(head)
    gated = bool(diag.layers[0].gates.gates)
    cells: dict[str, list[Text]] = {}

    def put(header: str, value, style: str = "") -> None:
        cells.setdefault(header, []).append(Text(str(value), style=style))

    for ld in diag.layers:
        hz = ld.flow.horizon
        put("layer", ld.name)
        put("verdict", ld.verdict, VERDICT_STYLE.get(ld.verdict, ""))
        put("spectral radius", fmt_num(ld.spectrum.spectral_radius))
        put("sigma_max", fmt_num(ld.spectrum.sigma_max))
        put("horizon / T", f"{hz.steps}{'+' if hz.censored else ''} / {diag.seq_len}")
        put("decay log10/step", fmt_num(ld.flow.fit.rate, "+.4f"))
        put("top Lyapunov", fmt_num(ld.lyapunov.top, "+.4f"))
        if gated:
            sat = {k: s.left_saturated + s.right_saturated for k, s in ld.gates.gates.items() if s.kind == "sigmoid"}
            put("gate saturation", ", ".join(f"{k} {100 * v:.0f}%" for k, v in sat.items()))
            put("memory (steps)", fmt_num(ld.gates.memory_timescale))
    columns = [Column(h, tuple(c), justify="left" if h == "verdict" else "right") for h, c in cells.items()]
    title = Text(f"{diag.architecture}, T = {diag.seq_len}, B = {diag.batch_size}")
    print_columns(console, title, columns, SUMMARY_DROP_ORDER)
    for title_word, items, style in (("advice", diag.advice, "bold"), ("caveats", diag.caveats, "yellow"),
                                     ("notes", diag.notes, "dim")):
        if items:
            console.print(Text(f"{title_word}:", style=style))
            for item in items:
                console.print(Text(f"  - {item}"))
    if report_path:
        console.print(Text("report: ", style="bold").append(report_path))


def print_table(console: Console, title: str, columns, rows, drop_order=TABLE_DROP_ORDER) -> None:
    """A table of strings fitted to the console (every cell printed as text, never as markup): numbers and labels
    whole, free text (:data:`WRAP_COLUMNS`) wrapped, columns left out in ``drop_order`` when it is still too wide."""
    rows = [[Text(str(v)) for v in row] for row in rows]
    cols = [Column(str(c), tuple(row[j] for row in rows), wrap=str(c) in WRAP_COLUMNS) for j, c in enumerate(columns)]
    print_columns(console, Text(title), cols, drop_order)
