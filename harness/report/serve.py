"""The report's server section: server cells (`record.serve`) level by level.

For each run: the latency-throughput curve of every server configuration with the SLO line,
where the time of a request goes at each level (decode, queue, inference, the rest: HTTP and
the client), the per-level table (client p50/p95/p99 with intervals, throughput, errors, queue
and inference time, batch sizes, the SLO), and the monitoring figures (detections per answer,
max-score histogram, input resolutions) with the distribution-shift check. The same figures go
into summary.md and results.csv (one row per level). Everything is read from the typed record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from markupsafe import Markup

from harness.report import charts, fmt
from harness.report.charts import PALETTE, Scale, _e, _legend, _svg, _x_axis, _y_axis
from harness.report.rundata import CellView
from harness.results.serve import NO_OPEN_RATE_NOTE, NOTE_SEPARATOR, Histogram, Level, ServeResult

LEVEL_CSV_COLUMNS = [
    "scenario", "level", "level_mode", "level_concurrency", "level_target_rps", "level_rate_of_peak",
    "level_throughput_rps", "level_sent", "level_ok", "level_errors", "level_error_share",
    "level_p50_ms", "level_p95_ms", "level_p99_ms", "level_p99_ci95_lo_ms", "level_p99_ci95_hi_ms",
    "level_queue_p50_ms", "level_inference_p50_ms", "level_mean_batch", "level_batch_sizes",
    "level_client_cpu_share", "level_client_limited", "level_meets_slo",
]


def batch_sizes_text(level: Level) -> str:
    sizes = level.server.batch_sizes if level.server else {}
    return " ".join(f"{k}×{v}" for k, v in sizes.items()) or "–"


def level_name(level: Level) -> str:
    if level.mode == "closed":
        return f"closed c={level.concurrency}"
    frac = f" ({level.rate_of_peak:.0%} of peak)" if level.rate_of_peak is not None else ""
    return f"open {fmt.num(level.target_rps, 1)}/s{frac}"


# ----------------------------------------------------------------------------- charts


@dataclass
class Curve:
    label: str
    closed: list[tuple[float, float, float]]  # (throughput, p50, p99), by concurrency
    open: list[tuple[float, float, float]]  # by target rate


def latency_throughput(curves: list[Curve], slo_ms: float | None, title: str = "Latency against throughput") -> Markup:
    """p99 (solid) and p50 (dashed) client latency against the throughput each level delivered:
    closed loop circles, open loop squares, one colour per configuration; the SLO as a line."""
    points = [p for c in curves for p in (*c.closed, *c.open)]
    if not points:
        return Markup("")
    width, height, left, right, top, bottom = 960, 380, 76, 30, 40, 56
    x_hi = max(p[0] for p in points) * 1.08 or 1.0
    ys = [v for p in points for v in (p[1], p[2])] + ([slo_ms] if slo_ms else [])
    lo, hi = min(ys), max(ys)
    log = hi / max(lo, 1e-9) > 20
    xs = Scale(0, x_hi, left, width - right)
    yscale = Scale(lo * 0.8 if log else 0, hi * 1.1, height - bottom, top, log=log)
    body = _x_axis(xs, height - bottom, top, "throughput (answers per second)")
    body += _y_axis(yscale, left, left, width - right, "client latency (ms)" + (", log scale" if log else ""))
    legend = []
    for i, curve in enumerate(curves):
        color = PALETTE[i % len(PALETTE)]
        legend.append((color, curve.label))
        for series, marker in ((curve.closed, "circle"), (curve.open, "square")):
            if not series:
                continue
            ordered = sorted(series) if marker == "square" else series
            for k, dash in ((2, ""), (1, ' stroke-dasharray="5 4" stroke-opacity="0.6"')):
                pts = " ".join(f"{xs(p[0]):.1f},{yscale(p[k]):.1f}" for p in ordered)
                body.append(f'<polyline class="ch-line" points="{pts}" stroke="{_e(color)}"{dash}/>')
            for tp, p50, p99 in ordered:
                tip = _e(f"{curve.label} · {'closed' if marker == 'circle' else 'open'} loop · {tp:.1f}/s · p50 {fmt.ms(p50)} ms · p99 {fmt.ms(p99)} ms")
                x, y = xs(tp), yscale(p99)
                if marker == "circle":
                    body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{_e(color)}"><title>{tip}</title></circle>')
                else:
                    body.append(f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" fill="{_e(color)}"><title>{tip}</title></rect>')
    if slo_ms:
        y = yscale(slo_ms)
        body.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#D55E00" stroke-width="1.5" stroke-dasharray="8 4"/>')
        body.append(f'<text class="ch-legend" x="{width - right - 4}" y="{y - 6:.1f}" text-anchor="end">SLO p99 {fmt.ms(slo_ms)} ms</text>')
    body += _legend(legend[:6], left, 18, kind="line")
    return _svg(width, height, body, title)


def time_split(views: list[CellView]) -> Markup:
    """Per level, where a request's median time goes: decode, queue, inference (server medians),
    and the rest of the client's median (HTTP, the event loop, the client) hatched."""
    bars = []
    for v in views:
        serve = v.record.serve
        if serve is None:
            continue
        for lv in serve.levels:
            s = lv.server
            if s is None or lv.latency_ms is None:
                continue
            parts = {"decode": s.decode_ms.p50 if s.decode_ms else None, "queue": s.queue_ms.p50 if s.queue_ms else None,
                     "inference": s.inference_ms.p50 if s.inference_ms else None}
            stages = {k: float(val) for k, val in parts.items() if val is not None}
            bars.append(charts.StageBar(f"{v.model} — {v.runtime} b{v.batch}", level_name(lv), stages, lv.latency_ms.p50))
    return (charts.stage_breakdown(bars, "Queue against inference, per level (medians)", "median time per request (ms)")
            if bars else Markup(""))


def histogram_chart(hist: Histogram, title: str, xlabel: str, integer_bins: bool = False, max_bins: int = 25) -> Markup:
    counts = list(hist.counts)
    edges = list(hist.edges)
    # Trailing empty bins say nothing.
    while len(counts) > 1 and counts[-1] == 0:
        counts.pop()
        edges.pop()
    counts, edges = counts[:max_bins], edges[: max_bins + 1]
    if not counts or sum(counts) == 0:
        return Markup("")
    width, height, left, right, top, bottom = 460, 220, 56, 14, 20, 56
    n = len(counts)
    bw = (width - left - right) / n
    ys = Scale(0, max(counts) * 1.1, height - bottom, top)
    body = _y_axis(ys, left, left, width - right, "answers")
    body.append(f'<line class="ch-axis" x1="{left}" x2="{width - right}" y1="{height - bottom}" y2="{height - bottom}"/>')
    total = sum(counts)
    for i, c in enumerate(counts):
        lo, hi = edges[i], edges[i + 1] if i + 1 < len(edges) else edges[i]
        if integer_bins:
            name = f"{lo:.0f}" if hi - lo <= 1 else f"{lo:.0f}–{hi - 1:.0f}" if math.isfinite(hi) and hi < 1e5 else f"≥{lo:.0f}"
        else:
            name = f"{lo:g}–{hi:g}"
        x = left + i * bw
        y = ys(c)
        tip = _e(f"{name}: {c} ({c / total:.1%})")
        body.append(f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(bw - 2, 1):.1f}" height="{height - bottom - y:.1f}" fill="{PALETTE[0]}"><title>{tip}</title></rect>')
        if n <= 12 or i % max(1, n // 10) == 0:
            body.append(f'<text class="ch-tick" x="{x + bw / 2:.1f}" y="{height - bottom + 14}" text-anchor="middle">{_e(name)}</text>')
    body.append(f'<text class="ch-label" x="{(left + width - right) / 2:.1f}" y="{height - 14}" text-anchor="middle">{_e(xlabel)}</text>')
    return _svg(width, height, body, title)


# ----------------------------------------------------------------------------- context


def serve_context(views: list[CellView]) -> dict[str, Any]:
    """What the report's server section prints (empty when the run has no server cell)."""
    cells = [v for v in views if v.record.serve is not None]
    if not cells:
        return {"cells": []}
    curves = []
    slo = None
    for v in cells:
        serve = v.record.serve
        assert serve is not None
        if serve.slo is not None and serve.slo.p99_ms is not None:
            slo = serve.slo.p99_ms
        answered = [lv for lv in serve.levels if lv.latency_ms is not None]
        curves.append(Curve(
            f"{v.model} · {v.runtime} · b{v.batch}" + (f" · {fmt.num(serve.max_queue_delay_ms, 1)} ms delay" if v.batch > 1 and serve.max_queue_delay_ms is not None else ""),
            [(lv.throughput_rps, lv.latency_ms.p50, lv.latency_ms.p99) for lv in answered if lv.mode == "closed" and lv.latency_ms],
            [(lv.throughput_rps, lv.latency_ms.p50, lv.latency_ms.p99) for lv in answered if lv.mode == "open" and lv.latency_ms],
        ))
    monitoring = []
    for v in cells:
        serve = v.record.serve
        assert serve is not None
        mon = serve.monitoring
        if mon is None:
            continue
        monitoring.append({
            "cell": v, "mon": mon, "shift": serve.shift,
            "det_svg": histogram_chart(mon.detections, f"Detections per answer · {v.model} {v.runtime} b{v.batch}", "detections per answer", integer_bins=True),
            "score_svg": histogram_chart(mon.max_score, f"Max score per answer · {v.model} {v.runtime} b{v.batch}", "highest score in the answer"),
        })
    return {
        "cells": cells,
        "curve_svg": latency_throughput(curves, slo),
        "split_svg": time_split(cells),
        "monitoring": monitoring,
        "level_name": level_name,
        "batch_sizes": batch_sizes_text,
    }


# ----------------------------------------------------------------------------- markdown, csv


def _ci(q: Any) -> str:
    if q is None or q.p99_ci95 is None:
        return ""
    lo, hi = q.p99_ci95
    return f" [{fmt.ms(lo)}, {fmt.ms(hi)}]"


def markdown(views: list[CellView]) -> list[str]:
    cells = [v for v in views if v.record.serve is not None]
    if not cells:
        return []
    lines = ["", "## Server scenario", "",
             "Per load level: client latency over HTTP on loopback (p99 with its 95% interval), answers per second, "
             "errors, the server's median queue and inference time, and the batches the model ran."]
    for v in cells:
        serve = v.record.serve
        assert serve is not None
        batching = "no dynamic batching" if v.batch == 1 else (
            f"dynamic batching up to {serve.max_batch}, max queue delay {fmt.num(serve.max_queue_delay_ms, 1)} ms")
        lines += ["", f"### {fmt.md(v.model)} · {fmt.md(v.runtime)} · {fmt.md(v.precision)} · b{v.batch} · {v.resolution}px", "",
                  f"{fmt.md(batching)}; {fmt.md(serve.image_source)}; status {fmt.md(v.status)}."]
        if serve.capacity is not None:
            c = serve.capacity
            lines.append(f"Load generator capacity: {c.throughput_rps:.0f} req/s against {fmt.md(c.endpoint)} at concurrency {c.concurrency}"
                         + (f" ({c.cpu_share:.0%} of a core)" if c.cpu_share is not None else "") + ".")
        lines.append("")
        rows = []
        for lv in serve.levels:
            q, s = lv.latency_ms, lv.server
            rows.append([
                fmt.md(level_name(lv)), fmt.num(lv.throughput_rps, 1),
                fmt.ms(q.p50 if q else None), fmt.ms(q.p95 if q else None), (fmt.ms(q.p99) + _ci(q)) if q else "–",
                f"{lv.errors} ({lv.error_share:.1%})", fmt.ms(s.queue_ms.p50 if s and s.queue_ms else None),
                fmt.ms(s.inference_ms.p50 if s and s.inference_ms else None), fmt.md(batch_sizes_text(lv)),
                "–" if lv.meets_slo is None else ("yes" if lv.meets_slo else "no: " + fmt.md(lv.slo_why or "")),
                "yes: " + fmt.md(lv.client_limited_why or "") if lv.client_limited else "no",
            ])
        lines += _table(["level", "answers/s", "p50 ms", "p95 ms", "p99 ms [95% CI]", "errors", "queue p50 ms", "inference p50 ms",
                         "batches (size×count)", "meets SLO", "client-limited"], rows, "lrrrrrrrlll")
        if serve.slo is not None:
            slo = serve.slo
            bound = ", ".join(f"{k} ≤ {fmt.ms(getattr(slo, k + '_ms'))} ms" for k in ("p50", "p95", "p99") if getattr(slo, k + "_ms") is not None)
            best = (f"{fmt.num(slo.max_rate_rps, 1)} req/s" if slo.max_rate_rps is not None
                    else f"none of the {sum(1 for lv in serve.levels if lv.mode == 'open')} rates tried")
            nxt = (f" (the next rate, {fmt.num(slo.first_failing_rate_rps, 1)} req/s, missed it)"
                   if slo.first_failing_rate_rps is not None and slo.max_rate_rps is not None else "")
            closed = (f"; closed loop: {fmt.num(slo.max_closed_throughput_rps, 1)} answers/s at concurrency {slo.max_closed_concurrency}"
                      if slo.max_closed_throughput_rps is not None else "")
            lines += ["", f"SLO {fmt.md(bound)}, errors ≤ {slo.max_error_share:.1%}: highest open-loop rate within it {best}{nxt}{closed}."
                      + _slo_note(slo.note, slo.max_rate_rps is None)]
        mon = serve.monitoring
        if mon is not None:
            lines += ["", f"Monitoring ({mon.requests} answers, {mon.rejected} refused): answers without a detection "
                          f"{fmt.share(mon.zero_detection_share, 1)}, detections per answer mean {fmt.num(mon.detections_mean, 3)}, "
                          f"p95 {fmt.num(mon.detections_p95, 3)}; median max score {fmt.num(mon.max_score_median, 3)}; "
                          f"resolutions: " + fmt.md(", ".join(f"{k} ({n})" for k, n in list(mon.resolutions.items())[:6]))]
        if serve.shift is not None:
            sh = serve.shift
            if sh.reason:
                lines += ["", f"Distribution shift: not checked ({fmt.md(sh.reason)})."]
            else:
                items = "; ".join(f"{fmt.md(i.name)} {fmt.num(i.value, 3)} (limit {fmt.num(i.threshold, 3)}){' **SHIFT**' if i.flagged else ''}" for i in sh.items)
                head = "**Distribution shift flagged**" if sh.flagged else "No distribution shift"
                lines += ["", f"{head} against {fmt.md(sh.baseline_cell_id or '')} of run {fmt.md(sh.baseline_run_id or '')}: {items}."]
    return lines


def _table(header: list[str], rows: list[list[str]], align: str) -> list[str]:
    marks = {"l": ":---", "r": "---:"}
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks[a] for a in align) + " |"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def _c(value: float | None, digits: int = 6) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def level_csv_rows(view: CellView) -> list[list[Any]]:
    """The extra columns of results.csv: one row per level for a server cell, one empty row
    for a single-stream cell."""
    serve = view.record.serve
    if serve is None:
        return [["single_stream"] + [""] * (len(LEVEL_CSV_COLUMNS) - 1)]
    rows = []
    for lv in serve.levels:
        q, s = lv.latency_ms, lv.server
        rows.append([
            "server", fmt.csv_text(lv.key), lv.mode, "" if lv.concurrency is None else lv.concurrency, _c(lv.target_rps),
            _c(lv.rate_of_peak), _c(lv.throughput_rps), lv.sent, lv.ok, lv.errors, _c(lv.error_share, 4),
            _c(q.p50 if q else None), _c(q.p95 if q else None), _c(q.p99 if q else None),
            _c(q.p99_ci95[0] if q and q.p99_ci95 else None), _c(q.p99_ci95[1] if q and q.p99_ci95 else None),
            _c(s.queue_ms.p50 if s and s.queue_ms else None), _c(s.inference_ms.p50 if s and s.inference_ms else None),
            _c(s.mean_batch if s else None, 4), fmt.csv_text(batch_sizes_text(lv)), _c(lv.client_cpu_share, 3),
            str(lv.client_limited).lower(), "" if lv.meets_slo is None else str(lv.meets_slo).lower(),
        ])
    return rows or [["server"] + [""] * (len(LEVEL_CSV_COLUMNS) - 1)]


# ----------------------------------------------------------------------------- compare


@dataclass
class LevelComparison:
    key: str  # the load both runs were driven at: c4, 40 rps
    a: Level
    b: Level
    p50_change_pct: float | None
    p99_change_pct: float | None
    throughput_change_pct: float | None
    p_value: float | None
    verdict: str  # slower | faster | no change beyond threshold | inconclusive | no verdict | not compared


def _pct(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or a == 0 else (b / a - 1.0) * 100.0


def compare_levels(
    a: ServeResult, b: ServeResult, threshold_pct: float, alpha: float,
    a_processes: list[ServeResult] | None = None, b_processes: list[ServeResult] | None = None,
) -> tuple[list[LevelComparison], list[str]]:
    """The levels of two server cells at equal load (the same concurrency, or the same absolute
    target rate within 1%), each with its change in median and p99 latency and in throughput;
    and the levels of either run without a partner.

    The requests of one server process are not independent of each other (one process, one
    host state), so a verdict needs several server processes per side (protocol.repeats): then
    each level's median latency per process is one value, compared as single-stream cells are
    (Welch's t-test on the logs, the threshold on the (1 - alpha) interval). With one process a
    side, the changes are shown with no verdict."""
    from harness.measure.repeats import compare_processes

    def same(x: Level, y: Level) -> bool:
        if x.mode != y.mode:
            return False
        if x.mode == "closed":
            return x.concurrency == y.concurrency
        return x.target_rps is not None and y.target_rps is not None and abs(x.target_rps / y.target_rps - 1) <= 0.01

    def medians(results: list[ServeResult] | None, level: Level) -> list[float]:
        found = []
        for result in results or []:
            match = next((lv for lv in result.levels if same(lv, level)), None)
            if match is not None and match.latency_ms is not None:
                found.append(match.latency_ms.p50)
        return found

    out: list[LevelComparison] = []
    used: set[int] = set()
    unmatched: list[str] = []
    for la in a.levels:
        partner = next((i for i, lb in enumerate(b.levels) if i not in used and same(la, lb)), None)
        if partner is None:
            unmatched.append(f"A {level_name(la)}")
            continue
        used.add(partner)
        lb = b.levels[partner]
        qa, qb = la.latency_ms, lb.latency_ms
        c = LevelComparison(la.key, la, lb, _pct(qa.p50 if qa else None, qb.p50 if qb else None),
                            _pct(qa.p99 if qa else None, qb.p99 if qb else None),
                            _pct(la.throughput_rps, lb.throughput_rps), None, "not compared")
        ma, mb = medians(a_processes, la), medians(b_processes, lb)
        if len(ma) >= 2 and len(mb) >= 2:
            test = compare_processes(ma, mb, level=1 - alpha)
            c.p_value = test.p_value
            lo, hi = test.change_ci_pct or (0.0, 0.0)
            if lo > threshold_pct:
                c.verdict = "slower"
            elif hi < -threshold_pct:
                c.verdict = "faster"
            elif -threshold_pct <= lo and hi <= threshold_pct:
                c.verdict = "no change beyond threshold"
            else:
                c.verdict = "inconclusive"
        elif c.p50_change_pct is not None:
            c.verdict = "no verdict"
        out.append(c)
    unmatched += [f"B {level_name(lb)}" for i, lb in enumerate(b.levels) if i not in used]
    return out, unmatched


def _slo_note(note: str | None, no_open_rate: bool) -> str:
    """The SLO result's note as its own sentence, less what the line already says (that no
    open-loop rate met the SLO)."""
    parts = [p for p in (note or "").split(NOTE_SEPARATOR) if p and not (no_open_rate and p == NO_OPEN_RATE_NOTE)]
    return "".join(f" {fmt.md(p[0].upper() + p[1:])}." for p in parts)
