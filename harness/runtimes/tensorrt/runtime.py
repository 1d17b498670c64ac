"""Native TensorRT: engines built from the model's ONNX with TensorRT's Python API (10.x), run
with execute_async_v3 on the harness's own CUDA stream.

What happens in a cell:
  1. settings validated (`TensorRTSettings`), TensorRT imported (missing -> the cell is skipped)
  2. the model source exports (or reuses) its ONNX file; static batch unless `batch_profile`
  3. INT8: calibration images chosen from the dataset and recorded (none -> the cell fails)
  4. the engine cache is looked up by key (ONNX sha256, GPU, compute capability, TensorRT
     version, precision, profile, every builder setting, calibration set); a miss builds the
     engine (timed as build_s, never part of latency) and stores it with meta.json
  5. the engine is deserialised; the input and output buffers are torch CUDA tensors
     allocated once and bound with set_tensor_address; work runs on one dedicated
     torch.cuda.Stream, which `timer_stream()` hands to the CUDA-event timer
  6. optional CUDA graph (`cuda_graph: true`): one warm execution, capture of one
     execute_async_v3 on that stream, a replay checked against plain execution; any failure is
     recorded with its reason and the cell runs without the graph

torch provides device memory, streams and graphs (the harness needs it for CUDA-event timing
anyway), so there is no pycuda / cuda-python dependency. Library-free logic lives in
`harness.runtimes.tensorrt.engine`, which the tests exercise without TensorRT.

This path has not been run on hardware in the project's own workplace, where TensorRT cannot
be installed; see docs/tensorrt.md.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cached_property, partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from harness.errors import CellSkipped, UserError
from harness.runtimes.base import Runtime
from harness.runtimes.tensorrt import PLUGIN
from harness.runtimes.tensorrt.engine import (
    BatchProfile,
    CalibrationSet,
    EngineCache,
    GpuIdentity,
    atomic_write_bytes,
    atomic_write_json,
    batch_profile,
    calibration_batch_for,
    calibration_batches,
    engine_key,
    engine_key_fields,
    pad_batch,
    precision_problem,
    resolve_input_dims,
    select_calibration_images,
    settings_record,
    timing_cache_name,
    torch_dtype_name,
    version_problem,
)
from harness.runtimes.tensorrt.settings import TensorRTSettings

if TYPE_CHECKING:
    import tensorrt as trt
    import torch

    from harness.models.base import ModelSource
    from harness.plan.cells import Cell

NOT_INSTALLED = (
    "tensorrt Python package not installed{detail} (TensorRT cells need TensorRT 10 and an "
    "NVIDIA GPU, e.g. inside the project's GPU image; these cells are skipped, the rest of the "
    "plan runs)"
)

# The replayed graph must reproduce plain execution; same kernels, so differences beyond
# float noise mean the capture is wrong.
GRAPH_CHECK_ATOL = 1e-3


def tensorrt_import_problem() -> str | None:
    """Why `import tensorrt` would not give TensorRT, without importing it (cheap).

    `tensorrt-stubs` installs bare `.pyi` files as site-packages/tensorrt/, which Python
    imports as an empty namespace package; that is not TensorRT, and is reported as such."""
    module = sys.modules.get("tensorrt")
    if module is not None:
        return None if hasattr(module, "Builder") else NOT_INSTALLED.format(detail=" (a `tensorrt` module without TensorRT's API is loaded)")
    try:
        spec = importlib.util.find_spec("tensorrt")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return NOT_INSTALLED.format(detail="")
    if spec.origin is None:
        where = ", ".join(str(p) for p in (spec.submodule_search_locations or []))
        return NOT_INSTALLED.format(detail=f" (only type stubs found at {where})")
    return None


def cuda_problem(device: str) -> str | None:
    """Why torch cannot give this runtime a CUDA device here, or None."""
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed; the TensorRT runtime uses torch for CUDA memory, streams and timing"
    if not torch.cuda.is_available():
        return f"TensorRT needs an NVIDIA GPU, but torch {torch.__version__} sees no CUDA device here"
    index = int(device.partition(":")[2] or 0) if device.startswith("cuda") else 0
    if index >= torch.cuda.device_count():
        return f"{device} does not exist: torch sees {torch.cuda.device_count()} GPU(s)"
    return None


def _import_tensorrt() -> Any:
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # OSError: libnvinfer missing or unloadable
        raise CellSkipped(NOT_INSTALLED.format(detail=f" (import failed: {exc})")) from None
    if not hasattr(tensorrt, "Builder"):
        raise CellSkipped(NOT_INSTALLED.format(detail=" (only type stubs importable)"))
    return tensorrt


def _dims(dims: trt.Dims) -> list[int]:
    return [int(dims[i]) for i in range(len(dims))]


def _read(fn: Callable[[], Any]) -> Any:
    """A builder-config read that may not exist in this TensorRT minor version."""
    try:
        value = fn()
    except (AttributeError, TypeError, RuntimeError) as exc:
        return f"unavailable ({type(exc).__name__})"
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    return str(value)


def read_builder_config(config: trt.IBuilderConfig, network: trt.INetworkDefinition) -> dict[str, Any]:
    """What the builder will actually use, read back from TensorRT (defaults included, since
    they change between versions)."""
    import tensorrt as trt

    flags = {name: _read(partial(config.get_flag, flag)) for name, flag in trt.BuilderFlag.__members__.items()}
    pools = {
        name: _read(partial(config.get_memory_pool_limit, pool))
        for name, pool in trt.MemoryPoolType.__members__.items()
        if not name.startswith("DLA")
    }
    previews = {
        name: _read(partial(config.get_preview_feature, feature))
        for name, feature in trt.PreviewFeature.__members__.items()
    }
    network_flags = {
        name: _read(partial(network.get_flag, flag))
        for name, flag in trt.NetworkDefinitionCreationFlag.__members__.items()
    }
    return {
        "flags_set": sorted(name for name, on in flags.items() if on is True),
        "flags": flags,
        "memory_pool_limits": pools,
        "builder_optimization_level": _read(lambda: config.builder_optimization_level),
        "avg_timing_iterations": _read(lambda: config.avg_timing_iterations),
        "max_aux_streams": _read(lambda: config.max_aux_streams),
        "max_num_tactics": _read(lambda: config.max_num_tactics),
        "tiling_optimization_level": _read(lambda: config.tiling_optimization_level),
        "hardware_compatibility_level": _read(lambda: config.hardware_compatibility_level),
        "runtime_platform": _read(lambda: config.runtime_platform),
        "engine_capability": _read(lambda: config.engine_capability),
        "default_device_type": _read(lambda: config.default_device_type),
        "profiling_verbosity": _read(lambda: config.profiling_verbosity),
        "tactic_sources": _read(lambda: config.get_tactic_sources()),
        "quantization_flags": _read(lambda: config.quantization_flags),
        "num_optimization_profiles": _read(lambda: config.num_optimization_profiles),
        "preview_features": previews,
        "network_flags": network_flags,
    }


class _CalibrationFeeder:
    """Feeds calibration batches to TensorRT: images read from disk, preprocessed exactly as
    at inference (the model source's preprocess), copied into one device buffer."""

    def __init__(
        self,
        calibration: CalibrationSet,
        batch: int,
        preprocess: Callable[[list[np.ndarray]], np.ndarray],
        device: torch.device,
        cache_path: Path,
        sidecar_path: Path,
        sidecar: dict[str, Any],
        log: TextIO,
    ):
        self.calibration = calibration
        self.batch = batch
        self.preprocess = preprocess
        self.device = device
        self.cache_path = cache_path
        self.sidecar_path = sidecar_path
        self.sidecar = sidecar
        self.log = log
        self.paths = calibration.paths()
        self.ranges = calibration_batches(len(calibration.images), batch)
        if not self.ranges:
            raise UserError(
                f"calibration_images ({len(calibration.images)}) is smaller than the calibration "
                f"batch ({batch}); TensorRT needs at least one full batch"
            )
        self.next_index = 0
        self.images_fed = 0
        self.started: float | None = None
        self.seconds = 0.0
        self.cache_read = False
        self.cache_written = False
        self._buffer: torch.Tensor | None = None

    def next_batch(self) -> list[int]:
        import torch

        from harness.accuracy.loader import decode_image

        if self.started is None:
            self.started = time.perf_counter()
        if self.next_index >= len(self.ranges):
            self.seconds = time.perf_counter() - self.started
            return []  # no more data: TensorRT computes the scales now
        images = [decode_image(self.paths[i]) for i in self.ranges[self.next_index]]
        host = torch.from_numpy(np.ascontiguousarray(self.preprocess(images), dtype=np.float32))
        if self._buffer is None:
            self._buffer = torch.empty(host.shape, dtype=torch.float32, device=self.device)
        # Synchronous copy: the data must be on the device when TensorRT reads the pointer.
        self._buffer.copy_(host)
        if self._buffer.is_cuda:
            torch.cuda.synchronize(self.device)
        self.next_index += 1
        self.images_fed += len(images)
        if self.next_index % 16 == 0:
            print(f"tensorrt: calibration batch {self.next_index}/{len(self.ranges)}", file=self.log, flush=True)
        return [int(self._buffer.data_ptr())]

    def read_cache(self) -> bytes | None:
        if self.cache_path.is_file() and self.sidecar_path.is_file():
            import json

            if json.loads(self.sidecar_path.read_text("utf-8")).get("calibration_key") == self.sidecar["calibration_key"]:
                self.cache_read = True
                print(f"tensorrt: reusing calibration cache {self.cache_path}", file=self.log, flush=True)
                return self.cache_path.read_bytes()
        return None

    def write_cache(self, cache: Any) -> None:
        atomic_write_bytes(self.cache_path, bytes(cache))
        atomic_write_json(self.sidecar_path, self.sidecar)
        self.cache_written = True

    def record(self) -> dict[str, Any]:
        return {
            **self.sidecar,
            "batch": self.batch,
            "batches": len(self.ranges),
            "images_fed": self.images_fed,
            "images_dropped_partial_batch": len(self.calibration.images) - len(self.ranges) * self.batch,
            "calibration_s": round(self.seconds, 3) if self.images_fed else None,
            "cache_read": self.cache_read,
            "cache_written": self.cache_written,
            "cache_path": str(self.cache_path),
        }


def _make_calibrator(kind: str, feeder: _CalibrationFeeder) -> trt.IInt8Calibrator:
    """A TensorRT calibrator (deprecated since TensorRT 10.1, still supported in 10.x) that
    delegates to the feeder."""
    import tensorrt as trt

    class Entropy2(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # required by the bindings

        def get_batch_size(self) -> int:
            return feeder.batch

        def get_batch(self, names: list[str]) -> list[int]:
            return feeder.next_batch()

        # TensorRT's documented contract: return None when there is no cache (the stub's
        # return type omits None).
        def read_calibration_cache(self) -> bytes | None:  # type: ignore[override]
            return feeder.read_cache()

        def write_calibration_cache(self, cache: Any) -> None:
            feeder.write_cache(cache)

    class MinMax(trt.IInt8MinMaxCalibrator):
        def __init__(self) -> None:
            trt.IInt8MinMaxCalibrator.__init__(self)

        def get_batch_size(self) -> int:
            return feeder.batch

        def get_batch(self, names: list[str]) -> list[int]:
            return feeder.next_batch()

        def read_calibration_cache(self) -> bytes | None:  # type: ignore[override]
            return feeder.read_cache()

        def write_calibration_cache(self, cache: Any) -> None:
            feeder.write_cache(cache)

    return Entropy2() if kind == "entropy2" else MinMax()


class TensorRTRuntime(Runtime):
    plugin = PLUGIN

    def __init__(self, cell: Cell, source: ModelSource, log: TextIO):
        super().__init__(cell, source, log)
        assert isinstance(self.options, TensorRTSettings)  # the plug-in's schema
        self.trt_settings: TensorRTSettings = self.options
        self._graph: Any = None
        self._graph_record: dict[str, Any] = {"requested": self.trt_settings.cuda_graph, "used": False}
        self._real_count = cell.batch
        self._record: dict[str, Any] = {}

    # -- before anything loads -------------------------------------------------------------
    @classmethod
    def unavailable_reason(cls, cell: Cell) -> str | None:
        if why := tensorrt_import_problem():
            return why
        return cuda_problem(cell.device)

    # -- preparation -----------------------------------------------------------------------
    def prepare(self) -> dict[str, Any]:
        settings = self.trt_settings
        if why := precision_problem(self.cell.precision, settings):
            raise UserError(f"runtime.settings.strongly_typed: {why}")
        trt_module = _import_tensorrt()
        self.trt_version = str(trt_module.__version__)
        if why := version_problem(self.trt_version, self.cell.precision):
            raise CellSkipped(why)

        self._select_gpu()
        self.profile = batch_profile(settings, self.cell.batch)
        res = self.cell.resolution
        input_shapes = self.profile.shapes([3, res, res])

        artifacts = self.cell.resolve_path(self.cell.artifacts_dir)
        onnx = self.source.onnx_artifact(artifacts, dynamic_batch=self.profile.dynamic, opset=settings.opset)
        self.onnx = onnx

        calibration: CalibrationSet | None = None
        calibration_key: str | None = None
        calibration_shape: list[int] | None = None
        if self.cell.precision == "int8":
            calibration = select_calibration_images(cell=self.cell, settings=settings)
            calibration_shape = [calibration_batch_for(self.profile, settings), 3, res, res]
            calibration_key = calibration.key(
                calibrator=settings.calibrator,
                input_shape=calibration_shape,
                preprocess=self._preprocess_identity(),
            )

        fields = engine_key_fields(
            onnx_sha256=onnx.sha256,
            gpu=self.gpu,
            tensorrt_version=self.trt_version,
            precision=self.cell.precision,
            settings=settings,
            input_name=onnx.input_name,
            input_shapes=input_shapes,
            calibration_key=calibration_key,
        )
        self.key = engine_key(fields)
        cache = EngineCache(artifacts / "tensorrt", self.key, fields)
        self.cache = cache
        logger = trt_module.Logger(self._severity())
        self._logger = logger  # TensorRT keeps a pointer to it: it must outlive every object
        trt_module.init_libnvinfer_plugins(logger, "")

        meta = cache.lookup()
        self.cache_hit = meta is not None
        prepare: dict[str, Any] = {"onnx": onnx.as_dict(), "engine_key": self.key, "engine_cache_hit": self.cache_hit}
        if meta is None:
            if cache.stale_reason:
                print(f"tensorrt: cached engine not reused: {cache.stale_reason}", file=self.log, flush=True)
            print(f"tensorrt: building engine {self.key[:16]} ({self.cell.precision}, {self.gpu.name})", file=self.log, flush=True)
            engine_bytes, built = self._build(onnx.path, input_shapes, calibration, calibration_shape)
            meta = cache.store(engine_bytes, built)
            prepare["build_s"] = built["build_s"]
            prepare["parse_s"] = built["parse_s"]
        else:
            print(f"tensorrt: reusing engine {cache.engine_path}", file=self.log, flush=True)
            engine_bytes = cache.engine_path.read_bytes()
            prepare["build_s"] = None  # reused; the build time is in meta.json (built_at, build_s)
            prepare["cached_build_s"] = meta.get("build_s")
        self.meta = meta
        if meta.get("calibration") is not None:
            prepare["calibration"] = meta["calibration"]

        started = time.perf_counter()
        self._load(engine_bytes)
        prepare["load_s"] = time.perf_counter() - started
        prepare["artifact"] = {"path": str(cache.engine_path), "bytes": meta["engine_bytes"], "sha256": meta["engine_sha256"]}

        if settings.cuda_graph:
            started = time.perf_counter()
            self._try_capture_graph()
            self._graph_record["capture_s"] = time.perf_counter() - started
            prepare["cuda_graph_s"] = self._graph_record["capture_s"]
        prepare["cuda_graph"] = dict(self._graph_record)
        prepare["model"] = self.source.describe()
        return prepare

    def _select_gpu(self) -> None:
        import torch

        self.device = torch.device(self.cell.device if self.cell.device.startswith("cuda") else "cuda:0")
        torch.cuda.set_device(self.device)
        props = torch.cuda.get_device_properties(self.device)
        self.gpu = GpuIdentity(name=str(props.name), compute_capability=f"{props.major}.{props.minor}")

    def _severity(self) -> Any:
        import tensorrt as trt

        return {
            "error": trt.Logger.ERROR,
            "warning": trt.Logger.WARNING,
            "info": trt.Logger.INFO,
            "verbose": trt.Logger.VERBOSE,
        }[self.trt_settings.log_level]

    def _preprocess_identity(self) -> str:
        spec = self.cell.model.preprocess
        detail = spec.model_dump_json() if spec is not None else "source default"
        return f"{type(self.source).__name__}:{self.cell.resolution}:{detail}"

    # -- building --------------------------------------------------------------------------
    def _build(
        self,
        onnx_path: Path,
        input_shapes: dict[str, list[int]],
        calibration: CalibrationSet | None,
        calibration_shape: list[int] | None,
    ) -> tuple[bytes, dict[str, Any]]:
        import tensorrt as trt

        settings = self.trt_settings
        precision = self.cell.precision
        builder = trt.Builder(self._logger)
        strongly_typed = settings.strongly_typed
        network_flags = 0
        if strongly_typed:
            network_flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        network = builder.create_network(network_flags)
        parser = trt.OnnxParser(network, self._logger)

        started = time.perf_counter()
        if not parser.parse_from_file(str(onnx_path)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise RuntimeError(f"TensorRT's ONNX parser rejected {onnx_path}: " + "; ".join(errors))
        parse_s = time.perf_counter() - started

        if network.num_inputs != 1:
            raise UserError(f"the ONNX file has {network.num_inputs} inputs; the TensorRT runtime handles one image input")
        tensor = network.get_input(0)
        network_shape = _dims(tensor.shape)
        chw = resolve_input_dims(network_shape, self.profile, self.cell.resolution)
        if chw != input_shapes["opt"][1:]:
            raise UserError(
                f"the ONNX input {tensor.name} is {network_shape}, but the cell runs "
                f"{input_shapes['opt']}; export the model at resolution {self.cell.resolution}"
            )

        config = builder.create_builder_config()
        if settings.workspace_mib is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
        if settings.builder_optimization_level is not None:
            config.builder_optimization_level = settings.builder_optimization_level
        if settings.tf32 is True:
            config.set_flag(trt.BuilderFlag.TF32)
        elif settings.tf32 is False:
            config.clear_flag(trt.BuilderFlag.TF32)
        if precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        elif precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            if settings.int8_fp16_fallback:
                config.set_flag(trt.BuilderFlag.FP16)

        dynamic_input = any(d == -1 for d in network_shape)
        if dynamic_input:
            profile = builder.create_optimization_profile()
            profile.set_shape(
                tensor.name, trt.Dims(input_shapes["min"]), trt.Dims(input_shapes["opt"]), trt.Dims(input_shapes["max"])
            )
            config.add_optimization_profile(profile)

        timing_path: Path | None = None
        timing_loaded = False
        if settings.timing_cache:
            timing_path = self.cache.root / "timing" / timing_cache_name(self.gpu, self.trt_version)
            previous = timing_path.read_bytes() if timing_path.is_file() else b""
            timing_loaded = bool(previous)
            timing = config.create_timing_cache(previous)
            # ignore_mismatch=False: a cache from another GPU or TensorRT is rejected, not used.
            config.set_timing_cache(timing, False)

        feeder: _CalibrationFeeder | None = None
        if precision == "int8":
            assert calibration is not None and calibration_shape is not None
            sidecar = {
                **calibration.sidecar(),
                "calibration_key": self.cache.fields["calibration_key"],
                "calibrator": settings.calibrator,
                "input_shape": calibration_shape,
                "tensorrt_version": self.trt_version,
            }
            feeder = _CalibrationFeeder(
                calibration,
                calibration_shape[0],
                lambda images: self.source.preprocess(images, self.cell.resolution)[0],
                self.device,
                self.cache.calibration_cache_path,
                self.cache.calibration_sidecar_path,
                sidecar,
                self.log,
            )
            config.int8_calibrator = _make_calibrator(settings.calibrator, feeder)
            if dynamic_input:
                calib_profile = builder.create_optimization_profile()
                fixed = trt.Dims(calibration_shape)
                calib_profile.set_shape(tensor.name, fixed, fixed, fixed)
                config.set_calibration_profile(calib_profile)
            print(
                "tensorrt: INT8 uses implicit post-training calibration (deprecated since "
                "TensorRT 10.1 in favour of explicit Q/DQ quantization; still supported in 10.x)",
                file=self.log,
                flush=True,
            )

        readback = read_builder_config(config, network)
        started = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        build_s = time.perf_counter() - started
        if serialized is None:
            raise RuntimeError("TensorRT could not build the engine; the builder's errors are in the cell log")
        engine_bytes = bytes(serialized)

        if timing_path is not None:
            atomic_write_bytes(timing_path, bytes(config.get_timing_cache().serialize()))
        meta: dict[str, Any] = {
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "build_s": build_s,
            "parse_s": parse_s,
            "tensorrt_version": self.trt_version,
            "gpu": self.gpu.as_dict(),
            "onnx": {"path": str(onnx_path), "sha256": self.onnx.sha256, "input_shape": network_shape},
            "profile": {"set": dynamic_input, "batch": self.profile.as_dict(), "shapes": input_shapes},
            "builder": readback,
            "timing_cache": {"path": str(timing_path) if timing_path else None, "loaded_existing": timing_loaded},
            "calibration": feeder.record() if feeder is not None else None,
        }
        return engine_bytes, meta

    # -- loading ---------------------------------------------------------------------------
    def _load(self, engine_bytes: bytes) -> None:
        import tensorrt as trt
        import torch

        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(engine_bytes)
        if engine is None:
            raise RuntimeError(f"TensorRT could not deserialise {self.cache.engine_path}; the runtime's errors are in the cell log")
        self.engine = engine
        context = engine.create_execution_context()
        if context is None:
            raise RuntimeError("TensorRT could not create an execution context (out of device memory?)")
        self.context = context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise RuntimeError(f"the engine has inputs {inputs}; the TensorRT runtime handles one image input")
        self.input_name = inputs[0]
        self.output_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        res = self.cell.resolution
        if not context.set_input_shape(self.input_name, (self.cell.batch, 3, res, res)):
            raise RuntimeError(f"the engine refuses input shape {(self.cell.batch, 3, res, res)}")

        # Buffers are allocated once, here, and bound once; every call reuses them (and a
        # CUDA graph captures their addresses).
        self.buffers: dict[str, torch.Tensor] = {}
        io: list[dict[str, Any]] = []
        for name in names:
            shape = _dims(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"engine tensor {name} has a data-dependent shape {shape}; not supported here")
            trt_dtype = engine.get_tensor_dtype(name).name
            dtype = getattr(torch, torch_dtype_name(trt_dtype))
            buffer = torch.empty(shape, dtype=dtype, device=self.device)
            if not context.set_tensor_address(name, buffer.data_ptr()):
                raise RuntimeError(f"TensorRT refused the address of buffer {name}")
            self.buffers[name] = buffer
            io.append({"name": name, "mode": "input" if name == self.input_name else "output", "dtype": trt_dtype, "shape": shape})
        self.__dict__.pop("_device_outputs", None)
        self._device_outputs  # noqa: B018 - made here, once, not in the first timed call
        self.stream = torch.cuda.Stream(device=self.device)
        self._record = {
            "io": io,
            "num_layers": _read(lambda: engine.num_layers),
            "num_aux_streams": _read(lambda: engine.num_aux_streams),
            "num_optimization_profiles": _read(lambda: engine.num_optimization_profiles),
            "device_memory_bytes": _read(lambda: engine.device_memory_size_v2),
        }

    # -- CUDA graph ------------------------------------------------------------------------
    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("execute_async_v3 returned False; TensorRT's errors are in the cell log")

    def _outputs_host(self) -> dict[str, np.ndarray]:
        with self._on_stream():
            return {n: self.buffers[n].float().cpu().numpy() for n in self.output_names}

    def _try_capture_graph(self) -> None:
        """Capture one execute_async_v3 in a CUDA graph; on any failure record why and run
        without it. The replay is checked against plain execution on the same input."""
        import torch

        # Any finite input will do for the check. numpy, not torch's CUDA generator: a failed
        # capture can leave that generator in capture state, and nothing here must touch it.
        shape = tuple(self.buffers[self.input_name].shape)
        self.to_device(np.random.default_rng(0).standard_normal(shape).astype(np.float32))
        try:
            # One plain execution first: TensorRT defers some work (shape-dependent setup,
            # allocations) to the first enqueue, which must not happen during capture.
            with self._on_stream():
                self._execute()
            self.stream.synchronize()
            expected = self._outputs_host()
            graph = torch.cuda.CUDAGraph()
            # thread_local: other threads' CUDA calls don't invalidate the capture (trtexec
            # captures in the same mode).
            with torch.cuda.graph(graph, stream=self.stream, capture_error_mode="thread_local"):
                self._execute()
            with self._on_stream():
                graph.replay()
            self.stream.synchronize()
            got = self._outputs_host()
            diff = max(float(np.max(np.abs(got[n] - expected[n]), initial=0.0)) for n in self.output_names)
            self._graph_record["replay_max_abs_diff"] = diff
            if not diff <= GRAPH_CHECK_ATOL:
                raise RuntimeError(f"the replayed graph's outputs differ from plain execution by {diff:g}")
        except Exception as exc:  # noqa: BLE001 - any failure means "no graph", with the reason kept
            torch.cuda.synchronize(self.device)
            self._graph = None
            self._graph_record.update(used=False, reason=f"{type(exc).__name__}: {exc}")
            print(f"tensorrt: CUDA graph not used: {exc}", file=self.log, flush=True)
            with self._on_stream():  # plain execution must still work, or the cell fails
                self._execute()
            self.stream.synchronize()
            return
        self._graph = graph
        self._graph_record.update(used=True, reason=None)

    def _on_stream(self) -> Any:
        import torch

        return torch.cuda.stream(self.stream)

    # -- model scope -----------------------------------------------------------------------
    def to_device(self, batch: np.ndarray) -> Any:
        import torch

        padded, self._real_count = pad_batch(batch, self.cell.batch)
        target = self.buffers[self.input_name]
        if tuple(padded.shape) != tuple(target.shape):
            raise ValueError(f"batch of shape {padded.shape} does not fit the engine input {tuple(target.shape)}")
        with self._on_stream():
            # Into the bound input buffer, on the runtime's stream (ordered before the work).
            target.copy_(torch.from_numpy(np.ascontiguousarray(padded)))
        return target

    def run_model(self, inputs: Any) -> Any:
        target = self.buffers[self.input_name]
        with self._on_stream():
            if inputs is not target:
                target.copy_(inputs)
            if self._graph is not None:
                self._graph.replay()  # launches on the current stream: ours
            else:
                self._execute()
        return self._device_outputs

    @cached_property
    def _device_outputs(self) -> dict[str, torch.Tensor]:
        """The bound output buffers by name: one dict, made on first use and returned by every
        run_model call (callers read it, never change it)."""
        return {n: self.buffers[n] for n in self.output_names}

    def to_host(self, outputs: Any) -> dict[str, np.ndarray]:
        n = self._real_count
        out: dict[str, np.ndarray] = {}
        with self._on_stream():
            for name, tensor in outputs.items():
                host = tensor.cpu()  # waits for this stream's work up to here
                if host.is_floating_point():
                    host = host.float()
                array = host.numpy()
                # Padded rows of a short batch are dropped.
                out[name] = array[:n] if array.ndim and array.shape[0] == self.cell.batch else array
        return out

    # -- timing hooks ----------------------------------------------------------------------
    def timer_stream(self) -> Any | None:
        return self.stream

    def synchronize(self) -> None:
        self.stream.synchronize()

    # -- what it ran with ------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        import torch

        try:
            import tensorrt as trt

            parser_version: Any = _read(trt.get_nv_onnx_parser_version)
        except ImportError:
            parser_version = None
        versions = {
            "tensorrt": self.trt_version,
            "onnx_parser": parser_version,
            "torch": torch.__version__,
            "cuda_runtime_torch": torch.version.cuda,
        }
        engine = {
            "path": str(self.cache.engine_path),
            "bytes": self.meta.get("engine_bytes"),
            "sha256": self.meta.get("engine_sha256"),
            "built_at": self.meta.get("built_at"),
            "build_s": self.meta.get("build_s"),
            "profile": self.meta.get("profile"),
            "timing_cache": self.meta.get("timing_cache"),
            **self._record,
        }
        runtime = {
            "execute": "IExecutionContext.execute_async_v3",
            "stream": f"dedicated torch.cuda.Stream on {self.device} (timer_stream: CUDA events on it)",
            "buffers": "torch CUDA tensors allocated once in prepare, bound once with set_tensor_address",
            "h2d": "torch copy_ from pageable host memory on the runtime stream",
            "d2h": "Tensor.cpu() on the runtime stream (waits for that stream only)",
            "short_batches": "zero-padded to the engine batch; padded rows dropped in to_host",
            "cuda_graph": dict(self._graph_record),
        }
        notes = []
        if self.cell.precision == "int8":
            notes.append("INT8 via implicit calibration (IInt8 calibrators: deprecated since TensorRT 10.1, removed in 11)")
        if self.trt_settings.batch_profile is not None:
            notes.append("one engine serves every batch in batch_profile; kernels are tuned for its opt batch")
        return settings_record(
            settings=self.trt_settings,
            precision=self.cell.precision,
            versions=versions,
            gpu=self.gpu,
            engine_key_value=self.key,
            cache_hit=self.cache_hit,
            engine=engine,
            builder_readback=self.meta.get("builder", {}),
            runtime=runtime,
            calibration=self.meta.get("calibration"),
            notes=notes,
        )

    def close(self) -> None:
        stream = getattr(self, "stream", None)
        if stream is not None:
            stream.synchronize()
        # Graph before context before engine before runtime: each depends on the next.
        for attr in ("_graph", "context", "engine", "_runtime", "buffers"):
            if hasattr(self, attr):
                setattr(self, attr, None)
        self.__dict__.pop("_device_outputs", None)


__all__ = ["BatchProfile", "TensorRTRuntime", "TensorRTSettings", "tensorrt_import_problem"]
