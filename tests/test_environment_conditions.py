"""wait_for_gpu: cool-down, idle and temperature waits, with a fake clock and fake GPU state."""

from __future__ import annotations

import io
import sys
from typing import Any

import pytest
from fake_nvml import FakeGpu, FakeNvml

from harness.environment.conditions import IDLE_UTILIZATION_PCT, wait_for_gpu
from harness.plan.schema import GpuConditions


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def states(*values: tuple[float | None, float | None]) -> Any:
    """read_state returning (util, temp) pairs in turn, repeating the last."""
    items = list(values)

    def read() -> dict[str, Any]:
        util, temp = items.pop(0) if len(items) > 1 else items[0]
        return {"util_gpu": util, "temp_c": temp}

    return read


def test_cpu_cell_is_a_no_op() -> None:
    t = FakeTime()
    result = wait_for_gpu(
        None,
        GpuConditions(cooldown_s=30, wait_idle=True),
        io.StringIO(),
        clock=t.clock,
        sleep=t.sleep,
    )
    assert t.sleeps == [] and result["cooldown_s"] == 0.0
    assert "CPU" in result["skipped_reason"]


def test_without_nvml_nothing_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(init_error="LIBRARY_NOT_FOUND"))
    t = FakeTime()
    result = wait_for_gpu(
        0,
        GpuConditions(cooldown_s=30, max_start_temperature_c=50),
        io.StringIO(),
        clock=t.clock,
        sleep=t.sleep,
    )
    assert t.sleeps == [] and result["timed_out"] is False
    assert "NVML" in result["skipped_reason"]


def test_cooldown_sleeps_then_records_the_start_temperature() -> None:
    t, log = FakeTime(), io.StringIO()
    result = wait_for_gpu(
        0,
        GpuConditions(cooldown_s=30),
        log,
        clock=t.clock,
        sleep=t.sleep,
        read_state=states((0, 41.0)),
    )
    assert t.sleeps == [30]
    assert result["cooldown_s"] == 30 and result["waited_s"] == 0.0
    assert result["start_temperature_c"] == 41.0 and result["start_util_gpu"] == 0
    assert "cooling down for 30 s" in log.getvalue()


def test_waits_until_the_gpu_is_cool_enough() -> None:
    t, log = FakeTime(), io.StringIO()
    result = wait_for_gpu(
        0,
        GpuConditions(max_start_temperature_c=65),
        log,
        clock=t.clock,
        sleep=t.sleep,
        read_state=states((0, 80.0), (0, 72.0), (0, 64.0)),
    )
    assert result["timed_out"] is False
    assert result["waited_s"] == pytest.approx(1.0)  # two polls of 0.5 s
    assert result["start_temperature_c"] == 64.0
    assert "80.0 C, waiting for <= 65 C" in log.getvalue()
    assert "GPU ready after 1 s" in log.getvalue()


def test_waits_until_idle() -> None:
    t = FakeTime()
    busy = IDLE_UTILIZATION_PCT + 40
    result = wait_for_gpu(
        0,
        GpuConditions(wait_idle=True),
        io.StringIO(),
        clock=t.clock,
        sleep=t.sleep,
        read_state=states((busy, 50.0), (busy, 50.0), (2, 50.0)),
    )
    assert result["waited_s"] == pytest.approx(1.0) and result["start_util_gpu"] == 2


def test_gives_up_at_the_timeout_and_goes_ahead() -> None:
    t, log = FakeTime(), io.StringIO()
    result = wait_for_gpu(
        0,
        GpuConditions(max_start_temperature_c=60, wait_timeout_s=2.2),
        log,
        clock=t.clock,
        sleep=t.sleep,
        read_state=states((0, 85.0)),
    )
    assert result["timed_out"] is True
    assert result["waited_s"] == pytest.approx(2.2)
    assert sum(t.sleeps) == pytest.approx(2.2) and max(t.sleeps) <= 0.5
    assert "gave up waiting after 2.2 s" in log.getvalue()


def test_an_unreadable_value_does_not_hold_the_cell() -> None:
    t = FakeTime()
    result = wait_for_gpu(
        0,
        GpuConditions(wait_idle=True, max_start_temperature_c=50),
        io.StringIO(),
        clock=t.clock,
        sleep=t.sleep,
        read_state=states((None, None)),
    )
    assert t.sleeps == [] and result["timed_out"] is False
    assert result["unchecked"] == ["idle", "temperature"]


def test_reads_the_gpu_through_nvml_and_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = FakeGpu(temperature_c=48, util_gpu=0)
    fake = FakeNvml([gpu])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    t = FakeTime()
    result = wait_for_gpu(
        0,
        GpuConditions(wait_idle=True, max_start_temperature_c=50),
        io.StringIO(),
        clock=t.clock,
        sleep=t.sleep,
    )
    assert result["start_temperature_c"] == 48 and result["start_util_gpu"] == 0
    assert not [c for c in fake.calls if "Set" in c or "Reset" in c]
    assert fake.initialised == 0
