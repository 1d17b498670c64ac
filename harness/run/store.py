"""The run folder: where a run's results live, written atomically and never overwritten.

Every file is written through harness.files (atomic, never through a link, never outside
the run folder). A cell record is written once: a second record for the same id never replaces
the first, it is kept aside in cells/.conflicts/. Derived files (results.json, the report) are
rebuilt from the cell files and may be replaced.

A process working in a run folder holds an exclusive lock on its `.lock` file (flock), which
names the holder (pid, host, command, since when) for anyone else who tries.

Cell files that cannot be read back (truncated, empty, garbage, a link) and records of
environmental failures that a resume measures again are moved aside (cells/.bad/,
cells/.retried/), never deleted, and each move is noted in history.jsonl.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shlex
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import __version__, files
from harness.errors import UserError
from harness.files import write_new, write_replace
from harness.results import ResultsError, ResultsFile, RunMeta, load_cell_record, read_run_meta
from harness.run.placement import host_name
from harness.run.unit import unit_key

__all__ = ["RUN_SUBDIRS", "CellScan", "RunBusy", "RunStore", "dumps", "utc_now", "write_new", "write_replace"]

LOCK_FILE = ".lock"
HISTORY_FILE = "history.jsonl"
BAD_FOLDER = ".bad"  # cells/.bad/<name>.<time>: cell files that could not be read
RETRIED_FOLDER = ".retried"  # cells/.retried/<id>.json.<time>: environmental failures measured again
CONFLICTS_FOLDER = ".conflicts"  # cells/.conflicts/<id>.json.<time>: a second record for one id


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def dumps(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=False, allow_nan=False, default=str) + "\n").encode()


# A run folder's subfolders: the cell records, then each cell's own files.
RUN_SUBDIRS = ("cells", "logs", "detections", "outputs", "gallery")


class RunBusy(UserError):
    """Another process works in the run folder."""


def _read_no_follow(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def parse_cell_file(data: bytes, key: str) -> dict[str, Any]:
    """A cell file's record (migrated to this schema, as JSON), or ValueError saying why it is
    not one: the results layer's reader decides what a record is."""
    if not data.strip():
        raise ValueError("the file is empty")
    try:
        raw = json.loads(data)
    except ValueError as exc:  # truncated or garbage
        raise ValueError(f"not JSON ({exc})") from None
    try:
        record = load_cell_record(raw, f"{key}.json")
    except ResultsError as exc:
        raise ValueError(exc.problem) from None
    if unit_key(record.cell_id, record.repeat) != key:
        raise ValueError(f"it holds {unit_key(record.cell_id, record.repeat)!r}, not the file's name")
    return record.model_dump(mode="json")


@dataclass
class CellScan:
    """What cells/ holds: readable records by id, and the files that are not records."""

    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    bad: list[tuple[Path, str]] = field(default_factory=list)  # (path, why)


@dataclass(frozen=True)
class CellWritten:
    path: Path  # where the record went
    conflict: bool = False  # True: a record for the id existed; this one was kept aside at `path`


class RunLock:
    """An exclusive flock on the run folder's lock file, held as long as this object lives."""

    def __init__(self, fd: int, path: Path):
        self._fd: int | None = fd
        self.path = path
        self.announced = False

    @classmethod
    def acquire(cls, run_dir: Path, *, create: bool = True) -> RunLock | None:
        """The lock, or RunBusy naming the holder; None when `create` is off and the folder
        has no lock file (a folder from an older harness, left untouched)."""
        path = run_dir / LOCK_FILE
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        try:
            fd = os.open(path, flags, 0o666)
        except FileNotFoundError:
            if create:
                raise
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise files.UnsafePath(f"refusing to use {path}: it is a symbolic link") from None
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(fd)
            os.close(fd)
            raise RunBusy(
                f"{run_dir} is in use by another bench process ({holder}); wait until it ends "
                "(or stop that process) and try again"
            ) from None
        return cls(fd, path)

    def announce(self) -> None:
        """Say in the lock file who holds it (read by a process that finds it taken)."""
        if self._fd is None:
            return
        holder = {"pid": os.getpid(), "host": host_name(), "command": shlex.join(sys.orig_argv), "since": utc_now()}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps(holder).encode() + b"\n", 0)
        self.announced = True

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            if self.announced:
                os.ftruncate(self._fd, 0)
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()


def _describe_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        holder = {}
    if not isinstance(holder, dict) or not holder.get("pid"):
        return "it has not said which yet"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}: "
            f"`{holder.get('command')}`")


class RunStore:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.cells_dir = run_dir / "cells"
        self.logs_dir = run_dir / "logs"
        self.lock: RunLock | None = None
        files.confine(run_dir)

    # -- creation and opening --------------------------------------------------------------
    @classmethod
    def create(cls, base: Path, plan_name: str, plan_text: str, meta: dict[str, Any]) -> RunStore:
        """A new run folder under `base/plan_name/`, locked by the returned store."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        run_id = f"{stamp}-{secrets.token_hex(3)}"
        run_dir = base / plan_name / run_id
        try:
            run_dir.mkdir(parents=True, exist_ok=False)
        except OSError as exc:
            raise UserError(f"cannot create the run folder {run_dir}: {exc.strerror or exc}") from None
        store = cls(run_dir)
        store.acquire_lock()
        for sub in RUN_SUBDIRS:
            files.ensure_folder(run_dir / sub, root=run_dir)
        write_new(run_dir / "plan.yaml", plan_text.encode("utf-8"), root=run_dir)
        run_meta = RunMeta.model_validate(
            {"run_id": run_id, "plan_name": plan_name, "started_at": utc_now(), "harness_version": __version__, **meta}
        )
        write_new(run_dir / "run.json", dumps(run_meta.model_dump(mode="json")), root=run_dir)
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

    def acquire_lock(self, *, create: bool = True) -> bool:
        """Lock the folder for this process (RunBusy when another holds it) and say so in the
        lock file. With `create` off, a folder without a lock file is left as it is: False."""
        if self.lock is None:
            self.lock = RunLock.acquire(self.run_dir, create=create)
            if self.lock is not None and create:
                self.lock.announce()
        return self.lock is not None

    def announce(self) -> None:
        if self.lock is not None and not self.lock.announced:
            self.lock.announce()

    def release_lock(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def meta(self) -> dict[str, Any]:
        return json.loads((self.run_dir / "run.json").read_text("utf-8"))

    def plan_text(self) -> str:
        return (self.run_dir / "plan.yaml").read_text("utf-8")

    def is_finished(self) -> bool:
        return (self.run_dir / "finished.json").is_file() and (self.run_dir / "results.json").is_file()

    # -- writing any file of the run -------------------------------------------------------
    def write_new(self, rel: str, data: str | bytes) -> Path:
        return write_new(self.run_dir / rel, data, root=self.run_dir)

    def write_replace(self, rel: str, data: str | bytes, *, durable: bool = True) -> Path:
        return write_replace(self.run_dir / rel, data, root=self.run_dir, durable=durable)

    def open_append(self, rel: str) -> Any:
        return files.open_append(self.run_dir / rel, root=self.run_dir)

    def note(self, event: str, **fields: Any) -> None:
        """One line of history.jsonl: what a process did to the folder beyond adding records."""
        line = {"at": utc_now(), "event": event, "pid": os.getpid(), "host": host_name(), **fields}
        with self.open_append(HISTORY_FILE) as handle:
            handle.write(json.dumps(line, default=str).encode() + b"\n")

    # -- cells -----------------------------------------------------------------------------
    def cell_path(self, cell_id: str) -> Path:
        return self.cells_dir / f"{cell_id}.json"

    def log_path(self, cell_id: str) -> Path:
        return self.logs_dir / f"{cell_id}.log"

    def finished_cell_ids(self) -> set[str]:
        """Ids with a cell file (readable or not: `scan_cells` tells)."""
        return {p.stem for p in self.cells_dir.glob("*.json") if not p.name.startswith(".")}

    def scan_cells(self) -> CellScan:
        scan = CellScan()
        for path in sorted(self.cells_dir.glob("*.json")):
            if path.name.startswith("."):
                continue
            try:
                if path.is_symlink():
                    raise ValueError("a symbolic link, not a file")
                scan.records[path.stem] = parse_cell_file(_read_no_follow(path), path.stem)
            except (OSError, ValueError) as exc:
                scan.bad.append((path, str(exc)))
        return scan

    def write_cell(self, record: dict[str, Any]) -> CellWritten:
        """Write a cell's record. When the id has a record already (two planned cells that
        share an id, a record arriving twice), neither is lost: the first stays, this one is
        kept in cells/.conflicts/ and the result says so."""
        cell_id = unit_key(record["cell_id"], record.get("repeat"))
        data = dumps(record)
        try:
            return CellWritten(self.write_new(f"cells/{cell_id}.json", data))
        except FileExistsError:
            rel = f"cells/{CONFLICTS_FOLDER}/{cell_id}.json.{_stamp()}"
            path = self.write_new(rel, data)
            self.note("record_conflict", cell_id=cell_id, kept_aside=rel)
            return CellWritten(path, conflict=True)

    def read_cells(self) -> list[dict[str, Any]]:
        """Every readable record (unreadable files are `scan_cells().bad`)."""
        return list(self.scan_cells().records.values())

    def move_aside(self, path: Path, folder: str, why: str, event: str) -> Path:
        """Move a cell file out of the way (never deleting it) and note it in the history."""
        moved = files.move_aside(path, folder, _stamp(), root=self.run_dir)
        self.note(event, file=str(path.relative_to(self.run_dir)),
                  moved_to=str(moved.relative_to(self.run_dir)), why=why)
        return moved

    def write_results(self, results: ResultsFile) -> Path:
        return self.write_replace("results.json", dumps(results.model_dump(mode="json")))

    def mark_finished(self) -> None:
        """Record when the run (or a resume of it) ended, beside run.json (never rewriting it)."""
        self.write_replace("finished.json", dumps({"finished_at": utc_now()}))
