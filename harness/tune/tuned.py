"""tuned.yaml: a plain plan (no `tune:`) that measures the winner, its neighbours and the
baseline they are compared with, with the original plan's full protocol, dataset and accuracy
settings, so `bench tuned.yaml` re-measures the result and its report can go with a release.

It lives in the run folder, so the plan's relative file paths (the model file, a checkpoint,
the dataset) are rewritten relative to the run folder: the plan runs from wherever it is read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from harness.plan.load import LoadedPlan
from harness.results import TuneResult
from harness.run.store import RunStore
from harness.tune.labels import candidate_text
from harness.tune.space import Candidate, Space, plan_with

TUNED_PLAN = "tuned.yaml"


def _moved(value: str | None, plan_dir: Path, run_dir: Path) -> str | None:
    """A path of the plan, relative to the run folder (absolute ones stay as they are)."""
    if value is None or Path(value).expanduser().is_absolute():
        return value
    target = plan_dir / value
    if not target.exists():
        return value  # not a path (a weights keyword: cache, random)
    return os.path.relpath(target.resolve(), run_dir.resolve())


def tuned_plan_text(loaded: LoadedPlan, space: Space, result: TuneResult, chosen: list[Candidate],
                    run_dir: Path) -> str | None:
    keep = {result.winner, *result.neighbours, result.baseline} - {None}
    by_cell = {(c.model, c.name, c.precision, c.batch): c for c in chosen}
    picked = [by_cell[(t.model, t.name, t.precision, t.batch)] for t in result.candidates
              if t.cell_id in keep and (t.model, t.name, t.precision, t.batch) in by_cell]
    picked += [c for c in chosen if c.baseline and c not in picked]  # every model's reference
    if result.winner is None:
        return None
    plan = plan_with(loaded, picked, space, name=f"{loaded.plan.name}-tuned"[:80])
    plan_dir = loaded.plan_dir
    models = [m.model_copy(update={"path": _moved(m.path, plan_dir, run_dir),
                                   "weights": _moved(m.weights, plan_dir, run_dir)}) for m in plan.models]
    dataset = plan.dataset
    if dataset is not None and not dataset.sample:
        dataset = dataset.model_copy(update={"images": _moved(dataset.images, plan_dir, run_dir),
                                             "annotations": _moved(dataset.annotations, plan_dir, run_dir)})
    plan = plan.model_copy(update={"models": models, "dataset": dataset})
    data: dict[str, Any] = plan.model_dump(mode="json", exclude_defaults=True)
    winner = next(t for t in result.candidates if t.cell_id == result.winner)
    header = (f"# Written by `bench tune` for plan {loaded.plan.name}: the winner within {result.budget_map_drop:g} AP "
              f"points of the baseline,\n# {candidate_text(winner.name, winner.precision, winner.batch)}, its neighbours "
              f"({len(result.neighbours)}) and the baseline, with the plan's full protocol.\n"
              f"# Re-measure with: bench {TUNED_PLAN}\n")
    return header + yaml.safe_dump(data, sort_keys=False)


def write_tuned(loaded: LoadedPlan, space: Space, result: TuneResult, chosen: list[Candidate],
                run_dir: Path) -> str | None:
    text = tuned_plan_text(loaded, space, result, chosen, run_dir)
    if text is None:
        return None
    RunStore(run_dir).write_replace(TUNED_PLAN, text)
    return TUNED_PLAN
