"""Ray: the pieces without a cluster (fast), and a REAL local Ray cluster on this machine (slow):
a tiny RF-DETR Nano plan run through it with Ray workers SIGKILLed mid-cell, compared with a
local run of the same plan; cells asking for GPUs the cluster lacks fail with the reason."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness.errors import UserError
from harness.plan.load import parse_plan
from harness.run import ray_backend
from harness.run.ray_backend import (
    fleet_cell_ids,
    normalise_accelerator_types,
    plan_accelerator_types,
    plan_ray_options,
)
from harness.run.record import new_record
from harness.run.store import RunStore, utc_now

REPO = Path(__file__).resolve().parents[1]

PLAN = """
name: fleet
device: {device}
models:
  - name: nano
    variant: nano
    weights: random
    resolutions: [{resolutions}]
runtimes: [torch]
precisions: [fp32]
scopes: [model]
protocol: {{warmup_iterations: 1, warmup_seconds: 0, min_iterations: 3, min_seconds: 0, max_iterations: 3, max_seconds: 60,
           repeats: 1}}
cell_timeout_s: 300
"""


def write_plan(folder: Path, device: str = "cpu", resolutions: str = "96, 128, 160") -> Path:
    path = folder / "plan.yaml"
    path.write_text(PLAN.format(device=device, resolutions=resolutions))
    return path


def load(folder: Path, device: str = "cpu", resolutions: str = "96, 128, 160") -> Any:
    path = write_plan(folder, device, resolutions)
    return parse_plan(path.read_text(), str(path), folder, path)


# -- without a cluster -----------------------------------------------------------------------


def test_accelerator_types_from_a_list_a_mapping_or_the_plan() -> None:
    assert normalise_accelerator_types(["T4", "L4", "A100-80G"]) == {"t4": "T4", "l4": "L4", "a100-80g": "A100-80G"}
    assert normalise_accelerator_types({"H100 SXM": "H100"}) == {"h100-sxm": "H100"}
    assert normalise_accelerator_types(None) == {}
    with pytest.raises(UserError, match="`t4` is given twice"):
        normalise_accelerator_types(["T4", "t4"])
    plan = SimpleNamespace(fleet=SimpleNamespace(gpu_types=["T4", "H100"]))
    assert plan_accelerator_types(plan) == {"t4": "T4", "h100": "H100"}
    assert plan_accelerator_types(SimpleNamespace()) == {}  # a schema without `fleet`
    assert plan_accelerator_types(SimpleNamespace(fleet={"gpu_types": ["L4"]})) == {"l4": "L4"}
    assert plan_ray_options(SimpleNamespace()) == {"accelerator_types": {}, "max_retries": 1, "wait_for_resources_s": 0.0}
    fleet = SimpleNamespace(gpu_types=["T4"], max_retries=3, wait_for_resources_s=600)
    assert plan_ray_options(SimpleNamespace(fleet=fleet)) == {
        "accelerator_types": {"t4": "T4"}, "max_retries": 3, "wait_for_resources_s": 600.0,
    }


def test_fleet_cell_ids_qualify_gpu_cells_per_type(tmp_path: Path) -> None:
    text = PLAN.format(device="auto", resolutions="128") .replace("runtimes: [torch]", "runtimes: [torch, onnxruntime-cpu]")
    loaded = parse_plan(text, "plan.yaml", tmp_path)
    ids = fleet_cell_ids(loaded.cells, ["T4", "L4"])
    assert ids == [
        "nano__torch__fp32__b1__r128__model@t4",
        "nano__torch__fp32__b1__r128__model@l4",
        "nano__onnxruntime-cpu__fp32__b1__r128__model",  # CPU cells run once
    ]
    assert fleet_cell_ids(loaded.cells, None) == [c.cell_id for c in loaded.cells]


def test_localize_moves_artifacts_to_the_node_when_the_plan_folder_is_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ray_backend.WORKDIR_ENV, str(tmp_path / "node"))
    monkeypatch.chdir(tmp_path)  # the artifact cache resolves against the submitter's folder
    text = PLAN.format(device="cpu", resolutions="128") + "dataset: {images: imgs, annotations: ann/instances.json}\n"
    elsewhere = Path("/nonexistent/project")
    cell = parse_plan(text, "plan.yaml", elsewhere, check_paths=False).cells[0]  # the data is on the nodes
    localized, local = ray_backend._localize(cell)
    assert local is not None and Path(local).is_dir() and str(tmp_path / "node") in local
    assert localized.plan_dir == local
    assert localized.artifacts_dir == str(Path(local) / "artifacts")
    assert localized.dataset is not None
    assert localized.dataset.images == "/nonexistent/project/imgs"  # where a shared volume mounts it
    assert localized.dataset.annotations == "/nonexistent/project/ann/instances.json"
    here = parse_plan(text, "plan.yaml", tmp_path, check_paths=False).cells[0]
    assert ray_backend._localize(here) == (here, None)  # the plan folder exists: nothing moves


def make_store(tmp_path: Path) -> RunStore:
    return RunStore.create(tmp_path / "reports", "fleet", "name: fleet\n", {"cell_ids": []})


def test_collect_and_store_files_round_trip(tmp_path: Path) -> None:
    work = tmp_path / "work"
    for sub in ray_backend.RUN_SUBDIRS:
        (work / sub).mkdir(parents=True)
    (work / "logs" / "c1.log").write_text("worker output\n")
    (work / "logs" / "c1.phase").write_text("measure 1.0\n")
    (work / "logs" / ".c1.cell.json").write_text("{}")
    (work / "cells" / ".c1.result.json").write_text("{}")
    (work / "detections" / "c1.json").write_text("[]")
    (work / "outputs" / "c1.npz").write_bytes(b"npz")
    (work / "run.json").write_text("{}")  # the node's own, for the worker: the driver has one
    files = ray_backend._collect_files(work)
    assert sorted(files) == ["detections/c1.json", "logs/c1.log", "outputs/c1.npz"]

    store = make_store(tmp_path)
    store.log_path("c1").write_text("--- an earlier attempt of a resumed run\n")
    (store.run_dir / "detections" / "c1.json").write_text("stale, from a crash")
    cell = load(tmp_path).cells[0].model_copy(update={"cell_id": "c1"})
    record = new_record(cell, "ok", utc_now(),
                        environment={"gpus": [{"name": "NVIDIA L4", "uuid": "GPU-1"}]}).model_dump(mode="json")
    files["../escape.txt"] = b"never written"
    out = ray_backend._store_result(store, {"record": record, "files": files, "placement": {"backend": "ray", "host": "n1"}})
    assert out["placement"] == {"backend": "ray", "host": "n1", "gpu_name": "NVIDIA L4", "gpu_uuid": "GPU-1"}
    assert store.log_path("c1").read_text() == "--- an earlier attempt of a resumed run\nworker output\n"
    assert (store.run_dir / "detections" / "c1.json").read_text() == "[]"
    assert (store.run_dir / "outputs" / "c1.npz").read_bytes() == b"npz"
    assert not (tmp_path / "reports" / "fleet" / "escape.txt").exists()
    assert not list(store.cells_dir.glob("*.json"))  # the caller writes the record


def test_ray_is_optional_a_plan_without_ray_never_imports_it(tmp_path: Path) -> None:
    plan = write_plan(tmp_path)
    code = f"""
import sys
from harness.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
assert main(["validate", {str(plan)!r}]) == 0
import harness.run.execute, harness.run.parallel, harness.run.merge, harness.run.ray_backend
assert "ray" not in sys.modules, "ray was imported"
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("ok")


# -- a real Ray cluster on this machine ------------------------------------------------------

HOLDER = """
import json, sys, ray
ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, _temp_dir=sys.argv[1])
print(json.dumps({"address": ray.get_runtime_context().gcs_address}), flush=True)
sys.stdin.read()  # lives until the test closes our stdin
ray.shutdown()
"""


def _reset_ray_auth_cache() -> None:
    """Ray caches the auth mode and token on first use; make it read the environment again."""
    try:
        from ray._private.authentication_test_utils import reset_auth_token_state
    except ImportError:  # an older Ray without token auth
        return
    reset_auth_token_state()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A 2-CPU Ray cluster started by a holder process; its address. Private auth token, own
    temp folder; stopped by closing the holder's stdin, else by killing it and its children."""
    import psutil

    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32), "RAY_USAGE_STATS_ENABLED": "0"}
    saved = {k: os.environ.get(k) for k in auth}
    os.environ.update(auth)  # the driver (this process) needs the cluster's private token...
    pytest.importorskip("ray")
    _reset_ray_auth_cache()  # ...even when ray was imported earlier in this session
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # Ray's socket paths must stay short
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),  # the cluster's workers import the harness
        ray_backend.WORKDIR_ENV: str(Path(temp) / "work"),  # cells' node-local folders
    }
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, temp], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line, "the Ray cluster did not start"
        yield json.loads(line)["address"]
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reset_ray_auth_cache()
        family = []
        try:
            family = psutil.Process(holder.pid).children(recursive=True)
        except psutil.Error:
            pass
        if holder.stdin:
            holder.stdin.close()
        try:
            holder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
        for proc in family:  # whatever Ray left behind, by the ids it had
            try:
                proc.kill()
            except psutil.Error:
                pass
        shutil.rmtree(temp, ignore_errors=True)


class Killer(threading.Thread):
    """Kills the Ray worker process running a cell (the parent of that cell's harness worker),
    `times[cell_id]` times, each once the cell's worker has reported a phase: mid-cell."""

    def __init__(self, times: dict[str, int]):
        super().__init__(daemon=True)
        self.times = times
        self.killed: dict[str, list[int]] = {cell_id: [] for cell_id in times}
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            for proc in psutil.process_iter(["pid", "ppid", "cmdline"]):
                cmdline = proc.info["cmdline"] or []
                if "harness.run.worker" not in cmdline:
                    continue
                i = cmdline.index("harness.run.worker")
                if len(cmdline) < i + 3 or "bench-ray" not in cmdline[i + 1]:
                    continue
                run_dir, cell_json = Path(cmdline[i + 1]), Path(cmdline[i + 2])
                cell_id = cell_json.name.removeprefix(".").removesuffix(".cell.json")
                ray_worker = proc.info["ppid"]
                done = self.killed.get(cell_id)
                if done is None or len(done) >= self.times[cell_id] or ray_worker in done:
                    continue
                if not (run_dir / "logs" / f"{cell_id}.phase").exists():
                    continue
                try:
                    assert psutil.Process(ray_worker).name().startswith("ray::")
                    os.kill(ray_worker, signal.SIGKILL)
                    done.append(ray_worker)
                except (psutil.Error, ProcessLookupError):
                    pass
            self.stop.wait(0.2)


def cells_of(run_dir: Path) -> dict[str, dict[str, Any]]:
    results = json.loads((run_dir / "results.json").read_text())
    return {r["cell_id"]: r for r in results["cells"]}


@pytest.mark.slow
def test_a_plan_through_ray_with_workers_killed_matches_a_local_run(tmp_path: Path, ray_cluster: str) -> None:
    from harness.run.execute import finalize, start_run
    from harness.run.merge import merge_runs
    from harness.run.ray_backend import run_cells_on_ray

    loaded = load(tmp_path)
    retried, lost, untouched = (c.cell_id for c in loaded.cells)
    # The same plan, locally, through the CLI (ray is never imported there); it runs meanwhile
    # to keep the test short on a small machine: these timings are not compared.
    code = "import sys; from harness.cli import main; rc = main(sys.argv[1:]); assert 'ray' not in sys.modules; sys.exit(rc)"
    local = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path / "plan.yaml"), "--output", str(tmp_path / "local-reports")],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    store = start_run(loaded, tmp_path / "ray-reports")
    killer = Killer({retried: 1, lost: 2})  # max_retries=1: one kill is survived, two are not
    killer.start()
    streamed: list[tuple[str, int]] = []

    def on_done(record: dict[str, Any]) -> None:  # each record is on disk when it is announced
        assert store.cell_path(record["cell_id"]).is_file()
        streamed.append((record["cell_id"], len(store.finished_cell_ids())))

    try:
        run_cells_on_ray(loaded.cells, store, ray_cluster, max_retries=1, on_done=on_done)
    except BaseException:
        local.kill()
        local.wait()
        raise
    finally:
        killer.stop.set()
        killer.join()
    assert len(killer.killed[retried]) == 1 and len(killer.killed[lost]) == 2

    # results came back one by one as cells ended, each written as it arrived
    assert sorted(cell_id for cell_id, _ in streamed) == sorted([retried, lost, untouched])
    assert [count for _, count in streamed] == [1, 2, 3]
    assert store.finished_cell_ids() == {retried, lost, untouched}
    finalize(store, loaded)
    via_ray = cells_of(store.run_dir)

    assert via_ray[lost]["status"] == "failed"
    assert "WorkerCrashedError" in via_ray[lost]["reason"] and "2 attempt(s)" in via_ray[lost]["reason"]
    assert via_ray[lost]["placement"]["backend"] == "ray"
    assert via_ray[retried]["placement"]["ray_worker_pid"] not in killer.killed[retried]  # a new worker
    for cell_id in (retried, untouched):
        record = via_ray[cell_id]
        assert record["placement"]["backend"] == "ray" and record["placement"]["host"]
        assert (store.run_dir / record["files"]["log"]).stat().st_size > 0  # the log came back

    _, local_err = local.communicate(timeout=600)
    assert local.returncode == 0, local_err[-3000:]
    (local_dir,) = (tmp_path / "local-reports" / "fleet").iterdir()
    locally = cells_of(local_dir)

    assert set(locally) == set(via_ray)
    for cell_id in (retried, untouched):
        assert locally[cell_id]["status"] in ("ok", "unstable")
        assert via_ray[cell_id]["status"] in ("ok", "unstable")
        assert via_ray[cell_id]["latency"]["stats"]["count"] == locally[cell_id]["latency"]["stats"]["count"] == 3
        assert via_ray[cell_id]["cell"]["resolution"] == locally[cell_id]["cell"]["resolution"]
        # same software, settings and thread counts: Ray's OMP_NUM_THREADS was not passed on
        assert via_ray[cell_id]["fingerprint"] == locally[cell_id]["fingerprint"]
        assert via_ray[cell_id]["environment"]["env_vars"] == locally[cell_id]["environment"]["env_vars"]
        # the plan's hash reaches a worker on a node, which has no copy of the run folder
        assert via_ray[cell_id]["environment"]["plan_sha256"] == locally[cell_id]["environment"]["plan_sha256"]
        assert via_ray[cell_id]["environment"]["plan_sha256"] == store.meta()["plan_sha256"]
    assert locally[lost]["status"] in ("ok", "unstable")

    # both ran on this machine's CPU: merging them is refused, naming the duplicates
    with pytest.raises(UserError, match="measured on the same GPU model") as info:
        merge_runs([local_dir, store.run_dir], tmp_path / "merged")
    assert retried in str(info.value) and "CPU " in str(info.value)


@pytest.mark.slow
def test_cells_asking_for_gpus_the_cluster_lacks_fail_with_the_reason(tmp_path: Path, ray_cluster: str) -> None:
    from harness.run.ray_backend import run_cells_on_ray

    loaded = load(tmp_path, device="cuda", resolutions="128")
    store = make_store(tmp_path)
    done: list[dict[str, Any]] = []
    started = time.monotonic()
    run_cells_on_ray(loaded.cells, store, ray_cluster, on_done=done.append, accelerator_types=["T4", "L4"])
    assert time.monotonic() - started < 60
    assert sorted(r["cell_id"] for r in done) == [
        "nano__torch__fp32__b1__r128__model@l4", "nano__torch__fp32__b1__r128__model@t4",
    ]
    for record in done:
        assert record["status"] == "failed"
        assert "has no GPU" in record["reason"] and "GPU type" in record["reason"]
        assert record["placement"]["accelerator_type"] in ("T4", "L4")
        assert record["cell"]["cell_id"] == record["cell_id"]
    assert store.finished_cell_ids() == {r["cell_id"] for r in done}
    assert {r["failure_kind"] for r in done} == {"environmental"}  # the cluster's lack, not the cell's
    # a resume submits them again (the cluster may have grown); the earlier records are kept aside
    again: list[dict[str, Any]] = []
    run_cells_on_ray(loaded.cells, store, ray_cluster, on_done=again.append, accelerator_types=["T4", "L4"])
    assert sorted(r["cell_id"] for r in again) == sorted(r["cell_id"] for r in done)
    assert len(list((store.cells_dir / ".retried").iterdir())) == 2
    described = ray_backend.describe_cluster(ray_cluster)
    assert [(n["cpus"], n["gpus"]) for n in described["nodes"]] == [(2.0, 0)]
