"""The measurement protocol: warm-up, stop rules, pause, sustained mode, and stage timing.

Rules (`harness.plan.schema.LatencyProtocol`):

* Warm-up runs until BOTH `warmup_iterations` and `warmup_seconds` are met. Warm-up iterations
  go through the same timer as measured ones (so each waits for its work, and the timer's own
  path is warm) but their samples are kept apart and never enter the statistics.
* Measurement runs until BOTH `min_iterations` and `min_seconds` are met, or until a cap
  (`max_iterations`, `max_seconds`) is reached first. `stop_reason` says which.
* `pause_ms` sleeps between consecutive iterations (warm-up included, so warm-up sees the
  conditions it warms up for), outside the timed region: a sample never contains a pause.
* Durations (`warmup_seconds`, `min_seconds`, `max_seconds`, `sustained.duration_s`) are wall
  time of the phase, pauses included: with `pause_ms: 200`, 100 iterations take 20 s. Counting
  only busy time would make a 3 s minimum of 2 ms calls take 1,500 iterations, five minutes.
* Sustained mode (`protocol.sustained`) replaces the stop rules: measurement runs for
  `duration_s` (at least one iteration), with no iteration cap, and `stop_reason` is
  "sustained". Windows are cut afterwards from `sample_start_s` (`stats.windows`).

The timed region contains only the call: `timer.start(); call(); timer.stop()`. Clock reads for
the stop rules, the pause, appends and the hand-over of inputs all happen outside it, and the
loop does nothing else per iteration (no logging, no allocation beyond list appends).
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.measure.timers import PerfCounterTimer, Timer

if TYPE_CHECKING:
    from harness.plan.schema import LatencyProtocol
    from harness.runtimes.base import Stage

STOP_MINIMUMS = "min_iterations_and_min_seconds"
STOP_MAX_ITERATIONS = "max_iterations"
STOP_MAX_SECONDS = "max_seconds"
STOP_SUSTAINED = "sustained"

Clock = Callable[[], float]
Sleep = Callable[[float], object]
OnPhase = Callable[[str], None]


@dataclass(frozen=True)
class MeasureResult:
    """Raw output of one measurement. Statistics are derived later (`stats.build_latency`)."""

    samples_ms: list[float]  # elapsed per call (device time with CUDA events), warm-up excluded
    host_samples_ms: list[float]  # host time until the call returned, same iterations
    sample_start_s: list[float]  # start of each sample, seconds from the measurement start
    warmup_iterations: int  # warm-up iterations actually run
    warmup_s: float  # wall time of the warm-up phase
    measure_s: float  # wall time of the measurement phase, pauses included
    stop_reason: str  # STOP_MINIMUMS | STOP_MAX_ITERATIONS | STOP_MAX_SECONDS | STOP_SUSTAINED
    timer_name: str = "unknown"  # the Timer.name that produced samples_ms
    warmup_samples_ms: list[float] = field(default_factory=list)  # for inspection only


@dataclass(frozen=True)
class _Phase:
    """One loop's stop rule: stop once n >= min_n and elapsed >= min_s, or at a cap."""

    min_n: float
    min_s: float
    max_n: float = math.inf
    max_s: float = math.inf


@dataclass
class _PhaseOutput:
    elapsed_ms: list[float]
    host_ms: list[float]
    start_s: list[float]
    duration_s: float
    stop_reason: str


def _run_phase(
    phase: _Phase,
    call: Callable[[], object],
    timer: Timer,
    before: Callable[[], object] | None,
    clock: Clock,
    sleep: Sleep,
    pause_s: float,
    pause_before_first: bool,
) -> _PhaseOutput:
    """The hot loop. Stop rules are checked before each iteration, so a phase whose minimums
    are zero runs no iteration and the last iteration is never followed by a pause."""
    elapsed_ms: list[float] = []
    host_ms: list[float] = []
    start_s: list[float] = []
    # Bound methods looked up once: attribute lookups in the loop are host time per iteration.
    append_elapsed, append_host, append_start = elapsed_ms.append, host_ms.append, start_s.append
    start, stop, read = timer.start, timer.stop, timer.read
    min_n, min_s, max_n, max_s = phase.min_n, phase.min_s, phase.max_n, phase.max_s
    pause_now = pause_before_first and pause_s > 0
    # Without a pause or an input hand-over, the stop-rule reading is also the sample's start,
    # which saves a clock read per iteration (a fraction of a microsecond, more in a VM).
    reread = pause_s > 0 or before is not None
    n = 0
    t_phase = clock()
    while True:
        t_sample = clock()
        since = t_sample - t_phase
        if n >= min_n and since >= min_s:
            reason = STOP_MINIMUMS
            break
        if n >= max_n:
            reason = STOP_MAX_ITERATIONS
            break
        if since >= max_s:
            reason = STOP_MAX_SECONDS
            break
        if pause_now:
            sleep(pause_s)
        pause_now = pause_s > 0
        if before is not None:
            before()
        if reread:
            t_sample = clock()
        start()
        call()
        stop()
        elapsed, host = read()
        append_elapsed(elapsed)
        append_host(host)
        append_start(t_sample - t_phase)
        n += 1
    return _PhaseOutput(elapsed_ms, host_ms, start_s, since, reason)


def _measure_loop(
    call: Callable[[], object],
    protocol: LatencyProtocol,
    timer: Timer,
    before: Callable[[], object] | None,
    clock: Clock,
    sleep: Sleep,
    on_phase: OnPhase | None,
    disable_gc: bool = True,
) -> MeasureResult:
    """Warm-up, then measurement. With `disable_gc`, Python's collector is run once before and
    kept off until the phases end (a collection inside a timed call is host time the model did
    not spend); it is switched back on whatever happens."""
    was_enabled = gc.isenabled()
    if disable_gc:
        gc.collect()
        gc.disable()
    try:
        return _phases(call, protocol, timer, before, clock, sleep, on_phase)
    finally:
        if disable_gc and was_enabled:
            gc.enable()


def _phases(
    call: Callable[[], object],
    protocol: LatencyProtocol,
    timer: Timer,
    before: Callable[[], object] | None,
    clock: Clock,
    sleep: Sleep,
    on_phase: OnPhase | None,
) -> MeasureResult:
    pause_s = protocol.pause_ms / 1000.0

    if on_phase is not None:
        on_phase("warmup")
    warm = _run_phase(
        _Phase(min_n=protocol.warmup_iterations, min_s=protocol.warmup_seconds),
        call, timer, before, clock, sleep, pause_s, pause_before_first=False,
    )  # fmt: skip

    if protocol.sustained is not None:
        duration = protocol.sustained.duration_s
        rule = _Phase(min_n=1, min_s=duration, max_s=duration)
    else:
        rule = _Phase(
            min_n=protocol.min_iterations,
            min_s=protocol.min_seconds,
            max_n=protocol.max_iterations,
            max_s=protocol.max_seconds,
        )
    if on_phase is not None:
        on_phase("measure")
    main = _run_phase(
        rule, call, timer, before, clock, sleep, pause_s,
        pause_before_first=bool(warm.elapsed_ms),
    )  # fmt: skip
    if on_phase is not None:
        on_phase("done")

    return MeasureResult(
        samples_ms=main.elapsed_ms,
        host_samples_ms=main.host_ms,
        sample_start_s=main.start_s,
        warmup_iterations=len(warm.elapsed_ms),
        warmup_s=warm.duration_s,
        measure_s=main.duration_s,
        stop_reason=STOP_SUSTAINED if protocol.sustained is not None else main.stop_reason,
        timer_name=timer.name,
        warmup_samples_ms=warm.elapsed_ms,
    )


def measure(
    call: Callable[[], object],
    protocol: LatencyProtocol,
    timer: Timer,
    *,
    clock: Clock = time.perf_counter,
    sleep: Sleep = time.sleep,
    on_phase: OnPhase | None = None,
    disable_gc: bool = True,
) -> MeasureResult:
    """Time `call` (model scope: a closure over a prepared device-side input) under `protocol`.

    `clock` and `sleep` drive the stop rules and the pause (tests pass fakes); the samples come
    from `timer` alone. `on_phase` is called with "warmup", "measure" and "done" at the phase
    boundaries, outside every timed region, so a GPU monitor or a progress display can follow.
    """
    return _measure_loop(call, protocol, timer, None, clock, sleep, on_phase, disable_gc)


def measure_stages(
    stages: list[Stage],
    make_input: Callable[[], object],
    protocol: LatencyProtocol,
    stream: Any,
    synchronize: Callable[[], None],
    *,
    clock: Clock = time.perf_counter,
    sleep: Sleep = time.sleep,
    on_phase: OnPhase | None = None,
    disable_gc: bool = True,
) -> tuple[MeasureResult, dict[str, list[float]]]:
    """Time the end-to-end path: one iteration feeds `make_input()` through every stage in turn.

    Returns the total per iteration (as `measure` does) and each stage's time per iteration,
    same length and order as the kept samples (warm-up excluded).

    How time is charged to stages: each stage is timed on the host clock from its start until
    it returned, and a stage marked `asynchronous=True` (it may leave work queued on the device,
    such as a host-to-device copy or a forward pass) is followed by `synchronize()` inside its
    own timing. So a stage's time is the time until its work is finished, not the time until
    its work was queued, and no stage is charged for a predecessor's queued work. Those
    synchronisations are part of the end-to-end total too: the path is timed as a sequence of
    completed steps, which is what a caller waiting for detections sees, minus any overlap a
    pipelined deployment might add.

    The total and the stages are host wall time (`clock`, `perf_counter` unless a test passes a
    fake) whether or not there is a GPU, because end-to-end ends with detections on the host:
    the caller's latency is the host's. `stream` is
    the runtime's timer stream (or None); with one, the device is made idle (`synchronize()`)
    before each iteration, outside the timed region, so leftover work of anything earlier is
    never charged. `make_input()` (already decoded images) is also called outside the timed
    region, before each iteration.
    """
    names = [stage.name for stage in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be unique, got {names}")
    fns = [stage.fn for stage in stages]
    is_async = [stage.asynchronous for stage in stages]
    # Stage times of every iteration, warm-up included; the warm-up ones are cut off at the end.
    per_stage: list[list[float]] = [[] for _ in stages]
    appends = [times.append for times in per_stage]
    steps = list(zip(fns, is_async, appends, strict=True))
    perf = clock
    holder: list[object] = [None]

    def before() -> None:
        if stream is not None:
            synchronize()
        holder[0] = make_input()

    def run_stages() -> None:
        value = holder[0]
        for fn, wait, append in steps:
            t0 = perf()
            value = fn(value)
            if wait:
                synchronize()
            append((perf() - t0) * 1000.0)

    total_timer = PerfCounterTimer(clock)
    result = _measure_loop(run_stages, protocol, total_timer, before, clock, sleep, on_phase, disable_gc)
    skip = result.warmup_iterations
    return result, {name: times[skip:] for name, times in zip(names, per_stage, strict=True)}
