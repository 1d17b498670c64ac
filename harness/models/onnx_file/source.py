"""A user's own ONNX detector: a file, its preprocessing and a decoder for its outputs.

The plan gives (models[i]):
  path         the .onnx file (relative paths resolve against the plan's folder)
  preprocess   resize stretch | letterbox, mean/std, rgb | bgr, value_scale (default: stretch,
               ImageNet mean/std, RGB, /255 — RF-DETR's)
  decoder      rfdetr | yolo_end2end | yolo_raw, with top_k, score_threshold, NMS, output names
  class_names  names in output index order. Default: for YOLO decoders the 80 COCO names in
               the usual contiguous order (index 0 = person ... 79 = toothbrush), which is what
               ultralytics' COCO models output; for the rfdetr decoder the COCO table indexed
               by category id (index 1 = person ... 90 = toothbrush, gaps None), which is how
               COCO-pretrained RF-DETR orders its logits.
The file is used where it lies (hashed, never copied); it has no PyTorch model.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from harness.accuracy.coco_names import coco80_class_names, coco91_class_names
from harness.errors import UserError
from harness.models.base import ImageMeta, ModelSource, OnnxArtifact
from harness.models.detections import Detections
from harness.plan.schema import DecoderSpec, Preprocess


class OnnxFileSource(ModelSource):
    def __init__(self, cell: Any, log: TextIO):
        super().__init__(cell, log)
        spec = cell.model
        if not spec.path:
            raise UserError(f"model `{spec.name}`: an onnx model needs models[].path")
        self.path: Path = cell.resolve_path(spec.path)
        if not self.path.is_file():
            raise UserError(
                f"model `{spec.name}`: models[].path `{spec.path}` does not exist "
                f"(looked for {self.path})"
            )
        self.preprocess_spec: Preprocess = spec.preprocess or Preprocess()
        self.decoder_spec: DecoderSpec = spec.decoder or DecoderSpec()
        from harness.models.decode import make_decoder

        res = cell.resolution
        self._decoder = make_decoder(self.decoder_spec, input_size=(res, res))

    @property
    def random_weights(self) -> bool:
        """Only the plan can say (`weights: random`); otherwise the weights are "from file"."""
        return self.cell.model.weights == "random"

    @cached_property
    def class_names(self) -> list[str | None]:
        given = self.cell.model.class_names
        if given:
            return list(given)
        if self.decoder_spec.kind == "rfdetr":
            return coco91_class_names()
        return list(coco80_class_names())

    @cached_property
    def _artifact(self) -> OnnxArtifact:
        from harness.models.export import artifact_from_file

        artifact = artifact_from_file(self.path, export_s=None, cached=False)
        expected = self.cell.model.input_name
        if expected and expected != artifact.input_name:
            raise UserError(
                f"model `{self.cell.model.name}`: models[].input_name is `{expected}` but "
                f"{self.path} has input `{artifact.input_name}`"
            )
        return artifact

    def describe(self) -> dict[str, Any]:
        art = self._artifact
        return {
            "source": "onnx",
            "path": str(self.path),
            "sha256": art.sha256,
            "bytes": art.bytes,
            "opset": art.opset,
            "input_name": art.input_name,
            "output_names": art.output_names,
            "dynamic_batch": art.dynamic_batch,
            "preprocess": self.preprocess_spec.model_dump(),
            "decoder": self.decoder_spec.model_dump(),
            "class_names_default": not self.cell.model.class_names,
        }

    def preprocess(
        self, images: Sequence[np.ndarray], resolution: int
    ) -> tuple[np.ndarray, list[ImageMeta]]:
        from harness.models.preprocess import preprocess_images

        return preprocess_images(images, resolution, self.preprocess_spec)

    def decode(self, outputs: dict[str, np.ndarray], metas: list[ImageMeta]) -> list[Detections]:
        return self._decoder(outputs, metas)

    def output_names(self) -> list[str]:
        return list(self._artifact.output_names)

    def nms_config(self) -> Any:
        """A raw YOLO head's NMS, as its decoder spec says (the `host` and `device` placements)."""
        spec = self.decoder_spec
        if spec.kind != "yolo_raw":
            return None
        from harness.models.base import NmsConfig
        from harness.plan.schema import NmsSpec

        nms = spec.nms or NmsSpec()
        output = spec.outputs.get("predictions") or self.output_names()[0]
        return NmsConfig(iou_threshold=nms.iou_threshold, class_agnostic=nms.class_agnostic,
                         score_threshold=spec.score_threshold, top_k=spec.top_k, output=output)

    def onnx_artifact(self, artifacts_dir: Path, dynamic_batch: bool, opset: int = 17) -> OnnxArtifact:
        """The user's file as it is. A static-batch file can't be run at another batch, so say
        so here rather than with an ORT shape error mid-measurement."""
        art = self._artifact
        if not art.dynamic_batch:
            batch = self._static_batch()
            if batch is not None and batch != self.cell.batch:
                from harness.errors import CellSkipped

                raise CellSkipped(
                    f"{self.path} has a fixed batch of {batch}; this cell asks for batch "
                    f"{self.cell.batch} (export the model with a dynamic batch axis)"
                )
        return art

    def _static_batch(self) -> int | None:
        import onnx

        model = onnx.load(str(self.path), load_external_data=False)
        for inp in model.graph.input:
            if inp.name == self._artifact.input_name:
                dims = inp.type.tensor_type.shape.dim
                if dims and dims[0].HasField("dim_value"):
                    return int(dims[0].dim_value)
        return None
