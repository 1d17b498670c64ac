#!/usr/bin/env bash
# The wave-2 GPU checks in one 30-minute device lease (no Docker there: the harness runs from the
# working tree). Usage: device-lease.sh STEP [STEP ...], run from the repository root there:
#   part N   copy .ortN/ (one slice of onnxruntime-gpu, repacked as a tar.xz) out of the tree
#   site     install .whl/ into /tmp/site
#   ort      reassemble onnxruntime-gpu (the parts in /root/parts) into /tmp/ortsite
#   checks   the GPU tests of memory and energy, then plans/budgets-gpu.yaml beside nvidia-smi
#            (benchmarks/device-energy.sh checks)
#   cost     the monitor's cost: plans/monitor-cost.yaml and -off, alternated once
#   int8     benchmarks/lease/int8-ladder.yaml        (FP32, FP16, INT8, INT8 k3 on the CUDA EP)
#   serve    benchmarks/lease/server.yaml             (dynamic batching off and on)
#   edge     benchmarks/lease/edge-detectors.yaml     (PyTorch and ORT CUDA, NMS placements)
#   tune     bench tune benchmarks/lease/$TUNE_PLAN.yaml (default tune-nano) with --max-minutes
#            $TUNE_MIN (default 4.5), then its tuned.yaml re-measured
# The machine goes back 30 s after a call and files outside the tree go with it, so the parts
# travel in back-to-back calls. The cut plans say what they cut (benchmarks/lease/*.yaml).
# Each step leaves its logs and run folders (without .onnx/.npz) under $OUT/STEP.tar.gz.
set -uo pipefail
out=${OUT:-/tmp/out}
mkdir -p "$out" /tmp/runs /root/parts
export PYTHONPATH=/tmp/ortsite:/tmp/site:$PWD PYTHONUNBUFFERED=1

pack() {  # pack STEP: the step's logs and run folders into one file under $OUT
  mkdir -p "/tmp/keep/$1" && mv /tmp/runs/* "/tmp/keep/$1/" 2>/dev/null
  tar -C "/tmp/keep/$1" -czf "$out/$1.tar.gz" --exclude='*.npz' --exclude='*.onnx' . 2>/dev/null
  rm -rf "/tmp/keep/$1"
}

step_part() {
  cp ".ort$1"/* /root/parts/ && ls -la /root/parts | tail -n +2
}

step_site() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
}

step_ort() {
  cat /root/parts/slice* > /tmp/ort.tar.xz
  echo "$(cat /root/parts/SHA256)  /tmp/ort.tar.xz" | sha256sum -c - || return 1
  mkdir -p /tmp/ortsite && python3 -c "import tarfile; tarfile.open('/tmp/ort.tar.xz', 'r:xz').extractall('/tmp/ortsite', filter='tar')"
  rm -f /tmp/ort.tar.xz
  python3 -c "import onnxruntime as o, torch, pydantic, rfdetr; print('onnxruntime', o.__version__, o.get_available_providers(), 'torch', torch.__version__, 'pydantic', pydantic.VERSION)"
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu,memory.used --format=csv
  nproc; cat /proc/loadavg
}

step_checks() {
  OUT=/tmp/keep/checks bash benchmarks/device-energy.sh checks
}

step_cost() {
  OUT=/tmp/keep/cost ROUNDS=1 bash benchmarks/device-energy.sh monitor-cost
}

step_int8() {
  timeout 400 python3 -m harness benchmarks/lease/int8-ladder.yaml --output /tmp/runs > /tmp/runs/int8.log 2>&1
  echo "bench exit status: $?"; tail -30 /tmp/runs/int8.log
}

step_serve() {
  timeout 300 python3 -m harness benchmarks/lease/server.yaml --output /tmp/runs > /tmp/runs/serve.log 2>&1
  echo "bench exit status: $?"; tail -30 /tmp/runs/serve.log
}

step_edge() {
  timeout 480 python3 -m harness benchmarks/lease/edge-detectors.yaml --output /tmp/runs > /tmp/runs/edge.log 2>&1
  echo "bench exit status: $?"; tail -40 /tmp/runs/edge.log
}

step_tune() {
  timeout 330 python3 -m harness tune benchmarks/lease/${TUNE_PLAN:-tune-nano}.yaml --budget map_drop=0.5 --max-minutes ${TUNE_MIN:-4.5} \
    --output /tmp/runs/tune > /tmp/runs/tune.log 2>&1
  echo "bench tune exit status: $?"; tail -40 /tmp/runs/tune.log
  folder=$(ls -d /tmp/runs/tune/*/*/ 2>/dev/null | head -1)
  if [ -n "$folder" ] && [ -f "$folder/tuned.yaml" ]; then
    timeout 200 python3 -m harness "$folder/tuned.yaml" --output /tmp/runs/tuned > /tmp/runs/tuned.log 2>&1
    echo "bench tuned.yaml exit status: $?"; tail -25 /tmp/runs/tuned.log
  fi
}

while [ $# -gt 0 ]; do
  step=$1; shift
  case "$step" in
    part) step_part "$1"; shift; continue ;;
    site) step_site || exit 1; continue ;;
    ort) step_ort || exit 1; continue ;;
  esac
  echo "=== $step $(date -u +%T)"
  "step_$step"
  pack "$step"
  echo "=== $step done $(date -u +%T)"
done
