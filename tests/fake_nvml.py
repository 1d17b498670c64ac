"""A stand-in for the `pynvml` module, for tests on machines without a GPU.

    fake = FakeNvml([FakeGpu()])
    monkeypatch.setitem(sys.modules, "pynvml", fake)   # open_nvml() now gets the fake

It answers the read-only queries the harness makes, raises pynvml's own error classes (so
`describe_error` sees what a real driver would raise), lets a test change a GPU's state
between samples, and records every call (tests assert no setter is ever called). Only the
functions the harness uses exist; anything else is an AttributeError, as with an old pynvml.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

_real_pynvml: Any = None


def nvml_error(code_name: str) -> Exception:
    """A real pynvml.NVMLError subclass instance, e.g. nvml_error("NOT_SUPPORTED")."""
    global _real_pynvml
    if _real_pynvml is None:
        # The real module, even while a FakeNvml stands in for it in sys.modules.
        current = sys.modules.get("pynvml")
        if current is not None and not isinstance(current, FakeNvml):
            _real_pynvml = current
        else:
            from importlib.machinery import PathFinder
            from importlib.util import module_from_spec

            spec = PathFinder.find_spec("pynvml")
            if spec is None or spec.loader is None:
                raise RuntimeError("FakeNvml raises pynvml's errors: install nvidia-ml-py")
            _real_pynvml = module_from_spec(spec)
            spec.loader.exec_module(_real_pynvml)
    error: Exception = _real_pynvml.NVMLError(getattr(_real_pynvml, f"NVML_ERROR_{code_name}"))
    return error


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-00000000-1111-2222-3333-444444444444"
    pci_bus_id: str = "00000000:19:00.0"
    memory_total_bytes: int = 85_520_809_984
    compute_capability: tuple[int, int] = (9, 0)
    vbios: str = "96.00.99.00.01"
    power_limit_mw: int = 700_000
    power_default_mw: int = 700_000
    power_enforced_mw: int = 700_000
    power_constraints_mw: tuple[int, int] = (200_000, 700_000)
    persistence: int = 1
    ecc: tuple[int, int] = (1, 1)
    mig: tuple[int, int] = (0, 0)
    pstate: int = 0
    temperature_c: int = 38
    sm_mhz: int = 1980
    mem_mhz: int = 2619
    max_sm_mhz: int = 1980
    max_mem_mhz: int = 2619
    app_graphics_mhz: int = 1755
    app_mem_mhz: int = 2619
    default_app_graphics_mhz: int = 1755
    default_app_mem_mhz: int = 2619
    boost_max_mhz: int = 1980
    clock_event_reasons: int = 0
    util_gpu: int = 0
    util_mem: int = 0
    power_usage_mw: int = 72_000
    # The total-energy counter (mJ since the driver loaded, nvmlDeviceGetTotalEnergyConsumption):
    # a test advances it between readings, or lists the function in `unsupported` (a GPU
    # without a counter: pre-Volta, many vGPUs).
    energy_mj: int = 1_000_000
    memory_used_bytes: int = 1_500_000_000
    # (pid, usedGpuMemory) of the compute processes NVML lists; None memory: the driver gives
    # no per-process figure (pynvml reads NVML_VALUE_NOT_AVAILABLE as None).
    compute_processes: list[tuple[int, int | None]] = field(default_factory=list)
    # Function names (e.g. "nvmlDeviceGetEccMode") that raise NVML_ERROR_NOT_SUPPORTED.
    unsupported: set[str] = field(default_factory=set)


class FakeNvml:
    NVML_CLOCK_GRAPHICS = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_TEMPERATURE_GPU = 0

    def __init__(
        self,
        gpus: list[FakeGpu] | None = None,
        *,
        driver_version: str = "580.95.05",
        cuda_driver_version: int = 13000,
        init_error: str | None = None,
    ):
        self.gpus = list(gpus or [])
        self.driver_version = driver_version
        self.cuda_driver_version = cuda_driver_version
        self.init_error = init_error  # e.g. "LIBRARY_NOT_FOUND": nvmlInit raises it
        self.calls: list[str] = []
        self.initialised = 0

    def _check(self, name: str, gpu: FakeGpu | None = None) -> None:
        self.calls.append(name)
        if self.initialised <= 0 and name != "nvmlInit":
            raise nvml_error("UNINITIALIZED")
        if gpu is not None and name in gpu.unsupported:
            raise nvml_error("NOT_SUPPORTED")

    # -- library -----------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self.calls.append("nvmlInit")
        if self.init_error:
            raise nvml_error(self.init_error)
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self._check("nvmlShutdown")
        self.initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check("nvmlSystemGetDriverVersion")
        return self.driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._check("nvmlSystemGetCudaDriverVersion")
        return self.cuda_driver_version

    def nvmlSystemGetNVMLVersion(self) -> str:
        self._check("nvmlSystemGetNVMLVersion")
        return "13." + self.driver_version

    def nvmlDeviceGetCount(self) -> int:
        self._check("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        self._check("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise nvml_error("INVALID_ARGUMENT")
        return self.gpus[index]

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> FakeGpu:
        self._check("nvmlDeviceGetHandleByUUID")
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return gpu
        raise nvml_error("NOT_FOUND")

    # -- device --------------------------------------------------------------------------------
    def _get(self, name: str, gpu: FakeGpu, value: Any) -> Any:
        self._check(name, gpu)
        return value

    def nvmlDeviceGetName(self, gpu: FakeGpu) -> str:
        return self._get("nvmlDeviceGetName", gpu, gpu.name)

    def nvmlDeviceGetUUID(self, gpu: FakeGpu) -> str:
        return self._get("nvmlDeviceGetUUID", gpu, gpu.uuid)

    def nvmlDeviceGetPciInfo(self, gpu: FakeGpu) -> Any:
        return self._get("nvmlDeviceGetPciInfo", gpu, SimpleNamespace(busId=gpu.pci_bus_id))

    def nvmlDeviceGetMemoryInfo(self, gpu: FakeGpu) -> Any:
        return self._get(
            "nvmlDeviceGetMemoryInfo", gpu,
            SimpleNamespace(total=gpu.memory_total_bytes, used=gpu.memory_used_bytes,
                            free=gpu.memory_total_bytes - gpu.memory_used_bytes),
        )

    def nvmlDeviceGetTotalEnergyConsumption(self, gpu: FakeGpu) -> int:
        return self._get("nvmlDeviceGetTotalEnergyConsumption", gpu, gpu.energy_mj)

    def nvmlDeviceGetComputeRunningProcesses(self, gpu: FakeGpu) -> list[Any]:
        return self._get(
            "nvmlDeviceGetComputeRunningProcesses", gpu,
            [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in gpu.compute_processes],
        )

    def nvmlDeviceGetCudaComputeCapability(self, gpu: FakeGpu) -> tuple[int, int]:
        return self._get("nvmlDeviceGetCudaComputeCapability", gpu, gpu.compute_capability)

    def nvmlDeviceGetVbiosVersion(self, gpu: FakeGpu) -> str:
        return self._get("nvmlDeviceGetVbiosVersion", gpu, gpu.vbios)

    def nvmlDeviceGetPowerManagementLimit(self, gpu: FakeGpu) -> int:
        return self._get("nvmlDeviceGetPowerManagementLimit", gpu, gpu.power_limit_mw)

    def nvmlDeviceGetPowerManagementDefaultLimit(self, gpu: FakeGpu) -> int:
        return self._get("nvmlDeviceGetPowerManagementDefaultLimit", gpu, gpu.power_default_mw)

    def nvmlDeviceGetEnforcedPowerLimit(self, gpu: FakeGpu) -> int:
        return self._get("nvmlDeviceGetEnforcedPowerLimit", gpu, gpu.power_enforced_mw)

    def nvmlDeviceGetPowerManagementLimitConstraints(self, gpu: FakeGpu) -> list[int]:
        return self._get(
            "nvmlDeviceGetPowerManagementLimitConstraints", gpu, list(gpu.power_constraints_mw)
        )

    def nvmlDeviceGetPersistenceMode(self, gpu: FakeGpu) -> int:
        return self._get("nvmlDeviceGetPersistenceMode", gpu, gpu.persistence)

    def nvmlDeviceGetEccMode(self, gpu: FakeGpu) -> list[int]:
        return self._get("nvmlDeviceGetEccMode", gpu, list(gpu.ecc))

    def nvmlDeviceGetMigMode(self, gpu: FakeGpu) -> list[int]:
        return self._get("nvmlDeviceGetMigMode", gpu, list(gpu.mig))

    def nvmlDeviceGetPerformanceState(self, gpu: FakeGpu) -> int:
        return self._get("nvmlDeviceGetPerformanceState", gpu, gpu.pstate)

    def nvmlDeviceGetTemperature(self, gpu: FakeGpu, sensor: int) -> int:
        return self._get("nvmlDeviceGetTemperature", gpu, gpu.temperature_c)

    def nvmlDeviceGetClockInfo(self, gpu: FakeGpu, clock: int) -> int:
        value = gpu.mem_mhz if clock == self.NVML_CLOCK_MEM else gpu.sm_mhz
        return self._get("nvmlDeviceGetClockInfo", gpu, value)

    def nvmlDeviceGetMaxClockInfo(self, gpu: FakeGpu, clock: int) -> int:
        value = gpu.max_mem_mhz if clock == self.NVML_CLOCK_MEM else gpu.max_sm_mhz
        return self._get("nvmlDeviceGetMaxClockInfo", gpu, value)

    def nvmlDeviceGetApplicationsClock(self, gpu: FakeGpu, clock: int) -> int:
        value = gpu.app_mem_mhz if clock == self.NVML_CLOCK_MEM else gpu.app_graphics_mhz
        return self._get("nvmlDeviceGetApplicationsClock", gpu, value)

    def nvmlDeviceGetDefaultApplicationsClock(self, gpu: FakeGpu, clock: int) -> int:
        value = (
            gpu.default_app_mem_mhz
            if clock == self.NVML_CLOCK_MEM
            else gpu.default_app_graphics_mhz
        )
        return self._get("nvmlDeviceGetDefaultApplicationsClock", gpu, value)

    def nvmlDeviceGetMaxCustomerBoostClock(self, gpu: FakeGpu, clock: int) -> int:
        return self._get("nvmlDeviceGetMaxCustomerBoostClock", gpu, gpu.boost_max_mhz)

    def nvmlDeviceGetCurrentClocksEventReasons(self, gpu: FakeGpu) -> int:
        return self._get("nvmlDeviceGetCurrentClocksEventReasons", gpu, gpu.clock_event_reasons)

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, gpu: FakeGpu) -> int:
        return self._get("nvmlDeviceGetCurrentClocksThrottleReasons", gpu, gpu.clock_event_reasons)

    def nvmlDeviceGetUtilizationRates(self, gpu: FakeGpu) -> Any:
        return self._get(
            "nvmlDeviceGetUtilizationRates",
            gpu,
            SimpleNamespace(gpu=gpu.util_gpu, memory=gpu.util_mem),
        )

    def nvmlDeviceGetPowerUsage(self, gpu: FakeGpu) -> int:
        return self._get("nvmlDeviceGetPowerUsage", gpu, gpu.power_usage_mw)
