"""Ultralytics YOLO as a model source, offline: built from its YAML with random weights,
exported by Ultralytics' own exporter (raw head and NMS in the graph), each ONNX file computing
what its PyTorch model computes on the same tensor (max difference asserted); the three NMS
placements give the same detections; a .pt checkpoint loads with weights_only=True and one
that needs code to unpickle is refused. Ultralytics runs offline, its settings in a temporary
folder."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from extras import skip_without_ultralytics

from harness.errors import WeightsUnavailable
from harness.plan.expand import expand
from harness.plan.schema import Plan

torch = pytest.importorskip("torch")
skip_without_ultralytics()
ort = pytest.importorskip("onnxruntime")

RES = 320  # a multiple of 32, small for CI
OPTIONS = {"score_threshold": 0.00005, "iou_threshold": 0.7, "max_det": 100}


@pytest.fixture(autouse=True)
def _ultralytics_settings(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("ultralytics-settings")))
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.setenv("YOLO_AUTOINSTALL", "false")


def _sources(tmp_path: Path, weights: str = "random", nms: list[str] | None = None, variant: str = "yolov8n"):
    from harness.models.yolo.source import YoloSource

    plan = Plan.model_validate({
        "name": "t", "device": "cpu", "artifacts": str(tmp_path / "artifacts"), "resolutions": [RES],
        "models": [{"name": "y", "source": "yolo", "variant": variant, "weights": weights, "options": OPTIONS}],
        "runtimes": ["torch"], "nms": nms or ["host", "device", "in_graph"], "scopes": ["end_to_end"],
    })
    return {cell.nms: YoloSource(cell, io.StringIO()) for cell in expand(plan, tmp_path)}


def _image() -> np.ndarray:
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    image[50:250, 100:400] = (30, 160, 40)
    return image


@pytest.mark.slow
def test_exports_compute_what_pytorch_computes_and_placements_agree(tmp_path: Path) -> None:
    from harness.models import nms as nms_mod

    sources = _sources(tmp_path)
    host = sources["host"]
    batch, metas = host.preprocess([_image()], RES)
    detections = {}
    for placement in ("host", "in_graph"):
        source = sources[placement]
        with torch.inference_mode():
            expected = source.torch_model("cpu")(torch.from_numpy(batch))[0].numpy()
        artifact = source.onnx_artifact(tmp_path / "artifacts", dynamic_batch=False, opset=17)
        assert artifact.opset == 17 and artifact.output_names == ["output0"]
        got = ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"]).run(None, {"images": batch})[0]
        assert got.shape == expected.shape == ((1, 84, 2100) if placement == "host" else (1, 100, 6))
        if placement == "host":
            # The raw head: boxes in input pixels, then class sigmoids.
            assert np.abs(got[:, :4] - expected[:, :4]).max() < 0.05
            assert np.abs(got[:, 4:] - expected[:, 4:]).max() < 1e-4
        else:
            # After NMS a near-tie decided the other way moves every later row: compare the
            # detections (matched by class and IoU), not rows by position.
            from harness.accuracy.agreement import detection_agreement

            live = expected[0, :, 4] > 0
            assert live.sum() > 10 and abs(int((got[0, :, 4] > 0).sum()) - int(live.sum())) <= 2
            agreement = detection_agreement(source.decode({"output0": expected}, metas),
                                            source.decode({"output0": got}, metas), min_score=0.0)
            assert agreement["match_rate"] > 0.97 and agreement["max_abs_score_diff"] < 1e-4, agreement
        detections[placement] = source.decode({"output0": expected}, metas)[0]
        if placement == "host":
            # The device placement: the same raw outputs through torchvision's batched_nms.
            stages = nms_mod.NmsStages(host.nms_config(), "device")
            cands = stages.count(nms_mod.candidates_torch(torch.from_numpy(expected), OPTIONS["score_threshold"]))
            kept = nms_mod.to_host(stages.device_nms(cands))
            detections["device"] = nms_mod.finish(kept, metas, OPTIONS["max_det"])[0]
            assert stages.candidates[0] > len(detections["device"]) > 10
    from harness.accuracy.agreement import detection_agreement

    for other in ("device", "in_graph"):
        agreement = detection_agreement([detections["host"]], [detections[other]], min_score=0.0)
        assert agreement["match_rate"] > 0.97, (other, agreement)
        assert agreement["max_abs_score_diff"] < 1e-3


def test_random_weights_are_the_same_in_every_build_and_give_spread_scores(tmp_path: Path) -> None:
    a, b = (_sources(tmp_path / name, nms=["host"])["host"] for name in ("a", "b"))
    x = torch.from_numpy(a.preprocess([_image()], RES)[0])
    with torch.inference_mode():
        ya, yb = (s.torch_model("cpu")(x)[0] for s in (a, b))
    assert torch.equal(ya, yb)
    scores = ya[0, 4:].max(dim=0).values
    assert float(scores.max()) < 1.0 and len(torch.unique(scores)) > 1000  # no ties, none saturated
    assert a.class_names[0] == "person" and len(a.class_names) == 80
    assert a.describe()["batchnorm_calibration"]
    # The ship checklist's preprocessing item reads this (on the H200 run it said "missing").
    pre = a.describe()["preprocess"]
    assert pre["resize"] == "letterbox" and pre["letterbox_fill"] == 114 and pre["channel_order"] == "rgb"
    assert pre["mean"] == [0.0, 0.0, 0.0] and pre["std"] == [1.0, 1.0, 1.0] and pre["value_scale"] == 255.0


def test_a_checkpoint_loads_safely_and_code_in_a_pickle_is_refused(tmp_path: Path) -> None:
    source = _sources(tmp_path / "random", nms=["host"])["host"]
    good = tmp_path / "best.pt"
    torch.save({"model": source._model, "epoch": 3}, good)  # Ultralytics' checkpoint layout
    loaded = _sources(tmp_path / "loaded", weights=str(good), nms=["host"])["host"]
    x = torch.from_numpy(source.preprocess([_image()], RES)[0])
    with torch.inference_mode():
        assert torch.equal(source.torch_model("cpu")(x)[0], loaded.torch_model("cpu")(x)[0])
    assert loaded.random_weights is False and "weights_only" in loaded.describe()["weights_loader"]
    # The checkpoint is a yolov8n: run as another variant, the record would name the wrong model.
    wrong = _sources(tmp_path / "wrong", weights=str(good), nms=["host"], variant="yolo11n")["host"]
    with pytest.raises(WeightsUnavailable, match=r"variant is `yolo11n`, but .* holds a `yolov8n`"):
        wrong.torch_model("cpu")

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, evil, pickle_module=pickle)
    bad = _sources(tmp_path / "bad", weights=str(evil), nms=["host"])["host"]
    with pytest.raises(WeightsUnavailable, match="weights_only"):
        bad.torch_model("cpu")
    assert not marker.exists()


def test_plan_errors_name_the_field(tmp_path: Path) -> None:
    from harness.plan.cells import PlanProblem

    cases = [
        ({"variant": "yolov8n-seg"}, "models[0].variant", "not supported yet"),
        ({"variant": "yolov9t"}, "models[0].variant", "unknown YOLO variant"),
        ({"variant": "yolov8n", "resolutions": [300]}, "models[0].resolutions", "multiple of 32"),
        ({"variant": "yolov8n", "options": {"conf": 0.1}}, "models[0].options.conf", "unknown option"),
        ({"variant": None}, "models[0]", "needs `variant`"),
    ]
    for model, field, words in cases:
        spec = {"name": "y", "source": "yolo", "weights": "random", **model}
        with pytest.raises(PlanProblem) as err:
            expand(Plan.model_validate({"name": "t", "device": "cpu", "models": [spec]}), tmp_path)
        assert any(where == field and words in what for where, what in err.value.problems), err.value.problems


@pytest.mark.gpu
def test_device_nms_on_the_gpu_keeps_what_the_host_keeps(tmp_path: Path) -> None:
    from harness.models import nms as nms_mod

    host = _sources(tmp_path, nms=["host"])["host"]
    batch, metas = host.preprocess([_image()], RES)
    with torch.inference_mode():
        raw = host.torch_model("cuda:0")(torch.from_numpy(batch).to("cuda:0"))[0]
    config = host.nms_config()
    stages = nms_mod.NmsStages(config, "device", device="cuda:0")
    cands = stages.count(nms_mod.candidates_torch(raw, config.score_threshold))
    device = nms_mod.finish(nms_mod.to_host(stages.device_nms(cands)), metas, config.top_k)[0]
    [on_host] = host.decode({"output0": raw.float().cpu().numpy()}, metas)
    assert stages.candidates[0] > len(device) > 10
    assert "cuda:0" in stages.implementation()
    np.testing.assert_array_equal(device.class_ids, on_host.class_ids)
    np.testing.assert_allclose(device.boxes_xyxy, on_host.boxes_xyxy, atol=1e-3)


def test_importing_ultralytics_leaves_pillow_as_it_was() -> None:
    """Ultralytics patches PIL.Image.open to pip-install a HEIF plugin on an unidentified image;
    after the harness imports it, garbage bytes still get Pillow's own error, in a fresh process
    (where the patch has not been undone by an earlier import)."""
    import subprocess
    import sys

    code = (
        "import io, PIL.Image as I\n"
        "from harness.models.yolo.source import import_ultralytics\n"
        "import_ultralytics()\n"
        "from ultralytics.nn.tasks import DetectionModel\n"
        "try:\n"
        "    I.open(io.BytesIO(b'GIF89a not really'))\n"
        "except I.UnidentifiedImageError:\n"
        "    print('pillow')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "YOLO_CONFIG_DIR": "/tmp/bench-yolo-settings-test"})
    assert done.returncode == 0 and done.stdout.strip() == "pillow", done.stderr[-2000:]
