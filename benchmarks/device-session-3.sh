#!/usr/bin/env bash
# Third device session, on a two-GPU machine (kind nvidia-h100-x2): PART=lanes runs
# plans/two-gpus.yaml with `--gpus 0,1` and the GPU-marked tests (among them
# tests/test_parallel_gpu.py); PART=soak runs plans/sustained-gpu.yaml with `--gpus 0,1`, a
# four-minute sustained cell on each GPU at once; PART=deploy the deployment benchmark plan
# with `--gpus 0,1` (its ONNX Runtime CPU cells run after the GPU cells, alone). Wheels and
# onnxruntime-gpu as in device-session.sh.
set -uo pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out" /tmp/runs
export PYTHONPATH=/tmp/ortsite:/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=index,name,uuid,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu --format=csv
case "$1" in
  lanes)
    python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
    python3 -m harness env --json > "$out/env.json" 2> "$out/env.err"
    timeout 300 python3 -m harness plans/two-gpus.yaml --gpus 0,1 --output /tmp/runs > "$out/lanes.log" 2>&1
    tail -30 "$out/lanes.log"
    timeout 240 python3 -m pytest -q -rs -m gpu -p no:cacheprovider tests > "$out/pytest-gpu.log" 2>&1
    tail -15 "$out/pytest-gpu.log"
    ;;
  soak)
    timeout 500 python3 -m harness plans/sustained-gpu.yaml --gpus 0,1 --output /tmp/runs > "$out/soak.log" 2>&1
    tail -30 "$out/soak.log"
    ;;
  deploy)
    timeout 520 python3 -m harness plans/rfdetr-deployment.yaml --gpus 0,1 --output /tmp/runs > "$out/deploy.log" 2>&1
    tail -45 "$out/deploy.log"
    ;;
esac
nvidia-smi --query-gpu=index,clocks.sm,temperature.gpu,power.draw --format=csv
tar -C /tmp/runs -czf "$out/runs-$1.tar.gz" --exclude='*.npz' .
rm -rf /tmp/runs/*
ls -la "$out"
