"""Dominance between configurations: pure arithmetic, so the rules are tested on their own.

A point dominates another when it is no worse on both axes and better on at least one. Two
points equal on both axes dominate neither, so both stay on the front (a tie is shown, not
broken here: the winner's rule breaks it and says how).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    key: str
    latency: float  # lower is better
    value: float  # mAP (higher is better) or memory (lower is better)


def dominates(a: Point, b: Point, *, higher_is_better: bool) -> bool:
    """Whether `a` dominates `b`."""
    better_value = a.value > b.value if higher_is_better else a.value < b.value
    no_worse_value = a.value >= b.value if higher_is_better else a.value <= b.value
    return a.latency <= b.latency and no_worse_value and (a.latency < b.latency or better_value)


def front(points: Sequence[Point], *, higher_is_better: bool) -> list[Point]:
    """The points no other point dominates, fastest first (ties in input order)."""
    kept = [p for p in points if not any(dominates(q, p, higher_is_better=higher_is_better) for q in points)]
    return sorted(kept, key=lambda p: p.latency)


def dominated_keys(points: Sequence[Point], *, higher_is_better: bool) -> set[str]:
    on_front = {p.key for p in front(points, higher_is_better=higher_is_better)}
    return {p.key for p in points if p.key not in on_front}
