"""The result of one cell: an immutable record, versioned, written once.

Raw samples are kept; statistics are derived from them by `harness.measure.stats.summarize`
alone, so a report (or anyone with numpy) can recompute every figure from the file.

Schema history (bump SCHEMA_VERSION and add a line for every change; see docs/results-schema.md):
  1  first version.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1

Status = Literal["ok", "unstable", "throttled", "accuracy_regression", "skipped", "failed"]

# When a cell has several flags, its status is the most severe one.
STATUS_ORDER: list[str] = ["failed", "skipped", "accuracy_regression", "throttled", "unstable", "ok"]


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")


class Stats(Frozen):
    """Derived from samples_ms by harness.measure.stats.summarize; never edited by hand."""

    count: int
    mean: float
    std: float
    min: float
    max: float
    p50: float
    p90: float
    p95: float
    p99: float
    cov: float  # std / mean
    median_ci95: tuple[float, float]  # bootstrap 95% CI of the median
    median_ci_rel_width: float  # (hi - lo) / median


class StageTiming(Frozen):
    samples_ms: list[float]
    stats: Stats


class Window(Frozen):
    """One time window of a sustained run."""

    start_s: float
    end_s: float
    stats: Stats
    sm_clock_mhz_median: float | None = None
    temperature_c_max: float | None = None


class Latency(Frozen):
    scope: Literal["model", "end_to_end"]
    timer: str  # "cuda_event" | "perf_counter" | ...: which clock produced samples_ms
    timed_region: str  # plain words: what is inside the timed region
    samples_ms: list[float]  # per batch, measurement phase only (warm-up excluded)
    # Host time per call until the call returned (before waiting for the device); with
    # samples_ms it tells launch-bound work apart.
    host_samples_ms: list[float] | None = None
    stats: Stats
    warmup_iterations: int
    warmup_s: float
    measure_s: float
    stop_reason: str  # "min_iterations_and_min_seconds" | "max_iterations" | "max_seconds" | "sustained"
    batch: int
    throughput_ips: float  # images per second = batch / median latency
    stages: dict[str, StageTiming] | None = None  # end_to_end: preprocess, h2d, infer, d2h, postprocess
    windows: list[Window] | None = None  # sustained mode
    unstable_reasons: list[str] = Field(default_factory=list)
    launch_bound: bool | None = None


class CellRecord(Frozen):
    schema_version: int = SCHEMA_VERSION
    cell_id: str
    cell: dict[str, Any]  # the Cell as run (model, runtime, precision, batch, resolution, scope, device...)
    status: Status
    reason: str | None = None  # why skipped / failed / flagged, in words
    # A failed cell's fault: "cell" (its own code or input) or "environmental" (out of time,
    # killed from outside, a full disk, lost on a cluster; `bench run --resume` measures it again)
    failure_kind: Literal["cell", "environmental"] | None = None
    flags: list[str] = Field(default_factory=list)  # unstable, throttled, launch_bound, random_weights
    started_at: str  # ISO 8601 UTC
    finished_at: str
    random_weights: bool = False
    latency: Latency | None = None
    prepare: dict[str, Any] = Field(default_factory=dict)  # export_s, build_s, compile_s, artifact {...}
    settings: dict[str, Any] = Field(default_factory=dict)  # read back from the runtime library
    accuracy: dict[str, Any] | None = None  # harness.accuracy results (mAP, per class, images/s)
    agreement: dict[str, Any] | None = None  # raw-output agreement with PyTorch FP32
    monitor: dict[str, Any] | None = None  # NVML summary + trace (harness.environment.monitor)
    environment: dict[str, Any] = Field(default_factory=dict)
    fingerprint: str | None = None
    log_tail: str | None = None
    files: dict[str, str] = Field(default_factory=dict)  # paths relative to the run folder


def outcome_record(cell: Any, status: Status, reason: str, started_at: str, **fields: Any) -> dict[str, Any]:
    """The record of a cell that ended without a measurement (skipped, or failed: raised,
    crashed, timed out, lost on a cluster), as a JSON-ready dict. `cell` is a plan Cell."""
    from harness.run.store import utc_now

    return CellRecord(
        cell_id=cell.cell_id,
        cell=cell.model_dump(mode="json"),
        status=status,
        reason=reason,
        started_at=started_at,
        finished_at=utc_now(),
        **fields,
    ).model_dump(mode="json")


def worst_status(flags: list[str]) -> str:
    for status in STATUS_ORDER:
        if status in flags:
            return status
    return "ok"
