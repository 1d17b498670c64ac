"""A user's own ONNX detector: the file, its preprocessing and a decoder for its outputs
(source.py). The weights are the file itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.models.plugin import Problems, SourcePlugin


def _check(spec: Any, plan_dir: Path | None) -> Problems:
    problems: Problems = []
    if not spec.path:
        problems.append(("", "an onnx model needs `path` to the .onnx file"))
    elif plan_dir is not None:
        path = Path(spec.path).expanduser()
        path = path if path.is_absolute() else plan_dir / path
        if not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            problems.append(("path", f"`{spec.path}` {what} (looked for {path}); expected the model's .onnx file"))
    if spec.variant:
        problems.append(("variant", "`variant` is for rfdetr models; an onnx model is the file at `path`"))
    if spec.weights not in (None, "random"):
        problems.append(("weights", "an onnx model's weights are the file itself: leave `weights` out, or "
                                    "write `random` to state that the file holds random weights"))
    return problems


PLUGINS = [
    SourcePlugin(
        name="onnx",
        title="ONNX file",
        summary="a user's ONNX detector with a described preprocessing and output decoder",
        implementation="harness.models.onnx_file.source:OnnxFileSource",
        provides=frozenset({"onnx"}),
        check=_check,
        # A raw YOLO head needs NMS after the model: the harness's, on the host or the device.
        nms_placements=lambda spec: ("host", "device") if spec.decoder and spec.decoder.kind == "yolo_raw" else (),
        # The harness cannot tell trained weights from random ones in a file; the plan can say.
        random_weights=lambda spec: spec.weights == "random",
        weights_in_file=True,
    )
]
