"""The unit of work a launcher runs: one run of one cell in one fresh worker process."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from harness.plan.cells import Cell
from harness.results import record_key

unit_key = record_key  # a unit's key is the name of the record it produces


class WorkUnit(BaseModel):
    """One run of one cell in one fresh worker: what a launcher runs and a record comes back for."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cell: Cell  # the cell as planned; its cell_id is the record's id
    repeat: int | None = None  # which of the cell's fresh-process repeats this is; None: its only run
    gpu_type: str | None = None  # the GPU model the unit must run on (a Ray accelerator type); None: any

    @property
    def cell_id(self) -> str:
        return self.cell.cell_id

    @property
    def key(self) -> str:
        """Unique among the units of a run: names the unit's record file, its scratch files and
        its live-view line."""
        return unit_key(self.cell.cell_id, self.repeat)

    def with_cell(self, **changes: Any) -> WorkUnit:
        """The unit with its cell changed the way a launcher runs it (a pinned device)."""
        return self.model_copy(update={"cell": self.cell.model_copy(update=changes)})
