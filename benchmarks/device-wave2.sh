#!/usr/bin/env bash
# Wave-2 checks on the lent GPU machine (no Docker there: the harness runs from the working
# tree; wheels it lacks come in .whl/, onnxruntime-gpu reassembled in /tmp/ortsite, see
# ../shared/device/README.md). Usage: device-wave2.sh PART [ARGS]
#   setup            install .whl/ into /tmp/site
#   refactor         the timed paths before (.old-harness/, the code before the redesign) and
#                    after, alternated: old, new, old, new on plans/refactor-check.yaml
#   repeats N [INJ]  plans/repeats-medium.yaml as run N (INJ: BENCH_FAULT_INJECT for a slowdown)
#   notebook         RF-DETR's latency notebook, Medium only
#   gpu-tests        the GPU-marked tests
set -uo pipefail
part=$1; shift || true
out=${OUT:-/tmp/out}
mkdir -p "$out" /tmp/runs
export PYTHONPATH=/tmp/ortsite:/tmp/site:$PWD PYTHONUNBUFFERED=1
case "$part" in
  setup)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    if [ -d .old-harness ]; then mkdir -p /tmp/oldtree && tar -xzf .old-harness/old.tar.gz -C /tmp/oldtree; fi
    python3 -c "import onnxruntime as o, torch, pydantic, scipy; print('onnxruntime', o.__version__, o.get_available_providers(), 'torch', torch.__version__, 'pydantic', pydantic.VERSION, 'scipy', scipy.__version__)"
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu --format=csv
    nproc; cat /proc/loadavg
    ;;
  refactor)
    for round in 1 2; do
      for side in old new; do
        if [ "$side" = old ]; then tree=/tmp/oldtree; else tree=$PWD; fi
        (cd "$tree" && PYTHONPATH=/tmp/ortsite:/tmp/site:$tree timeout 280 python3 -m harness "$OLDPWD/plans/refactor-check.yaml" \
          --output "/tmp/runs/refactor-$side-$round" > "$out/refactor-$side-$round.log" 2>&1)
        tail -12 "$out/refactor-$side-$round.log"
      done
    done
    ;;
  repeats)
    n=$1; inject=${2:-}
    BENCH_FAULT_INJECT="$inject" timeout 560 python3 -m harness plans/repeats-medium.yaml --output "/tmp/runs/repeats-$n" > "$out/repeats-$n.log" 2>&1
    tail -25 "$out/repeats-$n.log"
    ;;
  notebook)
    # The notebook as given (carried in .device/), its model loop cut to Medium.
    sed 's/for cls, name in ((rfdetr.RFDETRMedium, "RFDETRMedium"), (rfdetr.RFDETRSegSmall, "RFDETRSegSmall"),/for cls, name in ((rfdetr.RFDETRMedium, "RFDETRMedium"),/; s/^                  (rfdetr.RFDETRKeypointPreview, "RFDETRKeypointPreview")):/                  ):/' \
      .device/notebook.py > /tmp/notebook.py
    timeout 400 python3 /tmp/notebook.py > "$out/notebook.log" 2>&1; tail -8 "$out/notebook.log"
    ;;
  gpu-tests)
    timeout 400 python3 -m pytest -q -rs -m gpu -p no:cacheprovider tests > "$out/pytest-gpu.log" 2>&1; tail -15 "$out/pytest-gpu.log"
    ;;
esac
tar -C /tmp/runs -czf "$out/runs-$part${1:+-$1}.tar.gz" --exclude='*.npz' --exclude='*.onnx' . 2>/dev/null
rm -rf /tmp/runs/*
