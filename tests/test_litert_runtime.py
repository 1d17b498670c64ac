"""LiteRT (harness/runtimes/litert) and the tflite model source, with the real interpreter on the
example .tflite files (scripts/make_example_tflite.py: the ONNX example's detector, same weights,
converted by TFLiteConverter): FP32 outputs against ONNX Runtime on the ONNX file for the same
image tensor, INT8 input quantization and output dequantization with the file's own scale and
zero point, the precision checked against the file, and the plan errors."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from extras import skip_without_ultralytics

from harness.errors import UserError
from harness.plan.cells import Cell
from harness.plan.expand import expand
from harness.plan.schema import Plan

REPO = Path(__file__).resolve().parents[1]
TFLITE = REPO / "examples" / "tflite"
ONNX_EXAMPLE = REPO / "examples" / "onnx" / "anchor-grid-320.onnx"

pytest.importorskip("ai_edge_litert.interpreter", reason="ai-edge-litert is not installed (the litert extra)")


def _model(file: str, **changes: Any) -> dict[str, Any]:
    return {
        "name": "anchor-grid-tflite", "source": "tflite", "path": str(TFLITE / file), "weights": "random",
        "resolutions": [320],
        "preprocess": {"resize": "letterbox", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
        "decoder": {"kind": "yolo_raw", "score_threshold": 0.0, "top_k": 100, "nms": {"iou_threshold": 0.7},
                    "outputs": {"predictions": "Identity"}},
        **changes,
    }


def _plan(tmp_path: Path, file: str = "anchor-grid-320.tflite", precision: str = "fp32",
          settings: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": "litert-test", "device": "cpu", "models": [_model(file)],
        "runtimes": [{"name": "litert-cpu", "settings": settings if settings is not None else {"threads": 1}}],
        "precisions": [precision], "scopes": ["model"],
        "protocol": {"warmup_iterations": 1, "warmup_seconds": 0.0, "min_iterations": 3, "min_seconds": 0.0},
        "artifacts": str(tmp_path / "artifacts"), "output": str(tmp_path / "reports"),
    }


def _runtime(tmp_path: Path, **kw: Any) -> Any:
    from harness.models.tflite_file.source import TfliteFileSource
    from harness.runtimes.litert.runtime import LiteRtCpuRuntime

    (cell,) = expand(Plan.model_validate(_plan(tmp_path, **kw)), tmp_path)
    assert isinstance(cell, Cell)
    log = io.StringIO()
    return LiteRtCpuRuntime(cell, TfliteFileSource(cell, log), log)


def _image_batch() -> np.ndarray:
    return np.random.default_rng(5).random((1, 3, 320, 320), dtype=np.float32)


def test_fp32_file_matches_the_onnx_model_on_the_same_tensor(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    rt = _runtime(tmp_path)
    assert rt.unavailable_reason(rt.cell) is None
    prep = rt.prepare()
    assert prep["runtime"]["tflite_file"]["sha256"] and prep["load_s"] > 0
    x = _image_batch()
    got = rt.raw_outputs(x)["Identity"]
    (want,) = ort.InferenceSession(str(ONNX_EXAMPLE), providers=["CPUExecutionProvider"]).run(None, {"images": x})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)  # the NCHW batch was laid out as NHWC
    s = rt.settings()
    assert s["num_threads"] == 1 and s["file_precision"] == "fp32"
    assert s["input"]["layout"] == "NHWC" and s["input"]["dtype"] == "float32"
    assert s["xnnpack_delegate"] and s["delegated_subgraphs"] >= 1
    dets = rt.predict([np.full((240, 320, 3), 90, np.uint8)])
    assert len(dets) == 1 and len(dets[0].scores) > 0


def test_without_xnnpack_nothing_is_delegated_and_the_outputs_agree(tmp_path: Path) -> None:
    plain = _runtime(tmp_path, settings={"threads": 1, "xnnpack": False})
    plain.prepare()
    fast = _runtime(tmp_path)
    fast.prepare()
    assert plain.settings()["delegated_subgraphs"] == 0 and not plain.settings()["xnnpack_delegate"]
    x = _image_batch()
    np.testing.assert_allclose(plain.raw_outputs(x)["Identity"], fast.raw_outputs(x)["Identity"], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("file", ["anchor-grid-320-int8.tflite", "anchor-grid-320-int8io.tflite"])
def test_int8_quantizes_the_input_and_dequantizes_the_output_with_the_files_parameters(tmp_path: Path, file: str) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from harness.runtimes.litert.runtime import dequantize, quantize

    rt = _runtime(tmp_path, file=file, precision="int8")
    rt.prepare()
    s = rt.settings()
    assert s["file_precision"] == "int8" and s["input"]["dtype"] == "int8"
    scale, zero = s["input"]["quantization"]
    x = _image_batch()
    fed = rt.to_device(x)
    assert fed.dtype == np.int8 and fed.shape == (1, 320, 320, 3)
    # the affine rule, by hand: round(x / scale) + zero point, clipped
    np.testing.assert_array_equal(fed, np.clip(np.round(x.transpose(0, 2, 3, 1) / scale) + zero, -128, 127))
    got = rt.raw_outputs(x)["Identity"]
    assert got.dtype == np.float32
    # the same quantized input through a bare interpreter, dequantized by hand
    bare = Interpreter(model_path=str(TFLITE / file), num_threads=1)
    bare.allocate_tensors()
    bare.set_tensor(bare.get_input_details()[0]["index"], quantize(x.transpose(0, 2, 3, 1), scale, zero, np.int8))
    bare.invoke()
    out = bare.get_output_details()[0]
    raw = bare.get_tensor(out["index"])
    want = dequantize(raw, *out["quantization"]) if raw.dtype == np.int8 else raw
    np.testing.assert_array_equal(got, want)
    # and INT8 lands near FP32: box rows within a few of the output's quantization steps
    fp32 = _runtime(tmp_path / "f")
    fp32.prepare()
    ref = fp32.raw_outputs(x)["Identity"]
    step = out["quantization"][0] if raw.dtype == np.int8 else 0.5
    assert np.abs(got[:, :4] - ref[:, :4]).max() <= 4 * step + 0.5


def test_precision_must_be_the_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is an int8 file.*ask for precision int8"):
        _runtime(tmp_path, file="anchor-grid-320-int8.tflite", precision="fp32").prepare()
    with pytest.raises(UserError, match="is a fp32 file.*ask for precision fp32"):
        _runtime(tmp_path, precision="int8").prepare()


def _validate(tmp_path: Path, plan: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return subprocess.run([sys.executable, "-m", "harness", "validate", str(path)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"runtimes": [{"name": "litert-cpu", "settings": {"threads": 0}}]}, "threads"),
        ({"runtimes": [{"name": "litert-cpu", "settings": {"xnnpack": "yes"}}]}, "xnnpack"),
        ({"runtimes": [{"name": "litert-cpu", "settings": {"delegate": "gpu"}}]}, "delegate"),
        ({"precisions": ["fp16"]}, "precisions"),
        ({"models": [_model("missing.tflite")]}, "models[0].path"),
        ({"runtimes": [{"name": "onnxruntime-cpu"}]}, "needs an ONNX file"),
    ],
)
def test_bad_plans_fail_validate_naming_the_field(tmp_path: Path, change: dict[str, Any], expected: str) -> None:
    done = _validate(tmp_path, {**_plan(tmp_path), **change})
    assert done.returncode == 2, done.stdout + done.stderr
    assert expected in done.stderr, done.stderr


def test_litert_on_an_onnx_model_is_a_plan_error(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    plan["models"] = [{"name": "o", "source": "onnx", "path": str(ONNX_EXAMPLE), "resolutions": [320],
                       "decoder": {"kind": "yolo_raw"}}]
    done = _validate(tmp_path, plan)
    assert done.returncode == 2 and "needs a LiteRT (.tflite) file" in done.stderr, done.stderr


def _yolo_cell(tmp_path: Path, nms: str = "host") -> Cell:
    plan = Plan.model_validate({
        "name": "yolo-litert", "device": "cpu",
        "models": [{"name": "yolov8n", "source": "yolo", "variant": "yolov8n", "weights": "random",
                    "resolutions": [320], "options": {"score_threshold": 0.00003, "iou_threshold": 0.7, "max_det": 300},
                    "nms": [nms]}],
        "runtimes": [{"name": "litert-cpu", "settings": {"threads": 2}}], "precisions": ["fp32"],
        "scopes": ["end_to_end"], "artifacts": str(tmp_path / "artifacts"),
    })
    (cell,) = expand(plan, tmp_path)
    return cell


def test_a_yolo_model_reaches_litert_only_through_litert_torch(tmp_path: Path) -> None:
    import importlib.util

    from harness.runtimes.litert.runtime import LiteRtCpuRuntime

    reason = LiteRtCpuRuntime.unavailable_reason(_yolo_cell(tmp_path))
    if importlib.util.find_spec("litert_torch") is None:
        assert reason is not None and "litert-torch" in reason and "litert-export" in reason
    else:
        assert reason is None


@pytest.mark.slow
def test_yolo_exported_by_ultralytics_to_litert_matches_its_pytorch_model(tmp_path: Path, monkeypatch: Any) -> None:
    pytest.importorskip("litert_torch", reason="litert-torch is not installed (the litert-export extra)")
    skip_without_ultralytics()
    import torch

    from harness.models.yolo.source import YoloSource
    from harness.runtimes.litert.runtime import LiteRtCpuRuntime

    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "ultralytics-settings"))
    cell = _yolo_cell(tmp_path)
    log = io.StringIO()
    source = YoloSource(cell, log)
    rt = LiteRtCpuRuntime(cell, source, log)
    prep = rt.prepare()
    assert prep["export_s"] > 0 and prep["runtime"]["tflite_file"]["exporter"].endswith("format=litert)")
    s = rt.settings()
    assert s["input"]["layout"] == "NCHW" and s["outputs"][0]["decoder_name"] == "output0"
    x = np.random.default_rng(2).random((1, 3, 320, 320), dtype=np.float32)
    got = rt.raw_outputs(x)["output0"]
    with torch.no_grad():
        want = source.torch_model("cpu")(torch.from_numpy(x))[0].numpy()
    # boxes in input pixels, class scores in [0, 1]: the same network on the same tensor
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=2e-2)
    again = LiteRtCpuRuntime(cell, YoloSource(cell, log), log).prepare()
    assert again["runtime"]["tflite_file"]["cached"] and again["export_s"] is None
