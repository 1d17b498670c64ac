"""What `bench tune` writes beside its run folder's results (tune.json): every candidate it
considered, what became of it and why, the fronts, the winner and the time each step took.
Built by harness.tune.search; read by the report (harness/report/tune.py). docs/tune.md.

Units as everywhere in the results: `_ms` milliseconds, `_s` seconds, AP and AP drops in
points (pycocotools' 0..1 x 100), memory in bytes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, JsonValue

from harness.results.model import Frozen

TUNE_FORMAT = 1

# What became of a candidate:
#   pruned    left out with its reason (invalid here, unavailable, failed, or past the budget
#             on the screening subset), never timed at length
#   untried   never screened: the time budget (or tune.max_candidates) ran out first
#   screened  passed screening but was not measured at length (the time left held fewer)
#   measured  measured with the full protocol (repeats included) and the full accuracy pass
Outcome = Literal["pruned", "untried", "screened", "measured"]
PruneKind = Literal["invalid", "unavailable", "failed", "accuracy", "time", "limit"]


def latency_label(stat: str) -> str:
    """What tune's latency figure is, in words: the median over processes of each process's
    statistic. For p99 that is not the report's p99 (the 99th percentile of every process's
    samples pooled), so it is never called plain "p99"."""
    return "median of process p99s" if stat == "p99" else "median of process medians"


class TuneStep(Frozen):
    name: str  # space, screen, measure, report
    seconds: float
    note: str | None = None


class TuneCandidate(Frozen):
    name: str  # the runtime label it runs under (unique per model)
    model: str
    runtime: str  # the plug-in's name
    precision: str
    batch: int
    settings: dict[str, JsonValue] = Field(default_factory=dict)  # as given to the runtime
    is_baseline: bool = False  # the FP32 reference every mAP drop is taken against
    outcome: Outcome
    reason: str | None = None
    reason_kind: PruneKind | None = None
    # Screening (stage 1): one process, the short protocol, the accuracy subset.
    screen_cell: str | None = None
    screen_latency_ms: float | None = None
    screen_ap: float | None = None
    screen_map_drop: float | None = None
    screen_s: float | None = None  # wall seconds of its screening process
    # Measurement (stage 2): the full protocol and accuracy pass.
    cell_id: str | None = None
    latency_ms: float | None = None  # the median over processes of each process's statistic (latency_label)
    process_latency_ms: list[float] = Field(default_factory=list)  # each process's statistic
    ap: float | None = None
    map_drop: float | None = None
    # Memory from the cell's `resources` over its processes (the worst process's peak, as in
    # the ship table and budgets): `device` on a GPU cell (peak device memory of the timed
    # phase, read as `memory_method` says), `host_rss` on a CPU cell (the worker's peak RSS).
    # Null with `memory_reason` where it could not be read; never the other kind instead.
    memory_bytes: int | None = None
    memory_kind: Literal["device", "host_rss"] | None = None
    memory_method: str | None = None  # torch_allocator | nvml_process | nvml_device_used; VmHWM's words
    memory_reason: str | None = None
    within_budget: bool | None = None
    on_front_map: bool = False  # not dominated on (latency, mAP)
    on_front_memory: bool = False  # not dominated on (latency, memory)


class TuneResult(Frozen):
    format: int = TUNE_FORMAT
    plan_name: str
    budget_map_drop: float  # AP points a configuration may lose against the baseline
    latency_stat: Literal["median", "p99"]
    per_image: bool  # several batch sizes: latency compared per image (ms / image)
    batches: list[int]
    scope: str
    max_minutes: float
    subset_images: int
    screen_protocol: dict[str, JsonValue]
    screen_run: str | None = None  # the screening run folder
    memory_kind: Literal["device", "host_rss"] = "host_rss"  # the memory front's (the plan's device)
    baseline: str | None = None
    candidates: list[TuneCandidate]
    winner: str | None = None
    winner_why: str
    tie_break: str | None = None  # the test that decided a tie, when one did
    neighbours: list[str] = Field(default_factory=list)
    tuned_plan: str | None = None  # tuned.yaml, in the run folder
    steps: list[TuneStep] = Field(default_factory=list)
    elapsed_s: float
    over_time: bool = False  # the search took longer than max_minutes (a measurement ran long)
    notes: list[str] = Field(default_factory=list)
