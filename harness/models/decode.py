"""Raw model outputs (host numpy) -> `Detections` in original-image pixels.

Three output conventions:

* RF-DETR (`decode_rfdetr`): a numpy port of rfdetr 1.11.2's `PostProcess`
  (rfdetr/models/postprocess.py): sigmoid over the class logits, top-k over queries x classes
  (ties: higher score first, then lower flattened index, as rfdetr's stable argsort), boxes
  cxcywh normalised to the model input -> xyxy, clamped to the image; masks bilinearly resized
  (align_corners=False) and thresholded at logit 0; keypoints with rfdetr's uncertainty score
  fusion. Outputs: `dets` (B, Q, 4), `labels` (B, Q, C), optional `masks` (B, Q, h, w) and
  `keypoints` (B, Q, C_kp * K, D).
* YOLO end-to-end (`decode_yolo_end2end`): the model already filtered; see its docstring for the
  accepted layouts.
* YOLO raw (`decode_yolo_raw`): (B, 4 + C, N) cxcywh in input pixels; score threshold, NMS
  (numpy, here in the harness), top-k.

Why numpy and not torch: the end-to-end scope should time the postprocessing a deployment
without PyTorch would run, and the ONNX/TensorRT runtimes must not need torch installed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from harness.models.base import ImageMeta
from harness.models.detections import Detections
from harness.models.nms import nms_numpy
from harness.models.preprocess import model_to_original, scratch_array
from harness.plan.schema import DecoderSpec, NmsSpec

Decoder = Callable[[dict[str, np.ndarray], list[ImageMeta]], list[Detections]]


def sigmoid(x: np.ndarray) -> np.ndarray:
    """float32 logistic function, without overflow warnings for large negative logits."""
    x = np.asarray(x, dtype=np.float32)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


def topk_desc(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest of a 1-D array: descending value, ties by ascending index
    (the same order as torch.argsort(descending=True, stable=True)[:k]), without sorting all."""
    n = values.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.zeros((0,), np.int64)
    if k == n:
        return np.argsort(-values, kind="stable")
    part = np.argpartition(-values, k - 1)[:k]
    kth = values[part].min()
    above = np.flatnonzero(values > kth)
    ties = np.flatnonzero(values == kth)[: k - above.shape[0]]
    chosen = np.concatenate([above, ties])
    # lexsort: last key is primary -> by -value, then by index.
    return chosen[np.lexsort((chosen, -values[chosen]))]


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    cx, cy, w, h = np.moveaxis(boxes, -1, 0)
    # rfdetr clamps negative widths/heights to 0 before converting (box_ops.box_cxcywh_to_xyxy).
    hw = 0.5 * np.maximum(w, 0.0)
    hh = 0.5 * np.maximum(h, 0.0)
    return np.stack([cx - hw, cy - hh, cx + hw, cy + hh], axis=-1)


def _is_stretch(meta: ImageMeta) -> bool:
    return meta.pad_x == 0.0 and meta.pad_y == 0.0


def _axis_taps(
    out_size: int, in_size: int, src_per_dst: float, offset: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps (half-pixel centres, clamped like PyTorch) for src = (dst+0.5)*a + b - 0.5."""
    src = (np.arange(out_size, dtype=np.float64) + 0.5) * src_per_dst + offset - 0.5
    src = np.clip(src, 0.0, None)
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    return lo, hi, (src - lo).astype(np.float32)


@dataclass(frozen=True)
class _MaskPlan:
    """Everything about upsampling (mh, mw) mask logits to (out_h, out_w) that does not depend
    on the logits: computed once per geometry (`_mask_plan` caches it)."""

    # Column pass as a banded matrix product: for output columns [start, end) only input
    # columns [lo, hi) have weight; block is minus the bilinear weights (hi - lo, end - start).
    column_bands: tuple[tuple[int, int, int, int, np.ndarray], ...]
    # Row pass: output rows [start, end) all read input rows (j, j + 1), with these weights
    # (row_lo never decreases, so the rows reading each input row are one run).
    row_runs: tuple[tuple[int, int, int, tuple[np.float32, ...]], ...]


# Output columns per band of the column pass: narrower bands waste fewer multiplications on
# zero weights, wider ones make fewer, larger BLAS calls. At 96 -> 640, 32 took half the time
# of 64 (OpenBLAS, one core).
_BAND_COLUMNS = 32


@lru_cache(maxsize=32)
def _mask_plan(
    out_h: int, out_w: int, mh: int, mw: int, ay: float, by: float, ax: float, bx: float
) -> _MaskPlan:
    x_lo, x_hi, x_w = _axis_taps(out_w, mw, ax, bx)
    columns = np.arange(out_w)
    # Minus the weights: the column pass then yields -logit, which the threshold needs.
    neg_weights = np.zeros((mw, out_w), np.float32)
    np.add.at(neg_weights, (x_lo, columns), -(np.float32(1.0) - x_w))
    np.add.at(neg_weights, (x_hi, columns), -x_w)
    clamped = x_lo == x_hi  # past the far edge: exactly the edge value, no rounding
    neg_weights[x_lo[clamped], columns[clamped]] = -1.0
    bands = []
    for start in range(0, out_w, _BAND_COLUMNS):
        end = min(out_w, start + _BAND_COLUMNS)
        lo, hi = int(x_lo[start:end].min()), int(x_hi[start:end].max()) + 1
        block = np.ascontiguousarray(neg_weights[lo:hi, start:end])
        block.setflags(write=False)
        bands.append((start, end, lo, hi, block))
    y_lo, _, y_w = _axis_taps(out_h, mh, ay, by)
    starts = np.flatnonzero(np.diff(y_lo, prepend=-1)).tolist()
    ends = [*starts[1:], out_h]
    runs = tuple(
        (int(y_lo[start]), start, end, tuple(np.float32(w) for w in y_w[start:end]))
        for start, end in zip(starts, ends, strict=True)
    )
    return _MaskPlan(column_bands=tuple(bands), row_runs=runs)


# Masks upsampled per pass: bounds the scratch (~9 bytes x chunk x mh x out_w) to ~16 MB; more
# masks per pass means fewer numpy calls per mask.
_MASK_SCRATCH_BYTES = 16 << 20
# Infinite logits (an fp16 engine's overflow) would turn the zero weights of the banded product
# into NaN across a whole band; clipped, they stay far from 0 and change nothing else.
_LOGIT_LIMIT = np.float32(1e30)


def _masks_to_original(
    mask_logits: np.ndarray,
    meta: ImageMeta,
    input_size: tuple[int, int] | None,
    indices: np.ndarray | None = None,
) -> np.ndarray:
    """(Q, h, w) mask logits over the model input -> (K, H, W) bool over the original image
    for the K masks `indices` selects (all when None): bilinear resize (align_corners=False,
    like rfdetr's F.interpolate) thresholded at logit 0.

    Separable, and arranged so the full-resolution work is one comparison with a scalar and
    one XOR per output pixel (92M pixels for 300 masks at 640x480; the output alone is 92 MB):

    1. columns, at mask height: a banded matrix product gives n = -logit at every output
       column (BLAS, all masks of a chunk at once), laid out (mask row, mask, column) so each
       mask row of the chunk is one contiguous block;
    2. per mask row j, d = logit[j+1] - logit[j] and r = n / d: the value at weight w between
       rows j and j+1 is logit[j] + d * w, which is > 0 exactly when w > r (d > 0) or w < r
       (d < 0);
    3. each output row compares its scalar weight with r (into a (row, mask, column) scratch,
       where numpy runs one long contiguous loop), then one XOR per run of output rows that
       read the same mask row flips the pixels where d < 0 while writing the result.

    The comparison w > -logit/d instead of logit + d*w > 0 moves only pixels whose interpolated
    logit is within float rounding of 0. d == 0 gives r = -inf, +inf or NaN: every, no, no
    pixel, i.e. logit > 0 again.
    """
    _, mh, mw = mask_logits.shape
    if indices is None:
        indices = np.arange(mask_logits.shape[0])
    k = int(indices.shape[0])
    out_h, out_w = meta.orig_h, meta.orig_w
    if _is_stretch(meta):
        # The mask covers the whole (stretched) image: a plain resize, as rfdetr does.
        ay, by = mh / out_h, 0.0
        ax, bx = mw / out_w, 0.0
    else:
        if input_size is None:
            raise ValueError("letterboxed masks need the model input size to map back")
        in_h, in_w = input_size
        # original pixel centre -> model pixel -> mask pixel
        ay, by = mh / in_h / meta.scale_y, meta.pad_y * mh / in_h
        ax, bx = mw / in_w / meta.scale_x, meta.pad_x * mw / in_w
    plan = _mask_plan(out_h, out_w, mh, mw, ay, by, ax, bx)
    result = np.empty((k, out_h, out_w), dtype=bool)
    chunk = max(1, _MASK_SCRATCH_BYTES // (9 * mh * out_w))
    longest_run = max((end - start for _, start, end, _ in plan.row_runs), default=0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for first in range(0, k, chunk):
            n = min(chunk, k - first)
            low = scratch_array("mask.low", (mh, n, mw), np.float32)
            np.copyto(low, mask_logits[indices[first : first + n]].transpose(1, 0, 2))
            np.clip(low, -_LOGIT_LIMIT, _LOGIT_LIMIT, out=low)
            low_2d = low.reshape(mh * n, mw)
            crossing = scratch_array("mask.crossing", (mh, n, out_w), np.float32)
            crossing_2d = crossing.reshape(mh * n, out_w)
            for start, end, lo, hi, block in plan.column_bands:
                np.matmul(low_2d[:, lo:hi], block, out=crossing_2d[:, start:end])
            step = scratch_array("mask.step", (mh, n, out_w), np.float32)
            np.subtract(crossing[:-1], crossing[1:], out=step[:-1])  # logit[j+1] - logit[j]
            step[-1] = 0.0  # the last row has no row below: rows past it are clamped to it
            falling = scratch_array("mask.falling", (mh, n, out_w), np.bool_)
            np.less(step, 0.0, out=falling)
            np.divide(crossing, step, out=crossing)  # -logit / d: the crossing weight r
            above = scratch_array("mask.above", (longest_run, n, out_w), np.bool_)
            # (row, mask, column) view of this chunk's output
            block_out = result[first : first + n].transpose(1, 0, 2)
            for j, start, end, weights in plan.row_runs:
                for i, weight in enumerate(weights):
                    np.less(crossing[j], weight, out=above[i])
                np.logical_xor(above[: end - start], falling[j], out=block_out[start:end])
    return result


def _keypoint_log_mean_trace(kp: np.ndarray) -> np.ndarray:
    """rfdetr's PostProcess._keypoint_log_mean_trace, in numpy. kp: (..., K, D>=7)."""
    from numpy import logaddexp

    log_l11, l21, log_l22 = kp[..., 4], kp[..., 5], kp[..., 6]
    w_find = sigmoid(kp[..., 2])
    log_t1 = -2.0 * log_l11
    log_t2 = -2.0 * log_l22
    log_t3 = 2.0 * np.log(np.clip(np.abs(l21), 1e-12, None)) + log_t1 + log_t2
    log_trace_sigma = logaddexp(logaddexp(log_t1, log_t2), log_t3)
    log_w_find = np.log(np.clip(w_find, 1e-12, None))
    return logaddexp.reduce(log_trace_sigma + log_w_find, axis=-1) - logaddexp.reduce(
        log_w_find, axis=-1
    )


def _decode_keypoints(
    kp_i: np.ndarray,
    labels: np.ndarray,
    scores: np.ndarray,
    num_keypoints_per_class: Sequence[int],
    trace_alpha: float,
    img_hw: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Selected keypoints (K, C_kp * maxK, D) -> ((K, maxK, 3) x/y normalised->scaled later,
    fused scores). Mirrors PostProcess._decode_keypoints_for_image."""
    n_cls = len(num_keypoints_per_class)
    max_k = max(num_keypoints_per_class, default=0)
    out = np.zeros((kp_i.shape[0], max_k, 3), np.float32)
    if n_cls == 0 or max_k == 0:
        return out, scores
    if kp_i.shape[1] != n_cls * max_k:
        raise ValueError(
            f"keypoints output has {kp_i.shape[1]} slots per query; the schema "
            f"{list(num_keypoints_per_class)} needs {n_cls * max_k}"
        )
    reshaped = kp_i.reshape(kp_i.shape[0], n_cls, max_k, kp_i.shape[-1])
    valid = np.flatnonzero(labels < n_cls)
    if valid.size == 0:
        return out, scores
    sel_labels = labels[valid]
    selected = reshaped[valid, sel_labels]
    img_h, img_w = img_hw
    if trace_alpha > 0 and selected.shape[-1] >= 7:
        traces = np.zeros(sel_labels.shape[0], np.float32)
        for c in range(n_cls):
            n_act = num_keypoints_per_class[c]
            mask = sel_labels == c
            if n_act > 0 and mask.any():
                traces[mask] = _keypoint_log_mean_trace(selected[mask, :n_act])
        scores = scores.copy()
        fused = sigmoid(np.log(scores[valid]) - trace_alpha * traces)
        scores[valid] = np.minimum(fused, np.nextafter(np.float32(1), np.float32(0)))
    for c in range(n_cls):
        n_act = num_keypoints_per_class[c]
        mask = sel_labels == c
        if n_act <= 0 or not mask.any():
            continue
        idx = valid[mask]
        act = selected[mask, :n_act]
        out[idx, :n_act, 0] = act[..., 0] * img_w
        out[idx, :n_act, 1] = act[..., 1] * img_h
        out[idx, :n_act, 2] = sigmoid(act[..., 2])
    return out, scores


def decode_rfdetr(
    outputs: dict[str, np.ndarray],
    metas: list[ImageMeta],
    *,
    top_k: int = 300,
    score_threshold: float = 0.0,
    input_size: tuple[int, int] | None = None,
    num_keypoints_per_class: Sequence[int] = (17,),
    keypoint_trace_alpha: float = 0.2,
    names: dict[str, str] | None = None,
    max_masks: int | None = None,
) -> list[Detections]:
    """RF-DETR outputs -> detections, numerically as rfdetr's PostProcess.

    `input_size` (h, w) of the model input is needed only for letterboxed inputs (stretch maps
    normalised coordinates straight onto the original image, as rfdetr does). `names` maps the
    canonical output names (dets, labels, masks, keypoints) to the model's own.
    `score_threshold`: keep detections scoring strictly above it (0 keeps all top-k).
    `max_masks`: for a model with masks, keep only that many detections per image, the highest
    scoring (boxes, scores and masks alike). Masks are most of the decoding cost (every
    detection gets one bool per original-image pixel), so a consumer that never looks past the
    first N detections can ask for N. None (the default) keeps all top-k, as rfdetr does. Not
    for COCO evaluation of all detections: pycocotools' maxDets=100 applies per image AND
    category, so detections past the 100th of an image still count for their category; use
    it only together with the same cap on the results (`to_coco_results(max_dets_per_image=)`).
    """
    if max_masks is not None and max_masks < 0:
        raise ValueError(f"max_masks must be >= 0; got {max_masks}")
    names = names or {}
    boxes_n = outputs[names.get("dets", "dets")]
    logits = outputs[names.get("labels", "labels")]
    masks = outputs.get(names.get("masks", "masks"))
    keypoints = outputs.get(names.get("keypoints", "keypoints"))
    if boxes_n.shape[0] != len(metas) or logits.shape[0] != len(metas):
        raise ValueError(
            f"outputs hold {boxes_n.shape[0]} images but {len(metas)} metas were given"
        )
    n_cls = logits.shape[2]
    probs = sigmoid(logits.reshape(logits.shape[0], -1))
    results: list[Detections] = []
    for i, meta in enumerate(metas):
        order = topk_desc(probs[i], top_k)
        scores = probs[i][order]
        queries = order // n_cls
        labels = (order % n_cls).astype(np.int64)
        xyxy = cxcywh_to_xyxy(boxes_n[i][queries].astype(np.float32))
        if _is_stretch(meta):
            scale = np.array([meta.orig_w, meta.orig_h, meta.orig_w, meta.orig_h], np.float32)
            boxes = xyxy * scale
            boxes = np.minimum(np.maximum(boxes, 0.0), scale)
        else:
            if input_size is None:
                raise ValueError("letterboxed inputs need decode_rfdetr(input_size=...)")
            in_h, in_w = input_size
            model_px = xyxy * np.array([in_w, in_h, in_w, in_h], np.float32)
            boxes = model_to_original(model_px, meta)
        kp_out = None
        if keypoints is not None:
            # rfdetr scales keypoints by the target size (original image); fusion changes scores.
            kp_out, scores = _decode_keypoints(
                keypoints[i][queries], labels, scores, num_keypoints_per_class,
                keypoint_trace_alpha, (meta.orig_h, meta.orig_w),
            )
            if not _is_stretch(meta) and input_size is not None:
                in_h, in_w = input_size
                xy = kp_out[..., :2] / np.array([meta.orig_w, meta.orig_h], np.float32)
                xy = xy * np.array([in_w, in_h], np.float32)
                kp_out[..., 0] = (xy[..., 0] - meta.pad_x) / meta.scale_x
                kp_out[..., 1] = (xy[..., 1] - meta.pad_y) / meta.scale_y
        keep = np.flatnonzero(scores > score_threshold) if score_threshold > 0 else None
        if keep is not None:
            scores, labels, boxes, queries = scores[keep], labels[keep], boxes[keep], queries[keep]
            kp_out = kp_out[keep] if kp_out is not None else None
        mask_out = None
        if masks is not None:
            if max_masks is not None and scores.shape[0] > max_masks:
                best = topk_desc(scores, max_masks)
                scores, labels, boxes, queries = scores[best], labels[best], boxes[best], queries[best]
                kp_out = kp_out[best] if kp_out is not None else None
            mask_out = _masks_to_original(masks[i], meta, input_size, queries)
        results.append(
            Detections(
                boxes_xyxy=boxes.astype(np.float32, copy=False),
                scores=scores.astype(np.float32, copy=False),
                class_ids=labels,
                masks=mask_out,
                keypoints=kp_out,
            )
        )
    return results


# -- YOLO ------------------------------------------------------------------------------------


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS (torchvision.ops.nms semantics: suppress IoU > threshold), indices kept in
    descending score order: `harness.models.nms.nms_numpy`, vectorised."""
    return nms_numpy(boxes, scores, iou_threshold)


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """Class-aware NMS (a box is suppressed only by a box of its own class), as
    torchvision.ops.batched_nms."""
    return nms_numpy(boxes, scores, iou_threshold, classes)


def named_output(outputs: dict[str, np.ndarray], spec: DecoderSpec, key: str) -> np.ndarray:
    """The output `decoder.outputs.<key>` names; a UserError naming the field and the model's
    real outputs when it has none of that name (a bare KeyError would name neither)."""
    name = spec.outputs[key]
    if name not in outputs:
        from harness.errors import UserError

        raise UserError(f"decoder.outputs.{key}: the model has no output `{name}`; its outputs are "
                        f"{', '.join(sorted(outputs))}")
    return outputs[name]


def _single_output(outputs: dict[str, np.ndarray], spec: DecoderSpec, key: str) -> np.ndarray:
    if key in spec.outputs:
        return named_output(outputs, spec, key)
    if len(outputs) != 1:
        raise ValueError(
            f"the model has outputs {sorted(outputs)}; say which one holds the predictions "
            f"with decoder.outputs.{key}"
        )
    return next(iter(outputs.values()))


def _finish(
    boxes_in: np.ndarray, scores: np.ndarray, classes: np.ndarray, meta: ImageMeta, top_k: int
) -> Detections:
    order = topk_desc(scores.astype(np.float32), top_k)
    return Detections(
        boxes_xyxy=model_to_original(boxes_in[order], meta),
        scores=scores[order].astype(np.float32),
        class_ids=classes[order].astype(np.int64),
    )


def decode_yolo_end2end(
    outputs: dict[str, np.ndarray], metas: list[ImageMeta], spec: DecoderSpec
) -> list[Detections]:
    """Models that filter their own detections (NMS-free heads, or NMS inside the graph).

    Accepted layouts, all with boxes xyxy in MODEL-INPUT pixels:
    * one output (B, N, 6): [x1, y1, x2, y2, score, class] — the ultralytics end2end export
      (YOLOv10, YOLO11/26 with end2end=True, RT-DETR ultralytics exports use the same);
      rows padded with score 0 are dropped by the score threshold.
    * one output (B, N, 6 + extra): the first six columns as above (mask coefficients or
      keypoints after them are ignored here).
    * three outputs named in `spec.outputs` as `boxes` (B, N, 4), `scores` (B, N) and
      `classes` (B, N) — the EfficientNMS / TensorRT-style layout; an optional `num_dets`
      (B,) or (B, 1) output truncates each image's rows.
    """
    if "boxes" in spec.outputs:
        boxes = named_output(outputs, spec, "boxes")
        scores = named_output(outputs, spec, "scores")
        classes = named_output(outputs, spec, "classes")
        num = outputs.get(spec.outputs.get("num_dets", ""))
    else:
        pred = _single_output(outputs, spec, "predictions")
        if pred.ndim != 3 or pred.shape[2] < 6:
            raise ValueError(
                f"yolo_end2end expects (B, N, 6) [x1, y1, x2, y2, score, class]; got {pred.shape}"
            )
        boxes, scores, classes, num = pred[..., :4], pred[..., 4], pred[..., 5], None
    results = []
    for i, meta in enumerate(metas):
        b = boxes[i].astype(np.float32)
        s = scores[i].astype(np.float32).reshape(-1)
        c = np.rint(classes[i].reshape(-1)).astype(np.int64)
        if num is not None:
            n = int(np.asarray(num[i]).reshape(-1)[0])
            b, s, c = b[:n], s[:n], c[:n]
        keep = s > spec.score_threshold
        results.append(_finish(b[keep], s[keep], c[keep], meta, spec.top_k))
    return results


def decode_yolo_raw(
    outputs: dict[str, np.ndarray], metas: list[ImageMeta], spec: DecoderSpec
) -> list[Detections]:
    """Raw YOLO head (ultralytics v8/11 export without NMS): (B, 4 + C, N), rows
    cx, cy, w, h in MODEL-INPUT pixels then C class scores (already sigmoid). (B, N, 4 + C) is
    accepted too when N > 4 + C is unambiguous. Per image: best class per anchor, score
    threshold, NMS (class-aware unless spec.nms.class_agnostic), then the top_k."""
    pred = _single_output(outputs, spec, "predictions")
    if pred.ndim != 3:
        raise ValueError(f"yolo_raw expects (B, 4 + C, N); got {pred.shape}")
    if pred.shape[1] > pred.shape[2]:  # (B, N, 4 + C): anchors first
        pred = pred.transpose(0, 2, 1)
    nms_spec = spec.nms or NmsSpec()
    results = []
    for i, meta in enumerate(metas):
        p = pred[i].astype(np.float32)
        cls_scores = p[4:]
        classes = cls_scores.argmax(axis=0)
        scores = cls_scores[classes, np.arange(p.shape[1])]
        keep = np.flatnonzero(scores > spec.score_threshold)
        boxes = cxcywh_to_xyxy(p[:4, keep].T)
        scores, classes = scores[keep], classes[keep]
        if nms_spec.class_agnostic:
            kept = nms(boxes, scores, nms_spec.iou_threshold)
        else:
            kept = batched_nms(boxes, scores, classes, nms_spec.iou_threshold)
        results.append(_finish(boxes[kept], scores[kept], classes[kept], meta, spec.top_k))
    return results


def make_decoder(spec: DecoderSpec | None, *, input_size: tuple[int, int] | None = None) -> Decoder:
    """The decode function a DecoderSpec asks for (None: RF-DETR's)."""
    spec = spec or DecoderSpec()
    if spec.kind == "rfdetr":
        names = dict(spec.outputs)
        top_k, threshold = spec.top_k, spec.score_threshold

        def rfdetr_decoder(outputs: dict[str, np.ndarray], metas: list[ImageMeta]) -> Any:
            return decode_rfdetr(
                outputs, metas, top_k=top_k, score_threshold=threshold,
                input_size=input_size, names=names,
            )

        return rfdetr_decoder
    if spec.kind == "yolo_end2end":
        return lambda outputs, metas: decode_yolo_end2end(outputs, metas, spec)
    return lambda outputs, metas: decode_yolo_raw(outputs, metas, spec)
