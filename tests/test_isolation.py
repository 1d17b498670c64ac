"""Each cell in its own process: crashes, hangs and kills are recorded, the run goes on, and an
interrupted run resumes without losing or repeating a finished cell. Real RF-DETR Nano, CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PLAN = """
name: iso
device: cpu
models:
  - name: nano
    variant: nano
    weights: random
    resolutions: [{res}]
runtimes: [torch]
precisions: [{precisions}]
scopes: [model]
protocol: {{warmup_iterations: 1, warmup_seconds: 0, min_iterations: 3, min_seconds: 0, max_seconds: 30}}
cell_timeout_s: {timeout}
"""


def write_plan(tmp_path: Path, res: str = "192", precisions: str = "fp32", timeout: int = 300) -> Path:
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN.format(res=res, precisions=precisions, timeout=timeout))
    return plan


def run_bench(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True,
        timeout=timeout, env={**os.environ, **(env or {})},
    )


def only_run_dir(tmp_path: Path) -> Path:
    runs = list((tmp_path / "reports" / "iso").iterdir())
    assert len(runs) == 1
    return runs[0]


def cell_records(run_dir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (run_dir / "cells").glob("*.json") if not p.name.startswith(".")}


@pytest.mark.parametrize(
    ("fault", "reason", "kind"),
    [
        ("segfault", "SIGSEGV", "cell"),
        ("abort", "SIGABRT", "cell"),
        ("oom", "out-of-memory", "environmental"),  # killed from outside: a resume measures it again
        ("raise", "RuntimeError: fault injected", "cell"),
        ("enospc", "No space left on device", "environmental"),
    ],
)
def test_a_crashing_cell_is_recorded_and_the_run_goes_on(tmp_path: Path, fault: str, reason: str, kind: str) -> None:
    plan = write_plan(tmp_path, res="160, 192")
    victim = "nano__torch__fp32__b1__r160__model"
    done = run_bench([str(plan)], tmp_path, env={"BENCH_FAULT_INJECT": f"{fault}@{victim}"})
    assert done.returncode == 1, done.stderr  # a failed cell makes the run exit 1...
    records = cell_records(only_run_dir(tmp_path))
    assert records[victim]["status"] == "failed"
    assert reason in records[victim]["reason"]
    assert records[victim]["failure_kind"] == kind
    assert records[victim]["log_tail"]  # the tail of its log comes with it
    survivor = records["nano__torch__fp32__b1__r192__model"]  # ...but the next cell still ran
    assert survivor["status"] in ("ok", "unstable")
    assert survivor["latency"]["stats"]["count"] >= 3
    assert "Traceback" not in done.stderr


def test_a_hanging_cell_times_out(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, timeout=25)
    victim = "nano__torch__fp32__b1__r192__model"
    started = time.monotonic()
    done = run_bench([str(plan)], tmp_path, env={"BENCH_FAULT_INJECT": f"hang@{victim}"})
    assert time.monotonic() - started < 120
    assert done.returncode == 1
    record = cell_records(only_run_dir(tmp_path))[victim]
    assert record["status"] == "failed" and "timed out after 25 s" in record["reason"]
    assert record["failure_kind"] == "environmental"


def test_sigkill_mid_cell_then_resume(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, res="128, 160, 192")
    # The second cell hangs, so the run is surely mid-cell when it is killed.
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", str(plan)], cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "BENCH_FAULT_INJECT": "hang@nano__torch__fp32__b1__r160__model"},
    )
    deadline = time.monotonic() + 300
    run_dir = None
    base = tmp_path / "reports" / "iso"
    while time.monotonic() < deadline and run_dir is None:
        runs = list(base.iterdir()) if base.exists() else []
        if runs and (runs[0] / "logs" / "nano__torch__fp32__b1__r160__model.phase").exists():
            run_dir = runs[0]
            time.sleep(8)  # well inside the second cell, which hangs after preparing
        time.sleep(0.5)
    assert run_dir is not None, "the run never reached its second cell"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = run_dir / "cells" / "nano__torch__fp32__b1__r128__model.json"
    assert first.is_file()
    first_bytes, first_mtime = first.read_bytes(), first.stat().st_mtime_ns
    assert not (run_dir / "cells" / "nano__torch__fp32__b1__r160__model.json").exists()
    time.sleep(1)
    # the orphaned worker died with its parent (no measurement goes on unattended)
    import psutil

    workers = []
    for process in psutil.process_iter(["cmdline"]):
        if f"harness.run.worker {run_dir}" in " ".join(process.info["cmdline"] or []):
            workers.append(process.pid)
    assert workers == []

    done = run_bench(["run", "--resume", str(run_dir)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "1 of 3 planned cell(s) finished, 2 to go" in done.stderr
    records = cell_records(run_dir)
    assert set(records) == {f"nano__torch__fp32__b1__r{r}__model" for r in (128, 160, 192)}
    assert first.read_bytes() == first_bytes and first.stat().st_mtime_ns == first_mtime  # not repeated
    results = json.loads((run_dir / "results.json").read_text())
    assert [c["cell_id"] for c in results["cells"]] == [f"nano__torch__fp32__b1__r{r}__model" for r in (128, 160, 192)]

    finished = {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    again = run_bench(["run", "--resume", str(run_dir)], tmp_path)
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == finished
