#!/bin/sh
# add-user.sh UID GID
#
# The image runs as a non-root user (UID:GID, 1000:1000 by default). compose.yaml runs it as
# the invoking user instead (user: "${UID}:${GID}") so that reports land on the host owned by
# that user; that user has no passwd entry in the image, hence a world-writable HOME and work
# folders (sticky, like /tmp) that work for any uid.
set -eu
uid="${1:?uid}"
gid="${2:?gid}"
if ! getent group "$gid" >/dev/null; then
    groupadd --gid "$gid" bench
fi
# Ubuntu 24.04 based images (NVIDIA's) already have uid 1000 ("ubuntu"): reuse it.
if ! getent passwd "$uid" >/dev/null; then
    useradd --uid "$uid" --gid "$gid" --no-create-home --home-dir /home/bench \
        --shell /bin/sh bench
fi
mkdir -p /home/bench /work/plans /work/reports /work/datasets /work/weights /work/artifacts
chmod 1777 /home/bench /work /work/reports /work/weights /work/artifacts
