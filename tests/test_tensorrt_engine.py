"""The TensorRT runtime's library-free logic: settings, engine keys, profiles, calibration image
selection, the engine cache on disk, and what is recorded. No TensorRT, no GPU."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from harness.errors import UserError
from harness.plan.cells import Cell
from harness.plan.load import load_plan, parse_plan
from harness.runtimes.tensorrt.engine import (
    BatchProfile,
    CalibrationError,
    CalibrationImage,
    EngineCache,
    GpuIdentity,
    atomic_write_bytes,
    batch_profile,
    calibration_batch_for,
    calibration_batches,
    canonical_json,
    cell_problems,
    choose_images,
    engine_key,
    engine_key_fields,
    pad_batch,
    parse_settings,
    precision_problem,
    profile_covering,
    read_coco_images,
    resolve_input_dims,
    select_calibration_images,
    settings_record,
    timing_cache_name,
    torch_dtype_name,
    version_problem,
)
from harness.runtimes.tensorrt.settings import (
    BUILDER_FIELDS,
    CALIBRATION_FIELDS,
    NOT_IN_ENGINE_FIELDS,
    TensorRTSettings,
)

REPO = Path(__file__).resolve().parents[1]
T4 = GpuIdentity("Tesla T4", "7.5")


@pytest.fixture(autouse=True)
def _artifacts_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The artifact cache (engines, exports) resolves against the working directory: keep each
    test's cache its own."""
    monkeypatch.chdir(tmp_path)


def make_cell(
    tmp_path: Path,
    *,
    precision: str = "fp16",
    settings: dict[str, Any] | None = None,
    dataset: dict[str, Any] | None = None,
    batch: int = 1,
) -> Cell:
    plan: dict[str, Any] = {
        "name": "trt-test",
        "device": "cuda:0",
        "models": [{"name": "det", "source": "onnx", "path": "det.onnx", "resolutions": [64]}],
        "runtimes": [{"name": "tensorrt", "settings": settings or {}}],
        "precisions": [precision],
        "batch_sizes": [batch],
    }
    if dataset is not None:
        plan["dataset"] = dataset
    # Run-time defences are under test here, so the plan-time settings check is skipped.
    return parse_plan(
        yaml.safe_dump(plan), "test-plan", tmp_path, check_runtime_settings=False, check_paths=False
    ).cells[0]


def make_coco(root: Path, count: int, *, with_files: bool = True, shuffle_seed: int | None = None) -> dict[str, str]:
    """A COCO-format dataset: `count` images (ids 1000.. with gaps) and their files."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images = [{"id": 1000 + 3 * i, "file_name": f"{i:06d}.jpg", "height": 8, "width": 8} for i in range(count)]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(images)
    if with_files:
        for im in images:
            (images_dir / im["file_name"]).write_bytes(b"not decoded by the selection")
    annotations = root / "instances.json"
    annotations.write_text(json.dumps({"images": images, "annotations": [], "categories": []}))
    return {"images": str(images_dir), "annotations": str(annotations)}


def key_for(**overrides: Any) -> str:
    args: dict[str, Any] = {
        "onnx_sha256": "a" * 64,
        "gpu": T4,
        "tensorrt_version": "10.4.0",
        "precision": "fp16",
        "settings": TensorRTSettings(),
        "input_name": "input",
        "input_shapes": BatchProfile(1, 1, 1).shapes([3, 384, 384]),
        "calibration_key": None,
    }
    args.update(overrides)
    return engine_key(engine_key_fields(**args))


# -- settings --------------------------------------------------------------------------------


def test_settings_defaults_leave_tensorrt_defaults_unset() -> None:
    s = parse_settings({})
    assert s.workspace_mib is None and s.builder_optimization_level is None and s.tf32 is None
    assert s.cuda_graph is False and s.strongly_typed is False and s.timing_cache is True
    assert s.opset == 17  # read by the model source's export


def test_unknown_setting_is_an_error_naming_it() -> None:
    with pytest.raises(UserError) as err:
        parse_settings({"cuda_graphs": True})
    text = str(err.value)
    assert "cuda_graphs" in text and "unknown TensorRT setting" in text and "cuda_graph" in text


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"builder_optimization_level": 6}, "builder_optimization_level"),
        ({"workspace_mib": 0}, "workspace_mib"),
        ({"calibrator": "percentile"}, "calibrator"),
        ({"batch_profile": {"min": 8, "max": 4}}, "batch_profile"),
        ({"batch_profile": {"min": 1, "opt": 16, "max": 8}}, "batch_profile"),
        ({"batch_profile": {"min": 1, "max": 8, "maxx": 9}}, "batch_profile.maxx"),
        ({"calibration_images": 0}, "calibration_images"),
        ({"cuda_graph": "maybe"}, "cuda_graph"),
    ],
)
def test_bad_settings_name_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(UserError) as err:
        parse_settings(raw, "runtimes[0].settings")
    assert f"  {field}:" in str(err.value)
    assert str(err.value).startswith("runtimes[0].settings: invalid TensorRT settings")


def test_every_setting_is_classified_exactly_once() -> None:
    groups = [*BUILDER_FIELDS, *CALIBRATION_FIELDS, *NOT_IN_ENGINE_FIELDS]
    assert sorted(groups) == sorted(TensorRTSettings.model_fields)
    assert len(groups) == len(set(groups))


def test_strongly_typed_refuses_fp16_and_int8_but_not_fp32() -> None:
    typed = parse_settings({"strongly_typed": True})
    assert precision_problem("fp32", typed) is None
    assert "FP16 builder flag" in (precision_problem("fp16", typed) or "")
    assert "INT8" in (precision_problem("int8", typed) or "")
    assert precision_problem("fp16", parse_settings({})) is None


def test_cell_problems_for_plan_validation(tmp_path: Path) -> None:
    assert cell_problems(make_cell(tmp_path)) == []
    bad = make_cell(tmp_path, settings={"workspace": 1024})
    assert bad.runtime.settings == {"workspace": 1024}
    [(where, what)] = cell_problems(bad)
    assert where == "runtime.settings" and "workspace" in what
    problems = dict(cell_problems(make_cell(tmp_path, precision="int8")))
    assert "no `dataset`" in problems["dataset"]
    typed = dict(cell_problems(make_cell(tmp_path, precision="fp16", settings={"strongly_typed": True})))
    assert "strongly typed" in typed["runtime.settings.strongly_typed"]
    narrow = dict(cell_problems(make_cell(tmp_path, batch=8, settings={"batch_profile": {"min": 1, "max": 4}})))
    assert "batch 8" in narrow["runtime.settings.batch_profile"]


def test_version_problem() -> None:
    assert version_problem("10.4.0.26", "fp16") is None
    assert version_problem("10.13.3.9", "int8") is None
    assert "older than 10" in (version_problem("8.6.1", "fp32") or "")
    assert "removed the FP16 builder flag" in (version_problem("11.4.0", "fp16") or "")
    assert version_problem("11.4.0", "fp32") is None


# -- profiles ----------------------------------------------------------------------------------


def test_default_profile_is_a_static_engine_at_the_cell_batch() -> None:
    profile = batch_profile(TensorRTSettings(), 4)
    assert (profile.min, profile.opt, profile.max, profile.dynamic) == (4, 4, 4, False)
    assert profile.shapes([3, 384, 384]) == {
        "min": [4, 3, 384, 384],
        "opt": [4, 3, 384, 384],
        "max": [4, 3, 384, 384],
    }


def test_explicit_profile_covers_cells_in_range_only() -> None:
    settings = parse_settings({"batch_profile": {"min": 1, "opt": 8, "max": 32}})
    assert batch_profile(settings, 16) == BatchProfile(1, 8, 32)
    assert batch_profile(settings, 16).dynamic
    assert batch_profile(parse_settings({"batch_profile": {"min": 1, "max": 32}}), 1).opt == 32
    with pytest.raises(UserError, match="batch 64"):
        batch_profile(settings, 64)


def test_profile_from_a_plans_batch_sizes() -> None:
    assert profile_covering([8, 1, 32, 8]) == BatchProfile(1, 32, 32)
    assert profile_covering([1, 8, 32], opt=8) == BatchProfile(1, 8, 32)
    assert profile_covering([4]) == BatchProfile(4, 4, 4)
    with pytest.raises(UserError):
        profile_covering([])
    with pytest.raises(UserError, match="outside"):
        profile_covering([1, 8], opt=16)


def test_input_dims_from_the_onnx_shape() -> None:
    static = BatchProfile(1, 1, 1)
    assert resolve_input_dims([1, 3, 384, 384], static, 384) == [3, 384, 384]
    assert resolve_input_dims([-1, 3, -1, -1], BatchProfile(1, 4, 8), 512) == [3, 512, 512]
    with pytest.raises(UserError, match="fixed at 1"):
        resolve_input_dims([1, 3, 384, 384], BatchProfile(1, 8, 8), 384)
    with pytest.raises(UserError, match="N x C x H x W"):
        resolve_input_dims([3, 384, 384], static, 384)


def test_calibration_batch_follows_the_profile() -> None:
    settings = parse_settings({"calibration_batch": 16})
    assert calibration_batch_for(BatchProfile(2, 2, 2), settings) == 2  # static: its own batch
    assert calibration_batch_for(BatchProfile(1, 8, 32), settings) == 16


# -- engine keys -------------------------------------------------------------------------------


def test_engine_key_is_stable_and_canonical() -> None:
    assert key_for() == key_for()
    assert len(key_for()) == 64 and int(key_for(), 16) >= 0
    assert canonical_json({"b": 1, "a": [1, 2]}) == canonical_json({"a": [1, 2], "b": 1}) == '{"a":[1,2],"b":1}'


@pytest.mark.parametrize(
    "change",
    [
        {"onnx_sha256": "b" * 64},
        {"gpu": GpuIdentity("NVIDIA A10G", "7.5")},  # another model, same compute capability
        {"gpu": GpuIdentity("Tesla T4", "8.6")},  # same name, other compute capability
        {"tensorrt_version": "10.4.1"},
        {"precision": "fp32"},
        {"input_name": "images"},
        {"input_shapes": BatchProfile(1, 1, 1).shapes([3, 512, 512])},
        {"input_shapes": BatchProfile(1, 4, 8).shapes([3, 384, 384])},
    ],
)
def test_engine_key_changes_with_each_identity_field(change: dict[str, Any]) -> None:
    assert key_for(**change) != key_for()


# One value per builder setting that differs from its default.
BUILDER_ALTERNATIVES: dict[str, Any] = {
    "workspace_mib": 2048,
    "builder_optimization_level": 5,
    "strongly_typed": True,
    "tf32": False,
    "int8_fp16_fallback": False,
    "batch_profile": {"min": 1, "max": 8},
    "timing_cache": False,
}


def test_engine_key_changes_with_every_builder_setting() -> None:
    assert set(BUILDER_ALTERNATIVES) == set(BUILDER_FIELDS)
    base = key_for()
    seen = {base}
    for name, value in BUILDER_ALTERNATIVES.items():
        key = key_for(settings=parse_settings({name: value}))
        assert key != base, name
        seen.add(key)
    assert len(seen) == len(BUILDER_ALTERNATIVES) + 1
    assert key_for(settings=parse_settings({"tf32": True})) != key_for(settings=parse_settings({"tf32": None}))


def test_runtime_and_calibration_settings_leave_fp16_keys_alone() -> None:
    base = key_for()
    for raw in ({"cuda_graph": True}, {"log_level": "verbose"}, {"opset": 18}, {"calibration_images": 64}, {"calibrator": "minmax"}):
        assert key_for(settings=parse_settings(raw)) == base, raw


def test_int8_keys_need_and_follow_the_calibration_key() -> None:
    with pytest.raises(ValueError, match="calibration key"):
        key_for(precision="int8")
    a = key_for(precision="int8", calibration_key="c" * 64)
    assert a != key_for(precision="int8", calibration_key="d" * 64)
    # The calibration key never leaks into non-INT8 keys.
    assert key_for(calibration_key="c" * 64) == key_for()


def test_timing_cache_name_per_gpu_and_version() -> None:
    assert timing_cache_name(T4, "10.4.0") == timing_cache_name(T4, "10.4.0")
    assert timing_cache_name(T4, "10.4.0") != timing_cache_name(T4, "10.5.0")
    assert timing_cache_name(T4, "10.4.0") != timing_cache_name(GpuIdentity("NVIDIA L4", "8.9"), "10.4.0")


# -- calibration images ------------------------------------------------------------------------


def test_calibration_selection_is_deterministic_sorted_and_recorded(tmp_path: Path) -> None:
    dataset = make_coco(tmp_path / "coco", 50)
    cell = make_cell(tmp_path, precision="int8", dataset=dataset, settings={"calibration_images": 10, "calibration_seed": 7})
    settings = parse_settings(cell.runtime.settings)
    first = select_calibration_images(cell=cell, settings=settings)
    again = select_calibration_images(cell=cell, settings=settings)
    assert first.image_ids == again.image_ids
    assert first.image_ids == sorted(first.image_ids) and len(set(first.image_ids)) == 10
    assert first.pool_size == 50 and first.source == "plan dataset" and first.overlaps_evaluation
    sidecar = first.sidecar()
    assert sidecar["image_ids"] == first.image_ids
    assert sidecar["file_names"] == [f"{(i - 1000) // 3:06d}.jpg" for i in first.image_ids]
    assert sidecar["seed"] == 7 and sidecar["count"] == 10 and sidecar["annotations_sha256"] == first.annotations_sha256
    json.dumps(sidecar)  # recorded with the result: must be JSON

    other_seed = parse_settings({"calibration_images": 10, "calibration_seed": 8})
    assert select_calibration_images(cell=cell, settings=other_seed).image_ids != first.image_ids


def test_selection_ignores_annotation_order(tmp_path: Path) -> None:
    ordered = make_coco(tmp_path / "a", 40)
    shuffled = make_coco(tmp_path / "b", 40, shuffle_seed=3)
    settings = parse_settings({"calibration_images": 12})
    a = select_calibration_images(cell=make_cell(tmp_path, precision="int8", dataset=ordered), settings=settings)
    b = select_calibration_images(cell=make_cell(tmp_path, precision="int8", dataset=shuffled), settings=settings)
    assert a.image_ids == b.image_ids


def test_selection_is_stable_when_images_are_added() -> None:
    pool = [CalibrationImage(i, f"{i}.jpg") for i in range(200)]
    extra = [CalibrationImage(i, f"{i}.jpg") for i in range(200, 260)]
    before = {im.image_id for im in choose_images(pool, 20, seed=0)}
    after = {im.image_id for im in choose_images(pool + extra, 20, seed=0)}
    # Each image's rank depends on itself only: the new choice is old picks plus new images.
    assert after <= before | {im.image_id for im in extra}


def test_asking_for_more_images_than_exist_fails(tmp_path: Path) -> None:
    dataset = make_coco(tmp_path / "coco", 5)
    cell = make_cell(tmp_path, precision="int8", dataset=dataset)
    with pytest.raises(CalibrationError, match="only 5 images"):
        select_calibration_images(cell=cell, settings=parse_settings({"calibration_images": 6}))


def test_int8_without_a_dataset_fails_with_a_clear_reason(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, precision="int8")
    with pytest.raises(CalibrationError) as err:
        select_calibration_images(cell=cell, settings=parse_settings({}))
    assert "no `dataset`" in str(err.value) and "never calibrates on a default" in str(err.value)


def test_int8_on_the_generated_sample_draws_from_it(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, precision="int8", dataset={"sample": True, "sample_images": 6})
    chosen = select_calibration_images(cell=cell, settings=parse_settings({"calibration_images": 4}))
    assert chosen.source == "plan dataset (generated sample)" and chosen.pool_size == 6
    assert chosen.images_dir.is_relative_to(tmp_path / "artifacts" / "datasets")
    assert all(p.is_file() for p in chosen.paths())


def test_selection_rule_matches_the_accuracy_subset_rule() -> None:
    from harness.accuracy.datasets import select_image_ids

    pool = [CalibrationImage(i, f"{i}.jpg") for i in range(5, 400, 7)]
    for seed in (0, 1, 42):
        ours = [im.image_id for im in choose_images(pool, 13, seed)]
        assert ours == select_image_ids([im.image_id for im in pool], "random", 13, seed)


def test_a_missing_chosen_image_is_an_error_not_a_substitute(tmp_path: Path) -> None:
    dataset = make_coco(tmp_path / "coco", 20)
    cell = make_cell(tmp_path, precision="int8", dataset=dataset)
    settings = parse_settings({"calibration_images": 5})
    chosen = select_calibration_images(cell=cell, settings=settings)
    chosen.paths()[2].unlink()
    with pytest.raises(CalibrationError, match=r"1 chosen calibration image\(s\) are missing: .*"):
        select_calibration_images(cell=cell, settings=settings)


def test_calibration_dataset_setting_overrides_the_plans(tmp_path: Path) -> None:
    evaluation = make_coco(tmp_path / "val", 10)
    train = make_coco(tmp_path / "train", 30)
    cell = make_cell(
        tmp_path,
        precision="int8",
        dataset=evaluation,
        settings={"calibration_images": 8, "calibration_dataset": train},
    )
    chosen = select_calibration_images(cell=cell, settings=parse_settings(cell.runtime.settings))
    assert chosen.source == "settings.calibration_dataset" and not chosen.overlaps_evaluation
    assert chosen.pool_size == 30 and chosen.annotations == Path(train["annotations"])


def test_relative_dataset_paths_resolve_against_the_plan(tmp_path: Path) -> None:
    make_coco(tmp_path / "coco", 10)
    cell = make_cell(tmp_path, precision="int8", dataset={"images": "coco/images", "annotations": "coco/instances.json"})
    chosen = select_calibration_images(cell=cell, settings=parse_settings({"calibration_images": 3}))
    assert chosen.images_dir == tmp_path / "coco" / "images"


def test_coco_reader_errors(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="do not exist"):
        read_coco_images(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CalibrationError, match="cannot be read as JSON"):
        read_coco_images(bad)
    bad.write_text(json.dumps({"images": [{"file_name": "x.jpg"}]}))
    with pytest.raises(CalibrationError, match=r"images\[0\]"):
        read_coco_images(bad)


def test_calibration_key_follows_images_algorithm_and_shape(tmp_path: Path) -> None:
    dataset = make_coco(tmp_path / "coco", 30)
    cell = make_cell(tmp_path, precision="int8", dataset=dataset)
    a = select_calibration_images(cell=cell, settings=parse_settings({"calibration_images": 8}))
    b = select_calibration_images(cell=cell, settings=parse_settings({"calibration_images": 9}))
    base = {"calibrator": "entropy2", "input_shape": [1, 3, 64, 64], "preprocess": "p"}
    assert a.key(**base) == a.key(**base)
    assert a.key(**base) != b.key(**base)
    assert a.key(**base) != a.key(**{**base, "calibrator": "minmax"})
    assert a.key(**base) != a.key(**{**base, "input_shape": [8, 3, 64, 64]})
    assert a.key(**base) != a.key(**{**base, "preprocess": "q"})


def test_calibration_batches_drop_only_a_partial_tail() -> None:
    assert calibration_batches(10, 4) == [range(0, 4), range(4, 8)]
    assert calibration_batches(8, 4) == [range(0, 4), range(4, 8)]
    assert calibration_batches(3, 4) == []
    assert calibration_batches(5, 1) == [range(i, i + 1) for i in range(5)]


# -- batches, buffers ----------------------------------------------------------------------------


def test_pad_batch() -> None:
    batch = np.ones((3, 3, 4, 4), np.float32)
    padded, n = pad_batch(batch, 8)
    assert n == 3 and padded.shape == (8, 3, 4, 4)
    assert padded[:3].sum() == batch.sum() and padded[3:].sum() == 0
    same, n = pad_batch(batch, 3)
    assert same is batch and n == 3
    with pytest.raises(ValueError, match="larger"):
        pad_batch(batch, 2)


def test_torch_dtype_names() -> None:
    assert torch_dtype_name("FLOAT") == "float32" and torch_dtype_name("HALF") == "float16"
    with pytest.raises(ValueError, match="FP8"):
        torch_dtype_name("FP8")


# -- the cache on disk ---------------------------------------------------------------------------


def test_engine_cache_store_and_lookup(tmp_path: Path) -> None:
    fields = {"scheme": 1, "x": [1, 2]}
    cache = EngineCache(tmp_path, engine_key(fields), fields)
    assert cache.lookup() is None
    meta = cache.store(b"engine-bytes", {"build_s": 1.5})
    assert meta["engine_bytes"] == 12 and meta["key_fields"] == fields
    assert cache.lookup() == meta
    assert sorted(p.name for p in cache.folder.iterdir()) == ["engine.plan", "meta.json"]  # no temp files left
    # A re-run with the same key reuses it; another key never finds it.
    other = {"scheme": 1, "x": [1, 3]}
    assert EngineCache(tmp_path, engine_key(other), other).lookup() is None


def test_engine_cache_rejects_damaged_or_foreign_entries(tmp_path: Path) -> None:
    fields = {"scheme": 1}
    cache = EngineCache(tmp_path, engine_key(fields), fields)
    cache.store(b"engine-bytes", {})
    cache.engine_path.write_bytes(b"engine-bytez")
    assert cache.lookup() is None and "sha256" in (cache.stale_reason or "")

    cache.store(b"engine-bytes", {})
    meta = json.loads(cache.meta_path.read_text())
    meta["key_fields"] = {"scheme": 1, "gpu": "other"}
    cache.meta_path.write_text(json.dumps(meta))
    fresh = EngineCache(tmp_path, cache.key, fields)
    assert fresh.lookup() is None and "different engine" in (fresh.stale_reason or "")

    cache.meta_path.unlink()
    assert EngineCache(tmp_path, cache.key, fields).lookup() is None  # incomplete entry


def test_atomic_write_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]


# -- what is recorded ---------------------------------------------------------------------------


def test_settings_record_keeps_requested_readback_versions_and_graph() -> None:
    settings = parse_settings({"cuda_graph": True, "workspace_mib": 1024})
    record = settings_record(
        settings=settings,
        precision="fp16",
        versions={"tensorrt": "10.4.0"},
        gpu=T4,
        engine_key_value="k" * 64,
        cache_hit=True,
        engine={"bytes": 10},
        builder_readback={"flags_set": ["FP16", "TF32"], "builder_optimization_level": 3},
        runtime={"cuda_graph": {"requested": True, "used": False, "reason": "capture failed"}},
        calibration=None,
        notes=[],
    )
    assert record["requested"]["cuda_graph"] is True and record["requested"]["workspace_mib"] == 1024
    # Defaults are written out, not left implicit.
    assert record["requested"]["builder_optimization_level"] is None and record["requested"]["timing_cache"] is True
    assert record["builder"]["flags_set"] == ["FP16", "TF32"]
    assert record["engine_cache_hit"] is True and record["engine_key"] == "k" * 64
    assert record["cuda_graph_used"] is False
    assert record["runtime_path"]["cuda_graph"]["reason"] == "capture failed"
    assert record["versions"]["tensorrt"] == "10.4.0" and record["gpu"]["compute_capability"] == "7.5"
    json.dumps(record)


# -- the published-table plan ---------------------------------------------------------------------


def test_published_plan_reproduces_rfdetrs_table_conditions() -> None:
    loaded = load_plan(REPO / "plans" / "rfdetr-published.yaml", check_paths=False)  # COCO is not fetched here
    cells = loaded.cells
    assert [(c.model.variant, c.resolution) for c in cells] == [
        ("nano", 384),
        ("small", 512),
        ("medium", 576),
        ("large", 704),
        ("xlarge", 700),
        ("2xlarge", 880),
    ]
    for cell in cells:
        assert (cell.runtime.name, cell.precision, cell.batch, cell.scope) == ("tensorrt", "fp16", 1, "model")
        assert cell.protocol.pause_ms == 200 and cell.model.weights == "cache"
        assert cell.dataset is not None and cell.dataset.subset.mode == "all" and cell.run_accuracy
        assert cell.resolve_path(cell.dataset.images).resolve() == REPO / "datasets" / "coco" / "val2017"
        assert cell.resolve_path(cell.dataset.annotations).resolve() == (
            REPO / "datasets" / "coco" / "annotations" / "instances_val2017.json"
        )
        assert cell_problems(cell) == []
