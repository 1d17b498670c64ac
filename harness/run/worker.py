"""One cell, in its own fresh process.

    python -m harness.run.worker RUN_DIR CELL_JSON RESULT_TMP

The parent (harness.run.scheduler) starts this with stdout and stderr going to the cell's log,
waits with a timeout, and turns a crash, an out-of-memory kill or a hang into a `failed` record
itself. Here, everything the cell can say for itself: skipped (with the runtime's reason),
failed (with the exception), or measured. The record goes to RESULT_TMP; the parent moves it
into the run folder, so a worker can never overwrite a finished result.

The phase (`prepare`, `warmup`, `measure`, `accuracy`) is written to logs/<cell>.phase for the
parent's live view.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from harness.environment import nvml
from harness.errors import CellSkipped, UserError
from harness.plan.cells import Cell
from harness.results import CellRecord, Prepare, Status, worst_status
from harness.run.record import cell_fields, outcome_record
from harness.run.store import RunStore, dumps, utc_now, write_new

FAULT_ENV = "BENCH_FAULT_INJECT"  # "<kind>@<cell_id>": tests of crash isolation (see _inject_fault)


def _die_with_parent() -> None:
    """If the scheduler is killed (even SIGKILL), this worker must not live on and measure."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() == 1:
        os._exit(1)


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


class Phase:
    def __init__(self, path: Path):
        self.path = path

    def __call__(self, name: str) -> None:
        with contextlib.suppress(OSError):
            self.path.write_text(f"{name} {time.time():.3f}\n")


def _timed_region(cell: Cell, stage_names: list[str]) -> str:
    if cell.scope == "model":
        return (
            "model forward only: input already on the device in the runtime's dtype, outputs left "
            "on the device (no preprocessing, copies or postprocessing)"
        )
    decode = "JPEG decode, " if cell.time_decode else ""
    return f"end to end: {decode}" + " -> ".join(stage_names) + " (images already decoded in memory)" * (not cell.time_decode)


def _batch_paths(dataset: Any, batch: int) -> list[Path]:
    """The dataset's first `batch` image files, the last repeated when the dataset is smaller."""
    paths = [dataset.image_path(i) for i in dataset.image_ids[:batch]]
    return paths + [paths[-1]] * (batch - len(paths))


def _sample_images(cell: Cell, dataset: Any) -> list[np.ndarray]:
    """The batch the end-to-end scope feeds: the dataset's first images, else a fixed synthetic
    640x480 image. Decoded once, outside the timed region."""
    if dataset is not None:
        from harness.accuracy.loader import decode_image

        return [decode_image(path) for path in _batch_paths(dataset, cell.batch)]
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    return [image] * cell.batch


def _plan_sha256(run_dir: Path) -> str | None:
    with contextlib.suppress(OSError, ValueError):
        return RunStore(run_dir).meta().get("plan_sha256")
    return None


def _capture_env(device: str, log: TextIO, run_dir: Path) -> dict[str, Any]:
    try:
        from harness.environment.capture import capture_environment

        return capture_environment([device], plan_sha256=_plan_sha256(run_dir))
    except Exception as exc:  # the environment never takes a measurement down
        log.write(f"environment capture failed: {exc!r}\n")
        return {"error": repr(exc)}


def run_cell(cell: Cell, run_dir: Path, log: TextIO, phase: Phase) -> dict[str, Any]:
    from harness.models.registry import source_class
    from harness.runtimes.pytorch.runtime import resolve_device
    from harness.runtimes.registry import runtime_class

    started_at = utc_now()
    base: dict[str, Any] = {**cell_fields(cell), "started_at": started_at}

    def finish(status: str, **fields: Any) -> dict[str, Any]:
        record = CellRecord(status=status, finished_at=utc_now(), **base, **fields)  # type: ignore[arg-type]
        return record.model_dump(mode="json")

    runtime_cls = runtime_class(cell.runtime.name)
    phase("check")
    if reason := runtime_cls.unavailable_reason(cell):
        env = _capture_env("cpu" if cell.device == "auto" else cell.device, log, run_dir)
        return finish("skipped", reason=reason, environment=env)

    device = cell.device
    if device == "auto":
        device = resolve_device(device)
    env = _capture_env(device, log, run_dir)

    phase("prepare")
    from harness.errors import WeightsUnavailable

    try:
        source = source_class(cell.source)(cell, log)
    except WeightsUnavailable as exc:
        return finish("failed", reason=str(exc), environment=env)
    random_weights = source.random_weights
    base["random_weights"] = random_weights
    runtime = runtime_cls(cell, source, log)
    try:
        prepare = runtime.prepare()
    except CellSkipped as exc:
        return finish("skipped", reason=str(exc), environment=env)
    except WeightsUnavailable as exc:
        return finish("failed", reason=str(exc), environment=env)
    source.load_metadata()
    _inject_fault(cell.cell_id)

    settings = runtime.settings()
    fingerprint = None
    with contextlib.suppress(Exception):
        from harness.environment.fingerprint import fingerprint as make_fingerprint

        fingerprint = make_fingerprint(env, runtime=cell.runtime.name, precision=cell.precision, settings=settings)

    # Accuracy data first (decoded outside any timed region); the same runtime object serves
    # the latency pass and the accuracy pass.
    dataset = None
    if cell.dataset is not None:
        from harness.accuracy.categories import check_mapping
        from harness.accuracy.datasets import load_dataset

        dataset = load_dataset(cell.dataset, Path(cell.plan_dir), cell.resolve_path(cell.artifacts_dir) / "datasets")
        # A dataset whose classes the model doesn't know is an error before anything is timed.
        mapping_check = check_mapping(source.class_names, dataset.categories, dataset.annotated_category_ids)
        if mapping_check.warning:
            log.write(f"class mapping: {mapping_check.warning}\n")

    gpu_index = nvml.parse_cuda_index(device)
    conditions = None
    if gpu_index is not None:
        from harness.environment.conditions import wait_for_gpu

        phase("wait_gpu")
        conditions = wait_for_gpu(gpu_index, cell.gpu, log)

    from harness.environment.monitor import GpuMonitor
    from harness.measure.protocol import measure, measure_stages
    from harness.measure.stats import build_latency
    from harness.measure.timers import make_timer

    monitor = GpuMonitor(gpu_index if cell.gpu.monitor else None, cell.gpu.monitor_interval_ms)

    def on_phase(name: str) -> None:
        monitor.phase(name)
        phase(name)

    monitor.start()
    try:
        stream = runtime.timer_stream()
        if cell.scope == "model":
            inputs = runtime.model_input()
            runtime.synchronize()
            timer = make_timer(stream)
            result = measure(lambda: runtime.run_model(inputs), cell.protocol, timer, on_phase=on_phase)
            stage_samples = None
            timer_name = timer.name
            stage_names: list[str] = []
        else:
            images: list[Any] = list(_sample_images(cell, dataset))
            stages = runtime.stages()
            stage_names = [s.name for s in stages]
            if cell.time_decode and dataset is not None:
                stages, images = _with_decode_stage(stages, dataset, cell.batch)
            result, stage_samples = measure_stages(
                stages, lambda: images, cell.protocol, stream, runtime.synchronize, on_phase=on_phase
            )
            timer_name = f"{result.timer_name} (stage boundaries synchronised)"
            if cell.time_decode:
                stage_names = ["decode", *stage_names]
    finally:
        monitor_data = monitor.stop()
    sustained = cell.protocol.sustained
    latency = build_latency(
        result,
        scope=cell.scope,
        timer_name=timer_name,
        timed_region=_timed_region(cell, stage_names),
        batch=cell.batch,
        stage_samples=stage_samples,
        window_s=sustained.window_s if sustained else None,
        monitor_trace=monitor_data.get("trace") if monitor_data else None,
        asynchronous_call=runtime.asynchronous_call,
    )

    flags: list[str] = []
    if latency.unstable_reasons:
        flags.append("unstable")
    if latency.launch_bound:
        flags.append("launch_bound")
    summary = (monitor_data or {}).get("summary") or {}
    if summary.get("throttled"):
        flags.append("throttled")
    if random_weights:
        flags.append("random_weights")
    reasons = list(latency.unstable_reasons)
    if summary.get("throttled"):
        reasons.append(f"throttled: {summary.get('throttled_why')}")

    accuracy = None
    files: dict[str, Any] = {}
    monitor_data = _keep_trace_small(monitor_data, run_dir, cell.cell_id, files)
    if cell.run_accuracy and dataset is not None:
        phase("accuracy")
        from harness.accuracy.evaluate import run_accuracy_pass

        det_path = run_dir / "detections" / f"{cell.cell_id}.json"
        accuracy = run_accuracy_pass(
            runtime.predict,
            cell.batch,
            dataset,
            source.class_names,
            source.family,
            det_path,
            evaluator=cell.accuracy.evaluator,
            workers=cell.accuracy.loader_workers,
            log=log,
            random_weights=random_weights,
        )
        files["detections"] = f"detections/{cell.cell_id}.json"
        outputs_path = _save_raw_outputs(cell, runtime, source, dataset, run_dir)
        if outputs_path:
            files["outputs"] = outputs_path
    if conditions:
        prepare["gpu_conditions"] = conditions
    runtime.close()
    status = worst_status(flags)
    return finish(
        status,
        reason="; ".join(reasons) or None,
        flags=flags,
        latency=latency,
        prepare=Prepare.from_runtime(prepare),
        settings=settings,
        accuracy=accuracy,
        monitor=monitor_data,
        environment=env,
        fingerprint=fingerprint,
        files=files,
    )


MAX_TRACE_ROWS_IN_RECORD = 2000


def _keep_trace_small(monitor_data: dict[str, Any], run_dir: Path, cell_id: str, files: dict[str, Any]) -> dict[str, Any]:
    """A long sustained run samples NVML tens of thousands of times: the full trace goes to
    its own file, the record keeps an evenly thinned copy for the report's charts."""
    trace = (monitor_data or {}).get("trace") or []
    if len(trace) <= MAX_TRACE_ROWS_IN_RECORD:
        return monitor_data
    (run_dir / "monitor").mkdir(exist_ok=True)
    rel = f"monitor/{cell_id}.json"
    write_new(run_dir / rel, dumps(trace))
    files["monitor_trace"] = rel
    step = len(trace) / MAX_TRACE_ROWS_IN_RECORD
    thinned = [trace[int(i * step)] for i in range(MAX_TRACE_ROWS_IN_RECORD)]
    return {**monitor_data, "trace": thinned, "trace_thinned_from": len(trace)}


def _with_decode_stage(stages: list[Any], dataset: Any, batch: int) -> tuple[list[Any], list[Path]]:
    """Put JPEG decoding inside the end-to-end timed region when the plan asks for it."""
    from harness.accuracy.loader import decode_image
    from harness.runtimes.base import Stage

    def decode(files: list[Path]) -> list[np.ndarray]:
        return [decode_image(path) for path in files]

    return [Stage("decode", decode), *stages], _batch_paths(dataset, batch)


def _save_raw_outputs(cell: Cell, runtime: Any, source: Any, dataset: Any, run_dir: Path) -> str | None:
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


def main(argv: list[str]) -> int:
    _die_with_parent()
    run_dir, cell_json, result_tmp = Path(argv[0]), Path(argv[1]), Path(argv[2])
    cell = Cell.model_validate_json(cell_json.read_text("utf-8"))
    phase = Phase(run_dir / "logs" / f"{cell.cell_id}.phase")
    log = sys.stdout
    started_at = utc_now()
    try:
        record = run_cell(cell, run_dir, log, phase)
    except (CellSkipped, UserError) as exc:
        status: Status = "skipped" if isinstance(exc, CellSkipped) else "failed"
        record = outcome_record(cell, status, str(exc), started_at)
    except Exception as exc:
        traceback.print_exc()
        record = outcome_record(cell, "failed", f"{type(exc).__name__}: {exc}", started_at)
    sys.stdout.flush()
    result_tmp.write_bytes(dumps(record))
    phase("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
