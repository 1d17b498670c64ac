"""A model source: where a model comes from and how its inputs and outputs look.

`rfdetr.py` builds RF-DETR through the rfdetr package (torch module, rfdetr object, ONNX export);
`onnx_file.py` wraps a user's ONNX detector (file + preprocessing + decoder). Runtimes ask the
source for what they need: a torch module, or an ONNX file.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from harness.models.detections import Detections

if TYPE_CHECKING:
    from harness.plan.cells import Cell


@dataclass(frozen=True)
class ImageMeta:
    """How one image was turned into model input, so boxes can be mapped back."""

    orig_h: int
    orig_w: int
    scale_x: float  # model pixels per original pixel
    scale_y: float
    pad_x: float = 0.0  # letterbox offset in model pixels
    pad_y: float = 0.0


@dataclass(frozen=True)
class NmsConfig:
    """What a model's NMS needs to know, whatever its placement (harness.models.nms runs it)."""

    iou_threshold: float
    class_agnostic: bool
    score_threshold: float  # candidates score strictly above it
    top_k: int  # detections kept per image after NMS
    output: str  # the raw output holding (B, 4 + C, A) predictions


@dataclass(frozen=True)
class OnnxArtifact:
    path: Path
    input_name: str
    output_names: list[str]
    dynamic_batch: bool
    opset: int | None
    export_s: float | None  # None when the file came from the cache or the user
    cached: bool
    bytes: int
    sha256: str
    # The dynamic axes given to the exporter ({name: {axis: label}}); None when not known
    # (a user's file) or none were given.
    dynamic_axes: dict[str, dict[str, str]] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "dynamic_axes": self.dynamic_axes,
            "path": str(self.path),
            "input_name": self.input_name,
            "output_names": self.output_names,
            "dynamic_batch": self.dynamic_batch,
            "opset": self.opset,
            "export_s": self.export_s,
            "cached": self.cached,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }


class ModelSource(ABC):
    family: str = "detection"  # detection | segmentation | keypoint

    def __init__(self, cell: Cell, log: TextIO):
        self.cell = cell
        self.log = log

    @property
    @abstractmethod
    def class_names(self) -> list[str | None]:
        """Names in output index order; None for indices the model never predicts."""

    @property
    def random_weights(self) -> bool:
        return False

    def describe(self) -> dict[str, Any]:
        """Facts about the model for the result (variant, weights file and hash, params...)."""
        return {}

    @abstractmethod
    def preprocess(self, images: Sequence[np.ndarray], resolution: int) -> tuple[np.ndarray, list[ImageMeta]]:
        """HxWx3 uint8 RGB images to a float32 NCHW batch, with the metas to undo it."""

    @abstractmethod
    def decode(self, outputs: dict[str, np.ndarray], metas: list[ImageMeta]) -> list[Detections]:
        """Host raw outputs to detections in original-image coordinates."""

    def load_metadata(self) -> None:  # noqa: B027 (sources without lazy metadata need nothing)
        """Load what preprocessing and decoding read lazily (class list, top-k), so that no
        model is built inside a timed iteration. The worker calls it before timing."""

    def output_names(self) -> list[str]:
        """Names of the raw outputs in the order the model returns them."""
        return ["dets", "labels"]

    def torch_model(self, device: str) -> Any:
        """The core torch module (fp32, eval) on `device`; model-scope torch timing calls it."""
        raise NotImplementedError(f"{type(self).__name__} has no PyTorch model")

    def nms_config(self) -> NmsConfig | None:
        """The NMS the harness runs for this cell when its placement is `host` or `device`
        (harness.models.nms); None for a model whose outputs need none."""
        return None

    def in_graph_nms(self, runtime: str) -> dict[str, Any] | None:
        """For a cell whose NMS runs inside the model (`in_graph`): which NMS that is, in the
        record's `nms` words (implementation, thresholds); None: the model has none."""
        return None

    def forward_contents(self) -> str | None:
        """What the model-scope call holds besides the network itself, when it holds more (a
        torchvision detector's own normalisation, box decoding and NMS), for the record's
        `timed_region`; None: the network alone."""
        return None

    def onnx_artifact(self, artifacts_dir: Path, dynamic_batch: bool, opset: int = 17) -> OnnxArtifact:
        """An ONNX file for this model at the cell's resolution (exported once at `opset`, then
        cached). A source whose file is given (not exported) ignores `opset`."""
        raise NotImplementedError(f"{type(self).__name__} cannot give an ONNX file")
