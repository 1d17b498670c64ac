"""ONNX Runtime with the CPU, CUDA and TensorRT execution providers, with proof that the
provider asked for is the one that ran (runtime.py says how), and the precision ladder: FP16
(converted file), INT8 (static post-training quantization, QDQ) and INT8 dynamic through
`onnxruntime.quantization` (quantize.py; docs/quantization.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.runtimes.plugin import Device, RuntimePlugin, RuntimeSettings, TuneOption

if TYPE_CHECKING:
    from harness.plan.cells import Cell

ProviderOption = str | int | float | bool


class OrtInt8Settings(BaseModel):
    """`settings: {int8: {...}}`: how precision int8 (static, calibrated) and int8-dynamic are
    made. Every field enters the quantized model's cache key."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    # Static only: how activation ranges are read from the calibration images.
    calibration: Literal["minmax", "entropy", "percentile"] = "minmax"
    # Images of the plan's calibration split to use (None: all of the split).
    calibration_images: Annotated[int, Field(ge=1, le=100_000)] | None = None
    # Images per calibration pass: histogram methods (entropy, percentile) hold every tensor of
    # a pass in memory before folding it into their histograms.
    calibration_chunk: Annotated[int, Field(ge=1, le=1024)] = 8
    percentile: Annotated[float, Field(gt=90, le=100)] = 99.999  # percentile calibration only
    per_channel: bool = True  # weights: one scale per output channel
    activation_type: Literal["int8", "uint8"] = "int8"  # static only
    weight_type: Literal["int8", "uint8"] = "int8"
    # Activation zero points at 0. None: on for the TensorRT EP (which needs it), ORT's default
    # (off) elsewhere.
    symmetric_activations: bool | None = None
    # Op types to quantize (None: ORT's own default, every op type its quantizer knows).
    op_types: list[Annotated[str, Field(min_length=1)]] | None = None
    # Nodes (by name, as the ONNX file names them) kept in float.
    keep_float: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    # Also keep the K nodes with the largest error of the sensitivity pass in float
    # (static only; runs the sensitivity pass on the model quantized without them first).
    keep_float_worst: Annotated[int, Field(ge=0, le=1000)] = 0
    # The sensitivity pass: each quantized node's output against FP32 on a few calibration
    # images, the worst listed in the record (static only).
    sensitivity: bool = True
    sensitivity_images: Annotated[int, Field(ge=1, le=64)] = 4
    sensitivity_top: Annotated[int, Field(ge=1, le=1000)] = 10


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
    # Precision int8 / int8-dynamic: how the model is quantized.
    int8: OrtInt8Settings = OrtInt8Settings()


class OrtCudaSettings(OrtSettings):
    # ORT's own default, EXHAUSTIVE, benchmarks convolution algorithms in every process and may
    # pick differently each time; HEURISTIC picks by cuDNN's heuristics, the same in every
    # process. Recorded either way (provider options read back).
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = "HEURISTIC"
    # Replay the whole graph as one CUDA graph (ORT's enable_cuda_graph): the host is out of
    # the loop, which on the lent H200 held ORT CUDA to 1.2% between processes against 33-64%
    # without. Needs fixed input and output buffers: the runtime keeps them, and the
    # end-to-end scope copies each new batch into the same device buffer.
    cuda_graph: bool = False
    # The CUDA EP's own default is TF32 on, which rounds fp32 matmuls and convolutions to 10
    # mantissa bits: an "fp32" cell runs IEEE fp32 unless the plan says tf32: true.
    tf32: bool = False
    # Run ORT on a torch CUDA stream, so CUDA events bracket its work (when torch with CUDA is
    # importable).
    user_compute_stream: bool = True


class OrtTensorrtSettings(OrtCudaSettings):
    trt_max_workspace_size: int | None = Field(default=None, ge=1)


# What `bench tune` varies. Graph optimisation decides which fusions run; one intra-op thread
# against the worker's pinned cores shows whether the model gains from parallel kernels at all
# (None: the harness's default, the pinned core count).
CPU_TUNE = (
    TuneOption("graph_optimization_level", ("all", "extended", "basic")),
    TuneOption("intra_op_num_threads", (None, 1)),
)
# CUDA graphs take the host out of the loop; EXHAUSTIVE may pick faster convolution algorithms
# than the heuristics (in every process anew); TF32 trades fp32 mantissa bits for speed.
CUDA_TUNE = (
    TuneOption("cuda_graph", (False, True)),
    TuneOption("cudnn_conv_algo_search", ("HEURISTIC", "EXHAUSTIVE")),
    TuneOption("tf32", (False, True), precisions=frozenset({"fp32"})),
)
TENSORRT_EP_TUNE = (TuneOption("cuda_graph", (False, True)),)


def _plugin(name: str, provider: str, cls: str, device: Device, precisions: set[str],
            settings: type[OrtSettings], libraries: tuple[str, ...],
            tune: tuple[TuneOption, ...] = ()) -> RuntimePlugin:
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
        cell_check="harness.runtimes.onnxruntime:ort_cell_problems",
        device_nms=True,  # CPU: torch.from_numpy; CUDA: outputs bound to torch tensors
        tune_options=tune,
    )


def _int8_settings(cell: Cell) -> dict[str, Any]:
    """The plan's raw `int8` settings of the cell's runtime entry ({} when absent or malformed:
    the settings schema reports a malformed one)."""
    int8 = cell.runtime.settings.get("int8")
    return int8 if isinstance(int8, dict) else {}


def cell_problems(cell: Cell) -> list[tuple[str, str]]:
    """What `bench validate` can say before anything runs: static INT8 needs the plan's
    calibration split, and can use at most the images it holds."""
    if cell.precision != "int8":
        return []
    problems: list[tuple[str, str]] = []
    int8 = _int8_settings(cell)
    split = cell.dataset.calibration if cell.dataset is not None else None
    if split is None:
        problems.append((
            "dataset.calibration",
            f"{cell.runtime.key} int8 (static quantization) calibrates on a split of the plan's dataset "
            "that the accuracy pass never scores: add `dataset: {calibration: {images: N}}` "
            "(100-500 images for a real model; a handful for a smoke test)",
        ))
        return problems
    n = int8.get("calibration_images")
    if isinstance(n, int) and n > split.images:
        problems.append((
            "runtime.settings.int8.calibration_images",
            f"int8.calibration_images asks for {n} calibration images, but dataset.calibration holds out "
            f"{split.images}",
        ))
    return problems


def ort_cell_problems(cell: Cell) -> list[tuple[str, str]]:
    """cell_problems, plus what only ONNX Runtime's quantizer reads: the sensitivity pass (its
    images come from the calibration split; keep_float_worst needs it) and keep_float's node
    names, which are the ONNX file's."""
    problems = cell_problems(cell)
    int8 = _int8_settings(cell)
    if cell.precision in ("int8", "int8-dynamic"):
        problems += _keep_float_problems(cell, int8.get("keep_float"))
    if cell.precision != "int8" or cell.dataset is None or cell.dataset.calibration is None:
        return problems
    n = int8.get("calibration_images")
    used = n if isinstance(n, int) else cell.dataset.calibration.images
    asked = int8.get("sensitivity_images")
    if isinstance(asked, int) and asked > used:
        problems.append((
            "runtime.settings.int8.sensitivity_images",
            f"int8.sensitivity_images asks for {asked} images; the sensitivity pass draws from the {used} "
            "calibration images this cell uses",
        ))
    if int8.get("keep_float_worst") and int8.get("sensitivity") is False:
        problems.append((
            "runtime.settings.int8.keep_float_worst",
            "keep_float_worst picks the worst nodes of the sensitivity pass, which `sensitivity: false` turns off: "
            "drop one of the two",
        ))
    return problems


def _keep_float_problems(cell: Cell, names: Any) -> list[tuple[str, str]]:
    """Misspelt keep_float names, when the ONNX file is the plan's own and already on disk (an
    exported model's names are checked when it is exported)."""
    if not names or not isinstance(names, list) or cell.source != "onnx" or not cell.model.path:
        return []
    path = cell.resolve_path(cell.model.path)
    if not path.is_file():
        return []  # the model source names the missing file
    from harness.errors import UserError
    from harness.runtimes.onnxruntime.quantize import check_node_names

    try:
        check_node_names(path, [str(n) for n in names], "int8.keep_float")
    except UserError as exc:
        return [("runtime.settings.int8.keep_float", str(exc))]
    except Exception:  # noqa: BLE001 -- an unreadable file is the model source's to report, when it runs
        return []
    return []


PLUGINS = [
    # int8-dynamic: the CPU EP only (the CUDA EP has no kernel for DynamicQuantizeLinear's
    # integer ops; the TensorRT EP takes static Q/DQ only).
    _plugin("onnxruntime-cpu", "CPU", "OrtCpuRuntime", "cpu", {"fp32", "int8", "int8-dynamic"}, OrtSettings,
            ("onnxruntime",), CPU_TUNE),
    _plugin("onnxruntime-cuda", "CUDA", "OrtCudaRuntime", "cuda", {"fp32", "fp16", "int8"}, OrtCudaSettings,
            ("onnxruntime",), CUDA_TUNE),
    _plugin("onnxruntime-tensorrt", "TensorRT", "OrtTensorrtRuntime", "cuda", {"fp32", "fp16", "int8"},
            OrtTensorrtSettings, ("onnxruntime", "tensorrt"), TENSORRT_EP_TUNE),
]
