"""A few images where an artifact and its reference disagree most, both sets of boxes drawn.

Numbers say that an FP16 engine lost 2 AP; a picture says whether it lost small boxes, shifted
all boxes by a pixel or invented new ones. The images are ranked by the per-image
disagreement score of `agreement.detection_agreement` (ties: dataset order).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from harness import files
from harness.accuracy.agreement import detection_agreement
from harness.accuracy.derive import cell_file

if TYPE_CHECKING:
    from harness.accuracy.datasets import Dataset
    from harness.models.detections import Detections
    from harness.results import CellRecord

REFERENCE_COLOUR = (0, 200, 80)  # green
OTHER_COLOUR = (255, 0, 200)  # magenta
LEGEND_HEIGHT = 18


def _label(class_names: Sequence[str | None] | Mapping[int, str], class_id: int) -> str:
    if isinstance(class_names, Mapping):
        return class_names.get(class_id, str(class_id))
    if 0 <= class_id < len(class_names) and class_names[class_id] is not None:
        return str(class_names[class_id])
    return str(class_id)


def draw_gallery(
    dataset: Dataset,
    image_ids: Sequence[int],
    reference_dets: Sequence[Detections],
    other_dets: Sequence[Detections],
    class_names: Sequence[str | None] | Mapping[int, str],
    out_dir: Path,
    prefix: str,
    n: int,
    *,
    min_score: float = 0.3,
    reference_label: str = "reference",
    other_label: str = "this cell",
    quality: int = 85,
) -> list[Path]:
    """Write `<out_dir>/<prefix>-<k>.jpg` (k = 1..n) for the n images of `image_ids` where the
    two runs disagree most, and return the paths. Only boxes scoring at least `min_score` are
    drawn (and ranked): the low-score tail would hide the picture. `class_names` is indexed
    by the detections' class ids (a list, or a dict such as category id -> name)."""
    from PIL import Image, ImageDraw

    from harness.accuracy.loader import decode_image

    if n <= 0 or not image_ids:
        return []
    agreement = detection_agreement(reference_dets, other_dets, min_score=min_score)
    scores = agreement["per_image"]
    ranked = sorted(range(len(image_ids)), key=lambda i: (-scores[i], i))[:n]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for k, i in enumerate(ranked, start=1):
        pixels = decode_image(dataset.image_path(image_ids[i]))
        h, w = pixels.shape[:2]
        canvas = Image.new("RGB", (w, h + LEGEND_HEIGHT), (255, 255, 255))
        canvas.paste(Image.fromarray(pixels), (0, LEGEND_HEIGHT))
        draw = ImageDraw.Draw(canvas)
        for dets, colour, offset in ((reference_dets[i], REFERENCE_COLOUR, 0), (other_dets[i], OTHER_COLOUR, 1)):
            for j in range(len(dets)):
                score = float(dets.scores[j])
                if score < min_score:
                    continue
                x1, y1, x2, y2 = (float(v) for v in dets.boxes_xyxy[j])
                # The other run's boxes 1 px inside, so identical boxes stay visible as two.
                box = [x1 + offset, y1 + LEGEND_HEIGHT + offset, x2 - offset, y2 + LEGEND_HEIGHT - offset]
                draw.rectangle(box, outline=colour, width=2)
                text = f"{_label(class_names, int(dets.class_ids[j]))} {score:.2f}"
                ty = box[1] + 2 if offset else max(LEGEND_HEIGHT, box[1] - 11)
                # White text on the run's colour: readable on any background.
                draw.rectangle(draw.textbbox((box[0] + 2, ty), text), fill=colour)
                draw.text((box[0] + 2, ty), text, fill=(255, 255, 255))
        draw.rectangle([6, 5, 14, 13], fill=REFERENCE_COLOUR)
        draw.text((18, 3), reference_label, fill=(0, 0, 0))
        x = 30 + int(draw.textlength(reference_label))
        draw.rectangle([x, 5, x + 8, 13], fill=OTHER_COLOUR)
        draw.text((x + 12, 3), f"{other_label}   image {image_ids[i]}, disagreement {scores[i]:.2f}", fill=(0, 0, 0))
        path = out_dir / f"{prefix}-{k}.jpg"
        with files.replacing(path) as buffer:
            canvas.save(buffer, format="JPEG", quality=quality)
        paths.append(path)
    return paths


def gallery_for_cell(
    record: CellRecord,
    reference: CellRecord,
    run_dir: Path,
    dataset: Dataset,
    n: int,
    *,
    min_score: float = 0.3,
) -> list[str]:
    """The gallery of one cell against its reference from the run folder's detection files:
    gallery/<cell_id>-<k>.jpg. Returns paths relative to `run_dir` (for the derived entry)."""
    from harness.accuracy.agreement import detections_from_coco_results

    run_dir = Path(run_dir)
    loaded = []
    for rec in (reference, record):
        loaded.append(json.loads(cell_file(rec, run_dir, "detections", ".json").read_text(encoding="utf-8")))
    image_ids = list(dataset.image_ids)
    ref_dets = detections_from_coco_results(loaded[0], image_ids)
    dets = detections_from_coco_results(loaded[1], image_ids)
    ref_label = f"reference: {reference.identity.runtime_key}"
    label = f"{record.identity.runtime_key} {record.identity.precision}"
    paths = draw_gallery(dataset, image_ids, ref_dets, dets, dataset.category_names, run_dir / "gallery",
                         record.cell_id, n, min_score=min_score, reference_label=ref_label, other_label=label)
    return [str(p.relative_to(run_dir)) for p in paths]
