"""A thread that watches one GPU through NVML while a cell warms up and is measured.

    with GpuMonitor(device_index=0, interval_ms=20) as monitor:
        monitor.phase("warmup");  ...
        monitor.phase("measure"); ...
    record["monitor"] = monitor.result

Every `interval_ms` it reads SM and memory clocks, temperature, power, utilisation and the
clock-event (throttle) reason bitmask, labelled with the current phase. `stop()` returns the
trace and a summary, and decides whether the measurement was throttled:

  * the SM clock fell below 90% of the clock at the first measure-phase sample, in a sample
    whose reasons do not include `gpu_idle` (a GPU idling between paced calls lowers its
    clock on purpose; that is not throttling), or
  * a power or thermal slowdown reason was active (sw_power_cap, hw_slowdown,
    sw_thermal_slowdown, hw_thermal_slowdown, hw_power_brake_slowdown).

Memory and energy (harness.run.resources turns them into the record's `resources`): each
sample also reads this process's device memory (NVML's compute-process list, what nvidia-smi
shows) and the device's used memory, timed on their own (`summary.memory_cost_us`); and at the
measurement phase's first and last boundary -- `phase("measure")` and the next non-measure
phase, both called between the timed loops -- the main thread reads NVML's total-energy
counter (`energy_counter`). With `sample=False` (the plan's `gpu.monitor: false`) no thread
runs: one full sample is taken at each of those two boundaries instead, so the counter, the
memory and the clocks are still read, outside the timed region.

The verdict looks at the measure-phase samples ("measure", "sustained"); warm-up samples are
kept in the trace but a clock still ramping up there is expected. Without measure samples,
all samples are judged and the summary says so.

Cost, and why it stays out of the measurement: one daemon thread, the NVML handle fetched
once, six NVML reads per sample plus the two memory queries (each a ctypes call that releases
the GIL while the driver answers; pynvml's process list asks for the count, then the entries)
and one tuple appended; dicts are built only in `stop()`. The figures below predate the memory
queries; docs/performance.md says how their cost is measured. The time each sample took
is kept (`summary.sample_cost_us`), so every record shows what watching cost; at 20 ms that
is the sample cost / 20 ms of one CPU core, and the measuring thread only waits for the GIL
while the sampler runs Python between NVML calls. The harness never changes a GPU setting:
NVML is only read.

Measured (NVIDIA H200, driver 580.159.04, nvidia-ml-py 13.615, Python 3.12, 2026-11-27):
  - back to back, 300 samples: 13-14 us per sample (p50), 59-90 us max;
  - inside the monitor at 20 ms: 90-140 us per sample (p50; the thread's wake-up included),
    i.e. under 0.7% of one CPU core;
  - a launch-bound loop (256x256 fp32 matmul + synchronize, about 35 us an iteration),
    median per iteration, three rounds: off 35.4 / 35.4 / 36.3 us, monitor at 20 ms
    35.2 / 35.9 / 36.4 us (within the rounds' own spread), at 10 ms 35.4 / 36.8 / 36.6 us.

Seen on the same H200: a sustained large bf16 GEMM load sits at the 700 W limit with
sw_power_cap active in every sample (SM 1410-1530 MHz, max 1980): such a cell is marked
throttled, rightly -- its number is the power-limited speed. Paced bursts showed the cap in
about 30% of samples.
"""

from __future__ import annotations

import itertools
import os
import statistics
import threading
import time
from collections.abc import Callable
from types import ModuleType, TracebackType
from typing import Any, Self

from harness.environment import nvml

# One sample: (sm_mhz, mem_mhz, temp_c, power_w, util_gpu, util_mem, clock_event_reasons).
Sample = tuple[
    int | None, int | None, float | None, float | None, int | None, int | None, int | None
]
SAMPLE_FIELDS = (
    "sm_mhz",
    "mem_mhz",
    "temp_c",
    "power_w",
    "util_gpu",
    "util_mem",
    "clock_event_reasons",
)

MEASURE_PHASES = frozenset({"measure", "sustained"})
CLOCK_DROP_FRACTION = 0.9
# Consecutive failed samples after which the GPU is taken as gone and sampling stops.
MAX_CONSECUTIVE_ERRORS = 50


class GpuMonitor:
    """Samples one GPU on a daemon thread. `sampler` replaces NVML (tests, other backends):
    a callable returning a `Sample`; `memory_sampler` one returning (this process's device
    bytes, device used bytes), `energy_reader` one returning the cumulative energy in mJ;
    `clock` must be monotonic seconds. `sample=False`: no thread, a sample at the measurement
    phase's start and end only."""

    def __init__(
        self,
        device_index: int | None,
        interval_ms: float = 20.0,
        *,
        sampler: Callable[[], Sample] | None = None,
        memory_sampler: Callable[[], nvml.MemoryReading] | None = None,
        energy_reader: Callable[[], float] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sample: bool = True,
    ):
        self.device_index = device_index
        self.sampling = sample
        self._memory_sampler = memory_sampler
        self._energy_reader = energy_reader
        self._energy: dict[str, Any] = {}
        self._memory_errors = 0
        self._memory_reason: str | None = None
        self.interval_ms = float(interval_ms)
        self.result: dict[str, Any] | None = None
        self._interval_s = self.interval_ms / 1000.0
        self._sampler = sampler
        self._clock = clock
        self._phase = "before"  # samples taken before the first phase() call
        self._measure_t0: float | None = None
        self._started_t0: float | None = None
        # Rows: (monotonic_s, phase, *Sample, cost_s). Tuples: cheap to append from the thread.
        self._rows: list[tuple[Any, ...]] = []
        self._reason: str | None = None
        self._device: dict[str, Any] = {}
        self._unsupported: dict[str, str] = {}
        self._errors = 0
        self._last_error: str | None = None
        self._nv: ModuleType | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # A core of its own (harness.environment.host's placement), off the worker's cores.
        self.pin_core: int | None = None

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Start sampling; without NVML or a GPU this records why and does nothing else."""
        if self._thread is not None or self.result is not None:
            return
        self._started_t0 = self._clock()
        if self._sampler is None:
            if self.device_index is None:
                self._reason = "no GPU: the cell runs on the CPU"
                return
            try:
                self._sampler = self._open_nvml_sampler(self.device_index)
            except nvml.NvmlUnavailable as exc:
                self._reason = str(exc)
                return
        if not self.sampling:
            return  # boundary samples only (phase())
        self._thread = threading.Thread(target=self._run, name="gpu-monitor", daemon=True)
        self._thread.start()

    def phase(self, name: str) -> None:
        """Label the following samples. The first measure phase sets t_s = 0 and reads the
        energy counter; leaving the measure phases reads it again (both on the caller's
        thread, between the timed loops)."""
        entering = name in MEASURE_PHASES and self._measure_t0 is None
        leaving = self._phase in MEASURE_PHASES and name not in MEASURE_PHASES and "end" not in self._energy
        if entering:
            self._measure_t0 = self._clock()
            self._read_energy("start")
            if not self.sampling:
                self._phase = name
                self.sample_now()
        if leaving:
            if not self.sampling:
                self.sample_now()
            self._read_energy("end")
        self._phase = name

    def _read_energy(self, which: str) -> None:
        if self._energy_reader is None:
            return
        try:
            value = self._energy_reader()
        except Exception as exc:  # noqa: BLE001 -- a lost counter must not stop the measurement
            self._energy.setdefault("reason", f"reading the energy counter at the phase's {which} failed: "
                                              f"{nvml.describe_error(exc)}")
            return
        self._energy[which] = value
        self._energy[f"{which}_t_mono_s"] = self._clock()

    def sample_now(self) -> None:
        """Take one sample on the calling thread (the thread uses the same code)."""
        sampler = self._sampler
        if sampler is None:
            return
        before = time.perf_counter()
        try:
            sample = sampler()
        except Exception as exc:  # noqa: BLE001 -- a lost GPU must not kill the measurement
            self._errors += 1
            self._last_error = nvml.describe_error(exc)
            return
        own: int | None = None
        used: int | None = None
        memory_s = 0.0
        if self._memory_sampler is not None:
            started = time.perf_counter()
            try:
                own, used = self._memory_sampler()
            except Exception as exc:  # noqa: BLE001 -- memory is a figure, not a reason to stop
                self._memory_errors += 1
                self._memory_reason = f"reading NVML's memory failed: {nvml.describe_error(exc)}"
            memory_s = time.perf_counter() - started
        now = time.perf_counter()
        self._rows.append((self._clock(), self._phase, *sample, own, used, now - before, memory_s))
        self._errors = 0

    def stop(self) -> dict[str, Any]:
        """Stop sampling; return (and keep in `.result`) the trace and its summary."""
        if self.result is not None:
            return self.result
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=5.0)
        self._close_nvml()
        self.result = self._build_result()
        return self.result

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _close_nvml(self) -> None:
        if self._nv is not None:
            nvml.close_nvml(self._nv)
            self._nv = None

    # -- sampling --------------------------------------------------------------------------
    def _run(self) -> None:
        from harness.environment.host import pin_monitor_thread

        pin_monitor_thread(self.pin_core)
        next_t = self._clock()
        while True:
            self.sample_now()
            if self._errors >= MAX_CONSECUTIVE_ERRORS:
                self._reason = f"sampling stopped after repeated NVML errors: {self._last_error}"
                return
            next_t += self._interval_s
            delay = next_t - self._clock()
            if delay < 0:  # fell behind (a long NVML call): skip ahead rather than burst
                next_t, delay = self._clock(), 0.0
            if self._stop.wait(delay):
                return

    def _open_nvml_sampler(self, device_index: int) -> Callable[[], Sample]:
        nv, handle, how = nvml.open_cuda_device(device_index)
        self._nv = nv
        why: dict[str, str] = {}
        name = nvml.call(why, "name", nv.nvmlDeviceGetName, handle)
        uuid = nvml.call(why, "uuid", nv.nvmlDeviceGetUUID, handle)
        self._device = {
            **how,
            "name": nvml.as_text(name) if name is not None else None,
            "uuid": nvml.as_text(uuid) if uuid is not None else None,
        }
        sampler = _nvml_sampler(nv, handle, self._unsupported)
        if self._memory_sampler is None:
            self._memory_sampler = nvml.memory_reader(nv, handle, os.getpid(), self._unsupported)
        if self._energy_reader is None:
            self._energy_reader = nvml.energy_counter_reader(nv, handle, self._unsupported)
        return sampler

    # -- result ----------------------------------------------------------------------------
    def _build_result(self) -> dict[str, Any]:
        origin = self._measure_t0 if self._measure_t0 is not None else self._started_t0 or 0.0
        trace: list[dict[str, Any]] = []
        costs_us: list[float] = []
        memory_us: list[float] = []
        with_memory = self._memory_sampler is not None
        for row in self._rows:
            t_abs, phase, *values, own, used, cost_s, memory_s = row
            entry: dict[str, Any] = {
                "t_s": round(t_abs - origin, 6),
                "t_mono_s": t_abs,
                "phase": phase,
            }
            entry.update(zip(SAMPLE_FIELDS, values, strict=True))
            if with_memory:
                entry["process_memory_bytes"] = own
                entry["device_memory_used_bytes"] = used
                memory_us.append(memory_s * 1e6)
            trace.append(entry)
            costs_us.append(cost_s * 1e6)
        summary = summarize(trace)
        if costs_us:
            summary["sample_cost_us"] = _cost(costs_us)
        if memory_us:
            summary["memory_cost_us"] = _cost(memory_us)
        if len(trace) > 1:
            gaps = [b["t_mono_s"] - a["t_mono_s"] for a, b in itertools.pairwise(trace)]
            summary["interval_ms_actual_p50"] = round(statistics.median(gaps) * 1000, 2)
        reason = self._reason
        if reason is None and not trace:
            reason = self._last_error or "no samples were taken"
        if not self.sampling and self._sampler is not None:
            off = "sampling switched off by the plan (gpu.monitor: false): one sample at the measurement phase's start and end"
            reason = off if reason is None else f"{off}; {reason}"
        energy: dict[str, Any] | None = None
        if self._sampler is not None or self._energy_reader is not None:
            energy = {"unit": "mJ", **{k: v for k, v in self._energy.items() if k != "reason"}}
            why = self._energy.get("reason") or self._unsupported.get("energy_counter")
            if self._energy_reader is None and why is None:
                why = "no energy counter reader"
            if why:
                energy["reason"] = why
        memory_reason = self._memory_reason or _memory_gap(trace, self._unsupported, with_memory)
        return {
            "available": self._sampler is not None and bool(trace),
            "reason": reason,
            "interval_ms": self.interval_ms,
            "device_index": self.device_index,
            "device": self._device,
            "unsupported": dict(self._unsupported),
            "sample_errors": self._errors,
            "t_s_origin": "measure" if self._measure_t0 is not None else "start",
            "trace": trace,
            "summary": summary,
            "energy_counter": energy,
            "memory_reason": memory_reason,
            "sampling": self.sampling,
        }


def _cost(values_us: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values_us), 1), "max": round(max(values_us), 1)}


def _memory_gap(trace: list[dict[str, Any]], unsupported: dict[str, str], with_memory: bool) -> str | None:
    """Why the trace holds no reading of this process's device memory, or None if it does."""
    if not trace:
        return None
    if not with_memory:
        return "no memory reader"
    if any(row.get("process_memory_bytes") is not None for row in trace if row.get("phase") in MEASURE_PHASES):
        return None
    if "process_memory" in unsupported:
        return f"NVML's compute-process list is not available: {unsupported['process_memory']}"
    return (f"this process (pid {os.getpid()}) never appeared among NVML's compute processes while it was "
            "measured: in a container without the host's PID namespace NVML lists host pids, or the "
            "driver gives no per-process figure")


def _nvml_sampler(nv: ModuleType, handle: Any, unsupported: dict[str, str]) -> Callable[[], Sample]:
    """A closure reading one sample. Each query is tried once up front; one the GPU doesn't
    support (power on some boards, utilisation under MIG) reads as None from then on instead
    of raising every 20 ms."""
    SM, MEM, TEMP = nv.NVML_CLOCK_SM, nv.NVML_CLOCK_MEM, nv.NVML_TEMPERATURE_GPU
    get_clock, get_temp = nv.nvmlDeviceGetClockInfo, nv.nvmlDeviceGetTemperature
    get_power, get_util = nv.nvmlDeviceGetPowerUsage, nv.nvmlDeviceGetUtilizationRates

    def works(name: str, fn: Callable[[], Any]) -> bool:
        try:
            fn()
            return True
        except Exception as exc:  # noqa: BLE001 -- NotSupported, NoPermission, missing function
            unsupported[name] = nvml.describe_error(exc)
            return False

    has_sm = works("sm_mhz", lambda: get_clock(handle, SM))
    has_mem = works("mem_mhz", lambda: get_clock(handle, MEM))
    has_temp = works("temp_c", lambda: get_temp(handle, TEMP))
    has_power = works("power_w", lambda: get_power(handle))
    has_util = works("util", lambda: get_util(handle))
    # The r535 name, else the older one (nvml.CLOCK_EVENT_REASON_FUNCTIONS); records why not.
    read_reasons = nvml.clock_event_reasons_reader(nv, handle, unsupported)
    has_reasons = read_reasons is not None
    if not (has_sm or has_temp or has_power or has_util or has_reasons):
        raise nvml.NvmlUnavailable(f"no NVML query works on this GPU: {unsupported}")

    def sample() -> Sample:
        util = get_util(handle) if has_util else None
        return (
            get_clock(handle, SM) if has_sm else None,
            get_clock(handle, MEM) if has_mem else None,
            get_temp(handle, TEMP) if has_temp else None,
            get_power(handle) / 1000.0 if has_power else None,  # mW -> W
            util.gpu if util is not None else None,
            util.memory if util is not None else None,
            read_reasons() if read_reasons is not None else None,
        )

    return sample


def _spread(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"min": None, "p50": None, "max": None}
    return {"min": min(values), "p50": statistics.median(values), "max": max(values)}


def _memory_spreads(judged: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("process_memory_bytes", "device_memory_used_bytes"):
        values = [r[key] for r in judged if r.get(key) is not None]
        if values:
            out[key] = _spread(values)
    return out


def summarize(trace: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary of a trace (see the module docstring for the throttle rule)."""
    measured = [row for row in trace if row.get("phase") in MEASURE_PHASES]
    judged, judged_phases = (measured, "measure") if measured else (trace, "all")
    phases: dict[str, int] = {}
    for row in trace:
        phases[row.get("phase") or "?"] = phases.get(row.get("phase") or "?", 0) + 1
    summary: dict[str, Any] = {
        "samples": len(trace),
        "judged_samples": len(judged),
        "judged_phases": judged_phases,
        "phases": phases,
        "sm_mhz": _spread([r["sm_mhz"] for r in judged if r.get("sm_mhz") is not None]),
        "mem_mhz": _spread([r["mem_mhz"] for r in judged if r.get("mem_mhz") is not None]),
        "temp_c": _spread([r["temp_c"] for r in judged if r.get("temp_c") is not None]),
        "power_w": _spread([r["power_w"] for r in judged if r.get("power_w") is not None]),
        **_memory_spreads(judged),
        "start_sm_mhz": None,
        "clock_drop_share": None,
        "slowdown_share": None,
        "throttled_share": None,
        "reasons": {},
        "throttled": None,
        "throttled_why": None,
    }
    if not judged:
        return summary
    start = next((r["sm_mhz"] for r in judged if r.get("sm_mhz")), None)
    summary["start_sm_mhz"] = start
    floor = start * CLOCK_DROP_FRACTION if start else None
    counts: dict[str, int] = {}
    dropped = slowed = throttled = 0
    lowest: float | None = None
    for row in judged:
        bits = row.get("clock_event_reasons") or 0
        for name in nvml.reason_names(bits):
            counts[name] = counts.get(name, 0) + 1
        sm = row.get("sm_mhz")
        is_drop = floor is not None and sm is not None and sm < floor and not bits & nvml.GPU_IDLE
        is_slow = bool(bits & nvml.SLOWDOWN_REASONS)
        dropped += is_drop
        slowed += is_slow
        throttled += is_drop or is_slow
        if is_drop and sm is not None and (lowest is None or sm < lowest):
            lowest = sm
    n = len(judged)
    summary["clock_drop_share"] = dropped / n
    summary["slowdown_share"] = slowed / n
    summary["throttled_share"] = throttled / n
    summary["reasons"] = {name: count / n for name, count in sorted(counts.items())}
    summary["throttled"] = throttled > 0
    why: list[str] = []
    if dropped and start and lowest is not None:
        why.append(
            f"SM clock fell below {CLOCK_DROP_FRACTION:.0%} of its start ({start} MHz), to "
            f"{lowest} MHz at lowest, in {dropped / n:.1%} of samples"
        )
    slow_names = [
        name
        for bit, name in nvml.CLOCK_EVENT_REASONS.items()
        if bit & nvml.SLOWDOWN_REASONS and name in counts
    ]
    if slow_names:
        why.append(
            "slowdown reasons active: "
            + ", ".join(f"{name} in {counts[name] / n:.1%} of samples" for name in slow_names)
        )
    summary["throttled_why"] = "; ".join(why) or None
    return summary
