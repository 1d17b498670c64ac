"""Timers: the clocks every latency sample comes from.

Two clocks, and each result records which one produced it (`Timer.name`):

* `cuda_event`: a pair of CUDA events recorded on the stream the work runs on, read with
  `elapsed_time` once the end event has completed. This is device time: what the GPU spent
  between the two points of the stream, independent of how fast the host enqueued it.
* `perf_counter`: `time.perf_counter`, monotonic and high resolution. Used on the CPU, and for
  any call that is synchronous on the host (it returns only when its work is done).

Both also report `host_call_ms`, the host time from just before the call until it returned.
For an asynchronous CUDA call that is the enqueue (launch) time; comparing it with the device
time tells launch-bound work apart (`harness.measure.stats.is_launch_bound`).

The timers do no allocation per call: the CUDA events are created once and re-recorded, which
is why a sample must be `read()` before the next `start()` (the protocol loop does exactly that).
torch is imported only when a CUDA stream is given, so the CPU path never loads it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

CUDA_EVENT = "cuda_event"
PERF_COUNTER = "perf_counter"

_S_TO_MS = 1000.0


@runtime_checkable
class Timer(Protocol):
    """Brackets one call. Order per sample: start(), the call, stop(), read()."""

    name: str

    def start(self) -> None:
        """Just before the call."""

    def stop(self) -> None:
        """Right after the call returned (host side)."""

    def read(self) -> tuple[float, float]:
        """(elapsed_ms, host_call_ms) of the last start/stop pair; may wait for the device."""
        ...


class PerfCounterTimer:
    """Host wall time. elapsed_ms and host_call_ms are the same reading."""

    name = PERF_COUNTER

    __slots__ = ("_clock", "_t0", "_t1")

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._t0 = 0.0
        self._t1 = 0.0

    def start(self) -> None:
        self._t0 = self._clock()

    def stop(self) -> None:
        self._t1 = self._clock()

    def read(self) -> tuple[float, float]:
        ms = (self._t1 - self._t0) * _S_TO_MS
        return ms, ms


class CudaEventTimer:
    """Device time between two CUDA events recorded on `stream`, plus host enqueue time.

    The start event is recorded before the host clock is read and the end event after it, so
    the host reading brackets exactly the call, and the event pair brackets the call's work on
    the stream (plus the negligible time of one clock read when the device is idle).
    """

    name = CUDA_EVENT

    __slots__ = ("_clock", "_end_event", "_start_event", "_stream", "_t0", "_t1")

    def __init__(self, stream: torch.cuda.Stream) -> None:
        import torch

        self._stream = stream
        # Events are created once: creating them per call would cost host time in the loop.
        self._start_event: Any = torch.cuda.Event(enable_timing=True)
        self._end_event: Any = torch.cuda.Event(enable_timing=True)
        self._clock = time.perf_counter
        self._t0 = 0.0
        self._t1 = 0.0

    def start(self) -> None:
        self._start_event.record(self._stream)
        self._t0 = self._clock()

    def stop(self) -> None:
        self._t1 = self._clock()
        self._end_event.record(self._stream)

    def read(self) -> tuple[float, float]:
        # Waits for the end event only (not the whole device): the stream's work up to it is done.
        self._end_event.synchronize()
        elapsed_ms = float(self._start_event.elapsed_time(self._end_event))
        return elapsed_ms, (self._t1 - self._t0) * _S_TO_MS


def make_timer(stream: torch.cuda.Stream | None) -> Timer:
    """CUDA events on `stream` when one is given (the runtime's `timer_stream()`); otherwise the
    host clock, which is right for the CPU and for calls that return only when done."""
    if stream is None:
        return PerfCounterTimer()
    return CudaEventTimer(stream)
