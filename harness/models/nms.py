"""Non-maximum suppression where the plan puts it, as stages of the end-to-end scope.

A model whose raw outputs need NMS (a YOLO head exported without it: (B, 4 + C, A), cxcywh in
input pixels, then C class scores) gets its decoding split into stages, so each is timed apart
and the candidate count before NMS is known (docs/models.md, "NMS placement"):

    host:    ... infer -> d2h -> candidates -> nms -> postprocess
    device:  ... infer -> candidates -> nms -> d2h -> postprocess

* `candidates`: per image, the best class of each anchor, its score, the anchors scoring strictly
  above the score threshold, their boxes as xyxy. numpy on the host; torch on the device.
* `nms`: greedy NMS with torchvision's semantics (boxes ordered by descending score, ties by
  index; a box is suppressed by a kept box of the same class, or of any class when agnostic,
  whose IoU with it is strictly above the threshold). Host: `nms_numpy` below. Device:
  `torchvision.ops.batched_nms` (or `nms` when agnostic) on the runtime's device, before the
  copy; on a CPU cell the "device" is the CPU and this is torchvision's C++ kernel.
* `postprocess`: the first `top_k` kept boxes, mapped back to the original image.

The third placement, `in_graph`, needs no stage here: the NMS is inside the model (ONNX
NonMaxSuppression in the exported file, or the eager model's own NMS) and is timed in `infer`.

`nms_numpy` is exact greedy NMS, vectorised: boxes are taken in blocks of `_BLOCK` in score
order; within a block the greedy result is the fixed point of "kept = not suppressed by an
earlier kept box of the block" (reached after at most the block's length of matrix passes,
in practice a handful: entry t of the order is final after t passes), and each block's kept
boxes then suppress every later box in one IoU matrix. Work is O(kept x candidates) like the
textbook loop, but in a few dozen numpy calls instead of one Python iteration per kept box
(the loop it replaces took 167 ms for 1,600 candidates on a 2-core CPU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.models.base import ImageMeta, NmsConfig
from harness.models.detections import Detections
from harness.models.preprocess import model_to_original

HOST_IMPLEMENTATION = (
    "harness.models.nms.nms_numpy: exact greedy NMS, vectorised (IoU blocks in score order), numpy on the host"
)
_BLOCK = 256
# Below this many candidates, class-aware NMS masks IoU by class in one pass; above, it runs
# each class on its own (measured on 2 cores: 300 candidates of 80 classes 1.3 ms vs 6 ms).
_SMALL = 1024


# -- numpy ----------------------------------------------------------------------------------


def _iou_above(a: np.ndarray, b: np.ndarray, threshold: float) -> np.ndarray:
    """(len(a), len(b)) bool: IoU of xyxy boxes strictly above `threshold` (0 where the union
    is empty, as torchvision's kernels compare a NaN: never suppressed)."""
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.maximum(ix2 - ix1, 0.0) * np.maximum(iy2 - iy1, 0.0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    # inter > t * union  <=>  inter / union > t for union > 0; both sides 0 otherwise (False).
    return inter > np.float32(threshold) * union


def _suppresses(a: np.ndarray, b: np.ndarray, threshold: float, ca: np.ndarray | None, cb: np.ndarray | None) -> np.ndarray:
    hit = _iou_above(a, b, threshold)
    if ca is not None and cb is not None:
        hit &= ca[:, None] == cb[None, :]
    return hit


def _greedy_in_order(b: np.ndarray, iou_threshold: float, c: np.ndarray | None = None) -> np.ndarray:
    """Positions greedy NMS keeps of xyxy boxes already in rank order (within a class when
    `c` is given, else any box suppresses any)."""
    n = int(b.shape[0])
    removed = np.zeros(n, bool)
    kept_parts: list[np.ndarray] = []
    for start in range(0, n, _BLOCK):
        end = min(n, start + _BLOCK)
        idx = start + np.flatnonzero(~removed[start:end])
        if idx.size == 0:
            continue
        if idx.size == 1:
            keep = np.ones(1, bool)
        else:
            ci = None if c is None else c[idx]
            sup = np.triu(_suppresses(b[idx], b[idx], iou_threshold, ci, ci), k=1)  # only a higher rank suppresses
            keep = np.ones(idx.size, bool)
            while True:
                new = np.asarray(~sup[keep].any(axis=0))
                if np.array_equal(new, keep):
                    break
                keep = new
        kept = idx[keep]
        kept_parts.append(kept)
        if end < n:
            rest = end + np.flatnonzero(~removed[end:])
            if rest.size:
                ck, cr = (None, None) if c is None else (c[kept], c[rest])
                removed[rest[_suppresses(b[kept], b[rest], iou_threshold, ck, cr).any(axis=0)]] = True
    return np.concatenate(kept_parts) if kept_parts else np.zeros((0,), np.int64)


def nms_numpy(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, classes: np.ndarray | None = None
) -> np.ndarray:
    """Indices of the boxes greedy NMS keeps, in descending score order (ties: lower index
    first). `classes`: suppress only within a class (torchvision.ops.batched_nms), each class
    on its own (so the work is the sum of the classes' squares, not the whole square); None:
    any box suppresses any other (torchvision.ops.nms)."""
    n = int(scores.shape[0])
    if n == 0:
        return np.zeros((0,), np.int64)
    boxes = np.asarray(boxes, dtype=np.float32)
    index = np.arange(n)
    if classes is None:
        order = np.lexsort((index, -scores))
        return order[_greedy_in_order(boxes[order], iou_threshold)].astype(np.int64)
    classes = np.asarray(classes)
    if n <= _SMALL:  # a few blocks with a class mask cost less than a pass per class
        order = np.lexsort((index, -scores))
        return order[_greedy_in_order(boxes[order], iou_threshold, classes[order])].astype(np.int64)
    order = np.lexsort((index, -scores, classes))  # by class, then descending score, then index
    bounds = np.flatnonzero(np.diff(classes[order])) + 1
    kept = np.concatenate([seg[_greedy_in_order(boxes[seg], iou_threshold)] for seg in np.split(order, bounds)])
    return kept[np.lexsort((kept, -scores[kept]))].astype(np.int64)


@dataclass
class Candidates:
    """One image's boxes (xyxy, model-input pixels), scores and class indices."""

    boxes: Any
    scores: Any
    classes: Any

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def candidates_numpy(pred: np.ndarray, score_threshold: float) -> list[Candidates]:
    """(B, 4 + C, A) raw predictions -> per image the anchors whose best class scores above
    the threshold, boxes xyxy. (B, A, 4 + C) is accepted when A > 4 + C."""
    if pred.ndim != 3:
        raise ValueError(f"raw YOLO predictions must be (B, 4 + C, A); got {pred.shape}")
    if pred.shape[1] > pred.shape[2]:
        pred = pred.transpose(0, 2, 1)
    out = []
    for p in pred:
        cls_scores = p[4:]
        classes = cls_scores.argmax(axis=0)
        scores = np.take_along_axis(cls_scores, classes[None, :], axis=0)[0]
        keep = np.flatnonzero(scores > score_threshold)
        boxes = _xyxy(p[:4, keep].T.astype(np.float32))
        out.append(Candidates(boxes, scores[keep].astype(np.float32), classes[keep].astype(np.int64)))
    return out


def _xyxy(cxcywh: np.ndarray) -> np.ndarray:
    """cxcywh -> xyxy, negative sizes taken as 0 (as `decode.cxcywh_to_xyxy`)."""
    half = 0.5 * np.maximum(cxcywh[:, 2:], 0.0)
    return np.concatenate([cxcywh[:, :2] - half, cxcywh[:, :2] + half], axis=1)


def finish(kept: Sequence[Candidates], metas: Sequence[ImageMeta], top_k: int) -> list[Detections]:
    """Kept candidates (descending score) -> the first top_k as Detections in original pixels."""
    results = []
    for cand, meta in zip(kept, metas, strict=True):
        boxes, scores, classes = cand.boxes[:top_k], cand.scores[:top_k], cand.classes[:top_k]
        results.append(
            Detections(
                boxes_xyxy=model_to_original(np.asarray(boxes, np.float32).reshape(-1, 4), meta),
                scores=np.asarray(scores, np.float32),
                class_ids=np.asarray(classes, np.int64),
            )
        )
    return results


# -- torch ----------------------------------------------------------------------------------


def candidates_torch(pred: Any, score_threshold: float) -> list[Candidates]:
    """`candidates_numpy` in torch, on the tensor's device (fp16 outputs are taken to fp32)."""
    if pred.ndim != 3:
        raise ValueError(f"raw YOLO predictions must be (B, 4 + C, A); got {tuple(pred.shape)}")
    if pred.shape[1] > pred.shape[2]:
        pred = pred.transpose(1, 2)
    pred = pred.float()
    scores, classes = pred[:, 4:].max(dim=1)
    out = []
    for i in range(pred.shape[0]):
        keep = scores[i] > score_threshold
        cxcywh = pred[i, :4][:, keep].T
        half = cxcywh[:, 2:].clamp(min=0) * 0.5
        boxes = _cat_xyxy(cxcywh[:, :2] - half, cxcywh[:, :2] + half)
        out.append(Candidates(boxes, scores[i][keep], classes[i][keep]))
    return out


def _cat_xyxy(low: Any, high: Any) -> Any:
    import torch

    return torch.cat([low, high], dim=1)


def nms_torch(cands: Sequence[Candidates], iou_threshold: float, class_agnostic: bool) -> list[Candidates]:
    from torchvision.ops import batched_nms, nms

    out = []
    for c in cands:
        if class_agnostic:
            keep = nms(c.boxes, c.scores, iou_threshold)
        else:
            keep = batched_nms(c.boxes, c.scores, c.classes, iou_threshold)
        out.append(Candidates(c.boxes[keep], c.scores[keep], c.classes[keep]))
    return out


def to_host(cands: Sequence[Candidates]) -> list[Candidates]:
    return [Candidates(c.boxes.cpu().numpy(), c.scores.cpu().numpy(), c.classes.cpu().numpy()) for c in cands]


# -- the stages -----------------------------------------------------------------------------


@dataclass
class NmsStages:
    """The stages after `infer` for one NMS placement, and what they saw (counts per image of
    the last batch: the end-to-end scope feeds the same images every iteration)."""

    config: NmsConfig
    placement: str  # host | device
    candidates: list[int] = field(default_factory=list)
    kept: list[int] = field(default_factory=list)
    device: str = "cpu"

    def implementation(self) -> str:
        if self.placement == "host":
            return HOST_IMPLEMENTATION
        import torchvision

        fn = "nms" if self.config.class_agnostic else "batched_nms"
        return f"torchvision.ops.{fn} (torchvision {torchvision.__version__}) on {self.device}, before the device-to-host copy"

    def host_nms(self, cands: list[Candidates]) -> list[Candidates]:
        cfg = self.config
        out = []
        for c in cands:
            keep = nms_numpy(c.boxes, c.scores, cfg.iou_threshold, None if cfg.class_agnostic else c.classes)
            out.append(Candidates(c.boxes[keep], c.scores[keep], c.classes[keep]))
        self.kept = [len(c) for c in out]
        return out

    def device_nms(self, cands: list[Candidates]) -> list[Candidates]:
        out = nms_torch(cands, self.config.iou_threshold, self.config.class_agnostic)
        self.kept = [len(c) for c in out]
        return out

    def count(self, cands: list[Candidates]) -> list[Candidates]:
        self.candidates = [len(c) for c in cands]
        return cands

    def facts(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "placement": self.placement,
            "implementation": self.implementation(),
            "iou_threshold": cfg.iou_threshold,
            "score_threshold": cfg.score_threshold,
            "class_agnostic": cfg.class_agnostic,
            "top_k": cfg.top_k,
            "candidates": list(self.candidates) or None,
            "kept": list(self.kept) or None,
        }


def host_pipeline(stages: NmsStages) -> list[tuple[str, Callable[[Any], Any], bool]]:
    """(name, function, asynchronous) of the stages after d2h, host placement."""
    cfg = stages.config

    def candidates(outputs: dict[str, np.ndarray]) -> list[Candidates]:
        return stages.count(candidates_numpy(outputs[cfg.output], cfg.score_threshold))

    return [("candidates", candidates, False), ("nms", stages.host_nms, False)]


def device_pipeline(
    stages: NmsStages, device_tensors: Callable[[Any], dict[str, Any]]
) -> list[tuple[str, Callable[[Any], Any], bool]]:
    """(name, function, asynchronous) of the stages between infer and d2h, device placement."""
    cfg = stages.config

    def candidates(outputs: Any) -> list[Candidates]:
        return stages.count(candidates_torch(device_tensors(outputs)[cfg.output], cfg.score_threshold))

    return [("candidates", candidates, True), ("nms", stages.device_nms, True)]
