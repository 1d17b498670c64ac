"""Access to NVML (nvidia-ml-py, `import pynvml`), shared by capture, monitor and conditions.

Everything here is lazy: importing this module imports nothing NVIDIA-related, so the CLI
stays fast and a machine without a driver never pays for it. NVML failing (no driver, no
library, no permission) is an ordinary outcome, reported as `NvmlUnavailable` with a reason
in words, never a crash.

Device numbering: the harness speaks CUDA's numbering (`cuda:N` in a plan), which counts only
the GPUs in CUDA_VISIBLE_DEVICES. NVML ignores that variable and counts every GPU in PCI
order. `handle_for_cuda_index` translates, and says how it did so, so a record can be checked.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import suppress
from types import ModuleType
from typing import Any, TypeVar

T = TypeVar("T")

# Clock-event ("throttle") reason bits, from nvml.h (nvmlClocksEventReason*). They are part of
# NVML's ABI; tests check them against pynvml's constants. Kept here so the summary and the
# report can name bits without importing pynvml.
CLOCK_EVENT_REASONS: dict[int, str] = {
    0x001: "gpu_idle",
    0x002: "applications_clocks_setting",  # also "user defined clocks": app clocks or locked clocks
    0x004: "sw_power_cap",
    0x008: "hw_slowdown",
    0x010: "sync_boost",
    0x020: "sw_thermal_slowdown",
    0x040: "hw_thermal_slowdown",
    0x080: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
GPU_IDLE = 0x001
APPLICATIONS_CLOCKS_SETTING = 0x002
# Reasons that mean the GPU slowed itself down for power or heat: a measurement taken while
# one is active is not the GPU's normal speed. Idle, application-clock and sync-boost reasons
# are recorded but are not throttling.
SLOWDOWN_REASONS = 0x004 | 0x008 | 0x020 | 0x040 | 0x080


def reason_names(bits: int | None) -> list[str]:
    """Names of the bits set in a clock-event bitmask (unknown bits as `unknown_0x...`)."""
    if not bits:
        return []
    names = [name for bit, name in CLOCK_EVENT_REASONS.items() if bits & bit]
    known = 0
    for bit in CLOCK_EVENT_REASONS:
        known |= bit
    rest = bits & ~known
    bit = 1
    while rest:
        if rest & bit:
            names.append(f"unknown_{bit:#x}")
            rest &= ~bit
        bit <<= 1
    return names


class NvmlUnavailable(Exception):
    """NVML cannot be used here; str(exc) says why in words."""


def describe_error(exc: BaseException) -> str:
    """An NVML error in words, with a hint for the common causes."""
    name = type(exc).__name__
    text = str(exc) or name
    hints = {
        "NVMLError_LibraryNotFound": "no NVIDIA driver here, or libnvidia-ml.so not visible; "
        "a container needs GPU access (--gpus)",
        "NVMLError_DriverNotLoaded": "the NVIDIA kernel driver is not loaded",
        "NVMLError_NoPermission": "no permission to query the GPU",
        "NVMLError_NotSupported": "not supported on this GPU or driver",
        "NVMLError_FunctionNotFound": "this driver's NVML lacks the function (older driver)",
        "NVMLError_GpuIsLost": "the GPU fell off the bus or stopped responding",
    }
    hint = hints.get(name)
    return f"{text} ({hint})" if hint and hint.lower() not in text.lower() else text


def open_nvml() -> ModuleType:
    """Import pynvml and initialise NVML; pair every call with `close_nvml` (NVML counts them)."""
    try:
        import pynvml
    except ImportError as exc:  # nvidia-ml-py is a core dependency, but be honest if absent
        raise NvmlUnavailable(f"nvidia-ml-py is not installed ({exc})") from exc
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError subclasses, or OSError from ctypes
        raise NvmlUnavailable(f"NVML could not start: {describe_error(exc)}") from exc
    return pynvml


def close_nvml(pynvml: ModuleType) -> None:
    # Shutting down must never mask the result it follows.
    with suppress(Exception):
        pynvml.nvmlShutdown()


def open_cuda_device(cuda_index: int) -> tuple[ModuleType, Any, dict[str, Any]]:
    """NVML opened, the handle of CUDA device `cuda_index` and how it was found (see
    handle_for_cuda_index); pair with `close_nvml`. Raises NvmlUnavailable with NVML closed
    again when either step fails."""
    nv = open_nvml()
    try:
        handle, how = handle_for_cuda_index(nv, cuda_index)
    except NvmlUnavailable:
        close_nvml(nv)
        raise
    return nv, handle, how


def call(reasons: dict[str, str], field: str, fn: Callable[..., T], *args: Any) -> T | None:
    """fn(*args), or None with `reasons[field]` set to why it failed (NotSupported is common:
    ECC on a GeForce, power limits in a VM...)."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 -- NVMLError, or a function this driver lacks
        reasons[field] = describe_error(exc)
        return None


# NVML's two names for the current clock-event bitmask, newest first: r535 renamed
# nvmlDeviceGetCurrentClocksThrottleReasons to ...ClocksEventReasons. A recent pynvml has both
# names while an older driver may only answer the old one, so each is tried on the handle.
CLOCK_EVENT_REASON_FUNCTIONS = (
    "nvmlDeviceGetCurrentClocksEventReasons",
    "nvmlDeviceGetCurrentClocksThrottleReasons",
)


def clock_event_reasons_reader(
    pynvml: ModuleType, handle: Any, reasons: dict[str, str]
) -> Callable[[], int] | None:
    """A zero-argument reader of the GPU's current clock-event bitmask, using the first name
    in CLOCK_EVENT_REASON_FUNCTIONS that pynvml has and that answers for `handle` (each is
    called once here). None when neither does, with `reasons["clock_event_reasons"]` set to
    why (the last error, or that pynvml has neither name); nothing is recorded on success."""
    why: str | None = None
    for name in CLOCK_EVENT_REASON_FUNCTIONS:
        fn = getattr(pynvml, name, None)
        if fn is None:
            continue
        try:
            fn(handle)
        except Exception as exc:  # noqa: BLE001 -- NVMLError, or a function the driver lacks
            why = describe_error(exc)
            continue
        return _int_reader(fn, handle)
    reasons["clock_event_reasons"] = why or "pynvml offers no clock-event reason query"
    return None


def _int_reader(fn: Callable[[Any], Any], handle: Any) -> Callable[[], int]:
    def read() -> int:
        return int(fn(handle))

    return read


def energy_counter_reader(pynvml: ModuleType, handle: Any, reasons: dict[str, str]) -> Callable[[], float] | None:
    """A reader of the GPU's total energy since the driver loaded, in mJ
    (nvmlDeviceGetTotalEnergyConsumption, Volta and newer), tried once here; None with
    `reasons["energy_counter"]` set when this GPU or driver has none (older GPUs, many vGPUs):
    the caller then integrates power samples and says so, never reporting 0."""
    fn = getattr(pynvml, "nvmlDeviceGetTotalEnergyConsumption", None)
    if fn is None:
        reasons["energy_counter"] = "pynvml offers no nvmlDeviceGetTotalEnergyConsumption"
        return None
    try:
        fn(handle)
    except Exception as exc:  # noqa: BLE001 -- NotSupported on pre-Volta GPUs and vGPUs
        reasons["energy_counter"] = describe_error(exc)
        return None

    def read() -> float:
        return float(fn(handle))

    return read


# What an NVML process entry holds when the driver cannot say (NVML_VALUE_NOT_AVAILABLE);
# pynvml turns it into None in recent versions.
_NOT_AVAILABLE = (1 << 64) - 1

MemoryReading = tuple[int | None, int | None]  # (this process's bytes or None, device used bytes or None)


def memory_reader(pynvml: ModuleType, handle: Any, pid: int, reasons: dict[str, str]) -> Callable[[], MemoryReading] | None:
    """A reader of (this process's device memory, the device's used memory) in bytes, each
    query tried once here. The process's entry comes from nvmlDeviceGetComputeRunningProcesses
    (what nvidia-smi lists, CUDA context included); it is None while the process is not listed
    (no CUDA context yet, or a container whose PID namespace hides the host pid NVML reports)
    or when the driver gives no per-process figure. Two NVML calls per reading: the process
    list (pynvml asks for the count first, then the entries) and the device's memory info."""
    get_procs = getattr(pynvml, "nvmlDeviceGetComputeRunningProcesses", None)
    get_info = getattr(pynvml, "nvmlDeviceGetMemoryInfo", None)
    has_procs = has_info = False
    if get_procs is None:
        reasons["process_memory"] = "pynvml offers no nvmlDeviceGetComputeRunningProcesses"
    else:
        has_procs = call(reasons, "process_memory", get_procs, handle) is not None
    if get_info is None:
        reasons["device_memory_used"] = "pynvml offers no nvmlDeviceGetMemoryInfo"
    else:
        has_info = call(reasons, "device_memory_used", get_info, handle) is not None
    if not (has_procs or has_info):
        return None

    def read() -> MemoryReading:
        own: int | None = None
        if has_procs:
            assert get_procs is not None
            for proc in get_procs(handle):
                if int(proc.pid) == pid:
                    used = getattr(proc, "usedGpuMemory", None)
                    own = None if used is None or int(used) == _NOT_AVAILABLE else int(used)
                    break
        used_total = int(get_info(handle).used) if has_info and get_info is not None else None
        return own, used_total

    return read


def process_listed(pynvml: ModuleType, handle: Any, pid: int) -> bool | None:
    """Whether NVML lists `pid` among the GPU's compute processes (None: it cannot say)."""
    fn = getattr(pynvml, "nvmlDeviceGetComputeRunningProcesses", None)
    if fn is None:
        return None
    try:
        return any(int(p.pid) == pid for p in fn(handle))
    except Exception:  # noqa: BLE001 -- NotSupported, NoPermission
        return None


def as_text(value: Any) -> str:
    """pynvml returns str in recent versions and bytes in old ones."""
    return value.decode() if isinstance(value, bytes) else str(value)


def visible_devices() -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as CUDA reads it: entries up to the first invalid one; None when
    unset (every GPU visible)."""
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    entries: list[str] = []
    for entry in raw.split(","):
        entry = entry.strip()
        # CUDA stops at the first entry it can't parse (-1 hides everything after it).
        if not entry or entry.startswith("-"):
            break
        if not (entry.isdigit() or entry.startswith(("GPU-", "MIG-"))):
            break
        entries.append(entry)
    return entries


def cuda_visible_count(pynvml: ModuleType) -> int:
    """How many GPUs CUDA would number here (per CUDA_VISIBLE_DEVICES, else all NVML sees)."""
    entries = visible_devices()
    if entries is None:
        return int(pynvml.nvmlDeviceGetCount())
    return len(entries)


def handle_for_cuda_index(pynvml: ModuleType, cuda_index: int) -> tuple[Any, dict[str, Any]]:
    """The NVML handle of CUDA device `cuda_index`, and how it was found.

    Raises NvmlUnavailable when the device does not exist. With integer entries in
    CUDA_VISIBLE_DEVICES (or none), CUDA and NVML agree when CUDA_DEVICE_ORDER=PCI_BUS_ID or
    all GPUs are the same model (CUDA's default FASTEST_FIRST order then equals PCI order);
    the record carries the GPU's UUID so the match can be checked afterwards.
    """
    entries = visible_devices()
    how: dict[str, Any] = {"cuda_index": cuda_index}
    if entries is None:
        nvml_index: int | None = cuda_index
        how["mapping"] = "CUDA_VISIBLE_DEVICES unset: CUDA index = NVML index"
    else:
        if cuda_index >= len(entries):
            raise NvmlUnavailable(
                f"cuda:{cuda_index} is not visible (CUDA_VISIBLE_DEVICES="
                f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r} shows {len(entries)} GPU(s))"
            )
        entry = entries[cuda_index]
        if entry.isdigit():
            nvml_index = int(entry)
            how["mapping"] = f"CUDA_VISIBLE_DEVICES entry {entry}"
        else:
            nvml_index = None
            how["mapping"] = f"CUDA_VISIBLE_DEVICES UUID {entry}"
            try:
                handle = pynvml.nvmlDeviceGetHandleByUUID(entry)
            except Exception as exc:
                raise NvmlUnavailable(
                    f"no GPU with UUID {entry} (from CUDA_VISIBLE_DEVICES): {describe_error(exc)}"
                ) from exc
            how["nvml_index"] = None
            return handle, how
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index)
    except Exception as exc:
        raise NvmlUnavailable(f"no GPU at NVML index {nvml_index}: {describe_error(exc)}") from exc
    how["nvml_index"] = nvml_index
    order = os.environ.get("CUDA_DEVICE_ORDER")
    if order:
        how["cuda_device_order"] = order
    return handle, how


def parse_cuda_index(device: str) -> int | None:
    """`cuda` -> 0, `cuda:N` -> N, anything else (cpu, auto) -> None."""
    device = device.strip().lower()
    if device == "cuda":
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    return None
