#!/bin/sh
# check-base.sh BASE_IMAGE BASE_IMAGE_DIGEST [TENSORRT_RELEASE]
#
# The image stamps BENCH_BASE_IMAGE_DIGEST from BASE_IMAGE_DIGEST. When BASE_IMAGE itself is
# pinned (name@sha256:...), the two must agree, or the stamp would name another base.
#
# TENSORRT_RELEASE (GPU flavour, e.g. 10.14): the base image's TensorRT must be that release.
# The lock's onnxruntime-gpu has its TensorRT execution provider built against one TensorRT
# release and loads the base's libnvinfer at run time; TensorRT promises no compatibility with
# an older minor release than the one built against, so a mismatch would only show as a failed
# or mis-measured TensorRT cell on a GPU machine.
set -eu
image="${1:?base image}"
digest="${2-}"
tensorrt="${3-}"
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

if [ -n "$tensorrt" ]; then
    # The Python bindings say which libnvinfer they belong to; NVIDIA's images also set
    # TRT_VERSION. Either is enough, both must agree with the release asked for.
    found="$(python3 -c 'import tensorrt; print(tensorrt.__version__)' 2>/dev/null || true)"
    [ -n "$found" ] || found="${TRT_VERSION:-}"
    if [ -z "$found" ]; then
        echo "the base image $image should carry TensorRT $tensorrt, but neither" \
             "\`import tensorrt\` nor TRT_VERSION says which TensorRT it has" >&2
        exit 1
    fi
    case "$found" in
        "$tensorrt"|"$tensorrt".*) echo "base image TensorRT: $found" ;;
        *)
            echo "the base image $image has TensorRT $found, but the lock's onnxruntime-gpu" \
                 "and the harness expect TensorRT $tensorrt (BASE_TENSORRT in Dockerfile):" \
                 "use a base image with TensorRT $tensorrt (docker/GPU_IMAGE.md)" >&2
            exit 1
            ;;
    esac
fi
