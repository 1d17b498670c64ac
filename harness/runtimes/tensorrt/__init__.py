"""Native TensorRT: engines built from the model's ONNX with TensorRT's Python API, run with
execute_async_v3 on the harness's own CUDA stream (runtime.py; engine.py holds the logic that
needs no TensorRT, settings.py the schema)."""

from harness.runtimes.plugin import RuntimePlugin, TuneOption
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
    # The builder's optimisation level (3 is TensorRT's default; 5 searches the most tactics,
    # the build takes longer) and CUDA graphs for the launches.
    tune_options=(
        TuneOption("builder_optimization_level", (None, 5)),
        TuneOption("cuda_graph", (False, True)),
    ),
)

PLUGINS = [PLUGIN]
