"""A measured cell's memory, energy and artifact size (the record's `resources`), read outside
every timed region: the device-memory baseline before the model or session exists, the torch
allocator's peak and the RAPL counters at the measurement phase's boundaries (phase callbacks),
the host's high-water mark over the timed phase (reset when it begins), the artifact's size on disk afterwards.

Where a figure cannot be had (a CPU cell has no device memory, NVML is absent, a random-weights
model has no file), it is None with the reason, never 0.
"""

from __future__ import annotations

import contextlib
import os
import resource
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.environment.energy import RaplMeter
    from harness.runtimes.base import Runtime


# ----------------------------------------------------------------------------- host memory


def _status_kib(field: str, status: Path = Path("/proc/self/status")) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        for line in status.read_text("ascii").splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])  # "VmHWM:   123456 kB"
    return None


def _release_freed_memory(status: Path = Path("/proc/self/status")) -> int | None:
    """Hands what prepare freed back to the OS before the high-water mark is reset: the reset
    sets VmHWM to the current RSS, and glibc keeps freed heap resident, so without this a
    process that quantized or converted a model (an artifact-cache miss) would carry that
    memory into the timed phase's peak and a warm cache would read lower. Returns the bytes of
    RSS released, None where RSS or glibc's malloc_trim cannot be had."""
    import ctypes
    import gc

    before = _status_kib("VmRSS", status)
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return None
    after = _status_kib("VmRSS", status)
    return None if before is None or after is None else max(0, before - after) * 1024


class HostPeak:
    """Resets this process's high-water mark when the measurement phase begins (a phase
    callback, outside the timed loop), so that the peak read after it is the timed phase's own:
    the whole-process VmHWM since exec also holds the prepare step (INT8 quantization, FP16
    conversion, dataset loading), which only a process that missed the artifact cache runs, so
    the same configuration would get another figure depending on the cache. Writing "5" to
    /proc/self/clear_refs resets VmHWM to the current RSS (Linux >= 4.0); where it cannot be
    written, `reason` says so and the figure stays the whole process's."""

    def __init__(self, clear_refs: Path = Path("/proc/self/clear_refs"), status: Path = Path("/proc/self/status")):
        self.clear_refs, self.status = clear_refs, status
        self.before_reset_bytes: int | None = None  # the whole-process peak up to the reset
        self.reset: bool = False
        self.reason: str | None = None
        self.released_bytes: int | None = None  # RSS handed back to the OS before the reset
        self._started = False

    def phase(self, name: str) -> None:
        from harness.environment.monitor import MEASURE_PHASES

        if name not in MEASURE_PHASES or self._started:
            return
        self._started = True
        self.released_bytes = _release_freed_memory(self.status)
        hwm = _status_kib("VmHWM", self.status)
        self.before_reset_bytes = hwm * 1024 if hwm is not None else None
        try:
            self.clear_refs.write_text("5", "ascii")
            self.reset = True
        except OSError as exc:
            self.reason = (f"the high-water mark could not be reset ({self.clear_refs}: {exc.strerror or exc}; "
                           "Linux >= 4.0 is needed): the peak is the whole process's since exec, prepare included")


def host_memory_now(peak: HostPeak | None = None) -> dict[str, Any]:
    """This process's resident memory: its high-water mark (VmHWM: since `peak` reset it when
    the measurement phase began, else since exec), the current RSS, and getrusage's ru_maxrss;
    `process_peak_rss_bytes` is the whole process's peak since exec either way."""
    hwm, rss = _status_kib("VmHWM"), _status_kib("VmRSS")
    out: dict[str, Any] = {}
    reset = peak is not None and peak.reset and hwm is not None
    if hwm is not None:
        out["peak_rss_bytes"] = hwm * 1024
        out["method"] = "/proc/self/status VmHWM" + (" (reset at the measurement phase's start)" if reset else "")
        out["peak_rss_scope"] = "measure_phase" if reset else "process"
        before = peak.before_reset_bytes if peak is not None and reset else None
        out["process_peak_rss_bytes"] = max(hwm * 1024, before or 0)
    if peak is not None and peak.reason:
        out["reset_reason"] = peak.reason
    if peak is not None and peak.released_bytes is not None:
        out["released_before_reset_bytes"] = peak.released_bytes
    if rss is not None:
        out["rss_after_measure_bytes"] = rss * 1024
    with contextlib.suppress(Exception):
        out["ru_maxrss_bytes"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux
    if "peak_rss_bytes" not in out:
        if "ru_maxrss_bytes" in out:
            out["peak_rss_bytes"] = out["ru_maxrss_bytes"]
            out["process_peak_rss_bytes"] = out["ru_maxrss_bytes"]
            out["method"] = "getrusage ru_maxrss (no /proc/self/status here)"
            out["peak_rss_scope"] = "process"
        else:
            out["reason"] = "neither /proc/self/status nor getrusage gives this process's peak RSS here"
    return out


def host_memory_at_end(after_measure: dict[str, Any]) -> dict[str, Any]:
    """The after-measure figures plus the high-water mark when the record is built (since the
    reset, when there was one), and the whole process's peak up to then."""
    out = dict(after_measure)
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        out["end_peak_rss_bytes"] = hwm * 1024
        out["process_peak_rss_bytes"] = max(hwm * 1024, int(out.get("process_peak_rss_bytes") or 0))
    return out


# ----------------------------------------------------------------------------- artifact


def _onnx_external_files(path: Path) -> tuple[list[Path], str | None]:
    """Files an ONNX model keeps its weights in besides itself (external data), from the graph's
    initializers; ([], why) when the onnx package cannot read it."""
    try:
        import onnx
    except ImportError:
        return [], "external data not checked (the onnx package is not installed)"
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 -- the size of the file itself still stands
        return [], f"external data not checked ({type(exc).__name__}: {exc})"
    found: list[Path] = []
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        for entry in tensor.external_data:
            if entry.key == "location":
                candidate = (path.parent / entry.value).resolve()
                if candidate not in found:
                    found.append(candidate)
    return found, None


def artifact_size(prepare: dict[str, Any]) -> dict[str, Any]:
    """The file the cell ran, on disk, from the runtime's prepare facts: the ONNX file ONNX
    Runtime loaded (a converted FP16 copy when there is one) with its external data files, the
    TensorRT engine, else the model's checkpoint."""
    artifact = prepare.get("artifact") or {}
    model = prepare.get("model") or {}
    path: str | None = prepare.get("model_file") or artifact.get("path")
    kind: str | None = None
    if path:
        kind = "onnx" if str(path).endswith(".onnx") else "engine"
    else:
        weights = model.get("weights") if isinstance(model, dict) else None
        if weights and weights != "random":
            path, kind = str(weights), "checkpoint"
        elif weights == "random" or model.get("random_weights"):
            return {"reason": "random weights built in memory: no checkpoint file exists to measure"}
        else:
            return {"reason": "the runtime named no file it ran (no artifact, no checkpoint)"}
    file = Path(path).resolve()
    try:
        size = file.stat().st_size
    except OSError as exc:
        return {"kind": kind, "path": str(file), "reason": f"cannot stat {file}: {exc.strerror}"}
    out: dict[str, Any] = {"kind": kind, "path": str(file), "bytes": size}
    if kind == "onnx":
        extra, why = _onnx_external_files(file)
        if extra:
            out["files"] = [str(file), *map(str, extra)]
            try:
                out["bytes"] = size + sum(p.stat().st_size for p in extra)
            except OSError as exc:
                out["reason"] = f"an external data file cannot be read: {exc}"
                out["bytes"] = None
        elif why:
            out["reason"] = why
    return out


# ----------------------------------------------------------------------------- device memory


def device_memory_baseline(gpu_index: int | None) -> dict[str, Any]:
    """This process's and the device's memory before the model or session exists (NVML); a
    process not on the GPU yet holds 0 bytes there (that 0 is a reading, not a gap)."""
    if gpu_index is None:
        return {}
    from harness.environment import nvml

    try:
        nv, handle, _ = nvml.open_cuda_device(gpu_index)
    except nvml.NvmlUnavailable as exc:
        return {"reason": str(exc)}
    try:
        why: dict[str, str] = {}
        reader = nvml.memory_reader(nv, handle, os.getpid(), why)
        if reader is None:
            return {"reason": "; ".join(f"{k}: {v}" for k, v in why.items()) or "NVML reads no memory here"}
        own, used = reader()
        out: dict[str, Any] = {"device_used_baseline_bytes": used}
        if "process_memory" in why:
            out["process_reason"] = why["process_memory"]
        else:
            out["process_baseline_bytes"] = own if own is not None else 0
        return out
    except Exception as exc:  # noqa: BLE001 -- a baseline is a figure, never a reason to fail
        return {"reason": f"NVML memory query failed: {exc!r}"}
    finally:
        nvml.close_nvml(nv)


class TorchPeak:
    """The runtime's own allocator peak over the measurement phase: reset when the phase
    begins, read when it ends (both in phase callbacks, between the timed loops)."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime
        self.peak: dict[str, int] | None = None
        self.reason: str | None = None
        self.released_bytes: int | None = None  # RSS handed back to the OS before the reset
        self._started = False

    def phase(self, name: str) -> None:
        from harness.environment.monitor import MEASURE_PHASES

        try:
            if name in MEASURE_PHASES and not self._started:
                self._started = True
                self.runtime.reset_device_memory_peak()
            elif self._started and name not in MEASURE_PHASES and self.peak is None:
                self.peak = self.runtime.device_memory_peak()
        except Exception as exc:  # noqa: BLE001 -- a figure, never a reason to fail
            self.reason = f"reading the allocator's peak failed: {exc!r}"


def device_memory(device: str, baseline: dict[str, Any], torch_peak: TorchPeak | None,
                  monitor: dict[str, Any] | None) -> dict[str, Any]:
    """The record's `resources.device_memory` (harness.results.DeviceMemory) as a dict.

    The headline is one quantity for every runtime, so that budgets, comparisons and charts can
    put cells on one axis: NVML's reading of this process over the measurement phase above its
    baseline before the model or session was created (what nvidia-smi lists: the CUDA context,
    the allocator's cache or the runtime's arena, workspaces). The torch allocator's peaks
    (max_memory_allocated / max_memory_reserved: tensors only, neither the context nor the
    cache) are kept beside it as detail, and are the headline only where NVML has no reading of
    this process; where neither exists, the device's used memory above its baseline, which
    counts other processes too. `method` says which; a reader compares two figures only when
    their methods agree."""
    if not device.startswith("cuda"):
        return {"reason": "the cell runs on the CPU: its memory is the host's (host_memory)"}
    out: dict[str, Any] = {k: v for k, v in baseline.items() if k != "reason"}
    trace = (monitor or {}).get("trace") or []
    from harness.environment.monitor import MEASURE_PHASES

    measured = [r for r in trace if r.get("phase") in MEASURE_PHASES]
    own = [int(r["process_memory_bytes"]) for r in measured if r.get("process_memory_bytes") is not None]
    used = [int(r["device_memory_used_bytes"]) for r in measured if r.get("device_memory_used_bytes") is not None]
    if own:
        out["process_peak_bytes"] = max(own)
        out["process_samples"] = len(own)
    elif monitor is not None:
        out["process_reason"] = out.get("process_reason") or monitor.get("memory_reason") or monitor.get("reason") or \
            "no NVML reading of this process during the measurement"
    if used:
        out["device_used_peak_bytes"] = max(used)
    allocator = torch_peak.peak if torch_peak is not None else None
    if allocator is not None:
        out["torch_allocated_peak_bytes"] = allocator.get("allocated_bytes")
        out["torch_reserved_peak_bytes"] = allocator.get("reserved_bytes")
    reasons = [r for r in (baseline.get("reason"), torch_peak.reason if torch_peak else None) if r]
    if own:
        base = out.get("process_baseline_bytes")
        if base is None:
            reasons.append("no baseline before the session: the figure is the process's whole peak")
            out["peak_bytes"] = max(own)
        else:
            out["peak_bytes"] = max(own) - int(base)
        out["method"] = "nvml_process"
    elif allocator is not None and out.get("torch_allocated_peak_bytes") is not None:
        out["peak_bytes"] = out["torch_allocated_peak_bytes"]
        out["method"] = "torch_allocator"
        reasons.append(f"NVML has no reading of this process ({out.get('process_reason') or 'not listed'}): the figure "
                       "is torch's allocator peak (tensors only: no CUDA context, no allocator cache), another "
                       "quantity than the NVML figure of other cells")
    elif used and out.get("device_used_baseline_bytes") is not None:
        out["peak_bytes"] = max(used) - int(out["device_used_baseline_bytes"])
        out["method"] = "nvml_device_used"
        reasons.append(f"this process's own reading is missing ({out.get('process_reason')}); the figure is "
                       "the device's used memory above its baseline, other processes' changes included")
    else:
        reasons.append(out.get("process_reason") or "NVML gave no memory reading during the measurement")
    if out.get("peak_bytes") is not None and out["peak_bytes"] < 0:
        reasons.append(f"the reading during the measurement ({out['peak_bytes']:+d} bytes against the baseline) fell "
                       "below the baseline: no figure")
        out["peak_bytes"] = None
        out.pop("method", None)
    if reasons:
        out["reason"] = "; ".join(reasons)
    return out


def resources_block(
    *,
    device: str,
    images: int,
    prepare: dict[str, Any],
    baseline: dict[str, Any],
    torch_peak: TorchPeak | None,
    monitor: dict[str, Any] | None,
    rapl: RaplMeter | None,
    host_after_measure: dict[str, Any],
    measure_s: float | None,
) -> dict[str, Any]:
    """The record's `resources` (harness.results.Resources) as a dict."""
    from harness.environment.energy import EnergyInputs, energy_figures

    return {
        "device_memory": device_memory(device, baseline, torch_peak, monitor),
        "host_memory": host_memory_at_end(host_after_measure),
        "artifact": artifact_size(prepare),
        "energy": energy_figures(EnergyInputs(images=images, device=device, monitor=monitor, rapl=rapl,
                                              measure_s=measure_s)),
    }
