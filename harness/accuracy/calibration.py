"""Calibration images for INT8: which images, chosen how, recorded by ids and a hash.

One mechanism serves every runtime that calibrates (native TensorRT's IInt8 calibrators, ONNX
Runtime's static quantization) and the accuracy pass that must not score those images:

* Images are ranked by sha256("<seed>:<image id>") and the first N taken, so the choice is the
  same on every machine and numpy version, does not depend on the annotations' order, and is
  stable when images are added (each image's rank depends on itself only). A random accuracy
  subset (`dataset.subset: {mode: random}`) ranks by the same rule.
* A plan's `dataset.calibration: {images: N, seed: S}` holds out a **calibration split**: the N
  best-ranked images of the whole annotations file. The accuracy pass of every cell then
  reports on the other images only (harness.accuracy.datasets), and INT8 calibration draws
  from the split, so a quantized model is never scored on the images that set its scales.
* What was used is recorded by image ids and a sha256 over them (`ids_sha256`), beside the
  sha256 of the annotations file they came from.

Nothing here imports more than the standard library and harness.errors-free light modules:
`bench validate` and the TensorRT engine logic (harness.runtimes.tensorrt.engine) use it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.files import file_sha256

CALIBRATION_KEY_SCHEME = 1
SELECTION_RULE = "smallest sha256(f'{seed}:{image_id}') over every image in the annotations"


def selection_rank(seed: int, image_id: int) -> str:
    """An image's place in a `random` subset and in a calibration choice (the same rule, so the
    two are nested for one seed): sha256 of "<seed>:<id>", hex."""
    return hashlib.sha256(f"{seed}:{image_id}".encode()).hexdigest()


def ids_sha256(image_ids: Iterable[int]) -> str:
    """The sha256 that identifies a set of image ids (ascending, comma-separated)."""
    return hashlib.sha256(",".join(str(i) for i in sorted(set(int(i) for i in image_ids))).encode()).hexdigest()


def split_ids(all_ids: Iterable[int], n: int, seed: int) -> list[int]:
    """The calibration split: the `n` best-ranked ids (ascending). ValueError when the pool is
    smaller than `n`."""
    ids = sorted(set(int(i) for i in all_ids))
    if n > len(ids):
        raise ValueError(f"asks for {n} calibration images but the dataset has {len(ids)}")
    return sorted(sorted(ids, key=lambda i: (selection_rank(seed, i), i))[:n])


class CalibrationError(Exception):
    """INT8 calibration data is missing or unusable; the cell fails with this message."""


@dataclass(frozen=True)
class CalibrationImage:
    image_id: int
    file_name: str


def choose_images(pool: Sequence[CalibrationImage], n: int, seed: int) -> tuple[CalibrationImage, ...]:
    """n images from the pool: deterministic, independent of the pool's order and of numpy's
    version, and stable when images are added (each image's rank depends on itself only).
    Returned in image-id order."""
    if n > len(pool):
        raise CalibrationError(
            f"calibration_images is {n}, but the dataset lists only {len(pool)} images; "
            "lower calibration_images (the harness does not quietly use fewer)"
        )
    ranked = sorted(pool, key=lambda im: (selection_rank(seed, im.image_id), im.image_id))
    return tuple(sorted(ranked[:n], key=lambda im: im.image_id))


def read_coco_images(annotations: Path) -> list[CalibrationImage]:
    """The (id, file_name) of every image an instances JSON lists."""
    if not annotations.is_file():
        raise CalibrationError(f"calibration annotations {annotations} do not exist")
    try:
        data = json.loads(annotations.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibrationError(f"calibration annotations {annotations} cannot be read as JSON: {exc}") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or not images:
        raise CalibrationError(f"{annotations} has no `images` list (expected COCO instances JSON)")
    out: dict[int, CalibrationImage] = {}
    for i, item in enumerate(images):
        try:
            image_id, file_name = int(item["id"]), str(item["file_name"])
        except (KeyError, TypeError, ValueError):
            raise CalibrationError(f"{annotations}: images[{i}] lacks an integer `id` or a `file_name`") from None
        out[image_id] = CalibrationImage(image_id, file_name)
    return [out[k] for k in sorted(out)]


def canonical_json(value: Any) -> str:
    """One spelling per value: sorted keys, no whitespace, ASCII, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CalibrationSet:
    """The images a model was calibrated on, and where they came from."""

    images: tuple[CalibrationImage, ...]
    images_dir: Path
    annotations: Path
    annotations_sha256: str
    seed: int
    pool_size: int
    source: str  # "plan dataset" | "plan dataset calibration split" | "settings.calibration_dataset"
    overlaps_evaluation: bool  # drawn from the set the accuracy pass scores

    @property
    def image_ids(self) -> list[int]:
        return [im.image_id for im in self.images]

    @property
    def ids_sha256(self) -> str:
        return ids_sha256(self.image_ids)

    def paths(self) -> list[Path]:
        return [self.images_dir / im.file_name for im in self.images]

    @classmethod
    def of_files(cls, images: Sequence[CalibrationImage], images_dir: Path, annotations: Path, *, seed: int,
                 pool_size: int, source: str, overlaps_evaluation: bool) -> CalibrationSet:
        """The set of the chosen images, each of which must be a file in `images_dir`
        (CalibrationError naming the first missing ones), with the annotations' sha256."""
        missing = [str(images_dir / im.file_name) for im in images if not (images_dir / im.file_name).is_file()]
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise CalibrationError(f"{len(missing)} chosen calibration image(s) are missing: {shown}")
        return cls(images=tuple(images), images_dir=images_dir, annotations=annotations,
                   annotations_sha256=file_sha256(annotations), seed=seed, pool_size=pool_size, source=source,
                   overlaps_evaluation=overlaps_evaluation)

    def key(self, *, calibrator: str, input_shape: Sequence[int], preprocess: str) -> str:
        """Identity of a calibration cache: same images, same algorithm, same input, same
        preprocessing -> same scales."""
        return sha256_text(
            canonical_json(
                {
                    "scheme": CALIBRATION_KEY_SCHEME,
                    "annotations_sha256": self.annotations_sha256,
                    "image_ids": self.image_ids,
                    "calibrator": calibrator,
                    "input_shape": [int(d) for d in input_shape],
                    "preprocess": preprocess,
                }
            )
        )

    def sidecar(self) -> dict[str, Any]:
        """What is written beside the calibration cache and recorded with the result."""
        return {
            "source": self.source,
            "images_dir": str(self.images_dir),
            "annotations": str(self.annotations),
            "annotations_sha256": self.annotations_sha256,
            "seed": self.seed,
            "count": len(self.images),
            "pool_size": self.pool_size,
            "selection": SELECTION_RULE,
            "overlaps_evaluation_set": self.overlaps_evaluation,
            "image_ids": self.image_ids,
            "ids_sha256": self.ids_sha256,
            "file_names": [im.file_name for im in self.images],
        }


def choose_from_split(
    pool: Sequence[CalibrationImage], split: Sequence[int], n: int | None, seed: int
) -> tuple[CalibrationImage, ...]:
    """The calibration images a runtime uses: `n` of the plan's calibration split (all of it
    when n is None), by the same ranking, so a smaller n is a subset of a larger one."""
    in_split = set(int(i) for i in split)
    candidates = [im for im in pool if im.image_id in in_split]
    if n is None:
        return tuple(sorted(candidates, key=lambda im: im.image_id))
    if n > len(candidates):
        raise CalibrationError(
            f"calibration_images is {n}, but the plan's calibration split (dataset.calibration.images) "
            f"holds {len(candidates)} images; raise dataset.calibration.images or lower calibration_images"
        )
    return choose_images(candidates, n, seed)
