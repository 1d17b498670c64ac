"""The results model (harness.results): one typed model writes and reads every result; older
files migrate, newer ones and unknown keys are refused, and it stays a leaf of the harness."""

from __future__ import annotations

import ast
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from record_factory import accuracy, record

from harness import results as R
from harness.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "tests" / "data" / "runs"
EXAMPLES = sorted(p for p in (ROOT / "reports" / "examples").glob("*/*") if (p / "run.json").is_file())


def copy_run(tmp_path: Path, name: str) -> Path:
    dest = tmp_path / name
    shutil.copytree(RUNS / name, dest)
    return dest


# ----------------------------------------------------------------------------- schema 1 files


def on_disk_version(folder: Path) -> int:
    return int(json.loads(next((folder / "cells").glob("*.json")).read_text())["schema_version"])


# The test-data runs are the migration's fixtures and stay schema 1; example runs committed
# under reports/examples are whatever version the harness of their day wrote.
SCHEMA_1_RUNS = sorted(RUNS.iterdir()) + [p for p in EXAMPLES if on_disk_version(p) == 1]
LATER_RUNS = [p for p in EXAMPLES if on_disk_version(p) > 1]


def test_the_test_data_runs_stay_schema_1() -> None:
    assert [p.name for p in RUNS.iterdir() if on_disk_version(p) != 1] == []


@pytest.mark.parametrize("folder", SCHEMA_1_RUNS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_committed_schema_1_run_loads_through_the_model(folder: Path) -> None:
    read = R.read_run(folder)
    assert read.results.cells and read.results.schema_version == R.SCHEMA_VERSION
    for rec in read.results.cells:
        # The identity comes from schema 1's `cell`, never from the cell id.
        cell = json.loads((folder / "cells" / f"{rec.cell_id}.json").read_text())["cell"]
        assert rec.identity.model == cell["model"]["name"]
        assert rec.identity.runtime == cell["runtime"]["name"] and rec.identity.precision == cell["precision"]
        assert (rec.identity.batch, rec.identity.resolution, rec.identity.scope) == (
            cell["batch"], cell["resolution"], cell["scope"])
        # Dumped in the current schema and read again: the same record.
        assert R.load_cell_record(rec.model_dump(mode="json"), "again") == rec


def holds(current: Any, written: Any) -> bool:
    """Everything the file wrote reads back the same (a newer model may add fields beside it)."""
    if isinstance(written, dict):
        return isinstance(current, dict) and all(k in current and holds(current[k], v) for k, v in written.items())
    return bool(current == written)


@pytest.mark.parametrize("folder", LATER_RUNS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_later_committed_run_loads_through_the_model(folder: Path) -> None:
    read = R.read_run(folder)
    assert read.results.cells and read.results.schema_version == R.SCHEMA_VERSION
    processes = sorted((folder / "cells").glob("*.json"))
    assert processes
    for path in processes:
        on_disk = json.loads(path.read_text())
        rec = R.load_cell_record(on_disk, str(path))
        # What the file says is what the model reads: identity and raw samples untouched.
        assert holds(rec.identity.model_dump(mode="json"), on_disk["identity"])
        assert (rec.latency.samples_ms if rec.latency else None) == (
            on_disk["latency"]["samples_ms"] if on_disk.get("latency") else None)
        assert R.load_cell_record(rec.model_dump(mode="json"), "again") == rec


def test_migration_fills_in_schema_1_defaults_and_renames() -> None:
    read = R.read_run(RUNS / "gpu-demo")
    by_id = {r.cell_id: r for r in read.results.cells}
    hostile = next(r for r in read.results.cells if r.identity.source == "onnx")
    assert hostile.identity.weights_kind == "from_file" and hostile.identity.variant is None
    assert hostile.identity.model == "<script>alert(1)</script> | evil"  # not cut out of the id
    medium = by_id["rfdetr-medium__torch__fp32__b1__r576__model"]
    assert medium.identity.weights_kind == "random" and medium.identity.is_reference
    nano = by_id["rfdetr-nano__tensorrt__fp16__b1__r384__model"]
    assert nano.identity.weights_kind == "trained" and nano.identity.max_map_drop == 1.0
    assert nano.identity.dataset is not None and nano.identity.dataset.sample_images == 24  # schema 1's default
    assert nano.accuracy is not None and nano.accuracy.predict_images_per_s == 85.0  # was images_per_s
    soak = by_id["rfdetr-nano-soak__tensorrt__fp16__b1__r384__model"]
    assert soak.identity.protocol.pause_ms == 50.0 and soak.identity.protocol.sustained is not None
    assert read.results.derived[nano.cell_id].gate is not None
    quick = R.read_run(RUNS / "cpu-quick-b").results.cells[0]
    assert quick.identity.dataset is not None and quick.identity.dataset.sample and quick.identity.dataset.sample_images == 8


def test_schema_1_class_mapping_keeps_what_its_ap_averaged_over() -> None:
    old = json.loads(next((RUNS / "gpu-demo" / "cells").glob("rfdetr-nano__torch*model.json")).read_text())
    old["accuracy"]["mapping"] = {"evaluated_categories": 78, "unevaluable_classes": ["hammer", "wrench"],
                                  "model_classes_unused": 13, "warning": "2 of 80 ..."}
    mapping = R.load_cell_record(old, "x").accuracy.mapping  # type: ignore[union-attr]
    assert mapping is not None
    assert (mapping.annotated_classes, mapping.predictable_classes) == (80, 78)
    assert mapping.unpredictable_classes == ["hammer", "wrench"]
    assert mapping.ap_over == "predictable"  # schema 1 left them out of its AP


def test_schema_1_derived_error_moves_to_its_own_field(tmp_path: Path) -> None:
    run = copy_run(tmp_path, "cpu-quick-a")
    data = json.loads((run / "results.json").read_text())
    data["derived"]["_error"] = "deriving accuracy comparisons failed: boom"
    (run / "results.json").write_text(json.dumps(data))
    results = R.read_run(run).results
    assert results.derived_error == "deriving accuracy comparisons failed: boom"
    assert "_error" not in results.derived


# ----------------------------------------------------------------------------- refusals


def test_unknown_keys_are_an_error_naming_the_file(tmp_path: Path) -> None:
    run = copy_run(tmp_path, "cpu-quick-b")
    path = next((run / "cells").glob("*.json"))
    data = json.loads(path.read_text())
    data["latency"]["median_ms"] = 1.0  # a field no harness writes
    path.write_text(json.dumps(data))
    with pytest.raises(R.CellFileError, match=rf"{path.name}.*latency\.median_ms: Extra inputs are not permitted"):
        R.read_run(run)
    fresh = record("c1").model_dump(mode="json")
    fresh["identity"]["colour"] = "blue"
    with pytest.raises(R.ResultsError, match=r"where: not a valid cell record: identity\.colour"):
        R.load_cell_record(fresh, "where")


@pytest.mark.parametrize("where", ["cell", "run.json", "results.json"])
def test_newer_schemas_are_refused_naming_the_file(tmp_path: Path, where: str) -> None:
    run = copy_run(tmp_path, "cpu-quick-a")
    path = {"cell": next((run / "cells").glob("*.json")), "run.json": run / "run.json",
            "results.json": run / "results.json"}[where]
    data = json.loads(path.read_text())
    data["schema_version"] = R.SCHEMA_VERSION + 1
    path.write_text(json.dumps(data))
    reader = {"cell": R.read_cell_file, "run.json": R.read_run_meta, "results.json": R.read_results_file}[where]
    with pytest.raises(R.NewerSchemaError, match=rf"{path}: written by a newer harness \(results schema version {R.SCHEMA_VERSION + 1}"):
        reader(path)


@pytest.mark.parametrize("content", [b"", b"  \n", b'{"schema_version": 2, "cell_id": "x", "cel', b"\xff\xfe garbage",
                                     b"[1, 2]", b'{"cell_id": "x"}'],
                         ids=["empty", "blank", "truncated", "not-utf8", "not-an-object", "no-version"])
def test_a_damaged_cell_file_is_a_typed_error_naming_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "cells" / "x.json"
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(R.CellFileError) as info:
        R.read_cell_file(path)
    assert info.value.path == str(path) and str(info.value).startswith(f"{path}: ")
    with pytest.raises(R.CellFileError, match="no such file"):
        R.read_cell_file(tmp_path / "cells" / "missing.json")


def test_a_cell_file_holding_another_cells_record_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps(record("c1").model_dump(mode="json")))
    with pytest.raises(R.CellFileError, match="holds the record of 'c1'"):
        R.read_cell_file(path)
    (tmp_path / "c1.json").write_text(path.read_text())
    assert R.read_cell_file(tmp_path / "c1.json").cell_id == "c1"


def test_the_report_loader_turns_results_errors_into_user_errors(tmp_path: Path) -> None:
    from harness.report.rundata import load_run

    run = copy_run(tmp_path, "cpu-quick-a")
    (run / "run.json").write_text(json.dumps({"schema_version": 9}))
    (run / "results.json").unlink()
    with pytest.raises(UserError, match="run.json: written by a newer harness"):
        load_run(run)


# ----------------------------------------------------------------------------- writers


def test_the_producers_output_validates_through_the_model(tmp_path: Path) -> None:
    """What capture, the monitor and the accuracy pass return is what the record types say."""
    from oracle import OraclePredictor

    from harness.accuracy.coco_names import coco80_class_names
    from harness.accuracy.datasets import open_dataset
    from harness.accuracy.evaluate import run_accuracy_pass
    from harness.accuracy.sample import make_sample_dataset
    from harness.environment.capture import capture_environment
    from harness.environment.monitor import GpuMonitor

    R.Environment.model_validate(capture_environment(["cpu"]))
    samples = iter([(1980, 2619, 50.0 + i, 300.0, 99, 40, 0) for i in range(50)])
    ticks = iter(i * 0.02 for i in range(1000))
    monitor = GpuMonitor(0, 20, sampler=lambda: next(samples), clock=lambda: next(ticks))
    monitor.phase("measure")
    for _ in range(5):
        monitor.sample_now()
    R.Monitor.model_validate(monitor.stop())
    dataset = open_dataset(*make_sample_dataset(tmp_path / "s", n_images=4, seed=3))
    names = coco80_class_names()
    metrics = run_accuracy_pass(OraclePredictor(dataset, names, "detection"), 2, dataset, names, "detection",
                                tmp_path / "d.json", workers=0)
    assert R.Accuracy.model_validate(metrics).mapping is not None


def test_a_gpu_capture_validates_through_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every GPU field capture writes is a field of the model (a new one must be added there,
    or the worker could not write its record)."""
    try:
        from fake_nvml import FakeGpu, FakeNvml  # type: ignore[import-not-found]  # where tests keep it
    except ImportError:
        from fake_nvml import FakeGpu, FakeNvml
    from harness.environment.capture import capture_environment

    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([FakeGpu(), FakeGpu(uuid="GPU-second")]))
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    env = capture_environment(["cuda:0"], with_torch=False)
    assert env["gpus"] and env["gpus"][0]["uuid"] == "GPU-second"
    typed = R.Environment.model_validate(env)
    assert typed.model_dump(mode="json", exclude_unset=True)["gpus"] == env["gpus"]


def test_prepare_keeps_a_runtimes_own_facts_apart() -> None:
    prepare = R.Prepare.from_runtime({"export_s": 1.5, "load_s": 0.2, "artifact": {"path": "a.onnx", "sha256": "x"},
                                      "engine_key": "k", "engine_cache_hit": True})
    assert prepare.export_s == 1.5 and prepare.artifact is not None and prepare.artifact.path == "a.onnx"
    assert prepare.runtime == {"engine_key": "k", "engine_cache_hit": True}


def test_results_file_round_trip_and_sparse_blocks() -> None:
    rec = record("c1", accuracy=accuracy(0.5), placement={"backend": "local-gpus", "gpu": 1})
    results = R.ResultsFile(
        run=R.RunMeta(run_id="r", plan_name="p", started_at="t", harness_version="0.1.0"),
        cells=[rec], derived={"c1": R.DerivedEntry(status="ok")},
    )
    data = results.model_dump(mode="json")
    assert data["derived"] == {"c1": {"status": "ok"}}  # derived entries carry only what was derived
    assert data["cells"][0]["placement"] == {"backend": "local-gpus", "gpu": 1}
    assert "merged_from" not in data["run"]
    assert R.load_results(data, "results.json") == results
    assert R.effective_status(rec, R.DerivedEntry(gate=R.Gate(max_map_drop=1, drop=2, regressed=True))) == "accuracy_regression"


# ----------------------------------------------------------------------------- a leaf


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_results_layer_is_a_leaf_and_the_instrument_does_not_depend_on_the_runner() -> None:
    for path in (ROOT / "harness" / "results").glob("*.py"):
        harness_imports = {m for m in _imports(path) if m == "harness" or m.startswith("harness.")}
        assert all(m.startswith("harness.results") for m in harness_imports), (path.name, harness_imports)
    for path in (ROOT / "harness" / "measure").glob("*.py"):
        assert not any(m == "harness.run" or m.startswith("harness.run.") for m in _imports(path)), path.name
    assert not any(m.startswith("harness.run.record") for m in _imports(ROOT / "harness" / "run" / "store.py"))
    code = (
        "import sys; import harness.results, harness.measure.stats\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('harness.'))\n"
        "assert not [m for m in loaded if m.startswith(('harness.run.', 'harness.report', 'harness.plan'))], loaded\n"
        "assert 'torch' not in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_worker_record_is_schema_2_with_its_identity(tmp_path: Path) -> None:
    """The record the run side builds from a plan Cell (what the worker and the scheduler write)."""
    from harness.plan.load import parse_plan
    from harness.run.record import identity_of, outcome_record

    plan = ("name: p\ndevice: cpu\nmodels:\n  - {name: tiny, source: onnx, path: m.onnx, resolutions: [64]}\n"
            "runtimes: [{name: onnxruntime-cpu, label: ort}]\nprotocol: {pause_ms: 5}\n"
            "dataset: {sample: true, sample_images: 4}\naccuracy: {max_map_drop: 1.5}\n")
    cell = parse_plan(plan, "plan.yaml", tmp_path, check_paths=False).cells[0]  # the file is never read
    ident = identity_of(cell)
    assert (ident.model, ident.runtime, ident.runtime_label, ident.runtime_key) == ("tiny", "onnxruntime-cpu", "ort", "ort")
    assert ident.weights_kind == "from_file" and ident.protocol.pause_ms == 5 and ident.max_map_drop == 1.5
    assert ident.dataset is not None and ident.dataset.sample_images == 4
    data: dict[str, Any] = outcome_record(cell, "skipped", "no onnxruntime here", "2026-01-01T00:00:00Z")
    assert data["schema_version"] == R.SCHEMA_VERSION and data["identity"]["model"] == "tiny"
    assert R.load_cell_record(data, "x").cell == cell.model_dump(mode="json")  # the snapshot, verbatim
    json.dump(data, io.StringIO())
