"""The summary a finished run prints to the terminal, read from its typed results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.report import fmt
from harness.results import CellRecord, ResultsFile, effective_status


def _status(results: ResultsFile, record: CellRecord) -> str:
    entry = results.derived.get(record.cell_id)
    return entry.status if entry is not None and entry.status else effective_status(record, entry)


def print_summary(results: ResultsFile, console: Any, run_dir: Path | None = None) -> None:
    """One row per cell, in short columns that fit a terminal; the reasons follow the table as
    numbered notes, so a long provider error never squeezes the numbers."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="summary", box=None, pad_edge=False)
    for col in ("model", "runtime", "prec", "b", "res", "scope", "status", "p50 ms", "p99 ms", "img/s", "AP"):
        # names may wrap; figures and statuses never do
        names = col in ("model", "runtime")
        numeric = col in ("b", "res", "p50 ms", "p99 ms", "img/s", "AP")
        table.add_column(col, justify="right" if numeric else "left", no_wrap=not names, overflow="fold")
    notes: list[str] = []
    unpredictable: dict[str, list[str]] = {}
    for record in results.cells:
        ident, lat, acc = record.identity, record.latency, record.accuracy
        status = _status(results, record)
        colour = {"ok": "green", "failed": "red"}.get(status, "yellow")
        shown = f"[{colour}]{status}[/]"
        if record.reason:
            notes.append(f"[{len(notes) + 1}] {record.cell_id}: {record.reason}")
            shown += f" [{len(notes)}]"
        ap = "-"
        if acc is not None and acc.bbox.AP is not None:
            ap = f"{acc.bbox.AP:.3f}"
            if acc.mapping is not None and acc.mapping.unpredictable_classes:
                ap += "*"
                unpredictable.setdefault(ident.model, list(acc.mapping.unpredictable_classes))
        table.add_row(
            escape(ident.model),
            escape(ident.runtime_key),
            ident.precision,
            str(ident.batch),
            str(ident.resolution),
            "e2e" if ident.scope == "end_to_end" else ident.scope,
            shown,
            f"{lat.stats.p50:.2f}" if lat else "-",
            f"{lat.stats.p99:.2f}" if lat else "-",
            fmt.rate(lat.throughput_ips) if lat else "-",
            ap,
        )
    console.print(table)
    for note in notes:
        console.print(escape(note), soft_wrap=True)
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
