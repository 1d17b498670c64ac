"""`bench tune`: the dominance rules, the screening verdict, the candidate space built from the
runtime plug-ins, and a real search on the CPU (ONNX Runtime's CPU EP on the example ONNX
detector, the generated COCO-format sample): pruning reasons, the time budget, the report's
tune section, and tuned.yaml validated and measured again."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from record_factory import accuracy, record

from harness.plan.schema import LatencyProtocol
from harness.results import CellRecord, TuneCandidate
from harness.tune.pareto import Point, dominated_keys, dominates, front
from harness.tune.search import (
    Budget,
    BudgetedLauncher,
    _Estimate,
    _memory,
    _Screened,
    _winner,
    apply_limit,
    nothing_survived,
    parse_budget,
    runtime_round_robin,
    screen_verdict,
    stage2_skip,
)
from harness.tune.space import Candidate

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "examples" / "onnx" / "anchor-grid-320.onnx"


# -- Pareto ---------------------------------------------------------------------------------


def test_dominance_needs_no_worse_on_both_axes_and_better_on_one() -> None:
    fast_good, slow_bad = Point("a", 1.0, 50.0), Point("b", 2.0, 40.0)
    assert dominates(fast_good, slow_bad, higher_is_better=True)
    assert not dominates(slow_bad, fast_good, higher_is_better=True)
    fast_bad, slow_good = Point("c", 1.0, 40.0), Point("d", 2.0, 50.0)
    assert not dominates(fast_bad, slow_good, higher_is_better=True)
    assert not dominates(slow_good, fast_bad, higher_is_better=True)
    # Memory: lower is better, so the smaller footprint at the same latency dominates.
    assert dominates(Point("e", 1.0, 100.0), Point("f", 1.0, 200.0), higher_is_better=False)
    assert not dominates(Point("e", 1.0, 100.0), Point("f", 1.0, 200.0), higher_is_better=True)


def test_equal_points_both_stay_on_the_front() -> None:
    points = [Point("a", 1.0, 50.0), Point("b", 1.0, 50.0), Point("c", 1.5, 50.0), Point("d", 3.0, 60.0)]
    assert [p.key for p in front(points, higher_is_better=True)] == ["a", "b", "d"]
    assert dominated_keys(points, higher_is_better=True) == {"c"}


# -- the screening verdict --------------------------------------------------------------------


def test_screening_prunes_past_the_budget_and_keeps_within_it() -> None:
    ok = record("x", status="ok", accuracy=accuracy(0.400))
    assert screen_verdict(ok, 40.3, 0.5, 50) is None  # 0.3 points lost: within 0.5
    kind, why = screen_verdict(ok, 41.0, 0.5, 50) or ("", "")
    assert kind == "accuracy" and "1.00 points below the baseline's 41.00" in why and "50-image" in why
    failed = record("y", status="failed", reason="boom")
    assert screen_verdict(failed, 40.0, 0.5, 50) == ("failed", "boom")
    untried = record("z", status="skipped", reason="not tried: the time budget")
    assert screen_verdict(untried, 40.0, 0.5, 50) == ("time", "not tried: the time budget")
    no_ref = screen_verdict(ok, None, 0.5, 50)
    assert no_ref is not None and no_ref[0] == "accuracy" and "no baseline" in no_ref[1]


def test_screening_prunes_at_the_margin_not_the_exact_budget() -> None:
    ok = record("x", status="ok", accuracy=accuracy(0.400))
    assert screen_verdict(ok, 40.8, 0.5, 50, 2.0) is None  # 0.8 lost: past 0.5, within 2 x 0.5
    kind, why = screen_verdict(ok, 41.2, 0.5, 50, 2.0) or ("", "")
    assert kind == "accuracy" and "screening limit of 1 (2 x the budget of 0.5)" in why


def test_a_bad_screening_margin_is_refused_naming_the_field(tmp_path: Path) -> None:
    plan = _plan(tmp_path, tune="  screen_map_margin: 0.5")
    done = _bench("validate", str(plan), cwd=tmp_path)
    assert done.returncode == 2 and "tune.screen_map_margin" in done.stderr, done.stderr


def test_a_bad_budget_names_the_flag() -> None:
    for text in ("0.5", "map=0.5", "map_drop=x", "map_drop=-1", "map_drop=inf"):
        with pytest.raises(Exception, match="--budget"):
            parse_budget(text)
    assert parse_budget("map_drop=0.5") == 0.5


# -- the candidate limit ----------------------------------------------------------------------


def _cand(name: str, *, baseline: bool = False, model: str = "m", precision: str = "fp32", batch: int = 1) -> Candidate:
    return Candidate(0, model, "onnxruntime-cpu", precision, batch, {}, {}, name, baseline=baseline)


def test_the_candidate_limit_never_cuts_a_baseline() -> None:
    # The baseline comes last in the space's order; a limit of 1 must still screen it, and it
    # does not take the one slot.
    others = [_cand(f"o{i}") for i in range(3)]
    base = _cand("base", baseline=True)
    kept = apply_limit([*others, base], 1)
    assert [c.name for c in kept] == ["base", "o0"]
    assert base.pruned is None and others[0].pruned is None
    assert all(c.pruned == ("limit", "not tried: tune.max_candidates is 1") for c in others[1:])


def test_a_limit_tries_every_runtime_before_a_second_option_of_any() -> None:
    """The H200 tune's space (torch, rfdetr-optimized, then four ONNX Runtime CUDA options):
    in the space's order a tight budget screened torch and rfdetr and never reached ONNX
    Runtime, the fastest there."""
    def cand(runtime: str, name: str, baseline: bool = False) -> Candidate:
        return Candidate(0, "m", runtime, "fp32", 1, {}, {}, name, baseline=baseline)

    space = [cand("torch", "torch", True), cand("torch", "torch fp16"), cand("rfdetr-optimized", "ts"),
             cand("rfdetr-optimized", "ts fp16"), *(cand("onnxruntime-cuda", f"ort{i}") for i in range(4))]
    kept = apply_limit(space, 3)
    assert [c.name for c in kept] == ["torch", "torch fp16", "ts", "ort0"]
    assert runtime_round_robin(space, lambda c: c.runtime, lambda c: c.baseline)[4:] == [space[3], space[5], space[6], space[7]]


def test_the_screening_launcher_asks_in_its_order(monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.tune.search as search

    monkeypatch.setattr(search, "outcome_record", lambda cell, status, why, when: {"status": status})
    asked: list[str] = []
    done: list[str] = []

    def refuse(unit: Any) -> str:
        asked.append(unit.key)
        return "not tried"

    units = [SimpleNamespace(key=k, cell=SimpleNamespace(runtime=SimpleNamespace(name=r)))
             for k, r in [("a1", "a"), ("a2", "a"), ("b1", "b")]]
    launcher = BudgetedLauncher(refuse, order=lambda us: runtime_round_robin(us, lambda u: u.cell.runtime.name, lambda u: False))
    launcher.run(units, None, SimpleNamespace(done=lambda unit, record: done.append(unit.key)))  # type: ignore[arg-type]
    assert asked == done == ["a1", "b1", "a2"]


def test_nothing_survived_lists_the_pruned_and_blames_a_failed_run_with_1() -> None:
    base, other = _cand("base", baseline=True), _cand("other", precision="int8")
    base.pruned, other.pruned = ("failed", "the worker died"), ("invalid", "needs dataset.calibration")
    exc = nothing_survived("plan.yaml", [base, other], Path("/runs/x-screen"))
    text = str(exc)
    assert exc.exit_status == 1 and "None" not in text and "/runs/x-screen" in text
    assert "base fp32 b1 (m): failed: the worker died" in text and "other int8 b1 (m): invalid:" in text
    # Nothing could run at all: the plan is the cause, and nothing was screened.
    other.pruned = base.pruned = ("unavailable", "no onnxruntime")
    exc = nothing_survived("plan.yaml", [base, other], None)
    assert exc.exit_status == 2 and "nothing was screened" in str(exc) and "None" not in str(exc)


# -- the time budget ------------------------------------------------------------------------

SCREEN = LatencyProtocol(warmup_iterations=5, warmup_seconds=0.5, min_iterations=30, min_seconds=1.0, repeats=1)
FULL = LatencyProtocol(warmup_iterations=10, warmup_seconds=1.0, min_iterations=100, min_seconds=3.0, repeats=3)


def _slow_estimate(c: Candidate) -> _Estimate:
    # A 500 ms call: screening took 5 x 0.5 warm-up + 30 x 0.5 timed + 2 s start-up + 1 s accuracy.
    estimate = _Estimate(SCREEN, FULL, accuracy_scale=10.0)
    estimate.screened[(c.model, c.name, c.precision, c.batch)] = _Screened(2.5 + 15.0 + 2.0 + 1.0, 1.0, 0.5)
    return estimate


def test_the_estimate_counts_min_iterations_at_the_screened_latency() -> None:
    c = _cand("slow")
    c.protocol = FULL
    # Each process: 2 s start-up, max(10 x 0.5, 1) warm-up, max(100 x 0.5, 3) timed; 3 of them;
    # one accuracy pass at 10 x the subset's 1 s.
    assert _slow_estimate(c).measured(c) == pytest.approx(3 * (2.0 + 5.0 + 50.0) + 10.0)
    c.protocol = LatencyProtocol.model_validate({**FULL.model_dump(), "sustained": {"duration_s": 60.0}})
    assert _slow_estimate(c).measured(c) == pytest.approx(3 * (2.0 + 5.0 + 60.0) + 10.0)


def test_stage_two_skips_a_process_that_would_pass_the_deadline_but_never_a_baseline() -> None:
    c = _cand("slow")
    c.protocol = FULL
    estimate = _slow_estimate(c)
    # 57 s a process: at 100 s of 120 the next one would end at 157 s (167 with the accuracy pass).
    why = stage2_skip(c, True, estimate, elapsed=100.0, deadline=120.0, max_minutes=2.0)
    assert why is not None and why.startswith("not measured: the time budget (--max-minutes 2)")
    assert stage2_skip(c, False, estimate, elapsed=60.0, deadline=120.0, max_minutes=2.0) is None
    base = _cand("base", baseline=True)
    base.protocol = FULL
    assert stage2_skip(base, True, estimate, elapsed=119.0, deadline=120.0, max_minutes=2.0) is None


# -- the winner and its tie rule -----------------------------------------------------------


def _measured(cell_id: str, processes: list[float], ap: float | None = 40.0, memory: int | None = 100) -> TuneCandidate:
    return TuneCandidate(name=cell_id, model="m", runtime="onnxruntime-cpu", precision="fp32", batch=1,
                         outcome="measured", cell_id=cell_id, latency_ms=sorted(processes)[len(processes) // 2],
                         process_latency_ms=processes, ap=ap, memory_bytes=memory, within_budget=True)


BUDGET = Budget(map_drop=0.5)


def test_the_memory_front_holds_one_way_of_reading_device_memory() -> None:
    from harness.tune.search import _with_fronts

    # The allocator's figure (tensors only) looks smaller than NVML's (context and cache too):
    # on one axis it would dominate for the wrong reason.
    nvml_a = _measured("nvml-a", [5.0], memory=900).model_copy(update={"memory_kind": "device", "memory_method": "nvml_process"})
    nvml_b = _measured("nvml-b", [4.0], memory=1200).model_copy(update={"memory_kind": "device", "memory_method": "nvml_process"})
    torch_c = _measured("torch-c", [6.0], memory=100).model_copy(update={"memory_kind": "device", "memory_method": "torch_allocator"})
    fronts = {c.name: c.on_front_memory for c in _with_fronts([nvml_a, nvml_b, torch_c], "device")}
    assert fronts == {"nvml-a": True, "nvml-b": True, "torch-c": False}


def test_a_missing_memory_figure_loses_a_tie() -> None:
    unknown = _measured("unknown", [10.0, 11.0, 12.0], memory=None)
    known = _measured("known", [10.5, 11.5, 12.5], memory=500)
    winner, why, tie = _winner([unknown, known], BUDGET)
    assert winner == "known" and tie is not None and "lower memory (the mAP being equal)" in tie
    # The reason is the pick's: its latency, and that it tied with the fastest.
    assert "11.5 ms" in why and "tied with the fastest (unknown" in why


def test_a_tie_equal_on_map_and_memory_says_the_latency_decided() -> None:
    a, b = _measured("a", [10.0, 11.0, 12.0]), _measured("b", [10.5, 11.5, 12.5])
    winner, why, tie = _winner([b, a], BUDGET)
    assert winner == "a" and tie is not None
    assert "lower median latency" in tie and "memory" not in tie.split("decided by")[1].split("(")[0]
    assert "11 ms" in why


def test_every_candidate_inside_the_tie_is_considered() -> None:
    fastest = _measured("fast", [10.0, 11.0, 12.0], ap=40.0)
    runner = _measured("runner", [10.2, 11.2, 12.2], ap=40.1)
    third = _measured("third", [10.4, 11.4, 12.4], ap=41.0)
    far = _measured("far", [30.0, 31.0, 32.0], ap=45.0)  # significantly slower: not in the tie
    winner, why, tie = _winner([fastest, runner, third, far], BUDGET)
    assert winner == "third" and tie is not None and "higher mAP" in tie
    assert "fast, runner, third tie" in tie and "far" not in tie
    assert "11.4 ms" in why


def test_a_far_slower_configuration_the_test_cannot_separate_is_no_tie() -> None:
    """The H200 tune of RF-DETR Nano (2 processes a side, docs/performance.md): eager torch at
    12 ms was "not significantly slower" than ONNX Runtime with CUDA graphs at 3.1 ms (p = 0.15)
    and, as a tie decided by memory, won. Beyond the tie margin the lower median decides, and
    the result says the order is not established."""
    graphs = _measured("ort-graphs", [3.126688, 3.092544], memory=1_004_535_808)
    ort = _measured("ort", [4.215616, 3.903680], memory=968_884_224)
    eager = _measured("torch", [15.788128, 8.303440], memory=912_261_120)
    winner, why, tie = _winner([eager, ort, graphs], BUDGET)
    assert winner == "ort-graphs" and "the lowest latency" in why and "tied" not in why
    assert tie is not None and "no tie" in tie and "more processes would tell" in tie
    assert "torch: Welch's t-test on log process medians, p = 0.15, change +" in tie
    # Within the margin the same pair ties, and memory decides.
    close = _measured("close", [3.2, 3.1], memory=900_000_000)
    winner, _, tie = _winner([close, graphs], BUDGET)
    assert winner == "close" and tie is not None and "within 5% of its median" in tie and "lower memory" in tie
    winner, _, _ = _winner([close, graphs], BUDGET, margin_pct=1.0)
    assert winner == "ort-graphs"


def test_a_p99_search_names_its_figure_and_its_tests_inputs() -> None:
    a, b = _measured("a", [10.0, 11.0, 12.0]), _measured("b", [10.5, 11.5, 12.5])
    winner, why, tie = _winner([a, b], Budget(map_drop=0.5, latency="p99"))
    assert winner == "a" and "median of process p99s" in why and "p99 latency over processes" not in why
    assert tie is not None and "log process p99s" in tie and "process medians" not in tie
    _, why, tie = _winner([a, b], BUDGET)
    assert "median of process medians" in why and tie is not None and "log process medians" in tie


# -- the report's front charts ------------------------------------------------------------


def test_a_point_without_a_baseline_map_is_not_drawn_past_the_budget() -> None:
    from harness.report.tune import budget_words, point_style

    assert point_style(True, "#123") == ("#123", "")
    assert point_style(False, "#123") == ("#fff", "")  # hollow: past the budget
    fill, dash = point_style(None, "#123")
    assert fill not in ("#fff", "#123") and "dasharray" in dash
    assert "past" not in budget_words(None) and "no baseline mAP" in budget_words(None)
    assert budget_words(False) == "\npast the mAP budget" and budget_words(True) == ""
    # Drawn: the chart of a search whose only point has no baseline mAP to be judged against.
    from harness.report.tune import front_chart
    from harness.results import TuneResult

    point = _measured("lonely", [10.0]).model_copy(update={"within_budget": None})
    result = TuneResult(plan_name="p", budget_map_drop=0.5, latency_stat="median", per_image=False, batches=[1],
                        scope="model", max_minutes=1.0, subset_images=3, screen_protocol={}, candidates=[point],
                        winner_why="", elapsed_s=1.0)
    svg = str(front_chart(result, "map"))
    assert "past the mAP budget" not in svg and "no baseline mAP" in svg and 'fill="#fff"' not in svg


def test_the_report_says_the_batch_once_and_a_zero_change_without_a_sign(capsys: pytest.CaptureFixture[str]) -> None:
    """Several batches: the label ends in the batch, which was printed again ("... b1 fp32 b1");
    a drop of 0 printed as "-0.00 points"."""
    from harness.report.tune import front_chart, print_tune_summary
    from harness.results import TuneResult

    winner = _measured("w", [10.0]).model_copy(update={"name": "onnxruntime-cpu intra_op_num_threads=1 b1",
                                                        "map_drop": 0.0, "ap": 0.0})
    result = TuneResult(plan_name="p", budget_map_drop=0.5, latency_stat="median", per_image=True, batches=[1, 2],
                        scope="model", max_minutes=1.0, subset_images=3, screen_protocol={}, candidates=[winner],
                        winner="w", winner_why="the lowest latency", elapsed_s=1.0)
    print_tune_summary(result, Path("/runs/x"))
    line = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("winner:"))
    assert "intra_op_num_threads=1 b1 fp32:" in line and "fp32 b1" not in line
    assert "mAP ±0.00 points against the baseline" in line and "-0.00" not in line
    # Random weights: the mAP front is refused in words, the memory front is still drawn.
    refused = str(front_chart(result, "map", random_weights=True))
    assert "not drawn" in refused and "random weights" in refused and "<svg" not in refused
    assert "<svg" in str(front_chart(result, "map"))


# -- memory: the cell's resources, one kind per device ------------------------------------


def _with_resources(cell_id: str, repeat: int, device: str, peak: int | None, rss: int, reason: str | None = None) -> CellRecord:
    return record(cell_id, repeat=repeat, identity_fields={"device": device},
                  environment={"devices": [device]},
                  resources={"device_memory": {"peak_bytes": peak, "method": "torch_allocator" if peak else None,
                                               "reason": reason},
                             "host_memory": {"peak_rss_bytes": rss, "method": "/proc/self/status VmHWM"},
                             "artifact": {"reason": "random weights"}, "energy": {"reason": "no counter"}})


def test_memory_is_the_device_peak_on_a_gpu_and_the_host_rss_on_the_cpu() -> None:
    gpu = [_with_resources("g", k, "cuda:0", peak, 9_000_000) for k, peak in enumerate([300_000, 500_000, 400_000])]
    assert _memory(gpu, None) == {"memory_kind": "device", "memory_bytes": 500_000,  # the worst process's
                                  "memory_method": "torch_allocator", "memory_reason": None}
    cpu = [_with_resources("c", k, "cpu", None, rss, reason="the cell runs on the CPU")
           for k, rss in enumerate([7_000_000, 8_000_000])]
    assert _memory(cpu, None) == {"memory_kind": "host_rss", "memory_bytes": 8_000_000,
                                  "memory_method": "/proc/self/status VmHWM", "memory_reason": None}
    # A GPU cell without a device reading has no memory figure: its host RSS is another quantity.
    blind = [_with_resources("b", 0, "cuda:0", None, 9_000_000, reason="NVML gave no memory reading")]
    got = _memory(blind, None)
    assert got["memory_kind"] == "device" and got["memory_bytes"] is None
    assert got["memory_reason"] == "NVML gave no memory reading"
    # No process measured its resources (a failed cell): a reason, never a zero.
    failed = _memory([record("f", status="failed", reason="boom")], None)
    assert failed["memory_bytes"] is None and failed["memory_reason"] == "no measured process recorded its resources"


# -- a plan and the CLI ---------------------------------------------------------------------


def _plan(folder: Path, tune: str = "", precisions: str = "precisions: [fp32, int8, int8-dynamic]",
          openvino: bool = False) -> Path:
    """A CPU tune plan on the example detector, no `runtimes:` (every installed plug-in is
    searched): ONNX Runtime's graph levels, and OpenVINO's hints (or its defaults only)."""
    options = ("\n    openvino-cpu: {performance_hint: [latency, throughput], threads: [null]}" if openvino else
               "\n    openvino-cpu: {performance_hint: [latency], threads: [null]}")
    plan = folder / "tune.yaml"
    plan.write_text(f"""
name: tune-cpu
device: cpu
models:
  - name: anchor-grid-320
    source: onnx
    path: {MODEL}
    weights: random
    resolutions: [320]
    preprocess: {{resize: letterbox, mean: [0, 0, 0], std: [1, 1, 1]}}
    decoder: {{kind: yolo_raw, score_threshold: 0.04, top_k: 100, outputs: {{predictions: output0}}}}
{precisions}
protocol: {{warmup_iterations: 3, warmup_seconds: 0.1, min_iterations: 20, min_seconds: 0.3}}
dataset: {{sample: true, sample_images: 6}}
accuracy: {{agreement_images: 2, gallery_images: 0}}
tune:
  subset_images: 3
  screen_protocol: {{min_iterations: 10, min_seconds: 0.1, warmup_seconds: 0.1}}
  options:
    onnxruntime-cpu: {{graph_optimization_level: [all, disable], intra_op_num_threads: [null]}}{options}
{tune}
""")
    return plan


def _bench(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def test_bad_flags_exit_2_before_anything_runs(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    done = _bench("tune", str(plan), "--budget", "drop=1", "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 2 and "--budget" in done.stderr and "Traceback" not in done.stderr
    done = _bench("tune", str(plan), "--budget", "map_drop=1", "--batch", "0", "--output", str(tmp_path / "out"),
                  cwd=tmp_path)
    assert done.returncode == 2 and "--batch" in done.stderr
    assert not (tmp_path / "out").exists()


def test_tune_options_are_checked_by_validate(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    plan.write_text(plan.read_text().replace("[all, disable]", "[all, fastest]").replace(
        "precisions: [fp32, int8, int8-dynamic]", "runtimes: [onnxruntime-cpu]"))
    done = _bench("validate", str(plan), cwd=tmp_path)
    assert done.returncode == 2, done.stdout
    assert "tune.options.onnxruntime-cpu.graph_optimization_level" in done.stderr and "'fastest'" in done.stderr


def test_the_space_comes_from_the_plugins(tmp_path: Path) -> None:
    from harness.tune.space import build_space, load_tune_plan

    loaded, notes = load_tune_plan(_plan(tmp_path))
    assert any("onnxruntime-cuda" in n and "needs a GPU" in n for n in notes)
    space = build_space(loaded, [1])
    by = {(c.name, c.precision): c for c in space.candidates}
    ort = {(n, p) for n in ("onnxruntime-cpu", "onnxruntime-cpu graph_optimization_level=disable")
           for p in ("fp32", "int8", "int8-dynamic")}
    # OpenVINO, where installed, with the one hint the plan's tune.options leave it (it has no
    # dynamic quantization; fp16 only where this CPU has FP16 arithmetic).
    ov = {("openvino-cpu", p) for p in ("fp32", "int8", "fp16")}
    assert ort <= set(by) <= ort | ov and {("openvino-cpu", "fp32"), ("openvino-cpu", "int8")} <= set(by)
    if not find_spec("openvino"):  # registered but not installed: in the space, pruned with why
        assert by[("openvino-cpu", "fp32")].pruned and by[("openvino-cpu", "fp32")].pruned[0] == "unavailable"
    base = [c for c in space.candidates if c.baseline]
    assert [(b.name, b.precision) for b in base] == [("onnxruntime-cpu", "fp32")]
    for name in ("onnxruntime-cpu", "onnxruntime-cpu graph_optimization_level=disable"):
        kind, why = by[(name, "int8")].pruned or ("", "")
        assert kind == "invalid" and "dataset.calibration" in why
        assert by[(name, "int8-dynamic")].pruned is None


def _two_runtime_plan(folder: Path) -> Path:
    """The reviewer's plan: ONNX Runtime first, its tune.options leaving the thread default
    (not set) out, OpenVINO second at its defaults."""
    plan = folder / "two.yaml"
    plan.write_text(f"""
name: tune-two
device: cpu
models:
  - name: anchor-grid-320
    source: onnx
    path: {MODEL}
    weights: random
    resolutions: [320]
    preprocess: {{resize: letterbox, mean: [0, 0, 0], std: [1, 1, 1]}}
    decoder: {{kind: yolo_raw, score_threshold: 0.04, top_k: 100, outputs: {{predictions: output0}}}}
runtimes: [onnxruntime-cpu, openvino-cpu]
precisions: [fp32, int8]
dataset: {{sample: true, sample_images: 8, calibration: {{images: 4}}}}
tune:
  options:
    onnxruntime-cpu: {{graph_optimization_level: [all, basic], intra_op_num_threads: [1, 2]}}
    openvino-cpu: {{performance_hint: [latency]}}
""")
    return plan


def test_the_baseline_stays_on_the_first_runtime_when_tune_options_leave_a_default_out(tmp_path: Path) -> None:
    """`intra_op_num_threads: [1, 2]` has no candidate at the default (not set): the baseline
    was OpenVINO's, the second runtime's, and every mAP drop was judged against it silently."""
    from harness.tune.space import build_space, load_tune_plan

    loaded, _ = load_tune_plan(_two_runtime_plan(tmp_path))
    space = build_space(loaded, [1], check_available=False)
    [base] = [c for c in space.candidates if c.baseline]
    assert (base.runtime, base.name, base.precision) == ("onnxruntime-cpu", "onnxruntime-cpu intra_op_num_threads=1",
                                                         "fp32")
    [note] = [n for n in space.notes if n.startswith("baseline")]
    assert "onnxruntime-cpu intra_op_num_threads=1 fp32 b1" in note and "the plan's first runtime" in note
    assert "intra_op_num_threads=1 (default not set)" in note
    # Several batches: the first one, and the label's batch is not said twice.
    space = build_space(loaded, [1, 4], check_available=False)
    [base] = [c for c in space.candidates if c.baseline]
    assert (base.name, base.batch) == ("onnxruntime-cpu intra_op_num_threads=1 b1", 1)
    assert "intra_op_num_threads=1 b1 fp32:" in next(n for n in space.notes if n.startswith("baseline"))


def test_a_first_runtime_without_a_runnable_fp32_candidate_passes_the_baseline_on_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.runtimes.registry import plugin
    from harness.tune.space import build_space, load_tune_plan

    loaded, _ = load_tune_plan(_two_runtime_plan(tmp_path))
    # One plug-in class for every runtime: the check answers by the plug-in's name.
    monkeypatch.setattr(type(plugin("onnxruntime-cpu")), "unavailable_reason",
                        lambda self, cell: "not here" if self.name == "onnxruntime-cpu" else None)
    space = build_space(loaded, [1])
    [base] = [c for c in space.candidates if c.baseline]
    assert (base.name, base.precision) == ("openvino-cpu", "fp32")  # at its defaults: threads not set
    note = next(n for n in space.notes if n.startswith("baseline"))
    assert "first of the plan's runtimes with an FP32 candidate that can run here (onnxruntime-cpu: none)" in note
    assert "at the default settings" in note


def test_the_tuned_plan_leaves_out_the_precision_axis_no_entry_reads(tmp_path: Path) -> None:
    import yaml

    from harness.plan.expand import expand
    from harness.tune.search import _loaded
    from harness.tune.space import build_space, load_tune_plan, plan_with

    loaded, _ = load_tune_plan(_two_runtime_plan(tmp_path))
    space = build_space(loaded, [1], check_available=False)
    fp32_only = [c for c in space.alive() if c.precision == "fp32" and c.runtime == "onnxruntime-cpu"]
    plan = plan_with(loaded, fp32_only, space)
    data = plan.model_dump(mode="json", exclude_defaults=True)
    assert "precisions" not in data and "batch_sizes" not in data
    assert all(rt["precisions"] == ["fp32"] for rt in data["models"][0]["runtimes"])
    # Read back it is still a plan, and its cells are the candidates given, fp32 only.
    again = _loaded(plan, loaded, "# tuned\n")
    cells = expand(again.plan, tmp_path)
    assert sorted((c.runtime.key, c.precision) for c in cells) == sorted((c.name, "fp32") for c in fp32_only)
    assert "int8" not in yaml.safe_dump(data)


def test_a_label_that_carries_the_batch_is_not_followed_by_it_again() -> None:
    from harness.tune.labels import candidate_text

    assert candidate_text("onnxruntime-cpu intra_op_num_threads=1 b1", "fp32", 1) == (
        "onnxruntime-cpu intra_op_num_threads=1 b1 fp32")
    assert candidate_text("onnxruntime-cpu", "fp32", 1) == "onnxruntime-cpu fp32 b1"
    assert candidate_text("x b1", "int8", 4) == "x b1 int8 b4"  # another batch's digits are no suffix


def test_the_step_lines_count_only_the_processes_that_started(monkeypatch: pytest.MonkeyPatch) -> None:
    """12 configurations chosen, 2 of them past the time budget: the measure line said
    "12 configuration(s), 12 process(es)", counting the skipped records as processes."""
    import harness.tune.search as search
    from harness.tune.search import measured_counts, screened_counts

    monkeypatch.setattr(search, "outcome_record", lambda cell, status, why, when: {"status": status})

    class Ran:
        def run(self, units: Any, store: Any, events: Any) -> None:
            for unit in units:
                events.done(unit, {"status": "ok"})

    def units(cell_ids: list[str]) -> list[Any]:
        return [SimpleNamespace(key=f"{c}#{r}", cell_id=c, cell=None) for c in cell_ids for r in (0, 1)]

    late = {"c10", "c11"}
    launcher = BudgetedLauncher(lambda u: "not measured: the time budget" if u.cell_id in late else None)
    launcher.inner = Ran()  # type: ignore[assignment]
    events: Any = SimpleNamespace(done=lambda unit, record: None, started=None, phase=None)
    launcher.run(units([f"c{i}" for i in range(12)]), None, events)  # type: ignore[arg-type]
    assert measured_counts(launcher, 12) == ("10 of 12 configuration(s), 20 process(es); 4 process(es) not started "
                                             "(the time budget): 2 configuration(s) not measured")
    # A configuration cut short after its first process still counts as measured, said so.
    cut = BudgetedLauncher(lambda u: "not measured" if u.key == "c1#1" else None)
    cut.inner = Ran()  # type: ignore[assignment]
    cut.run(units(["c0", "c1"]), None, events)  # type: ignore[arg-type]
    assert measured_counts(cut, 2) == ("2 of 2 configuration(s), 3 process(es); 1 process(es) not started "
                                       "(the time budget): 1 with fewer processes")
    everything = BudgetedLauncher(lambda u: None)
    everything.inner = Ran()  # type: ignore[assignment]
    everything.run(units(["c0"]), None, events)  # type: ignore[arg-type]
    assert measured_counts(everything, 1) == "1 configuration(s), 2 process(es)"
    assert screened_counts(launcher) == "20 screening process(es), 4 candidate(s) not tried (the time budget)"


def test_random_weights_are_recognised_by_the_reports_rules() -> None:
    from harness.results import DerivedEntry
    from harness.tune.search import _random_weights

    trained = record("t", status="ok")
    assert not _random_weights([trained], None)
    assert _random_weights([record("r", status="ok", random_weights=True)], None)
    assert _random_weights([record("k", status="ok", identity_fields={"weights_kind": "random"})], None)
    assert _random_weights([trained], DerivedEntry(random_weights=True))


def test_the_screening_protocol_wins_over_a_models_own(tmp_path: Path) -> None:
    from harness.plan.expand import expand
    from harness.tune.search import screen_protocol, screening_plan
    from harness.tune.space import build_space, load_tune_plan

    plan = _plan(tmp_path, precisions="precisions: [fp32]")
    plan.write_text(plan.read_text().replace(
        "    weights: random\n",
        "    weights: random\n    protocol: {min_seconds: 9, repeats: 3, sustained: {duration_s: 60}}\n"))
    loaded, _ = load_tune_plan(plan)
    space = build_space(loaded, [1], check_available=False)
    short = screen_protocol(loaded.plan)
    cells = expand(screening_plan(loaded, space.alive(), space, short, 3), tmp_path)
    assert cells and all(c.protocol == short for c in cells)
    assert short.repeats == 1 and short.sustained is None and short.min_seconds == 0.1
    # The full measurement keeps the model's protocol, and the time budget projects from it.
    full = space.alive()[0].protocol
    assert full is not None and full.min_seconds == 9 and full.repeats == 3 and full.sustained is not None


def test_a_plan_with_two_models_is_refused_naming_models(tmp_path: Path) -> None:
    from harness.errors import UserError
    from harness.tune.search import tune
    from harness.tune.space import load_tune_plan

    plan = _plan(tmp_path, precisions="precisions: [fp32]")
    text = plan.read_text()
    block = text[text.index("  - name: anchor-grid-320"):text.index("precisions: [fp32]")]
    plan.write_text(text.replace(block, block + block.replace("name: anchor-grid-320", "name: second")))
    loaded, _ = load_tune_plan(plan)
    assert len(loaded.plan.models) == 2
    with pytest.raises(UserError, match=r"models: bench tune searches one model at a time.*anchor-grid-320, second"):
        tune(loaded, Budget(map_drop=0.5), output=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_availability_is_asked_per_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.runtimes.registry import plugin
    from harness.tune.space import build_space, load_tune_plan

    loaded, _ = load_tune_plan(_plan(tmp_path, precisions="precisions: [fp32]"))
    rt = type(plugin("onnxruntime-cpu"))

    def only_default(self: Any, cell: Any) -> str | None:
        level = cell.runtime.settings.get("graph_optimization_level")
        return "this level needs a package not here" if level == "disable" else None

    monkeypatch.setattr(rt, "unavailable_reason", only_default)
    by = {c.name: c for c in build_space(loaded, [1]).candidates}
    assert by["onnxruntime-cpu"].pruned is None
    assert by["onnxruntime-cpu graph_optimization_level=disable"].pruned == (
        "unavailable", "this level needs a package not here")


def test_the_plans_folder_is_one_property(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.plan.load import load_plan
    from harness.tune.space import load_tune_plan

    loaded, _ = load_tune_plan(_plan(tmp_path))
    monkeypatch.chdir(REPO)
    assert loaded.plan_dir == tmp_path.resolve()
    assert load_plan(None).plan_dir == REPO  # the bundled plan: the current folder


# -- a real search on the CPU ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino", reason="the openvino extra: pip install -e '.[openvino]'")
    folder = tmp_path_factory.mktemp("tune")
    done = _bench("tune", str(_plan(folder, openvino=True)), "--budget", "map_drop=0.5", "--max-minutes", "20",
                  "--output", str(folder / "out"), cwd=folder)
    assert done.returncode == 0, done.stderr[-4000:]
    [run] = (folder / "out" / "tune-cpu").iterdir()
    return {"folder": folder, "run": run, "stderr": done.stderr,
            "tune": json.loads((run / "tune.json").read_text())}


def test_the_search_prunes_with_reasons_and_measures_the_survivors(tuned: dict[str, Any]) -> None:
    result, run = tuned["tune"], tuned["run"]
    by = {(c["name"], c["precision"]): c for c in result["candidates"]}
    assert by[("onnxruntime-cpu", "int8")]["outcome"] == "pruned"
    assert by[("onnxruntime-cpu", "int8")]["reason_kind"] == "invalid"
    assert by[("openvino-cpu", "int8")]["reason_kind"] == "invalid"  # no calibration split either
    measured = [c for c in result["candidates"] if c["outcome"] == "measured"]
    # ONNX Runtime: 2 graph levels x fp32, int8-dynamic; OpenVINO: 2 performance hints x fp32
    # (it has no dynamic quantization, and fp16 is a candidate only where this CPU has it).
    assert {(c["name"], c["precision"]) for c in measured} >= {
        ("onnxruntime-cpu", "fp32"), ("onnxruntime-cpu graph_optimization_level=disable", "fp32"),
        ("onnxruntime-cpu", "int8-dynamic"), ("onnxruntime-cpu graph_optimization_level=disable", "int8-dynamic"),
        ("openvino-cpu", "fp32"), ("openvino-cpu performance_hint=throughput", "fp32")}
    assert all(c["precision"] == "fp16" for c in measured if c["name"].startswith("openvino") and c["precision"] != "fp32")
    for c in measured:
        assert c["screen_latency_ms"] > 0 and c["latency_ms"] > 0 and c["cell_id"]
        # The worker's peak host RSS (the CPU is the device), from the record's resources.
        assert c["memory_kind"] == "host_rss" and c["memory_bytes"] > 10 * 2**20 and c["memory_method"]
    # The measured numbers are this run folder's records, the same instrument as `bench PLAN`.
    results = json.loads((run / "results.json").read_text())
    medians = {r["cell_id"]: r["latency"]["stats"]["p50"] for r in results["cells"]}
    for c in measured:
        assert c["latency_ms"] == pytest.approx(medians[c["cell_id"]])
    within = [c for c in measured if c["within_budget"]]
    winner = min(within, key=lambda c: c["latency_ms"])
    assert result["winner"] == winner["cell_id"] and winner["on_front_map"]
    # Random weights: every mAP is 0, so the fastest dominates on (latency, mAP) alone.
    assert sum(c["on_front_map"] for c in measured) == 1
    assert [s["name"] for s in result["steps"]] == ["space", "screen", "measure", "report"]
    assert "baseline onnxruntime-cpu fp32 b1" in result["steps"][0]["note"]
    assert any(n.startswith("baseline of model anchor-grid-320: onnxruntime-cpu fp32 b1") for n in result["notes"])
    # weights: random, so the notes say the mAP front and budget compare noise (latency is real).
    from harness.tune.search import RANDOM_WEIGHTS_NOTE

    assert RANDOM_WEIGHTS_NOTE in result["notes"]
    assert result["screen_run"] and Path(result["screen_run"]).is_dir()
    assert "winner:" in tuned["stderr"] and "tuned.yaml" in tuned["stderr"]


def test_the_report_has_the_fronts_and_the_pruned(tuned: dict[str, Any]) -> None:
    html = (tuned["run"] / "report.html").read_text()
    assert 'id="tune"' in html and "Latency against mAP" in html and "Latency against memory" in html
    assert "tune-dominated" in html and "tune-winner" in html
    assert "cannot exist" in html and "dataset.calibration" in html
    assert "Time per step" in html
    # weights: random: the mAP front is refused as the report's other mAP charts are; memory is drawn.
    assert "Latency against mAP: not drawn" in html and "Latency against memory" in html
    assert "-0.00" not in html


def test_tuned_yaml_validates_and_measures_again(tuned: dict[str, Any]) -> None:
    run, result = tuned["run"], tuned["tune"]
    plan = run / result["tuned_plan"]
    done = _bench("validate", str(plan), cwd=tuned["folder"])
    assert done.returncode == 0, done.stderr
    assert result["winner"] in done.stdout and result["baseline"] in done.stdout
    again = tuned["folder"] / "again"
    done = _bench(str(plan), "--output", str(again), cwd=tuned["folder"])
    assert done.returncode == 0, done.stderr[-3000:]
    [rerun] = (again / "tune-cpu-tuned").iterdir()
    ids = {c["cell_id"] for c in json.loads((rerun / "results.json").read_text())["cells"]}
    assert result["winner"] in ids and result["baseline"] in ids
    assert ids == {result["winner"], result["baseline"], *result["neighbours"]}


def test_a_tiny_time_budget_lists_what_was_not_tried(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    plan = _plan(tmp_path, precisions="precisions: [fp32]")
    done = _bench("tune", str(plan), "--budget", "map_drop=0.5", "--max-minutes", "0.01",
                  "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    [run] = (tmp_path / "out" / "tune-cpu").iterdir()
    result = json.loads((run / "tune.json").read_text())
    by = {c["name"]: c for c in result["candidates"]}
    assert by["onnxruntime-cpu"]["outcome"] == "measured" and by["onnxruntime-cpu"]["is_baseline"]
    other = by["onnxruntime-cpu graph_optimization_level=disable"]
    assert other["outcome"] == "untried" and "--max-minutes 0.01" in other["reason"]
    assert "Not tried" in (run / "report.html").read_text()


@pytest.mark.gpu
def test_rfdetr_nano_on_the_gpu(tmp_path: Path) -> None:
    """plans/tune-nano-gpu.yaml: PyTorch, rfdetr's optimized paths and ORT CUDA with and
    without CUDA graphs; the winner comes from the measured run and tuned.yaml re-measures it."""
    done = _bench("tune", str(REPO / "plans" / "tune-nano-gpu.yaml"), "--budget", "map_drop=0.5",
                  "--max-minutes", "12", "--output", str(tmp_path), cwd=tmp_path, timeout=1200)
    assert done.returncode == 0, done.stderr[-4000:]
    [run] = (tmp_path / "tune-nano-gpu").iterdir()
    result = json.loads((run / "tune.json").read_text())
    assert result["memory_kind"] == "device" and result["winner"]
    assert all(c["memory_kind"] == "device" and (c["memory_bytes"] or c["memory_reason"])
               for c in result["candidates"] if c["outcome"] == "measured")
    runtimes = {c["runtime"] for c in result["candidates"] if c["outcome"] == "measured"}
    assert {"torch", "onnxruntime-cuda"} <= runtimes
    again = _bench(str(run / "tuned.yaml"), "--output", str(tmp_path / "again"), cwd=tmp_path, timeout=1200)
    assert again.returncode == 0, again.stderr[-3000:]
