"""OpenVINO's CPU plug-in, with proof of device and precision.

OpenVINO, like ONNX Runtime, quietly does something other than what it was asked: on a CPU
without FP16 arithmetic an `INFERENCE_PRECISION_HINT` of f16 compiles and runs in f32 without a
word, and on a CPU with AMX-BF16 it runs bf16 unless asked for f32. So every cell:

- sets the hint explicitly (fp32 -> f32, fp16 -> f16; int8 -> f32, the quantized graph's
  FakeQuantize operations are what make it integer), then reads it back from the compiled model
  and refuses (skips, with the reason) a model that compiled to another precision;
- is refused before anything loads when the device's OPTIMIZATION_CAPABILITIES lacks the
  precision (FP16, INT8), naming the CPU by its FULL_DEVICE_NAME;
- records what ran: FULL_DEVICE_NAME and OPTIMIZATION_CAPABILITIES of the device, the compiled
  model's EXECUTION_DEVICES (which must be exactly ["CPU"]), INFERENCE_PRECISION_HINT,
  INFERENCE_NUM_THREADS, NUM_STREAMS, PERFORMANCE_HINT read back, and the executable graph's
  layers counted by layer type and runtime precision (`get_runtime_model()`: the CPU plug-in's
  own record of the kernel each layer runs, so an INT8 cell shows its convolutions as u8/i8).

Timing: one synchronous infer request, like ONNX Runtime's Run: `run_model` returns after the
work finished, on the host clock. The request shares the input array (no copy in) and keeps
its outputs in its own tensors; `to_host` copies them out (the end-to-end `d2h` stage), so the
`infer` stage holds inference only.

INT8: `nncf.quantize` on the OpenVINO model read from the FP32 ONNX file, calibrated on the
plan's calibration split (harness.accuracy.datasets.split_calibration_set, the images ONNX
Runtime's static INT8 uses, never scored by the accuracy pass), cached as OpenVINO IR in the
artifacts folder by a key over everything that decides it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import CellSkipped, UserError
from harness.runtimes.base import Runtime
from harness.runtimes.openvino import PLUGINS, OpenVinoSettings

DEVICE = "CPU"
# The plan's precision -> the INFERENCE_PRECISION_HINT asked for, and the capability the
# device must list for it (OPTIMIZATION_CAPABILITIES).
HINTS = {"fp32": "f32", "fp16": "f16", "int8": "f32"}
CAPABILITY = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}
# Runtime precisions of the executable graph's layers that mean integer arithmetic.
INTEGER_PRECISIONS = ("i8", "u8")
# Layer types whose precision decides the speed (the ones quantization is for).
COMPUTE_LAYERS = ("Convolution", "FullyConnected", "MatMul", "Deconvolution", "GroupConvolution")
INT8_FOLDER = "openvino-int8"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _type_name(value: Any) -> str:
    """An OpenVINO element type as its short name (f32, f16, bf16), whatever object it came in."""
    name = getattr(value, "get_type_name", None)
    return str(name() if callable(name) else value)


def _prop(obj: Any, name: str) -> Any:
    """A property read back as plain JSON (enums and types as their names), or None when this
    OpenVINO does not have it."""
    try:
        value = obj.get_property(name)
    except Exception:  # noqa: BLE001 - an unsupported property raises OpenVINO's own RuntimeError
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [v if isinstance(v, (str, int, float, bool)) else str(v) for v in value]
    if hasattr(value, "get_type_name"):
        return _type_name(value)
    return str(getattr(value, "name", value))


def capability_problem(core: Any, precision: str) -> str | None:
    """Why the CPU plug-in cannot run `precision` on this machine, from the device's own
    OPTIMIZATION_CAPABILITIES, or None."""
    try:
        caps = list(core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))
        name = core.get_property(DEVICE, "FULL_DEVICE_NAME")
    except Exception as exc:  # noqa: BLE001 - no CPU plug-in in this build
        return f"OpenVINO's {DEVICE} plug-in cannot be queried: {exc}"
    need = CAPABILITY[precision]
    if need not in caps:
        return (
            f"{precision} is unavailable on this CPU ({name}): OpenVINO's {DEVICE} plug-in reports "
            f"OPTIMIZATION_CAPABILITIES {caps}, without {need}"
            + (" (FP16 inference needs AVX512-FP16 or AMX-FP16)" if precision == "fp16" else "")
        )
    return None


def runtime_layers(compiled: Any) -> dict[str, dict[str, int]]:
    """The executable graph's layers, {layer type: {runtime precision: count}}: what the CPU
    plug-in actually runs (constants, inputs and outputs left out)."""
    counts: Counter[tuple[str, str]] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        layer = info["layerType"].astype(str)
        if layer in ("Const", "Input", "Output"):
            continue
        counts[(layer, info["runtimePrecision"].astype(str))] += 1
    out: dict[str, dict[str, int]] = {}
    for (layer, precision), n in sorted(counts.items()):
        out.setdefault(layer, {})[precision] = n
    return out


def integer_layers(layers: dict[str, dict[str, int]]) -> dict[str, int]:
    """Compute layers (convolutions, matrix products) that run in integer precision, by type."""
    return {
        layer: sum(n for p, n in by.items() if p in INTEGER_PRECISIONS)
        for layer, by in layers.items()
        if layer in COMPUTE_LAYERS and any(p in INTEGER_PRECISIONS for p in by)
    }


def float_compute_layers(layers: dict[str, dict[str, int]]) -> dict[str, int]:
    return {
        layer: sum(n for p, n in by.items() if p not in INTEGER_PRECISIONS)
        for layer, by in layers.items()
        if layer in COMPUTE_LAYERS and any(p not in INTEGER_PRECISIONS for p in by)
    }


def _canonical(fields: Any) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)


class OpenVinoCpuRuntime(Runtime):
    plugin = PLUGINS[0]
    asynchronous_call = False  # infer() returns after the CPU finished
    options: OpenVinoSettings

    # -- availability ----------------------------------------------------------------------
    @classmethod
    def unavailable_reason(cls, cell: Any) -> str | None:
        try:
            import openvino as ov
        except ImportError as exc:
            return f"openvino is not installed ({exc}); install the openvino extra (pip install -e '.[openvino]')"
        # Found, not imported: importing nncf loads torch (~500 MB of RSS), which a process that
        # times a cached quantized model must not carry into its memory figures.
        if cell.precision == "int8" and importlib.util.find_spec("nncf") is None:
            return "int8 on OpenVINO quantizes with NNCF, which is not installed: the openvino extra has it"
        if cell.precision not in HINTS:
            return f"OpenVINO's CPU runtime has no {cell.precision}"
        return capability_problem(ov.Core(), cell.precision)

    # -- preparation -----------------------------------------------------------------------
    def prepare(self) -> dict[str, Any]:
        import openvino as ov

        options = self.options
        artifacts_dir = self.cell.resolve_path(self.cell.artifacts_dir)
        dynamic_batch = options.dynamic_batch if options.dynamic_batch is not None else self.cell.batch > 1
        self.artifact = self.source.onnx_artifact(artifacts_dir, dynamic_batch, opset=options.opset)
        self.core = ov.Core()
        extra: dict[str, Any] = {}

        started = time.perf_counter()
        model = self.core.read_model(str(self.artifact.path))
        self._fix_spatial_shape(model)
        load_s = time.perf_counter() - started
        self.model_path = Path(self.artifact.path)
        self.quantization: dict[str, Any] | None = None
        if self.cell.precision == "int8":
            model, extra = self._int8_model(model, artifacts_dir)

        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": HINTS[self.cell.precision],
            "PERFORMANCE_HINT": options.performance_hint.upper(),
        }
        threads = options.threads
        if threads is None:
            from harness.environment.host import worker_threads

            # OpenVINO sizes its pool by the machine's cores, not by the cores this worker is
            # pinned to; the harness's count keeps one thread per pinned core (as for ORT).
            threads = worker_threads()
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        if options.streams is not None:
            config["NUM_STREAMS"] = options.streams
        self.requested = dict(config)
        print(f"[openvino] {ov.__version__}: compiling {self.model_path} for {DEVICE} with {config}",
              file=self.log, flush=True)
        started = time.perf_counter()
        try:
            compiled = self.core.compile_model(model, DEVICE, config)
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises its own RuntimeError types
            raise RuntimeError(f"OpenVINO could not compile {self.model_path} for {DEVICE}: {exc}") from exc
        compile_s = time.perf_counter() - started
        self.compiled = compiled
        self._check_compiled(compiled)
        self.layers = runtime_layers(compiled)
        if self.quantization is not None:
            self._int8_proof()
        self._io_setup()
        return {
            "export_s": self.artifact.export_s,
            "load_s": load_s,
            "compile_s": compile_s,
            "artifact": self.artifact.as_dict(),
            **({"model_file": str(self.model_path)} if self.model_path != self.artifact.path else {}),
            **extra,
            **({"quantization": self.quantization} if self.quantization is not None else {}),
        }

    def _fix_spatial_shape(self, model: Any) -> None:
        """A file with dynamic height and width gets the cell's resolution (the batch axis stays
        as exported): the CPU plug-in compiles static spatial shapes into faster kernels."""
        import openvino as ov

        if len(model.inputs) != 1:
            raise UserError(
                f"{self.artifact.path} has {len(model.inputs)} inputs; the harness feeds detectors with one image tensor"
            )
        shape = model.inputs[0].get_partial_shape()
        if shape.rank.is_static and len(shape) == 4 and not (shape[2].is_static and shape[3].is_static):
            res = self.cell.resolution
            model.reshape({model.inputs[0]: ov.PartialShape([shape[0], shape[1], res, res])})

    def _check_compiled(self, compiled: Any) -> None:
        """Proof of device and precision: the compiled model must run on the CPU alone, at the
        inference precision asked for."""
        devices = _prop(compiled, "EXECUTION_DEVICES")
        if devices != [DEVICE]:
            raise CellSkipped(f"asked OpenVINO for {DEVICE} but the compiled model runs on {devices}")
        got = _prop(compiled, "INFERENCE_PRECISION_HINT")
        want = HINTS[self.cell.precision]
        if got != want:
            raise CellSkipped(
                f"asked OpenVINO's {DEVICE} plug-in for inference precision {want} but it compiled the model in {got} "
                f"(this CPU, {self._device_name()}, cannot run it)"
            )

    def _device_name(self) -> str:
        try:
            return str(self.core.get_property(DEVICE, "FULL_DEVICE_NAME"))
        except Exception:  # noqa: BLE001
            return "unknown CPU"

    # -- INT8 ------------------------------------------------------------------------------
    def _int8_model(self, model: Any, artifacts_dir: Path) -> tuple[Any, dict[str, Any]]:
        """The NNCF-quantized model, from the cache or made now; the prepare facts. nncf is
        imported only to quantize (see unavailable_reason)."""
        import openvino as ov

        from harness.accuracy.calibration import CalibrationError
        from harness.accuracy.datasets import split_calibration_set

        opts = self.options.int8
        try:
            calibration = split_calibration_set(self.cell, opts.calibration_images)
        except CalibrationError as exc:
            raise UserError(str(exc)) from None
        names = {op.get_friendly_name() for op in model.get_ordered_ops()}
        unknown = [n for n in opts.keep_float if n not in names]
        if unknown:
            import difflib

            hints = [f"`{n}`" + (f" (did you mean {', '.join(close)}?)" if (close := difflib.get_close_matches(n, sorted(names), n=3)) else "")
                     for n in unknown[:5]]
            raise UserError(f"runtime `{self.cell.runtime.key}` settings int8.keep_float: no operation named "
                            f"{'; '.join(hints)} in {Path(self.artifact.path).name}")
        batch = 1 if self.artifact.dynamic_batch else self.cell.batch
        resolution = self.cell.resolution
        spec = self.cell.model.preprocess
        fields = {
            "scheme": 1,
            "source_sha256": self.artifact.sha256,
            "openvino": ov.__version__,
            "nncf": _version("nncf"),
            "settings": opts.model_dump(mode="json"),
            "calibration_ids": calibration.image_ids,
            "annotations_sha256": calibration.annotations_sha256,
            "batch": batch,
            "preprocess": {"source": self.cell.source, "resolution": resolution,
                           "preprocess": spec.model_dump(mode="json") if spec is not None else None},
        }
        key = hashlib.sha256(_canonical(fields).encode()).hexdigest()[:16]
        folder = artifacts_dir / INT8_FOLDER / key
        xml = folder / "model.xml"
        meta_path = folder / "meta.json"
        quantize_s: float | None = None
        cached = False
        if xml.is_file() and meta_path.is_file() and json.loads(meta_path.read_text("utf-8")).get("key_fields") == fields:
            print(f"[int8] quantized model cache hit {folder}", file=self.log, flush=True)
            quantized = self.core.read_model(str(xml))
            cached = True
        else:
            print(f"[int8] nncf.quantize on {len(calibration.images)} calibration images (key {key})",
                  file=self.log, flush=True)
            started = time.perf_counter()
            import nncf

            def transform(paths: list[Path]) -> np.ndarray:
                from harness.accuracy.loader import decode_image

                images = [decode_image(p) for p in paths]
                images += [images[-1]] * (batch - len(images))  # a fixed-batch model: pad
                tensor, _ = self.source.preprocess(images, resolution)
                return np.ascontiguousarray(tensor, dtype=np.float32)

            paths = calibration.paths()
            items = [paths[i:i + batch] for i in range(0, len(paths), batch)]
            quantized = nncf.quantize(
                model,
                nncf.Dataset(items, transform),
                preset=getattr(nncf.QuantizationPreset, opts.preset.upper()),
                subset_size=len(items),
                fast_bias_correction=opts.fast_bias_correction,
                ignored_scope=nncf.IgnoredScope(names=list(opts.keep_float)) if opts.keep_float else None,
            )
            quantize_s = time.perf_counter() - started
            self._publish(folder, quantized, fields)
        self.model_path = xml
        fq = sum(1 for op in quantized.get_ordered_ops() if op.get_type_name() == "FakeQuantize")
        model_bytes = sum(p.stat().st_size for p in (xml, xml.with_suffix(".bin")) if p.is_file())
        bin_path = xml.with_suffix(".bin")
        self.quantization = {
            "mode": "static",
            "tool": f"nncf {_version('nncf')} (openvino {ov.__version__})",
            "format": "FakeQuantize (OpenVINO IR)",
            "per_channel": True,  # NNCF's weights quantizers are per output channel
            "activation_type": None,  # NNCF picks int8 or uint8 per activation from its sign
            "weight_type": "int8",
            "symmetric_activations": opts.preset == "performance",
            "source_sha256": self.artifact.sha256,
            "model_path": str(xml),
            "model_sha256": hashlib.sha256(xml.read_bytes() + (bin_path.read_bytes() if bin_path.is_file() else b"")).hexdigest(),
            "model_bytes": model_bytes,
            "cache_key": key,
            "cached": cached,
            "calibration": {
                "source": calibration.source,
                "count": len(calibration.images),
                "image_ids": calibration.image_ids,
                "sha256": calibration.ids_sha256,
                "seed": calibration.seed,
                "pool_size": calibration.pool_size,
                "annotations_sha256": calibration.annotations_sha256,
                "overlaps_evaluation_set": calibration.overlaps_evaluation,
                "method": f"nncf min-max statistics, preset {opts.preset}"
                          + (", fast bias correction" if opts.fast_bias_correction else ", bias correction"),
                "cache_key": key,
                "cached": cached,
            },
            "keep_float": list(opts.keep_float),
            "notes": [f"{fq} FakeQuantize operations inserted by NNCF; the quantized and kept_float counts are "
                      "the CPU plug-in's executable graph (runtime precision of each compute layer)"],
        }
        return quantized, {"quantize_s": quantize_s}

    def _publish(self, folder: Path, model: Any, fields: dict[str, Any]) -> None:
        """Save the IR into a staging folder beside `folder`, then rename it into place: two
        workers racing for one key both end with a whole entry."""
        import openvino as ov

        from harness import files

        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
        try:
            ov.save_model(model, str(staging / "model.xml"), compress_to_fp16=False)
            files.write_new(staging / "meta.json", json.dumps({"key_fields": fields}, indent=1, sort_keys=True),
                            root=staging)
            try:
                os.rename(staging, folder)
            except OSError:  # another worker got there first: its entry is the same
                pass
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def _int8_proof(self) -> None:
        """The quantized model must really run integer kernels: at least one compute layer of the
        executable graph in i8/u8, else the cell is refused (a number under int8 that ran f32
        would be a lie)."""
        assert self.quantization is not None
        ints, floats = integer_layers(self.layers), float_compute_layers(self.layers)
        if not ints:
            raise CellSkipped(
                f"NNCF quantized the model but OpenVINO's {DEVICE} plug-in runs none of its compute layers in "
                f"integer precision (executable graph: {self.layers})"
            )
        self.quantization["quantized"] = {"count": sum(ints.values()), "by_op": ints, "names": []}
        self.quantization["kept_float"] = {"count": sum(floats.values()), "by_op": floats, "names": []}
        self.quantization["float_by_op"] = floats

    # -- running ---------------------------------------------------------------------------
    def _io_setup(self) -> None:
        compiled = self.compiled
        self.input_name = compiled.inputs[0].get_any_name()
        self.input_dtype = np.dtype(compiled.inputs[0].get_element_type().to_dtype())
        # An OpenVINO output tensor can carry several names (fused nodes keep theirs), and
        # get_any_name() may pick one the decoder does not know: look the ports up by the ONNX
        # file's output names.
        self.output_names = list(self.artifact.output_names) or [o.get_any_name() for o in compiled.outputs]
        self.output_ports = [compiled.output(name) for name in self.output_names]
        self.request = compiled.create_infer_request()

    def to_device(self, batch: np.ndarray) -> Any:
        return np.ascontiguousarray(batch, dtype=self.input_dtype)

    def run_model(self, inputs: Any) -> Any:
        # share_inputs: the request reads the array in place; share_outputs: results stay in the
        # request's own tensors (copied out by to_host, the d2h stage).
        return self.request.infer({0: inputs}, share_inputs=True, share_outputs=True)

    def to_host(self, outputs: Any) -> dict[str, np.ndarray]:
        return {name: np.array(outputs[port], copy=True) for name, port in zip(self.output_names, self.output_ports, strict=True)}

    def device_tensors(self, outputs: Any) -> dict[str, Any]:
        """The outputs as CPU torch tensors sharing the request's memory (the `device` NMS
        placement on a CPU cell: torchvision's CPU kernel), read before the next request."""
        import torch

        return {name: torch.from_numpy(np.asarray(outputs[port]))
                for name, port in zip(self.output_names, self.output_ports, strict=True)}

    # -- what it ran with ------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        import openvino as ov

        c = self.compiled
        out: dict[str, Any] = {
            "openvino_version": ov.__version__,
            "nncf_version": _version("nncf") if self.cell.precision == "int8" else None,
            "device": DEVICE,
            "full_device_name": self._device_name(),
            "optimization_capabilities": _prop_device(self.core, "OPTIMIZATION_CAPABILITIES"),
            "execution_devices": _prop(c, "EXECUTION_DEVICES"),
            "inference_precision": _prop(c, "INFERENCE_PRECISION_HINT"),
            "inference_num_threads": _prop(c, "INFERENCE_NUM_THREADS"),
            "num_streams": _prop(c, "NUM_STREAMS"),
            "performance_hint": _prop(c, "PERFORMANCE_HINT"),
            "optimal_number_of_infer_requests": _prop(c, "OPTIMAL_NUMBER_OF_INFER_REQUESTS"),
            "execution_mode_hint": _prop(c, "EXECUTION_MODE_HINT"),
            "enable_cpu_pinning": _prop(c, "ENABLE_CPU_PINNING"),
            "enable_hyper_threading": _prop(c, "ENABLE_HYPER_THREADING"),
            "requested": self.requested,
            "input_name": self.input_name,
            "input_shape": str(c.inputs[0].get_partial_shape()),
            "input_dtype": self.input_dtype.name,
            "opset": self.artifact.opset,
            "dynamic_batch": self.artifact.dynamic_batch,
            "artifact_sha256": self.artifact.sha256,
            "model_file": str(self.model_path),
            "runtime_layers": self.layers,
            "integer_compute_layers": integer_layers(self.layers),
        }
        if self.quantization is not None:  # what decides the speed: enters the fingerprint
            q = self.quantization
            out["quantization"] = {k: q.get(k) for k in ("mode", "tool", "format", "symmetric_activations",
                                                         "model_sha256")}
            out["quantization"]["quantized_layers"] = q["quantized"]["count"]
            out["quantization"]["preset"] = self.options.int8.preset
        return out

    def close(self) -> None:
        self.__dict__.pop("request", None)
        self.__dict__.pop("compiled", None)


def _prop_device(core: Any, name: str) -> Any:
    try:
        value = core.get_property(DEVICE, name)
    except Exception:  # noqa: BLE001
        return None
    return list(value) if isinstance(value, (list, tuple)) else str(value)
