"""Training-step throughput: pre-generated PixMix shards vs online PixMix on the device vs no PixMix.

    python benchmarks/train_speed.py --recipe cifar --arch wrn40_4 --device cpu --steps 4
    python benchmarks/train_speed.py --recipe imagenet --arch resnet50 --device cuda --batch 256

One process, side by side, alternating modes (median of ``--trials``); every step is a full training
step (next batch from ``ShardLoader``, ``finish_batch`` on the device, forward, backward, SGD):
  views   - shards written by ``mixset shard --pixmix`` (decode only);
  online  - plain shards + a mixing set: crop/flip and mixing pictures in the loader, the batched
            PixMix on the device inside ``finish_batch``;
  none    - plain shards with the recipe's base transform only (the baseline's input).
The PixMix cost is (online - none) / online step time. Data are synthetic and written first.
"""

from __future__ import annotations

import sys

if "--no-tune" not in sys.argv:  # before torch/numpy allocate: see pixmix.utils.runtime
    from pixmix.utils.runtime import tune_cpu_allocator

    tune_cpu_allocator()

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from mixset.build.builder import BuildConfig, build  # noqa: E402
from mixset.shard.sharder import ShardConfig, shard  # noqa: E402
from pixmix.augment.recipes import get_recipe  # noqa: E402
from pixmix.data.loader import ShardLoader, finish_batch  # noqa: E402
from pixmix.demo import synthetic_images  # noqa: E402
from pixmix.models import build_model  # noqa: E402


def write_folder(root: Path, count: int, side: int, classes: int) -> Path:
    for i, image in enumerate(synthetic_images(count, side, seed=3)):
        folder = root / f"c{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i:06d}.jpg", quality=90)
    return root


def make_sets(root: Path, recipe: str, count: int, classes: int, workers: int) -> tuple[Path, Path, Path]:
    side = 40 if recipe == "cifar" else 320
    data = write_folder(root / "data", count, side, classes)
    manifests = root / "manifests"
    manifests.mkdir()
    (manifests / "gen.toml").write_text('name = "gen"\nsource = "fractals"\nkind = "procedural"\n'
                                        'licence = "CC0-1.0"\n[procedural]\ncount = 64\n')
    mixset = root / "mixset"
    build(BuildConfig(out=mixset, manifests=manifests, image_size=64 if recipe == "cifar" else 256),
          log=lambda _: None, progress=False)
    common = {"dataset": "imagefolder", "data_dir": data, "seed": 0, "workers": workers,
              "image_size": 36 if recipe == "cifar" else 256, "crop_size": 32 if recipe == "cifar" else 224}
    plain, views = root / "plain", root / "views"
    shard(ShardConfig(out=plain, **common), log=lambda _: None, progress=False)
    shard(ShardConfig(out=views, pixmix=True, mixset=mixset, device="cpu", **common), log=lambda _: None,
          progress=False)
    return plain, views, mixset


def time_mode(mode: str, sets: tuple[Path, Path, Path], args: argparse.Namespace, model: torch.nn.Module,
              optimizer: torch.optim.Optimizer, device: torch.device, epoch: int) -> float:
    plain, views, mixset = sets
    recipe = get_recipe(args.recipe)
    kw = {"batch_size": args.batch, "seed": 0, "rank": 0, "world_size": 1, "num_workers": args.workers,
          "recipe": recipe}
    if mode == "views":
        loader = ShardLoader(views, mode="views", **kw)
    elif mode == "online":
        loader = ShardLoader(plain, mode="online", mixset=mixset, **kw)
    else:
        loader = ShardLoader(plain, mode="views", transform=recipe.train_transform(), **kw)
    loader.set_epoch(epoch)
    loss_fn = torch.nn.CrossEntropyLoss()
    times: list[float] = []
    it = iter(loader)
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        batch = next(it)
        images, labels = finish_batch(batch, device, recipe)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_fn(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    return args.batch / statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=["cifar", "imagenet"], default="cifar")
    parser.add_argument("--arch", default=None, help="default: wrn40_4 (cifar) / resnet50 (imagenet)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (and shard writers)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--no-tune", action="store_true")
    parser.add_argument("--json", help="also write the median samples/s per mode to this JSON file")
    args = parser.parse_args(argv)
    arch = args.arch or ("wrn40_4" if args.recipe == "cifar" else "resnet50")
    device = torch.device(args.device)
    count = args.batch * (args.warmup + args.steps) + args.batch

    with tempfile.TemporaryDirectory() as tmp:
        sets = make_sets(Path(tmp), args.recipe, count, args.classes, args.workers)
        torch.manual_seed(0)
        model = build_model(arch, args.classes).to(device).train()
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
        rates: dict[str, list[float]] = {"views": [], "online": [], "none": []}
        for trial in range(args.trials):
            for mode in rates:
                rates[mode].append(time_mode(mode, sets, args, model, optimizer, device, epoch=trial))
    med = {m: statistics.median(r) for m, r in rates.items()}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{arch}, {args.recipe} recipe, batch {args.batch}, {args.workers} loader workers, {name}; "
          f"median of {args.trials} trials x {args.steps} steps")
    for mode, label in (("views", "pre-generated PixMix shards"), ("online", "online PixMix on the device"),
                        ("none", "no PixMix (base transform only)")):
        print(f"  {label:34s} {med[mode]:9.1f} samples/s  ({1000 * args.batch / med[mode]:.1f} ms/step)")
    online_cost = 1 - med["online"] / med["none"]
    views_cost = 1 - med["views"] / med["none"]
    print(f"  PixMix cost: online {online_cost * 100:+.1f}% of the no-PixMix step rate, "
          f"pre-generated {views_cost * 100:+.1f}% (target for online on an H100: < 10%)")
    if args.json:
        Path(args.json).write_text(json.dumps(med))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
