"""Repeats: a cell measured in several fresh worker processes, interleaved across cells; the
headline over processes; resume, GPU lanes, merge and Ray by the process; the host controls
every process runs under (pinning, thread counts, GC off in the timed loop, clock locking)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from harness.plan.load import parse_plan
from harness.run.record import new_record
from harness.run.scheduler import plan_units, reconcile
from harness.run.store import RunStore, utc_now
from harness.run.unit import WorkUnit

REPO = Path(__file__).resolve().parents[1]

PLAN = """
name: rep
device: {device}
models:
  - {{name: a, variant: nano, weights: random}}
  - {{name: b, variant: nano, weights: random, resolutions: [320]}}
runtimes: [torch]
precisions: [fp32]
scopes: [model]
protocol: {protocol}
"""


def cells(tmp_path: Path, device: str = "cpu", protocol: str = "{repeats: 3}") -> list[Any]:
    return parse_plan(PLAN.format(device=device, protocol=protocol), "plan.yaml", tmp_path).cells


# -- the plan ----------------------------------------------------------------------------------


def test_default_repeats_are_three_on_a_gpu_and_one_on_the_cpu(tmp_path: Path) -> None:
    assert {c.protocol.repeats for c in cells(tmp_path, "cpu", "{}")} == {1}
    assert {c.protocol.repeats for c in cells(tmp_path, "cuda:0", "{}")} == {3}
    assert {c.protocol.repeats for c in cells(tmp_path, "cpu", "{repeats: 5}")} == {5}


def test_a_models_protocol_sets_its_own_repeats(tmp_path: Path) -> None:
    text = PLAN.format(device="cpu", protocol="{repeats: 2}").replace(
        "resolutions: [320]}", "resolutions: [320], protocol: {repeats: 4}}")
    by_model = {c.model.name: c.protocol.repeats for c in parse_plan(text, "p.yaml", tmp_path).cells}
    assert by_model == {"a": 2, "b": 4}


@pytest.mark.parametrize("value", ["0", "true", "2.5", "'3'"])
def test_bad_repeats_are_refused(tmp_path: Path, value: str) -> None:
    from harness.errors import UserError

    with pytest.raises(UserError, match="protocol.repeats"):
        cells(tmp_path, "cpu", f"{{repeats: {value}}}")


def test_processes_are_interleaved_round_robin_with_the_order_rotated(tmp_path: Path) -> None:
    a, b = cells(tmp_path)
    text = PLAN.format(device="cpu", protocol="{repeats: 3}").replace(
        "- {name: b,", "- {name: c, variant: nano, weights: random, resolutions: [448]}\n  - {name: b,")
    a, c, b = parse_plan(text, "p.yaml", tmp_path).cells
    units = plan_units([a, c, b])
    order = [(u.cell.model.name, u.repeat) for u in units]
    assert order == [("a", 0), ("c", 0), ("b", 0),
                     ("c", 1), ("b", 1), ("a", 1),
                     ("b", 2), ("a", 2), ("c", 2)]
    assert len({u.key for u in units}) == 9 and units[0].key.endswith(".r0")


def test_a_cell_of_one_process_keeps_its_plain_id(tmp_path: Path) -> None:
    units = plan_units(cells(tmp_path, "cpu", "{}"))
    assert [u.repeat for u in units] == [None, None] and units[0].key == units[0].cell.cell_id


# -- the store and resume ----------------------------------------------------------------------


def _store(tmp_path: Path, loaded_cells: list[Any]) -> RunStore:
    store = RunStore.create(tmp_path / "reports", "rep", "name: rep\n", {"cell_ids": [c.cell_id for c in loaded_cells]})
    store.release_lock()
    return store


def _record(unit: WorkUnit, median: float = 10.0, status: str = "ok") -> dict[str, Any]:
    stats = {"count": 3, "mean": median, "std": 0.1, "min": median, "max": median, "p50": median, "p90": median,
             "p95": median, "p99": median, "cov": 0.01, "median_ci95": [median, median], "median_ci_rel_width": 0.0}
    latency = {"scope": "model", "timer": "perf_counter", "timed_region": "x", "samples_ms": [median * f for f in (0.99, 1.0, 1.01)],
               "stats": stats, "warmup_iterations": 1, "warmup_s": 0.1, "measure_s": 0.1,
               "stop_reason": "min_iterations_and_min_seconds", "batch": 1, "throughput_ips": 1000 / median}
    return new_record(unit.cell, status, utc_now(), repeat=unit.repeat, latency=latency).model_dump(mode="json")  # type: ignore[arg-type]


def test_each_process_has_its_own_record_and_resume_runs_only_the_missing_ones(tmp_path: Path) -> None:
    loaded = cells(tmp_path)
    units = plan_units(loaded)
    store = _store(tmp_path, loaded)
    for unit in units[:4]:
        store.write_cell(_record(unit))
    assert {p.name for p in store.cells_dir.glob("*.json")} == {f"{u.key}.json" for u in units[:4]}
    state = reconcile(units, store)
    assert [u.key for u in state.todo] == [u.key for u in units[4:]]
    assert state.finished == [u.key for u in units[:4]]


def test_a_record_in_the_wrong_file_is_unreadable(tmp_path: Path) -> None:
    loaded = cells(tmp_path)
    units = plan_units(loaded)
    store = _store(tmp_path, loaded)
    store.write_cell(_record(units[0]))
    os.rename(store.cell_path(units[0].key), store.cell_path(units[1].key))
    scan = store.scan_cells()
    assert not scan.records and "not the file's name" in scan.bad[0][1]


def test_finalize_derives_the_headline_over_processes(tmp_path: Path) -> None:
    from harness.run.execute import finalize

    text = PLAN.format(device="cpu", protocol="{repeats: 3}")
    loaded = parse_plan(text, "plan.yaml", tmp_path)
    store = RunStore.create(tmp_path / "reports", "rep", text, {"cell_ids": [c.cell_id for c in loaded.cells],
                                                               "plan_dir": str(tmp_path)})
    medians = {0: 10.0, 1: 14.0, 2: 10.2}
    for unit in plan_units(loaded.cells):
        store.write_cell(_record(unit, medians[unit.repeat or 0]))
    results = finalize(store, loaded)
    entry = results.derived[loaded.cells[0].cell_id]
    across = entry.across_processes
    assert across is not None and across.processes == 3 and across.headline == pytest.approx(10.2)
    assert across.process_medians == pytest.approx([10.0, 14.0, 10.2])
    assert entry.status == "unstable" and "spread" in across.unstable_reasons[0]
    lo, hi = across.rerun_ci95
    assert lo < 10.0 and hi > 14.0
    html = (store.run_dir / "report.html").read_text()
    assert 'id="chart-processes"' in html and "Controls in force" in html
    summary = (store.run_dir / "summary.md").read_text()
    assert "10.2" in summary


# -- GPU lanes, merge and Ray handle repeats ---------------------------------------------------


class LaneRunner:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: list[tuple[str, str, float, float]] = []

    def __call__(self, unit: WorkUnit, store: RunStore, on_phase: Any, env: dict[str, str]) -> dict[str, Any]:
        start = time.monotonic()
        time.sleep(0.05)
        with self.lock:
            self.runs.append((unit.key, env.get("CUDA_VISIBLE_DEVICES", ""), start, time.monotonic()))
        return _record(unit)


def test_gpu_lanes_run_each_process_once_never_two_on_one_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.run.parallel import run_cells_on_gpus

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    loaded = cells(tmp_path, "cuda:0", "{}")  # the GPU default: 3 processes per cell
    store = _store(tmp_path, loaded)
    runner = LaneRunner()
    run_cells_on_gpus(loaded, store, [0, 1], lambda r: None, runner=runner)
    keys = sorted(k for k, *_ in runner.runs)
    assert keys == sorted(u.key for u in plan_units(loaded)) and len(keys) == 6
    assert store.finished_cell_ids() == set(keys)
    for a in runner.runs:
        for b in runner.runs:
            if a is not b and a[1] == b[1]:
                assert a[3] <= b[2] or b[3] <= a[2]  # one process per GPU at a time


def test_merge_keeps_every_process_of_a_cell(tmp_path: Path) -> None:
    from harness.run.merge import merge_runs

    loaded = cells(tmp_path)
    first, second = loaded
    folders = []
    for part, cell in (("one", first), ("two", second)):
        store = RunStore.create(tmp_path / part, "rep", PLAN.format(device="cpu", protocol="{repeats: 3}"),
                                {"cell_ids": [cell.cell_id], "plan_dir": str(tmp_path)})
        for unit in plan_units([cell]):
            store.write_cell(_record(unit))
        store.release_lock()
        folders.append(store.run_dir)
    merged = merge_runs(folders, tmp_path / "merged")
    names = sorted(p.name for p in (merged / "cells").glob("*.json"))
    assert names == sorted(f"{u.key}.json" for u in plan_units(loaded))
    assert json.loads((merged / "run.json").read_text())["cell_ids"] == [first.cell_id, second.cell_id]


def test_ray_units_carry_the_repeats_of_each_gpu_type(tmp_path: Path) -> None:
    from harness.run.ray_backend import fleet_units

    loaded = cells(tmp_path, "cuda:0", "{repeats: 2}")
    units = fleet_units(loaded, ["T4", "L4"])
    assert len(units) == 2 * 2 * 2
    assert {u.gpu_type for u in units} == {"T4", "L4"} and {u.repeat for u in units} == {0, 1}
    assert len({u.key for u in units}) == len(units)


# -- host controls -----------------------------------------------------------------------------


def test_the_garbage_collector_is_off_in_the_timed_loop_and_back_on_after() -> None:
    from harness.measure.protocol import measure
    from harness.measure.timers import PerfCounterTimer
    from harness.plan.schema import LatencyProtocol

    seen: list[bool] = []
    protocol = LatencyProtocol(warmup_iterations=1, warmup_seconds=0, min_iterations=3, min_seconds=0)
    assert gc.isenabled()
    measure(lambda: seen.append(gc.isenabled()), protocol, PerfCounterTimer())
    assert seen == [False] * 4 and gc.isenabled()
    seen.clear()
    measure(lambda: seen.append(gc.isenabled()), protocol, PerfCounterTimer(), disable_gc=False)
    assert seen == [True] * 4


def test_a_worker_pins_itself_and_records_its_controls(tmp_path: Path) -> None:
    code = textwrap.dedent("""
        import json, os
        from harness.environment.host import apply_controls, worker_threads
        done = apply_controls(True, None, None)
        print(json.dumps({"done": done, "affinity": sorted(os.sched_getaffinity(0)),
                          "omp": os.environ.get("OMP_NUM_THREADS"), "threads": worker_threads()}))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout)
    placement = facts["done"]["placement"]
    assert placement["pinned"] and placement["worker_cores"] == facts["affinity"]
    assert facts["omp"] == str(len(facts["affinity"])) == str(facts["threads"])


class _NoPermission(Exception):
    pass


class ClockNvml:
    NVML_CLOCK_SM = 1

    def __init__(self, allow: bool):
        self.allow = allow
        self.calls: list[str] = []

    def nvmlInit(self) -> None:
        self.calls.append("init")

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"gpu{index}"

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetDefaultApplicationsClock(self, handle: str, clock: int) -> int:
        return 1980

    def nvmlDeviceSetGpuLockedClocks(self, handle: str, lo: int, hi: int) -> None:
        if not self.allow:
            raise _NoPermission("Insufficient Permissions")
        self.calls.append(f"lock {lo}-{hi}")

    def nvmlDeviceResetGpuLockedClocks(self, handle: str) -> None:
        self.calls.append("reset")


@pytest.mark.parametrize("allow", [True, False])
def test_clocks_are_locked_when_permitted_and_always_released(monkeypatch: pytest.MonkeyPatch, allow: bool) -> None:
    from harness.environment import clocks

    fake = ClockNvml(allow)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with clocks.ClockLock(0, True) as lock:
        pass
    record = lock.record
    assert record is not None and record["requested"]
    if allow:
        assert record["locked"] and record["sm_mhz"] == 1980 and record["restored"]
        assert fake.calls.index("lock 1980-1980") < fake.calls.index("reset")
    else:
        assert not record["locked"] and "Insufficient Permissions" in record["reason"]
        assert "reset" not in fake.calls
    assert fake.calls[-1] == "shutdown"
    with clocks.ClockLock(0, False) as off:
        pass
    assert off.record is None
