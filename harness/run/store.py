"""The run folder: where a run's results live, written atomically and never overwritten.

Every file that holds a measurement is written to a temporary name in the same folder and then
hard-linked to its final name, which fails if that name exists: a crash leaves either the whole
file or none, and nothing that exists is ever replaced. Derived files (results.json, the report)
are rebuilt from the cell files and may be replaced.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import __version__
from harness.errors import UserError
from harness.results import ResultsError, ResultsFile, RunMeta, read_run_meta


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _write_temp(folder: Path, data: bytes, suffix: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    try:
        # mkstemp makes 0600; results are meant to be shared like any file the user writes.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def write_new(path: Path, data: bytes) -> None:
    """Create `path` with `data` atomically; FileExistsError if it exists (never overwrite)."""
    tmp = _write_temp(path.parent, data, path.suffix)
    try:
        os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_replace(path: Path, data: bytes) -> None:
    """Atomically create or replace a DERIVED file (results.json, report.html)."""
    tmp = _write_temp(path.parent, data, path.suffix)
    os.replace(tmp, path)


def dumps(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=False, allow_nan=False, default=str) + "\n").encode()


# A run folder's subfolders: the cell records, then each cell's own files.
RUN_SUBDIRS = ("cells", "logs", "detections", "outputs", "gallery")


class RunStore:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.cells_dir = run_dir / "cells"
        self.logs_dir = run_dir / "logs"

    # -- creation and opening --------------------------------------------------------------
    @classmethod
    def create(cls, base: Path, plan_name: str, plan_text: str, meta: dict[str, Any]) -> RunStore:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        run_id = f"{stamp}-{secrets.token_hex(3)}"
        run_dir = base / plan_name / run_id
        try:
            run_dir.mkdir(parents=True, exist_ok=False)
        except OSError as exc:
            raise UserError(f"cannot create the run folder {run_dir}: {exc.strerror or exc}") from None
        store = cls(run_dir)
        for sub in RUN_SUBDIRS:
            (run_dir / sub).mkdir()
        write_new(run_dir / "plan.yaml", plan_text.encode("utf-8"))
        run_meta = RunMeta.model_validate(
            {"run_id": run_id, "plan_name": plan_name, "started_at": utc_now(), "harness_version": __version__, **meta}
        )
        write_new(run_dir / "run.json", dumps(run_meta.model_dump(mode="json")))
        return store

    @classmethod
    def open(cls, run_dir: Path) -> RunStore:
        if not run_dir.is_dir():
            raise UserError(f"{run_dir}: no such run folder")
        if not (run_dir / "run.json").is_file() or not (run_dir / "plan.yaml").is_file():
            raise UserError(f"{run_dir}: not a run folder (expected run.json and plan.yaml in it)")
        try:
            read_run_meta(run_dir / "run.json")  # refuses a newer or damaged run.json
        except ResultsError as exc:
            raise UserError(str(exc)) from None
        return cls(run_dir)

    def meta(self) -> dict[str, Any]:
        return json.loads((self.run_dir / "run.json").read_text("utf-8"))

    def plan_text(self) -> str:
        return (self.run_dir / "plan.yaml").read_text("utf-8")

    # -- cells -----------------------------------------------------------------------------
    def cell_path(self, cell_id: str) -> Path:
        return self.cells_dir / f"{cell_id}.json"

    def log_path(self, cell_id: str) -> Path:
        return self.logs_dir / f"{cell_id}.log"

    def finished_cell_ids(self) -> set[str]:
        return {p.stem for p in self.cells_dir.glob("*.json") if not p.name.startswith(".")}

    def write_cell(self, record: dict[str, Any]) -> Path:
        path = self.cell_path(record["cell_id"])
        write_new(path, dumps(record))
        return path

    def read_cells(self) -> list[dict[str, Any]]:
        records = []
        for path in sorted(self.cells_dir.glob("*.json")):
            if not path.name.startswith("."):
                records.append(json.loads(path.read_text("utf-8")))
        return records

    def write_results(self, results: ResultsFile) -> Path:
        path = self.run_dir / "results.json"
        write_replace(path, dumps(results.model_dump(mode="json")))
        return path

    def mark_finished(self) -> None:
        """Record when the run (or a resume of it) ended, beside run.json (never rewriting it)."""
        write_replace(self.run_dir / "finished.json", dumps({"finished_at": utc_now()}))
