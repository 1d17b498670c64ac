"""The report's NMS placement table: per model with NMS, every runtime and placement, the
stage times of its end-to-end cells, the candidates NMS had to sort out and how well its
detections agree with the reference placement (the lesson's "NMS 2-20 ms, CPU if many
candidates" table, on the plan's own model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.report.rundata import CellView

PLACEMENT_ORDER = {"in_graph": 0, "host": 1, "device": 2}


@dataclass(frozen=True)
class NmsRow:
    model: str
    runtime: str
    precision: str
    batch: int
    resolution: int
    placement: str
    implementation: str
    candidates: list[int] | None
    kept: list[int] | None
    # Stage medians, ms (None: no such stage in this placement)
    infer: float | None
    candidates_ms: float | None
    nms_ms: float | None
    d2h: float | None
    end_to_end: float | None
    is_reference: bool
    match_rate: float | None  # detections matched with the reference placement's, 0..1
    matched: int | None
    compared: int | None  # detections on both sides
    max_score_diff: float | None
    status: str
    note: str | None


def _stage(view: CellView, name: str) -> float | None:
    latency = view.record.latency
    if latency is None or not latency.stages or name not in latency.stages:
        return None
    return latency.stages[name].stats.p50


def nms_rows(views: list[CellView]) -> list[NmsRow]:
    """One row per end-to-end cell whose record says where its NMS ran, in model, runtime,
    placement order. The agreement comes from the cell that ran the accuracy pass of the same
    configuration (this cell, or its model-scope sibling)."""
    by_id = {v.cell_id: v for v in views}
    rows = []
    for v in views:
        nms = v.record.nms
        if nms is None or v.scope != "end_to_end":
            continue
        source = by_id.get(v.accuracy_from or "", v)
        agreement: Any = source.derived.detection_agreement if source.derived else None
        rows.append(NmsRow(
            model=v.model, runtime=v.runtime, precision=v.precision, batch=v.batch, resolution=v.resolution,
            placement=nms.placement, implementation=nms.implementation,
            candidates=nms.candidates, kept=nms.kept,
            infer=_stage(v, "infer"), candidates_ms=_stage(v, "candidates"), nms_ms=_stage(v, "nms"),
            d2h=_stage(v, "d2h"), end_to_end=v.median, is_reference=v.is_reference,
            match_rate=getattr(agreement, "match_rate", None), matched=getattr(agreement, "matched", None),
            compared=(None if agreement is None or agreement.reference_detections is None
                      else agreement.reference_detections + (agreement.other_detections or 0)),
            max_score_diff=getattr(agreement, "max_abs_score_diff", None),
            status=v.status, note=nms.note,
        ))
    rows.sort(key=lambda r: (r.model, r.runtime, r.precision, r.batch, r.resolution,
                             PLACEMENT_ORDER.get(r.placement, 9)))
    return rows


def counts_text(values: list[int] | None) -> str:
    if not values:
        return "–"
    return "/".join(str(v) for v in values)
