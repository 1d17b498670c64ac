"""Statistics across processes: a cell measured in N fresh worker processes.

Samples inside one process are not independent of each other: they share the process's
allocator state, its JIT and autotuning choices, the cores it was given and the host's speed
while it ran. On the lent H200 the medians of identical processes moved by 17% to 50%, while
each process's own bootstrap interval was ±1%. So the unit of a result is the process: each
process keeps its raw samples, and the cell's figures come from the process medians.

* **Headline**: the median of the process medians.
* **Interval** (`rerun_ci95`): the 95% interval for the headline a re-run of the same plan on the
  same machine would give, from a hierarchical bootstrap: resample the processes, then the
  samples within each chosen process, take the median of medians; do that twice and the spread
  of the differences is what separates two runs' headlines. With few processes the bootstrap
  underestimates the between-process spread (three processes never show the tails), so the
  differences are widened by sqrt(n / (n - 1)) and by the ratio of Student's t quantile to the
  normal one, at the Welch-Satterthwaite degrees of freedom of the between- and within-process
  variance components: wide when few processes disagree, close to the bootstrap when the
  processes agree. `ci95` is the plain hierarchical-bootstrap percentile interval of the
  headline itself (what the population of processes' typical median is), kept for reference.
* **Between and within**: the between-process CoV of the medians and their spread
  ((max - min) / headline) against the median within-process CoV. A cell whose process
  medians spread more than MAX_BETWEEN_SPREAD is `unstable_between_processes`.

Computed in log space (latencies are positive and their changes multiplicative). All
resampling uses numpy's default_rng(seed): the same samples give the same figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from harness.results import MEASURED_STATUSES, CellRecord
from harness.results import AcrossProcesses as AcrossProcessesResult

# A cell is unstable between processes when its process medians spread by more than this
# fraction of the headline (max - min) / headline.
MAX_BETWEEN_SPREAD = 0.05
N_BOOT = 2000
# Bootstrap draws in memory at once are bounded: processes x samples per draw.
_BLOCK_ELEMENTS = 2_000_000


@dataclass(frozen=True)
class AcrossProcesses:
    processes: int
    process_medians: list[float]
    headline: float  # median of the process medians
    rerun_ci95: tuple[float, float]  # where a re-run's headline is expected, 95%
    ci95: tuple[float, float]  # hierarchical-bootstrap interval of the headline
    between_cov: float | None  # std / mean of the process medians (None with one process)
    between_spread: float  # (max - min) / headline of the process medians
    within_cov_median: float  # median over processes of each process's CoV
    degrees_of_freedom: float | None  # of the re-run interval's t quantile
    unstable_reasons: list[str]

    @property
    def unstable_between_processes(self) -> bool:
        return bool(self.unstable_reasons)


def _arrays(processes: Sequence[Sequence[float]]) -> list[np.ndarray]:
    arrays = [np.asarray(p, dtype=np.float64) for p in processes]
    if not arrays or any(a.ndim != 1 or a.size == 0 for a in arrays):
        raise ValueError("every process needs a non-empty list of samples")
    if any(not np.all(np.isfinite(a)) or np.any(a <= 0) for a in arrays):
        raise ValueError("samples must be finite and positive")
    return arrays


def _bootstrap_headlines(
    arrays: list[np.ndarray], n_boot: int, rng: np.random.Generator, *, resample_processes: bool = True
) -> np.ndarray:
    """`n_boot` bootstrap headlines: processes resampled (or kept), then samples within each."""
    n = len(arrays)
    out = np.empty(n_boot)
    width = max(a.size for a in arrays)
    rows = max(1, _BLOCK_ELEMENTS // (n * width))
    for first in range(0, n_boot, rows):
        count = min(rows, n_boot - first)
        chosen = rng.integers(0, n, (count, n)) if resample_processes else np.tile(np.arange(n), (count, 1))
        medians = np.empty((count, n))
        for index, samples in enumerate(arrays):
            mask = chosen == index
            draws = int(mask.sum())
            if draws == 0:
                continue
            picks = samples[rng.integers(0, samples.size, (draws, samples.size))]
            medians[mask] = np.median(picks, axis=1)
        out[first : first + count] = np.median(medians, axis=1)
    return out


def _t_over_z(df: float, level: float = 0.95) -> float:
    from scipy import stats

    tail = 0.5 + level / 2
    return float(stats.t.ppf(tail, df) / stats.norm.ppf(tail)) if math.isfinite(df) else 1.0


def across_processes(
    processes: Sequence[Sequence[float]],
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    max_between_spread: float = MAX_BETWEEN_SPREAD,
) -> AcrossProcesses:
    """The cell's figures from each process's raw samples (see the module docstring)."""
    arrays = _arrays(processes)
    n = len(arrays)
    medians = np.array([np.median(a) for a in arrays])
    headline = float(np.median(medians))
    rng = np.random.default_rng(seed)
    first = np.log(_bootstrap_headlines(arrays, n_boot, rng))
    second = np.log(_bootstrap_headlines(arrays, n_boot, rng))
    ci = tuple(float(np.exp(v)) for v in np.percentile(first, [2.5, 97.5]))
    differences = first - second
    df: float | None = None
    if n > 1:
        within = float(np.var(np.log(_bootstrap_headlines(arrays, n_boot, rng, resample_processes=False))))
        total = float(np.var(differences)) / 2 * n / (n - 1)
        between = max(total - within, 0.0)
        sample_df = sum(a.size - 1 for a in arrays)
        df = (total**2 / (between**2 / (n - 1) + within**2 / max(sample_df, 1))) if total > 0 else math.inf
        differences = differences * math.sqrt(n / (n - 1)) * _t_over_z(df)
    lo, hi = np.percentile(differences, [2.5, 97.5])
    covs = [float(a.std(ddof=1) / a.mean()) if a.size > 1 else 0.0 for a in arrays]
    spread = float((medians.max() - medians.min()) / headline)
    reasons = []
    if n > 1 and spread > max_between_spread:
        shown = ", ".join(f"{m:.4g}" for m in medians)
        reasons.append(
            f"process medians {shown} ms spread {spread * 100:.1f}% of the headline > {max_between_spread * 100:g}%"
        )
    return AcrossProcesses(
        processes=n,
        process_medians=[float(m) for m in medians],
        headline=headline,
        rerun_ci95=(headline * float(np.exp(lo)), headline * float(np.exp(hi))),
        ci95=(ci[0], ci[1]),
        between_cov=float(medians.std(ddof=1) / medians.mean()) if n > 1 else None,
        between_spread=spread,
        within_cov_median=float(np.median(covs)),
        degrees_of_freedom=None if df is None or not math.isfinite(df) else round(df, 2),
        unstable_reasons=reasons,
    )


@dataclass(frozen=True)
class ProcessComparison:
    """B against A at the level of processes: Welch's t-test on the logs of the process
    medians (assumptions: the processes of each side are independent draws, their log medians
    roughly normal; variances may differ). `change_pct` is the ratio of the geometric means of
    the process medians, minus one, with its interval at `level` from the same t distribution."""

    n_a: int
    n_b: int
    change_pct: float
    change_ci_pct: tuple[float, float] | None  # at `level`; None with one process on a side
    p_value: float | None
    degrees_of_freedom: float | None
    test: str


def compare_processes(a_medians: Sequence[float], b_medians: Sequence[float], *, level: float = 0.95) -> ProcessComparison:
    a = np.log(np.asarray(a_medians, dtype=np.float64))
    b = np.log(np.asarray(b_medians, dtype=np.float64))
    if a.size == 0 or b.size == 0:
        raise ValueError("both sides need at least one process median")
    diff = float(b.mean() - a.mean())
    change = (math.exp(diff) - 1.0) * 100.0
    if a.size < 2 or b.size < 2:
        return ProcessComparison(int(a.size), int(b.size), change, None, None, None,
                                 "none: one process on a side leaves the between-process variance unknown")
    from scipy import stats

    va, vb = float(a.var(ddof=1)) / a.size, float(b.var(ddof=1)) / b.size
    se = math.sqrt(va + vb)
    if se == 0.0:
        return ProcessComparison(int(a.size), int(b.size), change, (change, change), 0.0 if diff else 1.0, math.inf,
                                 "Welch's t-test on log process medians (no spread on either side)")
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    t = diff / se
    p = float(2 * stats.t.sf(abs(t), df))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    ci = ((math.exp(diff - half) - 1.0) * 100.0, (math.exp(diff + half) - 1.0) * 100.0)
    return ProcessComparison(int(a.size), int(b.size), change, ci, p, round(df, 2),
                             "Welch's t-test on log process medians")


def across_records(group: Sequence[CellRecord]) -> AcrossProcessesResult | None:
    """The cell-level latency entry for one cell's process records (harness.results.
    group_by_cell), from the processes that were measured; None when none was."""
    measured = [r for r in group if r.latency is not None and r.status in MEASURED_STATUSES]
    if not measured:
        return None
    samples = [r.latency.samples_ms for r in measured if r.latency is not None]
    figures = across_processes(samples)
    pooled = np.concatenate([np.asarray(s, dtype=np.float64) for s in samples])
    batch = measured[0].identity.batch
    return AcrossProcessesResult(
        processes=figures.processes,
        process_medians=figures.process_medians,
        headline=figures.headline,
        rerun_ci95=figures.rerun_ci95,
        ci95=figures.ci95,
        between_cov=figures.between_cov,
        between_spread=figures.between_spread,
        within_cov_median=figures.within_cov_median,
        degrees_of_freedom=figures.degrees_of_freedom,
        unstable_reasons=figures.unstable_reasons,
        p90=float(np.percentile(pooled, 90)),
        p99=float(np.percentile(pooled, 99)),
        throughput_ips=batch * 1000.0 / figures.headline,
        repeats_planned=measured[0].identity.protocol.repeats,
    )
