"""The TensorRT runtime's logic that needs no TensorRT: settings, engine cache keys, optimization
profile shapes, calibration image selection and the engine cache on disk.

Kept apart from `harness.runtimes.tensorrt.runtime` so it is tested everywhere (TensorRT cannot be
installed on most CI machines) and so `bench validate` can check a plan's TensorRT settings
without importing torch or TensorRT. Nothing here imports more than numpy, pydantic, the
standard library and light harness modules (accuracy.datasets, models.export).

Why each piece is the way it is:
* Settings are a pydantic model with `extra="forbid"`: a misspelt builder flag is an error that
  names the key, never a default silently used.
* The engine cache key is the sha256 of canonical JSON over everything that can change the
  engine: the ONNX file's sha256, the GPU model and compute capability, the TensorRT version,
  the precision, the profile, every builder setting, and (INT8) the calibration set. A re-run
  reuses the engine; a different GPU or TensorRT never does.
* Calibration images are chosen by hashing (seed, image id), not by a random generator, so the
  choice is the same on every numpy version and adding images to a dataset does not reshuffle
  it. The chosen ids are recorded; a missing dataset or image is an error, never a default.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness import files

# The calibration-image mechanism is shared with ONNX Runtime's INT8 (harness.accuracy.calibration);
# its names are re-exported here for the TensorRT runtime and its tests.
from harness.accuracy.calibration import (
    CalibrationError,
    CalibrationImage,
    CalibrationSet,
    canonical_json,
    choose_images,
    read_coco_images,
    sha256_text,
)
from harness.accuracy.datasets import default_cache_root, split_calibration_set
from harness.errors import UserError
from harness.files import file_sha256
from harness.runtimes.plugin import SettingsProblem
from harness.runtimes.tensorrt.settings import (
    BUILDER_FIELDS,
    TensorRTSettings,
)

if TYPE_CHECKING:
    from harness.plan.cells import Cell
    from harness.plan.schema import DatasetSpec

# Bump when the meaning of a key field changes, so old cache entries are never reused.
ENGINE_KEY_SCHEME = 1

RUNTIME_NAME = "tensorrt"

__all__ = ["CalibrationError", "CalibrationImage", "CalibrationSet", "canonical_json", "choose_images",
           "read_coco_images", "sha256_text"]


def parse_settings(raw: dict[str, Any], where: str = "runtime.settings") -> TensorRTSettings:
    """The cell's settings dict, validated; UserError naming each bad key."""
    from harness.runtimes.tensorrt import PLUGIN

    try:
        settings = PLUGIN.parse_settings(raw)
    except SettingsProblem as exc:
        raise UserError(exc.describe(where)) from None
    assert isinstance(settings, TensorRTSettings)
    return settings


def precision_problem(precision: str, settings: TensorRTSettings) -> str | None:
    """Why this precision cannot be built with these settings, or None."""
    if settings.strongly_typed and precision in ("fp16", "int8"):
        return (
            f"strongly_typed: true takes every tensor's type from the ONNX file, and TensorRT "
            f"rejects the {precision.upper()} builder flag on a strongly typed network; the "
            f"exported ONNX is FP32, so a strongly typed build would be FP32, not {precision}. "
            "Use strongly_typed: false, or precision fp32"
        )
    return None


def cell_problems(cell: Cell) -> list[tuple[str, str]]:
    """Problems a plan validator can report before anything runs: (field, message) pairs."""
    where = "runtime.settings"
    try:
        settings = parse_settings(cell.runtime.settings, where)
    except UserError as exc:
        return [(where, str(exc))]
    problems: list[tuple[str, str]] = []
    if why := precision_problem(cell.precision, settings):
        problems.append((f"{where}.strongly_typed", why))
    try:
        batch_profile(settings, cell.batch)
    except UserError as exc:
        problems.append((f"{where}.batch_profile", str(exc)))
    needs_dataset = cell.precision == "int8" and settings.calibration_dataset is None
    if needs_dataset and (why := dataset_problem(cell.dataset)):
        problems.append(("dataset", why))
    return problems


# -- optimization profile ------------------------------------------------------------------


@dataclass(frozen=True)
class BatchProfile:
    """The engine's batch range. min == opt == max is a static engine for one batch size."""

    min: int
    opt: int
    max: int

    @property
    def dynamic(self) -> bool:
        return self.min != self.max

    def shapes(self, chw: Sequence[int]) -> dict[str, list[int]]:
        """min/opt/max input shapes for an input whose non-batch dims are `chw`."""
        rest = [int(d) for d in chw]
        return {"min": [self.min, *rest], "opt": [self.opt, *rest], "max": [self.max, *rest]}

    def as_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}


def batch_profile(settings: TensorRTSettings, cell_batch: int) -> BatchProfile:
    """The profile for a cell: `batch_profile` from the settings when given (one engine serves
    every batch size in range), else a static engine at the cell's batch (what RF-DETR's and
    SAB's published numbers use: one engine per shape, kernels tuned for exactly that shape)."""
    spec = settings.batch_profile
    if spec is None:
        return BatchProfile(cell_batch, cell_batch, cell_batch)
    opt = spec.max if spec.opt is None else spec.opt
    profile = BatchProfile(spec.min, opt, spec.max)
    if not profile.min <= cell_batch <= profile.max:
        raise UserError(
            f"batch_profile covers batch {profile.min}..{profile.max}, but this cell runs batch "
            f"{cell_batch}; widen batch_profile or drop it (then each batch gets its own engine)"
        )
    return profile


def profile_covering(batch_sizes: Iterable[int], opt: int | None = None) -> BatchProfile:
    """One profile covering a plan's batch sizes: min and max of them, opt as given or the
    largest (TensorRT tunes for opt; the largest batch is the throughput case)."""
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1:
        raise UserError("batch sizes must be a non-empty list of positive integers")
    chosen = sizes[-1] if opt is None else opt
    if not sizes[0] <= chosen <= sizes[-1]:
        raise UserError(f"opt batch {chosen} is outside the plan's batch sizes {sizes[0]}..{sizes[-1]}")
    return BatchProfile(sizes[0], chosen, sizes[-1])


def resolve_input_dims(network_shape: Sequence[int], profile: BatchProfile, resolution: int) -> list[int]:
    """Channel/height/width of the network input: the ONNX file's where fixed, the cell's
    resolution where dynamic. A fixed batch dimension must match the profile."""
    dims = [int(d) for d in network_shape]
    if len(dims) != 4:
        raise UserError(f"the ONNX input has shape {dims}; the TensorRT runtime expects N x C x H x W")
    batch, channels, height, width = dims
    if batch != -1 and not (profile.min == profile.max == batch):
        raise UserError(
            f"the ONNX input's batch is fixed at {batch}, but the engine profile asks for "
            f"{profile.min}..{profile.max}; export with a dynamic batch axis"
        )
    if channels == -1:
        channels = 3
    height = resolution if height == -1 else height
    width = resolution if width == -1 else width
    return [channels, height, width]


# -- canonical keys --------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuIdentity:
    name: str
    compute_capability: str  # "8.9"

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "compute_capability": self.compute_capability}


def builder_settings(settings: TensorRTSettings) -> dict[str, Any]:
    """The settings that change the engine, as plain JSON values."""
    dumped = settings.model_dump(mode="json")
    return {name: dumped[name] for name in BUILDER_FIELDS}


def engine_key_fields(
    *,
    onnx_sha256: str,
    gpu: GpuIdentity,
    tensorrt_version: str,
    precision: str,
    settings: TensorRTSettings,
    input_name: str,
    input_shapes: dict[str, list[int]],
    calibration_key: str | None,
) -> dict[str, Any]:
    """Everything that decides what engine TensorRT builds. Calibration enters only INT8 keys
    (an FP16 engine does not depend on it)."""
    if precision == "int8" and not calibration_key:
        raise ValueError("an INT8 engine key needs the calibration key")
    return {
        "scheme": ENGINE_KEY_SCHEME,
        "onnx_sha256": onnx_sha256,
        "gpu": gpu.as_dict(),
        "tensorrt_version": tensorrt_version,
        "precision": precision,
        "builder": builder_settings(settings),
        "input": {"name": input_name, "shapes": input_shapes},
        "calibration_key": calibration_key if precision == "int8" else None,
    }


def engine_key(fields: dict[str, Any]) -> str:
    return sha256_text(canonical_json(fields))


def timing_cache_name(gpu: GpuIdentity, tensorrt_version: str) -> str:
    """One timing cache per GPU model and TensorRT version (TensorRT rejects others anyway)."""
    tag = sha256_text(canonical_json({"gpu": gpu.as_dict(), "tensorrt": tensorrt_version}))[:16]
    return f"timing-{tag}.cache"


# -- calibration images ----------------------------------------------------------------------


def dataset_problem(dataset: DatasetSpec | None) -> str | None:
    """Why INT8 calibration cannot draw from the plan's dataset, or None."""
    if dataset is None:
        return (
            "INT8 needs calibration images, and the plan has no `dataset` (and the runtime no "
            "`calibration_dataset`); the harness never calibrates on a default or random data"
        )
    return None


def select_calibration_images(
    *,
    cell: Cell,
    settings: TensorRTSettings,
) -> CalibrationSet:
    """The calibration set for an INT8 cell, or CalibrationError saying why there is none.
    Every chosen file must exist: a missing image is an error, never skipped or replaced.
    With the plan's calibration split (`dataset.calibration`) and no `calibration_dataset`,
    the images come from the split (all of it unless `calibration_images` is set), which no
    accuracy pass scores."""
    if settings.calibration_dataset is None and cell.dataset is not None and cell.dataset.calibration is not None:
        n = settings.calibration_images if "calibration_images" in settings.model_fields_set else None
        return split_calibration_set(cell, n)
    if settings.calibration_dataset is not None:
        images_dir = cell.resolve_path(settings.calibration_dataset.images)
        annotations = cell.resolve_path(settings.calibration_dataset.annotations)
        source, overlaps = "settings.calibration_dataset", False
        if cell.dataset and cell.dataset.annotations:
            overlaps = cell.resolve_path(cell.dataset.annotations).resolve() == annotations.resolve()
    else:
        if why := dataset_problem(cell.dataset):
            raise CalibrationError(why)
        assert cell.dataset is not None
        if cell.dataset.sample:
            # The generated sample, in the same place the accuracy pass generates it.
            from harness.accuracy.sample import sample_dataset_dir

            images_dir, annotations = sample_dataset_dir(default_cache_root(cell), cell.dataset.sample_images)
            source = "plan dataset (generated sample)"
        else:
            assert cell.dataset.images and cell.dataset.annotations  # the schema guarantees both
            images_dir = cell.resolve_path(cell.dataset.images)
            annotations = cell.resolve_path(cell.dataset.annotations)
            source = "plan dataset"
        overlaps = True
    if not images_dir.is_dir():
        raise CalibrationError(f"calibration images folder {images_dir} does not exist")
    pool = read_coco_images(annotations)
    chosen = choose_images(pool, settings.calibration_images, settings.calibration_seed)
    return CalibrationSet.of_files(chosen, images_dir, annotations, seed=settings.calibration_seed,
                                   pool_size=len(pool), source=source, overlaps_evaluation=overlaps)


def calibration_batches(count: int, batch: int) -> list[range]:
    """Index ranges of the calibration batches. A last partial batch is dropped (TensorRT wants
    full batches) and the number of images actually used is recorded by the caller."""
    if batch < 1:
        raise ValueError("batch must be >= 1")
    return [range(start, start + batch) for start in range(0, count - batch + 1, batch)]


# -- batches smaller than the engine's ---------------------------------------------------------


def pad_batch(batch: np.ndarray, target: int) -> tuple[np.ndarray, int]:
    """A host batch padded with zeros up to the engine's batch (the accuracy pass's last batch
    can be short); returns (padded, real count). Larger batches are an error."""
    n = int(batch.shape[0])
    if n > target:
        raise ValueError(f"batch of {n} images is larger than the engine's batch {target}")
    if n == target:
        return batch, n
    padded = np.zeros((target, *batch.shape[1:]), dtype=batch.dtype)
    padded[:n] = batch
    return padded, n


# -- the engine cache on disk ------------------------------------------------------------------


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write-then-rename in the same folder, so a reader sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_replace(path, data)


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8"))


@dataclass
class EngineCache:
    """One cache entry: <root>/engines/<key>/ holding engine.plan, meta.json and, for INT8,
    calibration.cache + calibration.json. meta.json is written last, so its presence means the
    entry is complete; lookup also checks the engine file's sha256 against it."""

    root: Path
    key: str
    fields: dict[str, Any]
    stale_reason: str | None = field(default=None, init=False)

    @property
    def folder(self) -> Path:
        return self.root / "engines" / self.key[:32]

    @property
    def engine_path(self) -> Path:
        return self.folder / "engine.plan"

    @property
    def meta_path(self) -> Path:
        return self.folder / "meta.json"

    @property
    def calibration_cache_path(self) -> Path:
        return self.folder / "calibration.cache"

    @property
    def calibration_sidecar_path(self) -> Path:
        return self.folder / "calibration.json"

    def lookup(self) -> dict[str, Any] | None:
        """The entry's meta when a complete, intact entry for exactly these fields exists."""
        if not self.meta_path.is_file() or not self.engine_path.is_file():
            return None
        try:
            meta = json.loads(self.meta_path.read_text("utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            self.stale_reason = f"meta.json unreadable ({exc})"
            return None
        if meta.get("key") != self.key or meta.get("key_fields") != self.fields:
            self.stale_reason = "meta.json describes a different engine"
            return None
        if file_sha256(self.engine_path) != meta.get("engine_sha256"):
            self.stale_reason = "engine.plan does not match the sha256 in meta.json"
            return None
        return dict(meta)

    def store(self, engine: bytes, meta: dict[str, Any]) -> dict[str, Any]:
        """Write the engine, then its meta (with key, fields, size and sha256); returns the meta."""
        full = {
            **meta,
            "key": self.key,
            "key_fields": self.fields,
            "engine_bytes": len(engine),
            "engine_sha256": hashlib.sha256(engine).hexdigest(),
        }
        atomic_write_bytes(self.engine_path, engine)
        atomic_write_json(self.meta_path, full)
        return full


# -- what is recorded with the result ---------------------------------------------------------


def settings_record(
    *,
    settings: TensorRTSettings,
    precision: str,
    versions: dict[str, Any],
    gpu: GpuIdentity,
    engine_key_value: str,
    cache_hit: bool,
    engine: dict[str, Any],
    builder_readback: dict[str, Any],
    runtime: dict[str, Any],
    calibration: dict[str, Any] | None,
    notes: list[str],
) -> dict[str, Any]:
    """The `settings` a TensorRT cell reports: what the plan asked for (with defaults filled),
    what the builder actually ran with (read back from TensorRT at build time, kept in the
    cache's meta.json so a cache hit reports the same), versions, engine identity, and the
    runtime path (stream, CUDA graph). Defaults drift between TensorRT versions (TensorRT 11's
    trtexec turned CUDA graphs, spin-wait and strong typing on), so all of it is kept."""
    return {
        "runtime": RUNTIME_NAME,
        "precision": precision,
        "requested": settings.model_dump(mode="json"),
        "versions": versions,
        "gpu": gpu.as_dict(),
        "engine_key": engine_key_value,
        "engine_cache_hit": cache_hit,
        "engine": engine,
        "builder": builder_readback,
        "runtime_path": runtime,
        "cuda_graph_used": bool(runtime.get("cuda_graph", {}).get("used")),
        "calibration": calibration,
        "notes": notes,
    }


# -- small facts the runtime needs ------------------------------------------------------------


def calibration_batch_for(profile: BatchProfile, settings: TensorRTSettings) -> int:
    """The batch calibration runs at. A static engine calibrates at its own batch (TensorRT
    feeds the network its fixed input shape); a dynamic one at `calibration_batch`, through a
    calibration profile fixed at that batch."""
    return settings.calibration_batch if profile.dynamic else profile.min


def tensorrt_major(version: str) -> int:
    try:
        return int(version.split(".", 1)[0])
    except ValueError:
        return 0


def version_problem(version: str, precision: str) -> str | None:
    """Why this TensorRT cannot build `precision` the way this runtime does, or None.

    The runtime uses TensorRT 10's API: named I/O tensors and execute_async_v3 (10.0+), and
    for FP16 / INT8 the weakly typed builder flags and IInt8 calibrators, which TensorRT 11
    removed (11 builds only strongly typed networks; FP16 needs an FP16 ONNX from ModelOpt
    AutoCast, INT8 needs Q/DQ nodes)."""
    major = tensorrt_major(version)
    if major < 10:
        return f"TensorRT {version} is older than 10; this runtime uses the TensorRT 10 API (named tensors, execute_async_v3)"
    if major >= 11 and precision in ("fp16", "int8"):
        return (
            f"TensorRT {version} removed the {precision.upper()} builder flag and INT8 calibrators "
            "(strongly typed networks only); this runtime builds fp16/int8 the TensorRT 10 way. "
            "Use TensorRT 10.x (RF-DETR's published numbers used 10.4) or precision fp32"
        )
    return None


# TensorRT DataType member names -> torch dtype attribute names.
TORCH_DTYPE_NAMES: dict[str, str] = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}


def torch_dtype_name(trt_dtype_name: str) -> str:
    try:
        return TORCH_DTYPE_NAMES[trt_dtype_name]
    except KeyError:
        raise ValueError(f"engine I/O tensor of TensorRT type {trt_dtype_name} has no torch buffer type here") from None
