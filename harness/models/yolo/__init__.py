"""Ultralytics YOLO (YOLOv8 and YOLO11 detection) built offline from the model's YAML with
seeded random weights, or from a user's `.pt` checkpoint loaded with `weights_only=True`;
exported with Ultralytics' own exporter, raw head (NMS by the harness, on the host or the
device) or with NMS in the graph (source.py). Variants and native resolutions are static
facts here, so plan checks import neither torch nor ultralytics.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field

from harness.models.plugin import Problems, SourceOptions, SourcePlugin

FAMILIES = ("yolov8", "yolo11")
SCALES = ("n", "s", "m", "l", "x")
VARIANTS = tuple(f"{family}{scale}" for family in FAMILIES for scale in SCALES)
NATIVE_RESOLUTION = 640  # Ultralytics' imgsz for every detection model of these families
STRIDE = 32  # the coarsest head stride: input sides must be a multiple of it
WEIGHTS_HELP = "`random` (built from the model's YAML, seeded: stated on purpose) or a path to a .pt checkpoint"
_TASK_SUFFIX = re.compile(r"-(seg|pose|obb|cls)$")


class YoloOptions(SourceOptions):
    """`models[].options` of a YOLO model: its NMS, wherever the plan places it."""

    # Candidates score strictly above it (Ultralytics' COCO validation uses 0.001).
    score_threshold: float = Field(default=0.001, ge=0, le=1)
    iou_threshold: float = Field(default=0.7, gt=0, le=1)  # Ultralytics' default
    max_det: int = Field(default=300, ge=1, le=10000)  # detections kept per image
    class_agnostic: bool = False


def _check(spec: Any, plan_dir: Path | None) -> Problems:
    problems: Problems = []
    if spec.variant and (m := _TASK_SUFFIX.search(spec.variant)):
        problems.append(("variant", f"`{spec.variant}`: YOLO {m.group(1)} models are not supported yet (detection "
                                    f"only: {', '.join(VARIANTS)})"))
    elif spec.variant and spec.variant not in VARIANTS:
        problems.append(("variant", f"unknown YOLO variant `{spec.variant}`; known: {', '.join(VARIANTS)}"))
    if not spec.weights:
        problems.append(("", f"a yolo model needs `weights`: {WEIGHTS_HELP}"))
    elif spec.weights == "random":
        if not spec.variant:
            problems.append(("", f"a yolo model with random weights needs `variant` (built from its YAML): "
                                 f"one of {', '.join(VARIANTS)}"))
    elif plan_dir is not None:
        from harness.models.rfdetr import checkpoint_problem

        if why := checkpoint_problem(spec.weights, plan_dir, WEIGHTS_HELP):
            problems.append(("weights", why))
    for name in ("path", "input_name", "preprocess", "decoder"):
        if getattr(spec, name) is not None:
            problems.append((name, f"`{name}` is for onnx models; a yolo model brings its own (its NMS settings "
                                   "are `options`)"))
    return problems


def _resolution_problem(spec: Any, resolution: int) -> str | None:
    if resolution % STRIDE:
        return f"YOLO needs an input side that is a multiple of {STRIDE} (its coarsest stride); got {resolution}"
    return None


PLUGINS = [
    SourcePlugin(
        name="yolo",
        title="Ultralytics YOLO",
        summary="YOLOv8 / YOLO11 detection through ultralytics: random weights from the YAML, or a .pt checkpoint",
        implementation="harness.models.yolo.source:YoloSource",
        # tflite: Ultralytics' LiteRT export, which needs litert-torch (the litert-export extra;
        # a LiteRT cell says so and is skipped where it is absent).
        provides=frozenset({"torch", "onnx", "tflite"}),
        options=YoloOptions,
        check=_check,
        native_resolutions=lambda spec: [NATIVE_RESOLUTION],
        resolution_problem=_resolution_problem,
        # host first: Ultralytics' own default export is the raw head, NMS afterwards on the CPU.
        nms_placements=lambda spec: ("host", "device", "in_graph"),
        random_weights=lambda spec: spec.weights == "random",
    )
]
