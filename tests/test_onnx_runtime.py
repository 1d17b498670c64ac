"""ONNX Runtime runtimes and the user-ONNX model source, on a tiny hand-built detector graph.

The graph stands in for an ultralytics end2end export: it returns two fixed detections
(B, 2, 6) [x1, y1, x2, y2, score, class] in model-input pixels, batched to the input's batch,
plus a term that depends on the input so ORT cannot fold the graph away.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from harness.errors import CellSkipped, UserError
from harness.plan.cells import Cell
from harness.plan.expand import expand
from harness.plan.schema import Plan

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

SIZE = 64
# Two detections in the 64x64 letterboxed input.
FIXED = np.array([[8.0, 24.0, 40.0, 36.0, 0.9, 2.0], [0.0, 16.0, 64.0, 48.0, 0.4, 0.0]], np.float32)


def tiny_detector(path: Path) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Shape", ["images"], ["shape"]),
        helper.make_node("Slice", ["shape", "zero", "one"], ["batch"]),
        helper.make_node("Concat", ["batch", "rest"], ["out_shape"], axis=0),
        helper.make_node("Expand", ["fixed", "out_shape"], ["expanded"]),
        # + 0 * mean(images): depends on the input, changes nothing
        helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero_f"], ["nothing"]),
        helper.make_node("Add", ["expanded", "nothing"], ["output0"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([2, 6], np.int64), "rest"),
        numpy_helper.from_array(FIXED[None], "fixed"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero_f"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", 2, 6])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_cell(tmp_path: Path, runtime: str, **model: Any) -> Cell:
    onnx_path = tiny_detector(tmp_path / "tiny.onnx")
    plan = Plan.model_validate(
        {
            "name": "t",
            "device": "auto",
            "models": [
                {
                    "name": "tiny",
                    "source": "onnx",
                    "path": onnx_path.name,
                    "resolutions": [SIZE],
                    "preprocess": {"resize": "letterbox"},
                    "decoder": {"kind": "yolo_end2end", "score_threshold": 0.1},
                    **model,
                }
            ],
            "runtimes": [runtime],
            "batch_sizes": [2],
            # Not the default (artifacts/ of the working directory): the checkout may be read-only
            # (the images' test services mount it so) and must not collect test output.
            "artifacts": str(tmp_path / "artifacts"),
        }
    )
    (cell,) = [c for c in expand(plan, tmp_path) if c.scope == "model"]
    return cell


def make_runtime(cell: Cell, cls_name: str, log: io.StringIO) -> Any:
    from harness.models.onnx_file.source import OnnxFileSource
    from harness.runtimes.onnxruntime import runtime as ortrt

    return getattr(ortrt, cls_name)(cell, OnnxFileSource(cell, log), log)


def test_cpu_runtime_end_to_end_letterbox_round_trip(tmp_path: Path) -> None:
    log = io.StringIO()
    cell = make_cell(tmp_path, "onnxruntime-cpu")
    rt = make_runtime(cell, "OrtCpuRuntime", log)
    assert rt.unavailable_reason(cell) is None
    prep = rt.prepare()
    assert prep["export_s"] is None and prep["load_s"] > 0
    assert prep["artifact"]["input_name"] == "images" and prep["artifact"]["dynamic_batch"]
    settings = rt.settings()
    assert settings["providers"][0] == "CPUExecutionProvider"
    assert settings["node_placement"].get("CPUExecutionProvider", 0) > 0
    assert settings["opset"] == 17
    assert settings["artifact_sha256"] == prep["artifact"]["sha256"]

    # A 100 x 200 image letterboxed into 64: scale 0.32, pad_y 16.
    images = [np.zeros((100, 200, 3), np.uint8), np.zeros((100, 200, 3), np.uint8)]
    dets = rt.predict(images)
    assert len(dets) == 2
    d = dets[1]
    assert d.class_ids.tolist() == [2, 0]
    np.testing.assert_allclose(d.scores, [0.9, 0.4], rtol=1e-6)
    # (8, 24, 40, 36) in the input -> ((8-0)/.32, (24-16)/.32, 40/.32, (36-16)/.32)
    np.testing.assert_allclose(d.boxes_xyxy[0], [25, 25, 125, 62.5], atol=1e-3)
    np.testing.assert_allclose(d.boxes_xyxy[1], [0, 0, 200, 100], atol=1e-3)

    raw = rt.raw_outputs(np.zeros((2, 3, SIZE, SIZE), np.float32))
    assert list(raw) == ["output0"] and raw["output0"].shape == (2, 2, 6)
    assert rt.timer_stream() is None
    # the class list defaults to COCO's 80 names for YOLO decoders
    assert rt.source.class_names[2] == "car" and len(rt.source.class_names) == 80
    rt.close()


def test_session_options_from_settings_are_applied_and_read_back(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, "onnxruntime-cpu")
    runtime = cell.runtime.model_copy(
        update={
            "settings": {
                "graph_optimization_level": "basic",
                "intra_op_num_threads": 1,
                "execution_mode": "sequential",
            }
        }
    )
    cell = cell.model_copy(update={"runtime": runtime})
    rt = make_runtime(cell, "OrtCpuRuntime", io.StringIO())
    rt.prepare()
    so = rt.settings()["session_options"]
    assert so["graph_optimization_level"] == "ORT_ENABLE_BASIC"
    assert so["intra_op_num_threads"] == 1
    assert so["execution_mode"] == "ORT_SEQUENTIAL"


def test_unknown_setting_is_a_user_error(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, "onnxruntime-cpu")
    cell = cell.model_copy(
        update={"runtime": cell.runtime.model_copy(update={"settings": {"graph_opt": "all"}})}
    )
    with pytest.raises(UserError, match="graph_opt"):
        make_runtime(cell, "OrtCpuRuntime", io.StringIO()).prepare()


def test_missing_onnx_file_is_a_user_error(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, "onnxruntime-cpu")
    cell = cell.model_copy(update={"model": cell.model.model_copy(update={"path": "nope.onnx"})})
    from harness.models.onnx_file.source import OnnxFileSource

    with pytest.raises(UserError, match=r"models\[\]\.path `nope.onnx`"):
        OnnxFileSource(cell, io.StringIO())


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="onnxruntime-gpu installed"
)
@pytest.mark.parametrize(
    "runtime,cls_name,provider",
    [
        ("onnxruntime-cuda", "OrtCudaRuntime", "CUDAExecutionProvider"),
        ("onnxruntime-tensorrt", "OrtTensorrtRuntime", "TensorrtExecutionProvider"),
    ],
)
def test_gpu_providers_report_why_not_on_the_cpu_package(
    tmp_path: Path, runtime: str, cls_name: str, provider: str
) -> None:
    from harness.runtimes.onnxruntime import runtime as ortrt

    cell = make_cell(tmp_path, runtime)
    reason = getattr(ortrt, cls_name).unavailable_reason(cell)
    assert reason is not None
    assert provider in reason and "install onnxruntime-gpu" in reason
    assert ort.__version__ in reason
    if ortrt.ort_distribution() == "onnxruntime":
        assert "package onnxruntime, the CPU build" in reason


class _FakeSession:
    """Stands in for an ORT session that silently fell back, as seen on the H100."""

    printed = ""
    providers: ClassVar[list[str]] = ["CPUExecutionProvider"]
    kwargs: ClassVar[dict[str, Any]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        import sys

        _FakeSession.kwargs = kwargs
        print(self.printed, file=sys.stderr, flush=True)

    def get_providers(self) -> list[str]:
        return list(self.providers)


def test_fallback_to_another_provider_is_a_skip_with_ort_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CPU-only package asked for CUDA: it warns and runs on the CPU. Must skip, not measure."""
    monkeypatch.setattr(
        _FakeSession,
        "printed",
        "UserWarning: Specified provider 'CUDAExecutionProvider' is not in available provider "
        "names. Available providers: 'AzureExecutionProvider, CPUExecutionProvider'",
    )
    monkeypatch.setattr(ort, "InferenceSession", _FakeSession)
    cell = make_cell(tmp_path, "onnxruntime-cuda")
    log = io.StringIO()
    rt = make_runtime(cell, "OrtCudaRuntime", log)
    with pytest.raises(CellSkipped) as info:
        rt.prepare()
    message = str(info.value)
    assert "asked onnxruntime for CUDAExecutionProvider" in message
    assert "['CPUExecutionProvider']" in message and "not in available provider names" in message
    assert _FakeSession.kwargs["enable_fallback"] == 0  # never let ORT retry elsewhere
    # an fp32 cell asks the CUDA EP for IEEE fp32, not its default TF32
    assert _FakeSession.kwargs["provider_options"][0]["use_tf32"] == "0"
    assert "not in available provider names" in log.getvalue()  # the log keeps ORT's words


def test_tensorrt_ep_that_ends_on_cuda_is_a_skip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnxruntime-gpu without libnvinfer: TensorRT EP missing, CUDA EP first."""
    monkeypatch.setattr(
        _FakeSession,
        "printed",
        "2026-11-27 [E:onnxruntime:Default, provider_bridge_ort.cc:2036 TryGetProviderInfo_TensorRT] "
        "Failed to load library libonnxruntime_providers_tensorrt.so with error: "
        "libnvinfer.so.10: cannot open shared object file",
    )
    monkeypatch.setattr(_FakeSession, "providers", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", _FakeSession)
    cell = make_cell(tmp_path, "onnxruntime-tensorrt")
    rt = make_runtime(cell, "OrtTensorrtRuntime", io.StringIO())
    with pytest.raises(CellSkipped, match=r"TensorrtExecutionProvider.*libnvinfer\.so\.10"):
        rt.prepare()


def test_session_creation_error_naming_the_provider_is_a_skip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("Failed to create CUDAExecutionProvider: CUDA driver version is insufficient")

    monkeypatch.setattr(ort, "InferenceSession", failing)
    cell = make_cell(tmp_path, "onnxruntime-cuda")
    with pytest.raises(CellSkipped, match="driver version is insufficient"):
        make_runtime(cell, "OrtCudaRuntime", io.StringIO()).prepare()


@pytest.mark.gpu
def test_cuda_ep_with_iobinding(tmp_path: Path) -> None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("needs onnxruntime-gpu (CUDAExecutionProvider)")
    cell = make_cell(tmp_path, "onnxruntime-cuda")
    log = io.StringIO()
    rt = make_runtime(cell, "OrtCudaRuntime", log)
    try:
        rt.prepare()
    except CellSkipped as exc:
        pytest.skip(f"CUDA EP cannot start here: {exc}")
    settings = rt.settings()
    assert settings["providers"][0] == "CUDAExecutionProvider"
    assert settings["io_binding"] is True
    x = rt.model_input()
    assert x.device_name() == "cuda"
    out = rt.run_model(x)
    host = rt.to_host(out)
    assert host["output0"].shape == (2, 2, 6)
    np.testing.assert_allclose(host["output0"][1], FIXED, rtol=1e-6)
    dets = rt.predict([np.zeros((100, 200, 3), np.uint8)] * 2)
    np.testing.assert_allclose(dets[0].boxes_xyxy[0], [25, 25, 125, 62.5], atol=1e-3)


# Lines as ORT 1.31.1 (onnxruntime-gpu) printed them on an H100, 2026-11-27.
H100_TRT_LOG = (
    "\x1b[1;31m2026-11-27 09:53:55.077861366 [E:onnxruntime:Default, provider_bridge_ort.cc:2430 "
    "operator()] /onnxruntime_src/onnxruntime/core/session/provider_bridge_ort.cc:2043 "
    "onnxruntime::Provider& onnxruntime::ProviderLibrary::Get() [ONNXRuntimeError] : 1 : FAIL : "
    "Failed to load library /tmp/ortsite/onnxruntime/capi/libonnxruntime_providers_tensorrt.so "
    "with error: libnvinfer.so.10: cannot open shared object file: No such file or directory\x1b[m\n"
)
H100_TRT_EXCEPTION = (
    "/onnxruntime_src/onnxruntime/python/onnxruntime_pybind_state.cc:729 void "
    "onnxruntime::python::RegisterTensorRTPluginsAsCustomOps(PySessionOptions&, const "
    "onnxruntime::ProviderOptions&) Please install TensorRT libraries as mentioned in the GPU "
    "requirements page, make sure they're in the PATH or LD_LIBRARY_PATH, and that your GPU is "
    "supported."
)
H100_FP16_PLACEMENT = """\
2026-11-27 [V:onnxruntime:, session_state.cc:1584 VerifyEachNodeIsAssignedToAnEp]  Node(s) placed on [CPUExecutionProvider]. Number of nodes: 3
2026-11-27 [V:onnxruntime:, session_state.cc:1586 VerifyEachNodeIsAssignedToAnEp]   GridSample (/transformer/decoder/layers.0/cross_attn/GridSample)
2026-11-27 [V:onnxruntime:, session_state.cc:1586 VerifyEachNodeIsAssignedToAnEp]   GridSample (/transformer/decoder/layers.1/cross_attn/GridSample)
2026-11-27 [V:onnxruntime:, session_state.cc:1586 VerifyEachNodeIsAssignedToAnEp]   Cast (InsertedPrecisionFreeCast_/x)
2026-11-27 [V:onnxruntime:, session_state.cc:1584 VerifyEachNodeIsAssignedToAnEp]  Node(s) placed on [CUDAExecutionProvider]. Number of nodes: 805
2026-11-27 [V:onnxruntime:, session_state.cc:1586 VerifyEachNodeIsAssignedToAnEp]   Conv (/backbone/Conv)
"""


def test_ort_error_summary_is_short_and_keeps_the_cause() -> None:
    from harness.runtimes.onnxruntime.runtime import summarise_ort_error

    text = summarise_ort_error(H100_TRT_EXCEPTION, H100_TRT_LOG)
    assert text.startswith("Please install TensorRT libraries")
    assert "libonnxruntime_providers_tensorrt.so failed to load: libnvinfer.so.10: cannot open" in text
    assert "onnxruntime_src" not in text and "\x1b" not in text


def test_node_placements_and_op_types_are_parsed() -> None:
    from harness.runtimes.onnxruntime.runtime import node_placements, placed_op_types

    assert node_placements(H100_FP16_PLACEMENT) == {
        "CPUExecutionProvider": 3,
        "CUDAExecutionProvider": 805,
    }
    ops = placed_op_types(H100_FP16_PLACEMENT)
    assert ops["CPUExecutionProvider"] == {"GridSample": 2, "Cast": 1}
