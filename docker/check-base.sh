#!/bin/sh
# check-base.sh BASE_IMAGE BASE_IMAGE_DIGEST
#
# The image stamps BENCH_BASE_IMAGE_DIGEST from BASE_IMAGE_DIGEST. When BASE_IMAGE itself is
# pinned (name@sha256:...), the two must agree, or the stamp would name another base.
set -eu
image="${1:?base image}"
digest="${2-}"
case "$image" in
    *@sha256:*)
        pinned="sha256:${image##*@sha256:}"
        if [ -n "$digest" ] && [ "$digest" != "$pinned" ]; then
            echo "BASE_IMAGE is pinned to $pinned but BASE_IMAGE_DIGEST says $digest" >&2
            exit 1
        fi
        if [ -z "$digest" ]; then
            echo "BASE_IMAGE is pinned to $pinned: pass --build-arg BASE_IMAGE_DIGEST=$pinned" \
                 "(or leave both at the Dockerfile's defaults)" >&2
            exit 1
        fi
        ;;
esac
echo "base image: $image (digest: ${digest:-unpinned})"
