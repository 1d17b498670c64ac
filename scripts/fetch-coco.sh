#!/usr/bin/env bash
# Fetch COCO 2017 val (5,000 images) and its annotations, checking every archive's size and
# sha256 before anything is extracted.
#
#   scripts/fetch-coco.sh                      -> datasets/coco/val2017/*.jpg
#                                                 datasets/coco/annotations/*_val2017.json
#   scripts/fetch-coco.sh --dest /data/coco    another place (plans name it under `dataset:`)
#   scripts/fetch-coco.sh --from ~/Downloads   use archives already downloaded (offline machines)
#   scripts/fetch-coco.sh --dry-run            say what would happen; download nothing
#
# Checksums: cocodataset.org publishes none. The sizes and sha256 sums below are the ones that
# independent projects pin for these exact URLs (ParlAI's COCO downloader, among others, for
# the sha256; many dataset loaders pin the MD5s 442b8da7639aecaf257c1dceb8ba8c80 and
# f4bbac642086de4f52a3fdda2de5fa2c of the same two files). docs/container.md lists them.
# A mismatch stops the script before extraction and leaves the bad file as *.bad.
set -euo pipefail

readonly BASE_URL="http://images.cocodataset.org"
# name|url path|bytes|sha256
readonly ARCHIVES=(
    "val2017.zip|zips/val2017.zip|815585330|4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05"
    "annotations_trainval2017.zip|annotations/annotations_trainval2017.zip|252907541|113a836d90195ee1f884e704da6304dfaaecff1f023f49b6ca93c4aaae470268"
)
readonly VAL_IMAGES=5000

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    echo
    echo "options: --dest DIR  --from DIR  --keep-archives  --dry-run  -h|--help"
}

die() { echo "fetch-coco: $*" >&2; exit 1; }

dest="${BENCH_DATASETS_DIR:-datasets}/coco"
from=""
keep=0
dry_run=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dest) [ $# -ge 2 ] || { usage >&2; exit 2; }; dest="$2"; shift 2 ;;
        --from) [ $# -ge 2 ] || { usage >&2; exit 2; }; from="$2"; shift 2 ;;
        --keep-archives) keep=1; shift ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "fetch-coco: unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done
if [ -n "$from" ] && [ ! -d "$from" ]; then
    die "--from $from is not a folder"
fi

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
size_of() { stat -c %s "$1"; }

# Prints "ok" when FILE has the expected size and sha256 (size first: it is instant).
verify() {
    local file="$1" bytes="$2" sha="$3"
    [ -f "$file" ] || return 1
    [ "$(size_of "$file")" = "$bytes" ] || return 1
    [ "$(sha256_of "$file")" = "$sha" ]
}

download() {
    local url="$1" out="$2"
    if command -v curl >/dev/null 2>&1; then
        curl --fail --location --retry 3 --continue-at - --output "$out" "$url"
    elif command -v wget >/dev/null 2>&1; then
        wget --tries=3 --continue --output-document="$out" "$url"
    else
        die "needs curl or wget"
    fi
}

if [ -f "$dest/annotations/instances_val2017.json" ] && [ -d "$dest/val2017" ] \
    && [ "$(find "$dest/val2017" -name '*.jpg' | wc -l)" = "$VAL_IMAGES" ]; then
    echo "COCO val2017 is already in $dest (delete it to fetch again)"
    exit 0
fi

if [ "$dry_run" = 0 ]; then
    for tool in sha256sum unzip stat; do
        command -v "$tool" >/dev/null 2>&1 || die "needs $tool"
    done
    mkdir -p "$dest"
fi

for entry in "${ARCHIVES[@]}"; do
    IFS='|' read -r name path bytes sha <<<"$entry"
    archive="$dest/$name"
    source="$BASE_URL/$path"
    if [ -n "$from" ]; then
        source="$from/$name"
        [ "$dry_run" = 1 ] || [ -f "$source" ] || die "$source is missing"
    fi
    if [ "$dry_run" = 1 ]; then
        echo "would fetch $source -> $archive ($bytes bytes, sha256 $sha)"
        continue
    fi
    if verify "$archive" "$bytes" "$sha"; then
        echo "$name: already here, checksum ok"
    else
        if [ -n "$from" ]; then
            cp "$source" "$archive.part"
        else
            echo "$name: downloading $source"
            download "$source" "$archive.part"
        fi
        if ! verify "$archive.part" "$bytes" "$sha"; then
            mv -f "$archive.part" "$archive.bad"
            die "$name: checksum mismatch (expected $bytes bytes, sha256 $sha; got" \
                "$(size_of "$archive.bad") bytes, sha256 $(sha256_of "$archive.bad")); kept as $archive.bad"
        fi
        mv -f "$archive.part" "$archive"
        echo "$name: checksum ok"
    fi
done

if [ "$dry_run" = 1 ]; then
    echo "would extract val2017/ and annotations/*_val2017.json into $dest"
    exit 0
fi

echo "extracting into $dest"
unzip -q -o "$dest/val2017.zip" -d "$dest"
# Only the val annotations: the train ones are 450 MB of JSON nobody here needs.
unzip -q -o "$dest/annotations_trainval2017.zip" 'annotations/*_val2017.json' -d "$dest"

count="$(find "$dest/val2017" -name '*.jpg' | wc -l)"
[ "$count" = "$VAL_IMAGES" ] || die "expected $VAL_IMAGES images in $dest/val2017, found $count"
[ -f "$dest/annotations/instances_val2017.json" ] || die "instances_val2017.json missing"

if [ "$keep" = 0 ]; then
    rm -f "$dest/val2017.zip" "$dest/annotations_trainval2017.zip"
fi
echo "COCO val2017 ready: $dest/val2017 ($count images), $dest/annotations/instances_val2017.json"
