"""plans/edge-detectors-cpu.yaml end to end, as CI runs it: RF-DETR Nano, YOLOv8n in three NMS
placements, SSDlite and Faster R-CNN MobileNetV3 on the CPU, eager PyTorch, ONNX Runtime and
OpenVINO (where the openvino extra is installed), with the accuracy pass. Read back from the run folder alone: every cell measured, the NMS
placements' stages and candidate counts recorded and their detections agreeing, each mAP
recomputed with pycocotools from the detections file, the report's NMS table written."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from extras import skip_without_ultralytics

REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
skip_without_ultralytics()
pytest.importorskip("openvino", reason="the openvino extra: pip install -e '.[openvino]'")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("edge")
    env = {**__import__("os").environ, "YOLO_CONFIG_DIR": str(out / "ultralytics-settings")}
    done = subprocess.run(
        [sys.executable, "-m", "harness", str(REPO / "plans" / "edge-detectors-cpu.yaml"), "--output", str(out)],
        capture_output=True, text=True, timeout=3000, cwd=out, env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [folder] = (out / "edge-detectors-cpu").iterdir()
    return folder


@pytest.mark.slow
def test_every_cell_is_measured_with_its_accuracy_pass(run: Path) -> None:
    results = json.loads((run / "results.json").read_text())
    cells = results["cells"]
    assert len(cells) == 21
    litert = [c for c in cells if c["identity"]["runtime"] == "litert-cpu"]
    assert len(litert) == 3
    cells = [c for c in cells if c["identity"]["runtime"] != "litert-cpu"]  # the LiteRT test below
    for cell in cells:
        assert cell["status"] in ("ok", "unstable"), (cell["cell_id"], cell["reason"])
        assert cell["random_weights"] is True and cell["accuracy"]["images"] == 4
    by_model = {c["identity"]["model"]: c for c in cells if c["identity"]["is_reference"]}
    assert set(by_model) == {"rfdetr-nano", "yolov8n", "ssdlite", "frcnn-mobilenet"}
    assert {m: c["identity"]["resolution"] for m, c in by_model.items()} == {
        "rfdetr-nano": 384, "yolov8n": 640, "ssdlite": 320, "frcnn-mobilenet": 320}
    region = by_model["ssdlite"]["latency"]["timed_region"]
    assert "per-class NMS" in region and "preprocess" in region
    onnx = [c for c in cells if c["identity"]["runtime"] in ("onnxruntime-cpu", "openvino-cpu")]
    assert all(c["prepare"]["artifact"]["opset"] == 17 for c in onnx)


@pytest.mark.slow
def test_openvino_cells_ran_on_the_cpu_in_fp32_and_agree_with_pytorch(run: Path) -> None:
    results = json.loads((run / "results.json").read_text())
    ov = [c for c in results["cells"] if c["identity"]["runtime"] == "openvino-cpu"]
    assert len(ov) == 6
    ort = {(c["identity"]["model"], c["identity"]["nms"]): c for c in results["cells"]
           if c["identity"]["runtime"] == "onnxruntime-cpu"}
    for cell in ov:
        s = cell["settings"]
        assert s["execution_devices"] == ["CPU"] and s["inference_precision"] == "f32", cell["cell_id"]
        assert s["performance_hint"] == "LATENCY" and s["inference_num_threads"] >= 1
        # the same ONNX file as ONNX Runtime's cell of the model
        twin = ort[(cell["identity"]["model"], cell["identity"]["nms"])]
        assert s["artifact_sha256"] == twin["prepare"]["artifact"]["sha256"]
        # detections against the model's own PyTorch reference, on the same images
        agreement = results["derived"][cell["cell_id"]]["detection_agreement"]
        twin_agreement = results["derived"][twin["cell_id"]]["detection_agreement"]
        assert agreement["reference_detections"] > 0
        assert agreement["match_rate"] >= min(0.9, twin_agreement["match_rate"] - 0.05), (cell["cell_id"], agreement)


@pytest.mark.slow
def test_nms_placements_are_timed_apart_and_agree(run: Path) -> None:
    results = json.loads((run / "results.json").read_text())
    yolo = {(c["identity"]["runtime"], c["identity"]["nms"]): c for c in results["cells"]
            if c["identity"]["model"] == "yolov8n" and c["status"] != "skipped"}
    assert len(yolo) in (9, 11)  # 11 with LiteRT's host and device placements
    for (runtime, placement), cell in yolo.items():
        stages = list(cell["latency"]["stages"])
        facts = cell["nms"]
        assert facts["placement"] == placement
        if placement == "host":
            assert stages == ["preprocess", "h2d", "infer", "d2h", "candidates", "nms", "postprocess"]
            assert "numpy" in facts["implementation"]
        elif placement == "device":
            assert stages == ["preprocess", "h2d", "infer", "candidates", "nms", "d2h", "postprocess"]
            assert "torchvision.ops.batched_nms" in facts["implementation"]
        else:
            assert stages == ["preprocess", "h2d", "infer", "d2h", "postprocess"]
            assert facts["candidates"] is None
            assert ("eager" if runtime == "torch" else "NonMaxSuppression") in facts["implementation"]
            assert runtime != "litert-cpu"
        if placement != "in_graph":
            assert facts["candidates"][0] > facts["kept"][0] > 0
    # The same candidates on the host and the device; every placement agrees with the reference.
    assert yolo[("torch", "host")]["nms"]["candidates"] == yolo[("torch", "device")]["nms"]["candidates"]
    derived = results["derived"]
    for (runtime, placement), cell in yolo.items():
        entry = derived[cell["cell_id"]]
        if cell["identity"]["is_reference"]:
            assert (runtime, placement) == ("torch", "host") and entry["role"] == "reference"
            continue
        agreement = entry["detection_agreement"]
        assert agreement["reference_detections"] > 50
        assert agreement["match_rate"] > 0.9, (cell["cell_id"], agreement)
    summary = (run / "summary.md").read_text()
    assert "## NMS placement" in summary
    assert 'id="nms"' in (run / "report.html").read_text()


@pytest.mark.slow
def test_map_recomputed_with_pycocotools_from_the_detections_file(run: Path) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = json.loads((run / "results.json").read_text())
    for cell in results["cells"]:
        if cell["status"] == "skipped":
            continue
        acc = cell["accuracy"]
        detections = json.loads((run / cell["files"]["detections"]).read_text())
        if not detections:
            assert not acc["bbox"]["AP"], cell["cell_id"]
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(acc["dataset"]["annotations"])
            evaluation = COCOeval(gt, gt.loadRes(detections), "bbox")
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        recorded = acc["bbox"]["AP"] or 0.0
        assert abs(max(evaluation.stats[0], 0.0) - recorded) < 1e-9, cell["cell_id"]


@pytest.mark.slow
def test_litert_cells_are_skipped_with_the_reason_or_agree_with_pytorch(run: Path) -> None:
    import importlib.util

    results = json.loads((run / "results.json").read_text())
    litert = {c["identity"]["nms"]: c for c in results["cells"] if c["identity"]["runtime"] == "litert-cpu"}
    exporter_here = importlib.util.find_spec("litert_torch") is not None
    # without the exporter that is the reason given first; with it, the export's missing NMS
    why = "no NMS in the graph" if exporter_here else "litert-torch"
    assert litert["in_graph"]["status"] == "skipped" and why in litert["in_graph"]["reason"]
    for placement in ("host", "device"):
        cell = litert[placement]
        if not exporter_here:
            assert cell["status"] == "skipped" and "litert-torch" in cell["reason"], cell["reason"]
            continue
        assert cell["status"] in ("ok", "unstable"), cell["reason"]
        assert cell["settings"]["xnnpack_delegate"] and cell["settings"]["file_precision"] == "fp32"
        agreement = results["derived"][cell["cell_id"]]["detection_agreement"]
        assert agreement["reference_detections"] > 50 and agreement["match_rate"] > 0.9, agreement
