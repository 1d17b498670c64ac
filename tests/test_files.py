"""harness.files: the one way the harness writes a file. Atomic, never through a link,
never outside its root, permissions like any file the user writes, a full disk named."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from harness import files
from harness.files import UnsafePath, confine, ensure_folder, move_aside, open_append, write_new, write_replace


@pytest.fixture
def root(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    return run


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    target = tmp_path / "outside.txt"
    target.write_text("precious\n")
    return target


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_write_new_creates_and_never_overwrites(root: Path) -> None:
    path = write_new(root / "logs" / "a.json", b"one", root=root)
    assert path.read_bytes() == b"one"
    with pytest.raises(FileExistsError):
        write_new(root / "logs" / "a.json", b"two", root=root)
    assert path.read_bytes() == b"one"
    assert listing(root) == ["logs", "logs/a.json"]  # no temporary file left behind


def test_write_new_creates_missing_folders_below_the_root(root: Path) -> None:
    write_new(root / "monitor" / "deep" / "x.json", "text", root=root)
    assert (root / "monitor" / "deep" / "x.json").read_text() == "text"


def test_write_new_refuses_a_link_in_its_place(root: Path, outside: Path) -> None:
    (root / "logs" / "c.json").symlink_to(outside)
    with pytest.raises(FileExistsError):
        write_new(root / "logs" / "c.json", b"evil", root=root)
    assert outside.read_text() == "precious\n"


def test_write_replace_replaces_a_link_never_its_target(root: Path, outside: Path) -> None:
    link = root / "logs" / "c.phase"
    link.symlink_to(outside)
    write_replace(link, "measure 1.0\n", root=root, durable=False)
    assert not link.is_symlink() and link.read_text() == "measure 1.0\n"
    assert outside.read_text() == "precious\n"


def test_open_append_refuses_a_symbolic_link_and_a_hard_link(root: Path, outside: Path) -> None:
    (root / "logs" / "c.log").symlink_to(outside)
    with pytest.raises(UnsafePath, match="symbolic link"):
        open_append(root / "logs" / "c.log", root=root)
    os.link(outside, root / "logs" / "d.log")
    with pytest.raises(UnsafePath, match="not a plain file of its own"):
        open_append(root / "logs" / "d.log", root=root)
    assert outside.read_text() == "precious\n"
    with open_append(root / "logs" / "e.log", root=root) as handle:
        handle.write(b"one\n")
    with open_append(root / "logs" / "e.log", root=root) as handle:
        handle.write(b"two\n")
    assert (root / "logs" / "e.log").read_text() == "one\ntwo\n"


def test_a_folder_link_below_the_root_is_never_followed(root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "detections").symlink_to(elsewhere, target_is_directory=True)
    for write in (
        lambda: write_new(root / "detections" / "c.json", b"x", root=root),
        lambda: write_replace(root / "detections" / "c.json", b"x", root=root),
        lambda: open_append(root / "detections" / "c.log", root=root),
        lambda: ensure_folder(root / "detections" / "sub", root=root),
    ):
        with pytest.raises(UnsafePath, match="link"):
            write()
    assert list(elsewhere.iterdir()) == []


def test_paths_outside_the_root_are_refused(root: Path, tmp_path: Path) -> None:
    with pytest.raises(UnsafePath, match="`..`"):
        write_new(root / "logs" / ".." / ".." / "x.txt", b"x", root=root)
    with pytest.raises(UnsafePath, match="not inside"):
        write_replace(tmp_path / "x.txt", b"x", root=root)
    assert not (tmp_path / "x.txt").exists()


def test_a_confined_root_is_checked_without_being_named(root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere2"
    elsewhere.mkdir()
    (root / "outputs").symlink_to(elsewhere, target_is_directory=True)
    confine(root)
    with pytest.raises(UnsafePath):
        write_replace(root / "outputs" / "c.npz", b"x")  # found its root in the registry
    assert list(elsewhere.iterdir()) == []


def test_the_root_itself_may_be_a_link(tmp_path: Path) -> None:
    real = tmp_path / "big-disk"
    real.mkdir()
    (tmp_path / "reports").symlink_to(real, target_is_directory=True)
    write_new(tmp_path / "reports" / "x.json", b"x", root=tmp_path / "reports")
    assert (real / "x.json").read_bytes() == b"x"


def test_permissions_follow_the_umask(root: Path) -> None:
    umask = os.umask(0o027)
    try:
        a = write_new(root / "a", b"x", root=root)
        b = write_replace(root / "b", b"x", root=root)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(a.stat().st_mode) == 0o640
    assert stat.S_IMODE(b.stat().st_mode) == 0o640


def test_a_full_disk_names_the_file_and_leaves_nothing(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "write", full)
    with pytest.raises(OSError) as info:
        write_replace(root / "logs" / "results.json", b"x" * 10, root=root)
    assert files.is_disk_full(info.value)
    assert info.value.filename == str(root / "logs" / "results.json")
    assert listing(root) == ["logs"]


def test_move_aside_keeps_every_copy(root: Path, outside: Path) -> None:
    (root / "cells").mkdir()
    bad = root / "cells" / "c.json"
    bad.write_text("{trunc")
    moved = move_aside(bad, ".bad", "T1", root=root)
    assert moved == root / "cells" / ".bad" / "c.json.T1" and moved.read_text() == "{trunc"
    bad.write_text("again")
    assert move_aside(bad, ".bad", "T1", root=root).name == "c.json.T1.1"  # never replaced
    (root / "cells" / "l.json").symlink_to(outside)
    moved = move_aside(root / "cells" / "l.json", ".bad", "T1", root=root)
    assert moved.is_symlink() and outside.read_text() == "precious\n"  # the link moved, not its target
