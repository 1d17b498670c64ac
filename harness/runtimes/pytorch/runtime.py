"""Eager PyTorch on the model's core module: FP32, FP16 and BF16, on the CPU or CUDA.

Model scope calls the core module (rfdetr's LWDETR in export mode: tensor in, tensors out) on a
batch already on the device, under inference_mode; CUDA-event timing goes on torch's current
stream, which is where the module's kernels run.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from harness.runtimes.base import Runtime
from harness.runtimes.pytorch import PLUGINS

_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def torch_device_problem(device: str) -> str | None:
    """Why `device` can't be used by torch here, or None."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed (pip install '.[torch]')"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return f"the plan asks for {device}, but torch {torch.__version__} sees no CUDA GPU here"
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            return f"{device} does not exist: torch sees {torch.cuda.device_count()} GPU(s)"
    return None


def resolve_device(device: str) -> str:
    if device != "auto":
        return "cuda:0" if device == "cuda" else device
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def torch_cell_problem(cell: Any, runtime: str) -> str | None:
    """Why a torch-based runtime can't run `cell` here, or None."""
    from harness.models.registry import source_plugin

    if "torch" not in source_plugin(cell.source).provides:
        return f"{runtime} needs a PyTorch model; model `{cell.model.name}` ({cell.source}) has none"
    device = resolve_device(cell.device) if torch_device_problem("cpu") is None else cell.device
    if problem := torch_device_problem(device):
        return problem
    if device == "cpu" and cell.precision == "fp16":
        return "fp16 needs a GPU; the device resolved to cpu here (no CUDA GPU)"
    return None


class TorchDevice:
    """What the torch-based runtimes share: the host-to-device copy into `self.dtype`, and
    timing hooks (their kernels run on torch's current stream of `self.device`)."""

    device: str
    dtype: Any

    def to_device(self, batch: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(batch).to(self.device, dtype=self.dtype, non_blocking=False)

    def timer_stream(self) -> Any | None:
        if self.device.startswith("cuda"):
            import torch

            return torch.cuda.current_stream(self.device)
        return None

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize(self.device)

    def reset_device_memory_peak(self) -> None:
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)

    def device_memory_peak(self) -> dict[str, int] | None:
        """torch's caching allocator: the peak of allocated tensors and of memory it reserved."""
        if not self.device.startswith("cuda"):
            return None
        import torch

        return {
            "allocated_bytes": int(torch.cuda.max_memory_allocated(self.device)),
            "reserved_bytes": int(torch.cuda.max_memory_reserved(self.device)),
        }


class TorchEagerRuntime(TorchDevice, Runtime):
    plugin = PLUGINS[0]

    @classmethod
    def unavailable_reason(cls, cell: Any) -> str | None:
        return torch_cell_problem(cell, "the torch runtime")

    def prepare(self) -> dict[str, Any]:
        import torch

        self.device = resolve_device(self.cell.device)
        self.dtype = getattr(torch, _DTYPES[self.cell.precision])
        started = time.perf_counter()
        module = self.source.torch_model(self.device)
        self.module = module.to(dtype=self.dtype)
        load_s = time.perf_counter() - started
        self._names = self.source.output_names()
        return {"load_s": load_s, "model": self.source.describe()}

    def run_model(self, inputs: Any) -> Any:
        import torch

        with torch.inference_mode():
            return self.module(inputs)

    def to_host(self, outputs: Any) -> dict[str, np.ndarray]:
        return {
            name: (tensor.float() if tensor.is_floating_point() else tensor).cpu().numpy()
            for name, tensor in zip(self._names, outputs, strict=False)
        }

    def device_tensors(self, outputs: Any) -> dict[str, Any]:
        return dict(zip(self._names, outputs, strict=False))

    def device_name(self) -> str:
        return self.device

    def settings(self) -> dict[str, Any]:
        import torch

        return {
            "torch": torch.__version__,
            "device": self.device,
            "dtype": str(self.dtype).replace("torch.", ""),
            "inference_mode": True,
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32) if self.device.startswith("cuda") else None,
            "num_threads": torch.get_num_threads(),
        }

    def close(self) -> None:
        self.module = None
