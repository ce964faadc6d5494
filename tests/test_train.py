"""pixmix.train.trainer: presets, learning, checkpoints and logs, exact resume, data modes, the schedule, DDP."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from dataclasses import asdict, replace
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from tiny_datasets import write_imagenet, write_mixset
from torch import nn

import pixmix.train.trainer as train_module
from mixset.shard.sharder import ShardConfig, shard
from pixmix.cli.train import PRESET_NAMES
from pixmix.cli.train import train as train_command
from pixmix.data.shards.shard_set import ShardSet
from pixmix.models import SmokeNet, build_model, load_checkpoint, model_from_checkpoint
from pixmix.train.trainer import (
    PRESETS,
    TrainError,
    cosine_factor,
    cosine_scheduler,
    make_train_loader,
    plan_data,
    preset_config,
    train,
)

# torchvision 0.29 deprecates its image decoders (in favour of TorchCodec) on every call.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

# Ten well-separated colours: class c is a flat picture of COLOURS[c] plus noise, so a tiny CNN learns it.
COLOURS = np.array([[230, 25, 25], [25, 200, 25], [25, 25, 230], [230, 230, 25], [230, 25, 230], [25, 230, 230],
                    [128, 128, 128], [250, 250, 250], [10, 10, 10], [240, 130, 20]])
LOG_KEYS = {"epoch", "step", "train_loss", "train_error", "lr", "seconds", "samples_per_s", "val_error",
            "substituted", "errors", "batches_per_rank", "world_size", "view", "samples"}
PAYLOAD_KEYS = {"format", "version", "model", "model_state", "optimizer_state", "scheduler_state", "scaler_state",
                "epoch", "step", "config", "recipe", "classes", "metrics", "data"}


def quiet(_: str) -> None:
    pass


def write_colour_cifar(root: Path, per_batch: int = 40, seed: int = 0) -> Path:
    """CIFAR-10 python batches (5 x per_batch train, per_batch test) whose label is the picture's colour."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, per_batch)
        noise = rng.normal(0, 25, (per_batch, 32, 32, 3))
        images = np.clip(COLOURS[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels],
                 b"data": images.transpose(0, 3, 1, 2).reshape(per_batch, 3072),
                 b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    return root


class Data:
    def __init__(self, root: Path) -> None:
        write_colour_cifar(root / "cifar")  # 200 training images, 40 test images
        self.mixset = write_mixset(root / "mixset", count=6, size=40)
        common = {"dataset": "cifar10", "data_dir": root / "cifar", "shard_samples": 50}
        self.plain, self.test, self.pixmix = root / "plain", root / "test", root / "pixmix"
        shard(ShardConfig(out=self.plain, **common), log=quiet, progress=False)
        shard(ShardConfig(out=self.test, split="test", **common), log=quiet, progress=False)
        shard(ShardConfig(out=self.pixmix, pixmix=True, mixset=self.mixset, views=2, **common), log=quiet,
              progress=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Data:
    return Data(tmp_path_factory.mktemp("train-data"))


def smoke(preset: str = "smoke", **overrides) -> train_module.TrainConfig:
    return preset_config(preset, **{"device": "cpu", "workers": 0, **overrides})


def log_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


# --- presets and options -------------------------------------------------------------------------


def test_presets_follow_the_spec() -> None:
    assert tuple(PRESETS) == PRESET_NAMES  # the CLI's choices (kept apart so --help does not import torch)
    cifar, imagenet, smoke_ = PRESETS["cifar"], PRESETS["imagenet"], PRESETS["smoke"]
    assert (cifar.arch, cifar.dropout, cifar.lr, cifar.momentum, cifar.nesterov, cifar.weight_decay, cifar.batch_size,
            cifar.epochs, cifar.recipe, cifar.pixmix) == ("wrn40_4", 0.3, 0.1, 0.9, True, 5e-4, 128, 100, "cifar", True)
    assert (imagenet.arch, imagenet.lr, imagenet.weight_decay, imagenet.epochs, imagenet.batch_size,
            imagenet.recipe, imagenet.pretrained) == ("resnet50", 0.01, 5e-4, 90, 256, "imagenet", None)
    assert (smoke_.arch, smoke_.recipe, smoke_.epochs, smoke_.batch_size, smoke_.lr) == ("smoke", "cifar", 2, 32, 0.05)
    for name in ("cifar", "imagenet", "smoke"):
        base = PRESETS[f"{name}-baseline"]
        assert not base.pixmix and replace(base, preset=name, pixmix=True) == PRESETS[name]
    assert all(c.num_classes is None for c in PRESETS.values())  # from the shard set


def test_overrides_and_validation() -> None:
    config = preset_config("cifar", epochs=3, lr=0.2, batch_size=None, seed=7, amp=False, pretrained="w.pt")
    assert (config.epochs, config.lr, config.batch_size, config.seed, config.amp, config.pretrained) == (
        3, 0.2, 128, 7, False, "w.pt")
    assert json.loads(json.dumps(config.to_json())) == asdict(config)
    for kwargs, option in [({"batch_size": 0}, "--batch-size"), ({"lr": -1.0}, "--lr"), ({"epochs": 1.5}, "--epochs"),
                           ({"device": "tpu"}, "--device"), ({"weight_decay": float("nan")}, "--weight-decay"),
                           ({"workers": -1}, "--workers"), ({"amp_dtype": "int8"}, "--amp-dtype")]:
        with pytest.raises(TrainError, match=option) as info:
            preset_config("smoke", **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(TrainError, match="--preset must be one of"):
        preset_config("cifar100")
    with pytest.raises(TrainError, match="unknown training option"):
        preset_config("smoke", momentun=0.5)


# --- data modes ----------------------------------------------------------------------------------


def test_presets_refuse_data_they_cannot_use(data: Data, tmp_path: Path) -> None:
    cases = [
        ("smoke-baseline", data.pixmix, None, "pre-generated PixMix views"),
        ("smoke-baseline", data.plain, data.mixset, "without PixMix: drop --mixset"),
        ("smoke", data.plain, None, "plain shards need --mixset DIR"),
        ("smoke", data.pixmix, data.mixset, "pre-generated PixMix views already: drop --mixset"),
    ]
    for preset, shards, mixset, message in cases:
        with pytest.raises(TrainError, match=message):
            train(smoke(preset), shards, tmp_path / "out", mixset=mixset, log=quiet, progress=False)
    assert not (tmp_path / "out").exists()  # refused before anything is written
    config = smoke()
    assert plan_data(config, ShardSet.load(data.plain), data.mixset).mode == "online"
    assert plan_data(config, ShardSet.load(data.pixmix), None).mode == "views"
    base = plan_data(smoke("smoke-baseline"), ShardSet.load(data.plain), None)
    assert base.mode == "views" and base.transform is not None  # the recipe's flip + padded crop


def test_pregenerated_views_rotate_with_the_epoch(data: Data, tmp_path: Path) -> None:
    config = smoke(epochs=3)
    plan = plan_data(config, ShardSet.load(data.pixmix), None)
    loader = make_train_loader(config, data.pixmix, plan, mixset=None, rank=0, world_size=1, batch_size=32)
    for epoch in range(3):
        loader.set_epoch(epoch)
        suffixes = {key.rsplit("_", 1)[1] for batch in loader for key in batch.keys}
        assert suffixes == {f"v{epoch % 2}"}
    summary = train(config, data.pixmix, tmp_path / "out", log=quiet, progress=False)
    assert [r["view"] for r in summary.records] == [0, 1, 0]
    assert [r["view"] for r in log_records(tmp_path / "out")] == [0, 1, 0]


# --- learning --------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["smoke-baseline", "smoke"])
def test_smoke_learns_colours(data: Data, tmp_path: Path, preset: str) -> None:
    mixset = data.mixset if preset == "smoke" else None  # smoke: online PixMix on the plain shards
    summary = train(smoke(preset, epochs=4), data.plain, tmp_path / "out", mixset=mixset, val_shards=data.test,
                    log=quiet, progress=False)
    losses = [r["train_loss"] for r in summary.records]
    assert losses[0] > 1.5 and losses[-1] < 0.6 * losses[0]  # chance level: ln 10 = 2.3
    assert all(b < a for a, b in pairwise(losses[:3]))
    final = summary.final
    assert final is not None and final["train_error"] < 0.35 and final["val_error"] <= 0.2  # chance: 0.9
    assert all(r["seconds"] < 10 for r in summary.records)  # an epoch of 192 images in seconds on a CPU
    assert summary.records[0]["samples"] == 192 and summary.records[0]["batches_per_rank"] == [6]


# --- checkpoints and logs ------------------------------------------------------------------------


def test_checkpoint_and_log_contents(data: Data, tmp_path: Path) -> None:
    out = tmp_path / "run"
    lines: list[str] = []
    summary = train(smoke("smoke-baseline"), data.plain, out, val_shards=data.test, log=lines.append, progress=False)
    assert summary.epochs_completed == 2 and summary.step == 12 and summary.resumed_from is None
    assert lines[-1].startswith("trained smoke-baseline to epoch 2/2 (12 steps)")
    records = log_records(out)
    assert [r["epoch"] for r in records] == [1, 2] and [r["step"] for r in records] == [6, 12]
    assert all(set(r) == LOG_KEYS for r in records) and records == summary.records
    assert all(r["val_error"] is not None and r["errors"] == [] and r["substituted"] == 0 for r in records)

    raw = torch.load(out / "checkpoints" / "last.pt", weights_only=True)  # plain values only: no code can run
    assert set(raw) == PAYLOAD_KEYS
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["model"] == {"arch": "smoke", "num_classes": 10, "kwargs": {}}
    assert state["epoch"] == 2 and state["step"] == 12 and state["scaler_state"] is None
    assert state["config"] == asdict(smoke("smoke-baseline", num_classes=10))
    assert state["recipe"] == {"name": "cifar", "mean": [0.5] * 3, "std": [0.5] * 3, "image_size": 32}
    assert state["classes"] == [str(i) for i in range(10)] and state["metrics"] == records[-1]
    assert state["scheduler_state"]["last_epoch"] == 12
    own = build_model("smoke", 10).state_dict()
    assert list(state["model_state"]) == list(own) and not any(k.startswith("module.") for k in state["model_state"])
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["epoch-001.pt", "epoch-002.pt", "last.pt"]
    assert load_checkpoint(out / "checkpoints" / "epoch-001.pt")["epoch"] == 1

    model, _ = model_from_checkpoint(out / "checkpoints" / "last.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(value, state["model_state"][key])
    # The checkpoint's model reproduces the logged validation error.
    shardset = ShardSet.load(data.test)
    from pixmix.data.loader import ShardLoader, finish_batch

    loader = ShardLoader(shardset.folder, batch_size=16, num_workers=0, recipe="cifar", shuffle=False,
                         drop_last=False, rank=0, world_size=1)
    wrong = total = 0
    with torch.no_grad():
        for batch in loader:
            images, labels = finish_batch(batch, "cpu", "cifar")
            keep = ~batch.repeat
            wrong += int(((model(images).argmax(1) != labels) & keep).sum())
            total += int(keep.sum())
    assert total == 40 and wrong / total == pytest.approx(records[-1]["val_error"])

    # Asking for no more epochs than the checkpoint holds trains nothing.
    again = train(smoke("smoke-baseline"), data.plain, out, log=lines.append, progress=False)
    assert again.records == [] and again.epochs_completed == 2 and "nothing to train" in lines[-1]


class _DropoutSmoke(nn.Module):
    """SmokeNet with dropout on its input: resume must replay the dropout draws too."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.net = SmokeNet(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(F.dropout(x, 0.3, self.training))


def test_resume_gives_the_same_weights(data: Data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(train_module, "build_model", lambda arch, n, **kw: _DropoutSmoke(n))
    config = smoke(epochs=2)
    train(config, data.plain, tmp_path / "a", mixset=data.mixset, log=quiet, progress=False)
    first = train(config, data.plain, tmp_path / "b", mixset=data.mixset, log=quiet, progress=False,
                  stop_after_epochs=1)
    assert first.epochs_completed == 1 and not (tmp_path / "b" / "checkpoints" / "epoch-002.pt").exists()
    torch.rand(1000)  # whatever the process did in between
    second = train(config, data.plain, tmp_path / "b", mixset=data.mixset, log=quiet, progress=False)
    assert second.resumed_from == 1 and [r["epoch"] for r in second.records] == [2]
    a = load_checkpoint(tmp_path / "a" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")
    for key, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][key]), key
    for pid, slot in a["optimizer_state"]["state"].items():
        assert torch.equal(slot["momentum_buffer"], b["optimizer_state"]["state"][pid]["momentum_buffer"])
    assert a["scheduler_state"] == b["scheduler_state"] and a["step"] == b["step"] == 12
    timing = ("seconds", "samples_per_s")
    strip = [{k: v for k, v in r.items() if k not in timing} for r in log_records(tmp_path / "a")]
    assert [{k: v for k, v in r.items() if k not in timing} for r in log_records(tmp_path / "b")] == strip



def test_resume_refuses_other_options_and_trims_the_log(data: Data, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(smoke("smoke-baseline", epochs=2), data.plain, out, log=quiet, progress=False, stop_after_epochs=1)
    with pytest.raises(TrainError, match=r"other options \(lr: 0.05 -> 0.01\): use a new --out") as info:
        train(smoke("smoke-baseline", epochs=2, lr=0.01), data.plain, out, log=quiet, progress=False)
    assert "\n" not in str(info.value)
    with pytest.raises(TrainError, match="pixmix: False -> True"):
        train(smoke("smoke", epochs=2), data.plain, out, mixset=data.mixset, log=quiet, progress=False)
    # A record written after the last checkpoint (a run killed between the two) is dropped on resume, and so
    # is a line a kill cut in half.
    with open(out / "log.jsonl", "a") as fh:
        fh.write(json.dumps({"epoch": 2, "step": 999}) + "\n" + '{"epoch": 2, "st')
    train(smoke("smoke-baseline", epochs=2), data.plain, out, log=quiet, progress=False)
    assert [(r["epoch"], r["step"]) for r in log_records(out)] == [(1, 6), (2, 12)]


def test_a_checkpoint_from_before_a_new_option_resumes_at_its_default(data: Data, tmp_path: Path) -> None:
    """A run checkpointed by a version without ``cutmix`` (its stored config lacks the field) resumes when the
    option is at its default, and is refused when it is not."""
    from pixmix.models.checkpoints import load_checkpoint, save_checkpoint

    out = tmp_path / "run"
    train(smoke("smoke-baseline", epochs=2), data.plain, out, log=quiet, progress=False, stop_after_epochs=1)
    last = out / "checkpoints" / "last.pt"
    state = load_checkpoint(last)
    del state["config"]["cutmix"]
    save_checkpoint(last, state)
    with pytest.raises(TrainError, match=r"cutmix: None -> 0.5"):
        train(smoke("smoke-baseline", epochs=2, cutmix=0.5), data.plain, out, log=quiet, progress=False)
    summary = train(smoke("smoke-baseline", epochs=2), data.plain, out, log=quiet, progress=False)
    assert (summary.resumed_from, summary.epochs_completed) == (1, 2)


# --- schedule ------------------------------------------------------------------------------------


def test_cosine_schedule_per_step(data: Data, tmp_path: Path) -> None:
    assert cosine_factor(0, 100) == 1.0 and cosine_factor(50, 100) == pytest.approx(0.5)
    assert cosine_factor(100, 100) == pytest.approx(0.0, abs=1e-12) and cosine_factor(25, 100) == pytest.approx(
        0.5 * (1 + np.cos(np.pi / 4)))
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1, momentum=0.9, nesterov=True)
    scheduler = cosine_scheduler(optimizer, 10)
    lrs = []
    for _ in range(11):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 0.1 and lrs[5] == pytest.approx(0.05) and lrs[10] == pytest.approx(0.0, abs=1e-12)
    assert all(b < a for a, b in pairwise(lrs))
    # A run logs the lr of each epoch's last step: steps 5 and 11 of 12.
    summary = train(smoke("smoke-baseline"), data.plain, tmp_path / "out", log=quiet, progress=False)
    assert [r["lr"] for r in summary.records] == pytest.approx([0.05 * cosine_factor(s, 12) for s in (5, 11)])


# --- ImageNet recipe, pretrained weights -----------------------------------------------------------


def test_imagenet_preset_warns_without_pretrained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The ImageNet recipe (224 px crops, ImageNet normalisation) with the smoke network in place of ResNet-50.
    monkeypatch.setattr(train_module, "build_model", lambda arch, n, **kw: SmokeNet(n))
    write_imagenet(tmp_path / "inet", classes=3, per_class=4, val_per_class=2)
    for split in ("train", "val"):
        shard(ShardConfig(dataset="imagenet", data_dir=tmp_path / "inet", out=tmp_path / split, split=split,
                          image_size=64), log=quiet, progress=False)
    config = preset_config("imagenet-baseline", epochs=1, batch_size=4, workers=0, device="cpu")
    lines: list[str] = []
    with pytest.warns(UserWarning, match="no --pretrained"):
        summary = train(config, tmp_path / "train", tmp_path / "a", val_shards=tmp_path / "val", log=lines.append,
                        progress=False)
    assert any(line.startswith("WARNING: preset imagenet-baseline: no --pretrained") for line in lines)
    assert summary.final is not None and summary.final["samples"] == 12 and 0 <= summary.final["val_error"] <= 1
    # With pretrained weights (here: the first run's) there is no warning, and training starts from them.
    pretrained = str(tmp_path / "a" / "checkpoints" / "last.pt")
    lines.clear()
    train(replace(config, pretrained=pretrained, lr=1e-9), tmp_path / "train", tmp_path / "b", log=lines.append,
          progress=False)
    assert not any("WARNING" in line for line in lines) and any("pretrained weights" in line for line in lines)
    a = load_checkpoint(pretrained)["model_state"]
    b = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.pt")["model_state"]
    assert torch.allclose(a["fc.weight"], b["fc.weight"], atol=1e-6)


# --- command line --------------------------------------------------------------------------------


def test_cli_trains_and_reports_errors_in_one_line(data: Data, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(train_command, ["--preset", "smoke", "--shards", str(data.plain), "--out",
                                           str(tmp_path / "x"), "--device", "cpu"])
    assert result.exit_code == 1 and "plain shards need --mixset DIR" in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(train_command, ["--preset", "smoke-baseline", "--shards", str(data.plain), "--out",
                                           str(tmp_path / "y"), "--epochs", "1", "--batch-size", "40", "--lr", "0.02",
                                           "--seed", "3", "--device", "cpu", "--workers", "1", "--keep-every", "0",
                                           "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("trained smoke-baseline to epoch 1/1 (5 steps)")  # 200 // 40
    config = load_checkpoint(tmp_path / "y" / "checkpoints" / "last.pt")["config"]
    assert (config["batch_size"], config["lr"], config["seed"], config["workers"]) == (40, 0.02, 3, 1)
    assert [p.name for p in (tmp_path / "y" / "checkpoints").iterdir()] == ["last.pt"]  # --keep-every 0


# --- DDP under torchrun --------------------------------------------------------------------------


def _train_command() -> list[str]:
    """``pixmix train`` once the command is on the group, else the module's own entry point."""
    from pixmix.cli import main

    script = shutil.which("pixmix") or str(Path(sys.executable).parent / "pixmix")
    if "train" in main.commands and Path(script).exists():
        return [script, "train"]
    return [sys.executable, "-m", "pixmix.cli.train"]


@pytest.mark.slow
def test_two_ranks_under_torchrun_train_and_resume(data: Data, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    for epochs in (1, 2):  # the second run resumes the first and extends it
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--no-python", *_train_command(), "--preset", "smoke", "--shards", str(data.pixmix), "--out", str(out),
               "--epochs", str(epochs), "--device", "cpu", "--quiet"]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.count(f"trained smoke to epoch {epochs}/{epochs}") == 1  # rank 0 only
    records = log_records(out)
    assert [r["epoch"] for r in records] == [1, 2] and [r["view"] for r in records] == [0, 1]
    for r in records:
        # 200 samples, global batch 32 = 2 ranks x 16: 6 batches on each rank.
        assert r["world_size"] == 2 and r["batches_per_rank"] == [6, 6] and r["samples"] == 192
    assert [r["step"] for r in records] == [6, 12]
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["epoch"] == 2 and state["config"]["epochs"] == 2
    model, _ = model_from_checkpoint(out / "checkpoints" / "last.pt")
    assert not any(k.startswith("module.") for k in state["model_state"]) and isinstance(model, SmokeNet)


# --- placement: torchrun, SLURM ------------------------------------------------------------------

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")


def _launcher_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_slurm_placement_without_torchrun(monkeypatch: pytest.MonkeyPatch) -> None:
    from pixmix.train.context import open_context

    # One SLURM task: rank 0 of 1 from SLURM's variables, no process group.
    _launcher_env(monkeypatch, SLURM_PROCID="0", SLURM_NTASKS="1", SLURM_LOCALID="0")
    ctx = open_context("cpu")
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.owns_group, ctx.device.type) == (0, 1, 0, False, "cpu")
    # Task 1 of 2 (srun without torchrun): the group is started with SLURM's rank and world size.
    started: list[tuple] = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group",
                        lambda backend, **kw: started.append((backend, kw["rank"], kw["world_size"])))
    _launcher_env(monkeypatch, SLURM_PROCID="1", SLURM_NTASKS="2", SLURM_LOCALID="1")
    ctx = open_context("cpu")
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.owns_group) == (1, 2, 1, True)
    assert started == [("gloo", 1, 2)]
    # torchrun's variables win over SLURM's.
    _launcher_env(monkeypatch, RANK="0", WORLD_SIZE="3", SLURM_PROCID="1", SLURM_NTASKS="2")
    assert (open_context("cpu").rank, open_context("cpu").world_size) == (0, 3)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_two_slurm_tasks_train_without_torchrun(data: Data, tmp_path: Path) -> None:
    out = tmp_path / "srun"
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parents[1]), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), SLURM_NTASKS="2")
    cmd = [*_train_command(), "--preset", "smoke", "--shards", str(data.pixmix), "--out", str(out), "--epochs", "1",
           "--device", "cpu", "--quiet"]
    tasks = [subprocess.Popen(cmd, env={**env, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    outputs = [task.communicate(timeout=180) for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    assert "trained smoke to epoch 1/1" in outputs[0][0] and outputs[1][0] == ""  # rank 0 alone prints
    (record,) = log_records(out)
    assert record["world_size"] == 2 and record["batches_per_rank"] == [6, 6]


# --- command line: user errors in one line, bugs with their traceback -------------------------------


def test_cli_bad_option_is_one_line_and_bugs_propagate(data: Data, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    base = ["--preset", "smoke-baseline", "--shards", str(data.plain), "--out", str(tmp_path / "x"),
            "--device", "cpu", "--quiet"]
    result = runner.invoke(train_command, [*base, "--lr", "0"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == ["Error: --lr must be a finite number > 0, got 0.0"]
    if not torch.cuda.is_available():
        result = runner.invoke(train_command, [*base[:-3], "--device", "cuda", "--quiet"])
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
        assert "--device cuda: CUDA is not available here" in result.output

    def broken(*args, **kwargs):
        raise KeyError("a bug in the library")

    monkeypatch.setattr(train_module, "train", broken)
    result = runner.invoke(train_command, base)
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)
    assert not (tmp_path / "x").exists()
