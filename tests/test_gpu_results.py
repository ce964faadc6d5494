"""benchmarks/gpu_results.py: the arithmetic and parsing behind issue 11's results file, and the schema of
every committed ``benchmarks/results/gpu-*.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_results  # noqa: E402

REQUIRED = {"gpu", "date", "command", "commit", "gpu_tests", "fvis", "train", "shard", "generators_images_per_s"}


def test_junit_counts(tmp_path: Path) -> None:
    xml = tmp_path / "r.xml"
    xml.write_text('<testsuites><testsuite name="pytest" tests="9" failures="1" errors="1" skipped="3">'
                   "</testsuite></testsuites>")
    assert gpu_results.junit_counts(xml) == {"passed": 4, "failed": 2, "skipped": 3}


def test_fvis_projection_scales_with_steps() -> None:
    rows = [{"row": "lucent", "fvis_per_s": 0.5}, {"row": "fvis", "fvis_per_s": 40.0}]
    figures = gpu_results.fvis_figures(rows, steps=512)
    assert figures["ratio"] == 80.0
    assert figures["projected_s_4700_at_512"] == pytest.approx(4700 / 40)
    assert figures["projected_s_4700_at_4096"] == pytest.approx(4700 / 40 * 8)
    # measured at 64 steps: 512-step units take 8x as long
    assert gpu_results.fvis_figures(rows, steps=64)["projected_s_4700_at_512"] == pytest.approx(4700 / 40 * 8)


def test_gpu_test_files_are_those_with_gpu_tests() -> None:
    files = gpu_results.gpu_test_files()
    assert "tests/test_gpu.py" in files and "tests/test_cuda_paths.py" in files
    assert "tests/test_remote.py" not in files  # CPU-only modules (and what they import) are not collected


def test_last_json_line_and_short_names() -> None:
    assert gpu_results.last_json_line('x\n{"a": 1}\nsummary\n{"b": 2}\n') == {"b": 2}
    with pytest.raises(ValueError):
        gpu_results.last_json_line("no json here")
    assert gpu_results.short_name("NVIDIA H200") == "h200"
    assert gpu_results.short_name("NVIDIA H100 80GB HBM3") == "h100"
    assert gpu_results.short_name("CPU rehearsal") == "cpu-rehearsal"


def test_the_rehearsal_writes_every_key_from_measured_values(tmp_path: Path) -> None:
    out = tmp_path / "gpu-rehearsal.json"
    assert gpu_results.main(["--tiny", "--device", "cpu", "--only", "generators", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert REQUIRED <= results.keys()
    assert results["gpu"] == "CPU rehearsal" and results["fvis"] == {"not_run": "not asked for (--only)"}
    per_core = results["generators"]["images_per_s_per_cpu_core"]
    assert set(per_core) == {"fractals", "deadleaves", "spectrum", "stylegan", "fractaldb"}
    assert all(rate > 0 for rate in per_core.values())
    assert results["generators_images_per_s"] == dict.fromkeys(per_core)  # a CPU rehearsal: null, not zero
    assert set(results["generators"]["images_per_s_on_device"]) == {"spectrum", "stylegan", "spectrum_batched"}


def test_committed_results_files_have_every_key() -> None:
    for path in sorted((ROOT / "benchmarks" / "results").glob("gpu-*.json")):
        results = json.loads(path.read_text())
        assert REQUIRED <= results.keys(), path
        assert set(results["gpu_tests"]) >= {"passed", "failed", "skipped"}, path
