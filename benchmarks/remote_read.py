"""Reading a shard set over HTTP vs from local disk, samples/s per core, side by side in one run.

    python benchmarks/remote_read.py --count 512 --trials 3

A shard set of ``--count`` JPEG samples (``--size`` px, 4 shards) is written to a temporary folder and served by
the tests' threaded HTTP server (Range support) in a separate process on 127.0.0.1, so that the server's CPU is
not the reader's. ``ShardLoader`` then reads one epoch (tar read, JPEG decode, shuffle buffer, collate), in this
process with one torch thread and no workers, from the folder and from ``http://127.0.0.1:PORT``; trials alternate
and the median is reported. Per core = samples / CPU seconds of the reading process; wall samples/s beside it.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' HTTP server

from pixmix.data.loader import ShardLoader  # noqa: E402
from pixmix.data.shards.shard_set import SHARDS_FORMAT, SHARDS_VERSION  # noqa: E402
from pixmix.data.shards.tar import Sample, write_shard  # noqa: E402


def make_set(folder: Path, count: int, size: int, shards: int = 4) -> Path:
    """``count`` JPEG samples of noise-textured gradients (``size`` px), labels ``i % 10``, in ``shards`` shards."""
    import json

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    records = []
    per = -(-count // shards)
    for s in range(shards):
        samples = []
        for i in range(s * per, min(count, (s + 1) * per)):
            base = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1),
                             np.full((size, size), 40.0 * (i % 6))], axis=-1)
            pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
            samples.append(Sample(f"s{i:06d}", {"jpg": buf.getvalue(), "cls": str(i % 10).encode()}))
        info = write_shard(folder / "shards" / f"train-{s:06d}.tar", samples, root=folder)
        records.append({**info.to_json(), "view": 0})
    manifest = {"format": SHARDS_FORMAT, "version": SHARDS_VERSION, "kind": "plain", "views": 1,
                "classes": [str(c) for c in range(10)], "image_field": "jpg", "shards": records,
                "config": {"dataset": "benchmark"}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _serve(folder: str, queue: multiprocessing.Queue, stop: multiprocessing.Event) -> None:
    from http_server import serve

    root = Path(folder)
    routes = {"/" + str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    with serve(routes) as base:  # type: ignore[arg-type]
        queue.put(str(base))
        stop.wait()


def read_epoch(target: str | Path, batch_size: int) -> tuple[int, float, float]:
    """``(samples, CPU seconds, wall seconds)`` of one epoch read in this process."""
    loader = ShardLoader(target, batch_size=batch_size, num_workers=0, recipe="imagenet", shuffle_buffer=256)
    cpu, wall = time.process_time(), time.perf_counter()
    samples = sum(len(batch) for batch in loader)
    return samples, time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = make_set(Path(tmp) / "set", args.count, args.size)
        nbytes = sum(p.stat().st_size for p in (folder / "shards").iterdir())
        queue: multiprocessing.Queue = multiprocessing.Queue()
        stop = multiprocessing.Event()
        server = multiprocessing.Process(target=_serve, args=(str(folder), queue, stop), daemon=True)
        server.start()
        url = queue.get(timeout=60)
        try:
            read_epoch(folder, args.batch_size)  # warm up: imports, page cache
            results: dict[str, list[tuple[int, float, float]]] = {"local disk": [], "http 127.0.0.1": []}
            for _ in range(args.trials):
                results["local disk"].append(read_epoch(folder, args.batch_size))
                results["http 127.0.0.1"].append(read_epoch(url, args.batch_size))
        finally:
            stop.set()
            server.join(timeout=10)
    print(f"{args.count} samples of {args.size} px JPEG, {nbytes / 1e6:.1f} MB in 4 shards; {args.trials} trials, "
          "median; one thread, no workers")
    per_core = {}
    for name, runs in results.items():
        per_core[name] = statistics.median(n / cpu for n, cpu, _ in runs)
        wall = statistics.median(n / w for n, _, w in runs)
        print(f"  {name:15s} {per_core[name]:8.0f} samples/s per core   {wall:8.0f} samples/s wall")
    ratio = per_core["http 127.0.0.1"] / per_core["local disk"]
    print(f"  http / local disk per core: {ratio:.2f} (target >= 0.90)")


if __name__ == "__main__":
    main()
