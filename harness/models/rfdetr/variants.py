"""RF-DETR variants the harness knows, as static facts (so `bench validate` needs no torch).

Read from rfdetr 1.11's config classes: a resolution must be a multiple of
patch_size x num_windows. XLarge and 2XLarge detection live in the separate `rfdetr_plus`
package; their divisor is not known here and is checked by rfdetr itself at build time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Family = Literal["detection", "segmentation", "keypoint"]


@dataclass(frozen=True)
class Variant:
    class_name: str
    native_resolution: int
    divisor: int | None
    family: Family
    plus_only: bool = False
    checkpoint: str | None = None  # rfdetr's default checkpoint file name (its cache)


VARIANTS: dict[str, Variant] = {
    "nano": Variant("RFDETRNano", 384, 32, "detection", checkpoint="rf-detr-nano.pth"),
    "small": Variant("RFDETRSmall", 512, 32, "detection", checkpoint="rf-detr-small.pth"),
    "medium": Variant("RFDETRMedium", 576, 32, "detection", checkpoint="rf-detr-medium.pth"),
    "large": Variant("RFDETRLarge", 704, 32, "detection", checkpoint="rf-detr-large-2026.pth"),
    "base": Variant("RFDETRBase", 560, 56, "detection", checkpoint="rf-detr-base.pth"),
    "xlarge": Variant("RFDETRXLarge", 700, None, "detection", plus_only=True),
    "2xlarge": Variant("RFDETR2XLarge", 880, None, "detection", plus_only=True),
    "seg-preview": Variant("RFDETRSegPreview", 432, 24, "segmentation", checkpoint="rf-detr-seg-preview.pt"),
    "seg-nano": Variant("RFDETRSegNano", 312, 12, "segmentation", checkpoint="rf-detr-seg-nano.pt"),
    "seg-small": Variant("RFDETRSegSmall", 384, 24, "segmentation", checkpoint="rf-detr-seg-small.pt"),
    "seg-medium": Variant("RFDETRSegMedium", 432, 24, "segmentation", checkpoint="rf-detr-seg-medium.pt"),
    "seg-large": Variant("RFDETRSegLarge", 504, 24, "segmentation", checkpoint="rf-detr-seg-large.pt"),
    "seg-xlarge": Variant("RFDETRSegXLarge", 624, 24, "segmentation", checkpoint="rf-detr-seg-xlarge.pt"),
    "seg-2xlarge": Variant("RFDETRSeg2XLarge", 768, 24, "segmentation", checkpoint="rf-detr-seg-xxlarge.pt"),
    "keypoint": Variant(
        "RFDETRKeypointPreview", 576, 24, "keypoint",
        checkpoint="rf-detr-keypoint-preview-xlarge.pth",
    ),
}


def resolution_problem(variant: str, resolution: int) -> str | None:
    """Why `variant` refuses `resolution`, or None when it accepts it."""
    v = VARIANTS[variant]
    if v.divisor and resolution % v.divisor:
        lower = resolution // v.divisor * v.divisor
        return (
            f"RF-DETR {variant} needs a resolution that is a multiple of {v.divisor} "
            f"(patch size x windows); {resolution} is not (try {lower} or {lower + v.divisor})"
        )
    return None
