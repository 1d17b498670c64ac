"""Every file the harness writes in a run folder or a cache goes through here.

Three promises, the same for every caller:

- **Atomic.** Data goes to a temporary file in the target's own folder, is flushed (and, unless
  the caller says the file is disposable, fsynced), then linked or renamed to its final name:
  a crash leaves the whole file or none.
- **No links followed.** Below its root (a run folder, a cache folder) a write opens every
  folder of the path relative to the one above it with O_NOFOLLOW, creates its temporary file
  with O_EXCL | O_NOFOLLOW and renames or links by name: a symbolic link planted as
  `logs/<cell>.log` or as a subfolder can neither be written through nor lead the write
  outside the root. `write_replace` over a link replaces the link itself; `write_new` and
  `open_append` refuse it (UnsafePath).
- **Inside its root.** A path that is not under its root (`..`, an absolute path elsewhere) is
  refused. The root is the `root` argument, else the deepest folder registered with
  `confine()` that holds the path (a run folder registers itself when opened, a worker its
  cache), else the file's own folder.

Permissions follow the umask, like any file the user writes. A disk that is full raises
OSError(ENOSPC) with the file's name; `is_disk_full` tells it apart.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from harness.errors import UserError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}

_roots: list[str] = []


class UnsafePath(UserError):
    """A write that would follow a link or leave its root: refused, nothing written."""


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL


def confine(root: Path) -> None:
    """Register `root` (a run folder, a cache): writes below it are checked from it down."""
    text = os.path.abspath(root)
    if text not in _roots:
        _roots.append(text)


def _root_for(path: str, root: Path | None) -> str:
    if root is not None:
        return os.path.abspath(root)
    holders = [r for r in _roots if path.startswith(r.rstrip(os.sep) + os.sep)]
    return max(holders, key=len) if holders else os.path.dirname(path)


def _split(path: Path, root: Path | None) -> tuple[str, list[str], str]:
    """(root, folders below the root, file name) of `path`, lexically (no link is resolved)."""
    raw = os.fspath(path)
    if ".." in Path(raw).parts:
        raise UnsafePath(f"refusing to write {raw}: the path goes up with `..`")
    text = os.path.abspath(raw)
    top = _root_for(text, root)
    rel = os.path.relpath(text, top)
    parts = Path(rel).parts
    if rel.startswith("..") or not parts or parts == (".",):
        raise UnsafePath(f"refusing to write {raw}: it is not inside {top}")
    return top, list(parts[:-1]), parts[-1]


def _open_folder(top: str, folders: list[str], create: bool) -> int:
    """A descriptor of the folder `top/folders...`, every step below `top` opened without
    following a link (and created when `create`)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    where = top
    try:
        for name in folders:
            where = os.path.join(where, name)
            if create:
                try:
                    os.mkdir(name, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePath(f"refusing to write below {where}: it is a link or not a folder") from None
                raise
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _named(exc: OSError, path: Path) -> OSError:
    """`exc` with the file's name, so a full disk says which file it could not write."""
    if exc.filename is None and exc.errno is not None:
        return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), os.fspath(path))
    return exc


def _write_temp(dir_fd: int, name: str, data: bytes, durable: bool) -> str:
    tmp = f".{name}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, _NEW_FLAGS, 0o666, dir_fd=dir_fd)  # the umask applies, as for any user file
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.close(fd)
    return tmp


def _sync_folder(dir_fd: int) -> None:
    try:
        os.fsync(dir_fd)
    except OSError as exc:  # some file systems cannot sync a folder; the data itself is synced
        if exc.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise


def _as_bytes(data: str | bytes) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else data


def write_new(path: Path, data: str | bytes, *, root: Path | None = None, durable: bool = True) -> Path:
    """Create `path` with `data` atomically. FileExistsError when the name exists (a file or a
    link alike): nothing is ever overwritten. Missing folders below the root are created."""
    top, folders, name = _split(path, root)
    try:
        dir_fd = _open_folder(top, folders, create=True)
        try:
            tmp = _write_temp(dir_fd, name, _as_bytes(data), durable)
            try:
                os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            finally:
                os.unlink(tmp, dir_fd=dir_fd)
            if durable:
                _sync_folder(dir_fd)
        finally:
            os.close(dir_fd)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "refusing to overwrite", os.fspath(path)) from None
    except OSError as exc:
        raise _named(exc, path) from None
    return Path(path)


def write_replace(path: Path, data: str | bytes, *, root: Path | None = None, durable: bool = True) -> Path:
    """Atomically create or replace `path` (derived files, caches, a worker's own scratch
    files). A link in its place is replaced, never written through. `durable=False` skips the
    fsyncs for files that only matter while a process lives (the live view's phase files)."""
    top, folders, name = _split(path, root)
    try:
        dir_fd = _open_folder(top, folders, create=True)
        try:
            tmp = _write_temp(dir_fd, name, _as_bytes(data), durable)
            try:
                os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                os.unlink(tmp, dir_fd=dir_fd)
                raise
            if durable:
                _sync_folder(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise _named(exc, path) from None
    return Path(path)


def open_append(path: Path, *, root: Path | None = None) -> BinaryIO:
    """`path` opened to append (created when missing), refusing a link or a file with other
    names (a hard link to a file elsewhere)."""
    top, folders, name = _split(path, root)
    dir_fd = _open_folder(top, folders, create=True)
    try:
        try:
            fd = os.open(name, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666,
                         dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePath(f"refusing to append to {path}: it is a symbolic link") from None
            raise _named(exc, path) from None
    finally:
        os.close(dir_fd)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        raise UnsafePath(f"refusing to append to {path}: it is not a plain file of its own")
    return open(fd, "ab")  # noqa: SIM115 -- the caller closes it (it may outlive this call)


def ensure_folder(path: Path, *, root: Path | None = None) -> Path:
    """Create `path` and its missing folders below the root, refusing links on the way."""
    top, folders, name = _split(path, root)
    os.close(_open_folder(top, [*folders, name], create=True))
    return Path(path)


def move_aside(path: Path, folder: str, stamp: str, *, root: Path | None = None) -> Path:
    """Move `path` into `folder` beside it as `<name>.<stamp>` (a link moves as a link), never
    replacing anything there; returns the new path."""
    top, folders, name = _split(path, root)
    src_fd = _open_folder(top, folders, create=False)
    try:
        dst_fd = _open_folder(top, [*folders, folder], create=True)
        try:
            for n in range(1000):
                target = f"{name}.{stamp}" + (f".{n}" if n else "")
                try:
                    os.link(name, target, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
                    break
                except FileExistsError:
                    continue
            else:
                raise FileExistsError(errno.EEXIST, "no free name to move the file aside to", os.fspath(path))
            os.unlink(name, dir_fd=src_fd)
            _sync_folder(dst_fd)
            _sync_folder(src_fd)
        finally:
            os.close(dst_fd)
    finally:
        os.close(src_fd)
    return Path(path).parent / folder / target


@contextmanager
def replacing(path: Path, *, root: Path | None = None) -> Iterator[io.BytesIO]:
    """Collect what a library writes to a file object in memory, then `write_replace` it."""
    buffer = io.BytesIO()
    yield buffer
    write_replace(path, buffer.getvalue(), root=root)


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (read in 1 MiB blocks): checkpoints, engines, annotations."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
