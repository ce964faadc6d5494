"""Training and evaluation on a CUDA device beside the CPU (issue 11), each with a CPU twin that runs in CI.

The CUDA tests are marked ``gpu`` and skipped without a device; the twins check, on the CPU, the property
that the CUDA test relies on (autocast never changes a CPU run; evaluation does not depend on how images
are decoded and batched), so a change that breaks a CUDA path's premises fails in CI too.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_datasets import write_cifar10, write_cifar10_c, write_mixset

from mixset.shard.sharder import ShardConfig, shard
from pixmix.evaluate.suites import evaluate
from pixmix.models import build_model, load_checkpoint, save_checkpoint
from pixmix.train.trainer import preset_config, train

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
CIFAR_RECIPE = {"name": "cifar", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "image_size": 32}
COLOURS = np.array([[230, 25, 25], [25, 200, 25], [25, 25, 230], [230, 230, 25], [230, 25, 230], [25, 230, 230],
                    [128, 128, 128], [250, 250, 250], [10, 10, 10], [240, 130, 20]])


def _quiet(_: str) -> None:
    pass


def _colour_cifar(root: Path, per_batch: int = 32) -> Path:
    """CIFAR-10 python batches whose label is the picture's colour: learnable in one short epoch."""
    rng = np.random.default_rng(3)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, per_batch)
        images = np.clip(COLOURS[labels][:, None, None, :] + rng.normal(0, 25, (per_batch, 32, 32, 3)), 0, 255)
        batch = {b"labels": [int(v) for v in labels],
                 b"data": images.astype(np.uint8).transpose(0, 3, 1, 2).reshape(per_batch, 3072)}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    return root


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("cuda-paths")
    _colour_cifar(root / "cifar")
    mixset = write_mixset(root / "mixset", count=6, size=40)
    common = {"dataset": "cifar10", "data_dir": root / "cifar", "shard_samples": 40}
    shard(ShardConfig(out=root / "plain", **common), log=_quiet, progress=False)
    shard(ShardConfig(out=root / "test", split="test", **common), log=_quiet, progress=False)
    return root / "plain", root / "test", mixset


def _train(shards: tuple[Path, Path, Path], out: Path, device: str, amp: bool) -> tuple[dict, list[dict]]:
    plain, test, mixset = shards
    config = preset_config("smoke", device=device, amp=amp, workers=0, epochs=1, batch_size=16, seed=5)
    train(config, plain, out, mixset=mixset, val_shards=test, log=_quiet, progress=False)
    state = load_checkpoint(out / "checkpoints" / "last.pt")["model_state"]
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {k: v.cpu() for k, v in state.items()}, records


def test_autocast_never_changes_a_cpu_run(shards, tmp_path: Path) -> None:
    """CPU twin of the CUDA training test: ``amp`` is a CUDA-only option, bit for bit."""
    with_amp, log_amp = _train(shards, tmp_path / "amp", "cpu", amp=True)
    without, log_plain = _train(shards, tmp_path / "fp32", "cpu", amp=False)
    assert with_amp.keys() == without.keys()
    assert all(torch.equal(with_amp[k], without[k]) for k in with_amp)
    assert log_amp[-1]["train_loss"] == log_plain[-1]["train_loss"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_training_with_autocast_follows_the_cpu_run(shards, tmp_path: Path, dtype: str) -> None:
    plain, test, mixset = shards
    config = preset_config("smoke", device="cuda", amp=True, amp_dtype=dtype, workers=0, epochs=1, batch_size=16,
                           seed=5)
    train(config, plain, tmp_path / "cuda", mixset=mixset, val_shards=test, log=_quiet, progress=False)
    cuda_log = [json.loads(line) for line in (tmp_path / "cuda" / "log.jsonl").read_text().splitlines()]
    _, cpu_log = _train(shards, tmp_path / "cpu", "cpu", amp=False)
    # Same seed, same draws (PixMix parameters come from CPU generators); bf16/fp16 forward passes only
    # perturb the loss, so one epoch's mean loss agrees within a few percent.
    assert cuda_log[-1]["train_loss"] == pytest.approx(cpu_log[-1]["train_loss"], rel=0.05)
    state = load_checkpoint(tmp_path / "cuda" / "checkpoints" / "last.pt")["model_state"]
    assert all(torch.isfinite(v.float()).all() for v in state.values())


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("cuda-eval")
    write_cifar10(root, per_batch=24)
    write_cifar10_c(root, per_severity=4)
    torch.manual_seed(0)
    model = build_model("smoke", 10).eval()
    ckpt = root / "model.pt"
    save_checkpoint(ckpt, {"model": {"arch": "smoke", "num_classes": 10, "kwargs": {}},
                           "model_state": model.state_dict(), "recipe": CIFAR_RECIPE})
    return root, ckpt


def _evaluate(eval_data: tuple[Path, Path], device: str, batch_size: int) -> dict:
    root, ckpt = eval_data
    return evaluate(ckpt, "cifar10", root, device=device, batch_size=batch_size, ood_samples=12, pgd_samples=8,
                    progress=False, log=_quiet)


def _headline(results: dict) -> dict[str, float]:
    return {"clean": results["clean"]["error"], "mce": results["corruptions"]["mce"],
            "pgd": results["adversarial"]["pgd_error"], "auroc": results["anomaly"]["auroc"]}


def test_evaluation_does_not_depend_on_the_batch(eval_data) -> None:
    """CPU twin of the CUDA evaluation test: batching (as a GPU run's larger batches do) changes nothing
    beyond float rounding."""
    small, large = _headline(_evaluate(eval_data, "cpu", 8)), _headline(_evaluate(eval_data, "cpu", 64))
    assert small.keys() == large.keys()
    for key in small:
        assert small[key] == pytest.approx(large[key], abs=1e-6), key


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_evaluation_equals_the_cpu_one(eval_data) -> None:
    cpu, cuda = _headline(_evaluate(eval_data, "cpu", 64)), _headline(_evaluate(eval_data, "cuda", 64))
    # Errors count predictions: one flipped near-tie prediction among the 24 test images moves an error
    # by 100/24 %; anything more is a real difference between the two paths.
    assert cuda["clean"] == pytest.approx(cpu["clean"], abs=100 / 24 + 1e-6)
    assert cuda["mce"] == pytest.approx(cpu["mce"], abs=1.0)
    assert cuda["auroc"] == pytest.approx(cpu["auroc"], abs=1.0)
