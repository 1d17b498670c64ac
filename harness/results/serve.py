"""What a server cell records (`CellRecord.serve`): the endpoint under load, level by level,
and the production monitoring figures of its requests. Built by harness.serve.scenario.

Units as everywhere in the results: `_ms` milliseconds, `_s` seconds, `_rps` requests per second,
shares 0..1. Client latencies count from the moment a request was due (open loop: its scheduled
arrival; closed loop: when its client was free) to the last byte of the answer.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Frozen(BaseModel):
    """As harness.results.model.Frozen (which imports this module): immutable, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Quantiles(Frozen):
    """Percentiles of a sample (numpy's linear rule) with distribution-free 95% intervals:
    the order statistics whose ranks bracket the quantile's binomial 95% range. They assume
    independent samples; requests under load are not (queues couple them), so read them as a
    lower bound on the uncertainty."""

    count: int
    mean: float
    min: float
    max: float
    p50: float
    p90: float
    p95: float
    p99: float
    p50_ci95: tuple[float, float] | None = None
    p95_ci95: tuple[float, float] | None = None
    p99_ci95: tuple[float, float] | None = None


class Histogram(Frozen):
    """counts[i] is the number of values in [edges[i], edges[i + 1]) (the last bin closed)."""

    edges: list[float]
    counts: list[int]


class ServerSide(Frozen):
    """The server's own timings for the level's requests (its per-request log)."""

    requests: int
    queue_ms: Quantiles | None = None  # admitted (image decoded) until its batch started
    inference_ms: Quantiles | None = None  # the batch's preprocess -> h2d -> infer -> d2h -> postprocess
    decode_ms: Quantiles | None = None  # the image bytes to pixels
    server_ms: Quantiles | None = None  # the body received until the answer was ready
    batches: int = 0
    # Inferences per batch size ("1": 120, "4": 30): one count per model call, not per request.
    batch_sizes: dict[str, int] = Field(default_factory=dict)
    mean_batch: float | None = None
    stages_ms: dict[str, float] = Field(default_factory=dict)  # median per stage of a batch


class Level(Frozen):
    """One load level: a concurrency (closed loop) or a target rate (open loop)."""

    mode: Literal["closed", "open"]
    concurrency: int | None = None  # closed loop: clients
    target_rps: float | None = None  # open loop: Poisson arrival rate
    rate_of_peak: float | None = None  # open loop: the rate as a fraction of the closed loop's peak
    warmup_s: float
    duration_s: float  # the measured window
    sent: int  # requests sent in the window
    completed: int  # answers received (any status)
    ok: int  # 200 answers
    errors: int  # non-200 answers, timeouts, broken connections
    errors_by_kind: dict[str, int] = Field(default_factory=dict)  # "503", "timeout", "connection"...
    error_share: float  # errors / (ok + errors)
    dropped_by_client: int = 0  # open loop: arrivals not sent because max_outstanding were in flight
    throughput_rps: float  # ok answers per second of the window
    offered_rps: float | None = None  # open loop: arrivals per second actually sent
    latency_ms: Quantiles | None = None  # client side, ok answers
    samples_ms: list[float] = Field(default_factory=list)  # client latencies of ok answers (a seeded subsample past the cap)
    samples_total: int = 0  # ok answers the samples come from
    send_lag_ms: Quantiles | None = None  # open loop: how late requests left against their schedule
    server: ServerSide | None = None
    client_cpu_share: float | None = None  # the load generator's CPU seconds per second (1 = one core)
    client_limited: bool = False
    client_limited_why: str | None = None
    meets_slo: bool | None = None  # None: no slo in the plan
    slo_why: str | None = None  # why not met

    @property
    def key(self) -> str:
        """What makes two levels the same load: the concurrency, or the absolute target rate."""
        return f"c{self.concurrency}" if self.mode == "closed" else f"{self.target_rps:.6g} rps"


class ClientCapacity(Frozen):
    """The load generator against the server's no-op endpoint (the same bodies, no decoding, no
    model): what the generator and the HTTP stack deliver at most on this machine."""

    endpoint: str
    concurrency: int
    duration_s: float
    requests: int
    throughput_rps: float
    latency_ms: Quantiles | None = None
    cpu_share: float | None = None


# SloResult.note: its clauses joined by NOTE_SEPARATOR; the one that says no open-loop rate met
# the SLO is known by its text, so the report can leave it out where its own sentence says so.
NOTE_SEPARATOR = "; "
NO_OPEN_RATE_NOTE = "no open-loop rate met the SLO"


class SloResult(Frozen):
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_error_share: float
    # The highest target rate (open loop) whose level met the SLO, and the lowest one above it
    # that did not: the capacity under the SLO lies between them.
    max_rate_rps: float | None = None
    first_failing_rate_rps: float | None = None
    # The closed loop's highest throughput among levels that met the SLO, and its concurrency.
    max_closed_throughput_rps: float | None = None
    max_closed_concurrency: int | None = None
    note: str | None = None


class Monitoring(Frozen):
    """The production monitoring figures, from the server's log of the measured requests."""

    requests: int  # answered 200
    rejected: int  # answered 4xx/5xx
    status_codes: dict[str, int] = Field(default_factory=dict)
    detections: Histogram  # detections per answer, bins of one up to the last edge
    zero_detection_share: float | None = None
    detections_mean: float | None = None
    detections_p95: float | None = None
    max_score: Histogram  # the highest score in each answer with a detection, 0..1 in tenths
    max_score_median: float | None = None
    resolutions: dict[str, int] = Field(default_factory=dict)  # "640x480": answers (the 20 commonest, then "other")
    megapixels: Histogram | None = None


class ShiftItem(Frozen):
    name: str  # zero_detection_share, detections_psi, max_score_psi, resolutions_psi
    baseline: float | None
    current: float | None
    value: float | None  # the change or the PSI
    threshold: float
    flagged: bool


class ShiftCheck(Frozen):
    """This cell's monitoring figures against the same cell of a baseline run."""

    baseline: str  # the baseline as the plan named it
    baseline_run_id: str | None = None
    baseline_cell_id: str | None = None
    items: list[ShiftItem] = Field(default_factory=list)
    flagged: bool = False
    reason: str | None = None  # why nothing was compared


class ServeResult(Frozen):
    server: str  # the server stack and its versions
    endpoint: str  # POST /v1/detect
    address: str  # 127.0.0.1:port, the loopback socket the harness opened
    load_generator: str  # what drove the load
    max_batch: int
    max_queue_delay_ms: float | None = None  # None: no dynamic batching (max_batch 1)
    pad_to_max_batch: bool = False
    limits: dict[str, float] = Field(default_factory=dict)
    images: int  # distinct request bodies sent, cycled
    image_source: str  # the plan's dataset, or a synthetic image
    capacity: ClientCapacity | None = None
    levels: list[Level] = Field(default_factory=list)
    peak_throughput_rps: float | None = None  # the closed loop's highest
    slo: SloResult | None = None
    monitoring: Monitoring | None = None
    shift: ShiftCheck | None = None
    client_limited: bool = False  # some level was limited by the load generator
    notes: list[str] = Field(default_factory=list)

    @property
    def headline(self) -> Level | None:
        """The level a one-line summary shows: the lightest closed-loop level that answered,
        else the first level that did."""
        answered = [lv for lv in self.levels if lv.latency_ms is not None]
        closed = [lv for lv in answered if lv.mode == "closed"]
        return min(closed, key=lambda lv: lv.concurrency or 0) if closed else (answered[0] if answered else None)
