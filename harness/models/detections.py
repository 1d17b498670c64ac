"""The one detection format every model and runtime decodes to.

Boxes are in the ORIGINAL image's pixel coordinates (xyxy), after undoing resize/letterbox, so
accuracy code never needs to know how a runtime preprocessed. `class_ids` index the model's own
class list (`ModelSource.class_names`); mapping to a dataset's category ids happens in
`harness.accuracy`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detections:
    boxes_xyxy: np.ndarray  # (N, 4) float32, original image pixels
    scores: np.ndarray  # (N,) float32 in [0, 1]
    class_ids: np.ndarray  # (N,) int64, index into the model's class_names
    masks: np.ndarray | None = None  # (N, H, W) bool at the original image size
    keypoints: np.ndarray | None = None  # (N, K, 3): x, y (original pixels), score

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @staticmethod
    def empty() -> Detections:
        return Detections(
            boxes_xyxy=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            class_ids=np.zeros((0,), np.int64),
        )
