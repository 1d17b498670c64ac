#!/usr/bin/env python3
"""Pin a flavour's base image to its registry digest, in the Dockerfile and in compose.yaml.

    python scripts/pin_base_image.py gpu                    pull the current tag, pin its digest
    python scripts/pin_base_image.py gpu nvcr.io/nvidia/tensorrt:25.11-py3
    python scripts/pin_base_image.py cpu --digest sha256:...   pin a digest you already know

Run it where the registry is reachable (a developer's GPU machine): it pulls the tag, reads
the digest Docker recorded for it, and rewrites `ARG BASE_IMAGE=<tag>@<digest>` and
`ARG BASE_IMAGE_DIGEST=<digest>` in the flavour's Dockerfile and the matching defaults in
compose.yaml. For the GPU flavour it then prints the CUDA, cuDNN, TensorRT and Python versions
found inside the image: copy them into docker/GPU_IMAGE.md.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAVOURS = {"gpu": ("Dockerfile", "BENCH_GPU"), "cpu": ("Dockerfile.cpu", "BENCH_CPU")}
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
VERSIONS_SCRIPT = (
    'echo "python: $(python3 --version 2>&1)"; '
    'echo "CUDA_VERSION=${CUDA_VERSION:-?} CUDNN_VERSION=${CUDNN_VERSION:-?} '
    'TRT_VERSION=${TRT_VERSION:-?} NVIDIA_TENSORRT_VERSION=${NVIDIA_TENSORRT_VERSION:-?}"; '
    "python3 -c 'import tensorrt; print(\"tensorrt (python):\", tensorrt.__version__)' 2>&1; "
    "grep PRETTY_NAME /etc/os-release"
)


def untagged_digest(reference: str) -> str:
    """`name:tag@sha256:...` -> `name:tag` (the tag a pin starts from)."""
    return reference.split("@", 1)[0]


def repository_of(reference: str) -> str:
    """`nvcr.io/nvidia/tensorrt:25.10-py3` -> `nvcr.io/nvidia/tensorrt` (a registry's port stays)."""
    head, _, last = untagged_digest(reference).rpartition("/")
    last = last.split(":", 1)[0]
    return f"{head}/{last}" if head else last


def current_base(dockerfile: Path) -> str:
    match = re.search(r"^ARG BASE_IMAGE=(\S+)$", dockerfile.read_text(encoding="utf-8"), re.MULTILINE)
    if not match:
        raise SystemExit(f"{dockerfile}: no `ARG BASE_IMAGE=` line")
    return match.group(1)


def registry_digest(reference: str) -> str:
    subprocess.run(["docker", "pull", reference], check=True)
    out = subprocess.run(
        ["docker", "image", "inspect", "--format", "{{range .RepoDigests}}{{println .}}{{end}}", reference],
        check=True, capture_output=True, text=True).stdout
    repository = repository_of(reference)
    for line in out.split():
        name, _, digest = line.partition("@")
        if name == repository and DIGEST.match(digest):
            return digest
    raise SystemExit(f"docker recorded no registry digest for {reference}: {out!r}")


def pin(root: Path, flavour: str, reference: str, digest: str) -> None:
    if not DIGEST.match(digest):
        raise SystemExit(f"not a digest: {digest!r} (expected sha256:<64 hex>)")
    dockerfile_name, prefix = FLAVOURS[flavour]
    pinned = f"{reference}@{digest}"

    dockerfile = root / dockerfile_name
    text = dockerfile.read_text(encoding="utf-8")
    text, n_image = re.subn(r"^ARG BASE_IMAGE=\S+$", f"ARG BASE_IMAGE={pinned}", text, flags=re.MULTILINE)
    text, n_digest = re.subn(r"^ARG BASE_IMAGE_DIGEST=.*$", f'ARG BASE_IMAGE_DIGEST="{digest}"', text,
                             flags=re.MULTILINE)
    if (n_image, n_digest) != (1, 1):
        raise SystemExit(f"{dockerfile}: expected one BASE_IMAGE and one BASE_IMAGE_DIGEST ARG line")
    dockerfile.write_text(text, encoding="utf-8")

    compose = root / "compose.yaml"
    text = compose.read_text(encoding="utf-8")
    text, n_image = re.subn(rf"\$\{{{prefix}_BASE_IMAGE:-[^}}]*\}}", f"${{{prefix}_BASE_IMAGE:-{pinned}}}", text)
    text, n_digest = re.subn(rf"\$\{{{prefix}_BASE_IMAGE_DIGEST:-[^}}]*\}}",
                             f"${{{prefix}_BASE_IMAGE_DIGEST:-{digest}}}", text)
    if (n_image, n_digest) != (1, 1):
        raise SystemExit(f"{compose}: expected one {prefix}_BASE_IMAGE and one {prefix}_BASE_IMAGE_DIGEST default")
    compose.write_text(text, encoding="utf-8")
    print(f"pinned {flavour}: {pinned} ({dockerfile_name}, compose.yaml)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("flavour", choices=sorted(FLAVOURS))
    parser.add_argument("reference", nargs="?", help="image tag to pin (default: the Dockerfile's, untagged)")
    parser.add_argument("--digest", help="pin this digest without pulling")
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    dockerfile_name, _ = FLAVOURS[args.flavour]
    reference = args.reference or untagged_digest(current_base(args.root / dockerfile_name))
    digest = args.digest or registry_digest(reference)
    pin(args.root, args.flavour, untagged_digest(reference), digest)
    if args.flavour == "gpu" and not args.digest:
        print("versions inside the image (copy them into docker/GPU_IMAGE.md):")
        subprocess.run(["docker", "run", "--rm", "--entrypoint", "sh", f"{reference}@{digest}",
                        "-c", VERSIONS_SCRIPT], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
