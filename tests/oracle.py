"""A perfect "model" built from the ground truth: the accuracy pipeline's self-check.

Whatever the runtime, an oracle that returns the annotations as detections (score 1) must get
AP 1.0 through the whole pipeline (loader, padding, class mapping, results format,
evaluation). Tests use it; so can anyone who suspects the harness rather than the model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from harness.accuracy.categories import name_key

if TYPE_CHECKING:
    from harness.accuracy.datasets import Dataset
    from harness.models.detections import Detections


def ground_truth_detections(
    dataset: Dataset, class_names: Sequence[str | None], family: str = "detection"
) -> dict[int, Detections]:
    """The selected images' non-crowd annotations as Detections in the model's class
    indices (the first index with the category's name), score 1.0; masks for segmentation,
    keypoints (x, y, visibility>0 as score) for keypoint models."""
    from harness.models.detections import Detections

    index_of: dict[str, int] = {}
    for i, name in enumerate(class_names):
        if name is not None:
            index_of.setdefault(name_key(name), i)
    names = dataset.category_names
    coco = dataset.coco
    out: dict[int, Detections] = {}
    for image_id in dataset.image_ids:
        anns = [a for a in coco.imgToAnns.get(image_id, []) if not a.get("iscrowd")
                and name_key(names[a["category_id"]]) in index_of]
        n = len(anns)
        boxes = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns], dtype=np.float32).reshape(n, 4)
        masks = keypoints = None
        if family == "segmentation":
            h, w = dataset.sizes[image_id]
            masks = np.stack([coco.annToMask(a).astype(bool) for a in anns]) if n else np.zeros((0, h, w), bool)
        if family == "keypoint":
            kps = []
            for a in anns:
                k = np.array(a.get("keypoints") or [0.0] * 51, dtype=np.float32).reshape(-1, 3)
                k[:, 2] = (k[:, 2] > 0).astype(np.float32)
                kps.append(k)
            keypoints = np.stack(kps) if n else np.zeros((0, 17, 3), np.float32)
        out[image_id] = Detections(
            boxes_xyxy=boxes,
            scores=np.ones((n,), np.float32),
            class_ids=np.array([index_of[name_key(names[a["category_id"]])] for a in anns], dtype=np.int64),
            masks=masks,
            keypoints=keypoints,
        )
    return out


def _digest(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image).tobytes() + str(image.shape).encode()).hexdigest()


class OraclePredictor:
    """A `predict(images) -> list[Detections]` that recognises each dataset image by its pixels
    and answers with its ground truth. Decodes every selected image once, up front."""

    def __init__(self, dataset: Dataset, class_names: Sequence[str | None], family: str = "detection"):
        from harness.accuracy.loader import decode_image

        self.answers = ground_truth_detections(dataset, class_names, family)
        self.by_digest = {_digest(decode_image(dataset.image_path(i))): i for i in dataset.image_ids}
        self.calls: list[int] = []  # batch sizes seen, for tests of the padding

    def __call__(self, images: list[np.ndarray]) -> list[Detections]:
        self.calls.append(len(images))
        return [self.answers[self.by_digest[_digest(img)]] for img in images]
