"""torchvision's detectors as a model source: built offline, run eagerly, exported to ONNX.

The model is torchvision's own (`torchvision.models.detection.<variant>`), built with
`weights=None, weights_backbone=None` (nothing is ever downloaded) and then either
  random      torch.manual_seed(0) before building (torchvision's own initialisation) and the
              BatchNorm statistics estimated on seeded noise (harness.models.random_init), so
              every process gets the same network and its candidates do not all tie; mAP is
              meaningless and results say so;
  <path>      a local checkpoint: a state dict (torchvision's published .pth files), or a dict
              holding one under `model` (torchvision's reference training scripts), loaded with
              `torch.load(weights_only=True)`, which unpickles tensors and plain containers
              only, never code.

What the harness calls, the "core" (`TorchvisionCore`), is the whole torchvision model on a
batch the harness prepared: `(B, 3, R, R)` float RGB in [0, 1], already resized to the model's
square input (letterboxed for the FPN models, stretched for SSD, as their own transforms do).
Inside it, exactly torchvision's forward: the transform's normalisation (its resize is
skipped: the input is already at the model's size), backbone, heads, box decoding, score
threshold, per-class NMS and the top detections, with boxes in input pixels. It returns
`boxes (B, K, 4)` xyxy, `scores (B, K)` and `labels (B, K)` (torchvision's class index: for
COCO, the category id), each image padded to K = detections per image with score 0. The same
module is what the torch runtime times and what the ONNX export traces, so both runtimes run
the same computation; the decoder maps boxes back to the original image (ImageMeta).

The export traces the per-image postprocess, so an ONNX file has a fixed batch (the cell's):
`dynamic_axes` is recorded as empty.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from harness.accuracy.coco_names import coco91_class_names
from harness.errors import WeightsUnavailable
from harness.files import file_sha256
from harness.models.base import ImageMeta, ModelSource, OnnxArtifact
from harness.models.detections import Detections
from harness.models.export import redirect_fds
from harness.models.torchvision import VARIANTS, TorchvisionOptions, Variant
from harness.plan.schema import DecoderSpec, Preprocess

RANDOM_SEED = 0
# The random-weights recipe, part of the weights' identity (export cache keys): bump it when
# harness.models.random_init changes what a seeded model computes.
RANDOM_INIT = "bn-synthetic-1"
# The size BatchNorm statistics of random weights are estimated at (any size: the weights do
# not depend on the cell's resolution, so one network serves every resolution).
CALIBRATION_SIZE = 224
OUTPUT_NAMES = ["boxes", "scores", "labels"]


def _core_class() -> type:
    import torch

    class TorchvisionCore(torch.nn.Module):
        """torchvision's detector on a prepared square batch, outputs padded to `top_k`."""

        def __init__(self, model: Any, top_k: int):
            super().__init__()
            self.model = model
            self.top_k = top_k
            # The harness resizes (outside the model, in the timed preprocess stage); the
            # transform's own resize would be an identity interpolation of the same pixels.
            model.transform.resize = _no_resize

        def forward(self, x: Any) -> tuple[Any, Any, Any]:
            detections = self.model(list(x.unbind(0)))
            boxes, scores, labels = [], [], []
            for det in detections:
                missing = self.top_k - det["scores"].shape[0]
                boxes.append(torch.nn.functional.pad(det["boxes"], (0, 0, 0, missing)))
                scores.append(torch.nn.functional.pad(det["scores"], (0, missing)))
                labels.append(torch.nn.functional.pad(det["labels"], (0, missing)))
            return torch.stack(boxes), torch.stack(scores), torch.stack(labels)

    return TorchvisionCore


def _no_resize(image: Any, target: Any = None) -> tuple[Any, Any]:
    return image, target


class TorchvisionSource(ModelSource):
    def __init__(self, cell: Any, log: TextIO):
        super().__init__(cell, log)
        spec = cell.model
        self.variant: Variant = VARIANTS[spec.variant]
        self.options = TorchvisionOptions.model_validate(spec.options or {})
        self.weights_path: Path | None = None
        if spec.weights != "random":
            path = cell.resolve_path(spec.weights)
            if not path.is_file():
                raise WeightsUnavailable(f"weights: checkpoint {path} does not exist (no fallback to random weights)")
            self.weights_path = path
        self.build_s: float | None = None
        self._facts: dict[str, Any] = {}
        res = cell.resolution
        self._decoder_spec = DecoderSpec(
            kind="yolo_end2end", top_k=10000, score_threshold=0.0,
            outputs={"boxes": "boxes", "scores": "scores", "classes": "labels"},
        )
        from harness.models.decode import make_decoder

        self._decoder = make_decoder(self._decoder_spec, input_size=(res, res))

    # -- building ---------------------------------------------------------------------------
    def _builder_kwargs(self) -> dict[str, Any]:
        opts, v = self.options, self.variant
        kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None, "num_classes": opts.num_classes}
        if opts.score_threshold is not None:
            kwargs[v.score_kw] = opts.score_threshold
        if opts.nms_iou_threshold is not None:
            kwargs[v.nms_kw] = opts.nms_iou_threshold
        if opts.detections_per_image is not None:
            kwargs[v.detections_kw] = opts.detections_per_image
        return kwargs

    def build(self) -> Any:
        """A fresh TorchvisionCore (fp32, eval, CPU) with the cell's weights."""
        import torch
        from torchvision.models import detection

        started = time.perf_counter()
        torch.manual_seed(RANDOM_SEED)  # identical random weights in every process
        with redirect_fds(self.log):
            model = getattr(detection, self.variant.builder)(**self._builder_kwargs())
        model.eval()
        core = _core_class()(model, self._top_k(model)).eval()
        if self.weights_path is None:
            from harness.models.random_init import calibrate_batchnorm

            self._facts.update(calibrate_batchnorm(model, core, CALIBRATION_SIZE))
        else:
            self._load_checkpoint(model, self.weights_path)
        self.build_s = time.perf_counter() - started
        return core

    def _top_k(self, model: Any) -> int:
        heads = getattr(model, "roi_heads", model)
        return int(heads.detections_per_img)

    def _load_checkpoint(self, model: Any, path: Path) -> None:
        import pickle

        import torch

        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
            raise WeightsUnavailable(
                f"weights: {path} is not a checkpoint torch.load(weights_only=True) can read (a state dict of "
                f"tensors; a file that needs arbitrary code to unpickle is refused): {type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:300]}"
            ) from exc
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
        if not isinstance(state, dict):
            raise WeightsUnavailable(f"weights: {path} holds a {type(state).__name__}, not a state dict")
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:
            raise WeightsUnavailable(
                f"weights: {path} does not fit torchvision's {self.variant.builder} with {self.options.num_classes} "
                f"classes: {str(exc).splitlines()[0][:400]}"
            ) from exc
        # torchvision's trained checkpoints come from FrozenBatchNorm2d layers, which keep no
        # `num_batches_tracked`; anything else missing or left over is a different model.
        missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
        unexpected = [k for k in result.unexpected_keys if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise WeightsUnavailable(
                f"weights: {path} is not a {self.variant.builder} checkpoint: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )

    @cached_property
    def _cpu_core(self) -> Any:
        return self.build()

    # -- ModelSource ------------------------------------------------------------------------
    @property
    def random_weights(self) -> bool:
        return self.weights_path is None

    @cached_property
    def class_names(self) -> list[str | None]:
        given = self.cell.model.class_names
        if given:
            return list(given)
        return coco91_class_names()  # torchvision's COCO label index is the category id

    @cached_property
    def _weights_sha256(self) -> str | None:
        return file_sha256(self.weights_path) if self.weights_path else None

    def weights_identity(self) -> str:
        if self.weights_path is None:
            return f"random:seed{RANDOM_SEED}:{RANDOM_INIT}"
        return f"sha256:{self._weights_sha256}"

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "source": "torchvision",
            "variant": self.cell.model.variant,
            "builder": f"torchvision.models.detection.{self.variant.builder}",
            "builder_kwargs": {k: v for k, v in self._builder_kwargs().items()},
            "weights": "random" if self.weights_path is None else str(self.weights_path),
            "weights_sha256": self._weights_sha256,
            "random_weights": self.random_weights,
            "random_seed": RANDOM_SEED if self.weights_path is None else None,
            "build_s": self.build_s,
            "preprocess": self._preprocess_spec.model_dump(),
            "class_index": "COCO category id (91 slots)" if not self.cell.model.class_names else "class_names",
            **self._facts,
        }
        from importlib.metadata import PackageNotFoundError, version

        with contextlib.suppress(PackageNotFoundError):
            info["torchvision_version"] = version("torchvision")
        return info

    @cached_property
    def _preprocess_spec(self) -> Preprocess:
        # Pixels to [0, 1]; the model normalises with its own mean and std inside its forward.
        return Preprocess(resize=self.variant.resize, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), value_scale=255.0)

    def preprocess(self, images: Sequence[np.ndarray], resolution: int) -> tuple[np.ndarray, list[ImageMeta]]:
        from harness.models.preprocess import preprocess_images

        return preprocess_images(images, resolution, self._preprocess_spec)

    def decode(self, outputs: dict[str, np.ndarray], metas: list[ImageMeta]) -> list[Detections]:
        return self._decoder(outputs, metas)

    def output_names(self) -> list[str]:
        return list(OUTPUT_NAMES)

    def forward_contents(self) -> str | None:
        return (f"torchvision's {self.variant.builder} forward: its own normalisation, backbone, heads, box "
                "decoding, score threshold, per-class NMS and top detections (its postprocess)")

    def in_graph_nms(self, runtime: str) -> dict[str, Any] | None:
        model = self._cpu_core.model
        heads = getattr(model, "roi_heads", model)
        return {
            "implementation": (
                "torchvision.ops.batched_nms in the model's own postprocess"
                + (" (exported as ONNX NonMaxSuppression)" if runtime != "torch" else " (eager)")
            ),
            "iou_threshold": float(getattr(heads, "nms_thresh", 0.0)),
            "score_threshold": float(getattr(heads, "score_thresh", 0.0)),
            "class_agnostic": False,
            "top_k": int(heads.detections_per_img),
            "note": "inside the model: timed in infer; the candidates it sorted out are not visible to the harness",
        }

    def load_metadata(self) -> None:
        _ = self.class_names

    def torch_model(self, device: str) -> Any:
        import copy

        return copy.deepcopy(self._cpu_core).to(device).eval()

    def onnx_artifact(self, artifacts_dir: Path, dynamic_batch: bool, opset: int = 17) -> OnnxArtifact:
        from harness.models.export import cached_onnx_export

        batch, res = self.cell.batch, self.cell.resolution
        import torch
        import torchvision

        fields = {
            "model": self.cell.model.name,
            "source": "torchvision",
            "variant": self.cell.model.variant,
            "builder_kwargs": self._builder_kwargs(),
            "weights": self.weights_identity(),
            "resolution": res,
            "batch": batch,  # fixed: the per-image postprocess is unrolled by the tracer
            "opset": opset,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "exporter": "torch.onnx.export(dynamo=False) of harness TorchvisionCore",
        }
        if dynamic_batch:
            print("[export] torchvision detectors export with a fixed batch (their postprocess loops over "
                  f"images): batch {batch}", file=self.log, flush=True)

        def write(staging: Path) -> dict[str, Any]:
            core = self._cpu_core
            example = torch.rand(batch, 3, res, res, generator=torch.Generator().manual_seed(0))
            started = time.perf_counter()
            with redirect_fds(self.log), torch.no_grad():
                torch.onnx.export(
                    core, (example,), str(staging / "model.onnx"), opset_version=opset,
                    input_names=["images"], output_names=OUTPUT_NAMES, dynamo=False,
                )
            return {"export_s": time.perf_counter() - started, "dynamic_axes": {}}

        return cached_onnx_export(write, cache_dir=artifacts_dir, key_fields=fields, log=self.log)
