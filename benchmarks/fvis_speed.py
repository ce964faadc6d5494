"""Feature-visualisation throughput: Lucent's render_vis (one unit per call) vs mixset.sources.fvis (batched,
truncated trunk), side by side on torchvision ResNet-50 ``layer1.0.conv1``, 128 px parameters.

    python benchmarks/fvis_speed.py                                  # GPU if present, 512 steps
    python benchmarks/fvis_speed.py --device cpu --steps 16 --units 64 --lucent-units 2

Rows (fvis/s = finished unit visualisations per second, at --steps steps each):
  lucent        lucent.optvis.render.render_vis(model, "layer1_0_conv1:<u>", show_image=False,
                progress=False, thresholds=(steps,)), one unit per call, whole model at 224 px.
                Lucent hard-codes cuda:0 (CPU when there is no CUDA), so this row runs there whatever
                --device says. Its forward hooks are never removed; the benchmark clears them after
                each call so that later calls are not slowed by stacked hooks.
  fvis          mixset.sources.fvis.render_units(trunk, units, batch=--batch): Lucent's parameterisation and
                standard transforms, forward pass stopped after the layer.
  fvis-plain    the same without Lucent's random transforms (--no-plain to skip): what the transforms
                cost.
Weights: random-init by default (timing does not depend on them; no download); --weights default
tries torchvision's ImageNet weights and falls back to random-init with a warning.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch

from mixset.sources import fvis

LAYER = "layer1.0.conv1"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_lucent(model: torch.nn.Module, units: list[int], steps: int) -> dict:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        from lucent.optvis import render
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")  # Lucent's own choice
    model.to(device).eval()
    objective = "layer1_0_conv1:{}"
    times = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # Lucent draws its initial spectra from the global RNG
        for u in units:
            sync(device)
            t0 = time.perf_counter()
            render.render_vis(model, objective.format(u), show_image=False, progress=False, thresholds=(steps,))
            sync(device)
            times.append(time.perf_counter() - t0)
            for module in model.modules():  # render_vis leaves a hook on every module
                module._forward_hooks.clear()
    total = sum(times)
    return {"row": "lucent", "device": str(device), "units": len(units), "batch": 1, "seconds": round(total, 2),
            "fvis_per_s": round(len(units) / total, 3), "s_per_step_per_call": round(total / len(units) / steps, 4)}


def bench_fvis(
    model: torch.nn.Module, units: list[int], steps: int, batch: int, device: torch.device, transforms: str
) -> dict:
    trunk = fvis.truncated_trunk(model, LAYER)
    # warm-up (allocator, oneDNN/cuDNN kernel choice, Lucent import)
    fvis.render_units(trunk, units[:batch], size=128, steps=1, device=device, batch=batch, transforms=transforms)
    sync(device)
    t0 = time.perf_counter()
    images = fvis.render_units(trunk, units, size=128, steps=steps, device=device, batch=batch, transforms=transforms)
    total = time.perf_counter() - t0  # render_units returns CPU tensors: already synchronised
    assert images.shape == (len(units), 3, 128, 128)
    calls = -(-len(units) // batch)
    return {"row": "fvis" if transforms == "lucent" else "fvis-plain", "device": str(device), "units": len(units),
            "batch": batch, "seconds": round(total, 2), "fvis_per_s": round(len(units) / total, 3),
            "s_per_step_per_call": round(total / calls / steps, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=512)
    parser.add_argument("--units", type=int, default=64, help="units for the batched renderer")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lucent-units", type=int, default=2, help="units for Lucent, one call each")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--weights", default="random", help="'random' (default) or 'default' (torchvision)")
    parser.add_argument("--no-plain", action="store_true", help="skip the run without random transforms")
    args = parser.parse_args()
    device = torch.device(args.device)

    model, desc = fvis.load_model("resnet50", weights=args.weights)
    print(f"resnet50 {LAYER}, 128 px -> 224 px, {args.steps} steps; weights: {desc}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA'}")
    rows = [bench_lucent(model, list(range(args.lucent_units)), args.steps)]
    rows.append(bench_fvis(model, list(range(args.units)), args.steps, args.batch, device, "lucent"))
    if not args.no_plain:
        rows.append(bench_fvis(model, list(range(args.units)), args.steps, args.batch, device, "none"))
    print(f"{'row':<11} {'device':<7} {'units':>5} {'batch':>5} {'seconds':>8} {'fvis/s':>8} {'s/step/call':>11}")
    for r in rows:
        print(f"{r['row']:<11} {r['device']:<7} {r['units']:>5} {r['batch']:>5} {r['seconds']:>8} "
              f"{r['fvis_per_s']:>8} {r['s_per_step_per_call']:>11}")
    base = rows[0]["fvis_per_s"]
    for r in rows[1:]:
        r["speedup_vs_lucent"] = round(r["fvis_per_s"] / base, 1)
        print(f"{r['row']} / lucent: {r['speedup_vs_lucent']}x")
    # The paper's set holds about 4,700 FVis; issue 3's target is under 10 minutes on one H100.
    print(f"4,700 FVis at the batched rate ({args.steps} steps): {4700 / rows[1]['fvis_per_s'] / 60:.1f} min")
    print(json.dumps({"steps": args.steps, "weights": desc, "rows": rows}))


if __name__ == "__main__":
    main()
