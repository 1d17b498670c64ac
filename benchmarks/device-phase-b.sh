#!/usr/bin/env bash
# The GPU checks of INT8, the server scenario, the edge detectors and `bench tune`, for the lent
# GPU machine (no Docker there: the harness runs from the working tree; wheels come in .whl/,
# onnxruntime-gpu reassembled in /tmp/ortsite, see ../shared/device/README.md). Memory and
# energy have their own script (benchmarks/device-energy.sh). Usage: device-phase-b.sh PART
#   setup   install .whl/ into /tmp/site (as device-wave2.sh setup)
#   int8    plans/int8-ladder-gpu.yaml: RF-DETR Nano on the CUDA EP at FP32, FP16, INT8, INT8
#           with nodes kept in float
#   serve   the server tests marked gpu, then plans/server-gpu.yaml (batching off and on)
#   edge    plans/edge-detectors-gpu.yaml (PyTorch and ORT CUDA, YOLOv8n's three NMS placements)
#   tune    bench tune plans/tune-nano-gpu.yaml, then its tuned.yaml re-measured
# Each part leaves its log and its run folders (without .onnx/.npz) in $OUT.
set -uo pipefail
part=$1; shift || true
out=${OUT:-/tmp/out}
mkdir -p "$out" /tmp/runs
export PYTHONPATH=/tmp/ortsite:/tmp/site:$PWD PYTHONUNBUFFERED=1
case "$part" in
  setup)
    bash benchmarks/device-wave2.sh setup
    ;;
  int8)
    timeout 560 python3 -m harness plans/int8-ladder-gpu.yaml --output /tmp/runs > "$out/int8.log" 2>&1
    tail -25 "$out/int8.log"
    ;;
  serve)
    timeout 200 python3 -m pytest -q -rs -m gpu -p no:cacheprovider tests/test_serve.py > "$out/serve-tests.log" 2>&1
    tail -6 "$out/serve-tests.log"
    timeout 350 python3 -m harness plans/server-gpu.yaml --output /tmp/runs > "$out/serve.log" 2>&1
    tail -25 "$out/serve.log"
    ;;
  edge)
    timeout 560 python3 -m harness plans/edge-detectors-gpu.yaml --output /tmp/runs > "$out/edge.log" 2>&1
    tail -30 "$out/edge.log"
    ;;
  tune)
    timeout 400 python3 -m harness tune plans/tune-nano-gpu.yaml --budget map_drop=0.5 --max-minutes 6 \
      --output /tmp/runs/tune > "$out/tune.log" 2>&1
    tail -25 "$out/tune.log"
    folder=$(ls -d /tmp/runs/tune/tune-nano-gpu/*/ | head -1)
    timeout 150 python3 -m harness "$folder/tuned.yaml" --output /tmp/runs/tuned > "$out/tuned.log" 2>&1
    tail -15 "$out/tuned.log"
    ;;
esac
tar -C /tmp/runs -czf "$out/runs-$part.tar.gz" --exclude='*.npz' --exclude='*.onnx' . 2>/dev/null
rm -rf /tmp/runs/*
