"""The harness for people who script it: run a plan, load a run, read its results.

    import harness

    loaded = harness.load_plan("plans/quickstart.yaml")      # validated and expanded
    for cell in loaded.cells:
        print(cell.cell_id, cell.protocol.repeats)
    run = harness.run_plan(loaded, output="reports")          # measures; returns the run folder
    results = harness.read_run(run.folder)                    # the typed results (harness.results)
    for view in harness.cell_views(results):                  # one per cell, over its processes
        print(view.cell_id, view.median, view.rerun_ci)

Everything named in `harness.__all__` is the public surface (docs/api.md); the modules behind
it are internal and may change between versions. Nothing here is imported until it is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.plan.load import LoadedPlan
    from harness.results import ResultsFile


@dataclass(frozen=True)
class Run:
    """A finished (or interrupted) `run_plan`: its folder and `bench`'s exit status for it."""

    folder: Path
    exit_status: int  # 0 ok, 1 a cell failed or a gate tripped, 130 interrupted


def run_plan(
    plan: LoadedPlan | str | Path,
    *,
    output: str | Path | None = None,
    gpus: list[int] | None = None,
    ray_address: str | None = None,
    console: Any = None,
) -> Run:
    """Measure a plan (a loaded plan or a plan file) into a new run folder, exactly as
    `bench PLAN` does: every cell's processes in fresh workers, then results.json and the
    report. `console` is a rich Console for the progress view (default: stderr)."""
    from harness.plan.load import LoadedPlan, load_plan
    from harness.run.execute import execute, start_run

    loaded = plan if isinstance(plan, LoadedPlan) else load_plan(plan, check_paths=ray_address is None)
    store = start_run(loaded, Path(output) if output is not None else None)
    code = execute(store, loaded, console=console, gpus=gpus, ray_address=ray_address)
    return Run(store.run_dir, code)


def read_run(folder: str | Path) -> ResultsFile:
    """The typed results of a run folder (or a results.json), migrated to this schema; a run
    cut short is rebuilt from its cell files. Raises harness.results.ResultsError naming the
    file for anything it cannot read."""
    from harness.results import read_run as read

    return read(Path(folder)).results
