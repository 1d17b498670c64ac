"""Charts as inline SVG, drawn in Python: no JavaScript library, no CDN, no fonts to fetch.

Each function takes plain numbers and labels and returns `markupsafe.Markup` ready for a
Jinja template. Every text and attribute value passes through `_e` (HTML escaping), because
labels come from plans and model files. Styling lives in the page's CSS (classes `ch-*`), so
the charts follow the report's typography.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from markupsafe import Markup

from harness.report import fmt

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#7A6A00", "#444444"]
STATUS_COLORS = {
    "ok": "#0072B2",
    "unstable": "#E69F00",
    "throttled": "#D55E00",
    "accuracy_regression": "#CC79A7",
}
STAGE_COLORS = {
    "decode": "#7A6A00",
    "preprocess": "#56B4E9",
    "h2d": "#E69F00",
    "infer": "#0072B2",
    "d2h": "#D55E00",
    "postprocess": "#009E73",
}
CHAR_W = 6.6  # average width of a 12px system-font character, for layout only


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _clip(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: max(chars - 1, 1)] + "…"


class Scale:
    """Maps data values to pixels, linear or logarithmic, with readable ticks."""

    def __init__(self, lo: float, hi: float, a: float, b: float, log: bool = False):
        if log:
            lo = max(lo, 1e-9)
            hi = max(hi, lo * 1.0001)
        elif hi <= lo:
            hi = lo + (abs(lo) or 1.0) * 0.1
        self.lo, self.hi, self.a, self.b, self.log = lo, hi, a, b, log

    def _t(self, v: float) -> float:
        return math.log10(max(v, 1e-12)) if self.log else v

    def __call__(self, v: float) -> float:
        t0, t1 = self._t(self.lo), self._t(self.hi)
        return self.a + (self._t(v) - t0) / (t1 - t0) * (self.b - self.a)

    def ticks(self, target: int = 6) -> list[float]:
        if self.log:
            decades = range(math.floor(math.log10(self.lo)), math.ceil(math.log10(self.hi)) + 1)
            out: list[float] = []
            # Fewer ticks per decade as the range widens: 1-1.5-2-3-5-7, 1-2-5, then 1 only.
            for mantissas in ((1, 1.5, 2, 3, 5, 7), (1, 2, 5), (1,)):
                out = [m * 10.0**e for e in decades for m in mantissas if self.lo <= m * 10.0**e <= self.hi]
                if len(out) <= 9:
                    break
            return out or [self.lo, self.hi]
        span = self.hi - self.lo
        raw = span / max(target, 1)
        mag = 10 ** math.floor(math.log10(raw))
        step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw)
        first = math.ceil(self.lo / step) * step
        out = []
        v = first
        while v <= self.hi + step * 1e-9:
            out.append(round(v, 10))
            v += step
        return out


def _tick_labels(ticks: list[float]) -> list[str]:
    """The fewest decimals that keep neighbouring ticks apart (48.05 and 48.1, not 48.1 twice)."""
    for decimals in range(0, 5):
        labels = [f"{t:,.{decimals}f}" for t in ticks]
        if len(set(labels)) == len(labels):
            return labels
    return [f"{t:.4g}" for t in ticks]


def _svg(width: int, height: int, body: list[str], label: str) -> Markup:
    return Markup(
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{_e(label)}"><title>{_e(label)}</title>{"".join(body)}</svg>'
    )


def _x_axis(scale: Scale, y: float, top: float, title: str) -> list[str]:
    parts = [f'<line class="ch-axis" x1="{scale.a:.1f}" x2="{scale.b:.1f}" y1="{y:.1f}" y2="{y:.1f}"/>']
    ticks = scale.ticks()
    for t, label in zip(ticks, _tick_labels(ticks)):
        x = scale(t)
        parts.append(f'<line class="ch-grid" x1="{x:.1f}" x2="{x:.1f}" y1="{top:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="ch-tick" x="{x:.1f}" y="{y + 16:.1f}" text-anchor="middle">{_e(label)}</text>')
    mid = (scale.a + scale.b) / 2
    parts.append(f'<text class="ch-label" x="{mid:.1f}" y="{y + 36:.1f}" text-anchor="middle">{_e(title)}</text>')
    return parts


def _y_axis(scale: Scale, x: float, left: float, right: float, title: str, side: str = "left", grid: bool = True) -> list[str]:
    parts = [f'<line class="ch-axis" x1="{x:.1f}" x2="{x:.1f}" y1="{scale.a:.1f}" y2="{scale.b:.1f}"/>']
    ticks = scale.ticks(5)
    for t, label in zip(ticks, _tick_labels(ticks)):
        y = scale(t)
        if grid:
            parts.append(f'<line class="ch-grid" x1="{left:.1f}" x2="{right:.1f}" y1="{y:.1f}" y2="{y:.1f}"/>')
        if side == "left":
            parts.append(f'<text class="ch-tick" x="{x - 6:.1f}" y="{y + 4:.1f}" text-anchor="end">{_e(label)}</text>')
        else:
            parts.append(f'<text class="ch-tick" x="{x + 6:.1f}" y="{y + 4:.1f}">{_e(label)}</text>')
    mid = (scale.a + scale.b) / 2
    tx = x - 46 if side == "left" else x + 50
    parts.append(
        f'<text class="ch-label" transform="translate({tx:.1f},{mid:.1f}) rotate(-90)" '
        f'text-anchor="middle">{_e(title)}</text>'
    )
    return parts


def _legend(items: list[tuple[str, str]], x: float, y: float, kind: str = "rect", dashed: tuple[str, ...] = ()) -> list[str]:
    """A horizontal legend: (colour, text) pairs from (x, y); `dashed` names dashed lines."""
    parts = []
    for color, text in items:
        if kind == "line":
            dash = ' stroke-dasharray="5 3"' if text in dashed else ""
            parts.append(f'<line x1="{x:.1f}" x2="{x + 18:.1f}" y1="{y - 4:.1f}" y2="{y - 4:.1f}" stroke="{_e(color)}" stroke-width="2.5"{dash}/>')
        else:
            parts.append(f'<rect x="{x:.1f}" y="{y - 10:.1f}" width="12" height="12" rx="2" fill="{_e(color)}"/>')
        parts.append(f'<text class="ch-legend" x="{x + 20:.1f}" y="{y:.1f}">{_e(text)}</text>')
        x += 32 + len(text) * CHAR_W
    return parts


# ----------------------------------------------------------------------------- distribution


@dataclass
class DistRow:
    label: str  # the model
    sublabel: str  # the configuration
    samples: Sequence[float]
    status: str = "ok"
    color: str | None = None  # overrides the status colour (compare: run A grey, run B blue)


def latency_distribution(
    rows: list[DistRow],
    title: str = "Latency distribution per cell",
    legend: list[tuple[str, str]] | None = None,
) -> Markup:
    """One row per cell: the shape of all raw samples (a violin), the interquartile box, the
    median, and whiskers from p1 to p99, on one shared axis (log when the cells span more
    than a factor of six)."""
    rows = [r for r in rows if len(r.samples)]
    if not rows:
        return Markup("")
    width, left, right, top, row_h = 960, 300, 80, 34, 40
    height = top + row_h * len(rows) + 50
    arrays = [np.asarray(r.samples, dtype=float) for r in rows]
    lo = min(float(np.percentile(a, 0.5)) for a in arrays)
    hi = max(float(np.percentile(a, 99.5)) for a in arrays)
    log = lo > 0 and hi / lo > 6
    pad = (hi - lo) * 0.04 if not log else 0
    scale = Scale(lo / 1.08 if log else max(lo - pad, 0), hi * 1.08 if log else hi + pad, left, width - right, log)
    body = _legend(legend or [(c, s.replace("_", " ")) for s, c in STATUS_COLORS.items()], 12, 16)
    body.append(f'<text class="ch-note" x="{width - 8:.1f}" y="16" text-anchor="end">box: p25–p75 · bar: median · whiskers: p1–p99</text>')
    axis_y = top + row_h * len(rows) + 4
    body += _x_axis(scale, axis_y, top - 4, "latency per batch (ms)" + (", log scale" if log else ""))
    for i, (row, a) in enumerate(zip(rows, arrays)):
        cy = top + row_h * i + row_h / 2
        color = row.color or STATUS_COLORS.get(row.status, PALETTE[-1])
        p1, p25, p50, p75, p99 = (float(v) for v in np.percentile(a, [1, 25, 50, 75, 99]))
        tip = (
            f"{row.label} — {row.sublabel}\n{len(a):,} samples · median {fmt.ms(p50)} ms · "
            f"p25 {fmt.ms(p25)} · p75 {fmt.ms(p75)} · p99 {fmt.ms(p99)} ms · status {row.status}"
        )
        g = [f'<g class="ch-row"><title>{_e(tip)}</title>']
        if i % 2 == 0:
            g.append(f'<rect class="ch-band" x="0" y="{cy - row_h / 2:.1f}" width="{width}" height="{row_h}"/>')
        g.append(f'<text class="ch-name" x="{left - 12}" y="{cy - 2:.1f}" text-anchor="end">{_e(_clip(row.label, 40))}</text>')
        g.append(f'<text class="ch-sub" x="{left - 12}" y="{cy + 12:.1f}" text-anchor="end">{_e(_clip(row.sublabel, 44))}</text>')
        g.append(_violin(a, scale, cy, 13, color))
        x1, x99 = scale(max(p1, scale.lo)), scale(min(p99, scale.hi))
        g.append(f'<line class="ch-whisker" x1="{x1:.1f}" x2="{x99:.1f}" y1="{cy:.1f}" y2="{cy:.1f}"/>')
        for xw in (x1, x99):
            g.append(f'<line class="ch-whisker" x1="{xw:.1f}" x2="{xw:.1f}" y1="{cy - 4:.1f}" y2="{cy + 4:.1f}"/>')
        g.append(
            f'<rect class="ch-box" x="{scale(p25):.1f}" y="{cy - 4:.1f}" '
            f'width="{max(scale(p75) - scale(p25), 1.5):.1f}" height="8" rx="1.5"/>'
        )
        xm = scale(p50)
        g.append(f'<line class="ch-median" x1="{xm:.1f}" x2="{xm:.1f}" y1="{cy - 9:.1f}" y2="{cy + 9:.1f}"/>')
        g.append(f'<text class="ch-value" x="{width - right + 8}" y="{cy + 4:.1f}">{_e(fmt.ms(p50))} ms</text>')
        g.append("</g>")
        body.append("".join(g))
    return _svg(width, height, body, title)


@dataclass
class ProcessRow:
    label: str
    sublabel: str
    process_medians: list[float]
    headline: float
    interval: tuple[float, float] | None  # the re-run interval
    status: str


def process_medians(rows: list[ProcessRow], title: str = "Process medians per cell") -> Markup:
    """One row per cell measured in several processes: a dot per process median, the headline
    (their median) as a bar, its re-run interval as a band. Dots that agree sit on the bar; a
    cell whose processes disagree shows it at a glance."""
    rows = [r for r in rows if r.process_medians]
    if not rows:
        return Markup("")
    width, left, right, top, row_h = 960, 300, 80, 34, 34
    height = top + row_h * len(rows) + 50
    values = [v for r in rows for v in (*r.process_medians, *(r.interval or ()))]
    lo, hi = min(values), max(values)
    log = lo > 0 and hi / lo > 6
    pad = (hi - lo) * 0.06 or hi * 0.05
    scale = Scale(lo / 1.1 if log else max(lo - pad, 0), hi * 1.1 if log else hi + pad, left, width - right, log)
    body = [f'<text class="ch-note" x="{width - 8:.1f}" y="16" text-anchor="end">dot: one process\'s median · '
            'bar: headline (median of medians) · band: 95% re-run interval</text>']
    body += _x_axis(scale, top + row_h * len(rows) + 4, top - 4, "median latency per batch (ms)" + (", log scale" if log else ""))
    for i, row in enumerate(rows):
        cy = top + row_h * i + row_h / 2
        color = STATUS_COLORS.get(row.status, PALETTE[-1])
        shown = ", ".join(fmt.ms(m) for m in row.process_medians)
        band = f" · re-run interval {fmt.ms(row.interval[0])}–{fmt.ms(row.interval[1])} ms" if row.interval else ""
        g = [f'<g class="ch-row"><title>{_e(f"{row.label} — {row.sublabel}: processes {shown} ms; headline {fmt.ms(row.headline)} ms{band}")}</title>']
        if i % 2 == 0:
            g.append(f'<rect class="ch-band" x="0" y="{cy - row_h / 2:.1f}" width="{width}" height="{row_h}"/>')
        g.append(f'<text class="ch-name" x="{left - 12}" y="{cy - 2:.1f}" text-anchor="end">{_e(_clip(row.label, 40))}</text>')
        g.append(f'<text class="ch-sub" x="{left - 12}" y="{cy + 12:.1f}" text-anchor="end">{_e(_clip(row.sublabel, 44))}</text>')
        if row.interval:
            x0, x1 = scale(max(row.interval[0], scale.lo)), scale(min(row.interval[1], scale.hi))
            g.append(f'<rect x="{x0:.1f}" y="{cy - 6:.1f}" width="{max(x1 - x0, 1.5):.1f}" height="12" rx="2" '
                     f'fill="{color}" fill-opacity="0.18"/>')
        xm = scale(row.headline)
        g.append(f'<line class="ch-median" x1="{xm:.1f}" x2="{xm:.1f}" y1="{cy - 9:.1f}" y2="{cy + 9:.1f}"/>')
        for m in row.process_medians:
            g.append(f'<circle cx="{scale(m):.1f}" cy="{cy:.1f}" r="3.5" fill="{color}" stroke="#fff" stroke-width="1"/>')
        g.append(f'<text class="ch-value" x="{width - right + 8}" y="{cy + 4:.1f}">{_e(fmt.ms(row.headline))} ms</text>')
        g.append("</g>")
        body.append("".join(g))
    return _svg(width, height, body, title)


def _violin(a: np.ndarray, scale: Scale, cy: float, half: float, color: str) -> str:
    """A mirrored density outline of the samples, smoothed over pixel bins."""
    xs = np.array([scale(float(v)) for v in np.clip(a, scale.lo, scale.hi)])
    lo_px, hi_px = float(xs.min()), float(xs.max())
    if hi_px - lo_px < 2:
        return f'<rect x="{lo_px - 1:.1f}" y="{cy - half:.1f}" width="3" height="{2 * half:.1f}" fill="{_e(color)}" fill-opacity="0.35"/>'
    edges = np.arange(lo_px - 6, hi_px + 8, 2.0)
    counts, _ = np.histogram(xs, bins=edges)
    kernel = np.exp(-0.5 * (np.arange(-8, 9) / 2.5) ** 2)
    density = np.convolve(counts.astype(float), kernel / kernel.sum(), mode="same")
    density = density / density.max() * half
    centers = (edges[:-1] + edges[1:]) / 2
    top = " ".join(f"{x:.1f},{cy - d:.1f}" for x, d in zip(centers, density))
    bottom = " ".join(f"{x:.1f},{cy + d:.1f}" for x, d in zip(centers[::-1], density[::-1]))
    return f'<polygon class="ch-violin" points="{top} {bottom}" fill="{_e(color)}"/>'


# ----------------------------------------------------------------------------- pareto


@dataclass
class ParetoPoint:
    label: str  # full description (tooltip)
    short: str  # printed next to frontier points
    model: str
    runtime: str
    latency: float
    ap: float
    random_weights: bool = False


MARKERS = ["circle", "square", "triangle", "diamond", "down", "cross"]


def _marker(kind: str, x: float, y: float, color: str, hollow: bool) -> str:
    fill = "#fff" if hollow else color
    style = f'fill="{_e(fill)}" stroke="{_e(color)}" stroke-width="2"'
    r = 6.0
    if kind == "square":
        return f'<rect x="{x - r + 1:.1f}" y="{y - r + 1:.1f}" width="{2 * r - 2:.1f}" height="{2 * r - 2:.1f}" {style}/>'
    if kind == "triangle":
        return f'<polygon points="{x:.1f},{y - r:.1f} {x + r:.1f},{y + r * 0.8:.1f} {x - r:.1f},{y + r * 0.8:.1f}" {style}/>'
    if kind == "down":
        return f'<polygon points="{x:.1f},{y + r:.1f} {x + r:.1f},{y - r * 0.8:.1f} {x - r:.1f},{y - r * 0.8:.1f}" {style}/>'
    if kind == "diamond":
        return f'<polygon points="{x:.1f},{y - r:.1f} {x + r:.1f},{y:.1f} {x:.1f},{y + r:.1f} {x - r:.1f},{y:.1f}" {style}/>'
    if kind == "cross":
        return (
            f'<path d="M{x - r:.1f},{y - r:.1f}L{x + r:.1f},{y + r:.1f}M{x - r:.1f},{y + r:.1f}L{x + r:.1f},{y - r:.1f}" '
            f'stroke="{_e(color)}" stroke-width="2.5"/>'
        )
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r - 0.5:.1f}" {style}/>'


def _runtime_legend(body: list[str], lx: int, ly: int, runtimes: list[str], color: dict[str, str],
                    clip: int = 28) -> int:
    """The runtime-by-colour part of a chart's legend; returns the y of its last row."""
    body.append(f'<text class="ch-legend-h" x="{lx}" y="{ly}">runtime (colour)</text>')
    for r in runtimes:
        ly += 18
        body.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" rx="2" fill="{_e(color[r])}"/>')
        body.append(f'<text class="ch-legend" x="{lx + 20}" y="{ly}">{_e(_clip(r, clip))}</text>')
    return ly


def _runtime_model_legend(body: list[str], lx: int, ly: int, runtimes: list[str], models: list[str],
                          color: dict[str, str], shape: dict[str, str]) -> int:
    """The scatter charts' two-part legend (runtime by colour, model by marker shape); returns
    the y of its last row."""
    ly = _runtime_legend(body, lx, ly, runtimes, color)
    ly += 28
    body.append(f'<text class="ch-legend-h" x="{lx}" y="{ly}">model (shape)</text>')
    for m in models:
        ly += 18
        body.append(_marker(shape[m], lx + 6, ly - 4, "#555", False))
        body.append(f'<text class="ch-legend" x="{lx + 20}" y="{ly}">{_e(_clip(m, 28))}</text>')
    return ly


def pareto_front(points: list[ParetoPoint]) -> list[ParetoPoint]:
    """Points no other point beats on both latency (lower) and mAP (higher)."""
    front: list[ParetoPoint] = []
    best = -math.inf
    for p in sorted(points, key=lambda p: (p.latency, -p.ap)):
        if p.ap > best:
            front.append(p)
            best = p.ap
    return front


def pareto(points: list[ParetoPoint], title: str, metric: str = "mAP (COCO AP50:95)") -> Markup:
    """Latency (x) against mAP (y), colour by runtime, shape by model, the Pareto front dashed.

    When some points have random weights and others do not, the random ones go to a strip
    below the axis: their mAP (near zero) would otherwise squash the meaningful points."""
    if not points:
        return Markup("")
    width, height, left, right, top, bottom = 960, 420, 70, 230, 20, 56
    trained = [p for p in points if not p.random_weights]
    strip = 0 < len(trained) < len(points)
    strip_h = 34 if strip else 0
    lats = [p.latency for p in points]
    aps = [p.ap for p in (trained if strip else points)]
    log = min(lats) > 0 and max(lats) / min(lats) > 6
    if log:
        xs = Scale(min(lats) / 1.25, max(lats) * 1.25, left, width - right, True)
    else:
        span = max(lats) - min(lats) or max(lats) * 0.2 or 1.0
        xs = Scale(max(min(lats) - span * 0.15, 0), max(lats) + span * 0.15, left, width - right)
    span_y = max(aps) - min(aps) or 2.0
    plot_bottom = height - bottom - strip_h
    ys = Scale(max(min(aps) - span_y * 0.2, 0), max(aps) + span_y * 0.25, plot_bottom, top)
    body = _x_axis(xs, height - bottom, top, "median latency per batch (ms)" + (", log scale" if log else ""))
    body += _y_axis(ys, left, left, width - right, metric)
    if strip:
        body.append(f'<rect class="ch-band" x="{left}" y="{plot_bottom + 4}" width="{width - right - left}" height="{strip_h - 6}"/>')
        body.append(f'<text class="ch-note" x="{left + 6}" y="{plot_bottom + 16}">random weights: mAP meaningless, latency only</text>')
    runtimes = sorted({p.runtime for p in points})
    models = sorted({p.model for p in points})
    color = {r: PALETTE[i % len(PALETTE)] for i, r in enumerate(runtimes)}
    shape = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(models)}
    front = pareto_front([p for p in points if not p.random_weights]) or pareto_front(points)
    if len(front) > 1:
        path = []
        for i, p in enumerate(front):
            x, y = xs(p.latency), ys(p.ap)
            if i == 0:
                path.append(f"M{x:.1f},{y:.1f}")
            else:
                path.append(f"H{x:.1f}V{y:.1f}")
        body.append(f'<path class="ch-front" d="{"".join(path)}"/>')
    front_ids = {id(p) for p in front}
    for p in points:
        x = xs(p.latency)
        y = plot_bottom + strip_h / 2 + 4 if strip and p.random_weights else ys(p.ap)
        tip = f"{p.label}\nmedian {fmt.ms(p.latency)} ms · {metric} {fmt.num(p.ap)}" + (
            "\nrandom weights: mAP is meaningless" if p.random_weights else ""
        )
        body.append(f'<g class="ch-point"><title>{_e(tip)}</title>{_marker(shape[p.model], x, y, color[p.runtime], p.random_weights)}</g>')
        if id(p) in front_ids and not (strip and p.random_weights):
            body.append(f'<text class="ch-sub" x="{x + 9:.1f}" y="{y - 8:.1f}">{_e(_clip(p.short, 30))}</text>')
    lx, ly = width - right + 24, top + 14
    ly = _runtime_model_legend(body, lx, ly, runtimes, models, color, shape)
    ly += 28
    body.append(f'<path class="ch-front" d="M{lx},{ly - 4}h16"/>')
    body.append(f'<text class="ch-legend" x="{lx + 20}" y="{ly}">Pareto front</text>')
    if any(p.random_weights for p in points):
        ly += 18
        body.append(_marker("circle", lx + 6, ly - 4, "#555", True))
        body.append(f'<text class="ch-legend" x="{lx + 20}" y="{ly}">hollow: random weights</text>')
    return _svg(width, height, body, title)


# ----------------------------------------------------------------------------- stages


@dataclass
class StageBar:
    label: str
    sublabel: str
    stages: dict[str, float]  # stage -> median ms, in pipeline order
    total: float | None  # the end-to-end median


def stage_breakdown(bars: list[StageBar], title: str = "Where end-to-end time goes",
                    axis: str = "median time per batch (ms)") -> Markup:
    """Stacked bars of each stage's median; the gap to the end-to-end median (work between
    the timed stages) is drawn hatched as `untimed`."""
    bars = [b for b in bars if b.stages]
    if not bars:
        return Markup("")
    width, left, right, top, row_h = 960, 300, 150, 40, 40
    height = top + row_h * len(bars) + 50
    longest = max(max(b.total or 0, sum(b.stages.values())) for b in bars)
    scale = Scale(0, longest * 1.02, left, width - right)
    names: list[str] = []
    for b in bars:
        for s in b.stages:
            if s not in names:
                names.append(s)
    colors = {s: STAGE_COLORS.get(s, PALETTE[i % len(PALETTE)]) for i, s in enumerate(names)}
    body = [
        '<defs><pattern id="ch-hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#f1f1f1"/>'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#bbb" stroke-width="2"/></pattern></defs>'
    ]
    body += _legend([(colors[s], s) for s in names] + [("url(#ch-hatch)", "untimed")], left, 18)
    axis_y = top + row_h * len(bars) + 4
    body += _x_axis(scale, axis_y, top - 6, axis)
    for i, b in enumerate(bars):
        cy = top + row_h * i + row_h / 2
        g = ['<g class="ch-row">']
        tip = f"{b.label} — {b.sublabel}\n" + " · ".join(f"{k} {fmt.ms(v)} ms" for k, v in b.stages.items())
        if b.total is not None:
            tip += f"\nend-to-end median {fmt.ms(b.total)} ms"
        g.append(f"<title>{_e(tip)}</title>")
        g.append(f'<text class="ch-name" x="{left - 12}" y="{cy - 2:.1f}" text-anchor="end">{_e(_clip(b.label, 40))}</text>')
        g.append(f'<text class="ch-sub" x="{left - 12}" y="{cy + 12:.1f}" text-anchor="end">{_e(_clip(b.sublabel, 44))}</text>')
        x = scale(0)
        for s, v in b.stages.items():
            w = scale(v) - scale(0)
            g.append(f'<rect x="{x:.1f}" y="{cy - 11:.1f}" width="{max(w, 0.5):.1f}" height="22" fill="{_e(colors[s])}"/>')
            if w > 38:
                g.append(f'<text class="ch-inbar" x="{x + w / 2:.1f}" y="{cy + 4:.1f}" text-anchor="middle">{_e(fmt.ms(v))}</text>')
            x += w
        staged = sum(b.stages.values())
        if b.total is not None and b.total > staged:
            w = scale(b.total) - x
            g.append(f'<rect x="{x:.1f}" y="{cy - 11:.1f}" width="{w:.1f}" height="22" fill="url(#ch-hatch)"/>')
            x += w
        total = b.total if b.total is not None else staged
        g.append(f'<text class="ch-value" x="{x + 8:.1f}" y="{cy + 4:.1f}">{_e(fmt.ms(total))} ms</text>')
        g.append("</g>")
        body.append("".join(g))
    return _svg(width, height, body, title)


# ----------------------------------------------------------------------------- sustained


@dataclass
class SustainedSeries:
    label: str
    windows: list[tuple[float, float, float]]  # (time at the window's middle s, p50 ms, p99 ms)
    clock: list[tuple[float, float]] = field(default_factory=list)  # (t s, SM MHz)
    throttled: list[tuple[float, float]] = field(default_factory=list)  # spans (t0, t1) s


def sustained(series: SustainedSeries) -> Markup:
    """Latency per window (median, and p99 dashed) and the SM clock over the same time, on two
    axes; spans with an active power or thermal slowdown are shaded."""
    if not series.windows:
        return Markup("")
    width, height, left, right, top, bottom = 960, 320, 76, 80, 36, 56
    t_end = max([w[0] for w in series.windows] + [c[0] for c in series.clock] + [s[1] for s in series.throttled])
    xs = Scale(0, t_end * 1.01 or 1.0, left, width - right)
    lat_lo = min(w[1] for w in series.windows)
    lat_hi = max(w[2] for w in series.windows)
    pad = (lat_hi - lat_lo) * 0.15 or lat_hi * 0.1
    ys = Scale(max(lat_lo - pad, 0), lat_hi + pad, height - bottom, top)
    body: list[str] = []
    for t0, t1 in series.throttled:
        body.append(f'<rect class="ch-throttle" x="{xs(t0):.1f}" y="{top}" width="{max(xs(t1) - xs(t0), 1):.1f}" height="{height - bottom - top}"/>')
    body += _x_axis(xs, height - bottom, top, "time since the start of measurement (s)")
    body += _y_axis(ys, left, left, width - right, "latency per window (ms)")
    lat_color, clk_color = PALETTE[0], PALETTE[1]
    p50 = " ".join(f"{xs(t):.1f},{ys(v):.1f}" for t, v, _ in series.windows)
    p99 = " ".join(f"{xs(t):.1f},{ys(v):.1f}" for t, _, v in series.windows)
    body.append(f'<polyline class="ch-line" points="{p99}" stroke="{lat_color}" stroke-dasharray="5 4" stroke-opacity="0.6"/>')
    body.append(f'<polyline class="ch-line" points="{p50}" stroke="{lat_color}"/>')
    for t, v, v99 in series.windows:
        body.append(
            f'<circle cx="{xs(t):.1f}" cy="{ys(v):.1f}" r="3" fill="{lat_color}"><title>'
            f"{_e(f't={t:.0f} s · median {fmt.ms(v)} ms · p99 {fmt.ms(v99)} ms')}</title></circle>"
        )
    legend = [(lat_color, "median latency"), (lat_color, "p99 latency")]
    if series.clock:
        mhz = [c[1] for c in series.clock]
        c_lo, c_hi = min(mhz), max(mhz)
        cpad = (c_hi - c_lo) * 0.15 or c_hi * 0.05
        cs = Scale(max(c_lo - cpad, 0), c_hi + cpad, height - bottom, top)
        body += _y_axis(cs, width - right, left, width - right, "SM clock (MHz)", side="right", grid=False)
        pts = " ".join(f"{xs(t):.1f},{cs(v):.1f}" for t, v in series.clock)
        body.append(f'<polyline class="ch-line" points="{pts}" stroke="{clk_color}" stroke-width="1.6"/>')
        legend.append((clk_color, "SM clock"))
    body += _legend(legend, left, 18, kind="line", dashed=("p99 latency",))
    if series.throttled:
        body.append(f'<rect class="ch-throttle" x="{width - right - 170}" y="8" width="12" height="12"/>')
        body.append(f'<text class="ch-legend" x="{width - right - 152}" y="18">power / thermal slowdown</text>')
    return _svg(width, height, body, f"Sustained run: {series.label}")


# ----------------------------------------------------------------------------- compare


@dataclass
class ChangeBar:
    label: str
    sublabel: str
    change_pct: float  # positive: B slower
    verdict: str  # slower | faster | no change beyond threshold | inconclusive | no verdict
    p_value: float


def change_bars(bars: list[ChangeBar], threshold_pct: float, title: str = "Change in median latency, B against A") -> Markup:
    """Diverging bars around zero: right is slower. Dashed lines mark the gate's threshold;
    only bars whose whole interval lies past it are coloured as a regression or an improvement."""
    if not bars:
        return Markup("")
    width, left, right, top, row_h = 960, 300, 90, 34, 34
    height = top + row_h * len(bars) + 50
    reach = max([abs(b.change_pct) for b in bars] + [threshold_pct * 1.5]) * 1.1
    scale = Scale(-reach, reach, left, width - right)
    colors = {"slower": "#cf222e", "faster": "#1a7f37"}
    body = _legend([("#cf222e", "slower: the whole interval past the threshold"), ("#1a7f37", "faster: the whole interval past it"),
                    ("#afb8c1", "no change beyond it, inconclusive, or no verdict")], 12, 16)
    axis_y = top + row_h * len(bars) + 4
    body += _x_axis(scale, axis_y, top - 6, "change in median latency (%)")
    for x in (scale(-threshold_pct), scale(threshold_pct)):
        body.append(f'<line class="ch-front" x1="{x:.1f}" x2="{x:.1f}" y1="{top - 6}" y2="{axis_y}"/>')
    zero = scale(0)
    body.append(f'<line class="ch-axis" x1="{zero:.1f}" x2="{zero:.1f}" y1="{top - 6}" y2="{axis_y}"/>')
    for i, b in enumerate(bars):
        cy = top + row_h * i + row_h / 2
        x = scale(max(min(b.change_pct, reach), -reach))
        color = colors.get(b.verdict, "#afb8c1")
        tip = f"{b.label} — {b.sublabel}\nchange {b.change_pct:+.2f}% · p = {b.p_value:.3g} · {b.verdict}"
        g = [f'<g class="ch-row"><title>{_e(tip)}</title>']
        if i % 2 == 0:
            g.append(f'<rect class="ch-band" x="0" y="{cy - row_h / 2:.1f}" width="{width}" height="{row_h}"/>')
        g.append(f'<text class="ch-name" x="{left - 12}" y="{cy - 2:.1f}" text-anchor="end">{_e(_clip(b.label, 40))}</text>')
        g.append(f'<text class="ch-sub" x="{left - 12}" y="{cy + 12:.1f}" text-anchor="end">{_e(_clip(b.sublabel, 44))}</text>')
        g.append(f'<rect x="{min(x, zero):.1f}" y="{cy - 8:.1f}" width="{max(abs(x - zero), 1.5):.1f}" height="16" rx="2" fill="{color}"/>')
        g.append(f'<text class="ch-value" x="{width - right + 8}" y="{cy + 4:.1f}">{_e(fmt.pct(b.change_pct))}</text>')
        g.append("</g>")
        body.append("".join(g))
    return _svg(width, height, body, title)


# ----------------------------------------------------------------------------- small helpers


def downsample(points: list[tuple[float, float]], limit: int = 600) -> list[tuple[float, float]]:
    """At most `limit` points, each the mean of a run of consecutive ones (a monitor trace at
    20 ms over five minutes is 15,000 points; a chart 900 pixels wide shows 600)."""
    if len(points) <= limit:
        return points
    arr = np.asarray(points, dtype=float)
    chunks = np.array_split(arr, limit)
    return [(float(c[:, 0].mean()), float(c[:, 1].mean())) for c in chunks if len(c)]


# ----------------------------------------------------------------------------- resources


@dataclass
class ScatterPoint:
    label: str  # full description (tooltip)
    short: str  # printed beside the point
    model: str
    runtime: str
    x: float  # latency, ms
    y: float  # the resource (MB, J per image)
    status: str = "ok"


def resource_scatter(
    points: list[ScatterPoint],
    title: str,
    y_label: str,
    y_unit: str,
    *,
    y_limit: float | None = None,
    x_limit: float | None = None,
    x_label: str = "median latency per batch (ms)",
) -> Markup:
    """Latency (x) against a resource (y) per configuration: colour by runtime, shape by model,
    every point labelled; a budget the cells share is drawn as a dashed line (the corner below
    and left of both lines is where configurations meet them)."""
    if not points:
        return Markup("")
    width, height, left, right, top, bottom = 960, 400, 76, 230, 20, 56
    xs_v = [p.x for p in points] + ([x_limit] if x_limit else [])
    ys_v = [p.y for p in points] + ([y_limit] if y_limit else [])

    def scale(values: list[float], a: float, b: float) -> Scale:
        lo, hi = min(values), max(values)
        if lo > 0 and hi / lo > 6:
            return Scale(lo / 1.25, hi * 1.25, a, b, True)
        span = hi - lo or hi * 0.2 or 1.0
        return Scale(max(lo - span * 0.15, 0), hi + span * 0.15, a, b)

    xs = scale(xs_v, left, width - right)
    ys = scale(ys_v, height - bottom, top)
    body = _x_axis(xs, height - bottom, top, x_label + (", log scale" if xs.log else ""))
    body += _y_axis(ys, left, left, width - right, y_label + (", log scale" if ys.log else ""))
    if y_limit is not None:
        y = ys(y_limit)
        body.append(f'<line class="ch-front" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>')
        body.append(f'<text class="ch-note" x="{width - right - 4}" y="{y - 5:.1f}" text-anchor="end">'
                    f'budget {_e(f"{y_limit:g}")} {_e(y_unit)}</text>')
    if x_limit is not None:
        x = xs(x_limit)
        body.append(f'<line class="ch-front" x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{height - bottom}"/>')
        body.append(f'<text class="ch-note" x="{x + 4:.1f}" y="{top + 12}">budget {_e(f"{x_limit:g}")} ms</text>')
    runtimes = sorted({p.runtime for p in points})
    models = sorted({p.model for p in points})
    color = {r: PALETTE[i % len(PALETTE)] for i, r in enumerate(runtimes)}
    shape = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(models)}
    placed: list[tuple[float, float]] = []
    for p in points:
        x, y = xs(p.x), ys(p.y)
        tip = f"{p.label}\nmedian {fmt.ms(p.x)} ms · {y_label} {fmt.sig(p.y)} {y_unit} · status {p.status}"
        body.append(f'<g class="ch-point"><title>{_e(tip)}</title>{_marker(shape[p.model], x, y, color[p.runtime], p.status not in STATUS_COLORS)}</g>')
        ty = y - 8
        while any(abs(tx - (x + 9)) < 150 and abs(py - ty) < 13 for tx, py in placed):
            ty += 14  # two points (nearly) on top of each other: their labels stack
        placed.append((x + 9, ty))
        body.append(f'<text class="ch-sub" x="{x + 9:.1f}" y="{ty:.1f}">{_e(_clip(p.short, 30))}</text>')
    lx, ly = width - right + 24, top + 14
    ly = _runtime_model_legend(body, lx, ly, runtimes, models, color, shape)
    if y_limit is not None or x_limit is not None:
        ly += 28
        body.append(f'<path class="ch-front" d="M{lx},{ly - 4}h16"/>')
        body.append(f'<text class="ch-legend" x="{lx + 20}" y="{ly}">budget</text>')
    return _svg(width, height, body, title)
