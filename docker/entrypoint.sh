#!/bin/sh
# The images' entrypoint: `bench "$@"`, after checking what would otherwise fail deep inside a
# run with a PermissionError or a bare "no such plan file". Problems are explained, exit 2.
#
#   no arguments         the flavour's default plan (BENCH_DEFAULT_PLAN: the GPU image's uses
#                        the GPU), or bench's bundled CPU quickstart when that is empty
#   anything else        passed to bench unchanged
#
# It checks, in the working directory (/work: the project folder, with reports/, artifacts/ and
# weights/ mounted read-write by compose), that the folders a run writes are writable by the
# user the container runs as, and that a plan given by path exists there.
set -eu

me="$(id -u):$(id -g)"

explain() {
    echo "bench (container): $*" >&2
    exit 2
}

# Which folder on the host a folder of /work is (compose.yaml's mounts and their overrides).
host_name() {
    case "$1" in
        reports) echo "./reports (or \$BENCH_REPORTS_DIR)" ;;
        artifacts) echo "./artifacts (or \$BENCH_ARTIFACTS_DIR)" ;;
        weights) echo "./weights (or \$BENCH_WEIGHTS_DIR)" ;;
        *) echo "./$1" ;;
    esac
}

check_writable() {
    dir="$1"
    [ -d "$dir" ] || return 0
    probe="$dir/.bench-write-test.$$"
    if (: > "$probe") 2>/dev/null; then
        rm -f "$probe"
        return 0
    fi
    owner="$(stat -c '%u:%g' "$dir")"
    where="$(host_name "$dir")"
    case "$owner" in
        0:*)
            explain "$where is owned by root, so the container (running as $me) cannot write" \
                "into it. Docker creates a missing bind-mount folder as root: give it to yourself" \
                "(sudo chown \"\$(id -u):\$(id -g)\" <that folder>) or remove it and create it as" \
                "yourself (mkdir), then run again." ;;
        *)
            if [ "$me" = "1000:1000" ]; then
                explain "$where belongs to $owner but the container runs as $me, so it cannot" \
                    "write into it. compose runs the container as \${UID}:\${GID} and falls back to" \
                    "1000:1000 when they are not exported (bash does not export UID and sets no" \
                    "GID): run \`export UID GID=\$(id -g)\` in this shell, then the same command again."
            fi
            explain "$where belongs to $owner but the container runs as $me (compose's" \
                "\${UID}:\${GID}), so it cannot write into it: run compose as the user who owns" \
                "it, or give the folder to $me." ;;
    esac
}

# The plan argument of `bench PLAN`, `bench run PLAN` and `bench validate PLAN`, if any.
plan_argument() {
    first="${1-}"
    case "$first" in
        run|validate) shift; first="${1-}" ;;
        env|report|compare|make-sample|merge|-*|"") return 0 ;;
    esac
    case "$first" in
        -*) return 0 ;;
    esac
    printf '%s' "$first"
}

if [ "$#" = 0 ] && [ -n "${BENCH_DEFAULT_PLAN:-}" ]; then
    set -- run "$BENCH_DEFAULT_PLAN"
fi

case "${1-}" in
    -h|--help|--version|env|validate) ;;
    *)
        for dir in reports artifacts weights; do
            check_writable "$dir"
        done
        ;;
esac

plan="$(plan_argument "$@")"
if [ -n "$plan" ] && [ ! -e "$plan" ]; then
    here="$(pwd)"
    case "$plan" in
        /work/*|/opt/*)
            hint="" ;;
        /*)
            hint=" An absolute path of the host does not exist in the container: name the plan"
            hint="$hint relative to the project folder, which is mounted at $here." ;;
        *)
            hint=" Only the project folder (where compose.yaml is) is mounted, at $here: the plan"
            hint="$hint must be inside it, named relative to it." ;;
    esac
    explain "no plan file $plan in the container.$hint"
fi

exec bench "$@"
