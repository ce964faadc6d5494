"""PixMix throughput: the per-image (PIL) path vs the batched torch path, side by side.

    python benchmarks/pixmix_speed.py                 # CPU, one thread, 32 and 224 px
    python benchmarks/pixmix_speed.py --device cuda   # adds the batched path on the GPU

Trials alternate between the paths so that both see the same machine state; the figures are medians
over trials, and ratios are of medians measured in this one run. By default the process first calls
pixmix.utils.runtime.tune_cpu_allocator() (as the project's CLIs do); --no-tune measures glibc's defaults.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

if "--no-tune" not in sys.argv:  # must precede the first import of torch
    from pixmix.utils.runtime import tune_cpu_allocator

    TUNED = tune_cpu_allocator()
else:
    TUNED = False

import torch  # noqa: E402

from pixmix import PixMix, pixmix_batch  # noqa: E402
from pixmix.augment.transforms import to_uint8_tensor  # noqa: E402
from pixmix.demo import synthetic_images, synthetic_mixing_pictures  # noqa: E402

PRESETS = {32: PixMix.cifar, 224: PixMix.imagenet}


@dataclass
class Row:
    size: int
    path: str
    device: str
    batch: int
    images_per_s: float
    trials: list[float]


def _time(fn: Callable[[], int], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    count = fn()
    sync()
    return count / (time.perf_counter() - start)


def bench_size(size: int, trials: int, cpu_batch: int, gpu_batch: int, per_image_n: int, cuda: bool) -> list[Row]:
    pixmix = PRESETS[size]()
    cfg = pixmix.config
    kwargs = dict(k=cfg.k, beta=cfg.beta, severity=cfg.severity, ops=cfg.ops)
    images = synthetic_images(max(per_image_n, cpu_batch), size, seed=1)
    mixing = synthetic_mixing_pictures(max(per_image_n, cpu_batch), size, seed=2)
    gen = torch.Generator().manual_seed(0)

    def per_image() -> int:
        for i in range(per_image_n):
            pixmix(images[i], mixing[i], gen)
        return per_image_n

    x = torch.stack([to_uint8_tensor(im) for im in images[:cpu_batch]])
    m = torch.stack([to_uint8_tensor(im) for im in mixing[:cpu_batch]])

    def batched_cpu() -> int:
        pixmix_batch(x, m, generator=gen, **kwargs)
        return cpu_batch

    paths: dict[str, tuple[Callable[[], int], Callable[[], None], str, int]] = {
        "per-image (PIL)": (per_image, lambda: None, "cpu", 1),
        "batched": (batched_cpu, lambda: None, "cpu", cpu_batch),
    }
    if cuda:
        reps = max(1, gpu_batch // cpu_batch)
        xg = x.repeat(reps, 1, 1, 1).cuda()
        mg = m.repeat(reps, 1, 1, 1).cuda()

        def batched_gpu_eager() -> int:
            pixmix_batch(xg, mg, generator=gen, compile=False, **kwargs)
            return xg.shape[0]

        def batched_gpu() -> int:
            pixmix_batch(xg, mg, generator=gen, compile=True, **kwargs)
            return xg.shape[0]

        paths["batched cuda eager"] = (batched_gpu_eager, torch.cuda.synchronize, "cuda", xg.shape[0])
        paths["batched cuda fused"] = (batched_gpu, torch.cuda.synchronize, "cuda", xg.shape[0])

    for fn, sync, _, _ in paths.values():  # warm-up: imports, kernels, allocator
        _time(fn, sync)
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(trials):
        for name, (fn, sync, _, _) in paths.items():
            samples[name].append(_time(fn, sync))
    return [
        Row(size, name, dev, batch, statistics.median(samples[name]), samples[name])
        for name, (_, _, dev, batch) in paths.items()
    ]


def profile_batched(size: int, batch: int, cuda: bool) -> None:
    """Where the time of one batched call goes (host ops and, on a GPU, kernels)."""
    from torch.profiler import ProfilerActivity, profile

    cfg = PRESETS[size]().config
    dev = "cuda" if cuda else "cpu"
    x = torch.stack([to_uint8_tensor(im) for im in synthetic_images(batch, size, seed=1)]).to(dev)
    m = torch.stack([to_uint8_tensor(im) for im in synthetic_mixing_pictures(batch, size, seed=2)]).to(dev)
    gen = torch.Generator().manual_seed(0)
    run = lambda: pixmix_batch(x, m, k=cfg.k, beta=cfg.beta, severity=cfg.severity, ops=cfg.ops, generator=gen)  # noqa: E731
    run()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        run()
        if cuda:
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(f"profile: {size} px, batch {batch}, {dev}")
    print(prof.key_averages().table(sort_by=key, row_limit=15))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="32,224", help="comma-separated image sides (32 and/or 224)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    parser.add_argument("--cpu-batch", type=int, default=0,
                        help="batch for the CPU path (0: 512 at 32 px, 64 at 224 px)")
    parser.add_argument("--gpu-batch", type=int, default=1024)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--no-tune", action="store_true", help="keep glibc's default malloc settings")
    parser.add_argument("--profile", action="store_true",
                        help="print a torch.profiler table of one batched call per size")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if cuda and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is available", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    for s in sizes:
        if s not in PRESETS:
            print(f"--sizes: {s} is not one of {sorted(PRESETS)}", file=sys.stderr)
            return 2
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s), allocator tuned: {TUNED}, "
          f"GPU: {torch.cuda.get_device_name() if cuda else 'none'}")
    rows: list[Row] = []
    for size in sizes:
        cpu_batch = args.cpu_batch or (512 if size <= 64 else 64)
        per_image_n = 400 if size <= 64 else 48
        rows += bench_size(size, args.trials, cpu_batch, args.gpu_batch, per_image_n, cuda)
        if args.profile:
            profile_batched(size, args.gpu_batch if cuda else cpu_batch, cuda)

    print(f"{'size':>5} {'path':<18} {'device':<6} {'batch':>6} {'img/s':>10} {'vs per-image':>13}")
    for size in sizes:
        base = next(r for r in rows if r.size == size and r.path.startswith("per-image")).images_per_s
        for r in (r for r in rows if r.size == size):
            print(f"{r.size:>5} {r.path:<18} {r.device:<6} {r.batch:>6} {r.images_per_s:>10.0f} "
                  f"{r.images_per_s / base:>12.2f}x")
    if cuda:
        from torch._dynamo.utils import counters

        print(f"compiled graphs: {dict(counters['stats'])}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([asdict(r) for r in rows], fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
