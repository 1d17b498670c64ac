"""The run folder: atomic writes, never overwrite, refuse newer schemas, a lock with its
holder's name, unreadable cell files told apart."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from record_factory import record as typed_record

from harness.errors import UserError
from harness.results import SCHEMA_VERSION
from harness.run.store import RunBusy, RunStore, write_new


def record(cell_id: str, status: str = "ok", **fields: Any) -> dict[str, Any]:
    return typed_record(cell_id, status=status, **fields).model_dump(mode="json")


def test_create_lays_out_a_run_folder(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "plan-a", "name: plan-a\n", {"plan_sha256": "x"})
    run_dir = store.run_dir
    assert run_dir.parent == tmp_path / "plan-a"
    assert (run_dir / "plan.yaml").read_text() == "name: plan-a\n"
    meta = json.loads((run_dir / "run.json").read_text())
    assert meta["schema_version"] == SCHEMA_VERSION and meta["plan_sha256"] == "x"
    for sub in ("cells", "logs", "detections", "outputs", "gallery"):
        assert (run_dir / sub).is_dir()


def test_two_runs_never_share_a_folder(tmp_path: Path) -> None:
    a = RunStore.create(tmp_path, "p", "", {})
    b = RunStore.create(tmp_path, "p", "", {})
    assert a.run_dir != b.run_dir


def test_a_second_record_for_one_id_never_replaces_the_first(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "p", "", {})
    first = store.write_cell(record("c1"))
    assert not first.conflict and first.path == store.cell_path("c1")
    second = store.write_cell(record("c1", "failed", reason="the other one"))  # no FileExistsError
    assert second.conflict and second.path.parent == store.cells_dir / ".conflicts"
    assert json.loads(store.cell_path("c1").read_text())["status"] == "ok"
    assert json.loads(second.path.read_text())["reason"] == "the other one"  # kept, not lost
    assert store.finished_cell_ids() == {"c1"}
    assert [p.name for p in store.cells_dir.iterdir() if p.is_file()] == ["c1.json"]
    history = [json.loads(line) for line in (store.run_dir / "history.jsonl").read_text().splitlines()]
    assert history[0]["event"] == "record_conflict" and history[0]["cell_id"] == "c1"


def test_write_new_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    target.write_text("original")
    with pytest.raises(FileExistsError):
        write_new(target, b"new")
    assert target.read_text() == "original"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_open_refuses_non_runs_and_newer_schemas(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such run folder"):
        RunStore.open(tmp_path / "nope")
    with pytest.raises(UserError, match="not a run folder"):
        RunStore.open(tmp_path)
    store = RunStore.create(tmp_path, "p", "name: p\n", {})
    meta = json.loads((store.run_dir / "run.json").read_text())
    meta["schema_version"] = SCHEMA_VERSION + 1
    (store.run_dir / "run.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="newer harness"):
        RunStore.open(store.run_dir)


def test_results_are_readable_like_any_file_the_user_writes(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "p", "name: p\n", {})
    store.write_cell(record("c1"))
    umask = os.umask(0)
    os.umask(umask)
    for path in (store.cell_path("c1"), store.run_dir / "run.json", store.run_dir / "plan.yaml"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_scan_tells_unreadable_cell_files_apart(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "p", "", {})
    store.write_cell(record("good"))
    (store.cells_dir / "empty.json").write_text("")
    (store.cells_dir / "truncated.json").write_text(json.dumps(record("truncated"))[:40])
    (store.cells_dir / "garbage.json").write_bytes(b"\x00\xff garbage")
    (store.cells_dir / "list.json").write_text("[1, 2]")
    (store.cells_dir / "renamed.json").write_text(json.dumps(record("other")))
    (store.cells_dir / "link.json").symlink_to(store.cell_path("good"))
    scan = store.scan_cells()
    assert list(scan.records) == ["good"]
    why = {path.stem: reason for path, reason in scan.bad}
    assert set(why) == {"empty", "truncated", "garbage", "list", "renamed", "link"}
    assert "empty" in why["empty"] and "not JSON" in why["truncated"] and "symbolic link" in why["link"]
    assert [r["cell_id"] for r in store.read_cells()] == ["good"]  # readers never trip on the rest


def test_the_lock_names_its_holder(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "p", "", {})  # a new run folder is locked by its creator
    other = RunStore.open(store.run_dir)
    with pytest.raises(RunBusy) as info:
        other.acquire_lock()
    message = str(info.value)
    assert f"pid {os.getpid()}" in message and "since 20" in message and "`" in message
    store.release_lock()
    assert other.acquire_lock()
    other.release_lock()


def test_the_lock_holds_against_another_process(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "p", "", {})
    code = (
        "import sys; from pathlib import Path; from harness.run.store import RunStore, RunBusy\n"
        "try:\n    RunStore.open(Path(sys.argv[1])).acquire_lock()\n"
        "except RunBusy as exc:\n    print(exc); sys.exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(store.run_dir)], capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    assert f"pid {os.getpid()}" in done.stdout
    store.release_lock()
    done = subprocess.run([sys.executable, "-c", code, str(store.run_dir)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_folder_without_a_lock_file_is_left_alone_when_asked(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "p", "", {})
    store.release_lock()
    (store.run_dir / ".lock").unlink()  # a folder from an older harness
    other = RunStore.open(store.run_dir)
    assert other.acquire_lock(create=False) is False
    assert not (store.run_dir / ".lock").exists()
