"""COCO evaluation of a runtime's detections, with pycocotools as the reference.

`run_accuracy_pass` is what a worker calls after the latency pass, with the SAME runtime
object's predict: the mAP then belongs to the artifact, precision and runtime that were timed.

Numbers are on pycocotools' 0..1 scale (AP 0.484, not 48.4); entries pycocotools reports as
-1 (no ground truth in that area range) are None. Per-class AP is the mean of the precision
table over IoU 0.50:0.95 and recall, area "all", maxDets 100, exactly as pycocotools' own
summary computes its AP.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from harness import files
from harness.errors import UserError

if TYPE_CHECKING:
    from harness.accuracy.datasets import Dataset
    from harness.models.detections import Detections
    from harness.plan.schema import ThresholdSplit

EVALUATORS = ("pycocotools", "faster-coco-eval")
FAMILY_IOU_TYPES = {
    "detection": ["bbox"],
    "segmentation": ["bbox", "segm"],
    "keypoint": ["bbox", "keypoints"],
}
# The iou type whose AP is the model's headline number (and what gates compare).
PRIMARY_IOU_TYPE = {"detection": "bbox", "segmentation": "segm", "keypoint": "keypoints"}

_DET_STATS = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large"]
_KP_STATS = ["AP", "AP50", "AP75", "AP_medium", "AP_large", "AR", "AR50", "AR75", "AR_medium", "AR_large"]

RANDOM_WEIGHTS_NOTE = (
    "random weights: this model was built without trained weights, so its mAP is meaningless "
    "(near 0); the pipeline ran end to end, but compare latencies only"
)


# -- results format --------------------------------------------------------------------------

def _r(value: float, digits: int = 2) -> float:
    return float(round(float(value), digits))


def to_coco_results(
    detections: Mapping[int, Detections],
    mapping: Mapping[int, int],
    family: str = "detection",
    *,
    max_dets_per_image: int | None = None,
) -> list[dict[str, Any]]:
    """Detections per image id -> COCO results entries (bbox xywh, score, category_id; RLE
    `segmentation` for masks; flat `keypoints` x, y, score). Classes without a dataset
    category are left out. Ordered by image id, then score (highest first)."""
    if family not in FAMILY_IOU_TYPES:
        raise ValueError(f"unknown model family `{family}` (detection, segmentation, keypoint)")
    mask_utils: Any = None
    if family == "segmentation":
        import pycocotools.mask

        mask_utils = pycocotools.mask
    results: list[dict[str, Any]] = []
    for image_id in sorted(detections):
        det = detections[image_id]
        if family == "segmentation" and det.masks is None and len(det):
            raise ValueError(f"image {image_id}: a segmentation model's detections carry no masks")
        if family == "keypoint" and det.keypoints is None and len(det):
            raise ValueError(f"image {image_id}: a keypoint model's detections carry no keypoints")
        kept = 0
        for j in np.argsort(-np.asarray(det.scores, dtype=np.float64), kind="stable"):
            category_id = mapping.get(int(det.class_ids[j]))
            if category_id is None:
                continue
            if max_dets_per_image is not None and kept >= max_dets_per_image:
                break
            kept += 1
            x1, y1, x2, y2 = (float(v) for v in det.boxes_xyxy[j])
            entry: dict[str, Any] = {
                "image_id": int(image_id),
                "category_id": int(category_id),
                "bbox": [_r(x1), _r(y1), _r(x2 - x1), _r(y2 - y1)],
                "score": _r(det.scores[j], 5),
            }
            if mask_utils is not None and det.masks is not None:
                rle = mask_utils.encode(np.asfortranarray(det.masks[j].astype(np.uint8)))
                entry["segmentation"] = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
            if family == "keypoint" and det.keypoints is not None:
                entry["keypoints"] = [
                    v for x, y, s in det.keypoints[j].tolist() for v in (_r(x), _r(y), _r(s, 4))
                ]
            results.append(entry)
    return results


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that a crash leaves either the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_replace(path, json.dumps(data, separators=(",", ":")))


# -- evaluation ------------------------------------------------------------------------------

def evaluator_version(evaluator: str) -> str:
    dist = {"pycocotools": "pycocotools", "faster-coco-eval": "faster-coco-eval"}[evaluator]
    try:
        return f"{evaluator} {metadata.version(dist)}"
    except metadata.PackageNotFoundError:
        return evaluator


def _check_evaluator(evaluator: str) -> None:
    if evaluator not in EVALUATORS:
        raise UserError(f"accuracy.evaluator: unknown evaluator `{evaluator}` (pycocotools, faster-coco-eval)")
    if evaluator == "faster-coco-eval":
        try:
            import faster_coco_eval  # noqa: F401
        except ImportError:
            raise UserError(
                "accuracy.evaluator: faster-coco-eval is not installed here (pip install faster-coco-eval), "
                "or use the default evaluator pycocotools"
            ) from None


def _gt_for(dataset: Dataset, evaluator: str) -> Any:
    if evaluator == "pycocotools":
        return dataset.coco
    # Cached on the dataset object like `coco` (the dataclass is frozen; __dict__ is not).
    cache = dataset.__dict__.setdefault("_coco_by_evaluator", {})
    if evaluator not in cache:
        from harness.accuracy.datasets import make_coco

        cache[evaluator] = make_coco(dataset.raw, evaluator)
    return cache[evaluator]


def _results_for(iou_type: str, results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A private copy of the entries this iou type evaluates (loadRes edits them in place)."""
    if iou_type == "segm":
        # Without `bbox`, loadRes takes area and box from the mask (as detectron2 does);
        # with it, a mask result would get the box's area.
        return [{k: v for k, v in r.items() if k != "bbox"} for r in results if "segmentation" in r]
    if iou_type == "keypoints":
        return [dict(r, keypoints=list(r["keypoints"])) for r in results if "keypoints" in r]
    return [dict(r, bbox=list(r["bbox"])) for r in results]


def _empty_results(gt: Any) -> Any:
    """A detections object with no detections: evaluates to AP 0 where ground truth exists."""
    dt = type(gt)()
    dt.dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"]),
                  "annotations": []}
    dt.createIndex()
    return dt


def _none_if_negative(value: float) -> float | None:
    return None if value < 0 else float(value)


def _evaluate_one(gt: Any, results: list[dict[str, Any]], iou_type: str, image_ids: list[int],
                  category_ids: list[int], names: dict[int, str], evaluator: str) -> dict[str, Any]:
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results) if results else _empty_results(gt)
        if evaluator == "pycocotools":
            from pycocotools.cocoeval import COCOeval

            ev = COCOeval(gt, dt, iou_type)
        else:
            from faster_coco_eval import COCOeval_faster

            ev = COCOeval_faster(gt, dt, iou_type, print_function=lambda *a, **k: None)
        ev.params.imgIds = list(image_ids)
        ev.params.catIds = list(category_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    names_order = _KP_STATS if iou_type == "keypoints" else _DET_STATS
    metrics: dict[str, Any] = {
        name: _none_if_negative(float(v)) for name, v in zip(names_order, ev.stats, strict=False)
    }
    precision = np.asarray(ev.eval["precision"])  # [iou T, recall R, class K, area A, maxDets M]
    per_class: dict[str, float | None] = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[names.get(int(cat_id), str(cat_id))] = float(p.mean()) if p.size else None
    metrics["per_class"] = per_class
    return metrics


def evaluate(
    dataset: Dataset,
    results: Sequence[dict[str, Any]],
    family: str = "detection",
    evaluator: str = "pycocotools",
    *,
    category_ids: Sequence[int] | None = None,
    image_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """COCO metrics of `results` (COCO results entries) on the dataset's selected images (or
    on `image_ids`, a part of them: the report split).

    `category_ids` restricts the evaluation to those categories (the ones the model knows;
    see categories.check_mapping); None evaluates every category of the dataset.
    Returns {"bbox": {...}, "segm"/"keypoints": {...} by family, "per_class": {name: AP} of
    the primary iou type, "primary": iou type, "images": n, "evaluator": "pycocotools x.y"}."""
    if family not in FAMILY_IOU_TYPES:
        raise ValueError(f"unknown model family `{family}` (detection, segmentation, keypoint)")
    _check_evaluator(evaluator)
    gt = _gt_for(dataset, evaluator)
    names = dataset.category_names
    cats = sorted(int(c) for c in (category_ids if category_ids is not None else names))
    evaluated = list(dataset.image_ids) if image_ids is None else sorted(int(i) for i in image_ids)
    out: dict[str, Any] = {
        "images": len(evaluated),
        "evaluator": evaluator_version(evaluator),
        "primary": PRIMARY_IOU_TYPE[family],
        "notes": [],
    }
    for iou_type in FAMILY_IOU_TYPES[family]:
        type_cats = cats
        if iou_type == "segm" and not dataset.has_segmentation:
            out["notes"].append("the dataset has no segmentation polygons or masks: mask AP not computed")
            out["primary"] = "bbox"
            continue
        if iou_type == "keypoints":
            kp_cats = {int(c["id"]) for c in dataset.categories if c.get("keypoints")}
            type_cats = [c for c in cats if c in kp_cats]
            if not type_cats:
                out["notes"].append("the dataset has no keypoint categories: keypoint AP not computed")
                out["primary"] = "bbox"
                continue
            for ann in gt.dataset["annotations"]:  # pycocotools needs it on every keypoint annotation
                if ann.get("category_id") in kp_cats and "num_keypoints" not in ann:
                    ann["num_keypoints"] = int(sum(1 for v in ann.get("keypoints", [])[2::3] if v > 0))
        out[iou_type] = _evaluate_one(gt, _results_for(iou_type, results), iou_type,
                                      evaluated, type_cats, names, evaluator)
    out["per_class"] = dict(out[out["primary"]]["per_class"])
    if not out["notes"]:
        del out["notes"]
    return out


# -- the accuracy pass -----------------------------------------------------------------------

def run_accuracy_pass(
    predict: Callable[[list[np.ndarray]], list[Detections]],
    batch: int,
    dataset: Dataset,
    class_names: Sequence[str | None],
    family: str,
    out_path: Path,
    *,
    evaluator: str = "pycocotools",
    workers: int = 2,
    log: TextIO | None = None,
    random_weights: bool = False,
    max_dets_per_image: int | None = None,
    threshold_split: ThresholdSplit | None = None,
) -> dict[str, Any]:
    """Predict every selected image with `predict` (the runtime object the latency pass
    timed), `batch` images per call: the last batch is padded to `batch` by repeating its last
    image and the extra outputs are dropped, so fixed-batch artifacts run unchanged.
    Writes the COCO results JSON to `out_path` (atomically), evaluates it over every annotated
    class of the dataset (COCO's mAP: a class the model cannot predict scores AP 0, and
    `mapping` names it), and returns the metrics (harness.results.Accuracy) plus
    predict_images_per_s (images / time inside predict: preprocessing, the forward pass and
    output decoding; JPEG decoding is outside), wall_images_per_s (the whole pass, waiting for
    JPEG decoding included) and results_file.

    With `threshold_split` the selected images are split (harness.accuracy.splits): the
    F1-optimal score threshold is chosen on the validation split and every mAP is computed on
    the report split alone (`score_threshold` says which images, by their ids' hash)."""
    from harness.accuracy.categories import check_mapping
    from harness.accuracy.loader import iter_batches

    def say(message: str) -> None:
        if log is not None:
            log.write(f"[accuracy] {message}\n")
            log.flush()

    if batch < 1:
        raise ValueError("batch must be at least 1")
    _check_evaluator(evaluator)
    check = check_mapping(class_names, dataset.categories, dataset.annotated_category_ids)
    if check.warning:
        say(check.warning)
    say(f"{len(dataset.image_ids)} images, batch {batch}, {workers} decode workers")

    detections: dict[int, Detections] = {}
    predict_s = 0.0
    padded_images = 0
    started = time.perf_counter()
    for image_ids, images in iter_batches(dataset, batch, workers=workers):
        real = len(images)
        padded = list(images) + [images[-1]] * (batch - real)
        padded_images += batch - real
        t0 = time.perf_counter()
        outputs = predict(padded)
        predict_s += time.perf_counter() - t0
        if len(outputs) != len(padded):
            raise RuntimeError(f"predict returned {len(outputs)} results for {len(padded)} images")
        for image_id, det in zip(image_ids, outputs[:real], strict=True):
            detections[image_id] = det
    wall_s = time.perf_counter() - started
    n = len(detections)

    results = to_coco_results(detections, check.mapping, family, max_dets_per_image=max_dets_per_image)
    write_json_atomic(Path(out_path), results)
    t0 = time.perf_counter()
    report_ids: list[int] | None = None
    threshold: dict[str, Any] | None = None
    if threshold_split is not None:
        threshold, report_ids = _score_threshold(dataset, results, threshold_split, check.annotated_category_ids)
        say(f"score threshold {threshold.get('threshold')} (F1 {threshold.get('validation_f1')}) on "
            f"{threshold['validation']['images']} validation images; mAP on the {len(report_ids)} others")
    metrics = evaluate(dataset, results, family, evaluator, category_ids=check.annotated_category_ids,
                       image_ids=report_ids)
    eval_s = time.perf_counter() - t0
    fingerprint = dataset.fingerprint if report_ids is None else _fingerprint(dataset, report_ids)
    metrics.update(
        {
            "predict_images_per_s": n / predict_s if predict_s > 0 else None,
            "wall_images_per_s": n / wall_s if wall_s > 0 else None,
            "predict_s": predict_s,
            "wall_s": wall_s,
            "eval_s": eval_s,
            "batch": batch,
            "padded_images": padded_images,
            "detections": len(results),
            "results_file": str(out_path),
            "dataset": {
                "annotations": str(dataset.annotations),
                "images_dir": str(dataset.images_dir),
                "fingerprint": fingerprint,
                **_split_facts(dataset, report_ids),
            },
            "mapping": check.as_dict(),
            "random_weights": random_weights,
        }
    )
    if random_weights:
        metrics["note"] = RANDOM_WEIGHTS_NOTE
    if threshold is not None:
        metrics["score_threshold"] = threshold
    primary = metrics.get(metrics["primary"], {})
    say(f"{metrics['primary']} AP {primary.get('AP')} AP50 {primary.get('AP50')}; "
        f"{metrics['predict_images_per_s'] or 0:.3g} images/s in predict() ({wall_s:.1f} s wall, eval {eval_s:.1f} s)")
    return metrics


def _split_facts(dataset: Dataset, report_ids: Sequence[int] | None) -> dict[str, Any]:
    """The dataset's splits, with the evaluation split narrowed to the images mAP was computed
    on when a score-threshold split took the others."""
    from harness.accuracy.calibration import ids_sha256

    facts = dataset.split_facts()
    if report_ids is not None:
        ids = sorted(report_ids)
        facts["evaluation_split"] = {"count": len(ids), "sha256": ids_sha256(ids), "image_ids": ids}
    return facts


def _fingerprint(dataset: Dataset, image_ids: Sequence[int]) -> str:
    """The dataset fingerprint's rule, over the images evaluated (the report split)."""
    import hashlib

    text = f"{dataset.annotations.name}:" + ",".join(map(str, sorted(image_ids)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _score_threshold(dataset: Dataset, results: Sequence[dict[str, Any]], spec: ThresholdSplit,
                     category_ids: Sequence[int] | set[int]) -> tuple[dict[str, Any], list[int]]:
    """(the record's `accuracy.score_threshold`, the report split's ids)."""
    from harness.accuracy.splits import split_image_ids
    from harness.accuracy.threshold import choose_threshold

    try:
        split = split_image_ids(dataset.image_ids, fraction=spec.fraction, seed=spec.seed)
    except ValueError as exc:
        raise UserError(f"accuracy.threshold_split: {exc}") from None
    chosen = choose_threshold(results, dataset.raw["annotations"], split.selected, split.rest,
                              category_ids=category_ids, iou_threshold=spec.iou_threshold)
    facts = split.facts()
    return {
        **chosen,
        "iou_threshold": spec.iou_threshold,
        "seed": spec.seed,
        "fraction": spec.fraction,
        "validation": facts["selected"],
        "report": facts["rest"],
    }, list(split.rest)
