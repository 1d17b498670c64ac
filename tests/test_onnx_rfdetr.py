"""Real RF-DETR Nano (random weights) through rfdetr's exporter and ONNX Runtime's CPU EP.

One model is built and exported once for the module (export takes ~5 s, importing rfdetr ~7 s).
"""

from __future__ import annotations

import copy
import io
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.models.base import ImageMeta, ModelSource, OnnxArtifact
from harness.models.decode import decode_rfdetr
from harness.models.detections import Detections
from harness.models.export import cache_key, export_rfdetr_onnx, file_sha256
from harness.models.preprocess import RFDETR_PREPROCESS, preprocess_images
from harness.plan.cells import Cell
from harness.plan.expand import expand
from harness.plan.schema import Plan

pytestmark = pytest.mark.slow

torch = pytest.importorskip("torch")
rfdetr = pytest.importorskip("rfdetr")
pytest.importorskip("onnxruntime")

RES = 384
KEY = {"model": "nano-test", "variant": "nano", "weights": "random:seed0"}


def _real_image() -> np.ndarray:
    """A real photograph where one is installed (matplotlib's sample), else a smooth synthetic
    scene: resize differences show on natural edges, not on noise alone."""
    try:
        from matplotlib import cbook
        from PIL import Image

        with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as photo:
            return np.asarray(photo.convert("RGB"))
    except Exception:  # noqa: BLE001 - any failure: use the synthetic scene
        yy, xx = np.mgrid[0:437, 0:611]
        img = np.stack([(xx * 255 // 611), (yy * 255 // 437), ((xx + yy) % 256)], axis=-1)
        img[100:250, 200:400] = (250, 30, 30)
        return img.astype(np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from harness.runtimes.onnxruntime.runtime import capture_fds

    torch.manual_seed(0)
    model = rfdetr.RFDETRNano(pretrain_weights=None, device="cpu")
    cache = tmp_path_factory.mktemp("artifacts")
    log = io.StringIO()
    with capture_fds() as terminal:
        artifact = export_rfdetr_onnx(
            lambda: model, cache_dir=cache, key_fields=KEY, resolution=RES, batch=2,
            dynamic_batch=True, log=log,
        )
    return {
        "model": model,
        "artifact": artifact,
        "cache": cache,
        "log": log.getvalue(),
        "terminal": terminal[0],
    }


def test_export_records_the_artifact_and_keeps_the_terminal_clean(exported: dict[str, Any]) -> None:
    art: OnnxArtifact = exported["artifact"]
    assert not art.cached and art.export_s is not None and art.export_s > 0
    assert art.input_name == "input" and art.output_names == ["dets", "labels"]
    assert art.opset == 17 and art.dynamic_batch
    assert art.path.name == "model.onnx" and art.path.parent.parent == exported["cache"] / "onnx"
    assert art.bytes == art.path.stat().st_size and art.sha256 == file_sha256(art.path)
    meta = json.loads((art.path.parent / "meta.json").read_text())
    assert meta["sha256"] == art.sha256 and meta["key_fields"]["resolution"] == RES
    assert meta["key_fields"]["batch"] == "dynamic" and meta["key_fields"]["rfdetr"]
    # rfdetr's export chatter went to the cell log, not to the terminal
    assert "onnx" in exported["log"].lower() and len(exported["log"]) > 200
    assert exported["terminal"] == ""
    # no staging folders left behind
    assert [p.name for p in (exported["cache"] / "onnx").iterdir()] == [art.path.parent.name]


def test_second_export_with_the_same_key_reuses_the_file(exported: dict[str, Any]) -> None:
    def must_not_build() -> Any:
        raise AssertionError("a cache hit must not build the model")

    started = time.perf_counter()
    again = export_rfdetr_onnx(
        must_not_build, cache_dir=exported["cache"], key_fields=KEY, resolution=RES, batch=2,
        dynamic_batch=True, log=io.StringIO(),
    )
    assert time.perf_counter() - started < 3.0
    assert again.cached and again.export_s is None
    assert again.path == exported["artifact"].path and again.sha256 == exported["artifact"].sha256
    # every field that shapes the graph is in the key
    assert cache_key({**KEY, "batch": 1}) != cache_key({**KEY, "batch": "dynamic"})


def test_preprocess_matches_rfdetr_predict_input(exported: dict[str, Any]) -> None:
    """Capture the tensor rfdetr's own predict() feeds its model, compare with ours."""
    model = exported["model"]
    image = _real_image()
    seen: list[Any] = []
    core = model.model.model
    handle = core.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    try:
        model.predict(image, threshold=0.5)
    finally:
        handle.remove()
    assert seen, "rfdetr's predict() did not call the core module"
    captured = seen[0]
    theirs = (captured.tensors if hasattr(captured, "tensors") else captured).detach().numpy()
    ours, (meta,) = preprocess_images([image], RES, RFDETR_PREPROCESS)
    assert ours.shape == theirs.shape
    # Normalised units: 1 grey level is ~0.017; measured 8e-7 on the 600x512 photograph.
    assert np.abs(ours - theirs).max() < 2e-5
    assert (meta.orig_h, meta.orig_w) == image.shape[:2]


class _ExportedSource(ModelSource):
    """The minimal RF-DETR source the ORT runtime needs, backed by the module's export."""

    def __init__(self, cell: Cell, log: Any, artifact: OnnxArtifact):
        super().__init__(cell, log)
        self._artifact = artifact

    @property
    def class_names(self) -> list[str | None]:
        return [None] * 91

    def preprocess(self, images: Sequence[np.ndarray], resolution: int) -> tuple[np.ndarray, list[ImageMeta]]:
        return preprocess_images(images, resolution, RFDETR_PREPROCESS)

    def decode(self, outputs: dict[str, np.ndarray], metas: list[ImageMeta]) -> list[Detections]:
        return decode_rfdetr(outputs, metas)

    def onnx_artifact(self, artifacts_dir: Path, dynamic_batch: bool, opset: int = 17) -> OnnxArtifact:
        assert dynamic_batch  # batch 2 -> the runtime asks for a dynamic batch by default
        return self._artifact


def _cell(tmp_path: Path) -> Cell:
    plan = Plan.model_validate(
        {
            "name": "t",
            "models": [{"name": "nano", "variant": "nano", "weights": "random"}],
            "runtimes": ["onnxruntime-cpu"],
            "batch_sizes": [2],
        }
    )
    return expand(plan, tmp_path)[0]


def _ort_selection(path: Path, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The scores RF-DETR's two-stage TopK ranks and the proposals it picks, from ONNX Runtime:
    both exposed as extra outputs of an in-memory copy of the exported graph."""
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(path))
    topk = next(n for n in graph.graph.node if n.op_type == "TopK")
    graph.graph.output.extend([
        onnx.helper.make_tensor_value_info(topk.input[0], onnx.TensorProto.FLOAT, None),
        onnx.helper.make_tensor_value_info(topk.output[1], onnx.TensorProto.INT64, None),
    ])
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    *_, scores, selection = session.run(None, {"input": batch})
    return scores, selection


def test_ort_cpu_outputs_agree_with_the_torch_module(
    exported: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.runtimes.onnxruntime.runtime import OrtCpuRuntime

    cell = _cell(tmp_path)
    log = io.StringIO()
    rt = OrtCpuRuntime(cell, _ExportedSource(cell, log, exported["artifact"]), log)
    prep = rt.prepare()
    assert prep["artifact"]["sha256"] == exported["artifact"].sha256
    settings = rt.settings()
    assert settings["providers"][0] == "CPUExecutionProvider"
    assert settings["node_placement"]["CPUExecutionProvider"] > 100  # the whole graph, counted
    assert "Node placements" in log.getvalue() or "placed on" in log.getvalue()

    batch = np.random.default_rng(0).standard_normal((2, 3, RES, RES), dtype=np.float32)
    ort_out = rt.raw_outputs(batch)
    assert list(ort_out) == ["dets", "labels"]
    module = copy.deepcopy(exported["model"].model.model).eval()
    module.export()
    # RF-DETR's two-stage selection (TopK over the encoder's per-proposal class score) fills
    # 300 decoder slots in score order, and slot i's content is the learned query_feat[i]: two
    # proposals whose scores tie within float32 rounding (~3e-6 here) and swap slots change
    # those two queries outright and, through decoder self-attention, every query of the image
    # by ~1e-3. Which way such a tie falls depends on summation order (torch's own result
    # flips between 1 and 2 threads). So: ORT must select the same proposals as torch, in a
    # different order only between near-tied scores; then torch, run with ORT's selection,
    # must agree slot by slot to float32 precision (measured 2.9e-6, boxes exact).
    ort_scores, ort_selection = _ort_selection(exported["artifact"].path, batch)
    real_topk = torch.topk
    seen: dict[str, Any] = {}

    def recording_topk(scores: Any, k: int, *args: Any, **kwargs: Any) -> Any:
        result = real_topk(scores, k, *args, **kwargs)
        seen["scores"], seen["selection"] = scores.detach().clone(), result[1]
        return result

    def ort_order_topk(scores: Any, k: int, *args: Any, **kwargs: Any) -> Any:
        assert k == ort_selection.shape[1]
        selection = torch.from_numpy(ort_selection)
        return torch.gather(scores, 1, selection), selection

    with torch.inference_mode():
        monkeypatch.setattr(torch, "topk", recording_topk)
        boxes, logits = module(torch.from_numpy(batch))[:2]
        monkeypatch.setattr(torch, "topk", ort_order_topk)
        boxes_ort_order, logits_ort_order = module(torch.from_numpy(batch))[:2]
    monkeypatch.setattr(torch, "topk", real_topk)
    assert ort_out["dets"].shape == tuple(boxes.shape)
    torch_scores, torch_selection = seen["scores"].numpy(), seen["selection"].numpy()
    assert np.abs(ort_scores - torch_scores).max() < 1e-4  # measured 3.3e-6
    for index in range(ort_selection.shape[0]):
        assert set(ort_selection[index]) == set(torch_selection[index])
        moved = ort_selection[index] != torch_selection[index]
        own = torch_scores[index]
        assert np.all(np.abs(own[ort_selection[index][moved]] - own[torch_selection[index][moved]]) < 2e-5)
    assert np.abs(ort_out["dets"] - boxes_ort_order.numpy()).max() < 1e-4
    assert np.abs(ort_out["labels"] - logits_ort_order.numpy()).max() < 1e-4  # measured 2.9e-6 (|logit| <= 7)

    # end to end through the base class stages: images in, detections in image pixels out
    image = _real_image()
    dets = rt.predict([image, image[: image.shape[0] // 2]])
    assert len(dets) == 2 and len(dets[0]) == 300
    h, w = image.shape[:2]
    assert dets[0].boxes_xyxy[:, 2].max() <= w and dets[0].boxes_xyxy[:, 3].max() <= h
    assert dets[1].boxes_xyxy[:, 3].max() <= h // 2
    rt.close()
