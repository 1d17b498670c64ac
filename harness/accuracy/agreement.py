"""How closely an artifact's outputs agree with its model's reference (PyTorch FP32).

Two levels, because they fail differently:
  - detection agreement: the final boxes, matched greedily per image and class by IoU. It
    shows what a user sees (a box lost, a box shifted, a score moved) and is what the gallery
    ranks images by;
  - raw output agreement: the model's output tensors compared element by element, Polygraphy
    style (absolute and relative difference, pass when every element is within atol OR rtol).
    It catches drift before it flips a detection.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness import files

if TYPE_CHECKING:
    from harness.models.detections import Detections

REL_EPSILON = 1e-12  # keeps the relative difference finite where the reference is 0


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: (N, 4) x (M, 4) -> (N, M)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    # Two identical boxes are the same box even when it has no area (a box clipped to the
    # image border): IoU 1, not 0, or identical detections would count as lost on both sides.
    same = np.all(a[:, None, :] == b[None, :, :], axis=-1)
    return np.where(same, 1.0, iou)


def match_detections(
    reference: Detections, other: Detections, iou_threshold: float = 0.5, min_score: float = 0.3
) -> tuple[list[tuple[int, int, float]], np.ndarray, np.ndarray]:
    """Greedy same-class matching of one image: highest-IoU pairs first, each box used once.
    Returns (matches as (ref index, other index, IoU), kept ref indices, kept other indices);
    only boxes scoring at least `min_score` take part."""
    ref_keep = np.flatnonzero(np.asarray(reference.scores) >= min_score)
    oth_keep = np.flatnonzero(np.asarray(other.scores) >= min_score)
    if not len(ref_keep) or not len(oth_keep):
        return [], ref_keep, oth_keep
    iou = box_iou(reference.boxes_xyxy[ref_keep], other.boxes_xyxy[oth_keep])
    same_class = np.asarray(reference.class_ids)[ref_keep][:, None] == np.asarray(other.class_ids)[oth_keep][None, :]
    iou = np.where(same_class, iou, -1.0)
    candidates = np.argwhere(iou >= iou_threshold)
    # Highest IoU first; ties by index so the result does not depend on the sort's stability.
    order = sorted(candidates.tolist(), key=lambda rc: (-iou[rc[0], rc[1]], rc[0], rc[1]))
    used_r: set[int] = set()
    used_o: set[int] = set()
    matches: list[tuple[int, int, float]] = []
    for r, o in order:
        if r in used_r or o in used_o:
            continue
        used_r.add(r)
        used_o.add(o)
        matches.append((int(ref_keep[r]), int(oth_keep[o]), float(iou[r, o])))
    return matches, ref_keep, oth_keep


def detection_agreement(
    reference: Sequence[Detections],
    other: Sequence[Detections],
    *,
    iou_threshold: float = 0.5,
    min_score: float = 0.3,
) -> dict[str, Any]:
    """Agreement of two runs over the same images (lists in the same image order).

    Per image, the disagreement score is: unmatched boxes on either side + sum(1 - IoU) +
    sum(|score difference|) over matched pairs. 0 means the same boxes with the same scores;
    every lost or extra box adds 1."""
    if len(reference) != len(other):
        raise ValueError(f"agreement needs the same images: {len(reference)} reference vs {len(other)} other")
    ious: list[float] = []
    score_diffs: list[float] = []
    per_image: list[float] = []
    n_ref = n_other = 0
    for ref, oth in zip(reference, other, strict=True):
        matches, ref_keep, oth_keep = match_detections(ref, oth, iou_threshold, min_score)
        n_ref += len(ref_keep)
        n_other += len(oth_keep)
        image_ious = [m[2] for m in matches]
        image_diffs = [abs(float(ref.scores[r]) - float(oth.scores[o])) for r, o, _ in matches]
        ious += image_ious
        score_diffs += image_diffs
        unmatched = (len(ref_keep) - len(matches)) + (len(oth_keep) - len(matches))
        per_image.append(float(unmatched + sum(1 - v for v in image_ious) + sum(image_diffs)))
    matched = len(ious)
    return {
        "images": len(reference),
        "iou_threshold": iou_threshold,
        "min_score": min_score,
        "reference_detections": n_ref,
        "other_detections": n_other,
        "matched": matched,
        "unmatched_reference": n_ref - matched,
        "unmatched_other": n_other - matched,
        # Share of all boxes (either side) that found a partner: 1.0 = same set of boxes.
        "match_rate": (2 * matched / (n_ref + n_other)) if (n_ref + n_other) else 1.0,
        "mean_iou": float(np.mean(ious)) if ious else None,
        "min_iou": float(np.min(ious)) if ious else None,
        "mean_abs_score_diff": float(np.mean(score_diffs)) if score_diffs else None,
        "max_abs_score_diff": float(np.max(score_diffs)) if score_diffs else None,
        "per_image": per_image,
    }


def raw_output_agreement(
    reference: Mapping[str, np.ndarray],
    other: Mapping[str, np.ndarray],
    *,
    atol: float = 1e-5,
    rtol: float = 1e-5,
) -> dict[str, Any]:
    """Element-wise comparison of two sets of named output tensors.

    Per output present in both with the same shape: max_abs_diff, max_rel_diff
    (|a - b| / (|a| + 1e-12), a = reference), mean_abs_diff, mismatches (elements outside both
    atol and rtol, Polygraphy's rule) and passed. A shape mismatch or a name on one side only is
    reported, not raised. NaNs: an element that is NaN on exactly one side is a mismatch."""
    other, reordered = align_queries(reference, other)
    outputs: dict[str, Any] = {}
    for name in sorted(set(reference) & set(other)):
        a = np.asarray(reference[name])
        b = np.asarray(other[name])
        if a.shape != b.shape:
            outputs[name] = {"shape_mismatch": [list(a.shape), list(b.shape)], "passed": False}
            continue
        a64 = a.astype(np.float64)
        b64 = b.astype(np.float64)
        nan_a, nan_b = np.isnan(a64), np.isnan(b64)
        both_nan = nan_a & nan_b
        finite = ~(nan_a | nan_b)
        absdiff = np.abs(a64 - b64)
        reldiff = absdiff / (np.abs(a64) + REL_EPSILON)
        bad = (absdiff > atol) & (reldiff > rtol)
        mismatches = int(np.count_nonzero(bad & finite) + np.count_nonzero(nan_a ^ nan_b))
        fa, fr = absdiff[finite], reldiff[finite]
        outputs[name] = {
            "shape": list(a.shape),
            "dtype": [str(a.dtype), str(b.dtype)],
            "max_abs_diff": float(fa.max()) if fa.size else None,
            "max_rel_diff": float(fr.max()) if fr.size else None,
            "mean_abs_diff": float(fa.mean()) if fa.size else None,
            "mismatches": mismatches,
            "nan_mismatches": int(np.count_nonzero(nan_a ^ nan_b)),
            "both_nan": int(np.count_nonzero(both_nan)),
            "elements": int(a.size),
            "passed": mismatches == 0,
        }
    only_ref = sorted(set(reference) - set(other))
    only_other = sorted(set(other) - set(reference))
    return {
        "atol": atol,
        "rtol": rtol,
        # DETR-style models emit queries in an order picked by score: near-ties swap between
        # runtimes, so the queries are matched by box first (see align_queries).
        "query_alignment": "queries matched by box (order-independent)" if reordered is not None else None,
        "queries_reordered": reordered,
        "outputs": outputs,
        "only_in_reference": only_ref,
        "only_in_other": only_other,
        "passed": bool(outputs) and all(o["passed"] for o in outputs.values()) and not only_ref and not only_other,
    }


def align_queries(
    reference: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray], box_key: str = "dets"
) -> tuple[dict[str, np.ndarray], int | None]:
    """Reorder `other`'s queries to match `reference`'s, image by image, by greedy nearest box
    (L1 over cxcywh), and apply the same order to every output shaped (images, queries, ...).

    RF-DETR keeps its top proposals by score; with near-equal scores two runtimes can emit the
    same detections in a different order, and an element-wise comparison by position would
    report a large, false disagreement. Returns (aligned outputs, number of queries moved), or
    the outputs unchanged and None when there are no comparable boxes."""
    a = reference.get(box_key)
    b = other.get(box_key)
    if a is None or b is None or np.shape(a) != np.shape(b) or np.ndim(a) != 3:
        return dict(other), None
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    images, queries = a.shape[:2]
    order = np.empty((images, queries), np.int64)
    for i in range(images):
        cost = np.abs(a[i][:, None, :] - b[i][None, :, :]).sum(-1)  # (Q ref, Q other)
        flat = np.argsort(cost, axis=None, kind="stable")
        taken_ref = np.zeros(queries, bool)
        taken_other = np.zeros(queries, bool)
        matched = 0
        for index in flat:
            r, o = divmod(int(index), queries)
            if taken_ref[r] or taken_other[o]:
                continue
            order[i, r] = o
            taken_ref[r] = taken_other[o] = True
            matched += 1
            if matched == queries:
                break
    aligned: dict[str, np.ndarray] = {}
    for name, value in other.items():
        value = np.asarray(value)
        if value.ndim >= 2 and value.shape[:2] == (images, queries):
            aligned[name] = np.take_along_axis(value, order.reshape(images, queries, *([1] * (value.ndim - 2))), axis=1)
        else:
            aligned[name] = value
    moved = int(np.count_nonzero(order != np.arange(queries)[None, :]))
    return aligned, moved


# -- helpers for the worker and for derive ---------------------------------------------------

def collect_raw_outputs(
    run: Callable[[np.ndarray], Mapping[str, np.ndarray]], inputs: np.ndarray, batch: int
) -> dict[str, np.ndarray]:
    """Raw outputs for a host NCHW `inputs` (the fixed agreement images), run `batch` at a time
    (the last chunk padded by repeating its last image, extras dropped) and concatenated on
    axis 0. Cells with different batch sizes then give arrays of the same shape."""
    n = int(inputs.shape[0])
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, batch):
        chunk = inputs[start : start + batch]
        real = int(chunk.shape[0])
        if real < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - real, axis=0)])
        for name, value in run(chunk).items():
            parts.setdefault(name, []).append(np.asarray(value)[:real])
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def save_outputs_npz(path: Path, outputs: Mapping[str, np.ndarray], image_ids: Iterable[int] | None = None) -> None:
    """Raw outputs to `outputs/<cell_id>.npz` atomically; `image_ids` saved as `__image_ids__`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.asarray(v) for k, v in outputs.items()}
    if image_ids is not None:
        arrays["__image_ids__"] = np.asarray(list(image_ids), dtype=np.int64)
    with files.replacing(path) as buffer:
        np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]


def load_outputs_npz(path: Path) -> tuple[dict[str, np.ndarray], list[int] | None]:
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    ids = arrays.pop("__image_ids__", None)
    return arrays, (ids.tolist() if ids is not None else None)


def detections_from_coco_results(results: Iterable[Mapping[str, Any]], image_ids: Sequence[int]) -> list[Detections]:
    """COCO results entries back to one Detections per image id (class_ids = category ids,
    boxes xyxy), in the order of `image_ids`; images without entries get empty Detections."""
    from harness.models.detections import Detections

    rows: dict[int, list[tuple[list[float], float, int]]] = {int(i): [] for i in image_ids}
    for r in results:
        image_id = int(r["image_id"])
        if image_id in rows:
            x, y, w, h = (float(v) for v in r["bbox"])
            rows[image_id].append(([x, y, x + w, y + h], float(r["score"]), int(r["category_id"])))
    out: list[Detections] = []
    for image_id in image_ids:
        entries = rows[int(image_id)]
        if not entries:
            out.append(Detections.empty())
            continue
        out.append(
            Detections(
                boxes_xyxy=np.array([e[0] for e in entries], dtype=np.float32),
                scores=np.array([e[1] for e in entries], dtype=np.float32),
                class_ids=np.array([e[2] for e in entries], dtype=np.int64),
            )
        )
    return out


def save_model_detections(path: Path, image_ids: Sequence[int], detections: Sequence[Detections]) -> None:
    """Detections as the model gave them (every class, model class indices, boxes xyxy in
    original pixels), for detection agreement beyond the dataset's classes: the COCO results
    file holds only detections of classes the dataset has, which for a random-weights model on
    a small dataset can be none. JSON lists, one entry per image, written atomically."""
    rows = [
        {
            "image_id": int(image_id),
            "boxes_xyxy": np.asarray(det.boxes_xyxy, np.float64).round(4).tolist(),
            "scores": np.asarray(det.scores, np.float64).round(7).tolist(),
            "class_ids": np.asarray(det.class_ids, np.int64).tolist(),
        }
        for image_id, det in zip(image_ids, detections, strict=True)
    ]
    files.write_replace(Path(path), json.dumps(rows, separators=(",", ":")))


def load_model_detections(path: Path) -> tuple[list[int], list[Detections]]:
    from harness.models.detections import Detections

    rows = json.loads(Path(path).read_text(encoding="utf-8"))
    ids = [int(r["image_id"]) for r in rows]
    dets = [
        Detections(
            boxes_xyxy=np.asarray(r["boxes_xyxy"], np.float32).reshape(-1, 4),
            scores=np.asarray(r["scores"], np.float32),
            class_ids=np.asarray(r["class_ids"], np.int64),
        )
        for r in rows
    ]
    return ids, dets
