"""One unit of work (one run of one cell), in its own fresh process.

    python -m harness.run.worker RUN_DIR UNIT_JSON RESULT_TMP [HANDOVER_JSON]

The parent (harness.run.process) starts this with stdout and stderr going to the cell's log,
waits with a timeout, and turns a crash, an out-of-memory kill or a hang into a `failed` record
itself. Here, everything the cell can say for itself: skipped (with the runtime's reason),
failed (with the exception, and whether the cell or its environment was at fault), or
measured. The record goes to RESULT_TMP; the parent hands it on to be written into the run
folder, so a worker can never overwrite a finished result.

`run_cell` is the cell's life as a list of named steps; each step is a function below. The
phase (`check`, `prepare`, `wait_gpu`, `warmup`, `measure`, `accuracy`) is written to
logs/<unit>.phase for the parent's live view.

A process that built its cell's artifact in `prepare` (exported, converted, quantized, built an
engine: a cache miss) does not time it: the build leaves the process with memory, imported
tooling and a heap that a process that found the artifact cached would not have, so the same
configuration would read differently with a cold and a warm cache. It writes what the build cost
to HANDOVER_JSON and exits; the parent starts a fresh process for the unit, which finds the
artifact cached, times it, and records the build under `prepare` (`built_in_earlier_process`).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

from harness import files
from harness.environment import nvml
from harness.errors import CellSkipped, UserError
from harness.plan.cells import Cell
from harness.results import CellRecord, Controls, Environment, Latency, Prepare, ProcessFacts, Status, worst_status
from harness.run.record import cell_fields, outcome_record
from harness.run.store import RunStore, dumps, utc_now
from harness.run.unit import WorkUnit, unit_key

if TYPE_CHECKING:
    import numpy as np

    from harness.accuracy.datasets import Dataset
    from harness.measure.protocol import MeasureResult
    from harness.models.base import ModelSource
    from harness.runtimes.base import Runtime, Stage

FAULT_ENV = "BENCH_FAULT_INJECT"  # "<kind>@<cell_id>": tests of crash isolation (see _inject_fault)
MAX_TRACE_ROWS_IN_RECORD = 2000
Record = dict[str, Any]
OnPhase = Callable[[str], None]


# Prepare timings that are set only when this process made the artifact (None: from the cache).
BUILD_TIMINGS = ("export_s", "build_s", "fp16_convert_s", "quantize_s", "sensitivity_s")


class ArtifactBuilt(Exception):
    """This process built the cell's artifact: a fresh process times it (see the module doc)."""

    def __init__(self, facts: dict[str, Any]):
        super().__init__("the artifact was built in this process")
        self.facts = facts


class CellEnded(Exception):
    """A step found that the cell ends here, unmeasured: skipped or failed, with the reason."""

    def __init__(self, status: Status, reason: str):
        super().__init__(reason)
        self.status: Status = status
        self.reason = reason


@dataclass
class CellRun:
    """What the steps of one cell share."""

    cell: Cell
    run_dir: Path
    log: TextIO
    phase: OnPhase
    repeat: int | None = None  # which of the cell's processes this is; None: its only one
    started_at: str = field(default_factory=utc_now)
    environment: dict[str, Any] = field(default_factory=dict)
    random_weights: bool = False
    controls: dict[str, Any] = field(default_factory=dict)
    host_start: dict[str, Any] | None = None
    gpu_index: int | None = None
    warmup_started: float | None = None  # unix time the warm-up began
    handover: bool = False  # a build in prepare hands timing over to a fresh process
    built_earlier: dict[str, Any] | None = None  # the build of the process that handed over

    @property
    def key(self) -> str:
        return unit_key(self.cell.cell_id, self.repeat)

    @property
    def first_process(self) -> bool:
        """The process that runs the accuracy pass and saves outputs (the others only time)."""
        return self.repeat in (None, 0)

    def record(self, status: Status, **fields: Any) -> Record:
        if isinstance(fields.get("prepare"), dict):
            fields["prepare"] = Prepare.from_runtime(fields["prepare"])
        return CellRecord(
            **cell_fields(self.cell), repeat=self.repeat, started_at=self.started_at, finished_at=utc_now(),
            status=status, random_weights=self.random_weights,
            environment=Environment.model_validate(self.environment),
            controls=Controls.model_validate(self.controls) if self.controls else None,
            process=self.process_facts(), **fields,
        ).model_dump(mode="json")

    def process_facts(self) -> ProcessFacts:
        from harness.environment.host import host_snapshot

        created = _process_created()
        overhead = None if created is None or self.warmup_started is None else self.warmup_started - created
        end = None
        with contextlib.suppress(Exception):  # the host's figures never take a measurement down
            end = host_snapshot(self.gpu_index)
        return ProcessFacts.model_validate(
            {"pid": os.getpid(), "overhead_s": overhead, "start": self.host_start, "end": end}
        )


def _process_created() -> float | None:
    with contextlib.suppress(Exception):
        import psutil

        return float(psutil.Process().create_time())
    return None


@dataclass
class Measured:
    latency: Latency
    monitor: dict[str, Any]
    # Read around the timed phase for the record's `resources` (harness.run.resources).
    meters: dict[str, Any] = field(default_factory=dict)


# -- the cell, step by step --------------------------------------------------------------------


def run_cell(cell: Cell, run_dir: Path, log: TextIO, phase: OnPhase, repeat: int | None = None,
             handover: bool = False, built_earlier: dict[str, Any] | None = None) -> Record:
    """Measure one process of a cell and return its record; a step that ends the cell early
    gives a skipped or failed record. Exceptions other than CellEnded are the caller's
    (`run_unit`): ArtifactBuilt among them, when `handover` and prepare built the artifact."""
    run = CellRun(cell, run_dir, log, phase, repeat=repeat, controls=dict(_HOST_CONTROLS),
                  handover=handover, built_earlier=built_earlier)
    record_host_start(run)
    try:
        runtime_cls = check_availability(run)
        device = capture_environment(run)
        if cell.scenario == "server":
            return serve_endpoint(run, device)
        gpu_index = nvml.parse_cuda_index(device)
        baseline = memory_baseline(run, gpu_index)
        source, runtime = build_source_and_runtime(run, runtime_cls)
        prepare = hand_over_after_build(run, prepare_runtime(run, runtime, source))
        settings = runtime.settings()
        dataset = load_accuracy_dataset(run, source)
        conditions = wait_for_gpu_conditions(run, gpu_index)
        measured = measure_latency(run, runtime, dataset, gpu_index, source.forward_contents())
        nms = runtime.nms_facts()  # before the accuracy pass feeds other images
        accuracy = accuracy_pass(run, runtime, source, dataset)
        outputs = save_outputs(run, runtime, source, dataset, measured, accuracy)
    except CellEnded as end:
        return run.record(end.status, reason=end.reason, failure_kind="cell" if end.status == "failed" else None)
    if conditions:
        prepare["gpu_conditions"] = conditions
    runtime.close()
    resources = measure_resources(run, device, measured, prepare, baseline)
    return build_record(run, measured, prepare=prepare, settings=settings, nms=nms, resources=resources, **outputs)


# What `hold_host_fixed` did in this process (main() calls it before anything heavy loads).
_HOST_CONTROLS: dict[str, Any] = {}


def hold_host_fixed(cell: Cell) -> None:
    """Pin this process near its GPU and set the thread counts libraries read when they load
    (OpenBLAS at numpy's import, OMP at torch's): so main() calls it first, before numpy, torch
    or onnxruntime is imported. What was done goes into every record's `controls`."""
    from harness.environment.host import apply_controls

    controls = cell.controls
    try:
        _HOST_CONTROLS.update(apply_controls(controls.pin_cores, controls.threads, nvml.parse_cuda_index(cell.device)))
    except Exception as exc:  # noqa: BLE001 -- an unpinned measurement is recorded as such, not lost
        _HOST_CONTROLS["placement"] = None
        sys.stdout.write(f"host controls failed: {exc!r}\n")
    _HOST_CONTROLS["gc_disabled_in_timed_loop"] = not controls.gc_in_timed_loop


def record_host_start(run: CellRun) -> None:
    """The host's load and speed as the process starts (the record's `process.start`)."""
    from harness.environment.host import host_snapshot

    run.gpu_index = nvml.parse_cuda_index(run.cell.device)
    run.controls.setdefault("gc_disabled_in_timed_loop", not run.cell.controls.gc_in_timed_loop)
    with contextlib.suppress(Exception):  # the host's figures never take a measurement down
        run.host_start = host_snapshot(run.gpu_index)


def check_availability(run: CellRun) -> type[Runtime]:
    """The cell's runtime class, or the cell is skipped with the runtime's reason."""
    from harness.runtimes.registry import runtime_class

    run.phase("check")
    runtime_cls = runtime_class(run.cell.runtime.name)
    if reason := runtime_cls.unavailable_reason(run.cell):
        run.environment = _capture(run, "cpu" if run.cell.device == "auto" else run.cell.device)
        raise CellEnded("skipped", reason)
    return runtime_cls


def capture_environment(run: CellRun) -> str:
    """Resolve the device the cell runs on and record the environment there; returns the device."""
    device = run.cell.device
    if device == "auto":
        from harness.runtimes.pytorch.runtime import resolve_device

        device = resolve_device(device)
    run.environment = _capture(run, device)
    return device


def _capture(run: CellRun, device: str) -> dict[str, Any]:
    from harness.environment.capture import capture_environment as capture

    try:
        return capture([device], plan_sha256=_plan_sha256(run.run_dir))
    except Exception as exc:  # the environment never takes a measurement down
        run.log.write(f"environment capture failed: {exc!r}\n")
        return {"error": repr(exc)}


def _plan_sha256(run_dir: Path) -> str | None:
    with contextlib.suppress(OSError, ValueError):
        return RunStore(run_dir).meta().get("plan_sha256")
    return None


def build_source_and_runtime(run: CellRun, runtime_cls: type[Runtime]) -> tuple[ModelSource, Runtime]:
    from harness.errors import WeightsUnavailable
    from harness.models.registry import source_class

    run.phase("prepare")
    try:
        source = source_class(run.cell.source)(run.cell, run.log)
    except WeightsUnavailable as exc:
        raise CellEnded("failed", str(exc)) from None
    run.random_weights = source.random_weights
    return source, runtime_cls(run.cell, source, run.log)


def prepare_runtime(run: CellRun, runtime: Runtime, source: ModelSource) -> dict[str, Any]:
    """Export, build or compile (timed by the runtime itself); the prepare facts."""
    from harness.errors import WeightsUnavailable

    try:
        prepare = runtime.prepare()
    except CellSkipped as exc:
        raise CellEnded("skipped", str(exc)) from None
    except WeightsUnavailable as exc:
        raise CellEnded("failed", str(exc)) from None
    source.load_metadata()
    _inject_fault(run.cell.cell_id)
    _inject_slowdown(runtime, run.cell.cell_id)
    return prepare


def hand_over_after_build(run: CellRun, prepare: dict[str, Any]) -> dict[str, Any]:
    """Raise ArtifactBuilt when this process built the artifact and may hand timing over; in
    the process that took over, the build's timings (from the process that made it) fill the
    prepare facts this process read from the cache."""
    if run.built_earlier is not None:
        earlier = dict(run.built_earlier)
        _carry_build_facts(prepare, earlier.pop("prepare", None) or {})
        for name, seconds in (earlier.get("timings") or {}).items():
            if prepare.get(name) is None:  # sample_dataset_s, which this process's prepare lacks
                prepare[name] = seconds
        prepare["built_in_earlier_process"] = earlier
        return prepare
    timings = {name: float(prepare[name]) for name in BUILD_TIMINGS if prepare.get(name)}
    sample_s = generate_sample_dataset(run)
    if sample_s is not None:
        prepare["sample_dataset_s"] = timings["sample_dataset_s"] = sample_s
    if timings and run.handover:
        run.log.write(f"[worker] the artifact was built in this process ({', '.join(timings)}): "
                      "a fresh process times it\n")
        run.log.flush()
        raise ArtifactBuilt({"pid": os.getpid(), "timings": timings, "prepare": prepare})
    return prepare


def _carry_build_facts(prepare: dict[str, Any], earlier: dict[str, Any]) -> None:
    """The record describes the cell's preparation as a whole: what the build cost and whether
    it came from a cache are the building process's (its timings and `cached` flags, at any
    depth); loading and compiling stay this process's own."""
    for key, value in earlier.items():
        if key in BUILD_TIMINGS or key == "cached" or key.endswith("_cached"):
            if key in prepare:
                prepare[key] = value
        elif isinstance(value, dict) and isinstance(prepare.get(key), dict):
            _carry_build_facts(prepare[key], value)


def generate_sample_dataset(run: CellRun) -> float | None:
    """Draw the plan's generated sample dataset if no earlier process has (a build like an
    export: its seconds, or None when it was cached or the plan names a COCO folder)."""
    cell = run.cell
    if cell.dataset is None:
        return None
    from harness.accuracy.datasets import default_cache_root, generate_sample_files

    return generate_sample_files(cell.dataset, Path(cell.plan_dir), default_cache_root(cell))


def load_accuracy_dataset(run: CellRun, source: ModelSource) -> Dataset | None:
    """The accuracy dataset, decoded outside any timed region; a dataset whose classes the
    model doesn't know is an error before anything is timed."""
    cell = run.cell
    if cell.dataset is None:
        return None
    from harness.accuracy.categories import check_mapping
    from harness.accuracy.datasets import load_dataset

    dataset = load_dataset(cell.dataset, Path(cell.plan_dir), cell.resolve_path(cell.artifacts_dir) / "datasets")
    mapping_check = check_mapping(source.class_names, dataset.categories, dataset.annotated_category_ids)
    if mapping_check.warning:
        run.log.write(f"class mapping: {mapping_check.warning}\n")
    return dataset


def memory_baseline(run: CellRun, gpu_index: int | None) -> dict[str, Any]:
    """NVML's reading of this process and its GPU before the model or session exists: what
    the timed phase's device memory is counted from (harness.run.resources)."""
    from harness.run.resources import device_memory_baseline

    try:
        return device_memory_baseline(gpu_index)
    except Exception as exc:  # noqa: BLE001 -- a figure, never a reason to fail the cell
        return {"reason": f"the memory baseline could not be read: {exc!r}"}


def wait_for_gpu_conditions(run: CellRun, gpu_index: int | None) -> dict[str, Any] | None:
    """The plan's GPU conditions (cool-down, idle) before timing; what happened, or None on a CPU."""
    if gpu_index is None:
        return None
    from harness.environment.conditions import wait_for_gpu

    run.phase("wait_gpu")
    return wait_for_gpu(gpu_index, run.cell.gpu, run.log)


def measure_latency(
    run: CellRun, runtime: Runtime, dataset: Dataset | None, gpu_index: int | None, forward: str | None = None
) -> Measured:
    """The timed pass under the GPU monitor (harness.measure does the timing), as a Latency.
    `forward`: what the model's call holds besides the network (the source's words)."""
    from harness.environment.energy import RaplMeter
    from harness.environment.monitor import GpuMonitor
    from harness.measure.stats import build_latency
    from harness.run.resources import HostPeak, TorchPeak, host_memory_now

    cell = run.cell
    monitor = GpuMonitor(gpu_index, cell.gpu.monitor_interval_ms, sample=cell.gpu.monitor)
    # Read at the measurement phase's boundaries, between the timed loops: the runtime's own
    # allocator peak (torch), and on a CPU cell the packages' RAPL energy counters.
    torch_peak = TorchPeak(runtime)
    # The host's high-water mark is reset there too: the timed phase's peak, not prepare's.
    host_peak = HostPeak()
    rapl = RaplMeter() if gpu_index is None else None

    def on_phase(name: str) -> None:
        if name == "warmup" and run.warmup_started is None:
            run.warmup_started = time.time()
        monitor.phase(name)
        torch_peak.phase(name)
        host_peak.phase(name)
        if rapl is not None:
            rapl.phase(name)
        run.phase(name)

    from harness.environment.clocks import ClockLock

    placement = run.controls.get("placement") or {}
    monitor.pin_core = placement.get("monitor_core")
    with ClockLock(gpu_index, cell.gpu.lock_clocks) as lock:
        monitor.start()
        try:
            if cell.scope == "model":
                result, stage_samples, timer_name, stage_names = _time_model_scope(runtime, cell, on_phase)
            else:
                result, stage_samples, timer_name, stage_names = _time_end_to_end(runtime, cell, dataset, on_phase)
        finally:
            monitor_data = monitor.stop()
    host_after = host_memory_now(host_peak)  # the high-water mark since the timed phase began
    if lock.record is not None:
        run.controls["clocks"] = lock.record
    sustained = cell.protocol.sustained
    latency = build_latency(
        result,
        scope=cell.scope,
        timer_name=timer_name,
        timed_region=_timed_region(cell, stage_names, forward),
        batch=cell.batch,
        stage_samples=stage_samples,
        window_s=sustained.window_s if sustained else None,
        monitor_trace=monitor_data.get("trace") if monitor_data else None,
        asynchronous_call=runtime.asynchronous_call,
    )
    meters = {"torch_peak": torch_peak, "rapl": rapl, "host_after": host_after, "measure_s": result.measure_s,
              "images": len(result.samples_ms) * cell.batch}
    return Measured(latency, monitor_data, meters)


_Timed = tuple["MeasureResult", dict[str, list[float]] | None, str, list[str]]


def _time_model_scope(runtime: Runtime, cell: Cell, on_phase: OnPhase) -> _Timed:
    from harness.measure.protocol import measure
    from harness.measure.timers import make_timer

    stream = runtime.timer_stream()
    inputs = runtime.model_input()
    runtime.synchronize()
    timer = make_timer(stream)
    result = measure(lambda: runtime.run_model(inputs), cell.protocol, timer, on_phase=on_phase,
                     disable_gc=not cell.controls.gc_in_timed_loop)
    return result, None, timer.name, []


def _time_end_to_end(runtime: Runtime, cell: Cell, dataset: Dataset | None, on_phase: OnPhase) -> _Timed:
    from harness.measure.protocol import measure_stages

    stream = runtime.timer_stream()
    images: list[Any] = list(_sample_images(cell, dataset))
    stages = runtime.stages()
    stage_names = [s.name for s in stages]
    if cell.time_decode and dataset is not None:
        stages, images = _with_decode_stage(stages, dataset, cell.batch)
    result, stage_samples = measure_stages(
        stages, lambda: images, cell.protocol, stream, runtime.synchronize, on_phase=on_phase,
        disable_gc=not cell.controls.gc_in_timed_loop,
    )
    if cell.time_decode:
        stage_names = ["decode", *stage_names]
    return result, stage_samples, f"{result.timer_name} (stage boundaries synchronised)", stage_names


def accuracy_pass(run: CellRun, runtime: Runtime, source: ModelSource, dataset: Dataset | None) -> dict[str, Any] | None:
    """mAP on the same runtime object the latency pass timed; its detections beside the record."""
    cell, run_dir = run.cell, run.run_dir
    if not cell.run_accuracy or dataset is None or not run.first_process:
        return None  # the same artifact at the same precision: one process measures its mAP
    from harness.accuracy.evaluate import run_accuracy_pass

    run.phase("accuracy")
    keep = cell.accuracy.agreement_images
    seen: list[Any] = []  # every class's detections of the first images, for agreement

    def predict(images: list[np.ndarray]) -> Any:
        out = runtime.predict(images)
        if len(seen) < keep:
            seen.extend(out)
        return out

    result = run_accuracy_pass(
        predict, cell.batch, dataset, source.class_names, source.family,
        run_dir / "detections" / f"{cell.cell_id}.json", evaluator=cell.accuracy.evaluator,
        workers=cell.accuracy.loader_workers, log=run.log, random_weights=run.random_weights,
        threshold_split=cell.accuracy.threshold_split,
    )
    if seen and result is not None and source.family == "detection":
        from harness.accuracy.agreement import save_model_detections

        ids = list(dataset.image_ids[:keep])
        save_model_detections(run_dir / "detections" / f"{cell.cell_id}.all-classes.json", ids, seen[: len(ids)])
    return result


def save_outputs(
    run: CellRun, runtime: Runtime, source: ModelSource, dataset: Dataset | None, measured: Measured,
    accuracy: dict[str, Any] | None,
) -> dict[str, Any]:
    """The files beside the record (a long monitor trace, raw outputs for agreement checks),
    and the record's fields that name them."""
    cell, run_dir = run.cell, run.run_dir
    saved: dict[str, Any] = {}
    monitor = _keep_trace_small(measured.monitor, run_dir, run.key, saved)
    if accuracy is not None and dataset is not None:
        saved["detections"] = f"detections/{cell.cell_id}.json"
        if (run_dir / "detections" / f"{cell.cell_id}.all-classes.json").is_file():
            saved["agreement_detections"] = f"detections/{cell.cell_id}.all-classes.json"
        if outputs_path := _save_raw_outputs(cell, runtime, source, dataset, run_dir):
            saved["outputs"] = outputs_path
    return {"monitor": monitor, "accuracy": accuracy, "files": saved}


def measure_resources(run: CellRun, device: str, measured: Measured, prepare: dict[str, Any],
                      baseline: dict[str, Any]) -> dict[str, Any] | None:
    """The record's `resources`: memory, energy and artifact size (harness.run.resources)."""
    from harness.run.resources import resources_block

    meters = measured.meters
    try:
        return resources_block(
            device=device, images=int(meters.get("images") or 0), prepare=prepare, baseline=baseline,
            torch_peak=meters.get("torch_peak"), monitor=measured.monitor, rapl=meters.get("rapl"),
            host_after_measure=meters.get("host_after") or {}, measure_s=meters.get("measure_s"),
        )
    except Exception as exc:  # noqa: BLE001 -- resources never take a measurement down
        traceback.print_exc(file=run.log)
        run.log.write(f"resources could not be measured: {exc!r}\n")
        return None


def build_record(run: CellRun, measured: Measured, **fields: Any) -> Record:
    """The measured cell's record: its status is its most severe flag."""
    latency = measured.latency
    flags: list[str] = []
    if latency.unstable_reasons:
        flags.append("unstable")
    if latency.launch_bound:
        flags.append("launch_bound")
    summary = (measured.monitor or {}).get("summary") or {}
    if summary.get("throttled"):
        flags.append("throttled")
    if run.random_weights:
        flags.append("random_weights")
    reasons = list(latency.unstable_reasons)
    if summary.get("throttled"):
        reasons.append(f"throttled: {summary.get('throttled_why')}")
    fingerprint = None
    with contextlib.suppress(Exception):
        from harness.environment.fingerprint import fingerprint as make_fingerprint

        fingerprint = make_fingerprint(run.environment, runtime=run.cell.runtime.name,
                                       precision=run.cell.precision, settings=fields["settings"])
    return run.record(cast(Status, worst_status(flags)), reason="; ".join(reasons) or None, flags=flags,
                      latency=latency, fingerprint=fingerprint, **fields)


def serve_endpoint(run: CellRun, device: str) -> Record:
    """A server cell: the endpoint in a process of its own, driven level by level on loopback
    (harness.serve.scenario); its record carries the levels in `serve`."""
    from harness.serve.scenario import ScenarioEnded, run_server_scenario

    try:
        outcome = run_server_scenario(run.cell, run.run_dir, run.log, run.phase, nvml.parse_cuda_index(device))
    except ScenarioEnded as end:
        raise CellEnded(cast(Status, end.status), end.reason) from None
    run.random_weights = outcome.random_weights
    flags = [*outcome.flags, *(["random_weights"] if run.random_weights else [])]
    fingerprint = None
    with contextlib.suppress(Exception):
        from harness.environment.fingerprint import fingerprint as make_fingerprint

        fingerprint = make_fingerprint(run.environment, runtime=run.cell.runtime.name,
                                       precision=run.cell.precision, settings=outcome.settings)
    if outcome.failed:
        return run.record("failed", reason=outcome.failed, failure_kind="cell", flags=flags, prepare=outcome.prepare,
                          settings=outcome.settings, serve=outcome.serve, fingerprint=fingerprint)
    return run.record(worst_status(flags), reason="; ".join(outcome.reasons) or None, flags=flags,
                      prepare=outcome.prepare, settings=outcome.settings, monitor=outcome.monitor,
                      serve=outcome.serve, fingerprint=fingerprint)


# -- helpers of the steps ----------------------------------------------------------------------


def _timed_region(cell: Cell, stage_names: list[str], forward: str | None = None) -> str:
    if cell.scope == "model":
        if forward:
            return (
                f"model forward: {forward}; input already on the device in the runtime's dtype, outputs left "
                "on the device (no preprocessing or copies)"
            )
        return (
            "model forward only: input already on the device in the runtime's dtype, outputs left "
            "on the device (no preprocessing, copies or postprocessing)"
        )
    decode = "JPEG decode, " if cell.time_decode else ""
    inside = f"; infer holds {forward}" if forward else ""
    return (f"end to end: {decode}" + " -> ".join(stage_names)
            + " (images already decoded in memory)" * (not cell.time_decode) + inside)


def _batch_paths(dataset: Dataset, batch: int) -> list[Path]:
    """The dataset's first `batch` image files, the last repeated when the dataset is smaller."""
    paths = [dataset.image_path(i) for i in dataset.image_ids[:batch]]
    return paths + [paths[-1]] * (batch - len(paths))


def _sample_images(cell: Cell, dataset: Dataset | None) -> list[np.ndarray]:
    """The batch the end-to-end scope feeds: the dataset's first images, else a fixed synthetic
    640x480 image. Decoded once, outside the timed region."""
    if dataset is not None:
        from harness.accuracy.loader import decode_image

        return [decode_image(path) for path in _batch_paths(dataset, cell.batch)]
    import numpy as np

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    return [image] * cell.batch


def _with_decode_stage(stages: list[Stage], dataset: Dataset, batch: int) -> tuple[list[Stage], list[Path]]:
    """Put JPEG decoding inside the end-to-end timed region when the plan asks for it."""
    from harness.accuracy.loader import decode_image
    from harness.runtimes.base import Stage

    def decode(files: list[Path]) -> list[np.ndarray]:
        return [decode_image(path) for path in files]

    return [Stage("decode", decode), *stages], _batch_paths(dataset, batch)


def _keep_trace_small(monitor_data: dict[str, Any], run_dir: Path, cell_id: str, saved: dict[str, Any]) -> dict[str, Any]:
    """A long sustained run samples NVML tens of thousands of times: the full trace goes to
    its own file, the record keeps an evenly thinned copy for the report's charts."""
    trace = (monitor_data or {}).get("trace") or []
    if len(trace) <= MAX_TRACE_ROWS_IN_RECORD:
        return monitor_data
    rel = f"monitor/{cell_id}.json"
    files.write_new(run_dir / rel, dumps(trace), root=run_dir)
    saved["monitor_trace"] = rel
    step = len(trace) / MAX_TRACE_ROWS_IN_RECORD
    thinned = [trace[int(i * step)] for i in range(MAX_TRACE_ROWS_IN_RECORD)]
    return {**monitor_data, "trace": thinned, "trace_thinned_from": len(trace)}


def _save_raw_outputs(cell: Cell, runtime: Runtime, source: ModelSource, dataset: Dataset, run_dir: Path) -> str | None:
    """Raw outputs on the first agreement images, for tensor-level agreement with the reference."""
    from harness.accuracy.agreement import collect_raw_outputs, save_outputs_npz
    from harness.accuracy.loader import decode_image

    ids = list(dataset.image_ids[: cell.accuracy.agreement_images])
    if not ids:
        return None
    inputs, _ = source.preprocess([decode_image(dataset.image_path(i)) for i in ids], cell.resolution)
    rel = f"outputs/{cell.cell_id}.npz"
    save_outputs_npz(run_dir / rel, collect_raw_outputs(runtime.raw_outputs, inputs, cell.batch), ids)
    return rel


# -- the process around it ---------------------------------------------------------------------


def failure_kind(exc: BaseException) -> str:
    """`environmental` when the machine, not the cell, was at fault (a full disk, a run folder
    that refuses the write): a resume measures such a cell again. Otherwise `cell`."""
    return "environmental" if files.is_disk_full(exc) or isinstance(exc, files.UnsafePath) else "cell"


def run_unit(unit: WorkUnit, run_dir: Path, log: TextIO, phase: OnPhase, handover: bool = False,
             built_earlier: dict[str, Any] | None = None) -> Record:
    """The unit's record, whatever happens to the cell (an exception becomes a failed record),
    unless the process hands timing over after a build (ArtifactBuilt passes through)."""
    cell, repeat = unit.cell, unit.repeat
    files.confine(run_dir)
    files.confine(cell.resolve_path(cell.artifacts_dir))
    started_at = utc_now()
    try:
        return run_cell(cell, run_dir, log, phase, repeat=repeat, handover=handover, built_earlier=built_earlier)
    except ArtifactBuilt:
        raise
    except CellSkipped as exc:
        return outcome_record(cell, "skipped", str(exc), started_at, repeat=repeat)
    except UserError as exc:
        return outcome_record(cell, "failed", str(exc), started_at, failure_kind=failure_kind(exc), repeat=repeat)
    except Exception as exc:
        traceback.print_exc(file=log)
        return outcome_record(cell, "failed", f"{type(exc).__name__}: {exc}", started_at,
                              failure_kind=failure_kind(exc), repeat=repeat)


class Phase:
    """Writes the current phase to logs/<unit>.phase for the parent's live view."""

    def __init__(self, run_dir: Path, key: str):
        self.run_dir = run_dir
        self.path = run_dir / "logs" / f"{key}.phase"

    def __call__(self, name: str) -> None:
        with contextlib.suppress(OSError):  # the live view is no reason to stop a measurement
            files.write_replace(self.path, f"{name} {time.time():.3f}\n", root=self.run_dir, durable=False)


def _die_with_parent() -> None:
    """If the scheduler is killed (even SIGKILL), this worker must not live on and measure."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:
        os._exit(1)


def _inject_slowdown(runtime: Runtime, cell_id: str) -> None:
    """A deliberate slowdown for checking that `bench compare` catches one:
    BENCH_FAULT_INJECT=sleep_ms=0.8@<cell_id> adds a 0.8 ms host sleep inside every model call
    of that cell (inside the timed region: CUDA events see the device wait for it too)."""
    kind, _, target = os.environ.get(FAULT_ENV, "").partition("@")
    if not kind.startswith("sleep_ms=") or target != cell_id:
        return
    seconds = float(kind.removeprefix("sleep_ms=")) / 1000.0
    call = runtime.run_model

    def slowed(inputs: Any) -> Any:
        time.sleep(seconds)
        return call(inputs)

    runtime.run_model = slowed  # type: ignore[method-assign]


def _inject_fault(cell_id: str) -> None:
    """Deliberate faults for the isolation tests: BENCH_FAULT_INJECT=segfault@<cell_id>."""
    spec = os.environ.get(FAULT_ENV, "")
    kind, _, target = spec.partition("@")
    if not kind or target != cell_id:
        return
    if kind == "segfault":
        ctypes.string_at(0)
    elif kind == "abort":
        os.abort()
    elif kind == "hang":
        while True:
            time.sleep(1)
    elif kind == "raise":
        raise RuntimeError("fault injected by BENCH_FAULT_INJECT")
    elif kind == "oom":
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does
    elif kind == "enospc":
        import errno

        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "fault injected by BENCH_FAULT_INJECT")


def main(argv: list[str]) -> int:
    _die_with_parent()
    run_dir, unit_json, result_tmp = Path(argv[0]), Path(argv[1]), Path(argv[2])
    handover_path = Path(argv[3]) if len(argv) > 3 else None
    built_earlier = None
    if handover_path is not None and handover_path.is_file():  # this process takes over from a build
        built_earlier = json.loads(handover_path.read_text("utf-8"))
    unit = WorkUnit.model_validate_json(unit_json.read_text("utf-8"))
    hold_host_fixed(unit.cell)
    phase = Phase(run_dir, unit.key)
    try:
        record = run_unit(unit, run_dir, sys.stdout, phase, handover=handover_path is not None and built_earlier is None,
                          built_earlier=built_earlier)
    except ArtifactBuilt as built:
        sys.stdout.flush()
        assert handover_path is not None
        files.write_replace(handover_path, json.dumps(built.facts, default=str), root=run_dir)
        phase("built")
        return 0
    sys.stdout.flush()
    files.write_replace(result_tmp, dumps(record), root=run_dir)
    phase("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
