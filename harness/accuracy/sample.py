"""A small COCO-format dataset the project generates itself: shapes on backgrounds.

COCO cannot be downloaded everywhere the harness runs (CI, air-gapped GPU boxes), yet the
accuracy pipeline needs real files to exercise: JPEG decoding, an instances JSON, pycocotools.
So the project draws one, deterministically: the same (n_images, seed) gives byte-identical
files on every run (numpy's seeded generator, PIL's JPEG encoder with fixed settings, JSON
with sorted keys and rounded numbers).

Each shape carries a real COCO category name and id, so a COCO-trained model's classes map
onto it: rectangles are `tv`, ellipses `sports ball`, diamonds `kite`, octagons `stop sign`
and a stick-figure silhouette is a `person` with the 17 COCO keypoints (so keypoint OKS AP
runs too). Every object has a segmentation polygon (the exact polygon drawn), so mask AP runs.
Objects never overlap, so every polygon is also the object's visible region.

Usage: `python -m harness.accuracy.sample OUT_DIR [--images N] [--seed S]`.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from harness import files
from harness.accuracy.coco_names import COCO_KEYPOINT_NAMES, COCO_SKELETON

# Bump when the drawing changes, so an old cached copy is not mistaken for the new one.
SAMPLE_FORMAT_VERSION = 1
IMAGES_DIRNAME = "images"
ANNOTATIONS_FILENAME = "instances.json"
JPEG_QUALITY = 90

# (category id, name, supercategory): real COCO ids, so COCO models' classes map onto them.
SHAPE_CATEGORIES: dict[str, tuple[int, str, str]] = {
    "person": (1, "person", "person"),
    "octagon": (13, "stop sign", "outdoor"),
    "ellipse": (37, "sports ball", "sports"),
    "diamond": (38, "kite", "sports"),
    "rectangle": (72, "tv", "electronic"),
}

# A standing figure in a unit box (x right, y down). One polygon: head outline, then the
# body clockwise from the right side of the neck.
_HEAD_CENTER = (0.5, 0.09)
_HEAD_RADII = (0.14, 0.09)
_BODY = [
    (0.56, 0.18), (0.85, 0.22), (1.00, 0.50), (0.92, 0.53), (0.78, 0.33), (0.75, 0.56),
    (0.78, 1.00), (0.58, 1.00), (0.50, 0.64), (0.42, 1.00), (0.22, 1.00), (0.25, 0.56),
    (0.22, 0.33), (0.08, 0.53), (0.00, 0.50), (0.15, 0.22), (0.44, 0.18),
]
# COCO keypoint positions on that figure (person's left is the image's right: facing us).
_KEYPOINTS = [
    (0.50, 0.10), (0.55, 0.07), (0.45, 0.07), (0.61, 0.09), (0.39, 0.09),
    (0.78, 0.24), (0.22, 0.24), (0.88, 0.38), (0.12, 0.38), (0.95, 0.50), (0.05, 0.50),
    (0.64, 0.57), (0.36, 0.57), (0.66, 0.78), (0.34, 0.78), (0.68, 0.97), (0.32, 0.97),
]


def _person_outline() -> list[tuple[float, float]]:
    cx, cy = _HEAD_CENTER
    rx, ry = _HEAD_RADII
    # From the lower left of the head (110 deg, y down) over the top to its lower right (70 deg).
    head = [
        (cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a)))
        for a in np.linspace(110, 430, 13)
    ]
    return head + _BODY


def _unit_polygon(kind: str, rng: np.random.Generator) -> list[tuple[float, float]]:
    """The shape's outline in a unit box, touching all four sides (so the bbox is the box)."""
    if kind == "rectangle":
        return [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
    if kind == "ellipse":
        # A 40-gon: drawn and annotated as the same polygon, so the mask is exact.
        return [
            (0.5 + 0.5 * math.cos(t), 0.5 + 0.5 * math.sin(t))
            for t in np.linspace(0, 2 * math.pi, 40, endpoint=False)
        ]
    if kind == "diamond":
        top = float(rng.uniform(0.3, 0.7))
        side = float(rng.uniform(0.3, 0.6))
        return [(top, 0.0), (1.0, side), (top, 1.0), (0.0, side)]
    if kind == "octagon":
        c = 0.2929  # 1 - 1/sqrt(2): a regular octagon in a square
        return [(c, 0), (1 - c, 0), (1, c), (1, 1 - c), (1 - c, 1), (c, 1), (0, 1 - c), (0, c)]
    if kind == "person":
        return _person_outline()
    raise ValueError(kind)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A gradient between two colours along a random direction, plus stripes and grain."""
    c0 = rng.uniform(0, 255, 3)
    c1 = rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xx * math.cos(angle) + yy * math.sin(angle)) / float(max(h, w))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    period = rng.uniform(12, 60)
    stripe_angle = rng.uniform(0, math.pi)
    phase = (xx * math.cos(stripe_angle) + yy * math.sin(stripe_angle)) * (2 * math.pi / period)
    img += rng.uniform(5, 25) * np.sin(phase)[..., None]
    img += rng.normal(0, 6, (h, w, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def _round(v: float) -> float:
    return float(round(float(v), 2))


def _shoelace(points: list[tuple[float, float]]) -> float:
    xs = np.array([p[0] for p in points])
    ys = np.array([p[1] for p in points])
    return float(abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))) / 2)


def _draw_image(
    rng: np.random.Generator, image_id: int, next_ann_id: int
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    from PIL import Image, ImageDraw

    w = int(rng.integers(320, 641))
    h = int(rng.integers(320, 641))
    if w == h:  # keep every image non-square: resize paths must handle aspect ratio
        h -= 17
    canvas = Image.fromarray(_background(rng, h, w))
    draw = ImageDraw.Draw(canvas)
    kinds = list(SHAPE_CATEGORIES)
    placed: list[tuple[float, float, float, float]] = []
    anns: list[dict[str, Any]] = []
    for _ in range(int(rng.integers(1, 6))):
        kind = kinds[int(rng.integers(0, len(kinds)))]
        # 5% to 50% of the short side, log-uniform: small, medium and large COCO areas all occur.
        size = math.exp(float(rng.uniform(math.log(0.05), math.log(0.5)))) * min(h, w)
        if kind == "person":
            bh, bw = size * 1.6, size * 0.64
        else:
            aspect = float(rng.uniform(0.6, 1.6)) if kind != "octagon" else 1.0
            bh, bw = size, size * aspect
        bh, bw = min(bh, h - 4.0), min(bw, w - 4.0)
        for _try in range(30):
            x0 = float(rng.uniform(2, w - bw - 2))
            y0 = float(rng.uniform(2, h - bh - 2))
            box = (x0, y0, x0 + bw, y0 + bh)
            # No overlaps (with a margin): each polygon is then exactly the visible object.
            if all(box[0] > q[2] + 3 or box[2] < q[0] - 3 or box[1] > q[3] + 3 or box[3] < q[1] - 3
                   for q in placed):
                break
        else:
            continue
        placed.append(box)
        poly = [(_round(x0 + px * bw), _round(y0 + py * bh)) for px, py in _unit_polygon(kind, rng)]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.polygon(poly, fill=colour)
        xs = [p[0] for p in poly]
        ys = [p[1] for p in poly]
        cat_id, _, _ = SHAPE_CATEGORIES[kind]
        ann: dict[str, Any] = {
            "id": next_ann_id + len(anns),
            "image_id": image_id,
            "category_id": cat_id,
            "bbox": [_round(min(xs)), _round(min(ys)), _round(max(xs) - min(xs)), _round(max(ys) - min(ys))],
            "area": _round(_shoelace(poly)),
            "iscrowd": 0,
            "segmentation": [[c for p in poly for c in p]],
        }
        if kind == "person":
            kps: list[float] = []
            for px, py in _KEYPOINTS:
                kps += [_round(x0 + px * bw), _round(y0 + py * bh), 2]
            ann["keypoints"] = kps
            ann["num_keypoints"] = len(_KEYPOINTS)
        anns.append(ann)
    return np.asarray(canvas), anns


def _encode_jpeg(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    # Fixed settings and no metadata: the bytes depend on the pixels alone.
    Image.fromarray(pixels).save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=2)
    return buf.getvalue()


def _categories() -> list[dict[str, Any]]:
    cats = []
    for cat_id, name, supercategory in sorted(SHAPE_CATEGORIES.values()):
        cat: dict[str, Any] = {"id": cat_id, "name": name, "supercategory": supercategory}
        if name == "person":
            cat["keypoints"] = list(COCO_KEYPOINT_NAMES)
            cat["skeleton"] = [list(pair) for pair in COCO_SKELETON]
        cats.append(cat)
    return cats


def _write_dataset(root: Path, n_images: int, seed: int) -> None:
    images_dir = root / IMAGES_DIRNAME
    images_dir.mkdir(parents=True)
    # Image ids are not the file order on purpose: code must never assume id == position.
    id_rng = np.random.default_rng([seed, 1])
    image_ids = sorted(int(i) + 1 for i in id_rng.choice(10 * n_images, n_images, replace=False))
    id_rng.shuffle(image_ids)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index, image_id in enumerate(image_ids):
        # One generator per image: image k does not depend on how many came before.
        rng = np.random.default_rng([seed, 2, index])
        pixels, anns = _draw_image(rng, image_id, len(annotations) + 1)
        file_name = f"sample_{index:05d}.jpg"
        files.write_new(images_dir / file_name, _encode_jpeg(pixels), root=root)
        images.append({"id": image_id, "file_name": file_name,
                       "height": int(pixels.shape[0]), "width": int(pixels.shape[1])})
        annotations.extend(anns)
    instances = {
        "info": {
            "description": "detbench generated sample: shapes on backgrounds",
            "version": str(SAMPLE_FORMAT_VERSION),
            "n_images": n_images,
            "seed": seed,
        },
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": _categories(),
    }
    files.write_new(root / ANNOTATIONS_FILENAME, json.dumps(instances, sort_keys=True, indent=1) + "\n", root=root)


def make_sample_dataset(out_dir: Path, n_images: int = 24, seed: int = 0) -> tuple[Path, Path]:
    """Generate the sample into `out_dir` (which must not exist, or be empty) and return
    (images_dir, instances_json). Written to a temporary sibling folder and renamed into
    place, so a crash never leaves a half-written dataset at `out_dir`."""
    if n_images < 1:
        raise ValueError("n_images must be at least 1")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        _write_dataset(tmp, n_images, seed)
        os.rename(tmp, out_dir)  # atomic; fails if out_dir exists and is not empty
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir / IMAGES_DIRNAME, out_dir / ANNOTATIONS_FILENAME


def sample_dataset_paths(cache_root: Path, n_images: int, seed: int = 0) -> tuple[Path, Path]:
    """Where `sample_dataset_dir` keeps the sample (images folder, instances JSON), made or not."""
    version = f"-v{SAMPLE_FORMAT_VERSION}" if SAMPLE_FORMAT_VERSION > 1 else ""
    out_dir = Path(cache_root) / f"sample-{n_images}-{seed}{version}"
    return out_dir / IMAGES_DIRNAME, out_dir / ANNOTATIONS_FILENAME


def sample_dataset_dir(cache_root: Path, n_images: int, seed: int = 0) -> tuple[Path, Path]:
    """The sample in `cache_root/sample-<n>-<seed>` (`-v<version>` added from format 2 on, so a
    new drawing never reuses images cached by an older one): generated on first use, reused
    after. Safe when several worker processes ask at once: one rename wins, the others reuse it."""
    result = sample_dataset_paths(cache_root, n_images, seed)
    out_dir = result[1].parent
    if result[1].is_file():
        return result
    try:
        return make_sample_dataset(out_dir, n_images, seed)
    except OSError:
        if result[1].is_file():  # another process finished first
            return result
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    images_dir, instances = make_sample_dataset(args.out_dir, args.images, args.seed)
    print(f"images: {images_dir}\nannotations: {instances}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
