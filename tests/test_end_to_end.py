"""The whole toolkit on tiny CIFAR-10 data, through the command lines: build a mixing set, shard the
data (plain and pre-generated PixMix views), train a baseline and a PixMix smoke model, evaluate both
and compare them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from tiny_datasets import write_cifar10, write_cifar10_c, write_mixset

from mixset.cli import main as mixset_main
from pixmix.cli import main as pixmix_main
from pixmix.evaluate.report import compare, load_results

SUMMARY_KEYS = ("clean_error", "mce", "mfr", "pgd_error", "rms_calibration_c", "auroc")


def invoke(main, args: list[str]) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.output


@pytest.mark.slow
def test_build_shard_train_evaluate_compare(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_cifar10(data, per_batch=40)  # 200 training and 40 test images
    write_cifar10_c(data, per_severity=8)
    p_dir = data / "CIFAR-10-P"
    p_dir.mkdir()
    rng = np.random.default_rng(0)
    for name in ("gaussian_noise", "brightness"):  # two of the -P perturbations, [N, T, 32, 32, 3]
        np.save(p_dir / f"{name}.npy", rng.integers(0, 256, (6, 5, 32, 32, 3), dtype=np.uint8))
    mixset = write_mixset(tmp_path / "mixset", count=8, size=40)

    plain, views = tmp_path / "plain", tmp_path / "views"
    invoke(mixset_main, ["shard", "cifar10", "--data-dir", data, "--out", plain, "--quiet"])
    invoke(mixset_main, ["shard", "cifar10", "--data-dir", data, "--out", views, "--pixmix", "--mixset", mixset,
                         "--views", "2", "--workers", "2", "--quiet"])
    for folder in (plain, views):
        assert "OK" in invoke(mixset_main, ["verify", folder])

    runs = {"baseline": ("smoke-baseline", plain), "pixmix": ("smoke", views)}
    results = {}
    for name, (preset, shards) in runs.items():
        out = tmp_path / name
        invoke(pixmix_main, ["train", "--preset", preset, "--shards", shards, "--out", out, "--epochs", "2",
                             "--quiet"])
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in log] == [1, 2]
        if name == "pixmix":
            assert [r["view"] for r in log] == [0, 1]  # epoch e reads view e % 2
        report = tmp_path / f"{name}-eval"
        table = invoke(pixmix_main, ["eval", "--checkpoint", out / "checkpoints" / "last.pt", "--suite", "cifar10",
                                     "--data", data, "--out", report, "--ood-samples", "20", "--pgd-samples", "16",
                                     "--quiet"])
        assert "Clean" in table
        results[name] = load_results(report / "results.json")
        summary = results[name]["summary"]
        for key in SUMMARY_KEYS:
            assert key in summary and isinstance(summary[key], float) and math.isfinite(summary[key]), (name, key)
        assert 0 <= summary["clean_error"] <= 100 and 0 <= summary["auroc"] <= 100
        with Image.open(report / "results.png") as im:
            assert im.format == "PNG"

    paths = compare(results, tmp_path / "comparison")
    table = Path(paths["md"]).read_text()
    assert "baseline" in table and "pixmix" in table and "Paper: PixMix" in table
