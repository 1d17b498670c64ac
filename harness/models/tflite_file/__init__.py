"""A user's own LiteRT (TFLite) detector: the .tflite file, its preprocessing and a decoder for
its outputs, described in the plan as for an ONNX file (source.py). The weights are the file."""

from __future__ import annotations

from harness.models.plugin import SourcePlugin, model_file_check

PLUGINS = [
    SourcePlugin(
        name="tflite",
        title="LiteRT file",
        summary="a user's LiteRT (.tflite) detector with a described preprocessing and output decoder",
        implementation="harness.models.tflite_file.source:TfliteFileSource",
        provides=frozenset({"tflite"}),
        check=model_file_check("tflite"),
        nms_placements=lambda spec: ("host", "device") if spec.decoder and spec.decoder.kind == "yolo_raw" else (),
        random_weights=lambda spec: spec.weights == "random",
        weights_in_file=True,
    )
]
