"""torchvision's detectors as a model source, built offline with random weights: the exported
ONNX file computes what its own PyTorch model computes on the same tensor (max difference
asserted), labels index COCO's 91 slots, a checkpoint loads with weights_only=True and a file
that needs code to unpickle is refused."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest

from harness.errors import WeightsUnavailable
from harness.plan.expand import expand
from harness.plan.schema import Plan

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
ort = pytest.importorskip("onnxruntime")

# Small inputs keep CI sane on 2 cores; the FPN models need a multiple of 32.
CASES = [
    ("ssdlite320_mobilenet_v3_large", 320, {}),
    ("fasterrcnn_mobilenet_v3_large_fpn", 256, {"score_threshold": 0.0, "detections_per_image": 50}),
    ("fasterrcnn_resnet50_fpn", 256, {"score_threshold": 0.0, "detections_per_image": 50}),
    ("retinanet_resnet50_fpn", 256, {"score_threshold": 0.0, "detections_per_image": 50}),
    ("fcos_resnet50_fpn", 256, {"score_threshold": 0.0, "detections_per_image": 50}),
]


def _source(tmp_path: Path, variant: str, res: int, options: dict, weights: str = "random", runtime: str = "torch"):
    from harness.models.torchvision.source import TorchvisionSource

    plan = Plan.model_validate({
        "name": "t", "device": "cpu", "artifacts": str(tmp_path / "artifacts"), "resolutions": [res],
        "models": [{"name": "m", "source": "torchvision", "variant": variant, "weights": weights, "options": options}],
        "runtimes": [runtime],
    })
    [cell] = expand(plan, tmp_path)
    return TorchvisionSource(cell, io.StringIO())


def _image_batch(res: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    image[100:300, 200:500] = (200, 30, 30)  # a flat region, like a real image has
    return image


@pytest.mark.slow
@pytest.mark.parametrize(("variant", "res", "options"), CASES, ids=[c[0] for c in CASES])
def test_the_onnx_export_computes_what_its_pytorch_model_computes(
    tmp_path: Path, variant: str, res: int, options: dict
) -> None:
    source = _source(tmp_path, variant, res, options)
    batch, metas = source.preprocess([_image_batch(res)], res)
    module = source.torch_model("cpu")
    with torch.inference_mode():
        expected = [t.numpy() for t in module(torch.from_numpy(batch))]
    artifact = source.onnx_artifact(tmp_path / "artifacts", dynamic_batch=False, opset=17)
    assert artifact.opset == 17 and artifact.dynamic_batch is False and artifact.dynamic_axes == {}
    got = ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"]).run(None, {"images": batch})
    boxes, scores, labels = (dict(zip(["boxes", "scores", "labels"], got, strict=True))[k]
                             for k in ("boxes", "scores", "labels"))
    kept = expected[1] > 0
    assert kept.sum() > 0, "random weights with a score threshold of 0 must give detections"
    # Same detections in the same order: max differences, as the lesson asks.
    assert (scores > 0).sum() == kept.sum()
    assert np.abs(boxes - expected[0]).max() < 0.05  # pixels
    assert np.abs(scores - expected[1]).max() < 1e-4
    assert (labels == expected[2]).mean() > 0.98
    # Decoded into the one format, in original-image pixels, labels in COCO's 91 slots.
    [dets] = source.decode({"boxes": boxes, "scores": scores, "labels": labels}, metas)
    assert len(dets) == int(kept.sum())
    assert dets.boxes_xyxy[:, [0, 2]].max() <= 640 and dets.boxes_xyxy[:, [1, 3]].max() <= 480
    names = source.class_names
    assert len(names) == 91 and names[1] == "person" and names[90] == "toothbrush" and names[12] is None


def test_a_state_dict_checkpoint_loads_and_code_in_a_pickle_is_refused(tmp_path: Path) -> None:
    source = _source(tmp_path, "ssdlite320_mobilenet_v3_large", 320, {})
    state = source.torch_model("cpu").model.state_dict()
    good = tmp_path / "ssdlite.pth"
    torch.save({"model": state}, good)  # torchvision's reference scripts' layout
    loaded = _source(tmp_path, "ssdlite320_mobilenet_v3_large", 320, {}, weights=str(good))
    assert loaded.random_weights is False
    reloaded = loaded.torch_model("cpu").model.state_dict()
    assert all(torch.equal(state[k], reloaded[k]) for k in state)
    assert loaded.describe()["weights_sha256"]

    class Evil:
        def __reduce__(self):  # what a malicious checkpoint does: run code when unpickled
            return (print, ("this must never run",))

    evil = tmp_path / "evil.pth"
    with evil.open("wb") as handle:
        torch.save({"model": Evil()}, handle, pickle_module=pickle)
    bad = _source(tmp_path, "ssdlite320_mobilenet_v3_large", 320, {}, weights=str(evil))
    with pytest.raises(WeightsUnavailable, match="weights_only"):
        bad.torch_model("cpu")


@pytest.mark.parametrize(
    ("model", "field", "words"),
    [
        ({"variant": "maskrcnn_resnet50_fpn"}, "models[0].variant", "unknown torchvision detector"),
        ({"variant": "fasterrcnn_resnet50_fpn", "resolutions": [330]}, "models[0].resolutions", "multiple of 32"),
        ({"variant": "ssd300_vgg16", "options": {"score_thresold": 0.1}}, "models[0].options.score_thresold",
         "unknown option"),
        ({"variant": "ssd300_vgg16", "options": {"num_classes": 3}}, "models[0].class_names", "needs `class_names`"),
        ({"variant": "ssd300_vgg16", "weights": "missing.pth"}, "models[0].weights", "does not exist"),
    ],
)
def test_plan_errors_name_the_field(tmp_path: Path, model: dict, field: str, words: str) -> None:
    from harness.plan.cells import PlanProblem

    spec = {"name": "m", "source": "torchvision", "weights": "random", **model}
    plan = Plan.model_validate({"name": "t", "device": "cpu", "models": [spec]})
    with pytest.raises(PlanProblem) as err:
        expand(plan, tmp_path)
    assert any(where == field and words in what for where, what in err.value.problems), err.value.problems
