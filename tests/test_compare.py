"""`bench compare`: process medians against process medians, and the CI gate on golden runs.

The golden runs hold one process per cell: on them compare gives no verdict (the
between-process variance is unknown). `with_processes` turns a golden run into a run of three
processes per cell (each process's samples scaled by its own factor, as processes differ), the
shape `protocol.repeats` makes, for the gate's tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from harness.report.compare import EXIT_OK, EXIT_REFUSED, EXIT_REGRESSION, compare_runs

RUNS = Path(__file__).parent / "data" / "runs"
TRT = "rfdetr-nano__tensorrt__fp16__b1__r384__model"


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


PROCESS_FACTORS = (1.0, 1.012, 0.991)


def with_processes(run: Path, factors: tuple[float, ...] = PROCESS_FACTORS, slow: dict[str, float] | None = None) -> Path:
    """The run as if each cell had been measured in len(factors) processes: every record
    becomes one per process (repeat k, samples x factors[k] x slow.get(cell, 1)), written as
    cells/<id>.r<k>.json in the current schema; results.json is removed, so readers rebuild."""
    from harness.results import read_cell_files

    slow = slow or {}
    records = read_cell_files(run / "cells")
    for path in (run / "cells").glob("*.json"):
        path.unlink()
    (run / "results.json").unlink(missing_ok=True)
    for record in records:
        for k, factor in enumerate(factors):
            data = record.model_dump(mode="json")
            data["repeat"] = k
            data["identity"]["protocol"]["repeats"] = len(factors)
            if data.get("latency"):
                scale = factor * slow.get(record.cell_id, 1.0)
                latency = data["latency"]
                latency["samples_ms"] = [s * scale for s in latency["samples_ms"]]
                latency["stats"] = {**latency["stats"], "p50": latency["stats"]["p50"] * scale}
            (run / "cells" / f"{record.cell_id}.r{k}.json").write_text(json.dumps(data))
    return run


def slow_down(cell_id: str, factor: float):
    def change(data: dict[str, Any]) -> None:
        latency = cell(data, cell_id)["latency"]
        latency["samples_ms"] = [s * factor for s in latency["samples_ms"]]
        latency["stats"] = {**latency["stats"], "p50": latency["stats"]["p50"] * factor}

    return change


def test_one_process_a_side_gives_no_verdict(tmp_path: Path) -> None:
    a = copy_run(tmp_path, "gpu-demo", "a")
    b = copy_run(tmp_path, "gpu-demo", "b")
    edit_results(b, slow_down(TRT, 1.50))  # even 50% slower: one process can't tell it from noise
    code, text = compare_runs(a, b)
    assert code == EXIT_OK, text
    assert text.count("no verdict") == 12  # every measured cell (2 were skipped or failed)
    assert "between-process variance is unknown" in text and "protocol.repeats >= 3" in text
    assert (b / "compare.html").is_file() and (b / "compare.md").is_file()
    assert not (a / "compare.html").exists()


def test_two_runs_of_the_same_plan_show_no_change(tmp_path: Path) -> None:
    a = with_processes(copy_run(tmp_path, "gpu-demo", "a"))
    b = with_processes(copy_run(tmp_path, "gpu-demo", "b"), factors=(0.995, 1.004, 1.01))
    code, text = compare_runs(a, b, out_dir=tmp_path)
    assert code == EXIT_OK, text
    assert "slower" not in text.split("Test:")[0] and "3/3" in text
    assert "Welch's t-test on the logs of the process medians" in text
    assert (tmp_path / "compare.md").is_file()


def test_a_planted_slowdown_fails_the_gate(tmp_path: Path) -> None:
    a = with_processes(copy_run(tmp_path, "gpu-demo", "a"))
    b = with_processes(copy_run(tmp_path, "gpu-demo", "b"), slow={TRT: 1.20})
    code, text = compare_runs(a, b)
    assert code == EXIT_REGRESSION, text
    line = next(line for line in text.splitlines() if line.startswith(TRT))
    assert "+20.0%" in line and "slower" in line and "above +5%" in line
    assert "FAIL: 1 cell(s) slower than A by more than 5% over their whole 99% interval" in text
    md = (b / "compare.md").read_text()
    assert "**FAIL**" in md and f"| {TRT.replace('_', chr(92) + '_')} |" in md
    assert 'id="gate"' in (b / "compare.html").read_text()


def test_the_threshold_applies_to_the_interval(tmp_path: Path) -> None:
    steady = (1.0, 1.002, 0.998)  # processes that agree to 0.2%, as device-bound cells do
    a = with_processes(copy_run(tmp_path, "gpu-demo", "a"), factors=steady)
    b = with_processes(copy_run(tmp_path, "gpu-demo", "b"), factors=steady, slow={TRT: 1.03})
    code, text = compare_runs(a, b)  # 3% slower, its interval inside +-5%: no regression
    assert code == EXIT_OK, text
    assert "no change beyond threshold" in next(line for line in text.splitlines() if line.startswith(TRT))
    code, text = compare_runs(a, b, threshold_pct=1.0)  # the interval is above +1%
    assert code == EXIT_REGRESSION, text
    code, text = compare_runs(a, b, threshold_pct=1.0, alpha=1e-12)  # at that level the interval reaches below +1%
    assert code == EXIT_OK, text
    assert "inconclusive" in next(line for line in text.splitlines() if line.startswith(TRT))


def test_a_speedup_passes(tmp_path: Path) -> None:
    a = with_processes(copy_run(tmp_path, "gpu-demo", "a"))
    b = with_processes(copy_run(tmp_path, "gpu-demo", "b"), slow={TRT: 0.8})
    code, text = compare_runs(a, b)
    assert code == EXIT_OK
    assert "faster" in next(line for line in text.splitlines() if line.startswith(TRT))


def test_processes_that_disagree_make_a_change_inconclusive_not_a_regression(tmp_path: Path) -> None:
    """The same-plan re-run seen on the H200: process medians 20.8 / 13.9 / 19.9 against
    13.9 / 20.8 / 14.2 ms is noise, not a 'significantly slower' cell."""
    a = with_processes(copy_run(tmp_path, "gpu-demo", "a"), factors=(1.0, 0.67, 0.96))
    b = with_processes(copy_run(tmp_path, "gpu-demo", "b"), factors=(0.67, 1.0, 0.68))
    code, text = compare_runs(a, b)
    assert code == EXIT_OK, text
    line = next(line for line in text.splitlines() if line.startswith(TRT))
    assert "inconclusive" in line


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


def test_memory_growth_past_the_threshold_is_a_regression(tmp_path: Path) -> None:
    """Device memory 1700 -> 2040 MB (+20%) on one cell: compare flags it, as it does a slowdown;
    +5% on another stays under the 10% default; energy per image is shown, not gated."""
    import resource_runs

    a, _ = resource_runs.build(tmp_path / "a")
    b, _ = resource_runs.build(tmp_path / "b", figures={("det-a", "onnxruntime-cuda"): (6.0, 2040, 1.0, 0.400),
                                                        ("det-b", "onnxruntime-cuda"): (6.0, 1155, None, 0.409)})
    code, text = compare_runs(a, b, out_dir=tmp_path / "out")
    assert code == 1, text
    line = next(x for x in text.splitlines() if x.startswith("det-a__onnxruntime-cuda"))
    assert "memory grew past +10%: device memory +20.0% (1,700.0 → 2,040.0 MB)" in line
    other = next(x for x in text.splitlines() if x.startswith("det-b__onnxruntime-cuda"))
    assert "device memory +5.0%" in other and "memory grew" not in other
    assert "FAIL: 1 cell(s)" in text and "det-a__onnxruntime-cuda__fp32__b1__r384__model" in text.splitlines()[-2]
    torch_line = next(x for x in text.splitlines() if x.startswith("det-a__torch"))
    assert "energy/image" in torch_line
    assert compare_runs(a, b, out_dir=tmp_path / "out2", memory_threshold_pct=25)[0] == 0
    md = (tmp_path / "out" / "compare.md").read_text()
    assert "| memory | energy/image |" in md and "+20.0%" in md
    html = (tmp_path / "out" / "compare.html").read_text()
    assert "memory (A → B)" in html and "past +10%" in html


def test_device_memory_read_different_ways_is_flagged_not_compared() -> None:
    """NVML's process figure against the torch allocator's: two quantities, so the change is
    not stated and never gates; the same method on both sides is compared as before."""
    from types import SimpleNamespace

    from harness.report.compare import memory_changes
    from harness.results import CellResources

    def side(peak: int, method: str) -> Any:
        return SimpleNamespace(resources=CellResources(processes=1, device_memory_peak_bytes=peak,
                                                        device_memory_method=method))

    [change] = memory_changes(side(1_000_000_000, "torch_allocator"), side(2_000_000_000, "nvml_process"), 10.0)
    assert change.not_compared and not change.grew
    assert change.text() == ("device memory not compared (read different ways: A torch_allocator, "
                             "B nvml_process)")
    [same] = memory_changes(side(1_000_000_000, "nvml_process"), side(2_000_000_000, "nvml_process"), 10.0)
    assert same.grew and same.not_compared is None
