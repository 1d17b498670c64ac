#!/usr/bin/env bash
# What produced reports/examples/ on the lent GPU machine (no Docker there; the harness runs
# from the working tree, with the wheels it lacks carried in .whl/ and onnxruntime-gpu
# reassembled in /tmp/ortsite; see ../shared/device/README.md). Usage: device-session.sh PART
#   deploy   the deployment benchmark plan
#   rest     the resolution sweep, the runtimes plan, the fidelity benchmark, the plain loop, GPU tests
set -uo pipefail
part=$1
out=${OUT:-/tmp/out}
mkdir -p "$out" /tmp/runs
export PYTHONPATH=/tmp/ortsite:/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit --format=csv
case "$part" in
  deploy)
    python3 -m harness plans/rfdetr-deployment.yaml --output /tmp/runs 2>&1 | tail -60
    ;;
  rest)
    python3 -m harness plans/resolution-sweep.yaml --output /tmp/runs 2>&1 | tail -30
    python3 -m harness plans/runtimes-nano.yaml --output /tmp/runs 2>&1 | tail -20
    onnx=$(grep -l '"resolution": 576' artifacts/onnx/*/meta.json 2>/dev/null | head -1)
    python3 benchmarks/plain_loop.py --variant medium ${onnx:+--onnx "$(dirname "$onnx")/model.onnx"} --json "$out/plain-medium.json" 2>&1 | grep -v Warning | tail -8
    python3 benchmarks/fidelity.py --device cuda --json "$out/fidelity-gpu.json" 2>&1 | tail -40
    python3 -m harness env --json > "$out/env.json"
    python3 -m pytest -q -m "gpu" -p no:cacheprovider tests 2>&1 | tail -15
    ;;
esac
tar -C /tmp/runs -czf "$out/runs-$part.tar.gz" --exclude='*.npz' . 2>/dev/null
ls -la "$out"
