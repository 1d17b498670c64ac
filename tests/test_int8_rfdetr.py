"""Real RF-DETR Nano (random weights) through the harness's INT8: exported by rfdetr, quantized by
onnxruntime.quantization (static QDQ, MinMax, per channel) on two images of the plan's
calibration split, timed and evaluated on the ONNX Runtime CPU EP; the INT8 mAP recomputed with
pycocotools from the run's detections file; the sensitivity pass computed again on the same
files gives the same list.

Measured on the 2-core CI machine: quantizing Nano at 384 px takes about 35 s (most of it ORT's
fixed cost: shape inference, the augmented calibration graph, the quantizer), about 1 s more
per calibration image; the whole module about 2 minutes."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

pytest.importorskip("torch")
pytest.importorskip("rfdetr")
pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("int8-rfdetr")
    plan = {
        "name": "int8-rfdetr", "device": "cpu",
        "models": [{"name": "rfdetr-nano", "variant": "nano", "weights": "random"}],
        "runtimes": [{"name": "onnxruntime-cpu", "settings": {
            "intra_op_num_threads": 2,
            "int8": {"calibration": "minmax", "per_channel": True, "sensitivity_images": 1, "sensitivity_top": 8},
        }}],
        "precisions": ["int8"], "scopes": ["model"],
        "protocol": {"warmup_iterations": 1, "warmup_seconds": 0.0, "min_iterations": 3, "min_seconds": 0.0},
        "dataset": {"sample": True, "sample_images": 5, "calibration": {"images": 2}},
        "accuracy": {"agreement_images": 1, "gallery_images": 0},
        "artifacts": str(tmp / "artifacts"), "output": str(tmp / "reports"), "cell_timeout_s": 900,
    }
    path = tmp / "plan.json"
    path.write_text(json.dumps(plan))
    done = subprocess.run([sys.executable, "-m", "harness", str(path)], capture_output=True, text=True,
                          timeout=1200, cwd=tmp)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [folder] = (tmp / "reports" / "int8-rfdetr").iterdir()
    [cell] = json.loads((folder / "results.json").read_text())["cells"]
    return {"folder": folder, "cell": cell, "tmp": tmp}


def test_rfdetr_nano_is_quantized_and_runs(run: dict[str, Any]) -> None:
    cell = run["cell"]
    assert cell["status"] in ("ok", "unstable"), cell["reason"]
    q = cell["prepare"]["quantization"]
    assert q["mode"] == "static" and q["format"] == "QDQ"
    assert q["quantized"]["by_op"].get("MatMul", 0) > 50 and q["quantized"]["by_op"].get("Conv", 0) >= 1
    assert q["calibration"]["count"] == 2 and q["calibration"]["overlaps_evaluation_set"] is False
    split = cell["accuracy"]["dataset"]
    assert q["calibration"]["image_ids"] == split["calibration_split"]["image_ids"]
    assert not set(split["calibration_split"]["image_ids"]) & set(split["evaluation_split"]["image_ids"])
    assert cell["accuracy"]["images"] == 3
    assert cell["prepare"]["quantize_s"] > 0 and cell["latency"]["stats"]["count"] >= 3
    top = q["sensitivity"]["top"]
    assert len(top) == 8 and q["sensitivity"]["compared"] >= q["quantized"]["count"] // 2
    assert [t["own_error"] for t in top] == sorted((t["own_error"] for t in top), reverse=True)


def test_rfdetr_int8_map_recomputed_with_pycocotools(run: dict[str, Any]) -> None:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    acc = run["cell"]["accuracy"]
    detections = json.loads((run["folder"] / run["cell"]["files"]["detections"]).read_text())
    assert len(detections) == acc["detections"] > 0
    annotations = json.loads(Path(acc["dataset"]["annotations"]).read_text())
    ids = acc["dataset"]["evaluation_split"]["image_ids"]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = annotations
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(detections), "bbox")
        ev.params.imgIds = ids
        ev.params.catIds = sorted({a["category_id"] for a in annotations["annotations"] if a["image_id"] in set(ids)})
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(acc["bbox"]["AP"], abs=1e-9)


def test_rfdetr_sensitivity_list_is_reproducible(run: dict[str, Any]) -> None:
    """The same FP32 and INT8 files and image: the pass computed again ranks the same nodes."""
    from harness.accuracy.loader import decode_image
    from harness.models.preprocess import RFDETR_PREPROCESS, preprocess_images
    from harness.runtimes.onnxruntime.quantize import sensitivity

    cell = run["cell"]
    q = cell["prepare"]["quantization"]
    images_dir = Path(cell["accuracy"]["dataset"]["images_dir"])
    names = {im["id"]: im["file_name"] for im in json.loads(Path(cell["accuracy"]["dataset"]["annotations"]).read_text())["images"]}
    [image_id] = q["sensitivity"]["image_ids"]
    batch, _ = preprocess_images([decode_image(images_dir / names[image_id])], 384, RFDETR_PREPROCESS)
    # RF-DETR's exporter names every node, so the FP32 file quantized is the exported one
    again = sensitivity(Path(cell["prepare"]["artifact"]["path"]), Path(q["model_path"]), q["quantized"]["names"],
                        [batch], cell["prepare"]["artifact"]["input_name"], 8, threads=2)
    assert again["top"] == q["sensitivity"]["top"]
