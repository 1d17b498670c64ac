#!/usr/bin/env bash
# Pin a flavour's base image to its registry digest (Dockerfile + compose.yaml); see
# scripts/pin_base_image.py --help. Needs Docker and a reachable registry.
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/pin_base_image.py" "$@"
