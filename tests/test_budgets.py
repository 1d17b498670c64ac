"""Budgets: the plan's typed limits (per plan, per model, unknown keys refused), each cell's
verdicts (pass, fail, not measured with the reason), the ship/no-ship table at the top of the
report and summary.md, the ship checklist, `budgets.gate` and the exit status; on a GPU-like
run built by the real producers (tests/resource_runs.py) and on a real CPU plan."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import resource_runs
from record_factory import record

from harness.errors import UserError
from harness.plan.load import parse_plan
from harness.report.budgets import attach, judge, outcome, ship_table, sustained_slowdowns
from harness.report.render import build_context, load_run
from harness.report.rundata import cell_views
from harness.results import ResultsFile, RunMeta
from harness.run.execute import budget_gate_tripped, exit_status

REPO = Path(__file__).resolve().parents[1]

BASE = """
name: b
device: cpu
models:
  - {name: a, variant: nano, weights: random}
runtimes: [torch]
"""


def plan(tmp_path: Path, extra: str) -> Any:
    return parse_plan(BASE + textwrap.dedent(extra), "plan.yaml", tmp_path)


# ----------------------------------------------------------------------------- the plan


def test_a_models_budgets_override_the_plans_key_by_key(tmp_path: Path) -> None:
    loaded = parse_plan(textwrap.dedent("""
        name: b
        device: cpu
        models:
          - name: a
            variant: nano
            weights: random
            budgets: {latency_ms: {p50: 10}, artifact_mb: null}
          - {name: c, variant: nano, weights: random}
        runtimes: [torch]
        budgets: {latency_ms: {p99: 33}, device_memory_mb: 2000, artifact_mb: 150, map_drop: 0.5, gate: true}
        """), "plan.yaml", tmp_path)
    by_model = {c.model.name: c.budgets.flat() for c in loaded.cells if c.budgets}
    assert by_model["a"] == {"latency_ms.p50": 10.0, "latency_ms.p99": 33.0, "device_memory_mb": 2000.0, "map_drop": 0.5}
    assert by_model["c"] == {"latency_ms.p99": 33.0, "device_memory_mb": 2000.0, "artifact_mb": 150.0, "map_drop": 0.5}
    assert loaded.plan.budgets is not None and loaded.plan.budgets.gate is True


def test_no_budgets_leave_the_cells_without_any(tmp_path: Path) -> None:
    assert all(c.budgets is None for c in plan(tmp_path, "").cells)


@pytest.mark.parametrize("extra, field", [
    ("budgets: {latency: 3}", "budgets.latency"),
    ("budgets: {latency_ms: {p95: 3}}", "budgets.latency_ms.p95"),
    ("budgets: {device_memory_mb: -1}", "budgets.device_memory_mb"),
    ("budgets: {device_memory_mb: '2000'}", "budgets.device_memory_mb"),
    ("budgets: {min_map: 150}", "budgets.min_map"),
    ("accuracy: {threshold_split: {fraction: 1.0}}", "accuracy.threshold_split.fraction"),
    ("accuracy: {threshold_split: {portion: 0.5}}", "accuracy.threshold_split.portion"),
])
def test_bad_budgets_are_refused_naming_the_field(tmp_path: Path, extra: str, field: str) -> None:
    with pytest.raises(UserError) as exc:
        plan(tmp_path, extra)
    assert field in str(exc.value)


def test_a_model_cannot_set_the_gate(tmp_path: Path) -> None:
    text = BASE.replace("weights: random}", "weights: random, budgets: {gate: true}}")
    with pytest.raises(UserError, match=r"models\[0\]\.budgets\.gate: unknown key"):
        parse_plan(text, "plan.yaml", tmp_path)


def test_bench_validate_exits_2_on_an_unknown_budget_and_lists_good_ones(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE + "budgets: {latency_ms: {p99: 33}, memory_mb: 2}\n")
    done = subprocess.run([sys.executable, "-m", "harness", "validate", str(bad)], capture_output=True, text=True)
    assert done.returncode == 2 and "budgets.memory_mb: unknown key" in done.stderr
    good = tmp_path / "good.yaml"
    good.write_text(BASE + "budgets: {latency_ms: {p99: 33}, artifact_mb: 150, gate: true}\n")
    done = subprocess.run([sys.executable, "-m", "harness", "validate", str(good)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "budgets for a: p99 ≤ 33 ms, artifact ≤ 150 MB" in done.stdout and "budgets.gate" in done.stdout


# ----------------------------------------------------------------------------- verdicts


STATS = {"count": 3, "mean": 10.0, "std": 0.1, "min": 9.0, "max": 11.0, "p50": 10.0, "p90": 10.5, "p95": 10.8,
         "p99": 11.0, "cov": 0.01, "median_ci95": [9.9, 10.1], "median_ci_rel_width": 0.02}
LATENCY = {"scope": "model", "timer": "perf_counter", "timed_region": "x", "samples_ms": [9.0, 10.0, 11.0],
           "stats": STATS, "warmup_iterations": 1, "warmup_s": 0.1, "measure_s": 0.1,
           "stop_reason": "min_iterations_and_min_seconds", "batch": 1, "throughput_ips": 100.0}


def _view(budgets: dict[str, float], **overrides: Any) -> Any:
    fields: dict[str, Any] = {"latency": LATENCY, "resources": {
        "device_memory": {"reason": "the cell runs on the CPU: its memory is the host's (host_memory)"},
        "host_memory": {"peak_rss_bytes": 300_000_000},
        "artifact": {"kind": "onnx", "path": "/m.onnx", "bytes": 40_000_000},
        "energy": {"reason": "no RAPL counter here"},
    }}
    identity = {"budgets": budgets, **overrides.pop("identity_fields", {})}
    fields.update(overrides)
    results = ResultsFile(run=RunMeta(run_id="r", plan_name="p", started_at="t", harness_version="0"),
                          cells=[record("c", identity_fields=identity, **fields)])
    [view] = attach(cell_views(results))
    return view


def test_each_budget_is_pass_fail_or_not_measured_with_its_reason() -> None:
    view = _view({"latency_ms.p50": 12, "latency_ms.p99": 10.5, "min_images_per_s": 50, "host_memory_mb": 250,
                  "artifact_mb": 50, "device_memory_mb": 2000, "energy_per_image_j": 1, "map_drop": 0.5,
                  "sustained_slowdown_pct": 10})
    got = {v.budget: (v.verdict, v.value) for v in view.budgets}
    assert got["latency_ms.p50"] == ("pass", 10.0)
    assert got["latency_ms.p99"] == ("fail", 11.0)
    assert got["min_images_per_s"] == ("pass", 100.0)
    assert got["host_memory_mb"] == ("fail", 300.0)
    assert got["artifact_mb"] == ("pass", 40.0)
    assert got["device_memory_mb"] == ("not_measured", None)
    assert got["energy_per_image_j"] == ("not_measured", None)
    assert got["map_drop"] == ("not_measured", None)
    assert got["sustained_slowdown_pct"] == ("not_measured", None)
    why = {v.budget: v.detail for v in view.budgets}
    assert "runs on the CPU" in why["device_memory_mb"] and "RAPL" in why["energy_per_image_j"]
    assert "no accuracy pass" in why["map_drop"] and "protocol.sustained" in why["sustained_slowdown_pct"]
    assert outcome(view.budgets) == "no_ship"
    assert [v.budget for v in view.budgets][:2] == ["latency_ms.p50", "latency_ms.p99"]  # BUDGETS order


def test_not_measured_alone_is_unproven_and_all_pass_ships() -> None:
    assert outcome(_view({"latency_ms.p50": 12, "device_memory_mb": 100}).budgets) == "unproven"
    assert outcome(_view({"latency_ms.p50": 12, "artifact_mb": 50}).budgets) == "ship"
    assert outcome(_view({}).budgets) is None


def test_a_failed_cell_is_not_measured_on_every_budget() -> None:
    view = _view({"latency_ms.p99": 100, "artifact_mb": 50}, status="failed", reason="boom", latency=None, resources=None)
    assert {v.verdict for v in view.budgets} == {"not_measured"}
    assert all("failed: boom" in (v.detail or "") for v in view.budgets)


def test_accuracy_budgets_read_the_map_and_its_drop(tmp_path: Path) -> None:
    from record_factory import accuracy

    ref = record("ref", accuracy=accuracy(0.41), latency=LATENCY,
                 identity_fields={"is_reference": True, "budgets": {"map_drop": 0.5, "min_map": 40}})
    other = record("other", accuracy=accuracy(0.40), latency=LATENCY,
                   identity_fields={"runtime": "onnxruntime-cpu", "budgets": {"map_drop": 0.5, "min_map": 40}})
    results = ResultsFile(run=RunMeta(run_id="r", plan_name="p", started_at="t", harness_version="0"), cells=[ref, other])
    views = {v.cell_id: v for v in attach(cell_views(results))}
    assert {b.budget: (b.verdict, round(b.value or 0, 6)) for b in views["ref"].budgets} == {
        "map_drop": ("pass", 0.0), "min_map": ("pass", 41.0)}
    assert {b.budget: (b.verdict, round(b.value or 0, 6)) for b in views["other"].budgets} == {
        "map_drop": ("fail", 1.0), "min_map": ("pass", 40.0)}
    rnd = _view({"map_drop": 0.5}, accuracy=accuracy(0.4, random_weights=True), identity_fields={"weights_kind": "random"})
    assert rnd.budgets[0].verdict == "not_measured" and "random weights" in (rnd.budgets[0].detail or "")


def test_the_sustained_slowdown_is_the_last_window_against_the_first() -> None:
    def window(start: float, p50: float) -> dict[str, Any]:
        return {"start_s": start, "end_s": start + 10, "stats": {**STATS, "p50": p50}}

    latency = {**LATENCY, "windows": [window(0, 10.0), window(10, 10.4), window(20, 11.5)]}
    view = _view({"sustained_slowdown_pct": 10}, latency=latency,
                 identity_fields={"protocol": {**resource_runs_protocol(), "sustained": {"duration_s": 30, "window_s": 10}}})
    assert sustained_slowdowns(view) == pytest.approx([15.0])
    [v] = view.budgets
    assert v.verdict == "fail" and v.value == pytest.approx(15.0) and "30 s run" in (v.detail or "")


def resource_runs_protocol() -> dict[str, Any]:
    from record_factory import PROTOCOL

    return dict(PROTOCOL)


# ----------------------------------------------------------------------------- a GPU-like run


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    return resource_runs.build(tmp_path_factory.mktemp("budgets"))


def test_the_gpu_run_has_the_verdicts_its_figures_give(gpu_run: tuple[Path, Any]) -> None:
    run_dir, loaded = gpu_run
    results = json.loads((run_dir / "results.json").read_text())
    assert results["derived_error"] is None
    verdicts = {cid: {b["budget"]: b["verdict"] for b in d["budgets"]} for cid, d in results["derived"].items()}
    assert verdicts["det-a__torch__fp32__b1__r384__model"] == {
        "latency_ms.p99": "pass", "device_memory_mb": "pass", "artifact_mb": "pass", "energy_per_image_j": "pass",
        "map_drop": "pass"}
    assert verdicts["det-a__onnxruntime-cuda__fp32__b1__r384__model"] == {
        "latency_ms.p99": "pass", "device_memory_mb": "fail", "artifact_mb": "fail", "energy_per_image_j": "pass",
        "map_drop": "fail"}
    assert verdicts["det-b__torch__fp32__b1__r384__model"]["latency_ms.p99"] == "fail"  # det-b's own 5 ms
    assert verdicts["det-b__onnxruntime-cuda__fp32__b1__r384__model"]["energy_per_image_j"] == "not_measured"
    resources = results["derived"]["det-a__torch__fp32__b1__r384__model"]["resources"]
    # NVML's process figure, not the allocator's 900 MB: the quantity the ONNX Runtime cells have
    assert resources["processes"] == 3 and resources["device_memory_method"] == "nvml_process"
    assert resources["device_memory_peak_bytes"] == 1_200_000_000
    assert resources["energy_method"] == "nvml_energy_counter"
    assert resources["joules_per_image"] == pytest.approx(1.5, rel=0.02)
    ort = results["derived"]["det-a__onnxruntime-cuda__fp32__b1__r384__model"]["resources"]
    assert ort["device_memory_method"] == "nvml_process" and ort["artifact_bytes"] == 800_000
    # The gate is on and a budget failed: exit 1; without the gate the same results exit 0.
    typed = load_run(run_dir).results
    assert budget_gate_tripped(typed, loaded) and exit_status(typed, loaded) == 1
    ungated = parse_plan(resource_runs.PLAN.replace("gate: true", "gate: false"), "plan.yaml", run_dir, check_paths=False)
    assert exit_status(typed, ungated) == 0


def test_the_report_opens_with_the_ship_table(gpu_run: tuple[Path, Any]) -> None:
    run_dir, _ = gpu_run
    html = (run_dir / "report.html").read_text()
    body = html[html.index("<main"):]
    assert body.index('id="ship"') < body.index('id="checklist"') < body.index('id="verdicts"')
    ship = html[html.index('<section id="ship">'):html.index('<section id="checklist">')]
    assert "Fastest that meets every budget: <b>torch · fp32 · b1 · 384px</b>" in ship
    assert "No configuration meets every budget" in ship  # det-b
    assert ship.count('class="badge o-ship"') == 1 and ship.count('class="badge o-no_ship"') == 3
    assert 'id="chart-memory-model"' in html and 'id="chart-energy-model"' in html
    assert 'id="resources-table"' in html
    summary = (run_dir / "summary.md").read_text()
    assert summary.index("## Ship or not") < summary.index("## Ship checklist") < summary.index("## Verdicts")
    assert "Fastest that meets every budget: **torch · fp32 · b1 · 384px**" in summary
    assert "| p99 ≤ 12 ms | device memory ≤ 1,500 MB |" in summary
    assert "fail: 1,700 &gt; 1,500 MB" in summary
    assert "## Memory and energy" in summary


def test_the_csv_carries_memory_energy_and_the_verdict(gpu_run: tuple[Path, Any]) -> None:
    run_dir, _ = gpu_run
    rows = {r["cell_id"]: r for r in csv.DictReader(io.StringIO((run_dir / "results.csv").read_text()))}
    a = rows["det-a__onnxruntime-cuda__fp32__b1__r384__model"]
    assert a["device_memory_peak_bytes"] == "1700000000" and a["device_memory_method"] == "nvml_process"
    assert a["artifact_bytes"] == "800000" and a["energy_method"] == "nvml_energy_counter"
    assert a["budget_outcome"] == "no_ship" and a["budgets_failed"] == "device_memory_mb;artifact_mb;map_drop"
    assert rows["det-a__torch__fp32__b1__r384__model"]["budget_outcome"] == "ship"
    assert rows["det-b__onnxruntime-cuda__fp32__b1__r384__model"]["budgets_not_measured"] == "energy_per_image_j"


def test_a_run_rebuilt_from_its_cells_judges_the_same(gpu_run: tuple[Path, Any], tmp_path: Path) -> None:
    import shutil

    run_dir, _ = gpu_run
    copy = tmp_path / "rebuilt"
    shutil.copytree(run_dir, copy)
    (copy / "results.json").unlink()
    ctx = build_context(load_run(copy))
    finished = build_context(load_run(run_dir))

    def table(c: dict[str, Any]) -> list[tuple[str, str, list[tuple[str, str]]]]:
        return [(r.view.cell_id, r.outcome, [(v.budget, v.verdict) for v in r.verdicts]) for g in c["ship"] for r in g.rows]

    assert table(ctx) == table(finished)


def test_the_checklist_is_filled_from_the_run(gpu_run: tuple[Path, Any]) -> None:
    run_dir, _ = gpu_run
    ctx = build_context(load_run(run_dir))
    [(model, items), _] = ctx["checklist"]
    assert model == "det-a"
    done = {i.item.split(" ")[0]: i.done for i in items}
    assert done == {"mAP": True, "score": False, "preprocessing": True, "worst-case": False, "disagreement": False}
    by = {i.item.split(" ")[0]: i for i in items}
    assert "IoU 0.50:0.05:0.95" in (by["mAP"].evidence or "")
    assert "accuracy.threshold_split" in (by["score"].missing or "")
    assert "protocol.sustained" in (by["worst-case"].missing or "")
    assert "RGB order" in (by["preprocessing"].evidence or "")


# ----------------------------------------------------------------------------- a real CPU plan


CPU_PLAN = """
name: cpu-budgets
device: cpu
models:
  - name: ships
    source: onnx
    path: {onnx}
    weights: random
    resolutions: [320]
    preprocess: {{resize: letterbox, mean: [0.0, 0.0, 0.0], std: [1.0, 1.0, 1.0]}}
    decoder: {{kind: yolo_raw, score_threshold: 0.04, top_k: 100, outputs: {{predictions: output0}}}}
    budgets: {{device_memory_mb: null, energy_per_image_j: null, map_drop: null}}
  - name: fails
    source: onnx
    path: {onnx}
    weights: random
    resolutions: [320]
    preprocess: {{resize: letterbox, mean: [0.0, 0.0, 0.0], std: [1.0, 1.0, 1.0]}}
    decoder: {{kind: yolo_raw, score_threshold: 0.04, top_k: 100, outputs: {{predictions: output0}}}}
    budgets: {{artifact_mb: 0.05, latency_ms: {{p50: 0.0001}}}}
runtimes:
  - name: onnxruntime-cpu
    settings: {{intra_op_num_threads: 1}}
scopes: [model]
protocol: {{warmup_iterations: 3, warmup_seconds: 0.2, min_iterations: 30, min_seconds: 0.5}}
dataset: {{sample: true, sample_images: 6}}
accuracy: {{agreement_images: 2, gallery_images: 0, threshold_split: {{fraction: 0.5, seed: 0}}}}
budgets:
  latency_ms: {{p99: 10000}}
  min_images_per_s: 1
  host_memory_mb: 4000
  artifact_mb: 1
  device_memory_mb: 100
  energy_per_image_j: 1
  map_drop: 0.5
  gate: true
"""


def test_a_real_cpu_plan_with_passing_and_failing_budgets(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    onnx = REPO / "examples" / "onnx" / "anchor-grid-320.onnx"
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(CPU_PLAN.format(onnx=onnx))
    done = subprocess.run([sys.executable, "-m", "harness", str(plan_file), "--output", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-3000:]  # budgets.gate: `fails` fails two budgets
    assert "budgets.gate" in done.stderr
    [run] = (tmp_path / "out" / "cpu-budgets").iterdir()
    results = json.loads((run / "results.json").read_text())
    derived = results["derived"]
    ships = {b["budget"]: b["verdict"] for b in derived["ships__onnxruntime-cpu__fp32__b1__r320__model"]["budgets"]}
    assert ships == {"latency_ms.p99": "pass", "min_images_per_s": "pass", "host_memory_mb": "pass", "artifact_mb": "pass"}
    fails = {b["budget"]: b["verdict"] for b in derived["fails__onnxruntime-cpu__fp32__b1__r320__model"]["budgets"]}
    energy = "pass" if fails["energy_per_image_j"] == "pass" else "not_measured"  # RAPL readable or not
    assert fails == {"latency_ms.p50": "fail", "latency_ms.p99": "pass", "min_images_per_s": "pass",
                     "device_memory_mb": "not_measured", "host_memory_mb": "pass", "artifact_mb": "fail",
                     "energy_per_image_j": energy, "map_drop": "not_measured"}
    for cell in results["cells"]:
        res = cell["resources"]
        assert res["artifact"]["bytes"] == os.stat(onnx).st_size  # as `ls -l` says
        assert res["device_memory"]["peak_bytes"] is None and "CPU" in res["device_memory"]["reason"]
        assert res["host_memory"]["peak_rss_bytes"] > 20_000_000
        if res["energy"]["method"] is None:
            assert res["energy"]["joules_per_image"] is None and res["energy"]["reason"]
        threshold = (cell["accuracy"] or {}).get("score_threshold")
        assert threshold is not None and threshold["validation"]["images"] == 3 and threshold["report"]["images"] == 3
        assert cell["accuracy"]["images"] == 3  # the mAP is the report split's
    summary = (run / "summary.md").read_text()
    assert "Fastest that meets every budget: **onnxruntime-cpu · fp32 · b1 · 320px**" in summary
    assert "no ship" in done.stderr and "ships" in done.stderr


def test_peak_rss_matches_usr_bin_time_of_the_same_worker(tmp_path: Path) -> None:
    """The worker's whole-process figure against `/usr/bin/time -v`'s "Maximum resident set
    size" of the same worker command: within 5% (the record is written after its last reading)."""
    pytest.importorskip("onnxruntime")
    if not Path("/usr/bin/time").exists():
        pytest.skip("GNU time is not installed at /usr/bin/time")
    from harness.plan.load import load_plan
    from harness.run.execute import start_run
    from harness.run.unit import WorkUnit

    loaded = load_plan(REPO / "plans" / "onnx-detector.yaml")
    store = start_run(loaded, tmp_path / "out")
    cell = loaded.cells[0]
    unit = WorkUnit(cell=cell)
    unit_json = store.run_dir / "logs" / f".{unit.key}.cell.json"
    unit_json.write_text(unit.model_dump_json())
    result = store.run_dir / "cells" / f".{unit.key}.result.json"
    done = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "harness.run.worker", str(store.run_dir),
                           str(unit_json), str(result)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    assert found, done.stderr[-2000:]
    time_bytes = int(found.group(1)) * 1024
    host = json.loads(result.read_text())["resources"]["host_memory"]
    # The whole process's peak is what GNU time sees; the figure verdicts use is the timed
    # phase's own (the high-water mark reset when it began), never above the whole.
    assert abs(host["process_peak_rss_bytes"] - time_bytes) <= 0.05 * time_bytes, (host, time_bytes)
    assert host["peak_rss_scope"] in ("measure_phase", "process")
    assert 20_000_000 < host["peak_rss_bytes"] <= host["process_peak_rss_bytes"]
    store.release_lock()


def test_ship_table_sorts_fastest_first_and_names_the_winner() -> None:
    fast = record("fast", latency={**LATENCY, "stats": {**STATS, "p50": 5.0}},
                  identity_fields={"runtime": "onnxruntime-cpu", "budgets": {"latency_ms.p50": 8}})
    slow = record("slow", latency=LATENCY, identity_fields={"budgets": {"latency_ms.p50": 12}})
    results = ResultsFile(run=RunMeta(run_id="r", plan_name="p", started_at="t", harness_version="0"), cells=[slow, fast])
    [group] = ship_table(attach(cell_views(results)))
    assert [r.view.cell_id for r in group.rows] == ["fast", "slow"]
    assert group.fastest is not None and group.fastest.view.cell_id == "fast"
    assert [v.verdict for v in judge(group.rows[1].view)] == ["pass"]


# ----------------------------------------------------------------------------- one quantity


def _memory_view(label: str, peak: int, method: str) -> Any:
    from types import SimpleNamespace

    from harness.results import CellResources

    return SimpleNamespace(model="m", config_label=label, median=5.0, cell_id=label,
                           resources=CellResources(processes=1, device_memory_peak_bytes=peak, device_memory_method=method))


def test_the_ship_table_flags_device_memory_read_different_ways() -> None:
    from harness.report.budgets import ShipGroup, ShipRow
    from harness.results import BudgetVerdict

    def row(label: str, method: str) -> ShipRow:
        verdict = BudgetVerdict(budget="device_memory_mb", limit=1500, unit="MB", value=1000, verdict="pass")
        return ShipRow(_memory_view(label, 1_000_000_000, method), [verdict], "ship")

    mixed = ShipGroup("m", "model", [row("torch", "torch_allocator"), row("ort", "nvml_process")])
    assert mixed.memory_note is not None and "nvml_process, torch_allocator" in mixed.memory_note
    assert ShipGroup("m", "model", [row("torch", "nvml_process"), row("ort", "nvml_process")]).memory_note is None


def test_the_memory_chart_plots_one_method_and_names_the_cells_left_out() -> None:
    from harness.report.render import _one_memory_method

    views = [_memory_view("torch", 900_000_000, "torch_allocator"), _memory_view("ort", 1_700_000_000, "nvml_process"),
             _memory_view("trt", 1_100_000_000, "nvml_process")]
    kept, left, method = _one_memory_method(views)
    assert method == "nvml_process" and [v.config_label for v in kept] == ["ort", "trt"]
    assert left == ["m — torch (torch_allocator)"]


# ----------------------------------------------------------------------------- the test


def _processes_view(budgets: dict[str, float], medians: list[float]) -> Any:
    """A cell of len(medians) processes, each with 60 samples around its median (3% spread)."""
    import numpy as np

    cells = []
    for k, median in enumerate(medians):
        samples = [float(x) for x in median * np.exp(np.random.default_rng(k).normal(0.0, 0.03, 60))]
        stats = {**STATS, "count": len(samples), "p50": float(np.median(samples)), "p90": float(np.percentile(samples, 90)),
                 "p99": float(np.percentile(samples, 99))}
        latency = {**LATENCY, "samples_ms": samples, "stats": stats}
        cells.append(record("c", repeat=k, latency=latency, identity_fields={"budgets": budgets}))
    results = ResultsFile(run=RunMeta(run_id="r", plan_name="p", started_at="t", harness_version="0"), cells=cells)
    [view] = attach(cell_views(results))
    return view


def test_the_headline_is_judged_on_its_rerun_interval() -> None:
    probe = _processes_view({}, [9.0, 10.0, 11.5])
    lo, hi = probe.rerun_ci
    assert lo < probe.median < hi
    limits = {"latency_ms.p50": (lo + hi) / 2}  # inside the interval: neither shown within nor past
    [inside] = _processes_view(limits, [9.0, 10.0, 11.5]).budgets
    assert inside.verdict == "inconclusive" and inside.interval == pytest.approx((lo, hi))
    assert "re-run interval" in (inside.detail or "") and "3 processes" in (inside.detail or "")
    assert outcome([inside]) == "unproven"
    [above] = _processes_view({"latency_ms.p50": hi * 1.01}, [9.0, 10.0, 11.5]).budgets
    assert above.verdict == "pass"
    # The point estimate passes this limit, the interval does not: a point test would say pass.
    tight = probe.median * 1.001
    assert tight < hi
    [point_passes] = _processes_view({"latency_ms.p50": tight}, [9.0, 10.0, 11.5]).budgets
    assert point_passes.value is not None and point_passes.value <= tight and point_passes.verdict == "inconclusive"
    [below] = _processes_view({"latency_ms.p50": lo * 0.99}, [9.0, 10.0, 11.5]).budgets
    assert below.verdict == "fail"
    [rate] = _processes_view({"min_images_per_s": 1000.0 / probe.median}, [9.0, 10.0, 11.5]).budgets
    assert rate.verdict == "inconclusive" and rate.interval == pytest.approx((1000.0 / hi, 1000.0 / lo))


def test_one_process_is_judged_on_the_point_estimate_and_says_so() -> None:
    view = _view({"latency_ms.p50": 12, "artifact_mb": 50})
    by = {v.budget: v for v in view.budgets}
    assert by["latency_ms.p50"].verdict == "pass" and by["latency_ms.p50"].interval is None
    assert "no between-process variance is known" in (by["latency_ms.p50"].detail or "")
    assert "point estimate" in (by["latency_ms.p50"].detail or "")
    assert "no interval: judged on the figure" in (by["artifact_mb"].detail or "")


def test_inconclusive_is_in_the_csv_and_does_not_trip_the_gate() -> None:
    from harness.report.summary import results_csv
    from harness.results import DerivedEntry

    probe = _processes_view({}, [9.0, 10.0, 11.5])
    view = _processes_view({"latency_ms.p50": probe.median}, [9.0, 10.0, 11.5])
    [row] = list(csv.DictReader(io.StringIO(results_csv([view]))))
    assert row["budgets_inconclusive"] == "latency_ms.p50" and row["budget_outcome"] == "unproven"
    results = ResultsFile(run=RunMeta(run_id="r", plan_name="p", started_at="t", harness_version="0"), cells=[],
                          derived={"c": DerivedEntry(budgets=view.budgets)})
    gated = parse_plan(BASE + "budgets: {latency_ms: {p50: 10}, gate: true}\n", "plan.yaml", REPO, check_paths=False)
    assert not budget_gate_tripped(results, gated)


def test_the_host_budget_names_the_method_that_was_used() -> None:
    fallback = {"peak_rss_bytes": 200_000_000, "method": "getrusage ru_maxrss (no /proc/self/status here)"}
    view = _view({"host_memory_mb": 250}, resources={
        "device_memory": {"reason": "the cell runs on the CPU"}, "host_memory": fallback,
        "artifact": {"reason": "x"}, "energy": {"reason": "x"}})
    [verdict] = view.budgets
    assert verdict.verdict == "pass" and "getrusage ru_maxrss" in (verdict.detail or "")
    assert "VmHWM" not in (verdict.detail or "")
