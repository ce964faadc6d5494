"""Ingest throughput of ``mixset build``: decode + check + resize + encode + shard write, per core.

    python benchmarks/ingest_speed.py --count 400 --width 500 --height 375

Makes ``--count`` synthetic JPEG "photos" in a temporary folder collection, then times the build of
that collection alone with one worker (images per second on one core), excluding the preparation.
"""

from __future__ import annotations

import sys

if "--no-tune" not in sys.argv:  # before torch/numpy allocate: see pixmix.utils.runtime
    from pixmix.utils.runtime import tune_cpu_allocator

    tune_cpu_allocator()

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from mixset.build.builder import BuildConfig, build  # noqa: E402
from pixmix.demo import synthetic_images  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--format", choices=["jpg", "webp"], default="jpg")
    parser.add_argument("--no-tune", action="store_true")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pics = root / "photos"
        pics.mkdir()
        side = max(args.width, args.height)
        for i, image in enumerate(synthetic_images(args.count, side, seed=7)):
            image.crop((0, 0, args.width, args.height)).save(pics / f"{i:06d}.jpg", quality=92)
        manifests = root / "manifests"
        manifests.mkdir()
        (manifests / "photos.toml").write_text(
            f'name = "photos"\nsource = "fractals"\nkind = "folder"\nlicence = "synthetic"\npath = "{pics}"\n'
        )
        config = BuildConfig(out=root / "out", manifests=manifests, image_size=args.image_size,
                             photo_format=args.format, shard_size=1000)
        start = time.perf_counter()
        summary = build(config, log=lambda _: None, progress=False)
        seconds = time.perf_counter() - start
    print(f"ingest: {summary.samples} images {args.width}x{args.height} JPEG -> {args.image_size} px {args.format}, "
          f"1 worker: {summary.samples / seconds:.0f} images/s ({seconds:.2f} s, contact sheet and manifest included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
