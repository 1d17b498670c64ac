#!/usr/bin/env bash
# The device tool carries at most 64 MiB per call, tracked files included. With the committed
# example runs the tree is ~31 MB, so the 49 MB parts that ../shared/device/fetch-wheels.sh
# --ort-gpu makes no longer fit beside it. This re-splits them into .ortgpu-s1, .ortgpu-s2, ...
# of SIZE (default 25M) each; .ortgpu-s1 also holds NAME and SHA256. On the GPU machine, carry
# one folder per call, back to back (the machine goes back 30 s after a call):
#   mkdir -p /root/parts && cp .ortgpu-sN/part* /root/parts/
# and in the last call reassemble as ../shared/device/README.md shows, reading NAME and SHA256
# from .ortgpu-s1 (carry it again with the last part, or copy them to /root/parts first).
set -euo pipefail
size=${1:-25M}
[ -f .ortgpu5/NAME ] || { echo "run ../shared/device/fetch-wheels.sh --ort-gpu first" >&2; exit 1; }
tmp=$(mktemp -d)
cat .ortgpu[1-5]/part0* > "$tmp/whole"
echo "$(cat .ortgpu5/SHA256)  $tmp/whole" | sha256sum -c - >/dev/null
rm -rf .ortgpu-s*
split -b "$size" -d -a 2 "$tmp/whole" "$tmp/part"
i=1
for part in "$tmp"/part*; do
  mkdir -p ".ortgpu-s$i"
  mv "$part" ".ortgpu-s$i/"
  i=$((i + 1))
done
cp .ortgpu5/NAME .ortgpu5/SHA256 .ortgpu-s1/
rm -rf "$tmp"
ls -d .ortgpu-s* | tr '\n' ' '; echo
