"""Procedural fractal throughput on one CPU thread, per kind and overall, with rejection rates.

    python benchmarks/fractal_speed.py --count 200 --size 256
    python benchmarks/fractal_speed.py --count 300 --stats      # also the rejection-rate grid
    python benchmarks/fractal_speed.py --no-tune                # glibc's malloc defaults

images/s counts accepted images and includes every rejected draw (generate_fractal end to end).
Thread pools are capped at 1 before numpy is imported; the generator's ops are single-threaded numpy
anyway (the only BLAS call is a tiny matrix product in the plasma background). By default the
process first calls pixmix.utils.runtime.tune_cpu_allocator(), as the project's entry points do: the
renderers allocate many short-lived arrays of a few hundred KiB, which glibc otherwise returns to
the OS and page-faults back in on every image.
"""

from __future__ import annotations

import os
import sys

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # must precede the first import of numpy

if "--no-tune" not in sys.argv:
    from pixmix.utils.runtime import tune_cpu_allocator

    TUNED = tune_cpu_allocator()
else:
    TUNED = False

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from mixset.sources.procedural import (  # noqa: E402
    KINDS,
    MIN_ENTROPY,
    MIN_FILL,
    generate_fractal,
    quality,
    render_fractal,
    sample_fractal_params,
)


def run_kind(kinds: tuple[str, ...], count: int, size: int, seed: int) -> dict:
    fills, ents, tries = [], [], 0
    generate_fractal(seed + 1000, 0, size=size, kinds=kinds)  # warm-up (caches, first-touch pages)
    t0 = time.perf_counter()
    for i in range(count):
        image, _, used = generate_fractal(seed, i, size=size, kinds=kinds)
        tries += used
    dt = time.perf_counter() - t0
    for i in range(min(count, 50)):  # quality of accepted images, outside the timed loop
        f, e = quality(generate_fractal(seed, i, size=size, kinds=kinds)[0])
        fills.append(f)
        ents.append(e)
    return {
        "kinds": "+".join(kinds),
        "images": count,
        "draws": tries,
        "seconds": round(dt, 3),
        "images_per_s": round(count / dt, 1),
        "ms_per_image": round(1e3 * dt / count, 2),
        "rejection_rate": round(1 - count / tries, 3),
        "accepted_mean_fill": round(float(np.mean(fills)), 3),
        "accepted_mean_entropy": round(float(np.mean(ents)), 2),
    }


def rejection_grid(count: int, size: int, seed: int) -> None:
    """Fill/entropy of raw draws (no rejection) and the rejection rate each threshold pair would give."""
    fills = [0.03, 0.05, 0.08]
    ents = [0.6, 0.8, 1.0, 1.2, 1.5]
    stats = {}
    for kind in KINDS:
        q = np.array(
            [quality(render_fractal(sample_fractal_params(np.random.default_rng([seed, i]), kind), size))
             for i in range(count)]
        )
        stats[kind] = q
        print(
            f"{kind:6s} raw draws: fill quantiles 10/50/90% {np.round(np.quantile(q[:, 0], [0.1, 0.5, 0.9]), 3)}, "
            f"entropy {np.round(np.quantile(q[:, 1], [0.1, 0.5, 0.9]), 2)} bits"
        )
    print("rejection rate ifs/julia for min_fill (rows) x min_entropy (columns):")
    print("          " + "  ".join(f"{e:9.1f}" for e in ents))
    for f in fills:
        cells = []
        for e in ents:
            rates = [float(np.mean((q[:, 0] < f) | (q[:, 1] < e))) for q in stats.values()]
            cells.append("/".join(f"{r:.2f}" for r in rates).rjust(9))
        print(f"  {f:6.2f}  " + "  ".join(cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=200, help="accepted images per measurement")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stats", action="store_true", help="also print the rejection-rate grid")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON too")
    ap.add_argument("--no-tune", action="store_true", help="keep glibc's malloc defaults")
    args = ap.parse_args()

    print(
        f"size {args.size}px, {args.count} images per row, one thread, numpy {np.__version__}, "
        f"allocator tuned: {TUNED}, thresholds min_fill={MIN_FILL} min_entropy={MIN_ENTROPY}"
    )
    rows = [run_kind((k,), args.count, args.size, args.seed) for k in KINDS]
    rows.append(run_kind(KINDS, args.count, args.size, args.seed))
    print(f"{'kinds':10s} {'images/s':>9s} {'ms/img':>7s} {'rejected':>9s} {'fill':>6s} {'entropy':>8s}")
    for r in rows:
        print(
            f"{r['kinds']:10s} {r['images_per_s']:9.1f} {r['ms_per_image']:7.2f} {r['rejection_rate']:9.1%} "
            f"{r['accepted_mean_fill']:6.3f} {r['accepted_mean_entropy']:8.2f}"
        )
    if args.json:
        print(json.dumps(rows, indent=1))
    if args.stats:
        rejection_grid(args.count, args.size, args.seed + 1)


if __name__ == "__main__":
    main()
