"""Iterative PixMix (Table 5's "Iterative" row): the pure-torch FVis renderer and the rolling pool of
feature visualisations of the network being trained."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from tiny_datasets import write_cifar10, write_mixset
from torch import nn

import mixset.sources.fvis as fv
from mixset.shard.sharder import ShardConfig, shard
from pixmix.augment.params import sample_params
from pixmix.cli.train import train as train_command
from pixmix.models import fvis_render as fr
from pixmix.models import load_checkpoint
from pixmix.train.iterative import (
    IterativeOptions,
    IterativePool,
    choose_units,
    early_layers,
    refresh_due,
    render_pictures,
)
from pixmix.train.trainer import TrainError, preset_config, train
from pixmix.utils.errors import PixmixError


@pytest.mark.parametrize("size", [32, 33])
def test_ported_transforms_equal_lucents_bit_for_bit(size):
    """The pure-torch port of Lucent's standard_transforms gives the very bytes Lucent's closures give
    (kornia 0.4.1), for 25 consecutive draws of one seeded stream, and leaves the global numpy RNG alone."""
    np.random.seed(11)
    before = np.random.get_state()[1].copy()
    images = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(size))
    ours = fr._LucentTransforms(1234, torch.device("cpu"))
    ref = fv._LucentReferenceTransforms(1234, torch.device("cpu"))
    for _ in range(25):
        a, b = ours(images), ref(images)
        assert a.shape == b.shape
        assert torch.equal(a, b)
    assert np.array_equal(np.random.get_state()[1], before)


def test_renderer_is_reexported_by_mixset():
    assert fv.render_units is fr.render_units and fv.truncated_trunk is fr.truncated_trunk


# --- Iterative PixMix: the pool --------------------------------------------------------------------


def tiny_net(seed: int = 0) -> nn.Module:
    """conv(3->6) BN ReLU conv(6->6) BN ReLU pool fc: BatchNorm buffers to watch, two early conv layers."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
                             nn.Conv2d(6, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))


OPTIONS = IterativeOptions(every=2, pool=6, steps=3, units=4, size=16)


def new_pool(seed: int = 0, *, static: bool = False, rank: int = 0, world_size: int = 1,
             options: IterativeOptions = OPTIONS, start_step: int = 0) -> IterativePool:
    return IterativePool(options, seed=seed, image_size=12, start_step=start_step, static=static, rank=rank,
                         world_size=world_size)


@pytest.mark.parametrize(("static", "start", "expected"), [
    (False, 0, [0, 3, 6, 9]), (True, 0, [3, 6, 9]), (False, 4, [4, 7, 10]), (True, 4, [7, 10])])
def test_refresh_schedule(static, start, expected):
    assert [s for s in range(11) if refresh_due(s, start_step=start, every=3, static=static)] == expected


def test_pool_refreshes_on_schedule_and_rolls_over_the_oldest():
    model = tiny_net()
    pool = new_pool()
    done = [step for step in range(5) if pool.maybe_refresh(model, step)]
    assert done == [0, 2, 4] and pool.refreshes == 3 and pool.rendered == 12
    assert pool.pictures is not None and pool.pictures.shape == (6, 3, 12, 12) and pool.pictures.dtype == torch.uint8
    # capacity 6: refresh 0 filled 0..3, refresh 2 filled 4, 5 and overwrote 0, 1, refresh 4 overwrote 2..5
    first, second, third = (render_pictures(model, choose_units(early_layers(model), 4, 0, s), OPTIONS, seed=0,
                                            step=s, image_size=12, device=torch.device("cpu")) for s in (0, 2, 4))
    assert torch.equal(pool.pictures, torch.cat([second[2:], third]))
    assert pool.oldest == 0 and not torch.equal(first[:2], second[:2])
    assert pool.record() == {"fvis_refreshes": 3, "fvis_rendered": 12, "fvis_pool": 6}


def test_units_are_seeded_and_from_the_first_convs():
    model = tiny_net()
    assert early_layers(model) == [("0", 6), ("3", 6)]
    assert early_layers(model, ("3",)) == [("3", 6)]
    with pytest.raises(PixmixError, match="no Conv2d"):
        early_layers(model, ("1",))
    a = choose_units(early_layers(model), 12, seed=5, step=7)
    assert sorted(a) == sorted((layer, c) for layer in ("0", "3") for c in range(6))  # a permutation
    assert a == choose_units(early_layers(model), 12, seed=5, step=7)
    assert a != choose_units(early_layers(model), 12, seed=5, step=8)
    assert a != choose_units(early_layers(model), 12, seed=6, step=7)


def test_pictures_are_the_renderers_fvis_of_the_unit_resized():
    """Known answer: each pool picture is render_units of that unit on its layer's trunk, with the documented
    seed, resized to the recipe's size and rounded (so it does not depend on which rank renders it)."""
    model = tiny_net()
    units = [("3", 4), ("0", 1)]
    ours = render_pictures(model, units, OPTIONS, seed=9, step=6, image_size=12, device=torch.device("cpu"))
    for row, (layer, channel) in zip(ours, units):
        ref = fr.render_units(fr.truncated_trunk(tiny_net(), layer), [channel], size=16, steps=3,
                              seed=fr.derive_seed(9, "iterative", 6, layer))
        ref = F.interpolate(ref, size=(12, 12), mode="bilinear", antialias=True)
        assert torch.equal(row, (ref[0].clamp(0, 1) * 255).round().to(torch.uint8))


def test_same_seed_same_pool_bytes():
    pools = []
    for seed in (0, 0, 1):
        pool = new_pool(seed)
        for step in range(3):
            pool.maybe_refresh(tiny_net(), step)
        pools.append(pool.pictures)
    assert torch.equal(pools[0], pools[1])
    assert not torch.equal(pools[0], pools[2])


def test_pictures_change_as_the_model_trains():
    """The pictures follow the weights: after 30 SGD steps a unit's render moves as far from the untrained
    network's render as the optimisation moved either from their common random start (measured: 9.5 vs 8.0
    grey levels after 10 render steps); the same weights give the same bytes."""
    model = tiny_net()
    units = [("0", c) for c in range(4)]
    options = replace(OPTIONS, steps=10)
    kw = dict(seed=0, step=0, image_size=12, device=torch.device("cpu"))
    start = render_pictures(model, units, replace(options, steps=0), **kw).float()
    before = render_pictures(model, units, options, **kw)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    data = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for _ in range(30):
        optimizer.zero_grad()
        F.cross_entropy(model(data), torch.arange(16) % 3).backward()
        optimizer.step()
    after = render_pictures(model, units, options, **kw)
    moved = (before.float() - start).abs().mean()
    assert moved > 4  # the render is not its random start
    assert (before.float() - after.float()).abs().mean() > 0.5 * moved
    assert torch.equal(after, render_pictures(model, units, options, **kw))


def test_rendering_never_touches_the_training_model():
    model = tiny_net().train()
    F.cross_entropy(model(torch.rand(4, 3, 16, 16)), torch.tensor([0, 1, 2, 0])).backward()
    state = {k: v.clone() for k, v in model.state_dict().items()}  # weights and BN running stats
    grads = [p.grad.clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    new_pool().maybe_refresh(model, 0)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert all(m.training for m in model.modules()) and all(p.requires_grad for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_partners_are_seeded_draws_from_the_pool():
    pool = new_pool()
    assert pool.partners(5, 0) is None  # before the first refresh: the loader's static pictures
    pool.insert(torch.arange(4, dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 3, 12, 12).contiguous())
    drawn = pool.partners(64, 3)
    assert drawn.shape == (64, 3, 12, 12)
    assert set(drawn[:, 0, 0, 0].tolist()) == {0, 1, 2, 3}
    assert torch.equal(drawn, pool.partners(64, 3)) and not torch.equal(drawn, pool.partners(64, 4))
    other_rank = new_pool(rank=1)
    other_rank.pictures = pool.pictures
    assert not torch.equal(drawn, other_rank.partners(64, 3))


def test_finish_batch_mixes_with_the_pictures_it_is_handed():
    from pixmix.augment.recipes import get_recipe
    from pixmix.data.loader import Batch, finish_batch

    recipe = get_recipe("cifar")
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 32, 32), generator=gen, dtype=torch.uint8)
    own = torch.randint(0, 256, (4, 3, 32, 32), generator=gen, dtype=torch.uint8)
    params = sample_params(recipe.pixmix().config, 4, gen)
    batch = Batch(images, torch.zeros(4, dtype=torch.int64), ["a", "b", "c", "d"], torch.zeros(4, dtype=torch.bool),
                  mixing=own, params=params)
    same, _ = finish_batch(batch, "cpu", recipe, mixing=own.clone())
    assert torch.equal(same, finish_batch(batch, "cpu", recipe)[0])
    other, _ = finish_batch(batch, "cpu", recipe, mixing=255 - own)
    assert not torch.equal(other, same)


def _rank_main(rank: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        pool = new_pool(3, rank=rank, world_size=2, options=replace(OPTIONS, units=5))
        pool.maybe_refresh(tiny_net(), 0)
        torch.save(pool.pictures, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_render_their_shares_and_hold_the_same_pool(tmp_path):
    """Two gloo processes (5 units: 3 on rank 0, 2 on rank 1) end with one pool, the single process's."""
    import torch.multiprocessing as mp

    mp.spawn(_rank_main, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert rank0.shape == (5, 3, 12, 12) and torch.equal(rank0, rank1)
    alone = new_pool(3, options=replace(OPTIONS, units=5))
    alone.maybe_refresh(tiny_net(), 0)
    # each unit's picture depends on its seed and weights only; batch composition may round differently
    assert (alone.pictures.int() - rank0.int()).abs().max() <= 1


# --- pixmix train --iterative-fvis-every ---------------------------------------------------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    """40 CIFAR-10 training images as plain shards, pre-generated PixMix views and a 6-picture mixing set."""
    root = tmp_path_factory.mktemp("iterative-data")
    write_cifar10(root / "cifar", per_batch=8)
    mixset = write_mixset(root / "mixset", count=6, size=40)
    common = {"dataset": "cifar10", "data_dir": root / "cifar", "shard_samples": 20}
    shard(ShardConfig(out=root / "plain", **common), log=quiet, progress=False)
    shard(ShardConfig(out=root / "views", pixmix=True, mixset=mixset, views=1, **common), log=quiet, progress=False)
    return {"plain": root / "plain", "views": root / "views", "mixset": mixset}


def quiet(_: str) -> None:
    pass


ITERATIVE_FLAGS = ["--iterative-fvis-every", "2", "--iterative-fvis-steps", "2", "--iterative-fvis-units", "4",
                   "--iterative-fvis-pool", "6"]


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_train_cli_iterative_refreshes_and_resumes_identically(shards, tmp_path):
    """5 steps an epoch (40 images, batch 8): refreshes before steps 0, 2, 4, 6, 8; the log says so; a run
    stopped after epoch 1 and resumed ends with the uninterrupted run's weights and pool."""
    args = ["--preset", "smoke", "--shards", str(shards["plain"]), "--epochs", "2", "--batch-size", "8",
            "--device", "cpu", "--workers", "0", "--seed", "4", "--quiet", *ITERATIVE_FLAGS]
    result = CliRunner().invoke(train_command, [*args, "--out", str(tmp_path / "full")])
    assert result.exit_code == 0, result.output
    log = records(tmp_path / "full")
    assert [(r["step"], r["fvis_refreshes"], r["fvis_rendered"], r["fvis_pool"]) for r in log] == [
        (5, 3, 12, 6), (10, 5, 20, 6)]
    config = preset_config("smoke", epochs=2, batch_size=8, device="cpu", workers=0, seed=4, iterative_fvis_every=2,
                           iterative_fvis_steps=2, iterative_fvis_units=4, iterative_fvis_pool=6)
    train(config, shards["plain"], tmp_path / "resumed", log=quiet, progress=False, stop_after_epochs=1)
    train(config, shards["plain"], tmp_path / "resumed", log=quiet, progress=False)
    timing = ("seconds", "samples_per_s")
    assert ([{k: v for k, v in r.items() if k not in timing} for r in records(tmp_path / "resumed")]
            == [{k: v for k, v in r.items() if k not in timing} for r in log])
    full, resumed = (load_checkpoint(tmp_path / run / "checkpoints" / "last.pt") for run in ("full", "resumed"))
    assert all(torch.equal(v, resumed["model_state"][k]) for k, v in full["model_state"].items())
    pools = [torch.load(tmp_path / run / "checkpoints" / "iterative-pool.pt") for run in ("full", "resumed")]
    assert torch.equal(pools[0]["pictures"], pools[1]["pictures"]) and pools[0]["step"] == 10


def test_train_iterative_with_a_static_set_first(shards, tmp_path):
    """With --mixset the static pictures serve until the first refresh: refreshes before steps 2 and 4."""
    config = preset_config("smoke", epochs=1, batch_size=8, device="cpu", workers=0, iterative_fvis_every=2,
                           iterative_fvis_steps=2, iterative_fvis_units=3, iterative_fvis_pool=6)
    summary = train(config, shards["plain"], tmp_path / "run", mixset=shards["mixset"], log=quiet, progress=False)
    assert (summary.final["fvis_refreshes"], summary.final["fvis_rendered"]) == (2, 6)


def test_iterative_options_are_checked_once(shards, tmp_path):
    with pytest.raises(TrainError, match="needs a PixMix preset") as info:
        preset_config("smoke-baseline", iterative_fvis_every=2)
    assert info.value.param == "iterative_fvis_every"
    with pytest.raises(TrainError, match="--iterative-fvis-units must be an integer >= 1"):
        preset_config("smoke", iterative_fvis_every=2, iterative_fvis_units=0)
    with pytest.raises(TrainError, match="partners augmented"):
        preset_config("smoke", iterative_fvis_every=2, partners="augmented")
    views = preset_config("smoke", iterative_fvis_every=2)
    with pytest.raises(TrainError, match="pass plain shards"):
        train(views, shards["views"], tmp_path / "a", log=quiet, progress=False)
    late = preset_config("smoke", iterative_fvis_every=2, iterative_fvis_start_epoch=1)
    with pytest.raises(TrainError, match="pass --mixset") as info:
        train(late, shards["plain"], tmp_path / "b", log=quiet, progress=False)
    assert info.value.param == "iterative_fvis_start_epoch"
    result = CliRunner().invoke(train_command, ["--preset", "smoke-baseline", "--shards", str(shards["plain"]),
                                                "--out", str(tmp_path / "c"), "--iterative-fvis-every", "3"])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "--iterative-fvis-every needs a PixMix preset" in result.output
