"""Launchers: "run these units of work, each in a worker of its own, and hand back each one's
record". Where and how a unit runs is the launcher's business (this process, a child process,
one of several GPU lanes, a Ray cluster); which units run, in what order, and what happens to
their records (resume, retries, repeats) is decided above, in harness.run.scheduler.

A unit of work is one run of one cell in one fresh worker process. Today every cell is one
unit; a cell measured in N fresh processes is N units of the same cell with `repeat` 0..N-1,
which a launcher runs like any other (the unit's `key` keeps their scratch files apart).

Every launcher honours the same contract (`Launcher.run`):
  - it starts units in the order given, except that a unit its placement rules cannot start yet
    (GPU lanes: a CPU unit while GPUs measure) waits while later units that can start do;
  - it calls `events.started(unit)`, `events.phase(unit, name)` and exactly once
    `events.done(unit, record)` for every unit, all in the calling thread; `done` is where the
    record is written, so nothing in a launcher writes records;
  - a unit's own failure (raised, crashed, hung, lost) is a `failed` record, never an exception;
  - on an exception from an event callback or KeyboardInterrupt it stops the units still
    running (they get no record, so a resume runs them again) and re-raises; units that ended
    before are handed to `done` first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from harness.run.store import RunStore
from harness.run.unit import WorkUnit

Record = dict[str, Any]


@dataclass
class Events:
    """What a launcher reports, always from the thread that called `run`."""

    done: Callable[[WorkUnit, Record], None]
    started: Callable[[WorkUnit], None] = lambda unit: None
    phase: Callable[[WorkUnit, str], None] = lambda unit, name: None


class Launcher(Protocol):
    name: str  # "local", "local-gpus", "ray", "in-process": record["placement"]["backend"]

    def run(self, units: Sequence[WorkUnit], store: RunStore, events: Events) -> None:
        """Run every unit (see the module's contract); return when each has been `done`."""
        ...


class LocalLauncher:
    """One unit at a time, each in a fresh `python -m harness.run.worker` child process."""

    name = "local"

    def run(self, units: Sequence[WorkUnit], store: RunStore, events: Events) -> None:
        from harness.run.process import run_unit_process

        for unit in units:
            events.started(unit)
            record = run_unit_process(unit, store, on_phase=_phases_of(unit, events))
            events.done(unit, record)


def _phases_of(unit: WorkUnit, events: Events) -> Callable[[str], None]:
    return lambda name: events.phase(unit, name)


UnitRunner = Callable[[WorkUnit, RunStore, Callable[[str], None]], Record]


class InProcessLauncher:
    """One unit at a time in this very process (tests): `runner(unit, store, on_phase)` makes
    the record; by default the worker's own steps, with the cell's log in the run folder."""

    name = "in-process"

    def __init__(self, runner: UnitRunner | None = None):
        self.runner = runner or _run_in_this_process

    def run(self, units: Sequence[WorkUnit], store: RunStore, events: Events) -> None:
        for unit in units:
            events.started(unit)
            record = self.runner(unit, store, _phases_of(unit, events))
            events.done(unit, record)


def _run_in_this_process(unit: WorkUnit, store: RunStore, on_phase: Callable[[str], None]) -> Record:
    import io

    from harness.run import worker

    log = io.StringIO()
    record = worker.run_unit(unit, store.run_dir, log, on_phase)
    with store.open_append(f"logs/{unit.cell_id}.log") as handle:
        handle.write(log.getvalue().encode("utf-8", "replace"))
    return record
