"""A user's own LiteRT (TFLite) detector: the .tflite file, its preprocessing and a decoder for
its outputs, described in the plan as for an ONNX file (source.py). The weights are the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.models.plugin import Problems, SourcePlugin


def _check(spec: Any, plan_dir: Path | None) -> Problems:
    problems: Problems = []
    if not spec.path:
        problems.append(("", "a tflite model needs `path` to the .tflite file"))
    elif plan_dir is not None:
        path = Path(spec.path).expanduser()
        path = path if path.is_absolute() else plan_dir / path
        if not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            problems.append(("path", f"`{spec.path}` {what} (looked for {path}); expected the model's .tflite file"))
    if spec.variant:
        problems.append(("variant", "`variant` is for rfdetr models; a tflite model is the file at `path`"))
    if spec.weights not in (None, "random"):
        problems.append(("weights", "a tflite model's weights are the file itself: leave `weights` out, or "
                                    "write `random` to state that the file holds random weights"))
    return problems


PLUGINS = [
    SourcePlugin(
        name="tflite",
        title="LiteRT file",
        summary="a user's LiteRT (.tflite) detector with a described preprocessing and output decoder",
        implementation="harness.models.tflite_file.source:TfliteFileSource",
        provides=frozenset({"tflite"}),
        check=_check,
        nms_placements=lambda spec: ("host", "device") if spec.decoder and spec.decoder.kind == "yolo_raw" else (),
        random_weights=lambda spec: spec.weights == "random",
        weights_in_file=True,
    )
]
