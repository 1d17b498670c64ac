"""rfdetr's own inference paths, timed as users call them.

rfdetr-predict    `model.predict(images)`: what a user gets out of the box (images in,
                  detections out; rfdetr does its own resize, normalise, copy and
                  postprocess, so only the end_to_end scope exists and it is one stage).
rfdetr-optimized  `model.inference(dtype=..., compile_backend=torchscript|inductor)` first,
                  then `predict()` (end_to_end) or the optimized module on a device tensor
                  (model scope). fp16 + torchscript is the "FP16+JIT" configuration RF-DETR
                  users are told to use.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from harness.models.detections import Detections
from harness.runtimes.base import Runtime, Stage
from harness.runtimes.pytorch.runtime import _DTYPES, TorchDevice, resolve_device, torch_cell_problem
from harness.runtimes.rfdetr import PLUGINS, RfdetrSettings


def from_supervision(result: Any) -> Detections:
    """rfdetr's predict() result (supervision Detections / KeyPoints) to ours."""
    xyxy = getattr(result, "xyxy", None)
    if xyxy is None:
        return Detections.empty()
    scores = getattr(result, "confidence", None)
    class_id = getattr(result, "class_id", None)
    mask = getattr(result, "mask", None)
    n = len(xyxy)
    return Detections(
        boxes_xyxy=np.asarray(xyxy, np.float32).reshape(n, 4),
        scores=np.asarray(scores if scores is not None else np.ones(n), np.float32),
        class_ids=np.asarray(class_id if class_id is not None else np.zeros(n), np.int64),
        masks=np.asarray(mask, bool) if mask is not None else None,
    )


class _RfdetrBase(TorchDevice, Runtime):
    optimized = False

    @classmethod
    def unavailable_reason(cls, cell: Any) -> str | None:
        return torch_cell_problem(cell, cls.name)

    def prepare(self) -> dict[str, Any]:
        import torch

        self.device = resolve_device(self.cell.device)
        self.dtype = getattr(torch, _DTYPES[self.cell.precision])
        assert isinstance(self.options, RfdetrSettings)
        self.backend = self.options.compile_backend
        self.compile = self.options.compile
        self.threshold = self.options.threshold
        started = time.perf_counter()
        from harness.models.rfdetr.source import RfdetrSource

        assert isinstance(self.source, RfdetrSource)  # unavailable_reason refused other sources
        self.model = self.source.rfdetr_model  # built on the cell's device
        out: dict[str, Any] = {"load_s": time.perf_counter() - started, "model": self.source.describe()}
        if self.optimized or self.cell.precision != "fp32":
            if self.backend == "inductor":
                # Every process of a cell compiles the same graph: inductor's on-disk cache in
                # the artifact folder makes the later ones reuse the first one's work.
                cache = self.cell.resolve_path(self.cell.artifacts_dir) / "inductor"
                os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache))
                out["inductor_cache"] = os.environ["TORCHINDUCTOR_CACHE_DIR"]
            started = time.perf_counter()
            self.model.inference(
                compile=self.compile,
                batch_size=self.cell.batch,
                dtype=self.dtype,
                compile_backend=self.backend,
            )
            self.synchronize()
            out["compile_s"] = time.perf_counter() - started
        return out

    # model scope: the optimized module on a device tensor (to_device: TorchDevice's)
    def run_model(self, inputs: Any) -> Any:
        import torch

        module = self.model.model.inference_model or self.model.model.model
        with torch.inference_mode():
            return module(inputs)

    def to_host(self, outputs: Any) -> dict[str, np.ndarray]:
        if isinstance(outputs, dict):
            outputs = (outputs["pred_boxes"], outputs["pred_logits"])
        names = self.source.output_names()
        return {name: t.float().cpu().numpy() for name, t in zip(names, outputs, strict=False)}

    # end_to_end: predict() is rfdetr's whole path in one call
    def stages(self) -> list[Stage]:
        def predict(images: Sequence[np.ndarray]) -> list[Detections]:
            result = self.model.predict(list(images), threshold=self.threshold, include_source_image=False)
            results = result if isinstance(result, list) else [result]
            return [from_supervision(r) for r in results]

        return [Stage("predict", predict)]

    def settings(self) -> dict[str, Any]:
        import torch

        optimized = bool(getattr(self.model, "_is_optimized_for_inference", False))
        return {
            "torch": torch.__version__,
            "device": self.device,
            "dtype": str(self.dtype).replace("torch.", ""),
            "optimized_for_inference": optimized,
            "compiled": bool(getattr(self.model, "_optimized_has_been_compiled", False)),
            "compile_backend": self.backend if optimized and self.compile else None,
            "optimized_batch_size": getattr(self.model, "_optimized_batch_size", None),
            "predict_threshold": self.threshold,
        }


class RfdetrPredictRuntime(_RfdetrBase):
    plugin = PLUGINS[0]


class RfdetrOptimizedRuntime(_RfdetrBase):
    plugin = PLUGINS[1]
    optimized = True
