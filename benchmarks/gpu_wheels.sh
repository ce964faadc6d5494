#!/usr/bin/env bash
# Run HERE (not on the GPU machine) before benchmarks/gpu_checks.sh: the GPU machine has torch and
# torchvision but no network, and lacks torch-lucent and what it imports (kornia 0.4.1, IPython,
# future) and webdataset. This downloads them as wheels into .whl/ (ignored by git) so that a device
# call can carry them: run(command="bash benchmarks/gpu_checks.sh", carry=[".whl"]).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl torch-lucent==0.1.8 kornia==0.4.1 webdataset braceexpand \
  ipython ipython-pygments-lexers jedi parso prompt_toolkit wcwidth traitlets decorator pexpect ptyprocess \
  stack_data executing asttokens pure_eval matplotlib-inline future tqdm click
# future ships only as a source distribution: build its wheel here.
ls .whl | grep -q '^future-' || python3 -m pip wheel -q --no-deps -w .whl future
du -sh .whl
