"""Process-level allocator tuning and the speed benchmark's command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, env: dict[str, str] | None = None) -> str:
    full_env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env=full_env).stdout.strip()


def test_tuning_before_torch_enables_huge_pages_and_malloc_thresholds() -> None:
    out = _run(
        "import os\n"
        "from pixmix.utils.runtime import tune_cpu_allocator\n"
        "first = tune_cpu_allocator(); second = tune_cpu_allocator()\n"
        "print(first, second, os.environ.get('THP_MEM_ALLOC_ENABLE'))"
    )
    assert out == "True True 1"


def test_tuning_after_torch_leaves_the_environment_alone() -> None:
    out = _run(
        "import os, torch\n"
        "from pixmix.utils.runtime import tune_cpu_allocator\n"
        "print(tune_cpu_allocator(), os.environ.get('THP_MEM_ALLOC_ENABLE'))"
    )
    assert out == "True None"


def test_speed_benchmark_prints_side_by_side_figures(tmp_path) -> None:
    out_json = tmp_path / "speed.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "pixmix_speed.py"), "--sizes", "32", "--trials", "1",
         "--cpu-batch", "64", "--device", "cpu", "--json", str(out_json)],
        capture_output=True, text=True, check=True,
    )
    lines = result.stdout.splitlines()
    assert "allocator tuned: True" in lines[0]
    rows = json.loads(out_json.read_text())
    assert [r["path"] for r in rows] == ["per-image (PIL)", "batched"]
    assert all(r["images_per_s"] > 0 and r["size"] == 32 for r in rows)
    ratio = rows[1]["images_per_s"] / rows[0]["images_per_s"]
    assert f"{ratio:.2f}x" in result.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pixmix_speed.py"), "--sizes", "48"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--sizes: 48" in bad.stderr


# --- CPU budget: processes x threads never exceed the usable CPUs --------------------------------------

def test_usable_cpus_takes_the_smallest_limit(tmp_path: Path) -> None:
    from pixmix.utils.runtime import usable_cpus

    affinity = len(os.sched_getaffinity(0))
    no_cgroup = str(tmp_path / "none")
    assert usable_cpus({}, no_cgroup) == affinity
    assert usable_cpus({"SLURM_CPUS_PER_TASK": "1"}, no_cgroup) == 1
    assert usable_cpus({"OMP_NUM_THREADS": "1", "SLURM_CPUS_PER_TASK": "64"}, no_cgroup) == 1
    assert usable_cpus({"SLURM_CPUS_PER_TASK": "abc", "OMP_NUM_THREADS": "0"}, no_cgroup) == affinity  # ignored
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs: 2 threads may run
    assert usable_cpus({}, str(v2)) == min(affinity, 2)
    (v2 / "cpu.max").write_text("max 100000\n")
    assert usable_cpus({}, str(v2)) == affinity
    v1 = tmp_path / "v1" / "cpu"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cpus({}, str(tmp_path / "v1")) == 1


def test_plan_workers_never_oversubscribes_unless_asked() -> None:
    from pixmix.utils.runtime import plan_workers

    assert plan_workers(None, cpus=8) == (8, 1)
    assert plan_workers(2, cpus=8) == (2, 4)
    assert plan_workers(3, cpus=8) == (3, 2)
    assert plan_workers(16, cpus=2) == (2, 1)
    assert plan_workers(16, cpus=2, oversubscribe=True) == (16, 1)
    for requested in (None, 1, 2, 3, 5, 7, 8, 100):
        workers, threads = plan_workers(requested, cpus=7)
        assert workers * threads <= 7 and workers >= 1 and threads >= 1


def test_limit_threads_caps_torch_blas_and_children() -> None:
    out = _run(
        "import os, torch\n"
        "from threadpoolctl import threadpool_info\n"
        "from pixmix.utils.runtime import limit_threads\n"
        "limit_threads(1)\n"
        "import numpy\n"
        "print(torch.get_num_threads(), os.environ['OMP_NUM_THREADS'],\n"
        "      max([p['num_threads'] for p in threadpool_info()] or [1]))"
    )
    assert out == "1 1 1"
