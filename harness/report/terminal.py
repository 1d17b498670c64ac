"""The summary a finished run prints to the terminal, read from its typed results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.report import fmt
from harness.results import CellRecord, ResultsFile, effective_status


def _status(results: ResultsFile, record: CellRecord) -> str:
    entry = results.derived.get(record.cell_id)
    return entry.status if entry is not None and entry.status else effective_status(record, entry)


STATUS_WIDTH = len("regression [10]")
SUMMARY_COLUMNS = ("cell", "prec", "b", "res", "scope", "status", "p50 ms", "p99 ms", "img/s", "AP")


def _figure(value: float, decimals: int) -> str:
    """A figure in at most about six characters: no decimals from 1000 on."""
    return f"{value:.0f}" if value >= 1000 else f"{value:.{decimals}f}"


def print_summary(results: ResultsFile, console: Any, run_dir: Path | None = None) -> None:
    """One row per cell under a line per model, in short columns that fit 100 columns; names
    and statuses wrap between words, never inside one; the reasons follow the table as
    numbered notes, so a long provider error never squeezes the numbers."""
    from rich.markup import escape
    from rich.padding import Padding
    from rich.table import Table

    groups: dict[str, list[CellRecord]] = {}  # model name -> its records, in results order
    for record in results.cells:
        groups.setdefault(record.identity.model, []).append(record)
    table = Table(title="summary", box=None, pad_edge=False)
    for col in SUMMARY_COLUMNS:
        numeric = col in ("b", "res", "p50 ms", "p99 ms", "img/s", "AP")
        # only the names and the status wrap (rich wraps between words); figures never do. A
        # status takes at most the width of "regression [10]" ("accuracy regression" on two
        # lines), so the names get the room.
        table.add_column(col, justify="right" if numeric else "left", no_wrap=col not in ("cell", "status"),
                         overflow="fold", max_width=STATUS_WIDTH if col == "status" else None)
    notes: list[str] = []
    unpredictable: dict[str, list[str]] = {}
    for model, records in groups.items():
        table.add_row(f"[bold]{escape(model)}[/]")
        for record in records:
            ident, lat, acc = record.identity, record.latency, record.accuracy
            status = _status(results, record)
            colour = {"ok": "green", "failed": "red"}.get(status, "yellow")
            shown = f"[{colour}]{status.replace('_', ' ')}[/]"
            if record.reason:
                notes.append(f"[{len(notes) + 1}] {record.cell_id}: {record.reason}")
                shown += escape(f" [{len(notes)}]")
            ap = "-"
            if acc is not None and acc.bbox.AP is not None:
                ap = f"{acc.bbox.AP:.3f}"
                if acc.mapping is not None and acc.mapping.unpredictable_classes:
                    ap += "*"
                    unpredictable.setdefault(ident.model, list(acc.mapping.unpredictable_classes))
            table.add_row(
                Padding(escape(ident.runtime_key + (f" nms-{ident.nms.replace('_', '-')}" if ident.nms else "")),
                        (0, 0, 0, 2)),
                ident.precision,
                str(ident.batch),
                str(ident.resolution),
                "e2e" if ident.scope == "end_to_end" else ident.scope,
                shown,
                _figure(lat.stats.p50, 2) if lat else "-",
                _figure(lat.stats.p99, 2) if lat else "-",
                fmt.rate(lat.throughput_ips) if lat else "-",
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
    if any(r.random_weights for r in results.cells):
        console.print("[yellow]random weights[/] were used: latency is real, mAP is meaningless.")
    if run_dir is not None:
        report = run_dir / "report.html"
        console.print(escape(f"results: {run_dir}" + (f"\nreport:  {report}" if report.exists() else "")), soft_wrap=True)
