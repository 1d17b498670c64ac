"""Is run B's latency different from run A's? A Mann-Whitney U test on the raw samples.

Latency samples are skewed and carry outliers (a context switch, a clock step), so a rank test
fits them better than Student's t (pyperf's choice). scipy is not a dependency, so the test is
written here with numpy: average ranks for ties, the tie-corrected variance and the continuity
correction, exactly as `scipy.stats.mannwhitneyu(x, y, method="asymptotic")` computes it (the
tests check both against published values and, where scipy is installed, against scipy).

Caveat, stated in the report: consecutive latency samples are not independent (clocks and
caches drift), so with thousands of samples the test calls tiny shifts significant. That is
why `bench compare` gates on significance AND a minimum relative change, never on p alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike


@dataclass(frozen=True)
class MannWhitney:
    u1: float  # U statistic of the first sample (x)
    z: float
    p_value: float  # two-sided
    n1: int
    n2: int


def rank_average(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ranks 1..n with ties given their average rank, and the size of every tie group."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1], True])
    counts = np.diff(starts)
    average = starts[:-1] + (counts + 1) / 2.0
    ranks = np.empty(len(values), dtype=float)
    ranks[order] = np.repeat(average, counts)
    return ranks, counts


def mann_whitney_u(x: ArrayLike, y: ArrayLike, *, continuity: bool = True) -> MannWhitney:
    """Two-sided Mann-Whitney U test, normal approximation with tie and continuity correction."""
    a = np.asarray(x, dtype=float).ravel()
    b = np.asarray(y, dtype=float).ravel()
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        raise ValueError("both samples need at least one finite value")
    ranks, ties = rank_average(np.concatenate([a, b]))
    u1 = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2.0)
    u2 = n1 * n2 - u1
    n = n1 + n2
    mean = n1 * n2 / 2.0
    tie_term = float((ties.astype(float) ** 3 - ties).sum())
    variance = n1 * n2 / 12.0 * ((n + 1) - tie_term / (n * (n - 1))) if n > 1 else 0.0
    if variance <= 0:  # every value equal: no evidence of any shift
        return MannWhitney(u1=u1, z=0.0, p_value=1.0, n1=n1, n2=n2)
    u = max(u1, u2)
    z = (u - mean - (0.5 if continuity else 0.0)) / math.sqrt(variance)
    p = min(1.0, math.erfc(z / math.sqrt(2.0)))  # 2 * normal survival function at z
    return MannWhitney(u1=u1, z=z, p_value=max(p, 0.0), n1=n1, n2=n2)


def median_change_pct(a: ArrayLike, b: ArrayLike) -> float:
    """(median(b) / median(a) - 1) x 100: positive means b is slower."""
    ma = float(np.median(np.asarray(a, dtype=float)))
    mb = float(np.median(np.asarray(b, dtype=float)))
    return (mb / ma - 1.0) * 100.0
