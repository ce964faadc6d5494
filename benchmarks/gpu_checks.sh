#!/usr/bin/env bash
# One call on a GPU machine (about 6-8 minutes on an H100/H200), after benchmarks/gpu_wheels.sh here:
#   run(command="COMMIT=<sha> bash benchmarks/gpu_checks.sh", carry=[".whl"], timeout_s=600)
# Rehearse it here first: python benchmarks/gpu_results.py --tiny --device cpu --out /tmp/rehearsal.json
# It writes benchmarks/results/gpu-<short GPU name>.json (copied to $OUT): commit that file.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1
log="${OUT:-/tmp}/gpu-checks.log"
# Issue 11's results file, from measured values: GPU tests, FVis (Lucent vs batched), the training step,
# mixset shard --device cuda, the generators. COMMIT is passed by the caller (the device copy has no .git).
python3 benchmarks/gpu_results.py --commit "${COMMIT:-unknown}" 2>&1 | grep -v -E "Warning|warnings.warn" | tee "$log"
status=${PIPESTATUS[0]}
cp benchmarks/results/gpu-*.json "${OUT:-/tmp}/" 2>/dev/null
exit "$status"
