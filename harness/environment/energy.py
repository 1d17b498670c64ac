"""Energy over a cell's measurement phase: the GPU's NVML counter, integrated power samples, or
the CPU packages' RAPL counters. Nothing here is read inside a timed region.

GPU. NVML's total-energy counter (`nvmlDeviceGetTotalEnergyConsumption`, mJ since the driver
loaded; Volta and newer) is read by the monitor at the measurement phase's first and last
boundary (`GpuMonitor.phase`, between the timed loops, the device idle after the last timed
call's read): the difference is the device's energy over the phase. Where the GPU has no
counter, or the counter did not advance over the phase (it updates at a driver-chosen period),
the monitor's power samples of the phase are integrated instead (trapezoids, the first and last
sample held to the phase's edges) and the figure says so. The integral is also kept beside a
counter's figure as a cross-check. Either way the figure is the whole device's (every process
on it, idle power included), never this process's share; with `pause_ms`, the pauses between
calls are inside the phase and their idle energy is in the figure.

CPU. RAPL through the powercap interface (`/sys/class/powercap/intel-rapl:N/energy_uj`, one
zone per package; AMD's packages appear there too on kernels that support it), else the
`amd_energy` hwmon driver's socket counters (`energyN_input`, uJ). Those files are often
readable by root only; when none can be read the figure is null with the reason. Counters
wrap at `max_energy_range_uj`; one wrap per phase is undone. The packages' energy covers every
process on them.

Never 0 for "unknown" (codecarbon reported 0 J for GPUs without a counter): a figure that
cannot be had is None with a reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# One definition of the phases a measurement spans, the monitor's (the RAPL meter, the energy
# figures and the GPU monitor must agree on where the phase starts and ends).
from harness.environment.monitor import MEASURE_PHASES

# ----------------------------------------------------------------------------- RAPL


class RaplUnavailable(Exception):
    """No RAPL counter can be read here; str(exc) says why."""


@dataclass(frozen=True)
class RaplZone:
    name: str  # "package-0" (powercap) or "Esocket0" (amd_energy)
    energy_file: Path
    max_range_uj: int | None  # wrap-around range, when the interface gives one


def find_rapl_zones(root: Path = Path("/")) -> list[RaplZone]:
    """The package-level RAPL zones under `root` (a fake tree in tests): powercap's top-level
    `intel-rapl:N` zones (their sub-zones, core and dram, are inside the package and would count
    twice), else amd_energy's socket counters. Raises RaplUnavailable saying why none is usable."""
    powercap = root / "sys" / "class" / "powercap"
    problems: list[str] = []
    zones: list[RaplZone] = []
    if powercap.is_dir():
        for zone in sorted(powercap.glob("intel-rapl:*")):
            if zone.name.count(":") != 1:  # intel-rapl:0:1 is a sub-zone of package 0
                continue
            energy = zone / "energy_uj"
            name = _read_text(zone / "name") or zone.name
            if not energy.exists():
                continue
            if not _readable(energy):
                problems.append(f"{energy} is not readable by this user (RAPL is often root-only)")
                continue
            zones.append(RaplZone(name, energy, _read_int(zone / "max_energy_range_uj")))
    if zones:
        return zones
    hwmon = root / "sys" / "class" / "hwmon"
    if hwmon.is_dir():
        for device in sorted(hwmon.iterdir()):
            if _read_text(device / "name") != "amd_energy":
                continue
            for counter in sorted(device.glob("energy*_input")):
                label = _read_text(counter.with_name(counter.name.replace("_input", "_label"))) or counter.name
                if not label.lower().startswith("esocket"):
                    continue  # per-core counters are inside the socket's
                if not _readable(counter):
                    problems.append(f"{counter} is not readable by this user")
                    continue
                zones.append(RaplZone(label, counter, None))
    if zones:
        return zones
    if problems:
        raise RaplUnavailable("; ".join(problems))
    raise RaplUnavailable(
        f"no RAPL counter here: neither {powercap}/intel-rapl:* nor an amd_energy hwmon device exists "
        "(a VM or container often hides them)"
    )


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _readable(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
        return True
    except OSError:
        return False


class RaplMeter:
    """RAPL's package counters read at the measurement phase's start and end (`phase`, called
    between the timed loops), like the GPU monitor reads NVML's counter."""

    def __init__(self, root: Path = Path("/"), clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.zones: list[RaplZone] = []
        self.reason: str | None = None
        self.start: list[int] | None = None
        self.end: list[int] | None = None
        self.start_t: float | None = None
        self.end_t: float | None = None
        self._in_measure = False
        try:
            self.zones = find_rapl_zones(root)
        except RaplUnavailable as exc:
            self.reason = str(exc)

    def _read(self) -> list[int] | None:
        try:
            return [int(zone.energy_file.read_text("ascii").strip()) for zone in self.zones]
        except (OSError, ValueError) as exc:
            self.reason = f"reading RAPL failed: {exc}"
            return None

    def phase(self, name: str) -> None:
        if not self.zones:
            return
        if name in MEASURE_PHASES and self.start is None:
            self.start, self.start_t, self._in_measure = self._read(), self.clock(), True
        elif self._in_measure and name not in MEASURE_PHASES:
            self.end, self.end_t, self._in_measure = self._read(), self.clock(), False

    def joules(self) -> tuple[float | None, str | None]:
        """The packages' energy over the phase, or None and why."""
        if self.reason is not None:
            return None, self.reason
        if self.start is None or self.end is None:
            return None, "RAPL was not read at both ends of the measurement phase"
        total = 0
        for zone, a, b in zip(self.zones, self.start, self.end, strict=True):
            delta = b - a
            if delta < 0:
                if zone.max_range_uj is None:
                    return None, f"RAPL counter {zone.name} went backwards and its range is unknown"
                delta += zone.max_range_uj  # one wrap-around
            total += delta
        return total / 1e6, None


# ----------------------------------------------------------------------------- figures


def integrate_power(trace: Sequence[Any], t0: float, t1: float) -> tuple[float | None, int]:
    """Joules from the power samples (rows with `t_mono_s` and `power_w`) between monotonic
    times t0 and t1: trapezoids between samples, the first and last sample held to the edges.
    (None, n) when no sample with a power reading falls in [t0, t1]."""
    points = sorted(
        (float(_get(r, "t_mono_s")), float(_get(r, "power_w")))
        for r in trace
        if _get(r, "t_mono_s") is not None and _get(r, "power_w") is not None and t0 <= float(_get(r, "t_mono_s")) <= t1
    )
    if not points or t1 <= t0:
        return None, len(points)
    energy = points[0][1] * (points[0][0] - t0) + points[-1][1] * (t1 - points[-1][0])
    for (ta, pa), (tb, pb) in zip(points, points[1:], strict=False):
        energy += (pa + pb) / 2 * (tb - ta)
    return energy, len(points)


def _get(row: Any, key: str) -> Any:
    return row.get(key) if isinstance(row, dict) else getattr(row, key, None)


@dataclass
class EnergyInputs:
    """What energy_figures needs: the phase's images, the GPU monitor's result (a dict, as
    GpuMonitor.stop returns it) or the CPU's RAPL meter."""

    images: int
    device: str
    monitor: dict[str, Any] | None = None
    rapl: RaplMeter | None = None
    measure_s: float | None = None  # the protocol's wall time of the phase (fallback duration)
    notes: list[str] = field(default_factory=list)


def energy_figures(inputs: EnergyInputs) -> dict[str, Any]:
    """The record's `resources.energy` (harness.results.EnergyFigures) as a dict."""
    if inputs.device.startswith("cuda"):
        return _gpu_energy(inputs)
    return _cpu_energy(inputs)


def _per_image(out: dict[str, Any], joules: float | None, duration: float | None, images: int) -> dict[str, Any]:
    if joules is None or joules <= 0 or not images:
        return out
    out["joules"] = joules
    out["joules_per_image"] = joules / images
    out["images_per_joule"] = images / joules
    if duration:
        out["mean_power_w"] = joules / duration
    return out


def _gpu_energy(inputs: EnergyInputs) -> dict[str, Any]:
    monitor = inputs.monitor or {}
    out: dict[str, Any] = {"scope": f"GPU {inputs.device} (the whole device: every process on it, idle power included)",
                           "images": inputs.images}
    counter = monitor.get("energy_counter") or {}
    trace = monitor.get("trace") or []
    measured = [r for r in trace if _get(r, "phase") in MEASURE_PHASES and _get(r, "power_w") is not None]
    if measured:
        out["peak_power_w"] = max(float(_get(r, "power_w")) for r in measured)
        out["power_samples"] = len(measured)
    t0, t1 = counter.get("start_t_mono_s"), counter.get("end_t_mono_s")
    if t0 is None or t1 is None:  # no counter reading: the phase's edges from the trace
        times = [float(_get(r, "t_mono_s")) for r in measured if _get(r, "t_mono_s") is not None]
        t0, t1 = (min(times), max(times)) if len(times) > 1 else (None, None)
        if t0 is not None and inputs.measure_s and t1 is not None and t1 - t0 < inputs.measure_s:
            t1 = t0 + inputs.measure_s  # the samples stop a sampling interval short of the phase's end
    duration = (t1 - t0) if t0 is not None and t1 is not None else inputs.measure_s
    out["duration_s"] = duration
    integrated: float | None = None
    if t0 is not None and t1 is not None and measured:
        integrated, _ = integrate_power(measured, t0, t1)
    out["integrated_joules"] = integrated
    start, end = counter.get("start"), counter.get("end")
    why_not_counter = counter.get("reason")
    if start is not None and end is not None:
        delta = (float(end) - float(start)) / 1000.0  # mJ -> J
        if delta > 0:
            out["counter_joules"] = delta
            out["method"] = "nvml_energy_counter"
            return _per_image(out, delta, duration, inputs.images)
        why_not_counter = (f"NVML's energy counter did not advance over the {duration or 0:.2f} s phase "
                           f"({start} -> {end} mJ): it updates at a driver-chosen period")
    elif why_not_counter is None and not counter:
        why_not_counter = monitor.get("reason") or "the GPU monitor read no energy counter"
    elif why_not_counter is None:
        why_not_counter = "the energy counter was not read at both ends of the measurement phase"
    if integrated is not None and integrated > 0:
        out["method"] = "nvml_power_integration"
        out["reason"] = f"integrated from {len(measured)} power samples: {why_not_counter}"
        return _per_image(out, integrated, duration, inputs.images)
    no_power = "no power samples in the measurement phase"
    if monitor.get("unsupported", {}).get("power_w"):
        no_power = f"the GPU reports no power ({monitor['unsupported']['power_w']})"
    elif monitor.get("reason"):
        no_power = f"no power samples ({monitor['reason']})"
    out["reason"] = f"{why_not_counter}; and {no_power}"
    return out


def _cpu_energy(inputs: EnergyInputs) -> dict[str, Any]:
    out: dict[str, Any] = {"scope": "CPU packages (RAPL: every process on them)", "images": inputs.images}
    meter = inputs.rapl
    if meter is None:
        out["reason"] = "RAPL was not read"
        return out
    out["domains"] = [z.name for z in meter.zones]
    joules, why = meter.joules()
    duration = (meter.end_t - meter.start_t) if meter.start_t is not None and meter.end_t is not None else inputs.measure_s
    out["duration_s"] = duration
    if joules is None:
        out["reason"] = why
        return out
    if joules <= 0:
        out["reason"] = f"RAPL did not advance over the {duration or 0:.2f} s phase"
        return out
    out["method"] = "rapl"
    out["counter_joules"] = joules
    return _per_image(out, joules, duration, inputs.images)
