"""INT8 for ONNX Runtime: static post-training quantization (QDQ), dynamic quantization, the
node lists, and the sensitivity pass. Used by runtime.py's `prepare()`: all of it is
preparation, cached in the artifacts folder, never inside a timed region.

* Static (`precision: int8`): `onnxruntime.quantization.quantize_static` in QDQ format, the
  calibration method a setting (MinMax, Entropy, Percentile), per-channel weights, on images of
  the plan's calibration split (harness.accuracy.calibration: chosen by ids, recorded by ids and
  a sha256, disjoint from every image the accuracy pass reports on), preprocessed exactly as the
  model source preprocesses for the accuracy pass.
* Dynamic (`precision: int8-dynamic`): `quantize_dynamic`: weights quantized ahead, activations
  at run time; no calibration.
* Both are cached under `<artifacts>/onnx-int8/<key>/`, key = sha256 over the ONNX file's sha256,
  the ORT version, the method, the calibration images and every quantization setting. The
  calibrated ranges have their own cache entry (`ranges-<key>.json`, where ORT supports
  `calibration_cache_path`), so re-quantizing with nodes kept in float does not calibrate again.
* Which nodes were quantized and which stayed in float is read from the quantized file itself
  (`analyze`), not from what was asked for.
* The sensitivity pass (`sensitivity`) is Polygraphy's layer-wise comparison done with ORT: the
  FP32 and the INT8 model, each with every quantized node's output made a graph output, run on a
  few calibration images; per output the relative L2 error ||int8 - fp32|| / ||fp32||, and the
  error a node adds (its error minus the largest error among its compared inputs: a deep node
  inherits its inputs' error, and keeping it in float would not remove that). Nodes are ranked
  by the error they add; `keep_float_worst: K` keeps the top K in float.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from harness import files
from harness.accuracy.calibration import CalibrationSet, canonical_json
from harness.errors import UserError

QUANT_KEY_SCHEME = 2  # 2: keep_float nodes rewired to read float inputs
SENSITIVITY_SCHEME = 1
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
MODEL_FILE = "model.onnx"
META_FILE = "meta.json"
SENSITIVITY_FILE = "sensitivity.json"

_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
_TYPES = {"int8": "QInt8", "uint8": "QUInt8"}


def ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def tool_name() -> str:
    return f"onnxruntime.quantization {ort_version()}"


def sha16(fields: Any) -> str:
    return hashlib.sha256(canonical_json(fields).encode()).hexdigest()[:16]


# -- the float model, with every node named ---------------------------------------------------


def named_model(src: Path, src_sha256: str, root: Path) -> Path:
    """The FP32 file to quantize: `src` itself when every node has a name, else a copy whose
    unnamed nodes are named `<op type>_<index>` (keep_float and the node lists need names),
    cached by the source's sha256."""
    import onnx

    model = onnx.load(str(src))
    if all(node.name for node in model.graph.node):
        return src
    target = root / f"named-{src_sha256[:16]}" / MODEL_FILE
    if target.is_file():
        return target
    for node, name in zip(model.graph.node, node_names(model.graph.node), strict=True):
        node.name = name
    _publish(target.parent, lambda staging: onnx.save(model, str(staging / MODEL_FILE)))
    return target


def node_names(nodes: Sequence[Any]) -> list[str]:
    """Each node's name as `named_model` gives it: its own, else `<op type>_<index>`."""
    taken = {node.name for node in nodes if node.name}
    names = []
    for index, node in enumerate(nodes):
        name = node.name
        if not name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            taken.add(name)
        names.append(name)
    return names


def _publish(folder: Path, write: Callable[[Path], None]) -> None:
    """Write a cache entry into a staging folder beside `folder`, then rename it into place:
    two workers racing for one key both end with a whole entry."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        write(staging)
        try:
            os.rename(staging, folder)
        except OSError:  # another worker got there first
            if not (folder / META_FILE).is_file() and not (folder / MODEL_FILE).is_file():
                shutil.rmtree(folder, ignore_errors=True)
                os.rename(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


# -- calibration data ---------------------------------------------------------------------------


def calibration_reader_class() -> type:
    from onnxruntime.quantization import CalibrationDataReader

    class ImageReader(CalibrationDataReader):  # type: ignore[misc]  # ORT's base class is untyped
        """Calibration batches from image files, preprocessed on demand (never all in memory);
        `set_range` lets ORT calibrate in chunks (CalibStridedMinMax)."""

        def __init__(self, input_name: str, paths: Sequence[Path], batch: int,
                     preprocess: Callable[[list[np.ndarray]], np.ndarray]):
            self.input_name = input_name
            self.batches = [list(paths[i:i + batch]) for i in range(0, len(paths), batch)]
            self.batch = batch
            self.preprocess = preprocess
            self.start, self.end = 0, len(self.batches)
            self.position = 0

        def __len__(self) -> int:
            return len(self.batches)

        def set_range(self, start_index: int, end_index: int) -> None:
            self.start, self.end = start_index, min(end_index, len(self.batches))
            self.position = self.start

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.position >= self.end:
                return None
            paths = self.batches[self.position]
            self.position += 1
            return {self.input_name: self.load(paths)}

        def load(self, paths: list[Path]) -> np.ndarray:
            from harness.accuracy.loader import decode_image

            images = [decode_image(p) for p in paths]
            images += [images[-1]] * (self.batch - len(images))  # a fixed-batch model: pad
            return np.ascontiguousarray(self.preprocess(images), dtype=np.float32)

    return ImageReader


def _stride(calls: int, chunk: int) -> int:
    """The largest chunk size <= `chunk` that divides the calls evenly (ORT requires it)."""
    return max(d for d in range(1, min(chunk, calls) + 1) if calls % d == 0)


# -- the request -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """Everything that decides a quantized file."""

    mode: str  # static | dynamic
    source: Path  # the FP32 ONNX file (named nodes)
    source_sha256: str  # of the plan's ONNX file
    input_name: str
    input_batch: int  # images per calibration call (the file's fixed batch, else 1)
    preprocess_id: dict[str, Any]  # identifies how images become the input tensor
    settings: dict[str, Any]  # OrtInt8Settings as JSON
    symmetric_activations: bool
    calibration: CalibrationSet | None
    keep_float: tuple[str, ...]
    # HxWx3 uint8 images -> the model's float32 input batch (the model source's preprocessing);
    # identified in the key by `preprocess_id`.
    preprocess: Callable[[list[np.ndarray]], np.ndarray] | None = field(default=None, compare=False, repr=False)

    def calibration_fields(self) -> dict[str, Any] | None:
        if self.calibration is None:
            return None
        s = self.settings
        return {
            "scheme": QUANT_KEY_SCHEME,
            "onnx_sha256": self.source_sha256,
            "onnxruntime": ort_version(),
            "method": s["calibration"],
            "percentile": s["percentile"] if s["calibration"] == "percentile" else None,
            "op_types": s["op_types"],
            "images": self.calibration.image_ids,
            "annotations_sha256": self.calibration.annotations_sha256,
            "input": {"name": self.input_name, "batch": self.input_batch},
            "preprocess": self.preprocess_id,
        }

    def key_fields(self) -> dict[str, Any]:
        s = self.settings
        fields: dict[str, Any] = {
            "scheme": QUANT_KEY_SCHEME,
            "mode": self.mode,
            "onnx_sha256": self.source_sha256,
            "onnxruntime": ort_version(),
            "per_channel": s["per_channel"],
            "weight_type": s["weight_type"],
            "op_types": s["op_types"],
            "keep_float": sorted(self.keep_float),
        }
        if self.mode == "static":
            fields.update(
                format="QDQ",
                activation_type=s["activation_type"],
                symmetric_activations=self.symmetric_activations,
                calibration=self.calibration_fields(),
            )
        return fields


def _extra_options(request: Request) -> dict[str, Any]:
    s = request.settings
    extra: dict[str, Any] = {"WeightSymmetric": True}
    if request.mode == "static":
        extra["ActivationSymmetric"] = request.symmetric_activations
        if s["calibration"] == "percentile":
            extra["CalibPercentile"] = s["percentile"]
    return extra


# -- quantizing --------------------------------------------------------------------------------


@dataclass
class Quantized:
    path: Path
    facts: dict[str, Any]  # harness.results.Quantization, as JSON
    quantize_s: float | None  # None: from the cache


def quantize(request: Request, root: Path, log: TextIO) -> Quantized:
    """The quantized file for `request`, from the cache or made now (see the module doc)."""
    fields = request.key_fields()
    key = sha16(fields)
    folder = root / key
    meta_path = folder / META_FILE
    if meta_path.is_file() and (folder / MODEL_FILE).is_file():
        meta, problem = _checked_entry(folder, fields)
        if meta is not None:
            print(f"[int8] quantized model cache hit {folder}", file=log, flush=True)
            facts = dict(meta["facts"], cached=True, model_path=str(folder / MODEL_FILE))
            if facts.get("calibration"):
                facts["calibration"] = dict(facts["calibration"], cached=True)
            return Quantized(folder / MODEL_FILE, facts, None)
        print(f"[int8] cache entry {folder} is not usable ({problem}): it is set aside and the model "
              "quantized again", file=log, flush=True)
        _retire(folder)

    print(f"[int8] quantizing {request.source} ({request.mode}, key {key}: {canonical_json(fields)})",
          file=log, flush=True)
    started = time.perf_counter()
    made: dict[str, Any] = {}

    def write(staging: Path) -> None:
        notes: list[str] = []
        out = staging / MODEL_FILE
        calibration_cached = None
        if request.mode == "dynamic":
            _quantize_dynamic(request, out)
        else:
            calibration_cached = _quantize_static(request, out, root, notes, log)
        made["quantize_s"] = time.perf_counter() - started
        made["facts"] = _facts(request, key, out, notes, calibration_cached, final=folder / MODEL_FILE)
        files.write_new(staging / META_FILE, json.dumps({"key": key, "key_fields": fields, "facts": made["facts"],
                                                         "quantize_s": made["quantize_s"]}, indent=1, sort_keys=True))

    _publish(folder, write)
    path = folder / MODEL_FILE
    facts, quantize_s = made["facts"], made["quantize_s"]
    print(f"[int8] done in {quantize_s:.1f} s: {facts['quantized']['count']} nodes quantized, "
          f"{facts['kept_float']['count']} of quantizable op types left in float", file=log, flush=True)
    return Quantized(path, dict(facts, cached=False), quantize_s)


def _checked_entry(folder: Path, fields: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The entry's meta.json when it describes this request and the file beside it is the one
    it describes (its sha256), else (None, what is wrong): the record's facts come from
    meta.json, so a replaced or half-written model.onnx must not run under them."""
    try:
        meta = json.loads((folder / META_FILE).read_text("utf-8"))
        recorded = meta["facts"]["model_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"{META_FILE} unreadable: {exc}"
    if meta.get("key_fields") != fields:
        return None, f"{META_FILE} describes another quantization"
    actual = files.file_sha256(folder / MODEL_FILE)
    if actual != recorded:
        return None, f"{MODEL_FILE} has sha256 {actual[:16]}..., {META_FILE} records {str(recorded)[:16]}..."
    return meta, ""


def _retire(folder: Path) -> None:
    """Move a bad cache entry out of the way (a rename: a worker reading it keeps its files)."""
    aside = folder.parent / f".{folder.name}-stale-{os.getpid()}-{time.time_ns()}"
    with contextlib.suppress(OSError):
        os.rename(folder, aside)
        shutil.rmtree(aside, ignore_errors=True)


def _quantize_dynamic(request: Request, out: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    s = request.settings
    quantize_dynamic(
        str(request.source), str(out),
        op_types_to_quantize=s["op_types"],
        per_channel=s["per_channel"],
        weight_type=getattr(QuantType, _TYPES[s["weight_type"]]),
        nodes_to_exclude=list(request.keep_float),
        extra_options=_extra_options(request),
    )


def _quantize_static(request: Request, out: Path, root: Path, notes: list[str], log: TextIO) -> bool:
    """Quantize with calibration; returns whether the calibrated ranges came from the cache."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    s = request.settings
    assert request.calibration is not None
    calib = request.calibration
    reader_cls = calibration_reader_class()
    assert request.preprocess is not None  # static requests carry the source's preprocessing
    reader = reader_cls(request.input_name, calib.paths(), request.input_batch, request.preprocess)
    extra = _extra_options(request)
    extra["CalibStridedMinMax"] = _stride(len(reader), s["calibration_chunk"])
    kwargs: dict[str, Any] = {}
    cached = False
    if "calibration_cache_path" in inspect.signature(quantize_static).parameters:
        ranges = root / f"ranges-{sha16(request.calibration_fields())}.json"
        cached = ranges.is_file()
        kwargs["calibration_cache_path"] = str(ranges)
        print(f"[int8] calibration ranges {'reused from' if cached else 'cached at'} {ranges}", file=log, flush=True)
    else:
        notes.append(f"onnxruntime {ort_version()} has no calibration cache: calibrated again")
    quantize_static(
        str(request.source), str(out), reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=s["op_types"],
        per_channel=s["per_channel"],
        activation_type=getattr(QuantType, _TYPES[s["activation_type"]]),
        weight_type=getattr(QuantType, _TYPES[s["weight_type"]]),
        nodes_to_exclude=list(request.keep_float),
        calibrate_method=getattr(CalibrationMethod, _METHODS[s["calibration"]]),
        extra_options=extra,
        **kwargs,
    )
    if request.keep_float:
        _float_inputs(out, request.keep_float)
    return cached


def _float_inputs(path: Path, names: Sequence[str]) -> None:
    """Make the excluded nodes really run in float. ORT's `nodes_to_exclude` leaves a node's
    neighbours quantized, so a node between two quantized ones still reads a DequantizeLinear and
    writes into a QuantizeLinear, and ORT fuses the three into an integer kernel at load time.
    Each excluded node is rewired to read the float tensor before its input's Q/DQ pair (its
    consumers keep their own quantized inputs); Q/DQ nodes left unread are removed."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    produced_by = {o: n for n in graph.node for o in n.output}
    wanted = set(names)
    for node in graph.node:
        if node.name not in wanted:
            continue
        for index, tensor in enumerate(node.input):
            dq = produced_by.get(tensor)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = produced_by.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                node.input[index] = q.input[0]
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        unused = [n for n in graph.node if n.op_type in QDQ_OPS and not any(o in read for o in n.output)]
        if not unused:
            break
        for n in unused:
            graph.node.remove(n)
    read = {i for n in graph.node for i in n.input}
    for init in [i for i in graph.initializer if i.name not in read]:  # their scales and zero points
        graph.initializer.remove(init)
    onnx.save(model, str(path))


# -- what the quantized file holds ---------------------------------------------------------------


def quantizable_op_types(mode: str, op_types: Sequence[str] | None) -> set[str]:
    """Op types the quantizer would quantize: the settings' list, else ORT's registry."""
    if op_types:
        return set(op_types)
    from onnxruntime.quantization import registry

    if mode == "dynamic":
        return set(registry.IntegerOpsRegistry)
    return set(registry.QDQRegistry) | set(registry.QLinearOpsRegistry)


def analyze(float_path: Path, quant_path: Path, mode: str, op_types: Sequence[str] | None) -> dict[str, Any]:
    """Which of the float model's nodes run quantized in `quant_path`, and which stayed float.

    QDQ: a node is quantized when it is of a quantizable op type, an input comes through a
    DequantizeLinear and each output goes into a QuantizeLinear: the DQ -> op -> Q pattern ORT
    runs as an integer kernel (a node kept in float still reads dequantized inputs, but its
    outputs are not quantized). Dynamic: a node is quantized when the quantizer replaced it (its name is
    gone: ORT names the integer op `<name>_quant`)."""
    import onnx

    fm = onnx.load(str(float_path), load_external_data=False)
    qm = onnx.load(str(quant_path), load_external_data=False)
    quantizable = quantizable_op_types(mode, op_types)
    float_nodes = [n for n in fm.graph.node]
    if mode == "static":
        produced_by = {out: n for n in qm.graph.node for out in n.output}
        quantizing = {i for n in qm.graph.node if n.op_type == "QuantizeLinear" for i in n.input[:1]}
        by_name = {n.name: n for n in qm.graph.node if n.op_type not in QDQ_OPS}
        quantized = []
        for node in float_nodes:
            qnode = by_name.get(node.name)
            if qnode is None or node.op_type not in quantizable:
                continue
            reads_int8 = any((p := produced_by.get(i)) is not None and p.op_type == "DequantizeLinear"
                             for i in qnode.input)
            if reads_int8 and all(o in quantizing for o in qnode.output if o):
                quantized.append(node)
    else:
        remaining = {n.name for n in qm.graph.node}
        quantized = [n for n in float_nodes if n.name not in remaining and n.op_type in quantizable]
    q_names = {n.name for n in quantized}
    left = [n for n in float_nodes if n.name not in q_names]
    kept = [n for n in left if n.op_type in quantizable]
    return {
        "quantized": _node_set(quantized),
        "kept_float": _node_set(kept),
        "float_by_op": dict(sorted(Counter(n.op_type for n in left).items())),
    }


def _node_set(nodes: Sequence[Any]) -> dict[str, Any]:
    return {
        "count": len(nodes),
        "by_op": dict(sorted(Counter(n.op_type for n in nodes).items())),
        "names": [n.name for n in nodes],
    }


def _facts(request: Request, key: str, path: Path, notes: list[str], calibration_cached: bool | None,
           final: Path) -> dict[str, Any]:
    from harness.files import file_sha256

    s = request.settings
    facts: dict[str, Any] = {
        "mode": request.mode,
        "tool": tool_name(),
        "format": "QDQ" if request.mode == "static" else None,
        "per_channel": s["per_channel"],
        "activation_type": s["activation_type"] if request.mode == "static" else None,
        "weight_type": s["weight_type"],
        "symmetric_activations": request.symmetric_activations if request.mode == "static" else None,
        "op_types": s["op_types"],
        "source_sha256": request.source_sha256,
        "model_path": str(final),
        "model_sha256": file_sha256(path),
        "model_bytes": path.stat().st_size,
        "cache_key": key,
        "keep_float": list(request.keep_float),
        "notes": notes,
        **analyze(request.source, path, request.mode, s["op_types"]),
    }
    if request.calibration is not None:
        calib = request.calibration
        fields = request.calibration_fields()
        facts["calibration"] = {
            "source": calib.source,
            "count": len(calib.images),
            "image_ids": calib.image_ids,
            "sha256": calib.ids_sha256,
            "seed": calib.seed,
            "pool_size": calib.pool_size,
            "annotations_sha256": calib.annotations_sha256,
            "overlaps_evaluation_set": calib.overlaps_evaluation,
            "method": s["calibration"],
            "cache_key": sha16(fields) if fields else None,
            "cached": calibration_cached,
        }
    return facts


@functools.lru_cache(maxsize=8)
def _file_node_names(path: str, mtime_ns: int) -> tuple[str, ...]:
    """A file's node names, read once per file version (validate checks every INT8 cell of a
    plan against the same file)."""
    import onnx

    return tuple(node_names(onnx.load(path, load_external_data=False).graph.node))


def check_node_names(float_path: Path, names: Sequence[str], where: str) -> None:
    """keep_float names must exist in the model: a misspelt name would quietly quantize it."""
    known = set(_file_node_names(str(float_path), float_path.stat().st_mtime_ns))
    unknown = [n for n in names if n not in known]
    if unknown:
        import difflib

        hints = []
        for name in unknown[:5]:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hints.append(f"`{name}`" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise UserError(f"{where}: no node named {'; '.join(hints)} in {float_path.name}; node names are the ONNX "
                        "file's (the record's prepare.quantization.quantized.names lists them)")


# -- the sensitivity pass ------------------------------------------------------------------------


def _with_outputs(model: Any, names: Sequence[str]) -> Any:
    """The model with `names` added as graph outputs (type left to ORT's inference)."""
    import onnx

    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    present = {o.name for o in augmented.graph.output}
    for name in names:
        if name not in present:
            value = onnx.ValueInfoProto()
            value.name = name
            augmented.graph.output.append(value)
    return augmented


def comparison_points(float_path: Path, quant_path: Path, quantized_names: Sequence[str]) -> list[dict[str, Any]]:
    """For each quantized node: its float output, the tensor its consumers read in the INT8 model
    (after the output's QuantizeLinear/DequantizeLinear pair when there is one), and the float
    tensors its inputs came from (to tell inherited error from added error)."""
    import onnx

    fm = onnx.load(str(float_path), load_external_data=False)
    qm = onnx.load(str(quant_path), load_external_data=False)
    float_nodes = {n.name: n for n in fm.graph.node}
    q_nodes = {n.name: n for n in qm.graph.node}
    consumers: dict[str, list[Any]] = {}
    for n in qm.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    produced_by = {out: n for n in qm.graph.node for out in n.output}

    def after_qdq(tensor: str) -> str:
        for q in consumers.get(tensor, []):
            if q.op_type == "QuantizeLinear":
                for dq in consumers.get(q.output[0], []):
                    if dq.op_type == "DequantizeLinear":
                        return str(dq.output[0])
        return tensor

    def float_source(tensor: str) -> str:
        """The float-model tensor an INT8-model input stands for (through a DQ <- Q chain)."""
        node = produced_by.get(tensor)
        if node is not None and node.op_type == "DequantizeLinear":
            q = produced_by.get(node.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                return str(q.input[0])
        return tensor

    points = []
    q_out_to_float: dict[str, str] = {}
    for name in quantized_names:
        fnode, qnode = float_nodes.get(name), q_nodes.get(name)
        if fnode is None or qnode is None:
            continue
        for index, f_out in enumerate(fnode.output):
            if index >= len(qnode.output) or not f_out:
                continue
            q_out_to_float[str(qnode.output[index])] = str(f_out)
            points.append({
                "node": name, "op_type": fnode.op_type, "output": str(f_out),
                "int8_tensor": after_qdq(str(qnode.output[index])),
                "inputs": [float_source(i) for i in qnode.input if i],
            })
    for point in points:  # an input named by its INT8-graph name -> the float name
        point["inputs"] = [q_out_to_float.get(i, i) for i in point["inputs"]]
    return points


def sensitivity(
    float_path: Path,
    quant_path: Path,
    quantized_names: Sequence[str],
    batches: Sequence[np.ndarray],
    input_name: str,
    top: int,
    threads: int | None = None,
) -> dict[str, Any]:
    """Rank the quantized nodes by the error they add (see the module doc). Deterministic for
    the same files and inputs: errors are rounded to 6 significant digits before ranking and
    ties go to the node name."""
    import onnx
    import onnxruntime as ort

    points = comparison_points(float_path, quant_path, quantized_names)
    if not points:
        return {"compared": 0, "ranked_by": "own_error", "top": []}
    fm = onnx.load(str(float_path))
    qm = onnx.load(str(quant_path))
    f_names = sorted({p["output"] for p in points})
    q_names = sorted({p["int8_tensor"] for p in points})
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="int8-sensitivity-") as tmp:
        paths = []
        for tag, model, names in (("fp32", fm, f_names), ("int8", qm, q_names)):
            path = Path(tmp) / f"{tag}.onnx"
            onnx.save(_with_outputs(model, names), str(path), save_as_external_data=True,
                      location=f"{tag}.data")
            paths.append(path)
        sessions = [ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for p in paths]
        sq_diff: dict[str, float] = dict.fromkeys(f_names, 0.0)
        sq_ref: dict[str, float] = dict.fromkeys(f_names, 0.0)
        for batch in batches:
            f_out = dict(zip(f_names, sessions[0].run(f_names, {input_name: batch}), strict=True))
            q_out = dict(zip(q_names, sessions[1].run(q_names, {input_name: batch}), strict=True))
            for p in points:
                ref = np.asarray(f_out[p["output"]], dtype=np.float64)
                got = np.asarray(q_out[p["int8_tensor"]], dtype=np.float64)
                if ref.shape != got.shape or not np.issubdtype(ref.dtype, np.floating):
                    continue
                sq_diff[p["output"]] += float(np.sum((got - ref) ** 2))
                sq_ref[p["output"]] += float(np.sum(ref ** 2))
    error = {name: _round6(math.sqrt(sq_diff[name] / sq_ref[name])) if sq_ref[name] > 0 else 0.0 for name in f_names}
    ranked = []
    for p in points:
        err = error[p["output"]]
        inherited = max((error[i] for i in p["inputs"] if i in error), default=0.0)
        own = _round6(max(err - inherited, 0.0))
        ranked.append({
            "node": p["node"], "op_type": p["op_type"], "output": p["output"], "error": err,
            "own_error": own, "sqnr_db": round(-20 * math.log10(err), 3) if err > 0 else None,
        })
    ranked.sort(key=lambda r: (-r["own_error"], -r["error"], r["node"], r["output"]))
    seen: set[str] = set()
    unique = []
    for r in ranked:  # a node with several outputs appears once, at its worst
        if r["node"] not in seen:
            seen.add(r["node"])
            unique.append(r)
    return {"compared": len(points), "ranked_by": "own_error", "top": unique[:top], "ranked_nodes": [r["node"] for r in unique]}


def _round6(value: float) -> float:
    return float(f"{value:.6g}")


def cached_sensitivity(
    folder: Path, key_fields: dict[str, Any], compute: Callable[[], dict[str, Any]]
) -> tuple[dict[str, Any], float | None]:
    """The sensitivity result stored beside the quantized model, or computed now and stored."""
    path = folder / SENSITIVITY_FILE
    fields = {"scheme": SENSITIVITY_SCHEME, **key_fields}
    if path.is_file():
        stored = json.loads(path.read_text("utf-8"))
        if stored.get("key_fields") == fields:
            return dict(stored["result"], cached=True), None
    started = time.perf_counter()
    result = compute()
    seconds = time.perf_counter() - started
    files.write_replace(path, json.dumps({"key_fields": fields, "result": result}, indent=1, sort_keys=True))
    return dict(result, cached=False, seconds=seconds), seconds
