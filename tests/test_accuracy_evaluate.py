"""COCO evaluation: perfect predictions, agreement with pycocotools called directly, the pass."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from oracle import OraclePredictor, ground_truth_detections

from harness.accuracy.categories import class_mapping
from harness.accuracy.coco_names import coco80_class_names, coco91_class_names
from harness.accuracy.datasets import Dataset, open_dataset
from harness.accuracy.evaluate import evaluate, run_accuracy_pass, to_coco_results
from harness.accuracy.loader import iter_batches
from harness.accuracy.sample import make_sample_dataset
from harness.errors import UserError
from harness.models.detections import Detections

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2
FAMILIES = ["detection", "segmentation", "keypoint"]
PRIMARY = {"detection": "bbox", "segmentation": "segm", "keypoint": "keypoints"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    images_dir, instances = make_sample_dataset(tmp_path_factory.mktemp("eval") / "s", n_images=12, seed=1)
    return open_dataset(images_dir, instances)


def _perturbed(dataset: Dataset, family: str, seed: int = 0) -> dict[int, Detections]:
    """Ground truth with jittered boxes, random scores, some wrong classes, shifted masks,
    noisy keypoints, and extra false positives."""
    rng = np.random.default_rng(seed)
    out = {}
    for image_id, det in ground_truth_detections(dataset, coco91_class_names(), family).items():
        n = len(det)
        boxes = det.boxes_xyxy + rng.normal(0, 5, (n, 4)).astype(np.float32)
        classes = det.class_ids.copy()
        classes[rng.random(n) < 0.2] = 3  # "car": a class the sample never has
        extra = rng.uniform(0, 200, (2, 4)).astype(np.float32)
        extra[:, 2:] += extra[:, :2]
        masks = keypoints = None
        if det.masks is not None:
            masks = np.concatenate([np.roll(det.masks, 4, axis=2), np.zeros((2, *det.masks.shape[1:]), bool)])
        if det.keypoints is not None:
            kp = det.keypoints + np.concatenate([rng.normal(0, 4, (n, 17, 2)), np.zeros((n, 17, 1))], axis=2)
            keypoints = np.concatenate([kp, np.zeros((2, 17, 3))]).astype(np.float32)
        out[image_id] = Detections(
            boxes_xyxy=np.concatenate([boxes, extra]),
            scores=rng.uniform(0.05, 1.0, n + 2).astype(np.float32),
            class_ids=np.concatenate([classes, [1, 72]]).astype(np.int64),
            masks=masks,
            keypoints=keypoints,
        )
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_perfect_predictions_give_ap_one(dataset: Dataset, family: str) -> None:
    names = coco91_class_names()
    results = to_coco_results(ground_truth_detections(dataset, names, family), class_mapping(names, dataset.categories), family)
    metrics = evaluate(dataset, results, family)
    assert metrics["primary"] == PRIMARY[family]
    for iou_type in {"bbox", PRIMARY[family]}:
        m = metrics[iou_type]
        assert m["AP"] == pytest.approx(1.0) and m["AP50"] == pytest.approx(1.0) and m["AP75"] == pytest.approx(1.0)
        assert all(v == pytest.approx(1.0) for v in m["per_class"].values())
    assert metrics["images"] == 12 and metrics["evaluator"].startswith("pycocotools ")
    assert set(metrics["per_class"]) == ({"person"} if family == "keypoint" else
                                         {"person", "stop sign", "sports ball", "kite", "tv"})


def _direct_pycocotools(instances: Path, results_file: Path, iou_type: str, image_ids: list[int]) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(instances))
        dt = gt.loadRes(str(results_file))
        ev = COCOeval(gt, dt, iou_type)
        ev.params.imgIds = image_ids
        if iou_type == "keypoints":
            ev.params.catIds = [1]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


@pytest.mark.parametrize("family", FAMILIES)
def test_perturbed_predictions_equal_pycocotools_called_directly(dataset: Dataset, family: str, tmp_path: Path) -> None:
    names = coco91_class_names()
    results = to_coco_results(_perturbed(dataset, family), class_mapping(names, dataset.categories), family)
    results_file = tmp_path / "results.json"
    results_file.write_text(json.dumps(results))
    ours = evaluate(dataset, json.loads(results_file.read_text()), family)
    # Mask AP is computed as rfdetr's and detectron2's evaluators do: from entries without
    # `bbox`, so pycocotools takes each detection's area from its mask, not from its box.
    masks_only = tmp_path / "masks_only.json"
    masks_only.write_text(json.dumps([{k: v for k, v in r.items() if k != "bbox"} for r in results]))
    for iou_type in ["bbox", PRIMARY[family]]:
        direct = _direct_pycocotools(dataset.annotations, masks_only if iou_type == "segm" else results_file,
                                     iou_type, dataset.image_ids)
        got = [v for k, v in ours[iou_type].items() if k != "per_class"]
        assert got == [None if d < 0 else float(d) for d in direct], iou_type
        assert 0.05 < ours[iou_type]["AP"] < 0.95  # really perturbed, really scored


def test_subset_and_empty_results(dataset: Dataset) -> None:
    sub = open_dataset(dataset.images_dir, dataset.annotations, "first", 4)
    names = coco91_class_names()
    results = to_coco_results(ground_truth_detections(dataset, names), class_mapping(names, dataset.categories))
    # Detections on images outside the subset do not count: still perfect on the 4.
    metrics = evaluate(sub, results)
    assert metrics["images"] == 4 and metrics["bbox"]["AP"] == pytest.approx(1.0)
    empty = evaluate(dataset, [], "segmentation")
    assert empty["bbox"]["AP"] == 0.0 and empty["segm"]["AP"] == 0.0
    assert all(v == 0.0 for v in empty["per_class"].values())


def test_faster_coco_eval_agrees_with_pycocotools(dataset: Dataset) -> None:
    pytest.importorskip("faster_coco_eval")
    names = coco91_class_names()
    for family in FAMILIES:
        results = to_coco_results(_perturbed(dataset, family, seed=4), class_mapping(names, dataset.categories), family)
        ref = evaluate(dataset, results, family, "pycocotools")
        fast = evaluate(dataset, results, family, "faster-coco-eval")
        assert fast["evaluator"].startswith("faster-coco-eval ")
        for iou_type in ["bbox", PRIMARY[family]]:
            for key, value in ref[iou_type].items():
                if key == "per_class":
                    for name, ap in value.items():
                        assert fast[iou_type]["per_class"][name] == pytest.approx(ap, abs=1e-4)
                elif value is None:
                    assert fast[iou_type][key] is None
                else:
                    assert fast[iou_type][key] == pytest.approx(value, abs=1e-4), (family, iou_type, key)


def test_unknown_evaluator_is_a_user_error(dataset: Dataset) -> None:
    with pytest.raises(UserError, match="accuracy.evaluator: unknown evaluator"):
        evaluate(dataset, [], evaluator="detectron")


def test_results_format(dataset: Dataset) -> None:
    masks = np.zeros((3, 30, 50), bool)
    masks[0, 20:30, 10:20] = True
    det = Detections(
        boxes_xyxy=np.array([[10, 20, 40, 60], [0, 0, 5, 5], [1, 1, 2, 2]], np.float32),
        scores=np.array([0.5, 0.9, 0.7], np.float32),
        class_ids=np.array([1, 72, 3], np.int64),
        masks=masks,
    )
    mapping = {1: 1, 72: 72}  # class 3 ("car") is not in the dataset: left out
    res = to_coco_results({7: det}, mapping, "segmentation")
    assert [r["category_id"] for r in res] == [72, 1]  # by score
    assert res[1]["bbox"] == [10.0, 20.0, 30.0, 40.0] and res[1]["score"] == 0.5
    from pycocotools import mask as mask_utils

    assert mask_utils.area(res[1]["segmentation"]) == 100 and res[1]["segmentation"]["size"] == [30, 50]
    assert len(to_coco_results({7: det}, mapping, max_dets_per_image=1)) == 1
    with pytest.raises(ValueError, match="no masks"):
        to_coco_results({7: Detections(det.boxes_xyxy, det.scores, det.class_ids)}, mapping, "segmentation")


def test_loader_batches_in_order_and_pads_nothing(dataset: Dataset) -> None:
    seen: list[int] = []
    sizes = []
    for ids, images in iter_batches(dataset, 5, workers=2, prefetch=2):
        assert len(ids) == len(images)
        for image_id, img in zip(ids, images, strict=True):
            assert img.dtype == np.uint8 and img.shape == (*dataset.sizes[image_id], 3)
        seen += ids
        sizes.append(len(ids))
    assert seen == dataset.image_ids and sizes == [5, 5, 2]
    # Stopping early does not hang.
    gen = iter_batches(dataset, 2, workers=2)
    next(gen)
    gen.close()


@pytest.mark.parametrize("family", ["detection", "keypoint"])
def test_run_accuracy_pass_with_a_perfect_predictor(dataset: Dataset, family: str, tmp_path: Path) -> None:
    names = coco80_class_names()  # a contiguous model this time
    predict = OraclePredictor(dataset, names, family)
    out = tmp_path / "detections" / "cell.json"
    log = io.StringIO()
    metrics = run_accuracy_pass(predict, 5, dataset, names, family, out, workers=2, log=log, random_weights=True)
    assert predict.calls == [5, 5, 5]  # 12 images: the last batch padded from 2 to 5
    assert metrics["padded_images"] == 3
    assert metrics[PRIMARY[family]]["AP"] == pytest.approx(1.0)
    assert metrics["predict_images_per_s"] > 0 and metrics["wall_images_per_s"] > 0
    assert metrics["results_file"] == str(out)
    saved = json.loads(out.read_text())
    assert {r["image_id"] for r in saved} <= set(dataset.image_ids) and len(saved) == metrics["detections"]
    assert metrics["random_weights"] is True and "meaningless" in metrics["note"]
    assert "[accuracy]" in log.getvalue()
    json.dumps(metrics)  # goes into the cell record as is


def test_run_accuracy_pass_rejects_unknown_classes_before_predicting(dataset: Dataset, tmp_path: Path) -> None:
    calls = []

    def predict(images: list[np.ndarray]) -> list[Detections]:
        calls.append(len(images))
        return [Detections.empty() for _ in images]

    with pytest.raises(UserError, match="knows none"):
        run_accuracy_pass(predict, 1, dataset, ["hammer", "wrench"], "detection", tmp_path / "x.json")
    assert calls == [] and not (tmp_path / "x.json").exists()


def test_a_class_the_model_cannot_predict_counts_in_the_headline_map(dataset: Dataset, tmp_path: Path) -> None:
    """A misspelt class name ("sports bal") leaves the model unable to predict that class. The
    headline stays COCO's mAP over every annotated class (that class scores 0, not left out,
    which would raise the mAP without a word), and the record names the class."""
    from harness.results import Accuracy

    names = [("sports bal" if n == "sports ball" else n) for n in coco80_class_names()]
    annotated = {dataset.category_names[c] for c in dataset.annotated_category_ids}
    assert "sports ball" in annotated
    log = io.StringIO()
    metrics = run_accuracy_pass(OraclePredictor(dataset, names), 4, dataset, names, "detection",
                                tmp_path / "d.json", workers=0, log=log)
    k = len(annotated)
    assert metrics["bbox"]["AP"] == pytest.approx((k - 1) / k)  # perfect on the rest, 0 on the one
    assert metrics["per_class"]["sports ball"] == 0.0
    mapping = Accuracy.model_validate(metrics).mapping
    assert mapping is not None and mapping.unpredictable_classes == ["sports ball"]
    assert (mapping.annotated_classes, mapping.predictable_classes, mapping.ap_over) == (k, k - 1, "annotated")
    assert "sports ball" in log.getvalue() and "AP 0" in log.getvalue()
