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
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=full_env).stdout.strip()


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
