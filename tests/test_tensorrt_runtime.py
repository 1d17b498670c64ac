"""The TensorRT runtime's own calls, exercised without TensorRT.

`FakeTensorRT` stands in for the `tensorrt` module (injected through sys.modules). It is a
recorder, not an emulator: it checks nothing TensorRT would check and builds no engine. What
these tests assert is the harness's side: which calls it makes, in which order, with which
values, what it caches and records, and how it fails. The calibration loop follows TensorRT's
documented calibrator protocol (read_calibration_cache, then get_batch until it returns an
empty list, then write_calibration_cache), so the harness's calibrator and image feeding run
for real. Only the GPU-bound steps (choosing the CUDA device, deserialising the engine) are
replaced, by monkeypatching two methods.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import io
import json
import sys
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from PIL import Image

from harness.errors import CellSkipped, UserError
from harness.models.base import ImageMeta, ModelSource, OnnxArtifact
from harness.models.detections import Detections
from harness.plan.cells import Cell
from harness.plan.load import load_plan, parse_plan
from harness.runtimes.tensorrt.engine import CalibrationError, GpuIdentity
from harness.runtimes.tensorrt.runtime import TensorRTRuntime, tensorrt_import_problem

REPO = Path(__file__).resolve().parents[1]
RES = 32


# -- a recording stand-in for the tensorrt module ----------------------------------------------


class _Member:
    def __init__(self, owner: str, name: str, value: int):
        self.owner, self.name, self.value = owner, name, value

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"{self.owner}.{self.name}"


def _enum(owner: str, **members: int) -> type:
    cls = type(owner, (), {})
    table = {name: _Member(owner, name, value) for name, value in members.items()}
    for name, member in table.items():
        setattr(cls, name, member)
    cls.__members__ = table  # type: ignore[attr-defined]
    return cls


class FakeTensorRT(types.ModuleType):
    def __init__(self, version: str = "10.4.0.26", input_shape: Sequence[int] = (1, 3, RES, RES)):
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls: list[tuple[Any, ...]] = []
        self.input_shape = list(input_shape)
        self.parse_ok = True
        self.build_returns_none = False
        self.calibration_batches_seen: list[list[int]] = []
        self.calibration_data: list[np.ndarray] = []
        fake = self

        self.BuilderFlag = _enum("BuilderFlag", FP16=0, INT8=1, TF32=6, BF16=17)
        self.MemoryPoolType = _enum("MemoryPoolType", WORKSPACE=0, DLA_MANAGED_SRAM=1, TACTIC_SHARED_MEMORY=5)
        self.PreviewFeature = _enum("PreviewFeature", PROFILE_SHARING_0806=0)
        self.NetworkDefinitionCreationFlag = _enum("NetworkDefinitionCreationFlag", EXPLICIT_BATCH=0, STRONGLY_TYPED=1)

        class Logger:
            ERROR, WARNING, INFO, VERBOSE = "ERROR", "WARNING", "INFO", "VERBOSE"

            def __init__(self, severity: str = "WARNING"):
                self.severity = severity

        class Tensor:
            def __init__(self) -> None:
                self.name = "input"
                self.shape = list(fake.input_shape)

        class Network:
            def __init__(self, flags: int):
                self.flags = flags
                self.num_inputs = 1

            def get_input(self, index: int) -> Tensor:
                return Tensor()

            def get_flag(self, flag: _Member) -> bool:
                return bool(self.flags & (1 << int(flag)))

        class Parser:
            def __init__(self, network: Network, logger: Logger):
                self.num_errors = 0

            def parse_from_file(self, path: str) -> bool:
                fake.calls.append(("parse_from_file", path))
                if not fake.parse_ok:
                    self.num_errors = 2
                return fake.parse_ok

            def get_error(self, index: int) -> str:
                return f"unsupported node {index}"

        class Profile:
            def __init__(self) -> None:
                self.shapes: dict[str, Any] = {}

            def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
                self.shapes[name] = (list(lo), list(opt), list(hi))

        class TimingCache:
            def __init__(self, data: bytes):
                self.data = data

            def serialize(self) -> bytes:
                return b"timing:" + self.data

        class Config:
            def __init__(self) -> None:
                self._flags = {"TF32"}  # TensorRT's default
                self._pools: dict[str, int] = {}
                self._level = 3
                self._calibrator: Any = None
                self._timing: TimingCache | None = None
                self._calibration_shape: list[int] | None = None

            def set_flag(self, flag: _Member) -> None:
                fake.calls.append(("set_flag", flag.name))
                self._flags.add(flag.name)

            def clear_flag(self, flag: _Member) -> None:
                fake.calls.append(("clear_flag", flag.name))
                self._flags.discard(flag.name)

            def get_flag(self, flag: _Member) -> bool:
                return flag.name in self._flags

            def set_memory_pool_limit(self, pool: _Member, size: int) -> None:
                fake.calls.append(("set_memory_pool_limit", pool.name, size))
                self._pools[pool.name] = size

            def get_memory_pool_limit(self, pool: _Member) -> int:
                return self._pools.get(pool.name, 16 << 30)

            def get_preview_feature(self, feature: _Member) -> bool:
                return False

            @property
            def builder_optimization_level(self) -> int:
                return self._level

            @builder_optimization_level.setter
            def builder_optimization_level(self, level: int) -> None:
                fake.calls.append(("builder_optimization_level", level))
                self._level = level

            @property
            def int8_calibrator(self) -> Any:
                return self._calibrator

            @int8_calibrator.setter
            def int8_calibrator(self, calibrator: Any) -> None:
                fake.calls.append(("int8_calibrator", type(calibrator).__name__))
                self._calibrator = calibrator

            def set_calibration_profile(self, profile: Profile) -> None:
                fake.calls.append(("set_calibration_profile", profile.shapes))
                self._calibration_shape = next(iter(profile.shapes.values()))[1]

            def add_optimization_profile(self, profile: Profile) -> int:
                fake.calls.append(("add_optimization_profile", profile.shapes))
                return 0

            def create_timing_cache(self, data: bytes) -> TimingCache:
                fake.calls.append(("create_timing_cache", bytes(data)))
                return TimingCache(bytes(data))

            def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
                fake.calls.append(("set_timing_cache", ignore_mismatch))
                self._timing = cache
                return True

            def get_timing_cache(self) -> TimingCache:
                fake.calls.append(("get_timing_cache",))
                return self._timing or TimingCache(b"")

        class Builder:
            def __init__(self, logger: Logger):
                fake.calls.append(("Builder",))

            def create_network(self, flags: int = 0) -> Network:
                fake.calls.append(("create_network", flags))
                return Network(flags)

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
                fake.calls.append(("build_serialized_network", sorted(config._flags)))
                calibrator = config._calibrator
                if calibrator is not None:  # TensorRT's documented calibrator protocol
                    shape = config._calibration_shape or network.get_input(0).shape
                    count = int(np.prod(shape))
                    if calibrator.read_calibration_cache() is None:
                        while batch := calibrator.get_batch(["input"]):
                            fake.calibration_batches_seen.append(batch)
                            # Read the input the way TensorRT does: from the address given.
                            raw = (ctypes.c_float * count).from_address(batch[0])
                            fake.calibration_data.append(np.ctypeslib.as_array(raw).reshape(shape).copy())
                        calibrator.write_calibration_cache(b"scales")
                if fake.build_returns_none:
                    return None
                return json.dumps({"flags": sorted(config._flags), "network_flags": network.flags}).encode()

        class _Calibrator:
            def __init__(self) -> None:
                pass

        self.Logger = Logger
        self.Builder = Builder
        self.OnnxParser = Parser
        self.Dims = list
        self.IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (_Calibrator,), {})
        self.IInt8MinMaxCalibrator = type("IInt8MinMaxCalibrator", (_Calibrator,), {})

    def init_libnvinfer_plugins(self, logger: Any, namespace: str) -> bool:
        self.calls.append(("init_libnvinfer_plugins", namespace))
        return True

    def get_nv_onnx_parser_version(self) -> int:
        return 10

    def names(self) -> list[Any]:
        return [c[0] for c in self.calls]


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeTensorRT]:
    fake = FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    yield fake


# -- a model source giving a fixed ONNX file -----------------------------------------------------


class FileSource(ModelSource):
    """Writes a stand-in ONNX file whose bytes depend on the export options, as an exporter
    would; the fake parser never reads it."""

    exports: list[dict[str, Any]] = []

    @property
    def class_names(self) -> list[str | None]:
        return ["thing"]

    def preprocess(self, images: Sequence[np.ndarray], resolution: int) -> tuple[np.ndarray, list[ImageMeta]]:
        from harness.models.preprocess import RFDETR_PREPROCESS, preprocess_images

        return preprocess_images(images, resolution, RFDETR_PREPROCESS)

    def decode(self, outputs: dict[str, np.ndarray], metas: list[ImageMeta]) -> list[Detections]:
        raise NotImplementedError

    def onnx_artifact(self, artifacts_dir: Path, dynamic_batch: bool, opset: int = 17) -> OnnxArtifact:
        FileSource.exports.append({"dir": artifacts_dir, "dynamic_batch": dynamic_batch})
        data = f"onnx dynamic={dynamic_batch} batch={self.cell.batch} res={self.cell.resolution}".encode()
        path = artifacts_dir / "onnx" / f"{hashlib.sha256(data).hexdigest()[:12]}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return OnnxArtifact(
            path=path, input_name="input", output_names=["dets", "labels"], dynamic_batch=dynamic_batch,
            opset=17, export_s=None, cached=True, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
        )


@pytest.fixture(autouse=True)
def _artifacts_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The artifact cache (engines, exports) resolves against the working directory: keep each
    test's cache its own."""
    monkeypatch.chdir(tmp_path)


def make_cell(tmp_path: Path, *, precision: str = "fp16", settings: dict[str, Any] | None = None,
              dataset: dict[str, Any] | None = None, batch: int = 1) -> Cell:
    plan: dict[str, Any] = {
        "name": "trt-runtime-test",
        "device": "cuda:0",
        "artifacts": "artifacts",
        "models": [{"name": "det", "source": "onnx", "path": "det.onnx", "resolutions": [RES]}],
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


def make_jpeg_dataset(root: Path, count: int) -> dict[str, str]:
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = []
    for i in range(count):
        name = f"{i:04d}.jpg"
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(images_dir / name)
        images.append({"id": i + 1, "file_name": name, "height": 20, "width": 24})
    annotations = root / "instances.json"
    annotations.write_text(json.dumps({"images": images, "annotations": [], "categories": []}))
    return {"images": str(images_dir), "annotations": str(annotations)}


def prepared(cell: Cell, monkeypatch: pytest.MonkeyPatch, gpu: GpuIdentity = GpuIdentity("Tesla T4", "7.5")
             ) -> tuple[TensorRTRuntime, dict[str, Any]]:
    """prepare() with the two GPU-bound steps replaced: the device is the CPU and the engine
    bytes are kept instead of deserialised."""
    import torch

    def select_gpu(self: TensorRTRuntime) -> None:
        self.device = torch.device("cpu")
        self.gpu = gpu

    def load(self: TensorRTRuntime, engine_bytes: bytes) -> None:
        self.loaded_bytes = engine_bytes  # type: ignore[attr-defined]

    monkeypatch.setattr(TensorRTRuntime, "_select_gpu", select_gpu)
    monkeypatch.setattr(TensorRTRuntime, "_load", load)
    runtime = TensorRTRuntime(cell, FileSource(cell, io.StringIO()), io.StringIO())
    return runtime, runtime.prepare()


# -- availability -----------------------------------------------------------------------------------


def _real_tensorrt_present() -> bool:
    return tensorrt_import_problem() is None and "tensorrt" not in sys.modules


def test_unavailable_reason_names_the_missing_package(tmp_path: Path) -> None:
    if _real_tensorrt_present():
        pytest.skip("TensorRT is installed here")
    reason = TensorRTRuntime.unavailable_reason(make_cell(tmp_path))
    assert reason is not None and reason.startswith("tensorrt Python package not installed")
    assert "skipped, the rest of the plan runs" in reason


def test_every_published_plan_cell_is_skipped_with_that_reason_here() -> None:
    if _real_tensorrt_present():
        pytest.skip("TensorRT is installed here")
    cells = load_plan(REPO / "plans" / "rfdetr-published.yaml", check_paths=False).cells  # COCO is not fetched here
    reasons = {TensorRTRuntime.unavailable_reason(c) for c in cells}
    assert len(reasons) == 1 and next(iter(reasons)).startswith("tensorrt Python package not installed")  # type: ignore[union-attr]


def test_import_problem_tells_stubs_from_absence(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.machinery
    import importlib.util

    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert tensorrt_import_problem() == (
        "tensorrt Python package not installed (TensorRT cells need TensorRT 10 and an NVIDIA GPU, "
        "e.g. inside the project's GPU image; these cells are skipped, the rest of the plan runs)"
    )
    namespace = importlib.machinery.ModuleSpec("tensorrt", None, is_package=True)
    namespace.submodule_search_locations = ["/site-packages/tensorrt"]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: namespace)
    assert "(only type stubs found at /site-packages/tensorrt)" in (tensorrt_import_problem() or "")
    real = importlib.machinery.ModuleSpec("tensorrt", None, origin="/site-packages/tensorrt/__init__.py")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: real)
    assert tensorrt_import_problem() is None


def test_with_tensorrt_but_no_gpu_the_reason_is_the_gpu(fake_trt: FakeTensorRT, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    reason = TensorRTRuntime.unavailable_reason(make_cell(tmp_path))
    assert reason is not None and "sees no CUDA device" in reason


def test_invalid_settings_fail_at_construction(tmp_path: Path) -> None:
    cell = make_cell(tmp_path, settings={"cudagraph": True})
    with pytest.raises(UserError, match="cudagraph"):
        TensorRTRuntime(cell, FileSource(cell, io.StringIO()), io.StringIO())


def test_tensorrt_11_skips_fp16_cells(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT(version="11.4.0"))
    with pytest.raises(CellSkipped, match="removed the FP16 builder flag"):
        prepared(make_cell(tmp_path), monkeypatch)


# -- building ---------------------------------------------------------------------------------------


def test_fp16_build_flow_order_and_record(fake_trt: FakeTensorRT, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    runtime, prep = prepared(make_cell(tmp_path), monkeypatch)
    names = fake_trt.names()
    assert names == [
        "init_libnvinfer_plugins",
        "Builder",
        "create_network",
        "parse_from_file",
        "set_flag",
        "create_timing_cache",
        "set_timing_cache",
        "build_serialized_network",
        "get_timing_cache",
    ]
    assert ("create_network", 0) in fake_trt.calls  # weakly typed: FP16 is a builder flag
    assert ("set_flag", "FP16") in fake_trt.calls
    assert ("set_timing_cache", False) in fake_trt.calls  # a foreign timing cache is rejected
    assert fake_trt.calls[-2] == ("build_serialized_network", ["FP16", "TF32"])
    assert FileSource.exports[-1]["dynamic_batch"] is False  # static batch-1 engine by default

    assert prep["engine_cache_hit"] is False and isinstance(prep["build_s"], float)
    assert prep["artifact"]["bytes"] == len(runtime.loaded_bytes)  # type: ignore[attr-defined]
    meta = json.loads((Path(prep["artifact"]["path"]).parent / "meta.json").read_text())
    assert meta["builder"]["flags_set"] == ["FP16", "TF32"]
    assert meta["builder"]["builder_optimization_level"] == 3  # TensorRT's default, read back
    assert meta["builder"]["memory_pool_limits"] == {"WORKSPACE": 16 << 30, "TACTIC_SHARED_MEMORY": 16 << 30}
    assert meta["profile"]["set"] is False and meta["gpu"] == {"name": "Tesla T4", "compute_capability": "7.5"}
    timing = Path(meta["timing_cache"]["path"])
    assert timing.read_bytes() == b"timing:" and meta["timing_cache"]["loaded_existing"] is False

    settings = runtime.settings()
    assert settings["versions"]["tensorrt"] == "10.4.0.26" and settings["versions"]["onnx_parser"] == 10
    assert settings["engine_cache_hit"] is False and settings["engine_key"] == prep["engine_key"]
    assert settings["builder"]["flags_set"] == ["FP16", "TF32"]
    assert settings["requested"]["cuda_graph"] is False and settings["cuda_graph_used"] is False
    assert settings["runtime_path"]["execute"] == "IExecutionContext.execute_async_v3"
    json.dumps(settings)


def test_a_rerun_reuses_the_engine_and_reports_the_same_builder(fake_trt: FakeTensorRT, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    first, prep1 = prepared(make_cell(tmp_path), monkeypatch)
    fake_trt.calls.clear()
    second, prep2 = prepared(make_cell(tmp_path), monkeypatch)
    assert "build_serialized_network" not in fake_trt.names() and "Builder" not in fake_trt.names()
    assert prep2["engine_cache_hit"] is True and prep2["build_s"] is None
    assert prep2["cached_build_s"] == prep1["build_s"]
    assert second.loaded_bytes == first.loaded_bytes  # type: ignore[attr-defined]
    assert second.settings()["builder"] == first.settings()["builder"]
    assert second.settings()["engine_cache_hit"] is True


def test_the_timing_cache_is_loaded_by_the_next_build(fake_trt: FakeTensorRT, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    prepared(make_cell(tmp_path), monkeypatch)
    fake_trt.calls.clear()
    prepared(make_cell(tmp_path, settings={"workspace_mib": 512}), monkeypatch)  # another engine
    assert ("create_timing_cache", b"timing:") in fake_trt.calls


@pytest.mark.parametrize(
    "change",
    ["settings", "tensorrt", "gpu", "capability"],
)
def test_a_different_build_identity_never_reuses(change: str, fake_trt: FakeTensorRT, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _, first = prepared(make_cell(tmp_path), monkeypatch)
    fake_trt.calls.clear()
    cell, gpu = make_cell(tmp_path), GpuIdentity("Tesla T4", "7.5")
    if change == "settings":
        cell = make_cell(tmp_path, settings={"builder_optimization_level": 5})
    elif change == "tensorrt":
        fake_trt.__version__ = "10.5.0.18"
    elif change == "gpu":
        gpu = GpuIdentity("NVIDIA L4", "8.9")
    else:
        gpu = GpuIdentity("Tesla T4", "8.9")
    _, second = prepared(cell, monkeypatch, gpu)
    assert second["engine_cache_hit"] is False and second["engine_key"] != first["engine_key"]
    assert "build_serialized_network" in fake_trt.names()
    if change == "settings":
        assert fake_trt.names().index("builder_optimization_level") < fake_trt.names().index("build_serialized_network")


def test_builder_settings_reach_the_config_before_the_build(fake_trt: FakeTensorRT, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = {"workspace_mib": 512, "builder_optimization_level": 4, "tf32": False, "timing_cache": False}
    prepared(make_cell(tmp_path, precision="fp32", settings=settings), monkeypatch)
    build_at = fake_trt.names().index("build_serialized_network")
    for call in [("set_memory_pool_limit", "WORKSPACE", 512 << 20), ("builder_optimization_level", 4), ("clear_flag", "TF32")]:
        assert fake_trt.calls.index(call) < build_at
    assert "create_timing_cache" not in fake_trt.names()
    assert fake_trt.calls[build_at] == ("build_serialized_network", [])  # fp32, TF32 cleared


def test_strongly_typed_fp32_network_flag(fake_trt: FakeTensorRT, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    prepared(make_cell(tmp_path, precision="fp32", settings={"strongly_typed": True}), monkeypatch)
    assert ("create_network", 1 << 1) in fake_trt.calls


def test_strongly_typed_fp16_fails_before_tensorrt(fake_trt: FakeTensorRT, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="strongly_typed"):
        prepared(make_cell(tmp_path, settings={"strongly_typed": True}), monkeypatch)
    assert fake_trt.calls == []


def test_dynamic_profile_export_and_shapes(fake_trt: FakeTensorRT, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_trt.input_shape = [-1, 3, RES, RES]
    cell = make_cell(tmp_path, batch=2, settings={"batch_profile": {"min": 1, "opt": 2, "max": 4}})
    prepared(cell, monkeypatch)
    assert FileSource.exports[-1]["dynamic_batch"] is True
    [profile] = [c[1] for c in fake_trt.calls if c[0] == "add_optimization_profile"]
    assert profile == {"input": ([1, 3, RES, RES], [2, 3, RES, RES], [4, 3, RES, RES])}
    assert fake_trt.names().index("add_optimization_profile") < fake_trt.names().index("build_serialized_network")


def test_a_static_onnx_cannot_serve_a_dynamic_profile(fake_trt: FakeTensorRT, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cell = make_cell(tmp_path, settings={"batch_profile": {"min": 1, "max": 4}})
    with pytest.raises(UserError, match="fixed at 1"):
        prepared(cell, monkeypatch)  # the fake network's input is fixed at batch 1
    assert "build_serialized_network" not in fake_trt.names()


def test_an_onnx_at_another_resolution_is_refused(fake_trt: FakeTensorRT, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_trt.input_shape = [1, 3, 64, 64]
    with pytest.raises(UserError, match=f"resolution {RES}"):
        prepared(make_cell(tmp_path), monkeypatch)


def test_parser_errors_are_reported(fake_trt: FakeTensorRT, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_trt.parse_ok = False
    with pytest.raises(RuntimeError, match="unsupported node 0; unsupported node 1"):
        prepared(make_cell(tmp_path), monkeypatch)


def test_a_failed_build_stores_nothing(fake_trt: FakeTensorRT, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_trt.build_returns_none = True
    with pytest.raises(RuntimeError, match="could not build"):
        prepared(make_cell(tmp_path), monkeypatch)
    assert not list((tmp_path / "artifacts" / "tensorrt").glob("engines/*/meta.json"))


# -- INT8 calibration ---------------------------------------------------------------------------------


def test_int8_calibrates_on_the_recorded_images(fake_trt: FakeTensorRT, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    dataset = make_jpeg_dataset(tmp_path / "coco", 12)
    cell = make_cell(tmp_path, precision="int8", dataset=dataset, settings={"calibration_images": 5, "calibration_seed": 3})
    runtime, prep = prepared(cell, monkeypatch)
    names = fake_trt.names()
    assert names.index("int8_calibrator") < names.index("build_serialized_network")
    assert ("int8_calibrator", "Entropy2") in fake_trt.calls
    assert fake_trt.calls[names.index("build_serialized_network")][1] == ["FP16", "INT8", "TF32"]
    # Static batch-1 engine: five batches of one image, each a device pointer.
    assert len(fake_trt.calibration_batches_seen) == 5
    assert all(len(b) == 1 and b[0] > 0 for b in fake_trt.calibration_batches_seen)

    # What TensorRT read at those addresses: the chosen images, preprocessed as at inference.
    chosen = [Path(dataset["images"]) / name for name in prep["calibration"]["file_names"]]
    expected, _ = runtime.source.preprocess([np.asarray(Image.open(p).convert("RGB")) for p in chosen], RES)
    assert np.allclose(np.concatenate(fake_trt.calibration_data), expected)

    calib = prep["calibration"]
    assert calib["images_fed"] == 5 and calib["count"] == 5 and calib["batch"] == 1 and calib["seed"] == 3
    assert calib["cache_written"] is True and calib["cache_read"] is False
    assert calib["overlaps_evaluation_set"] is True and calib["source"] == "plan dataset"
    folder = Path(prep["artifact"]["path"]).parent
    assert (folder / "calibration.cache").read_bytes() == b"scales"  # beside the engine
    sidecar = json.loads((folder / "calibration.json").read_text())
    assert sidecar["image_ids"] == calib["image_ids"] and len(sidecar["image_ids"]) == 5
    assert runtime.settings()["calibration"]["image_ids"] == calib["image_ids"]
    assert any("deprecated" in n for n in runtime.settings()["notes"])


def test_int8_reuses_its_calibration_cache_when_the_engine_is_rebuilt(fake_trt: FakeTensorRT, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    dataset = make_jpeg_dataset(tmp_path / "coco", 6)
    cell = make_cell(tmp_path, precision="int8", dataset=dataset, settings={"calibration_images": 4})
    _, prep = prepared(cell, monkeypatch)
    Path(prep["artifact"]["path"]).unlink()  # engine gone, calibration cache kept
    fake_trt.calibration_batches_seen.clear()
    _, again = prepared(cell, monkeypatch)
    assert again["engine_cache_hit"] is False
    assert fake_trt.calibration_batches_seen == []
    assert again["calibration"]["cache_read"] is True and again["calibration"]["images_fed"] == 0


def test_int8_dynamic_engine_calibrates_through_a_fixed_profile(fake_trt: FakeTensorRT, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_trt.input_shape = [-1, 3, RES, RES]
    dataset = make_jpeg_dataset(tmp_path / "coco", 10)
    settings = {"calibration_images": 7, "calibration_batch": 3, "calibrator": "minmax", "batch_profile": {"min": 1, "max": 4}}
    _, prep = prepared(make_cell(tmp_path, precision="int8", dataset=dataset, settings=settings), monkeypatch)
    [calib_profile] = [c[1] for c in fake_trt.calls if c[0] == "set_calibration_profile"]
    assert calib_profile == {"input": ([3, 3, RES, RES],) * 3}
    assert ("int8_calibrator", "MinMax") in fake_trt.calls
    # 7 images in batches of 3: two full batches; the partial one is dropped and recorded.
    assert len(fake_trt.calibration_batches_seen) == 2
    assert [d.shape for d in fake_trt.calibration_data] == [(3, 3, RES, RES)] * 2
    assert prep["calibration"]["images_fed"] == 6 and prep["calibration"]["images_dropped_partial_batch"] == 1


def test_int8_without_a_dataset_fails_before_building(fake_trt: FakeTensorRT, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="no `dataset`"):
        prepared(make_cell(tmp_path, precision="int8"), monkeypatch)
    assert "Builder" not in fake_trt.names()


# -- the run path, on CPU tensors with a recording execution context ----------------------------------


class RecordingContext:
    """Stands in for IExecutionContext: 'computes' outputs from the bound input buffer."""

    def __init__(self, buffers: dict[str, Any], ok: bool = True):
        self.buffers, self.ok, self.streams = buffers, ok, []

    def execute_async_v3(self, stream_handle: int) -> bool:
        self.streams.append(stream_handle)
        x = self.buffers["input"]
        self.buffers["dets"].copy_(x.sum(dim=(1, 2, 3)).reshape(-1, 1, 1).expand_as(self.buffers["dets"]))
        self.buffers["labels"].fill_(float(len(self.streams)))
        return self.ok


def cpu_runtime(tmp_path: Path, batch: int, ok: bool = True) -> tuple[TensorRTRuntime, RecordingContext]:
    import torch

    cell = make_cell(tmp_path, batch=batch)
    runtime = TensorRTRuntime(cell, FileSource(cell, io.StringIO()), io.StringIO())
    runtime.input_name, runtime.output_names = "input", ["dets", "labels"]
    runtime.buffers = {
        "input": torch.zeros((batch, 3, RES, RES)),
        "dets": torch.zeros((batch, 5, 4)),
        "labels": torch.zeros((batch, 5, 2)),
    }
    runtime.stream = types.SimpleNamespace(cuda_stream=1234, synchronize=lambda: None)  # type: ignore[assignment]
    runtime._on_stream = contextlib.nullcontext  # type: ignore[method-assign]
    context = RecordingContext(runtime.buffers, ok)
    runtime.context = context  # type: ignore[assignment]
    return runtime, context


def test_run_path_uses_the_bound_buffers_and_the_runtime_stream(tmp_path: Path) -> None:
    runtime, context = cpu_runtime(tmp_path, batch=4)
    batch = np.ones((4, 3, RES, RES), np.float32)
    x = runtime.to_device(batch)
    assert x is runtime.buffers["input"]  # the bound buffer, not a new tensor
    out = runtime.to_host(runtime.run_model(x))
    assert context.streams == [1234]  # the runtime's stream handle went to execute_async_v3
    assert out["dets"].shape == (4, 5, 4) and np.allclose(out["dets"], 3 * RES * RES)
    assert out["labels"].dtype == np.float32


def test_short_batches_are_padded_then_trimmed(tmp_path: Path) -> None:
    runtime, _ = cpu_runtime(tmp_path, batch=4)
    batch = np.full((3, 3, RES, RES), 2.0, np.float32)
    out = runtime.to_host(runtime.run_model(runtime.to_device(batch)))
    assert out["dets"].shape == (3, 5, 4)
    assert float(runtime.buffers["input"][3].abs().sum()) == 0.0  # padding rows are zeros
    with pytest.raises(ValueError, match="larger"):
        runtime.to_device(np.ones((5, 3, RES, RES), np.float32))


def test_a_failed_execution_raises(tmp_path: Path) -> None:
    runtime, _ = cpu_runtime(tmp_path, batch=1, ok=False)
    with pytest.raises(RuntimeError, match="execute_async_v3 returned False"):
        runtime.run_model(runtime.to_device(np.ones((1, 3, RES, RES), np.float32)))


def test_timer_stream_is_the_runtime_stream(tmp_path: Path) -> None:
    runtime, _ = cpu_runtime(tmp_path, batch=1)
    assert runtime.timer_stream() is runtime.stream


# -- CUDA graph capture on a real GPU, with a stand-in context that launches real CUDA work -----


class CudaWorkContext:
    """Stands in for IExecutionContext on a GPU: execute_async_v3(handle) enqueues real CUDA
    kernels on the stream whose handle it was given, reading and writing the bound buffers,
    as TensorRT does. `misbehave` makes it do what breaks stream capture."""

    def __init__(self, buffers: dict[str, Any], misbehave: str | None = None):
        self.buffers, self.misbehave, self.calls = buffers, misbehave, 0

    def execute_async_v3(self, stream_handle: int) -> bool:
        import torch

        self.calls += 1
        stream = torch.cuda.ExternalStream(stream_handle)
        with torch.cuda.stream(stream):
            x = self.buffers["input"]
            pooled = x.mean(dim=(2, 3))  # (B, 3)
            self.buffers["dets"].copy_(pooled.repeat(1, 5 * 4 // 3 + 1)[:, :20].reshape(-1, 5, 4))
            self.buffers["labels"].copy_(torch.sigmoid(pooled[:, :2]).unsqueeze(1).expand(-1, 5, 2))
            if self.misbehave == "sync" and torch.cuda.is_current_stream_capturing():
                torch.cuda.synchronize()  # illegal while capturing
        return not (self.misbehave == "false" and torch.cuda.is_current_stream_capturing())


def gpu_runtime(tmp_path: Path, misbehave: str | None = None) -> tuple[TensorRTRuntime, CudaWorkContext, io.StringIO]:
    import torch

    cell = make_cell(tmp_path, batch=2, settings={"cuda_graph": True})
    log = io.StringIO()
    runtime = TensorRTRuntime(cell, FileSource(cell, io.StringIO()), log)
    runtime.device = torch.device("cuda:0")
    runtime.input_name, runtime.output_names = "input", ["dets", "labels"]
    runtime.buffers = {
        "input": torch.zeros((2, 3, RES, RES), device="cuda:0"),
        "dets": torch.zeros((2, 5, 4), device="cuda:0"),
        "labels": torch.zeros((2, 5, 2), device="cuda:0"),
    }
    runtime.stream = torch.cuda.Stream(device=runtime.device)
    context = CudaWorkContext(runtime.buffers, misbehave)
    runtime.context = context  # type: ignore[assignment]
    return runtime, context, log


@pytest.mark.gpu
def test_cuda_graph_replays_the_captured_execution(tmp_path: Path) -> None:
    from harness.measure.timers import make_timer

    runtime, context, _ = gpu_runtime(tmp_path)
    runtime._try_capture_graph()
    record = runtime._graph_record
    assert record["used"] is True and record["reason"] is None and record["replay_max_abs_diff"] == 0.0
    calls_after_capture = context.calls

    batch = np.random.default_rng(5).standard_normal((2, 3, RES, RES)).astype(np.float32)
    with_graph = runtime.to_host(runtime.run_model(runtime.to_device(batch)))
    assert context.calls == calls_after_capture  # the graph ran, not execute_async_v3
    pooled = batch.mean(axis=(2, 3))
    assert np.allclose(with_graph["labels"][:, 0, :], 1 / (1 + np.exp(-pooled[:, :2])), atol=1e-5)

    runtime._graph = None
    plain = runtime.to_host(runtime.run_model(runtime.to_device(batch)))
    assert context.calls == calls_after_capture + 1
    for name in ("dets", "labels"):
        assert np.array_equal(plain[name], with_graph[name])

    # CUDA events on the runtime's stream bracket the work.
    timer = make_timer(runtime.timer_stream())
    timer.start()
    runtime.run_model(runtime.buffers["input"])
    timer.stop()
    elapsed_ms, _ = timer.read()
    assert elapsed_ms > 0


@pytest.mark.gpu
@pytest.mark.parametrize("misbehave", ["sync", "false"])
def test_a_failed_capture_is_recorded_and_execution_goes_on(misbehave: str, tmp_path: Path) -> None:
    runtime, context, log = gpu_runtime(tmp_path, misbehave)
    runtime._try_capture_graph()
    record = runtime._graph_record
    assert record["used"] is False and record["reason"], record
    assert runtime._graph is None and "CUDA graph not used" in log.getvalue()
    batch = np.ones((2, 3, RES, RES), np.float32)
    out = runtime.to_host(runtime.run_model(runtime.to_device(batch)))
    assert np.allclose(out["labels"], 1 / (1 + np.exp(-1.0)))
