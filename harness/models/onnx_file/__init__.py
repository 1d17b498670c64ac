"""A user's own ONNX detector: the file, its preprocessing and a decoder for its outputs
(source.py). The weights are the file itself."""

from __future__ import annotations

from harness.models.plugin import SourcePlugin, model_file_check

PLUGINS = [
    SourcePlugin(
        name="onnx",
        title="ONNX file",
        summary="a user's ONNX detector with a described preprocessing and output decoder",
        implementation="harness.models.onnx_file.source:OnnxFileSource",
        provides=frozenset({"onnx"}),
        check=model_file_check("onnx"),
        # A raw YOLO head needs NMS after the model: the harness's, on the host or the device.
        nms_placements=lambda spec: ("host", "device") if spec.decoder and spec.decoder.kind == "yolo_raw" else (),
        # The harness cannot tell trained weights from random ones in a file; the plan can say.
        random_weights=lambda spec: spec.weights == "random",
        weights_in_file=True,
    )
]
