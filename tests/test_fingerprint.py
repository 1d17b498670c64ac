"""Nothing that belongs to one process enters a fingerprint: the same plan run twice compares.

ONNX Runtime's CUDA provider reads back the address of the CUDA stream it was given
(`provider_options.CUDAExecutionProvider.user_compute_stream`); that number changes with every
process, and once it entered the fingerprint `bench compare` refused every re-run with an ORT
CUDA cell. The rule is general (harness.environment.fingerprint.process_specific): addresses,
pids, file locations, timestamps, durations and cache hits are left out wherever they appear.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness import results
from harness.environment.fingerprint import comparable_settings, fingerprint, process_specific
from harness.report.compare import EXIT_OK, compare_runs

ROOT = Path(__file__).resolve().parents[1]
# A real ORT CUDA cell, as the harness recorded it on an H200 (a committed example run).
EXAMPLE = ROOT / "reports" / "examples" / "rfdetr-deployment-2xh200" / "20261127T121023Z-6bc7d3"
ORT_CELL = "rfdetr-medium__onnxruntime-cuda__fp32__b1__r576__model"


def ort_record() -> dict[str, Any]:
    return json.loads((EXAMPLE / "cells" / f"{ORT_CELL}.json").read_text())


def fp(record: dict[str, Any]) -> str:
    return fingerprint(record["environment"], runtime="onnxruntime-cuda", precision="fp32", settings=record["settings"])


def test_the_cuda_stream_address_never_enters_the_fingerprint() -> None:
    a = ort_record()
    b = copy.deepcopy(a)
    options = b["settings"]["provider_options"]["CUDAExecutionProvider"]
    assert options["user_compute_stream"].isdigit() and options["has_user_compute_stream"] == "1"
    options["user_compute_stream"] = str(int(options["user_compute_stream"]) + 4096)  # the next process's stream
    assert fp(a) == fp(b)
    # ...while what configures the provider still counts, flags included.
    for key, value in (("has_user_compute_stream", "0"), ("gpu_mem_limit", "1073741824"), ("cudnn_conv_algo_search", "HEURISTIC")):
        c = copy.deepcopy(a)
        c["settings"]["provider_options"]["CUDAExecutionProvider"][key] = value
        assert fp(c) != fp(a), key


@pytest.mark.parametrize(("key", "value", "why"), [
    ("user_compute_stream", "140305486723584", "address"),
    ("stream_handle", 94823742, "address"),
    ("engine", "0x7f3a2c001e40", "address"),
    ("worker_pid", 4242, "process"),
    ("optimized_model_filepath", "/tmp/tmpab12cd/model.onnx", "location"),
    ("note", "/tmp/ort-cache-8f1e/engine", "location"),
    ("built_at", "2026-12-01T10:00:00Z", "time"),
    ("started", "2026-12-01 10:00:00", "time"),
    ("compile_s", 12.5, "time"),
    ("engine_cache_hit", True, "cache"),
])
def test_process_specific_facts_are_recognised_by_a_general_rule(key: str, value: Any, why: str) -> None:
    assert process_specific(key, value) == why
    assert comparable_settings({"nested": {"deeper": {key: value, "keep": 1}}}) == {"nested": {"deeper": {"keep": 1}}}


@pytest.mark.parametrize(("key", "value"), [
    ("has_user_compute_stream", "1"), ("device_id", "0"), ("gpu_mem_limit", "18446744073709551615"),
    ("tunable_op_max_tuning_duration_ms", "0"), ("intra_op_num_threads", 2), ("providers", ["CUDAExecutionProvider"]),
    ("sha256", "9e8d7c6b5a4f"), ("enable_cuda_graph", "0"),
])
def test_configuration_stays_in_the_fingerprint(key: str, value: Any) -> None:
    assert process_specific(key, value) is None


def test_compare_accepts_a_rerun_whose_ort_cuda_cells_got_other_streams(tmp_path: Path) -> None:
    """A re-run of a run with ORT CUDA cells, recorded with the old rule (each cell's stored
    fingerprint covers its own stream address): compare recomputes the fingerprints from the
    stored facts and compares instead of refusing."""
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(EXAMPLE, a)
    shutil.copytree(EXAMPLE, b)
    data = json.loads((b / "results.json").read_text())
    changed = 0
    for record in data["cells"]:
        options = (record["settings"].get("provider_options") or {}).get("CUDAExecutionProvider")
        if options and "user_compute_stream" in options:
            options["user_compute_stream"] = str(int(options["user_compute_stream"]) + 8192)
            record["fingerprint"] = "f" * 16  # what the old rule stored: another hash
            changed += 1
    assert changed >= 2
    (b / "results.json").write_text(json.dumps(data))
    code, text = compare_runs(a, b, out_dir=tmp_path / "out")
    assert code == EXIT_OK, text
    # one process a side: compared, with no verdict (the between-process variance is unknown)
    assert "REFUSED" not in text and "no verdict" in text


TINY_PLAN = """
name: fp
device: cpu
models:
  - name: tiny
    source: onnx
    path: tiny.onnx
    resolutions: [64]
    preprocess: {resize: letterbox}
    decoder: {kind: yolo_end2end, score_threshold: 0.1}
runtimes: [onnxruntime-cpu]
protocol: {warmup_iterations: 2, warmup_seconds: 0, min_iterations: 30, min_seconds: 0}
"""


def test_the_same_ort_plan_run_twice_compares(tmp_path: Path) -> None:
    """Real ONNX Runtime (CPU EP) on a tiny ONNX detector, the same plan twice through the CLI,
    then `bench compare`: no refusal, one fingerprint."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from test_onnx_runtime import tiny_detector

    tiny_detector(tmp_path / "tiny.onnx")
    (tmp_path / "plan.yaml").write_text(TINY_PLAN)
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "harness", "plan.yaml"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    a, b = sorted((tmp_path / "reports" / "fp").iterdir())
    records = [json.loads(next((run / "cells").glob("*.json")).read_text()) for run in (a, b)]
    assert all(r["schema_version"] == results.SCHEMA_VERSION and r["identity"]["runtime"] == "onnxruntime-cpu" for r in records)
    assert records[0]["fingerprint"] == records[1]["fingerprint"]
    done = subprocess.run([sys.executable, "-m", "harness", "compare", str(a), str(b)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "REFUSED" not in done.stdout and "tiny__onnxruntime-cpu__fp32__b1__r64__model" in done.stdout
