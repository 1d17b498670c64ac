"""Ultralytics YOLO as a model source: built offline, run eagerly, exported by Ultralytics.

Weights, from exactly one of two places:
  random      `DetectionModel(<variant>.yaml)` (the YAML ships inside the ultralytics package)
              after torch.manual_seed(0), then BatchNorm statistics estimated on seeded noise
              (harness.models.random_init): every process gets the same network. Its classes
              are COCO's 80 (the YAMLs' nc: 80), in Ultralytics' order. mAP is meaningless.
  <path>      a user's .pt checkpoint, loaded by Ultralytics' own loader in its restricted mode
              (`torch_safe_load(safe_only=True)`: `torch.load(weights_only=True)` with an
              allow-list of Ultralytics' and torch's module classes), so a checkpoint can
              rebuild known layers but never run code of its own. Ultralytics' default load is
              `weights_only=False` (a checkpoint is a pickled model object), which would
              execute whatever the file says: the harness never uses it.

Nothing is downloaded: ultralytics is imported with YOLO_OFFLINE=1 and YOLO_AUTOINSTALL=false
(it would pip-install missing export requirements), its settings folder is put under the
artifacts folder unless YOLO_CONFIG_DIR says otherwise, and a checkpoint must be a local file.

The plan's NMS placement decides the artifact and the decoder:
  host, device  the raw head: (B, 4 + 80, A), cxcywh in input pixels and class sigmoids (what
                `YOLO.export(format="onnx")` writes by default); NMS by the harness
                (harness.models.nms) with `options` (score_threshold, iou_threshold, max_det,
                class_agnostic).
  in_graph      Ultralytics' `nms=True` export (its NMSModel: best class, score threshold,
                class-aware torchvision.ops.nms, which exports as ONNX NonMaxSuppression, top
                max_det) with the same thresholds; (B, max_det, 6) out, decoded as yolo_end2end.
The torch runtime times the same module the exporter traces (fused Conv+BN, as Ultralytics'
own inference runs it): the raw head, or NMSModel around it.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TextIO

import numpy as np

from harness.accuracy.coco_names import coco80_class_names
from harness.errors import WeightsUnavailable
from harness.files import file_sha256
from harness.models.base import ImageMeta, ModelSource, NmsConfig, OnnxArtifact
from harness.models.detections import Detections
from harness.models.export import redirect_fds
from harness.models.yolo import YoloOptions
from harness.plan.schema import DecoderSpec, NmsSpec, Preprocess

RANDOM_SEED = 0
# The random-weights recipe, part of the weights' identity (export cache keys): bump it when
# harness.models.random_init changes what a seeded model computes.
RANDOM_INIT = "bn-synthetic-1"
CALIBRATION_SIZE = 256
OUTPUT = "output0"
# Ultralytics' LetterBox: aspect kept, centred, grey 114; RGB in [0, 1], no mean/std.
PREPROCESS = Preprocess(resize="letterbox", letterbox_fill=114, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                        value_scale=255.0)


def import_ultralytics(settings_dir: Path | None = None) -> Any:
    """ultralytics, imported offline: no downloads, no pip installs, settings out of $HOME."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    os.environ.setdefault("YOLO_VERBOSE", "false")
    if settings_dir is not None and "YOLO_CONFIG_DIR" not in os.environ:
        settings_dir.mkdir(parents=True, exist_ok=True)
        os.environ["YOLO_CONFIG_DIR"] = str(settings_dir)
    import ultralytics
    from PIL import Image

    # Importing ultralytics replaces PIL.Image.open process-wide with a wrapper that, on an
    # image Pillow cannot identify, calls check_requirements("pi-heif") and retries: a
    # rejected upload in a server cell would then raise ImportError instead of Pillow's error.
    # The harness decodes images itself, so Pillow's own open comes back.
    patches = getattr(getattr(ultralytics, "utils", None), "patches", None)
    original = getattr(patches, "_image_open", None)
    if original is not None and Image.open is not original:
        Image.open = original
    return ultralytics


def load_checkpoint(path: Path) -> Any:
    """The model of a .pt checkpoint, loaded with weights_only=True (see the module doc)."""
    from ultralytics.nn.tasks import torch_safe_load

    try:
        ckpt, _ = torch_safe_load(str(path), safe_only=True)
    except Exception as exc:  # noqa: BLE001 - ultralytics raises TypeError, pickle and zip errors
        raise WeightsUnavailable(
            f"weights: {path} could not be loaded as an Ultralytics checkpoint with weights_only=True (only "
            f"Ultralytics' and torch's layer classes may be unpickled): {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0][:400] if str(exc).strip() else ''}"
        ) from exc
    model = (ckpt.get("ema") or ckpt.get("model")) if isinstance(ckpt, dict) else None
    if model is None or not hasattr(model, "model"):
        raise WeightsUnavailable(f"weights: {path} holds no Ultralytics model (no `model` or `ema` entry)")
    if getattr(model, "task", "detect") != "detect":
        raise WeightsUnavailable(f"weights: {path} is a YOLO {model.task} model; only detection is supported yet")
    return model.float().eval()


def checkpoint_variant(model: Any) -> str | None:
    """The architecture an Ultralytics model was built from, as a plan's `variant` names it
    (`yolo11n`, `yolov8s`): its YAML file's name, with the scale the YAML records put in when
    the name has none (`yolov8.yaml` + scale n -> yolov8n); None when the model does not say."""
    import re

    spec = getattr(model, "yaml", None)
    if not isinstance(spec, dict) or not spec.get("yaml_file"):
        return None
    stem = Path(str(spec["yaml_file"])).stem
    scale = spec.get("scale")
    if isinstance(scale, str) and not re.search(r"\d[nslmx](?=-|$)", stem):
        stem = re.sub(r"(\d+)(?=-|$)", rf"\g<1>{scale}", stem, count=1)
    return stem


class YoloSource(ModelSource):
    def __init__(self, cell: Any, log: TextIO):
        super().__init__(cell, log)
        spec = cell.model
        self.options = YoloOptions.model_validate(spec.options or {})
        self.weights_path: Path | None = None
        if spec.weights != "random":
            path = cell.resolve_path(spec.weights)
            if not path.is_file():
                raise WeightsUnavailable(f"weights: checkpoint {path} does not exist (no fallback to random weights)")
            self.weights_path = path
        self.in_graph = cell.nms == "in_graph"
        self.build_s: float | None = None
        self._facts: dict[str, Any] = {}
        opts, res = self.options, cell.resolution
        if self.in_graph:
            spec_ = DecoderSpec(kind="yolo_end2end", top_k=opts.max_det, score_threshold=0.0,
                                outputs={"predictions": OUTPUT})
        else:
            spec_ = DecoderSpec(kind="yolo_raw", top_k=opts.max_det, score_threshold=opts.score_threshold,
                                nms=NmsSpec(iou_threshold=opts.iou_threshold, class_agnostic=opts.class_agnostic),
                                outputs={"predictions": OUTPUT})
        from harness.models.decode import make_decoder

        self._decoder = make_decoder(spec_, input_size=(res, res))

    # -- building ---------------------------------------------------------------------------
    def _settings_dir(self) -> Path:
        return self.cell.resolve_path(self.cell.artifacts_dir) / "ultralytics-settings"

    def build(self) -> Any:
        """The Ultralytics DetectionModel (fp32, eval, CPU, not fused) with the cell's weights."""
        import_ultralytics(self._settings_dir())
        import torch

        started = time.perf_counter()
        with redirect_fds(self.log):
            if self.weights_path is not None:
                model = load_checkpoint(self.weights_path)
                self._check_variant(model)
            else:
                from ultralytics.nn.tasks import DetectionModel

                torch.manual_seed(RANDOM_SEED)
                model = DetectionModel(cfg=f"{self.cell.model.variant}.yaml", nc=80, verbose=False)
                model.names = dict(enumerate(coco80_class_names()))
                model.eval()
                from harness.models.random_init import calibrate_batchnorm

                self._facts.update(calibrate_batchnorm(model, model, CALIBRATION_SIZE))
        if getattr(model, "task", None) is None:
            model.task = "detect"  # what the YOLO() wrapper sets; the exporter reads it
        for p in model.parameters():
            p.requires_grad = False
        self.build_s = time.perf_counter() - started
        return model

    def _check_variant(self, model: Any) -> None:
        """The plan's `variant` must be the checkpoint's architecture: the record names the
        variant, so a yolo11n file run as `yolov8n` would be reported as the wrong model."""
        found = checkpoint_variant(model)
        stated = self.cell.model.variant
        if found is not None and stated and found != stated:
            raise WeightsUnavailable(
                f"model `{self.cell.model.name}`: variant is `{stated}`, but {self.weights_path} holds a `{found}` "
                f"(its model YAML): write `variant: {found}`"
            )

    @cached_property
    def _model(self) -> Any:
        return self.build()

    def _export_args(self, dynamic: bool) -> SimpleNamespace:
        opts = self.options
        return SimpleNamespace(format="torch", dynamic=dynamic, batch=self.cell.batch, conf=opts.score_threshold,
                               iou=opts.iou_threshold, max_det=opts.max_det, agnostic_nms=opts.class_agnostic)

    # -- ModelSource ------------------------------------------------------------------------
    @property
    def random_weights(self) -> bool:
        return self.weights_path is None

    @cached_property
    def class_names(self) -> list[str | None]:
        given = self.cell.model.class_names
        if given:
            return list(given)
        names = self._model.names
        if isinstance(names, dict):
            return [names.get(i) for i in range(max(names) + 1)] if names else []
        return list(names)

    @cached_property
    def _weights_sha256(self) -> str | None:
        return file_sha256(self.weights_path) if self.weights_path else None

    def weights_identity(self) -> str:
        if self.weights_path is None:
            return f"random:{self.cell.model.variant}:seed{RANDOM_SEED}:{RANDOM_INIT}"
        return f"sha256:{self._weights_sha256}"

    def describe(self) -> dict[str, Any]:
        model = self._model
        info: dict[str, Any] = {
            "source": "yolo",
            "variant": self.cell.model.variant,
            "yaml": model.yaml.get("yaml_file") if isinstance(getattr(model, "yaml", None), dict) else None,
            "task": getattr(model, "task", "detect"),
            "classes": len(self.class_names),
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "weights": "random" if self.weights_path is None else str(self.weights_path),
            "weights_sha256": self._weights_sha256,
            "weights_loader": None if self.weights_path is None else
            "ultralytics.nn.tasks.torch_safe_load(safe_only=True): torch.load(weights_only=True) + allow-list",
            "random_weights": self.random_weights,
            "random_seed": RANDOM_SEED if self.weights_path is None else None,
            "build_s": self.build_s,
            "preprocess": PREPROCESS.model_dump(mode="json"),
            "nms": self.options.model_dump(),
            "head": "NMS in graph (ultralytics nms=True)" if self.in_graph else "raw (NMS by the harness)",
            **self._facts,
        }
        from importlib.metadata import PackageNotFoundError, version

        with contextlib.suppress(PackageNotFoundError):
            info["ultralytics_version"] = version("ultralytics")
        return info

    def preprocess(self, images: Sequence[np.ndarray], resolution: int) -> tuple[np.ndarray, list[ImageMeta]]:
        from harness.models.preprocess import preprocess_images

        return preprocess_images(images, resolution, PREPROCESS)

    def decode(self, outputs: dict[str, np.ndarray], metas: list[ImageMeta]) -> list[Detections]:
        return self._decoder(outputs, metas)

    def output_names(self) -> list[str]:
        return [OUTPUT]

    def nms_config(self) -> NmsConfig | None:
        if self.in_graph:
            return None
        opts = self.options
        return NmsConfig(iou_threshold=opts.iou_threshold, class_agnostic=opts.class_agnostic,
                         score_threshold=opts.score_threshold, top_k=opts.max_det, output=OUTPUT)

    def in_graph_nms(self, runtime: str) -> dict[str, Any] | None:
        if not self.in_graph:
            return None
        opts = self.options
        how = "eager, on the runtime's device" if runtime == "torch" else "exported as ONNX NonMaxSuppression"
        return {
            "implementation": f"Ultralytics NMSModel: best class, score threshold, class-aware torchvision.ops.nms, "
                              f"top max_det ({how})",
            "iou_threshold": opts.iou_threshold,
            "score_threshold": opts.score_threshold,
            "class_agnostic": opts.class_agnostic,
            "top_k": opts.max_det,
            "note": "inside the model: timed in infer; the candidates it sorted out are not visible to the harness",
        }

    def forward_contents(self) -> str | None:
        head = "the head's box decoding (DFL over anchors) and class sigmoids"
        if self.in_graph:
            return f"{head}, then Ultralytics' NMSModel (score threshold, class-aware NMS, top max_det)"
        return head

    def load_metadata(self) -> None:
        _ = self.class_names

    def _fused_copy(self) -> Any:
        model = copy.deepcopy(self._model)
        with redirect_fds(self.log):
            model = model.fuse()
        head = model.model[-1]
        head.export = True  # outputs the decoded tensor alone, as the exporter sets it
        head.format = "torch"
        head.xyxy = self.in_graph  # NMSModel expects xyxy boxes (the exporter sets the same)
        head.shape = None
        return model.eval()

    def torch_model(self, device: str) -> Any:
        import torch

        model = self._fused_copy()
        if self.in_graph:
            from ultralytics.engine.exporter import NMSModel

            inner: Any = NMSModel(model, self._export_args(dynamic=False))
        else:
            inner = model

        class Core(torch.nn.Module):
            def __init__(self, wrapped: Any):
                super().__init__()
                self.wrapped = wrapped

            def forward(self, x: Any) -> tuple[Any]:
                out = self.wrapped(x)
                return (out[0] if isinstance(out, (tuple, list)) else out,)

        return Core(inner).to(device).eval()

    def tflite_file(self, artifacts_dir: Path) -> Path:
        """A .tflite file of the model the ONNX cells export (raw head, or NMS in graph), written
        by Ultralytics' own LiteRT export (`Exporter(format="litert")`, which converts with
        litert-torch: PyTorch -> LiteRT, no ONNX or TensorFlow in between), at the cell's fixed
        batch and resolution, cached by a key over everything that decides it."""
        import hashlib
        import json
        import shutil
        import tempfile
        from importlib.metadata import version

        import torch

        if self.in_graph:
            from harness.errors import CellSkipped

            # Ultralytics' LiteRT export takes no `nms` argument (its format table lists batch,
            # quantize, data, fraction): it would write the raw head under an in_graph label.
            raise CellSkipped("Ultralytics' LiteRT export has no NMS in the graph (format=litert takes no nms "
                              "argument): time LiteRT with the host or device placement")
        import_ultralytics(self._settings_dir())
        batch, res, opts = self.cell.batch, self.cell.resolution, self.options
        fields = {
            "model": self.cell.model.name, "source": "yolo", "variant": self.cell.model.variant,
            "weights": self.weights_identity(), "resolution": res, "batch": batch,
            "nms": "in_graph" if self.in_graph else "raw",
            "nms_options": opts.model_dump() if self.in_graph else None,
            "torch": torch.__version__, "ultralytics": version("ultralytics"), "litert_torch": version("litert-torch"),
            "exporter": "ultralytics.engine.exporter.Exporter(format=litert)",
        }
        key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
        self.tflite_facts: dict[str, Any]
        folder = artifacts_dir / "tflite" / key
        target = folder / "model.tflite"
        if target.is_file():
            self.tflite_facts = {"export_s": None, "cached": True, "key_fields": fields}
            return target
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=folder.parent))
        try:
            from ultralytics.engine.exporter import Exporter

            model = copy.deepcopy(self._model)
            model.pt_path = str(staging / "model.pt")  # the exporter writes beside it
            overrides = {
                "format": "litert", "imgsz": res, "batch": batch, "half": False, "int8": False, "device": "cpu",
                "nms": self.in_graph, "conf": opts.score_threshold, "iou": opts.iou_threshold,
                "max_det": opts.max_det, "agnostic_nms": opts.class_agnostic,
            }
            started = time.perf_counter()
            with redirect_fds(self.log):
                written = Path(Exporter(overrides=overrides)(model=model))
            export_s = time.perf_counter() - started
            os.replace(written, staging / "model.tflite")
            try:
                os.rename(staging, folder)
            except OSError:  # another worker got there first: its file is the same export
                pass
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        self.tflite_facts = {"export_s": export_s, "cached": False, "key_fields": fields}
        return target

    def adapt_tflite_outputs(self, outputs: dict[str, Any]) -> dict[str, Any]:
        """Ultralytics' LiteRT export divides the box channels by the input size (so that INT8
        keeps the class scores; its own LiteRT backend multiplies them back): back to input
        pixels, as the raw head's decoder expects."""
        res = float(self.cell.resolution)
        out = dict(outputs)
        value = out[OUTPUT].copy()
        value[:, :4] *= res  # x, w by the width, y, h by the height: the input is square
        out[OUTPUT] = value
        return out

    def onnx_artifact(self, artifacts_dir: Path, dynamic_batch: bool, opset: int = 17) -> OnnxArtifact:
        from harness.models.export import cached_onnx_export

        batch, res, opts = self.cell.batch, self.cell.resolution, self.options
        import torch
        import_ultralytics(self._settings_dir())
        from importlib.metadata import version

        fields = {
            "model": self.cell.model.name,
            "source": "yolo",
            "variant": self.cell.model.variant,
            "weights": self.weights_identity(),
            "resolution": res,
            "batch": "dynamic" if dynamic_batch else batch,
            "opset": opset,
            "nms": "in_graph" if self.in_graph else "raw",
            "nms_options": opts.model_dump() if self.in_graph else None,
            "torch": torch.__version__,
            "ultralytics": version("ultralytics"),
            "exporter": "ultralytics.engine.exporter.Exporter(format=onnx, simplify=False)",
        }

        def write(staging: Path) -> dict[str, Any]:
            from ultralytics.engine.exporter import Exporter

            model = copy.deepcopy(self._model)
            model.pt_path = str(staging / "model.pt")  # the exporter writes beside it: model.onnx
            overrides = {
                "format": "onnx", "imgsz": res, "batch": batch, "dynamic": dynamic_batch, "opset": opset,
                "simplify": False, "half": False, "device": "cpu", "nms": self.in_graph,
                "conf": opts.score_threshold, "iou": opts.iou_threshold, "max_det": opts.max_det,
                "agnostic_nms": opts.class_agnostic,
            }
            started = time.perf_counter()
            with redirect_fds(self.log):
                written = Exporter(overrides=overrides)(model=model)
            export_s = time.perf_counter() - started
            written_path = Path(written)
            if written_path != staging / "model.onnx":
                os.replace(written_path, staging / "model.onnx")
            dynamic_axes = None
            if dynamic_batch:
                dynamic_axes = {"images": {"0": "batch", "2": "height", "3": "width"},
                                OUTPUT: {"0": "batch"} if self.in_graph else {"0": "batch", "2": "anchors"}}
            return {"export_s": export_s, "dynamic_axes": dynamic_axes or {}}

        return cached_onnx_export(write, cache_dir=artifacts_dir, key_fields=fields, log=self.log)
