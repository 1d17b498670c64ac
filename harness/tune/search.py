"""The search: two stages, both through the normal launcher and worker, so every number comes
from the instrument `bench PLAN` uses (no separate quick timer).

1. Screening: every candidate left after `space.build_space` is a cell of one screening run
   (one process, a short protocol, the accuracy pass on the first `tune.subset_images` images),
   the baseline first. A candidate that fails, or whose mAP on that subset falls more than the
   budget below the baseline's on the same subset, is pruned with the reason and never timed at
   length. Before each cell the time it and the measurement stage would still need is projected
   from the cells so far; one that would pass --max-minutes is not started and is listed as
   not tried.
2. Measurement: the survivors (as many as the time left holds, the most promising first) as a
   normal plan run: the plan's full protocol, repeats included, and its full accuracy pass.
   That run folder is the result; tune.json, tuned.yaml and the report's tune section are added
   to it.

The winner is the fastest measured configuration within the budget, by the median over
processes of each process's statistic (median or p99); docs/tune.md has the tie rule.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from harness.errors import UserError
from harness.plan.load import LoadedPlan, parse_plan
from harness.plan.schema import LatencyProtocol, Plan, SubsetSpec, TuneSpec
from harness.results import (
    MEASURED_STATUSES,
    CellRecord,
    DerivedEntry,
    ResultsFile,
    TuneCandidate,
    TuneResult,
    TuneStep,
    group_by_cell,
    latency_label,
    primary_record,
)
from harness.run.launch import Events, LocalLauncher, WorkUnit
from harness.run.record import outcome_record
from harness.run.store import RunStore, dumps, utc_now
from harness.tune import pareto
from harness.tune.labels import candidate_text
from harness.tune.space import Candidate, Space, build_space, plan_with

# Screening protocol, unless tune.screen_protocol says otherwise: enough calls for a median that
# ranks candidates, far from the full protocol's.
SCREEN_DEFAULTS: dict[str, Any] = {"warmup_iterations": 5, "warmup_seconds": 0.5, "min_iterations": 30,
                                   "min_seconds": 1.0, "max_seconds": 30.0, "repeats": 1, "sustained": None}
# A configuration ties with the fastest when Welch's t-test cannot tell their processes'
# figures apart at this level (p >= it) and its median is within TIE_MARGIN_PCT of the fastest's
# (the plan's tune.tie_margin_pct). Not significant alone is no tie: with 2-3 processes a side
# the test has so little power that it cannot tell a 4x slower configuration from the fastest.
TIE_P_VALUE = 0.05
TIE_MARGIN_PCT: float = TuneSpec.model_fields["tie_margin_pct"].default


@dataclass(frozen=True)
class Budget:
    map_drop: float  # AP points
    latency: str = "median"  # median | p99
    batches: tuple[int, ...] = (1,)
    max_minutes: float = 60.0


def parse_budget(text: str) -> float:
    """`map_drop=POINTS` -> POINTS, or UserError naming --budget."""
    key, sep, value = text.partition("=")
    if not sep or key.strip() != "map_drop":
        raise UserError(f"--budget: expected map_drop=POINTS (the AP points a configuration may lose against "
                        f"the FP32 baseline, e.g. map_drop=0.5), got {text!r}")
    try:
        points = float(value)
    except ValueError:
        raise UserError(f"--budget: map_drop must be a number of AP points, got {value!r}") from None
    if not points >= 0 or points == float("inf"):
        raise UserError(f"--budget: map_drop must be a finite number >= 0, got {value!r}")
    return points


def parse_batches(text: str) -> tuple[int, ...]:
    try:
        batches = tuple(dict.fromkeys(int(part) for part in text.split(",")))
    except ValueError:
        raise UserError(f"--batch: expected a batch size or a comma-separated list (1 or 1,4,8), got {text!r}") from None
    if not batches or any(not 1 <= b <= 1024 for b in batches):
        raise UserError(f"--batch: batch sizes are 1..1024, got {text!r}")
    return batches


@dataclass
class Clock:
    started: float = field(default_factory=time.monotonic)
    steps: list[TuneStep] = field(default_factory=list)
    _at: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def step(self, name: str, note: str | None = None) -> None:
        now = time.monotonic()
        self.steps.append(TuneStep(name=name, seconds=round(now - self._at, 3), note=note))
        self._at = now


@dataclass
class Outcome:
    result: TuneResult
    run_dir: Path
    exit_status: int


def _dump_plan(plan: Plan) -> str:
    return yaml.safe_dump(plan.model_dump(mode="json", exclude_defaults=True), sort_keys=False)


def _loaded(plan: Plan, loaded: LoadedPlan, header: str) -> LoadedPlan:
    plan_dir = loaded.plan_dir
    return parse_plan(header + _dump_plan(plan), f"<{plan.name}>", plan_dir, loaded.path)


def screen_protocol(plan: Plan) -> LatencyProtocol:
    given = plan.tune.screen_protocol.model_dump(exclude_none=True) if plan.tune and plan.tune.screen_protocol else {}
    base = {**plan.protocol.model_dump(), **SCREEN_DEFAULTS, **given}
    base["max_iterations"] = max(base["max_iterations"], base["min_iterations"])
    return LatencyProtocol.model_validate(base)


def screening_plan(loaded: LoadedPlan, candidates: list[Candidate], space: Space, protocol: LatencyProtocol,
                   subset_n: int) -> Plan:
    """Stage 1's plan: every cell on the screening protocol (a model's own `protocol:` is
    dropped, or its min_seconds, repeats and sustained would be merged over the short one), the
    accuracy pass on the subset, no gate and no gallery."""
    plan = loaded.plan
    return plan_with(loaded, candidates, space, model_protocols=False, name=f"{plan.name}-screen",
                     protocol=protocol, dataset=_subset(plan, subset_n),
                     accuracy=plan.accuracy.model_copy(update={"gate": False, "gallery_images": 0}))


def _subset(plan: Plan, n: int) -> Any:
    dataset = plan.dataset
    assert dataset is not None
    subset = dataset.subset
    if subset.mode == "all":
        subset = SubsetSpec(mode="first", n=n)
    else:
        subset = subset.model_copy(update={"n": min(subset.n or n, n)})
    return dataset.model_copy(update={"subset": subset})


def _cell_key(record_or_cell: Any) -> tuple[str, str, str, int]:
    ident = record_or_cell.identity if isinstance(record_or_cell, CellRecord) else None
    if ident is not None:
        return (ident.model, ident.runtime_label or ident.runtime, ident.precision, ident.batch)
    c = record_or_cell
    return (c.model.name, c.runtime.key, c.precision, c.batch)


def _cand_key(c: Candidate) -> tuple[str, str, str, int]:
    return (c.model, c.name, c.precision, c.batch)


T = TypeVar("T")


def runtime_round_robin(items: Sequence[T], runtime_of: Callable[[T], str], first: Callable[[T], bool]) -> list[T]:
    """`items` with those `first` picks ahead, then one of each runtime in turn (each runtime's
    own order kept): a limit or a time budget that stops part-way has still tried every runtime,
    rather than every option of the runtimes the plan happens to list first."""
    queues: dict[str, list[T]] = {}
    for item in items:
        if not first(item):
            queues.setdefault(runtime_of(item), []).append(item)
    out = [item for item in items if first(item)]
    while any(queues.values()):
        out += [queue.pop(0) for queue in queues.values() if queue]
    return out


def apply_limit(alive: list[Candidate], limit: int) -> list[Candidate]:
    """The candidates to screen, the baselines first: every baseline (without one no mAP drop
    exists, so they never count against the limit), then the first `limit` of the rest taken
    one runtime at a time in turn; those past it are pruned as not tried."""
    ordered = runtime_round_robin(alive, lambda c: c.runtime, lambda c: c.baseline)
    rest = [c for c in ordered if not c.baseline]
    for c in rest[limit:]:
        c.pruned = ("limit", f"not tried: tune.max_candidates is {limit}")
    return [c for c in ordered if c.pruned is None]


def _ap_points(record: CellRecord) -> float | None:
    acc = record.accuracy
    if acc is None:
        return None
    metrics = {"bbox": acc.bbox, "segm": acc.segm, "keypoints": acc.keypoints}.get(acc.primary)
    ap = getattr(metrics, "AP", None)
    return None if ap is None else float(ap) * 100.0


def _statistic(record: CellRecord, stat: str, per_image: bool) -> float | None:
    if record.latency is None or record.status not in MEASURED_STATUSES:
        return None
    value = record.latency.stats.p99 if stat == "p99" else record.latency.stats.p50
    return value / record.identity.batch if per_image else value


def _ran_on_gpu(group: Sequence[CellRecord]) -> bool:
    """Whether the cell's processes ran on a GPU: the device the worker resolved and captured
    its environment on ("auto" becomes cuda:N or cpu there), else the plan's device."""
    for record in group:
        if record.environment.devices:
            return any(d.startswith("cuda") for d in record.environment.devices)
    return primary_record(group).identity.device.startswith("cuda")


def _memory(group: Sequence[CellRecord], derived: DerivedEntry | None) -> dict[str, Any]:
    """The memory a candidate is put against latency with: the cell's `resources` over its
    processes (the figure the ship table, budgets and compare read; the worst process's peak):
    device memory of the timed phase on a GPU cell, the worker's peak host RSS on a CPU cell.
    A GPU cell without a device figure gets none (its host RSS would not be the same quantity);
    the reason says why."""
    from harness.measure.resources import resources_over_processes

    kind = "device" if _ran_on_gpu(group) else "host_rss"
    res = derived.resources if derived is not None and derived.resources is not None else resources_over_processes(group)
    if res is None:
        return {"memory_kind": kind, "memory_bytes": None, "memory_method": None,
                "memory_reason": "no measured process recorded its resources"}
    reasons = res.reasons or {}
    if kind == "device":
        return {"memory_kind": kind, "memory_bytes": res.device_memory_peak_bytes,
                "memory_method": res.device_memory_method, "memory_reason": reasons.get("device_memory")}
    methods = sorted({r.resources.host_memory.method for r in group
                      if r.resources is not None and r.resources.host_memory.method})
    return {"memory_kind": kind, "memory_bytes": res.host_peak_rss_bytes, "memory_method": " | ".join(methods) or None,
            "memory_reason": reasons.get("host_memory")}


def screen_verdict(record: CellRecord, baseline_ap: float | None, map_drop: float,
                   subset_n: int, margin: float = 1.0) -> tuple[str, str] | None:
    """Why a screened candidate is pruned, as (kind, reason), or None when it survives: it was
    not tried (the time budget), is unavailable here, failed, has no mAP to compare, or lost
    more than `margin` x `map_drop` AP points against the baseline on the screening subset
    (the subset's mAP is noisy; the exact budget is the final verdict's)."""
    if record.status == "skipped":
        untried = (record.reason or "").startswith("not tried")
        return ("time" if untried else "unavailable", record.reason or "skipped")
    if record.status == "failed":
        return ("failed", record.reason or "failed")
    if baseline_ap is None:
        return ("accuracy", f"no baseline mAP for model {record.identity.model} to check the budget against")
    ap = _ap_points(record)
    if ap is None:
        return ("accuracy", "its screening accuracy pass gave no mAP")
    drop = baseline_ap - ap
    limit = margin * map_drop
    if drop > limit + 1e-9:
        budget = f"the budget of {map_drop:g}" if margin == 1.0 else (
            f"the screening limit of {limit:g} ({margin:g} x the budget of {map_drop:g})")
        return ("accuracy", f"mAP {ap:.2f} on the {subset_n}-image screening subset is {drop:.2f} points below "
                            f"the baseline's {baseline_ap:.2f}, past {budget}")
    return None


class NothingSurvived(Exception):
    """No candidate is left to measure; `exit_status` is 2 when the plan left nothing that can
    run, 1 when a run failed (a screening process, the baseline's)."""

    def __init__(self, message: str, exit_status: int):
        super().__init__(message)
        self.exit_status = exit_status


def nothing_survived(display_name: str, candidates: Sequence[Candidate], screen_dir: Path | None) -> NothingSurvived:
    pruned = [c for c in candidates if c.pruned is not None]
    lines = [f"  {candidate_text(c.name, c.precision, c.batch)} ({c.model}): {c.pruned[0]}: {c.pruned[1]}"
             for c in pruned if c.pruned is not None]
    where = f" (screening run: {screen_dir})" if screen_dir is not None else " (nothing was screened)"
    failed = any(c.pruned is not None and c.pruned[0] == "failed" for c in pruned)
    return NothingSurvived(f"{display_name}: no candidate survived screening{where}; nothing to measure. "
                           f"Pruned ({len(pruned)}):\n" + "\n".join(lines), 1 if failed else 2)


class BudgetedLauncher:
    """The local launcher, one unit at a time, asking `decide` before each: a unit it refuses
    gets a `skipped` record saying why (so the run folder says what was not tried). `after`
    sees each record that ran, with its wall time, once it is written. `walls` holds the units
    that ran (a process each) and `ran_cells` their cells; `refused` the units `decide` kept
    from starting."""

    name = "local"

    def __init__(self, decide: Callable[[WorkUnit], str | None],
                 after: Callable[[WorkUnit, dict[str, Any], float], None] = lambda unit, record, wall: None,
                 order: Callable[[Sequence[WorkUnit]], list[WorkUnit]] = list):
        self.decide = decide
        self.after = after
        self.order = order
        self.inner = LocalLauncher()
        self.walls: dict[str, float] = {}
        self.ran_cells: set[str] = set()
        self.refused: list[WorkUnit] = []

    def run(self, units: Sequence[WorkUnit], store: RunStore, events: Events) -> None:
        for unit in self.order(units):
            why = self.decide(unit)
            if why is not None:
                self.refused.append(unit)
                events.done(unit, outcome_record(unit.cell, "skipped", why, utc_now()))
                continue
            started = time.monotonic()
            records: list[dict[str, Any]] = []
            self.inner.run([unit], store, Events(done=_collecting(events.done, records), started=events.started,
                                                 phase=events.phase))
            self.walls[unit.key] = time.monotonic() - started
            self.ran_cells.add(unit.cell_id)
            for record in records:
                self.after(unit, record, self.walls[unit.key])


def screened_counts(launcher: BudgetedLauncher) -> str:
    """The screening step's line: the processes that started (one per candidate) and the
    candidates the time budget kept from starting, never counted as processes."""
    text = f"{len(launcher.walls)} screening process(es)"
    return text + (f", {len(launcher.refused)} candidate(s) not tried (the time budget)" if launcher.refused else "")


def measured_counts(launcher: BudgetedLauncher, chosen: int) -> str:
    """The measurement step's line: of the configurations chosen, those that ran at least one
    process, the processes that ran, and what the time budget kept from starting (a skipped
    record is in results.json but is no process)."""
    refused_cells = {u.cell_id for u in launcher.refused}
    untouched = refused_cells - launcher.ran_cells
    cut_short = refused_cells & launcher.ran_cells  # some of its processes ran, not all
    if not launcher.refused:
        return f"{chosen} configuration(s), {len(launcher.walls)} process(es)"
    parts = [f"{len(untouched)} configuration(s) not measured"] if untouched else []
    parts += [f"{len(cut_short)} with fewer processes"] if cut_short else []
    return (f"{chosen - len(untouched)} of {chosen} configuration(s), {len(launcher.walls)} process(es); "
            f"{len(launcher.refused)} process(es) not started (the time budget): {', '.join(parts)}")


def _collecting(done: Callable[[WorkUnit, dict[str, Any]], None],
                into: list[dict[str, Any]]) -> Callable[[WorkUnit, dict[str, Any]], None]:
    def collect(unit: WorkUnit, record: dict[str, Any]) -> None:
        done(unit, record)
        into.append(record)

    return collect


def _execute(store: RunStore, loaded: LoadedPlan, launcher: Any, console: Any) -> tuple[int, ResultsFile]:
    from harness.results import read_run
    from harness.run.execute import execute

    code = execute(store, loaded, console=console, launcher=launcher)
    return code, read_run(store.run_dir).results


def process_seconds(protocol: LatencyProtocol, latency_s: float) -> float:
    """The timed part of one worker process at `latency_s` per call, as the runtime runs it:
    warm-up until both its count and its time are met, then the sustained duration, or
    measurement until both its count and its time are met (capped at max_seconds)."""
    warmup = max(protocol.warmup_iterations * latency_s, protocol.warmup_seconds)
    if protocol.sustained is not None:
        phase = protocol.sustained.duration_s
    else:
        phase = min(max(protocol.min_iterations * latency_s, protocol.min_seconds), protocol.max_seconds)
    return warmup + phase


@dataclass
class _Screened:
    """What one screening process showed: its wall time, its accuracy pass's, its median call."""

    wall_s: float
    accuracy_s: float
    latency_s: float | None  # per call (per batch), None when it measured nothing


@dataclass
class _Estimate:
    """Projections from what has run, per candidate: a measured process costs what its
    screening process cost beyond the screening protocol's timed phases (start-up, model load,
    the first calls) plus the full protocol's phases at the latency screening saw, times the
    candidate's repeats; one full accuracy pass, scaled from the subset's."""

    screen_protocol: LatencyProtocol
    default_protocol: LatencyProtocol  # a candidate with no expanded protocol (none in practice)
    accuracy_scale: float = 1.0  # full evaluation images / screening subset
    screened: dict[tuple[str, str, str, int], _Screened] = field(default_factory=dict)

    def screen(self) -> float:
        """Seconds a screening cell takes, from those so far."""
        walls = [s.wall_s for s in self.screened.values()]
        return statistics.mean(walls) if walls else 0.0

    def _seen(self, c: Candidate) -> _Screened | None:
        seen = self.screened.get(_cand_key(c))
        if seen is not None and seen.latency_s is not None:
            return seen
        timed = [s for s in self.screened.values() if s.latency_s is not None]
        if not timed:
            return None
        # Not screened yet (or it measured nothing): the cells so far stand in for it.
        return _Screened(statistics.mean(s.wall_s for s in timed), statistics.mean(s.accuracy_s for s in timed),
                         statistics.mean(s.latency_s or 0.0 for s in timed))

    def process(self, c: Candidate) -> tuple[float, float]:
        """(seconds of one measured process without the accuracy pass, seconds of the pass)."""
        seen = self._seen(c)
        if seen is None:
            return 0.0, 0.0
        lat = seen.latency_s or 0.0
        overhead = max(0.0, seen.wall_s - seen.accuracy_s - process_seconds(self.screen_protocol, lat))
        full = c.protocol or self.default_protocol
        return overhead + process_seconds(full, lat), seen.accuracy_s * self.accuracy_scale

    def measured(self, c: Candidate) -> float:
        """Seconds for candidate `c` at length: its repeats, one full accuracy pass."""
        per_process, accuracy_s = self.process(c)
        repeats = (c.protocol or self.default_protocol).repeats or 1
        return repeats * per_process + accuracy_s


def stage2_skip(c: Candidate | None, first_process: bool, estimate: _Estimate, elapsed: float, deadline: float,
                max_minutes: float) -> str | None:
    """Why a measurement process is not started (it would end past the deadline), or None. The
    baselines always run: without them no mAP drop exists."""
    if c is None or c.baseline:
        return None
    per_process, accuracy_s = estimate.process(c)
    projected = elapsed + per_process + (accuracy_s if first_process else 0.0)
    if projected <= deadline:
        return None
    return (f"not measured: the time budget (--max-minutes {max_minutes:g}) would be passed "
            f"(projected {projected / 60:.1f} min with this process)")


def _evaluation_images(plan: Plan, plan_dir: Path) -> int | None:
    dataset = plan.dataset
    if dataset is None:
        return None
    if dataset.subset.n is not None:
        return dataset.subset.n
    if dataset.sample:
        return dataset.sample_images - (dataset.calibration.images if dataset.calibration else 0)
    if dataset.images:
        folder = Path(dataset.images).expanduser()
        folder = folder if folder.is_absolute() else plan_dir / folder
        try:
            return sum(1 for entry in folder.iterdir() if entry.is_file())
        except OSError:
            return None
    return None


def tune(loaded: LoadedPlan, budget: Budget, *, output: Path | None = None, console: Any = None,
         notes: Sequence[str] = ()) -> Outcome:
    from harness.run.execute import start_run
    from harness.run.progress import make_console

    plan = loaded.plan
    if plan.dataset is None or not plan.accuracy.enabled:
        raise UserError(f"{loaded.display_name}: dataset: bench tune checks the mAP budget, so the plan needs a "
                        "`dataset` (and accuracy.enabled: true)")
    if len(plan.models) > 1:
        # Each model's budget is judged against its own baseline, so a winner and fronts pooled
        # over models would compare configurations that answer different questions.
        raise UserError(f"{loaded.display_name}: models: bench tune searches one model at a time; the plan has "
                        f"{len(plan.models)} ({', '.join(m.name for m in plan.models)}): tune each in a plan of its own")
    if plan.scenario != "single_stream":
        raise UserError(f"{loaded.display_name}: scenario: bench tune searches single-stream cells; "
                        "a server plan's levels are not one latency")
    console = console or make_console()
    clock = Clock()
    deadline = budget.max_minutes * 60.0
    spec = plan.tune or TuneSpec()  # the section's defaults where the plan has none
    subset_n = spec.subset_images
    margin = spec.screen_map_margin
    per_image = len(budget.batches) > 1
    space = build_space(loaded, list(budget.batches))
    all_notes = [*notes, *space.notes]
    alive = apply_limit(space.alive(), spec.max_candidates)
    baselines = [candidate_text(c.name, c.precision, c.batch) for c in space.candidates if c.baseline]
    clock.step("space", f"{len(space.candidates)} candidates, {len(alive)} to screen"
               + (f"; baseline {', '.join(baselines)} (tune.json's notes say why)" if baselines else "; no baseline"))
    base = Path(output) if output is not None else Path(plan.output)
    plan_dir = loaded.plan_dir

    # -- stage 1: screening ------------------------------------------------------------------
    protocol = screen_protocol(plan)
    full_images = _evaluation_images(plan, plan_dir)
    estimate = _Estimate(protocol, plan.protocol, accuracy_scale=max(1.0, (full_images or subset_n) / subset_n))
    screen_results: ResultsFile | None = None
    screen_dir: Path | None = None
    by_key: dict[tuple[str, str, str, int], Candidate] = {_cand_key(c): c for c in alive}
    survivors_so_far: list[Candidate] = []

    def decide(unit: WorkUnit) -> str | None:
        cand = by_key.get(_cell_key(unit.cell))
        if cand is None or cand.baseline or not estimate.screened:
            return None  # the baselines always run: without them no mAP drop exists
        projected = (clock.elapsed() + estimate.screen() + estimate.measured(cand)
                     + sum(estimate.measured(c) for c in survivors_so_far))
        if projected > deadline:
            return (f"not tried: the time budget (--max-minutes {budget.max_minutes:g}) would be passed "
                    f"(projected {projected / 60:.1f} min with this candidate screened and measured)")
        return None

    def note(unit: WorkUnit, record: dict[str, Any], wall: float) -> None:
        acc = record.get("accuracy") or {}
        acc_s = float(acc["wall_s"]) if isinstance(acc.get("wall_s"), (int, float)) else 0.0
        measured = record.get("status") in MEASURED_STATUSES
        p50 = ((record.get("latency") or {}).get("stats") or {}).get("p50")
        latency_s = float(p50) / 1000.0 if measured and isinstance(p50, (int, float)) else None
        cand = by_key.get(_cell_key(unit.cell))
        if cand is None:
            return
        estimate.screened[_cand_key(cand)] = _Screened(wall, acc_s, latency_s)
        if measured:
            survivors_so_far.append(cand)

    # The cells in apply_limit's order: the screening plan expands them runtime by runtime.
    position = {_cand_key(c): i for i, c in enumerate(alive)}
    launcher = BudgetedLauncher(decide, note, order=lambda units: sorted(
        units, key=lambda u: position.get(_cell_key(u.cell), len(position))))
    if alive:
        screen_plan = screening_plan(loaded, alive, space, protocol, subset_n)
        screen_loaded = _loaded(screen_plan, loaded, "# bench tune: screening run (stage 1)\n")
        store = start_run(screen_loaded, base)
        screen_dir = store.run_dir
        _, screen_results = _execute(store, screen_loaded, launcher, console)
    clock.step("screen", screened_counts(launcher))

    # -- screening verdicts ----------------------------------------------------------------
    screened: list[Candidate] = []
    facts: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    if screen_results is not None:
        groups = group_by_cell(screen_results.cells)
        records = {_cell_key(primary_record(g)): primary_record(g) for g in groups.values()}
        base_ap = {c.model: _ap_points(records[_cand_key(c)]) for c in alive
                   if c.baseline and _cand_key(c) in records}
        for c in alive:
            record = records.get(_cand_key(c))
            if record is None:
                c.pruned = ("failed", "no screening record")
                continue
            wall = launcher.walls.get(record.cell_id)
            ap = _ap_points(record)
            ref = base_ap.get(c.model)
            drop = None if ap is None or ref is None else ref - ap
            facts[_cand_key(c)] = {"screen_cell": record.cell_id, "screen_s": wall, "screen_ap": ap,
                                   "screen_map_drop": drop,
                                   "screen_latency_ms": _statistic(record, budget.latency, per_image)}
            c.pruned = screen_verdict(record, ref, budget.map_drop, subset_n, margin)
            if c.pruned is None:
                screened.append(c)

    # -- stage 2: the survivors at length ----------------------------------------------------
    chosen = _choose_for_measurement(screened, facts, estimate, clock, deadline)
    for c in screened:
        if c not in chosen:
            c.pruned = ("time", "passed screening; the time left (--max-minutes) held no full measurement of it")
    measure_results: ResultsFile | None = None
    header = (f"# bench tune {plan.name}: the survivors of screening, measured with the plan's full protocol\n")
    if not chosen:
        raise nothing_survived(loaded.display_name, space.candidates, screen_dir)
    final_plan = plan_with(loaded, chosen, space)
    final_loaded = _loaded(final_plan, loaded, header)
    store = start_run(final_loaded, base)
    run_dir = store.run_dir
    measured_key = {_cand_key(c): c for c in chosen}
    started_cells: set[str] = set()

    def decide_measure(unit: WorkUnit) -> str | None:
        first = unit.cell_id not in started_cells
        why = stage2_skip(measured_key.get(_cell_key(unit.cell)), first, estimate, clock.elapsed(), deadline,
                          budget.max_minutes)
        if why is None:
            started_cells.add(unit.cell_id)
        return why

    measure_launcher = BudgetedLauncher(decide_measure)
    code, measure_results = _execute(store, final_loaded, measure_launcher, console)
    clock.step("measure", measured_counts(measure_launcher, len(chosen)))

    result = _result(loaded, budget, space, chosen, facts, measure_results, subset_n, protocol, screen_dir,
                     run_dir, clock, deadline, all_notes)
    from harness.tune.tuned import write_tuned

    tuned_name = write_tuned(loaded, space, result, chosen, run_dir)
    result = result.model_copy(update={"tuned_plan": tuned_name})
    clock.step("report")
    result = result.model_copy(update={"steps": clock.steps, "elapsed_s": round(clock.elapsed(), 3),
                                       "over_time": clock.elapsed() > deadline})
    RunStore(run_dir).write_replace("tune.json", dumps(result.model_dump(mode="json")))
    from harness.report.render import render_run

    render_run(run_dir)
    status = 0 if result.winner is not None and code in (0, 1) else 1
    return Outcome(result, run_dir, status)


def _choose_for_measurement(screened: list[Candidate], facts: dict[Any, dict[str, Any]], estimate: _Estimate,
                            clock: Clock, deadline: float) -> list[Candidate]:
    """The baselines, then the survivors on the screening front (latency against mAP), then the
    rest fastest first, as many as the time left holds."""
    def lat(c: Candidate) -> float:
        value = facts.get(_cand_key(c), {}).get("screen_latency_ms")
        return float(value) if value is not None else float("inf")

    def key(c: Candidate) -> str:
        return "|".join(map(str, _cand_key(c)))

    points = [pareto.Point(key(c), lat(c), float(facts.get(_cand_key(c), {}).get("screen_ap") or 0.0))
              for c in screened]
    on_front = {p.key for p in pareto.front(points, higher_is_better=True)}
    order = sorted(screened, key=lambda c: (not c.baseline, key(c) not in on_front, lat(c)))
    chosen: list[Candidate] = []
    planned = 0.0
    for c in order:
        need = estimate.measured(c)
        if c.baseline or clock.elapsed() + planned + need <= deadline:
            chosen.append(c)
            planned += need
    return chosen


def _result(loaded: LoadedPlan, budget: Budget, space: Space, chosen: list[Candidate], facts: dict[Any, dict[str, Any]],
            results: ResultsFile, subset_n: int, protocol: LatencyProtocol, screen_dir: Path | None, run_dir: Path,
            clock: Clock, deadline: float, notes: list[str]) -> TuneResult:
    per_image = len(budget.batches) > 1
    groups = group_by_cell(results.cells)
    by_key = {_cell_key(primary_record(g)): g for g in groups.values()}
    measured: dict[tuple[str, str, str, int], dict[str, Any]] = {}
    base_ap: dict[str, float | None] = {}
    for c in chosen:
        group = by_key.get(_cand_key(c))
        if group is None:
            continue
        per_process = [v for r in group if (v := _statistic(r, budget.latency, per_image)) is not None]
        primary = primary_record(group)
        measured[_cand_key(c)] = {
            "cell_id": primary.cell_id, "process_latency_ms": per_process,
            "latency_ms": statistics.median(per_process) if per_process else None,
            "ap": _ap_points(primary), "status": primary.status, "reason": primary.reason,
            **_memory(group, results.derived.get(primary.cell_id)),
        }
        if c.baseline:
            base_ap[c.model] = _ap_points(primary)
    candidates: list[TuneCandidate] = []
    for c in space.candidates:
        screen = facts.get(_cand_key(c), {})
        m = measured.get(_cand_key(c), {})
        ref = base_ap.get(c.model)
        drop = None if m.get("ap") is None or ref is None else ref - m["ap"]
        within = None if drop is None else drop <= budget.map_drop + 1e-9
        outcome = "measured"
        kind: str | None = None
        reason: str | None = None
        if c.pruned is not None:
            kind, reason = c.pruned
            screened_ok = screen.get("screen_latency_ms") is not None
            if kind in ("time", "limit"):
                outcome = "screened" if screened_ok and kind == "time" else "untried"
            else:
                outcome = "pruned"
        elif m.get("latency_ms") is None and str(m.get("reason") or "").startswith("not measured"):
            # stage 2's time budget skipped every process of it: it passed screening only
            kind, reason, outcome = "time", m["reason"], "screened"
        elif m.get("latency_ms") is None:
            kind, reason = "failed", m.get("reason") or "no measured process"
        candidates.append(TuneCandidate(
            name=c.name, model=c.model, runtime=c.runtime, precision=c.precision, batch=c.batch,
            settings=json.loads(json.dumps(c.settings)), is_baseline=c.baseline, outcome=outcome,  # type: ignore[arg-type]
            reason=reason, reason_kind=kind,  # type: ignore[arg-type]
            screen_cell=screen.get("screen_cell"), screen_latency_ms=screen.get("screen_latency_ms"),
            screen_ap=screen.get("screen_ap"), screen_map_drop=screen.get("screen_map_drop"),
            screen_s=screen.get("screen_s"),
            cell_id=m.get("cell_id"), latency_ms=m.get("latency_ms"), process_latency_ms=m.get("process_latency_ms", []),
            ap=m.get("ap"), map_drop=drop, memory_bytes=m.get("memory_bytes"), memory_kind=m.get("memory_kind"),
            memory_method=m.get("memory_method"), memory_reason=m.get("memory_reason"),
            within_budget=within if m.get("latency_ms") is not None else None,
        ))
    # One plan has one device, so every measured cell's memory is of one kind; should they
    # differ, the memory front and chart take the first measured cell's and leave the rest out.
    memory_kind = next((c.memory_kind for c in candidates if c.memory_kind), "host_rss")
    if any(_random_weights(g, results.derived.get(primary_record(g).cell_id)) for g in groups.values()):
        notes = [*notes, RANDOM_WEIGHTS_NOTE]
    candidates = _with_fronts(candidates, memory_kind)
    spec = loaded.plan.tune or TuneSpec()
    winner, why, tie = _winner(candidates, budget, spec.tie_margin_pct)
    neighbours = _neighbours(candidates, winner, spec.neighbours)
    return TuneResult(
        plan_name=loaded.plan.name, budget_map_drop=budget.map_drop, latency_stat=budget.latency,  # type: ignore[arg-type]
        per_image=per_image, batches=list(budget.batches), scope=space.scope, max_minutes=budget.max_minutes,
        subset_images=subset_n, screen_protocol=protocol.model_dump(mode="json"),
        screen_run=str(screen_dir) if screen_dir else None, memory_kind=memory_kind,  # type: ignore[arg-type]
        baseline=next((c.cell_id for c in candidates if c.is_baseline and c.cell_id), None),
        candidates=candidates, winner=winner, winner_why=why, tie_break=tie, neighbours=neighbours,
        elapsed_s=round(clock.elapsed(), 3), notes=notes,
    )


# The rest of the report's words for a run on random weights (harness/report/terminal.py).
RANDOM_WEIGHTS_NOTE = ("random weights: latency and memory are real, mAP is meaningless: the latency-against-mAP "
                       "front and the mAP budget compare noise, not accuracy")


def _random_weights(group: Sequence[CellRecord], derived: DerivedEntry | None) -> bool:
    """Whether a measured cell drew its weights at random: the record's flag, finalize's, or
    the identity's weights kind (the rules the report's cell views read, harness/report/rundata.py)."""
    return any(r.random_weights or r.identity.weights_kind == "random" for r in group) or bool(
        derived is not None and derived.random_weights)


def _with_fronts(candidates: list[TuneCandidate], memory_kind: str) -> list[TuneCandidate]:
    out = []
    measured = [c for c in candidates if c.latency_ms is not None]
    map_points = [pareto.Point(c.cell_id or c.name, c.latency_ms, c.ap) for c in measured  # type: ignore[arg-type]
                  if c.ap is not None]
    with_memory = [c for c in measured if c.memory_bytes is not None and c.memory_kind == memory_kind]
    if memory_kind == "device":
        # Device memory read two ways (NVML's per-process figure, torch's allocator peak where
        # NVML cannot see the process) is two quantities: the front holds one, NVML's if any.
        methods = [c.memory_method for c in with_memory]
        keep = "nvml_process" if "nvml_process" in methods else max(set(methods), key=methods.count, default=None)
        with_memory = [c for c in with_memory if c.memory_method == keep]
    mem_points = [pareto.Point(c.cell_id or c.name, c.latency_ms, float(c.memory_bytes))  # type: ignore[arg-type]
                  for c in with_memory]
    map_front = {p.key for p in pareto.front(map_points, higher_is_better=True)}
    mem_front = {p.key for p in pareto.front(mem_points, higher_is_better=False)}
    for c in candidates:
        key = c.cell_id or c.name
        out.append(c.model_copy(update={"on_front_map": key in map_front and c.latency_ms is not None,
                                        "on_front_memory": key in mem_front and c.latency_ms is not None}))
    return out


def _winner(candidates: list[TuneCandidate], budget: Budget,
            margin_pct: float = TIE_MARGIN_PCT) -> tuple[str | None, str, str | None]:
    """The fastest measured configuration within the budget, by the median over processes.
    Another one within the budget ties with it when Welch's t-test on the log of each process's
    statistic cannot tell them apart (p >= TIE_P_VALUE) and its median is at most `margin_pct`
    percent slower; the tie is decided by the higher mAP, then the lower memory (a missing
    figure loses), then the lower median. One that the test cannot tell apart but that is
    further off is no tie: the result says the order is not established at these process
    counts. With one process a side no test exists and the lower median decides, which the
    result says."""
    from harness.measure.repeats import compare_processes

    within = sorted((c for c in candidates if c.within_budget and c.latency_ms is not None),
                    key=lambda c: c.latency_ms or 0.0)
    stat = "p99" if budget.latency == "p99" else "median"
    label = latency_label(stat)
    if not within:
        return None, f"no measured configuration is within the budget of {budget.map_drop:g} AP points", None
    fastest = within[0]
    tied = [fastest]
    untested: list[str] = []
    unresolved: list[str] = []
    tests: list[str] = []
    for other in within[1:]:
        test = compare_processes(fastest.process_latency_ms, other.process_latency_ms)
        if test.p_value is None:
            untested.append(f"{other.cell_id} is {test.change_pct:+.1f}% against it; {test.test}, so the lower "
                            "median decides")
        elif test.p_value >= TIE_P_VALUE:
            described = (f"{other.cell_id}: {_test_label(test.test, stat)}, p = {test.p_value:.2g}, "
                         f"change {test.change_pct:+.1f}%")
            if abs(test.change_pct) <= margin_pct:
                tied.append(other)
                tests.append(described)
            else:
                unresolved.append(described)

    def ap(c: TuneCandidate) -> float:
        return c.ap if c.ap is not None else -math.inf

    def memory(c: TuneCandidate) -> float:
        return float(c.memory_bytes) if c.memory_bytes is not None else math.inf

    pick = min(tied, key=lambda c: (-ap(c), memory(c), c.latency_ms or 0.0))
    why = (f"the lowest latency, {label} ({pick.latency_ms:.4g} ms"
           f"{' per image' if len(budget.batches) > 1 else ''}) among the {len(within)} measured configuration(s) "
           f"within {budget.map_drop:g} AP points of the baseline")
    unsettled = (f"not significantly slower than the fastest but more than {margin_pct:g}% off its median, so no "
                 f"tie: the lower median decides, and more processes would tell whether the order holds "
                 f"({'; '.join(unresolved)})") if unresolved else None
    if len(tied) == 1:
        notes = [n for n in (untested[0] if untested else None, unsettled) if n]
        return pick.cell_id, why, ("; ".join(notes) or None)
    rest = [c for c in tied if c is not pick]
    same_ap = [c for c in rest if ap(c) == ap(pick)]
    if not same_ap:
        decided = "the higher mAP"
    elif all(memory(pick) < memory(c) for c in same_ap):
        decided = ("the higher mAP, then the lower memory" if len(same_ap) < len(rest)
                   else "the lower memory (the mAP being equal)")
    else:
        decided = "the lower median latency (mAP and memory being equal)"
    if pick is not fastest:
        why = (f"tied with the fastest ({fastest.cell_id}, {fastest.latency_ms:.4g} ms) and chosen by {decided}, "
               f"among the {len(within)} measured configuration(s) within {budget.map_drop:g} AP points of the "
               f"baseline; its latency, {label}, is {pick.latency_ms:.4g} ms"
               f"{' per image' if len(budget.batches) > 1 else ''}")
    names = ", ".join(str(c.cell_id) for c in tied)
    tie = (f"{names} tie with the fastest (not significantly different and within {margin_pct:g}% of its median: "
           f"{'; '.join(tests)}); decided by {decided}")
    return pick.cell_id, why, (f"{tie}. {unsettled[0].upper()}{unsettled[1:]}" if unsettled else tie)


def _test_label(label: str, stat: str) -> str:
    """compare_processes names its inputs "process medians"; here they are each process's
    `stat`, so the label says so when that is p99."""
    return label.replace("process medians", "process p99s") if stat == "p99" else label


def _neighbours(candidates: list[TuneCandidate], winner: str | None, n: int) -> list[str]:
    if winner is None or n == 0:
        return []
    pool = [c for c in candidates if c.cell_id and c.cell_id != winner and c.latency_ms is not None and c.within_budget]
    pool.sort(key=lambda c: (not c.on_front_map, c.latency_ms))
    return [c.cell_id for c in pool[:n] if c.cell_id]
