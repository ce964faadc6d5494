"""pixmix.data.loader: epoch planning, streaming batches from shards (views and online PixMix), faults, DDP."""

from __future__ import annotations

import json
import logging
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import no_global_rng
from PIL import Image
from torchvision.io import ImageReadMode, decode_image

from pixmix.augment.params import PixMixParams, sample_params
from pixmix.augment.pixmix import apply_batch
from pixmix.augment.recipes import CIFAR, IMAGENET
from pixmix.data.loader import (
    LoaderOptions,
    Piece,
    ShardLoader,
    batches_per_rank,
    default_rank_world,
    epoch_assignment,
    finish_batch,
)
from pixmix.data.shards.mixing_set import MixingShards
from pixmix.data.shards.shard_set import SHARDS_FORMAT, SHARDS_VERSION, ShardSet
from pixmix.data.shards.tar import Sample, iter_shard, to_bytes, write_shard
from pixmix.utils.errors import PixmixError
from pixmix.utils.seeding import generator_for

COUNTS = (7, 13, 5, 20)  # 45 samples in uneven shards
N_CLASSES = 10
KEY = re.compile(r"^v(\d+)s(\d+)i(\d+)$")
# torchvision 0.29 deprecates its image decoders (in favour of TorchCodec) on every call.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


# --- test data -------------------------------------------------------------------------------------


def picture(seed: int, height: int, width: int) -> Image.Image:
    data = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(data, mode="RGB")


def make_set(folder: Path, counts=COUNTS, *, kind: str = "plain", views: int = 1, sizes=((32, 32),),
             field: str = "png") -> Path:
    """A shard set; sample i of shard s of view v has key ``v{v}s{s}i{i}`` and label (7s + i) % 10."""
    shards = []
    for view in range(views):
        for s, count in enumerate(counts):
            samples = []
            for i in range(count):
                h, w = sizes[(s + i) % len(sizes)]
                image = to_bytes(picture(1000 * view + 100 * s + i, h, w), field)
                meta = json.dumps({"view": view}).encode()
                samples.append(Sample(f"v{view}s{s}i{i}", {field: image, "cls": str((7 * s + i) % N_CLASSES).encode(),
                                                          "json": meta}))
            info = write_shard(folder / "shards" / f"v{view}-{s:03d}.tar", samples, root=folder)
            shards.append({**info.to_json(), "view": view})
    manifest = {"format": SHARDS_FORMAT, "version": SHARDS_VERSION, "kind": kind, "views": views,
                "classes": [f"c{i}" for i in range(N_CLASSES)], "image_field": field, "shards": shards,
                "config": {}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def make_mixset(folder: Path, n: int = 6) -> Path:
    samples = [Sample(f"m{i}", {"png": to_bytes(picture(5000 + i, 40 + 4 * i, 48), "png"), "json": b"{}"})
               for i in range(n)]
    info = write_shard(folder / "shards" / "00000.tar", samples, root=folder)
    (folder / "manifest.json").write_text(json.dumps({"format": "pixmix-mixset", "version": 1,
                                                      "shards": [info.to_json()]}))
    return folder


def epoch_batches(loader: ShardLoader, epoch: int) -> list:
    loader.set_epoch(epoch)
    return list(loader)


def keys_of(batches) -> list[str]:
    return [k for b in batches for k in b.keys]


@pytest.fixture(scope="module")
def plain_set(tmp_path_factory) -> Path:
    return make_set(tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def mixed_size_set(tmp_path_factory) -> Path:
    return make_set(tmp_path_factory.mktemp("mixed"), sizes=((32, 32), (36, 40), (48, 32)), field="jpg")


@pytest.fixture(scope="module")
def mixset(tmp_path_factory) -> Path:
    return make_mixset(tmp_path_factory.mktemp("mixset"))


# --- planning --------------------------------------------------------------------------------------


def flatten(plan) -> list[tuple[int, int, bool]]:
    return [(p.shard, i, p.repeat)
            for ranks in plan for pieces in ranks for p in pieces for i in range(p.start, p.stop)]


def random_layouts(n: int):
    rng = random.Random(1234)
    for _ in range(n):
        counts = [rng.choice([0, 1, 3, 7, 13, 50, 101]) for _ in range(rng.randint(1, 9))]
        world, batch, workers = rng.randint(1, 4), rng.randint(1, 8), rng.randint(1, 3)
        if sum(counts) >= world * batch:
            yield counts, world, batch, workers, rng.randrange(1000), rng.randrange(20)


def test_assignment_gives_every_rank_the_same_batches_disjoint_and_nearly_complete() -> None:
    layouts = list(random_layouts(300))
    assert len(layouts) > 200
    for counts, world, batch, workers, seed, epoch in layouts:
        plan = epoch_assignment(counts, seed=seed, epoch=epoch, world_size=world, batch_size=batch,
                                num_workers=workers)
        total, n = sum(counts), sum(counts) // (world * batch)
        assert len(plan) == world and all(len(r) == workers for r in plan)
        for ranks in plan:
            per_worker = [sum(p.stop - p.start for p in pieces) for pieces in ranks]
            assert sum(per_worker) == n * batch  # identical on every rank
            assert all(c % batch == 0 for c in per_worker) and max(per_worker) - min(per_worker) <= batch
            for p in (p for pieces in ranks for p in pieces):
                assert 0 <= p.start < p.stop <= counts[p.shard] and not p.repeat
        samples = flatten(plan)
        assert len(set(samples)) == len(samples) == n * world * batch  # disjoint
        assert total - len(samples) < world * batch  # covers all but < world * batch


def test_assignment_without_drop_last_pads_by_wrapping_around() -> None:
    for counts, world, batch, workers, seed, epoch in random_layouts(200):
        plan = epoch_assignment(counts, seed=seed, epoch=epoch, world_size=world, batch_size=batch,
                                num_workers=workers, drop_last=False)
        total, n = sum(counts), -(-sum(counts) // (world * batch))
        for ranks in plan:
            assert sum(p.stop - p.start for pieces in ranks for p in pieces) == n * batch
        samples = flatten(plan)
        fresh = [(s, i) for s, i, repeat in samples if not repeat]
        assert sorted(fresh) == sorted((s, i) for s, c in enumerate(counts) for i in range(c))  # each once
        assert len(samples) - len(fresh) == n * world * batch - total  # only the padding repeats


def test_assignment_is_pure_and_changes_with_the_epoch() -> None:
    counts = [7, 13, 5, 20, 11, 9]
    args = {"seed": 3, "world_size": 2, "batch_size": 4, "num_workers": 2}
    with no_global_rng():
        first = epoch_assignment(counts, epoch=0, **args)
        again = epoch_assignment(counts, epoch=0, **args)
    assert first == again
    orders = [flatten(epoch_assignment(counts, epoch=e, **args)) for e in range(6)]
    assert len({tuple(o) for o in orders}) == 6  # a new shard order / offset each epoch
    all_samples = {(s, i) for s, c in enumerate(counts) for i in range(c)}
    skipped = [frozenset(all_samples - {(s, i) for s, i, _ in o}) for o in orders]
    assert all(len(s) == 65 - 64 for s in skipped) and len(set(skipped)) > 1  # the skipped sample rotates
    assert epoch_assignment(counts, epoch=0, **{**args, "seed": 4}) != first


def test_assignment_without_shuffle_keeps_the_listed_order() -> None:
    plan = epoch_assignment([3, 4, 2], seed=9, epoch=5, world_size=1, batch_size=2, num_workers=1,
                            drop_last=False, shuffle=False)
    assert plan == [[[Piece(0, 0, 3), Piece(1, 0, 4), Piece(2, 0, 2), Piece(0, 0, 1, repeat=True)]]]
    assert batches_per_rank(9, world_size=1, batch_size=2, drop_last=False) == 5


def test_assignment_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="fewer than world_size \\* batch_size = 8"):
        epoch_assignment([3, 4], seed=0, epoch=0, world_size=2, batch_size=4)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        epoch_assignment([3, 4], seed=0, epoch=0, world_size=1, batch_size=0)
    with pytest.raises(ValueError, match=r"counts\[1\]"):
        epoch_assignment([3, -1], seed=0, epoch=0, world_size=1, batch_size=1)


def test_params_cat_concatenates_in_order() -> None:
    a = sample_params(CIFAR.pixmix().config, 2, generator_for(0, 1))
    b = sample_params(CIFAR.pixmix().config, 3, generator_for(0, 2))
    both = PixMixParams.cat([a, b])
    assert both.batch_size == 5 and torch.equal(both.slice(2, 5).a, b.a) and torch.equal(both.select(1).op, a.op[1:])
    with pytest.raises(ValueError, match="at least one"):
        PixMixParams.cat([])


# --- streaming: views --------------------------------------------------------------------------------


def test_an_epoch_reads_the_same_samples_whatever_the_number_of_workers(plain_set) -> None:
    all_keys = [f"v0s{s}i{i}" for s, c in enumerate(COUNTS) for i in range(c)]
    runs = {}
    for workers in (0, 1, 2):
        loader = ShardLoader(plain_set, batch_size=5, seed=7, rank=0, world_size=1, num_workers=workers, recipe="cifar")
        with no_global_rng():
            runs[workers] = epoch_batches(loader, 0)
        assert len(runs[workers]) == len(loader) == 9 and all(len(b) == 5 for b in runs[workers])
        assert sorted(keys_of(runs[workers])) == sorted(all_keys)
        assert loader.stats.samples == 45 and loader.stats.batches == 9 and loader.stats.errors == []
    # One worker in the main process or in a worker process: the very same batches.
    assert [b.keys for b in runs[0]] == [b.keys for b in runs[1]]
    assert all(torch.equal(x.images, y.images) for x, y in zip(runs[0], runs[1]))
    # Two workers: reproducible for the same (seed, epoch), a new order next epoch.
    loader = ShardLoader(plain_set, batch_size=5, seed=7, rank=0, world_size=1, num_workers=2, recipe="cifar")
    assert [b.keys for b in epoch_batches(loader, 0)] == [b.keys for b in runs[2]]
    epoch1 = keys_of(epoch_batches(loader, 1))
    assert sorted(epoch1) == sorted(all_keys) and epoch1 != keys_of(runs[2])


def test_views_batches_hold_the_stored_pixels_and_labels(plain_set) -> None:
    loader = ShardLoader(plain_set, batch_size=5, seed=7, rank=0, world_size=1, num_workers=0, recipe="cifar")
    batch = next(iter(loader))
    assert batch.images.dtype == torch.uint8 and batch.images.shape == (5, 3, 32, 32)
    assert batch.labels.dtype == torch.int64 and batch.mixing is None and batch.params is None
    for row, key in enumerate(batch.keys):
        _, s, i = map(int, KEY.match(key).groups())
        expected = torch.from_numpy(np.array(picture(100 * s + i, 32, 32))).permute(2, 0, 1)
        assert torch.equal(batch.images[row], expected)
        assert int(batch.labels[row]) == (7 * s + i) % N_CLASSES


def test_ranks_get_equal_disjoint_batches_whatever_the_number_of_workers(plain_set) -> None:
    per_workers = {}
    for workers in (0, 2):
        ranks = [epoch_batches(ShardLoader(plain_set, batch_size=4, seed=1, rank=r, world_size=2,
                                           num_workers=workers, recipe="cifar"), 3) for r in range(2)]
        assert [len(r) for r in ranks] == [5, 5]  # 45 // 8
        k0, k1 = set(keys_of(ranks[0])), set(keys_of(ranks[1]))
        assert len(k0) == len(k1) == 20 and not k0 & k1
        per_workers[workers] = (k0, k1)
    assert per_workers[0] == per_workers[2]  # a rank's samples do not depend on its workers


def test_views_mode_reads_view_epoch_mod_views(tmp_path) -> None:
    folder = make_set(tmp_path / "pm", counts=(4, 6), kind="pixmix", views=2)
    loader = ShardLoader(folder, batch_size=5, num_workers=0, recipe="cifar")
    assert loader.mode == "views"
    for epoch in range(4):
        keys = keys_of(epoch_batches(loader, epoch))
        assert len(keys) == 10 and {k[:2] for k in keys} == {f"v{epoch % 2}"}


def test_views_of_different_sizes_need_online_mode_or_a_transform(mixed_size_set) -> None:
    loader = ShardLoader(mixed_size_set, batch_size=5, num_workers=0, recipe="cifar")
    with pytest.raises(ValueError, match="different sizes.*mode='online'"):
        list(loader)
    from pixmix.augment.transforms import CenterCrop, SeededCompose

    fixed = ShardLoader(mixed_size_set, batch_size=5, num_workers=0, recipe="cifar",
                        transform=SeededCompose([CenterCrop(24)]))
    batches = list(fixed)
    assert len(batches) == 9 and all(b.images.shape == (5, 3, 24, 24) for b in batches)


def test_evaluation_reads_in_listed_order_and_marks_the_padding(plain_set) -> None:
    loader = ShardLoader(plain_set, batch_size=4, num_workers=2, recipe="cifar", shuffle=False, drop_last=False)
    batches = list(loader)
    assert len(batches) == len(loader) == 12  # ceil(45 / 4)
    keys = keys_of(batches)
    listed = [f"v0s{s}i{i}" for s, c in enumerate(COUNTS) for i in range(c)]
    # Two workers take batches 0-5 and 6-11; the DataLoader alternates between them.
    by_worker = [batches[0::2], batches[1::2]]
    assert keys_of(by_worker[0]) + keys_of(by_worker[1]) == listed + listed[:3]
    repeat = torch.cat([b.repeat for b in by_worker[0] + by_worker[1]])
    assert repeat.tolist() == [False] * 45 + [True] * 3
    assert sorted(k for b in batches for k, r in zip(b.keys, b.repeat.tolist()) if not r) == sorted(listed)
    assert len(keys) == 48


def test_rank_and_world_size_come_from_the_environment(plain_set, monkeypatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert default_rank_world() == (1, 3)
    loader = ShardLoader(plain_set, batch_size=2, num_workers=0, recipe="cifar")
    assert (loader.stream.rank, loader.stream.world_size, len(loader)) == (1, 3, 7)
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(ValueError, match="rank must be an integer in \\[0, 3\\)"):
        ShardLoader(plain_set, batch_size=2, num_workers=0)


def test_loader_options_are_validated_once_and_name_the_parameter(plain_set, mixset, tmp_path) -> None:
    bad = [
        ({"batch_size": 0}, "batch_size", "batch_size must be an integer >= 1, got 0"),
        ({"num_workers": -1}, "num_workers", "num_workers must be an integer >= 0, got -1"),
        ({"seed": -1}, "seed", "seed must be an integer >= 0, got -1"),
        ({"shuffle_buffer": 0}, "shuffle_buffer", "shuffle_buffer must be an integer >= 1, got 0"),
        ({"world_size": 0}, "world_size", "world_size must be an integer >= 1, got 0"),
        ({"rank": 2, "world_size": 2}, "rank", "rank must be an integer in [0, 2), got 2"),
        ({"mode": "both"}, "mode", "mode must be one of ('auto', 'views', 'online'), got 'both'"),
        ({"recipe": "svhn"}, "recipe", "recipe must be one of ['cifar', 'imagenet'], got 'svhn'"),
        ({"mode": "online"}, "mixset", "mode 'online' needs a mixset"),
        ({"mode": "online", "mixset": []}, "mixset", "mixset is empty"),
        ({"mode": "online", "mixset": mixset, "transform": CIFAR.test_transform()}, "transform", "pass transform=None"),
    ]
    for fields, param, message in bad:
        with pytest.raises(PixmixError, match=re.escape(message)) as err:
            LoaderOptions(**{"batch_size": 4, **fields})
        assert err.value.param == param, fields
        with pytest.raises(PixmixError, match=re.escape(message)):  # the loader's keywords build the same options
            ShardLoader(plain_set, **{"batch_size": 4, **fields})
    views = make_set(tmp_path, counts=(3,), kind="pixmix")
    with pytest.raises(PixmixError, match="needs a plain shard set") as err:
        LoaderOptions(batch_size=1, mode="online", mixset=mixset).for_shards(ShardSet.load(views))
    assert err.value.param == "mode"
    with pytest.raises(PixmixError, match="fewer than world_size") as err:
        epoch_assignment([3], seed=0, epoch=0, world_size=1, batch_size=4)
    assert err.value.param == "batch_size"


def test_loader_options_resolve_mode_and_placement_for_a_shard_set(plain_set, mixset, monkeypatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    options = LoaderOptions(batch_size=4, mixset=mixset, recipe="cifar")
    assert (options.mode, options.rank, options.world_size) == ("auto", None, None)
    resolved = options.for_shards(ShardSet.load(plain_set))
    assert (resolved.mode, resolved.rank, resolved.world_size) == ("online", 1, 2)
    assert LoaderOptions(batch_size=4, rank=0, world_size=1).for_shards(ShardSet.load(plain_set)).mode == "views"
    assert default_rank_world() == (1, 2)


def test_from_options_reads_what_the_keywords_read(plain_set, mixset) -> None:
    fields = dict(batch_size=5, seed=3, rank=0, world_size=1, num_workers=0, mixset=mixset, recipe="cifar")
    by_keywords = ShardLoader(plain_set, **fields)
    by_options = ShardLoader.from_options(plain_set, LoaderOptions(**fields))
    assert by_options.options == by_keywords.options and by_options.mode == "online"
    for a, b in zip(by_keywords, by_options, strict=True):
        assert a.keys == b.keys and torch.equal(a.images, b.images) and torch.equal(a.mixing, b.mixing)
        assert torch.equal(a.params.a, b.params.a)


# --- streaming: online PixMix ------------------------------------------------------------------------


def expected_online(folder: Path, mixset: Path, key: str, seed: int, epoch: int):
    """One sample's PixMix inputs and output, by hand: the recipe's transforms, then apply_batch."""
    _, s, i = map(int, KEY.match(key).groups())
    raw = next(x for x in iter_shard(folder / "shards" / f"v0-{s:03d}.tar") if x.key == key)
    image = decode_image(torch.frombuffer(bytearray(raw.fields["jpg"]), dtype=torch.uint8), mode=ImageReadMode.RGB)
    gen = generator_for(seed, epoch, s, i)
    image = CIFAR.train_transform()(image, gen)
    pictures = MixingShards(mixset)
    pic = CIFAR.mixing_transform()(pictures[int(torch.randint(len(pictures), (1,), generator=gen))], gen)
    mixing = torch.from_numpy(np.array(pic)).permute(2, 0, 1).contiguous()
    params = sample_params(CIFAR.pixmix().config, 1, gen)
    out = CIFAR.normalize(apply_batch(image[None], mixing[None], params, CIFAR.pixmix().config))[0]
    return image, mixing, params, out


def online_samples(loader: ShardLoader, epoch: int) -> dict[str, tuple]:
    out = {}
    for batch in epoch_batches(loader, epoch):
        for row, key in enumerate(batch.keys):
            out[key] = (batch.images[row], batch.mixing[row], batch.params.select(row))
    return out


def same_sample(x: tuple, y: tuple) -> bool:
    return torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) and all(
        torch.equal(getattr(x[2], f), getattr(y[2], f)) for f in ("op", "level", "rounds", "a", "b"))


def test_online_batches_match_the_recipe_applied_by_hand(mixed_size_set, mixset) -> None:
    loader = ShardLoader(mixed_size_set, batch_size=5, seed=11, num_workers=0, mixset=mixset, recipe="cifar")
    assert loader.mode == "online"
    loader.set_epoch(2)
    batch = next(iter(loader))
    assert batch.images.shape == batch.mixing.shape == (5, 3, 32, 32) and batch.params.batch_size == 5
    images, labels = finish_batch(batch, "cpu", "cifar")
    assert images.dtype == torch.float32 and torch.equal(labels, batch.labels)
    for row, key in enumerate(batch.keys):
        image, mixing, params, out = expected_online(mixed_size_set, mixset, key, seed=11, epoch=2)
        assert torch.equal(batch.images[row], image) and torch.equal(batch.mixing[row], mixing)
        assert torch.equal(batch.params.select(row).a, params.a)
        torch.testing.assert_close(images[row], out, atol=1e-6, rtol=0)
    # Two mixed batches differ from the un-mixed pictures (PixMix did run).
    assert not torch.allclose(images, CIFAR.normalize(batch.images.float() / 255))


def test_online_sample_does_not_depend_on_workers_or_ranks(mixed_size_set, mixset) -> None:
    def loader(workers: int, rank: int, world: int) -> ShardLoader:
        return ShardLoader(mixed_size_set, batch_size=4, seed=5, rank=rank, world_size=world, num_workers=workers,
                           mixset=mixset, recipe="cifar")

    single = online_samples(loader(0, 0, 1), 1)
    assert len(single) == 44
    two_workers = online_samples(loader(2, 0, 1), 1)
    assert two_workers.keys() == single.keys() and all(same_sample(single[k], two_workers[k]) for k in single)
    split = {**online_samples(loader(2, 0, 2), 1), **online_samples(loader(0, 1, 2), 1)}
    common = single.keys() & split.keys()
    assert len(split) == 40 and len(common) >= 39
    assert all(same_sample(single[k], split[k]) for k in common)
    other_epoch = online_samples(loader(0, 0, 1), 2)
    common = single.keys() & other_epoch.keys()
    assert sum(same_sample(single[k], other_epoch[k]) for k in common) == 0  # a new augmentation each epoch


def test_finish_batch_normalises_like_a_hand_computation(plain_set) -> None:
    loader = ShardLoader(plain_set, batch_size=5, num_workers=0, recipe="imagenet")
    batch = next(iter(loader))
    images, labels = finish_batch(batch, "cpu", "imagenet")
    assert images.shape == (5, 3, 32, 32) and images.dtype == torch.float32 and labels.dtype == torch.int64
    for b, c, y, x in [(0, 0, 0, 0), (1, 1, 5, 7), (4, 2, 31, 31), (2, 0, 17, 3)]:
        value = int(batch.images[b, c, y, x])
        expected = (value / 255 - IMAGENET.mean[c]) / IMAGENET.std[c]
        assert abs(float(images[b, c, y, x]) - expected) < 1e-5
    raw, _ = finish_batch(batch, "cpu", "imagenet", normalize=False)
    assert torch.equal(raw, batch.images.float() / 255)


# --- faults ------------------------------------------------------------------------------------------


def lost_in(errors: list[str]) -> int:
    return sum(int(m.group(1)) for e in errors for m in [re.search(r"; lost (\d+) ", e + " ")] if m)


def test_a_truncated_shard_is_reported_and_the_batch_count_stays_exact(tmp_path, caplog) -> None:
    folder = make_set(tmp_path / "cut")
    shard = folder / "shards" / "v0-003.tar"  # the 20-sample shard
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    caplog.set_level(logging.WARNING, logger="pixmix.data.loader")
    read = {}
    for workers in (0, 2):  # errors raised in the main process and in worker processes
        fresh: list[str] = []
        substituted = 0
        for rank in (0, 1):
            loader = ShardLoader(folder, batch_size=4, seed=2, rank=rank, world_size=2, num_workers=workers,
                                 recipe="cifar")
            batches = epoch_batches(loader, 0)
            assert len(batches) == len(loader) == 5 and all(len(b) == 4 for b in batches)
            assert loader.stats.substituted == sum(b.substituted for b in batches) == lost_in(loader.stats.errors)
            assert all(e.startswith("shards/v0-003.tar: ") for e in loader.stats.errors)
            assert sum(b.repeat.sum().item() for b in batches) == loader.stats.substituted
            fresh += [k for b in batches for k, r in zip(b.keys, b.repeat.tolist()) if not r]
            substituted += loader.stats.substituted
        assert substituted > 0 and len(fresh) == len(set(fresh)) == 40 - substituted
        assert all(not k.startswith("v0s3i") or int(k[5:]) < 10 for k in fresh)  # nothing from the lost half
        read[workers] = (sorted(fresh), substituted)
    assert read[0] == read[2]
    assert any("shards/v0-003.tar" in r.getMessage() and "lost" in r.getMessage() for r in caplog.records)


def test_a_worker_that_reads_nothing_names_the_shard(tmp_path) -> None:
    folder = make_set(tmp_path / "bad", counts=(6,))
    (folder / "shards" / "v0-000.tar").write_bytes(b"not a tar file" * 10)
    loader = ShardLoader(folder, batch_size=3, num_workers=0, recipe="cifar")
    with pytest.raises(ValueError, match="read no usable sample from shards/v0-000.tar"):
        list(loader)


def test_an_undecodable_image_is_replaced(tmp_path) -> None:
    folder = make_set(tmp_path / "img", counts=(6,))
    good = list(iter_shard(folder / "shards" / "v0-000.tar"))
    broken = [Sample(s.key, {**s.fields, "png": b"garbage"}) if s.key == "v0s0i2" else s for s in good]
    write_shard(folder / "shards" / "v0-000.tar", broken, root=folder)
    loader = ShardLoader(folder, batch_size=3, num_workers=0, recipe="cifar")
    batches = list(loader)
    assert len(batches) == 2 and loader.stats.substituted == 1
    assert "v0s0i2" not in keys_of(batches) and "undecodable png" in loader.stats.errors[0]


# --- DDP under torchrun ------------------------------------------------------------------------------


@pytest.mark.slow
def test_ranks_stay_in_step_under_torchrun(tmp_path) -> None:
    folder = make_set(tmp_path / "ddp")
    out = tmp_path / "ddp.json"
    script = Path(__file__).with_name("stream_ddp_script.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(folder), str(out), "4", "3"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["world_size"] == 2
    orders = []
    for epoch in report["epochs"]:
        assert epoch["batches"] == epoch["len"] == [5, 5]  # 45 // (2 * 4), on both ranks
        k0, k1 = epoch["keys"]
        assert len(k0) == len(k1) == 20 and not set(k0) & set(k1)
        assert 45 - len(set(k0) | set(k1)) < 2 * 4
        orders.append(k0 + k1)
    assert orders[0] != orders[1]


def test_untrusted_shard_images_are_checked_before_and_after_decoding(tmp_path) -> None:
    import io as _io
    import json as _json

    import numpy as np
    from PIL import Image as _Image

    from pixmix.data.loader import ShardLoader
    from pixmix.data.shards.shard_set import SHARDS_FORMAT, SHARDS_VERSION
    from pixmix.data.shards.tar import Sample, write_shard

    def png(array, mode=None) -> bytes:
        buf = _io.BytesIO()
        image = _Image.fromarray(array, mode) if mode else _Image.fromarray(array)
        image.save(buf, format="PNG")
        return buf.getvalue()

    good = [png(np.full((8, 8, 3), 10 * i, np.uint8)) for i in range(6)]
    deep = png(np.full((8, 8), 40000, np.uint16))  # a 16-bit greyscale PNG
    header = bytearray(good[0])
    header[16:24] = (100_000).to_bytes(4, "big") + (100_000).to_bytes(4, "big")  # claims 10^10 pixels
    import zlib

    header[29:33] = zlib.crc32(bytes(header[12:29])).to_bytes(4, "big")  # a valid IHDR chunk
    samples = [Sample(f"k{i}", {"png": b, "cls": b"0", "json": b"{}"}) for i, b in enumerate(good)]
    samples += [Sample("deep", {"png": deep, "cls": b"0", "json": b"{}"}),
                Sample("bomb", {"png": bytes(header), "cls": b"0", "json": b"{}"}),
                Sample("jpeg", {"png": b"\xff\xd8\xff" + b"0" * 40, "cls": b"0", "json": b"{}"})]
    info = write_shard(tmp_path / "shards" / "s-0.tar", samples, root=tmp_path)
    (tmp_path / "manifest.json").write_text(_json.dumps({
        "format": SHARDS_FORMAT, "version": SHARDS_VERSION, "kind": "plain", "views": 1, "classes": ["a"],
        "image_field": "png", "shards": [dict(info.to_json(), view=0)], "config": {}}))
    loader = ShardLoader(tmp_path, batch_size=9, rank=0, world_size=1, num_workers=0, shuffle=False)
    batch = next(iter(loader))
    assert batch.images.dtype == torch.uint8 and batch.images.shape == (9, 3, 8, 8)
    deep_index = batch.keys.index("deep")
    assert int(batch.images[deep_index].max()) == 40000 >> 8
    assert "bomb" not in batch.keys and "jpeg" not in batch.keys and batch.substituted == 2
    assert any("bomb" in e and "decompression bomb" in e for e in loader.stats.errors + batch.errors), batch.errors


def test_the_default_shuffle_buffer_follows_the_sample_size(tmp_path) -> None:
    from pixmix.data.loader import auto_shuffle_buffer
    from pixmix.data.shards.shard_set import ShardRecord, ShardSet

    def shardset(samples: int, nbytes: int) -> ShardSet:
        return ShardSet(tmp_path, "pixmix", 1, ("a",), "jpg", (ShardRecord("s.tar", samples, nbytes, "0" * 64),), {})

    assert auto_shuffle_buffer(shardset(50_000, 125_000_000)) == 10_000  # CIFAR-sized: capped at 10k
    assert auto_shuffle_buffer(shardset(5_000, 150_000_000)) == (64 << 20) // 30_000  # ImageNet views: ~2.2k
    assert auto_shuffle_buffer(shardset(2_400, 264_000_000)) == 1_000  # plain ImageNet: the floor
