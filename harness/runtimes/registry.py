"""Runtime and model-source lookup by name, by import path, so that a plan's runtimes are the
only ones imported (a CPU install never imports TensorRT; `bench --help` imports none)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.models.base import ModelSource
    from harness.runtimes.base import Runtime

RUNTIMES: dict[str, str] = {
    "torch": "harness.runtimes.torch_eager:TorchEagerRuntime",
    "rfdetr-predict": "harness.runtimes.rfdetr_native:RfdetrPredictRuntime",
    "rfdetr-optimized": "harness.runtimes.rfdetr_native:RfdetrOptimizedRuntime",
    "onnxruntime-cpu": "harness.runtimes.onnxruntime:OrtCpuRuntime",
    "onnxruntime-cuda": "harness.runtimes.onnxruntime:OrtCudaRuntime",
    "onnxruntime-tensorrt": "harness.runtimes.onnxruntime:OrtTensorrtRuntime",
    "tensorrt": "harness.runtimes.tensorrt:TensorRTRuntime",
}

SOURCES: dict[str, str] = {
    "rfdetr": "harness.models.rfdetr:RfdetrSource",
    "onnx": "harness.models.onnx_file:OnnxFileSource",
}


def _load(path: str) -> type:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def runtime_class(name: str) -> type[Runtime]:
    return _load(RUNTIMES[name])


def source_class(name: str) -> type[ModelSource]:
    return _load(SOURCES[name])
