"""Issue 11's figures from one GPU session, written as JSON from measured values (never typed in).

    python benchmarks/gpu_results.py --commit <sha>                      # on the GPU machine, ~6-8 minutes
    python benchmarks/gpu_results.py --tiny --device cpu --out /tmp/r.json  # the CPU rehearsal, ~1-2 minutes

Sections, each measured side by side in this one run (a section that fails records its error and the
others still run):
  gpu_tests   ``pytest -m gpu tests`` (passed / failed / skipped from its JUnit XML);
  fvis        benchmarks/fvis_speed.py: Lucent's render_vis one unit per call vs the batched renderer,
              ResNet-50 ``layer1.0.conv1``, 128 px; the paper's ~4,700 units projected at 512 and 4,096
              steps (time per unit scales with the steps);
  train       benchmarks/train_speed.py: ResNet-50 at 224 px, base transform vs online PixMix on the device
              vs pre-generated views; the online overhead is 1 - online / base;
  shard       ``mixset shard imagenet --pixmix`` in-process: views/s with ``--device`` and every usable CPU
              as a decode/encode worker, beside views/s on one CPU core (one worker, device cpu);
  generators  the ablation generators and the procedural fractals: images/s on one CPU core; the GPU
              figure is null where a generator has no GPU path (they are numpy code today).
The file lands at ``benchmarks/results/gpu-<short GPU name>.json`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PAPER_FVIS_UNITS = 4700  # spec section 5: about 4,700 feature visualisations in the paper's set
MICROSCOPE_STEPS = 4096


@dataclass(frozen=True)
class Settings:
    """How big each section is: the GPU run's settings, or the rehearsal's tiny ones."""

    fvis_steps: int
    fvis_units: int
    fvis_batch: int
    lucent_units: int
    train_batch: int
    train_steps: int
    train_trials: int
    shard_images: int
    generator_images: int
    generator_size: int
    generator_batch: int


FULL = Settings(fvis_steps=512, fvis_units=256, fvis_batch=128, lucent_units=2, train_batch=256, train_steps=10,
                train_trials=2, shard_images=1024, generator_images=8, generator_size=256,
                generator_batch=64)
TINY = Settings(fvis_steps=4, fvis_units=4, fvis_batch=4, lucent_units=1, train_batch=4, train_steps=1,
                train_trials=1, shard_images=8, generator_images=1, generator_size=32,
                generator_batch=2)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    print("$", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    tail = (done.stdout + done.stderr).strip().splitlines()[-8:]
    print("\n".join(f"    {line}" for line in tail), flush=True)
    return done


def junit_counts(path: Path) -> dict[str, int]:
    """passed / failed / skipped from a pytest JUnit XML file (errors count as failed)."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    return {"passed": total - failed - skipped, "failed": failed, "skipped": skipped}


def gpu_test_files() -> list[str]:
    """The test modules that hold ``gpu`` tests: only these are collected, so that a package the GPU machine
    lacks (moto, datasets, ...) and that only CPU tests import cannot fail the collection."""
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")
                  if "mark.gpu" in p.read_text(encoding="utf-8"))


def gpu_tests(settings: Settings, device: str, tmp: Path) -> dict[str, Any]:
    xml = tmp / "gpu-tests.xml"
    files = gpu_test_files()
    _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", *files,
          f"--junitxml={xml}"], timeout=300)
    return {**junit_counts(xml), "files": files}


def last_json_line(text: str) -> dict[str, Any]:
    """The last line of ``text`` that parses as a JSON object (the benchmarks print their rows last)."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    raise ValueError("no JSON line in the benchmark's output")


def fvis_figures(rows: list[dict[str, Any]], steps: int) -> dict[str, Any]:
    """Units/s of Lucent and of the batched renderer, their ratio and the paper-set projections."""
    lucent = next(r for r in rows if r["row"] == "lucent")["fvis_per_s"]
    batched = next(r for r in rows if r["row"] == "fvis")["fvis_per_s"]
    per_unit = 1 / batched  # seconds per unit at `steps` steps; rendering time is linear in the steps
    return {"steps": steps, "lucent_units_per_s": lucent, "batched_units_per_s": batched,
            "ratio": round(batched / lucent, 2),
            "projected_s_4700_at_512": round(PAPER_FVIS_UNITS * per_unit * 512 / steps, 1),
            "projected_s_4700_at_4096": round(PAPER_FVIS_UNITS * per_unit * MICROSCOPE_STEPS / steps, 1)}


def fvis(settings: Settings, device: str, tmp: Path) -> dict[str, Any]:
    done = _run([sys.executable, str(HERE / "fvis_speed.py"), "--device", device, "--steps",
                 str(settings.fvis_steps), "--units", str(settings.fvis_units), "--batch", str(settings.fvis_batch),
                 "--lucent-units", str(settings.lucent_units), "--no-plain"], timeout=300)
    done.check_returncode()
    result = last_json_line(done.stdout)
    return {**fvis_figures(result["rows"], settings.fvis_steps), "rows": result["rows"]}


def train(settings: Settings, device: str, tmp: Path) -> dict[str, Any]:
    out = tmp / "train.json"
    workers = max(1, min(8, _cpus() - 1))
    done = _run([sys.executable, str(HERE / "train_speed.py"), "--recipe", "imagenet", "--arch", "resnet50",
                 "--device", device, "--batch", str(settings.train_batch), "--steps", str(settings.train_steps),
                 "--warmup", "1", "--trials", str(settings.train_trials), "--workers", str(workers),
                 "--json", str(out)], timeout=400)
    done.check_returncode()
    rates = json.loads(out.read_text())
    base, online, views = rates["none"], rates["online"], rates["views"]
    return {"model": "resnet50", "batch": settings.train_batch, "loader_workers": workers,
            "base_samples_per_s": round(base, 1), "online_pixmix_samples_per_s": round(online, 1),
            "pregenerated_samples_per_s": round(views, 1), "online_overhead_pct": round((1 - online / base) * 100, 1)}


def _cpus() -> int:
    from pixmix.utils.runtime import usable_cpus

    return usable_cpus()


def _shard_rate(data: Path, mixset: Path, out: Path, device: str, workers: int) -> float:
    from mixset.shard.sharder import ShardConfig, shard

    start = time.perf_counter()
    summary = shard(ShardConfig(dataset="imagenet", data_dir=data, out=out, pixmix=True, mixset=mixset, views=1,
                                workers=workers, device=device), log=lambda _: None, progress=False)
    return summary.samples_written / (time.perf_counter() - start)


def shard_views(settings: Settings, device: str, tmp: Path) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    from shard_speed import make_data, make_mixset  # type: ignore[import-not-found]

    data = make_data(tmp / "shard", settings.shard_images, 500, 375)
    mixset = make_mixset(tmp / "shard", 64)
    workers = _cpus()
    on_device = _shard_rate(data, mixset, tmp / "shard" / "device", device, workers)
    per_core = _shard_rate(data, mixset, tmp / "shard" / "one-core", "cpu", 1)
    return {"views_per_s_cuda": round(on_device, 1) if device.startswith("cuda") else None,
            "views_per_s_device": round(on_device, 1), "device": device, "workers": workers,
            "views_per_s_per_cpu_core": round(per_core, 1), "views": settings.shard_images}


def _per_second(make: Callable[[int], Any], count: int) -> float:
    make(10_000)  # warm-up: imports, caches, the first FractalDB category search
    start = time.perf_counter()
    for i in range(count):
        make(i)
    return count / (time.perf_counter() - start)


def generators(settings: Settings, device: str, tmp: Path) -> dict[str, Any]:
    import torch

    from mixset.sources.generators import DEVICE_GENERATORS, NAMES, generate_batch, generate_with_tries
    from mixset.sources.procedural import generate_fractal

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # per core
    try:
        size, count = settings.generator_size, settings.generator_images
        per_core = {"fractals": _per_second(lambda i: generate_fractal(0, i, size=size), count)}
        for name in NAMES:
            per_core[name] = _per_second(lambda i, n=name: generate_with_tries(n, 0, i, size), count)
        on_device = {name: _per_second(lambda i, n=name: generate_with_tries(n, 0, i, size, device=device), count)
                     for name in DEVICE_GENERATORS}
        batch = settings.generator_batch
        on_device["spectrum_batched"] = batch * _per_second(
            lambda i: generate_batch("spectrum", 0, list(range(i * batch, (i + 1) * batch)), size, device), 1)
    finally:
        torch.set_num_threads(threads)
    gpu = device.startswith("cuda")
    per_gpu = {name: round(on_device[name], 2) if gpu and name in on_device else None for name in per_core}
    if gpu:
        per_gpu["spectrum"] = round(max(on_device["spectrum"], on_device["spectrum_batched"]), 2)
    spectrum = per_gpu["spectrum"] or per_core["spectrum"]
    return {"images_per_s_per_gpu": per_gpu, "images_per_s_per_cpu_core": {k: round(v, 2) for k, v in per_core.items()},
            "images_per_s_on_device": {k: round(v, 2) for k, v in on_device.items()}, "device": device,
            "size": size, "projected_min_105k_spectrum": round(105_000 / spectrum / 60, 1),
            "note": "GPU figures: one image at a time on the device (stylegan), the better of one at a time and "
                    "batches of `generator_batch` (spectrum); the numpy generators "
                    "(fractals, deadleaves, fractaldb) have no GPU path: null, not zero"}


SECTIONS: dict[str, Callable[[Settings, str, Path], dict[str, Any]]] = {
    "gpu_tests": gpu_tests, "fvis": fvis, "train": train, "shard": shard_views, "generators": generators,
}


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return "CPU rehearsal"


def _commit(given: str | None) -> str | None:
    if given:
        return given
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or None if done.returncode == 0 else None


def collect(settings: Settings, device: str, only: list[str], commit: str | None) -> dict[str, Any]:
    """Every section's figures (or its error), with the machine, date, command and commit."""
    results: dict[str, Any] = {"gpu": _device_name(device), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "command": " ".join([Path(sys.executable).name, *sys.argv]),
                               "commit": _commit(commit), "device": device, "settings": settings.__dict__}
    results.update({name: {"not_run": "not asked for (--only)"} for name in SECTIONS if name not in only})
    with tempfile.TemporaryDirectory() as tmp:
        for name in only:
            start = time.perf_counter()
            print(f"== {name}", flush=True)
            try:
                results[name] = SECTIONS[name](settings, device, Path(tmp))
            except Exception as exc:  # one broken section must not lose the others' figures
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            results[name]["seconds"] = round(time.perf_counter() - start, 1)
            print(f"   {name}: {json.dumps(results[name])[:400]}", flush=True)
    results["generators_images_per_s"] = results.get("generators", {}).get("images_per_s_per_gpu")
    return results


def short_name(gpu: str) -> str:
    """'NVIDIA H200' -> 'h200'; 'NVIDIA H100 80GB HBM3' -> 'h100'; the rehearsal -> 'cpu-rehearsal'."""
    words = gpu.replace("NVIDIA", "").split()
    return (words[0] if words and gpu != "CPU rehearsal" else "cpu-rehearsal").lower()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="the rehearsal's tiny settings")
    parser.add_argument("--only", action="append", choices=list(SECTIONS), help="run only these sections")
    parser.add_argument("--commit", help="the commit measured (default: git rev-parse HEAD where .git exists)")
    parser.add_argument("--out", type=Path, help="default: benchmarks/results/gpu-<short GPU name>.json")
    args = parser.parse_args(argv)
    results = collect(TINY if args.tiny else FULL, args.device, args.only or list(SECTIONS), args.commit)
    out = args.out or HERE / "results" / f"gpu-{short_name(results['gpu'])}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}")
    failed = [name for name in SECTIONS if isinstance(results.get(name), dict) and "error" in results[name]]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
