"""A real plan through the real CLI: RF-DETR Nano (random weights) on the CPU, PyTorch FP32 and
ONNX Runtime CPU, both scopes, a pause and sustained mode, the accuracy pass on the generated
sample dataset; then the run folder is read back as a user (or the report) would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

PLAN = """
name: e2e
device: cpu
models:
  - name: nano
    variant: nano
    weights: random
    resolutions: [160]
runtimes: [torch, onnxruntime-cpu]
precisions: [fp32]
scopes: [model, end_to_end]
protocol:
  warmup_iterations: 1
  warmup_seconds: 0
  pause_ms: 20
  sustained: {duration_s: 3, window_s: 0.5}
dataset: {sample: true, sample_images: 4}
accuracy: {agreement_images: 2, gallery_images: 1, max_map_drop: 100, gate: true}
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e")
    (root / "plan.yaml").write_text(PLAN)
    done = subprocess.run(
        [sys.executable, "-m", "harness", "plan.yaml"], cwd=root, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    (run,) = list((root / "reports" / "e2e").iterdir())
    assert f"report:  {run / 'report.html'}\n" in done.stderr  # whole, never wrapped: copyable
    return run


def load(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_every_cell_measured_with_its_timer_and_scope(run_dir: Path) -> None:
    results = load(run_dir)
    cells = {c["cell_id"]: c for c in results["cells"]}
    assert set(cells) == {
        f"nano__{rt}__fp32__b1__r160__{scope}"
        for rt in ("torch", "onnxruntime-cpu")
        for scope in ("model", "end_to_end")
    }
    for record in cells.values():
        assert record["status"] in ("ok", "unstable"), record.get("reason")
        latency = record["latency"]
        assert latency["timer"].startswith("perf_counter")
        assert latency["stop_reason"] == "sustained"
        assert "random_weights" in record["flags"]
        assert record["environment"]["python"] and record["fingerprint"]
    stages = cells["nano__onnxruntime-cpu__fp32__b1__r160__end_to_end"]["latency"]["stages"]
    assert list(stages) == ["preprocess", "h2d", "infer", "d2h", "postprocess"]


def test_statistics_are_derived_from_the_stored_samples(run_dir: Path) -> None:
    for record in load(run_dir)["cells"]:
        samples = np.asarray(record["latency"]["samples_ms"])
        stats = record["latency"]["stats"]
        assert stats["count"] == samples.size
        assert stats["p50"] == pytest.approx(np.percentile(samples, 50))
        assert stats["p99"] == pytest.approx(np.percentile(samples, 99))
        assert stats["mean"] == pytest.approx(samples.mean())
        # One sample (a loaded machine can make one call outlast the sustained run): std is 0 by convention.
        assert stats["std"] == pytest.approx(samples.std(ddof=1) if samples.size > 1 else 0.0)


def test_pause_and_sustained_windows(run_dir: Path) -> None:
    for record in load(run_dir)["cells"]:
        latency = record["latency"]
        windows = latency["windows"]
        # several windows, unless a loaded machine makes single samples longer than the run
        assert len(windows) >= 2 or latency["stats"]["p50"] > 1000
        starts = [w["start_s"] for w in windows]
        assert starts == sorted(starts) and starts[0] == 0
        # windows are cut every window_s of the run (a window with no sample is left out)
        assert all(abs(s / 0.5 - round(s / 0.5)) < 1e-6 for s in starts)
        assert all(w["end_s"] - w["start_s"] == pytest.approx(0.5) for w in windows)
        assert sum(w["stats"]["count"] for w in windows) == latency["stats"]["count"]
        n = latency["stats"]["count"]
        # the 20 ms pause sits between samples, outside them, yet inside the wall-clock duration:
        # the samples and the pauses between them fit in the phase's wall time (a median above
        # the mean is no contradiction on a loaded machine, so the sum is what is checked)
        assert latency["measure_s"] >= (n - 1) * 0.020
        assert sum(latency["samples_ms"]) + (n - 1) * 20.0 <= latency["measure_s"] * 1000 + 1e-6


def test_accuracy_deltas_and_agreement_against_the_reference(run_dir: Path) -> None:
    results = load(run_dir)
    cells = {c["cell_id"]: c for c in results["cells"]}
    ref_id = "nano__torch__fp32__b1__r160__model"
    ort_id = "nano__onnxruntime-cpu__fp32__b1__r160__model"
    assert cells[ref_id]["cell"]["is_reference"]
    for cell_id in (ref_id, ort_id):
        accuracy = cells[cell_id]["accuracy"]
        assert accuracy["images"] == 4 and "AP" in accuracy["bbox"] and accuracy["predict_images_per_s"] > 0
        assert (run_dir / "detections" / f"{cell_id}.json").is_file()
    derived = results["derived"][ort_id]
    assert derived["reference"] == ref_id
    assert "AP" in derived["map_delta"]
    assert derived["detection_agreement"] is not None
    raw = derived["raw_agreement"]
    # the same random weights in both processes: the exported model agrees with PyTorch FP32
    assert raw["outputs"]["dets"]["max_abs_diff"] < 1e-3
    assert raw["outputs"]["labels"]["max_abs_diff"] < 1e-2
    assert "random weights" in derived["note"]
    assert derived["gate"]["regressed"] is False


def test_report_files_and_resume_of_a_finished_run(run_dir: Path) -> None:
    for name in ("report.html", "summary.md", "results.csv", "plan.yaml", "run.json"):
        assert (run_dir / name).is_file(), name
    html = (run_dir / "report.html").read_text()
    assert "random weights" in html.lower()
    before = {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()}
    done = subprocess.run(
        [sys.executable, "-m", "harness", "run", "--resume", str(run_dir)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "nothing to do" in done.stderr
    after = {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()}
    assert before == after  # a finished run is left exactly as it was
