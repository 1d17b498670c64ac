"""ONNX Runtime with the CPU, CUDA and TensorRT execution providers, with proof that the
provider asked for is the one that ran (runtime.py says how)."""

from typing import Literal

from pydantic import Field

from harness.runtimes.plugin import Device, RuntimePlugin, RuntimeSettings

ProviderOption = str | int | float | bool


class OrtSettings(RuntimeSettings):
    """Settings of every execution provider. None: ONNX Runtime's own default."""

    graph_optimization_level: Literal["disable", "basic", "extended", "all"] | None = None
    intra_op_num_threads: int | None = Field(default=None, ge=0)
    inter_op_num_threads: int | None = Field(default=None, ge=0)
    execution_mode: Literal["sequential", "parallel"] | None = None
    # Export with a dynamic batch axis (default: only when the cell's batch is above 1).
    dynamic_batch: bool | None = None
    # ONNX opset of the model source's export (read by the source, not by ONNX Runtime).
    opset: int = Field(default=17, ge=11, le=23)
    # Merged verbatim into the requested provider's options.
    provider_options: dict[str, ProviderOption] = Field(default_factory=dict)
    # The verbose session log is what reports node placements; false skips it.
    log_placements: bool = True


class OrtCudaSettings(OrtSettings):
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] | None = None
    # The CUDA EP's own default is TF32 on, which rounds fp32 matmuls and convolutions to 10
    # mantissa bits: an "fp32" cell runs IEEE fp32 unless the plan says tf32: true.
    tf32: bool = False
    # Run ORT on a torch CUDA stream, so CUDA events bracket its work (when torch with CUDA is
    # importable).
    user_compute_stream: bool = True


class OrtTensorrtSettings(OrtCudaSettings):
    trt_max_workspace_size: int | None = Field(default=None, ge=1)


def _plugin(name: str, provider: str, cls: str, device: Device, precisions: set[str],
            settings: type[OrtSettings], libraries: tuple[str, ...]) -> RuntimePlugin:
    return RuntimePlugin(
        name=name,
        title="ONNX Runtime",
        summary=f"ONNX Runtime, {provider} execution provider",
        implementation=f"harness.runtimes.onnxruntime.runtime:{cls}",
        device=device,
        precisions=frozenset(precisions),
        settings=settings,
        needs=frozenset({"onnx"}),
        libraries=libraries,
        export_keys=("opset", "dynamic_batch"),
        device_nms=True,  # CPU: torch.from_numpy; CUDA: outputs bound to torch tensors
    )


PLUGINS = [
    _plugin("onnxruntime-cpu", "CPU", "OrtCpuRuntime", "cpu", {"fp32"}, OrtSettings, ("onnxruntime",)),
    _plugin("onnxruntime-cuda", "CUDA", "OrtCudaRuntime", "cuda", {"fp32", "fp16"}, OrtCudaSettings, ("onnxruntime",)),
    _plugin("onnxruntime-tensorrt", "TensorRT", "OrtTensorrtRuntime", "cuda", {"fp32", "fp16"},
            OrtTensorrtSettings, ("onnxruntime", "tensorrt")),
]
