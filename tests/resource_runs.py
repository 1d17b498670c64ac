"""A finished GPU-like run with memory, energy and budgets, for the report's tests: the plan is
real (parsed and expanded), each process's record is built by the real producers (the latency
from harness.measure.stats, the GPU monitor's trace with its memory readings and energy
counter, harness.run.resources for the block), only the GPU readings themselves are scripted.
finalize then derives everything a run would (budgets included) and renders the report.

The figures, per model (budgets: p99 <= 12 ms, device memory <= 1500 MB, artifact <= 0.5 MB,
energy <= 2 J per image, mAP drop <= 0.5 points; det-b's own p99 <= 5 ms; gate on):

  det-a torch (reference)   ~8 ms, p99 < 12   NVML process 1200 MB      checkpoint 0.3 MB   1.5 J   -> ships
                                              (torch allocator 900 MB beside it: no context, no cache)
  det-a onnxruntime-cuda    ~6 ms, p99 < 12   NVML process 1700 MB      onnx 0.8 MB         1.0 J,  AP -1.0 pt -> does not ship
  det-b torch (reference)   ~8 ms, p99 > 5                                                        -> does not ship
  det-b onnxruntime-cuda    ~6 ms, p99 > 5    energy: no counter, no power -> not measured        -> does not ship
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from harness.environment.monitor import GpuMonitor
from harness.measure.protocol import MeasureResult
from harness.measure.stats import build_latency
from harness.plan.load import LoadedPlan, parse_plan
from harness.run.execute import finalize
from harness.run.record import new_record
from harness.run.resources import TorchPeak, host_memory_now, resources_block
from harness.run.scheduler import plan_units
from harness.run.store import RunStore, utc_now

PLAN = """
name: budgets-gpu
device: cuda:0
models:
  - {name: det-a, variant: nano, weights: weights/nano.pth}
  - name: det-b
    variant: nano
    weights: weights/nano.pth
    budgets: {latency_ms: {p99: 5}}
runtimes: [{name: torch, reference: true}, onnxruntime-cuda]
precisions: [fp32]
scopes: [model]
protocol: {repeats: 3, min_iterations: 200}
budgets:
  latency_ms: {p99: 12}
  device_memory_mb: 1500
  artifact_mb: 0.5
  energy_per_image_j: 2.0
  map_drop: 0.5
  gate: true
"""

MB = 1_000_000
# (model, runtime) -> median ms, device MB (NVML process; torch's allocator 300 MB less), J per image (None:
# no counter and no power), AP (0..1)
FIGURES: dict[tuple[str, str], tuple[float, int, float | None, float]] = {
    ("det-a", "torch"): (8.0, 1200, 1.5, 0.410),
    ("det-a", "onnxruntime-cuda"): (6.0, 1700, 1.0, 0.400),
    ("det-b", "torch"): (8.0, 1200, 1.5, 0.410),
    ("det-b", "onnxruntime-cuda"): (6.0, 1100, None, 0.409),
}


class _Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


class _TorchRuntime:
    def __init__(self, allocated: int) -> None:
        self.allocated = allocated

    def reset_device_memory_peak(self) -> None:
        pass

    def device_memory_peak(self) -> dict[str, int]:
        return {"allocated_bytes": self.allocated, "reserved_bytes": self.allocated + 200 * MB}


def _samples(median: float, n: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return [float(x) for x in median * np.exp(rng.normal(0.0, 0.03, n))]


def _monitor(device_mb: int, joules_per_image: float | None, images: int, measure_s: float) -> dict[str, Any]:
    """The monitor's result for one process: 20 ms samples, this process at `device_mb` in
    NVML's list, the counter advancing by `joules_per_image` x images over the phase."""
    clock = _Clock()
    counter = {"mj": 9_000_000.0}
    has_energy = joules_per_image is not None
    power = (joules_per_image or 0.0) * images / measure_s
    monitor = GpuMonitor(
        0, 20.0, clock=clock,
        sampler=lambda: (1980, 3201, 45.0, power if has_energy else None, 98, 40, 0),
        memory_sampler=lambda: (device_mb * MB, 2_000 * MB + device_mb * MB),
        energy_reader=(lambda: counter["mj"]) if has_energy else None,
    )
    monitor.phase("warmup")
    monitor.sample_now()
    clock.now += 0.02
    monitor.phase("measure")
    steps = int(measure_s / 0.02)
    for _ in range(steps):
        monitor.sample_now()
        clock.now += 0.02
        counter["mj"] += power * 0.02 * 1000.0
    monitor.phase("done")
    return monitor.stop()


def _accuracy(ap: float) -> dict[str, Any]:
    return {
        "images": 8, "evaluator": "pycocotools 2.0.10", "primary": "bbox",
        "bbox": {"AP": ap, "AP50": ap + 0.2, "AP75": ap - 0.05}, "per_class": {"person": ap},
        "predict_images_per_s": 50.0, "wall_images_per_s": 40.0, "predict_s": 0.16, "wall_s": 0.2, "eval_s": 0.05,
        "batch": 1, "padded_images": 0, "detections": 80, "results_file": "detections/x.json",
        "dataset": {"annotations": "datasets/sample/annotations.json", "fingerprint": "0123456789abcdef"},
        "random_weights": False,
    }


def build(base: Path, plan_text: str = PLAN,
          figures: dict[tuple[str, str], tuple[float, int, float | None, float]] | None = None) -> tuple[Path, LoadedPlan]:
    """The run folder, finalized (results.json, report.html, summary.md, results.csv);
    `figures` replaces FIGURES' entries."""
    table = {**FIGURES, **(figures or {})}
    base.mkdir(parents=True, exist_ok=True)
    weights = base / "weights" / "nano.pth"
    weights.parent.mkdir(exist_ok=True)
    weights.write_bytes(b"w" * 300_000)
    onnx_file = base / "model.onnx"
    onnx_file.write_bytes(b"o" * 800_000)
    loaded = parse_plan(plan_text, "plan.yaml", base, check_paths=False)
    store = RunStore.create(base / "reports", loaded.plan.name, plan_text,
                            {"cell_ids": [c.cell_id for c in loaded.cells], "plan_dir": str(base)})
    for i, unit in enumerate(plan_units(loaded.cells)):
        cell = unit.cell
        median, device_mb, joules, ap = table[(cell.model.name, cell.runtime.name)]
        samples = _samples(median, 200, seed=i)
        measure_s = sum(samples) / 1000.0
        result = MeasureResult(samples_ms=samples, host_samples_ms=samples,
                               sample_start_s=list(np.cumsum([0.0, *samples[:-1]]) / 1000.0),
                               warmup_iterations=10, warmup_s=0.1, measure_s=measure_s,
                               stop_reason="min_iterations_and_min_seconds", timer_name="cuda_event")
        monitor = _monitor(device_mb, joules, len(samples), measure_s)
        latency = build_latency(result, scope="model", timer_name="cuda_event", timed_region="model forward only",
                                batch=1, monitor_trace=monitor["trace"])
        torch = cell.runtime.name == "torch"
        peak = None
        if torch:
            peak = TorchPeak(_TorchRuntime((device_mb - 300) * MB))  # type: ignore[arg-type]
            peak.phase("measure")
            peak.phase("done")
        prepare = {"model": {"weights": str(weights), "preprocess": {"resize": "stretch", "mean": [0.485, 0.456, 0.406],
                                                                     "std": [0.229, 0.224, 0.225], "channel_order": "rgb",
                                                                     "value_scale": 255.0}}}
        if not torch:
            prepare["artifact"] = {"path": str(onnx_file)}
        resources = resources_block(
            device="cuda:0", images=len(samples), prepare=prepare,
            baseline={"process_baseline_bytes": 0, "device_used_baseline_bytes": 2_000 * MB},
            torch_peak=peak, monitor=monitor, rapl=None, measure_s=measure_s,
            # A worker's figure, fixed: this test process's own RSS would differ between runs.
            host_after_measure={**host_memory_now(), "peak_rss_bytes": 900 * MB},
        )
        fields: dict[str, Any] = {"repeat": unit.repeat, "latency": latency, "monitor": monitor, "resources": resources,
                                  "prepare": prepare}
        if unit.repeat in (None, 0):
            fields["accuracy"] = _accuracy(ap)
        store.write_cell(new_record(cell, "ok", utc_now(), **fields).model_dump(mode="json"))
    finalize(store, loaded)
    return store.run_dir, loaded
