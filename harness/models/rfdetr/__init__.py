"""RF-DETR built through the `rfdetr` package (detection, segmentation, keypoints): its torch
module, rfdetr's own model object and its ONNX export (source.py); the variants it knows
(variants.py) are static facts, so plan checks need no torch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.models.plugin import Problems, SourcePlugin
from harness.models.rfdetr.variants import VARIANTS, resolution_problem

WEIGHTS_HELP = (
    "`random` (stated on purpose), `cache` (rfdetr's download cache) or a path to a checkpoint"
)


def _check(spec: Any, plan_dir: Path | None) -> Problems:
    problems: Problems = []
    if not spec.variant:
        problems.append(("", "an rfdetr model needs `variant` (for example nano, small, medium)"))
    elif spec.variant not in VARIANTS:
        problems.append(("variant", f"unknown RF-DETR variant `{spec.variant}`; known: {', '.join(VARIANTS)}"))
    if not spec.weights:
        problems.append(("", f"an rfdetr model needs `weights`: {WEIGHTS_HELP}"))
    elif spec.weights not in ("random", "cache") and plan_dir is not None:
        if why := checkpoint_problem(spec.weights, plan_dir):
            problems.append(("weights", why))
    for field in ("path", "input_name", "preprocess", "decoder"):
        if getattr(spec, field) is not None:
            problems.append((field, f"`{field}` is for onnx models; rfdetr models use `variant` and `weights`"))
    return problems


# What torch.save writes: a zip archive (the default since torch 1.6) or a bare pickle.
_CHECKPOINT_MAGIC = (b"PK\x03\x04", b"\x80")


def checkpoint_problem(weights: str, plan_dir: Path, weights_help: str = WEIGHTS_HELP) -> str | None:
    """Why `weights` cannot be a PyTorch checkpoint file, or None (the file's contents are
    checked by the model's source when the model is built). `weights_help`: what the source
    accepts as `weights`, for the message."""
    path = Path(weights).expanduser()
    path = path if path.is_absolute() else plan_dir / path
    expected = f"expected {weights_help}"
    if not path.exists():
        return f"checkpoint `{weights}` does not exist (looked for {path}); {expected}"
    if not path.is_file():
        return f"checkpoint `{weights}` is not a file ({path}); {expected}"
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        return f"checkpoint `{weights}` cannot be read ({exc.strerror}); {expected}"
    if not head.startswith(_CHECKPOINT_MAGIC):
        return (
            f"`{weights}` ({path}) is not a PyTorch checkpoint: a file saved by torch.save (.pth/.pt, "
            "a zip archive or a pickle) was expected"
        )
    return None


def _native(spec: Any) -> list[int] | None:
    variant = VARIANTS.get(spec.variant or "")
    return [variant.native_resolution] if variant else None


def _resolution_problem(spec: Any, resolution: int) -> str | None:
    return resolution_problem(spec.variant, resolution) if spec.variant in VARIANTS else None


PLUGINS = [
    SourcePlugin(
        name="rfdetr",
        title="RF-DETR",
        summary="RF-DETR through the rfdetr package: random weights, rfdetr's cache or a checkpoint",
        implementation="harness.models.rfdetr.source:RfdetrSource",
        provides=frozenset({"torch", "rfdetr", "onnx"}),
        check=_check,
        native_resolutions=_native,
        resolution_problem=_resolution_problem,
        random_weights=lambda spec: spec.weights == "random",
        default=True,
    )
]
