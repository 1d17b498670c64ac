#!/usr/bin/env python3
"""Generate, or check, the hashed dependency locks in lockfiles/.

    python scripts/lock.py              regenerate every lock (and the Dockerfiles' lock stamps)
    python scripts/lock.py --check      exit 1 if a lock or a stamp is stale; change nothing
    python scripts/lock.py --upgrade    move the resolution date to now and re-resolve from nothing
    python scripts/lock.py --flavour cpu --flavour tools    only these locks

What a lock is a function of, all of it recorded in the repository:

- the requirements: pyproject.toml's dependencies and extras, lockfiles/*.in,
  lockfiles/constraints.txt;
- the resolver: uv, at the version lockfiles/tools.txt pins (this script refuses another);
- the index: lockfiles/index-url, and nothing else (uv runs with --no-config and without the
  caller's UV_* variables, so a uv.toml, UV_INDEX_URL or UV_TORCH_BACKEND cannot add one);
- the cut-off: lockfiles/resolution-date (uv's --exclude-newer: files uploaded later are invisible);
- the lock's own pins, which uv keeps while they still satisfy the requirements.

Why the last one. --exclude-newer filters on the upload time the index reports *today*, and an
index's past is not append-only: a release can be yanked and un-yanked, a project quarantined
and restored, a mirror can lag; each can make files appear that carry an upload time from
before the cut-off. ml-dtypes 0.7.0 did exactly that: dated 2026-11-16, it was evidently not
offered when the locks were made on 2026-11-27 (same uv, inputs and cut-off; they took
packaging 26.4, uploaded 2026-11-23, but ml-dtypes 0.6.0), and it is offered now
(docs/container.md has the evidence). Re-resolving from nothing therefore moved the lock with
no input changed. Resolving with the committed pins as preferences (uv's own behaviour for an
existing output file) keeps a lock that is still valid, so the check fails only when an input
changed, a lock was edited by hand (versions or hashes: hashes always come fresh from the
index), or a locked file disappeared from the index. `--check` also says which packages a
resolution from nothing would now choose differently, without failing on it.

The GPU and CPU Dockerfiles carry the sha256 of their lock as a build-argument default
(`ARG LOCKFILE_SHA256=...`), which the image stamps as BENCH_LOCKFILE_SHA256; this script
writes it, and the build itself re-checks it against the file it installs.

uv needs the index's metadata (not the packages themselves): the index must be reachable.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLATFORM = "x86_64-manylinux_2_28"
COMPILE_COMMAND = "python scripts/lock.py"
LOCK_ARG_PATTERN = re.compile(r"^(ARG LOCKFILE_SHA256=)(\S*)$", re.MULTILINE)
PIN_PATTERN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._\-]*)==([^\s\\;]+)", re.MULTILINE)
# The caller's uv settings that cannot change a resolution (cache, network patience, output);
# every other UV_* variable is dropped before uv runs.
UV_ENV_KEPT = frozenset({
    "UV_CACHE_DIR", "UV_NO_CACHE", "UV_HTTP_TIMEOUT", "UV_HTTP_RETRIES", "UV_CONCURRENT_DOWNLOADS",
    "UV_CONCURRENT_BUILDS", "UV_CONCURRENT_INSTALLS", "UV_NATIVE_TLS", "UV_SYSTEM_CERTS", "UV_NO_PROGRESS",
})


class LockError(Exception):
    """A problem with the recorded inputs or the tools: printed without a traceback, exit 2."""


@dataclass(frozen=True)
class Flavour:
    """One lock: what goes in, for which Python, and which Dockerfile stamps its hash."""

    name: str
    python: str
    extras: tuple[str, ...] = ()
    from_pyproject: bool = True
    dockerfile: str | None = None
    extra_inputs: tuple[str, ...] = field(default=())

    @property
    def lock_path(self) -> str:
        return f"lockfiles/{self.name}.txt"


FLAVOURS: dict[str, Flavour] = {
    # Debian bookworm / python:3.11-slim-bookworm: Python 3.11.
    "cpu": Flavour("cpu", "3.11", ("torch", "onnx", "serve"), dockerfile="Dockerfile.cpu",
                   extra_inputs=("lockfiles/cpu.in",)),
    # nvcr.io/nvidia/tensorrt 25.11 (Ubuntu 24.04): Python 3.12 (docker/GPU_IMAGE.md).
    "gpu": Flavour("gpu", "3.12", ("torch", "serve"), dockerfile="Dockerfile",
                   extra_inputs=("lockfiles/gpu.in",)),
    # The host tools of CI (uv, hadolint, compose, check-jsonschema); Python 3.11 like CI's.
    "tools": Flavour("tools", "3.11", from_pyproject=False, extra_inputs=("lockfiles/tools.in",)),
}


@dataclass(frozen=True)
class Inputs:
    """The recorded inputs besides the requirement files: resolver version, index, cut-off."""

    uv_version: str
    index_url: str
    resolution_date: str

    @property
    def header(self) -> str:
        # uv writes this into every lock's header, so the lock names what determined it.
        return (f"{COMPILE_COMMAND}  (uv {self.uv_version}, index {self.index_url}, "
                f"files uploaded before {self.resolution_date})")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_recorded(root: Path, name: str) -> str:
    path = root / "lockfiles" / name
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise LockError(f"{path.relative_to(root)} is missing (it is one of the lock's recorded inputs)") from None
    if not text:
        raise LockError(f"{path.relative_to(root)} is empty")
    return text


def resolution_date(root: Path) -> str:
    text = read_recorded(root, "resolution-date")
    # Fail early and clearly on a malformed date rather than deep inside uv.
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise LockError(f"lockfiles/resolution-date: {text!r} is not an ISO 8601 time such as "
                        "2026-11-27T00:00:00Z") from None
    return text


def index_url(root: Path) -> str:
    text = read_recorded(root, "index-url")
    if not re.fullmatch(r"(https?|file)://\S+", text):
        raise LockError(f"lockfiles/index-url: {text!r} is not an index URL such as https://pypi.org/simple")
    return text


def pinned_uv_version(root: Path) -> str:
    """The uv version lockfiles/tools.txt pins: the resolver every lock is made with."""
    tools = root / "lockfiles/tools.txt"
    try:
        match = re.search(r"^uv==(\S+)", tools.read_text(encoding="utf-8"), re.MULTILINE)
    except FileNotFoundError:
        raise LockError("lockfiles/tools.txt is missing: it pins the uv that makes the locks") from None
    if match is None:
        raise LockError("lockfiles/tools.txt pins no uv (a line `uv==X.Y.Z`): it is the resolver of the locks")
    return match.group(1)


def uv_executable() -> str:
    import sysconfig

    # pip puts uv beside the running interpreter's scripts, which need not be on PATH.
    uv = shutil.which("uv") or shutil.which("uv", path=sysconfig.get_path("scripts"))
    if uv is None:
        raise LockError("uv is not installed: pip install --require-hashes --no-deps -r lockfiles/tools.txt")
    return uv


def uv_environment() -> dict[str, str]:
    return {name: value for name, value in os.environ.items()
            if not name.startswith("UV_") or name in UV_ENV_KEPT}


def recorded_inputs(root: Path) -> tuple[str, Inputs]:
    uv = uv_executable()
    wanted = pinned_uv_version(root)
    done = subprocess.run([uv, "--version"], capture_output=True, text=True, check=False,
                          env=uv_environment())
    found = done.stdout.split()[1] if done.returncode == 0 and len(done.stdout.split()) > 1 else "?"
    if found != wanted:
        raise LockError(f"{uv} is uv {found}, but the locks are made with uv {wanted} "
                        "(lockfiles/tools.txt): pip install --require-hashes --no-deps -r lockfiles/tools.txt")
    return uv, Inputs(wanted, index_url(root), resolution_date(root))


def uv_command(uv: str, inputs: Inputs, flavour: Flavour, output: Path) -> list[str]:
    # --no-config: no uv.toml or [tool.uv] (the project's, the user's, the system's) takes part.
    command = [uv, "pip", "compile", "--no-config", "--quiet", "--system-certs"]
    if flavour.from_pyproject:
        command.append("pyproject.toml")
        for extra in flavour.extras:
            command += ["--extra", extra]
    command += list(flavour.extra_inputs)
    command += [
        "--constraint", "lockfiles/constraints.txt",
        "--default-index", inputs.index_url,
        "--python-version", flavour.python,
        "--python-platform", PLATFORM,
        "--exclude-newer", inputs.resolution_date,
        # Wheels only: a source build at image-build time would run code outside the lock.
        "--only-binary", ":all:",
        "--generate-hashes",
        "--custom-compile-command", inputs.header,
        "--output-file", str(output),
    ]
    return command


def pins(text: str) -> dict[str, str]:
    return {name.lower(): version for name, version in PIN_PATTERN.findall(text)}


def compile_lock(uv: str, inputs: Inputs, flavour: Flavour, root: Path, output: Path,
                 preferences: Path | None) -> None:
    """Resolve `flavour` into `output`, preferring the versions pinned in `preferences`."""
    output.parent.mkdir(parents=True, exist_ok=True)
    seed = ""
    if preferences is not None and preferences.exists():
        # uv prefers the pins of an existing output file. Versions only: a hash must always be
        # read from the index again, or a hand-edited hash would survive the check.
        seed = "".join(f"{name}=={version}\n" for name, version in
                       pins(preferences.read_text(encoding="utf-8")).items())
    output.write_text(seed, encoding="utf-8")
    result = subprocess.run(uv_command(uv, inputs, flavour, output), cwd=root, text=True,
                            capture_output=True, check=False, env=uv_environment())
    if result.returncode != 0:
        raise LockError(f"uv failed to lock {flavour.name}:\n{result.stderr.strip()}")


def stamped_lock_hash(dockerfile: Path) -> str | None:
    match = LOCK_ARG_PATTERN.search(dockerfile.read_text(encoding="utf-8"))
    return match.group(2) if match else None


def write_stamp(dockerfile: Path, digest: str) -> None:
    text = dockerfile.read_text(encoding="utf-8")
    if not LOCK_ARG_PATTERN.search(text):
        raise LockError(f"{dockerfile}: no 'ARG LOCKFILE_SHA256=' line to stamp")
    dockerfile.write_text(LOCK_ARG_PATTERN.sub(rf"\g<1>{digest}", text), encoding="utf-8")


def drift(old: dict[str, str], new: dict[str, str]) -> list[str]:
    changes = [f"{name} {old[name]} -> {new[name]}" for name in sorted(old.keys() & new.keys())
               if old[name] != new[name]]
    changes += [f"+{name} {new[name]}" for name in sorted(new.keys() - old.keys())]
    changes += [f"-{name} {old[name]}" for name in sorted(old.keys() - new.keys())]
    return changes


def check(flavours: list[Flavour], root: Path) -> int:
    uv, inputs = recorded_inputs(root)
    problems: list[str] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="lock-check-") as scratch:
        for flavour in flavours:
            current = root / flavour.lock_path
            if not current.exists():
                problems.append(f"{flavour.lock_path} is missing")
                continue
            fresh = Path(scratch) / f"{flavour.name}.txt"
            compile_lock(uv, inputs, flavour, root, fresh, preferences=current)
            old = current.read_text(encoding="utf-8").splitlines(keepends=True)
            new = fresh.read_text(encoding="utf-8").splitlines(keepends=True)
            if old != new:
                diff = "".join(difflib.unified_diff(old, new, flavour.lock_path, "regenerated"))
                problems.append(f"{flavour.lock_path} is stale:\n{diff[:4000]}")
            if flavour.dockerfile:
                stamp = stamped_lock_hash(root / flavour.dockerfile)
                if stamp != sha256_of(current):
                    problems.append(f"{flavour.dockerfile}: ARG LOCKFILE_SHA256={stamp} but "
                                    f"{flavour.lock_path} has sha256 {sha256_of(current)}")
            # What a resolution from nothing would choose today, at the same cut-off: not an
            # error (the lock is still a valid resolution of its inputs), but worth knowing.
            scratch_lock = Path(scratch) / f"{flavour.name}.from-nothing.txt"
            compile_lock(uv, inputs, flavour, root, scratch_lock, preferences=None)
            moved = drift(pins(current.read_text(encoding="utf-8")),
                          pins(scratch_lock.read_text(encoding="utf-8")))
            if moved:
                notes.append(f"note: {flavour.lock_path} is kept, but resolving it from nothing today "
                             f"would choose: {', '.join(moved)} (files the index now offers as uploaded "
                             f"before {inputs.resolution_date} that the lock did not see; "
                             "`python scripts/lock.py --upgrade` re-resolves at a new date)")
    for note in notes:
        print(note)
    for problem in problems:
        print(f"STALE: {problem}", file=sys.stderr)
    if problems:
        print("Run `python scripts/lock.py` and commit the result.", file=sys.stderr)
        return 1
    print(f"locks up to date: {', '.join(f.lock_path for f in flavours)} "
          f"(uv {inputs.uv_version}, {inputs.index_url}, cut-off {inputs.resolution_date})")
    return 0


def regenerate(flavours: list[Flavour], root: Path, *, keep_pins: bool) -> None:
    uv, inputs = recorded_inputs(root)
    for flavour in flavours:
        lock = root / flavour.lock_path
        with tempfile.TemporaryDirectory(prefix="lock-") as scratch:
            # Resolved beside, then moved: a failed resolution leaves the committed lock alone.
            fresh = Path(scratch) / lock.name
            compile_lock(uv, inputs, flavour, root, fresh, preferences=lock if keep_pins else None)
            shutil.copyfile(fresh, lock)
        if flavour.dockerfile:
            write_stamp(root / flavour.dockerfile, sha256_of(lock))
        print(f"wrote {flavour.lock_path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="fail if a lock is stale")
    mode.add_argument("--upgrade", action="store_true",
                      help="set the resolution date to now, then resolve every lock from nothing")
    parser.add_argument("--flavour", action="append", choices=sorted(FLAVOURS),
                        help="lock only this flavour (repeatable; default: all)")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    flavours = [FLAVOURS[name] for name in (args.flavour or FLAVOURS)]
    root: Path = args.root.resolve()
    try:
        if args.check:
            return check(flavours, root)
        if args.upgrade:
            now = datetime.now(UTC).replace(microsecond=0)
            (root / "lockfiles/resolution-date").write_text(
                now.isoformat().replace("+00:00", "Z") + "\n", encoding="utf-8")
        regenerate(flavours, root, keep_pins=not args.upgrade)
    except LockError as exc:
        print(f"lock.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
