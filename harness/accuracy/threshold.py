"""The score threshold a deployment keeps detections above, chosen where it may be chosen: on a
validation split disjoint from the images the mAP is reported on.

The rule (F1-optimal, box IoU): over the validation images, every detection is ranked by score
(highest first) and matched greedily, like COCO's evaluation at a single IoU: a detection is a
true positive when it overlaps a not-yet-matched, non-crowd ground-truth box of its own class
by at least `iou_threshold`, the best such box taken; a detection that matches nothing but
covers a crowd region (intersection over the detection's own area >= `iou_threshold`) is
ignored; every other detection is a false positive. Keeping the detections scoring at least t
gives precision TP/(TP+FP) and recall TP/(all non-crowd boxes); the threshold is the t with
the highest F1 = 2PR/(P+R), ties going to the higher t (fewer detections for the same F1).
Only the scores detections actually have are candidates. The same threshold is then applied to
the report split, whose precision, recall and F1 are what a deployment can expect from it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

Box = tuple[float, float, float, float]  # COCO xywh


def _intersection(dets: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Area of overlap of each detection (rows) with each box (columns), boxes as xywh."""
    dx1, dy1 = dets[:, 0:1], dets[:, 1:2]
    dx2, dy2 = dx1 + dets[:, 2:3], dy1 + dets[:, 3:4]
    bx1, by1 = boxes[:, 0], boxes[:, 1]
    bx2, by2 = bx1 + boxes[:, 2], by1 + boxes[:, 3]
    iw = np.clip(np.minimum(dx2, bx2) - np.maximum(dx1, bx1), 0, None)
    ih = np.clip(np.minimum(dy2, by2) - np.maximum(dy1, by1), 0, None)
    return np.asarray(iw * ih)


def _iou_matrix(dets: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU of each detection (rows) with each box (columns), boxes as xywh."""
    inter = _intersection(dets, gts)
    union = dets[:, 2:3] * dets[:, 3:4] + gts[:, 2] * gts[:, 3] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _crowd_cover(dets: np.ndarray, crowds: np.ndarray) -> np.ndarray:
    """Intersection over the detection's area, against each crowd region (COCO's crowd rule)."""
    area = dets[:, 2:3] * dets[:, 3:4]
    return np.where(area > 0, _intersection(dets, crowds) / np.where(area > 0, area, 1), 0.0)


def match_detections(
    results: Iterable[Mapping[str, Any]],
    annotations: Iterable[Mapping[str, Any]],
    image_ids: Iterable[int],
    category_ids: Iterable[int] | None,
    iou_threshold: float,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(scores, outcome, boxes) over `image_ids`: each detection's score and outcome (1 true
    positive, 0 false positive, -1 ignored on a crowd region), scores descending; `boxes` the
    number of non-crowd ground-truth boxes (recall's denominator). Categories outside
    `category_ids` (None: all) are left out on both sides."""
    images = set(int(i) for i in image_ids)
    cats = None if category_ids is None else set(int(c) for c in category_ids)
    gt: dict[tuple[int, int], list[Box]] = defaultdict(list)
    crowd: dict[tuple[int, int], list[Box]] = defaultdict(list)
    for ann in annotations:
        key = (int(ann["image_id"]), int(ann["category_id"]))
        if key[0] not in images or (cats is not None and key[1] not in cats):
            continue
        box = tuple(float(v) for v in ann["bbox"])
        (crowd if ann.get("iscrowd") else gt)[key].append(box)  # type: ignore[arg-type]
    dets: dict[tuple[int, int], list[tuple[float, Box]]] = defaultdict(list)
    for r in results:
        key = (int(r["image_id"]), int(r["category_id"]))
        if key[0] not in images or (cats is not None and key[1] not in cats):
            continue
        dets[key].append((float(r["score"]), tuple(float(v) for v in r["bbox"])))  # type: ignore[arg-type]
    scores: list[float] = []
    outcome: list[int] = []
    for key, found in dets.items():
        found.sort(key=lambda d: -d[0])
        d = np.asarray([b for _, b in found], dtype=np.float64).reshape(-1, 4)
        s = [sc for sc, _ in found]
        boxes = np.asarray(gt.get(key, []), dtype=np.float64).reshape(-1, 4)
        ious = _iou_matrix(d, boxes) if len(boxes) else np.zeros((len(d), 0))
        crowds = np.asarray(crowd.get(key, []), dtype=np.float64).reshape(-1, 4)
        cover = _crowd_cover(d, crowds) if len(crowds) else np.zeros((len(d), 0))
        taken = np.zeros(len(boxes), dtype=bool)
        for j in range(len(d)):
            row = np.where(taken, -1.0, ious[j]) if len(boxes) else ious[j]
            best = int(np.argmax(row)) if row.size else -1
            if best >= 0 and row[best] >= iou_threshold:
                taken[best] = True
                outcome.append(1)
            elif cover.shape[1] and float(cover[j].max()) >= iou_threshold:
                outcome.append(-1)
            else:
                outcome.append(0)
            scores.append(s[j])
    n_boxes = sum(len(v) for v in gt.values())
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return np.asarray(scores, dtype=np.float64)[order], np.asarray(outcome, dtype=np.int64)[order], n_boxes


def _curve(scores: np.ndarray, outcome: np.ndarray, boxes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Candidate thresholds (distinct scores, descending) with precision, recall and F1 when
    keeping every detection scoring at least each one."""
    keep = outcome >= 0
    scores, outcome = scores[keep], outcome[keep]
    if scores.size == 0:
        empty = np.zeros(0)
        return empty, empty, empty, empty
    tp = np.cumsum(outcome == 1)
    fp = np.cumsum(outcome == 0)
    # The last detection of each run of equal scores: a threshold keeps all of them or none.
    last = np.r_[scores[1:] != scores[:-1], True]
    thresholds, tp, fp = scores[last], tp[last], fp[last]
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / boxes if boxes else np.zeros_like(precision)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.where(precision + recall > 0, precision + recall, 1), 0.0)
    return thresholds, precision, recall, f1


def f1_optimal_threshold(scores: np.ndarray, outcome: np.ndarray, boxes: int) -> dict[str, Any]:
    """{threshold, precision, recall, f1} at the F1-optimal threshold; threshold None (with a
    reason) when no detection is a true positive."""
    thresholds, precision, recall, f1 = _curve(scores, outcome, boxes)
    if thresholds.size == 0 or not boxes or float(f1.max()) <= 0:
        why = "no ground-truth box in the validation split" if not boxes else (
            "no detection in the validation split" if thresholds.size == 0 else "no detection matched a box")
        return {"threshold": None, "precision": None, "recall": None, "f1": None, "reason": why}
    best = int(np.flatnonzero(f1 == f1.max())[0])  # descending thresholds: the first is the highest
    return {"threshold": float(thresholds[best]), "precision": float(precision[best]),
            "recall": float(recall[best]), "f1": float(f1[best])}


def at_threshold(scores: np.ndarray, outcome: np.ndarray, boxes: int, threshold: float) -> dict[str, float | None]:
    """Precision, recall and F1 keeping the detections scoring at least `threshold`."""
    kept = (scores >= threshold) & (outcome >= 0)
    tp, fp = int((outcome[kept] == 1).sum()), int((outcome[kept] == 0).sum())
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / boxes if boxes else None
    f1 = (2 * precision * recall / (precision + recall)) if precision and recall else (0.0 if boxes else None)
    return {"precision": precision, "recall": recall, "f1": f1}


def choose_threshold(
    results: Sequence[Mapping[str, Any]],
    annotations: Sequence[Mapping[str, Any]],
    validation_ids: Sequence[int],
    report_ids: Sequence[int],
    *,
    category_ids: Iterable[int] | None,
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """The F1-optimal threshold on `validation_ids`, and what it gives on `report_ids`."""
    cats = None if category_ids is None else sorted(set(int(c) for c in category_ids))
    v_scores, v_outcome, v_boxes = match_detections(results, annotations, validation_ids, cats, iou_threshold)
    chosen = f1_optimal_threshold(v_scores, v_outcome, v_boxes)
    out: dict[str, Any] = {
        "threshold": chosen["threshold"],
        "validation_precision": chosen["precision"],
        "validation_recall": chosen["recall"],
        "validation_f1": chosen["f1"],
        "detections_considered": int(v_scores.size),
    }
    if chosen["threshold"] is None:
        out["reason"] = chosen["reason"]
        return out
    r_scores, r_outcome, r_boxes = match_detections(results, annotations, report_ids, cats, iou_threshold)
    held = at_threshold(r_scores, r_outcome, r_boxes, chosen["threshold"])
    out.update({"report_precision": held["precision"], "report_recall": held["recall"], "report_f1": held["f1"]})
    return out
