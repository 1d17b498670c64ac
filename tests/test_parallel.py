"""Several GPUs of one host (`--gpus`): parsing, pinning, and the lanes' scheduling rules, with a
fake device list and a fake cell runner (the real multi-GPU run happens on the multi-GPU
machines, tests/test_parallel_gpu.py). The interrupt test kills real child processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from harness.errors import UserError
from harness.plan.cells import Cell
from harness.plan.load import parse_plan
from harness.run import parallel
from harness.run.launch import WorkUnit
from harness.run.parallel import parse_gpus, pin_cell, pinned_env, run_cells_on_gpus
from harness.run.record import new_record
from harness.run.store import RunStore, utc_now

PLAN = """
name: lanes
device: {device}
models:
  - name: nano
    variant: nano
    weights: random
    resolutions: [128, 160, 192, 224]
runtimes: [torch, onnxruntime-cpu]
precisions: [fp32]
scopes: [model]
"""


def h100s(n: int) -> Any:
    return lambda: ["NVIDIA H100 80GB HBM3"] * n


# -- --gpus ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0,1,2,3", [0, 1, 2, 3]), ("0-3", [0, 1, 2, 3]), ("1,3", [1, 3]), ("all", [0, 1, 2, 3]),
     (" 2 ", [2]), ("0,2-3", [0, 2, 3]), ("ALL", [0, 1, 2, 3])],
)
def test_parse_gpus(text: str, expected: list[int]) -> None:
    assert parse_gpus(text, probe=h100s(4)) == expected


@pytest.mark.parametrize(
    ("text", "names", "message"),
    [
        ("all", [], "no NVIDIA GPU is visible"),
        ("0", [], "no GPU 0 here (no GPU is visible)"),
        ("4", ["A"] * 4, "no GPU 4 here (4 visible: 0-3)"),
        ("0,1,0", ["A"] * 4, "GPU 0 is given twice"),
        ("0-2,1", ["A"] * 4, "GPU 1 is given twice"),
        ("gpu0", ["A"] * 4, "`gpu0` is not a GPU index"),
        ("0,,1", ["A"] * 4, "is not a GPU index"),
        ("3-1", ["A"] * 4, "runs backwards"),
        ("all", ["NVIDIA H100 80GB HBM3", "Tesla T4"], "different models (0: NVIDIA H100 80GB HBM3, 1: Tesla T4)"),
    ],
)
def test_parse_gpus_refuses(text: str, names: list[str], message: str) -> None:
    with pytest.raises(UserError, match="^--gpus") as info:
        parse_gpus(text, probe=lambda: list(names))
    assert message in str(info.value)


def test_one_gpu_of_a_mixed_host_is_fine() -> None:
    assert parse_gpus("1", probe=lambda: ["NVIDIA H100 80GB HBM3", "Tesla T4"]) == [1]


def test_visible_gpu_names_on_this_machine_is_a_list() -> None:
    names = parallel.visible_gpu_names()  # NVML or torch; on a CPU machine an empty list
    assert isinstance(names, list)
    if not names:
        with pytest.raises(UserError, match="no NVIDIA GPU"):
            parse_gpus("all")


# -- pinning ---------------------------------------------------------------------------------


def test_pinned_env_without_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("CUDA_DEVICE_ORDER", raising=False)
    assert pinned_env(2) == {"CUDA_VISIBLE_DEVICES": "2", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "FASTEST_FIRST")  # the user's choice stands
    assert pinned_env(2) == {"CUDA_VISIBLE_DEVICES": "2"}


def test_pinned_env_inside_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    # --gpus counts the way CUDA does here: entry 1 of CUDA_VISIBLE_DEVICES is physical GPU 5.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert pinned_env(1) == {"CUDA_VISIBLE_DEVICES": "5"}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaaa,GPU-bbbb")
    assert pinned_env(1) == {"CUDA_VISIBLE_DEVICES": "GPU-bbbb"}
    with pytest.raises(UserError, match="GPU 2 is not visible"):
        pinned_env(2)


def cells_and_store(tmp_path: Path, device: str = "auto") -> tuple[list[Cell], RunStore]:
    text = PLAN.format(device=device)
    loaded = parse_plan(text, "plan.yaml", tmp_path)
    store = RunStore.create(tmp_path / "reports", "lanes", text, {"cell_ids": [c.cell_id for c in loaded.cells]})
    return loaded.cells, store


def test_pin_cell_rewrites_the_device_and_records_the_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    cells, _ = cells_and_store(tmp_path, device="cuda:1")
    cell = next(c for c in cells if c.device == "cuda:1")
    pinned, env, placement = pin_cell(cell, 3)
    assert pinned.device == "cuda:0" and pinned.cell_id == cell.cell_id
    assert env == {"CUDA_VISIBLE_DEVICES": "3"}
    assert placement["gpu"] == 3 and placement["backend"] == "local-gpus" and placement["device_asked"] == "cuda:1"
    assert placement["host"]


# -- the lanes -------------------------------------------------------------------------------


class FakeRunner:
    """Stands in for a worker process: sleeps, remembers where and when each cell ran."""

    def __init__(self, seconds: float = 0.25, fail: str | None = None):
        self.seconds = seconds
        self.fail = fail
        self.lock = threading.Lock()
        self.runs: list[dict[str, Any]] = []

    def __call__(self, unit: WorkUnit, store: RunStore, on_phase: Any, env: dict[str, str]) -> dict[str, Any]:
        cell = unit.cell
        start = time.monotonic()
        if on_phase:
            on_phase("measure")
        if cell.cell_id == self.fail:
            raise RuntimeError("boom")
        time.sleep(self.seconds)
        with self.lock:
            self.runs.append({"cell": cell, "env": dict(env), "start": start, "end": time.monotonic()})
        return new_record(
            cell, "ok", utc_now(),
            environment={"gpus": [{"name": "NVIDIA H100 80GB HBM3", "uuid": f"GPU-{env.get('CUDA_VISIBLE_DEVICES')}"}]}
            if env else {},
        ).model_dump(mode="json")


def overlaps(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_gpu_cells_spread_over_the_gpus_never_two_on_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cells, store = cells_and_store(tmp_path)
    gpu_cells = [c for c in cells if c.device == "auto"]
    cpu_cells = [c for c in cells if c.device == "cpu"]
    assert len(gpu_cells) == 4 and len(cpu_cells) == 4
    runner = FakeRunner(seconds=0.3)
    done: list[dict[str, Any]] = []
    phases: list[tuple[str, str]] = []
    callers: set[str] = set()

    def on_done(record: dict[str, Any]) -> None:
        callers.add(threading.current_thread().name)
        assert store.cell_path(record["cell_id"]).is_file()  # written before the callback
        done.append(record)

    run_cells_on_gpus(cells, store, [0, 2, 3], on_done, lambda c, p: phases.append((c, p)), runner=runner)

    assert callers == {threading.main_thread().name}
    assert sorted(r["cell_id"] for r in done) == sorted(c.cell_id for c in cells)
    assert store.finished_cell_ids() == {c.cell_id for c in cells}
    gpu_runs = [r for r in runner.runs if r["env"]]
    cpu_runs = [r for r in runner.runs if not r["env"]]
    assert len(gpu_runs) == 4 and len(cpu_runs) == 4
    # pinned: one GPU visible, device cuda:0, the physical index in the placement
    for run in gpu_runs:
        assert run["cell"].device == "cuda:0"
        assert run["env"]["CUDA_VISIBLE_DEVICES"] in {"0", "2", "3"}
    for record in done:
        placement = record["placement"]
        if record["cell"]["device"] == "cpu":
            assert placement["gpu"] is None
        else:
            assert str(placement["gpu"]) == record["environment"]["gpus"][0]["uuid"].removeprefix("GPU-")
            assert placement["gpu_name"] == "NVIDIA H100 80GB HBM3"
            assert placement["device_asked"] == "auto"
    # never two measurements on one GPU at once, and every GPU used
    for a in gpu_runs:
        for b in gpu_runs:
            if a is not b and a["env"] == b["env"]:
                assert not overlaps(a, b)
    assert {r["env"]["CUDA_VISIBLE_DEVICES"] for r in gpu_runs} == {"0", "2", "3"}
    assert any(overlaps(a, b) for a in gpu_runs for b in gpu_runs if a is not b)  # parallel
    # CPU cells: after the GPU cells, alone, one at a time
    last_gpu_end = max(r["end"] for r in gpu_runs)
    assert all(r["start"] >= last_gpu_end for r in cpu_runs)
    assert not any(overlaps(a, b) for a in cpu_runs for b in cpu_runs if a is not b)
    assert ("nano__torch__fp32__b1__r128__model", "starting") in phases
    assert ("nano__torch__fp32__b1__r128__model", "measure") in phases


def test_cpu_alongside_runs_one_cpu_cell_beside_the_gpus(tmp_path: Path) -> None:
    cells, store = cells_and_store(tmp_path)
    runner = FakeRunner(seconds=0.3)
    run_cells_on_gpus(cells, store, [0, 1], lambda r: None, runner=runner, cpu_alongside=True)
    gpu_runs = [r for r in runner.runs if r["env"]]
    cpu_runs = [r for r in runner.runs if not r["env"]]
    assert any(overlaps(c, g) for c in cpu_runs for g in gpu_runs)
    assert not any(overlaps(a, b) for a in cpu_runs for b in cpu_runs if a is not b)
    for a in gpu_runs:
        for b in gpu_runs:
            if a is not b and a["env"] == b["env"]:
                assert not overlaps(a, b)


def test_finished_cells_are_skipped_and_a_harness_error_fails_only_its_cell(tmp_path: Path) -> None:
    cells, store = cells_and_store(tmp_path)
    first = cells[0]
    store.write_cell(
        new_record(first, "ok", utc_now()).model_dump(mode="json")
    )
    victim = cells[1].cell_id
    runner = FakeRunner(seconds=0.05, fail=victim)
    done: list[dict[str, Any]] = []
    run_cells_on_gpus(cells, store, [0, 1], done.append, runner=runner)
    assert first.cell_id not in {r["cell"].cell_id for r in runner.runs}
    assert len(done) == len(cells) - 1
    failed = {r["cell_id"]: r for r in done if r["status"] == "failed"}
    assert list(failed) == [victim]
    assert "RuntimeError: boom" in failed[victim]["reason"]
    assert store.finished_cell_ids() == {c.cell_id for c in cells}


def test_no_gpus_is_refused(tmp_path: Path) -> None:
    cells, store = cells_and_store(tmp_path)
    with pytest.raises(UserError, match="no GPU given"):
        run_cells_on_gpus(cells, store, [], lambda r: None, runner=FakeRunner())
    with pytest.raises(UserError, match="given twice"):
        run_cells_on_gpus(cells, store, [1, 1], lambda r: None, runner=FakeRunner())


def test_default_runner_passes_the_pinning_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.run import process

    seen: list[dict[str, Any]] = []

    def fake_run_unit_process(unit: WorkUnit, store: RunStore, on_phase: Any = None, **kwargs: Any) -> dict[str, Any]:
        seen.append(kwargs)
        return {}

    monkeypatch.setattr(process, "run_unit_process", fake_run_unit_process)
    cells, store = cells_and_store(tmp_path)
    parallel.default_runner(WorkUnit(cell=cells[0]), store, None, {"CUDA_VISIBLE_DEVICES": "3"})
    parallel.default_runner(WorkUnit(cell=cells[0]), store, None, {})
    assert seen == [{"env": {"CUDA_VISIBLE_DEVICES": "3"}}, {}]


def test_interrupt_kills_the_running_workers_and_keeps_finished_cells(tmp_path: Path) -> None:
    cells, store = cells_and_store(tmp_path)
    gpu_cells = [c for c in cells if c.device == "auto"]
    quick, slow = gpu_cells[0], gpu_cells[1]
    children: list[subprocess.Popen[bytes]] = []

    def runner(unit: WorkUnit, store: RunStore, on_phase: Any, env: dict[str, str]) -> dict[str, Any]:
        cell = unit.cell
        if cell.cell_id != quick.cell_id:
            # looks like a worker to _stop_workers: `harness.run.worker <run_dir>` in its argv
            proc = subprocess.Popen(
                [sys.executable, "-c", "import time; time.sleep(120)", "harness.run.worker", str(store.run_dir)],
                start_new_session=True,
            )
            children.append(proc)
            proc.wait()
        else:
            time.sleep(0.5)  # the slow cell's worker is up by now
        return new_record(cell, "ok", utc_now()).model_dump(mode="json")

    def on_done(record: dict[str, Any]) -> None:
        raise KeyboardInterrupt  # Ctrl-C while the slow cell measures

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_cells_on_gpus([quick, slow], store, [0, 1], on_done, runner=runner)
    assert time.monotonic() - started < 30
    assert store.finished_cell_ids() == {quick.cell_id}  # the finished cell is kept...
    assert len(children) == 1
    assert children[0].poll() is not None  # ...the running worker was killed, no record for it
    assert children[0].returncode == -9
    assert not os.path.exists(store.cell_path(slow.cell_id))
