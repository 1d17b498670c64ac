"""A user's own LiteRT (.tflite) detector: the file, the plan's preprocessing (the harness makes
an NCHW float batch; the LiteRT runtime lays it out and quantizes it as the file's input says)
and the plan's decoder (the same fields as for an ONNX file: README's "Your own ONNX model").
Output names are the file's (`decoder.outputs` maps the decoder's names onto them)."""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path
from typing import Any

from harness.models.onnx_file.source import OnnxFileSource


class TfliteFileSource(OnnxFileSource):
    """The ONNX file source's preprocessing, decoding and class names, with a .tflite file."""

    @cached_property
    def tflite(self) -> dict[str, Any]:
        """The file's facts: path, bytes, sha256, and its input and output names (read with
        LiteRT's interpreter, which only a LiteRT cell imports)."""
        data = self.path.read_bytes()
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_content=data)
        return {
            "path": str(self.path),
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "input_names": [d["name"] for d in interpreter.get_input_details()],
            "output_names": [d["name"] for d in interpreter.get_output_details()],
        }

    def tflite_file(self, artifacts_dir: Path) -> Path:
        return self.path  # the user's file, used where it lies

    def describe(self) -> dict[str, Any]:
        facts = self.tflite
        return {
            "source": "tflite",
            "path": facts["path"],
            "sha256": facts["sha256"],
            "bytes": facts["bytes"],
            "input_names": facts["input_names"],
            "output_names": facts["output_names"],
            "preprocess": self.preprocess_spec.model_dump(),
            "decoder": self.decoder_spec.model_dump(),
            "class_names_default": not self.cell.model.class_names,
        }

    def output_names(self) -> list[str]:
        return list(self.tflite["output_names"])

    def onnx_artifact(self, artifacts_dir: Path, dynamic_batch: bool, opset: int = 17) -> Any:
        raise NotImplementedError("a tflite model has no ONNX file")
