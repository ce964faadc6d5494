"""Images per second per CPU core of the ablation mixing-set generators (``mixset.sources.generators``).

    python benchmarks/generator_speed.py --size 256 --count 16

One process, one thread, each generator timed on ``--count`` consecutive indices after one warm-up
image (FractalDB: the first image of a category includes its category search; ``--count`` indices
span that many categories, so the figure includes the searches).
"""

from __future__ import annotations

import argparse
import time

import torch

from mixset.sources.generators import NAMES, generate_with_tries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--only", choices=NAMES, action="append")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"{args.size} px, {args.count} images each, 1 thread")
    for name in args.only or NAMES:
        generate_with_tries(name, 0, 10_000, args.size)  # warm-up (imports, caches)
        start = time.perf_counter()
        tries = sum(generate_with_tries(name, 0, i, args.size)[2] for i in range(args.count))
        seconds = time.perf_counter() - start
        print(f"  {name:10s} {args.count / seconds:7.1f} images/s ({1000 * seconds / args.count:6.1f} ms/image, "
              f"{tries - args.count} re-draws)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
