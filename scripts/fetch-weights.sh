#!/usr/bin/env bash
# Fetch RF-DETR checkpoints into the weights folder (./weights, compose's weights volume),
# MD5-checked against rfdetr's registry. `scripts/fetch-weights.sh --help` for the options;
# the work is done by scripts/fetch_weights.py (needs rfdetr installed: the host's, or run it
# inside the image with the network on).
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/fetch_weights.py" "$@"
