"""The host around a measurement: where the worker runs, what else loads the machine, and how
fast the host's CPU is at that moment.

On the lent H200 the same pure-Python loop took either ~35 ms or ~65 ms depending on the
process and the moment, on every core in turn (a shared virtual machine whose CPU speed halves
and recovers within seconds), so anything launch-bound inherits the host's speed. The harness
cannot remove that, but it can keep what it owns fixed and record the rest:

* placement: the worker's threads are pinned to stated cores on the GPU's NUMA node (from NVML's
  CPU affinity of the GPU, or sysfs), the monitor thread to one core of its own, and thread
  counts (torch intra-op, OMP) are set from that core count and recorded;
* load: load average, busy cores and other processes on the GPU, at each process's start and
  end, so a reader can see why a number moved;
* speed: a fixed pure-Python loop timed a few times at the start and end of each process (the
  "host-speed probe"): when a process's median moved with its probe, the host moved.

Nothing here imports torch or pynvml at module level.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# The probe: a loop the interpreter cannot shortcut, about 10 ms on a fast core.
PROBE_RANGE = 300_000
PROBE_REPEATS = 5
BUSY_CPU_PERCENT = 50.0


@dataclass(frozen=True)
class Placement:
    """Cores a worker was pinned to, and why those."""

    worker_cores: list[int]
    monitor_core: int | None
    numa_node: int | None
    source: str  # "nvml gpu affinity", "sysfs numa node", "process affinity", "not pinned: ..."
    threads: int  # intra-op threads set for torch / OMP

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def allowed_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def gpu_local_cores(gpu_index: int | None) -> tuple[list[int], int | None, str]:
    """The cores close to the GPU (its NUMA node), within what this process may use; with no
    GPU or no affinity information, every allowed core."""
    allowed = allowed_cores()
    if gpu_index is None:
        return allowed, None, "process affinity (no GPU)"
    from harness.environment import nvml

    try:
        nv, handle, _ = nvml.open_cuda_device(gpu_index)
    except nvml.NvmlUnavailable as exc:
        return allowed, None, f"process affinity (NVML: {exc})"
    try:
        numa = _numa_node(nv, handle)
        words = ((os.cpu_count() or 64) + 63) // 64
        try:
            masks = nv.nvmlDeviceGetCpuAffinity(handle, words)
            local = [64 * w + bit for w, mask in enumerate(masks) for bit in range(64) if int(mask) >> bit & 1]
            source = "nvml gpu affinity"
        except Exception:  # noqa: BLE001 -- NotSupported in some VMs: fall back to sysfs
            local = _numa_cpus(numa) if numa is not None else []
            source = "sysfs numa node"
    finally:
        nvml.close_nvml(nv)
    cores = [c for c in local if c in allowed]
    if not cores:
        return allowed, numa, f"process affinity (the GPU's cores {local[:8]}... are not allowed here)"
    return cores, numa, source


def _numa_node(nv: Any, handle: Any) -> int | None:
    with contextlib.suppress(Exception):
        return int(nv.nvmlDeviceGetNumaNodeId(handle))
    with contextlib.suppress(Exception):
        bus = nv.nvmlDeviceGetPciInfo(handle).busId
        bus = bus.decode() if isinstance(bus, bytes) else str(bus)
        text = Path(f"/sys/bus/pci/devices/{bus.lower()[-12:]}/numa_node").read_text().strip()
        return int(text) if int(text) >= 0 else None
    return None


def _numa_cpus(node: int) -> list[int]:
    try:
        text = Path(f"/sys/devices/system/node/node{node}/cpulist").read_text().strip()
    except OSError:
        return []
    cores: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cores += list(range(int(lo), int(hi or lo) + 1))
    return cores


def choose_placement(gpu_index: int | None, max_worker_cores: int | None = None) -> Placement:
    """Worker cores and a monitor core on the GPU's NUMA node: the monitor gets the last core
    (when there are at least two), the worker the rest, up to `max_worker_cores`."""
    cores, numa, source = gpu_local_cores(gpu_index)
    monitor = cores[-1] if len(cores) >= 2 and gpu_index is not None else None
    worker = [c for c in cores if c != monitor]
    if max_worker_cores:
        worker = worker[:max_worker_cores]
    return Placement(worker, monitor, numa, source, threads=len(worker))


def pin_this_thread(cores: list[int]) -> str | None:
    """Pin the calling thread (and the threads it starts afterwards) to `cores`; the reason
    when that is not possible."""
    try:
        os.sched_setaffinity(0, set(cores))
    except (OSError, ValueError) as exc:
        return f"sched_setaffinity failed: {exc}"
    return None


def host_speed_probe(repeats: int = PROBE_REPEATS) -> dict[str, float]:
    """Milliseconds a fixed pure-Python loop takes, `repeats` times: min and median."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        sum(range(PROBE_RANGE))
        times.append((time.perf_counter() - started) * 1000.0)
    times.sort()
    return {"min_ms": round(times[0], 3), "median_ms": round(times[len(times) // 2], 3)}


def host_load(gpu_index: int | None = None) -> dict[str, Any]:
    """What else loads the host right now: load average, busy cores (over 0.1 s), and the
    other processes on the GPU (pid, name, memory), by NVML."""
    load: dict[str, Any] = {"load_avg": [round(x, 2) for x in os.getloadavg()]}
    try:
        import psutil

        per_cpu = psutil.cpu_percent(interval=0.1, percpu=True)
        load["busy_cpus"] = sum(1 for p in per_cpu if p >= BUSY_CPU_PERCENT)
        load["cpus"] = len(per_cpu)
        load["cpu_percent"] = round(sum(per_cpu) / max(len(per_cpu), 1), 1)
    except Exception as exc:  # noqa: BLE001 -- a missing reading is recorded, never fatal
        load["busy_cpus_error"] = repr(exc)
    if gpu_index is not None:
        load["gpu_processes"] = _other_gpu_processes(gpu_index)
    return load


def _other_gpu_processes(gpu_index: int) -> list[dict[str, Any]] | str:
    from harness.environment import nvml

    try:
        nv, handle, _ = nvml.open_cuda_device(gpu_index)
    except nvml.NvmlUnavailable as exc:
        return f"unknown: {exc}"
    try:
        found = []
        for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            with contextlib.suppress(Exception):
                for proc in getattr(nv, getter)(handle):
                    if proc.pid != os.getpid():
                        found.append({"pid": int(proc.pid), "name": _process_name(proc.pid),
                                      "memory_bytes": getattr(proc, "usedGpuMemory", None)})
        return found
    finally:
        nvml.close_nvml(nv)


def memory_in_use(gpu_index: int | None) -> dict[str, Any]:
    """This process's memory now: its peak resident set (getrusage), and on a GPU what NVML
    says it holds there (every allocator and the CUDA context; torch's own counters miss ONNX
    Runtime's and TensorRT's allocations)."""
    import resource
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out: dict[str, Any] = {"host_peak_rss_bytes": int(rss if sys.platform == "darwin" else rss * 1024)}
    if gpu_index is None:
        return out
    from harness.environment import nvml

    try:
        nv, handle, _ = nvml.open_cuda_device(gpu_index)
    except nvml.NvmlUnavailable as exc:
        out["device_reason"] = f"NVML: {exc}"
        return out
    try:
        for proc in nv.nvmlDeviceGetComputeRunningProcesses(handle):
            used = getattr(proc, "usedGpuMemory", None)
            if proc.pid == os.getpid() and isinstance(used, int):
                out["device_bytes"] = used
        if "device_bytes" not in out:
            out["device_reason"] = "NVML lists no memory for this process (a container's pid namespace hides it)"
    except Exception as exc:  # noqa: BLE001 -- a missing reading is recorded, never fatal
        out["device_reason"] = nvml.describe_error(exc)
    finally:
        nvml.close_nvml(nv)
    return out


def _process_name(pid: int) -> str | None:
    with contextlib.suppress(Exception):
        import psutil

        return str(psutil.Process(pid).name())
    return None


THREADS_ENV = "BENCH_WORKER_THREADS"  # what runtimes that size their own pools read (worker_threads)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def apply_controls(pin_cores: bool, threads: int | None, gpu_index: int | None) -> dict[str, Any]:
    """Pin this process's main thread (and every thread it starts later: torch's and ONNX
    Runtime's pools) to cores near its GPU, and set the thread counts libraries read when they
    load, before they are imported. Returns what was done, for the record's `controls`."""
    placement = choose_placement(gpu_index) if pin_cores else None
    pinned, reason = False, None
    if placement is not None:
        reason = pin_this_thread(placement.worker_cores)
        pinned = reason is None
    count = threads or (len(placement.worker_cores) if placement is not None else len(allowed_cores()))
    set_vars = {}
    for name in THREAD_VARIABLES:
        if name not in os.environ:  # a user's own setting wins (and enters the fingerprint)
            os.environ[name] = str(count)
        set_vars[name] = int(os.environ[name]) if os.environ[name].isdigit() else None
    os.environ[THREADS_ENV] = str(count)
    return {
        "placement": None if placement is None else {**placement.as_dict(), "threads": count, "pinned": pinned,
                                                     "reason": reason},
        "threads": {"worker": count, **{k.lower(): v for k, v in set_vars.items()}},
    }


def worker_threads() -> int | None:
    """The intra-op thread count the harness chose for this worker, or None outside a worker."""
    value = os.environ.get(THREADS_ENV, "")
    return int(value) if value.isdigit() else None


def pin_monitor_thread(core: int | None) -> None:
    """Called from the GPU monitor's own thread: keep its sampling off the worker's cores."""
    if core is not None:
        with contextlib.suppress(OSError, ValueError):
            os.sched_setaffinity(0, {core})


def host_snapshot(gpu_index: int | None) -> dict[str, Any]:
    """Load and speed at one moment (a process's start or end)."""
    return {"at": time.time(), "probe": host_speed_probe(), **host_load(gpu_index)}
