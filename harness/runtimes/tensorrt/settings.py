"""The `tensorrt` runtime's settings schema: pydantic only, so `bench validate` checks a plan's
TensorRT settings without importing TensorRT, torch or the engine logic."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.runtimes.plugin import RuntimeSettings


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class BatchProfileSpec(_Strict):
    """min / opt / max batch of the engine's optimization profile. `opt` (the batch TensorRT
    tunes kernels for) defaults to `max`."""

    min: Annotated[int, Field(ge=1, le=1024)]
    opt: Annotated[int, Field(ge=1, le=1024)] | None = None
    max: Annotated[int, Field(ge=1, le=1024)]

    @model_validator(mode="after")
    def _ordered(self) -> BatchProfileSpec:
        opt = self.max if self.opt is None else self.opt
        if not self.min <= opt <= self.max:
            raise ValueError(f"batch_profile needs min <= opt <= max (got min={self.min}, opt={opt}, max={self.max})")
        return self


class CalibrationDatasetSpec(_Strict):
    """A COCO-format dataset to draw INT8 calibration images from (instead of the plan's)."""

    images: Annotated[str, Field(min_length=1)]
    annotations: Annotated[str, Field(min_length=1)]


class TensorRTSettings(RuntimeSettings):
    """`runtimes[].settings` of a `tensorrt` runtime. None means "TensorRT's own default", which
    differs between versions; the value actually used is read back and recorded."""

    # Read by the model source's ONNX export, not by TensorRT (it changes the ONNX file, so it
    # reaches the engine key through the file's sha256).
    opset: Annotated[int, Field(ge=11, le=23)] = 17
    # Builder: every field here enters the engine cache key (see BUILDER_FIELDS).
    workspace_mib: Annotated[int, Field(ge=1)] | None = None
    builder_optimization_level: Annotated[int, Field(ge=0, le=5)] | None = None
    strongly_typed: bool = False
    tf32: bool | None = None
    # INT8 engines also allow FP16 kernels for layers left unquantized (trtexec --int8 --fp16).
    int8_fp16_fallback: bool = True
    batch_profile: BatchProfileSpec | None = None
    timing_cache: bool = True
    # INT8 post-training calibration (entropy2: IInt8EntropyCalibrator2, TensorRT's default).
    calibration_images: Annotated[int, Field(ge=1, le=100_000)] = 512
    calibration_seed: int = 0
    calibration_batch: Annotated[int, Field(ge=1, le=256)] = 8
    calibrator: Literal["entropy2", "minmax"] = "entropy2"
    calibration_dataset: CalibrationDatasetSpec | None = None
    # Runtime only: never changes the engine.
    cuda_graph: bool = False
    log_level: Literal["error", "warning", "info", "verbose"] = "warning"


# Which settings change the built engine. A test asserts that every field is in exactly one
# group, so a new setting cannot silently stay out of the engine key.
BUILDER_FIELDS = (
    "workspace_mib",
    "builder_optimization_level",
    "strongly_typed",
    "tf32",
    "int8_fp16_fallback",
    "batch_profile",
    "timing_cache",
)
CALIBRATION_FIELDS = (
    "calibration_images",
    "calibration_seed",
    "calibration_batch",
    "calibrator",
    "calibration_dataset",
)
NOT_IN_ENGINE_FIELDS = (
    "opset",  # changes the ONNX file, which is keyed by its sha256
    "cuda_graph",
    "log_level",
)
