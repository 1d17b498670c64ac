#!/usr/bin/env bash
# Attach a run's report to a GitHub release, so that a published number links to its evidence.
#
#   scripts/release-upload.sh RUN_DIR TAG [--repo OWNER/NAME] [--clobber] [--dry-run] [--out DIR]
#
# Uploads, named after the plan and the run id:
#   <plan>-<run>-report.html    the self-contained HTML report
#   <plan>-<run>-summary.md     the Markdown summary
#   <plan>-<run>.tar.gz         the whole run folder (plan, per-cell records, logs, results)
#   <plan>-<run>.sha256         sha256 of the three files above
# with `gh release upload` (GitHub's CLI, logged in: `gh auth login`, or GH_TOKEN set). The
# release TAG must exist (`gh release create TAG` first). --dry-run builds the files and prints
# the gh command without running it; --out DIR keeps the files there (default: a temp folder).
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
die() { echo "release-upload: $*" >&2; exit 1; }

positional=()
gh_args=()
dry_run=0
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --repo) [ $# -ge 2 ] || { usage >&2; exit 2; }; gh_args+=(--repo "$2"); shift 2 ;;
        --clobber) gh_args+=(--clobber); shift ;;
        --dry-run) dry_run=1; shift ;;
        --out) [ $# -ge 2 ] || { usage >&2; exit 2; }; out="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "release-upload: unknown option: $1" >&2; usage >&2; exit 2 ;;
        *) positional+=("$1"); shift ;;
    esac
done
if [ "${#positional[@]}" -ne 2 ]; then
    usage >&2
    exit 2
fi
run_dir="${positional[0]%/}"
tag="${positional[1]}"

[ -d "$run_dir" ] || die "$run_dir is not a run folder"
for needed in results.json report.html summary.md; do
    [ -f "$run_dir/$needed" ] || die "$run_dir/$needed is missing (render it with: bench report $run_dir)"
done
if [ "$dry_run" = 0 ] && ! command -v gh >/dev/null 2>&1; then
    die "needs GitHub's CLI \`gh\` (https://cli.github.com), logged in"
fi

run_id="$(basename "$run_dir")"
plan="$(basename "$(dirname "$run_dir")")"
name="$plan-$run_id"
if [ -n "$out" ]; then
    mkdir -p "$out"
else
    out="$(mktemp -d)"
    trap 'rm -rf "$out"' EXIT
fi

cp "$run_dir/report.html" "$out/$name-report.html"
cp "$run_dir/summary.md" "$out/$name-summary.md"
# Stable member order and owners, so the same folder always gives the same archive listing.
tar --sort=name --owner=0 --group=0 --numeric-owner \
    -C "$(dirname "$run_dir")" -czf "$out/$name.tar.gz" "$run_id"
(cd "$out" && sha256sum "$name-report.html" "$name-summary.md" "$name.tar.gz" > "$name.sha256")

files=("$out/$name-report.html" "$out/$name-summary.md" "$out/$name.tar.gz" "$out/$name.sha256")
command=(gh release upload "$tag" "${files[@]}" "${gh_args[@]}")
if [ "$dry_run" = 1 ]; then
    echo "would run: ${command[*]}"
    cat "$out/$name.sha256"
    exit 0
fi
"${command[@]}"
echo "attached $name to release $tag"
