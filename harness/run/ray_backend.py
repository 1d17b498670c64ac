"""A plan across machines through Ray: each unit of work is a Ray task, records stream back as
tasks end (`RayLauncher`, a launcher of harness.run.launch).

    bench PLAN.yaml --ray ray://head:10001      (Ray Client, e.g. a KubeRay head service)
    bench PLAN.yaml --ray auto                  (on a node of a running cluster)

The harness grows no scheduler of its own: Ray places the tasks, retries those whose worker or
node died, and the autoscaler (KubeRay's) adds nodes. Each task runs the SAME worker as a local
run (`python -m harness.run.worker`, through process.run_unit_process) in a temporary run
folder on its node, and returns the record plus the cell's files (log, detections, raw
outputs) to the driver, which writes the files into the run folder as each task ends and hands
the record back (harness.run.scheduler writes it). So a lost
worker or node loses only the cell it was running: Ray retries it (`max_retries`), and when the
retries are spent the cell is recorded as failed with Ray's reason; nothing finished is lost.

What a task asks Ray for:
  - a GPU cell: num_gpus=1 (Ray then sets CUDA_VISIBLE_DEVICES to that one GPU, and the cell's
    device becomes cuda:0) and one CPU; with `accelerator_types`, the matching
    `accelerator_type` (ray.util.accelerators names: T4, L4, A10G, A100, H100...), and the cell
    runs once per type, its id qualified as `<cell_id>@<type slug>` (`fleet_units`: the
    expansion happens before the launcher, which only reads `unit.gpu_type`);
  - a CPU cell: by default every CPU of the largest node (`cpu_task_cpus=None`), so nothing else
    measures on that node meanwhile, the same rule as a local run's (see harness.run.parallel).

The Ray nodes need the harness and its dependencies importable (the bench image, or
`runtime_env={"py_modules": [...]}`); data the plan names by path must exist at that path on
the nodes (a shared volume). Generated sample datasets and exported artifacts are made on the
node, in the plan folder when it exists there, else in a node-local cache.

Ray stays optional: nothing here imports it at module level, and a run without `--ray`
never imports this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.files import UnsafePath, write_new
from harness.plan.cells import Cell
from harness.run.launch import Events, WorkUnit
from harness.run.placement import QUALIFIER, hardware_slug, host_name, qualify, with_placement
from harness.run.record import outcome_record
from harness.run.store import RUN_SUBDIRS, RunStore, dumps, utc_now

BACKEND = "ray"
# The most of a cell's log that comes back (the tail; rfdetr's export chatter can be long).
MAX_LOG_BYTES = 8 << 20
# Node-local working folders live under this (default: the system temp folder).
WORKDIR_ENV = "BENCH_RAY_WORKDIR"
# Thread-count variables Ray may set in its workers (see _ray_injected_env).
THREAD_ENV_VARS = ("OMP_NUM_THREADS",)


# -- what the plan asks for ------------------------------------------------------------------


def _fleet_value(plan: Any, name: str, default: Any) -> Any:
    """`plan.fleet.<name>` (a FleetSpec, or a mapping), `default` where absent or null."""
    fleet = getattr(plan, "fleet", None)
    value = fleet.get(name) if isinstance(fleet, Mapping) else getattr(fleet, name, None)
    return default if value is None else value


def plan_accelerator_types(plan: Any) -> dict[str, str]:
    """The GPU types a plan targets, {slug: Ray accelerator type}, from
    `fleet: {gpu_types: [T4, L4, H100]}`."""
    return normalise_accelerator_types(_fleet_value(plan, "gpu_types", None))


def plan_ray_options(plan: Any) -> dict[str, Any]:
    """run_cells_on_ray's keyword arguments from the plan's `fleet` block
    (gpu_types, max_retries, wait_for_resources_s), defaults where it is absent."""
    return {
        "accelerator_types": plan_accelerator_types(plan),
        "max_retries": int(_fleet_value(plan, "max_retries", 1)),
        "wait_for_resources_s": float(_fleet_value(plan, "wait_for_resources_s", 0.0)),
    }


def normalise_accelerator_types(types: Mapping[str, str] | Sequence[str] | None) -> dict[str, str]:
    """[T4, "A100-80G"] or {label: type} -> {slug: Ray accelerator type}."""
    if not types:
        return {}
    pairs = list(types.items()) if isinstance(types, Mapping) else [(t, t) for t in types]
    out: dict[str, str] = {}
    for label, accelerator in pairs:
        slug = hardware_slug(str(label))
        if slug in out:
            raise UserError(f"fleet.gpu_types: `{label}` is given twice")
        out[slug] = str(accelerator)
    return out


def fleet_units(cells: Sequence[Cell], accelerator_types: Mapping[str, str] | Sequence[str] | None) -> list[WorkUnit]:
    """The units a Ray run of `cells` runs, in order: with GPU types, every GPU cell once per
    type, its id qualified `<cell_id>@<type slug>`, the type in `unit.gpu_type`; each with its
    repeats, interleaved (scheduler.with_repeats)."""
    from harness.run.scheduler import with_repeats

    types = normalise_accelerator_types(accelerator_types)
    units: list[WorkUnit] = []
    for cell in cells:
        if types and _wants_gpu(cell, cluster_has_gpus=True):
            units += [
                WorkUnit(cell=cell.model_copy(update={"cell_id": qualify(cell.cell_id, slug)}), gpu_type=accelerator)
                for slug, accelerator in types.items()
            ]
        else:
            units.append(WorkUnit(cell=cell))
    return with_repeats(units)


def fleet_cell_ids(cells: list[Cell], accelerator_types: Mapping[str, str] | Sequence[str] | None) -> list[str]:
    """The record ids a Ray run of `cells` produces, in order (GPU cells once per type)."""
    return [unit.key for unit in fleet_units(cells, accelerator_types)]


def _wants_gpu(cell: Cell, *, cluster_has_gpus: bool) -> bool:
    if cell.device.startswith("cuda"):
        return True
    return cell.device == "auto" and cluster_has_gpus


# -- the task, on a Ray worker ---------------------------------------------------------------


def _node_base() -> Path:
    """This node's folder for Ray tasks ($BENCH_RAY_WORKDIR, else the system temp folder)."""
    return Path(os.environ.get(WORKDIR_ENV) or tempfile.gettempdir()) / "bench-ray"


def _node_workdir(run_id: str, cell_id: str) -> Path:
    return _node_base() / run_id / cell_id


def _localize(cell: Cell) -> tuple[Cell, str | None]:
    """The cell with paths that work on this node. When the plan's folder does not exist here,
    artifacts and generated datasets go to a node-local cache (one per plan folder, so cells of
    one plan share exports), and the dataset's relative paths become absolute against the
    original plan folder (where a shared volume would mount them)."""
    plan_dir = Path(cell.plan_dir)
    if plan_dir.is_dir():
        return cell, None
    digest = hashlib.sha256(str(plan_dir).encode()).hexdigest()[:12]
    local = _node_base() / "plans" / digest
    local.mkdir(parents=True, exist_ok=True)
    updates: dict[str, Any] = {"plan_dir": str(local)}
    artifacts = Path(cell.artifacts_dir).expanduser()
    if not artifacts.is_absolute():
        updates["artifacts_dir"] = str(local / artifacts)
    elif not artifacts.is_dir():
        # the submitter's cache folder (resolved on its machine) is not shared with this node
        updates["artifacts_dir"] = str(local / "artifacts")
    dataset = cell.dataset
    if dataset is not None and not dataset.sample:
        absolute = {
            name: str(cell.resolve_path(value))
            for name, value in (("images", dataset.images), ("annotations", dataset.annotations))
            if value
        }
        updates["dataset"] = dataset.model_copy(update=absolute)
    return cell.model_copy(update=updates), str(local)


def _collect_files(work: Path) -> dict[str, bytes]:
    """The files a worker left in its temporary run folder, by path relative to it."""
    files: dict[str, bytes] = {}
    for path in sorted(work.rglob("*")):
        if not path.is_file() or path.name.startswith(".") or path.suffix == ".phase":
            continue
        rel = path.relative_to(work).as_posix()
        if rel.startswith("cells/") or rel == "run.json":
            continue  # the record travels as data, and the driver writes it; run.json is its own
        if rel.startswith("logs/") and path.stat().st_size > MAX_LOG_BYTES:
            with path.open("rb") as handle:
                handle.seek(-MAX_LOG_BYTES, os.SEEK_END)
                files[rel] = b"[... log truncated to its last 8 MiB ...]\n" + handle.read()
            continue
        files[rel] = path.read_bytes()
    return files


def run_cell_on_node(
    unit_json: str, run_id: str, placement: dict[str, Any], plan_sha256: str | None = None
) -> dict[str, Any]:
    """The body of a Ray task: run one unit in a worker process on this node and return
    {"record", "files", "placement"}. Never raises for the cell's own failures. `plan_sha256`
    is the run's: the worker records it from its run folder's run.json, as in a local run."""
    import ray

    import harness
    from harness.run.process import run_unit_process

    unit = WorkUnit.model_validate_json(unit_json)
    context = ray.get_runtime_context()
    placement = {
        **placement,
        "host": host_name(),
        "node_id": context.get_node_id(),
        "ray_worker_pid": os.getpid(),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "harness_version": harness.__version__,
    }
    work = _node_workdir(run_id, unit.key)
    shutil.rmtree(work, ignore_errors=True)  # what a crashed earlier attempt here left
    for sub in RUN_SUBDIRS:
        (work / sub).mkdir(parents=True, exist_ok=True)
    write_new(work / "run.json", dumps({"run_id": run_id, "plan_sha256": plan_sha256}), root=work)
    run_as, local_plan_dir = _localize(unit.cell)
    if local_plan_dir:
        placement["plan_dir_on_node"] = local_plan_dir
    injected = _ray_injected_env()
    if injected:
        placement["ray_env_removed"] = injected
    try:
        for name in injected:  # the worker inherits os.environ; Ray restores its own after the task
            os.environ.pop(name, None)
        record = run_unit_process(unit.model_copy(update={"cell": run_as}), RunStore(work))
        files = _collect_files(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):
            work.parent.rmdir()  # the run's folder on this node, once its last cell is gone
    return {"record": record, "files": files, "placement": placement}


def _ray_injected_env() -> dict[str, str]:
    """Variables Ray set in this worker that a local run would not have.

    Ray sets OMP_NUM_THREADS to the task's CPU count when the node's environment leaves it
    unset: 1 for a GPU task, which would throttle the cell's CPU work (pre- and
    post-processing, PyTorch's intra-op threads) and make the number differ from the same cell
    run locally. /proc/self/environ holds the environment this process started with, before
    Ray's change; a value that was there (set on purpose on the node) is kept.
    """
    try:
        raw = Path("/proc/self/environ").read_bytes()
    except OSError:
        return {}
    initial = {entry.split(b"=", 1)[0].decode(errors="replace") for entry in raw.split(b"\0") if entry}
    return {
        name: os.environ[name]
        for name in THREAD_ENV_VARS
        if name in os.environ and name not in initial
    }


# -- the driver ------------------------------------------------------------------------------


@dataclass
class _Submitted:
    planned: WorkUnit  # as the launcher was given it
    unit: WorkUnit  # as the worker runs it and the record shows it (device cuda:0 on a GPU)
    placement: dict[str, Any]
    resources: dict[str, float]  # what the task needs from a node, for the checks and messages
    submitted_at: str
    missing_since: float | None = None  # when the cluster was first seen lacking `resources`


def _connect(address: str, runtime_env: dict[str, Any] | None) -> bool:
    """ray.init unless already connected; returns whether this call connected."""
    import logging

    import ray

    if ray.is_initialized():
        return False
    target = None if address in ("", "local") else address
    try:
        ray.init(
            address=target,
            namespace="bench",
            runtime_env=runtime_env,
            log_to_driver=False,  # workers' output goes to each cell's log, not over the live view
            logging_level=logging.WARNING,
            include_dashboard=False if target is None else None,
        )
    except Exception as exc:  # noqa: BLE001 -- ConnectionError, RuntimeError, version mismatch...
        raise UserError(f"--ray {address}: cannot connect to the Ray cluster: {type(exc).__name__}: {exc}") from None
    return True


def _node_cpus() -> list[float]:
    import ray

    try:
        return [float(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    except Exception:  # noqa: BLE001 -- Ray Client without node listing: use the cluster total
        return [float(ray.cluster_resources().get("CPU", 1))]


def _missing_resources(resources: dict[str, float], total: dict[str, float]) -> list[str]:
    """The resource names in `resources` that the cluster (`total`: ray.cluster_resources())
    has none of right now."""
    return [name for name, amount in resources.items() if amount > 0 and total.get(name, 0) < min(amount, 1e-3)]


def _describe_ray_error(exc: BaseException, attempts: int) -> str:
    import ray.exceptions as rex

    text = str(exc).strip().splitlines()
    first = " ".join(text[:3])[:600] if text else ""
    name = type(exc).__name__
    if isinstance(exc, rex.TaskCancelledError):
        return f"the Ray task was cancelled ({name})"
    if isinstance(exc, rex.OutOfMemoryError):
        return f"Ray's memory monitor killed the worker running the cell ({name}) after {attempts} attempt(s): {first}"
    if isinstance(exc, rex.NodeDiedError):
        return f"the Ray node running the cell died ({name}) after {attempts} attempt(s): {first}"
    if isinstance(exc, rex.WorkerCrashedError):
        return f"the Ray worker running the cell died ({name}) after {attempts} attempt(s): {first}"
    if isinstance(exc, rex.RayTaskError):
        tail = "\n".join(text[-6:])[-1500:]
        return f"the Ray task failed ({name}): {tail}"
    return f"the cell was lost on the Ray cluster ({name}): {first}"


def _lost_record(sub: _Submitted, reason: str) -> dict[str, Any]:
    record = outcome_record(sub.unit.cell, "failed", reason, sub.submitted_at, failure_kind="environmental",
                            repeat=sub.unit.repeat)
    return with_placement(record, {**sub.placement, "ray_resources": sub.resources})


def _store_result(store: RunStore, result: dict[str, Any]) -> dict[str, Any]:
    """Write a task's files into the run folder; return its record with its placement. Only
    `<subfolder>/<file>` names are taken (never cells/, never a name that leaves the folder);
    a log adds to an earlier attempt's log (a resumed run), a file left by an attempt that got
    no record is replaced."""
    for rel, data in result.get("files", {}).items():
        parts = Path(rel).parts
        if len(parts) != 2 or parts[0] == "cells" or any(p.startswith(".") for p in parts):
            continue
        try:
            if parts[0] == "logs":
                with store.open_append(rel) as handle:
                    handle.write(data)
                continue
            try:
                store.write_new(rel, data)
            except FileExistsError:
                store.write_replace(rel, data)
        except UnsafePath:
            continue  # a link planted in the run folder: never written through
    return with_placement(result["record"], result.get("placement", {}))


class RayLauncher:
    """Each unit a Ray task on the cluster at `address` ("ray://host:10001", "auto",
    "host:port", or "local" for a throwaway local cluster); records come back as tasks end.

    A unit with a `gpu_type` asks Ray for that accelerator type. A task whose worker or node
    dies is retried up to `max_retries` times, then handed back as failed (environmental) with
    Ray's reason. A unit asking for a resource the cluster does not have (no GPU, no H100)
    fails at once, or after `wait_for_resources_s` when an autoscaler may add it. Ctrl-C
    cancels the outstanding tasks and re-raises.
    """

    name = BACKEND

    def __init__(
        self,
        address: str,
        *,
        max_retries: int = 1,
        cpu_task_cpus: float | None = None,
        wait_for_resources_s: float = 0.0,
        runtime_env: dict[str, Any] | None = None,
        poll_s: float = 1.0,
    ):
        self.address = address
        self.max_retries = max_retries
        self.cpu_task_cpus = cpu_task_cpus
        self.wait_for_resources_s = wait_for_resources_s
        self.runtime_env = runtime_env
        self.poll_s = poll_s

    def run(self, units: Sequence[WorkUnit], store: RunStore, events: Events) -> None:
        import ray

        connected_here = _connect(self.address, self.runtime_env)
        pending: dict[Any, _Submitted] = {}
        try:
            cluster = ray.cluster_resources()
            has_gpus = cluster.get("GPU", 0) > 0 or any(u.gpu_type for u in units)
            # A node with no CPUs yet (an autoscaling group at zero) still gets a request to scale for.
            whole_node = max([*_node_cpus(), 1.0])
            task = ray.remote(run_cell_on_node)
            run_id = store.run_dir.name
            plan_sha256 = store.meta().get("plan_sha256")
            for unit in units:
                sub = _submission(unit, has_gpus, self.cpu_task_cpus or whole_node, self.address)
                options: dict[str, Any] = {
                    "num_cpus": sub.resources.get("CPU", 1),
                    "num_gpus": sub.resources.get("GPU", 0),
                    "max_retries": self.max_retries,
                    "retry_exceptions": False,  # the task never raises for a cell's own failure
                    "name": f"bench:{unit.key}",
                }
                if unit.gpu_type:
                    options["accelerator_type"] = unit.gpu_type
                ref = task.options(**options).remote(sub.unit.model_dump_json(), run_id, sub.placement, plan_sha256)
                pending[ref] = sub
                events.started(unit)
                events.phase(unit, "queued")
            self._collect(pending, store, events)
        except BaseException:
            for ref in pending:  # stop measuring on the cluster: the cells rerun on resume
                with contextlib.suppress(Exception):  # already finished or gone
                    ray.cancel(ref, force=True)
            raise
        finally:
            if connected_here:
                ray.shutdown()

    def _collect(self, pending: dict[Any, _Submitted], store: RunStore, events: Events) -> None:
        import ray

        last_check = 0.0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.poll_s)
            for ref in ready:
                sub = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 -- worker, node or task lost: any RayError
                    record = _lost_record(sub, _describe_ray_error(exc, self.max_retries + 1))
                else:
                    record = _store_result(store, result)
                events.done(sub.planned, record)
            if pending and time.monotonic() - last_check > 5.0:
                last_check = time.monotonic()
                try:
                    total = ray.cluster_resources()
                except Exception:  # noqa: BLE001 -- a failed look-up is no reason to give a cell up
                    total = None
                for ref, sub in list(pending.items()):
                    reason = _unschedulable(sub, self.wait_for_resources_s, self.address, total) if total else None
                    if reason:
                        ray.cancel(ref, force=True)
                        pending.pop(ref)
                        events.done(sub.planned, _lost_record(sub, reason))


def run_cells_on_ray(
    cells: list[Cell],
    store: RunStore,
    address: str,
    *,
    on_done: Callable[[dict[str, Any]], None],
    accelerator_types: Mapping[str, str] | Sequence[str] | None = None,
    max_retries: int = 1,
    on_phase: Callable[[str, str], None] | None = None,
    cpu_task_cpus: float | None = None,
    wait_for_resources_s: float = 0.0,
    runtime_env: dict[str, Any] | None = None,
    poll_s: float = 1.0,
) -> None:
    """Run the cells `store` does not hold yet as Ray tasks (RayLauncher), GPU cells once per
    type of `accelerator_types` ({label: type} or [type, ...]), ids `<cell_id>@<slug>`.

    Each record is written into `store` as its task ends, then passed to `on_done(record)`
    (don't write it again). `on_phase(cell_id, "queued")` tells the live view what was
    submitted.
    """
    from harness.run.scheduler import resume_and_run

    launcher = RayLauncher(address, max_retries=max_retries, cpu_task_cpus=cpu_task_cpus,
                           wait_for_resources_s=wait_for_resources_s, runtime_env=runtime_env, poll_s=poll_s)
    resume_and_run(launcher, fleet_units(cells, accelerator_types), store, on_done, on_phase)


def _submission(unit: WorkUnit, has_gpus: bool, cpu_cpus: float, address: str) -> _Submitted:
    """The unit as its task runs it (device cuda:0 on the GPU Ray assigns), and what it asks for."""
    cell = unit.cell
    now = utc_now()
    base = {"backend": BACKEND, "ray_address": address, "device_asked": cell.device}
    if not _wants_gpu(cell, cluster_has_gpus=has_gpus):
        run_as = unit.with_cell(device="cpu") if cell.device == "auto" else unit
        return _Submitted(unit, run_as, {**base, "gpu": None}, {"CPU": cpu_cpus}, now)
    resources = {"CPU": 1.0, "GPU": 1.0}
    placement = dict(base)
    if unit.gpu_type:
        placement.update(accelerator_type=unit.gpu_type, gpu_slug=cell.cell_id.rpartition(QUALIFIER)[2])
        resources[f"accelerator_type:{unit.gpu_type}"] = 0.001
    return _Submitted(unit, unit.with_cell(device="cuda:0"), placement, resources, now)


def _unschedulable(sub: _Submitted, wait_s: float, address: str, total: dict[str, float]) -> str | None:
    """Why a pending task will not start (the cluster lacks what it asks for, for longer than
    `wait_s`), or None while it may still start."""
    missing = _missing_resources(sub.resources, total)
    if not missing:
        sub.missing_since = None
        return None
    now = time.monotonic()
    if sub.missing_since is None:
        sub.missing_since = now
    if now - sub.missing_since < wait_s:
        return None
    have = ", ".join(
        f"{k} {v:g}" for k, v in sorted(total.items())
        if not k.startswith(("node:", "object_store")) and k != "memory"
    )
    wanted = ", ".join(m.replace("accelerator_type:", "GPU type ") for m in missing)
    return (
        f"the Ray cluster at {address} has no {wanted} (it has: {have or 'nothing'})"
        + (f"; waited {wait_s:g} s for the autoscaler" if wait_s else "; pass a wait time when an autoscaler adds such nodes")
    )


def describe_cluster(address: str) -> dict[str, Any]:
    """Nodes, GPUs and accelerator types of a cluster: what a `--ray` run there could use."""
    import ray

    connected_here = _connect(address, None)
    try:
        nodes = []
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            resources = node.get("Resources", {})
            nodes.append({
                "host": node.get("NodeManagerHostname"),
                "cpus": resources.get("CPU", 0),
                "gpus": resources.get("GPU", 0),
                "accelerator_types": sorted(k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:")),
            })
        return {"address": address, "ray_version": ray.__version__, "driver_host": socket.gethostname(), "nodes": nodes}
    finally:
        if connected_here:
            ray.shutdown()
