"""LiteRT (TFLite) on the CPU: a .tflite file through `ai_edge_litert.interpreter.Interpreter`,
FP32 or INT8 (a quantized file; its input and output scales and zero points applied by the
runtime). A `source: tflite` file is used as it is; a YOLO model is exported by Ultralytics'
LiteRT export (litert-torch). runtime.py says what is read back; docs/edge-runtimes.md which
exports reach LiteRT and which do not."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from harness.runtimes.plugin import RuntimePlugin, RuntimeSettings


class LiteRtSettings(RuntimeSettings):
    # The interpreter's num_threads. None: the harness's per-worker thread count (one per pinned
    # core), as for ONNX Runtime and OpenVINO.
    threads: Annotated[int, Field(ge=1, le=1024)] | None = None
    # The XNNPACK delegate LiteRT applies by default on the CPU (its fast float and int8
    # kernels); false runs the built-in reference kernels only
    # (OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES).
    xnnpack: bool = True


PLUGINS = [
    RuntimePlugin(
        name="litert-cpu",
        title="LiteRT",
        summary="LiteRT (TFLite) interpreter on the CPU, XNNPACK delegate by default",
        implementation="harness.runtimes.litert.runtime:LiteRtCpuRuntime",
        device="cpu",
        precisions=frozenset({"fp32", "int8"}),
        settings=LiteRtSettings,
        needs=frozenset({"tflite"}),
        libraries=("ai-edge-litert",),
        device_nms=True,  # outputs are host arrays: torch.from_numpy
    )
]
