"""The rich terminal summary. User strings are printed as text, never parsed as markup."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import fmt_num

VERDICT_STYLE = {"vanishing": "bold blue", "exploding": "bold red", "healthy": "bold green"}


def summary(console: Console, diag, report_path: str | None = None) -> None:
    """Print the verdict, the per-layer table, advice, caveats and where the report is."""
    head = Text("verdict: ")
    head.append(diag.verdict.upper(), style=VERDICT_STYLE.get(diag.verdict, "bold"))
    head.append(f"  {diag.verdict_detail}")
    if diag.confidence == "low":
        head.append("  (low confidence, see caveats)", style="yellow")
    console.print(head)
    gated = bool(diag.layers[0].gates.gates)
    table = Table(title=Text(f"{diag.cell}, hidden {diag.hidden_size}, {diag.num_layers} layer(s), "
                             f"T = {diag.seq_len}, B = {diag.batch_size}"), show_lines=False)
    for col in ("layer", "verdict", "spectral radius", "sigma_max", "horizon / T", "decay log10/step",
                "top Lyapunov"):
        table.add_column(col, justify="right" if col not in ("verdict",) else "left")
    if gated:
        table.add_column("gate saturation", justify="right")
        table.add_column("memory (steps)", justify="right")
    for ld in diag.layers:
        hz = ld.flow.horizon
        row = [
            str(ld.layer),
            Text(ld.verdict, style=VERDICT_STYLE.get(ld.verdict, "")),
            fmt_num(ld.spectrum.spectral_radius),
            fmt_num(ld.spectrum.sigma_max),
            f"{hz.steps}{'+' if hz.censored else ''} / {diag.seq_len}",
            fmt_num(ld.flow.fit.rate, "+.4f"),
            fmt_num(ld.lyapunov.top, "+.4f"),
        ]
        if gated:
            sat = {k: s.left_saturated + s.right_saturated for k, s in ld.gates.gates.items() if s.kind == "sigmoid"}
            row.append(", ".join(f"{k} {100 * v:.0f}%" for k, v in sat.items()))
            row.append(fmt_num(ld.gates.memory_timescale))
        table.add_row(*row)
    console.print(table)
    for title, items, style in (("advice", diag.advice, "bold"), ("caveats", diag.caveats, "yellow"),
                                ("notes", diag.notes, "dim")):
        if items:
            console.print(Text(f"{title}:", style=style))
            for item in items:
                console.print(Text(f"  - {item}"))
    if report_path:
        console.print(Text("report: ", style="bold").append(report_path))


def print_table(console: Console, title: str, columns, rows) -> None:
    """A plain rich table of strings (every cell printed as text, never as markup)."""
    table = Table(title=Text(title), expand=False)
    for c in columns:
        table.add_column(c)
    for row in rows:
        table.add_row(*[Text(str(v)) for v in row])
    console.print(table)
