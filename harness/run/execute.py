"""A whole run: create or resume the run folder (locked while this process works in it),
decide which units of work run (harness.run.scheduler), hand them to a launcher
(harness.run.launch: local processes, GPU lanes, Ray) with a live view, derive comparisons,
write results.json and the report, print the summary.

Exit status: 0 when every cell ran (skipped cells included: they say why) or a finished run
had nothing left to do, 1 when a cell failed, the plan's accuracy gate tripped, a cell failed a
budget of a plan whose `budgets.gate` is true, a planned cell has no record, or the disk filled up; 2 for bad input (a plan whose cells share an id, a folder
another process works in); 130 when interrupted (finished cells are kept and
`bench run --resume RUN_FOLDER` picks up from there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness import __version__
from harness.errors import UserError
from harness.files import is_disk_full
from harness.plan.cells import Cell
from harness.plan.load import LoadedPlan, parse_plan
from harness.results import (
    CellRecord,
    DerivedEntry,
    ResultsError,
    ResultsFile,
    effective_status,
    group_by_cell,
    primary_record,
    read_cell_files,
    read_run_meta,
    worst_status,
)
from harness.run.launch import Launcher, LocalLauncher, WorkUnit
from harness.run.scheduler import (
    Reconciled,
    apply,
    check_unique_ids,
    describe,
    missing,
    plan_units,
    reconcile,
    run_units,
)
from harness.run.store import RunStore, utc_now


def start_run(loaded: LoadedPlan, output: Path | None = None) -> RunStore:
    """A new run folder for `loaded`, locked by the returned store. Cells that would share an
    id are refused before the folder exists."""
    check_unique_ids(plan_units(loaded.cells))
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


def reopen_run(run_dir: Path, *, check_paths: bool = True) -> tuple[RunStore, LoadedPlan]:
    """The run folder and its plan as stored; `check_paths=False` when the files the plan names
    live where the cells run (a Ray cluster's shared volume), not here."""
    store = RunStore.open(run_dir)
    meta = store.meta()
    loaded = parse_plan(store.plan_text(), str(run_dir / "plan.yaml"), Path(meta.get("plan_dir", run_dir)),
                        check_paths=check_paths)
    return store, loaded


def choose_launcher(
    loaded: LoadedPlan, gpus: list[int] | None = None, ray_address: str | None = None
) -> tuple[Launcher, list[WorkUnit]]:
    """The launcher the flags ask for, and the plan's units as that launcher runs them."""
    if ray_address:
        from harness.run.ray_backend import RayLauncher, fleet_units, plan_ray_options

        options = plan_ray_options(loaded.plan)
        types = options.pop("accelerator_types")
        return RayLauncher(ray_address, **options), fleet_units(loaded.cells, types)
    if gpus:
        from harness.run.parallel import GpuLanesLauncher

        return GpuLanesLauncher(gpus), plan_units(loaded.cells)
    return LocalLauncher(), plan_units(loaded.cells)


def execute(
    store: RunStore,
    loaded: LoadedPlan,
    *,
    console: Any = None,
    gpus: list[int] | None = None,
    ray_address: str | None = None,
    launcher: Launcher | None = None,
) -> int:
    """Run what the folder does not hold yet; see the module's exit statuses."""
    from rich.markup import escape

    from harness.run.progress import make_console, make_view

    console = console or make_console()
    folder = escape(str(store.run_dir))  # a path may hold "[...]", which rich would read as markup
    chosen, units = choose_launcher(loaded, gpus, ray_address)
    launcher = launcher or chosen
    check_unique_ids(units)
    state = _claim(store, units)
    if state is None:
        console.print(f"nothing to do: {folder} is finished ({len(units)} cells)", soft_wrap=True)
        return 0
    if state.finished or state.retry or state.bad:
        console.print(f"[bold]resuming[/] {folder}: {describe(state)}", soft_wrap=True)  # never break a path
    else:
        console.print(f"[bold]run[/] {folder} ({len(units)} cells)", soft_wrap=True)
    apply(state, store, lambda text: console.print(f"[yellow]{escape(text)}[/]", soft_wrap=True))
    interrupted, conflicts = False, []
    try:
        with make_view(console, len(units), len(state.finished)) as view:
            outcome = run_units(launcher, state.todo, store, on_start=view.started, on_phase=view.phase,
                                on_done=lambda unit, record, written: view.done(unit, record))
        conflicts = outcome.conflicts
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted[/]: finished cells are kept; resume with "
                      f"`bench run --resume {folder}`", soft_wrap=True)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        console.print(f"[red]no space left on the device[/] (writing {escape(str(exc.filename))}): the run "
                      f"stopped; finished cells are kept; free some space, then `bench run --resume {folder}`",
                      soft_wrap=True)
        store.release_lock()
        return 1
    results = finalize(store, loaded)
    print_summary(results, console, store.run_dir)
    code = 130 if interrupted else exit_status(results, loaded)
    if not interrupted and budget_gate_tripped(results, loaded):
        console.print("[red]budgets.gate[/]: a cell failed a budget of the plan, so the run exits 1", soft_wrap=True)
    if _report_lost(store, units, conflicts, console, interrupted) and code == 0:
        code = 1
    store.release_lock()
    return code


def _claim(store: RunStore, units: list[WorkUnit]) -> Reconciled | None:
    """Lock the folder (RunBusy, exit 2, when another process works in it) and reconcile it
    with the planned units; None, with nothing touched, when a finished run has nothing to do."""
    if store.lock is None:
        store.acquire_lock(create=False)  # a folder without a lock file is not given one yet
    if reconcile(units, store).nothing_to_do and store.is_finished():
        store.release_lock()
        return None
    store.acquire_lock()
    store.announce()
    return reconcile(units, store)  # again, now that no other process can change the folder


def _report_lost(store: RunStore, units: list[WorkUnit], conflicts: list[Any], console: Any, interrupted: bool) -> bool:
    """Say which planned cells have no record, and which records were kept aside; True if any."""
    from rich.markup import escape

    for written in conflicts:
        console.print(f"[red]a second record for one cell id[/] was kept aside as "
                      f"{escape(str(written.path.relative_to(store.run_dir)))}", soft_wrap=True)
    lost = [] if interrupted else missing(units, store)
    if not interrupted:  # planned when the run began (run.json) but not by the plan as expanded now
        from harness.run.placement import base_cell_id

        records = store.scan_cells().records.values()
        known = {base_cell_id(str(r["cell_id"])) for r in records} | {base_cell_id(u.cell_id) for u in units}
        lost += [i for i in store.meta().get("cell_ids") or [] if base_cell_id(i) not in known]
    if lost:
        console.print(f"[red]{len(lost)} planned cell(s) have no record[/]: {escape(', '.join(lost))}", soft_wrap=True)
    return bool(conflicts or lost)


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
    groups = group_by_cell(records)
    # A cell's accuracy pass, raw outputs and settings come from its first process.
    primaries = [primary_record(group) for group in groups.values()]
    try:
        from harness.accuracy.derive import derive_accuracy

        derived = derive_accuracy(primaries, store.run_dir)
    except Exception as exc:  # derived data must never lose measured data
        derived_error = f"deriving accuracy comparisons failed: {exc!r}"
    _draw_galleries(primaries, derived, store.run_dir, loaded)
    for cell_id, group in groups.items():
        derived[cell_id] = _cell_entry(group, derived.get(cell_id) or DerivedEntry())
    try:
        derived = _judge_budgets(records, derived, meta)
    except Exception as exc:  # derived data must never lose measured data
        derived_error = "; ".join(e for e in (derived_error, f"judging budgets failed: {exc!r}") if e)
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
        store.write_replace("report-error.txt", f"report rendering failed: {exc!r}\n")
    return results


def _judge_budgets(records: list[CellRecord], derived: dict[str, DerivedEntry], meta: Any) -> dict[str, DerivedEntry]:
    """Each cell with budgets judged on its figures over processes, as the report shows them
    (harness.report.budgets): the verdicts go into `derived[cell_id].budgets`."""
    from harness.report.budgets import judge
    from harness.report.rundata import cell_views

    views = cell_views(ResultsFile(run=meta, cells=records, derived=derived))
    out = dict(derived)
    for view in views:
        if view.identity.budgets:
            out[view.cell_id] = (out.get(view.cell_id) or DerivedEntry()).model_copy(update={"budgets": judge(view)})
    return out


def _cell_entry(group: list[CellRecord], entry: DerivedEntry) -> DerivedEntry:
    """A cell's derived entry completed with its processes: the latency over them, memory and
    energy over them, and the effective status (the worst of every process, a tripped gate,
    processes that disagree)."""
    from harness.measure.repeats import across_records
    from harness.measure.resources import resources_over_processes

    across = None
    try:
        across = across_records(group)
    except ValueError as exc:  # samples a statistic cannot take: the records keep them as they are
        entry = entry.model_copy(update={"reason": f"no latency over processes: {exc}"})
    marks: list[str] = [effective_status(record, entry) for record in group]
    if across is not None and across.unstable_reasons:
        marks.append("unstable")
    return entry.model_copy(update={"status": worst_status(marks), "across_processes": across,
                                    "resources": resources_over_processes(group)})


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
    if budget_gate_tripped(results, loaded):
        return 1
    return 0


def budget_gate_tripped(results: ResultsFile, loaded: LoadedPlan) -> bool:
    """The plan asks for `budgets: {gate: true}` and a cell failed one of its budgets (a budget
    that was not measured does not trip it)."""
    budgets = loaded.plan.budgets
    if budgets is None or not budgets.gate:
        return False
    return any(v.verdict == "fail" for entry in results.derived.values() for v in entry.budgets or [])


def print_summary(results: ResultsFile, console: Any, run_dir: Path | None = None) -> None:
    """The terminal summary of a finished run (harness.report.terminal)."""
    from harness.report.terminal import print_summary as show

    show(results, console, run_dir)
