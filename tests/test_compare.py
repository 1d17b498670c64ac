"""`bench compare`: the significance test against known values, and the CI gate on golden runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.report.compare import EXIT_OK, EXIT_REFUSED, EXIT_REGRESSION, compare_runs
from harness.report.significance import mann_whitney_u, median_change_pct, rank_average

RUNS = Path(__file__).parent / "data" / "runs"
TRT = "rfdetr-nano__tensorrt__fp16__b1__r384__model"


# ----------------------------------------------------------------------------- the test itself


def test_mann_whitney_matches_the_scipy_documentation_example() -> None:
    # scipy.stats.mannwhitneyu docs (Conover's example): males vs females, method="asymptotic"
    # gives U1 = 17.0 and p = 0.11134688653314041 (continuity correction on).
    males, females = [19, 22, 16, 29, 24], [20, 11, 17, 12]
    result = mann_whitney_u(males, females)
    assert result.u1 == 17.0
    assert result.p_value == pytest.approx(0.11134688653314041, rel=1e-12)
    # Without the continuity correction: z = (17 - 10) / sqrt(5 * 4 * 10 / 12).
    assert mann_whitney_u(males, females, continuity=False).p_value == pytest.approx(0.0864107329737, rel=1e-10)


def test_mann_whitney_with_ties_against_a_hand_computed_value() -> None:
    # x = [1, 2, 2, 3], y = [2, 3, 3, 4, 5]. Sorted: 1 | 2 2 2 | 3 3 3 | 4 | 5, so the ranks are
    # 1 | 3 3 3 | 6 6 6 | 8 | 9. R1 = 1 + 3 + 3 + 6 = 13, U1 = 13 - 4 * 5 / 2 = 3, U2 = 17.
    # Two tie groups of 3: variance = 4 * 5 / 12 * (10 - (24 + 24) / (9 * 8)) = 15.556;
    # z = (17 - 10 - 0.5) / sqrt(15.556) = 1.648; two-sided p = 0.099342 (scipy agrees:
    # mannwhitneyu(x, y, method="asymptotic").pvalue == 0.09934224785346528).
    x, y = [1, 2, 2, 3], [2, 3, 3, 4, 5]
    ranks, ties = rank_average(np.array(x + y, dtype=float))
    assert ranks.tolist() == [1, 3, 3, 6, 3, 6, 6, 8, 9]
    assert sorted(ties.tolist()) == [1, 1, 1, 3, 3]
    result = mann_whitney_u(x, y)
    assert result.u1 == 3.0
    assert result.z == pytest.approx(6.5 / (4 * 5 / 12 * (10 - 48 / 72)) ** 0.5)
    assert result.p_value == pytest.approx(0.09934224785346528, rel=1e-12)


def test_rank_average_gives_ties_their_mean_rank() -> None:
    ranks, counts = rank_average(np.array([3.0, 1.0, 4.0, 1.0, 5.0]))
    assert ranks.tolist() == [3.0, 1.5, 4.0, 1.5, 5.0]
    assert sorted(counts.tolist()) == [1, 1, 1, 2]


def test_identical_samples_show_no_shift() -> None:
    samples = np.random.default_rng(0).normal(10, 1, 500)
    assert mann_whitney_u(samples, samples).p_value == pytest.approx(1.0)
    assert mann_whitney_u([2.0] * 10, [2.0] * 12).p_value == 1.0  # all tied: no evidence
    assert median_change_pct(samples, samples) == 0.0


def test_mann_whitney_agrees_with_scipy_where_installed() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    for _ in range(5):
        x = np.round(rng.lognormal(0.5, 0.1, rng.integers(20, 400)), 2)  # rounded: many ties
        y = np.round(rng.lognormal(0.52, 0.1, rng.integers(20, 400)), 2)
        ours = mann_whitney_u(x, y)
        theirs = stats.mannwhitneyu(x, y, method="asymptotic")
        assert ours.u1 == pytest.approx(float(theirs.statistic))
        assert ours.p_value == pytest.approx(float(theirs.pvalue), rel=1e-9)


def test_a_real_shift_is_detected() -> None:
    rng = np.random.default_rng(1)
    base = rng.lognormal(np.log(5.0), 0.02, 300)
    slower = rng.lognormal(np.log(5.0 * 1.2), 0.02, 300)
    assert mann_whitney_u(slower, base).p_value < 1e-50
    assert median_change_pct(base, slower) == pytest.approx(20, abs=1)


# ----------------------------------------------------------------------------- compare_runs


def copy_run(tmp_path: Path, name: str, as_name: str | None = None) -> Path:
    dest = tmp_path / (as_name or name)
    shutil.copytree(RUNS / name, dest)
    return dest


def edit_results(run: Path, change: Any) -> None:
    data = json.loads((run / "results.json").read_text())
    change(data)
    (run / "results.json").write_text(json.dumps(data))


def cell(data: dict[str, Any], cell_id: str) -> dict[str, Any]:
    return next(c for c in data["cells"] if c["cell_id"] == cell_id)


def slow_down(cell_id: str, factor: float):
    def change(data: dict[str, Any]) -> None:
        latency = cell(data, cell_id)["latency"]
        latency["samples_ms"] = [s * factor for s in latency["samples_ms"]]
        latency["stats"] = {**latency["stats"], "p50": latency["stats"]["p50"] * factor}

    return change


def test_same_samples_show_no_significant_change(tmp_path: Path) -> None:
    a = copy_run(tmp_path, "gpu-demo", "a")
    b = copy_run(tmp_path, "gpu-demo", "b")
    code, text = compare_runs(a, b)
    assert code == EXIT_OK, text
    assert "OK: no cell significantly slower" in text
    assert text.count("no significant change") == 12  # every measured cell (2 were skipped or failed)
    assert (b / "compare.html").is_file() and (b / "compare.md").is_file()
    assert not (a / "compare.html").exists()


def test_two_runs_of_the_same_plan_show_no_significant_change(tmp_path: Path) -> None:
    # Independent samples from the same distribution: different numbers, same latency.
    code, text = compare_runs(RUNS / "cpu-quick-a", RUNS / "cpu-quick-b", out_dir=tmp_path)
    assert code == EXIT_OK, text
    assert text.count("no significant change") == 3
    assert (tmp_path / "compare.md").is_file()


def test_a_planted_slowdown_fails_the_gate(tmp_path: Path) -> None:
    a = copy_run(tmp_path, "gpu-demo", "a")
    b = copy_run(tmp_path, "gpu-demo", "b")
    edit_results(b, slow_down(TRT, 1.20))
    code, text = compare_runs(a, b)
    assert code == EXIT_REGRESSION, text
    line = next(line for line in text.splitlines() if line.startswith(TRT))
    assert "+20.0%" in line and "slower" in line
    assert "FAIL: 1 cell(s) significantly slower than A by more than 5%" in text
    md = (b / "compare.md").read_text()
    assert "**FAIL**" in md and f"| {TRT.replace('_', chr(92) + '_')} |" in md
    assert 'id="gate"' in (b / "compare.html").read_text()


def test_the_threshold_decides_what_counts(tmp_path: Path) -> None:
    a = copy_run(tmp_path, "gpu-demo", "a")
    b = copy_run(tmp_path, "gpu-demo", "b")
    edit_results(b, slow_down(TRT, 1.03))  # 3% slower: significant, under the 5% default
    code, text = compare_runs(a, b)
    assert code == EXIT_OK, text
    assert "within threshold" in next(line for line in text.splitlines() if line.startswith(TRT))
    code, _ = compare_runs(a, b, threshold_pct=2.0)
    assert code == EXIT_REGRESSION
    code, _ = compare_runs(a, b, threshold_pct=2.0, alpha=1e-300)  # nothing is that significant
    assert code == EXIT_OK


def test_a_speedup_passes(tmp_path: Path) -> None:
    a = copy_run(tmp_path, "gpu-demo", "a")
    b = copy_run(tmp_path, "gpu-demo", "b")
    edit_results(b, slow_down(TRT, 0.8))
    code, text = compare_runs(a, b)
    assert code == EXIT_OK
    assert "faster" in next(line for line in text.splitlines() if line.startswith(TRT))


def test_a_cell_failing_in_b_fails_the_gate(tmp_path: Path) -> None:
    a = copy_run(tmp_path, "gpu-demo", "a")
    b = copy_run(tmp_path, "gpu-demo", "b")

    def fail(data: dict[str, Any]) -> None:
        record = cell(data, TRT)
        record.update(status="failed", reason="engine deserialisation failed", latency=None)

    edit_results(b, fail)
    code, text = compare_runs(a, b)
    assert code == EXIT_REGRESSION
    assert "failed in B (engine deserialisation failed)" in text


def test_mismatched_fingerprints_are_refused_unless_forced(tmp_path: Path) -> None:
    a = copy_run(tmp_path, "gpu-demo", "a")
    b = copy_run(tmp_path, "gpu-demo", "b")

    def new_driver(data: dict[str, Any]) -> None:
        record = cell(data, TRT)
        record["environment"]["nvidia"]["driver_version"] = "590.10.01"
        record["fingerprint"] = "0" * 16

    edit_results(b, new_driver)
    code, text = compare_runs(a, b)
    assert code == EXIT_REFUSED
    assert "REFUSED: environment fingerprints differ for 1 matched cell(s)" in text
    # The fields come from the fingerprint's own inputs (harness.environment.fingerprint).
    assert "driver: A 580.95.05 | B 590.10.01" in text
    assert "--force" in text
    assert not (b / "compare.html").exists(), "a refused comparison writes nothing"

    code, text = compare_runs(a, b, force=True)
    assert code == EXIT_OK
    assert "WARNING: FORCED COMPARISON ACROSS DIFFERENT ENVIRONMENTS" in text
    html = (b / "compare.html").read_text()
    assert 'id="forced"' in html and "590.10.01" in html
    assert "Forced comparison across different environments" in (b / "compare.md").read_text()


def test_runs_on_different_machines_are_refused(tmp_path: Path) -> None:
    code, text = compare_runs(RUNS / "cpu-quick-a", RUNS / "gpu-demo", out_dir=tmp_path)
    assert code == EXIT_REFUSED
    assert "gpus[0].model: A null | B NVIDIA H100 80GB HBM3" in text
    assert "cpu_model: A AMD EPYC 7B13 | B Intel(R) Xeon(R) Platinum 8480+" in text
    assert not (tmp_path / "compare.html").exists()


def test_runs_without_a_common_cell_are_refused(tmp_path: Path) -> None:
    other = copy_run(tmp_path, "cpu-quick-a", "other")

    def rename(data: dict[str, Any]) -> None:
        for record in data["cells"]:
            record["cell_id"] = "yolo-" + record["cell_id"]

    edit_results(other, rename)
    code, text = compare_runs(RUNS / "cpu-quick-a", other)
    assert code == EXIT_REFUSED and "share no cell" in text


def test_results_files_and_out_dir(tmp_path: Path) -> None:
    out = tmp_path / "out" / "nested"
    code, text = compare_runs(RUNS / "cpu-quick-a" / "results.json", RUNS / "cpu-quick-a" / "results.json", out_dir=out)
    assert code == EXIT_OK
    assert (out / "compare.html").is_file() and str(out / "compare.html") in text


def test_compare_html_escapes_and_stays_offline(tmp_path: Path) -> None:
    from harness.report.offline import external_references

    a = copy_run(tmp_path, "gpu-demo", "a")
    b = copy_run(tmp_path, "gpu-demo", "b")
    compare_runs(a, b)
    html = (b / "compare.html").read_text()
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; | evil" in html
    assert external_references(html) == []
    assert html.count('class="chart"') == 2


# ----------------------------------------------------------------------------- conditions, flags, output


def _set_in_cells(key_path: list[str], value: Any):
    def change(data: dict[str, Any]) -> None:
        for record in data["cells"]:
            target = record
            for key in key_path[:-1]:
                target = target[key]
            target[key_path[-1]] = value

    return change


def test_runs_on_different_datasets_are_refused_unless_forced(tmp_path: Path) -> None:
    a = copy_run(tmp_path, "cpu-quick-a", "a")
    b = copy_run(tmp_path, "cpu-quick-a", "b")

    def twelve_images(data: dict[str, Any]) -> None:
        for record in data["cells"]:
            record["cell"]["dataset"]["sample_images"] = 12
            if record["accuracy"]:
                record["accuracy"]["images"] = 12
                record["accuracy"]["dataset"]["fingerprint"] = "coco-sample-12"

    edit_results(b, twelve_images)
    code, text = compare_runs(a, b)
    assert code == EXIT_REFUSED, text
    assert "REFUSED: measured under other conditions (latency protocol or dataset) for 3 matched cell(s)" in text
    assert "dataset.sample_images: A 8 | B 12" in text
    assert "accuracy.images: A 8 | B 12" in text
    assert not (b / "compare.html").exists() and "Nothing was written" in text

    code, text = compare_runs(a, b, force=True)
    assert code == EXIT_OK
    assert "WARNING: FORCED COMPARISON ACROSS DIFFERENT PROTOCOLS OR DATASETS" in text
    assert "Forced comparison across different protocols or datasets" in (b / "compare.md").read_text()
    assert 'id="forced"' in (b / "compare.html").read_text()


def test_runs_under_another_protocol_are_refused(tmp_path: Path) -> None:
    a = copy_run(tmp_path, "gpu-demo", "a")
    b = copy_run(tmp_path, "gpu-demo", "b")
    edit_results(b, _set_in_cells(["cell", "protocol", "pause_ms"], 200.0))
    code, text = compare_runs(a, b)
    assert code == EXIT_REFUSED, text
    assert "protocol.pause_ms: A 0.0 | B 200.0" in text


def test_the_text_says_which_cells_are_unstable_and_where_it_wrote(tmp_path: Path) -> None:
    a = copy_run(tmp_path, "gpu-demo", "a")
    b = copy_run(tmp_path, "gpu-demo", "b")
    code, text = compare_runs(a, b)
    assert code == EXIT_OK
    ort = next(line for line in text.splitlines() if line.startswith("rfdetr-nano__onnxruntime-cuda__fp16"))
    assert ort.endswith("[unstable in A and B]")
    assert "NOTE: 3 cell(s) are unstable or throttled in A or B" in text
    assert f"Wrote {b / 'compare.html'} and {b / 'compare.md'} (into B's run folder; --out DIR writes them elsewhere)" in text
    assert "(unstable in A and B)" in (b / "compare.md").read_text()
    assert 'id="flagged"' in (b / "compare.html").read_text()
    code, text = compare_runs(a, b, out_dir=tmp_path / "elsewhere")
    assert "(into the --out folder)" in text


@pytest.mark.parametrize("content", ["", '{"schema_version": 1, "cell_id": "rfdetr-nano__torch__f', "<html>oops</html>"],
                         ids=["empty", "truncated", "garbage"])
def test_a_damaged_cell_file_is_refused_not_papered_over_by_results_json(
    tmp_path: Path, content: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from harness.cli import main

    a = copy_run(tmp_path, "cpu-quick-a", "a")
    b = copy_run(tmp_path, "cpu-quick-a", "b")
    broken = next((b / "cells").glob("*.json"))
    broken.write_text(content)
    assert main(["compare", str(a), str(b)]) == EXIT_REFUSED
    assert str(broken) in capsys.readouterr().err
    assert main(["report", str(b)]) == 2
    assert str(broken) in capsys.readouterr().err
    assert not (b / "compare.html").exists()
