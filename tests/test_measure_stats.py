"""Statistics against numpy on the same samples, instability flags, launch-bound, windows."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from harness.measure.protocol import MeasureResult
from harness.measure.stats import (
    bootstrap_median_ci,
    build_latency,
    is_launch_bound,
    summarize,
    unstable_reasons,
    windows,
)
from harness.results import Latency, Stats


def lognormal(n: int, seed: int = 1, sigma: float = 0.1) -> np.ndarray:
    """Latency-like samples: positive, right-skewed, median 5 ms."""
    return 5.0 * np.random.default_rng(seed).lognormal(0.0, sigma, size=n)


def make_stats(**kwargs: object) -> Stats:
    base: dict[str, object] = {
        "count": 100, "mean": 10.0, "std": 0.1, "min": 9.0, "max": 11.0, "p50": 10.0,
        "p90": 10.2, "p95": 10.3, "p99": 10.5, "cov": 0.01, "median_ci95": (9.95, 10.05),
        "median_ci_rel_width": 0.01,
    }  # fmt: skip
    base.update(kwargs)
    return Stats(**base)  # type: ignore[arg-type]


# -- summarize -------------------------------------------------------------------------------


def test_summary_matches_numpy_on_the_same_samples() -> None:
    x = lognormal(1001)
    stats = summarize(x.tolist())
    assert stats.count == 1001
    assert stats.mean == pytest.approx(np.mean(x), rel=1e-12)
    assert stats.std == pytest.approx(np.std(x, ddof=1), rel=1e-12)
    assert stats.min == x.min()
    assert stats.max == x.max()
    for name, q in (("p50", 50), ("p90", 90), ("p95", 95), ("p99", 99)):
        assert getattr(stats, name) == pytest.approx(np.percentile(x, q, method="linear"))
    assert stats.p50 == pytest.approx(np.median(x))
    assert stats.cov == pytest.approx(np.std(x, ddof=1) / np.mean(x))
    lo, hi = stats.median_ci95
    assert lo <= stats.p50 <= hi
    assert stats.median_ci_rel_width == pytest.approx((hi - lo) / np.median(x))


def test_percentiles_interpolate_linearly_on_a_small_sample() -> None:
    stats = summarize([1.0, 2.0, 3.0, 4.0])
    # numpy linear: position q/100 * (n-1) -> p90 at 2.7 -> 3.7
    assert stats.p50 == 2.5
    assert stats.p90 == pytest.approx(3.7)
    assert stats.p99 == pytest.approx(3.97)
    assert stats.std == pytest.approx(np.std([1, 2, 3, 4], ddof=1))


def test_single_sample_and_bad_input() -> None:
    stats = summarize([7.0])
    assert (stats.std, stats.cov, stats.median_ci95, stats.median_ci_rel_width) == (
        0.0, 0.0, (7.0, 7.0), 0.0,
    )  # fmt: skip
    with pytest.raises(ValueError, match="non-empty"):
        summarize([])
    with pytest.raises(ValueError, match="NaN"):
        summarize([1.0, float("nan")])


def test_bootstrap_is_seeded_and_reproducible() -> None:
    x = lognormal(300)
    assert bootstrap_median_ci(x, seed=3) == bootstrap_median_ci(x.tolist(), seed=3)
    assert bootstrap_median_ci(x, seed=3) != bootstrap_median_ci(x, seed=4)
    assert summarize(x) == summarize(x)


def test_bootstrap_interval_agrees_with_scipy() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    x = lognormal(400, seed=5)
    lo, hi = bootstrap_median_ci(x, n_boot=4000, seed=0)
    ref = scipy_stats.bootstrap(
        (x,), np.median, n_resamples=4000, method="percentile", random_state=1
    ).confidence_interval
    width = ref.high - ref.low
    assert lo == pytest.approx(ref.low, abs=0.15 * width)
    assert hi == pytest.approx(ref.high, abs=0.15 * width)


def test_bootstrap_interval_agrees_with_order_statistics_in_blocks() -> None:
    # 50,000 samples take several memory-bounded blocks; the distribution-free interval of the
    # median (order statistics n/2 -+ 1.96 sqrt(n)/2) is the reference.
    x = lognormal(50_000, seed=7)
    lo, hi = bootstrap_median_ci(x, n_boot=200, seed=0)
    s = np.sort(x)
    half = 1.96 * np.sqrt(x.size) / 2
    ref_lo, ref_hi = s[int(x.size / 2 - half)], s[int(x.size / 2 + half)]
    width = ref_hi - ref_lo
    assert lo == pytest.approx(ref_lo, abs=0.25 * width)
    assert hi == pytest.approx(ref_hi, abs=0.25 * width)


def test_bootstrap_interval_covers_the_true_median_about_95_percent_of_the_time() -> None:
    true_median = 5.0  # lognormal(0, sigma) has median exp(0) = 1
    covered = 0
    trials = 100
    for seed in range(trials):
        lo, hi = bootstrap_median_ci(lognormal(101, seed=seed + 100), n_boot=500, seed=seed)
        covered += lo <= true_median <= hi
    assert 0.85 <= covered / trials <= 1.0


# -- instability -----------------------------------------------------------------------------


def test_stable_stats_have_no_reasons() -> None:
    assert unstable_reasons(make_stats()) == []


def test_cov_above_five_percent_is_named_with_its_figure() -> None:
    reasons = unstable_reasons(make_stats(cov=0.073))
    assert reasons == ["CoV 7.3% > 5%"]


def test_wide_median_interval_is_named_with_its_figures() -> None:
    reasons = unstable_reasons(make_stats(median_ci95=(9.8, 10.04), median_ci_rel_width=0.024))
    assert len(reasons) == 1
    assert "2.4%" in reasons[0] and "> 2%" in reasons[0] and "9.8" in reasons[0]


def test_thresholds_are_parameters() -> None:
    stats = make_stats(cov=0.03, median_ci_rel_width=0.015)
    assert unstable_reasons(stats) == []
    assert len(unstable_reasons(stats, max_cov=0.025, max_ci_rel_width=0.01)) == 2


def test_noisy_samples_are_flagged_and_quiet_ones_are_not() -> None:
    assert unstable_reasons(summarize(lognormal(2000, sigma=0.005))) == []
    noisy = unstable_reasons(summarize(lognormal(2000, sigma=0.3)))
    assert any(r.startswith("CoV ") for r in noisy)
    few_noisy = unstable_reasons(summarize(lognormal(20, sigma=0.04)))
    assert any("median 95% CI" in r for r in few_noisy)


# -- launch-bound ----------------------------------------------------------------------------


def test_launch_bound_compares_medians() -> None:
    assert is_launch_bound([0.9, 1.0, 1.1], [0.5, 0.6, 0.7])
    assert not is_launch_bound([0.1, 0.1, 2.0], [1.0, 1.0, 1.0])  # one slow launch is not it
    assert is_launch_bound([1.0, 1.0], [1.0, 1.0])
    # trtexec's rule: enqueue time at 80% of device time already starves the device...
    assert is_launch_bound([0.8, 0.8], [1.0, 1.0])
    assert is_launch_bound([8.82], [8.83])  # eager RF-DETR Nano on an H200: host/device = 0.999
    # ...below it the device has work queued ahead of the host.
    assert not is_launch_bound([0.7, 0.7], [1.0, 1.0])
    with pytest.raises(ValueError, match="host samples"):
        is_launch_bound([1.0], [1.0, 2.0])


# -- windows ---------------------------------------------------------------------------------


def test_windows_group_by_sample_start_and_skip_empty_windows() -> None:
    samples = [1.0, 2.0, 3.0, 10.0, 11.0]
    starts = [0.0, 0.4, 0.9, 2.5, 2.9]  # nothing starts in [1, 2)
    trace: list[dict[str, float | None]] = [
        {"t_s": 0.1, "sm_mhz": 1000.0, "temp_c": 40.0},
        {"t_s": 0.5, "sm_mhz": 1200.0, "temp_c": 42.0},
        {"t_s": 0.8, "sm_mhz": None, "temp_c": 41.0},
        {"t_s": 1.5, "sm_mhz": 900.0, "temp_c": 60.0},
    ]
    result = windows(samples, starts, 1.0, trace)
    assert [(w.start_s, w.end_s) for w in result] == [(0.0, 1.0), (2.0, 3.0)]
    assert [w.stats.count for w in result] == [3, 2]
    assert result[0].stats.p50 == 2.0
    assert result[1].stats.mean == 10.5
    assert result[0].sm_clock_mhz_median == 1100.0
    assert result[0].temperature_c_max == 42.0
    assert result[1].sm_clock_mhz_median is None
    assert result[1].temperature_c_max is None
    assert windows(samples, starts, 1.0)[0].sm_clock_mhz_median is None
    with pytest.raises(ValueError, match="start times"):
        windows(samples, starts[:-1], 1.0)


# -- build_latency ---------------------------------------------------------------------------


def result_of(samples: list[float], host: list[float] | None = None) -> MeasureResult:
    return MeasureResult(
        samples_ms=samples,
        host_samples_ms=host if host is not None else list(samples),
        sample_start_s=[i * 0.1 for i in range(len(samples))],
        warmup_iterations=10,
        warmup_s=1.5,
        measure_s=len(samples) * 0.1,
        stop_reason="min_iterations_and_min_seconds",
    )


def test_build_latency_derives_everything_from_the_samples() -> None:
    samples = [20.0, 19.0, 21.0, 20.0, 20.0]
    latency = build_latency(
        result_of(samples), scope="model", timer_name="perf_counter",
        timed_region="forward pass", batch=4,
    )  # fmt: skip
    assert latency.stats == summarize(samples)
    assert latency.throughput_ips == pytest.approx(4 * 1000 / 20.0)
    assert latency.samples_ms == samples
    assert latency.host_samples_ms is None and latency.launch_bound is None
    assert latency.stages is None and latency.windows is None
    assert latency.unstable_reasons == unstable_reasons(latency.stats)
    assert (latency.warmup_iterations, latency.warmup_s, latency.batch) == (10, 1.5, 4)
    assert latency.timer == "perf_counter" and latency.timed_region == "forward pass"


def test_build_latency_decides_launch_bound_for_distinct_host_samples() -> None:
    device = [2.0, 2.1, 2.0, 2.2]

    def latency(host: list[float], asynchronous_call: bool = True) -> Latency:
        return build_latency(
            result_of(device, host), scope="model", timer_name="cuda_event", timed_region="x",
            batch=1, asynchronous_call=asynchronous_call,
        )  # fmt: skip

    bound = latency([3.0, 3.0, 3.1, 2.9])
    assert bound.launch_bound is True
    assert bound.host_samples_ms == [3.0, 3.0, 3.1, 2.9]
    free = latency([0.1, 0.1, 0.2, 0.1])
    assert free.launch_bound is False
    blocking = latency([3.0, 3.0, 3.1, 2.9], asynchronous_call=False)
    assert blocking.launch_bound is None
    assert blocking.host_samples_ms is not None


def test_build_latency_stages_windows_and_flags() -> None:
    samples = [10.0, 30.0, 10.0, 30.0, 10.0, 30.0]
    stage_samples = {"preprocess": [4.0, 5.0, 4.0, 5.0, 4.0, 5.0], "infer": [6.0] * 6}
    latency = build_latency(
        result_of(samples), scope="end_to_end", timer_name="perf_counter",
        timed_region="decoded image in, detections out", batch=1,
        stage_samples=stage_samples, window_s=0.3,
    )  # fmt: skip
    assert latency.stages is not None
    assert latency.stages["preprocess"].stats == summarize(stage_samples["preprocess"])
    assert latency.stages["infer"].samples_ms == [6.0] * 6
    assert latency.windows is not None
    assert sum(w.stats.count for w in latency.windows) == 6
    assert latency.unstable_reasons and latency.unstable_reasons[0].startswith("CoV ")


def test_build_latency_rejects_an_unknown_scope_and_a_zero_median() -> None:
    with pytest.raises(ValidationError):
        build_latency(result_of([1.0]), scope="galaxy", timer_name="t", timed_region="x", batch=1)
    with pytest.raises(ValueError, match="cannot resolve"):
        build_latency(result_of([0.0, 0.0]), scope="model", timer_name="t", timed_region="x", batch=1)
