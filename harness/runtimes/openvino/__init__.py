"""OpenVINO's CPU plug-in for any ONNX file the harness exports or the user brings: FP32, FP16
(where the CPU has FP16 arithmetic), INT8 through NNCF's post-training quantization, calibrated
on the plan's calibration split (the one ONNX Runtime's INT8 uses). runtime.py says what is read
back from OpenVINO as proof of device and precision; docs/edge-runtimes.md."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from harness.runtimes.plugin import RuntimePlugin, RuntimeSettings, TuneOption


class OvInt8Settings(BaseModel):
    """`settings: {int8: {...}}`: how precision int8 is made by `nncf.quantize`. Every field
    enters the quantized model's cache key."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    # Images of the plan's calibration split to use (None: all of the split).
    calibration_images: Annotated[int, Field(ge=1, le=100_000)] | None = None
    # NNCF's QuantizationPreset: performance = symmetric weights and activations; mixed =
    # symmetric weights, asymmetric activations (better for activations that are not centred,
    # e.g. after a ReLU-free head).
    preset: Literal["performance", "mixed"] = "performance"
    # NNCF's fast bias correction (on by default in NNCF); false runs its slower full one.
    fast_bias_correction: bool = True
    # Operations (by their OpenVINO names, which for an ONNX file are the ONNX node names) NNCF
    # leaves in float: nncf.IgnoredScope(names=...). An unknown name is an error.
    keep_float: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)


class OpenVinoSettings(RuntimeSettings):
    """OpenVINO CPU plug-in properties. None: OpenVINO's own default, read back and recorded."""

    # INFERENCE_NUM_THREADS. None: the harness's per-worker thread count (one per pinned
    # core), as for ONNX Runtime; OpenVINO would otherwise size its pool by the machine.
    threads: Annotated[int, Field(ge=1, le=1024)] | None = None
    # NUM_STREAMS: parallel inference streams. None: what the performance hint picks.
    streams: Annotated[int, Field(ge=1, le=1024)] | None = None
    # PERFORMANCE_HINT: latency (one stream, all threads on one request) or throughput (several
    # streams). The harness times one request at a time, so latency is the default.
    performance_hint: Literal["latency", "throughput"] = "latency"
    # Export with a dynamic batch axis (default: only when the cell's batch is above 1).
    dynamic_batch: bool | None = None
    # ONNX opset of the model source's export (read by the source, not by OpenVINO).
    opset: int = Field(default=17, ge=11, le=23)
    # Precision int8: how the model is quantized.
    int8: OvInt8Settings = OvInt8Settings()


# What `bench tune` varies: the throughput hint runs several streams (each request on fewer
# threads), and one thread against the pinned cores shows whether the model gains from
# OpenVINO's parallel kernels at all (None: the harness's default, one per pinned core).
TUNE = (
    TuneOption("performance_hint", ("latency", "throughput")),
    TuneOption("threads", (None, 1)),
)

PLUGINS = [
    RuntimePlugin(
        name="openvino-cpu",
        title="OpenVINO",
        summary="OpenVINO CPU plug-in (ONNX file read by OpenVINO; INT8 through NNCF)",
        implementation="harness.runtimes.openvino.runtime:OpenVinoCpuRuntime",
        device="cpu",
        precisions=frozenset({"fp32", "fp16", "int8"}),
        settings=OpenVinoSettings,
        needs=frozenset({"onnx"}),
        libraries=("openvino", "nncf"),
        export_keys=("opset", "dynamic_batch"),
        # The same check as ONNX Runtime's static INT8: the plan's calibration split must exist
        # and hold the images asked for.
        cell_check="harness.runtimes.onnxruntime:cell_problems",
        device_nms=True,  # outputs are host arrays: torch.from_numpy
        # FP16 on a CPU is an instruction-set question (AVX512-FP16, AMX-FP16), answered by
        # the device's OPTIMIZATION_CAPABILITIES when the cell runs, not by the plan.
        cpu_fp16=True,
        tune_options=TUNE,
    )
]
