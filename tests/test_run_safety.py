"""The run folder under stress: ids that collide, links planted in it, cell files that cannot be
read, environmental failures, two processes at once, a finished run resumed, a full disk, a
closed pipe, output that is not a terminal. Real `bench` processes where it matters; the cells
that run fail at once (their checkpoint does not exist), so no model is built."""

from __future__ import annotations

import errno
import io
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.plan.load import parse_plan
from harness.run.execute import print_summary, start_run
from harness.run.launch import InProcessLauncher, WorkUnit
from harness.run.record import new_record
from harness.run.scheduler import run_units
from harness.run.store import RunStore, utc_now

PLAN = """
name: safety
device: cpu
models:
{models}
runtimes: [torch]
precisions: [fp32]
scopes: [model]
protocol: {{warmup_iterations: 1, warmup_seconds: 0, min_iterations: 3, min_seconds: 0, max_seconds: 30}}
"""
MODEL = "  - {{name: '{name}', variant: nano, weights: missing.pth, resolutions: [{res}]}}"


def plan_text(*models: tuple[str, int]) -> str:
    return PLAN.format(models="\n".join(MODEL.format(name=name, res=res) for name, res in models))


def write_plan(folder: Path, *models: tuple[str, int]) -> Path:
    path = folder / "plan.yaml"
    path.write_text(plan_text(*models))
    # A file that passes `bench validate`'s look at a checkpoint (a zip archive's signature) but
    # that rfdetr cannot load: the cell fails by its own input, at run time.
    (folder / "missing.pth").write_bytes(b"PK\x03\x04 not an RF-DETR checkpoint")
    return path


def bench(*args: str, cwd: Path, timeout: int = 300, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def new_run(tmp_path: Path, *models: tuple[str, int]) -> tuple[RunStore, Any]:
    """A run folder made as `bench PLAN` makes it, with nothing run yet (and unlocked)."""
    path = write_plan(tmp_path, *models)
    loaded = parse_plan(path.read_text(), str(path), tmp_path, path)
    store = start_run(loaded, tmp_path / "reports")
    store.release_lock()
    return store, loaded


def a_record(cell: Any, status: str = "ok", **fields: Any) -> dict[str, Any]:
    return new_record(cell, status, utc_now(), **fields).model_dump(mode="json")  # type: ignore[arg-type]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>", p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


# -- cell ids that collide ---------------------------------------------------------------------


def test_cells_that_share_an_id_are_refused_before_anything_runs(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, ("det a", 96), ("det/a", 96))
    done = bench(str(plan), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "`det a`" in done.stderr and "`det/a`" in done.stderr
    assert not (tmp_path / "reports").exists()  # nothing ran, no folder left behind


def test_resuming_a_folder_whose_cells_share_an_id_names_them(tmp_path: Path) -> None:
    text = plan_text(("det a", 96), ("det/a", 96))
    write_plan(tmp_path, ("det a", 96))
    first = parse_plan(plan_text(("det a", 96)), "plan.yaml", tmp_path).cells[0]
    # a folder made before ids were checked: both cells planned (one id), one record
    store = RunStore.create(tmp_path / "reports", "safety", text,
                            {"cell_ids": [first.cell_id, first.cell_id], "plan_dir": str(tmp_path)})
    store.write_cell(a_record(first, "failed", reason="weights missing"))
    store.release_lock()
    done = bench("run", "--resume", str(store.run_dir), cwd=tmp_path)
    assert done.returncode == 2, done.stderr  # never "1/2 done", exit 0, with a cell silently gone
    assert "Traceback" not in done.stderr
    assert "det a" in done.stderr and "det/a" in done.stderr


def test_two_records_for_one_id_never_crash_and_neither_is_lost(tmp_path: Path) -> None:
    store, loaded = new_run(tmp_path, ("a", 96))
    cell = loaded.cells[0]
    twice = [WorkUnit(cell=cell), WorkUnit(cell=cell)]
    calls = iter(["first", "second"])
    launcher = InProcessLauncher(lambda unit, store, on_phase: a_record(unit.cell, reason=next(calls)))
    outcome = run_units(launcher, twice, store)  # no FileExistsError
    assert json.loads(store.cell_path(cell.cell_id).read_text())["reason"] == "first"
    (kept,) = outcome.conflicts
    assert json.loads(kept.path.read_text())["reason"] == "second"


# -- links planted in the run folder -----------------------------------------------------------


@pytest.mark.slow
def test_links_planted_in_the_run_folder_are_never_written_through(tmp_path: Path) -> None:
    store, loaded = new_run(tmp_path, ("a", 96), ("b", 128))
    a, b = (c.cell_id for c in loaded.cells)
    outside = {name: tmp_path / f"outside-{name}.txt" for name in ("phase", "cell", "result", "log")}
    for path in outside.values():
        path.write_text("precious\n")
    logs = store.run_dir / "logs"
    (logs / f"{a}.phase").symlink_to(outside["phase"])
    (logs / f".{a}.cell.json").symlink_to(outside["cell"])
    (store.run_dir / "cells" / f".{a}.result.json").symlink_to(outside["result"])
    (logs / f"{b}.log").symlink_to(outside["log"])
    done = bench("run", "--resume", str(store.run_dir), cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # both cells fail: their checkpoint does not exist
    assert "Traceback" not in done.stderr
    for path in outside.values():
        assert path.read_text() == "precious\n", path
    records = {r["cell_id"]: r for r in store.read_cells()}
    assert "missing.pth" in records[a]["reason"]  # the links were replaced, the cell ran
    assert not (logs / f"{a}.phase").is_symlink()
    assert "refusing to append" in records[b]["reason"] and "symbolic link" in records[b]["reason"]
    assert records[b]["failure_kind"] == "environmental"
    assert (logs / f"{b}.log").is_symlink()  # left for the user to look at


# -- cell files that cannot be read ------------------------------------------------------------


@pytest.mark.slow
def test_resume_moves_unreadable_cell_files_aside_and_measures_them_again(tmp_path: Path) -> None:
    store, loaded = new_run(tmp_path, ("a", 96), ("b", 128), ("c", 160))
    a, b, c = (cell.cell_id for cell in loaded.cells)
    bad = {a: b"", b: json.dumps(a_record(loaded.cells[1]))[:50].encode(), c: b"\x00garbage\xff"}
    for cell_id, data in bad.items():
        store.cell_path(cell_id).write_bytes(data)
    done = bench("run", "--resume", str(store.run_dir), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.count("cannot be read") == 3 and "cells/.bad/" in done.stderr
    kept = {p.name.split(".json.")[0]: p.read_bytes() for p in (store.cells_dir / ".bad").iterdir()}
    assert kept == bad  # moved aside as they were, never deleted
    records = {r["cell_id"]: r for r in store.read_cells()}
    assert set(records) == {a, b, c} and all("missing.pth" in r["reason"] for r in records.values())
    history = [json.loads(line) for line in (store.run_dir / "history.jsonl").read_text().splitlines()]
    assert [h["event"] for h in history] == ["unreadable_cell_file_moved_aside"] * 3


# -- environmental failures --------------------------------------------------------------------


@pytest.mark.slow
def test_resume_retries_environmental_failures_and_keeps_the_earlier_record(tmp_path: Path) -> None:
    store, loaded = new_run(tmp_path, ("a", 96), ("b", 128))
    env_cell, own_cell = loaded.cells
    store.write_cell(a_record(env_cell, "failed", reason="timed out after 1 s (cell_timeout_s); the worker was killed",
                              failure_kind="environmental"))
    store.write_cell(a_record(own_cell, "failed", reason="RuntimeError: the cell's own bug", failure_kind="cell"))
    earlier = store.cell_path(env_cell.cell_id).read_bytes()
    own = store.cell_path(own_cell.cell_id).read_bytes()
    done = bench("run", "--resume", str(store.run_dir), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "measuring it again" in done.stderr and env_cell.cell_id in done.stderr
    retried = json.loads(store.cell_path(env_cell.cell_id).read_text())
    assert "missing.pth" in retried["reason"] and retried["failure_kind"] == "cell"  # measured again
    assert store.cell_path(own_cell.cell_id).read_bytes() == own  # its own failure stands
    (aside,) = (store.cells_dir / ".retried").iterdir()
    assert aside.read_bytes() == earlier


def test_the_failure_kind_of_a_worker_that_died() -> None:
    from harness.run.process import describe_exit
    from harness.run.worker import failure_kind

    assert describe_exit(-9)[1] == "environmental"  # SIGKILL: the OOM killer, or someone's kill
    assert describe_exit(-15)[1] == "environmental"
    assert describe_exit(-11)[1] == "cell"  # a segfault in the cell's own native code
    assert describe_exit(-6)[1] == "cell"
    assert describe_exit(1)[1] == "environmental"  # it could not even write its record
    assert failure_kind(OSError(errno.ENOSPC, "No space left on device")) == "environmental"
    assert failure_kind(RuntimeError("bug")) == "cell"


# -- a full disk -------------------------------------------------------------------------------


def full(*args: Any, **kwargs: Any) -> Any:
    raise OSError(errno.ENOSPC, "No space left on device", "cells/x.json")


def test_a_full_disk_while_writing_a_cell_is_a_clean_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    from harness.run.execute import execute

    store, loaded = new_run(tmp_path, ("a", 96))
    monkeypatch.setattr(RunStore, "write_cell", full)
    out = io.StringIO()
    launcher = InProcessLauncher(lambda unit, store, on_phase: a_record(unit.cell))
    code = execute(store, loaded, console=Console(file=out, width=100), launcher=launcher)
    assert code == 1
    assert "no space left on the device" in out.getvalue() and "--resume" in out.getvalue()
    assert store.lock is None  # the folder is free again


def test_a_full_disk_while_writing_results_is_a_clean_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from harness.cli import main

    store, loaded = new_run(tmp_path, ("a", 96))
    store.write_cell(a_record(loaded.cells[0]))
    monkeypatch.setattr(RunStore, "write_results", full)
    assert main(["run", "--resume", str(store.run_dir)]) == 1
    err = capsys.readouterr().err
    assert "no space left on the device (writing cells/x.json)" in err and "Traceback" not in err


# -- two processes at once ---------------------------------------------------------------------


def test_a_second_process_on_a_busy_folder_exits_2_naming_the_holder(tmp_path: Path) -> None:
    store, _ = new_run(tmp_path, ("a", 96))
    store.acquire_lock()  # this test process works in the folder now
    done = bench("run", "--resume", str(store.run_dir), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"pid {os.getpid()}" in done.stderr and socket.gethostname() in done.stderr
    assert "since 20" in done.stderr and "pytest" in done.stderr  # the holder's command
    assert not list(store.cells_dir.glob("*.json"))  # it measured nothing
    store.release_lock()


# -- a finished run, and output that is not a terminal ----------------------------------------


@pytest.mark.slow
def test_a_finished_run_is_left_byte_identical_and_piped_output_has_a_line_per_cell(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, ("a", 96))
    first = bench(str(plan), cwd=tmp_path)
    assert first.returncode == 1, first.stderr  # its one cell failed
    (run_dir,) = (tmp_path / "reports" / "safety").iterdir()
    cell_id = "a__torch__fp32__b1__r96__model"
    lines = first.stderr.splitlines()
    assert any(line.startswith("start") and cell_id in line for line in lines), first.stderr
    assert any(line.startswith("failed") and cell_id in line for line in lines), first.stderr
    before = snapshot(run_dir)
    again = bench("run", "--resume", str(run_dir), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stderr
    assert snapshot(run_dir) == before


def test_the_summary_fits_100_columns_without_breaking_a_word() -> None:
    from rich.console import Console

    names = [("rfdetr-seg-2xlarge", "onnxruntime-tensorrt", "accuracy_regression"),
             ("my detector (COCO fine-tune)", "rfdetr-optimized FP16+JIT", "throttled"),
             ("rfdetr-medium", "ONNX Runtime CUDA", "ok")]
    from record_factory import accuracy, record

    from harness.results import ResultsFile

    cells = []
    for i, (model, runtime, status) in enumerate(names * 4):
        stats = {"count": 3, "mean": 1.0, "std": 0.0, "min": 1.0, "max": 1.0, "p50": 12345.678, "p90": 1.0,
                 "p95": 1.0, "p99": 99999.99, "cov": 0.0, "median_ci95": [1.0, 1.0], "median_ci_rel_width": 0.0}
        latency = {"scope": "end_to_end", "timer": "perf_counter", "timed_region": "x", "samples_ms": [1.0],
                   "stats": stats, "warmup_iterations": 0, "warmup_s": 0.0, "measure_s": 1.0,
                   "stop_reason": "max_iterations", "batch": 128, "throughput_ips": 123456.7}
        cells.append(record(
            f"c{i}", status=status, reason="why " * 40, latency=latency, accuracy=accuracy(0.5345),
            identity_fields={"model": model, "runtime": "x", "runtime_label": runtime, "precision": "fp16",
                             "batch": 128, "resolution": 1280, "scope": "end_to_end"},
        ))
    results = ResultsFile.model_validate({
        "run": {"run_id": "r", "plan_name": "p", "started_at": "2026-01-01T00:00:00Z", "harness_version": "0"},
        "cells": [c.model_dump(mode="json") for c in cells],
    })
    out = io.StringIO()
    print_summary(results, Console(file=out, width=100, color_system=None), None)
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 100
    words = set(text.split())
    for model, runtime, _ in names:
        for word in (*model.split(), *runtime.split()):
            assert word in words, word  # never folded inside a word
    assert "regression" in words and "12346" in words and "0.534" in words


# -- a closed pipe -----------------------------------------------------------------------------


@pytest.mark.parametrize("unbuffered", ["", "1"])
@pytest.mark.parametrize("args", [["env", "--json"], ["validate", "{plan}"], ["--help"]])
def test_a_closed_pipe_is_no_traceback(tmp_path: Path, args: list[str], unbuffered: str) -> None:
    plan = write_plan(tmp_path, ("a", 96))
    read, write = os.pipe()
    os.close(read)  # the reader is gone before anything is written: `bench ... | head -0`
    try:
        done = subprocess.run([sys.executable, "-m", "harness", *(a.format(plan=plan) for a in args)],
                              cwd=tmp_path, stdout=write, stderr=subprocess.PIPE, text=True, timeout=120,
                              env={**os.environ, "PYTHONUNBUFFERED": unbuffered})
    finally:
        os.close(write)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr, done.stderr
    # 141 for every command, --help included, buffered or not (PYTHONUNBUFFERED, as in the image).
    assert done.returncode == 141


def test_the_in_process_launcher_runs_the_worker_steps_here(tmp_path: Path) -> None:
    store, loaded = new_run(tmp_path, ("a", 96))
    cell = loaded.cells[0]
    phases: list[str] = []
    outcome = run_units(InProcessLauncher(), [WorkUnit(cell=cell)], store, on_phase=lambda unit, name: phases.append(name))
    record = outcome.records[cell.cell_id]
    assert record["status"] == "failed" and "missing.pth" in record["reason"] and record["failure_kind"] == "cell"
    assert phases[:2] == ["check", "prepare"]
    assert json.loads(store.cell_path(cell.cell_id).read_text()) == record
    assert store.log_path(cell.cell_id).is_file()


def test_a_planned_cell_the_plan_no_longer_expands_to_is_reported_missing(tmp_path: Path) -> None:
    from rich.console import Console

    from harness.run.execute import execute

    text = write_plan(tmp_path, ("a", 96)).read_text()
    loaded = parse_plan(text, "plan.yaml", tmp_path)
    planned = [loaded.cells[0].cell_id, "ghost__torch__fp32__b1__r96__model"]  # run.json of an older harness
    store = RunStore.create(tmp_path / "reports", "safety", text, {"cell_ids": planned, "plan_dir": str(tmp_path)})
    out = io.StringIO()
    launcher = InProcessLauncher(lambda unit, store, on_phase: a_record(unit.cell))
    code = execute(store, loaded, console=Console(file=out, width=100), launcher=launcher)
    assert code == 1  # its one cell is ok, but a planned cell is gone: never a silent exit 0
    assert "1 planned cell(s) have no record" in out.getvalue() and "ghost__torch" in out.getvalue()
