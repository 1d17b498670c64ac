"""Several GPUs of one host: cells in parallel, one worker process per GPU, never two
measurements on one GPU at once.

`bench PLAN --gpus 0,1,2,3` (or `all`) gives each GPU a lane. A cell that asks for a GPU
(`cuda:N` or `auto`) goes to the next free lane; its worker gets CUDA_VISIBLE_DEVICES=<that
GPU> and the cell's device becomes `cuda:0` for that process, so CUDA, PyTorch, ONNX Runtime
and TensorRT inside the worker see exactly one GPU and cannot touch another lane's (a stray
`cuda:0` context on someone else's GPU would skew their numbers). NVML, which ignores
CUDA_VISIBLE_DEVICES, is pointed at the right GPU by harness.environment.nvml's mapping, so the
record's GPU facts and clock monitor belong to the GPU that ran the cell. The GPU index goes
into record["placement"].

`--gpus` numbers GPUs the way CUDA does in the bench process: when CUDA_VISIBLE_DEVICES is
already set (a container, Slurm), index 1 is its second entry, which is what the worker gets.
When it is unset, the workers get CUDA_DEVICE_ORDER=PCI_BUS_ID (unless set), so `--gpus 3` is
`nvidia-smi`'s GPU 3 and CUDA and NVML agree on which GPU that is.

CPU-only cells (onnxruntime-cpu, device cpu) run after the GPU cells, one at a time, with
nothing else measuring on the host: a CPU measurement shares cores, caches and memory
bandwidth with everything else on the machine, and GPU workers use the CPU too (kernel
launches, pre- and post-processing). `cpu_alongside=True` opts into running one CPU cell at a
time beside the GPU lanes, for when the host has cores to spare and the CPU numbers matter
less than the wall time.

`GpuLanesLauncher` is a launcher (harness.run.launch): records are handed back, in the calling
thread, as each unit ends, and written above it (harness.run.scheduler); the worker threads
only wait on their processes. Ctrl-C kills the running workers (they are this process's
children) and hands back nothing for them, so `bench run --resume` measures them again.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from harness.errors import UserError
from harness.plan.cells import Cell
from harness.run.launch import Events, WorkUnit
from harness.run.placement import host_name, with_placement
from harness.run.record import outcome_record
from harness.run.store import RunStore, utc_now

BACKEND = "local-gpus"


class UnitRunner(Protocol):
    """Runs one unit in its own process and returns its record (never raises for the cell's
    own failures). `env` holds variables to add to the worker's environment."""

    def __call__(
        self,
        unit: WorkUnit,
        store: RunStore,
        on_phase: Callable[[str], None] | None,
        env: dict[str, str],
    ) -> dict[str, Any]: ...


# -- --gpus ----------------------------------------------------------------------------------


def visible_gpu_names() -> list[str | None]:
    """The GPUs CUDA would number here (honouring CUDA_VISIBLE_DEVICES), by model name; NVML
    first (no CUDA context, no torch import), else torch's device count (names unknown)."""
    from harness.environment import nvml

    try:
        nv = nvml.open_nvml()
    except nvml.NvmlUnavailable:
        return _torch_gpu_names()
    try:
        names: list[str | None] = []
        for index in range(nvml.cuda_visible_count(nv)):
            try:
                handle, _ = nvml.handle_for_cuda_index(nv, index)
                names.append(nvml.as_text(nv.nvmlDeviceGetName(handle)))
            except Exception:  # noqa: BLE001 -- a GPU NVML can't describe still counts
                names.append(None)
        return names
    finally:
        nvml.close_nvml(nv)


def _torch_gpu_names() -> list[str | None]:
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 -- no usable torch or CUDA means no GPU to offer
        return []


def parse_gpus(text: str, probe: Callable[[], list[str | None]] | None = None) -> list[int]:
    """`--gpus` -> GPU indices: "0,1,2,3", "0-3", "1,3-5" or "all".

    `probe` lists the visible GPUs' model names (default: `visible_gpu_names`, which asks NVML
    lazily). Raises UserError for text that is not a GPU list, an index that does not exist,
    an index given twice, no GPU at all, and GPUs of different models: cells land on whichever
    lane is free, so mixed models would put numbers from different GPUs in one table (measure
    each model in its own run, or through `--ray` with the plan's GPU types, and `bench merge`).
    """
    spec = text.strip().lower()
    names = (probe or visible_gpu_names)()
    if spec == "all":
        if not names:
            raise UserError("--gpus all: no NVIDIA GPU is visible here (NVML and PyTorch see none)")
        chosen = list(range(len(names)))
    else:
        chosen = []
        for part in spec.split(","):
            part = part.strip()
            match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
            if not match:
                raise UserError(
                    f"--gpus: `{part or text}` is not a GPU index; give indices like 0,1,2,3, "
                    "a range like 0-3, or `all`"
                )
            first = int(match.group(1))
            last = int(match.group(2)) if match.group(2) is not None else first
            if last < first:
                raise UserError(f"--gpus: the range `{part}` runs backwards")
            for index in range(first, last + 1):
                if index in chosen:
                    raise UserError(f"--gpus: GPU {index} is given twice")
                chosen.append(index)
        missing = [i for i in chosen if i >= len(names)]
        if missing:
            seen = f"{len(names)} visible: 0-{len(names) - 1}" if names else "no GPU is visible"
            raise UserError(f"--gpus: no GPU {missing[0]} here ({seen})")
    models = {names[i] for i in chosen if names[i] is not None}
    if len(models) > 1:
        listing = ", ".join(f"{i}: {names[i]}" for i in chosen)
        raise UserError(
            f"--gpus: the GPUs are of different models ({listing}); cells go to whichever GPU "
            "is free, so one table would mix them. Pick GPUs of one model, or run each model "
            "separately and join the runs with `bench merge`."
        )
    return chosen


# -- pinning ---------------------------------------------------------------------------------


def uses_gpu(cell: Cell) -> bool:
    """Whether the cell measures on a GPU when GPUs are given (`auto` then means a GPU)."""
    return cell.device == "auto" or cell.device.startswith("cuda")


def pinned_env(gpu: int) -> dict[str, str]:
    """What a worker pinned to `gpu` (in this process's CUDA numbering) adds to its environment."""
    from harness.environment.nvml import visible_devices

    entries = visible_devices()
    if entries is None:
        env = {"CUDA_VISIBLE_DEVICES": str(gpu)}
        if "CUDA_DEVICE_ORDER" not in os.environ:
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # numeric entries then mean nvidia-smi's order
        return env
    if gpu >= len(entries):
        raise UserError(
            f"--gpus: GPU {gpu} is not visible (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r} shows {len(entries)})"
        )
    return {"CUDA_VISIBLE_DEVICES": entries[gpu]}


def pin_cell(cell: Cell, gpu: int) -> tuple[Cell, dict[str, str], dict[str, Any]]:
    """The cell as its pinned worker runs it (device cuda:0), the worker's extra environment,
    and the placement to record."""
    env = pinned_env(gpu)
    placement = {
        "backend": BACKEND,
        "host": host_name(),
        "gpu": gpu,
        "cuda_visible_devices": env["CUDA_VISIBLE_DEVICES"],
        "device_asked": cell.device,
    }
    return cell.model_copy(update={"device": "cuda:0"}), env, placement


def default_runner(
    unit: WorkUnit, store: RunStore, on_phase: Callable[[str], None] | None, env: dict[str, str]
) -> dict[str, Any]:
    """process.run_unit_process, with `env` added to the worker's environment when given."""
    from harness.run import process

    if not env:
        return process.run_unit_process(unit, store, on_phase=on_phase)
    return process.run_unit_process(unit, store, on_phase=on_phase, env=env)


# -- the lanes -------------------------------------------------------------------------------


@dataclass
class _Lane:
    name: str  # "gpu3" or "cpu"
    gpu: int | None


class GpuLanesLauncher:
    """One lane per GPU, one unit per lane at a time; CPU units after the GPU units, one at a
    time with nothing else measuring (or beside the GPU lanes with `cpu_alongside`).

    Units start in the order given, except that a CPU unit waits while GPUs measure and GPU
    units behind it go ahead. Each unit's worker is pinned to its lane's GPU (`pin_cell`) and
    its record carries the placement. The worker threads only wait on their processes; every
    event is handed on in the calling thread. On an interrupt (or a failing callback) the
    running workers are killed and get no record; units that ended before are handed on first.
    """

    name = BACKEND

    def __init__(self, gpus: list[int], *, cpu_alongside: bool = False, runner: UnitRunner | None = None):
        if not gpus:
            raise UserError("--gpus: no GPU given")
        if len(set(gpus)) != len(gpus):
            raise UserError(f"--gpus: a GPU is given twice ({gpus})")
        self.gpus = list(gpus)
        self.cpu_alongside = cpu_alongside
        self.runner: UnitRunner = runner or default_runner

    def run(self, units: Sequence[WorkUnit], store: RunStore, events: Events) -> None:
        gpu_queue = deque(u for u in units if uses_gpu(u.cell))
        cpu_queue = deque(u for u in units if not uses_gpu(u.cell))
        free_gpus = deque(self.gpus)
        cpu_busy = False
        inbox: queue.Queue[tuple[str, WorkUnit, Any]] = queue.Queue()
        running: dict[str, tuple[threading.Thread, _Lane, WorkUnit]] = {}

        def start(unit: WorkUnit, lane: _Lane) -> None:
            if lane.gpu is not None:
                pinned, env, placement = pin_cell(unit.cell, lane.gpu)
                run_as = unit.model_copy(update={"cell": pinned})
            else:
                run_as, env, placement = unit, {}, {"backend": BACKEND, "host": host_name(), "gpu": None}

            def work() -> None:
                started_at = utc_now()
                try:
                    record = self.runner(run_as, store, lambda phase: inbox.put(("phase", unit, phase)), env)
                except BaseException as exc:  # noqa: BLE001 -- a harness bug must not stop the other lanes
                    record = outcome_record(
                        unit.cell, "failed", f"the harness could not run the cell: {type(exc).__name__}: {exc}",
                        started_at, failure_kind="environmental", repeat=unit.repeat,
                    )
                inbox.put(("done", unit, with_placement(record, placement)))

            thread = threading.Thread(target=work, name=f"bench-{lane.name}", daemon=True)
            running[unit.key] = (thread, lane, unit)
            events.started(unit)
            thread.start()

        try:
            while gpu_queue or cpu_queue or running:
                while free_gpus and gpu_queue and (self.cpu_alongside or not cpu_busy):
                    gpu = free_gpus.popleft()
                    start(gpu_queue.popleft(), _Lane(f"gpu{gpu}", gpu))
                gpus_idle = not gpu_queue and len(free_gpus) == len(self.gpus)
                if cpu_queue and not cpu_busy and (self.cpu_alongside or gpus_idle):
                    cpu_busy = True
                    start(cpu_queue.popleft(), _Lane("cpu", None))
                kind, unit, payload = inbox.get()
                if kind == "phase":
                    if unit.key in running:
                        events.phase(unit, payload)
                    continue
                thread, lane, _ = running.pop(unit.key)
                thread.join()
                if lane.gpu is None:
                    cpu_busy = False
                else:
                    free_gpus.append(lane.gpu)
                events.done(unit, payload)
        except BaseException:
            # Units that ended before the interrupt keep their records; the rest are killed and
            # get none (a resume runs them again).
            with contextlib.suppress(BaseException):
                while True:
                    try:
                        kind, unit, payload = inbox.get_nowait()
                    except queue.Empty:
                        break
                    if kind == "done" and unit.key in running:
                        running.pop(unit.key)
                        events.done(unit, payload)
            _stop_workers(store, [thread for thread, _, _ in running.values()])
            raise


def run_cells_on_gpus(
    cells: list[Cell],
    store: RunStore,
    gpus: list[int],
    on_done: Callable[[dict[str, Any]], None],
    on_phase: Callable[[str, str], None] | None = None,
    *,
    cpu_alongside: bool = False,
    runner: UnitRunner | None = None,
) -> None:
    """Run the cells `store` does not hold yet through GpuLanesLauncher (GPU cells in parallel,
    one lane per GPU in `gpus`; CPU cells after them one at a time, or beside them with
    `cpu_alongside`).

    Each record is written into `store` as its cell ends and then passed to `on_done(record)`
    (don't write it again). `on_phase(cell_id, phase)` reports "starting" and the worker's
    phases. Both are called in this thread. Re-raises KeyboardInterrupt after killing the
    running workers (their cells get no record, so a resume runs them again).
    """
    from harness.run.scheduler import plan_units, resume_and_run

    launcher = GpuLanesLauncher(gpus, cpu_alongside=cpu_alongside, runner=runner)
    resume_and_run(launcher, plan_units(cells), store, on_done, on_phase)


def worker_pids(store: RunStore) -> list[int]:
    """This process's worker children for `store`'s run (each leads its own process group)."""
    import psutil

    marker = str(store.run_dir)
    pids = []
    for child in psutil.Process().children(recursive=False):
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        if "harness.run.worker" in cmdline and marker in cmdline:
            pids.append(child.pid)
    return pids


def _stop_workers(store: RunStore, threads: list[threading.Thread], grace_s: float = 10.0) -> None:
    """Kill the running workers (by their process ids: they are our own children) and wait for
    their threads, so nothing keeps measuring after an interrupt."""
    for pid in worker_pids(store):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + grace_s
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
