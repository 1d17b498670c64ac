"""OpenVINO's CPU runtime (harness/runtimes/openvino) on the repo's example ONNX detector, with
real OpenVINO and NNCF: outputs against ONNX Runtime on the same tensor, the properties read back
from the compiled model, INT8 whose executable graph runs its convolution in u8/i8 and calibrates
on the plan's calibration split, FP16 refused from the device's own capabilities, and the plan
errors `bench validate` reports."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.errors import CellSkipped, UserError
from harness.plan.cells import Cell
from harness.plan.expand import expand
from harness.plan.schema import Plan

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "onnx" / "anchor-grid-320.onnx"

ov = pytest.importorskip("openvino", reason="openvino is not installed (the openvino extra)")

MODEL: dict[str, Any] = {
    "name": "anchor-grid-320", "source": "onnx", "path": str(EXAMPLE), "weights": "random", "resolutions": [320],
    "class_names": ["person", "stop sign", "sports ball", "kite", "tv"] * 16,
    "preprocess": {"resize": "letterbox", "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]},
    "decoder": {"kind": "yolo_raw", "score_threshold": 0.0, "top_k": 100, "nms": {"iou_threshold": 0.7},
                "outputs": {"predictions": "output0"}},
}


def _plan(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    plan: dict[str, Any] = {
        "name": "ov-test", "device": "cpu", "models": [MODEL],
        "runtimes": [{"name": "openvino-cpu", "settings": {"threads": 1}}],
        "precisions": ["fp32"],
        "scopes": ["model"],
        "protocol": {"warmup_iterations": 1, "warmup_seconds": 0.0, "min_iterations": 3, "min_seconds": 0.0},
        "dataset": {"sample": True, "sample_images": 8, "calibration": {"images": 3}},
        "accuracy": {"agreement_images": 2, "gallery_images": 0},
        "artifacts": str(tmp_path / "artifacts"),
        "output": str(tmp_path / "reports"),
    }
    plan.update(changes)
    return plan


def _cell(tmp_path: Path, precision: str = "fp32", settings: dict[str, Any] | None = None) -> Cell:
    runtime = {"name": "openvino-cpu", "settings": settings if settings is not None else {"threads": 1}}
    plan = Plan.model_validate(_plan(tmp_path, runtimes=[runtime], precisions=[precision]))
    (cell,) = expand(plan, tmp_path)
    return cell


def _runtime(cell: Cell, log: io.StringIO | None = None) -> Any:
    from harness.models.onnx_file.source import OnnxFileSource
    from harness.runtimes.openvino.runtime import OpenVinoCpuRuntime

    log = log or io.StringIO()
    return OpenVinoCpuRuntime(cell, OnnxFileSource(cell, log), log)


def _validate(tmp_path: Path, plan: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    return subprocess.run([sys.executable, "-m", "harness", "validate", str(path)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)


def _has(capability: str) -> bool:
    return capability in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def test_fp32_matches_onnx_runtime_on_the_same_tensor_and_reads_back_what_ran(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    cell = _cell(tmp_path, settings={"threads": 1, "performance_hint": "latency"})
    rt = _runtime(cell)
    assert rt.unavailable_reason(cell) is None
    prep = rt.prepare()
    assert prep["compile_s"] > 0 and prep["artifact"]["sha256"]
    x = np.random.default_rng(3).random((1, 3, 320, 320), dtype=np.float32)
    got = rt.raw_outputs(x)["output0"]
    session = ort.InferenceSession(str(EXAMPLE), providers=["CPUExecutionProvider"])
    (want,) = session.run(["output0"], {"images": x})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)

    s = rt.settings()
    core = ov.Core()
    assert s["execution_devices"] == ["CPU"]
    assert s["full_device_name"] == core.get_property("CPU", "FULL_DEVICE_NAME")
    assert s["optimization_capabilities"] == list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    assert s["inference_precision"] == "f32"
    assert s["inference_num_threads"] == 1 and s["num_streams"] == 1 and s["performance_hint"] == "LATENCY"
    assert s["runtime_layers"]["Convolution"] == {"f32": 1}
    assert s["integer_compute_layers"] == {}
    # the outputs are copied out of the request: the next inference does not change them
    first = rt.to_host(rt.run_model(rt.to_device(x)))["output0"]
    rt.run_model(rt.to_device(np.zeros_like(x)))
    np.testing.assert_array_equal(first, got)
    # end to end: detections in image pixels
    dets = rt.predict([np.full((240, 320, 3), 90, np.uint8)])
    assert len(dets) == 1 and len(dets[0].scores) > 0
    rt.close()


def test_throughput_hint_and_streams_are_applied_and_read_back(tmp_path: Path) -> None:
    cell = _cell(tmp_path, settings={"threads": 2, "streams": 2, "performance_hint": "throughput"})
    rt = _runtime(cell)
    rt.prepare()
    s = rt.settings()
    assert s["performance_hint"] == "THROUGHPUT" and s["num_streams"] == 2
    assert s["requested"] == {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "THROUGHPUT",
                              "INFERENCE_NUM_THREADS": 2, "NUM_STREAMS": 2}


def test_int8_runs_integer_convolutions_calibrated_on_the_split(tmp_path: Path) -> None:
    pytest.importorskip("nncf", reason="nncf is not installed (the openvino extra)")
    if not _has("INT8"):
        pytest.skip("this CPU's OpenVINO plug-in lists no INT8")
    from harness.accuracy.datasets import load_dataset, split_calibration_set

    cell = _cell(tmp_path, "int8")
    log = io.StringIO()
    rt = _runtime(cell, log)
    prep = rt.prepare()
    q = prep["quantization"]
    # the executable graph, not the IR: the CPU plug-in's convolution kernel runs on u8/i8
    assert set(rt.settings()["runtime_layers"]["Convolution"]) <= {"u8", "i8"}
    assert q["quantized"] == {"count": 1, "by_op": {"Convolution": 1}, "names": []}
    assert q["kept_float"]["count"] == 0
    assert prep["quantize_s"] > 0 and not q["cached"]
    assert rt.settings()["inference_precision"] == "f32"  # the FakeQuantize ops make it integer
    # calibrated on the plan's split, which the accuracy pass never scores
    split = split_calibration_set(cell, None)
    assert q["calibration"]["image_ids"] == split.image_ids and len(split.image_ids) == 3
    dataset = load_dataset(cell.dataset, tmp_path, tmp_path / "cache")  # type: ignore[arg-type]
    assert not set(q["calibration"]["image_ids"]) & set(dataset.image_ids)
    # the typed record accepts the facts
    from harness.results.model import Prepare

    assert Prepare.from_runtime(prep).quantization is not None
    # a second prepare takes the cached IR and computes the same outputs
    x = np.random.default_rng(1).random((1, 3, 320, 320), dtype=np.float32)
    again = _runtime(cell)
    prep2 = again.prepare()
    assert prep2["quantization"]["cached"] and prep2["quantize_s"] is None
    np.testing.assert_array_equal(again.raw_outputs(x)["output0"], rt.raw_outputs(x)["output0"])


def test_int8_keep_float_leaves_the_convolution_in_f32_and_unknown_names_are_refused(tmp_path: Path) -> None:
    pytest.importorskip("nncf", reason="nncf is not installed (the openvino extra)")
    cell = _cell(tmp_path, "int8", settings={"threads": 1, "int8": {"keep_float": ["head/WithoutBiases"]}})
    rt = _runtime(cell)
    # the only convolution in float: nothing runs in integer, and the cell says so rather than
    # recording an "int8" number that ran f32
    with pytest.raises(CellSkipped, match="none of its compute layers in integer precision"):
        rt.prepare()
    bad = _cell(tmp_path, "int8", settings={"int8": {"keep_float": ["haed"]}})
    with pytest.raises(UserError, match=r"int8.keep_float: no operation named `haed` \(did you mean head"):
        _runtime(bad).prepare()


def test_fp16_is_refused_from_the_devices_capabilities_or_runs_in_f16(tmp_path: Path) -> None:
    cell = _cell(tmp_path, "fp16")
    rt = _runtime(cell)
    reason = rt.unavailable_reason(cell)
    if _has("FP16"):
        assert reason is None
        rt.prepare()
        assert rt.settings()["inference_precision"] == "f16"
        return
    assert reason is not None
    assert "OPTIMIZATION_CAPABILITIES" in reason and "without FP16" in reason
    assert ov.Core().get_property("CPU", "FULL_DEVICE_NAME") in reason
    # Past that check, the read-back refuses it too: OpenVINO compiles an f16 hint to f32 here
    # without a word, and the cell must not be recorded as fp16.
    with pytest.raises(CellSkipped, match="compiled the model in f32"):
        rt.prepare()


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"threads": 0}, "threads"),
        ({"threads": "2"}, "threads"),
        ({"streams": -1}, "streams"),
        ({"performance_hint": "fast"}, "performance_hint"),
        ({"num_threads": 2}, "num_threads"),
        ({"int8": {"preset": "accurate"}}, "int8.preset"),
        ({"int8": {"calibration_images": 9}}, "calibration_images"),
    ],
)
def test_bad_settings_fail_validate_naming_the_field(tmp_path: Path, settings: dict[str, Any], expected: str) -> None:
    plan = _plan(tmp_path, runtimes=[{"name": "openvino-cpu", "settings": settings}], precisions=["fp32", "int8"])
    done = _validate(tmp_path, plan)
    assert done.returncode == 2, done.stdout + done.stderr
    assert expected in done.stderr, done.stderr


def test_int8_without_a_calibration_split_fails_validate(tmp_path: Path) -> None:
    plan = _plan(tmp_path, precisions=["int8"], dataset={"sample": True, "sample_images": 8})
    done = _validate(tmp_path, plan)
    assert done.returncode == 2 and "dataset.calibration" in done.stderr, done.stderr


def test_fp16_on_a_cpu_plan_is_accepted_for_openvino_only(tmp_path: Path) -> None:
    ok = _validate(tmp_path, _plan(tmp_path, precisions=["fp32", "fp16", "int8"]))
    assert ok.returncode == 0, ok.stderr
    assert "openvino-cpu__fp16" in ok.stdout
    # eager PyTorch declares fp16 but not on a CPU: still refused at validate
    refused = _validate(tmp_path, _plan(tmp_path, models=[{"name": "n", "variant": "nano", "weights": "random"}],
                                        runtimes=[{"name": "torch"}], precisions=["fp16"], dataset=None))
    assert refused.returncode == 2 and "fp16 needs a GPU" in refused.stderr, refused.stderr


def test_validating_and_help_import_neither_openvino_nor_litert(tmp_path: Path) -> None:
    plan = tmp_path / "p.json"
    plan.write_text(json.dumps(_plan(tmp_path, precisions=["fp32", "int8"])))
    code = (
        "import sys; from harness.plan.load import load_plan\n"
        f"load_plan({str(plan)!r})\n"
        "from harness import cli\n"
        "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = ('openvino', 'nncf', 'ai_edge_litert', 'tensorflow', 'torch')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in heavy)\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr


def test_a_plan_with_openvino_int8_runs_with_bench_and_calibrates_off_the_scored_images(tmp_path: Path) -> None:
    pytest.importorskip("nncf", reason="nncf is not installed (the openvino extra)")
    pytest.importorskip("onnxruntime")
    if not _has("INT8"):
        pytest.skip("this CPU's OpenVINO plug-in lists no INT8")
    plan = _plan(
        tmp_path,
        runtimes=[{"name": "onnxruntime-cpu", "reference": True, "precisions": ["fp32"],
                   "settings": {"intra_op_num_threads": 1}},
                  {"name": "openvino-cpu", "precisions": ["fp32", "int8"], "settings": {"threads": 1}}],
        scopes=["model", "end_to_end"],
        accuracy={"agreement_images": 2, "gallery_images": 0, "agreement_min_score": 0.0},
    )
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    done = subprocess.run([sys.executable, "-m", "harness", str(path)], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [folder] = (tmp_path / "reports" / "ov-test").iterdir()
    results = json.loads((folder / "results.json").read_text())
    cells = {(c["identity"]["runtime"], c["identity"]["precision"], c["identity"]["scope"]): c for c in results["cells"]}
    assert len(cells) == 6 and all(c["status"] in ("ok", "unstable") for c in cells.values())
    int8 = cells[("openvino-cpu", "int8", "model")]
    calibrated = int8["prepare"]["quantization"]["calibration"]["image_ids"]
    split = int8["accuracy"]["dataset"]
    assert calibrated == split["calibration_split"]["image_ids"]
    assert not set(calibrated) & set(split["evaluation_split"]["image_ids"])
    assert int8["settings"]["integer_compute_layers"] == {"Convolution": 1}
    # the end-to-end cell of the same precision reused the quantized model from the cache
    assert cells[("openvino-cpu", "int8", "end_to_end")]["prepare"]["quantization"]["cached"]
    derived = results["derived"]
    fp32 = derived[cells[("openvino-cpu", "fp32", "model")]["cell_id"]]["detection_agreement"]
    assert fp32["match_rate"] == 1.0 and fp32["mean_iou"] > 0.9999  # the same FP32 file as the reference
    quantized = derived[int8["cell_id"]]["detection_agreement"]
    assert quantized["reference_detections"] > 50 and quantized["match_rate"] > 0.8
