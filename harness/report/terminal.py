"""The summary a finished run prints to the terminal, read from its typed results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.report import fmt
from harness.report.rundata import CellView, cell_views
from harness.results import ResultsFile

STATUS_WIDTH = len("regression [10]")
SUMMARY_COLUMNS = ("cell", "prec", "b", "res", "scope", "n", "status", "p50 ms", "p99 ms", "img/s", "AP")


def _figure(value: float, decimals: int) -> str:
    """A figure in at most about six characters: no decimals from 1000 on."""
    return f"{value:.0f}" if value >= 1000 else f"{value:.{decimals}f}"


def print_summary(results: ResultsFile, console: Any, run_dir: Path | None = None) -> None:
    """One row per cell under a line per model, in short columns that fit 100 columns; names
    and statuses wrap between words, never inside one; the reasons follow the table as
    numbered notes, so a long provider error never squeezes the numbers. `n` is the number of
    processes the cell was measured in; with several, p50 is the median of their medians."""
    from rich.markup import escape
    from rich.padding import Padding
    from rich.table import Table

    from harness.report.budgets import attach

    groups: dict[str, list[CellView]] = {}  # model name -> its cells, in results order
    for view in attach(cell_views(results)):
        groups.setdefault(view.model, []).append(view)
    table = Table(title="summary", box=None, pad_edge=False)
    for col in SUMMARY_COLUMNS:
        numeric = col in ("b", "res", "n", "p50 ms", "p99 ms", "img/s", "AP")
        # only the names and the status wrap (rich wraps between words); figures never do. A
        # status takes at most the width of "regression [10]" ("accuracy regression" on two
        # lines), so the names get the room.
        table.add_column(col, justify="right" if numeric else "left", no_wrap=col not in ("cell", "status"),
                         overflow="fold", max_width=STATUS_WIDTH if col == "status" else None)
    notes: list[str] = []
    unpredictable: dict[str, list[str]] = {}
    for model, views in groups.items():
        table.add_row(f"[bold]{escape(model)}[/]")
        for view in views:
            colour = {"ok": "green", "failed": "red"}.get(view.status, "yellow")
            shown = f"[{colour}]{view.status.replace('_', ' ')}[/]"
            if view.reason:
                notes.append(f"[{len(notes) + 1}] {view.cell_id}: {view.reason}")
                shown += escape(f" [{len(notes)}]")
            ap = "-"
            acc = view.record.accuracy
            if acc is not None and acc.bbox.AP is not None:
                ap = f"{acc.bbox.AP:.3f}"
                if acc.mapping is not None and acc.mapping.unpredictable_classes:
                    ap += "*"
                    unpredictable.setdefault(view.model, list(acc.mapping.unpredictable_classes))
            measured = view.median is not None
            table.add_row(
                Padding(escape(view.runtime + (f" nms-{view.identity.nms.replace('_', '-')}" if view.identity.nms else "")),
                        (0, 0, 0, 2)),
                view.precision,
                str(view.batch),
                str(view.resolution),
                "server" if view.is_server else "e2e" if view.scope == "end_to_end" else view.scope,
                str(view.repeats),
                shown,
                _figure(view.median, 2) if measured and view.median is not None else "-",
                _figure(view.p99, 2) if measured and view.p99 is not None else "-",
                fmt.rate(view.throughput) if view.throughput is not None else "-",
                ap,
            )
    console.print(table)
    for note in notes:
        console.print(escape(note))  # wrapped between words
    for model, classes in unpredictable.items():
        console.print(
            f"[yellow]* {escape(model)} cannot predict {len(classes)} annotated class(es)[/]: "
            f"{escape(', '.join(classes))}; they count as AP 0 in its mAP (check the model's class names).",
            soft_wrap=True,
        )
    _print_ship(groups, console)
    if any(r.random_weights for r in results.cells):
        console.print("[yellow]random weights[/] were used: latency is real, mAP is meaningless.")
    if run_dir is not None:
        report = run_dir / "report.html"
        console.print(escape(f"results: {run_dir}" + (f"\nreport:  {report}" if report.exists() else "")), soft_wrap=True)


def _print_ship(groups: dict[str, list[CellView]], console: Any) -> None:
    """One line per model and scope with budgets: the fastest configuration meeting them all."""
    from rich.markup import escape

    from harness.report.budgets import OUTCOME_WORDS, ship_table

    for group in ship_table([v for views in groups.values() for v in views]):
        if group.fastest is not None:
            best = group.fastest.view
            text = (f"[green]ships[/]: {escape(group.model)} · {group.scope}: fastest meeting every budget is "
                    f"{escape(best.config_label)} ({_figure(best.median, 2) if best.median is not None else '-'} ms); "
                    f"{len(group.shipping)} of {len(group.rows)} ship")
        else:
            counts: dict[str, int] = {}
            for row in group.rows:
                counts[row.outcome] = counts.get(row.outcome, 0) + 1
            failed = sorted({b.budget for row in group.rows for b in row.failed})
            undecided = sorted({b.budget for row in group.rows for b in row.inconclusive})
            text = (f"[red]no ship[/]: {escape(group.model)} · {group.scope}: no configuration meets every budget ("
                    + ", ".join(f"{n} {OUTCOME_WORDS[o]}" for o, n in counts.items())
                    + (f"; failed: {escape(', '.join(failed))}" if failed else "")
                    + (f"; inconclusive: {escape(', '.join(undecided))}" if undecided else "") + ")")
        console.print(text, soft_wrap=True)
