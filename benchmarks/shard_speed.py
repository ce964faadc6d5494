"""Training-input throughput per CPU core: online per-image PixMix vs reading pre-generated PixMix shards.

    python benchmarks/shard_speed.py --count 256

Side by side, in one process, one thread (samples/s per core):
  (a) the reference way: an ImageFolder of JPEG "photos" (500x375) + PixMix per image on the CPU
      (``PixMixDataset``: decode, RandomResizedCrop 224 + flip, mixing picture, PixMix, normalise);
  (b) reading the shards ``mixset shard imagenet --pixmix`` wrote from the same images
      (``ShardLoader``: tar read, JPEG decode, shuffle, collate; normalisation on the target device
      is excluded, as it happens on the GPU in training);
and (c) the shard-writing throughput of ``mixset shard --pixmix`` with one worker, in-process, beside
(d) the same command as a user runs it: ``mixset shard imagenet --pixmix`` at its defaults (workers,
threads) in a fresh process, wall time including start-up, per machine and per usable CPU.
Trials alternate (a)/(b) and the median is reported.
"""

from __future__ import annotations

import sys

if "--no-tune" not in sys.argv:  # before torch/numpy allocate: see pixmix.utils.runtime
    from pixmix.utils.runtime import tune_cpu_allocator

    tune_cpu_allocator()

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from mixset.build.builder import BuildConfig, build  # noqa: E402
from mixset.shard.sharder import ShardConfig, shard  # noqa: E402
from pixmix.data.loader import ShardLoader  # noqa: E402
from pixmix.data.readers import ClassFolders  # noqa: E402
from pixmix.data.shards.mixing_set import MixingShards  # noqa: E402
from pixmix.data.wrappers import PixMixDataset  # noqa: E402
from pixmix.demo import synthetic_images  # noqa: E402


def make_data(root: Path, count: int, width: int, height: int, classes: int = 8) -> Path:
    data = root / "imagenet"
    side = max(width, height)
    for i, image in enumerate(synthetic_images(count, side, seed=7)):
        folder = data / "train" / f"n{i % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        image.crop((0, 0, width, height)).save(folder / f"img_{i:06d}.JPEG", quality=90)
    return data


def make_mixset(root: Path, count: int) -> Path:
    manifests = root / "manifests"
    manifests.mkdir()
    (manifests / "gen.toml").write_text('name = "gen"\nsource = "fractals"\nkind = "procedural"\n'
                                        f'licence = "CC0-1.0"\n[procedural]\ncount = {count}\n')
    build(BuildConfig(out=root / "mixset", manifests=manifests, image_size=256), log=lambda _: None, progress=False)
    return root / "mixset"


def time_online(data: Path, mixset: Path, n: int) -> float:
    dataset = PixMixDataset(ClassFolders(data / "train"), MixingShards(mixset), recipe="imagenet", seed=0)
    start = time.perf_counter()
    for i in range(n):
        image, _ = dataset[i % len(dataset)]
        assert image.shape == (3, 224, 224)
    return n / (time.perf_counter() - start)


def time_shards(out: Path, batch: int, epoch: int) -> float:
    loader = ShardLoader(out, batch_size=batch, seed=0, rank=0, world_size=1, num_workers=0)
    loader.set_epoch(epoch)
    start = time.perf_counter()
    seen = 0
    for b in loader:
        assert b.images.shape[1:] == (3, 224, 224)
        seen += len(b)
    return seen / (time.perf_counter() - start)


def storage_error(data: Path, mixset: Path, out: Path, n: int = 32) -> tuple[float, float]:
    """Mean |stored - exact| in 8-bit levels over ``n`` views, and mean bytes per sample."""
    import io
    import json

    import numpy as np
    from PIL import Image

    from mixset.shard.listing import open_source
    from pixmix.data.shards.shard_set import ShardSet
    from pixmix.data.shards.tar import iter_shard
    from pixmix.data.wrappers import PixMixTransform
    from pixmix.utils.seeding import generator_for

    shards = ShardSet.load(out)
    source = open_source("imagenet", data, "train")
    transform = PixMixTransform(MixingShards(mixset), "imagenet", normalize=False)
    errors = []
    for sample in iter_shard(shards.path(shards.shards[0])):
        meta = json.loads(sample.fields["json"])
        exact = transform(source.load(meta["index"]), generator_for(shards.config["seed"],
                                                                    meta["index"], meta["view"]))
        stored = np.asarray(Image.open(io.BytesIO(sample.fields[shards.image_field])), dtype=np.float32)
        errors.append(float(np.abs(stored - exact.permute(1, 2, 0).numpy() * 255).mean()))
        if len(errors) == n:
            break
    return float(np.mean(errors)), sum(r.bytes for r in shards.shards) / shards.samples


def time_cli(data: Path, mixset: Path, out: Path, views: int, quality: int) -> tuple[float, int]:
    """(views/s, views) of ``mixset shard imagenet --pixmix`` at its defaults, in a fresh process."""
    import subprocess

    cmd = [sys.executable, "-m", "mixset.cli", "shard", "imagenet", "--data-dir", str(data), "--out", str(out),
           "--pixmix", "--mixset", str(mixset), "--views", str(views), "--quality", str(quality), "--quiet"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    seconds = time.perf_counter() - start
    from pixmix.data.shards.shard_set import ShardSet

    written = ShardSet.load(out).samples
    return written / seconds, written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=256, help="training images")
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--quality", type=int, default=95)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--no-tune", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # figures are per core

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = make_data(root, args.count, args.width, args.height)
        mixset = make_mixset(root, 64)
        out = root / "shards"
        start = time.perf_counter()
        summary = shard(ShardConfig(dataset="imagenet", data_dir=data, out=out, pixmix=True, mixset=mixset,
                                    views=args.views, quality=args.quality, workers=1, device="cpu"),
                        log=lambda _: None, progress=False)
        write_rate = summary.samples_written / (time.perf_counter() - start)

        online, reading = [], []
        for trial in range(args.trials):
            online.append(time_online(data, mixset, min(args.count, 128)))
            reading.append(time_shards(out, args.batch, epoch=trial))
        error, per_sample = storage_error(data, mixset, out)
        cli_rate, cli_views = time_cli(data, mixset, root / "cli-shards", args.views, args.quality)
    a, b = statistics.median(online), statistics.median(reading)
    print(f"input: {args.count} JPEGs {args.width}x{args.height}, ImageNet recipe (224 px, k=4, beta=4), "
          f"1 thread, median of {args.trials} alternating trials")
    print(f"(a) ImageFolder + per-image PixMix:        {a:8.1f} samples/s per core")
    print(f"(b) pre-generated PixMix shards (JPEG q{args.quality}): {b:8.1f} samples/s per core   "
          f"ratio b/a = {b / a:.1f}x (target >= 8x)")
    print(f"    stored views: {per_sample / 1e3:.1f} kB per sample, mean |stored - exact view| = {error:.2f} "
          "of 255 levels (JPEG + rounding)")
    print(f"(c) mixset shard --pixmix, 1 worker:      {write_rate:8.1f} views/s written per core "
          f"({summary.samples_written} views, plan + probe + manifest included)")
    from pixmix.utils.runtime import usable_cpus

    cpus = usable_cpus()
    print(f"(d) mixset shard --pixmix as a user runs it (defaults, fresh process, {cpus} usable CPUs): "
          f"{cli_rate:8.1f} views/s, {cli_rate / cpus:.1f} per CPU ({cli_views} views, start-up included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
