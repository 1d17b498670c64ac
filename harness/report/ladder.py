"""The precision ladder: per model and runtime, one point per precision (FP32 -> FP16 -> INT8
dynamic -> INT8 -> INT8 with nodes kept in float), latency against the mAP change, FP32 at 0;
and per rung the AP change for small, medium and large objects and for every class, worst first.

A ladder is the cells of one model on one runtime (its registry name: two entries of a runtime
that differ only in their `int8` settings, such as one with `keep_float_worst: 3`, are rungs of
the same ladder; entries whose other settings differ are separate ladders), one batch, one
resolution, one scope (model scope when measured, else end to end). Changes are against the
ladder's own FP32 cell, computed from the two accuracy records, in AP points; the accuracy gate
(tripped or not) is the run's derived verdict against the model's reference cell.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup

from harness.report import fmt
from harness.report.charts import PALETTE, Scale, _e, _svg, _x_axis, _y_axis
from harness.report.rundata import CellView
from harness.results import Accuracy, Quantization

PRECISION_ORDER = {"fp32": 0, "tf32": 1, "bf16": 2, "fp16": 3, "int8-dynamic": 4, "int8": 5}
SIZE_KEYS = (("AP_small", "small objects"), ("AP_medium", "medium objects"), ("AP_large", "large objects"))


@dataclass
class Rung:
    view: CellView
    label: str
    median: float | None
    ap: float | None  # points
    delta: float | None  # points against the ladder's FP32
    speedup: float | None  # FP32 median / this median
    quantization: Quantization | None
    sizes: list[tuple[str, float | None, float | None, float | None]] = field(default_factory=list)
    classes: list[tuple[str, float | None, float | None, float | None]] = field(default_factory=list)

    @property
    def is_baseline(self) -> bool:
        return self.view.precision == "fp32"

    @property
    def keep_float(self) -> list[str]:
        q = self.quantization
        return [*q.keep_float, *q.keep_float_worst] if q is not None else []


@dataclass
class Ladder:
    model: str
    runtime: str
    scope: str
    batch: int
    resolution: int
    rungs: list[Rung]
    random_weights: bool
    svg: Markup | None = None

    @property
    def baseline(self) -> Rung | None:
        return next((r for r in self.rungs if r.is_baseline), None)


def _settings_without_int8(view: CellView) -> str:
    runtime = view.record.cell.get("runtime")
    settings = runtime.get("settings") if isinstance(runtime, dict) else None
    rest = {k: v for k, v in (settings or {}).items() if k != "int8"} if isinstance(settings, dict) else {}
    return json.dumps(rest, sort_keys=True)


def rung_label(view: CellView) -> str:
    """The rung's name from what its record says was done: the calibration method, the nodes
    the plan kept in float (by name, or as the sensitivity pass's worst K), and "nothing
    quantized" when the tool quantized no node (an INT8 rung that runs in float)."""
    q = view.record.prepare.quantization
    if view.precision == "int8-dynamic":
        label = "INT8 dynamic"
    elif view.precision == "int8" and q is not None and q.calibration is not None:
        label = f"INT8 {q.calibration.method}"
        if q.keep_float:
            label += f", {_names(q.keep_float)} kept in float"
        if q.keep_float_worst:
            label += f", the worst {len(q.keep_float_worst)} kept in float"
    else:
        return view.precision.upper()
    if q is not None and q.quantized.count == 0:
        label += ", nothing quantized"
    return label


def _names(names: list[str]) -> str:
    return ", ".join(names) if len(names) <= 2 else f"{len(names)} nodes"


def _quantization_facts(view: CellView) -> dict[str, Any]:
    """What the record says the quantizer was told (defaults filled in), for telling rungs apart."""
    q = view.record.prepare.quantization
    if q is None:
        return {}
    return {
        "per_channel": q.per_channel, "op_types": q.op_types, "weight_type": q.weight_type,
        "activation_type": q.activation_type, "symmetric_activations": q.symmetric_activations,
        "calibration_images": q.calibration.count if q.calibration is not None else None,
    }


def _distinguish(rungs: list[Rung]) -> None:
    """Rungs whose labels collide (two INT8 entries differing in per_channel, op_types, image
    counts...) get the quantization facts that tell them apart, else their runtime entry's label."""
    by_label: dict[str, list[Rung]] = {}
    for rung in rungs:
        by_label.setdefault(rung.label, []).append(rung)
    for same in by_label.values():
        if len(same) < 2:
            continue
        facts = [_quantization_facts(r.view) for r in same]
        keys = sorted({k for f in facts for k in f})
        differing = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in facts}) > 1]
        for rung, own in zip(same, facts, strict=True):
            told = [f"{k}={json.dumps(own.get(k))}" for k in differing]
            rung.label += f" ({', '.join(told)})" if told else f" ({rung.view.runtime})"


def _points(value: float | None) -> float | None:
    return None if value is None or value < 0 else value * 100.0


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _size_rows(acc: Accuracy | None, ref: Accuracy | None) -> list[tuple[str, float | None, float | None, float | None]]:
    if acc is None or ref is None:
        return []
    a, r = acc.primary_metrics, ref.primary_metrics
    rows = []
    for key, words in SIZE_KEYS:
        got, base = _points(getattr(a, key, None)), _points(getattr(r, key, None))
        if got is not None or base is not None:
            rows.append((words, base, got, _diff(got, base)))
    return rows


def _class_rows(acc: Accuracy | None, ref: Accuracy | None) -> list[tuple[str, float | None, float | None, float | None]]:
    if acc is None or ref is None:
        return []
    rows = []
    for name in sorted(set(acc.per_class) | set(ref.per_class)):
        got, base = _points(acc.per_class.get(name)), _points(ref.per_class.get(name))
        rows.append((name, base, got, _diff(got, base)))
    # Worst first; classes without a change (no AP on either side) last.
    return sorted(rows, key=lambda r: (r[3] is None, r[3] if r[3] is not None else 0.0, r[0]))


def ladders(views: list[CellView]) -> list[Ladder]:
    """The run's precision ladders: groups with an FP32 cell and at least one other precision."""
    groups: dict[tuple[Any, ...], list[CellView]] = {}
    for v in views:
        groups.setdefault((v.model, v.runtime_name, _settings_without_int8(v), v.batch, v.resolution, v.scope), []).append(v)
    out: list[Ladder] = []
    for (model, runtime, _, batch, resolution, scope), cells in groups.items():
        if scope != "model" and (model, runtime, _, batch, resolution, "model") in groups:
            continue  # one ladder per configuration: the model scope when it was measured
        if not any(c.precision == "fp32" for c in cells) or all(c.precision == "fp32" for c in cells):
            continue
        base = next(c for c in cells if c.precision == "fp32")
        ordered = sorted(cells, key=lambda c: (PRECISION_ORDER.get(c.precision, 9), _kept(c), c.runtime))
        rungs = []
        for c in ordered:
            if c.precision == "fp32" and c is not base:
                continue
            delta = None if c.ap is None or base.ap is None else (0.0 if c is base else c.ap - base.ap)
            speedup = base.median / c.median if base.median and c.median else None
            rung = Rung(view=c, label=rung_label(c), median=c.median if c.measured else None, ap=c.ap, delta=delta,
                        speedup=speedup, quantization=c.record.prepare.quantization)
            if c is not base:
                rung.sizes = _size_rows(c.accuracy, base.accuracy)
                rung.classes = _class_rows(c.accuracy, base.accuracy)
            rungs.append(rung)
        _distinguish(rungs)
        ladder = Ladder(model, runtime, scope, batch, resolution, rungs, any(c.random_weights for c in cells))
        ladder.svg = ladder_chart(ladder)
        out.append(ladder)
    return out


def _kept(view: CellView) -> int:
    q = view.record.prepare.quantization
    return len(q.keep_float) + len(q.keep_float_worst) if q is not None else 0


def ladder_chart(ladder: Ladder) -> Markup | None:
    """Median latency (x) against the AP change from FP32 (y), one point per rung, joined in
    ladder order; FP32 sits at 0. Random weights: the points are hollow and the title says the
    mAP is meaningless."""
    points = [r for r in ladder.rungs if r.median is not None and r.delta is not None]
    if len(points) < 2:
        return None
    width, height, left, right, top, bottom = 760, 320, 70, 40, 24, 56
    lats = [r.median for r in points if r.median is not None]
    deltas = [r.delta for r in points if r.delta is not None]
    log = min(lats) > 0 and max(lats) / min(lats) > 6
    span_x = max(lats) - min(lats) or max(lats) * 0.2 or 1.0
    xs = (Scale(min(lats) / 1.3, max(lats) * 1.3, left, width - right, True) if log
          else Scale(max(min(lats) - span_x * 0.2, 0), max(lats) + span_x * 0.25, left, width - right))
    lo, hi = min(min(deltas), 0.0), max(max(deltas), 0.0)
    pad = (hi - lo) * 0.25 or 1.0
    ys = Scale(lo - pad, hi + pad, height - bottom, top)
    body = _x_axis(xs, height - bottom, top, "median latency per batch (ms)" + (", log scale" if log else ""))
    body += _y_axis(ys, left, left, width - right, "Δ mAP vs FP32 (AP points)")
    y0 = ys(0.0)
    body.append(f'<line class="ch-front" x1="{left}" x2="{width - right}" y1="{y0:.1f}" y2="{y0:.1f}"/>')
    path = "".join(("M" if i == 0 else "L") + f"{xs(r.median or 0):.1f},{ys(r.delta or 0):.1f}" for i, r in enumerate(points))
    body.append(f'<path d="{path}" fill="none" stroke="#999" stroke-width="1.5"/>')
    for i, r in enumerate(points):
        x, y = xs(r.median or 0), ys(r.delta or 0)
        color = PALETTE[i % len(PALETTE)]
        fill = "#fff" if ladder.random_weights else color
        tip = f"{r.label}: median {fmt.ms(r.median)} ms, Δ mAP {fmt.signed(r.delta)}"
        body.append(f'<g class="ch-point"><title>{_e(tip)}</title><circle cx="{x:.1f}" cy="{y:.1f}" r="6" '
                    f'fill="{_e(fill)}" stroke="{_e(color)}" stroke-width="2"/></g>')
        body.append(f'<text class="ch-sub" x="{x + 9:.1f}" y="{y - 9 - (i % 2) * 12:.1f}">{_e(r.label)}</text>')
    title = f"Precision ladder: {ladder.model} on {ladder.runtime} (b{ladder.batch}, {ladder.resolution}px, {ladder.scope} scope)"
    if ladder.random_weights:
        title += ": random weights, mAP meaningless"
    return _svg(width, height, body, title)


def keep_float_hint(rung: Rung, k: int = 3) -> str | None:
    """The settings line that keeps the worst nodes of the sensitivity pass in float."""
    q = rung.quantization
    if q is None or q.sensitivity is None or not q.sensitivity.top:
        return None
    names = [n.node for n in q.sensitivity.top[:k]]
    return "int8: {keep_float: " + json.dumps(names) + "}   # or int8: {keep_float_worst: " + str(k) + "}"


def ladder_markdown(items: list[Ladder]) -> list[str]:
    """summary.md's section: each ladder as a table (its rungs, latency, speed-up, Δ mAP, Δ AP
    small/medium/large, the worst class)."""
    if not items:
        return []
    lines = ["", "## Precision ladder", "",
             "Against each ladder's own FP32 cell, in AP points; small objects first (they degrade first).", ""]
    for ladder in items:
        note = " (random weights: mAP meaningless)" if ladder.random_weights else ""
        lines += [f"### {fmt.md(ladder.model)} · {fmt.md(ladder.runtime)}{note}", "",
                  "| rung | median ms | speed-up | Δ mAP | Δ AP small | Δ AP medium | Δ AP large | worst class | status |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in ladder.rungs:
            sizes = {words: d for words, _, _, d in r.sizes}
            worst = next(((n, d) for n, _, _, d in r.classes if d is not None and d < 0), None)  # none lost: none worst
            cells = [
                fmt.md(r.label), fmt.ms(r.median), "1x (ref)" if r.is_baseline else fmt.speedup(r.speedup),
                "0 (ref)" if r.is_baseline else fmt.signed(r.delta),
                *(("–" if r.is_baseline else fmt.signed(sizes.get(w))) for _, w in SIZE_KEYS),
                "–" if r.is_baseline or worst is None else f"{fmt.md(worst[0])} {fmt.signed(worst[1])}",
                fmt.md(r.view.status),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)
