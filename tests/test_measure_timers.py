"""Timers: the host clock here, CUDA events on a non-default stream on the GPU machine."""

from __future__ import annotations

import sys
import time

import pytest

from harness.measure.protocol import measure
from harness.measure.stats import build_latency
from harness.measure.timers import CUDA_EVENT, PERF_COUNTER, PerfCounterTimer, Timer, make_timer
from harness.plan.schema import LatencyProtocol


def test_host_timer_measures_a_sleep() -> None:
    timer = make_timer(None)
    assert isinstance(timer, Timer)
    assert timer.name == PERF_COUNTER
    timer.start()
    time.sleep(0.005)
    timer.stop()
    elapsed, host = timer.read()
    assert elapsed == host
    assert 5.0 <= elapsed < 500.0


def test_host_timer_uses_the_clock_it_is_given() -> None:
    now = [1.0]
    timer = PerfCounterTimer(lambda: now[0])
    timer.start()
    now[0] = 1.25
    timer.stop()
    assert timer.read() == (250.0, 250.0)


def test_the_cpu_timer_does_not_import_torch() -> None:
    # Run in a fresh interpreter: this process may already have torch loaded by other tests.
    import subprocess

    code = (
        "import sys; from harness.measure.timers import make_timer; "
        "from harness.measure.protocol import measure; import harness.measure.stats; "
        "make_timer(None); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def _cuda_or_skip():  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False)")
    return torch


@pytest.mark.gpu
def test_cuda_events_time_a_matmul_on_a_non_default_stream() -> None:
    torch = _cuda_or_skip()
    stream = torch.cuda.Stream()
    assert stream != torch.cuda.default_stream()
    with torch.cuda.stream(stream):
        a = torch.randn(4096, 4096, device="cuda")
        b = torch.randn(4096, 4096, device="cuda")
    stream.synchronize()

    def call() -> None:
        with torch.cuda.stream(stream):
            torch.mm(a, b)

    timer = make_timer(stream)
    assert timer.name == CUDA_EVENT
    proto = LatencyProtocol(warmup_iterations=5, warmup_seconds=0, min_iterations=30, min_seconds=0)
    result = measure(call, proto, timer)

    # An independent reference: a plain loop of events around the same call, same stream.
    ref = []
    for _ in range(30):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        call()
        end.record(stream)
        end.synchronize()
        ref.append(start.elapsed_time(end))
    ref_median = sorted(ref)[len(ref) // 2]
    median = sorted(result.samples_ms)[len(result.samples_ms) // 2]
    assert median == pytest.approx(ref_median, rel=0.10)
    # 2 * 4096^3 flops take well over 50 us on any GPU, and the launch returns before that:
    # device time is what the events saw, not the host's enqueue time.
    assert median > 0.05
    host_median = sorted(result.host_samples_ms)[len(result.host_samples_ms) // 2]
    assert host_median < median
    latency = build_latency(result, scope="model", timer_name=timer.name, timed_region="torch.mm", batch=1)
    assert latency.launch_bound is False
    assert latency.host_samples_ms is not None


@pytest.mark.gpu
def test_cuda_events_on_the_stream_see_work_queued_after_a_delay() -> None:
    # A kernel that sleeps on the device (torch.cuda._sleep spins for N cycles) is invisible to
    # the host clock around its launch but must appear in the event time.
    torch = _cuda_or_skip()
    stream = torch.cuda.Stream()
    timer = make_timer(stream)
    with torch.cuda.stream(stream):
        torch.cuda._sleep(1_000)  # warm the kernel
    stream.synchronize()
    cycles = 50_000_000  # ~25 ms at 2 GHz
    timer.start()
    with torch.cuda.stream(stream):
        torch.cuda._sleep(cycles)
    timer.stop()
    elapsed, host = timer.read()
    assert elapsed > 5.0
    assert host < elapsed / 5
