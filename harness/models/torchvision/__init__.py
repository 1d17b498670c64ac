"""torchvision's detectors (Faster R-CNN, RetinaNet, FCOS, SSD, SSDlite) built offline from
torchvision with `weights=None` and seeded random weights, or from a local checkpoint (a state
dict); run eagerly by the torch runtime and exported to ONNX by the harness (source.py). The
variants and their native resolutions are static facts here, so plan checks need no torch.

docs/models.md says what each scope times for these models: their forward holds their own
normalisation, box decoding and NMS (torchvision's postprocess), so NMS is `in_graph` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from harness.models.plugin import Problems, SourceOptions, SourcePlugin

WEIGHTS_HELP = "`random` (torchvision's own init, seeded: stated on purpose) or a path to a checkpoint (a state dict)"


# The builders' keywords for the score threshold, the NMS IoU and the detections kept.
_KEYWORDS = {
    "rcnn": ("box_score_thresh", "box_nms_thresh", "box_detections_per_img"),
    "one_stage": ("score_thresh", "nms_thresh", "detections_per_img"),
}


@dataclass(frozen=True)
class Variant:
    builder: str  # the torchvision.models.detection function
    family: Literal["rcnn", "retinanet", "fcos", "ssd"]
    native_resolution: int
    # How images become the input: letterbox (aspect kept, like torchvision's min_size /
    # max_size resize) or stretch (SSD's fixed_size resize).
    resize: Literal["letterbox", "stretch"]
    # Input sides must be a multiple of this (the FPN's coarsest stride); 1: any size.
    multiple: int = 32

    def _keywords(self) -> tuple[str, str, str]:
        return _KEYWORDS["rcnn" if self.family == "rcnn" else "one_stage"]

    @property
    def score_kw(self) -> str:
        return self._keywords()[0]

    @property
    def nms_kw(self) -> str:
        return self._keywords()[1]

    @property
    def detections_kw(self) -> str:
        return self._keywords()[2]


# torchvision's resize for the FPN models is "short side to min_size (800), long side at most
# max_size (1333)", a shape that follows each image. A deployment with a fixed input (ONNX,
# TensorRT, batching) picks a square: the native resolution is min_size, where a square image
# is resized exactly as torchvision resizes it.
VARIANTS: dict[str, Variant] = {
    v.builder: v
    for v in (
        Variant("fasterrcnn_resnet50_fpn", "rcnn", 800, "letterbox"),
        Variant("fasterrcnn_resnet50_fpn_v2", "rcnn", 800, "letterbox"),
        Variant("fasterrcnn_mobilenet_v3_large_fpn", "rcnn", 800, "letterbox"),
        Variant("fasterrcnn_mobilenet_v3_large_320_fpn", "rcnn", 320, "letterbox"),
        Variant("retinanet_resnet50_fpn", "retinanet", 800, "letterbox"),
        Variant("retinanet_resnet50_fpn_v2", "retinanet", 800, "letterbox"),
        Variant("fcos_resnet50_fpn", "fcos", 800, "letterbox"),
        Variant("ssdlite320_mobilenet_v3_large", "ssd", 320, "stretch", multiple=1),
        Variant("ssd300_vgg16", "ssd", 300, "stretch", multiple=1),
    )
}


class TorchvisionOptions(SourceOptions):
    """`models[].options` of a torchvision model. None: the builder's own default."""

    # Detections scoring at or below it are dropped by the model's postprocess (torchvision:
    # 0.05 for Faster R-CNN, RetinaNet, FCOS; 0.001 for SSD). Random weights score ~1/91 on
    # every class, so a plan of random-weight models lowers it to keep detections.
    score_threshold: float | None = Field(default=None, ge=0, le=1)
    nms_iou_threshold: float | None = Field(default=None, gt=0, le=1)
    detections_per_image: int | None = Field(default=None, ge=1, le=10000)
    # Classes of the head, background included (COCO: 91, index = COCO category id).
    num_classes: int = Field(default=91, ge=2)


def _check(spec: Any, plan_dir: Path | None) -> Problems:
    problems: Problems = []
    if not spec.variant:
        problems.append(("", f"a torchvision model needs `variant`: one of {', '.join(VARIANTS)}"))
    elif spec.variant not in VARIANTS:
        problems.append(("variant", f"unknown torchvision detector `{spec.variant}`; known: {', '.join(VARIANTS)}"))
    if not spec.weights:
        problems.append(("", f"a torchvision model needs `weights`: {WEIGHTS_HELP}"))
    elif spec.weights != "random" and plan_dir is not None:
        from harness.models.rfdetr import checkpoint_problem

        if why := checkpoint_problem(spec.weights, plan_dir, WEIGHTS_HELP):
            problems.append(("weights", why))
    for name in ("path", "input_name", "preprocess", "decoder"):
        if getattr(spec, name) is not None:
            problems.append((name, f"`{name}` is for onnx models; a torchvision model brings its own"))
    num_classes = (spec.options or {}).get("num_classes", 91)
    if spec.class_names is not None and isinstance(num_classes, int) and len(spec.class_names) != num_classes:
        problems.append(("class_names", f"{len(spec.class_names)} names for a head of {num_classes} classes "
                                        "(index 0 is the background: give it any name, or null)"))
    if num_classes != 91 and spec.class_names is None:
        problems.append(("class_names", f"a head of {num_classes} classes needs `class_names` (COCO's 91-slot "
                                        "table is the default only for 91)"))
    return problems


def _native(spec: Any) -> list[int] | None:
    variant = VARIANTS.get(spec.variant or "")
    return [variant.native_resolution] if variant else None


def _resolution_problem(spec: Any, resolution: int) -> str | None:
    variant = VARIANTS.get(spec.variant or "")
    if variant and resolution % variant.multiple:
        return (f"{spec.variant} needs an input side that is a multiple of {variant.multiple} (its FPN's "
                f"coarsest stride); got {resolution}")
    return None


PLUGINS = [
    SourcePlugin(
        name="torchvision",
        title="torchvision detector",
        summary="torchvision's Faster R-CNN, RetinaNet, FCOS, SSD and SSDlite: random weights or a local checkpoint",
        implementation="harness.models.torchvision.source:TorchvisionSource",
        provides=frozenset({"torch", "onnx"}),
        options=TorchvisionOptions,
        check=_check,
        native_resolutions=_native,
        resolution_problem=_resolution_problem,
        # Their NMS is part of their own postprocess, inside the model (eager and exported).
        nms_placements=lambda spec: ("in_graph",),
        random_weights=lambda spec: spec.weights == "random",
    )
]
