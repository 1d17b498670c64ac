#!/usr/bin/env bash
# Build an image flavour with everything stamped: base image digest, git commit and dirtiness.
#
#   scripts/build-image.sh            GPU image (compose service `bench`)
#   scripts/build-image.sh cpu        CPU image (compose service `bench-cpu`)
#   scripts/build-image.sh cpu --no-pull
#
# `docker compose build bench` works too; it stamps the base digest only when the Dockerfile
# pins one, and the commit as "unknown". This script resolves the base image's digest (pulling
# the base first unless --no-pull, falling back to a local copy when the pull fails; a local
# image with no registry digest is stamped with its image id), reads the commit from git, and
# passes both to compose as build arguments.
# Environment: BENCH_GPU_BASE_IMAGE / BENCH_CPU_BASE_IMAGE to build on another base.
set -euo pipefail
cd "$(dirname "$0")/.."

flavour="gpu"
pull=1
for arg in "$@"; do
    case "$arg" in
        gpu|cpu) flavour="$arg" ;;
        --no-pull) pull=0 ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        *) echo "build-image: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

if [ "$flavour" = gpu ]; then
    service=bench; dockerfile=Dockerfile; prefix=BENCH_GPU
else
    service=bench-cpu; dockerfile=Dockerfile.cpu; prefix=BENCH_CPU
fi
image_var="${prefix}_BASE_IMAGE"
digest_var="${prefix}_BASE_IMAGE_DIGEST"
default_base="$(sed -n 's/^ARG BASE_IMAGE=//p' "$dockerfile")"
base="${!image_var:-$default_base}"

case "$base" in
    *@sha256:*)
        digest="sha256:${base##*@sha256:}"
        ;;
    *)
        if [ "$pull" = 1 ] && ! docker pull "$base"; then
            # Offline, or a base that exists only here (CI's debootstrap image): build on the
            # local copy, which the stamp below names by its digest or id.
            docker image inspect "$base" >/dev/null 2>&1 \
                || { echo "build-image: cannot pull $base and there is no local copy" >&2; exit 1; }
            echo "build-image: could not pull $base; building on the local copy" >&2
        fi
        repo_digest="$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$base" \
                       | grep -m1 '@sha256:' || true)"
        if [ -n "$repo_digest" ]; then
            digest="sha256:${repo_digest##*@sha256:}"
        else
            # Imported or locally built base: no registry digest exists; its id names it.
            digest="$(docker image inspect --format '{{.Id}}' "$base")"
        fi
        ;;
esac

context=(harness pyproject.toml README.md lockfiles docker plans/quickstart-gpu.yaml Dockerfile Dockerfile.cpu)
if commit="$(git rev-parse HEAD 2>/dev/null)"; then
    if [ -n "$(git status --porcelain -- "${context[@]}")" ]; then dirty=true; else dirty=false; fi
else
    commit=unknown; dirty=unknown
fi

export "$image_var=$base" "$digest_var=$digest" BENCH_GIT_COMMIT="$commit" BENCH_GIT_DIRTY="$dirty"
echo "building $service from $base ($digest), commit $commit (dirty: $dirty)"
docker compose build "$service"
