"""Native TensorRT: engines built from the model's ONNX with TensorRT's Python API, run with
execute_async_v3 on the harness's own CUDA stream (runtime.py; engine.py holds the logic that
needs no TensorRT, settings.py the schema)."""

from harness.runtimes.plugin import RuntimePlugin
from harness.runtimes.tensorrt.settings import TensorRTSettings

PLUGIN = RuntimePlugin(
    name="tensorrt",
    title="TensorRT",
    summary="native TensorRT engine built from the model's ONNX (fp32 / fp16 / int8 with calibration)",
    implementation="harness.runtimes.tensorrt.runtime:TensorRTRuntime",
    device="cuda",
    precisions=frozenset({"fp32", "fp16", "int8"}),
    settings=TensorRTSettings,
    needs=frozenset({"onnx"}),
    libraries=("tensorrt",),
    cell_check="harness.runtimes.tensorrt.engine:cell_problems",
    export_keys=("opset",),
)

PLUGINS = [PLUGIN]
