"""The TensorRT runtime on real TensorRT and a real GPU (inside the GPU image).

These tests have NOT been run in the project's own workplace, where TensorRT cannot be
installed; elsewhere they skip with the reason. The small ONNX model they build is checked here
too, with ONNX Runtime on the CPU, so the fixture itself is known to be valid.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from harness.models.base import ImageMeta, ModelSource, OnnxArtifact
from harness.models.detections import Detections
from harness.plan.cells import Cell
from harness.plan.load import parse_plan

RES = 32
QUERIES, CLASSES = 10, 3


def tiny_detector_onnx(path: Path, dynamic_batch: bool) -> None:
    """image (B,3,R,R) -> GlobalAveragePool -> Flatten -> two MatMuls -> dets (B,10,4) and
    labels (B,10,3): the output names and ranks of RF-DETR's export, a few hundred bytes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    batch: Any = "batch" if dynamic_batch else 1
    w_dets = numpy_helper.from_array(rng.standard_normal((3, QUERIES * 4)).astype(np.float32), "w_dets")
    w_labels = numpy_helper.from_array(rng.standard_normal((3, QUERIES * CLASSES)).astype(np.float32), "w_labels")
    shape_dets = numpy_helper.from_array(np.array([-1, QUERIES, 4], np.int64), "shape_dets")
    shape_labels = numpy_helper.from_array(np.array([-1, QUERIES, CLASSES], np.int64), "shape_labels")
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w_dets"], ["dets_flat"]),
        helper.make_node("Reshape", ["dets_flat", "shape_dets"], ["dets"]),
        helper.make_node("MatMul", ["flat", "w_labels"], ["labels_flat"]),
        helper.make_node("Reshape", ["labels_flat", "shape_labels"], ["labels"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_detector",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, RES, RES])],
        [
            helper.make_tensor_value_info("dets", TensorProto.FLOAT, [batch, QUERIES, 4]),
            helper.make_tensor_value_info("labels", TensorProto.FLOAT, [batch, QUERIES, CLASSES]),
        ],
        initializer=[w_dets, w_labels, shape_dets, shape_labels],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


class TinySource(ModelSource):
    @property
    def class_names(self) -> list[str | None]:
        return ["a", "b", "c"]

    def preprocess(self, images: Sequence[np.ndarray], resolution: int) -> tuple[np.ndarray, list[ImageMeta]]:
        from harness.models.preprocess import RFDETR_PREPROCESS, preprocess_images

        return preprocess_images(images, resolution, RFDETR_PREPROCESS)

    def decode(self, outputs: dict[str, np.ndarray], metas: list[ImageMeta]) -> list[Detections]:
        raise NotImplementedError

    def onnx_artifact(self, artifacts_dir: Path, dynamic_batch: bool, opset: int = 17) -> OnnxArtifact:
        path = artifacts_dir / "onnx" / f"tiny-{'dyn' if dynamic_batch else 'b1'}.onnx"
        if not path.exists():
            tiny_detector_onnx(path, dynamic_batch)
        data = path.read_bytes()
        return OnnxArtifact(
            path=path, input_name="input", output_names=["dets", "labels"], dynamic_batch=dynamic_batch,
            opset=17, export_s=None, cached=True, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
        )


def make_cell(tmp_path: Path, precision: str = "fp32", settings: dict[str, Any] | None = None,
              dataset: dict[str, Any] | None = None) -> Cell:
    plan: dict[str, Any] = {
        "name": "trt-gpu-test",
        "device": "cuda:0",
        "models": [{"name": "tiny", "source": "onnx", "path": "tiny.onnx", "resolutions": [RES]}],
        "runtimes": [{"name": "tensorrt", "settings": settings or {}}],
        "precisions": [precision],
        "batch_sizes": [1],
    }
    if dataset:
        plan["dataset"] = dataset
    return parse_plan(yaml.safe_dump(plan), "gpu-test", tmp_path).cells[0]


def ort_outputs(path: Path, batch: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": batch}), strict=True))


def test_the_fixture_onnx_is_valid(tmp_path: Path) -> None:
    """Runs everywhere: the model the GPU tests build engines from."""
    path = tmp_path / "tiny.onnx"
    tiny_detector_onnx(path, dynamic_batch=True)
    batch = np.random.default_rng(1).standard_normal((2, 3, RES, RES)).astype(np.float32)
    out = ort_outputs(path, batch)
    assert out["dets"].shape == (2, QUERIES, 4) and out["labels"].shape == (2, QUERIES, CLASSES)
    pooled = batch.mean(axis=(2, 3))
    assert np.allclose(out["dets"].reshape(2, -1), pooled @ np.asarray(_weights(path)["w_dets"]), atol=1e-5)


def _weights(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


@pytest.fixture
def runtime_class():  # type: ignore[no-untyped-def]
    from harness.runtimes.tensorrt.runtime import TensorRTRuntime

    probe = make_cell(Path("/tmp"))
    if reason := TensorRTRuntime.unavailable_reason(probe):
        pytest.skip(reason)
    return TensorRTRuntime


def _run(runtime: Any, batch: np.ndarray) -> dict[str, np.ndarray]:
    return runtime.to_host(runtime.run_model(runtime.to_device(batch)))


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_fp32_engine_matches_onnxruntime_and_is_reused(runtime_class: Any, tmp_path: Path) -> None:
    cell = make_cell(tmp_path)
    runtime = runtime_class(cell, TinySource(cell, io.StringIO()), io.StringIO())
    prep = runtime.prepare()
    assert prep["engine_cache_hit"] is False and prep["build_s"] > 0
    batch = np.random.default_rng(2).standard_normal((1, 3, RES, RES)).astype(np.float32)
    got = _run(runtime, batch)
    want = ort_outputs(Path(prep["onnx"]["path"]), batch)
    for name in ("dets", "labels"):
        assert np.allclose(got[name], want[name], atol=1e-4), name
    settings = runtime.settings()
    assert "TF32" in settings["builder"]["flags"] and settings["versions"]["tensorrt"]
    json.dumps(settings)
    runtime.close()

    again = runtime_class(cell, TinySource(cell, io.StringIO()), io.StringIO())
    prep2 = again.prepare()
    assert prep2["engine_cache_hit"] is True and prep2["engine_key"] == prep["engine_key"]
    assert np.allclose(_run(again, batch)["dets"], got["dets"])
    again.close()


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_fp16_and_cuda_graph(runtime_class: Any, tmp_path: Path) -> None:
    import torch

    from harness.measure.timers import make_timer

    cell = make_cell(tmp_path, precision="fp16", settings={"cuda_graph": True})
    runtime = runtime_class(cell, TinySource(cell, io.StringIO()), io.StringIO())
    prep = runtime.prepare()
    assert prep["cuda_graph"]["used"] is True, prep["cuda_graph"]
    batch = np.random.default_rng(3).standard_normal((1, 3, RES, RES)).astype(np.float32)
    got = _run(runtime, batch)
    want = ort_outputs(Path(prep["onnx"]["path"]), batch)
    assert np.allclose(got["dets"], want["dets"], atol=5e-2, rtol=1e-2)
    assert "FP16" in runtime.settings()["builder"]["flags_set"] and runtime.settings()["cuda_graph_used"] is True

    stream = runtime.timer_stream()
    assert isinstance(stream, torch.cuda.Stream)
    timer = make_timer(stream)
    x = runtime.model_input()
    timer.start()
    runtime.run_model(x)
    timer.stop()
    elapsed_ms, host_ms = timer.read()
    assert elapsed_ms > 0 and host_ms >= 0
    runtime.close()


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_int8_calibrates_and_records(runtime_class: Any, tmp_path: Path) -> None:
    from PIL import Image

    images = tmp_path / "coco" / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(4)
    entries = []
    for i in range(16):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(images / f"{i}.jpg")
        entries.append({"id": i + 1, "file_name": f"{i}.jpg", "height": 40, "width": 48})
    annotations = tmp_path / "coco" / "instances.json"
    annotations.write_text(json.dumps({"images": entries, "annotations": [], "categories": []}))
    cell = make_cell(
        tmp_path, precision="int8", settings={"calibration_images": 8},
        dataset={"images": str(images), "annotations": str(annotations)},
    )
    runtime = runtime_class(cell, TinySource(cell, io.StringIO()), io.StringIO())
    prep = runtime.prepare()
    assert prep["calibration"]["images_fed"] == 8 and len(prep["calibration"]["image_ids"]) == 8
    assert Path(prep["calibration"]["cache_path"]).is_file()
    assert "INT8" in runtime.settings()["builder"]["flags_set"]
    runtime.close()
