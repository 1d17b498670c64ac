"""Mapping a model's output classes onto a dataset's category ids, by name.

Three numbering schemes meet here and must never be confused:
  - COCO's category ids (1..90 with 10 gaps), used by COCO's own JSON files;
  - contiguous ids (0..79 or 1..80, or whatever a Roboflow export chose) in other COCO-format
    datasets;
  - the model's output index, which is what `Detections.class_ids` holds. RF-DETR's COCO
    checkpoints have 91 logits whose index IS the COCO id (index 0 and the gaps are never
    predicted: None in `class_names`); fine-tuned models and YOLO-style ONNX files count 0..C-1.

Matching by (normalised) name makes all combinations work without knowing which scheme either
side uses: model index -> name -> dataset category id.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from harness.errors import UserError

# Spellings of the same COCO class seen in other datasets (Pascal VOC, Roboflow exports).
_ALIASES = {
    "motorbike": "motorcycle",
    "aeroplane": "airplane",
    "sofa": "couch",
    "tvmonitor": "tv",
    "television": "tv",
    "mobilephone": "cellphone",
    "hairdryer": "hairdrier",
}


def name_key(name: str) -> str:
    """The form names are compared in: lower case, letters and digits only, known aliases
    folded ("Dining_Table", "dining table" and "diningtable" all match)."""
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    return _ALIASES.get(key, key)


def class_mapping(model_class_names: Sequence[str | None], categories: Sequence[dict[str, Any]]) -> dict[int, int]:
    """Model output index -> dataset category_id, for every model class whose name the
    dataset has. Several model indices may map to one category (duplicated names)."""
    by_key: dict[str, int] = {}
    for cat in categories:
        key = name_key(str(cat["name"]))
        if key in by_key and by_key[key] != int(cat["id"]):
            raise UserError(
                f"dataset.annotations: two categories are both named `{cat['name']}` "
                f"(ids {by_key[key]} and {cat['id']}); the mapping to model classes would be ambiguous"
            )
        by_key[key] = int(cat["id"])
    mapping: dict[int, int] = {}
    for index, name in enumerate(model_class_names):
        if name is None:
            continue
        cat_id = by_key.get(name_key(name))
        if cat_id is not None:
            mapping[index] = cat_id
    return mapping


@dataclass(frozen=True)
class MappingCheck:
    mapping: dict[int, int]  # model index -> dataset category id
    evaluated_category_ids: list[int]  # annotated dataset categories the model knows
    unevaluable: list[str]  # annotated dataset categories the model does not know (names)
    warning: str | None = None
    model_classes_unused: int = 0  # model classes with no dataset category (normal for COCO models)
    details: dict[str, Any] = field(default_factory=dict)
    annotated_category_ids: list[int] = field(default_factory=list)  # what COCO's mAP averages over

    def as_dict(self) -> dict[str, Any]:
        """The record's `accuracy.mapping` (harness.results.ClassMapping)."""
        return {
            "annotated_classes": len(self.annotated_category_ids),
            "predictable_classes": len(self.evaluated_category_ids),
            "unpredictable_classes": list(self.unevaluable),
            "model_classes_unused": self.model_classes_unused,
            "ap_over": "annotated",
            "warning": self.warning,
        }


def check_mapping(
    model_class_names: Sequence[str | None],
    categories: Sequence[dict[str, Any]],
    annotated_category_ids: Iterable[int] | None = None,
) -> MappingCheck:
    """Check, before anything runs, that the model can be evaluated on the dataset.

    Only categories with annotations count (`annotated_category_ids`; all categories when
    None): datasets often list classes no image uses. No overlap at all is a UserError naming
    the unknown classes. A partial overlap is allowed: the mAP stays COCO's over every annotated
    class (one the model cannot predict scores AP 0 there, as COCO counts it), and those classes
    are recorded as `unevaluable` and shown wherever the mAP is. Evaluating on the known classes
    only would hide them: a misspelt class name would raise the mAP without a word."""
    if not any(n is not None for n in model_class_names):
        raise UserError("the model has no class names, so its detections cannot be mapped to the dataset's categories")
    mapping = class_mapping(model_class_names, categories)
    names = {int(c["id"]): str(c["name"]) for c in categories}
    annotated = sorted(set(annotated_category_ids) if annotated_category_ids is not None else names)
    if not annotated:
        raise UserError("dataset.annotations: the selected images have no annotations; there is nothing to evaluate")
    known = set(mapping.values())
    evaluated = [c for c in annotated if c in known]
    unknown = [names.get(c, str(c)) for c in annotated if c not in known]
    if not evaluated:
        sample = ", ".join(n for n in model_class_names if n is not None)
        if len(sample) > 200:
            sample = sample[:200] + "..."
        raise UserError(
            "dataset.annotations: the model knows none of the dataset's classes: "
            f"{', '.join(unknown)} (the model's classes: {sample})"
        )
    warning = None
    if unknown:
        warning = (
            f"{len(unknown)} of {len(annotated)} annotated dataset classes are unknown to the model, so it "
            f"cannot predict them and they count as AP 0 in the mAP: {', '.join(unknown)}"
        )
    unused = sum(1 for i, n in enumerate(model_class_names) if n is not None and i not in mapping)
    return MappingCheck(
        mapping=mapping,
        evaluated_category_ids=evaluated,
        unevaluable=unknown,
        warning=warning,
        model_classes_unused=unused,
        annotated_category_ids=annotated,
    )
