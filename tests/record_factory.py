"""Typed cell records for tests that plant records without running a plan."""

from __future__ import annotations

from typing import Any

from harness.results import Accuracy, CellIdentity, CellRecord

PROTOCOL = {"warmup_iterations": 10, "warmup_seconds": 1.0, "min_iterations": 100, "min_seconds": 3.0,
            "max_iterations": 100000, "max_seconds": 600.0, "pause_ms": 0.0, "sustained": None}


def identity(**overrides: Any) -> CellIdentity:
    fields: dict[str, Any] = {
        "model": "m", "source": "rfdetr", "variant": "nano", "weights": "cache", "weights_kind": "trained",
        "runtime": "torch", "runtime_label": None, "precision": "fp32", "batch": 1, "resolution": 384,
        "scope": "model", "device": "cpu", "is_reference": False, "time_decode": False,
        "protocol": PROTOCOL, "dataset": None, "max_map_drop": None,
    }
    return CellIdentity.model_validate({**fields, **overrides})


def accuracy(ap: float, **overrides: Any) -> Accuracy:
    fields: dict[str, Any] = {
        "images": 2, "evaluator": "pycocotools", "primary": "bbox",
        "bbox": {"AP": ap, "AP50": ap + 0.2, "AP75": ap - 0.1}, "per_class": {"person": ap},
        "predict_images_per_s": 10.0, "wall_images_per_s": 9.0, "predict_s": 0.2, "wall_s": 0.22, "eval_s": 0.1,
        "batch": 1, "padded_images": 0, "detections": 2, "results_file": "detections/x.json",
        "dataset": {"fingerprint": "abc"}, "random_weights": False,
    }
    return Accuracy.model_validate({**fields, **overrides})


def record(cell_id: str, *, identity_fields: dict[str, Any] | None = None, **overrides: Any) -> CellRecord:
    fields: dict[str, Any] = {
        "cell_id": cell_id, "identity": identity(**(identity_fields or {})), "cell": {"cell_id": cell_id},
        "status": "ok", "started_at": "2026-01-01T00:00:00Z", "finished_at": "2026-01-01T00:00:01Z",
    }
    return CellRecord.model_validate({**fields, **overrides})
