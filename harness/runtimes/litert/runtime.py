"""LiteRT (TFLite) on the CPU, with proof of what ran.

The cell's precision must be the file's: a .tflite file is FP32 or quantized when it is written,
and the interpreter runs what the file holds. So `prepare()` reads the file's tensors and refuses
an fp32 cell on a quantized file, or an int8 cell on a float one (a number is never recorded under
a precision that did not run). What is recorded: the interpreter's thread count, whether the
XNNPACK delegate took the graph (the DELEGATE nodes of the interpreter's execution plan and the
delegate's own log line), the ops by name, the tensors by dtype, and the input and output
quantization (scale, zero point).

Layout and quantization: the harness preprocesses into an NCHW float batch. A file whose input is
NHWC (TensorFlow's layout, shape (N, H, W, 3)) gets the batch transposed, and an int8/uint8
input gets it quantized with the file's scale and zero point, in `to_device` (the end-to-end
`h2d` stage; the model scope times only the call on a prepared input). Quantized outputs are
dequantized in `to_host` (the `d2h` stage), so the decoder sees floats in the file's units.

Timing: `run_model` hands the prepared array to the interpreter (set_tensor, a copy into its
input buffer, as every LiteRT caller does) and runs invoke(), synchronous on the host clock.
"""

from __future__ import annotations

import hashlib
import io
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import CellSkipped, UserError
from harness.runtimes.base import Runtime
from harness.runtimes.litert import PLUGINS, LiteRtSettings

QUANTIZED = (np.int8, np.uint8, np.int16)


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: Any) -> np.ndarray:
    """LiteRT's affine quantization of a float array: round(x / scale) + zero_point, clipped to
    the integer type."""
    info = np.iinfo(dtype)
    q = np.round(x / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


def file_precision(tensors: list[dict[str, Any]]) -> str:
    """int8 when the file holds quantized tensors (integer dtype with a scale), else fp32."""
    for t in tensors:
        scale = t.get("quantization", (0.0, 0))[0]
        if np.dtype(t["dtype"]) in [np.dtype(d) for d in QUANTIZED] and scale:
            return "int8"
    return "fp32"


class LiteRtCpuRuntime(Runtime):
    plugin = PLUGINS[0]
    asynchronous_call = False  # invoke() returns after the work finished
    options: LiteRtSettings

    @classmethod
    def unavailable_reason(cls, cell: Any) -> str | None:
        try:
            from ai_edge_litert.interpreter import Interpreter  # noqa: F401
        except ImportError as exc:
            return f"ai-edge-litert is not installed ({exc}); install the litert extra (pip install -e '.[litert]')"
        if cell.source != "tflite":
            import importlib.util

            # Any other source exports its .tflite with litert-torch (Ultralytics' LiteRT export).
            if importlib.util.find_spec("litert_torch") is None:
                return (f"a {cell.source} model reaches LiteRT through litert-torch's converter, which is not "
                        "installed (the litert-export extra; docs/edge-runtimes.md)")
        return None

    # -- preparation -----------------------------------------------------------------------
    def prepare(self) -> dict[str, Any]:
        import time

        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        from harness.models.export import redirect_fds

        tflite_file = getattr(self.source, "tflite_file", None)
        if tflite_file is None:
            raise UserError(f"model `{self.cell.model.name}` gives no .tflite file (source: tflite does)")
        path: Path = tflite_file(self.cell.resolve_path(self.cell.artifacts_dir))
        export = getattr(self.source, "tflite_facts", None)  # a source that exported the file
        data = path.read_bytes()
        self.model_path = path
        self.sha256 = hashlib.sha256(data).hexdigest()
        threads = self.options.threads
        if threads is None:
            from harness.environment.host import worker_threads

            threads = worker_threads()
        self.threads = threads
        resolver = OpResolverType.AUTO if self.options.xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        started = time.perf_counter()
        # The delegate announces itself on stderr ("Created TensorFlow Lite XNNPACK delegate"):
        # captured into the cell log and kept as part of the proof.
        buffer = io.StringIO()
        with redirect_fds(buffer):
            try:
                interpreter = Interpreter(model_path=str(path), num_threads=threads,
                                          experimental_op_resolver_type=resolver)
            except ValueError as exc:  # "Model provided has model identifier ..., should be TFL3"
                raise UserError(f"{path} is not a LiteRT (.tflite) model the interpreter can read: {exc}") from None
            inputs = interpreter.get_input_details()
            if len(inputs) != 1:
                raise UserError(f"{path} has {len(inputs)} inputs; the harness feeds detectors with one image tensor")
            shape = [int(d) for d in inputs[0]["shape"]]
            self.nhwc = len(shape) == 4 and shape[-1] == 3 and shape[1] != 3
            if shape[0] != self.cell.batch:
                shape[0] = self.cell.batch
                try:
                    interpreter.resize_tensor_input(inputs[0]["index"], shape)
                    interpreter.allocate_tensors()
                except (RuntimeError, ValueError) as exc:  # XNNPack: "failed to reshape"
                    raise CellSkipped(f"{path} has a fixed batch of {int(inputs[0]['shape'][0])} and cannot be "
                                      f"resized to batch {self.cell.batch} ({str(exc).strip().splitlines()[0][:200]}); "
                                      "export it with a dynamic batch or ask for that batch") from None
            interpreter.allocate_tensors()
        load_s = time.perf_counter() - started
        self.log_text = buffer.getvalue()
        self.log.write(self.log_text)
        self.interpreter = interpreter
        self.input = interpreter.get_input_details()[0]
        self.outputs = interpreter.get_output_details()
        # An exported file names its outputs after the converter's signature
        # (serving_default_output_0_output); the decoder reads the source's names, in order.
        names = self.source.output_names()
        self.output_names = names if len(names) == len(self.outputs) else [o["name"] for o in self.outputs]
        res = self.cell.resolution
        want = [self.cell.batch, res, res, 3] if self.nhwc else [self.cell.batch, 3, res, res]
        if [int(d) for d in self.input["shape"]] != want:
            raise CellSkipped(f"{path} takes input {[int(d) for d in self.input['shape']]}; this cell feeds {want} "
                              f"(resolution {res}, batch {self.cell.batch})")
        self.tensors = interpreter.get_tensor_details()
        self.precision = file_precision(self.tensors)
        if self.precision != self.cell.precision:
            raise UserError(
                f"{path} is {'an' if self.precision.startswith('i') else 'a'} {self.precision} file (its tensors: {self._dtypes()}); the cell asks for "
                f"{self.cell.precision}: LiteRT runs the file as written, so ask for precision {self.precision}"
            )
        facts: dict[str, Any] = {"path": str(path), "bytes": len(data), "sha256": self.sha256}
        if export is not None:
            facts.update(exporter=export["key_fields"]["exporter"], cached=export["cached"],
                         key_fields=export["key_fields"])
        return {
            "load_s": load_s,
            "export_s": export["export_s"] if export is not None else None,
            "runtime": {"tflite_file": facts},
        }

    def _dtypes(self) -> dict[str, int]:
        return dict(Counter(np.dtype(t["dtype"]).name for t in self.tensors))

    def _ops(self) -> dict[str, int]:
        """The interpreter's nodes by op name (DELEGATE: a subgraph a delegate took)."""
        try:
            ops = self.interpreter._get_ops_details()  # the interpreter's only per-node listing
        except Exception:  # noqa: BLE001 - a LiteRT without it: recorded as unknown
            return {}
        return dict(sorted(Counter(str(op["op_name"]) for op in ops).items()))

    # -- running ---------------------------------------------------------------------------
    def to_device(self, batch: np.ndarray) -> Any:
        x = np.asarray(batch, dtype=np.float32)
        if self.nhwc:
            x = x.transpose(0, 2, 3, 1)
        dtype = np.dtype(self.input["dtype"])
        if dtype != np.float32:
            scale, zero = self.input["quantization"]
            x = quantize(x, scale, zero, dtype)
        return np.ascontiguousarray(x)

    def run_model(self, inputs: Any) -> Any:
        self.interpreter.set_tensor(self.input["index"], inputs)
        self.interpreter.invoke()
        return None  # the outputs stay in the interpreter's buffers until to_host reads them

    def to_host(self, outputs: Any) -> dict[str, np.ndarray]:
        out = {}
        for name, o in zip(self.output_names, self.outputs, strict=True):
            value = self.interpreter.get_tensor(o["index"])  # a copy
            if np.dtype(o["dtype"]) != np.float32 and o["quantization"][0]:
                value = dequantize(value, *o["quantization"])
            out[name] = value
        # A source that exported the file knows how its outputs differ from the decoder's units
        # (Ultralytics' LiteRT export normalises boxes by the input size).
        adapt = getattr(self.source, "adapt_tflite_outputs", None)
        return adapt(out) if adapt is not None else out

    def device_tensors(self, outputs: Any) -> dict[str, Any]:
        import torch

        return {name: torch.from_numpy(value) for name, value in self.to_host(outputs).items()}

    # -- what it ran with ------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        ops = self._ops()
        return {
            "ai_edge_litert_version": _version("ai-edge-litert"),
            "num_threads": self.threads,
            "op_resolver": "AUTO (default delegates)" if self.options.xnnpack else "BUILTIN_WITHOUT_DEFAULT_DELEGATES",
            "xnnpack_delegate": "XNNPACK delegate" in self.log_text,
            "delegated_subgraphs": ops.get("DELEGATE", 0),
            "ops": ops,
            "tensor_dtypes": self._dtypes(),
            "file_precision": self.precision,
            "model_file": str(self.model_path),
            "model_sha256": self.sha256,
            "input": {"name": self.input["name"], "shape": [int(d) for d in self.input["shape"]],
                      "dtype": np.dtype(self.input["dtype"]).name, "layout": "NHWC" if self.nhwc else "NCHW",
                      "quantization": list(self.input["quantization"])},
            "outputs": [{"name": o["name"], "decoder_name": name, "shape": [int(d) for d in o["shape"]], "dtype": np.dtype(o["dtype"]).name,
                         "quantization": list(o["quantization"])}
                        for name, o in zip(self.output_names, self.outputs, strict=True)],
        }

    def close(self) -> None:
        self.__dict__.pop("interpreter", None)
