"""Throughput and speed-up per model and scope (FPS per configuration, with the
speed-up against the FP32 reference).

A speed-up is the reference cell's median divided by the cell's median, and only between cells
that timed the same thing: same model, scope, batch and resolution. The two scopes time
different regions (a forward pass against decode-to-detections), so a ratio across them is not a
speed-up of the configuration; where the plan's reference exists only end to end (rfdetr's
predict() has no model scope), the model-scope rows say so, and the cross-scope ratio is given
only in its own, explicitly labelled column.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.report.rundata import CellView

CROSS_SCOPE_LABEL = "vs reference end-to-end (different scope)"


@dataclass
class ThroughputRow:
    cell: CellView
    reference: CellView | None = None  # same model, scope, batch and resolution
    speedup: float | None = None  # reference median / cell median
    note: str | None = None  # why a measured cell has no speed-up
    cross_reference: CellView | None = None  # the end-to-end reference, for a model-scope row without its own
    cross_speedup: float | None = None

    @property
    def qualifiers(self) -> list[str]:
        """What weakens the ratio: a flagged cell or a flagged reference (unstable, throttled...)."""
        out = []
        if self.cell.status != "ok" and self.cell.measured:
            out.append(self.cell.status.replace("_", " "))
        ref = self.reference if self.speedup is not None else self.cross_reference
        if ref is not None and ref is not self.cell and ref.status != "ok":
            out.append("reference " + ref.status.replace("_", " "))
        return out


@dataclass
class ThroughputGroup:
    model: str
    scope: str
    rows: list[ThroughputRow]
    references: list[CellView] = field(default_factory=list)  # this scope's reference cells
    note: str | None = None  # said once for the whole group (no reference in this scope)
    neutral: bool = False  # the note is a plain fact, not a problem (a plan with one runtime)

    @property
    def has_cross(self) -> bool:
        return any(r.cross_reference is not None for r in self.rows)


def scope_words(text: str) -> str:
    return text.replace("_", "-") if text == "end_to_end" else text.replace("_", " ")


def _ratio(reference: CellView, cell: CellView) -> float | None:
    if not (reference.measured and cell.measured) or not reference.median or not cell.median:
        return None
    return reference.median / cell.median


def _missing_scope_note(scope: str, model_refs: list[CellView]) -> str:
    """Why a scope has no reference: the deployment plan's reference is predict(), which exists
    only end to end; say that in those words, otherwise name the scopes the reference has."""
    from harness.runtimes.registry import plugins

    precisions = "/".join(sorted({r.precision for r in model_refs}))
    head = f"no {precisions} reference in the {scope_words(scope)} scope"
    # Runtimes that time images in, detections out (rfdetr's predict()) have no model scope.
    images_only = {p.name: p.title for p in plugins() if p.scopes == {"end_to_end"}}
    only_e2e = sorted({r.runtime_name for r in model_refs if r.runtime_name in images_only})
    if only_e2e and scope != "end_to_end":
        calls = ", ".join(f"{name} times {images_only[name].split()[-1]}" for name in only_e2e)
        return f"{head}: {calls}, which has only the end-to-end scope"
    scopes = " and ".join(sorted({scope_words(r.scope) for r in model_refs}))
    return f"{head}: the reference was measured only in the {scopes} scope"


def throughput_groups(views: list[CellView]) -> list[ThroughputGroup]:
    """Per model and scope, in the run's order (the verdicts' order), one row per configuration:
    references first within each batch and resolution."""
    references: dict[tuple[str, str, int, int], CellView] = {}
    model_refs: dict[str, list[CellView]] = {}
    for v in views:
        if v.is_reference:
            references.setdefault((v.model, v.scope, v.batch, v.resolution), v)
            model_refs.setdefault(v.model, []).append(v)

    grouped: dict[tuple[str, str], list[CellView]] = {}
    for v in views:
        grouped.setdefault((v.model, v.scope), []).append(v)

    # A plan that measures one runtime has nothing to compare it with: no reference is needed,
    # and its absence is no problem to warn about.
    runtimes = {v.runtime for v in views}
    single_runtime = len(runtimes) == 1
    out: list[ThroughputGroup] = []
    for (model, scope), cells in grouped.items():
        refs = model_refs.get(model, [])
        scope_refs = [r for r in refs if r.scope == scope]
        if not refs and single_runtime:
            group_note = f"the plan measures one runtime ({next(iter(runtimes))}), so there is nothing to compare it with and no speed-up"
        elif not refs:
            group_note = "no reference cell for this model, so no speed-up"
        elif not scope_refs:
            group_note = _missing_scope_note(scope, refs)
        else:
            group_note = None
        # sorted() is stable: within a key, cells keep the run's order.
        cells = sorted(cells, key=lambda v: (v.resolution, v.batch, not v.is_reference))
        rows = []
        for v in cells:
            row = ThroughputRow(v)
            ref = references.get((model, scope, v.batch, v.resolution))
            if ref is not None:
                row.reference = ref
                row.speedup = _ratio(ref, v)
                if row.speedup is None and v.measured:
                    row.note = f"the reference cell was not measured ({ref.status})"
            elif v.measured:
                if group_note is not None and single_runtime and not refs:
                    row.note = "nothing to compare with"
                elif group_note is not None:
                    row.note = "no reference in this scope" if refs else "no reference"
                else:
                    row.note = f"no reference at batch {v.batch}, {v.resolution}px"
                # Only a model-scope row can get here with an end-to-end reference (an
                # end-to-end row would have found it above).
                end_to_end = references.get((model, "end_to_end", v.batch, v.resolution))
                if end_to_end is not None:
                    row.cross_reference = end_to_end
                    row.cross_speedup = _ratio(end_to_end, v)
            rows.append(row)
        out.append(ThroughputGroup(model, scope, rows, scope_refs, group_note, neutral=single_runtime and not refs))
    return out
