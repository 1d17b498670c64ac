"""Accuracy of each cell against its model's reference, derived from the run folder alone.

Inputs are the cell records (harness.results.CellRecord, read from cells/<cell_id>.json) and
the files they point to: detections/<cell_id>.json (COCO results of the accuracy pass) and
outputs/<cell_id>.npz (raw outputs on the fixed agreement images). Nothing is measured here,
so deriving twice gives the same result, and a report can be rebuilt from a copied run folder.

All deltas are in AP points (pycocotools' 0..1 value x 100), other minus reference: -1.5
means the cell lost 1.5 AP. `accuracy.max_map_drop` is in the same points.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.accuracy.evaluate import RANDOM_WEIGHTS_NOTE
from harness.results import (
    Accuracy,
    CellRecord,
    CocoMetrics,
    DerivedEntry,
    DetectionAgreement,
    Gate,
    KeypointMetrics,
    MapDelta,
    RawAgreement,
)

WORST_IMAGES = 10
# Small objects first among the sizes: they degrade first under quantization.
_DELTA_KEYS = ("AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large")
_UNUSABLE = {"failed", "skipped"}


def _points(other: float | None, ref: float | None) -> float | None:
    if other is None or ref is None:
        return None
    return round((float(other) - float(ref)) * 100.0, 6)


def cell_file(record: CellRecord, run_dir: Path, kind: str, suffix: str) -> Path:
    """A cell's `kind` file (detections, outputs...): the path its record names, else the
    default `<kind>/<cell_id><suffix>`, under `run_dir`."""
    named = getattr(record.files, kind, None)
    rel = named if isinstance(named, str) and named else f"{kind}/{record.cell_id}{suffix}"
    return run_dir / rel


def _shape(record: CellRecord) -> tuple[int, int]:
    return record.identity.resolution, record.identity.batch


def _reference_for(record: CellRecord, group: list[CellRecord]) -> tuple[CellRecord | None, str | None]:
    """The model's reference cell to compare `record` with: the one of the same resolution and
    batch (the plan expands one per pair), else the same resolution, else any; or why none."""
    refs = [r for r in group if r.identity.is_reference]
    if not refs:
        return None, "this model has no reference cell (PyTorch FP32, or a runtime marked `reference: true`)"
    res, batch = _shape(record)
    tiers = [
        [r for r in refs if _shape(r) == (res, batch)],
        [r for r in refs if _shape(r)[0] == res],
        refs,
    ]
    for tier in tiers:
        usable = [r for r in tier if r.accuracy is not None and r.status not in _UNUSABLE]
        if usable:
            return usable[0], None
    bad = next(tier for tier in tiers if tier)[0]
    if bad.status in _UNUSABLE:
        return None, f"the reference cell {bad.cell_id} {bad.status}: {bad.reason or 'no reason given'}"
    return None, f"the reference cell {bad.cell_id} has no accuracy result"


def _iou_metrics(accuracy: Accuracy, iou_type: str) -> CocoMetrics | KeypointMetrics | None:
    return {"bbox": accuracy.bbox, "segm": accuracy.segm, "keypoints": accuracy.keypoints}.get(iou_type)


def _map_deltas(acc: Accuracy, ref_acc: Accuracy) -> dict[str, MapDelta]:
    out: dict[str, MapDelta] = {}
    for iou_type in ("bbox", "segm", "keypoints"):
        a, r = _iou_metrics(acc, iou_type), _iou_metrics(ref_acc, iou_type)
        if a is not None and r is not None:
            out[iou_type] = MapDelta(**{k: _points(getattr(a, k, None), getattr(r, k, None)) for k in _DELTA_KEYS})
    return out


def _detection_agreement(record: CellRecord, ref: CellRecord, run_dir: Path) -> DetectionAgreement:
    from harness.accuracy.agreement import detection_agreement, detections_from_coco_results

    if ref.files.agreement_detections and record.files.agreement_detections:
        return _all_class_agreement(record, ref, run_dir)
    paths = [cell_file(r, run_dir, "detections", ".json") for r in (ref, record)]
    missing = [str(p.relative_to(run_dir)) for p in paths if not p.is_file()]
    if missing:
        return DetectionAgreement(reason=f"no detections file: {', '.join(missing)}")
    ref_results, results = (json.loads(p.read_text(encoding="utf-8")) for p in paths)
    image_ids = sorted({int(r["image_id"]) for r in ref_results} | {int(r["image_id"]) for r in results})
    min_score = record.identity.agreement_min_score
    agreement = detection_agreement(
        detections_from_coco_results(ref_results, image_ids),
        detections_from_coco_results(results, image_ids),
        **({} if min_score is None else {"min_score": min_score}),
    )
    per_image = agreement.pop("per_image")
    worst = sorted(range(len(image_ids)), key=lambda i: (-per_image[i], image_ids[i]))[:WORST_IMAGES]
    agreement["worst_images"] = [
        {"image_id": image_ids[i], "disagreement": round(per_image[i], 6)} for i in worst if per_image[i] > 0
    ]
    return DetectionAgreement.model_validate(agreement)


def _all_class_agreement(record: CellRecord, ref: CellRecord, run_dir: Path) -> DetectionAgreement:
    """Agreement over every detection of the agreement images, whatever its class (the COCO
    results hold only the dataset's classes): the same model on both sides, so its class
    indices compare as they are."""
    from harness.accuracy.agreement import detection_agreement, load_model_detections

    paths = [run_dir / str(r.files.agreement_detections) for r in (ref, record)]
    missing = [str(p.relative_to(run_dir)) for p in paths if not p.is_file()]
    if missing:
        return DetectionAgreement(reason=f"no detections file: {', '.join(missing)}")
    (ref_ids, ref_dets), (ids, dets) = (load_model_detections(p) for p in paths)
    if ref_ids != ids:
        return DetectionAgreement(reason="the agreement detections were taken on different images")
    min_score = record.identity.agreement_min_score
    agreement = detection_agreement(ref_dets, dets, **({} if min_score is None else {"min_score": min_score}))
    per_image = agreement.pop("per_image")
    worst = sorted(range(len(ids)), key=lambda i: (-per_image[i], ids[i]))[:WORST_IMAGES]
    agreement["worst_images"] = [
        {"image_id": ids[i], "disagreement": round(per_image[i], 6)} for i in worst if per_image[i] > 0
    ]
    return DetectionAgreement.model_validate(agreement)


def _raw_agreement(record: CellRecord, ref: CellRecord, run_dir: Path) -> RawAgreement:
    from harness.accuracy.agreement import load_outputs_npz, raw_output_agreement

    res, ref_res = record.identity.resolution, ref.identity.resolution
    nms, ref_nms = record.identity.nms, ref.identity.nms
    if nms != ref_nms and "in_graph" in (nms, ref_nms):
        return RawAgreement(reason=f"NMS {nms} vs the reference's {ref_nms}: one file ends with NMS in its graph, "
                                   "the other with the raw head, so their outputs do not compare (detections do)")
    if res != ref_res:
        return RawAgreement(reason=f"different input resolution ({res} vs the reference's {ref_res}): raw outputs do not compare")
    paths = [cell_file(r, run_dir, "outputs", ".npz") for r in (ref, record)]
    missing = [str(p.relative_to(run_dir)) for p in paths if not p.is_file()]
    if missing:
        return RawAgreement(reason=f"no raw outputs saved: {', '.join(missing)}")
    (ref_out, ref_ids), (out, ids) = (load_outputs_npz(p) for p in paths)
    if ref_ids is not None and ids is not None and ref_ids != ids:
        return RawAgreement(reason="raw outputs were taken on different images than the reference's")
    return RawAgreement.model_validate(raw_output_agreement(ref_out, out))


def worst_class(per_class_delta: dict[str, float | None]) -> tuple[str, float] | None:
    """The class that lost the most AP (ties: the first name), or None without any delta."""
    items = [(name, float(d)) for name, d in per_class_delta.items() if d is not None]
    return min(items, key=lambda kv: (kv[1], kv[0])) if items else None


def _gate(record: CellRecord, delta: float | None, random_weights: bool,
          per_class_delta: dict[str, float | None] | None = None) -> Gate | None:
    max_drop = record.identity.max_map_drop
    max_class = record.identity.max_class_drop
    if max_drop is None and max_class is None:
        return None
    limits: dict[str, Any] = {"max_map_drop": max_drop, "max_class_drop": max_class}
    worst = worst_class(per_class_delta or {}) if max_class is not None else None
    if worst is not None:
        limits.update(worst_class=worst[0], worst_class_drop=-worst[1])
    if random_weights:
        return Gate(**limits, drop=None if delta is None else -delta, regressed=False,
                    reason="not gated: random weights make mAP meaningless")
    if delta is None:
        return Gate(**limits, drop=None, regressed=False, reason="not gated: no AP to compare")
    # A tiny tolerance: a drop exactly at the limit passes whatever the float rounding.
    overall = max_drop is not None and -delta > float(max_drop) + 1e-9
    by_class = None
    if max_class is not None:
        by_class = worst is not None and -worst[1] > float(max_class) + 1e-9
    return Gate(**limits, drop=-delta, regressed=overall or bool(by_class), class_regressed=by_class)


def _random(record: CellRecord) -> bool:
    return record.random_weights or bool(record.accuracy and record.accuracy.random_weights)


def _compare(record: CellRecord, ref: CellRecord, run_dir: Path) -> DerivedEntry:
    acc, ref_acc = record.accuracy, ref.accuracy
    assert acc is not None and ref_acc is not None  # _reference_for and the caller checked
    random_weights = _random(record) or _random(ref)
    entry: dict[str, Any] = {"reference": ref.cell_id, "random_weights": random_weights}
    if random_weights:
        entry["note"] = RANDOM_WEIGHTS_NOTE
    if _shape(record)[0] != _shape(ref)[0]:
        entry["resolution_note"] = (f"compared with a reference at resolution {_shape(ref)[0]}: the delta "
                                    "mixes the resolution change with the runtime's")
    fp, ref_fp = acc.dataset.fingerprint, ref_acc.dataset.fingerprint
    if fp and ref_fp and fp != ref_fp:
        entry["reason"] = "evaluated on different images than the reference (dataset or subset differs)"
        entry["gate"] = _gate(record, None, random_weights)
        return DerivedEntry(**entry)
    primary = acc.primary or "bbox"
    deltas = _map_deltas(acc, ref_acc)
    entry["primary"] = primary
    entry["deltas"] = deltas
    entry["map_delta"] = deltas.get(primary) or MapDelta()
    per_class, ref_per_class = acc.per_class, ref_acc.per_class
    entry["per_class_delta"] = {
        name: _points(per_class.get(name), ref_per_class.get(name))
        for name in sorted(set(per_class) & set(ref_per_class))
    }
    entry["detection_agreement"] = _detection_agreement(record, ref, run_dir)
    entry["raw_agreement"] = _raw_agreement(record, ref, run_dir)
    entry["gate"] = _gate(record, entry["map_delta"].AP, random_weights, entry["per_class_delta"])
    return DerivedEntry(**entry)


def derive_accuracy(records: Sequence[CellRecord], run_dir: Path) -> dict[str, DerivedEntry]:
    """{cell_id: comparison} for every cell with an accuracy result (see the module doc).
    The reference itself gets role "reference"; a cell whose reference is missing or failed
    gets a `reason`."""
    run_dir = Path(run_dir)
    groups: dict[str, list[CellRecord]] = {}
    for record in records:
        groups.setdefault(record.identity.model, []).append(record)
    derived: dict[str, DerivedEntry] = {}
    for group in groups.values():
        for record in group:
            if record.accuracy is None or record.status in _UNUSABLE:
                continue
            random_weights = _random(record)
            note = RANDOM_WEIGHTS_NOTE if random_weights else None
            if record.identity.is_reference:
                derived[record.cell_id] = DerivedEntry(role="reference", random_weights=random_weights, note=note)
                continue
            ref, why = _reference_for(record, group)
            if ref is None:
                derived[record.cell_id] = DerivedEntry(reference=None, reason=why, random_weights=random_weights, note=note)
            else:
                derived[record.cell_id] = _compare(record, ref, run_dir)
    return dict(sorted(derived.items()))
