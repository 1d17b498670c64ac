"""The run folder: atomic writes, never overwrite, refuse newer schemas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import UserError
from harness.results import SCHEMA_VERSION
from harness.run.store import RunStore, write_new


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


def test_cell_files_are_never_overwritten(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "p", "", {})
    store.write_cell({"cell_id": "c1", "status": "ok"})
    with pytest.raises(FileExistsError):
        store.write_cell({"cell_id": "c1", "status": "failed"})
    assert json.loads(store.cell_path("c1").read_text())["status"] == "ok"
    assert store.finished_cell_ids() == {"c1"}
    # no temporary file is left behind, and temp names never count as finished cells
    assert [p.name for p in store.cells_dir.iterdir()] == ["c1.json"]


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
    import os
    import stat

    store = RunStore.create(tmp_path, "p", "name: p\n", {})
    store.write_cell({"cell_id": "c1", "status": "ok"})
    umask = os.umask(0)
    os.umask(umask)
    for path in (store.cell_path("c1"), store.run_dir / "run.json", store.run_dir / "plan.yaml"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
