#!/usr/bin/env bash
# One call on a GPU machine (about 6-8 minutes on an H100), after benchmarks/gpu_wheels.sh here:
#   run(command="bash benchmarks/gpu_checks.sh", carry=[".whl"], timeout_s=600)
# GPU tests, PixMix batched throughput (issue 2), FVis throughput: Lucent one unit per call vs the
# batched truncated renderer at 512 steps, 128 px (issue 3); training-step throughput with pre-generated
# vs online PixMix vs none, ResNet-50 at 224 px (issue 5). Logs land in $OUT when set.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1
log="${OUT:-/tmp}/gpu-checks.log"
{
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -5
  python3 benchmarks/pixmix_speed.py --device cuda --sizes 224 --trials 3 --gpu-batch 1024
  python3 benchmarks/fvis_speed.py --device cuda --steps 512 --units 256 --batch 64 --lucent-units 2
  python3 benchmarks/train_speed.py --recipe imagenet --device cuda --batch 256 --steps 10 --trials 2 --workers 8
} 2>&1 | grep -v -E "Warning|warnings.warn" | tee "$log"
