"""Budgets: each cell judged against the plan's limits (pass, fail, not measured), and the
ship/no-ship table that opens the report.

A cell's limits are in its identity (`identity.budgets`, the plan's `budgets` with its model's
over them). Each is judged on the cell's figures over its processes, the ones the report shows:
latency p50 is the headline (median of the process medians), p90 and p99 are over every sample
of every process; memory is the worst peak of any process; energy per image the median over
processes (harness.measure.resources). A figure that was not measured (a skipped cell, a CPU
cell's device memory, random weights' mAP) is "not measured" with the reason, never a pass.

The test: a figure with a re-run interval (the headline latency p50 and the throughput derived
from it, over two or more processes: `rerun_ci95`, harness.measure.repeats) passes only when the
whole interval is within the limit, fails only when the whole interval is past it, and is
"inconclusive" when the interval straddles the limit. With one process no between-process
variance is known: the point estimate is judged, and the verdict's detail says so. Figures
without an interval (p90/p99 over the pooled samples, memory, artifact size, energy, mAP, the
sustained slowdown) are judged on the figure, stated in the detail.

A configuration ships when it passes every budget; it does not ship when it fails one; with no
failure but a budget not measured or inconclusive, it is not shown to meet them ("unproven").
An inconclusive budget does not trip `budgets.gate` (nothing shows the limit is exceeded). The
winner of a model and scope is the fastest shipping cell (lowest headline latency).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from harness.report import fmt
from harness.report.rundata import CellView
from harness.results import MEASURED_STATUSES, BudgetVerdict

MB = 1e6

Outcome = Literal["ship", "no_ship", "unproven"]
OUTCOME_WORDS: dict[str, str] = {"ship": "ships", "no_ship": "does not ship", "unproven": "not shown"}
# pass: the figure (its re-run interval, when it has one) is within the limit; fail: past it;
# inconclusive: the interval straddles the limit; not_measured: no figure.

# budget key -> (unit, "max" | "min", what it is in words)
BUDGETS: dict[str, tuple[str, str, str]] = {
    "latency_ms.p50": ("ms", "max", "median latency per batch (over processes)"),
    "latency_ms.p90": ("ms", "max", "p90 latency per batch (every sample of every process)"),
    "latency_ms.p99": ("ms", "max", "p99 latency per batch (every sample of every process)"),
    "min_images_per_s": ("img/s", "min", "images per second (batch / median)"),
    "device_memory_mb": ("MB", "max", "peak device memory of the timed phase (worst process)"),
    "host_memory_mb": ("MB", "max", "peak host RSS of the worker (worst process)"),
    "artifact_mb": ("MB", "max", "size on disk of the artifact that ran"),
    "energy_per_image_j": ("J", "max", "energy per image over the measurement phase (median process)"),
    "map_drop": ("AP pts", "max", "AP points lost against the model's reference"),
    "min_map": ("AP pts", "min", "AP (COCO AP50:95, points)"),
    "sustained_slowdown_pct": ("%", "max", "last sustained window's median against the first's"),
}


def budget_words(key: str) -> str:
    return BUDGETS.get(key, ("", "max", key))[2]


def budget_label(key: str, limit: float) -> str:
    """`p99 ≤ 33 ms`, `device memory ≤ 2000 MB`: the limit as a reader writes it."""
    unit, direction, _ = BUDGETS.get(key, ("", "max", key))
    sign = "≤" if direction == "max" else "≥"
    name = {
        "latency_ms.p50": "p50", "latency_ms.p90": "p90", "latency_ms.p99": "p99",
        "min_images_per_s": "throughput", "device_memory_mb": "device memory", "host_memory_mb": "host RSS",
        "artifact_mb": "artifact", "energy_per_image_j": "energy/image", "map_drop": "mAP drop",
        "min_map": "mAP", "sustained_slowdown_pct": "sustained slowdown",
    }.get(key, key)
    return f"{name} {sign} {limit:,g} {unit}".strip()


# ----------------------------------------------------------------------------- figures


def _not_measured(view: CellView) -> str | None:
    if view.status in MEASURED_STATUSES and view.median is not None:
        return None
    return f"the cell was not measured ({view.status}{': ' + view.reason if view.reason else ''})"


Figure = tuple[float | None, str | None]  # (value in the budget's unit, detail or why not measured)


def _latency(stat: str) -> Callable[[CellView], Figure]:
    def read(view: CellView) -> Figure:
        if why := _not_measured(view):
            return None, why
        value = {"p50": view.median, "p90": view.p90, "p99": view.p99}[stat]
        over = f"over {view.repeats} processes" if view.repeats > 1 else "one process"
        return value, f"{over}; {view.status}" if view.status != "ok" else over

    return read


def _throughput(view: CellView) -> Figure:
    if why := _not_measured(view):
        return None, why
    return view.throughput, None


def _resource(attr: str, reason_key: str, scale: float, detail: Callable[[CellView], str | None]) -> Callable[[CellView], Figure]:
    def read(view: CellView) -> Figure:
        if why := _not_measured(view):
            return None, why
        res = view.resources
        if res is None:
            return None, "no resources recorded (a result from before the harness measured them)"
        value = getattr(res, attr)
        if value is None:
            return None, (res.reasons or {}).get(reason_key) or "not measured"
        return float(value) / scale, detail(view)

    return read


def _accuracy_gap(view: CellView) -> str | None:
    if view.random_weights:
        return "random weights: the mAP is meaningless"
    if view.metric is None:
        return "no accuracy pass (the plan has no dataset, or accuracy is off)"
    return None


def _map_drop(view: CellView) -> Figure:
    if why := _accuracy_gap(view):
        return None, why
    if view.is_reference:
        return 0.0, "the model's reference cell"
    if view.map_delta is None:
        return None, "no reference cell of this model to compare with"
    return -view.map_delta, f"against the reference: {fmt.signed(view.map_delta)} points"


def _min_map(view: CellView) -> Figure:
    if why := _accuracy_gap(view):
        return None, why
    images = f" on {view.images} images" if view.images else ""
    return view.metric, f"COCO AP50:95{images}"


def sustained_slowdowns(view: CellView) -> list[float]:
    """Per measured process with sustained windows: (last window's median / first's - 1) x 100."""
    out = []
    for record in view.processes or [view.record]:
        windows = record.latency.windows if record.latency is not None else None
        if record.status in MEASURED_STATUSES and windows and len(windows) >= 2 and windows[0].stats.p50 > 0:
            out.append((windows[-1].stats.p50 / windows[0].stats.p50 - 1.0) * 100.0)
    return out


def _sustained(view: CellView) -> Figure:
    if why := _not_measured(view):
        return None, why
    slowdowns = sustained_slowdowns(view)
    if not slowdowns:
        return None, "no sustained run of two or more windows (protocol.sustained)"
    duration = view.identity.protocol.sustained.duration_s if view.identity.protocol.sustained else None
    span = f"{duration:g} s run" if duration else "sustained run"
    return max(slowdowns), f"{span}, worst of {len(slowdowns)} process(es)"


def _memory_method(view: CellView) -> str | None:
    method = view.resources.device_memory_method if view.resources else None
    return {"torch_allocator": "torch allocator peak (max_memory_allocated; NVML had no reading of this process)",
            "nvml_process": "NVML: this process above its baseline before the session",
            "nvml_device_used": "NVML: the device's used memory above its baseline (other processes included)"}.get(
        method or "", method)


def _host_method(view: CellView) -> str | None:
    """What the host peak was actually read with (the processes' `method`): VmHWM since the
    measurement phase's reset, VmHWM since exec, or getrusage's ru_maxrss."""
    method = view.resources.host_memory_method if view.resources else None
    return method or "the method was not recorded"


def _energy_method(view: CellView) -> str | None:
    method = view.resources.energy_method if view.resources else None
    return {"nvml_energy_counter": "NVML energy counter", "nvml_power_integration": "integrated NVML power samples",
            "rapl": "RAPL package counters"}.get(method or "", method)


FIGURES: dict[str, Callable[[CellView], Figure]] = {
    "latency_ms.p50": _latency("p50"),
    "latency_ms.p90": _latency("p90"),
    "latency_ms.p99": _latency("p99"),
    "min_images_per_s": _throughput,
    "device_memory_mb": _resource("device_memory_peak_bytes", "device_memory", MB, _memory_method),
    "host_memory_mb": _resource("host_peak_rss_bytes", "host_memory", MB, _host_method),
    "artifact_mb": _resource("artifact_bytes", "artifact", MB,
                             lambda v: v.resources.artifact_kind if v.resources else None),
    "energy_per_image_j": _resource("joules_per_image", "energy", 1.0, _energy_method),
    "map_drop": _map_drop,
    "min_map": _min_map,
    "sustained_slowdown_pct": _sustained,
}


def _interval(key: str, view: CellView) -> tuple[float, float] | None:
    """Where a re-run's figure is expected (95%), in the budget's unit: the headline's re-run
    interval over two or more processes, and the throughput's from it; else None."""
    if view.repeats < 2 or view.rerun_ci is None:
        return None
    lo, hi = (float(x) for x in view.rerun_ci)
    if key == "latency_ms.p50":
        return lo, hi
    if key == "min_images_per_s" and lo > 0 and hi > 0:
        return view.batch * 1000.0 / hi, view.batch * 1000.0 / lo  # a slower re-run gives fewer images/s
    return None


# Budgets read from the cell's latency, whose one-process figure has no between-process variance.
_LATENCY_BUDGETS = {"latency_ms.p50", "latency_ms.p90", "latency_ms.p99", "min_images_per_s"}


Verdict = Literal["pass", "fail", "inconclusive"]


def _test(value: float, interval: tuple[float, float] | None, limit: float, direction: str) -> Verdict:
    """pass | fail | inconclusive: on the interval when there is one, else on the figure."""
    within = (lambda x: x <= limit) if direction == "max" else (lambda x: x >= limit)
    if interval is None:
        return "pass" if within(value) else "fail"
    lo, hi = interval
    worst, best = (hi, lo) if direction == "max" else (lo, hi)
    if within(worst):
        return "pass"
    if not within(best):
        return "fail"
    return "inconclusive"


def _basis(key: str, view: CellView, interval: tuple[float, float] | None, unit: str) -> str:
    if interval is not None:
        return (f"judged on the re-run interval {fmt.sig(interval[0])}–{fmt.sig(interval[1])} {unit} "
                f"(95%, {view.repeats} processes)")
    if key in _LATENCY_BUDGETS and view.repeats < 2:
        return "one process: no between-process variance is known; judged on the point estimate"
    if key in _LATENCY_BUDGETS:
        return "no re-run interval for this figure: judged on the figure"
    return "no interval: judged on the figure"


def judge(view: CellView) -> list[BudgetVerdict]:
    """Every budget of the cell, judged (in the order BUDGETS lists them; the test is the
    module docstring's)."""
    limits = view.identity.budgets or {}
    order = {key: i for i, key in enumerate(BUDGETS)}
    out: list[BudgetVerdict] = []
    for key in sorted(limits, key=lambda k: (order.get(k, len(order)), k)):
        limit = float(limits[key])
        unit, direction, _ = BUDGETS.get(key, ("", "max", key))
        reader = FIGURES.get(key)
        if reader is None:
            out.append(BudgetVerdict(budget=key, limit=limit, unit=unit, verdict="not_measured",
                                     detail="a budget this harness does not know"))
            continue
        value, detail = reader(view)
        if value is None or not math.isfinite(value):
            out.append(BudgetVerdict(budget=key, limit=limit, unit=unit, verdict="not_measured", detail=detail))
            continue
        interval = _interval(key, view)
        basis = _basis(key, view, interval, unit)
        out.append(BudgetVerdict(budget=key, limit=limit, unit=unit, value=value,
                                 verdict=_test(value, interval, limit, direction), interval=interval,
                                 detail=f"{detail}; {basis}" if detail else basis))
    return out


def attach(views: Sequence[CellView]) -> list[CellView]:
    """Fill each view's `budgets`: the verdicts finalize derived (what the run's exit status
    went by), else judged here from the stored figures (a run rebuilt from its cell files)."""
    for view in views:
        view.budgets = list(view.derived.budgets) if view.derived.budgets is not None else judge(view)
    return list(views)


def outcome(verdicts: Sequence[BudgetVerdict]) -> Outcome | None:
    if not verdicts:
        return None
    if any(v.verdict == "fail" for v in verdicts):
        return "no_ship"
    if any(v.verdict in ("not_measured", "inconclusive") for v in verdicts):
        return "unproven"
    return "ship"


def verdict_text(v: BudgetVerdict) -> str:
    """`fail: 41.2 ms > 33 ms`, `inconclusive: 32.1 ms, re-run interval 30.4–34.0 ms across 33 ms`,
    `not measured: random weights...`: one budget in words."""
    if v.verdict == "not_measured" or v.value is None:
        return f"not measured: {v.detail}" if v.detail else "not measured"
    unit, direction, _ = BUDGETS.get(v.budget, (v.unit, "max", v.budget))
    if v.verdict == "inconclusive":
        span = f"{fmt.sig(v.interval[0])}–{fmt.sig(v.interval[1])}" if v.interval else "?"
        return f"inconclusive: {fmt.sig(v.value)} {unit}, re-run interval {span} {unit} across {v.limit:,g} {unit}"
    op = ("≤" if v.verdict == "pass" else ">") if direction == "max" else ("≥" if v.verdict == "pass" else "<")
    return f"{v.verdict}: {_against(v.value, v.limit)} {op} {v.limit:,g} {unit}"


def _against(value: float, limit: float) -> str:
    """The value with enough digits not to read as the limit it failed ("150.3 > 150", never
    "150 > 150"); three significant digits where those already differ."""
    limit_text = f"{limit:,g}"
    for digits in range(3, 10):
        text = f"{value:,.{digits}g}"
        if value == limit or text != limit_text:
            return text if digits > 3 else fmt.sig(value)
    return f"{value:,.10g}"


# ----------------------------------------------------------------------------- the table


@dataclass
class ShipRow:
    view: CellView
    verdicts: list[BudgetVerdict]
    outcome: Outcome

    @property
    def by_budget(self) -> dict[str, BudgetVerdict]:
        return {v.budget: v for v in self.verdicts}

    @property
    def failed(self) -> list[BudgetVerdict]:
        return [v for v in self.verdicts if v.verdict == "fail"]

    @property
    def unmeasured(self) -> list[BudgetVerdict]:
        return [v for v in self.verdicts if v.verdict == "not_measured"]

    @property
    def inconclusive(self) -> list[BudgetVerdict]:
        return [v for v in self.verdicts if v.verdict == "inconclusive"]


@dataclass
class ShipGroup:
    model: str
    scope: str
    rows: list[ShipRow] = field(default_factory=list)
    fastest: ShipRow | None = None

    @property
    def shipping(self) -> list[ShipRow]:
        return [r for r in self.rows if r.outcome == "ship"]

    @property
    def memory_note(self) -> str | None:
        """Said beside the table when its configurations' device memory was read different
        ways: their device-memory figures are not one quantity, so not to be set side by side."""
        if not any(v.budget == "device_memory_mb" for r in self.rows for v in r.verdicts):
            return None
        methods = sorted({r.view.resources.device_memory_method for r in self.rows
                          if r.view.resources is not None and r.view.resources.device_memory_method})
        if len(methods) < 2:
            return None
        return (f"Device memory was read different ways here ({', '.join(methods)}): those figures are different "
                "quantities (NVML's process figure counts the CUDA context and the allocator's cache, the torch "
                "allocator's does not), so the configurations' device memory is not comparable across methods.")

    @property
    def columns(self) -> list[tuple[str, str]]:
        """(budget key, its label with the limit) for every budget of the group's cells, in
        BUDGETS order (one model: one set of limits)."""
        labels: dict[str, str] = {}
        for r in self.rows:
            for v in r.verdicts:
                labels.setdefault(v.budget, budget_label(v.budget, v.limit))
        order = {key: i for i, key in enumerate(BUDGETS)}
        return sorted(labels.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))


def ship_table(views: Sequence[CellView]) -> list[ShipGroup]:
    """Per model and scope (in the run's order), every cell with budgets and its verdicts,
    fastest first; `fastest` is the fastest cell that meets every budget."""
    groups: dict[tuple[str, str], ShipGroup] = {}
    for view in views:
        verdicts = view.budgets
        result = outcome(verdicts)
        if result is None:
            continue
        group = groups.setdefault((view.model, view.scope), ShipGroup(view.model, view.scope))
        group.rows.append(ShipRow(view, list(verdicts), result))
    for group in groups.values():
        group.rows.sort(key=lambda r: (r.view.median if r.view.median is not None else math.inf, r.view.cell_id))
        group.fastest = next((r for r in group.rows if r.outcome == "ship"), None)
    return list(groups.values())
