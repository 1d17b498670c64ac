"""`bench merge RUN_FOLDER...`: results measured separately (on different machines, without
Ray) joined into ONE new run folder, from which the usual results.json and report are built.

The inputs are never modified. A result is identified by (cell id, hardware), hardware being
the GPU model the worker recorded (or "CPU <model>" for a CPU cell): the same pair in two
inputs is refused with a UserError that names them, since two numbers for one configuration on
one GPU model would silently compete in the report (measure again into one run, or merge the
ones you mean). The same cell measured on different hardware is kept, each result under a
qualified id `<cell_id>@<hardware slug>` (harness.run.placement) with the hardware in
record["placement"], so the report can compare models and runtimes across GPUs. When every
input ran on one kind of hardware, ids stay as they are (two halves of a plan measured on two
identical machines merge into the plan's own ids).

The merged folder holds copies of each cell's record, log, detections, raw outputs and gallery
images (renamed with the cell's id), the first input's plan.yaml (each input's plan.yaml and
run.json are kept under sources/), and a run.json naming the sources. Derived files
(results.json, report) come from `harness.run.execute.finalize`, as for any run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from harness.errors import UserError
from harness.results import (
    CellRecord,
    Environment,
    ResultsError,
    RunMeta,
    describe_validation,
    load_cell_record,
    read_run_meta,
)
from harness.run.placement import QUALIFIER, base_cell_id, hardware_name, hardware_slug, qualify
from harness.run.store import RUN_SUBDIRS, RunStore, write_new

CELL_FILE_FOLDERS = tuple(sub for sub in RUN_SUBDIRS if sub != "cells")
MERGED_PLAN_NAME = "merged"  # when the inputs ran plans of different names


@dataclass
class _Source:
    index: int
    store: RunStore
    meta: RunMeta
    records: list[dict[str, Any]]  # the cell records as JSON of the current schema (read through the model)

    @property
    def label(self) -> str:
        return str(self.store.run_dir)


def _open_sources(run_dirs: list[Path]) -> list[_Source]:
    if len(run_dirs) < 2:
        raise UserError("bench merge: give at least two run folders to merge")
    seen: dict[Path, Path] = {}
    sources = []
    for index, run_dir in enumerate(run_dirs):
        resolved = Path(run_dir).resolve()
        if resolved in seen:
            raise UserError(f"bench merge: {run_dir} is given twice (as {seen[resolved]})")
        seen[resolved] = Path(run_dir)
        store = RunStore.open(Path(run_dir))
        scan = store.scan_cells()
        if scan.bad:
            path, why = scan.bad[0]
            raise UserError(f"bench merge: {path}: a cell file cannot be read: {why}")
        try:
            meta = read_run_meta(store.run_dir / "run.json")
        except ResultsError as exc:
            raise UserError(f"bench merge: {exc}") from None
        sources.append(_Source(index, store, meta, list(scan.records.values())))
    return sources


def _check_duplicates(sources: list[_Source]) -> None:
    owner: dict[tuple[str, str], tuple[_Source, str]] = {}
    clashes: list[str] = []
    for source in sources:
        for record in source.records:
            key = (base_cell_id(record["cell_id"]), hardware_name(record))
            if key in owner and owner[key][0] is not source:  # a cell's processes share its key
                first, first_status = owner[key]
                clashes.append(
                    f"  {key[0]} on {key[1]}: in {first.label} ({first_status}) and in "
                    f"{source.label} ({record.get('status')})"
                )
            else:
                owner[key] = (source, str(record.get("status")))
    if clashes:
        shown = clashes[:20] + ([f"  ... and {len(clashes) - 20} more"] if len(clashes) > 20 else [])
        raise UserError(
            "bench merge: the same cell was measured on the same GPU model in more than one run "
            "folder, so the merged report could not tell which to show:\n" + "\n".join(shown)
            + "\nMerge only one of the runs that measured each cell on that hardware."
        )


def _slugs(records: Iterable[dict[str, Any]]) -> dict[str, str]:
    """One slug per hardware name: the slug the records already carry when they agree (a Ray run
    qualified by accelerator type), else one made from the name; made unique."""
    carried: dict[str, set[str]] = {}
    for record in records:
        name = hardware_name(record)
        slug = (record.get("placement") or {}).get("gpu_slug")
        carried.setdefault(name, set())
        if slug:
            carried[name].add(str(slug))
    slugs: dict[str, str] = {}
    used: set[str] = set()
    for name in sorted(carried):
        own = carried[name]
        slug = next(iter(own)) if len(own) == 1 else hardware_slug(name)
        candidate, n = slug, 2
        while candidate in used:
            candidate, n = f"{slug}-{n}", n + 1
        used.add(candidate)
        slugs[name] = candidate
    return slugs


def _cell_files(run_dir: Path, record: dict[str, Any]) -> set[str]:
    """The record's own files, and every file named after its cell in the cell folders."""
    cell_id = record["cell_id"]
    rels = {rel for rel in (record.get("files") or {}).values() if isinstance(rel, str)}
    for folder in CELL_FILE_FOLDERS:
        directory = run_dir / folder
        if not directory.is_dir():
            continue
        for path in directory.iterdir():
            name = path.name
            if name.startswith(".") or name.endswith(".phase") or not path.is_file():
                continue
            if name.startswith((f"{cell_id}.", f"{cell_id}-")):
                rels.add(f"{folder}/{name}")
    return {rel for rel in rels if (run_dir / rel).is_file()}


def _renamed(rel: str, old_id: str, new_id: str) -> str:
    folder, _, name = rel.rpartition("/")
    if name.startswith(old_id):
        name = new_id + name[len(old_id):]
    return f"{folder}/{name}" if folder else name


def merge_runs(run_dirs: list[Path], out_base: Path) -> Path:
    """Join `run_dirs` into a new run folder under `out_base` (`<out_base>/<plan name>/<id>/`)
    and return it; finalize() it to get results.json and the report. Raises UserError for a
    folder that is not a run, one given twice, or a (cell id, hardware) pair measured twice."""
    sources = _open_sources(run_dirs)
    _check_duplicates(sources)
    all_records = [r for s in sources for r in s.records]
    slugs = _slugs(all_records)
    already_qualified = any(QUALIFIER in r["cell_id"] for r in all_records)
    qualify_ids = len(slugs) > 1 or already_qualified

    plan_texts = [s.store.plan_text() for s in sources]
    plan_names = {s.meta.plan_name for s in sources}
    plan_name = plan_names.pop() if len(plan_names) == 1 else MERGED_PLAN_NAME

    # Order: the plans' cell order (first appearance across inputs), then the inputs' order.
    planned: dict[str, int] = {}
    for source in sources:
        for cell_id in source.meta.cell_ids:
            planned.setdefault(base_cell_id(cell_id), len(planned))
    entries: list[tuple[tuple[int, int, str], _Source, dict[str, Any], str]] = []
    for source in sources:
        for record in source.records:
            name = hardware_name(record)
            base = base_cell_id(record["cell_id"])
            new_id = qualify(base, slugs[name]) if qualify_ids else base
            order = (planned.get(base, len(planned)), source.index, new_id)
            entries.append((order, source, record, new_id))
    entries.sort(key=lambda e: e[0])

    meta = {
        "plan_sha256": hashlib.sha256(plan_texts[0].encode("utf-8")).hexdigest(),
        "plan_file": f"merged: plan.yaml of {sources[0].label}",
        "plan_dir": sources[0].meta.plan_dir or str(sources[0].store.run_dir),
        "cell_ids": list(dict.fromkeys(new_id for _, _, _, new_id in entries)),
        "backend": "merge",
        "plans_differ": len(set(plan_texts)) > 1,
        "hardware": {slug: name for name, slug in slugs.items()},
        "merged_from": [
            {
                "run_dir": str(s.store.run_dir.resolve()),
                "run_id": s.meta.run_id,
                "plan_name": s.meta.plan_name,
                "plan_sha256": s.meta.plan_sha256,
                "started_at": s.meta.started_at,
                "harness_version": s.meta.harness_version,
                "cells": len(s.records),
                "hardware": sorted({hardware_name(r) for r in s.records}),
                "kept_as": f"sources/{s.index}-{s.meta.run_id}",
            }
            for s in sources
        ],
    }
    merged = RunStore.create(Path(out_base), plan_name, plan_texts[0], meta)
    for source in sources:
        kept = merged.run_dir / "sources" / f"{source.index}-{source.meta.run_id}"
        kept.mkdir(parents=True)
        write_new(kept / "plan.yaml", plan_texts[source.index].encode("utf-8"))
        write_new(kept / "run.json", (source.store.run_dir / "run.json").read_bytes())  # as it was

    copied: set[Path] = set()  # a cell's processes share files (its log, its detections)
    for _, source, record, new_id in entries:
        old_id = record["cell_id"]
        src_dir = source.store.run_dir
        renamed = {rel: _renamed(rel, old_id, new_id) for rel in _cell_files(src_dir, record)}
        for rel, new_rel in renamed.items():
            target = merged.run_dir / new_rel
            if target in copied:
                continue
            copied.add(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            write_new(target, (src_dir / rel).read_bytes())
        name = hardware_name(record)
        placement = {
            "backend": "local",
            "host": (record.get("environment") or {}).get("hostname"),
            **(record.get("placement") or {}),
            "hardware": name,
            "source_run": source.meta.run_id,
            "source_dir": str(src_dir.resolve()),
            "measured_cell_id": old_id,
        }
        if qualify_ids:
            placement["gpu_slug"] = slugs[name]
        new_record = {
            **record,
            "cell_id": new_id,
            "cell": {**(record.get("cell") or {}), "cell_id": new_id},
            "files": {k: renamed.get(v, v) for k, v in (record.get("files") or {}).items()},
            "placement": placement,
        }
        try:
            checked = CellRecord.model_validate(new_record)
        except ValidationError as exc:
            raise UserError(f"{src_dir}/cells/{old_id}.json: not a valid cell record: {describe_validation(exc)}") from None
        merged.write_cell(checked.model_dump(mode="json"))
    merged.release_lock()
    return merged.run_dir


# -- for the report: what differs between GPUs besides the GPU -------------------------------


def cross_hardware_differences(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """For each configuration measured on several kinds of hardware, the comparability facts
    (harness.environment.fingerprint) that differ between them other than the GPU itself:
    driver, CUDA, cuDNN, library versions, settings read back, CPU, execution env vars.

    Returns {record cell_id: {dotted field: {hardware name: value}}}, only for records whose
    configuration has such a difference; the report flags those cells.
    """
    from harness.environment.fingerprint import comparability_fields, fingerprint_differences

    groups: dict[str, list[tuple[dict[str, Any], CellRecord]]] = {}
    for index, record in enumerate(records):
        typed = load_cell_record(record, f"records[{index}]")
        if typed.environment != Environment() and typed.status not in ("failed", "skipped"):
            groups.setdefault(base_cell_id(typed.cell_id), []).append((record, typed))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for group in groups.values():
        if len({hardware_name(r) for r, _ in group}) < 2:
            continue
        flat: list[tuple[dict[str, Any], dict[str, Any]]] = []
        for record, typed in group:
            fields = comparability_fields(
                typed.environment.model_dump(mode="json"),
                runtime=typed.identity.runtime,
                precision=typed.identity.precision,
                settings=typed.settings,
            )
            fields.pop("gpus", None)
            values = {key: pair[0] for key, pair in fingerprint_differences(fields, {}).items()}
            flat.append((record, values))
        keys = sorted({k for _, values in flat for k in values})
        differing = [
            k for k in keys
            if len({json.dumps(values.get(k), sort_keys=True, default=str) for _, values in flat}) > 1
        ]
        if not differing:
            continue
        table = {k: {hardware_name(r): values.get(k) for r, values in flat} for k in differing}
        for record, _ in flat:
            out[record["cell_id"]] = table
    return out
