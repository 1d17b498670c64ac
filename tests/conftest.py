"""Shared test setup: hardware-dependent tests skip with a printed reason where the hardware or
library is absent (CI has no GPU and no TensorRT); everything else runs."""

from __future__ import annotations

import functools
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_nvml import FakeGpu, FakeNvml


@functools.cache
def _cuda_reason() -> str | None:
    if not (Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()):
        return "no NVIDIA GPU on this machine"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    return None if torch.cuda.is_available() else "torch sees no CUDA device"


@functools.cache
def _tensorrt_reason() -> str | None:
    from harness.runtimes.tensorrt.runtime import tensorrt_import_problem

    return tensorrt_import_problem() or _cuda_reason()


@functools.cache
def _docker_reason() -> str | None:
    if shutil.which("docker") is None:
        return "no docker client"
    import subprocess

    done = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    return None if done.returncode == 0 else "no Docker engine is reachable (`docker info` failed)"


@functools.cache
def _chromium_reason() -> str | None:
    return None if shutil.which("chromium") or Path("/usr/bin/chromium").exists() else "Debian's chromium is not installed"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    checks = {"gpu": _cuda_reason, "tensorrt": _tensorrt_reason, "docker": _docker_reason, "chromium": _chromium_reason}
    for item in items:
        for marker, check in checks.items():
            if item.get_closest_marker(marker) is not None:
                reason = check()
                if reason:
                    item.add_marker(pytest.mark.skip(reason=f"needs {marker}: {reason}"))
                    break


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNvml]:
    """A one-GPU fake NVML in place of pynvml (tests/fake_nvml.py), for the GPU paths on a CPU."""
    fake = FakeNvml([FakeGpu()])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    yield fake
