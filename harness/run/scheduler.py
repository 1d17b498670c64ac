"""Which units of work run, in what order, and what becomes of their records: decided here,
above every launcher (harness.run.launch).

- `plan_units`: the plan's cells as units, in plan order (a Ray run with GPU types expands its
  GPU cells per type before this, see harness.run.ray_backend.fleet_units).
- `reconcile`: what a run folder already holds for those units (resume). A unit whose record
  is readable is finished, unless it failed for an environmental reason (out of time, killed
  from outside, a full disk): then it runs again and its earlier record is kept aside. A cell
  file that cannot be read is moved aside and its unit runs again. Nothing is ever deleted.
- `run_units`: feed units to a launcher and write each record as it comes back. A record whose
  id already has one never replaces it (the store keeps it aside and the outcome says so).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import UserError
from harness.plan.cells import Cell
from harness.run.launch import Events, Launcher, Record, WorkUnit
from harness.run.store import BAD_FOLDER, RETRIED_FOLDER, CellWritten, RunStore

Say = Callable[[str], None]


def repeats_of(cell: Cell) -> int:
    return cell.protocol.repeats or 1


def plan_units(cells: Sequence[Cell]) -> list[WorkUnit]:
    """The plan's cells as units of work, each cell's processes interleaved (`with_repeats`)."""
    return with_repeats([WorkUnit(cell=cell) for cell in cells])


def with_repeats(units: Sequence[WorkUnit]) -> list[WorkUnit]:
    """Every unit's processes, interleaved as pyperf and MLPerf do: round r runs the r-th
    process of each cell that has one, in the plan's order rotated by r, so a drift of the host
    (its CPU speed, another tenant) hits every cell alike instead of one cell's processes. A cell
    of one process is its own unit (repeat None); the r-th of several is repeat r."""
    out: list[WorkUnit] = []
    rounds = max((repeats_of(u.cell) for u in units), default=0)
    for r in range(rounds):
        active = [u for u in units if repeats_of(u.cell) > r]
        shift = r % len(active)
        for unit in active[shift:] + active[:shift]:
            out.append(unit if repeats_of(unit.cell) == 1 else unit.model_copy(update={"repeat": r}))
    return out


def check_unique_ids(units: Sequence[WorkUnit]) -> None:
    """Two planned units that would write one record file are refused before anything runs.
    Plan expansion refuses colliding cell ids already; this guards what comes after it (a
    fleet's per-GPU-type units, a run folder planned by an older harness)."""
    seen: dict[str, WorkUnit] = {}
    clashes: list[str] = []
    for unit in units:
        first = seen.setdefault(unit.key, unit)
        if first is not unit:
            clashes.append(
                f"  {unit.key}: model `{first.cell.model.name}` and model `{unit.cell.model.name}`"
            )
    if clashes:
        raise UserError(
            "two planned cells would share one id, so one result would be lost; rename a model:\n"
            + "\n".join(clashes)
        )


def is_environmental_failure(record: Record) -> bool:
    return record.get("status") == "failed" and record.get("failure_kind") == "environmental"


@dataclass
class Reconciled:
    """What a run folder holds for the planned units, read without changing anything."""

    planned: list[WorkUnit]
    finished: list[str] = field(default_factory=list)  # keys with a record that stands
    todo: list[WorkUnit] = field(default_factory=list)  # in plan order
    retry: list[tuple[WorkUnit, Path, str]] = field(default_factory=list)  # (unit, record file, its reason)
    bad: list[tuple[Path, str]] = field(default_factory=list)  # unreadable cell files, why

    @property
    def nothing_to_do(self) -> bool:
        return not self.todo and not self.bad


def reconcile(units: Sequence[WorkUnit], store: RunStore) -> Reconciled:
    scan = store.scan_cells()
    state = Reconciled(planned=list(units), bad=list(scan.bad))
    for unit in units:
        record = scan.records.get(unit.key)
        if record is None:
            state.todo.append(unit)
        elif is_environmental_failure(record):
            state.retry.append((unit, store.cell_path(unit.key), str(record.get("reason"))))
            state.todo.append(unit)
        else:
            state.finished.append(unit.key)
    return state


def apply(state: Reconciled, store: RunStore, say: Say) -> None:
    """Move aside what `reconcile` found in the way (never deleting it), saying so."""
    for path, why in state.bad:
        moved = store.move_aside(path, BAD_FOLDER, why, "unreadable_cell_file_moved_aside")
        say(f"{path.relative_to(store.run_dir)} cannot be read ({why}): moved to "
            f"{moved.relative_to(store.run_dir)}; its cell runs again")
    for unit, path, reason in state.retry:
        moved = store.move_aside(path, RETRIED_FOLDER, reason, "environmental_failure_retried")
        say(f"{unit.key} failed for a reason outside the cell ({reason}); measuring it again "
            f"(the earlier record is kept as {moved.relative_to(store.run_dir)})")


@dataclass
class Outcome:
    """What came of the units a `run_units` call ran."""

    records: dict[str, Record] = field(default_factory=dict)  # by unit key
    conflicts: list[CellWritten] = field(default_factory=list)  # records kept aside (an id already had one)


def run_units(
    launcher: Launcher,
    units: Sequence[WorkUnit],
    store: RunStore,
    *,
    on_start: Callable[[WorkUnit], None] | None = None,
    on_phase: Callable[[WorkUnit, str], None] | None = None,
    on_done: Callable[[WorkUnit, Record, CellWritten], None] | None = None,
) -> Outcome:
    """Run `units` through `launcher`; each record is written as it comes back, then passed to
    `on_done`. KeyboardInterrupt propagates after the launcher stopped its running units."""
    outcome = Outcome()

    def done(unit: WorkUnit, record: Record) -> None:
        written = store.write_cell(record)
        outcome.records[unit.key] = record
        if written.conflict:
            outcome.conflicts.append(written)
        if on_done is not None:
            on_done(unit, record, written)

    events = Events(done=done)
    if on_start is not None:
        events.started = on_start
    if on_phase is not None:
        events.phase = on_phase
    launcher.run(list(units), store, events)
    return outcome


def resume_and_run(
    launcher: Launcher,
    units: Sequence[WorkUnit],
    store: RunStore,
    on_done: Callable[[Record], None],
    on_phase: Callable[[str, str], None] | None = None,
    say: Say | None = None,
) -> Outcome:
    """The units the folder does not hold yet, through `launcher` (the backends' own entry
    points, `run_cells_on_gpus` and `run_cells_on_ray`, are this)."""
    state = reconcile(units, store)
    apply(state, store, say or (lambda text: None))
    return run_units(
        launcher, state.todo, store,
        on_start=(lambda u: on_phase(u.key, "starting")) if on_phase else None,
        on_phase=(lambda u, name: on_phase(u.key, name)) if on_phase else None,
        on_done=lambda unit, record, written: on_done(record),
    )


def describe(state: Reconciled) -> str:
    """One line: how far the planned units are."""
    total = len(state.planned)
    retry = f", {len(state.retry)} of them again after an environmental failure" if state.retry else ""
    return f"{len(state.finished)} of {total} planned cell(s) finished, {len(state.todo)} to go{retry}"


def missing(units: Sequence[WorkUnit], store: RunStore) -> list[str]:
    """Planned units with no readable record in the folder."""
    have = store.scan_cells().records
    return [u.key for u in units if u.key not in have]

