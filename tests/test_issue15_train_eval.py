"""Issue 15, the train/eval items: help defaults, truncated run files, CPU plans."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from test_train import Data

from pixmix.cli.train import PRESET_DEFAULTS
from pixmix.cli.train import train as train_command
from pixmix.train.trainer import PRESETS


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Data:
    return Data(tmp_path_factory.mktemp("issue15-data"))


def test_train_help_shows_the_presets_defaults() -> None:
    text = " ".join(CliRunner().invoke(train_command, ["--help"], terminal_width=200).output.split())
    assert "Default: the preset's (cifar 0.1, imagenet 0.01, smoke 0.05, small 0.05, places365 0.01)" in text  # --lr
    assert "cifar 128, imagenet 256, smoke 32, small 64, places365 256" in text  # --batch-size
    assert "cifar 4, imagenet 8, smoke 0, small 2, places365 8" in text  # --workers
    assert "cifar 0.0005, imagenet 0.0005, smoke 0.0005, small 0.0005, places365 0.0001" in text  # --weight-decay
    assert "cifar 0, imagenet 0, smoke 0, small 0, places365 0" in text  # --seed
    for name, values in PRESET_DEFAULTS.items():  # the help's table is the presets' own values
        for preset, value in values.items():
            assert getattr(PRESETS[preset], name) == value == getattr(PRESETS[f"{preset}-baseline"], name)
    assert {p.removesuffix("-baseline") for p in PRESETS} == set(next(iter(PRESET_DEFAULTS.values())))


def _run(data: Data, out: Path) -> object:
    return CliRunner().invoke(train_command, ["--preset", "smoke-baseline", "--shards", str(data.plain), "--out",
                                              str(out), "--epochs", "1", "--batch-size", "40", "--device", "cpu",
                                              "--workers", "0", "--quiet"])


@pytest.fixture(scope="module")
def trained(data: Data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("issue15-run") / "run"
    result = _run(data, out)
    assert result.exit_code == 0, result.output
    return out


def _copy(trained: Path, tmp_path: Path) -> Path:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out


def test_truncated_checkpoint_is_one_line_with_recovery(data: Data, trained: Path, tmp_path: Path) -> None:
    out = _copy(trained, tmp_path)
    last = out / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    result = _run(data, out)
    assert result.exit_code == 1, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert str(last) in result.output and "delete" in result.output and "start over" in result.output


def test_damaged_log_is_one_line_with_recovery(data: Data, trained: Path, tmp_path: Path) -> None:
    out = _copy(trained, tmp_path)
    (out / "log.jsonl").write_bytes(b"\xff\xfe{\"epoch\": 1, \x00\x00")
    result = _run(data, out)
    # a half-written log is repaired from the checkpoint: the run resumes (nothing left to train) in one line
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    (out / "log.jsonl").unlink()
    (out / "log.jsonl").mkdir()  # unreadable: one line naming it
    result = _run(data, out)
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert "log.jsonl" in result.output


def test_one_usable_cpu_gives_one_thread_per_process(monkeypatch: pytest.MonkeyPatch, data: Data,
                                                      tmp_path: Path) -> None:
    import numpy as np
    import torch

    from pixmix.evaluate import inputs
    from pixmix.evaluate.options import default_workers
    from pixmix.train import trainer

    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)  # limit_threads sets them; monkeypatch puts them back
    assert default_workers() == 1  # eval: one decoding process, not os.cpu_count()
    assert trainer.plan_threads(0) == (1, 0) and trainer.plan_threads(2, cpus=4) == (2, 1)
    assert trainer.plan_threads(1) == (1, 1) and trainer.plan_threads(3, cpus=2) == (1, 1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        # eval's folder decoding: the worker probes its own torch threads; this process keeps 1 meanwhile
        probe = [torch.get_num_threads] * 2
        got = [(int(b[0, 0, 0, 0]), torch.get_num_threads()) for b in inputs.pil_batches(
            probe, np.arange(2), 1, lambda f: Image.new("RGB", (1, 1), (f(), 0, 0)), workers=1)]
        assert got == [(1, 1), (1, 1)] and torch.get_num_threads() == 2
        torch.set_num_threads(2)
        trainer.train(trainer.preset_config("smoke-baseline", device="cpu", workers=1, epochs=1, batch_size=40),
                      data.plain, tmp_path / "run", log=lambda _: None, progress=False)
        assert torch.get_num_threads() == 1  # 1 usable CPU: the main process keeps 1 thread beside its worker
    finally:
        torch.set_num_threads(threads)
