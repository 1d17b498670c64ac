"""The score threshold chosen on a validation split: the split (a seeded hash of image ids,
the same rank TensorRT's calibration choice and random subsets use), the F1-optimal rule
against a brute-force count, and the accuracy pass that reports mAP on the other split."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pytest

from harness.accuracy.datasets import select_image_ids
from harness.accuracy.splits import ids_sha256, split_image_ids
from harness.accuracy.threshold import choose_threshold, f1_optimal_threshold, match_detections
from harness.results import Accuracy

# ----------------------------------------------------------------------------- the split


def test_the_split_is_disjoint_deterministic_and_independent_of_order() -> None:
    ids = list(range(1, 101))
    a = split_image_ids(ids, fraction=0.3, seed=7)
    b = split_image_ids(list(reversed(ids)), fraction=0.3, seed=7)
    assert a == b
    assert len(a.selected) == 30 and len(a.rest) == 70
    assert not set(a.selected) & set(a.rest) and set(a.selected) | set(a.rest) == set(ids)
    assert split_image_ids(ids, fraction=0.3, seed=8).selected != a.selected
    facts = a.facts()
    assert facts["selected"] == {"images": 30, "ids_sha256": ids_sha256(a.selected)}
    assert ids_sha256([3, 1, 2]) == ids_sha256([1, 2, 3])


def test_lowest_ranks_nest_with_a_random_subset_of_the_same_seed() -> None:
    """TensorRT's calibration choice and `subset: random` take the lowest ranks too: with one
    seed, n of them lie inside a validation split of m >= n and never in the report split."""
    ids = list(range(1000, 1300))
    split = split_image_ids(ids, fraction=0.5, seed=3)
    calibration = select_image_ids(ids, "random", 40, seed=3)
    assert set(calibration) <= set(split.selected)
    assert not set(calibration) & set(split.rest)


def test_the_split_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        split_image_ids([1], fraction=0.5)
    with pytest.raises(ValueError, match="exactly one"):
        split_image_ids([1, 2], n=1, fraction=0.5)
    assert split_image_ids([1, 2, 3], fraction=0.01).selected  # at least one image each side
    assert split_image_ids([1, 2, 3], fraction=0.99).rest


# ----------------------------------------------------------------------------- the F1 rule


def _ann(image: int, cat: int, box: tuple[float, float, float, float], crowd: int = 0) -> dict:
    return {"image_id": image, "category_id": cat, "bbox": list(box), "iscrowd": crowd}


def _det(image: int, cat: int, box: tuple[float, float, float, float], score: float) -> dict:
    return {"image_id": image, "category_id": cat, "bbox": list(box), "score": score}


def test_matching_counts_true_and_false_positives_and_ignores_crowds() -> None:
    anns = [_ann(1, 1, (0, 0, 10, 10)), _ann(1, 1, (50, 50, 10, 10)), _ann(1, 2, (0, 0, 10, 10)),
            _ann(2, 1, (100, 100, 50, 50), crowd=1)]
    dets = [
        _det(1, 1, (0, 0, 10, 10), 0.9),  # TP
        _det(1, 1, (1, 1, 10, 10), 0.8),  # its box is taken: FP
        _det(1, 1, (50, 50, 10, 10), 0.7),  # TP
        _det(1, 3, (0, 0, 10, 10), 0.6),  # another class: FP
        _det(2, 1, (110, 110, 10, 10), 0.5),  # inside a crowd region: ignored
    ]
    scores, outcome, boxes = match_detections(dets, anns, [1, 2], None, 0.5)
    assert boxes == 3
    assert list(scores) == [0.9, 0.8, 0.7, 0.6, 0.5]
    assert list(outcome) == [1, 0, 1, 0, -1]
    # Restricted to the categories evaluated: category 3's detection and category 2's box go.
    scores, outcome, boxes = match_detections(dets, anns, [1, 2], [1], 0.5)
    assert boxes == 2 and list(outcome) == [1, 0, 1, -1]


def _brute_force(scores: np.ndarray, outcome: np.ndarray, boxes: int) -> tuple[float, float]:
    best = (-1.0, 0.0)
    for t in sorted(set(scores.tolist()), reverse=True):
        kept = (scores >= t) & (outcome >= 0)
        tp = int((outcome[kept] == 1).sum())
        fp = int((outcome[kept] == 0).sum())
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / boxes
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        if f1 > best[0] + 1e-12:
            best = (f1, t)
    return best


def test_the_threshold_is_the_f1_optimum_a_brute_force_count_finds() -> None:
    rng = np.random.default_rng(0)
    anns, dets = [], []
    for image in range(1, 41):
        for _ in range(int(rng.integers(1, 5))):
            box = (float(rng.uniform(0, 400)), float(rng.uniform(0, 400)), 40.0, 40.0)
            anns.append(_ann(image, 1, box))
            if rng.random() < 0.8:  # found, with a good score
                dets.append(_det(image, 1, (box[0] + 2, box[1] + 2, 40.0, 40.0), float(rng.uniform(0.3, 1.0))))
        for _ in range(int(rng.integers(0, 6))):  # background clutter, lower scores
            dets.append(_det(image, 1, (float(rng.uniform(500, 900)), 10.0, 30.0, 30.0), float(rng.uniform(0.0, 0.6))))
    scores, outcome, boxes = match_detections(dets, anns, range(1, 41), None, 0.5)
    chosen = f1_optimal_threshold(scores, outcome, boxes)
    f1, t = _brute_force(scores, outcome, boxes)
    assert chosen["threshold"] == pytest.approx(t) and chosen["f1"] == pytest.approx(f1)
    assert 0 < chosen["precision"] <= 1 and 0 < chosen["recall"] <= 1


def test_no_match_gives_no_threshold_and_says_why() -> None:
    anns = [_ann(1, 1, (0, 0, 10, 10))]
    out = choose_threshold([_det(1, 1, (300, 300, 10, 10), 0.9)], anns, [1], [2], category_ids=None)
    assert out["threshold"] is None and out["reason"] == "no detection matched a box"
    out = choose_threshold([], anns, [1], [2], category_ids=None)
    assert out["reason"] == "no detection in the validation split"


def test_the_threshold_comes_from_the_validation_split_only() -> None:
    anns = [_ann(i, 1, (0, 0, 10, 10)) for i in (1, 2, 3, 4)]
    # On the validation images (1, 2) a high-scoring false positive sets the bar above 0.95;
    # the report images (3, 4) would have preferred a low threshold.
    dets = [_det(1, 1, (0, 0, 10, 10), 0.99), _det(2, 1, (0, 0, 10, 10), 0.98), _det(2, 1, (60, 60, 9, 9), 0.97),
            _det(3, 1, (0, 0, 10, 10), 0.5), _det(4, 1, (0, 0, 10, 10), 0.4)]
    out = choose_threshold(dets, anns, [1, 2], [3, 4], category_ids=None)
    assert out["threshold"] == pytest.approx(0.98) and out["validation_f1"] == pytest.approx(1.0)
    assert out["report_recall"] == pytest.approx(0.0) and out["report_precision"] is None


# ----------------------------------------------------------------------------- the accuracy pass


def test_the_accuracy_pass_reports_map_on_the_report_split(tmp_path: Path) -> None:
    from harness.accuracy.datasets import open_dataset
    from harness.accuracy.evaluate import run_accuracy_pass
    from harness.accuracy.sample import make_sample_dataset
    from harness.models.detections import Detections
    from harness.plan.schema import ThresholdSplit

    images_dir, annotations = make_sample_dataset(tmp_path / "sample", n_images=10)
    dataset = open_dataset(images_dir, annotations)
    by_file = {dataset.file_names[i]: i for i in dataset.image_ids}
    anns_by_image: dict[int, list[dict]] = {}
    for a in dataset.raw["annotations"]:
        anns_by_image.setdefault(a["image_id"], []).append(a)
    categories = {int(c["id"]): str(c["name"]) for c in dataset.categories}
    class_names = [categories.get(i) for i in range(max(categories) + 1)]
    calls = itertools.count()

    def predict(images: list[np.ndarray]) -> list[Detections]:
        out = []
        for _ in images:
            image_id = dataset.image_ids[next(calls) % len(dataset.image_ids)]
            anns = anns_by_image.get(image_id, [])
            boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=np.float32).reshape(-1, 4)
            out.append(Detections(boxes_xyxy=boxes, scores=np.linspace(0.9, 0.5, len(anns), dtype=np.float32),
                                  class_ids=np.array([a["category_id"] for a in anns], dtype=np.int64)))
        return out

    assert by_file  # the sample's files are what the loader decodes, in id order
    metrics = run_accuracy_pass(predict, 1, dataset, class_names, "detection", tmp_path / "dets.json",
                                workers=0, log=io.StringIO(), threshold_split=ThresholdSplit(fraction=0.4, seed=1))
    split = split_image_ids(dataset.image_ids, fraction=0.4, seed=1)
    t = metrics["score_threshold"]
    assert t["validation"] == {"images": 4, "ids_sha256": ids_sha256(split.selected)}
    assert t["report"] == {"images": 6, "ids_sha256": ids_sha256(split.rest)}
    assert metrics["images"] == 6  # the mAP is the report split's
    assert t["threshold"] is not None and t["validation_f1"] == pytest.approx(1.0) and t["report_f1"] == pytest.approx(1.0)
    assert metrics["bbox"]["AP"] > 0.9
    Accuracy.model_validate(metrics)
