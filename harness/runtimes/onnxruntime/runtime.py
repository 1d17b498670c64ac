"""ONNX Runtime with the CPU, CUDA and TensorRT execution providers, with proof of provider.

ONNX Runtime quietly substitutes providers: the CPU-only `onnxruntime` package accepts
`providers=["CUDAExecutionProvider"]` with a warning and runs on the CPU; onnxruntime-gpu without
libnvinfer prints "EP Error" and retries with CUDA. So every session here is created with
`enable_fallback=0` (no silent retry at creation or at run time), its stdout/stderr captured at
the fd level (ORT's C++ logger and its Python prints both land in the cell log), and afterwards
`session.get_providers()[0]` must be the provider asked for; otherwise the cell is skipped with
ORT's own words as the reason. Never a number under a provider that did not run.

Node placement: the session is created with log severity VERBOSE (0), under which ORT's
`VerifyEachNodeIsAssignedToAnEp` logs "All nodes placed on [EP]. Number of nodes: N" or one
"Node(s) placed on [EP]. Number of nodes: N" line per provider. Those counts are recorded in
settings()["node_placement"]. For the TensorRT EP a "node" is a fused TensorRT subgraph, so
{"TensorrtExecutionProvider": 1} means the whole graph became one engine.

Plan settings (runtime `settings:`) are typed in this package's `__init__` (OrtSettings,
OrtCudaSettings, OrtTensorrtSettings): unknown keys and wrong types fail `bench validate`.

Precisions int8 and int8-dynamic run a quantized copy of the ONNX file, made in `prepare()` by
quantize.py (cached in the artifacts folder; its facts go to the record's
`prepare.quantization`), on the same providers as FP32.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from harness.errors import CellSkipped, UserError
from harness.models.export import redirect_fds
from harness.runtimes.base import Runtime
from harness.runtimes.onnxruntime import PLUGINS, OrtCudaSettings, OrtSettings, OrtTensorrtSettings

CPU_EP = "CPUExecutionProvider"
CUDA_EP = "CUDAExecutionProvider"
TRT_EP = "TensorrtExecutionProvider"


_OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}
_EXEC_MODES = {"sequential": "ORT_SEQUENTIAL", "parallel": "ORT_PARALLEL"}

_PLACEMENT = re.compile(
    r"(?:All nodes placed on|Node\(s\) placed on) \[(\w+)\]\. Number of nodes: (\d+)"
)
# Under a "Node(s) placed on [EP]" line ORT lists one "  OpType (node name)" line per node.
_PLACED_NODE = re.compile(r"VerifyEachNodeIsAssignedToAnEp\]\s{3,}(\w+) \(")
_ANSI = re.compile(r"\x1b\[[0-9;]*m|\[[0-9;]*m(?=\d{4}-)")

# ops kept in fp32 when converting to fp16 for the CUDA EP: ORT's defaults, plus GridSample,
# which has no fp16 CUDA kernel in ORT 1.31 (RF-DETR's deformable attention uses it; converted,
# it runs on the CPU with copies both ways: measured slower than fp32 on an H100).
FP16_EXTRA_BLOCKED_OPS = ["GridSample"]

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}

# Distributions that provide the `onnxruntime` module; they overwrite each other's files.
_ORT_DISTRIBUTIONS = (
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-openvino",
    "onnxruntime-qnn",
    "ort-nightly",
    "ort-nightly-gpu",
)


def ort_distribution() -> str | None:
    """Which installed distribution the imported `onnxruntime` module came from.

    Both `onnxruntime` and `onnxruntime-gpu` may be installed at once (the GPU machine has the
    CPU build in the image and the GPU build ahead of it on PYTHONPATH), so match by file
    location rather than by what is installed.
    """
    import onnxruntime

    module_dir = Path(onnxruntime.__file__).resolve().parent
    found = []
    for name in _ORT_DISTRIBUTIONS:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
        init = Path(str(dist.locate_file("onnxruntime/__init__.py"))).resolve()
        if init.parent == module_dir:
            return name
    return found[0] if len(found) == 1 else None


def _describe_distribution(dist: str | None) -> str:
    if dist == "onnxruntime":
        return "package onnxruntime, the CPU build"
    if dist is None:
        return "package unknown"
    return f"package {dist}"


def float16_converter_problem() -> str | None:
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure means "no converter"
        return f"no ONNX float16 converter (onnxruntime.transformers.float16: {exc})"
    return None


@contextlib.contextmanager
def capture_fds() -> Iterator[list[str]]:
    """Capture fds 1 and 2 (C++ logs, Python prints and warnings) into a list's single
    element, filled when the block exits."""
    result: list[str] = []
    buffer = io.StringIO()
    try:
        with redirect_fds(buffer):
            yield result
    finally:
        result.append(buffer.getvalue())


def node_placements(log_text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for provider, count in _PLACEMENT.findall(log_text):
        counts[provider] = counts.get(provider, 0) + int(count)
    return counts


def placed_op_types(log_text: str) -> dict[str, dict[str, int]]:
    """Op types per provider, from the verbose node list ORT prints under each placement line
    (only printed when more than one provider took nodes)."""
    result: dict[str, dict[str, int]] = {}
    current: str | None = None
    for line in log_text.splitlines():
        if "VerifyEachNodeIsAssignedToAnEp" not in line:
            continue
        if m := _PLACEMENT.search(line):
            current = m.group(1)
            result.setdefault(current, {})
        elif current and (m := _PLACED_NODE.search(line)):
            ops = result[current]
            ops[m.group(1)] = ops.get(m.group(1), 0) + 1
    return {ep: ops for ep, ops in result.items() if ops}


def _error_lines(log_text: str, limit: int = 6) -> list[str]:
    """ORT's error/warning lines ([E:...], [W:...], 'EP Error', Python warnings), trimmed."""
    keep = []
    for line in _ANSI.sub("", log_text).splitlines():
        if re.search(r"\[(E|F|W):onnxruntime|EP Error|Error|error|UserWarning|Warning:", line):
            keep.append(line.strip()[:500])
    return keep[-limit:]


_SOURCE_PREFIX = re.compile(r"^/\S+\.(?:cc|h|cpp):\d+ .*?\)\s+")
_LIB_LOAD = re.compile(r"Failed to load library (\S+) with error: (.+?)\s*$")


def summarise_ort_error(message: str, log_text: str) -> str:
    """ORT's own reason, without source paths and C++ signatures: the exception's text plus,
    when ORT logged that a provider library failed to load, which library and why."""
    text = _ANSI.sub("", message).strip().splitlines()[0] if message.strip() else ""
    text = _SOURCE_PREFIX.sub("", text).strip()
    loads = []
    for line in _ANSI.sub("", log_text).splitlines():
        if m := _LIB_LOAD.search(line):
            loads.append(f"{Path(m.group(1)).name} failed to load: {m.group(2)}")
    if loads:
        text = f"{text} ({loads[-1]})" if text else loads[-1]
    return text[:800]


def _device_id(device: str) -> int:
    return int(device.partition(":")[2] or 0) if device.startswith("cuda") else 0


class OrtRuntime(Runtime):
    """Shared by the three providers; subclasses name the provider."""

    asynchronous_call = False  # Run() waits for its stream before returning

    provider: ClassVar[str]
    on_cuda: ClassVar[bool] = False
    options: OrtSettings  # parsed by Runtime.__init__ with this plug-in's schema

    # -- availability ----------------------------------------------------------------------
    @classmethod
    def unavailable_reason(cls, cell: Any) -> str | None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return (
                f"onnxruntime is not installed ({exc}); install onnxruntime (CPU) or "
                "onnxruntime-gpu (CUDA and TensorRT providers)"
            )
        available = ort.get_available_providers()
        if cls.provider not in available:
            dist = ort_distribution()
            hint = (
                "; install onnxruntime-gpu"
                if cls.provider in (CUDA_EP, TRT_EP)
                else ""
            )
            return (
                f"onnxruntime {ort.__version__} ({_describe_distribution(dist)}) has no "
                f"{cls.provider} (it offers {', '.join(available)}){hint}"
            )
        fp16_on_cuda_ep = cls.provider == CUDA_EP and cell.precision == "fp16"
        if fp16_on_cuda_ep and (problem := float16_converter_problem()):
            return f"fp16 on the CUDA EP needs an fp16 ONNX file: {problem}"
        return None

    # -- preparation -----------------------------------------------------------------------
    def _session_options(self, options: OrtSettings) -> Any:
        import onnxruntime as ort

        so = ort.SessionOptions()
        if options.graph_optimization_level is not None:
            so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _OPT_LEVELS[options.graph_optimization_level])
        threads = options.intra_op_num_threads
        if threads is None and self.provider == CPU_EP:
            from harness.environment.host import worker_threads

            # ORT sizes its pool by the machine's cores, not by the cores this worker is
            # pinned to; the harness's count keeps one thread per pinned core.
            threads = worker_threads()
        if threads is not None:
            so.intra_op_num_threads = threads
        if options.inter_op_num_threads is not None:
            so.inter_op_num_threads = options.inter_op_num_threads
        if options.execution_mode is not None:
            so.execution_mode = getattr(ort.ExecutionMode, _EXEC_MODES[options.execution_mode])
        # VERBOSE during creation only: it is what logs the node placements. Run-time logging
        # follows RunOptions (default WARNING), so timing is unaffected.
        so.log_severity_level = 0 if options.log_placements else 2
        return so

    def _providers(self, artifacts_dir: Path) -> list[tuple[str, dict]]:
        return [(CPU_EP, dict(self.options.provider_options))]

    def _model_file(self, artifact: Any, artifacts_dir: Path) -> Path:
        if self.cell.precision in ("int8", "int8-dynamic"):
            return self._int8_file(artifact, artifacts_dir)
        return Path(artifact.path)

    def _int8_file(self, artifact: Any, artifacts_dir: Path) -> Path:
        """The quantized copy of the ONNX file (quantize.py), with the sensitivity pass and,
        for keep_float_worst, the re-quantization without the worst nodes."""
        from harness.accuracy.calibration import CalibrationError
        from harness.runtimes.onnxruntime import quantize as q

        opts = self.options.int8
        mode = "static" if self.cell.precision == "int8" else "dynamic"
        root = artifacts_dir / "onnx-int8"
        source_path = q.named_model(Path(artifact.path), artifact.sha256, root)
        q.check_node_names(source_path, opts.keep_float, f"runtime `{self.cell.runtime.key}` settings int8.keep_float")
        calibration = None
        if mode == "static":
            from harness.accuracy.datasets import split_calibration_set

            try:
                calibration = split_calibration_set(self.cell, opts.calibration_images)
            except CalibrationError as exc:
                raise UserError(str(exc)) from None
        resolution = self.cell.resolution

        def preprocess(images: list[np.ndarray]) -> np.ndarray:
            batch, _ = self.source.preprocess(images, resolution)
            return batch

        spec = self.cell.model.preprocess
        request = q.Request(
            mode=mode,
            source=source_path,
            source_sha256=artifact.sha256,
            input_name=artifact.input_name,
            input_batch=1 if artifact.dynamic_batch else self.cell.batch,
            preprocess_id={"source": self.cell.source, "resolution": resolution,
                           "preprocess": spec.model_dump(mode="json") if spec is not None else None},
            settings=opts.model_dump(mode="json"),
            symmetric_activations=(opts.symmetric_activations if opts.symmetric_activations is not None
                                   else self.provider == TRT_EP),
            calibration=calibration,
            keep_float=tuple(opts.keep_float),
            preprocess=preprocess,
        )
        with capture_fds() as captured:
            made = q.quantize(request, root, self.log)
        self.log.write(captured[0] if captured else "")
        facts, quantize_s = made.facts, made.quantize_s
        sensitivity_s: float | None = None
        worst: list[str] = []
        if mode == "static" and calibration is not None and (opts.sensitivity or opts.keep_float_worst):
            images = calibration.paths()[: opts.sensitivity_images]
            ids = calibration.image_ids[: opts.sensitivity_images]
            key = {"float_sha256": artifact.sha256, "int8_sha256": facts["model_sha256"], "images": ids,
                   "batch": request.input_batch, "preprocess": request.preprocess_id}
            print(f"[int8] sensitivity pass on {len(ids)} calibration images", file=self.log, flush=True)
            quantized_path, input_batch = made.path, request.input_batch

            def run_sensitivity() -> dict[str, Any]:
                # Images are decoded (and ORT's quantization tooling imported) only on a cache miss.
                reader = q.calibration_reader_class()(artifact.input_name, images, input_batch, preprocess)
                batches = [reader.load(b) for b in reader.batches]
                return q.sensitivity(source_path, quantized_path, facts["quantized"]["names"], batches,
                                     artifact.input_name, opts.sensitivity_top, self.options.intra_op_num_threads)

            sens, sensitivity_s = q.cached_sensitivity(made.path.parent, key, run_sensitivity)
            ranked = list(sens.pop("ranked_nodes", []))
            sens["top"] = sens["top"][: opts.sensitivity_top]
            sens["image_ids"] = ids
            if opts.keep_float_worst:
                worst = [n for n in ranked if n not in set(opts.keep_float)][: opts.keep_float_worst]
                again = q.Request(**{**request.__dict__, "keep_float": tuple(opts.keep_float) + tuple(worst)})
                with capture_fds() as captured:
                    made = q.quantize(again, root, self.log)
                self.log.write(captured[0] if captured else "")
                facts = made.facts
                if made.quantize_s is not None:
                    quantize_s = (quantize_s or 0.0) + made.quantize_s
                facts["notes"] = [*facts.get("notes", []), (
                    f"the {len(worst)} nodes kept in float are the worst of the sensitivity pass below, which ran on "
                    "the model quantized without them"
                )]
            facts["sensitivity"] = sens
        facts["keep_float"] = list(opts.keep_float)
        facts["keep_float_worst"] = worst
        if not facts["quantized"]["count"]:
            why = (f"op_types {opts.op_types}" if opts.op_types is not None else "every quantizable node kept in float"
                   if facts["kept_float"]["count"] else "no node of an op type the quantizer knows")
            note = f"no node was quantized ({why}): this {self.cell.precision} rung runs in float"
            facts["notes"] = [*facts.get("notes", []), note]
            print(f"[int8] warning: {note}", file=self.log, flush=True)
        self.quantization = facts
        self._extra_prepare = {"quantize_s": quantize_s, "sensitivity_s": sensitivity_s, "quantization": facts}
        return made.path

    def prepare(self) -> dict[str, Any]:
        import onnxruntime as ort

        options = self.options
        self.device_id = _device_id(self.cell.device)
        artifacts_dir = self.cell.resolve_path(self.cell.artifacts_dir)
        dynamic_batch = options.dynamic_batch if options.dynamic_batch is not None else self.cell.batch > 1
        self.artifact = self.source.onnx_artifact(artifacts_dir, dynamic_batch, opset=options.opset)
        self.model_path = self._model_file(self.artifact, artifacts_dir)
        self._torch_stream: Any = None
        if self.on_cuda:
            self._setup_cuda_libraries()
        self.session_options = self._session_options(options)
        providers = self._providers(artifacts_dir)
        self.requested_providers = [name for name, _ in providers]
        self.distribution = ort_distribution()  # looked up once; settings() reports it too

        print(
            f"[onnxruntime] {ort.__version__} ({_describe_distribution(self.distribution)}); "
            f"creating a session on {self.model_path} with {self.requested_providers}",
            file=self.log, flush=True,
        )
        started = time.perf_counter()
        error: BaseException | None = None
        with capture_fds() as captured:
            try:
                session = ort.InferenceSession(
                    str(self.model_path),
                    sess_options=self.session_options,
                    providers=[name for name, _ in providers],
                    provider_options=[opts for _, opts in providers],
                    # No silent retry on other providers, at creation or later at run time.
                    enable_fallback=0,
                )
            except Exception as exc:  # noqa: BLE001 - ORT raises RuntimeError and its own Fail types
                error = exc
        load_s = time.perf_counter() - started
        log_text = captured[0] if captured else ""
        self.log.write(log_text)
        self.log.flush()
        self.placements = node_placements(log_text)
        self.placement_ops = placed_op_types(log_text)
        # The session logger is VERBOSE (for the placements above); runs log at WARNING, or the
        # CUDA EP would print a line per stream notification on every run (seen on an H100).
        self.run_options = ort.RunOptions()
        self.run_options.log_severity_level = 2

        if error is not None:
            message = summarise_ort_error(str(error), log_text) or repr(error)
            if self._is_provider_failure(str(error) + log_text):
                raise CellSkipped(
                    f"onnxruntime {ort.__version__} could not create a session with "
                    f"{self.provider}: {message}"
                ) from error
            raise RuntimeError(f"onnxruntime failed to load {self.model_path}: {message}") from error

        self.session = session
        self.check_provider(session, log_text)
        self._io_setup()
        return {
            "export_s": self.artifact.export_s,
            "load_s": load_s,
            "artifact": self.artifact.as_dict(),
            "model": self.source.describe(),  # the model source's facts (weights, preprocessing)
            **({"model_file": str(self.model_path)} if self.model_path != self.artifact.path else {}),
            **getattr(self, "_extra_prepare", {}),
        }

    def _is_provider_failure(self, text: str) -> bool:
        needles = (self.provider, "TensorRT", "libnvinfer", "CUDA", "cuda", "cudnn", "cuDNN",
                   "provider", "Provider")
        return any(n in text for n in needles)

    def check_provider(self, session: Any, log_text: str) -> None:
        """Proof of provider: ORT must report the provider asked for first, and (where the
        verbose log says so) have placed graph nodes on it."""
        providers = session.get_providers()
        if not providers or providers[0] != self.provider:
            detail = " | ".join(_error_lines(log_text)) or "ORT logged no reason"
            raise CellSkipped(
                f"asked onnxruntime for {self.provider} but the session runs on "
                f"{providers} (ORT fell back); ORT log: {detail}"
            )
        if self.placements and self.placements.get(self.provider, 0) == 0:
            raise CellSkipped(
                f"{self.provider} is registered but ORT placed no graph node on it "
                f"(placements: {self.placements})"
            )

    # -- CUDA setup (overridden in the CUDA subclasses) ------------------------------------
    def _setup_cuda_libraries(self) -> None:
        pass

    # -- running ---------------------------------------------------------------------------
    def _io_setup(self) -> None:
        session = self.session
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise UserError(
                f"{self.model_path} has {len(inputs)} inputs ({[i.name for i in inputs]}); the "
                "harness feeds detectors with one image tensor"
            )
        self.input_name = inputs[0].name
        self.input_dtype = _ORT_TYPES.get(inputs[0].type, np.float32)
        self.output_names = [o.name for o in session.get_outputs()]

    def to_device(self, batch: np.ndarray) -> Any:
        return np.ascontiguousarray(batch, dtype=self.input_dtype)

    def run_model(self, inputs: Any) -> Any:
        return self.session.run(self.output_names, {self.input_name: inputs}, self.run_options)

    def to_host(self, outputs: Any) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, outputs, strict=True))

    def device_tensors(self, outputs: Any) -> dict[str, Any]:
        """The CPU outputs as torch tensors sharing their memory (the `device` NMS placement on
        a CPU cell runs torchvision's CPU kernel on them)."""
        import torch

        return {name: torch.from_numpy(value) for name, value in zip(self.output_names, outputs, strict=True)}

    # -- what it ran with ------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        import onnxruntime as ort

        so = self.session_options
        out: dict[str, Any] = {
            "onnxruntime_version": ort.__version__,
            "onnxruntime_distribution": self.distribution,
            "providers_available": ort.get_available_providers(),
            "providers_requested": self.requested_providers,
            "providers": self.session.get_providers(),
            "provider_options": self.session.get_provider_options(),
            "node_placement": self.placements,
            # op types per provider where several took nodes (what fell back to the CPU)
            "node_placement_ops": {
                ep: ops for ep, ops in self.placement_ops.items() if ep != self.provider
            },
            "session_options": {
                "graph_optimization_level": str(so.graph_optimization_level).split(".")[-1],
                "intra_op_num_threads": so.intra_op_num_threads,
                "inter_op_num_threads": so.inter_op_num_threads,
                "execution_mode": str(so.execution_mode).split(".")[-1],
            },
            "opset": self.artifact.opset,
            "dynamic_batch": self.artifact.dynamic_batch,
            "artifact_sha256": self.artifact.sha256,
            "model_file": str(self.model_path),
            "input_dtype": np.dtype(self.input_dtype).name,
            "io_binding": self.on_cuda,
            "onnx_precision": {"int8": "int8 (static, QDQ)", "int8-dynamic": "int8 (dynamic)"}.get(
                self.cell.precision, "fp32"),
        }
        quantization = getattr(self, "quantization", None)
        if quantization is not None:  # what decides the speed: enters the fingerprint
            out["quantization"] = {
                k: quantization.get(k) for k in ("mode", "tool", "format", "per_channel", "activation_type",
                                                 "weight_type", "symmetric_activations", "model_sha256")
            }
            out["quantization"]["quantized_nodes"] = quantization["quantized"]["count"]
        return out

    def close(self) -> None:
        self.__dict__.pop("session", None)


class OrtCpuRuntime(OrtRuntime):
    plugin = PLUGINS[0]
    provider = CPU_EP


class _OrtGpuRuntime(OrtRuntime):
    """CUDA and TensorRT EPs: IOBinding with input and outputs on the device."""

    on_cuda = True

    def _setup_cuda_libraries(self) -> None:
        """Run ORT on a torch CUDA stream when torch with CUDA is importable, so the harness's
        CUDA events on that stream bracket ORT's kernels; importing torch also loads the CUDA
        and cuDNN libraries ORT links against. Without torch, ask ORT to load them from the
        nvidia pip packages (onnxruntime >= 1.21's preload_dlls)."""
        want_stream = self.cuda_options.user_compute_stream
        torch_ok = False
        if want_stream:
            try:
                import torch

                torch_ok = torch.cuda.is_available()
            except ImportError:
                torch_ok = False
        if torch_ok:
            import torch

            with torch.cuda.device(self.device_id):
                self._torch_stream = torch.cuda.Stream(self.device_id)
            self.timing = "cuda events on a torch stream passed as user_compute_stream"
        else:
            import onnxruntime as ort

            if hasattr(ort, "preload_dlls"):
                with contextlib.suppress(Exception), capture_fds() as captured:
                    ort.preload_dlls()
                if captured:
                    self.log.write(captured[0])
            self.timing = "host clock (ORT's Run synchronises its stream before returning)"

    def _stream_options(self) -> dict[str, str]:
        if self._torch_stream is None:
            return {}
        return {
            "has_user_compute_stream": "1",
            "user_compute_stream": str(int(self._torch_stream.cuda_stream)),
        }

    @property
    def cuda_options(self) -> OrtCudaSettings:
        assert isinstance(self.options, OrtCudaSettings)  # the plug-in's schema for GPU EPs
        return self.options

    def _cuda_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "device_id": str(self.device_id),
            "use_tf32": "1" if self.cuda_options.tf32 else "0",
        }
        opts["cudnn_conv_algo_search"] = self.cuda_options.cudnn_conv_algo_search
        if self.cuda_options.cuda_graph:
            opts["enable_cuda_graph"] = "1"
        opts.update(self._stream_options())
        return opts

    def _io_setup(self) -> None:
        super()._io_setup()
        import onnxruntime as ort

        self._ort = ort
        self._graph_input: Any = None  # with cuda_graph: the one input buffer every batch goes to
        self._binding = self.session.io_binding()
        self._bound_input: Any = None
        self._bound_batch: int | None = None
        self._outputs: list[Any] | None = None

    def to_device(self, batch: np.ndarray) -> Any:
        host: np.ndarray = np.ascontiguousarray(batch, dtype=self.input_dtype)
        if self._graph_input is not None and tuple(self._graph_input.shape()) == host.shape:
            # A captured CUDA graph replays on the buffer it was captured with: copy into it.
            self._graph_input.update_inplace(host)
            return self._graph_input
        value = self._ort.OrtValue.ortvalue_from_numpy(host, "cuda", self.device_id)
        if self.cuda_options.cuda_graph and self._graph_input is None:
            self._graph_input = value
        return value

    def _bind_outputs(self, batch: int) -> None:
        """Preallocate outputs on the device when their shapes are known (static except the
        batch axis), so a run allocates nothing; otherwise let ORT allocate on the device.
        A cell whose NMS runs on the device gets torch tensors as outputs, so torchvision's
        NMS reads ORT's results where they are, without a copy."""
        self._binding.clear_binding_outputs()
        values = []
        as_torch = self.cell.nms == "device"
        for node in self.session.get_outputs():
            dims = list(node.shape)
            known = all(isinstance(d, int) for d in dims[1:]) and dims
            dtype = _ORT_TYPES.get(node.type)
            if as_torch:
                if not (known and dtype is not None):
                    raise CellSkipped(
                        f"NMS on the device needs outputs of known shape; {node.name} is {dims} ({node.type})"
                    )
                values.append(self._torch_output(node.name, [batch, *dims[1:]], dtype))
                continue
            if known and dtype is not None:
                shape = [batch, *dims[1:]]
                value = self._ort.OrtValue.ortvalue_from_shape_and_type(
                    shape, dtype, "cuda", self.device_id
                )
                self._binding.bind_ortvalue_output(node.name, value)
                values.append(value)
            else:
                self._binding.bind_output(node.name, "cuda", self.device_id)
                values.append(None)
        self._outputs = values if all(v is not None for v in values) else None
        self._bound_batch = batch

    def _torch_output(self, name: str, shape: list[int], dtype: Any) -> Any:
        import torch

        tensor = torch.empty(shape, dtype=getattr(torch, np.dtype(dtype).name), device=f"cuda:{self.device_id}")
        self._binding.bind_output(name, "cuda", self.device_id, dtype, shape, tensor.data_ptr())
        return tensor

    def device_tensors(self, outputs: Any) -> dict[str, Any]:
        if self.cell.nms != "device":
            raise NotImplementedError("outputs are bound as torch tensors only for NMS on the device")
        return dict(zip(self.output_names, outputs, strict=True))

    def device_name(self) -> str:
        return f"cuda:{self.device_id}"

    def run_model(self, inputs: Any) -> Any:
        if inputs is not self._bound_input:
            self._binding.bind_ortvalue_input(self.input_name, inputs)
            self._bound_input = inputs
            batch = int(inputs.shape()[0])
            if batch != self._bound_batch:
                self._bind_outputs(batch)
        self.session.run_with_iobinding(self._binding, self.run_options)
        return self._outputs if self._outputs is not None else self._binding.get_outputs()

    def to_host(self, outputs: Any) -> dict[str, np.ndarray]:
        if self.cell.nms == "device":  # torch tensors (see _bind_outputs)
            return {name: value.cpu().numpy() for name, value in zip(self.output_names, outputs, strict=True)}
        return {name: value.numpy() for name, value in zip(self.output_names, outputs, strict=True)}

    def timer_stream(self) -> Any | None:
        return self._torch_stream

    def synchronize(self) -> None:
        # Run already waits for its stream; with a torch stream, wait on it explicitly too.
        if self._torch_stream is not None:
            self._torch_stream.synchronize()

    def settings(self) -> dict[str, Any]:
        out = super().settings()
        out["timing"] = self.timing
        cuda_opts = out["provider_options"].get(CUDA_EP, {})
        out["tf32"] = cuda_opts.get("use_tf32") == "1" if "use_tf32" in cuda_opts else None
        return out


class OrtCudaRuntime(_OrtGpuRuntime):
    plugin = PLUGINS[1]
    provider = CUDA_EP

    def _providers(self, artifacts_dir: Path) -> list[tuple[str, dict]]:
        opts = {**self._cuda_options(), **self.options.provider_options}
        return [(CUDA_EP, opts), (CPU_EP, {})]

    def _model_file(self, artifact: Any, artifacts_dir: Path) -> Path:
        if self.cell.precision != "fp16":
            return super()._model_file(artifact, artifacts_dir)
        return self._fp16_file(Path(artifact.path), artifact.sha256, artifacts_dir)

    def _fp16_file(self, src: Path, sha256: str, artifacts_dir: Path) -> Path:
        """An fp16 copy of the ONNX file (weights and activations fp16, inputs and outputs kept
        fp32 so preprocessing and decoding are unchanged), cached by the source's sha256."""
        if problem := float16_converter_problem():
            raise CellSkipped(f"fp16 on the CUDA EP needs an fp16 ONNX file: {problem}")
        # the block list is part of the key: a different list is a different file
        tag = hashlib.sha256(f"{sha256}:{FP16_EXTRA_BLOCKED_OPS}".encode()).hexdigest()[:16]
        folder = artifacts_dir / "onnx-fp16" / tag
        target = folder / "model.onnx"
        self._extra_prepare: dict[str, Any]
        if target.is_file():
            self._extra_prepare = {"fp16_convert_s": None, "fp16_cached": True}
            return target
        import onnx
        from onnxruntime.transformers.float16 import (
            DEFAULT_OP_BLOCK_LIST,
            convert_float_to_float16,
        )

        folder.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with capture_fds() as captured:
            model = onnx.load(str(src))
            model16 = convert_float_to_float16(
                model,
                keep_io_types=True,
                op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP16_EXTRA_BLOCKED_OPS],
            )
        self.log.write(captured[0] if captured else "")
        staging = Path(tempfile.mkdtemp(prefix=".fp16-", dir=folder.parent))
        onnx.save(model16, str(staging / "model.onnx"))
        try:
            os.rename(staging, folder)
        except OSError:  # another worker got there first
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
        self._extra_prepare = {
            "fp16_convert_s": time.perf_counter() - started,
            "fp16_cached": False,
            "fp16_converter": (
                "onnxruntime.transformers.float16 (keep_io_types=True, fp32 kept for ORT's "
                f"default block list + {', '.join(FP16_EXTRA_BLOCKED_OPS)})"
            ),
        }
        return target

    def settings(self) -> dict[str, Any]:
        out = super().settings()
        if self.cell.precision == "fp16":
            out["onnx_precision"] = "fp16 (converted, fp32 I/O)"
        return out


class OrtTensorrtRuntime(_OrtGpuRuntime):
    plugin = PLUGINS[2]
    provider = TRT_EP

    def _providers(self, artifacts_dir: Path) -> list[tuple[str, dict]]:
        # One folder per file, precision and batch: the TRT EP rebuilds (and overwrites) an
        # engine whose cached optimisation profile differs from the one asked for.
        cache = (
            artifacts_dir / "ort-trt-cache"
            / f"{self.artifact.sha256[:16]}-{self.cell.precision}-b{self.cell.batch}"
        )
        cache.mkdir(parents=True, exist_ok=True)
        self._engine_cache = cache
        self._engine_files_before = sorted(p.name for p in cache.iterdir())
        opts: dict[str, Any] = {
            "device_id": str(self.device_id),
            "trt_fp16_enable": "1" if self.cell.precision == "fp16" else "0",
            # A QDQ file: TensorRT builds INT8 kernels where the Q/DQ pairs say (explicit
            # quantization; no calibration table).
            "trt_int8_enable": "1" if self.cell.precision == "int8" else "0",
            "trt_engine_cache_enable": "1",
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": "1",
            "trt_timing_cache_path": str(cache),
        }
        workspace = self.tensorrt_options.trt_max_workspace_size
        if workspace is not None:
            opts["trt_max_workspace_size"] = str(workspace)
        if self.artifact.dynamic_batch:
            # One optimisation profile at exactly this cell's batch: each cell is its own
            # process and batch, and an engine tuned for its shape is what a deployment builds.
            res, b = self.cell.resolution, self.cell.batch
            shape = f"{self.artifact.input_name}:{b}x3x{res}x{res}"
            for key in ("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes"):
                opts[key] = shape
        opts.update(self._stream_options())
        opts.update(self.options.provider_options)
        return [(TRT_EP, opts), (CUDA_EP, self._cuda_options()), (CPU_EP, {})]

    @property
    def tensorrt_options(self) -> OrtTensorrtSettings:
        assert isinstance(self.options, OrtTensorrtSettings)
        return self.options

    def settings(self) -> dict[str, Any]:
        out = super().settings()
        after = sorted(p.name for p in self._engine_cache.iterdir())
        out["trt_engine_cache"] = {
            "path": str(self._engine_cache),
            "files_before": self._engine_files_before,
            "files_after": after,
            "reused": bool(self._engine_files_before) and self._engine_files_before == after,
        }
        return out
