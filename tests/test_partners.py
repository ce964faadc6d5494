"""The paper's Table 5 strategies: mix with augmented inputs only, or with the mixing set only."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from tiny_datasets import write_cifar10

from mixset.shard.sharder import ShardConfig, ShardError, shard
from pixmix import PixMix, apply_batch, sample_params
from pixmix.augment.config import make_config
from pixmix.data.shards.shard_set import ShardSet
from pixmix.data.shards.tar import iter_shard


def test_partners_fix_the_partner_and_keep_every_other_draw() -> None:
    draws = {p: sample_params(make_config(4, 3.0, 3.0, "all", p), 500, torch.Generator().manual_seed(1))
             for p in ("both", "augmented", "mixing")}
    both = draws["both"]
    assert 0.4 < both.partner_augmented.float().mean() < 0.6
    assert bool(draws["augmented"].partner_augmented.all()) and not bool(draws["mixing"].partner_augmented.any())
    for p in ("augmented", "mixing"):
        for f in fields(both):
            if f.name != "partner_augmented":
                assert torch.equal(getattr(draws[p], f.name), getattr(both, f.name)), (p, f.name)
    # Only the start slot of "mixing" ever needs an augmented image.
    assert not bool(draws["mixing"].slot_used()[:, 1:].any())


def test_augmented_partners_never_look_at_the_mixing_pictures() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8, generator=g)
    pics_a = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8, generator=g)
    pics_b = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8, generator=g)
    config = make_config(4, 3.0, 3.0, "all", "augmented")
    params = sample_params(config, 16, torch.Generator().manual_seed(2))
    out_a = apply_batch(images, pics_a, params, config)
    assert torch.equal(out_a, apply_batch(images, pics_b, params, config))
    mixing = make_config(4, 3.0, 3.0, "all", "mixing")
    p_mix = sample_params(mixing, 16, torch.Generator().manual_seed(2))
    assert not torch.equal(apply_batch(images, pics_a, p_mix, mixing), apply_batch(images, pics_b, p_mix, mixing))


def test_partners_are_validated_and_shown() -> None:
    with pytest.raises(ValueError, match="partners must be one of"):
        make_config(4, 3.0, 3.0, "all", "neither")
    assert "partners='mixing'" in repr(PixMix(partners="mixing")) and "partners" not in repr(PixMix())


def test_shard_views_with_augmented_partners_need_no_mixing_set(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "c", per_batch=2)
    with pytest.raises(ShardError, match="unless --partners augmented"):
        ShardConfig(dataset="cifar10", data_dir=tmp_path / "c", out=tmp_path / "x", pixmix=True)
    shard(ShardConfig(dataset="cifar10", data_dir=tmp_path / "c", out=tmp_path / "o", pixmix=True,
                      partners="augmented"), log=lambda _: None, progress=False)
    s = ShardSet.load(tmp_path / "o")
    assert s.config["recipe"]["partners"] == "augmented" and s.samples == 10
    metas = [json.loads(x.fields["json"]) for rec in s.shards for x in iter_shard(s.path(rec))]
    assert all(m["mixing_picture"] is None for m in metas)


def test_online_training_with_augmented_partners_needs_no_mixing_set(tmp_path: Path) -> None:
    from pixmix.data.loader import ShardLoader, finish_batch
    from pixmix.train.trainer import TrainError, preset_config, train

    write_cifar10(tmp_path / "c", per_batch=12)  # 60 training images
    shard(ShardConfig(dataset="cifar10", data_dir=tmp_path / "c", out=tmp_path / "plain"), log=lambda _: None,
          progress=False)
    config = preset_config("smoke", epochs=1, batch_size=16, workers=0, partners="augmented")
    loader = ShardLoader(tmp_path / "plain", batch_size=8, rank=0, world_size=1, num_workers=0, mode="online",
                         recipe=config.training_recipe)
    batch = next(iter(loader))
    assert torch.equal(batch.mixing, batch.images) and bool(batch.params.partner_augmented.all())
    images, _ = finish_batch(batch, "cpu", config.training_recipe)
    assert images.shape == (8, 3, 32, 32) and torch.isfinite(images).all()
    summary = train(config, tmp_path / "plain", tmp_path / "run", log=lambda _: None, progress=False)
    assert summary.epochs_completed == 1 and summary.final["samples"] == 48  # 60 // 16 batches of 16
    with pytest.raises(TrainError, match="--partners mixing needs a PixMix preset"):
        preset_config("smoke-baseline", partners="mixing")
    with pytest.raises(TrainError, match="plain shards need --mixset"):
        train(preset_config("smoke", workers=0, partners="mixing"), tmp_path / "plain", tmp_path / "run2",
              log=lambda _: None, progress=False)


def test_online_pixmix_hyper_parameters_reach_the_recipe_and_are_checked() -> None:
    from pixmix.train.trainer import TrainError, preset_config

    recipe = preset_config("smoke", k=2, beta=5.0, severity=2.0, partners="mixing").training_recipe
    assert (recipe.k, recipe.beta, recipe.severity, recipe.partners) == (2, 5.0, 2.0, "mixing")
    assert preset_config("smoke").training_recipe == preset_config("smoke").training_recipe  # defaults: the recipe's
    with pytest.raises(TrainError, match="--k needs a PixMix preset"):
        preset_config("smoke-baseline", k=2)
    with pytest.raises(TrainError, match="PixMix options: beta"):
        preset_config("smoke", beta=-1.0)
