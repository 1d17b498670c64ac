#!/usr/bin/env bash
# Second device session (see device-session.sh): PART=investigate runs the harness and the
# independent plain loop back to back (monitor on, then off); PART=sweep the resolution sweep
# and the runtimes plan.
set -uo pipefail
out=${OUT:-/tmp/out}; mkdir -p "$out" /tmp/runs
export PYTHONPATH=/tmp/ortsite:/tmp/site:$PWD PYTHONUNBUFFERED=1
q() { grep -E "median|error|Error" || true; }
case "$1" in
  investigate)
    python3 benchmarks/plain_loop.py --variant medium --json "$out/plain-1.json" 2>&1 | q
    python3 -m harness plans/investigate-medium.yaml --output /tmp/runs > "$out/inv-1.log" 2>&1
    python3 -m harness plans/investigate-medium-nomonitor.yaml --output /tmp/runs > "$out/inv-2.log" 2>&1
    python3 benchmarks/plain_loop.py --variant medium --json "$out/plain-2.json" 2>&1 | q
    ;;
  sweep)
    timeout 330 python3 -m harness plans/resolution-sweep.yaml --output /tmp/runs > "$out/sweep.log" 2>&1
    timeout 150 python3 -m harness plans/runtimes-nano.yaml --output /tmp/runs > "$out/rt.log" 2>&1
    ;;
esac
tar -C /tmp/runs -czf "$out/runs-$1.tar.gz" --exclude='*.npz' .
rm -rf /tmp/runs/*
ls -la "$out"
