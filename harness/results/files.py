"""Reading results files: a cell record, run.json, results.json, a whole run folder.

Everything that reads a result goes through here (report, compare, merge, resume, finalize):
the file is parsed, refused when it was written by a newer harness, migrated from an older
schema in memory, and validated against the model. Whatever goes wrong is a `ResultsError`
whose message starts with the file's path, so the CLI can print it as it is (exit 2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

import harness.results.migrate as migrate
from harness.results.model import SCHEMA_VERSION, CellRecord, ResultsFile, RunMeta, record_key


class ResultsError(ValueError):
    """A results file this harness cannot read; `str()` names the file and what is wrong."""

    def __init__(self, path: Path | str, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class NewerSchemaError(ResultsError):
    """Written by a newer harness: refused rather than half-read (pyperf's rule)."""


class CellFileError(ResultsError):
    """A cell file that is missing, empty, truncated, not JSON or not a cell record."""


M = TypeVar("M", bound=BaseModel)


def describe_validation(exc: ValidationError, limit: int = 6) -> str:
    """A pydantic error as a few `field.path: problem` lines (the first `limit`)."""
    parts = []
    for error in exc.errors()[:limit]:
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        parts.append(f"{where}: {error['msg']}")
    more = len(exc.errors()) - limit
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)


def read_json(path: Path, error: type[ResultsError] = ResultsError) -> Any:
    """The parsed file, or `error` naming the file: missing, unreadable, empty, not JSON."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise error(path, "no such file") from None
    except OSError as exc:
        raise error(path, f"cannot be read ({exc.strerror or exc})") from None
    if not raw.strip():
        raise error(path, "is empty (a file cut short, e.g. by a full disk or a crash while writing)")
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise error(path, f"is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise error(path, f"is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                          "the file is truncated or damaged") from None


def schema_version_of(data: Any, where: str, what: str, error: type[ResultsError] = ResultsError) -> int:
    """The object's schema_version; NewerSchemaError above this harness's, `error` when absent."""
    if not isinstance(data, dict):
        raise error(where, f"expected a JSON object ({what}), found {type(data).__name__}")
    version = data.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise error(where, f"has no valid integer `schema_version`; not a {what} of this harness")
    if version > SCHEMA_VERSION:
        raise NewerSchemaError(
            where,
            f"written by a newer harness (results schema version {version}; this harness reads "
            f"versions up to {SCHEMA_VERSION}); upgrade the harness to read it",
        )
    return version


def _validated(model: type[M], data: Any, where: str, what: str, error: type[ResultsError]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(where, f"not a valid {what}: {describe_validation(exc)}") from None


def _migrated(data: Any, where: str, what: str, steps: dict[int, migrate.Step],
              error: type[ResultsError]) -> dict[str, Any]:
    version = schema_version_of(data, where, what, error)
    try:
        return migrate.upgrade(dict(data), version, steps)
    except migrate.MigrationError as exc:
        raise error(where, f"a {what} of schema {version} that cannot be migrated: {exc}") from None


def load_cell_record(data: Any, where: str | Path, error: type[ResultsError] = ResultsError) -> CellRecord:
    """A cell record from its JSON (any known schema version)."""
    upgraded = _migrated(data, str(where), "cell record", migrate.CELL_STEPS, error)
    return _validated(CellRecord, upgraded, str(where), "cell record", error)


def read_cell_file(path: Path) -> CellRecord:
    """cells/<cell_id>.json as a record; CellFileError naming the file for anything else (what
    resume uses to tell a finished cell from a damaged file)."""
    record = load_cell_record(read_json(path, CellFileError), path, CellFileError)
    key = record_key(record.cell_id, record.repeat)
    if path.suffix == ".json" and key != path.stem:
        raise CellFileError(path, f"holds the record of {key!r}, not of {path.stem!r}")
    return record


def cell_files(cells_dir: Path) -> list[Path]:
    """The cell files of a run folder (temporary files of an atomic write left out)."""
    if not cells_dir.is_dir():
        return []
    return sorted(p for p in cells_dir.glob("*.json") if not p.name.startswith("."))


def read_cell_files(cells_dir: Path) -> list[CellRecord]:
    """Every record in a cells/ folder, by file name; the first bad file raises CellFileError."""
    return [read_cell_file(path) for path in cell_files(cells_dir)]


def load_run_meta(data: Any, where: str | Path) -> RunMeta:
    upgraded = _migrated(data, str(where), "run.json", migrate.RUN_STEPS, ResultsError)
    return _validated(RunMeta, upgraded, str(where), "run.json", ResultsError)


def read_run_meta(path: Path) -> RunMeta:
    return load_run_meta(read_json(path), path)


def load_results(data: Any, where: str | Path) -> ResultsFile:
    """results.json from its JSON: the file's own version, then each cell's."""
    where = str(where)
    upgraded = _migrated(data, where, "results file", migrate.RESULTS_STEPS, ResultsError)
    cells = upgraded.get("cells")
    if not isinstance(cells, list) or not isinstance(upgraded.get("run"), dict):
        raise ResultsError(where, "expected `run` (object) and `cells` (list)")
    records = []
    for index, cell in enumerate(cells):
        cell_id = cell.get("cell_id") if isinstance(cell, dict) else None
        records.append(load_cell_record(cell, f"{where}: cells[{index}]" + (f" ({cell_id})" if cell_id else "")))
    run = load_run_meta(upgraded["run"], f"{where}: run")
    derived = upgraded.get("derived") or {}
    if not isinstance(derived, dict):
        raise ResultsError(where, "`derived` must be an object keyed by cell id")
    return _validated(
        ResultsFile,
        {**upgraded, "run": run, "cells": records, "derived": derived},
        where, "results file", ResultsError,
    )


def read_results_file(path: Path) -> ResultsFile:
    return load_results(read_json(path), path)


# ----------------------------------------------------------------------------- run folders


@dataclass(frozen=True)
class RunRead:
    """A run folder read through the model. `results` is results.json when the run was
    finalized, else rebuilt from run.json and cells/ (then `derived` is empty)."""

    results: ResultsFile
    folder: Path
    results_path: Path | None  # None: rebuilt from cells/


def read_run(path: Path) -> RunRead:
    """A run folder, or its results.json given directly.

    Every cell file is read and validated even when results.json exists, so a damaged cell
    file is refused (CellFileError naming it) instead of a results.json that may be stale
    being rendered without a word."""
    path = Path(path)
    if path.is_file():
        results_path, folder = path, path.parent
    elif path.is_dir():
        results_path, folder = path / "results.json", path
    else:
        raise ResultsError(path, "no such run folder or results file")

    cells_dir = folder / "cells"
    if results_path.is_file():
        results = read_results_file(results_path)
        if (folder / "run.json").is_file() and cells_dir.is_dir():
            read_cell_files(cells_dir)  # refused here when one is damaged or newer
        return RunRead(results, folder, results_path)

    run_json = folder / "run.json"
    if not run_json.is_file():
        raise ResultsError(
            folder,
            "not a run folder (no results.json, and no run.json with cells/); give the folder "
            "a `bench run` created, or its results.json",
        )
    meta = read_run_meta(run_json)
    records = read_cell_files(cells_dir)
    order = {cid: i for i, cid in enumerate(meta.cell_ids)}
    records.sort(key=lambda r: order.get(r.cell_id, len(order)))
    finished = folder / "finished.json"  # written beside run.json when a run ends
    if finished.is_file() and meta.finished_at is None:
        when = read_json(finished)
        if isinstance(when, dict) and isinstance(when.get("finished_at"), str):
            meta = meta.model_copy(update={"finished_at": when["finished_at"]})
    return RunRead(ResultsFile(run=meta, cells=records), folder, None)
