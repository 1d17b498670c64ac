"""Memory and energy on a real GPU (`-m gpu`): NVML's reading of this process against
nvidia-smi's and torch's own counters, the torch allocator hooks against torch.cuda's peak, and
NVML's energy counter against the monitor's integrated power samples under a steady load."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from harness.environment.energy import EnergyInputs, energy_figures
from harness.environment.monitor import GpuMonitor
from harness.run.resources import TorchPeak, device_memory

pytestmark = pytest.mark.gpu

MiB = 1024 * 1024


def _smi_process_mib() -> int | None:
    """nvidia-smi's used memory of this process (MiB), or None when it does not list it."""
    if shutil.which("nvidia-smi") is None:
        return None
    done = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                          capture_output=True, text=True, timeout=30)
    for line in done.stdout.splitlines():
        pid, _, used = line.partition(",")
        if pid.strip() == str(os.getpid()):
            return int(used.strip())
    return None


def test_device_memory_against_torch_and_nvidia_smi() -> None:
    import torch

    from harness.runtimes.pytorch.runtime import TorchDevice

    device = TorchDevice()
    device.device = "cuda:0"
    block = torch.empty(1024 * MiB, dtype=torch.uint8, device="cuda:0")  # 1 GiB before the phase
    torch.cuda.synchronize()
    peak = TorchPeak(device)  # type: ignore[arg-type]
    with GpuMonitor(0, interval_ms=20) as monitor:
        monitor.phase("warmup")
        peak.phase("warmup")
        monitor.phase("measure")
        peak.phase("measure")
        extra = torch.empty(512 * MiB, dtype=torch.uint8, device="cuda:0")  # +0.5 GiB inside the phase
        torch.cuda.synchronize()
        time.sleep(0.3)
        smi = _smi_process_mib()
        del extra
        monitor.phase("done")
        peak.phase("done")
    result = monitor.result
    assert result is not None and result["available"], result
    assert peak.peak is not None
    assert peak.peak["allocated_bytes"] == torch.cuda.max_memory_allocated("cuda:0")
    assert peak.peak["allocated_bytes"] >= 1536 * MiB
    memory = device_memory("cuda:0", {"process_baseline_bytes": 0}, peak, result)
    print("device memory:", memory, "nvidia-smi MiB:", smi, "monitor summary:",
          result["summary"].get("process_memory_bytes"), "memory cost us:", result["summary"].get("memory_cost_us"))
    assert memory["torch_allocated_peak_bytes"] == peak.peak["allocated_bytes"]
    if memory.get("process_peak_bytes") is None:
        # Without NVML's per-process reading the allocator's peak is the headline.
        assert memory["method"] == "torch_allocator" and memory["peak_bytes"] == peak.peak["allocated_bytes"]
        pytest.skip(f"NVML does not list this process here: {result.get('memory_reason')}")
    # The headline is NVML's per-process reading (the same quantity as for ONNX Runtime): it
    # holds the CUDA context and torch's cache on top of the tensors.
    assert memory["method"] == "nvml_process" and memory["peak_bytes"] == memory["process_peak_bytes"]
    assert memory["process_peak_bytes"] >= memory["torch_reserved_peak_bytes"] >= memory["torch_allocated_peak_bytes"]
    if smi is not None:
        assert abs(memory["process_peak_bytes"] / MiB - smi) <= max(0.02 * smi, 64), (memory, smi)
    del block


def test_energy_counter_against_the_power_samples() -> None:
    import torch

    a = torch.randn(8192, 8192, device="cuda:0", dtype=torch.bfloat16)
    with GpuMonitor(0, interval_ms=20) as monitor:
        monitor.phase("warmup")
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()
        monitor.phase("measure")
        started = time.monotonic()
        calls = 0
        while time.monotonic() - started < 3.0:
            a @ a
            calls += 1
            if calls % 20 == 0:
                torch.cuda.synchronize()
        torch.cuda.synchronize()
        monitor.phase("done")
    result = monitor.result
    assert result is not None and result["available"], result
    figures = energy_figures(EnergyInputs(images=calls, device="cuda:0", monitor=result))
    print("energy:", figures)
    if figures.get("method") != "nvml_energy_counter":
        pytest.skip(f"no NVML energy counter here: {figures.get('reason')}")
    assert figures["joules"] > 0 and figures["mean_power_w"] > 50
    # The counter and the integrated samples describe the same 3 s: within 15% of each other
    # (NVML's power reading is itself averaged over a driver-chosen window).
    assert figures["integrated_joules"] == pytest.approx(figures["counter_joules"], rel=0.15)
    assert figures["peak_power_w"] >= figures["mean_power_w"] * 0.9
