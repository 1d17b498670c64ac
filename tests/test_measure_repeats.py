"""Statistics across processes: the headline, its re-run interval, between/within spread, and
the process-level comparison."""

from __future__ import annotations

import numpy as np
import pytest

from harness.measure.repeats import across_processes, compare_processes


def _processes(medians: list[float], cov: float = 0.05, n: int = 200, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [m * np.exp(rng.normal(0.0, cov, n)) for m in medians]


def test_headline_is_the_median_of_process_medians() -> None:
    procs = _processes([10.0, 20.0, 12.0])
    result = across_processes(procs)
    assert result.processes == 3
    assert result.headline == pytest.approx(float(np.median([np.median(p) for p in procs])))
    assert result.process_medians == pytest.approx([float(np.median(p)) for p in procs])


def test_processes_that_agree_give_a_narrow_interval_and_no_flag() -> None:
    result = across_processes(_processes([3.28, 3.26, 3.30, 3.27, 3.29]))
    lo, hi = result.rerun_ci95
    assert lo < result.headline < hi
    assert (hi - lo) / result.headline < 0.06
    assert not result.unstable_between_processes and result.between_spread < 0.03


def test_processes_that_disagree_are_flagged_with_the_figures_and_a_wide_interval() -> None:
    result = across_processes(_processes([20.3, 14.9, 20.6]))
    assert result.unstable_between_processes
    assert "spread 28." in result.unstable_reasons[0] and "14.76" in result.unstable_reasons[0]
    lo, hi = result.rerun_ci95
    assert lo < 14.9 and hi > 20.6  # a re-run may land on either mode
    assert result.between_cov is not None and result.between_cov > 0.1
    assert result.within_cov_median == pytest.approx(0.05, rel=0.2)


def test_one_process_has_no_between_process_figures() -> None:
    result = across_processes(_processes([5.0]))
    assert result.between_cov is None and result.degrees_of_freedom is None and not result.unstable_reasons


def test_same_samples_same_figures() -> None:
    procs = _processes([7.5, 6.2, 8.3])
    assert across_processes(procs) == across_processes(procs)


def test_the_rerun_interval_covers_other_runs_headlines_at_its_level() -> None:
    """Calibration on simulated runs: 3 processes, between-process sd 10% (log), within 10%."""
    rng = np.random.default_rng(5)
    hits, trials = 0, 120
    for i in range(trials):
        def one_run() -> list[np.ndarray]:
            medians = np.exp(rng.normal(0.0, 0.1, 3))
            return [m * np.exp(rng.normal(0.0, 0.1, 60)) for m in medians]

        a, b = one_run(), one_run()
        lo, hi = across_processes(a, n_boot=400, seed=i).rerun_ci95
        hits += lo <= across_processes(b, n_boot=50, seed=i).headline <= hi
    assert hits / trials >= 0.9


def test_bad_samples_are_refused() -> None:
    with pytest.raises(ValueError):
        across_processes([])
    with pytest.raises(ValueError):
        across_processes([[1.0, float("nan")]])
    with pytest.raises(ValueError):
        across_processes([[1.0], []])


def test_compare_catches_a_ten_percent_slowdown_of_agreeing_processes() -> None:
    result = compare_processes([10.0, 10.1, 9.95], [11.0, 11.1, 10.95], level=0.99)
    assert result.change_pct == pytest.approx(10.0, abs=0.3)
    assert result.change_ci_pct is not None and result.change_ci_pct[0] > 5.0
    assert result.p_value is not None and result.p_value < 0.01


def test_compare_does_not_call_noise_a_change() -> None:
    result = compare_processes([20.3, 14.9, 20.6], [13.9, 19.9, 20.8], level=0.99)
    assert result.change_ci_pct is not None and result.change_ci_pct[0] < 0 < result.change_ci_pct[1]
    assert result.p_value is not None and result.p_value > 0.5


def test_one_process_a_side_gives_no_test() -> None:
    result = compare_processes([10.0], [12.0])
    assert result.p_value is None and result.change_ci_pct is None and "unknown" in result.test
    assert result.change_pct == pytest.approx(20.0)
