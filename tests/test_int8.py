"""INT8 on ONNX Runtime (harness.runtimes.onnxruntime.quantize) with real parts: the repo's example
ONNX detector quantized by onnxruntime.quantization (static QDQ, dynamic, nodes kept in float),
the calibration split disjoint from the accuracy pass's images, the INT8 mAP recomputed with
pycocotools straight from the run's detections file, the sensitivity list the same in two runs;
plus the plan checks, the derived per-size / per-class deltas and class gate, and the report's
precision ladder."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import xml.dom.minidom
from pathlib import Path
from typing import Any

import pytest

from harness.accuracy.calibration import ids_sha256, split_ids
from harness.accuracy.datasets import load_dataset
from harness.accuracy.derive import derive_accuracy
from harness.plan.expand import expand
from harness.plan.schema import DatasetSpec, Plan
from tests.record_factory import accuracy, record

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "onnx" / "anchor-grid-320.onnx"

pytest.importorskip("onnxruntime")

MODEL = {
    "name": "anchor-grid-320", "source": "onnx", "path": str(EXAMPLE), "weights": "random", "resolutions": [320],
    # every output class is one of the sample's five, so the random head's boxes are all scored
    "class_names": ["person", "stop sign", "sports ball", "kite", "tv"] * 16,
    "preprocess": {"resize": "letterbox", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
    "decoder": {"kind": "yolo_raw", "score_threshold": 0.0, "top_k": 100, "nms": {"iou_threshold": 0.7},
                "outputs": {"predictions": "output0"}},
}


def _plan(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    plan: dict[str, Any] = {
        "name": "int8-test", "device": "cpu", "models": [MODEL],
        "runtimes": [
            {"name": "onnxruntime-cpu", "reference": True,
             "settings": {"intra_op_num_threads": 1, "int8": {"sensitivity_images": 2}}},
            {"name": "onnxruntime-cpu", "label": "ort-int8-k2", "precisions": ["int8"],
             # Concat_9 joins pixel coordinates (up to 320) and class scores (~0.03) into one output:
             # one INT8 scale for both rounds every score to 0, so it stays float here.
             "settings": {"intra_op_num_threads": 1,
                          "int8": {"sensitivity_images": 2, "keep_float": ["Concat_9"], "keep_float_worst": 2}}},
        ],
        "precisions": ["fp32", "int8-dynamic", "int8"],
        "scopes": ["model"],
        "protocol": {"warmup_iterations": 1, "warmup_seconds": 0.0, "min_iterations": 5, "min_seconds": 0.0},
        "dataset": {"sample": True, "sample_images": 14, "calibration": {"images": 6}},
        "accuracy": {"max_map_drop": 1.0, "max_class_drop": 5.0, "agreement_images": 2, "gallery_images": 0},
        "artifacts": str(tmp_path / "artifacts"),
        "output": str(tmp_path / "reports"),
    }
    plan.update(changes)
    return plan


def _validate(tmp_path: Path, plan: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return subprocess.run([sys.executable, "-m", "harness", "validate", str(path)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)


# -- plan checks ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"dataset": {"sample": True, "sample_images": 8}}, "dataset.calibration"),
        ({"dataset": {"sample": True, "sample_images": 8, "calibration": {"images": 8}}}, "calibration.images"),
        ({"runtimes": [{"name": "onnxruntime-cpu", "settings": {"int8": {"calibraton": "entropy"}}}]}, "int8.calibraton"),
        ({"runtimes": [{"name": "onnxruntime-cpu", "settings": {"int8": {"calibration": "kl"}}}]}, "int8.calibration"),
        ({"runtimes": [{"name": "onnxruntime-cpu", "settings": {"int8": {"calibration_images": 7}}}]},
         "calibration_images"),
        ({"runtimes": [{"name": "onnxruntime-cpu", "settings": {"int8": {"keep_float": "Conv_0"}}}]}, "int8.keep_float"),
        ({"accuracy": {"max_class_drop": -1}}, "accuracy.max_class_drop"),
        ({"precisions": ["int4"]}, "precisions"),
    ],
)
def test_bad_int8_plans_fail_validate_naming_the_field(tmp_path: Path, change: dict[str, Any], expected: str) -> None:
    plan = _plan(tmp_path, **change)
    if "runtimes" not in change:
        plan["runtimes"] = plan["runtimes"][:1]
    done = _validate(tmp_path, plan)
    assert done.returncode == 2, done.stdout + done.stderr
    assert expected in done.stderr, done.stderr


def test_int8_dynamic_is_a_cpu_ep_rung_and_the_cuda_ep_refuses_it(tmp_path: Path) -> None:
    plan = _plan(tmp_path, device="cuda", runtimes=[{"name": "onnxruntime-cuda"}], precisions=["int8-dynamic"])
    done = _validate(tmp_path, plan)
    assert done.returncode == 2 and "cannot run int8-dynamic" in done.stderr, done.stderr
    ok = _validate(tmp_path, _plan(tmp_path, device="cuda", runtimes=[{"name": "onnxruntime-cuda"}],
                                   precisions=["fp32", "fp16", "int8"]))
    assert ok.returncode == 0, ok.stderr


# -- the calibration split ---------------------------------------------------------------------


def test_the_calibration_split_is_held_out_of_every_accuracy_pass(tmp_path: Path) -> None:
    spec = DatasetSpec.model_validate({"sample": True, "sample_images": 14, "calibration": {"images": 6, "seed": 3}})
    dataset = load_dataset(spec, tmp_path, tmp_path / "cache")
    assert len(dataset.calibration_ids) == 6 and len(dataset.image_ids) == 8
    assert not set(dataset.calibration_ids) & set(dataset.image_ids)
    everything = set(dataset.calibration_ids) | set(dataset.image_ids)
    assert dataset.calibration_ids == split_ids(everything, 6, 3)  # the documented rule, by ids
    facts = dataset.split_facts()
    assert facts["calibration_split"]["sha256"] == ids_sha256(dataset.calibration_ids)
    assert facts["evaluation_split"]["image_ids"] == dataset.image_ids
    # a smaller split is nested in a larger one with the same seed
    assert set(split_ids(everything, 3, 3)) <= set(dataset.calibration_ids)
    # without a split nothing is held out
    plain = load_dataset(DatasetSpec.model_validate({"sample": True, "sample_images": 14}), tmp_path, tmp_path / "cache")
    assert plain.calibration_ids == [] and len(plain.image_ids) == 14


def test_tensorrt_int8_draws_from_the_plan_split_too(tmp_path: Path) -> None:
    from harness.runtimes.tensorrt.engine import parse_settings, select_calibration_images

    plan = Plan.model_validate({**_plan(tmp_path), "device": "cuda", "runtimes": [{"name": "tensorrt"}],
                                "precisions": ["int8"]})
    [cell] = expand(plan, tmp_path)
    chosen = select_calibration_images(cell=cell, settings=parse_settings({}))
    dataset = load_dataset(plan.dataset, tmp_path, Path(cell.artifacts_dir) / "datasets")  # type: ignore[arg-type]
    assert chosen.image_ids == dataset.calibration_ids and not chosen.overlaps_evaluation


# -- the plan, run -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ladder_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("int8")
    path = tmp / "plan.json"
    path.write_text(json.dumps(_plan(tmp)))
    done = subprocess.run([sys.executable, "-m", "harness", str(path)], capture_output=True, text=True,
                          timeout=900, cwd=tmp)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [run] = (tmp / "reports" / "int8-test").iterdir()
    results = json.loads((run / "results.json").read_text())
    cells = {c["cell_id"]: c for c in results["cells"]}
    return {"tmp": tmp, "run": run, "results": results, "cells": cells, "plan": path}


def _cell(run: dict[str, Any], fragment: str) -> dict[str, Any]:
    [cell] = [c for cid, c in run["cells"].items() if fragment in cid]
    return cell


def test_static_int8_records_what_was_quantized_on_which_images(ladder_run: dict[str, Any]) -> None:
    cell = _cell(ladder_run, "onnxruntime-cpu__int8__")
    assert cell["status"] in ("ok", "unstable"), cell["reason"]
    q = cell["prepare"]["quantization"]
    assert q["mode"] == "static" and q["format"] == "QDQ" and q["per_channel"] is True
    assert q["tool"].startswith("onnxruntime.quantization ")
    assert q["quantized"]["by_op"]["Conv"] == 1 and "Conv_0" in q["quantized"]["names"]
    assert q["quantized"]["count"] == len(q["quantized"]["names"]) >= 1
    assert cell["prepare"]["quantize_s"] > 0  # preparation, timed apart from latency
    assert cell["settings"]["onnx_precision"] == "int8 (static, QDQ)"
    assert cell["settings"]["quantization"]["model_sha256"] == q["model_sha256"]
    # the quantized file is the one the session ran, and it holds Q/DQ nodes
    import onnx

    model = onnx.load(q["model_path"])
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in model.graph.node}
    assert cell["settings"]["model_file"] == q["model_path"]


def test_calibration_and_evaluation_splits_are_disjoint_and_recorded(ladder_run: dict[str, Any]) -> None:
    for cell in ladder_run["cells"].values():
        facts = cell["accuracy"]["dataset"]
        evaluation, calibration = facts["evaluation_split"], facts["calibration_split"]
        assert evaluation["count"] == 8 and calibration["count"] == 6
        assert not set(evaluation["image_ids"]) & set(calibration["image_ids"])
        assert evaluation["sha256"] == ids_sha256(evaluation["image_ids"])
        assert cell["accuracy"]["images"] == 8
    q = _cell(ladder_run, "onnxruntime-cpu__int8__")["prepare"]["quantization"]
    split = _cell(ladder_run, "onnxruntime-cpu__int8__")["accuracy"]["dataset"]["calibration_split"]
    assert q["calibration"]["image_ids"] == split["image_ids"]  # the whole split, by default
    assert q["calibration"]["sha256"] == split["sha256"] and q["calibration"]["overlaps_evaluation_set"] is False
    assert q["calibration"]["method"] == "minmax"


def test_a_shared_output_scale_wipes_out_the_scores(ladder_run: dict[str, Any]) -> None:
    """Fully quantized, the example's output (coordinates and scores in one tensor) loses every
    score to rounding: FP32 finds boxes, INT8 none. The fine values degrade first."""
    assert _cell(ladder_run, "onnxruntime-cpu__fp32__")["accuracy"]["detections"] > 0
    assert _cell(ladder_run, "onnxruntime-cpu__int8__")["accuracy"]["detections"] == 0
    assert _cell(ladder_run, "ort-int8-k2__int8__")["accuracy"]["detections"] > 0


def test_the_int8_map_recomputed_with_pycocotools_from_the_detections_file(ladder_run: dict[str, Any]) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    cell = _cell(ladder_run, "ort-int8-k2__int8__")
    acc = cell["accuracy"]
    annotations = json.loads(Path(acc["dataset"]["annotations"]).read_text())
    detections = json.loads((ladder_run["run"] / cell["files"]["detections"]).read_text())
    assert detections and acc["detections"] == len(detections)
    assert {d["image_id"] for d in detections} <= set(acc["dataset"]["evaluation_split"]["image_ids"])
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = annotations
        gt.createIndex()
        dt = gt.loadRes(detections)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = acc["dataset"]["evaluation_split"]["image_ids"]
        ev.params.catIds = sorted({a["category_id"] for a in annotations["annotations"]
                                   if a["image_id"] in set(ev.params.imgIds)})
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(acc["bbox"]["AP"], abs=1e-9)
    assert ev.stats[3] == pytest.approx(acc["bbox"]["AP_small"] if acc["bbox"]["AP_small"] is not None else -1, abs=1e-9)


def test_dynamic_int8_quantizes_without_calibration(ladder_run: dict[str, Any]) -> None:
    cell = _cell(ladder_run, "int8-dynamic")
    q = cell["prepare"]["quantization"]
    assert q["mode"] == "dynamic" and q["calibration"] is None and q["sensitivity"] is None
    assert q["quantized"]["names"] == ["Conv_0"]  # ConvInteger in the file
    import onnx

    assert "ConvInteger" in {n.op_type for n in onnx.load(q["model_path"]).graph.node}


def test_keep_float_worst_requantizes_without_the_worst_nodes(ladder_run: dict[str, Any]) -> None:
    base = _cell(ladder_run, "onnxruntime-cpu__int8__")["prepare"]["quantization"]
    kept = _cell(ladder_run, "ort-int8-k2__int8__")["prepare"]["quantization"]
    # its sensitivity pass ran on the model quantized without Concat_9 (the explicit keep_float)
    ranked = [n["node"] for n in kept["sensitivity"]["top"]]
    assert "Concat_9" not in ranked and kept["keep_float"] == ["Concat_9"]
    assert kept["keep_float_worst"] == ranked[:2]
    assert "Concat_9" in kept["kept_float"]["names"]
    assert set(kept["keep_float_worst"]) <= set(kept["kept_float"]["names"])
    assert not set(kept["keep_float_worst"]) & set(kept["quantized"]["names"])
    assert kept["quantized"]["count"] < base["quantized"]["count"]
    assert kept["calibration"]["cached"] is True  # the calibrated ranges were reused
    assert kept["model_sha256"] != base["model_sha256"]
    # kept in float for real: each reads float tensors, not a DequantizeLinear (ORT would fuse
    # DQ -> node -> Q into an integer kernel however the quantizer was told to exclude it)
    import onnx

    model = onnx.load(kept["model_path"])
    produced_by = {o: n.op_type for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name in kept["keep_float"] + kept["keep_float_worst"]:
            assert "DequantizeLinear" not in [produced_by.get(i) for i in node.input], node.name


def test_the_sensitivity_list_is_the_same_in_two_runs(ladder_run: dict[str, Any], tmp_path: Path) -> None:
    """A second run from empty artifacts: calibrated, quantized and compared again, same list."""
    plan = _plan(tmp_path, runtimes=_plan(tmp_path)["runtimes"][:1], precisions=["int8"])
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    done = subprocess.run([sys.executable, "-m", "harness", str(path)], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    [run] = (tmp_path / "reports" / "int8-test").iterdir()
    [again] = json.loads((run / "results.json").read_text())["cells"]
    first = _cell(ladder_run, "onnxruntime-cpu__int8__")["prepare"]["quantization"]
    second = again["prepare"]["quantization"]
    assert second["cached"] is False and second["sensitivity"]["cached"] is False
    assert [n["node"] for n in second["sensitivity"]["top"]] == [n["node"] for n in first["sensitivity"]["top"]]
    assert second["sensitivity"]["top"] == first["sensitivity"]["top"]
    assert second["model_sha256"] == first["model_sha256"]


def test_derived_deltas_have_sizes_classes_and_the_class_gate(ladder_run: dict[str, Any]) -> None:
    derived = ladder_run["results"]["derived"]
    entry = next(v for k, v in derived.items() if "onnxruntime-cpu__int8__" in k)
    assert set(entry["map_delta"]) >= {"AP", "AP_small", "AP_medium", "AP_large"}
    assert entry["gate"]["max_class_drop"] == 5.0 and entry["gate"]["worst_class"] in entry["per_class_delta"]


def test_the_report_draws_the_ladder(ladder_run: dict[str, Any]) -> None:
    html = (ladder_run["run"] / "report.html").read_text()
    start = html.index('<section id="ladder">')
    section = html[start:html.index("</section>", start)]
    svg = section[section.index("<svg"):section.index("</svg>") + 6]
    xml.dom.minidom.parseString(svg)  # well-formed
    kept = "INT8 minmax, Concat_9 kept in float, the worst 2 kept in float"
    for label in ("FP32", "INT8 dynamic", "INT8 minmax", kept):
        assert f">{label}<" in svg
    assert "Sensitivity pass" in section and "keep_float" in section
    summary = (ladder_run["run"] / "summary.md").read_text()
    assert "## Precision ladder" in summary and f"| {kept.replace('_', chr(92) + '_')} |" in summary


# -- derive, planted records -----------------------------------------------------------------------


def _records(worst_class_ap: float) -> list[Any]:
    ident = {"max_map_drop": 1.0, "max_class_drop": 2.0, "runtime": "onnxruntime-cpu"}
    per_class = {"person": 0.50, "kite": 0.40}
    bbox = {"AP": 0.45, "AP50": 0.6, "AP75": 0.4, "AP_small": 0.30, "AP_medium": 0.45, "AP_large": 0.55}
    ref = record("m__ort__fp32", identity_fields={**ident, "is_reference": True},
                 accuracy=accuracy(0.45, bbox=bbox, per_class=per_class))
    q_bbox = {**bbox, "AP": 0.445, "AP_small": 0.25}
    q = record("m__ort__int8", identity_fields={**ident, "precision": "int8"},
               accuracy=accuracy(0.445, bbox=q_bbox, per_class={"person": 0.50, "kite": worst_class_ap}))
    return [ref, q]


def test_the_class_gate_trips_on_the_worst_class_alone(tmp_path: Path) -> None:
    entries = derive_accuracy(_records(0.37), tmp_path)  # kite -3 points, overall -0.5
    entry = entries["m__ort__int8"]
    assert entry.map_delta is not None and entry.map_delta.AP_small == pytest.approx(-5.0)
    assert entry.gate is not None and entry.gate.regressed and entry.gate.class_regressed
    assert entry.gate.worst_class == "kite" and entry.gate.worst_class_drop == pytest.approx(3.0)
    assert entry.gate.drop == pytest.approx(0.5)
    calm = derive_accuracy(_records(0.39), tmp_path)["m__ort__int8"]  # kite -1 point: within 2
    assert calm.gate is not None and not calm.gate.regressed and calm.gate.class_regressed is False


def test_a_replaced_or_truncated_cache_entry_is_quantized_again(tmp_path: Path) -> None:
    """The record's facts come from the entry's meta.json: a model.onnx that is not the file
    it describes must not run under them, and a truncated one must not break every later run."""
    from harness.files import file_sha256
    from harness.runtimes.onnxruntime import OrtInt8Settings
    from harness.runtimes.onnxruntime import quantize as q

    def request(op_types: list[str] | None = None) -> Any:
        settings = OrtInt8Settings().model_dump(mode="json")
        if op_types is not None:
            settings["op_types"] = op_types
        return q.Request(mode="dynamic", source=q.named_model(EXAMPLE, sha, root), source_sha256=sha, input_name="images",
                         input_batch=1, preprocess_id={}, settings=settings, symmetric_activations=False,
                         calibration=None, keep_float=())

    root, log, sha = tmp_path / "onnx-int8", io.StringIO(), file_sha256(EXAMPLE)
    made = q.quantize(request(), root, log)
    assert made.quantize_s is not None and made.facts["quantized"]["count"] > 0
    hit = q.quantize(request(), root, log)
    assert hit.quantize_s is None and hit.facts["model_sha256"] == made.facts["model_sha256"]

    other = q.quantize(request(["MatMul"]), root, log)  # a different, valid quantized file
    made.path.write_bytes(other.path.read_bytes())
    again = q.quantize(request(), root, log)
    assert again.quantize_s is not None, log.getvalue()
    assert "is not usable" in log.getvalue() and "sha256" in log.getvalue()
    assert file_sha256(again.path) == again.facts["model_sha256"] == made.facts["model_sha256"]

    again.path.write_bytes(again.path.read_bytes()[:100])  # half-written
    healed = q.quantize(request(), root, io.StringIO())
    assert healed.quantize_s is not None and file_sha256(healed.path) == made.facts["model_sha256"]
    assert [p.name for p in root.iterdir() if "stale" in p.name] == []
