"""The GPU monitor: throttle verdict on scripted samples, the thread, and life without NVML."""

from __future__ import annotations

import json
import sys
import time

import pytest
from fake_nvml import FakeNvml

from harness.environment import nvml
from harness.environment.monitor import (
    GpuMonitor,
    Sample,
    summarize,
)

IDLE, APP_CLOCKS, POWER_CAP, HW_THERMAL = 0x1, 0x2, 0x4, 0x40


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def sample(sm: int, reasons: int = 0) -> Sample:
    return (sm, 2619, 55.0, 350.0, 99, 40, reasons)


def run_script(phases: list[tuple[str, list[Sample]]]) -> dict:
    """Feed scripted samples through a monitor, 20 ms apart, on the calling thread."""
    clock = FakeClock()
    queue: list[Sample] = []
    monitor = GpuMonitor(0, 20.0, sampler=lambda: queue.pop(0), clock=clock)
    for name, samples in phases:
        monitor.phase(name)
        for s in samples:
            queue.append(s)
            monitor.sample_now()
            clock.now += 0.020
    return monitor.stop()


def test_reason_bits_match_pynvml() -> None:
    import pynvml

    expected = {
        "gpu_idle": pynvml.nvmlClocksEventReasonGpuIdle,
        "applications_clocks_setting": pynvml.nvmlClocksEventReasonApplicationsClocksSetting,
        "sw_power_cap": pynvml.nvmlClocksEventReasonSwPowerCap,
        "hw_slowdown": pynvml.nvmlClocksEventReasonHwSlowdown,
        "sync_boost": pynvml.nvmlClocksEventReasonSyncBoost,
        "sw_thermal_slowdown": pynvml.nvmlClocksEventReasonSwThermalSlowdown,
        "hw_thermal_slowdown": pynvml.nvmlClocksEventReasonHwThermalSlowdown,
        "hw_power_brake_slowdown": pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown,
        "display_clock_setting": pynvml.nvmlClocksEventReasonDisplayClockSetting,
    }
    assert {name: bit for bit, name in nvml.CLOCK_EVENT_REASONS.items()} == expected
    assert nvml.SLOWDOWN_REASONS == (
        pynvml.nvmlClocksEventReasonSwPowerCap
        | pynvml.nvmlClocksEventReasonHwSlowdown
        | pynvml.nvmlClocksEventReasonSwThermalSlowdown
        | pynvml.nvmlClocksEventReasonHwThermalSlowdown
        | pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown
    )
    assert nvml.reason_names(0x4 | 0x40 | 0x800) == [
        "sw_power_cap",
        "hw_thermal_slowdown",
        "unknown_0x800",
    ]


def test_steady_clock_is_not_throttled() -> None:
    result = run_script([("warmup", [sample(1200)] * 3), ("measure", [sample(1980)] * 50)])
    summary = result["summary"]
    assert summary["throttled"] is False and summary["throttled_why"] is None
    assert summary["throttled_share"] == 0.0
    assert summary["start_sm_mhz"] == 1980  # the first measure sample, not the warm-up ramp
    assert summary["sm_mhz"] == {"min": 1980, "p50": 1980, "max": 1980}
    assert summary["samples"] == 53 and summary["judged_samples"] == 50
    assert summary["phases"] == {"warmup": 3, "measure": 50}


def test_clock_falling_to_85_percent_is_throttled() -> None:
    result = run_script([("measure", [sample(2000)] * 30 + [sample(1700)] * 10)])
    summary = result["summary"]
    assert summary["throttled"] is True
    assert summary["clock_drop_share"] == pytest.approx(0.25)
    assert summary["throttled_share"] == pytest.approx(0.25)
    assert summary["sm_mhz"]["min"] == 1700
    assert "1700 MHz" in summary["throttled_why"] and "2000 MHz" in summary["throttled_why"]


def test_clock_at_95_percent_is_not_throttled() -> None:
    summary = run_script([("measure", [sample(2000)] * 10 + [sample(1900)] * 10)])["summary"]
    assert summary["throttled"] is False


def test_power_cap_reason_is_throttled_even_at_full_clock() -> None:
    samples = [sample(1980)] * 19 + [sample(1980, POWER_CAP)]
    summary = run_script([("measure", samples)])["summary"]
    assert summary["throttled"] is True
    assert summary["reasons"] == {"sw_power_cap": pytest.approx(0.05)}
    assert summary["slowdown_share"] == pytest.approx(0.05)
    assert "sw_power_cap in 5.0% of samples" in summary["throttled_why"]


def test_thermal_reason_is_throttled() -> None:
    summary = run_script([("measure", [sample(1980, HW_THERMAL)] * 4)])["summary"]
    assert summary["throttled"] is True and summary["throttled_share"] == 1.0


def test_idle_and_application_clock_reasons_are_recorded_not_throttling() -> None:
    # Paced calls: between them the GPU idles and drops its clock. Not throttling.
    samples = [sample(1980), sample(345, IDLE), sample(1980, APP_CLOCKS), sample(345, IDLE)]
    summary = run_script([("measure", samples * 5)])["summary"]
    assert summary["throttled"] is False
    assert summary["reasons"] == {
        "applications_clocks_setting": pytest.approx(0.25),
        "gpu_idle": pytest.approx(0.5),
    }


def test_warmup_clock_ramp_is_not_judged() -> None:
    result = run_script([("warmup", [sample(900)] * 5), ("measure", [sample(1980)] * 5)])
    assert result["summary"]["throttled"] is False


def test_without_a_measure_phase_all_samples_are_judged() -> None:
    summary = run_script([("accuracy", [sample(2000)] * 5 + [sample(1500)] * 5)])["summary"]
    assert summary["judged_phases"] == "all" and summary["throttled"] is True


def test_trace_rows_are_aligned_on_the_measure_start() -> None:
    result = run_script([("warmup", [sample(1500)] * 2), ("measure", [sample(1980)] * 3)])
    json.dumps(result)
    assert result["available"] is True and result["reason"] is None
    assert result["t_s_origin"] == "measure"
    assert [row["t_s"] for row in result["trace"]] == pytest.approx([-0.04, -0.02, 0.0, 0.02, 0.04])
    row = result["trace"][2]
    assert {k: row[k] for k in row if k not in ("t_s", "t_mono_s")} == {
        "phase": "measure",
        "sm_mhz": 1980,
        "mem_mhz": 2619,
        "temp_c": 55.0,
        "power_w": 350.0,
        "util_gpu": 99,
        "util_mem": 40,
        "clock_event_reasons": 0,
    }
    assert result["summary"]["interval_ms_actual_p50"] == pytest.approx(20.0)
    assert result["summary"]["sample_cost_us"]["p50"] >= 0


def test_summary_of_nothing() -> None:
    summary = summarize([])
    assert summary["samples"] == 0 and summary["throttled"] is None
    assert summary["sm_mhz"] == {"min": None, "p50": None, "max": None}


# -- the thread ---------------------------------------------------------------------------------


def test_thread_samples_at_the_interval_and_stops() -> None:
    calls: list[float] = []

    def sampler() -> Sample:
        calls.append(time.monotonic())
        return sample(1980)

    with GpuMonitor(0, interval_ms=10, sampler=sampler) as monitor:
        monitor.phase("warmup")
        time.sleep(0.05)
        monitor.phase("measure")
        time.sleep(0.15)
    result = monitor.result
    assert result is not None and result["available"] is True
    phases = result["summary"]["phases"]
    assert phases.get("measure", 0) >= 5 and sum(phases.values()) == len(calls)
    assert monitor._thread is not None and not monitor._thread.is_alive()
    count = len(calls)
    time.sleep(0.05)
    assert len(calls) == count  # nothing samples after stop
    assert monitor.stop() is result  # stop is idempotent


def test_a_failing_sampler_does_not_crash_the_measurement() -> None:
    def sampler() -> Sample:
        raise nvml.NvmlUnavailable("GPU is lost")

    with GpuMonitor(0, interval_ms=10, sampler=sampler) as monitor:
        monitor.phase("measure")
        time.sleep(0.05)
    assert monitor.result is not None
    assert monitor.result["available"] is False
    assert "GPU is lost" in monitor.result["reason"]
    assert monitor.result["sample_errors"] > 0


# -- without NVML, and with a fake NVML ---------------------------------------------------------------


def test_without_nvml_the_monitor_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(init_error="LIBRARY_NOT_FOUND"))
    with GpuMonitor(0) as monitor:
        monitor.phase("measure")
    result = monitor.result
    assert result is not None
    json.dumps(result)
    assert result["available"] is False and result["trace"] == []
    assert "NVML Shared Library Not Found" in result["reason"]
    assert result["summary"]["samples"] == 0 and result["summary"]["throttled"] is None


def test_real_pynvml_without_a_gpu_does_not_crash() -> None:
    monitor = GpuMonitor(0)
    monitor.start()
    monitor.phase("measure")
    result = monitor.stop()
    if result["available"]:
        pytest.skip("a GPU is present; see test_real_gpu_sampling")
    assert result["reason"]


def test_cpu_cell_needs_no_monitor() -> None:
    monitor = GpuMonitor(None)
    monitor.start()
    result = monitor.stop()
    assert result["available"] is False and "CPU" in result["reason"]


def test_nvml_sampler_reads_the_gpu_and_tolerates_unsupported_queries(fake_nvml: FakeNvml) -> None:
    gpu = fake_nvml.gpus[0]
    gpu.unsupported = {"nvmlDeviceGetPowerUsage"}
    clock = FakeClock()
    monitor = GpuMonitor(0, sampler=None, clock=clock)
    monitor._interval_s = 3600.0  # the thread takes one sample, then waits: we drive the rest
    monitor.start()
    time.sleep(0.02)
    monitor.phase("measure")
    gpu.sm_mhz, gpu.clock_event_reasons, gpu.temperature_c = 1980, 0, 61
    monitor.sample_now()
    gpu.sm_mhz, gpu.clock_event_reasons = 1600, POWER_CAP
    monitor.sample_now()
    result = monitor.stop()
    json.dumps(result)
    assert result["available"] is True
    assert result["device"]["uuid"] == gpu.uuid and result["device"]["nvml_index"] == 0
    assert "Not Supported" in result["unsupported"]["power_w"]
    measured = [row for row in result["trace"] if row["phase"] == "measure"]
    assert [row["sm_mhz"] for row in measured] == [1980, 1600]
    assert [row["power_w"] for row in measured] == [None, None]
    assert measured[0]["temp_c"] == 61
    assert result["summary"]["throttled"] is True
    assert not [c for c in fake_nvml.calls if "Set" in c or "Reset" in c]
    assert fake_nvml.initialised == 0


@pytest.mark.gpu
def test_real_gpu_sampling() -> None:
    try:
        nv = nvml.open_nvml()
    except nvml.NvmlUnavailable as exc:
        pytest.skip(f"no NVML here: {exc}")
    try:
        if nv.nvmlDeviceGetCount() == 0:
            pytest.skip("NVML sees no GPU")
    finally:
        nvml.close_nvml(nv)
    with GpuMonitor(0, interval_ms=20) as monitor:
        monitor.phase("measure")
        time.sleep(0.3)
    result = monitor.result
    assert result is not None and result["available"] is True, result
    assert result["summary"]["samples"] >= 5
    assert result["summary"]["sm_mhz"]["max"] > 0
    assert result["device"]["uuid"].startswith(("GPU-", "MIG-"))
    # What watching costs, per sample, on this GPU (see monitor.py's docstring).
    cost = result["summary"]["sample_cost_us"]
    print("NVML sample cost inside the monitor, us:", cost)
    assert cost["p50"] < 2000


def test_the_energy_meter_and_the_monitor_share_one_definition_of_the_measurement_phases() -> None:
    """Two copies could drift apart (a new phase added to one), and RAPL and the NVML counter
    would then bracket different spans of the same run."""
    from harness.environment import energy, monitor

    assert energy.MEASURE_PHASES is monitor.MEASURE_PHASES
