"""How a candidate is named in words, for tune's own messages and the report's tune section:
no imports beyond the standard library, so the report can use it without the plan and runtime
machinery that space.py needs."""

from __future__ import annotations


def candidate_text(name: str, precision: str, batch: int) -> str:
    """`label precision bN`: the label carries the batch already when several were searched
    (it keeps the labels unique), so it is not said twice."""
    suffix = f" b{batch}"
    return f"{name} {precision}" + ("" if name.endswith(suffix) else suffix)
