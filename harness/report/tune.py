"""The report's tune section, from a run folder's tune.json (written by `bench tune`): the two
fronts (latency against mAP, latency against memory) with dominated points faint and the
winner marked, every candidate with what became of it and why, and the time of each step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from markupsafe import Markup

from harness.report import fmt
from harness.report.charts import PALETTE, Scale, _clip, _e, _runtime_legend, _svg, _x_axis, _y_axis
from harness.results import TuneCandidate, TuneResult, latency_label
from harness.tune.labels import candidate_text

TUNE_FILE = "tune.json"
KIND_WORDS = {"invalid": "cannot exist", "unavailable": "unavailable here", "failed": "failed",
              "accuracy": "past the mAP budget", "time": "time budget", "limit": "candidate limit"}


def load_tune(run_dir: Path) -> TuneResult | None:
    path = run_dir / TUNE_FILE
    if not path.is_file():
        return None
    return TuneResult.model_validate(json.loads(path.read_text("utf-8")))


def memory_words(kind: str | None) -> str:
    return {"device": "peak device memory of the timed phase",
            "host_rss": "peak host RSS of the worker (the CPU is the device)"}.get(kind or "", "memory")


def front_chart(result: TuneResult, axis: str, random_weights: bool = False) -> Markup:
    """Latency (x) against mAP or memory (y) of the measured configurations: front points
    solid and labelled, dominated ones faint, the winner ringed, the front as a step line.
    On random weights the mAP front is not drawn, as the report's other mAP charts are not:
    the mAP is noise (latency and memory are real, so the memory front still is)."""
    if axis == "map" and random_weights:
        return Markup('<p class="none">Latency against mAP: not drawn. The measured configurations used random '
                      "weights, so their mAP is noise and a front would mislead; latency and memory are real "
                      "(the memory front below).</p>")
    if axis == "map":
        pts = [(c, c.ap) for c in result.candidates if c.latency_ms is not None and c.ap is not None]
        title, ylabel = "Latency against mAP", "mAP (COCO AP50:95, points)"
    else:
        # MB (10^6 bytes) like the report's resource charts and the ship table, the same figure.
        pts = [(c, c.memory_bytes / 1e6) for c in result.candidates
               if c.latency_ms is not None and c.memory_bytes is not None and c.memory_kind == result.memory_kind]
        title, ylabel = "Latency against memory", f"{memory_words(result.memory_kind)} (MB, worst process)"
    if not pts:
        return Markup("")
    width, height, left, right, top, bottom = 900, 380, 80, 190, 20, 56
    lats = [c.latency_ms or 0.0 for c, _ in pts]
    ys_ = [float(v) for _, v in pts if v is not None]
    span_x = max(lats) - min(lats) or max(lats) * 0.2 or 1.0
    xs = Scale(max(min(lats) - span_x * 0.15, 0), max(lats) + span_x * 0.15, left, width - right)
    span_y = max(ys_) - min(ys_) or abs(max(ys_)) * 0.1 or 1.0
    ys = Scale(min(ys_) - span_y * 0.2, max(ys_) + span_y * 0.25, height - bottom, top)
    unit = "ms per image" if result.per_image else "ms per batch"
    body = _x_axis(xs, height - bottom, top, f"latency, {latency_label(result.latency_stat)} ({unit})")
    body += _y_axis(ys, left, left, width - right, ylabel)
    on_front = (lambda c: c.on_front_map) if axis == "map" else (lambda c: c.on_front_memory)
    runtimes = sorted({c.runtime for c, _ in pts})
    color = {r: PALETTE[i % len(PALETTE)] for i, r in enumerate(runtimes)}
    front = sorted([(c, v) for c, v in pts if on_front(c)], key=lambda p: p[0].latency_ms or 0.0)
    if len(front) > 1:
        path = "".join((f"M{xs(c.latency_ms or 0):.1f},{ys(float(v)):.1f}" if i == 0 else
                        f"H{xs(c.latency_ms or 0):.1f}V{ys(float(v)):.1f}") for i, (c, v) in enumerate(front))
        body.append(f'<path class="ch-front" d="{path}"/>')
    for c, v in pts:
        x, y = xs(c.latency_ms or 0.0), ys(float(v))
        faint = not on_front(c)
        tip = (f"{candidate_text(c.name, c.precision, c.batch)}\n{fmt.ms(c.latency_ms)} ms · "
               + (f"mAP {fmt.num(c.ap, 2)}" if axis == "map" else f"{float(v):.1f} MB" + (f" ({c.memory_method})" if c.memory_method else ""))
               + budget_words(c.within_budget) + ("\ndominated" if faint else ""))
        opacity = ' opacity="0.25"' if faint else ""
        fill, dash = point_style(c.within_budget, color[c.runtime])
        body.append(f'<g class="ch-point{" tune-dominated" if faint else ""}"{opacity}><title>{_e(tip)}</title>'
                    f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5.5" fill="{_e(fill)}" stroke="{_e(color[c.runtime])}" '
                    f'stroke-width="2"{dash}/></g>')
        if c.cell_id == result.winner:
            body.append(f'<circle class="tune-winner" cx="{x:.1f}" cy="{y:.1f}" r="10" fill="none" stroke="#111" '
                        'stroke-width="2"/>')
            body.append(f'<text class="ch-sub" x="{x + 13:.1f}" y="{y + 4:.1f}">winner</text>')
        elif not faint:
            body.append(f'<text class="ch-sub" x="{x + 9:.1f}" y="{y - 8:.1f}">{_e(_clip(c.name, 34))}</text>')
    lx, ly = width - right + 20, top + 14
    ly = _runtime_legend(body, lx, ly, runtimes, color, clip=24) + 26
    body.append(f'<text class="ch-legend" x="{lx}" y="{ly}">faint: dominated</text>')
    ly += 18
    body.append(f'<text class="ch-legend" x="{lx}" y="{ly}">hollow: past the budget</text>')
    ly += 18
    body.append(f'<text class="ch-legend" x="{lx}" y="{ly}">grey, dashed: no baseline mAP</text>')
    ly += 18
    body.append(f'<text class="ch-legend" x="{lx}" y="{ly}">ringed: the winner</text>')
    return _svg(width, height, body, title)


def point_style(within_budget: bool | None, colour: str) -> tuple[str, str]:
    """(fill, extra circle attributes) of a front point: solid within the budget, hollow past
    it, grey and dashed when it cannot be judged (no baseline mAP), which is not past it."""
    if within_budget is None:
        return "#ddd", ' stroke-dasharray="2 2"'
    return (colour if within_budget else "#fff"), ""


def budget_words(within_budget: bool | None) -> str:
    """The tooltip's line on the budget: nothing within it."""
    return {True: "", False: "\npast the mAP budget", None: "\nno baseline mAP: the budget cannot be checked"}[within_budget]


def _settings_text(c: TuneCandidate) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(c.settings.items())) or "defaults"


def measured_on_random_weights(run_dir: Path, result: TuneResult) -> bool:
    """Whether the measured configurations drew their weights at random, by the rule of the
    report's cell views (harness/report/rundata.py): the record's flag, finalize's, or the
    identity's weights kind."""
    from harness.results import read_run

    try:
        run = read_run(run_dir).results
    except (OSError, ValueError):
        return False
    measured = {c.cell_id for c in result.candidates if c.latency_ms is not None}
    return any(r.cell_id in measured and (r.random_weights or r.identity.weights_kind == "random"
                                          or bool(getattr(run.derived.get(r.cell_id), "random_weights", False)))
               for r in run.cells)


def tune_context(run_dir: Path) -> dict[str, Any] | None:
    try:
        result = load_tune(run_dir)
    except (OSError, ValueError):
        return {"error": f"{TUNE_FILE} could not be read"}
    if result is None:
        return None
    winner = next((c for c in result.candidates if c.cell_id == result.winner), None)
    random_weights = measured_on_random_weights(run_dir, result)
    return {
        "result": result,
        "winner": winner,
        "winner_text": candidate_text(winner.name, winner.precision, winner.batch) if winner else None,
        "candidate_text": candidate_text,
        "random_weights": random_weights,
        "map_svg": front_chart(result, "map", random_weights),
        "memory_svg": front_chart(result, "memory"),
        "measured": sorted([c for c in result.candidates if c.outcome == "measured"],
                           key=lambda c: (c.latency_ms is None, c.latency_ms or 0.0)),
        "pruned": [c for c in result.candidates if c.outcome in ("pruned", "screened")],
        "untried": [c for c in result.candidates if c.outcome == "untried"],
        "kind_words": KIND_WORDS,
        "settings_text": _settings_text,
        "memory_words": memory_words(result.memory_kind),
        "total_s": sum(s.seconds for s in result.steps),
        "latency_label": latency_label(result.latency_stat),
    }


def print_tune_summary(result: TuneResult, run_dir: Path) -> None:
    """The terminal's closing lines of `bench tune`."""
    import sys

    counts: dict[str, int] = {}
    for c in result.candidates:
        counts[c.outcome] = counts.get(c.outcome, 0) + 1
    out = [f"tune: {len(result.candidates)} candidates: "
           + ", ".join(f"{n} {what}" for what, n in counts.items())]
    winner = next((c for c in result.candidates if c.cell_id == result.winner), None)
    if winner is not None:
        change = "–" if winner.map_drop is None else fmt.signed(-winner.map_drop, 2)
        out.append(f"winner: {candidate_text(winner.name, winner.precision, winner.batch)}: "
                   f"{fmt.ms(winner.latency_ms)} ms ({latency_label(result.latency_stat)}), mAP {change} points "
                   f"against the baseline; {result.winner_why}")
        if result.tie_break:
            out.append(f"tie: {result.tie_break}")
    else:
        out.append(f"no winner: {result.winner_why}")
    for step in result.steps:
        out.append(f"  {step.name:8s} {step.seconds:8.1f} s" + (f"  {step.note}" if step.note else ""))
    if result.over_time:
        out.append(f"note: the search took {result.elapsed_s / 60:.1f} min, past --max-minutes {result.max_minutes:g}")
    out.append(f"run folder: {run_dir}")
    if result.tuned_plan:
        out.append(f"tuned plan: {run_dir / result.tuned_plan}  (re-measure: bench {run_dir / result.tuned_plan})")
    print("\n".join(out), file=sys.stderr)
