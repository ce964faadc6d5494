"""The Places365 suite (the paper's Table 13) on a tiny Places365-Standard val in its released layout,
against an independent computation (our own forward passes, metrics and the reference calibration loop)."""

from __future__ import annotations

import numpy as np
import pytest
from test_paper_numbers import corrected_calib_err

from pixmix.evaluate import metrics
from pixmix.utils.errors import PixmixError


def write_places365(root, labels_for, count: int = 12, seed: int = 3):
    """Places365-Standard's val layout: ``val_256/Places365_val_%08d.jpg`` and ``places365_val.txt``;
    the images' labels come from ``labels_for(images)``."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "val_256").mkdir(parents=True)
    names, images = [], []
    for i in range(count):
        h, w = int(rng.integers(36, 60)), int(rng.integers(36, 60))
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        name = f"Places365_val_{i + 1:08d}.jpg"
        image.save(root / "val_256" / name, quality=95)
        names.append(name)
        images.append(Image.open(root / "val_256" / name).convert("RGB"))
    labels = labels_for(images)
    (root / "places365_val.txt").write_text("".join(f"{n} {int(lab)}\n" for n, lab in zip(names, labels, strict=True)))
    return images, np.asarray(labels)


def test_places365_suite_against_an_independent_computation(tmp_path) -> None:
    import torch
    from helpers import spread_model
    from PIL import Image
    from test_evaluate import logits_of, save

    from pixmix.augment.transforms import CenterCrop, Resize
    from pixmix.evaluate import ood
    from pixmix.evaluate.report import write_report
    from pixmix.evaluate.suites import evaluate

    recipe = {"name": "places", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "image_size": 32}
    model = spread_model(365)

    def crops(images):  # ImageNet's evaluation crop at 32 px: Resize(37) (32 * 256 / 224), CenterCrop(32)
        return np.stack([np.asarray(CenterCrop(32).apply(Resize(37).apply(im, None), None)) for im in images])

    def probs(images):
        return torch.from_numpy(logits_of(model, crops(images), recipe["mean"], recipe["std"])).softmax(1).numpy()

    # Half the images labelled with the model's own prediction, half with another class: 50% error.
    root = tmp_path / "places"
    images, labels = write_places365(root, lambda ims: [(p + i % 2) % 365 for i, p in enumerate(probs(ims).argmax(1))])
    textures = root / "ood" / "textures" / "banded"
    textures.mkdir(parents=True)
    rng = np.random.default_rng(4)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(textures / f"t{i}.png")
    ckpt = save(model, tmp_path / "places.pt", 365, recipe)
    results = evaluate(ckpt, "places365", root, device="cpu", batch_size=8, ood_samples=6, workers=0,
                       progress=False, log=lambda m: None)
    p_in = probs(images)
    assert results["clean"]["error"] == 50.0 and results["clean"]["samples"] == 12
    assert results["clean"]["rms_calibration_corrected"] == pytest.approx(
        corrected_calib_err(p_in.max(1), p_in.argmax(1) == labels), rel=1e-4)  # float32 inference
    an = results["anomaly"]
    assert sorted(an["per_set"]) == ["blobs", "gaussian", "rademacher", "textures"]
    gaussian = ood.synthetic_set("gaussian", 6, 32, 0)
    p_out = torch.from_numpy(logits_of(model, gaussian, recipe["mean"], recipe["std"])).softmax(1).numpy()
    expected = metrics.anomaly_metrics(-p_in.max(1), -p_out.max(1))
    assert {k: an["per_set"]["gaussian"][k] for k in expected} == pytest.approx(expected, rel=1e-4)
    p_tex = probs([Image.open(p).convert("RGB") for p in sorted(textures.glob("*.png"))])
    assert an["per_set"]["textures"]["auroc"] == pytest.approx(
        metrics.anomaly_metrics(-p_in.max(1), -p_tex.max(1))["auroc"])
    assert an["auroc"] == pytest.approx(np.mean([v["auroc"] for v in an["per_set"].values()]))
    notes = "\n".join(results["notes"])
    assert "anomaly set ImageNet" in notes and "anomaly means over 4 of 7 OOD sets" in notes
    assert results["summary"]["auroc"] == an["auroc"] and results["summary"]["mce"] is None
    # The report: Table 13's averages beside ours, and per OOD set the paper's Baseline / OE / PixMix.
    md = write_report(results, tmp_path / "report")["md"].read_text()
    assert "| Paper: PixMix | 87.6 | 76.2 |" in md and "| Paper: OE | 89.2 | 66.9 |" in md
    g = an["per_set"]["gaussian"]
    assert f"| gaussian | {g['auroc']:.1f} | 72.2 | 93.5 | 100.0 | {g['aupr']:.1f} | 23.5 | 54.1 | 100.0 |" in md
    assert "| places | - | 61.5 | 63.1 | 62.3 | - | 23.4 | 24.9 | 31.3 |" in md
    # The command line: the Table 13 layout with the paper's rows.
    from click.testing import CliRunner

    from pixmix.cli.evaluate import eval_command

    cli = CliRunner().invoke(eval_command, ["--checkpoint", str(ckpt), "--suite", "places365", "--data", str(root),
                                            "--out", str(tmp_path / "cli"), "--device", "cpu", "--ood-samples", "6",
                                            "--quiet", "--workers", "0"])
    assert cli.exit_code == 0, cli.output
    assert f"| This run | {an['auroc']:.1f} | {an['aupr']:.1f} |" in cli.output
    assert "| Paper: OE | 89.2 | 66.9 |" in cli.output
    # A label file that is not one: one line naming the file and line.
    (root / "places365_val.txt").write_text("Places365_val_00000001.jpg\n")
    with pytest.raises(PixmixError, match=r"places365_val.txt:1: expected '<file name> <class index>'"):
        evaluate(ckpt, "places365", root, device="cpu", workers=0, progress=False)
