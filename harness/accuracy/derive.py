"""Accuracy of each cell against its model's reference, derived from the run folder alone.

Inputs are the cell records (cells/<cell_id>.json as dicts) and the files they point to:
detections/<cell_id>.json (COCO results of the accuracy pass) and outputs/<cell_id>.npz (raw
outputs on the fixed agreement images). Nothing is measured here, so deriving twice gives the
same result, and a report can be rebuilt from a copied run folder.

All deltas are in AP points (pycocotools' 0..1 value x 100), other minus reference: -1.5
means the cell lost 1.5 AP. `accuracy.max_map_drop` is in the same points.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.accuracy.evaluate import RANDOM_WEIGHTS_NOTE

WORST_IMAGES = 10
_DELTA_KEYS = ("AP", "AP50", "AP75")
_UNUSABLE = {"failed", "skipped"}


def _points(other: float | None, ref: float | None) -> float | None:
    if other is None or ref is None:
        return None
    return round((float(other) - float(ref)) * 100.0, 6)


def _model_name(record: dict[str, Any]) -> str:
    return str(record.get("cell", {}).get("model", {}).get("name", ""))


def cell_file(record: Mapping[str, Any], run_dir: Path, kind: str, suffix: str) -> Path:
    """A cell's `kind` file (detections, outputs...): the path its record names, else the
    default `<kind>/<cell_id><suffix>`, under `run_dir`."""
    rel = record.get("files", {}).get(kind) or f"{kind}/{record['cell_id']}{suffix}"
    return run_dir / rel


def _shape(record: dict[str, Any]) -> tuple[Any, Any]:
    cell = record.get("cell", {})
    return cell.get("resolution"), cell.get("batch")


def _reference_for(record: dict[str, Any], group: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, str | None]:
    """The model's reference cell to compare `record` with: the one of the same resolution and
    batch (the plan expands one per pair), else the same resolution, else any; or why none."""
    refs = [r for r in group if r.get("cell", {}).get("is_reference")]
    if not refs:
        return None, "this model has no reference cell (PyTorch FP32, or a runtime marked `reference: true`)"
    res, batch = _shape(record)
    tiers = [
        [r for r in refs if _shape(r) == (res, batch)],
        [r for r in refs if _shape(r)[0] == res],
        refs,
    ]
    for tier in tiers:
        usable = [r for r in tier if r.get("accuracy") and r.get("status") not in _UNUSABLE]
        if usable:
            return usable[0], None
    bad = next(tier for tier in tiers if tier)[0]
    if bad.get("status") in _UNUSABLE:
        return None, f"the reference cell {bad['cell_id']} {bad.get('status')}: {bad.get('reason') or 'no reason given'}"
    return None, f"the reference cell {bad['cell_id']} has no accuracy result"


def _map_deltas(acc: dict[str, Any], ref_acc: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for iou_type in ("bbox", "segm", "keypoints"):
        a, r = acc.get(iou_type), ref_acc.get(iou_type)
        if isinstance(a, dict) and isinstance(r, dict):
            out[iou_type] = {k: _points(a.get(k), r.get(k)) for k in _DELTA_KEYS}
    return out


def _detection_agreement(record: dict[str, Any], ref: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    from harness.accuracy.agreement import detection_agreement, detections_from_coco_results

    paths = [cell_file(r, run_dir, "detections", ".json") for r in (ref, record)]
    missing = [str(p.relative_to(run_dir)) for p in paths if not p.is_file()]
    if missing:
        return {"reason": f"no detections file: {', '.join(missing)}"}
    ref_results, results = (json.loads(p.read_text(encoding="utf-8")) for p in paths)
    image_ids = sorted({int(r["image_id"]) for r in ref_results} | {int(r["image_id"]) for r in results})
    agreement = detection_agreement(
        detections_from_coco_results(ref_results, image_ids),
        detections_from_coco_results(results, image_ids),
    )
    per_image = agreement.pop("per_image")
    worst = sorted(range(len(image_ids)), key=lambda i: (-per_image[i], image_ids[i]))[:WORST_IMAGES]
    agreement["worst_images"] = [
        {"image_id": image_ids[i], "disagreement": round(per_image[i], 6)} for i in worst if per_image[i] > 0
    ]
    return agreement


def _raw_agreement(record: dict[str, Any], ref: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    from harness.accuracy.agreement import load_outputs_npz, raw_output_agreement

    res, ref_res = record.get("cell", {}).get("resolution"), ref.get("cell", {}).get("resolution")
    if res != ref_res:
        return {"reason": f"different input resolution ({res} vs the reference's {ref_res}): raw outputs do not compare"}
    paths = [cell_file(r, run_dir, "outputs", ".npz") for r in (ref, record)]
    missing = [str(p.relative_to(run_dir)) for p in paths if not p.is_file()]
    if missing:
        return {"reason": f"no raw outputs saved: {', '.join(missing)}"}
    (ref_out, ref_ids), (out, ids) = (load_outputs_npz(p) for p in paths)
    if ref_ids is not None and ids is not None and ref_ids != ids:
        return {"reason": "raw outputs were taken on different images than the reference's"}
    return raw_output_agreement(ref_out, out)


def _gate(record: dict[str, Any], delta: float | None, random_weights: bool) -> dict[str, Any] | None:
    max_drop = record.get("cell", {}).get("accuracy", {}).get("max_map_drop")
    if max_drop is None:
        return None
    gate: dict[str, Any] = {"max_map_drop": float(max_drop), "drop": None if delta is None else -delta,
                            "regressed": False}
    if random_weights:
        gate["reason"] = "not gated: random weights make mAP meaningless"
    elif delta is None:
        gate["reason"] = "not gated: no AP to compare"
    else:
        # A tiny tolerance: a drop exactly at the limit passes whatever the float rounding.
        gate["regressed"] = -delta > float(max_drop) + 1e-9
    return gate


def _compare(record: dict[str, Any], ref: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    acc, ref_acc = record["accuracy"], ref["accuracy"]
    random_weights = bool(record.get("random_weights") or ref.get("random_weights")
                          or acc.get("random_weights") or ref_acc.get("random_weights"))
    entry: dict[str, Any] = {"reference": ref["cell_id"], "random_weights": random_weights}
    if random_weights:
        entry["note"] = RANDOM_WEIGHTS_NOTE
    if _shape(record)[0] != _shape(ref)[0]:
        entry["resolution_note"] = (f"compared with a reference at resolution {_shape(ref)[0]}: the delta "
                                    "mixes the resolution change with the runtime's")
    fp, ref_fp = (a.get("dataset", {}).get("fingerprint") for a in (acc, ref_acc))
    if fp and ref_fp and fp != ref_fp:
        entry["reason"] = "evaluated on different images than the reference (dataset or subset differs)"
        entry["gate"] = _gate(record, None, random_weights)
        return entry
    primary = acc.get("primary") or "bbox"
    deltas = _map_deltas(acc, ref_acc)
    entry["primary"] = primary
    entry["deltas"] = deltas
    entry["map_delta"] = deltas.get(primary) or {k: None for k in _DELTA_KEYS}
    per_class, ref_per_class = acc.get("per_class") or {}, ref_acc.get("per_class") or {}
    entry["per_class_delta"] = {
        name: _points(per_class.get(name), ref_per_class.get(name))
        for name in sorted(set(per_class) & set(ref_per_class))
    }
    entry["detection_agreement"] = _detection_agreement(record, ref, run_dir)
    entry["raw_agreement"] = _raw_agreement(record, ref, run_dir)
    gate = _gate(record, entry["map_delta"].get("AP"), random_weights)
    if gate is not None:
        entry["gate"] = gate
    return entry


def derive_accuracy(records: list[dict[str, Any]], run_dir: Path) -> dict[str, dict[str, Any]]:
    """{cell_id: comparison} for every cell with an accuracy result (see the module doc).
    The reference itself gets {"role": "reference"}; a cell whose reference is missing or
    failed gets {"reason": ...}."""
    run_dir = Path(run_dir)
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault(_model_name(record), []).append(record)
    derived: dict[str, dict[str, Any]] = {}
    for group in groups.values():
        for record in group:
            if not record.get("accuracy") or record.get("status") in _UNUSABLE:
                continue
            random_weights = bool(record.get("random_weights") or record["accuracy"].get("random_weights"))
            entry: dict[str, Any]
            if record.get("cell", {}).get("is_reference"):
                entry = {"role": "reference", "random_weights": random_weights}
                if random_weights:
                    entry["note"] = RANDOM_WEIGHTS_NOTE
                derived[record["cell_id"]] = entry
                continue
            ref, why = _reference_for(record, group)
            if ref is None:
                entry = {"reference": None, "reason": why, "random_weights": random_weights}
                if random_weights:
                    entry["note"] = RANDOM_WEIGHTS_NOTE
            else:
                entry = _compare(record, ref, run_dir)
            derived[record["cell_id"]] = entry
    return dict(sorted(derived.items()))


def gate_failures(derived: dict[str, dict[str, Any]]) -> list[str]:
    """Cell ids past their plan's max_map_drop (the cells to mark accuracy_regression)."""
    return [cell_id for cell_id, entry in derived.items() if (entry.get("gate") or {}).get("regressed")]
