#!/usr/bin/env bash
# Memory, energy and budgets on the lent GPU machine (no Docker there: the harness runs from the
# working tree, the wheels it lacks carried in .whl/ and installed into /tmp/site; onnxruntime-gpu,
# when carried, in /tmp/ortsite: see ../shared/device/README.md). Usage: device-energy.sh PART
#   setup         install .whl/ into /tmp/site, print the versions and the GPU
#   checks        the GPU tests of memory and energy (NVML against nvidia-smi and torch's own
#                 counters, the energy counter against the power samples), then plans/budgets-gpu.yaml
#                 with nvidia-smi sampling every worker's memory beside it, and each record's
#                 figures against those samples
#   monitor-cost  plans/monitor-cost.yaml (monitor on) and plans/monitor-cost-off.yaml, alternated
#                 ROUNDS times (default 1), then `bench compare` of their process medians
# Everything lands in $OUT (logs, results, a tar of the run folders).
set -uo pipefail
part=$1
out=${OUT:-/tmp/out}
mkdir -p "$out" /tmp/runs
export PYTHONPATH=/tmp/ortsite:/tmp/site:$PWD PYTHONUNBUFFERED=1
case "$part" in
  setup)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    python3 -c "import onnxruntime as o, torch, pydantic, pynvml; print('onnxruntime', o.__version__, o.get_available_providers(), 'torch', torch.__version__, 'pydantic', pydantic.VERSION)"
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,power.draw,power.limit,memory.used --format=csv
    ;;
  checks)
    timeout 120 python3 -m pytest -q -rs -s -m gpu -p no:cacheprovider tests/test_resources_gpu.py tests/test_monitor.py \
      > "$out/pytest-resources-gpu.log" 2>&1; tail -12 "$out/pytest-resources-gpu.log"
    # nvidia-smi's view of every compute process, every 200 ms, while the plan runs.
    nvidia-smi --query-compute-apps=timestamp,pid,used_memory --format=csv,noheader,nounits -lms 200 > "$out/smi-apps.csv" 2>&1 &
    smi=$!
    timeout 300 python3 -m harness plans/budgets-gpu.yaml --output /tmp/runs > "$out/budgets-gpu.log" 2>&1
    echo "bench exit status: $? (1 expected: budgets.gate with a failed budget)"
    kill "$smi" 2>/dev/null
    tail -25 "$out/budgets-gpu.log"
    python3 - "$out/smi-apps.csv" /tmp/runs/budgets-gpu <<'EOF'
import csv, glob, json, sys
smi = {}
for row in csv.reader(open(sys.argv[1])):
    if len(row) == 3 and row[1].strip().isdigit():
        pid, mib = int(row[1]), float(row[2])
        smi[pid] = max(smi.get(pid, 0.0), mib)
for path in sorted(glob.glob(f"{sys.argv[2]}/*/cells/*.json")):
    r = json.load(open(path))
    res, pid = r.get("resources") or {}, (r.get("process") or {}).get("pid")
    dm, en = res.get("device_memory") or {}, res.get("energy") or {}
    mib = lambda b: None if b is None else round(b / 2**20, 1)
    print(path.rsplit("/", 1)[1], r["status"], "pid", pid,
          "| headline", mib(dm.get("peak_bytes")), "MiB via", dm.get("method"),
          "| torch alloc/reserved", mib(dm.get("torch_allocated_peak_bytes")), mib(dm.get("torch_reserved_peak_bytes")),
          "| NVML process", mib(dm.get("process_peak_bytes")), "baseline", mib(dm.get("process_baseline_bytes")),
          "| nvidia-smi max", smi.get(pid),
          "| energy", en.get("method"), "J/img", en.get("joules_per_image"),
          "counter J", en.get("counter_joules"), "integrated J", en.get("integrated_joules"),
          "| reason", dm.get("reason") or dm.get("process_reason"), en.get("reason"))
    cost = ((r.get("monitor") or {}).get("summary") or {})
    print("   monitor sample cost us", cost.get("sample_cost_us"), "memory part", cost.get("memory_cost_us"))
for path in glob.glob(f"{sys.argv[2]}/*/results.json"):
    for cid, d in json.load(open(path))["derived"].items():
        print(cid, [(b["budget"], b["verdict"], b.get("value")) for b in d.get("budgets") or []])
EOF
    sed -n '/## Ship or not/,/## Ship checklist/p' /tmp/runs/budgets-gpu/*/summary.md | head -30
    cp /tmp/runs/budgets-gpu/*/summary.md "$out/budgets-gpu-summary.md" 2>/dev/null
    ;;
  monitor-cost)
    rounds=${ROUNDS:-1}
    for round in $(seq 1 "$rounds"); do
      for side in on off; do
        plan=plans/monitor-cost.yaml; [ "$side" = off ] && plan=plans/monitor-cost-off.yaml
        timeout 200 python3 -m harness "$plan" --output "/tmp/runs/cost-$side-$round" > "$out/cost-$side-$round.log" 2>&1
        grep -E "fp16-jit|fp16 " "$out/cost-$side-$round.log" | tail -3
      done
      a=$(ls -d /tmp/runs/cost-off-$round/*/*/); b=$(ls -d /tmp/runs/cost-on-$round/*/*/)
      python3 -m harness compare "$a" "$b" --threshold 3 --out "$out/compare-$round" 2>&1 | tail -8
    done
    for f in /tmp/runs/cost-*/*/*/results.json; do
      python3 -c "import json,sys; r=json.load(open(sys.argv[1])); [print(sys.argv[1].split('/')[3], k, d['across_processes']['process_medians'], d['across_processes']['headline']) for k,d in r['derived'].items()]; [print('  sample cost us', c['monitor']['summary'].get('sample_cost_us'), 'memory', c['monitor']['summary'].get('memory_cost_us'), 'samples', c['monitor']['summary']['samples']) for c in r['cells'] if c.get('monitor')]" "$f"
    done
    ;;
esac
tar -C /tmp/runs -czf "$out/runs-$part.tar.gz" --exclude='*.npz' --exclude='*.onnx' . 2>/dev/null
rm -rf /tmp/runs/*
ls -la "$out"
