"""Older results files, upgraded in memory to the current schema (asv's `update_json` way).

Each migration takes the JSON of version N and returns the JSON of version N + 1; loading
applies them in order and then validates against the current model, so a file of any known
version reads the same as a new one. Files are never rewritten on disk: a run folder keeps
the bytes its run wrote. What each step changes, and the defaults it fills in, is the version
history in docs/results-schema.md; the defaults are the ones the writing harness had, never
guesses (schema 1's plan `Cell` defaults are spelled out below).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness.results.model import PREPARE_TIMINGS, SCHEMA_VERSION


class MigrationError(ValueError):
    """A file of an older version that lacks what its version always wrote."""


JsonObject = dict[str, Any]

# ----------------------------------------------------------------------------- 1 -> 2

# harness.plan.schema as of schema 1: the values a Cell field had when the plan left it out.
_V1_PROTOCOL = {
    "warmup_iterations": 10,
    "warmup_seconds": 1.0,
    "min_iterations": 100,
    "min_seconds": 3.0,
    "max_iterations": 100_000,
    "max_seconds": 600.0,
    "pause_ms": 0.0,
    "sustained": None,
}
_V1_DATASET = {"sample": False, "sample_images": 24, "images": None, "annotations": None}
_V1_SUBSET = {"mode": "all", "n": None, "seed": 0}


def _object(value: Any, where: str) -> JsonObject:
    if not isinstance(value, dict):
        raise MigrationError(f"`{where}` must be an object in a schema 1 record")
    return value


def _required(obj: JsonObject, key: str, where: str) -> Any:
    if key not in obj or obj[key] is None:
        raise MigrationError(f"a schema 1 record always has `{where}.{key}`; this one has none")
    return obj[key]


def identity_from_v1_cell(cell: JsonObject, random_weights: bool) -> JsonObject:
    """A schema 2 `identity` from a schema 1 record's `cell` (the plan's Cell dumped), with the
    plan defaults of that time for what it left out."""
    model = _object(cell.get("model"), "cell.model")
    runtime = _object(cell.get("runtime"), "cell.runtime")
    source = str(model.get("source", "rfdetr"))
    weights = model.get("weights")
    if source == "onnx":
        weights_kind = "from_file"
    elif random_weights or weights == "random":
        weights_kind = "random"
    else:
        weights_kind = "trained"
    protocol = {**_V1_PROTOCOL, **_object(cell.get("protocol") or {}, "cell.protocol")}
    dataset_raw = cell.get("dataset")
    dataset = None
    if dataset_raw is not None:
        given = _object(dataset_raw, "cell.dataset")
        dataset = {
            **_V1_DATASET,
            **{k: given[k] for k in _V1_DATASET if k in given},
            "subset": {**_V1_SUBSET, **_object(given.get("subset") or {}, "cell.dataset.subset")},
        }
    accuracy = _object(cell.get("accuracy") or {}, "cell.accuracy")
    return {
        "model": _required(model, "name", "cell.model"),
        "source": source,
        "variant": model.get("variant"),
        "weights": weights,
        "weights_kind": weights_kind,
        "runtime": _required(runtime, "name", "cell.runtime"),
        "runtime_label": runtime.get("label"),
        "precision": _required(cell, "precision", "cell"),
        "batch": _required(cell, "batch", "cell"),
        "resolution": _required(cell, "resolution", "cell"),
        "scope": _required(cell, "scope", "cell"),
        "device": _required(cell, "device", "cell"),
        "is_reference": bool(cell.get("is_reference", False)),
        "time_decode": bool(cell.get("time_decode", False)),
        "protocol": protocol,
        "dataset": dataset,
        "max_map_drop": accuracy.get("max_map_drop"),
    }


def prepare_v2(prepare: JsonObject) -> JsonObject:
    """Schema 1's free-form `prepare` sorted into schema 2's fields; what the runtime added
    beyond them goes under `runtime`, as it was."""
    known = {*PREPARE_TIMINGS, "artifact", "model", "gpu_conditions"}
    out = {k: v for k, v in prepare.items() if k in known}
    rest = {k: v for k, v in prepare.items() if k not in known}
    if rest:
        out["runtime"] = rest
    return out


def _accuracy_v2(accuracy: JsonObject) -> JsonObject:
    out = dict(accuracy)
    if "images_per_s" in out:
        # Schema 1 called images / time inside predict() `images_per_s`; it includes
        # preprocessing and output decoding, so schema 2 names it for what it is.
        out["predict_images_per_s"] = out.pop("images_per_s")
    mapping = out.get("mapping")
    if isinstance(mapping, dict):
        unpredictable = list(mapping.get("unevaluable_classes") or [])
        evaluated = int(mapping.get("evaluated_categories") or 0)
        out["mapping"] = {
            "annotated_classes": evaluated + len(unpredictable),
            "predictable_classes": evaluated,
            "unpredictable_classes": unpredictable,
            "model_classes_unused": int(mapping.get("model_classes_unused") or 0),
            # Schema 1 left the classes the model cannot predict out of its AP.
            "ap_over": "predictable" if unpredictable else "annotated",
            "warning": mapping.get("warning"),
        }
    return out


def cell_1_to_2(data: JsonObject) -> JsonObject:
    out = dict(data)
    cell = _object(data.get("cell"), "cell")
    out["identity"] = identity_from_v1_cell(cell, bool(data.get("random_weights")))
    if out.pop("agreement", None) is not None:
        # No schema 1 harness wrote it (the comparison lives in results.json's `derived`).
        raise MigrationError("`agreement` is set, which no harness of schema 1 wrote")
    if isinstance(out.get("prepare"), dict):
        out["prepare"] = prepare_v2(out["prepare"])
    if isinstance(out.get("accuracy"), dict):
        out["accuracy"] = _accuracy_v2(out["accuracy"])
    if out.get("environment") is None:
        out["environment"] = {}
    out["schema_version"] = 2
    return out


def run_1_to_2(data: JsonObject) -> JsonObject:
    return {**data, "schema_version": 2}


def results_1_to_2(data: JsonObject) -> JsonObject:
    out = dict(data)
    derived = out.get("derived")
    if isinstance(derived, dict) and "_error" in derived:
        # Schema 1 kept a failed derivation's message among the cell ids.
        derived = dict(derived)
        out["derived_error"] = str(derived.pop("_error"))
        out["derived"] = derived
    if isinstance(out.get("run"), dict):
        out["run"] = run_1_to_2(out["run"])
    # Cells migrate one by one, each by its own schema_version (harness.results.files).
    out["schema_version"] = 2
    return out


# ----------------------------------------------------------------------------- 2 -> 3

# Schema 3 only adds optional fields (INT8, server cells, NMS placement, resources, budgets;
# docs/results-schema.md): a schema 2 file reads as it is, with those absent.


def _to_3(data: JsonObject) -> JsonObject:
    return {**data, "schema_version": 3}


def results_2_to_3(data: JsonObject) -> JsonObject:
    out = _to_3(data)
    if isinstance(out.get("run"), dict):
        out["run"] = _to_3(out["run"])
    return out


# ----------------------------------------------------------------------------- registry

Step = Callable[[JsonObject], JsonObject]
CELL_STEPS: dict[int, Step] = {1: cell_1_to_2, 2: _to_3}
RUN_STEPS: dict[int, Step] = {1: run_1_to_2, 2: _to_3}
RESULTS_STEPS: dict[int, Step] = {1: results_1_to_2, 2: results_2_to_3}


def upgrade(data: JsonObject, version: int, steps: dict[int, Step]) -> JsonObject:
    """`data` of `version` brought to SCHEMA_VERSION by the steps in order."""
    while version < SCHEMA_VERSION:
        step = steps.get(version)
        if step is None:
            raise MigrationError(f"no migration from results schema version {version}")
        data = step(data)
        version += 1
    return data
