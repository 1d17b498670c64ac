"""Building cell records from a plan Cell: the run side of the results model (harness.results).

The record's typed identity is taken from the Cell here, once, so no reader ever has to parse
a cell id or guess a default; the Cell itself is kept verbatim in the record for running the
cell again.
"""

from __future__ import annotations

from typing import Any

from harness.plan.cells import Cell
from harness.results import (
    CalibrationSplitRef,
    CellIdentity,
    CellRecord,
    DatasetRef,
    DatasetSubset,
    Protocol,
    Status,
    SustainedProtocol,
    WeightsKind,
)
from harness.run.store import utc_now


def weights_kind(cell: Cell) -> WeightsKind:
    """What the harness knows about the cell's weights before loading them: random on purpose
    (the plan says so), whatever a model file holds (an ONNX file's), or a checkpoint."""
    from harness.models.registry import source_plugin

    source = source_plugin(cell.source)
    if source.random_weights(cell.model):
        return "random"
    return "from_file" if source.weights_in_file else "trained"


def identity_of(cell: Cell) -> CellIdentity:
    model, protocol, dataset = cell.model, cell.protocol, cell.dataset
    return CellIdentity(
        model=model.name,
        source=cell.source,
        variant=model.variant,
        weights=model.weights,
        weights_kind=weights_kind(cell),
        runtime=cell.runtime.name,
        runtime_label=cell.runtime.label,
        precision=cell.precision,
        batch=cell.batch,
        resolution=cell.resolution,
        scope=cell.scope,
        device=cell.device,
        is_reference=cell.is_reference,
        time_decode=cell.time_decode,
        protocol=Protocol(
            warmup_iterations=protocol.warmup_iterations,
            warmup_seconds=protocol.warmup_seconds,
            min_iterations=protocol.min_iterations,
            min_seconds=protocol.min_seconds,
            max_iterations=protocol.max_iterations,
            max_seconds=protocol.max_seconds,
            pause_ms=protocol.pause_ms,
            repeats=protocol.repeats or 1,
            sustained=None if protocol.sustained is None else SustainedProtocol(
                duration_s=protocol.sustained.duration_s, window_s=protocol.sustained.window_s
            ),
        ),
        dataset=None if dataset is None else DatasetRef(
            sample=dataset.sample,
            sample_images=dataset.sample_images,
            images=dataset.images,
            annotations=dataset.annotations,
            subset=DatasetSubset(mode=dataset.subset.mode, n=dataset.subset.n, seed=dataset.subset.seed),
            calibration=None if dataset.calibration is None else CalibrationSplitRef(
                images=dataset.calibration.images, seed=dataset.calibration.seed
            ),
        ),
        max_map_drop=cell.accuracy.max_map_drop,
        max_class_drop=cell.accuracy.max_class_drop,
        scenario="server" if cell.scenario == "server" else None,
        # Only a plan with an NMS axis names placements (its cell ids do too): other plans'
        # records stay as they were.
        nms=cell.nms if cell.nms_axis else None,
        agreement_min_score=cell.accuracy.agreement_min_score,
        budgets=cell.budgets.flat() if cell.budgets is not None else None,
    )


def cell_fields(cell: Cell) -> dict[str, Any]:
    """The fields every record of `cell` starts with: its id, typed identity and Cell snapshot."""
    return {"cell_id": cell.cell_id, "identity": identity_of(cell), "cell": cell.model_dump(mode="json")}


def new_record(cell: Cell, status: Status, started_at: str, **fields: Any) -> CellRecord:
    """A record of `cell` (finished now unless `finished_at` is given)."""
    fields.setdefault("finished_at", utc_now())
    return CellRecord(**cell_fields(cell), status=status, started_at=started_at, **fields)


def outcome_record(cell: Cell, status: Status, reason: str, started_at: str, **fields: Any) -> dict[str, Any]:
    """The record of a cell that ended without a measurement (skipped, or failed: raised,
    crashed, timed out, lost on a cluster), as a JSON-ready dict."""
    return new_record(cell, status, started_at, reason=reason, **fields).model_dump(mode="json")
