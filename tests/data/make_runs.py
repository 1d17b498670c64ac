"""Build the golden run folders in tests/data/runs/ (deterministic: fixed seeds, fixed times).

    PYTHONPATH=. python tests/data/make_runs.py

The runs imitate what `bench run` writes (docs/CONTRACTS.md) with every kind of cell the report
must handle: ok, unstable, throttled, skipped (with its reason), failed (with a log tail),
accuracy_regression (with a gallery), end_to_end with stages, a sustained cell with windows and
a GPU monitor trace, random weights, and a model whose name is hostile HTML. The shapes follow
the real producers: the environment is laid out as harness.environment.capture returns it, the
fingerprint is harness.environment.fingerprint's, the monitor summary is
harness.environment.monitor.summarize's, `derived` carries what harness.accuracy.derive and
harness.run.execute.finalize write (role/reference, deltas, gate, gallery, effective status),
and every record is validated against the results model (harness.results) after migration.

The runs are written in results schema version 1 on purpose, and stay so: they are the fixtures
of the migration to the current schema (a file of an older harness must read as a new one).

  gpu-demo       an H100 run of four RF-DETR models plus a hostile-named ONNX model
  t4-published   a run under RF-DETR's published conditions (T4, TensorRT 10.4, CUDA 12.4, FP16)
  deploy-predict the deployment plan's shape: the fp32 reference is rfdetr's predict(), which has
                 only the end_to_end scope; exact speed-ups (2.00x, 1.25x) for the throughput table
  cpu-quick-a    the quickstart on a CPU, twice: the same plan run two times (for compare);
  cpu-quick-b    b has no results.json, so it is rebuilt from run.json + cells/
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from harness.results import load_cell_record, load_results, load_run_meta, worst_status

# The schema version these files are written in (see the module docstring): not the current one.
SCHEMA_VERSION = 1

HERE = Path(__file__).parent / "runs"
HOSTILE = "<script>alert(1)</script>"
RANDOM_NOTE = (
    "random weights: this model was built without trained weights, so its mAP is meaningless "
    "(near 0); the pipeline ran end to end, but compare latencies only"
)


# ----------------------------------------------------------------------------- numbers


def stats(samples: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """What harness.measure.stats.summarize derives: the same fields, computed with numpy."""
    a = np.asarray(samples, dtype=float)
    rng = np.random.default_rng(seed)
    boot = np.median(rng.choice(a, size=(400, len(a)), replace=True), axis=1)
    lo, hi = np.percentile(boot, [2.5, 97.5])
    med = float(np.median(a))
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if len(a) > 1 else 0.0
    p = np.percentile(a, [50, 90, 95, 99])
    return {
        "count": int(len(a)), "mean": round(mean, 6), "std": round(std, 6),
        "min": round(float(a.min()), 6), "max": round(float(a.max()), 6),
        "p50": round(float(p[0]), 6), "p90": round(float(p[1]), 6), "p95": round(float(p[2]), 6),
        "p99": round(float(p[3]), 6), "cov": round(std / mean, 6),
        "median_ci95": [round(float(lo), 6), round(float(hi), 6)],
        "median_ci_rel_width": round(float((hi - lo) / med), 6),
    }


def latency_samples(rng: np.random.Generator, median: float, n: int = 300, spread: float = 0.02,
                    spikes: float = 0.01, bimodal: float = 0.0) -> np.ndarray:
    """Right-skewed latency: a lognormal body, a few spikes, optionally a second mode."""
    body = median * np.exp(rng.normal(0.0, spread, n))
    spike = rng.random(n) < spikes
    body[spike] *= 1 + rng.exponential(0.25, spike.sum())
    if bimodal:
        second = rng.random(n) < bimodal
        body[second] *= 1.22
    return np.round(body, 4)


# ----------------------------------------------------------------------------- environments


def environment(kind: str, captured_at: str, temperature: float, device: str) -> dict[str, Any]:
    """An environment in the shape harness.environment.capture.capture_environment returns."""
    reasons: dict[str, str] = {}
    container: dict[str, Any] = {
        "in_container": True, "image_name": "ghcr.io/detbench/harness", "image_tag": "0.1.0-gpu", "image_flavour": "gpu",
        "base_image_digest": "sha256:4b1c0f6e2d9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c",
        "lockfile_sha256": "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d",
    }
    gpus: list[dict[str, Any]] = []
    if kind == "cpu":
        hostname, kernel, cpu_model, cores, memory = "ci-runner-7", "6.1.0-31-amd64", "AMD EPYC 7B13", 2, 24 * 2**30
        packages: dict[str, Any] = {"torch": "2.14.1", "onnxruntime": "1.24.2", "tensorrt": None}
        distributions: dict[str, Any] = {"onnxruntime": "onnxruntime", "tensorrt": None}
        cuda: dict[str, Any] = {"source": None, "runtime": None, "cudnn": None, "cudnn_raw": None, "torch_cuda_available": None}
        nvidia: dict[str, Any] = {"driver_version": None, "cuda_driver_version": None, "nvml_version": None, "gpu_count": None}
        reasons["gpus"] = reasons["nvidia"] = "NVML could not start: NVML Shared Library Not Found"
        container = {k: None for k in container} | {"in_container": False}
    else:
        t4 = kind == "t4"
        if t4:
            hostname, kernel, cpu_model, cores, memory = "t4-bench", "5.15.0-1064-gcp", "Intel(R) Xeon(R) CPU @ 2.20GHz", 8, 15 * 2**30
        else:
            hostname, kernel, cpu_model, cores, memory = "h100-node-3", "6.8.0-85-generic", "Intel(R) Xeon(R) Platinum 8480+", 16, 128 * 2**30
        packages = ({"torch": "2.4.1+cu124", "onnxruntime": "1.19.2", "tensorrt": "10.4.0.26"} if t4 else
                    {"torch": "2.9.1+cu130", "onnxruntime": "1.23.2", "tensorrt": "10.13.3.9"})
        distributions = {"onnxruntime": "onnxruntime-gpu", "tensorrt": "tensorrt-cu12" if t4 else "tensorrt-cu13"}
        cuda = {"source": "torch", "runtime": "12.4" if t4 else "13.0", "cudnn": "9.1.0" if t4 else "9.13.0",
                "cudnn_raw": 90100 if t4 else 91300, "torch_cuda_available": True}
        nvidia = {"driver_version": "550.54.15" if t4 else "580.95.05", "cuda_driver_version": "12.4" if t4 else "13.0",
                  "nvml_version": "12.550.54.15" if t4 else "13.580.95.05", "gpu_count": 1 if t4 else 8}
        sm_max, mem, power = (1590, 5001, 70.0) if t4 else (1980, 2619, 700.0)
        gpus = [{
            "cuda_index": int(device.split(":")[1]), "mapping": "CUDA_VISIBLE_DEVICES unset: CUDA index = NVML index",
            "name": "Tesla T4" if t4 else "NVIDIA H100 80GB HBM3",
            "uuid": "GPU-5e0c5a1e-77f1-4d2e-9c1b-1c0ffee00004" if t4 else "GPU-8f2d6c3a-1b5e-4f7a-9d0c-2b3e4f5a6b7c",
            "pci_bus_id": "00000000:00:04.0" if t4 else "00000000:18:00.0",
            "memory_total_bytes": 16 * 2**30 if t4 else 80 * 2**30, "compute_capability": "7.5" if t4 else "9.0",
            "vbios_version": "90.04.96.00.01" if t4 else "96.00.99.00.01",
            "power_limit_w": {"current": power, "default": power, "enforced": power, "min": power / 2, "max": power},
            "persistence_mode": True, "ecc_mode": {"current": True, "pending": True},
            "mig_mode": {"current": False, "pending": False}, "performance_state": "P0", "temperature_c": temperature,
            "clocks_mhz": {"sm": sm_max, "mem": mem}, "max_clocks_mhz": {"sm": sm_max, "mem": mem},
            "applications_clocks_mhz": {"graphics": sm_max, "mem": mem},
            "default_applications_clocks_mhz": {"graphics": sm_max, "mem": mem},
            "max_customer_boost_clock_mhz": sm_max, "clock_event_reasons": 0, "clock_event_reason_names": [],
            "clocks_locked": False, "clocks_locked_evidence": ["applications clocks at their defaults"],
            "clocks_locked_how": "applications clocks compared with their defaults", "reasons": {},
        }]
    return {
        "schema_version": 1,
        "captured_at": captured_at,
        "hostname": hostname,
        "devices": [device],
        "os": {"system": "Linux", "kernel": kernel, "version": "#1 SMP PREEMPT_DYNAMIC",
               "distribution": "Ubuntu 24.04.1 LTS", "machine": "x86_64", "libc": "glibc 2.39"},
        "cpu": {"model": cpu_model, "architecture": "x86_64", "logical_cores": cores, "physical_cores": cores,
                "available_cores": cores, "cgroup_cpu_limit": None, "scaling_governor": None},
        "memory": {"total_bytes": memory, "available_bytes": memory - 2**30 - int(temperature * 2**20),
                   "cgroup_limit_bytes": None},
        "python": {"version": "3.11.11", "implementation": "CPython", "executable": "/usr/local/bin/python"},
        "harness": {"version": "0.1.0", "path": "/opt/harness/harness", "git_commit": "02236ce4f1a9",
                    "git_dirty": False, "git_source": "git checkout"},
        "packages": {"torchvision": "0.24.1", "onnx": "1.20.1", "rfdetr": "1.11.2", "pycocotools": "2.0.10",
                     "numpy": "2.3.5", **packages},
        "distributions": {"torch": "torch", "rfdetr": "rfdetr", **distributions},
        "cuda": cuda,
        "nvidia": nvidia,
        "gpus": gpus,
        "container": container,
        "env_vars": {"CUDA_VISIBLE_DEVICES": None, "CUDA_LAUNCH_BLOCKING": None, "OMP_NUM_THREADS": None},
        "plan_sha256": "cec77285ce0f" + "0" * 52,
        "warnings": [],
        "reasons": reasons,
    }


def fingerprint(env: dict[str, Any], runtime: str, precision: str, settings: dict[str, Any]) -> str:
    from harness.environment.fingerprint import fingerprint as real_fingerprint

    return real_fingerprint(env, runtime=runtime, precision=precision, settings=settings)


def monitor_block(trace: list[dict[str, Any]]) -> dict[str, Any]:
    """What harness.environment.monitor.GpuMonitor.stop() returns, summary included."""
    from harness.environment.monitor import summarize

    return {"available": True, "reason": None, "interval_ms": 100.0, "device_index": 0, "device": {},
            "unsupported": {}, "sample_errors": 0, "t_s_origin": "measure", "trace": trace,
            "summary": summarize(trace)}


# ----------------------------------------------------------------------------- cells


PROTOCOL = {"warmup_iterations": 10, "warmup_seconds": 1.0, "min_iterations": 100, "min_seconds": 3.0,
            "max_iterations": 100000, "max_seconds": 600.0, "pause_ms": 0.0, "sustained": None}


def cell_id(model: str, runtime: str, precision: str, batch: int, res: int, scope: str) -> str:
    slug = "".join(c if c.isalnum() or c in "-." else "-" for c in model)
    return "__".join([slug, runtime, precision, f"b{batch}", f"r{res}", scope])


class RunBuilder:
    def __init__(self, name: str, plan_name: str, env_kind: str, start: str, description: str = ""):
        self.folder = HERE / name
        self.plan_name = plan_name
        self.env_kind = env_kind
        self.description = description
        self.clock = datetime.fromisoformat(start.replace("Z", "+00:00"))
        self.started_at = self._iso(self.clock)
        self.records: list[dict[str, Any]] = []
        self.derived: dict[str, Any] = {}
        self.files: dict[str, bytes] = {}
        self.temperature = 36.0

    @staticmethod
    def _iso(t: datetime) -> str:
        return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

    def add(self, model: dict[str, Any], runtime: str, precision: str, batch: int, res: int, scope: str,
            status: str = "ok", *, samples: np.ndarray | None = None, reason: str | None = None,
            flags: list[str] | None = None, accuracy: dict[str, Any] | None = None,
            derived: dict[str, Any] | None = None, reference: bool = False, protocol: dict[str, Any] | None = None,
            stages: dict[str, np.ndarray] | None = None, windows: list[dict[str, Any]] | None = None,
            monitor: dict[str, Any] | None = None, log_tail: str | None = None, timer: str | None = None,
            settings: dict[str, Any] | None = None, device: str | None = None, unstable_reasons: list[str] | None = None,
            gallery: int = 0, dataset: dict[str, Any] | None = None, runtime_label: str | None = None,
            resumed: bool = False) -> str:
        rt_key = runtime_label or runtime
        cid = cell_id(model["name"], rt_key, precision, batch, res, scope)
        device = device or ("cpu" if self.env_kind == "cpu" else "cuda:0")
        proto = {**PROTOCOL, **(protocol or {})}
        started = self.clock
        self.clock += timedelta(seconds=37 + 11 * len(self.records))
        self.temperature += 1.5
        env = environment(self.env_kind, self._iso(started), round(self.temperature, 1), device)
        if resumed:  # cells finished by `bench run --resume` after a code change
            env["harness"] = {**env["harness"], "git_commit": "5c1d9e07a2b3", "git_dirty": True}
        cell = {
            "cell_id": cid, "model": model,
            "runtime": {"name": runtime, "label": runtime_label, "settings": {}, "reference": reference},
            "precision": precision, "batch": batch, "resolution": res, "scope": scope, "device": device,
            "protocol": proto, "dataset": dataset if dataset is not None else {"sample": False, "images": "coco/val2017",
                                                                              "annotations": "coco/annotations/instances_val2017.json",
                                                                              "subset": {"mode": "first", "n": 500, "seed": 0}},
            "accuracy": {"enabled": True, "max_map_drop": 1.0, "gate": True, "agreement_images": 8, "gallery_images": 2},
            "timeout_s": 1800.0, "artifacts_dir": "artifacts", "plan_dir": "/plans", "time_decode": False,
            "run_accuracy": scope == "model", "is_reference": reference,
        }
        latency = None
        if samples is not None:
            st = stats(samples)
            stage_block = None
            if stages:
                stage_block = {k: {"samples_ms": [float(x) for x in v], "stats": stats(v)} for k, v in stages.items()}
            latency = {
                "scope": scope,
                "timer": timer or ("perf_counter" if device == "cpu" else "cuda_event"),
                "timed_region": (
                    "decoded RGB image in, detections out: resize + normalise, host-to-device copy, "
                    "forward pass, device-to-host copy, decode and top-k"
                    if scope == "end_to_end" else
                    "forward pass only: prepared input already on the device, outputs left on the device"
                ),
                "samples_ms": [float(x) for x in samples],
                "host_samples_ms": None,
                "stats": st,
                "warmup_iterations": proto["warmup_iterations"], "warmup_s": 1.02,
                "measure_s": round(float(np.sum(samples)) / 1000 + len(samples) * proto["pause_ms"] / 1000, 3),
                "stop_reason": "sustained" if windows else "min_iterations_and_min_seconds",
                "batch": batch,
                "throughput_ips": round(batch / st["p50"] * 1000, 3),
                "stages": stage_block, "windows": windows,
                "unstable_reasons": unstable_reasons or [], "launch_bound": False,
            }
        files: dict[str, str] = {"log": f"logs/{cid}.log"}
        self.files[files["log"]] = (log_tail or f"[{cid}] done\n").encode()
        if accuracy is not None:
            files["detections"] = f"detections/{cid}.json"
        if gallery and derived is not None:
            # finalize draws the gallery after all cells ran and lists it in derived
            derived["gallery"] = [f"gallery/{cid}-{k}.jpg" for k in range(1, gallery + 1)]
            for k, rel in enumerate(derived["gallery"]):
                self.files[rel] = gallery_jpeg(seed=len(self.records) * 10 + k)
        record: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION, "cell_id": cid, "cell": cell, "status": status, "reason": reason,
            "flags": flags or ([] if status in ("ok", "skipped", "failed") else [status]),
            "started_at": self._iso(started), "finished_at": self._iso(self.clock),
            "random_weights": model.get("weights") == "random",
            "latency": latency,
            "prepare": {} if samples is None else {"export_s": 21.4, "build_s": 96.0 if runtime == "tensorrt" else None,
                                                    "artifact": {"path": f"artifacts/{cid}.onnx", "sha256": hashlib.sha256(cid.encode()).hexdigest()}},
            "settings": settings or {},
            "accuracy": accuracy, "agreement": None, "monitor": monitor,
            "environment": env, "fingerprint": fingerprint(env, runtime, precision, settings or {}),
            "log_tail": log_tail, "files": files,
        }
        load_cell_record(record, cid)  # raises unless it migrates to a valid current record
        self.records.append(record)
        entry: dict[str, Any] = derived if derived is not None else (
            {"role": "reference", "random_weights": record["random_weights"]} if reference and accuracy is not None else {}
        )
        if entry.get("role") == "reference" and record["random_weights"]:
            entry["note"] = RANDOM_NOTE
        # finalize's effective status: the worst of the record's flags and a tripped gate
        marks = list(record["flags"]) + ([status] if status in ("failed", "skipped") else [])
        if (entry.get("gate") or {}).get("regressed"):
            marks.append("accuracy_regression")
        entry["status"] = worst_status(marks) if marks else status
        self.derived[cid] = entry
        return cid

    def clock_start_id(self) -> str:
        """`<start time>-<6 hex>`, the run id format of docs/CONTRACTS.md."""
        start = datetime.fromisoformat(self.started_at.replace("Z", "+00:00"))
        return start.strftime("%Y%m%dT%H%M%SZ") + "-" + hashlib.sha256(self.folder.name.encode()).hexdigest()[:6]

    def write(self, with_results: bool = True) -> None:
        if self.folder.exists():
            shutil.rmtree(self.folder)
        (self.folder / "cells").mkdir(parents=True)
        plan_text = f"name: {self.plan_name}\n# golden test plan\n"
        run = {
            "schema_version": SCHEMA_VERSION, "run_id": self.clock_start_id(),
            "plan_name": self.plan_name, "description": self.description,
            "plan_sha256": hashlib.sha256(plan_text.encode()).hexdigest(),
            "started_at": self.started_at, "harness_version": "0.1.0", "plan_file": "plans/golden.yaml",
            "plan_dir": "/plans", "cell_ids": [r["cell_id"] for r in self.records],
        }
        load_run_meta(run, "run.json")
        (self.folder / "plan.yaml").write_text(plan_text)
        (self.folder / "run.json").write_text(json.dumps(run, indent=1) + "\n")
        run["finished_at"] = self._iso(self.clock)
        for r in self.records:
            (self.folder / "cells" / f"{r['cell_id']}.json").write_text(json.dumps(r, separators=(",", ":")) + "\n")
        for rel, data in self.files.items():
            (self.folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.folder / rel).write_bytes(data)
        (self.folder / "finished.json").write_text(json.dumps({"finished_at": run["finished_at"]}) + "\n")
        if with_results:
            run = {**run, "harness_version_finalized": "0.1.0"}
            results = {"schema_version": SCHEMA_VERSION, "run": run, "cells": self.records, "derived": self.derived}
            load_results(results, "results.json")
            (self.folder / "results.json").write_text(json.dumps(results, separators=(",", ":")) + "\n")


def gallery_jpeg(seed: int, size: tuple[int, int] = (400, 300)) -> bytes:
    """A synthetic scene with reference boxes (green) and the cell's boxes (magenta)."""
    import io

    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    img = Image.new("RGB", size)
    px = np.zeros((h, w, 3), dtype=np.uint8)
    px[..., 0] = np.linspace(40, 120, w, dtype=np.uint8)[None, :]
    px[..., 1] = np.linspace(60, 140, h, dtype=np.uint8)[:, None]
    px[..., 2] = 150
    img = Image.fromarray(px)
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x, y = int(rng.integers(10, w - 110)), int(rng.integers(10, h - 90))
        bw, bh = int(rng.integers(40, 100)), int(rng.integers(30, 80))
        color = tuple(int(c) for c in rng.integers(120, 255, 3))
        draw.ellipse([x, y, x + bw, y + bh], fill=color)
        draw.rectangle([x - 2, y - 2, x + bw + 2, y + bh + 2], outline=(0, 220, 80), width=3)
        dx, dy = int(rng.integers(-14, 15)), int(rng.integers(-12, 13))
        draw.rectangle([x + dx, y + dy, x + bw + dx, y + bh + dy], outline=(230, 0, 200), width=2)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=78)
    return out.getvalue()


def accuracy_block(ap: float, images: int = 500, segm: float | None = None, ips: float = 85.0,
                   random_weights: bool = False) -> dict[str, Any]:
    """What harness.accuracy.evaluate.run_accuracy_pass returns (pycocotools' 0..1 scale)."""
    per_class = {"person": round(ap * 1.1, 4), "car": round(ap * 0.9, 4), "dog": round(ap * 1.2, 4)}
    bbox: dict[str, Any] = {
        "AP": ap, "AP50": round(ap * 1.4, 4), "AP75": round(ap * 1.08, 4), "AP_small": round(ap * 0.55, 4),
        "AP_medium": round(ap * 1.1, 4), "AP_large": round(ap * 1.35, 4), "AR1": round(ap * 0.8, 4),
        "AR10": round(ap * 1.3, 4), "AR100": round(min(ap * 1.45, 1), 4), "AR_small": None,
        "AR_medium": round(ap * 1.4, 4), "AR_large": round(ap * 1.5, 4), "per_class": per_class,
    }
    block: dict[str, Any] = {
        "images": images, "evaluator": "pycocotools 2.0.10", "primary": "segm" if segm is not None else "bbox",
        "bbox": bbox, "per_class": per_class, "images_per_s": ips, "wall_images_per_s": ips * 0.97,
        "predict_s": images / ips, "wall_s": images / ips / 0.97, "eval_s": 4.1, "batch": 1, "padded_images": 0,
        "detections": images * 100, "results_file": "detections/x.json",
        "dataset": {"annotations": "coco/annotations/instances_val2017.json", "images_dir": "coco/val2017",
                    "fingerprint": f"coco-val2017-{images}"},
        "random_weights": random_weights,
    }
    if segm is not None:
        block["segm"] = {"AP": segm, "AP50": round(segm * 1.5, 4), "AP75": round(segm * 1.05, 4), "per_class": per_class}
    return block


def derived_block(reference: str, delta: float, regressed: bool = False, random_weights: bool = False) -> dict[str, Any]:
    """What harness.accuracy.derive.derive_accuracy writes for a compared cell (AP points)."""
    deltas = {"AP": delta, "AP50": round(delta * 1.2, 2), "AP75": round(delta * 1.1, 2)}
    entry: dict[str, Any] = {
        "reference": reference,
        "random_weights": random_weights,
        "primary": "bbox",
        "deltas": {"bbox": deltas},
        "map_delta": deltas,
        "per_class_delta": {"person": round(delta * 0.8, 2), "car": round(delta * 1.6, 2),
                            "traffic light": round(delta * 2.9, 2), "dog": round(delta * 0.2, 2),
                            "bicycle": round(delta * 2.1, 2), "clock": round(delta * 0.5, 2)},
        "detection_agreement": {
            "images": 500, "iou_threshold": 0.5, "min_score": 0.3, "reference_detections": 2400,
            "other_detections": 2400 + int(delta * 40), "matched": 2400 + int(delta * 60),
            "match_rate": round(1 + delta / 40, 4), "mean_iou": round(0.99 + delta / 200, 4),
            "min_iou": round(0.9 + delta / 50, 4), "mean_abs_score_diff": round(abs(delta) / 200 + 0.001, 4),
            "max_abs_score_diff": round(abs(delta) / 40 + 0.004, 4),
            "worst_images": [{"image_id": 139, "disagreement": round(abs(delta) / 5, 4)}],
        },
        "raw_agreement": {
            "atol": 1e-05, "rtol": 1e-05, "only_in_reference": [], "only_in_other": [],
            "outputs": {name: {"shape": [1, 300, 4], "max_abs_diff": round(abs(delta) / 10 + 0.002, 4),
                               "passed": False} for name in ("dets", "labels")},
            "passed": False,
        },
    }
    gate: dict[str, Any] = {"max_map_drop": 1.0, "drop": -delta, "regressed": regressed}
    if random_weights:
        entry["note"] = RANDOM_NOTE
        gate = {**gate, "regressed": False, "reason": "not gated: random weights make mAP meaningless"}
    entry["gate"] = gate
    return entry


def trt_settings(version: str, precision: str) -> dict[str, Any]:
    """Settings read back from a TensorRT runtime, in the shape of harness.runtimes.tensorrt.runtime."""
    return {
        "precision": precision,
        "versions": {"tensorrt": version, "onnx_parser": version, "torch": "2.9.1+cu130", "cuda_runtime_torch": "13.0"},
        "builder": {"optimization_level": 3, "fp16": precision != "fp32", "int8": precision == "int8",
                    "calibration_images": 500 if precision == "int8" else None, "workspace_bytes": 4 * 2**30},
        "engine": {"sha256": hashlib.sha256(f"{version}{precision}".encode()).hexdigest(), "cache_hit": True},
        "runtime": {"execute": "IExecutionContext.execute_async_v3", "cuda_graph": {"enabled": False}},
    }


def e2e(parts: tuple[np.ndarray, dict[str, np.ndarray]]) -> dict[str, Any]:
    """add()'s samples and stages keywords for an end_to_end cell."""
    total, stages = parts
    return {"samples": total, "stages": stages}


def e2e_stages(rng: np.random.Generator, infer: float, n: int = 300) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    parts = {
        "preprocess": latency_samples(rng, 1.9, n, 0.05),
        "h2d": latency_samples(rng, 0.21, n, 0.04),
        "infer": latency_samples(rng, infer, n, 0.02),
        "d2h": latency_samples(rng, 0.05, n, 0.05),
        "postprocess": latency_samples(rng, 0.42, n, 0.05),
    }
    total = np.round(sum(parts.values()) + latency_samples(rng, 0.18, n, 0.1), 4)
    return total, parts


# ----------------------------------------------------------------------------- runs


def gpu_demo() -> None:
    rng = np.random.default_rng(7)
    run = RunBuilder("gpu-demo", "h100-deployment", "h100", "2026-03-02T10:00:00Z",
                     description="Deployment check on an H100 <img src=x onerror=alert(2)> (golden test run)")
    nano = {"name": "rfdetr-nano", "source": "rfdetr", "variant": "nano", "weights": "cache"}
    trt = trt_settings("10.13.3.9", "fp16")
    ref = run.add(nano, "torch", "fp32", 1, 384, "model", samples=latency_samples(rng, 4.82), reference=True,
                  accuracy=accuracy_block(0.482), settings={"torch_version": "2.9.1+cu130", "cudnn_benchmark": False, "tf32": False})
    run.add(nano, "torch", "fp32", 1, 384, "end_to_end", reference=True, timer="cuda_event",
            **e2e(e2e_stages(rng, 4.85)))
    run.add(nano, "tensorrt", "fp16", 1, 384, "model", samples=latency_samples(rng, 1.61, spread=0.012),
            accuracy=accuracy_block(0.481), derived=derived_block(ref, -0.1), settings=trt)
    run.add(nano, "tensorrt", "fp16", 1, 384, "end_to_end", settings=trt,
            **e2e(e2e_stages(rng, 1.63)))
    run.add(nano, "onnxruntime-cuda", "fp16", 1, 384, "model", "unstable",
            samples=latency_samples(rng, 2.95, spread=0.05, spikes=0.04, bimodal=0.3),
            reason="CoV 9.8% exceeds 5%; median's 95% CI is 2.4% of the median (limit 2%)",
            unstable_reasons=["CoV 9.8% > 5%", "median CI width 2.4% > 2%"],
            accuracy=accuracy_block(0.479), derived=derived_block(ref, -0.3),
            settings={"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"], "onnxruntime_version": "1.23.2"})
    # INT8: the cell itself ran fine; the accuracy gate trips afterwards (finalize marks it).
    run.add(nano, "tensorrt", "int8", 1, 384, "model", samples=latency_samples(rng, 1.18, spread=0.015),
            accuracy=accuracy_block(0.437), derived=derived_block(ref, -4.5, regressed=True),
            settings=trt_settings("10.13.3.9", "int8"), gallery=2)
    # Batch 8 at the power limit: sw_power_cap in about a third of the samples.
    capped = monitor_block([
        {"t_s": round(i * 0.02, 3), "phase": "warmup" if i < 20 else "measure", "sm_mhz": 1980 if i % 3 else 1725,
         "mem_mhz": 2619, "temp_c": 61.0, "power_w": 699.0, "util_gpu": 100, "util_mem": 41,
         "clock_event_reasons": 0 if i % 3 else 0x004} for i in range(120)])
    run.add(nano, "tensorrt", "fp16", 8, 384, "model", "throttled", samples=latency_samples(rng, 6.9, spread=0.03),
            reason=capped["summary"]["throttled_why"], monitor=capped,
            accuracy=accuracy_block(0.481), derived=derived_block(ref, -0.1), settings=trt)
    # A sustained soak: 60 s in 5 s windows, with the monitor's trace; thermal slowdown after 30 s.
    soak = {"name": "rfdetr-nano-soak", "source": "rfdetr", "variant": "nano", "weights": "cache",
            "protocol": {"sustained": {"duration_s": 60.0, "window_s": 5.0}}}
    t = np.round(np.arange(0, 60, 0.1), 2)
    clock = np.where(t < 28, 1980.0, np.maximum(1980 - (t - 28) * 30, 1755.0)) + rng.normal(0, 4, len(t))
    warmup = [{"t_s": round(-1 + i * 0.1, 2), "phase": "warmup", "sm_mhz": 1410 + i * 57, "mem_mhz": 2619,
               "temp_c": 55.0, "power_w": 420.0, "util_gpu": 97, "util_mem": 38, "clock_event_reasons": 0}
              for i in range(10)]
    trace = warmup + [
        {"t_s": float(tt), "phase": "sustained", "sm_mhz": round(float(c)), "mem_mhz": 2619,
         "temp_c": round(float(58 + tt * 0.45), 1), "power_w": round(float(560 + rng.normal(0, 15)), 1),
         "util_gpu": 99, "util_mem": 40, "clock_event_reasons": 0x020 if tt >= 30 else 0}
        for tt, c in zip(t, clock)
    ]
    soak_monitor = monitor_block(trace)
    windows, all_samples = [], []
    for i in range(12):
        mid_clock = float(np.median(clock[(t >= i * 5) & (t < i * 5 + 5)]))
        s = latency_samples(rng, 1.61 * 1980 / mid_clock, n=100, spread=0.012)
        all_samples.append(s)
        windows.append({"start_s": i * 5.0, "end_s": i * 5.0 + 5, "stats": stats(s), "sm_clock_mhz_median": round(mid_clock),
                        "temperature_c_max": round(58 + (i * 5 + 5) * 0.45, 1)})
    run.add(soak, "tensorrt", "fp16", 1, 384, "model", "throttled", samples=np.concatenate(all_samples),
            protocol={"pause_ms": 50.0, "sustained": {"duration_s": 60.0, "window_s": 5.0}}, windows=windows,
            reason=soak_monitor["summary"]["throttled_why"], monitor=soak_monitor, settings=trt)
    small = {"name": "rfdetr-small", "source": "rfdetr", "variant": "small", "weights": "cache"}
    ref_s = run.add(small, "torch", "fp32", 1, 512, "model", samples=latency_samples(rng, 6.71), reference=True,
                    accuracy=accuracy_block(0.529))
    run.add(small, "onnxruntime-tensorrt", "fp16", 1, 512, "model", "skipped",
            reason="onnxruntime-tensorrt needs onnxruntime-gpu with the TensorRT execution provider; this install has "
                   "providers ['CUDAExecutionProvider', 'CPUExecutionProvider']")
    run.add(small, "tensorrt", "fp16", 1, 512, "model", "failed",
            reason="engine build failed: out of memory while building tactic for /backbone/Conv_12 (exit status 1)",
            log_tail="[TRT] [I] Building engine from artifacts/rfdetr-small.onnx\n"
                     "[TRT] [E] 1: [defaultAllocator.cpp::allocate::31] Error Code 1: Cuda Runtime (out of memory)\n"
                     "Traceback (most recent call last):\n  File \"harness/runtimes/tensorrt/runtime.py\", line 212, in prepare\n"
                     "    raise RuntimeError(f\"engine build failed: {why}\")\n"
                     "<class 'RuntimeError'>: engine build failed: out of memory & <no engine>")
    _ = ref_s
    medium = {"name": "rfdetr-medium", "source": "rfdetr", "variant": "medium", "weights": "random"}
    ref_m = run.add(medium, "torch", "fp32", 1, 576, "model", samples=latency_samples(rng, 8.4), reference=True,
                    accuracy=accuracy_block(0.0003, random_weights=True), resumed=True)
    run.add(medium, "tensorrt", "fp16", 1, 576, "model", samples=latency_samples(rng, 2.7, spread=0.012),
            accuracy=accuracy_block(0.0002, random_weights=True), derived=derived_block(ref_m, -0.01, random_weights=True),
            settings=trt, resumed=True)
    hostile = {"name": HOSTILE + " | evil", "source": "onnx", "path": "models/evil|<b>x</b>.onnx",
               "class_names": ["person", "<img src=x onerror=alert(3)>"]}
    run.add(hostile, "onnxruntime-cuda", "fp32", 1, 640, "model", samples=latency_samples(rng, 5.3),
            settings={"providers": ["CUDAExecutionProvider"], "note": "<iframe src=//evil>"})
    run.write()


def t4_published() -> None:
    rng = np.random.default_rng(11)
    run = RunBuilder("t4-published", "t4-rfdetr-published", "t4", "2026-03-03T08:00:00Z",
                     description="RF-DETR under its published conditions: T4, TensorRT 10.4, FP16, 200 ms pause")
    coco = {"sample": False, "images": "coco/val2017", "annotations": "coco/annotations/instances_val2017.json",
            "subset": {"mode": "all", "n": None, "seed": 0}}
    pause = {"pause_ms": 200.0}
    trt = trt_settings("10.4.0.26", "fp16")
    for name, variant, res, fp32_ms, trt_ms, ap, segm in (
        ("rfdetr-nano", "nano", 384, 9.8, 2.33, 0.483, None),
        ("rfdetr-small", "small", 512, 14.2, 4.05, 0.529, None),
        ("rfdetr-seg-nano", "seg-nano", 312, 11.5, 2.95, 0.392, 0.401),
        ("rfdetr-medium-640", "medium", 640, 22.0, 6.1, 0.548, None),
    ):
        model = {"name": name, "source": "rfdetr", "variant": variant, "weights": "cache"}
        ref = run.add(model, "torch", "fp32", 1, res, "model", samples=latency_samples(rng, fp32_ms, n=200),
                      reference=True, protocol=pause, dataset=coco, accuracy=accuracy_block(ap + 0.001, 5000, segm and segm + 0.001))
        run.add(model, "tensorrt", "fp16", 1, res, "model", samples=latency_samples(rng, trt_ms, n=200, spread=0.01),
                protocol=pause, dataset=coco, accuracy=accuracy_block(ap, 5000, segm), derived=derived_block(ref, -0.1),
                settings=trt)
    run.write()


def deploy_predict() -> None:
    """The reference exists only end to end; the other cells' samples are the reference's divided
    by a factor, so their speed-ups are exact (medians scale with the samples)."""
    rng = np.random.default_rng(13)
    run = RunBuilder("deploy-predict", "rfdetr-deployment", "h100", "2026-03-05T09:00:00Z",
                     description="predict() FP32 against the optimized FP16+JIT path and ONNX Runtime (golden test run)")
    medium = {"name": "rfdetr-medium", "source": "rfdetr", "variant": "medium", "weights": "cache"}
    predict = latency_samples(rng, 30.0)
    ref = run.add(medium, "rfdetr-predict", "fp32", 1, 576, "end_to_end", samples=predict, reference=True,
                  runtime_label="predict-fp32", accuracy=accuracy_block(0.539))
    run.add(medium, "rfdetr-optimized", "fp16", 1, 576, "model", samples=np.round(predict / 4, 4),
            runtime_label="fp16-jit", accuracy=accuracy_block(0.537), derived=derived_block(ref, -0.2))
    run.add(medium, "rfdetr-optimized", "fp16", 1, 576, "end_to_end", samples=np.round(predict / 2, 4),
            runtime_label="fp16-jit")
    run.add(medium, "onnxruntime-cuda", "fp32", 1, 576, "model", "failed",
            reason="onnxruntime could not create a CUDA session: CUDA failure 999 (exit status 1)")
    run.add(medium, "onnxruntime-cuda", "fp32", 1, 576, "end_to_end", "unstable", samples=np.round(predict / 1.25, 4),
            reason="CoV 7.1% exceeds 5%", unstable_reasons=["CoV 7.1% > 5%"])
    run.add(medium, "tensorrt", "fp16", 1, 576, "end_to_end", "skipped",
            reason="tensorrt is not installed in this image")
    run.write()


def cpu_quick(name: str, seed: int, with_results: bool) -> None:
    rng = np.random.default_rng(seed)
    run = RunBuilder(name, "quickstart", "cpu", "2026-03-04T12:00:00Z" if seed == 1 else "2026-03-04T13:00:00Z",
                     description="RF-DETR Nano, random weights, PyTorch FP32 on the CPU")
    nano = {"name": "rfdetr-nano", "source": "rfdetr", "variant": "nano", "weights": "random"}
    sample = {"sample": True, "sample_images": 8, "subset": {"mode": "all", "n": None, "seed": 0}}
    ref = run.add(nano, "torch", "fp32", 1, 384, "model", samples=latency_samples(rng, 142.0, n=60, spread=0.03),
                  reference=True, dataset=sample, accuracy=accuracy_block(0.0, 8, ips=5.1, random_weights=True))
    run.add(nano, "torch", "fp32", 1, 384, "end_to_end", reference=True, dataset=sample,
            **e2e(e2e_stages(rng, 142.0, n=60)))
    run.add(nano, "onnxruntime-cpu", "fp32", 1, 384, "model", samples=latency_samples(rng, 98.0, n=60, spread=0.03),
            dataset=sample, accuracy=accuracy_block(0.0, 8, ips=7.4, random_weights=True),
            derived=derived_block(ref, 0.0, random_weights=True),
            settings={"providers": ["CPUExecutionProvider"], "intra_op_num_threads": 2})
    run.write(with_results)


def main() -> None:
    gpu_demo()
    t4_published()
    deploy_predict()
    cpu_quick("cpu-quick-a", 1, True)
    cpu_quick("cpu-quick-b", 2, False)
    for folder in sorted(HERE.iterdir()):
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        print(f"{folder.name}: {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
