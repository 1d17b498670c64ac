"""Disjoint splits of a dataset's images by a seeded hash of their ids: one rule for every
split the harness makes (the score threshold's validation split, a calibration split).

An image's rank is `harness.accuracy.calibration.selection_rank(seed, image_id)`, the rule a
`subset: {mode: random}` and TensorRT's calibration choice already use: it depends on the image
and the seed alone, so a split does not change with the order of the dataset's images or the
numpy version. The selected side is always
the images of the LOWEST ranks, so with one seed the `n` images any of these rules picks first
are nested: a calibration set of n images chosen this way lies inside a validation split of
m >= n images, and neither touches the report split (the rest).

    split = split_image_ids(dataset.image_ids, fraction=0.5, seed=0)
    split.selected   # validation (or calibration) ids, ascending
    split.rest       # the report split, ascending
    split.facts()    # {"selected": {"images", "ids_sha256"}, "rest": {...}} for a record
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# One ranking and one id digest for every split: the calibration split is this rule with n.
from harness.accuracy.calibration import ids_sha256, split_ids


@dataclass(frozen=True)
class Split:
    seed: int
    selected: tuple[int, ...]  # the lowest-ranked images, ascending
    rest: tuple[int, ...]  # every other image, ascending

    def facts(self) -> dict[str, dict[str, int | str]]:
        return {
            "selected": {"images": len(self.selected), "ids_sha256": ids_sha256(self.selected)},
            "rest": {"images": len(self.rest), "ids_sha256": ids_sha256(self.rest)},
        }


def split_image_ids(ids: Iterable[int], *, seed: int = 0, n: int | None = None, fraction: float | None = None,
                    keep_one_each: bool = True) -> Split:
    """Split `ids` into the `n` lowest-ranked images (or round(fraction x N)) and the rest.

    With `keep_one_each`, each side gets at least one image (ValueError with fewer than two
    images); `n` larger than the pool is a ValueError, never quietly fewer."""
    pool = sorted(set(int(i) for i in ids))
    if (n is None) == (fraction is None):
        raise ValueError("give exactly one of n and fraction")
    if fraction is not None:
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must lie strictly between 0 and 1, got {fraction}")
        n = round(fraction * len(pool))
    assert n is not None
    if keep_one_each:
        if len(pool) < 2:
            raise ValueError(f"splitting needs at least 2 images, the dataset has {len(pool)}")
        n = min(max(n, 1), len(pool) - 1)
    if n < 0 or n > len(pool):
        raise ValueError(f"asks for {n} images but there are {len(pool)}")
    chosen = set(split_ids(pool, n, seed))
    return Split(seed, tuple(i for i in pool if i in chosen), tuple(i for i in pool if i not in chosen))
