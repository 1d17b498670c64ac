"""A whole run: create or resume the run folder, run the cells one by one with a live view,
derive comparisons, write results.json and the report, print the summary.

Exit status: 0 when every cell ran (skipped cells included: they say why), 1 when a cell
failed or the plan's accuracy gate tripped, 130 when interrupted (finished cells are kept and
`bench run --resume RUN_FOLDER` picks up from there).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from harness import __version__
from harness.errors import UserError
from harness.plan.cells import Cell
from harness.plan.load import LoadedPlan, parse_plan
from harness.results import (
    CellRecord,
    DerivedEntry,
    ResultsError,
    ResultsFile,
    effective_status,
    read_cell_files,
    read_run_meta,
)
from harness.run.scheduler import run_cell_process
from harness.run.store import RunStore, utc_now


def start_run(loaded: LoadedPlan, output: Path | None = None) -> RunStore:
    base = output or Path(loaded.plan.output)
    if not base.is_absolute() and loaded.path is not None and output is None:
        base = Path.cwd() / base
    plan_dir = loaded.path.resolve().parent if loaded.path else Path.cwd()
    return RunStore.create(
        base,
        loaded.plan.name,
        loaded.text,
        {
            "plan_sha256": loaded.sha256,
            "plan_file": str(loaded.path) if loaded.path else "<bundled quickstart>",
            "plan_dir": str(plan_dir),
            "cell_ids": [c.cell_id for c in loaded.cells],
        },
    )


def reopen_run(run_dir: Path) -> tuple[RunStore, LoadedPlan]:
    store = RunStore.open(run_dir)
    meta = store.meta()
    loaded = parse_plan(store.plan_text(), str(run_dir / "plan.yaml"), Path(meta.get("plan_dir", run_dir)))
    return store, loaded


def execute(
    store: RunStore,
    loaded: LoadedPlan,
    *,
    console: Any = None,
    gpus: list[int] | None = None,
    ray_address: str | None = None,
) -> int:
    from rich.console import Console
    from rich.markup import escape

    console = console or Console(stderr=True)
    folder = escape(str(store.run_dir))  # a path may hold "[...]", which rich would read as markup
    done = store.finished_cell_ids()
    cells = loaded.cells
    todo = [c for c in cells if c.cell_id not in done]
    if done:
        console.print(f"[bold]resuming[/] {folder}: {len(done)} cell(s) already finished, {len(todo)} to go",
                      soft_wrap=True)  # never break a path: it could not be copied
    else:
        console.print(f"[bold]run[/] {folder} ({len(cells)} cells)", soft_wrap=True)
    interrupted = False
    try:
        _run_cells(todo, store, console, total=len(cells), already=len(done), loaded=loaded,
                   gpus=gpus, ray_address=ray_address)
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted[/]: finished cells are kept; resume with "
                      f"`bench run --resume {folder}`", soft_wrap=True)
    results = finalize(store, loaded)
    print_summary(results, console, store.run_dir)
    if interrupted:
        return 130
    return exit_status(results, loaded)


def _run_cells(
    todo: list[Cell],
    store: RunStore,
    console: Any,
    *,
    total: int,
    already: int,
    loaded: LoadedPlan,
    gpus: list[int] | None = None,
    ray_address: str | None = None,
) -> None:
    from rich.live import Live
    from rich.table import Table

    state: dict[str, Any] = {"cell": "", "phase": "", "since": time.monotonic(), "done": already}
    statuses: list[tuple[str, str]] = []

    def render() -> Table:
        table = Table.grid(padding=(0, 1))
        left = total - state["done"]
        table.add_row(f"[bold]{state['done']}/{total}[/] cells done, {left} left")
        if state["cell"]:
            elapsed = time.monotonic() - state["since"]
            table.add_row(f"now: [cyan]{state['cell']}[/]  phase: [magenta]{state['phase']}[/]  {elapsed:5.1f} s")
        for cell_id, status in statuses[-5:]:
            colour = {"ok": "green", "failed": "red", "skipped": "yellow"}.get(status, "yellow")
            table.add_row(f"  [{colour}]{status:>9}[/] {cell_id}")
        return table

    running: dict[str, tuple[str, float]] = {}  # parallel backends: cell id -> (phase, since)

    def render_parallel() -> Table:
        table = render()
        for cell_id, (phase, since) in running.items():
            table.add_row(f"now: [cyan]{cell_id}[/]  phase: [magenta]{phase}[/]  {time.monotonic() - since:5.1f} s")
        return table

    if gpus or ray_address:
        with Live(render_parallel(), console=console, refresh_per_second=4, transient=False) as live:

            def on_cell_phase(cell_id: str, phase: str) -> None:
                running[cell_id] = (phase, running.get(cell_id, (phase, time.monotonic()))[1])
                live.update(render_parallel())

            def on_done(record: dict[str, Any]) -> None:  # already written to the run folder
                running.pop(record["cell_id"], None)
                state["done"] += 1
                statuses.append((record["cell_id"], record["status"]))
                live.update(render_parallel())

            if ray_address:
                from harness.run.ray_backend import plan_ray_options, run_cells_on_ray

                run_cells_on_ray(todo, store, ray_address, on_done=on_done, on_phase=on_cell_phase,
                                 **plan_ray_options(loaded.plan))
            else:
                from harness.run.parallel import run_cells_on_gpus

                run_cells_on_gpus(todo, store, gpus or [], on_done, on_cell_phase)
        return

    with Live(render(), console=console, refresh_per_second=4, transient=False) as live:
        for cell in todo:
            state.update(cell=cell.cell_id, phase="starting", since=time.monotonic())
            live.update(render())

            def on_phase(name: str) -> None:
                state["phase"] = name
                live.update(render())

            record = run_cell_process(cell, store, on_phase=on_phase)
            store.write_cell(record)
            state["done"] += 1
            statuses.append((cell.cell_id, record["status"]))
            state["cell"] = ""
            live.update(render())


def finalize(store: RunStore, loaded: LoadedPlan) -> ResultsFile:
    """results.json from the cell files alone (plus derived comparisons), then the report."""
    from harness.run.placement import base_cell_id

    try:
        records = read_cell_files(store.cells_dir)
        meta = read_run_meta(store.run_dir / "run.json")
    except ResultsError as exc:
        raise UserError(str(exc)) from None
    order = {c.cell_id: i for i, c in enumerate(loaded.cells)}
    records.sort(key=lambda r: (order.get(base_cell_id(r.cell_id), len(order)), r.cell_id))
    derived: dict[str, DerivedEntry] = {}
    derived_error = None
    try:
        from harness.accuracy.derive import derive_accuracy

        derived = derive_accuracy(records, store.run_dir)
    except Exception as exc:  # derived data must never lose measured data
        derived_error = f"deriving accuracy comparisons failed: {exc!r}"
    _draw_galleries(records, derived, store.run_dir, loaded)
    for record in records:
        entry = derived.get(record.cell_id) or DerivedEntry()
        derived[record.cell_id] = entry.model_copy(update={"status": effective_status(record, entry)})
    results = ResultsFile(
        run=meta.model_copy(update={"finished_at": utc_now(), "harness_version_finalized": __version__}),
        cells=records,
        derived=derived,
        derived_error=derived_error,
    )
    store.write_results(results)
    store.mark_finished()
    try:
        from harness.report.render import render_run

        render_run(store.run_dir)
    except Exception as exc:  # a report problem never loses results
        (store.run_dir / "report-error.txt").write_text(f"report rendering failed: {exc!r}\n")
    return results


def _draw_galleries(records: list[CellRecord], derived: dict[str, DerivedEntry], run_dir: Path, loaded: LoadedPlan) -> None:
    """The disagreement gallery: for each compared cell, the images where it and its reference
    disagree most, drawn from the stored detection files."""
    n = loaded.plan.accuracy.gallery_images
    if not n or not loaded.plan.dataset:
        return
    from harness.accuracy.datasets import dataset_for_cell
    from harness.accuracy.gallery import gallery_for_cell

    by_id = {r.cell_id: r for r in records}
    dataset: Any = None  # one plan, one dataset: read its annotations once
    for record in records:
        entry = derived.get(record.cell_id)
        ref = by_id.get(entry.reference or "") if entry is not None else None
        if entry is None or ref is None or record.accuracy is None or ref.accuracy is None:
            continue
        try:
            if dataset is None:
                dataset = dataset_for_cell(Cell.model_validate(record.cell))
            derived[record.cell_id] = entry.model_copy(update={"gallery": gallery_for_cell(record, ref, run_dir, dataset, n)})
        except Exception as exc:  # a drawing problem never loses results
            derived[record.cell_id] = entry.model_copy(update={"gallery_error": repr(exc)})


def effective_status_of(results: ResultsFile, record: CellRecord) -> str:
    entry = results.derived.get(record.cell_id)
    return entry.status if entry is not None and entry.status else effective_status(record, entry)


def exit_status(results: ResultsFile, loaded: LoadedPlan) -> int:
    statuses = [effective_status_of(results, r) for r in results.cells]
    if "failed" in statuses:
        return 1
    if loaded.plan.accuracy.gate and "accuracy_regression" in statuses:
        return 1
    return 0


def print_summary(results: ResultsFile, console: Any, run_dir: Path | None = None) -> None:
    """The terminal summary of a finished run (harness.report.terminal)."""
    from harness.report.terminal import print_summary as show

    show(results, console, run_dir)
