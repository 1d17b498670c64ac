"""COCO-format datasets: an images folder plus an instances JSON, and the plan's subset.

Subsets are chosen by image id, never by file listing or JSON order, so "the first 500" or
"a random 500 with seed 0" are the same images on every machine:
  - all: every image, in ascending id order;
  - first: the N smallest ids;
  - random: ids ordered by sha256("<seed>:<id>") and the first N taken (then sorted). A hash
    rather than a random generator, so the choice does not depend on numpy's version, and a
    smaller N is always a subset of a larger one with the same seed.

A calibration split (`dataset.calibration: {images: N, seed: S}`, harness.accuracy.calibration)
is taken out of the pool first: the N best-ranked images of the whole file are held out for INT8
calibration, and the subset above is chosen from the rest, so the accuracy pass of every cell of
the plan reports on images that no quantized model was calibrated on.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.accuracy.calibration import (
    CalibrationError,
    CalibrationSet,
    choose_from_split,
    ids_sha256,
    read_coco_images,
    selection_rank,
    split_ids,
)
from harness.errors import UserError

if TYPE_CHECKING:
    from harness.plan.cells import Cell
    from harness.plan.schema import DatasetSpec


@dataclass(frozen=True)
class Dataset:
    images_dir: Path
    annotations: Path
    image_ids: list[int]  # the selected images, ascending id
    categories: list[dict[str, Any]]
    file_names: dict[int, str] = field(repr=False, compare=False)  # image id -> file name
    sizes: dict[int, tuple[int, int]] = field(repr=False, compare=False)  # image id -> (height, width)
    raw: dict[str, Any] = field(repr=False, compare=False)  # the parsed instances JSON
    # The plan's calibration split (held out of `image_ids`), ascending; empty without one.
    calibration_ids: list[int] = field(default_factory=list)
    calibration_seed: int | None = None

    def image_path(self, image_id: int) -> Path:
        return self.images_dir / self.file_names[image_id]

    @property
    def category_names(self) -> dict[int, str]:
        return {int(c["id"]): str(c["name"]) for c in self.categories}

    @cached_property
    def annotated_category_ids(self) -> set[int]:
        """Categories with at least one annotation on the selected images."""
        selected = set(self.image_ids)
        return {int(a["category_id"]) for a in self.raw["annotations"] if a["image_id"] in selected}

    @property
    def has_segmentation(self) -> bool:
        return any(a.get("segmentation") for a in self.raw["annotations"])

    @property
    def fingerprint(self) -> str:
        """Identifies the selected image set (two cells evaluated the same images or not)."""
        text = f"{self.annotations.name}:" + ",".join(map(str, self.image_ids))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def split_facts(self) -> dict[str, Any]:
        """The evaluation split and the calibration split (when the plan holds one out), by
        image ids and sha256 over them: what the accuracy pass records."""
        out: dict[str, Any] = {
            "evaluation_split": {"count": len(self.image_ids), "sha256": ids_sha256(self.image_ids),
                                 "image_ids": list(self.image_ids)},
        }
        if self.calibration_ids:
            out["calibration_split"] = {
                "count": len(self.calibration_ids), "sha256": ids_sha256(self.calibration_ids),
                "image_ids": list(self.calibration_ids), "seed": self.calibration_seed,
            }
        return out

    @cached_property
    def coco(self) -> Any:
        """A pycocotools COCO object over the whole file (built once, quietly)."""
        return make_coco(self.raw, "pycocotools")


def make_coco(raw: dict[str, Any], library: str = "pycocotools") -> Any:
    """A COCO ground-truth object from a parsed instances dict, without re-reading the file.
    Each gets its own deep copy: COCOeval converts polygons to RLE in place."""
    if library == "pycocotools":
        from pycocotools.coco import COCO
    else:
        from faster_coco_eval import COCO  # type: ignore[no-redef,unused-ignore]  # redefined only where mypy sees pycocotools
    coco = COCO()
    coco.dataset = copy.deepcopy(raw)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _fail(field_name: str, message: str) -> UserError:
    return UserError(f"{field_name}: {message}")


def _validate_instances(data: Any, path: Path) -> None:
    """Refuse anything that is not a COCO instances file, naming the first problem."""
    where = "dataset.annotations"
    if isinstance(data, list):
        raise _fail(where, f"{path} is a JSON list (a COCO results file?), not a COCO instances file "
                           "with `images`, `annotations` and `categories`")
    if not isinstance(data, dict):
        raise _fail(where, f"{path} is not a COCO instances file (expected a JSON object)")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise _fail(where, f"{path} is not a COCO instances file: no list `{'`, `'.join(missing)}`")
    if not data["categories"]:
        raise _fail(where, f"{path} has no categories")
    cat_ids: set[int] = set()
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or not isinstance(cat.get("name"), str):
            raise _fail(where, f"{path}: categories[{i}] needs an integer `id` and a string `name`")
        cat_ids.add(cat["id"])
    image_ids: set[int] = set()
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not isinstance(img.get("id"), int) or not isinstance(img.get("file_name"), str):
            raise _fail(where, f"{path}: images[{i}] needs an integer `id` and a string `file_name`")
        if img["id"] in image_ids:
            raise _fail(where, f"{path}: image id {img['id']} appears twice (images[{i}])")
        image_ids.add(img["id"])
    ann_ids: set[int] = set()
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise _fail(where, f"{path}: annotations[{i}] is not an object")
        for key in ("id", "image_id", "category_id", "bbox"):
            if key not in ann:
                raise _fail(where, f"{path}: annotations[{i}] has no `{key}`")
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox)):
            raise _fail(where, f"{path}: annotations[{i}].bbox must be [x, y, width, height]")
        if ann["image_id"] not in image_ids:
            raise _fail(where, f"{path}: annotations[{i}] refers to image {ann['image_id']}, which is not in `images`")
        if ann["category_id"] not in cat_ids:
            raise _fail(where, f"{path}: annotations[{i}] has category {ann['category_id']}, which is not in `categories`")
        if ann["id"] in ann_ids:
            raise _fail(where, f"{path}: annotation id {ann['id']} appears twice (annotations[{i}])")
        ann_ids.add(ann["id"])
        # Standard defaults where a file leaves them out (pycocotools needs `area` for its
        # small/medium/large ranges).
        ann.setdefault("area", float(bbox[2]) * float(bbox[3]))
        ann.setdefault("iscrowd", 0)


def select_image_ids(all_ids: list[int], mode: str, n: int | None, seed: int = 0) -> list[int]:
    """The subset (see the module doc), ascending. Independent of the order of `all_ids`."""
    ids = sorted(set(all_ids))
    if mode == "all":
        return ids
    assert n is not None
    if n > len(ids):
        raise UserError(f"dataset.subset.n: asks for {n} images but the dataset has {len(ids)}")
    if mode == "first":
        return ids[:n]
    if mode == "random":
        return sorted(sorted(ids, key=lambda i: selection_rank(seed, i))[:n])
    raise UserError(f"dataset.subset.mode: unknown mode `{mode}` (all, first, random)")


def open_dataset(images_dir: Path, annotations: Path, mode: str = "all", n: int | None = None,
                 seed: int = 0, check_files: bool = True, calibration: tuple[int, int] | None = None) -> Dataset:
    """Read and check a COCO-format dataset and select its images; `calibration` (images,
    seed) holds a calibration split out of the pool first (see the module doc)."""
    images_dir, annotations = Path(images_dir), Path(annotations)
    if not images_dir.is_dir():
        raise _fail("dataset.images", f"folder not found: {images_dir}")
    if not annotations.is_file():
        raise _fail("dataset.annotations", f"file not found: {annotations}")
    try:
        data = json.loads(annotations.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise _fail("dataset.annotations", f"{annotations} is not valid JSON ({exc})") from None
    except UnicodeDecodeError:
        raise _fail("dataset.annotations", f"{annotations} is not a UTF-8 text file") from None
    _validate_instances(data, annotations)
    if not data["images"]:
        raise _fail("dataset.annotations", f"{annotations} lists no images")
    file_names = {int(img["id"]): str(img["file_name"]) for img in data["images"]}
    sizes = {int(img["id"]): (int(img.get("height", 0)), int(img.get("width", 0))) for img in data["images"]}
    pool = list(file_names)
    held_out: list[int] = []
    if calibration is not None:
        try:
            held_out = split_ids(pool, calibration[0], calibration[1])
        except ValueError as exc:
            raise _fail("dataset.calibration.images", f"{exc} ({annotations})") from None
        if len(held_out) >= len(pool):
            raise _fail("dataset.calibration.images", f"holds out all {len(pool)} images of {annotations}: "
                                                      "none is left for the accuracy pass")
        kept = set(held_out)
        pool = [i for i in pool if i not in kept]
    try:
        image_ids = select_image_ids(pool, mode, n, seed)
    except UserError as exc:
        if held_out:
            raise UserError(f"{exc} once the calibration split ({len(held_out)} images) is held out") from None
        raise
    if check_files:
        missing = [file_names[i] for i in image_ids if not (images_dir / file_names[i]).is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise _fail("dataset.images", f"{len(missing)} image file(s) listed in {annotations.name} are not in "
                                          f"{images_dir}: {shown}")
    return Dataset(
        images_dir=images_dir,
        annotations=annotations,
        image_ids=image_ids,
        categories=list(data["categories"]),
        file_names=file_names,
        sizes=sizes,
        raw=data,
        calibration_ids=held_out,
        calibration_seed=calibration[1] if calibration is not None else None,
    )


def dataset_files(spec: DatasetSpec, plan_dir: Path, cache_root: Path) -> tuple[Path, Path]:
    """(images folder, instances JSON) of the plan's dataset: the generated sample (generated
    once into `cache_root`) or a COCO folder + JSON relative to the plan's folder."""
    if spec.sample:
        from harness.accuracy.sample import sample_dataset_dir

        return sample_dataset_dir(Path(cache_root), spec.sample_images)
    assert spec.images and spec.annotations  # the schema guarantees both
    return _resolve(spec.images, plan_dir), _resolve(spec.annotations, plan_dir)


def generate_sample_files(spec: DatasetSpec, plan_dir: Path, cache_root: Path) -> float | None:
    """Generate the plan's sample dataset now if it is not cached yet; the seconds it took, or
    None when nothing was made (a cached sample, or a COCO folder of the user's)."""
    if not spec.sample:
        return None
    from harness.accuracy.sample import sample_dataset_paths

    if sample_dataset_paths(Path(cache_root), spec.sample_images)[1].is_file():
        return None
    started = time.perf_counter()
    dataset_files(spec, plan_dir, cache_root)
    return time.perf_counter() - started


def load_dataset(spec: DatasetSpec, plan_dir: Path, cache_root: Path) -> Dataset:
    """The plan's dataset: the generated sample (`sample: true`, generated once into
    `cache_root`) or a COCO folder + JSON relative to the plan's folder, with its subset and
    without its calibration split."""
    images_dir, annotations = dataset_files(spec, plan_dir, cache_root)
    split = (spec.calibration.images, spec.calibration.seed) if spec.calibration is not None else None
    return open_dataset(images_dir, annotations, spec.subset.mode, spec.subset.n, spec.subset.seed, calibration=split)


def split_calibration_set(cell: Cell, n: int | None, cache_root: Path | None = None) -> CalibrationSet:
    """`n` images (None: all) of the plan's calibration split, for a runtime that calibrates:
    disjoint from every image the accuracy pass reports on. CalibrationError when the plan holds
    no split or a chosen file is missing."""
    spec = cell.dataset
    if spec is None or spec.calibration is None:
        raise CalibrationError(
            "INT8 calibration needs a calibration split of the plan's dataset: add "
            "`dataset: {calibration: {images: N}}` (those N images are then left out of every cell's accuracy pass)"
        )
    images_dir, annotations = dataset_files(spec, Path(cell.plan_dir), cache_root or default_cache_root(cell))
    if not images_dir.is_dir():
        raise CalibrationError(f"calibration images folder {images_dir} does not exist")
    pool = read_coco_images(annotations)
    try:
        split = split_ids([im.image_id for im in pool], spec.calibration.images, spec.calibration.seed)
    except ValueError as exc:
        raise CalibrationError(f"dataset.calibration.images {exc}") from None
    chosen = choose_from_split(pool, split, n, spec.calibration.seed)
    return CalibrationSet.of_files(
        chosen, images_dir, annotations, seed=spec.calibration.seed, pool_size=len(split),
        source="plan dataset calibration split" + (" (generated sample)" if spec.sample else ""),
        overlaps_evaluation=False,
    )


def _resolve(value: str, plan_dir: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(plan_dir) / path


def default_cache_root(cell: Cell) -> Path:
    """Where generated datasets live for a cell: beside its exported artifacts."""
    return cell.resolve_path(cell.artifacts_dir) / "datasets"


def dataset_for_cell(cell: Cell, cache_root: Path | None = None) -> Dataset:
    """The cell's dataset (its plan's `dataset` section), or a UserError when it has none."""
    if cell.dataset is None:
        raise UserError("dataset: the plan has no `dataset` section, so there is nothing to evaluate on")
    return load_dataset(cell.dataset, Path(cell.plan_dir), cache_root or default_cache_root(cell))
