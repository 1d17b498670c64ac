"""The measurement loop under a fake clock: warm-up, stop rules, caps, pause, sustained, stages."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import pytest

from harness.measure.protocol import (
    STOP_MAX_ITERATIONS,
    STOP_MAX_SECONDS,
    STOP_MINIMUMS,
    STOP_SUSTAINED,
    MeasureResult,
    measure,
    measure_stages,
)
from harness.measure.stats import build_latency
from harness.measure.timers import PERF_COUNTER, make_timer
from harness.plan.schema import LatencyProtocol, SustainedSpec
from harness.runtimes.base import Stage


class FakeClock:
    """Time moves only when a fake call, the fake sleep or the fake device says so. Every
    event is logged so tests can check what happened inside and outside the timed region."""

    def __init__(self) -> None:
        self.now = 0.0
        self.log: list[str] = []
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        self.log.append("clock")
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.log.append("sleep")
        self.sleeps.append(seconds)
        self.now += seconds


class FakeTimer:
    """Reads the fake clock; host time is a fixed fraction of elapsed to tell the two apart."""

    name = "fake"

    def __init__(self, clock: FakeClock, host_fraction: float = 0.5) -> None:
        self.clock = clock
        self.host_fraction = host_fraction
        self.t0 = self.t1 = 0.0

    def start(self) -> None:
        self.clock.log.append("start")
        self.t0 = self.clock.now

    def stop(self) -> None:
        self.clock.log.append("stop")
        self.t1 = self.clock.now

    def read(self) -> tuple[float, float]:
        self.clock.log.append("read")
        ms = (self.t1 - self.t0) * 1000.0
        return ms, ms * self.host_fraction


def durations_call(clock: FakeClock, durations: Iterable[float]) -> Callable[[], None]:
    """A call whose n-th invocation takes the n-th duration (the last one repeats)."""
    values = list(durations)
    count = [0]

    def call() -> None:
        clock.log.append("call")
        clock.advance(values[min(count[0], len(values) - 1)])
        count[0] += 1

    return call


def protocol(**kwargs: object) -> LatencyProtocol:
    base: dict[str, object] = {
        "warmup_iterations": 0,
        "warmup_seconds": 0.0,
        "min_iterations": 1,
        "min_seconds": 0.0,
    }
    base.update(kwargs)
    return LatencyProtocol(**base)  # type: ignore[arg-type]


def run(clock: FakeClock, call: Callable[[], None], proto: LatencyProtocol, **kw: object):
    return measure(call, proto, FakeTimer(clock), clock=clock, sleep=clock.sleep, **kw)  # type: ignore[arg-type]


# -- warm-up ---------------------------------------------------------------------------------


def test_warmup_samples_are_excluded_from_the_kept_samples() -> None:
    clock = FakeClock()
    # Three slow first calls (a cold start), then steady 10 ms calls.
    call = durations_call(clock, [0.5, 0.25, 0.125, 0.0625, 0.0625])
    result = run(clock, call, protocol(warmup_iterations=3, min_iterations=4))
    assert result.warmup_iterations == 3
    assert result.warmup_samples_ms == [500.0, 250.0, 125.0]
    assert result.samples_ms == [62.5] * 4
    assert result.warmup_s == pytest.approx(0.875)
    assert result.timer_name == "fake"


def test_warmup_needs_both_count_and_time() -> None:
    # Time is the binding condition: 2 iterations asked, but 0.5 s needs 4 calls of 0.125 s.
    clock = FakeClock()
    result = run(clock, durations_call(clock, [0.125]), protocol(warmup_iterations=2, warmup_seconds=0.5))
    assert result.warmup_iterations == 4
    # Count is the binding condition: 0.5 s is reached after 4, but 10 iterations are asked.
    clock = FakeClock()
    result = run(clock, durations_call(clock, [0.125]), protocol(warmup_iterations=10, warmup_seconds=0.5))
    assert result.warmup_iterations == 10


def test_no_warmup_when_both_are_zero() -> None:
    clock = FakeClock()
    result = run(clock, durations_call(clock, [0.125]), protocol(min_iterations=3))
    assert result.warmup_iterations == 0
    assert result.warmup_samples_ms == []
    assert result.warmup_s == 0.0
    assert len(result.samples_ms) == 3


# -- stop rules and caps ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("min_iterations", "min_seconds", "expected"),
    [
        (5, 1.0, 8),  # time binds: 8 x 0.125 s = 1 s
        (20, 1.0, 20),  # count binds
        (3, 0.0, 3),
    ],
)
def test_measurement_stops_when_both_minimums_are_met(min_iterations: int, min_seconds: float, expected: int) -> None:
    clock = FakeClock()
    proto = protocol(min_iterations=min_iterations, min_seconds=min_seconds)
    result = run(clock, durations_call(clock, [0.125]), proto)
    assert len(result.samples_ms) == expected
    assert result.stop_reason == STOP_MINIMUMS
    assert result.measure_s == pytest.approx(expected * 0.125)


def test_max_iterations_caps_a_run_whose_minimum_time_is_not_reached() -> None:
    clock = FakeClock()
    proto = protocol(min_iterations=5, min_seconds=100.0, max_iterations=8)
    result = run(clock, durations_call(clock, [0.125]), proto)
    assert len(result.samples_ms) == 8
    assert result.stop_reason == STOP_MAX_ITERATIONS


def test_max_seconds_caps_a_run_whose_minimum_count_is_not_reached() -> None:
    clock = FakeClock()
    proto = protocol(min_iterations=1000, min_seconds=1.0, max_seconds=2.0)
    result = run(clock, durations_call(clock, [0.125]), proto)
    assert len(result.samples_ms) == 16
    assert result.stop_reason == STOP_MAX_SECONDS
    assert result.measure_s == pytest.approx(2.0)


def test_minimums_win_over_a_cap_reached_at_the_same_time() -> None:
    clock = FakeClock()
    proto = protocol(min_iterations=4, max_iterations=4)
    result = run(clock, durations_call(clock, [0.125]), proto)
    assert len(result.samples_ms) == 4
    assert result.stop_reason == STOP_MINIMUMS


# -- what is inside the timed region ---------------------------------------------------------


def test_timed_region_contains_only_the_call_and_phases_are_announced() -> None:
    clock = FakeClock()
    phases: list[str] = []

    def on_phase(name: str) -> None:
        clock.log.append(f"phase:{name}")
        phases.append(name)

    proto = protocol(warmup_iterations=2, min_iterations=3, pause_ms=10.0)
    run(clock, durations_call(clock, [0.125]), proto, on_phase=on_phase)
    assert phases == ["warmup", "measure", "done"]
    log = clock.log
    starts = [i for i, event in enumerate(log) if event == "start"]
    assert len(starts) == 5
    for i in starts:
        assert log[i : i + 4] == ["start", "call", "stop", "read"]
    assert log.index("phase:measure") > starts[1]
    assert log.index("phase:measure") < starts[2]
    assert log[-1] == "phase:done"


def test_pause_is_between_iterations_outside_samples_and_inside_phase_time() -> None:
    clock = FakeClock()
    proto = protocol(warmup_iterations=2, min_iterations=4, pause_ms=250.0)
    result = run(clock, durations_call(clock, [0.125]), proto)
    # No pause inside any sample.
    assert result.samples_ms == [125.0] * 4
    assert result.warmup_samples_ms == [125.0] * 2
    # Between every two consecutive iterations (6 in all), including warm-up -> measurement,
    # and not after the last one.
    assert clock.sleeps == [0.25] * 5
    assert clock.log[-1] != "sleep"
    # Sample starts are spaced by call + pause; the first measured one follows a pause.
    assert result.sample_start_s == pytest.approx([0.25, 0.625, 1.0, 1.375])
    # Phase durations are wall time, pauses included.
    assert result.measure_s == pytest.approx(4 * 0.125 + 4 * 0.25)
    assert result.warmup_s == pytest.approx(2 * 0.125 + 0.25)


def test_pause_counts_toward_min_seconds_as_wall_time() -> None:
    clock = FakeClock()
    proto = protocol(min_iterations=1, min_seconds=1.0, pause_ms=375.0)
    result = run(clock, durations_call(clock, [0.125]), proto)
    # 0.125 + (0.375 + 0.125) = 0.625 s after two iterations, 1.125 s after three.
    assert len(result.samples_ms) == 3
    assert sum(result.samples_ms) == pytest.approx(375.0)


# -- sustained mode --------------------------------------------------------------------------


def test_sustained_runs_for_its_duration_and_ignores_the_iteration_cap() -> None:
    clock = FakeClock()
    # The device slows down after 5 s (heat): 250 ms calls become 312.5 ms calls.
    slow_after = 5.0

    def call() -> None:
        clock.log.append("call")
        clock.advance(0.25 if clock.now < slow_after else 0.3125)

    proto = protocol(
        warmup_iterations=0,
        min_iterations=1,
        max_iterations=1,
        sustained=SustainedSpec(duration_s=10.0, window_s=2.5),
    )
    result = run(clock, call, proto)
    assert result.stop_reason == STOP_SUSTAINED
    assert result.measure_s == pytest.approx(10.0, abs=0.3125)
    assert result.measure_s >= 10.0
    assert len(result.samples_ms) == 20 + 16

    trace = [{"t_s": t / 2, "sm_mhz": 1980.0 if t < 10 else 1500.0, "temp_c": 50.0 + t} for t in range(20)]
    latency = build_latency(
        result,
        scope="model",
        timer_name="fake",
        timed_region="the call",
        batch=1,
        window_s=2.5,
        monitor_trace=trace,
    )
    assert latency.windows is not None
    assert [w.start_s for w in latency.windows] == [0.0, 2.5, 5.0, 7.5]
    assert [w.stats.count for w in latency.windows] == [10, 10, 8, 8]
    assert [w.stats.p50 for w in latency.windows] == [250.0, 250.0, 312.5, 312.5]
    assert [w.sm_clock_mhz_median for w in latency.windows] == [1980.0, 1980.0, 1500.0, 1500.0]
    assert [w.temperature_c_max for w in latency.windows] == [54.0, 59.0, 64.0, 69.0]


# -- end-to-end stages -----------------------------------------------------------------------


class FakeDevice:
    """Asynchronous work: queued seconds are spent only when someone synchronises."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.queued = 0.0
        self.syncs = 0

    def enqueue(self, seconds: float) -> None:
        self.queued += seconds

    def synchronize(self) -> None:
        self.syncs += 1
        self.clock.advance(self.queued)
        self.queued = 0.0


def test_stages_chain_values_and_charge_asynchronous_work_to_its_own_stage() -> None:
    clock = FakeClock()
    device = FakeDevice(clock)
    outputs: list[object] = []
    inputs_made = [0]

    def make_input() -> list[int]:
        inputs_made[0] += 1
        clock.advance(10.0)  # decoding is slow, and must not appear anywhere
        return [1, 2, 3]

    def preprocess(images: list[int]) -> list[int]:
        clock.advance(0.004)
        return [v * 2 for v in images]

    def infer(batch: list[int]) -> int:
        clock.advance(0.001)  # launch time on the host
        device.enqueue(0.008)  # the forward pass itself, queued
        return sum(batch)

    def d2h(value: int) -> int:
        clock.advance(0.002)
        return value + 1

    def postprocess(value: int) -> str:
        clock.advance(0.0005)
        outputs.append(value)
        return f"detections {value}"

    stages = [
        Stage("preprocess", preprocess),
        Stage("infer", infer, asynchronous=True),
        Stage("d2h", d2h),
        Stage("postprocess", postprocess),
    ]
    proto = protocol(warmup_iterations=2, min_iterations=5)
    result, per_stage = measure_stages(
        stages, make_input, proto, "stream", device.synchronize, clock=clock, sleep=clock.sleep
    )
    assert outputs == [13] * 7  # (1+2+3)*2 + 1, for 2 warm-up + 5 measured iterations
    assert inputs_made[0] == 7
    assert result.warmup_iterations == 2
    assert list(per_stage) == ["preprocess", "infer", "d2h", "postprocess"]
    assert all(len(times) == 5 for times in per_stage.values())
    assert per_stage["preprocess"] == pytest.approx([4.0] * 5)
    # The queued 8 ms land on infer (synchronised inside its timing), not on d2h.
    assert per_stage["infer"] == pytest.approx([9.0] * 5)
    assert per_stage["d2h"] == pytest.approx([2.0] * 5)
    assert per_stage["postprocess"] == pytest.approx([0.5] * 5)
    # The total is the sum of the stages; the 10 s of make_input are outside it.
    assert result.samples_ms == pytest.approx([15.5] * 5)
    assert result.timer_name == PERF_COUNTER
    # One sync after infer per iteration, plus one before each iteration (a stream is given).
    assert device.syncs == 7 * 2


def test_stages_without_a_stream_do_not_synchronise_before_iterations() -> None:
    clock = FakeClock()
    device = FakeDevice(clock)
    stages = [Stage("only", lambda x: x)]
    measure_stages(
        stages, lambda: 0, protocol(min_iterations=3), None, device.synchronize,
        clock=clock, sleep=clock.sleep,
    )  # fmt: skip
    assert device.syncs == 0


def test_stage_names_must_be_unique() -> None:
    stages = [Stage("a", lambda x: x), Stage("a", lambda x: x)]
    with pytest.raises(ValueError, match="unique"):
        measure_stages(stages, lambda: 0, protocol(), None, lambda: None)


# -- real clocks -----------------------------------------------------------------------------


def test_real_cpu_run_through_the_host_clock_timer() -> None:
    timer = make_timer(None)
    assert timer.name == PERF_COUNTER
    values = list(range(2000))
    proto = protocol(warmup_iterations=5, min_iterations=50)
    result = measure(lambda: sum(values), proto, timer)
    assert isinstance(result, MeasureResult)
    assert result.warmup_iterations == 5
    assert len(result.samples_ms) == 50
    assert all(0 < s < 100 for s in result.samples_ms)
    assert result.host_samples_ms == result.samples_ms
    assert result.sample_start_s == sorted(result.sample_start_s)
    assert result.measure_s >= sum(result.samples_ms) / 1000.0
    latency = build_latency(result, scope="model", timer_name=timer.name, timed_region="sum()", batch=1)
    assert latency.launch_bound is None
    assert latency.host_samples_ms is None


def test_real_cpu_timer_sees_a_sleep_and_not_the_pause() -> None:
    proto = protocol(min_iterations=5, pause_ms=20.0)
    t0 = time.perf_counter()
    result = measure(lambda: time.sleep(0.002), proto, make_timer(None))
    wall = time.perf_counter() - t0
    assert min(result.samples_ms) >= 2.0
    assert max(result.samples_ms) < 20.0  # a 20 ms pause inside a sample would show
    assert wall >= 4 * 0.020


def test_real_cpu_end_to_end_stages_with_numpy() -> None:
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)

    stages = [
        Stage("preprocess", lambda img: (img[::2, ::2].astype(np.float32) / 255.0 - 0.5) / 0.25),
        Stage("infer", lambda x: x.reshape(-1, 3) @ np.ones((3, 4), dtype=np.float32)),
        Stage("postprocess", lambda y: int((y > 0).sum())),
    ]
    result, per_stage = measure_stages(
        stages, lambda: image, protocol(warmup_iterations=2, min_iterations=10), None, lambda: None
    )
    assert len(result.samples_ms) == 10
    for name in ("preprocess", "infer", "postprocess"):
        assert len(per_stage[name]) == 10
        assert all(t > 0 for t in per_stage[name])
    # Every stage is inside the total, and the total adds little besides the stages.
    for i, total in enumerate(result.samples_ms):
        stage_sum = sum(per_stage[name][i] for name in per_stage)
        assert stage_sum <= total
        assert total - stage_sum < 1.0
