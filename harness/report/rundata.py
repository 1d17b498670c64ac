"""Reading a run folder, and the per-cell view the report, the summary and `compare` share.

A run folder holds `results.json` (written at the end of a run) or, when a run was cut short,
only `run.json` and `cells/*.json`. Both are read through the results model (harness.results):
migrated when older, refused when newer or damaged, with a `UserError` naming the file.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.results import (
    MEASURED_STATUSES,
    STATUS_ORDER,
    Accuracy,
    BudgetVerdict,
    CellIdentity,
    CellRecord,
    CellResources,
    DerivedEntry,
    Environment,
    GpuInfo,
    ResultsError,
    ResultsFile,
    WeightsKind,
    group_by_cell,
    primary_record,
    read_run,
    worst_status,
)

# Statuses whose latency is a measurement (possibly flagged); the others have none to rank.
MEASURED = MEASURED_STATUSES


@dataclass(frozen=True)
class LoadedRun(Mapping[str, Any]):
    """A run read through the results model: `results` typed, `folder` the run folder.

    It also reads as the JSON it stands for, in the current schema (`run["cells"][0]["latency"]`),
    for scripts and tests: keys "schema_version", "run", "cells", "derived", "run_dir"."""

    results: ResultsFile
    folder: Path
    results_path: Path | None  # None: rebuilt from run.json and cells/

    @cached_property
    def _json(self) -> dict[str, Any]:
        data = self.results.model_dump(mode="json")
        return {
            "schema_version": data["schema_version"],
            "run": data["run"],
            "cells": data["cells"],
            "derived": data["derived"],
            "run_dir": str(self.folder),
        }

    def __getitem__(self, key: str) -> Any:
        return self._json[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._json)

    def __len__(self) -> int:
        return len(self._json)


def load_run(run_dir: Path) -> LoadedRun:
    """A run folder, or a `results.json` file directly. Without results.json the run is rebuilt
    from run.json and cells/*.json (in the planned order); `derived` is then empty. Every cell
    file is read either way, so a damaged one is refused, never papered over by results.json."""
    try:
        read = read_run(Path(run_dir))
    except ResultsError as exc:
        raise UserError(str(exc)) from None
    return LoadedRun(read.results, read.folder, read.results_path)


# ----------------------------------------------------------------------------- cell view


def _f(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _points(value: float | None) -> float | None:
    """pycocotools' AP (0..1) as COCO points (0..100)."""
    v = _f(value)
    return None if v is None or v < 0 else v * 100.0  # pycocotools writes -1 for "no data"


WEIGHTS_WORDS: dict[WeightsKind, str] = {"trained": "trained", "random": "random", "from_file": "from file"}


@dataclass
class CellView:
    """One cell with the fields every output prints, taken once from its typed record."""

    record: CellRecord
    derived: DerivedEntry
    identity: CellIdentity
    cell_id: str
    model: str
    variant: str | None
    source: str
    runtime: str  # the runtime's key: its label, else its name
    runtime_name: str
    precision: str
    batch: int
    resolution: int
    scope: str
    device: str
    status: str
    reason: str | None
    flags: list[str]
    random_weights: bool
    weights_kind: WeightsKind
    is_reference: bool
    timer: str | None = None
    timed_region: str | None = None
    samples: list[float] = field(default_factory=list)
    median: float | None = None
    p90: float | None = None
    p99: float | None = None
    mean: float | None = None
    cov: float | None = None
    ci: tuple[float, float] | None = None
    throughput: float | None = None
    pause_ms: float | None = None
    accuracy: Accuracy | None = None  # the cell's own accuracy pass, or its sibling scope's
    ap: float | None = None  # points
    ap50: float | None = None
    mask_ap: float | None = None
    map_delta: float | None = None  # points, against the model's reference cell
    accuracy_from: str | None = None  # the sibling cell whose accuracy pass this cell shares
    regressed: bool = False
    images: int | None = None
    # Annotated dataset classes the model has no class for, and whether the AP counts them.
    unpredictable: list[str] = field(default_factory=list)
    annotated_classes: int | None = None
    ap_over: str | None = None
    # Every process record of the cell, in repeat order (`record` is the one that speaks for
    # it: harness.results.primary_record), and its latency over them.
    processes: list[CellRecord] = field(default_factory=list)
    process_medians: list[float] = field(default_factory=list)
    rerun_ci: tuple[float, float] | None = None  # where a re-run's headline is expected, 95%
    between_spread: float | None = None
    # Memory, energy and artifact size over the processes (harness.measure.resources), and the
    # cell's budgets judged (harness.report.budgets.attach fills them in).
    resources: CellResources | None = None
    budgets: list[BudgetVerdict] = field(default_factory=list)

    @property
    def repeats(self) -> int:
        return len(self.processes) or 1

    @property
    def config_key(self) -> tuple[Any, ...]:
        """The configuration (both scopes of one artifact), on one kind of hardware."""
        slug = self.record.placement.gpu_slug if self.record.placement else None
        return (*self.identity.configuration, slug)

    @property
    def config_label(self) -> str:
        """runtime · precision · batch · resolution [· NMS placement], the words a reader scans for."""
        label = f"{self.runtime} · {self.precision} · b{self.batch} · {self.resolution}px"
        return label if self.identity.nms is None else f"{label} · NMS {self.identity.nms.replace('_', '-')}"

    @property
    def weights_word(self) -> str:
        return "random" if self.random_weights else WEIGHTS_WORDS[self.weights_kind]

    @property
    def gpu(self) -> GpuInfo | None:
        """The environment's entry for the GPU this cell ran on (capture lists only the GPUs
        used, each with its `cuda_index`), else the first entry; None for CPU cells."""
        if not self.device.startswith("cuda"):
            return None
        index = self.device.split(":", 1)[1] if ":" in self.device else "0"
        gpus = self.record.environment.gpus
        return next((g for g in gpus if str(g.cuda_index) == index), gpus[0] if gpus else None)

    @property
    def gpu_identity(self) -> tuple[str, str] | None:
        """(host, GPU UUID): what tells two physical GPUs apart, across hosts too."""
        gpu = self.gpu
        if gpu is None or not gpu.uuid:
            return None
        return (self.record.environment.hostname or "", gpu.uuid)

    @property
    def metric(self) -> float | None:
        """The cell's primary accuracy figure in points: box AP, else mask AP."""
        return self.ap if self.ap is not None else self.mask_ap

    @property
    def measured(self) -> bool:
        return self.status in MEASURED and self.median is not None

    @property
    def is_server(self) -> bool:
        """A server cell: its figures are per load level (record.serve), not a single stream's."""
        return self.record.serve is not None

    @property
    def gate_passed(self) -> bool:
        return self.status != "accuracy_regression" and not self.regressed

    @property
    def unpredictable_note(self) -> str | None:
        """The words that go wherever this cell's mAP is shown, when the model cannot predict
        some of the classes the dataset annotates."""
        if not self.unpredictable:
            return None
        n, names = len(self.unpredictable), ", ".join(self.unpredictable)
        of = f" of {self.annotated_classes}" if self.annotated_classes else ""
        counted = (
            "they count as AP 0 in this mAP (COCO's standard)"
            if self.ap_over == "annotated"
            else "they are left out of this mAP (a schema 1 result), which makes it look higher"
        )
        return f"the model cannot predict {n}{of} annotated class{'es' if n > 1 else ''} ({names}): {counted}"


def _regression_reason(derived: DerivedEntry) -> str:
    gate = derived.gate
    ref = derived.reference or "its reference"
    if gate is None or gate.drop is None:
        return "failed its accuracy gate"
    overall = gate.max_map_drop is not None and gate.drop > gate.max_map_drop + 1e-9
    parts = []
    if overall:
        parts.append(f"AP fell {gate.drop:.1f} points below {ref}, past the plan's max_map_drop of {gate.max_map_drop:g}")
    if gate.class_regressed and gate.worst_class is not None and gate.worst_class_drop is not None:
        parts.append(f"class {gate.worst_class} lost {gate.worst_class_drop:.1f} AP points against {ref}, "
                     f"past the plan's max_class_drop of {gate.max_class_drop:g}")
    return "; ".join(parts) or "failed its accuracy gate"


def cell_view(record: CellRecord | Sequence[CellRecord], derived: DerivedEntry | None) -> CellView:
    """A cell from its process records (or its one record). `derived` is the run's derived
    entry for the cell (harness.accuracy.derive, the effective `status` finalize sets, and the
    latency over processes)."""
    group = [record] if isinstance(record, CellRecord) else list(record)
    record = primary_record(group)
    derived = derived or DerivedEntry()
    ident = record.identity
    view = CellView(
        record=record,
        derived=derived,
        identity=ident,
        cell_id=record.cell_id,
        model=ident.model,
        variant=ident.variant,
        source=ident.source,
        runtime=ident.runtime_key,
        runtime_name=ident.runtime,
        precision=ident.precision,
        batch=ident.batch,
        resolution=ident.resolution,
        scope=ident.scope,
        device=ident.device,
        # finalize derives the effective status (a tripped accuracy gate); take the worse of
        # the two so a hand-edited or half-derived file can't hide a failure.
        status=worst_status([*(r.status for r in group), derived.status or "ok"]),
        reason=record.reason,
        flags=list(record.flags),
        random_weights=record.random_weights or bool(derived.random_weights) or ident.weights_kind == "random",
        weights_kind=ident.weights_kind,
        is_reference=ident.is_reference or derived.role == "reference",
        pause_ms=ident.protocol.pause_ms,
    )
    latency = record.latency
    if latency is not None:
        stats = latency.stats
        view.timer = latency.timer
        view.timed_region = latency.timed_region
        view.samples = [float(s) for s in latency.samples_ms if _f(s) is not None]
        view.median = _f(stats.p50)
        view.p90 = _f(stats.p90)
        view.p99 = _f(stats.p99)
        view.mean = _f(stats.mean)
        view.cov = _f(stats.cov)
        lo, hi = stats.median_ci95
        if _f(lo) is not None and _f(hi) is not None:
            view.ci = (float(lo), float(hi))
        view.throughput = _f(latency.throughput_ips)
        view.scope = latency.scope
    view.processes = group
    _use_processes(view, group, derived)
    if record.serve is not None:
        _fill_server(view)
    view.resources = derived.resources
    if view.resources is None:
        # A run rebuilt from its cell files has no derived entries: the same derivation here.
        from harness.measure.resources import resources_over_processes

        view.resources = resources_over_processes(group)
    _fill_accuracy(view, record.accuracy)
    view.map_delta = _f(derived.map_delta.AP) if derived.map_delta is not None else None
    view.regressed = bool(derived.gate and derived.gate.regressed)
    if view.status == "accuracy_regression" and record.status != "accuracy_regression":
        # The gate tripped after the cell ran: its own record doesn't say why, derived does.
        why = _regression_reason(derived)
        view.reason = f"{why}; {view.reason}" if view.reason else why
    return view


def _use_processes(view: CellView, group: list[CellRecord], derived: DerivedEntry) -> None:
    """With several processes, the cell's figures are the ones over processes: the headline
    (median of process medians) with its re-run interval, tails over every sample."""
    across = derived.across_processes
    if across is None and len(group) > 1:
        # A run rebuilt from its cell files has no derived entries: the same derivation here.
        from harness.measure.repeats import across_records

        try:
            across = across_records(group)
        except ValueError:
            across = None
    if across is None:
        return
    view.process_medians = list(across.process_medians)
    view.between_spread = across.between_spread
    view.rerun_ci = across.rerun_ci95
    if across.processes < 2:
        return
    view.median = across.headline
    view.ci = across.rerun_ci95
    view.p90, view.p99 = across.p90, across.p99
    view.throughput = across.throughput_ips
    view.samples = [float(s) for r in group if r.latency is not None and r.status in MEASURED_STATUSES
                    for s in r.latency.samples_ms]
    view.flags = sorted({f for r in group for f in r.flags} | ({"unstable_between_processes"} if across.unstable_reasons else set()))
    view.reason = _process_reasons(group, across.unstable_reasons)


def _process_reasons(group: list[CellRecord], between: list[str]) -> str | None:
    """The cell's reason over its processes: disagreement between them first, then what the
    processes said themselves, summed up (each one's figures are in its own record)."""
    parts = list(between)
    unstable = [r for r in group if r.latency is not None and r.latency.unstable_reasons]
    if unstable:
        covs = [r.latency.stats.cov for r in unstable if r.latency is not None]
        parts.append(f"within processes: {len(unstable)} of {len(group)} unstable (CoV up to {max(covs) * 100:.0f}%)")
    others = [r.reason for r in group if r.reason and not (r.latency is not None and r.latency.unstable_reasons)]
    parts += list(dict.fromkeys(o for o in others if o))
    return "; ".join(parts) or None


def _fill_server(view: CellView) -> None:
    """A server cell (harness.report.serve draws its levels): scope `server`, and its headline
    level's client latencies as the figures the table of all cells shows; its rate is the
    closed loop's peak answers per second."""
    serve = view.record.serve
    assert serve is not None
    view.scope = "server"
    view.timer = "client clock (HTTP on loopback)"
    view.timed_region = "one HTTP request on loopback: upload, decode, queue, the end-to-end stages, the JSON answer"
    level = serve.headline
    if level is not None and level.latency_ms is not None:
        q = level.latency_ms
        view.samples = list(level.samples_ms)
        view.median, view.p90, view.p99, view.mean = q.p50, q.p90, q.p99, q.mean
        view.ci = q.p50_ci95
    view.throughput = serve.peak_throughput_rps or max((lv.throughput_rps for lv in serve.levels), default=None)


def _fill_accuracy(view: CellView, accuracy: Accuracy | None) -> None:
    if accuracy is None:
        return
    view.accuracy = accuracy
    view.ap = _points(accuracy.bbox.AP)
    view.ap50 = _points(accuracy.bbox.AP50)
    view.mask_ap = _points(accuracy.segm.AP) if accuracy.segm is not None else None
    if view.metric is None:  # a keypoint model: its primary metric
        primary = accuracy.primary_metrics
        view.ap = _points(primary.AP) if primary is not None else None
    view.images = accuracy.images
    if accuracy.mapping is not None:
        view.unpredictable = list(accuracy.mapping.unpredictable_classes)
        view.annotated_classes = accuracy.mapping.annotated_classes
        view.ap_over = accuracy.mapping.ap_over


def cell_views(run: LoadedRun | ResultsFile) -> list[CellView]:
    """Views of every cell, with accuracy shared between a configuration's two scopes (the
    accuracy pass runs once per artifact; the other scope's record may leave it out) and
    mAP changes filled in from the reference cell when `derived` lacks them (rebuilt runs)."""
    results = run.results if isinstance(run, LoadedRun) else run
    views = [cell_view(group, results.derived.get(cell_id)) for cell_id, group in group_by_cell(results.cells).items()]
    by_config: dict[tuple[Any, ...], CellView] = {}
    for v in views:
        if v.metric is not None:
            by_config.setdefault(v.config_key, v)
    for v in views:
        donor = by_config.get(v.config_key)
        if v.metric is None and donor is not None and donor is not v:
            _fill_accuracy(v, donor.accuracy)
            v.accuracy_from = donor.cell_id
            if v.map_delta is None:
                v.map_delta = donor.map_delta
    references = {v.model: v for v in views if v.is_reference and v.ap is not None}
    for v in views:
        ref = references.get(v.model)
        if v.map_delta is None and not v.is_reference and v.ap is not None and ref is not None and ref.ap is not None:
            v.map_delta = v.ap - ref.ap
    return views


# ----------------------------------------------------------------------------- verdicts


@dataclass
class Verdict:
    """Per model and scope: the fastest configuration that passed its accuracy gate."""

    model: str
    scope: str
    best: CellView | None
    best_throughput: CellView | None  # set only when a batched configuration beats `best` on images/s
    candidates: int
    excluded: list[tuple[CellView, str]]
    accuracy_measured: bool


def verdicts(views: list[CellView]) -> list[Verdict]:
    severity = {s: i for i, s in enumerate(reversed(STATUS_ORDER))}
    out: list[Verdict] = []
    groups: dict[tuple[str, str], list[CellView]] = {}
    for v in views:
        groups.setdefault((v.model, v.scope), []).append(v)
    for (model, scope), cells in groups.items():
        eligible: list[CellView] = []
        excluded: list[tuple[CellView, str]] = []
        for v in cells:
            if not v.measured:
                excluded.append((v, f"{v.status}: {v.reason}" if v.reason else v.status))
            elif not v.gate_passed:
                excluded.append((v, "failed its accuracy gate" + (f" ({v.reason})" if v.reason else "")))
            else:
                eligible.append(v)
        # Lowest latency first; a tie goes to the configuration that states fewer problems.
        eligible.sort(key=lambda v: (v.median or math.inf, severity.get(v.status, 0)))
        best = eligible[0] if eligible else None
        best_tp = max(eligible, key=lambda v: v.throughput or 0.0, default=None)
        if best is not None and best_tp is not None and (best_tp is best or (best_tp.throughput or 0) <= (best.throughput or 0)):
            best_tp = None
        out.append(
            Verdict(
                model=model,
                scope=scope,
                best=best,
                best_throughput=best_tp,
                candidates=len(eligible),
                excluded=excluded,
                accuracy_measured=any(v.metric is not None for v in cells),
            )
        )
    return out


# ----------------------------------------------------------------------------- environment

# Fields expected to change from one cell to the next (clock readings, temperatures, times):
# shown apart from the configuration differences that decide comparability.
_VOLATILE = re.compile(
    r"(captured|_at$|time|temperature|temp_c|_used|free|available_bytes|utili[sz]ation|util_|"
    r"(^|\.)clocks_mhz\.|clock_event|clocks_locked_evidence|performance_state|pstate|"
    r"current_|fan|power_draw|power_w$|uptime|load_?avg|pid)",
    re.IGNORECASE,
)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as dotted keys (`gpus.0.name`), leaves as they are."""
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        if not value and prefix:
            out[prefix] = {}
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, list) and value and any(isinstance(x, (dict, list)) for x in value):
        for i, sub in enumerate(value):
            out.update(flatten(sub, f"{prefix}.{i}" if prefix else str(i)))
    else:
        out[prefix or "value"] = value
    return out


def is_volatile(key: str) -> bool:
    return bool(_VOLATILE.search(key))


def show_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    return str(value)


@dataclass
class EnvDiff:
    key: str
    volatile: bool
    values: dict[str, list[str]]  # shown value -> cell ids that had it


def environment_json(record: CellRecord) -> dict[str, Any]:
    """The record's environment as JSON values, as captured: the fields its capture wrote (a
    field an older harness did not capture is left out, not shown as null)."""
    return record.environment.model_dump(mode="json", exclude_unset=True)


def environment_table(views: list[CellView]) -> tuple[list[tuple[str, str]], list[EnvDiff]]:
    """(fields equal in every cell that recorded an environment, fields that differ)."""
    envs = {v.cell_id: flatten(environment_json(v.record)) for v in views if v.record.environment != Environment()}
    envs = {cid: env for cid, env in envs.items() if env}
    if not envs:
        return [], []
    keys: list[str] = []
    seen: set[str] = set()
    for env in envs.values():
        for key in env:
            if key not in seen:
                seen.add(key)
                keys.append(key)
    common: list[tuple[str, str]] = []
    differing: list[EnvDiff] = []
    for key in keys:
        values: dict[str, list[str]] = {}
        for cid, env in envs.items():
            shown = show_value(env[key]) if key in env else "(not recorded)"
            values.setdefault(shown, []).append(cid)
        if len(values) == 1:
            common.append((key, next(iter(values))))
        else:
            ordered = dict(sorted(values.items(), key=lambda kv: -len(kv[1])))  # majority first
            differing.append(EnvDiff(key, is_volatile(key), ordered))
    differing.sort(key=lambda d: d.volatile)
    return common, differing
