"""The server scenario's plan settings (`scenario: server`, `server:`): typed, strict, checked
by `bench validate` like every other plan field.

A server cell starts the detection endpoint (harness/serve) in its own process, drives it on
loopback with a load generator and records figures per load level:

    scenario: server
    server:
      closed_loop: {concurrency: [1, 2, 4, 8], duration_s: 5, warmup_s: 1}
      open_loop: {rates: [20, 40], rates_of_peak: [0.5, 0.9], duration_s: 5, warmup_s: 1}
      slo: {p99_ms: 50}
      batching: {max_queue_delay_ms: 2}     # a cell of batch B batches up to B requests
      limits: {max_queue: 64}

Every duration and count is bounded here, so a cell's load stops by itself; `expand` checks that
the whole schedule fits in the cell's timeout.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from harness.plan.strict import Strict

Scenario = Literal["single_stream", "server"]

# Bounds that keep a plan's load finite whatever it asks for.
MAX_LEVEL_SECONDS = 600.0
MAX_RATE_RPS = 100_000.0
MAX_CONCURRENCY = 1024


class ClosedLoop(Strict):
    """Closed loop: `c` clients, each sends its next request when its last one returned."""

    concurrency: Annotated[list[Annotated[int, Field(ge=1, le=MAX_CONCURRENCY)]], Field(min_length=1, max_length=32)] = [1, 2, 4, 8]
    duration_s: Annotated[float, Field(gt=0, le=MAX_LEVEL_SECONDS)] = 5.0
    warmup_s: Annotated[float, Field(ge=0, le=MAX_LEVEL_SECONDS)] = 1.0


class OpenLoop(Strict):
    """Open loop: Poisson arrivals at a target rate (MLPerf's Server scenario), whatever the
    server's answers do; latency counts from each request's scheduled time, so queueing behind
    a slow server is seen (a closed loop hides it by slowing down with the server)."""

    # Absolute target rates, requests per second.
    rates: list[Annotated[float, Field(gt=0, le=MAX_RATE_RPS)]] = Field(default_factory=list, max_length=32)
    # Rates as fractions of the closed loop's peak throughput (needs `closed_loop`).
    rates_of_peak: list[Annotated[float, Field(gt=0, le=4)]] = Field(default_factory=list, max_length=32)
    duration_s: Annotated[float, Field(gt=0, le=MAX_LEVEL_SECONDS)] = 5.0
    warmup_s: Annotated[float, Field(ge=0, le=MAX_LEVEL_SECONDS)] = 1.0
    seed: int = 0
    # Requests in flight at once; an arrival past it is not sent and counts as dropped by the
    # client (the client, not the server, would then be the limit: the level says so).
    max_outstanding: Annotated[int, Field(ge=1, le=4096)] = 512
    # After the last arrival, how long answers are waited for before the rest count as timeouts.
    drain_s: Annotated[float, Field(gt=0, le=120)] = 10.0

    @model_validator(mode="after")
    def _some_rate(self) -> OpenLoop:
        if not self.rates and not self.rates_of_peak:
            raise ValueError("an open loop needs `rates` (requests/s) or `rates_of_peak` (fractions of the closed loop's peak)")
        return self


class Slo(Strict):
    """A latency service-level objective on the client's latencies; a level meets it when every
    bound given holds and its error share is at most `max_error_share`."""

    p50_ms: Annotated[float, Field(gt=0)] | None = None
    p95_ms: Annotated[float, Field(gt=0)] | None = None
    p99_ms: Annotated[float, Field(gt=0)] | None = None
    max_error_share: Annotated[float, Field(ge=0, le=1)] = 0.01

    @model_validator(mode="after")
    def _some_bound(self) -> Slo:
        if self.p50_ms is None and self.p95_ms is None and self.p99_ms is None:
            raise ValueError("an slo needs at least one of p50_ms, p95_ms, p99_ms")
        return self


class Batching(Strict):
    """Dynamic batching (Triton's rule): a batch closes when it holds the cell's batch size
    (`max_batch`) or when its first request has waited `max_queue_delay_ms`, whichever comes
    first. 0 takes whatever is queued when the model is free."""

    max_queue_delay_ms: Annotated[float, Field(ge=0, le=1000)] = 0.0
    # Run every batch at the cell's batch size, padded with copies of its last image (for
    # engines built for one batch size); the copies' outputs are dropped.
    pad_to_max_batch: bool = False


class Limits(Strict):
    """What the server refuses, so that no request can take it down."""

    max_queue: Annotated[int, Field(ge=1, le=100_000)] = 128  # requests admitted at once; more get 503
    max_body_bytes: Annotated[int, Field(ge=1024, le=1 << 30)] = 20 * 1024 * 1024
    max_pixels: Annotated[int, Field(ge=1024, le=500_000_000)] = 40_000_000  # width x height
    request_timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0  # receiving the body, and waiting for the model
    decode_threads: Annotated[int, Field(ge=1, le=64)] = 2


class ClientSpec(Strict):
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0  # one request, client side
    # Seconds of closed-loop load against the server's no-op endpoint, before the levels, to
    # state the generator's capacity (0: not measured).
    capacity_s: Annotated[float, Field(ge=0, le=60)] = 1.5
    capacity_concurrency: Annotated[int, Field(ge=1, le=MAX_CONCURRENCY)] = 16
    # Client latencies kept per level in the record (a seeded subsample beyond it).
    max_samples_per_level: Annotated[int, Field(ge=100, le=1_000_000)] = 20_000
    max_requests_per_level: Annotated[int, Field(ge=1, le=10_000_000)] = 1_000_000


class Monitoring(Strict):
    """The production monitoring figures and the distribution-shift check against a baseline
    run's cell of the same id (`baseline`: a run folder or its results.json)."""

    baseline: str | None = None
    # Flag when the share of responses with no detection moves by more than this (0..1).
    zero_detection_share_change: Annotated[float, Field(gt=0, le=1)] = 0.1
    # Flag when a histogram's population stability index exceeds this (0.25: the usual "major shift").
    psi_threshold: Annotated[float, Field(gt=0)] = 0.25


class ServerSpec(Strict):
    closed_loop: ClosedLoop | None = ClosedLoop()
    open_loop: OpenLoop | None = None
    slo: Slo | None = None
    batching: Batching = Batching()
    limits: Limits = Limits()
    client: ClientSpec = ClientSpec()
    monitoring: Monitoring = Monitoring()
    # Seconds for the server process to build its runtime and answer (exports and engine
    # builds happen here).
    startup_timeout_s: Annotated[float, Field(gt=0, le=7200)] = 900.0

    @model_validator(mode="after")
    def _some_load(self) -> ServerSpec:
        if self.closed_loop is None and self.open_loop is None:
            raise ValueError("a server scenario needs `closed_loop`, `open_loop` or both")
        if self.open_loop is not None and self.open_loop.rates_of_peak and self.closed_loop is None:
            raise ValueError("open_loop.rates_of_peak needs `closed_loop` (the peak it is a fraction of)")
        return self

    def load_seconds(self) -> float:
        """The most seconds the levels can take (warm-ups, measurement, open-loop drains,
        the capacity probe), for the check against the cell's timeout."""
        total = self.client.capacity_s
        if self.closed_loop is not None:
            total += len(self.closed_loop.concurrency) * (self.closed_loop.warmup_s + self.closed_loop.duration_s)
        if self.open_loop is not None:
            ol = self.open_loop
            levels = len(ol.rates) + len(ol.rates_of_peak)
            total += levels * (ol.warmup_s + ol.duration_s + ol.drain_s)
        return total
