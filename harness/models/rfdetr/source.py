"""RF-DETR through the `rfdetr` package: building the model, its class list, its ONNX export.

Weights come from exactly one of three places, named in the plan:
  random      built with `pretrain_weights=None` after seeding torch, so every process (the
              torch cell, the export for the ONNX cells) gets the SAME random weights and
              output agreement stays meaningful. mAP is then meaningless, and results say so.
  cache       rfdetr's own download cache (RF_HOME, default ~/.roboflow/models). The file must
              already be there: the harness never downloads during a measurement.
  <path>      a local checkpoint file.
When weights are asked for and can't be had, the cell fails with that reason; it never falls
back to random weights.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from harness.errors import WeightsUnavailable
from harness.files import file_sha256
from harness.models.base import ImageMeta, ModelSource, OnnxArtifact
from harness.models.detections import Detections
from harness.models.export import redirect_fds
from harness.models.rfdetr.variants import VARIANTS

RANDOM_SEED = 0


def rfdetr_cache_dir() -> Path:
    """rfdetr's weight cache, resolved the way rfdetr resolves it (RF_HOME / ROBOFLOW_HOME)."""
    for var in ("RF_HOME", "ROBOFLOW_HOME"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    return Path("~/.roboflow/models").expanduser()


def resolve_weights(weights: str, variant: str, plan_dir: Path) -> Path | None:
    """The checkpoint file for `weights`, or None for random weights; WeightsUnavailable when
    the file isn't there (offline machines can't download, and we never download mid-run)."""
    if weights == "random":
        return None
    if weights == "cache":
        name = VARIANTS[variant].checkpoint
        if name is None:
            raise WeightsUnavailable(
                f"RF-DETR {variant} has no checkpoint in rfdetr's cache scheme (it comes with rfdetr_plus)"
            )
        path = rfdetr_cache_dir() / name
        if not path.is_file():
            raise WeightsUnavailable(
                f"weights: cache asks for {name}, which is not in rfdetr's cache {path.parent} "
                "(fetch it first with scripts/fetch-weights.sh; the harness never downloads during a run, "
                "and it does not fall back to random weights)"
            )
        return path
    path = Path(weights).expanduser()
    if not path.is_absolute():
        path = plan_dir / path
    if not path.is_file():
        raise WeightsUnavailable(f"weights: checkpoint {path} does not exist (no fallback to random weights)")
    return path


def _rfdetr_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("rfdetr")
    except PackageNotFoundError:
        return "unknown"


class RfdetrSource(ModelSource):
    def __init__(self, cell: Any, log: TextIO):
        super().__init__(cell, log)
        spec = cell.model
        self.variant = VARIANTS[spec.variant]
        self.family = self.variant.family
        self.weights_path = resolve_weights(spec.weights, spec.variant, Path(cell.plan_dir))
        self.build_s: float | None = None

    # -- the rfdetr object -----------------------------------------------------------------
    def build(self, device: str = "cpu") -> Any:
        """A fresh rfdetr model object (RFDETRNano, ...) at the cell's resolution."""
        import rfdetr
        import torch

        cls = getattr(rfdetr, self.variant.class_name, None)
        if cls is None:
            raise WeightsUnavailable(
                f"rfdetr {getattr(rfdetr, '__version__', '?')} has no {self.variant.class_name}"
                + (" (it ships in the separate rfdetr_plus package)" if self.variant.plus_only else "")
            )
        kwargs: dict[str, Any] = {"device": device, "resolution": self.cell.resolution}
        kwargs["pretrain_weights"] = str(self.weights_path) if self.weights_path else None
        started = time.perf_counter()
        torch.manual_seed(RANDOM_SEED)  # identical random weights in every process
        with redirect_fds(self.log):
            try:
                model = cls(**kwargs)
            except Exception as exc:
                if self.weights_path is None:
                    raise
                # rfdetr reports a file that is not its checkpoint as whatever broke first
                # (a KeyError, an IndexError deep in its loader): say what was expected.
                raise WeightsUnavailable(
                    f"weights: {self.weights_path} could not be loaded as an RF-DETR {self.cell.model.variant} "
                    f"checkpoint (a .pth/.pt file saved from rfdetr training, with its `model` state dict): "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            # rfdetr 1.11 can leave the core module on the CPU when built for CUDA (seen on an H200)
            model.model.model.to(device)
        self.build_s = time.perf_counter() - started
        return model

    @cached_property
    def rfdetr_model(self) -> Any:
        """The rfdetr object on the cell's device: what rfdetr's own predict()/inference() run."""
        return self.build(self._torch_device())

    @property
    def _host_model(self) -> Any:
        """An rfdetr object for metadata and for copying the core module: the device one when
        a runtime already built it, else one on the CPU, so an ONNX Runtime or TensorRT cell
        keeps no PyTorch copy of the model on the GPU it is timing, and the torch runtime
        keeps only its own copy there."""
        if "rfdetr_model" in self.__dict__:
            return self.rfdetr_model
        if "_cpu_model" not in self.__dict__:
            self.__dict__["_cpu_model"] = self.build("cpu")
        return self.__dict__["_cpu_model"]

    def _torch_device(self) -> str:
        device = self.cell.device
        if device == "auto":
            import torch

            device = "cuda:0" if torch.cuda.is_available() else "cpu"
        return device

    # -- ModelSource -----------------------------------------------------------------------
    @property
    def random_weights(self) -> bool:
        return self.weights_path is None

    @cached_property
    def _metadata(self) -> dict[str, Any]:
        """What preprocessing and decoding read from the model (class names by logit index,
        top-k), built once per model and cached beside the exports: the later processes of a
        cell, and every ONNX Runtime or TensorRT cell, then build no PyTorch model at all."""
        import json

        from harness import files
        from harness.models.export import cache_key

        key = cache_key({"variant": self.cell.model.variant, "weights": self.weights_identity(), "rfdetr": _rfdetr_version()})
        path = self.cell.resolve_path(self.cell.artifacts_dir) / "rfdetr-meta" / f"{key}.json"
        if "rfdetr_model" not in self.__dict__ and path.is_file():
            with contextlib.suppress(OSError, ValueError):
                cached = json.loads(path.read_text("utf-8"))
                if isinstance(cached, dict) and {"class_names", "num_select"} <= set(cached):
                    return cached
        meta = {"class_names": self._class_names_from_model(), "num_select": self._num_select_from_model()}
        with contextlib.suppress(OSError):
            files.ensure_folder(path.parent)
            files.write_replace(path, json.dumps(meta))
        return meta

    @property
    def class_names(self) -> list[str | None]:
        return list(self._metadata["class_names"])

    def _class_names_from_model(self) -> list[str | None]:
        """Names by logit index. COCO-pretrained RF-DETR indexes logits by COCO category id
        (1..90 with gaps) while `class_names` is the flat list of 80; fine-tuned models index
        their own list from 0. Mirrors rfdetr's predict() mapping."""
        from rfdetr.assets.coco_classes import COCO_CLASSES

        model = self._host_model
        names = list(model.class_names)
        args = getattr(model.model, "args", None)
        slots = int(getattr(args, "num_classes", len(names))) + 1
        if slots - 1 > len(names) and names == [COCO_CLASSES[k] for k in sorted(COCO_CLASSES)]:
            table: dict[int, str] = dict(COCO_CLASSES)
        else:
            table = dict(enumerate(names))
        return [table.get(i) for i in range(slots)]

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "source": "rfdetr",
            "variant": self.cell.model.variant,
            "class": self.variant.class_name,
            "family": self.family,
            "weights": "random" if self.weights_path is None else str(self.weights_path),
            "weights_sha256": self._weights_sha256,
            "random_weights": self.random_weights,
            "random_seed": RANDOM_SEED if self.weights_path is None else None,
            "build_s": self.build_s,
            # The preprocessing rfdetr's predict() does and the harness's end-to-end path mirrors.
            "preprocess": _rfdetr_preprocess(),
        }
        from importlib.metadata import PackageNotFoundError, version

        with contextlib.suppress(PackageNotFoundError):
            info["rfdetr_version"] = version("rfdetr")
        return info

    @cached_property
    def _weights_sha256(self) -> str | None:
        """The checkpoint's sha256, hashed once per source (None for random weights)."""
        return file_sha256(self.weights_path) if self.weights_path else None

    def weights_identity(self) -> str:
        return f"random:seed{RANDOM_SEED}" if self.weights_path is None else f"sha256:{self._weights_sha256}"

    def preprocess(self, images: Sequence[np.ndarray], resolution: int) -> tuple[np.ndarray, list[ImageMeta]]:
        from harness.models.preprocess import RFDETR_PREPROCESS, preprocess_images

        return preprocess_images(images, resolution, RFDETR_PREPROCESS)

    def decode(self, outputs: dict[str, np.ndarray], metas: list[ImageMeta]) -> list[Detections]:
        from harness.models.decode import decode_rfdetr

        return decode_rfdetr(outputs, metas, top_k=self._num_select)

    @property
    def _num_select(self) -> int:
        return int(self._metadata["num_select"])

    def _num_select_from_model(self) -> int:
        args = getattr(self._host_model.model, "args", None)
        return int(getattr(args, "num_select", 300) or 300)

    def load_metadata(self) -> None:
        _ = self._metadata

    def output_names(self) -> list[str]:
        names = ["dets", "labels"]
        if self.family == "segmentation":
            names.append("masks")
        if self.family == "keypoint":
            names.append("keypoints")
        return names

    def torch_model(self, device: str) -> Any:
        """The core LWDETR module in export mode (tensor in, tuple of tensors out), fp32, eval."""
        import copy

        module = copy.deepcopy(self._host_model.model.model).to(device).eval()
        module.export()
        return module

    def onnx_artifact(self, artifacts_dir: Path, dynamic_batch: bool, opset: int = 17) -> OnnxArtifact:
        from harness.models.export import export_rfdetr_onnx

        key_fields = {
            "model": self.cell.model.name,
            "variant": self.cell.model.variant,
            "weights": self.weights_identity(),
        }  # export_rfdetr_onnx adds the rfdetr version (and resolution, batch mode, opset)
        return export_rfdetr_onnx(
            lambda: self.build("cpu"),
            cache_dir=artifacts_dir,
            key_fields=key_fields,
            resolution=self.cell.resolution,
            batch=self.cell.batch,
            dynamic_batch=dynamic_batch,
            opset=opset,
            log=self.log,
        )


def _rfdetr_preprocess() -> dict[str, Any]:
    from harness.models.preprocess import RFDETR_PREPROCESS

    return RFDETR_PREPROCESS.model_dump(mode="json")
