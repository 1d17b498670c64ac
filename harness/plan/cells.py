"""A cell: one (model, runtime, precision, batch, resolution, scope) measurement.

A cell carries everything its worker process needs, so it serialises to JSON and back without
the plan. Runtimes and model sources receive cells; `harness.plan.expand` makes them from a
plan (it is the part of plan/ that consults the plug-in registries, kept apart so that a
runtime importing `Cell` imports nothing that imports runtimes).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from harness.plan.schema import (
    AccuracySpec,
    BudgetLimits,
    DatasetSpec,
    GpuConditions,
    HostControls,
    LatencyProtocol,
    ModelSpec,
    NmsPlacement,
    Precision,
    RuntimeSpec,
    Scope,
)
from harness.plan.server import Scenario, ServerSpec


class Cell(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    cell_id: str
    model: ModelSpec
    runtime: RuntimeSpec
    precision: Precision
    batch: int
    resolution: int
    scope: Scope
    # Where the model's NMS runs (None: the model has none, or runs its own built-in one).
    nms: NmsPlacement | None = None
    # True when the plan asked for NMS placements: the cell id then names the placement.
    nms_axis: bool = False
    # "auto", "cpu", "cuda:N": the device this cell asks for. "auto" resolves at run time to
    # cuda:0 when a GPU is present, else cpu.
    device: str
    protocol: LatencyProtocol
    dataset: DatasetSpec | None
    accuracy: AccuracySpec
    gpu: GpuConditions
    controls: HostControls = HostControls()
    timeout_s: float
    artifacts_dir: str
    plan_dir: str  # relative paths in the plan resolve against the plan file's folder
    time_decode: bool = False
    # Run the accuracy pass in this cell: only the first scope of a configuration does, the
    # other scope reuses it (the artifact and precision are the same).
    run_accuracy: bool = False
    # This cell is its model's reference for mAP deltas and output agreement.
    is_reference: bool = False
    # server: the cell is an HTTP endpoint under load (harness/serve), `server` says which.
    scenario: Scenario = "single_stream"
    server: ServerSpec | None = None
    # The limits this cell is judged against: the plan's `budgets` with its model's over them
    # (None: no budget applies).
    budgets: BudgetLimits | None = None

    @property
    def source(self) -> str:
        """The model source's plug-in name (expansion fills in the default one)."""
        if not self.model.source:
            raise ValueError(f"cell {self.cell_id} has no model source; cells come from harness.plan.expand")
        return self.model.source

    @property
    def config_key(self) -> str:
        """Identity without the scope: cells that share an artifact and precision."""
        return self.cell_id.rsplit("__", 1)[0]

    def resolve_path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else Path(self.plan_dir) / path


class PlanProblem(Exception):
    """A plan that validates field by field but asks for cells that cannot exist."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("; ".join(f"{where}: {what}" for where, what in problems))


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in text)


def make_cell_id(
    model: str, runtime: str, precision: str, batch: int, res: int, scope: str, nms: str | None = None
) -> str:
    """`model__runtime__precision__bN__rN[__nms-PLACEMENT]__scope`: the NMS part only for cells
    of a plan that asks for NMS placements (the scope stays last: `config_key` cuts it off)."""
    parts = [_slug(model), _slug(runtime), precision, f"b{batch}", f"r{res}"]
    if nms is not None:
        parts.append(f"nms-{nms.replace('_', '-')}")
    return "__".join([*parts, scope])
