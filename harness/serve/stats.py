"""Figures of a set of requests: percentiles with intervals, histograms, the monitoring figures
and the distribution-shift check. numpy only; used by the server (its /v1/stats) and by the
scenario runner, so both compute every figure the same way.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from harness.results.serve import Histogram, Monitoring, Quantiles, ShiftItem

Z95 = 1.959963984540054

# Detections per answer: bins of one up to 20, then wider; the last edge is open-ended.
DETECTION_EDGES = [float(x) for x in (*range(0, 21), 30, 50, 100, 300, 1_000_000)]
SCORE_EDGES = [round(i / 10, 1) for i in range(11)]
MEGAPIXEL_EDGES = [0.0, 0.1, 0.3, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 50.0, 1000.0]
TOP_RESOLUTIONS = 20


def quantile_ci(sorted_values: np.ndarray, q: float) -> tuple[float, float] | None:
    """Distribution-free 95% interval of the q-quantile: the order statistics at ranks
    n q -/+ 1.96 sqrt(n q (1 - q)) (the normal approximation of the binomial count below the
    quantile). None when the sample is too small for the interval to stay inside it."""
    n = len(sorted_values)
    if n < 2:
        return None
    half = Z95 * math.sqrt(n * q * (1 - q))
    lo, hi = math.floor(n * q - half), math.ceil(n * q + half)
    if lo < 0 or hi > n - 1:
        return None
    return float(sorted_values[lo]), float(sorted_values[hi])


def quantiles(values: Sequence[float] | np.ndarray) -> Quantiles | None:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return None
    ordered = np.sort(arr)
    p50, p90, p95, p99 = (float(x) for x in np.percentile(ordered, [50, 90, 95, 99]))
    return Quantiles(
        count=int(ordered.size), mean=float(ordered.mean()), min=float(ordered[0]), max=float(ordered[-1]),
        p50=p50, p90=p90, p95=p95, p99=p99,
        p50_ci95=quantile_ci(ordered, 0.50), p95_ci95=quantile_ci(ordered, 0.95), p99_ci95=quantile_ci(ordered, 0.99),
    )


def histogram(values: Sequence[float] | np.ndarray, edges: Sequence[float]) -> Histogram:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    counts, _ = np.histogram(np.clip(arr, edges[0], edges[-1]), bins=np.asarray(edges, dtype=np.float64))
    return Histogram(edges=[float(e) for e in edges], counts=[int(c) for c in counts])


def subsample(values: list[float], cap: int, seed: int = 0) -> list[float]:
    """At most `cap` values: all of them, or a seeded uniform subsample in their original order."""
    if len(values) <= cap:
        return list(values)
    keep = np.sort(np.random.default_rng(seed).choice(len(values), size=cap, replace=False))
    return [values[i] for i in keep]


def monitoring(
    status_codes: Sequence[int],
    detections: Sequence[int],
    max_scores: Sequence[float],
    widths: Sequence[int],
    heights: Sequence[int],
) -> Monitoring:
    """The lesson's production figures over answered requests. `detections`, `max_scores`,
    `widths`, `heights` are of the 200 answers (max score NaN where nothing was detected)."""
    codes = Counter(str(c) for c in status_codes)
    ok = int(codes.get("200", 0))
    det = np.asarray(detections, dtype=np.float64)
    scores = np.asarray(max_scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    res = Counter(f"{w}x{h}" for w, h in zip(widths, heights, strict=True))
    top = dict(res.most_common(TOP_RESOLUTIONS))
    if len(res) > TOP_RESOLUTIONS:
        top["other"] = sum(res.values()) - sum(top.values())
    mp = np.asarray(widths, dtype=np.float64) * np.asarray(heights, dtype=np.float64) / 1e6
    return Monitoring(
        requests=ok,
        rejected=int(sum(codes.values()) - ok),
        status_codes=dict(sorted(codes.items())),
        detections=histogram(det, DETECTION_EDGES),
        zero_detection_share=float(np.mean(det == 0)) if det.size else None,
        detections_mean=float(det.mean()) if det.size else None,
        detections_p95=float(np.percentile(det, 95)) if det.size else None,
        max_score=histogram(scores, SCORE_EDGES),
        max_score_median=float(np.median(scores)) if scores.size else None,
        resolutions=top,
        megapixels=histogram(mp, MEGAPIXEL_EDGES) if mp.size else None,
    )


def psi(baseline: Sequence[int], current: Sequence[int], floor: float = 1e-4) -> float | None:
    """Population stability index of two histograms over the same bins:
    sum over bins of (c - b) ln(c / b), with shares floored so an empty bin does not make it
    infinite. Under 0.1 is usually read as stable, over 0.25 as a major shift."""
    b, c = np.asarray(baseline, dtype=np.float64), np.asarray(current, dtype=np.float64)
    if b.shape != c.shape or b.sum() == 0 or c.sum() == 0:
        return None
    pb, pc = np.maximum(b / b.sum(), floor), np.maximum(c / c.sum(), floor)
    return float(np.sum((pc - pb) * np.log(pc / pb)))


def shift_items(baseline: Monitoring, current: Monitoring, zero_share_change: float, psi_threshold: float) -> list[ShiftItem]:
    """The distribution-shift checks of `current` against `baseline` (the same cell of a
    baseline run): the share of answers without a detection (a camera suddenly seeing nothing),
    and the stability index of the detection-count, max-score and resolution distributions."""
    items: list[ShiftItem] = []
    zb, zc = baseline.zero_detection_share, current.zero_detection_share
    change = None if zb is None or zc is None else zc - zb
    items.append(ShiftItem(name="zero_detection_share", baseline=zb, current=zc, value=change,
                           threshold=zero_share_change, flagged=change is not None and abs(change) > zero_share_change))
    for name, hb, hc in (
        ("detections_psi", baseline.detections, current.detections),
        ("max_score_psi", baseline.max_score, current.max_score),
    ):
        value = psi(hb.counts, hc.counts) if hb.edges == hc.edges else None
        items.append(ShiftItem(name=name, baseline=None, current=None, value=value, threshold=psi_threshold,
                               flagged=value is not None and value > psi_threshold))
    keys = sorted(set(baseline.resolutions) | set(current.resolutions))
    value = psi([baseline.resolutions.get(k, 0) for k in keys], [current.resolutions.get(k, 0) for k in keys]) if keys else None
    items.append(ShiftItem(name="resolutions_psi", baseline=None, current=None, value=value, threshold=psi_threshold,
                           flagged=value is not None and value > psi_threshold))
    return items
