"""The pixmix and mixset command lines."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
from click.testing import CliRunner
from PIL import Image

from mixset.cli import main as mixset_main
from pixmix.cli import main as pixmix_main
from pixmix.demo import HEADER_PX, column_labels


def test_cli_modules_do_not_import_torch() -> None:
    """--help must be instant: no torch (seconds to import) before a command runs."""
    code = ("import sys, pixmix.cli, mixset.cli; "
            "print(sorted(m for m in ('torch', 'torchvision', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_lists_commands() -> None:
    runner = CliRunner()
    result = runner.invoke(pixmix_main, ["--help"])
    assert result.exit_code == 0 and "demo" in result.output
    result = runner.invoke(mixset_main, ["--help"])
    assert result.exit_code == 0 and "mixing sets" in result.output
    assert runner.invoke(pixmix_main, ["--version"]).output.strip() == "pixmix, version 0.1.0"


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_demo_writes_grid_and_summary(tmp_path) -> None:
    runner = CliRunner()
    out = tmp_path / "demo"
    result = runner.invoke(pixmix_main, ["demo", "--out", str(out), "--rows", "3", "--samples", "4", "--seed", "7"])
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output
    png = out / "pixmix-demo.png"
    grid = Image.open(png)
    # 3 rows x (original + mixing picture + 4 samples), 96 px tiles with 4 px padding, under the column header.
    assert grid.size == (6 * 100 + 4, 3 * 100 + 4 + HEADER_PX)
    summary = json.loads((out / "pixmix-demo.json").read_text())
    assert summary["recipe"] == "cifar" and summary["k"] == 4 and summary["beta"] == 3.0
    assert summary["severity"] == 3.0 and len(summary["ops"]) == 13 and summary["seed"] == 7
    assert 0.0 < summary["output_mean"] < 1.0 and summary["output_std"] > 0.05
    # Tiles differ: the PixMix samples of a row are not copies of each other.
    arr = np.asarray(grid).astype(int)[HEADER_PX:]
    tile = lambda r, c: arr[4 + r * 100 : 4 + r * 100 + 96, 4 + c * 100 : 4 + c * 100 + 96]  # noqa: E731
    # Issue 15: the header names every column (dark text above each tile column, white elsewhere).
    assert column_labels(4) == ["original", "mixing picture", *(f"PixMix sample {i}" for i in range(1, 5))]
    header = np.asarray(grid.convert("L"))[:HEADER_PX].astype(int)
    assert all((header[:, 4 + c * 100 : 4 + c * 100 + 96] < 128).sum() > 20 for c in range(6))
    assert any(np.abs(tile(0, 2) - tile(0, c)).mean() > 1 for c in range(3, 6))
    assert not any(out.glob("*.tmp"))

    # Same seed: byte-identical PNG; another seed: a different one.
    first = _sha(png)
    args = ["demo", "--out", str(out), "--rows", "3", "--samples", "4", "--seed", "7"]
    assert runner.invoke(pixmix_main, args).exit_code == 0
    assert _sha(png) == first
    args = ["demo", "--out", str(out), "--rows", "3", "--samples", "4", "--seed", "8"]
    assert runner.invoke(pixmix_main, args).exit_code == 0
    assert _sha(png) != first


def test_demo_imagenet_recipe(tmp_path) -> None:
    result = CliRunner().invoke(pixmix_main, ["demo", "--out", str(tmp_path), "--recipe", "imagenet", "--rows", "1",
                                              "--samples", "2"])
    assert result.exit_code == 0, result.output
    assert Image.open(tmp_path / "pixmix-demo.png").size == (4 * 228 + 4, 228 + 4 + HEADER_PX)
    assert json.loads((tmp_path / "pixmix-demo.json").read_text())["severity"] == 1.0


def test_demo_rejects_bad_options(tmp_path) -> None:
    runner = CliRunner()
    result = runner.invoke(pixmix_main, ["demo", "--out", str(tmp_path), "--recipe", "svhn"])
    assert result.exit_code == 2 and "--recipe" in result.output
    result = runner.invoke(pixmix_main, ["demo", "--out", str(tmp_path), "--rows", "0"])
    assert result.exit_code == 2 and "--rows" in result.output
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = runner.invoke(pixmix_main, ["demo", "--out", str(blocker)])
    assert result.exit_code == 2 and "--out" in result.output
