#!/usr/bin/env python3
"""Fetch RF-DETR checkpoints into the weights folder, checked against rfdetr's own MD5s.

    scripts/fetch-weights.sh nano medium        -> weights/rf-detr-nano.pth, weights/rf-detr-medium.pth
    scripts/fetch-weights.sh --all
    scripts/fetch-weights.sh --list             variants, file names, URLs, checksums
    scripts/fetch-weights.sh --dry-run nano     say what would happen; download nothing
    scripts/fetch-weights.sh --dest DIR nano    another folder (default: $BENCH_WEIGHTS_DIR or ./weights)

Where the files go: a plan's `weights: cache` reads rfdetr's cache folder, which the images
set to /work/weights (RF_HOME), the mount point of compose's weights volume (./weights on the
host). Natively, `export RF_HOME=$PWD/weights` makes the harness read the same folder.

URLs and MD5s come from rfdetr's registry (rfdetr/assets/model_weights.py) of the
installed rfdetr (the version the lock pins), and the download from rfdetr's own helper, which
verifies the MD5 before it moves the file into place. A SHA256SUMS file beside the checkpoints
records their sha256 (what the harness stores with every result as weights_sha256).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Checkpoint:
    variant: str
    filename: str
    url: str
    md5: str | None


def default_dest() -> Path:
    return Path(os.environ.get("BENCH_WEIGHTS_DIR", "weights"))


def rfdetr_registry() -> dict[str, tuple[str, str | None]]:
    """filename -> (url, md5) from the installed rfdetr's assets/model_weights.py.

    Read as source (the `ModelWeightAsset("file", "url", "md5")` entries) rather than imported:
    importing anything under rfdetr imports torch, which costs seconds for a listing."""
    spec = importlib.util.find_spec("rfdetr")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("rfdetr is not installed (pip install -e '.[torch]')")
    source = Path(list(spec.submodule_search_locations)[0]) / "assets" / "model_weights.py"
    registry: dict[str, tuple[str, str | None]] = {}
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id == "ModelWeightAsset" and len(node.args) >= 2
                and all(isinstance(arg, ast.Constant) for arg in node.args)):
            values = [arg.value for arg in node.args]
            registry[values[0]] = (values[1], values[2] if len(values) > 2 else None)
    if not registry:
        raise SystemExit(f"no ModelWeightAsset entries found in {source}: rfdetr changed its registry")
    return registry


def checkpoints() -> dict[str, Checkpoint]:
    """Every harness variant whose checkpoint rfdetr's registry knows, by variant name."""
    sys.path.insert(0, str(ROOT))  # the harness, also when it is not pip-installed
    from harness.models.rfdetr.variants import VARIANTS

    registry = rfdetr_registry()
    found: dict[str, Checkpoint] = {}
    for variant, spec in VARIANTS.items():
        if spec.checkpoint is None or spec.checkpoint not in registry:
            continue  # e.g. the rfdetr_plus variants: not in rfdetr's registry
        url, md5 = registry[spec.checkpoint]
        found[variant] = Checkpoint(variant, spec.checkpoint, url, md5)
    return found


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def record_sha256(dest: Path, filename: str, sha: str) -> None:
    """Keep dest/SHA256SUMS (sha256sum's format) up to date for `filename`."""
    sums = dest / "SHA256SUMS"
    lines = sums.read_text(encoding="utf-8").splitlines() if sums.exists() else []
    kept = [line for line in lines if not line.endswith(f"  {filename}")]
    kept.append(f"{sha}  {filename}")
    sums.write_text("\n".join(sorted(kept, key=lambda line: line[66:])) + "\n", encoding="utf-8")


def fetch(checkpoint: Checkpoint, dest: Path) -> Path:
    from rfdetr.utilities.files import _download_file  # verifies the MD5 before the final rename

    dest.mkdir(parents=True, exist_ok=True)
    target = dest / checkpoint.filename
    if checkpoint.md5 is None:
        print(f"warning: rfdetr publishes no checksum for {checkpoint.filename}; "
              "its sha256 is recorded, not verified", file=sys.stderr)
    _download_file(checkpoint.url, str(target), expected_md5=checkpoint.md5)
    sha = sha256_of(target)
    record_sha256(dest, checkpoint.filename, sha)
    print(f"{target}  sha256 {sha}")
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fetch-weights.sh", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("variants", nargs="*", help="harness variant names (nano, medium, seg-small, ...)")
    parser.add_argument("--all", action="store_true", help="every variant rfdetr has a checkpoint for")
    parser.add_argument("--dest", type=Path, default=None,
                        help="folder for the checkpoints (default: $BENCH_WEIGHTS_DIR or ./weights)")
    parser.add_argument("--list", action="store_true", help="list what can be fetched and exit")
    parser.add_argument("--dry-run", action="store_true", help="print what would be fetched")
    args = parser.parse_args(argv)

    known = checkpoints()
    if args.list:
        for item in known.values():
            print(f"{item.variant:14} {item.filename:38} md5 {item.md5 or '-':32} {item.url}")
        return 0
    names = list(known) if args.all else args.variants
    if not names:
        parser.error("name at least one variant, or --all (--list shows them)")
    unknown = [name for name in names if name not in known]
    if unknown:
        parser.error(f"no rfdetr checkpoint for {', '.join(unknown)}; known: {', '.join(known)}")
    dest = args.dest if args.dest is not None else default_dest()
    for name in names:
        item = known[name]
        if args.dry_run:
            print(f"would fetch {item.url} -> {dest / item.filename} (md5 {item.md5 or 'unpublished'})")
        else:
            fetch(item, dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
