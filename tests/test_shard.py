"""mixset shard: plain and PixMix shards of ImageNet-style trees and CIFAR, determinism, ranks, resume."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from tiny_datasets import write_cifar10, write_cifar10_c, write_imagenet, write_mixset

from mixset.cli import main as mixset_main
from mixset.shard.sharder import ShardConfig, ShardError, merge, plan_shards, shard
from mixset.verify import info, verify
from pixmix.data.shards.mixing_set import MixingShards
from pixmix.data.shards.shard_set import ShardSet
from pixmix.data.shards.tar import iter_shard
from pixmix.data.wrappers import PixMixTransform
from pixmix.utils.seeding import generator_for


def quiet(_: str) -> None:
    pass


def run(**kw) -> object:
    return shard(ShardConfig(**kw), log=quiet, progress=False)


def samples(out: Path) -> list:
    s = ShardSet.load(out)
    return [(rec, sample) for rec in s.shards for sample in iter_shard(s.path(rec))]


def tar_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.tar"))}


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    return write_imagenet(tmp_path_factory.mktemp("imagenet"), classes=3, per_class=5)


@pytest.fixture(scope="module")
def mixset(tmp_path_factory) -> Path:
    return write_mixset(tmp_path_factory.mktemp("mixset") / "m", count=6, size=40)


def test_plan_is_a_shuffled_partition_per_view() -> None:
    tasks = plan_shards(23, views=2, per_shard=5, seed=3)
    assert [len(t.items) for t in tasks] == [5, 5, 5, 5, 3] * 2 and [t.id for t in tasks] == list(range(10))
    for view in (0, 1):
        items = [i for t in tasks if t.view == view for i in t.items]
        assert sorted(items) == list(range(23)) and items != sorted(items)
    view0 = [i for t in tasks[:5] for i in t.items]
    assert view0 != [i for t in tasks[5:] for i in t.items]  # each view its own order
    assert plan_shards(23, 2, 5, 3) == tasks and plan_shards(23, 2, 5, 4) != tasks


def test_plain_imagenet_shards(imagenet: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    summary = run(dataset="imagenet", data_dir=imagenet, out=out, shard_samples=4, image_size=48)
    assert summary.manifest == out / "manifest.json" and summary.shards_total == 4  # 15 images, 4 per shard
    s = ShardSet.load(out)
    assert s.kind == "plain" and s.views == 1 and s.image_field == "jpg" and len(s.classes) == 3
    assert [r.samples for r in s.shards] == [4, 4, 4, 3]
    seen = []
    for _, sample in samples(out):
        meta = json.loads(sample.fields["json"])
        wnid = meta["file"].split("/")[0]
        assert int(sample.fields["cls"]) == meta["label"] == s.classes.index(wnid) and meta["class"] == wnid
        with Image.open(io.BytesIO(sample.fields["jpg"])) as im:
            assert im.mode == "RGB" and min(im.size) == 48  # greyscale and CMYK files stored as RGB
        seen.append(meta["index"])
    assert sorted(seen) == list(range(15)) and seen != sorted(seen)  # every image once, shuffled
    assert verify(out) == []
    assert "15 samples of 15 imagenet train images in 4 shard(s)" in info(out)


def test_val_split_uses_the_train_wnids(imagenet: Path, tmp_path: Path) -> None:
    data = tmp_path / "in"
    (data / "val").mkdir(parents=True)
    (data / "train").symlink_to(imagenet / "train")
    wnids = sorted(p.name for p in (imagenet / "train").iterdir())
    (data / "val" / wnids[2]).symlink_to(imagenet / "val" / wnids[2])  # only the last class
    run(dataset="imagenet", data_dir=data, split="val", out=tmp_path / "o", image_size=32)
    labels = {int(sample.fields["cls"]) for _, sample in samples(tmp_path / "o")}
    assert labels == {2} and ShardSet.load(tmp_path / "o").classes == tuple(wnids)


def test_same_seed_same_bytes_whatever_the_workers_and_ranks(imagenet: Path, tmp_path: Path) -> None:
    common = dict(dataset="imagenet", data_dir=imagenet, shard_samples=3, image_size=40, seed=5)
    run(out=tmp_path / "a", **common)
    run(out=tmp_path / "b", workers=2, **common)
    first = run(out=tmp_path / "c", rank=1, world_size=2, **common)
    assert first.manifest is None and not (tmp_path / "c" / "manifest.json").exists()
    with pytest.raises(ShardError, match=r"3 of 5 shard\(s\) not written yet"):
        merge(tmp_path / "c")
    assert run(out=tmp_path / "c", rank=0, world_size=2, **common).manifest is not None  # the last rank merges
    a = tar_bytes(tmp_path / "a")
    assert len(a) == 5 and tar_bytes(tmp_path / "b") == a == tar_bytes(tmp_path / "c")
    strip = lambda p: {k: v for k, v in json.loads(p.read_text()).items() if k != "packages"}  # noqa: E731
    assert strip(tmp_path / "a" / "manifest.json") == strip(tmp_path / "c" / "manifest.json")
    run(out=tmp_path / "d", **dict(common, seed=6))
    assert tar_bytes(tmp_path / "d") != a


def test_pixmix_views_are_what_pixmix_transform_makes(imagenet: Path, mixset: Path, tmp_path: Path) -> None:
    out = tmp_path / "v"
    run(dataset="imagenet", data_dir=imagenet, out=out, pixmix=True, mixset=mixset, views=2, crop_size=24,
        image_format="png", shard_samples=4, limit=6, seed=7)
    s = ShardSet.load(out)
    assert s.kind == "pixmix" and s.views == 2 and [r.view for r in s.shards] == [0, 0, 1, 1]
    assert s.config["recipe"] == {"name": "imagenet", "crop_size": 24, "k": 4, "beta": 4.0, "severity": 1.0,
                                  "ops": "all"}
    from mixset.shard.listing import open_source

    source = open_source("imagenet", imagenet, "train")
    recipe = ShardConfig(dataset="imagenet", data_dir=imagenet, out=out, crop_size=24).recipe()
    transform = PixMixTransform(MixingShards(mixset), recipe, normalize=False)
    keys = Counter()
    for rec, sample in samples(out):
        meta = json.loads(sample.fields["json"])
        assert sample.key == f"{meta['index']:09d}_v{rec.view}" and meta["view"] == rec.view
        keys[meta["view"]] += 1
        expected = transform(source.load(meta["index"]), generator_for(7, meta["index"], rec.view))
        got = torch.from_numpy(np.array(Image.open(io.BytesIO(sample.fields["png"])))).permute(2, 0, 1)
        assert got.shape == (3, 24, 24)
        assert (got.float() - expected * 255).abs().max() <= 0.5 + 1e-3  # the same view, rounded to 8 bits
    assert keys == {0: 6, 1: 6}
    assert verify(out) == []
    with Image.open(out / "contact-sheet.png") as sheet:  # one band of tiles per view
        assert sheet.format == "PNG" and sheet.height > 2 * 2 * 96 + 2 * 18


def test_pixmix_shards_do_not_depend_on_workers(tmp_path: Path, mixset: Path) -> None:
    write_cifar10(tmp_path / "c", per_batch=4)
    common = dict(dataset="cifar10", data_dir=tmp_path / "c", pixmix=True, mixset=mixset, views=2, shard_samples=7)
    run(out=tmp_path / "a", **common)
    run(out=tmp_path / "b", workers=2, **common)
    run(out=tmp_path / "r", world_size=3, rank=2, **common)
    run(out=tmp_path / "r", world_size=3, rank=0, **common)
    run(out=tmp_path / "r", world_size=3, rank=1, **common)
    a = tar_bytes(tmp_path / "a")
    assert len(a) == 6 and tar_bytes(tmp_path / "b") == a == tar_bytes(tmp_path / "r")
    s = ShardSet.load(tmp_path / "a")
    assert s.image_field == "png" and s.config["recipe"]["beta"] == 3.0 and s.samples == 40
    with Image.open(tmp_path / "a" / "contact-sheet.png") as sheet:  # two full bands: view 0 and view 1
        assert sheet.height == 4 + 2 * (18 + 2 * (96 + 4))


def test_cifar_plain_and_corrupted_are_pixel_exact(tmp_path: Path) -> None:
    images, labels = write_cifar10(tmp_path / "c", per_batch=3)
    run(dataset="cifar10", data_dir=tmp_path / "c", split="test", out=tmp_path / "t")
    got = {json.loads(x.fields["json"])["row"]: x for _, x in samples(tmp_path / "t")}
    assert sorted(got) == [0, 1, 2]
    for row, x in got.items():
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(x.fields["png"]))), images[15 + row])
        assert int(x.fields["cls"]) == labels[15 + row]

    c_labels = write_cifar10_c(tmp_path / "c", per_severity=2)
    run(dataset="cifar10", data_dir=tmp_path / "c", corrupted=True, out=tmp_path / "cc", shard_samples=40)
    s = ShardSet.load(tmp_path / "cc")
    assert s.kind == "corrupted" and s.samples == 15 * 5 * 2 and len(s.shards) == 4
    per = Counter()
    for _, x in samples(tmp_path / "cc"):
        meta = json.loads(x.fields["json"])
        per[(meta["corruption"], meta["severity"])] += 1
        row = (meta["severity"] - 1) * 2 + meta["row"]
        array = np.load(tmp_path / "c" / "CIFAR-10-C" / f"{meta['corruption']}.npy")
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(x.fields["png"]))), array[row])
        assert int(x.fields["cls"]) == c_labels[row]
    assert len(per) == 75 and set(per.values()) == {2}


def test_resume_rewrites_only_missing_or_broken_shards(imagenet: Path, tmp_path: Path) -> None:
    common = dict(dataset="imagenet", data_dir=imagenet, out=tmp_path / "o", shard_samples=4, image_size=32)
    run(**common)
    before = tar_bytes(tmp_path / "o")
    shards = sorted((tmp_path / "o" / "shards").glob("*.tar"))
    (tmp_path / "o" / ".shard" / "shard-000001.json").unlink()  # killed before its journal entry
    shards[1].unlink()
    data = shards[2].read_bytes()
    shards[2].write_bytes(data[: len(data) // 2])  # a half-written shard
    (tmp_path / "o" / "manifest.json").unlink()
    stamp = shards[0].stat().st_mtime_ns
    summary = run(**common)
    assert (summary.shards_written, summary.shards_resumed) == (2, 2)
    assert tar_bytes(tmp_path / "o") == before and shards[0].stat().st_mtime_ns == stamp
    assert verify(tmp_path / "o") == []


def test_unreadable_images_are_skipped_and_reported(imagenet: Path, tmp_path: Path) -> None:
    data = tmp_path / "in"
    import shutil

    shutil.copytree(imagenet / "train", data / "train")
    wnid = sorted(p.name for p in (data / "train").iterdir())[0]
    (data / "train" / wnid / "broken.JPEG").write_bytes(b"not a jpeg at all")
    summary = run(dataset="imagenet", data_dir=data, out=tmp_path / "o", image_size=32)
    assert len(summary.failures) == 1 and "broken.JPEG" in summary.failures[0]
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["items"] == 16 and manifest["samples"] == 15 and len(manifest["failures"]) == 1


def test_shard_bytes_sets_the_samples_per_shard(imagenet: Path, tmp_path: Path) -> None:
    run(dataset="imagenet", data_dir=imagenet, out=tmp_path / "o", image_size=64, shard_bytes=40_000)
    s = ShardSet.load(tmp_path / "o")
    per = s.shards[0].samples
    assert 1 < per < 15 and all(r.samples == per for r in s.shards[:-1])
    sizes = [r.bytes for r in s.shards[:-1]]
    assert max(sizes) < 2 * 40_000  # near the target: the probe measured the encoded size


def test_bad_options_and_changed_options_fail_clearly(imagenet: Path, tmp_path: Path) -> None:
    with pytest.raises(ShardError, match="--pixmix needs --mixset"):
        ShardConfig(dataset="imagenet", data_dir=imagenet, out=tmp_path, pixmix=True)
    with pytest.raises(ShardError, match="--views 2 needs --pixmix"):
        ShardConfig(dataset="imagenet", data_dir=imagenet, out=tmp_path, views=2)
    with pytest.raises(ShardError, match="--rank must be in"):
        ShardConfig(dataset="imagenet", data_dir=imagenet, out=tmp_path, rank=2, world_size=2)
    with pytest.raises(ShardError, match="PixMix options: .*beta"):
        ShardConfig(dataset="imagenet", data_dir=imagenet, out=tmp_path, pixmix=True, mixset=tmp_path, beta=-1.0)
    run(dataset="imagenet", data_dir=imagenet, out=tmp_path / "o", image_size=32)
    with pytest.raises(ShardError, match="made with other options"):
        run(dataset="imagenet", data_dir=imagenet, out=tmp_path / "o", image_size=40)
    with pytest.raises(ValueError, match="must hold ImageNet's train/ and val/"):
        run(dataset="imagenet", data_dir=tmp_path / "o", out=tmp_path / "x")


def test_cli_takes_rank_and_world_size_from_torchrun_env(imagenet: Path, tmp_path: Path, monkeypatch) -> None:
    runner = CliRunner()
    args = ["shard", "imagenet", "--data-dir", str(imagenet), "--out", str(tmp_path / "o"), "--image-size", "32",
            "--shard-samples", "4", "--quiet"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    result = runner.invoke(mixset_main, args)
    assert result.exit_code == 0, result.output
    assert "rank 1/2: wrote 2 shard(s)" in result.output and "still missing" in result.output
    result = runner.invoke(mixset_main, ["shard", "merge", str(tmp_path / "o")])
    assert result.exit_code != 0 and "not written yet" in result.output
    monkeypatch.setenv("RANK", "0")
    result = runner.invoke(mixset_main, args)
    assert result.exit_code == 0 and "manifest:" in result.output
    result = runner.invoke(mixset_main, ["verify", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    result = runner.invoke(mixset_main, ["shard", "imagenet", "--data-dir", str(imagenet), "--out",
                                         str(tmp_path / "p"), "--pixmix"])
    assert result.exit_code != 0 and "--pixmix needs --mixset" in result.output


def test_threaded_and_chunked_makers_make_the_same_samples(tmp_path: Path, mixset: Path, monkeypatch) -> None:
    # The GPU strategy: one process, threads decode and encode; on the CPU it must give the same bytes.
    from mixset.shard.listing import open_source
    from mixset.shard.maker import Maker

    write_cifar10(tmp_path / "c", per_batch=3)
    config = ShardConfig(dataset="cifar10", data_dir=tmp_path / "c", out=tmp_path / "o", pixmix=True, mixset=mixset)
    source = open_source("cifar10", tmp_path / "c", "train")
    task = plan_shards(len(source), 1, 9, seed=0)[0]
    serial, _ = Maker(config, source).all_samples(task)
    threaded, _ = Maker(config, source, threads=3).all_samples(task)
    assert [s.key for s in serial] == [s.key for s in threaded] and len(serial) == 9
    assert all(a.fields == b.fields for a, b in zip(serial, threaded, strict=True))
    monkeypatch.setattr("mixset.shard.maker.CHUNK", 4)  # a shard made in chunks of 4, 4, 1
    chunked, _ = Maker(config, source, threads=2).all_samples(task)
    assert [(a.key, a.fields) for a in chunked] == [(a.key, a.fields) for a in serial]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_views_match_cpu_views(tmp_path: Path, mixset: Path, imagenet: Path) -> None:
    common = dict(dataset="imagenet", data_dir=imagenet, pixmix=True, mixset=mixset, crop_size=64, image_format="png",
                  shard_samples=8, workers=2)
    run(out=tmp_path / "cpu", device="cpu", **common)
    run(out=tmp_path / "gpu", device="cuda", **common)
    cpu, gpu = samples(tmp_path / "cpu"), samples(tmp_path / "gpu")
    assert [x.key for _, x in cpu] == [x.key for _, x in gpu]
    for (_, a), (_, b) in zip(cpu, gpu, strict=True):
        pa = np.array(Image.open(io.BytesIO(a.fields["png"])), dtype=int)
        pb = np.array(Image.open(io.BytesIO(b.fields["png"])), dtype=int)
        assert np.abs(pa - pb).max() <= 1  # float rounding may move a value across a .5 boundary


@pytest.mark.slow
def test_killed_shard_run_resumes_without_loss_or_duplicates(tmp_path: Path, mixset: Path) -> None:
    import sys

    from helpers import kill_when

    write_cifar10(tmp_path / "c", per_batch=24)  # 120 training images
    out = tmp_path / "killed"
    opts = ["--data-dir", str(tmp_path / "c"), "--pixmix", "--mixset", str(mixset), "--shard-samples", "10"]
    kill_when([sys.executable, "-m", "mixset.cli", "shard", "cifar10", "--out", str(out), "--quiet", *opts],
              out / ".shard" / "shard-000002.json")
    assert not (out / "manifest.json").exists()
    done_before = len(list((out / ".shard").glob("shard-*.json")))
    assert 3 <= done_before < 12
    common = {"dataset": "cifar10", "data_dir": tmp_path / "c", "pixmix": True, "mixset": mixset, "shard_samples": 10}
    summary = run(out=out, **common)
    assert summary.shards_resumed == done_before and summary.shards_written == 12 - done_before
    run(out=tmp_path / "reference", **common)
    assert tar_bytes(out) == tar_bytes(tmp_path / "reference")
    keys = [x.key for _, x in samples(out)]
    assert len(keys) == len(set(keys)) == 120 and verify(out) == []


def test_a_changed_dataset_is_refused_on_resume(imagenet: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "in"
    shutil.copytree(imagenet / "train", data / "train")
    common = {"dataset": "imagenet", "data_dir": data, "out": tmp_path / "o", "image_size": 32, "shard_samples": 4}
    run(**common)
    wnid = min(p.name for p in (data / "train").iterdir())
    shutil.copy(next((data / "train" / wnid).iterdir()), data / "train" / wnid / "zz-extra.JPEG")
    with pytest.raises(ShardError, match=r"changed since .* \(items, listing differ"):
        run(**common)


def test_cli_bad_rank_is_a_one_line_error(imagenet: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(mixset_main, ["shard", "imagenet", "--data-dir", str(imagenet), "--out",
                                              str(tmp_path / "o"), "--rank", "3", "--world-size", "2"])
    assert result.exit_code == 1 and result.output == "Error: --rank 3 is not in 0..1 (world size 2)\n"
    result = CliRunner().invoke(mixset_main, ["shard", "imagenet", "--data-dir", str(tmp_path), "--out",
                                              str(tmp_path / "o")])
    assert result.exit_code == 1 and "--data-dir must hold ImageNet's train/ and val/" in result.output
