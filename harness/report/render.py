"""`bench report RUN_FOLDER`: report.html, summary.md and results.csv from the stored results.

The report reads only the run folder (results.json, or cells/ + run.json) and never measures
anything. The HTML is one self-contained file: styles, the small sorting script, the charts
(inline SVG) and the gallery images (data: URIs) are all inside it, so it opens offline, can
be attached to a release, and makes no network request at all.
"""

from __future__ import annotations

import base64
import io
import statistics
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from harness import files
from harness.environment import monitor
from harness.environment.nvml import SLOWDOWN_REASONS  # constants only; imports no NVML
from harness.report import charts, fmt, ladder
from harness.report.nms import counts_text, nms_rows
from harness.report.published import (
    gpu_name,
    latency_detail,
    latency_sentence,
    load_reference,
    match_cells,
    overview,
)
from harness.report.rundata import (
    CellView,
    LoadedRun,
    Verdict,
    cell_views,
    environment_table,
    flatten,
    load_run,
    show_value,
    verdicts,
)
from harness.report.serve import serve_context
from harness.report.throughput import CROSS_SCOPE_LABEL, throughput_groups
from harness.report.tune import tune_context
from harness.results import DerivedEntry, TraceRow, Window

__all__ = ["load_run", "render_run", "build_context", "write_atomic", "template_env"]

# The gallery is the only part of the report whose size the data decides; these bounds keep
# the file attachable (GitHub release assets are fine at a few MB).
GALLERY_MAX_SIDE = 960
GALLERY_MAX_IMAGES = 24
GALLERY_JPEG_QUALITY = 80

STATUS_WORDS = {
    "ok": "ok",
    "unstable": "unstable",
    "throttled": "throttled",
    "accuracy_regression": "accuracy regression",
    "skipped": "skipped",
    "failed": "failed",
}


def write_atomic(path: Path, data: str | bytes) -> Path:
    """Write via a temporary file in the same folder and rename, so a reader never sees a
    half-written report and a crash leaves the previous one intact (never through a link)."""
    return files.write_replace(path, data)


def template_env() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
        # Every value a template prints is escaped unless it is Markup built by charts.py,
        # which escapes its own text: plans and model files are untrusted input.
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        ms=fmt.ms, num=fmt.num, signed=fmt.signed, pct=fmt.pct, short_hash=fmt.short_hash,
        status_word=lambda s: STATUS_WORDS.get(s, s), show=show_value, sortkey=_sortkey,
        speedup=fmt.speedup, share=fmt.share, rate=fmt.rate, points=fmt.points, mb=fmt.mb, sig=fmt.sig,
        code_spans=code_spans,
    )
    return env


def code_spans(text: str | None) -> Any:
    """Plain text with `backticked` plan fields shown as code (the rest escaped)."""
    import html as html_lib

    from markupsafe import Markup

    parts = html_lib.escape(text or "").split("`")
    return Markup("".join(f"<code>{part}</code>" if i % 2 else part for i, part in enumerate(parts)))


def _sortkey(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


# ----------------------------------------------------------------------------- context


@dataclass
class GalleryImage:
    cell: CellView
    name: str
    data_uri: str
    width: int
    height: int


def _inside(base: Path, rel: str) -> Path | None:
    """A path from a record, only if it stays inside the run folder (a results file must not
    make the report embed files from elsewhere on the machine)."""
    try:
        path = (base / rel).resolve()
        return path if path.is_relative_to(base.resolve()) and path.is_file() else None
    except (OSError, ValueError):
        return None


def gallery_paths(run_dir: Path, view: CellView) -> list[Path]:
    """The cell's gallery images: from derived["gallery"] (finalize draws them after the
    cells ran), a record["files"]["gallery"] list, or the layout gallery/<cell_id>-<n>.jpg."""
    listed: list[str] = [*(view.derived.gallery or []), *(view.record.files.gallery or [])]
    if not listed:  # the run folder layout in docs/CONTRACTS.md
        listed = [str(p.relative_to(run_dir)) for p in sorted((run_dir / "gallery").glob(f"{view.cell_id}-*.jpg"))]
    out = []
    for rel in listed:
        path = _inside(run_dir, rel)
        if path is not None and path not in out:
            out.append(path)
    return out


def embed_image(path: Path) -> tuple[str, int, int] | None:
    """The image as a JPEG data URI, scaled down to GALLERY_MAX_SIDE; None if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            image = img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    if max(image.size) > GALLERY_MAX_SIDE or path.stat().st_size > 250_000 or path.suffix.lower() not in (".jpg", ".jpeg"):
        image.thumbnail((GALLERY_MAX_SIDE, GALLERY_MAX_SIDE))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=GALLERY_JPEG_QUALITY, optimize=True)
        raw = buffer.getvalue()
    else:
        raw = path.read_bytes()
    return "data:image/jpeg;base64," + base64.b64encode(raw).decode("ascii"), image.width, image.height


def _gallery(run_dir: Path, views: list[CellView]) -> tuple[list[GalleryImage], int]:
    images: list[GalleryImage] = []
    left_out = 0
    for v in views:
        for path in gallery_paths(run_dir, v):
            if len(images) >= GALLERY_MAX_IMAGES:
                left_out += 1
                continue
            embedded = embed_image(path)
            if embedded is not None:
                images.append(GalleryImage(v, path.name, *embedded))
    return images, left_out


def _dist_rows(views: list[CellView]) -> list[charts.DistRow]:
    return [charts.DistRow(v.model, f"{v.config_label} · {v.scope}", v.samples, v.status) for v in views if v.measured and v.samples]


def _process_rows(views: list[CellView]) -> list[charts.ProcessRow]:
    return [
        charts.ProcessRow(v.model, f"{v.config_label} · {v.scope}", v.process_medians, v.median, v.rerun_ci, v.status)
        for v in views if v.repeats > 1 and v.process_medians and v.median is not None
    ]


def controls_in_force(views: list[CellView]) -> list[tuple[str, str]]:
    """What the harness held fixed in this run's processes, in words, one line per control
    (values that differ between processes are listed side by side)."""
    seen: dict[str, set[str]] = {}

    def note(name: str, value: str) -> None:
        seen.setdefault(name, set()).add(value)

    for v in views:
        for record in v.processes or [v.record]:
            controls = record.controls
            if controls is None:
                continue
            place = controls.placement
            if place is None:
                note("CPU placement", "not pinned (controls.pin_cores: false)")
            elif place.pinned:
                cores = ",".join(map(str, place.worker_cores))
                node = f" on NUMA node {place.numa_node}" if place.numa_node is not None else ""
                mon = f"; monitor on core {place.monitor_core}" if place.monitor_core is not None else ""
                note("CPU placement", f"worker cores {cores}{node} ({place.source}){mon}")
            else:
                note("CPU placement", f"pinning refused: {place.reason}")
            if controls.threads:
                note("threads", ", ".join(f"{k} {val}" for k, val in sorted(controls.threads.items())))
            note("garbage collector", "off in the timed loop" if controls.gc_disabled_in_timed_loop else "on in the timed loop")
            if controls.clocks is not None:
                clocks = controls.clocks
                note("GPU clocks", f"locked at {clocks.sm_mhz} MHz" if clocks.locked else f"not locked: {clocks.reason}")
        settings = v.record.settings
        options = settings.get("provider_options") if isinstance(settings, dict) else None
        if isinstance(options, dict):
            cuda = options.get("CUDAExecutionProvider")
            if isinstance(cuda, dict) and cuda.get("cudnn_conv_algo_search"):
                note("cuDNN algorithm search (ONNX Runtime)", str(cuda["cudnn_conv_algo_search"]))
                if cuda.get("enable_cuda_graph"):
                    note("CUDA graphs (ONNX Runtime)", "on" if str(cuda["enable_cuda_graph"]) == "1" else "off")
        if isinstance(settings, dict) and "cudnn_benchmark" in settings:
            note("cuDNN benchmark (torch)", str(settings["cudnn_benchmark"]).lower())
    repeats = sorted({v.repeats for v in views})
    out = [("processes per cell", ", ".join(map(str, repeats)) + " (each a fresh worker; cells interleaved round robin)")]
    out += [(name, " | ".join(sorted(values))) for name, values in seen.items()]
    return out


def _pareto_charts(views: list[CellView]) -> list[dict[str, Any]]:
    """One chart per scope (model first). A scope whose every point has random weights gets
    no chart, only a note: plotting noise against latency would invite a reading."""
    out = []
    for scope in sorted({v.scope for v in views}, key=lambda s: (s != "model", s)):
        points = []
        for v in views:
            if v.scope == scope and v.measured and v.median is not None and v.metric is not None:
                points.append(
                    charts.ParetoPoint(
                        label=f"{v.model} — {v.config_label}",
                        short=f"{v.runtime} {v.precision} b{v.batch}",
                        model=v.model,
                        runtime=v.runtime,
                        latency=v.median,
                        ap=v.metric,
                        random_weights=v.random_weights,
                    )
                )
        if points:
            all_random = all(p.random_weights for p in points)
            out.append(
                {
                    "scope": scope,
                    "svg": None if all_random else charts.pareto(points, f"Latency against mAP, {scope} scope"),
                    "random": sum(p.random_weights for p in points),
                    "count": len(points),
                }
            )
    return out


def _stage_bars(views: list[CellView]) -> list[charts.StageBar]:
    bars = []
    for v in views:
        stages = (v.record.latency.stages if v.record.latency else None) or {}
        medians = {name: timing.stats.p50 for name, timing in stages.items()}
        if medians and v.measured:
            bars.append(charts.StageBar(v.model, v.config_label, medians, v.median))
    return bars


def _throttle_active(reasons: Any) -> bool:
    """NVML clock-event reasons that slow the GPU down (power cap, hardware slowdown, thermal
    slowdowns, power brake): the monitor's bitmask, or their names."""
    if isinstance(reasons, bool):
        return reasons
    if isinstance(reasons, int):
        return bool(reasons & SLOWDOWN_REASONS)
    if isinstance(reasons, (list, tuple)):
        return any(_throttle_active(r) for r in reasons)
    if isinstance(reasons, str):
        text = reasons.lower()
        return any(word in text for word in ("power", "thermal", "slowdown", "brake"))
    return False


def _sustained_series(views: list[CellView]) -> list[dict[str, Any]]:
    out = []
    for v in views:
        windows = (v.record.latency.windows if v.record.latency else None) or []
        if not windows:
            continue
        wins = []
        clock_from_windows = []
        for w in windows:
            mid = (w.start_s + w.end_s) / 2
            wins.append((mid, w.stats.p50, w.stats.p99))
            if w.sm_clock_mhz_median is not None:
                clock_from_windows.append((mid, float(w.sm_clock_mhz_median)))
        # The monitor's t_s is 0 where measurement starts, as the windows' times are.
        trace = v.record.monitor.trace if v.record.monitor else []
        measure = [p for p in trace if p.phase in monitor.MEASURE_PHASES]
        clock = [(p.t_s, float(p.sm_mhz)) for p in measure if p.sm_mhz is not None]
        spans: list[tuple[float, float]] = []
        if clock:
            for p in measure:
                if _throttle_active(p.clock_event_reasons):
                    if spans and p.t_s - spans[-1][1] < 0.5:
                        spans[-1] = (spans[-1][0], p.t_s)
                    else:
                        spans.append((p.t_s, p.t_s + 0.1))
        series = charts.SustainedSeries(
            label=f"{v.model} — {v.config_label} · {v.scope}",
            windows=wins,
            clock=charts.downsample(clock) if clock else clock_from_windows,
            throttled=spans,
        )
        first, last = wins[0][1] if wins else None, wins[-1][1] if wins else None
        drift = (last / first - 1) * 100 if first and last else None
        out.append({"cell": v, "svg": charts.sustained(series), "drift": drift, "windows": len(wins),
                    "history": _window_history(windows, measure)})
    return out


def _window_history(windows: list[Window], trace: list[TraceRow]) -> list[dict[str, Any]]:
    """One row per sustained window: its latency and its median SM clock and peak temperature
    (computed at run time from the full-rate trace), plus what the record's trace (whose `t_s`
    starts at the measurement, like the windows) adds: lowest clock, median power, slowdowns."""
    rows = []
    for w in windows:
        inside = [p for p in trace if w.start_s <= p.t_s < w.end_s]
        sm = [float(p.sm_mhz) for p in inside if p.sm_mhz is not None]
        power = [float(p.power_w) for p in inside if p.power_w is not None]
        rows.append({
            "start_s": w.start_s, "end_s": w.end_s, "count": w.stats.count,
            "p50": w.stats.p50, "p99": w.stats.p99,
            "sm_median": w.sm_clock_mhz_median, "temp_max": w.temperature_c_max,
            "sm_min": min(sm) if sm else None,
            "power_median": statistics.median(power) if power else None,
            "slowdown_share": sum(_throttle_active(p.clock_event_reasons) for p in inside) / len(inside) if inside else None,
        })
    return rows


def _duration(start: str | None, end: str | None) -> str:
    try:
        if not start or not end:
            return ""
        seconds = (datetime.fromisoformat(end.replace("Z", "+00:00")) - datetime.fromisoformat(start.replace("Z", "+00:00"))).total_seconds()
    except ValueError:
        return ""
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else (f"{minutes} min {sec} s" if minutes else f"{sec} s")


def _devices(views: list[CellView]) -> list[str]:
    """Each kind of device once, with how many physical GPUs of it the run used
    ("2 × NVIDIA H200" for a `--gpus 0,1` run)."""
    names: list[str] = []
    gpus_of: dict[str, set[tuple[str, str]]] = {}
    for v in views:
        if v.device.startswith("cuda"):
            name = gpu_name(v) or "GPU (name not recorded)"
            if v.gpu_identity:
                gpus_of.setdefault(name, set()).add(v.gpu_identity)
        else:
            cpu = v.record.environment.cpu.model
            name = f"CPU: {cpu}" if cpu else "CPU"
        if name not in names:
            names.append(name)
    return [f"{len(gpus_of[n])} × {n}" if len(gpus_of.get(n, ())) > 1 else n for n in names]


def _gpu_places(views: list[CellView]) -> dict[str, str]:
    """cell id -> the physical GPU it ran on ("GPU 1", or "host · GPU 1" across hosts), only
    when the run's cells used more than one GPU; NVML's index, as nvidia-smi numbers them."""
    identities = {v.cell_id: v.gpu_identity for v in views if v.gpu_identity}
    if len(set(identities.values())) < 2:
        return {}
    several_hosts = len({host for host, _ in identities.values()}) > 1
    places: dict[str, str] = {}
    for v in views:
        gpu = v.gpu
        if v.cell_id not in identities or gpu is None:
            continue
        index = gpu.nvml_index if gpu.nvml_index is not None else gpu.cuda_index
        label = f"GPU {index}" if index is not None else str(gpu.uuid)
        places[v.cell_id] = f"{identities[v.cell_id][0]} · {label}" if several_hosts else label
    return places


def _pairs(value: Any) -> list[tuple[str, str]]:
    if isinstance(value, BaseModel):  # the facts it holds, without the empty defaults
        value = value.model_dump(mode="json", exclude_defaults=True)
    if not isinstance(value, dict):
        return []
    return [(k, show_value(v)) for k, v in flatten(value).items()]


def _agreement_summary(derived: DerivedEntry) -> list[tuple[str, str]]:
    """The few agreement figures a reader needs (harness.accuracy.agreement has them all)."""
    out: list[tuple[str, str]] = []
    det = derived.detection_agreement
    if det is not None and det.reason:
        out.append(("detections", det.reason))
    elif det is not None:
        if det.match_rate is not None:
            # A rate, not a count: the share of all boxes (either side) that found a partner.
            matched = f" ({det.matched:,} pairs)" if det.matched is not None else ""
            out.append(("boxes matched", fmt.share(det.match_rate, 1) + matched))
        for value, label in ((det.mean_iou, "mean IoU"), (det.max_abs_score_diff, "max score diff")):
            if value is not None:
                out.append((label, f"{value:.3g}"))
    raw = derived.raw_agreement
    if raw is not None and raw.reason:
        out.append(("raw outputs", raw.reason))
    elif raw is not None and raw.passed is not None:
        worst = [o.max_abs_diff for o in (raw.outputs or {}).values() if o.max_abs_diff is not None]
        text = "within tolerance" if raw.passed else "differ"
        if worst:
            text += f", max |diff| {max(worst):.3g}"
        out.append(("raw outputs", text))
    return out


def _per_class_drops(derived: DerivedEntry, n: int = 5) -> list[tuple[str, float]]:
    """The n classes that lost the most AP (negative changes only)."""
    deltas = derived.per_class_delta or {}
    # Below the printed precision (0.1 points) is not a drop worth naming.
    items = [(k, float(v)) for k, v in deltas.items() if v is not None and v <= -0.05]
    return sorted(items, key=lambda kv: kv[1])[:n]


def _common_limit(views: list[CellView], key: str) -> float | None:
    """A budget's limit when every plotted cell has the same one (else no line is drawn)."""
    limits = {(v.identity.budgets or {}).get(key) for v in views}
    return next(iter(limits)) if len(limits) == 1 else None


def _one_memory_method(views: list[CellView]) -> tuple[list[CellView], list[str], str]:
    """The cells whose device memory was read one way (NVML's process figure where any cell
    has it, else the most common method), the labels of those left out, and the method: two
    methods are two quantities, and one axis holds one."""
    methods = [v.resources.device_memory_method or "unknown" for v in views if v.resources]
    if not methods:
        return [], [], ""
    chosen = "nvml_process" if "nvml_process" in methods else max(sorted(set(methods)), key=methods.count)
    keep = [v for v in views if v.resources and (v.resources.device_memory_method or "unknown") == chosen]
    kept = {id(v) for v in keep}
    left = [f"{v.model} — {v.config_label} ({v.resources.device_memory_method or 'unknown'})"
            for v in views if id(v) not in kept and v.resources]
    return keep, left, chosen


def _resource_charts(views: list[CellView]) -> list[dict[str, Any]]:
    """Latency against device memory, and against energy per image, per configuration and
    scope: where a reader would rather look than read the table. A CPU-only run plots host
    RSS instead of device memory (its cells have none)."""
    out: list[dict[str, Any]] = []
    measured = [v for v in views if v.measured and v.median is not None and v.resources is not None]

    def point(v: CellView, y: float) -> charts.ScatterPoint:
        return charts.ScatterPoint(label=f"{v.model} — {v.config_label} · {v.scope}", short=f"{v.runtime} {v.precision} b{v.batch}",
                                   model=v.model, runtime=v.runtime, x=float(v.median or 0), y=y, status=v.status)

    for scope in sorted({v.scope for v in measured}, key=lambda s: (s != "model", s)):
        cells = [v for v in measured if v.scope == scope]
        words = scope.replace("_", "-")
        device, left_out, method = _one_memory_method(
            [v for v in cells if v.resources and v.resources.device_memory_peak_bytes is not None])
        if device:
            pts = [point(v, (v.resources.device_memory_peak_bytes or 0) / 1e6) for v in device if v.resources]
            svg = charts.resource_scatter(pts, f"Latency against device memory, {words} scope", "peak device memory (MB)", "MB",
                                          y_limit=_common_limit(device, "device_memory_mb"), x_limit=_common_limit(device, "latency_ms.p50"))
            text = (f"Left is faster, down uses less device memory ({method}); dashed: the plan's budget when every "
                    "cell shares it.")
            if left_out:
                text += (f" Not plotted: {', '.join(sorted(left_out))}, whose device memory was read another way "
                         "(a different quantity, not on this axis).")
            out.append({"id": f"memory-{scope}", "title": f"Latency against device memory · {words} scope", "svg": svg,
                        "text": text})
        else:
            host = [v for v in cells if v.resources and v.resources.host_peak_rss_bytes is not None]
            why = next(((v.resources.reasons or {}).get("device_memory") for v in cells if v.resources), None)
            if host:
                pts = [point(v, (v.resources.host_peak_rss_bytes or 0) / 1e6) for v in host if v.resources]
                svg = charts.resource_scatter(pts, f"Latency against host memory, {words} scope", "peak host RSS (MB)", "MB",
                                              y_limit=_common_limit(host, "host_memory_mb"), x_limit=_common_limit(host, "latency_ms.p50"))
                out.append({"id": f"memory-{scope}", "title": f"Latency against host memory · {words} scope", "svg": svg,
                            "text": f"No device memory here ({why or 'not measured'}): the worker's peak RSS instead."})
        energy = [v for v in cells if v.resources and v.resources.joules_per_image is not None]
        if energy:
            pts = [point(v, v.resources.joules_per_image or 0) for v in energy if v.resources]
            svg = charts.resource_scatter(pts, f"Latency against energy per image, {words} scope", "energy per image (J)", "J",
                                          y_limit=_common_limit(energy, "energy_per_image_j"), x_limit=_common_limit(energy, "latency_ms.p50"))
            methods = sorted({v.resources.energy_method or "" for v in energy if v.resources})
            out.append({"id": f"energy-{scope}", "title": f"Latency against energy per image · {words} scope", "svg": svg,
                        "text": "Left is faster, down uses less energy per image (" + ", ".join(methods) + "; the whole device's energy over the measurement phase)."})
        else:
            why = next(((v.resources.reasons or {}).get("energy") for v in cells if v.resources), None)
            out.append({"id": f"energy-{scope}", "title": f"Latency against energy per image · {words} scope", "svg": None,
                        "text": f"Not drawn: no cell of this scope has an energy figure ({why or 'not measured'})."})
    return out


def build_context(run: LoadedRun) -> dict[str, Any]:
    """Everything the templates print, computed once (the Markdown and CSV use it too)."""
    from harness.report.budgets import (
        BUDGETS,
        OUTCOME_WORDS,
        attach,
        budget_label,
        budget_words,
        ship_table,
        verdict_text,
    )
    from harness.report.checklist import checklist

    run_dir = run.folder
    meta = run.results.run
    views = attach(cell_views(run))
    # Server cells have their own section (harness.report.serve): their figures are per load
    # level over HTTP, not a single stream's, so they enter no single-stream ranking, chart or
    # ship table.
    single = [v for v in views if not v.is_server]
    ship = ship_table(single)
    ref = load_reference()
    matches, unmatched = match_cells(single, ref)
    common_env, differing_env = environment_table(views)
    gallery, gallery_left_out = _gallery(run_dir, views)
    counts = Counter(v.status for v in views)
    ran = {v.cell_id for v in views}
    planned = [c for c in meta.cell_ids if c not in ran]
    verdict_list = verdicts(single)
    env_sections: dict[str, list[tuple[str, str]]] = {}
    for key, value in common_env:
        env_sections.setdefault(key.split(".", 1)[0] if "." in key else "general", []).append((key, value))
    if "general" in env_sections:  # top-level scalars (hostname, devices, ...) first
        env_sections = {"general": env_sections.pop("general"), **env_sections}
    return {
        "meta": meta,
        "run_id": meta.run_id,
        "plan_name": meta.plan_name,
        "duration": _duration(meta.started_at, meta.finished_at),
        "derived_error": run.results.derived_error,
        "views": views,
        "verdicts": verdict_list,
        "verdict_groups": _group_verdicts(verdict_list),
        "throughput": throughput_groups(single),
        "cross_scope_label": CROSS_SCOPE_LABEL,
        "counts": [(s, counts[s]) for s in STATUS_WORDS if counts.get(s)],
        "random_cells": [v for v in views if v.random_weights],
        "unpredictable": _unpredictable(views),
        "devices": _devices(views),
        "gpu_places": _gpu_places(views),
        "planned_missing": planned,
        "dist_svg": charts.latency_distribution(_dist_rows(single)),
        "process_svg": charts.process_medians(_process_rows(single)),
        "controls": controls_in_force(views),
        "pareto": _pareto_charts(single),
        "stage_svg": charts.stage_breakdown(_stage_bars(single)),
        "serve": serve_context(views),
        "nms_rows": nms_rows(single),
        "tune": tune_context(run_dir),
        "nms_counts": counts_text,
        "sustained": _sustained_series(views),
        "gallery": gallery,
        "gallery_left_out": gallery_left_out,
        # One row per accuracy pass: a scope that shares its sibling's pass is not repeated.
        "accuracy_views": [v for v in views if v.metric is not None and not v.accuracy_from],
        "agreement": {v.cell_id: _agreement_summary(v.derived) for v in views},
        "class_drops": {v.cell_id: _per_class_drops(v.derived) for v in views},
        "problems": [v for v in views if v.status in ("failed", "skipped")],
        "flagged": [v for v in views if v.status in ("unstable", "throttled", "accuracy_regression")],
        "ref": ref,
        "matches": matches,
        "unmatched": unmatched,
        "published_overview": overview(matches),
        "latency_sentence": lambda m: latency_sentence(m, ref),
        "latency_detail": lambda m: latency_detail(m, ref),
        "env_sections": env_sections,
        "env_differing": differing_env,
        "ship": ship,
        "budget_label": budget_label,
        "budget_words": budget_words,
        "budget_units": {k: unit for k, (unit, _, _) in BUDGETS.items()},
        "verdict_text": verdict_text,
        "outcome_words": OUTCOME_WORDS,
        "checklist": checklist(views, lambda v: [str(p.relative_to(run_dir)) for p in gallery_paths(run_dir, v)]),
        "resource_views": [v for v in views if v.resources is not None],
        "resource_charts": _resource_charts(views),
        "pairs": _pairs,
        "ladders": ladder.ladders(views),
        "keep_float_hint": ladder.keep_float_hint,
        "harness_version": _harness_version(),
        "generated_at": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    }


def _unpredictable(views: list[CellView]) -> list[tuple[str, str]]:
    """(model, what it cannot predict) once per model whose mAP leaves annotated classes to 0."""
    out: dict[str, str] = {}
    for v in views:
        note = v.unpredictable_note
        if note and v.model not in out:
            out[v.model] = note
    return list(out.items())


def _group_verdicts(items: list[Verdict]) -> list[tuple[str, list[Verdict]]]:
    """Verdicts by model, in the run's order (Jinja's groupby would sort by name)."""
    groups: dict[str, list[Verdict]] = {}
    for v in items:
        groups.setdefault(v.model, []).append(v)
    return list(groups.items())


def _harness_version() -> str:
    from harness import __version__

    return __version__


# ----------------------------------------------------------------------------- outputs


def render_template(name: str, context: dict[str, Any]) -> str:
    """Render a page and check it is self-contained; a reference outward is a bug, not a
    choice, so it stops the write rather than shipping a report that phones home."""
    from harness.report.offline import external_references

    html = str(template_env().get_template(name).render(**context))
    found = external_references(html)
    if found:
        raise RuntimeError(f"{name} would load from outside the file: {found[:5]}")
    return html


def render_html(context: dict[str, Any]) -> str:
    return render_template("report.html.j2", context)


def render_run(run_dir: Path) -> dict[str, Path]:
    """Write report.html, summary.md and results.csv into the run folder; their paths."""
    from harness.report.summary import results_csv, summary_markdown

    run = load_run(run_dir)
    folder = run.folder
    context = build_context(run)
    return {
        "html": write_atomic(folder / "report.html", render_html(context)),
        "markdown": write_atomic(folder / "summary.md", summary_markdown(context)),
        "csv": write_atomic(folder / "results.csv", results_csv(context["views"])),
    }
