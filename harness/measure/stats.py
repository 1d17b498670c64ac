"""Statistics from kept raw samples: the one place every latency figure is derived.

Conventions (so anyone with numpy can recompute a figure from a results file):

* `std` is the sample standard deviation, `numpy.std(x, ddof=1)`: the samples are a sample of
  the call's latency distribution, not the whole of it (pyperf does the same). With a single
  sample it is 0.
* Percentiles are `numpy.percentile(x, q)` with numpy's default linear interpolation; p50 is
  the median.
* `cov` is std / mean.
* The median's 95% confidence interval is a percentile bootstrap: `n_boot` resamples with
  replacement (numpy `default_rng(seed)`, so the same samples give the same interval), the
  median of each, and the 2.5th and 97.5th percentiles of those medians.
  `median_ci_rel_width` = (hi - lo) / median.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.results import Latency, StageTiming, Stats, Window

if TYPE_CHECKING:
    from harness.measure.protocol import MeasureResult

# Thresholds of the `unstable` status: CoV above 5%, or a median whose 95% interval
# is wider than 2% of it.
MAX_COV = 0.05
MAX_CI_REL_WIDTH = 0.02

# Resampled values held in memory at once by the bootstrap (float64: 8 bytes each). A
# sustained run can keep 10^5 samples or more; 2000 x 10^5 at once would need 1.6 GB.
_BOOTSTRAP_BLOCK_ELEMENTS = 2_000_000

# Lists from a record, or arrays already in hand.
Samples = Sequence[float] | np.ndarray


def _as_array(samples_ms: Samples) -> np.ndarray:
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError("statistics need a non-empty 1-D sequence of samples")
    if not np.all(np.isfinite(x)):
        raise ValueError("samples contain NaN or infinity")
    return x


def bootstrap_median_ci(
    samples_ms: Samples, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median, vectorised in blocks of bounded memory."""
    x = _as_array(samples_ms)
    n = x.size
    if n == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    medians = np.empty(n_boot, dtype=np.float64)
    rows = max(1, _BOOTSTRAP_BLOCK_ELEMENTS // n)
    for first in range(0, n_boot, rows):
        count = min(rows, n_boot - first)
        idx = rng.integers(0, n, size=(count, n))
        medians[first : first + count] = np.median(x[idx], axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(medians, [tail, 100.0 - tail])
    return float(lo), float(hi)


def summarize(samples_ms: Samples, *, n_boot: int = 2000, seed: int = 0) -> Stats:
    """Every derived figure of one list of samples (see the module docstring for conventions)."""
    x = _as_array(samples_ms)
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    p50, p90, p95, p99 = (float(v) for v in np.percentile(x, [50, 90, 95, 99]))
    lo, hi = bootstrap_median_ci(x, n_boot=n_boot, seed=seed)
    return Stats(
        count=int(x.size),
        mean=mean,
        std=std,
        min=float(x.min()),
        max=float(x.max()),
        p50=p50,
        p90=p90,
        p95=p95,
        p99=p99,
        cov=std / mean if mean > 0 else 0.0,
        median_ci95=(lo, hi),
        median_ci_rel_width=(hi - lo) / p50 if p50 > 0 else 0.0,
    )


def _pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def _pct_limit(value: float) -> str:
    return f"{value * 100:g}%"


def unstable_reasons(
    stats: Stats, *, max_cov: float = MAX_COV, max_ci_rel_width: float = MAX_CI_REL_WIDTH
) -> list[str]:
    """Why a cell's latency is not trustworthy as one number, with the figures; empty if it is."""
    reasons: list[str] = []
    if stats.cov > max_cov:
        reasons.append(f"CoV {_pct(stats.cov)} > {_pct_limit(max_cov)}")
    if stats.median_ci_rel_width > max_ci_rel_width:
        lo, hi = stats.median_ci95
        reasons.append(
            f"median 95% CI [{lo:.4g}, {hi:.4g}] ms is {_pct(stats.median_ci_rel_width)} of the "
            f"median > {_pct_limit(max_ci_rel_width)}"
        )
    return reasons


LAUNCH_BOUND_RATIO = 0.8


def is_launch_bound(host_ms: Samples, device_ms: Samples, ratio: float = LAUNCH_BOUND_RATIO) -> bool:
    """True when the median host time per call reaches `ratio` (trtexec's 0.8) of the median
    device time: the device spends the call waiting for the host to enqueue work.

    Why not host >= device: when the device is starved, it finishes its last kernel moments
    after the host enqueued it, so device time is host time plus a sliver and the strict
    comparison never fires (seen on an H100/H200 with eager RF-DETR: host/device = 0.999).

    Meaningful only for calls that return before their device work is done (asynchronous
    launches). A call that blocks until done always has host time >= device time.
    """
    host = _as_array(host_ms)
    device = _as_array(device_ms)
    if host.size != device.size:
        raise ValueError(f"{host.size} host samples but {device.size} device samples")
    return bool(np.median(host) >= ratio * np.median(device))


def _trace_value(row: dict[str, Any], key: str) -> float | None:
    value = row.get(key)
    return None if value is None else float(value)


def windows(
    samples_ms: Samples,
    sample_start_s: Samples,
    window_s: float,
    monitor_trace: list[dict[str, Any]] | None = None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> list[Window]:
    """Cut a sustained run into windows [k*window_s, (k+1)*window_s) by each sample's start.

    A window with no sample starting in it (one call longer than the window) is left out; the
    last window may be partial. With a monitor trace (rows with `t_s` in seconds since the
    measurement start, `sm_mhz`, `temp_c`), each window also carries the median SM clock and
    the highest temperature of the rows inside it (None when there are none).
    """
    if window_s <= 0:
        raise ValueError(f"window_s must be positive, got {window_s}")
    x = _as_array(samples_ms)
    starts = np.asarray(sample_start_s, dtype=np.float64)
    if starts.shape != x.shape:
        raise ValueError(f"{x.size} samples but {starts.size} sample start times")
    index = np.floor(starts / window_s).astype(np.int64)
    rows = monitor_trace or []
    trace_t = np.asarray([float(row["t_s"]) for row in rows], dtype=np.float64)
    result: list[Window] = []
    for k in np.unique(index):
        lo_s, hi_s = float(k) * window_s, float(k + 1) * window_s
        inside = [rows[i] for i in np.flatnonzero((trace_t >= lo_s) & (trace_t < hi_s))]
        clocks = [v for v in (_trace_value(r, "sm_mhz") for r in inside) if v is not None]
        temps = [v for v in (_trace_value(r, "temp_c") for r in inside) if v is not None]
        result.append(
            Window(
                start_s=lo_s,
                end_s=hi_s,
                stats=summarize(x[index == k], n_boot=n_boot, seed=seed),
                sm_clock_mhz_median=float(np.median(clocks)) if clocks else None,
                temperature_c_max=max(temps) if temps else None,
            )
        )
    return result


def build_latency(
    result: MeasureResult,
    *,
    scope: str,
    timer_name: str,
    timed_region: str,
    batch: int,
    stage_samples: dict[str, list[float]] | None = None,
    window_s: float | None = None,
    monitor_trace: list[dict[str, Any]] | None = None,
    asynchronous_call: bool = True,
) -> Latency:
    """Everything the record says about latency, derived from one measurement.

    * `throughput_ips` = batch * 1000 / median latency (samples are per batch).
    * `host_samples_ms` is kept and `launch_bound` decided only when the host samples differ
      from the samples (a CUDA-event timer); with the host clock both are the same reading.
      Pass `asynchronous_call=False` for a call that blocks until its device work is done
      (its host time contains the device time, so the comparison would always say launch-bound).
    * `windows` only when `window_s` is given (sustained mode).
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    stats = summarize(result.samples_ms)
    if stats.p50 <= 0:
        raise ValueError(f"median latency is {stats.p50} ms: the {timer_name} timer cannot resolve this call")
    distinct_host = list(result.host_samples_ms) != list(result.samples_ms)
    host_samples = list(result.host_samples_ms) if distinct_host else None
    launch_bound: bool | None = None
    if distinct_host and asynchronous_call:
        launch_bound = is_launch_bound(result.host_samples_ms, result.samples_ms)
    stages = None
    if stage_samples is not None:
        stages = {
            name: StageTiming(samples_ms=list(times), stats=summarize(times)) for name, times in stage_samples.items()
        }
    window_list = None
    if window_s is not None:
        window_list = windows(result.samples_ms, result.sample_start_s, window_s, monitor_trace)
    return Latency(
        scope=scope,  # type: ignore[arg-type]  # pydantic validates the literal
        timer=timer_name,
        timed_region=timed_region,
        samples_ms=list(result.samples_ms),
        host_samples_ms=host_samples,
        stats=stats,
        warmup_iterations=result.warmup_iterations,
        warmup_s=result.warmup_s,
        measure_s=result.measure_s,
        stop_reason=result.stop_reason,
        batch=batch,
        throughput_ips=batch * 1000.0 / stats.p50,
        stages=stages,
        windows=window_list,
        unstable_reasons=unstable_reasons(stats),
        launch_bound=launch_bound,
    )
