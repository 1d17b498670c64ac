#!/usr/bin/env python3
"""Generate, or check, the hashed dependency locks in lockfiles/.

    python scripts/lock.py              regenerate every lock (and the Dockerfiles' lock stamps)
    python scripts/lock.py --check      exit 1 if a lock or a stamp is stale; change nothing
    python scripts/lock.py --upgrade    move the resolution date to now and re-resolve
    python scripts/lock.py --flavour cpu --flavour tools    only these locks

Why it is deterministic: uv resolves with `--exclude-newer` set to the date recorded in
lockfiles/resolution-date, so files uploaded to PyPI after that date are invisible and the
same inputs always give the same lock. A lock is therefore stale exactly when its inputs
changed (pyproject.toml's dependencies or extras, lockfiles/*.in, lockfiles/constraints.txt,
the resolution date, the uv version) or when someone edited it by hand; `--check`
regenerates each lock into a temporary folder and compares.

The GPU and CPU Dockerfiles carry the sha256 of their lock as a build-argument default
(`ARG LOCKFILE_SHA256=...`), which the image stamps as BENCH_LOCKFILE_SHA256; this script
writes it, and the build itself re-checks it against the file it installs.

uv needs PyPI's metadata (not the packages themselves): PyPI must be reachable.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
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
    "cpu": Flavour("cpu", "3.11", ("torch", "onnx"), dockerfile="Dockerfile.cpu",
                   extra_inputs=("lockfiles/cpu.in",)),
    # nvcr.io/nvidia/tensorrt 25.10 (Ubuntu 24.04): Python 3.12 (docker/GPU_IMAGE.md).
    "gpu": Flavour("gpu", "3.12", ("torch",), dockerfile="Dockerfile",
                   extra_inputs=("lockfiles/gpu.in",)),
    # The host tools of CI (uv, hadolint, compose, check-jsonschema); Python 3.11 like CI's.
    "tools": Flavour("tools", "3.11", from_pyproject=False, extra_inputs=("lockfiles/tools.in",)),
}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resolution_date(root: Path) -> str:
    text = (root / "lockfiles/resolution-date").read_text(encoding="utf-8").strip()
    # Fail early and clearly on a malformed date rather than deep inside uv.
    datetime.fromisoformat(text.replace("Z", "+00:00"))
    return text


def uv_command(flavour: Flavour, root: Path, output: Path) -> list[str]:
    uv = shutil.which("uv")
    if uv is None:
        raise SystemExit("uv is not installed: pip install --require-hashes --no-deps "
                         "-r lockfiles/tools.txt (or pip install uv)")
    command = [uv, "pip", "compile", "--quiet", "--native-tls"]
    if flavour.from_pyproject:
        command.append("pyproject.toml")
        for extra in flavour.extras:
            command += ["--extra", extra]
    command += list(flavour.extra_inputs)
    command += [
        "--constraint", "lockfiles/constraints.txt",
        "--python-version", flavour.python,
        "--python-platform", PLATFORM,
        "--exclude-newer", resolution_date(root),
        # Wheels only: a source build at image-build time would run code outside the lock.
        "--only-binary", ":all:",
        "--generate-hashes",
        "--custom-compile-command", COMPILE_COMMAND,
        "--output-file", str(output),
    ]
    return command


def compile_lock(flavour: Flavour, root: Path, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    # uv would prefer the pins of an existing output file; start from nothing so that the
    # result depends on the inputs and the resolution date alone.
    output.unlink(missing_ok=True)
    result = subprocess.run(uv_command(flavour, root, output), cwd=root, text=True,
                            capture_output=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"uv failed to lock {flavour.name}:\n{result.stderr}")


def stamped_lock_hash(dockerfile: Path) -> str | None:
    match = LOCK_ARG_PATTERN.search(dockerfile.read_text(encoding="utf-8"))
    return match.group(2) if match else None


def write_stamp(dockerfile: Path, digest: str) -> None:
    text = dockerfile.read_text(encoding="utf-8")
    if not LOCK_ARG_PATTERN.search(text):
        raise SystemExit(f"{dockerfile}: no 'ARG LOCKFILE_SHA256=' line to stamp")
    dockerfile.write_text(LOCK_ARG_PATTERN.sub(rf"\g<1>{digest}", text), encoding="utf-8")


def check(flavours: list[Flavour], root: Path) -> int:
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="lock-check-") as scratch:
        for flavour in flavours:
            current = root / flavour.lock_path
            fresh = Path(scratch) / f"{flavour.name}.txt"
            compile_lock(flavour, root, fresh)
            if not current.exists():
                problems.append(f"{flavour.lock_path} is missing")
                continue
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
    for problem in problems:
        print(f"STALE: {problem}", file=sys.stderr)
    if problems:
        print("Run `python scripts/lock.py` and commit the result.", file=sys.stderr)
        return 1
    print(f"locks up to date: {', '.join(f.lock_path for f in flavours)}")
    return 0


def regenerate(flavours: list[Flavour], root: Path) -> None:
    for flavour in flavours:
        lock = root / flavour.lock_path
        compile_lock(flavour, root, lock)
        if flavour.dockerfile:
            write_stamp(root / flavour.dockerfile, sha256_of(lock))
        print(f"wrote {flavour.lock_path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="fail if a lock is stale")
    mode.add_argument("--upgrade", action="store_true",
                      help="set the resolution date to now, then regenerate")
    parser.add_argument("--flavour", action="append", choices=sorted(FLAVOURS),
                        help="lock only this flavour (repeatable; default: all)")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    flavours = [FLAVOURS[name] for name in (args.flavour or FLAVOURS)]
    root: Path = args.root.resolve()
    if args.check:
        return check(flavours, root)
    if args.upgrade:
        now = datetime.now(UTC).replace(microsecond=0)
        (root / "lockfiles/resolution-date").write_text(
            now.isoformat().replace("+00:00", "Z") + "\n", encoding="utf-8")
    regenerate(flavours, root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
