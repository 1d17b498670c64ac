"""Reading a run folder, and the per-cell view the report, the summary and `compare` share.

A run folder holds `results.json` (written at the end of a run) or, when a run was cut short,
only `run.json` and `cells/*.json`; both load to the same dict. A file written by a newer
harness is refused rather than half-read (pyperf does the same with `_JSON_VERSION`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.run.record import SCHEMA_VERSION, STATUS_ORDER, worst_status

# Statuses whose latency is a measurement (possibly flagged); the others have none to rank.
MEASURED = {"ok", "unstable", "throttled", "accuracy_regression"}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror})") from None


def _check_schema(where: Path, data: Any, what: str) -> None:
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a JSON object ({what})")
    version = data.get("schema_version")
    if not isinstance(version, int):
        raise UserError(f"{where}: has no integer `schema_version`; not a {what} of this harness")
    if version > SCHEMA_VERSION:
        raise UserError(
            f"{where}: written with results schema version {version}, but this harness reads "
            f"versions up to {SCHEMA_VERSION}; upgrade the harness to read it"
        )


def load_run(run_dir: Path) -> dict[str, Any]:
    """The run as {"schema_version", "run", "cells", "derived", "run_dir"}.

    `run_dir` is a run folder, or a `results.json` file directly. Without results.json the run
    is rebuilt from run.json and cells/*.json (in the planned order); `derived` is then empty.
    """
    path = Path(run_dir)
    if path.is_file():
        results_path, folder = path, path.parent
    elif path.is_dir():
        results_path, folder = path / "results.json", path
    else:
        raise UserError(f"{path}: no such run folder or results file")

    if results_path.is_file():
        data = _read_json(results_path)
        _check_schema(results_path, data, "results file")
        cells = data.get("cells")
        if not isinstance(cells, list) or not isinstance(data.get("run"), dict):
            raise UserError(f"{results_path}: expected `run` (object) and `cells` (list)")
        run = data["run"]
        derived = data.get("derived") or {}
    else:
        run_json = folder / "run.json"
        if not run_json.is_file():
            raise UserError(
                f"{folder}: not a run folder (no results.json, and no run.json with cells/); "
                "give the folder a `bench run` created, or its results.json"
            )
        run = _read_json(run_json)
        _check_schema(run_json, run, "run.json")
        cells = []
        for cell_file in sorted((folder / "cells").glob("*.json")):
            record = _read_json(cell_file)
            if isinstance(record, dict):
                record.setdefault("_file", str(cell_file))
            cells.append(record)
        order = {cid: i for i, cid in enumerate(run.get("cell_ids") or [])}
        cells.sort(key=lambda c: order.get(c.get("cell_id") if isinstance(c, dict) else "", len(order)))
        derived = {}
        finished = folder / "finished.json"  # written beside run.json when a run ends
        if finished.is_file() and "finished_at" not in run:
            run = {**run, "finished_at": (_read_json(finished) or {}).get("finished_at")}

    for index, record in enumerate(cells):
        where = Path(record.get("_file", f"{results_path}: cells[{index}]")) if isinstance(record, dict) else results_path
        if not isinstance(record, dict) or not isinstance(record.get("cell_id"), str):
            raise UserError(f"{where}: a cell record without a `cell_id`")
        version = record.get("schema_version", SCHEMA_VERSION)
        if isinstance(version, int) and version > SCHEMA_VERSION:
            raise UserError(
                f"{where}: cell {record['cell_id']} uses results schema version {version}; this "
                f"harness reads up to {SCHEMA_VERSION}; upgrade the harness to read it"
            )
        if record.get("status") not in STATUS_ORDER:
            raise UserError(f"{where}: cell {record['cell_id']} has unknown status {record.get('status')!r}")
    if not isinstance(derived, dict):
        raise UserError(f"{results_path}: `derived` must be an object keyed by cell id")
    if derived.get("_error"):
        # finalize records a failed derivation here rather than losing the run; say so.
        run = {**run, "derived_error": str(derived["_error"])}
    return {
        "schema_version": SCHEMA_VERSION,
        "run": run,
        "cells": cells,
        "derived": derived,
        "run_dir": str(folder),
    }


# ----------------------------------------------------------------------------- cell view


def _f(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _points(value: Any) -> float | None:
    """pycocotools' AP (0..1) as COCO points (0..100)."""
    v = _f(value)
    return None if v is None or v < 0 else v * 100.0  # pycocotools writes -1 for "no data"


@dataclass
class CellView:
    """One cell with the fields every output prints, extracted once."""

    record: dict[str, Any]
    derived: dict[str, Any]
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
    ap: float | None = None  # points
    ap50: float | None = None
    mask_ap: float | None = None
    map_delta: float | None = None  # points, against the model's reference cell
    accuracy_from: str | None = None  # the sibling cell whose accuracy pass this cell shares
    regressed: bool = False
    images: int | None = None

    @property
    def config_key(self) -> str:
        return self.cell_id.rsplit("__", 1)[0]

    @property
    def config_label(self) -> str:
        """runtime · precision · batch · resolution, the words a reader scans for."""
        return f"{self.runtime} · {self.precision} · b{self.batch} · {self.resolution}px"

    @property
    def gpu(self) -> dict[str, Any] | None:
        """The environment's entry for the GPU this cell ran on (capture lists only the GPUs
        used, each with its `cuda_index`), else the first entry; None for CPU cells."""
        if not self.device.startswith("cuda"):
            return None
        index = self.device.split(":", 1)[1] if ":" in self.device else "0"
        gpus = [g for g in (self.record.get("environment") or {}).get("gpus") or [] if isinstance(g, dict)]
        return next((g for g in gpus if str(g.get("cuda_index")) == index), gpus[0] if gpus else None)

    @property
    def gpu_identity(self) -> tuple[str, str] | None:
        """(host, GPU UUID): what tells two physical GPUs apart, across hosts too."""
        gpu = self.gpu or {}
        if not gpu.get("uuid"):
            return None
        return (str((self.record.get("environment") or {}).get("hostname") or ""), str(gpu["uuid"]))

    @property
    def metric(self) -> float | None:
        """The cell's primary accuracy figure in points: box AP, else mask AP."""
        return self.ap if self.ap is not None else self.mask_ap

    @property
    def measured(self) -> bool:
        return self.status in MEASURED and self.median is not None

    @property
    def gate_passed(self) -> bool:
        return self.status != "accuracy_regression" and not self.regressed


def _regression_reason(derived: dict[str, Any]) -> str:
    gate = derived.get("gate") or {}
    drop, limit = _f(gate.get("drop")), _f(gate.get("max_map_drop"))
    ref = derived.get("reference") or derived.get("reference_cell") or "its reference"
    if drop is None or limit is None:
        return "failed its accuracy gate"
    return f"AP fell {drop:.1f} points below {ref}, past the plan's max_map_drop of {limit:g}"


def cell_view(record: dict[str, Any], derived: dict[str, Any]) -> CellView:
    """`derived` is the run's derived entry for this cell (harness.accuracy.derive plus the
    effective `status` that finalize sets when an accuracy gate trips)."""
    if not isinstance(derived, dict):
        derived = {}
    cell = record.get("cell") or {}
    model = cell.get("model") or {}
    runtime = cell.get("runtime") or {}
    runtime_name = str(runtime.get("name", "?")) if isinstance(runtime, dict) else str(runtime)
    runtime_key = str(runtime.get("label") or runtime_name) if isinstance(runtime, dict) else runtime_name
    protocol = cell.get("protocol") or {}
    view = CellView(
        record=record,
        derived=derived,
        cell_id=record["cell_id"],
        model=str(model.get("name", record["cell_id"].split("__")[0])),
        variant=model.get("variant"),
        source=str(model.get("source", "rfdetr")),
        runtime=runtime_key,
        runtime_name=runtime_name,
        precision=str(cell.get("precision", "?")),
        batch=int(cell.get("batch") or 1),
        resolution=int(cell.get("resolution") or 0),
        scope=str(cell.get("scope", "?")),
        device=str(cell.get("device", "?")),
        # finalize derives the effective status (a tripped accuracy gate); take the worse of
        # the two so a hand-edited or half-derived file can't hide a failure.
        status=worst_status([str(record.get("status")), str(derived.get("status") or "ok")]),
        reason=record.get("reason"),
        flags=list(record.get("flags") or []),
        random_weights=bool(record.get("random_weights") or derived.get("random_weights")) or model.get("weights") == "random",
        is_reference=bool(cell.get("is_reference")) or derived.get("role") == "reference",
        pause_ms=_f(protocol.get("pause_ms")),
    )
    latency = record.get("latency")
    if isinstance(latency, dict):
        stats = latency.get("stats") or {}
        view.timer = latency.get("timer")
        view.timed_region = latency.get("timed_region")
        view.samples = [float(s) for s in latency.get("samples_ms") or [] if _f(s) is not None]
        view.median = _f(stats.get("p50"))
        view.p90 = _f(stats.get("p90"))
        view.p99 = _f(stats.get("p99"))
        view.mean = _f(stats.get("mean"))
        view.cov = _f(stats.get("cov"))
        ci = stats.get("median_ci95")
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_f(x) is not None for x in ci):
            view.ci = (float(ci[0]), float(ci[1]))
        view.throughput = _f(latency.get("throughput_ips"))
        view.scope = str(latency.get("scope", view.scope))
    _fill_accuracy(view, record.get("accuracy"))
    delta = (derived.get("map_delta") or {}).get("AP")
    view.map_delta = _f(delta)
    view.regressed = bool((derived.get("gate") or {}).get("regressed"))
    if view.status == "accuracy_regression" and record.get("status") != "accuracy_regression":
        # The gate tripped after the cell ran: its own record doesn't say why, derived does.
        why = _regression_reason(derived)
        view.reason = f"{why}; {view.reason}" if view.reason else why
    return view


def _fill_accuracy(view: CellView, accuracy: Any) -> None:
    if not isinstance(accuracy, dict):
        return
    bbox = accuracy.get("bbox") or {}
    view.ap = _points(bbox.get("AP"))
    view.ap50 = _points(bbox.get("AP50"))
    view.mask_ap = _points((accuracy.get("segm") or {}).get("AP"))
    if view.metric is None:  # a keypoint model: its primary metric
        primary = accuracy.get(str(accuracy.get("primary") or "bbox")) or {}
        view.ap = _points(primary.get("AP")) if isinstance(primary, dict) else None
    images = accuracy.get("images")
    view.images = int(images) if isinstance(images, int) else None


def cell_views(run: dict[str, Any]) -> list[CellView]:
    """Views of every cell, with accuracy shared between a configuration's two scopes (the
    accuracy pass runs once per artifact; the other scope's record may leave it out) and
    mAP changes filled in from the reference cell when `derived` lacks them (rebuilt runs)."""
    derived_all = run.get("derived") or {}
    views = [cell_view(r, derived_all.get(r["cell_id"]) or {}) for r in run["cells"]]
    by_config: dict[str, CellView] = {}
    for v in views:
        if v.metric is not None:
            by_config.setdefault(v.config_key, v)
    for v in views:
        donor = by_config.get(v.config_key)
        if v.metric is None and donor is not None and donor is not v:
            _fill_accuracy(v, donor.record.get("accuracy"))
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


def environment_table(views: list[CellView]) -> tuple[list[tuple[str, str]], list[EnvDiff]]:
    """(fields equal in every cell that recorded an environment, fields that differ)."""
    envs = {v.cell_id: flatten(v.record.get("environment") or {}) for v in views}
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


def env_lookup(env: dict[str, Any], patterns: list[str]) -> str | None:
    """The first flattened environment value whose key matches one of the regexes, in the
    order of the patterns (so callers list the most specific field first)."""
    flat = flatten(env)
    for pattern in patterns:
        rx = re.compile(pattern, re.IGNORECASE)
        for key, value in flat.items():
            if value not in (None, "", []) and rx.search(key):
                return show_value(value)
    return None
