"""pixmix.evaluate.suites / ood / report / eval_cli on tiny datasets in their real on-disk formats.

Every number evaluate reports is checked against an independent computation here: our own forward
passes through the readers in pixmix.data.readers and the functions of pixmix.evaluate.metrics, or a known answer
(a model that always predicts one class).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sklearn.metrics  # noqa: F401 - imported up front: its import draws from python's global RNG (rich)
import torch
from click.testing import CliRunner
from helpers import constant_model, no_global_rng, spread_model
from PIL import Image
from tiny_datasets import write_cifar10, write_cifar10_c, write_imagenet

from pixmix.augment.transforms import CenterCrop, Resize
from pixmix.cli.evaluate import eval_command
from pixmix.data.readers import CIFAR, CIFARCorrupted
from pixmix.evaluate import measures, metrics, ood
from pixmix.evaluate.report import PAPER_RESULTS, compare, load_results, write_report
from pixmix.evaluate.suites import evaluate
from pixmix.models import save_checkpoint
from pixmix.utils.errors import PixmixError

P_FILES = {"gaussian_noise": 5, "rotate": 4, "scale": 3}  # perturbation -> frames


def save(model: torch.nn.Module, path: Path, num_classes: int, recipe: dict, **extra) -> Path:
    save_checkpoint(path, {"model": {"arch": "smoke", "num_classes": num_classes, "kwargs": {}},
                           "model_state": model.state_dict(), "recipe": recipe, **extra})
    return path


CIFAR_RECIPE = {"name": "cifar", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "image_size": 32}


def logits_of(model: torch.nn.Module, images_nhwc: np.ndarray, mean=(0.5,) * 3, std=(0.5,) * 3) -> np.ndarray:
    # np.array: a copy, as -C arrays are read-only maps.
    x = torch.from_numpy(np.array(images_nhwc)).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(x).numpy()


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_cifar10(root, per_batch=40)
    write_cifar10_c(root, per_severity=8)
    folder = root / "CIFAR-10-P"
    folder.mkdir()
    rng = np.random.default_rng(5)
    for name, frames in P_FILES.items():
        base = rng.integers(0, 256, (6, 1, 32, 32, 3))
        jitter = rng.integers(-40, 41, (6, frames, 32, 32, 3))  # frames near one picture: some flips, not all
        np.save(folder / f"{name}.npy", np.clip(base + jitter, 0, 255).astype(np.uint8))
    return root


@pytest.fixture(scope="module")
def spread_run(cifar_root, tmp_path_factory):
    model = spread_model(10)
    ckpt = save(model, tmp_path_factory.mktemp("ckpt") / "spread.pt", 10, CIFAR_RECIPE)
    with no_global_rng():
        results = evaluate(ckpt, "cifar10", cifar_root, device="cpu", batch_size=16, ood_samples=30,
                           pgd_samples=12, progress=False, log=lambda m: None)
    return model, ckpt, results


def test_clean_and_corruption_numbers_match_an_independent_computation(cifar_root, spread_run) -> None:
    model, _, results = spread_run
    test = CIFAR(cifar_root, "cifar10", train=False)
    logits = logits_of(model, test.images)
    assert results["clean"]["error"] == pytest.approx(metrics.top1_error(logits, test.labels))
    assert 0 < results["clean"]["error"] < 100 and results["clean"]["samples"] == 40
    probs = torch.from_numpy(logits).softmax(1).numpy()
    # Two figures: the reference's (last bin dropped: with 40 images the only bin, so 0) and the corrected one.
    conf, right = probs.max(1), probs.argmax(1) == test.labels
    assert results["clean"]["rms_calibration"] == metrics.rms_calibration_error(conf, right, drop_last_bin=True) == 0
    assert results["clean"]["rms_calibration_corrected"] == pytest.approx(metrics.rms_calibration_error(conf, right))
    assert results["clean"]["rms_calibration_corrected"] > 0

    errors, confs, corrects = {}, [], []
    for c in metrics.CORRUPTIONS:
        errors[c] = []
        for s in range(1, 6):
            data = CIFARCorrupted(cifar_root, "cifar10", c, s)
            p = torch.from_numpy(logits_of(model, data.images)).softmax(1).numpy()
            errors[c].append(float(np.mean(p.argmax(1) != data.labels)))
            confs.append(p.max(1))
            corrects.append(p.argmax(1) == data.labels)
    got = results["corruptions"]
    assert got["per_corruption"] == pytest.approx(metrics.corruption_errors(errors))
    assert got["mce"] == pytest.approx(np.mean([np.mean(v) for v in errors.values()]) * 100)
    assert got["mce"] == got["mean_error"] and got["mce_normalisation"] == "none"  # CIFAR: no AlexNet
    # Calibration on C: per corruption (its 5 severities together, as the reference evaluates each file),
    # averaged; the pooled error is reported beside it.
    # averaged; the pooled error is reported beside it. Reference (last bin dropped) and corrected.
    for drop, suffix in ((True, ""), (False, "_corrected")):
        per = [metrics.rms_calibration_error(np.concatenate(confs[5 * i:5 * i + 5]),
                                             np.concatenate(corrects[5 * i:5 * i + 5]), drop_last_bin=drop)
               for i in range(len(metrics.CORRUPTIONS))]
        assert got[f"rms_calibration{suffix}"] == pytest.approx(np.mean(per))
        assert got[f"rms_calibration_pooled{suffix}"] == pytest.approx(
            metrics.rms_calibration_error(np.concatenate(confs), np.concatenate(corrects), drop_last_bin=drop))
        assert results["summary"][f"rms_calibration_c{suffix}"] == got[f"rms_calibration{suffix}"]
    assert got["rms_calibration_corrected"] > 0 and got["rms_calibration_pooled"] > 0  # 200 pooled: 2 bins


def test_flip_rate_and_t5d_match_an_independent_computation(cifar_root, spread_run) -> None:
    model, _, results = spread_run
    per = results["perturbations"]["per_perturbation"]
    assert sorted(per) == sorted(P_FILES)
    for name, frames in P_FILES.items():
        videos = np.load(cifar_root / "CIFAR-10-P" / f"{name}.npy")
        logits = logits_of(model, videos.reshape(-1, 32, 32, 3)).reshape(6, frames, 10)
        noise = name == "gaussian_noise"
        assert per[name]["noise"] is noise
        assert per[name]["flip_rate"] == pytest.approx(metrics.flip_rate(logits.argmax(2), noise))
        assert per[name]["t5d"] == pytest.approx(metrics.t5d(metrics.top5_rankings(logits), noise))
    flips = [per[n]["flip_rate"] for n in P_FILES]
    assert results["perturbations"]["mfr"] == pytest.approx(np.mean(flips)) and max(flips) > 0
    assert results["summary"]["mfr"] == results["perturbations"]["mfr"]
    assert "mFR / mT5D over 3 of 10 perturbations" in results["notes"]


def test_pgd_anomaly_and_notes(cifar_root, spread_run) -> None:
    _, ckpt, results = spread_run
    adv = results["adversarial"]
    assert adv["samples"] == 12 and adv["epsilon"] == pytest.approx(2 / 255) and adv["steps"] == 20
    an = results["anomaly"]
    assert sorted(an["per_set"]) == sorted(ood.SYNTHETIC_SETS)
    assert an["auroc"] == pytest.approx(np.mean([v["auroc"] for v in an["per_set"].values()]))
    assert all(v["samples"] == 30 for v in an["per_set"].values())
    notes = "\n".join(results["notes"])
    assert f"skipped: {cifar_root / 'CIFAR-10-C-Bar'} not found" in notes
    assert f"skipped: {cifar_root / 'ood' / 'textures'} not found" in notes
    assert f"skipped: {cifar_root / 'CIFAR-10-P' / 'spatter.npy'} not found" in notes
    assert "anomaly means over 3 of 7 OOD sets" in notes
    # Same seed, same numbers (PGD start and OOD sets are seeded); another seed, other OOD images.
    again = evaluate(ckpt, "cifar10", cifar_root, device="cpu", batch_size=16, ood_samples=30, pgd_samples=12,
                     limit=40, progress=False, log=lambda m: None)
    assert again["adversarial"] == adv and again["anomaly"] == an
    other = evaluate(ckpt, "cifar10", cifar_root, device="cpu", batch_size=16, ood_samples=30, pgd_samples=12,
                     seed=1, progress=False, log=lambda m: None)
    assert other["anomaly"]["per_set"]["gaussian"] != an["per_set"]["gaussian"]
    json.dumps(results)  # plain JSON values only


def test_constant_model_known_answers(cifar_root, tmp_path) -> None:
    ckpt = save(constant_model(10, winner=3), tmp_path / "const.pt", 10, CIFAR_RECIPE)
    results = evaluate(ckpt, "cifar10", cifar_root, device="cpu", batch_size=16, ood_samples=20, progress=False,
                       log=lambda m: None)
    labels = CIFAR(cifar_root, "cifar10", train=False).labels
    assert results["clean"]["error"] == pytest.approx(np.mean(labels != 3) * 100)
    conf = float(torch.softmax(constant_model(10, 3).fc.bias.detach(), 0).max())
    # 40 test images: one calibration bin, so RMS = |confidence - accuracy| (the reference drops it: 0).
    assert results["clean"]["rms_calibration_corrected"] == pytest.approx(abs(conf - np.mean(labels == 3)) * 100)
    assert results["clean"]["rms_calibration"] == 0.0
    assert all(v["flip_rate"] == 0 and v["t5d"] == 0 for v in results["perturbations"]["per_perturbation"].values())
    # Zero input gradient: PGD cannot move a prediction.
    assert results["adversarial"]["pgd_error"] == pytest.approx(results["clean"]["error"])
    # Every score ties: chance AUROC, AUPR = the share of anomalies, FPR95 = 100%.
    for v in results["anomaly"]["per_set"].values():
        assert v["auroc"] == pytest.approx(50.0) and v["aupr"] == pytest.approx(100 * 20 / 60)
        assert v["fpr95"] == pytest.approx(100.0)
    # --reference-calibration (drop_last_bin) is accepted for older callers: it changes nothing, and says so.
    dropped = evaluate(ckpt, "cifar10", cifar_root, device="cpu", batch_size=16, ood_samples=20, limit=40,
                       drop_last_bin=True, progress=False, log=lambda m: None)
    assert dropped["clean"] == results["clean"] and dropped["summary"] == results["summary"]
    assert any("--reference-calibration has no effect" in n for n in dropped["notes"])


def test_optional_sets_when_present(cifar_root, tmp_path) -> None:
    root = tmp_path / "data"
    shutil.copytree(cifar_root, root)
    cbar = root / "CIFAR-10-C-Bar"
    cbar.mkdir()
    rng = np.random.default_rng(9)
    labels = rng.integers(0, 10, 4).astype(np.int64)  # stored once: repeated for each severity
    np.save(cbar / "labels.npy", labels)
    for name in ("ripple", "sparkles"):
        np.save(cbar / f"{name}.npy", rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8))
    textures = root / "ood" / "textures" / "banded"
    textures.mkdir(parents=True)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40 + 7 * i, 50, 3), dtype=np.uint8)).save(textures / f"t{i}.png")
    model = spread_model(10)
    ckpt = save(model, tmp_path / "m.pt", 10, CIFAR_RECIPE)
    results = evaluate(ckpt, "cifar10", root, device="cpu", batch_size=16, ood_samples=3, pgd_samples=2,
                       progress=False, log=lambda m: None)
    c_bar = results["c_bar"]
    assert sorted(c_bar["per_corruption"]) == ["ripple", "sparkles"]
    images = np.load(cbar / "ripple.npy")
    expected = [np.mean(logits_of(model, images[4 * s:4 * s + 4]).argmax(1) != labels) * 100 for s in range(5)]
    assert c_bar["errors"]["ripple"] == pytest.approx(expected)
    assert any("CIFAR-10-C-Bar has no blue_noise_sample" in n for n in results["notes"])
    assert results["anomaly"]["per_set"]["textures"]["samples"] == 3  # a seeded subset of the 5 files
    assert ood.ImageFiles(root / "ood" / "textures", limit=3, seed=0).files == \
        ood.ImageFiles(root / "ood" / "textures", limit=3, seed=0).files


def test_missing_required_sets_name_the_path(cifar_root, tmp_path) -> None:
    ckpt = save(spread_model(10), tmp_path / "m.pt", 10, CIFAR_RECIPE)
    with pytest.raises(ValueError, match=r"cifar-10-batches-py/test_batch not found"):
        evaluate(ckpt, "cifar10", tmp_path / "nothing", device="cpu", progress=False)
    root = tmp_path / "data"
    shutil.copytree(cifar_root, root)
    (root / "CIFAR-10-C" / "fog.npy").unlink()
    with pytest.raises(ValueError, match=r"CIFAR-10-C/fog.npy not found"):
        evaluate(ckpt, "cifar10", root, device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"cifar-100-python/test not found"):
        evaluate(ckpt, "cifar100", root, device="cpu", progress=False)
    cifar100 = tmp_path / "c100"
    (cifar100 / "cifar-100-python").mkdir(parents=True)
    (cifar100 / "cifar-100-python" / "test").write_bytes(b"")
    shutil.copytree(cifar_root / "CIFAR-10-C", cifar100 / "CIFAR-100-C")
    with pytest.raises(ValueError, match=r"m.pt: its model has 10 classes but --suite cifar100 has 100"):
        evaluate(ckpt, "cifar100", cifar100, device="cpu", progress=False)
    with pytest.raises(ValueError, match="--suite must be one of"):
        evaluate(ckpt, "svhn", root)


def test_report_files_and_compare(spread_run, tmp_path) -> None:
    _, _, results = spread_run
    paths = write_report(results, tmp_path / "out")
    md = paths["md"].read_text()
    assert ("| Method | Clean Error (%) ↓ | Corruptions mCE (%) ↓ | Consistency mFR (%) ↓ | Adversaries PGD error "
            "(%) ↓ | Calibration RMS on C (%) [paper's way] ↓ | Anomaly Detection AUROC (%) ↑ |") in md
    assert "| Paper: Baseline | 4.4 | 26.4 | 3.4 | 91.3 | 22.7 | 91.9 |" in md
    assert "| Paper: PixMix | 4.2 | 9.5 | 1.7 | 82.1 | 3.7 | 97.0 |" in md
    assert f"| This run | {results['summary']['clean_error']:.1f} |" in md
    assert "| gaussian_noise | noise |" in md and "skipped:" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert load_results(tmp_path / "out")["summary"] == results["summary"]
    pixmix_like = json.loads(json.dumps(results))
    pixmix_like["summary"]["mfr"] = None  # a run without -P
    out = compare({"baseline": results, "pixmix": pixmix_like}, tmp_path / "cmp")
    table = out["md"].read_text()
    assert "| baseline |" in table and "| pixmix |" in table and "| Paper: PixMix |" in table
    assert table.count("| - |") == 1 and "`-`: not measured in this run (P mFR)" in table  # the missing mFR
    assert out["png"].read_bytes()[:4] == b"\x89PNG"
    assert json.loads(out["json"].read_text())["rows"]["Paper: Baseline"] == PAPER_RESULTS["cifar10"]["Baseline"]


def test_cli(cifar_root, spread_run, tmp_path) -> None:
    _, ckpt, _ = spread_run
    runner = CliRunner()
    args = ["--checkpoint", str(ckpt), "--suite", "cifar10", "--data", str(cifar_root), "--out", str(tmp_path / "o"),
            "--device", "cpu", "--limit", "8", "--ood-samples", "8", "--quiet", "--workers", "0"]
    result = runner.invoke(eval_command, args)
    assert result.exit_code == 0, result.output
    assert "| Paper: PixMix |" in result.output and (tmp_path / "o" / "results.md").is_file()
    assert json.loads((tmp_path / "o" / "results.json").read_text())["clean"]["samples"] == 8
    result = runner.invoke(eval_command, [*args[:4], "--data", str(tmp_path / "none"), *args[6:]])
    assert result.exit_code == 1 and "Error:" in result.output and "test_batch not found" in result.output
    code = "import sys, pixmix.cli.evaluate; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_cli_user_errors_are_one_line_and_bugs_keep_their_traceback(cifar_root, spread_run, tmp_path,
                                                                      monkeypatch) -> None:
    _, ckpt, _ = spread_run
    runner = CliRunner()
    args = ["--checkpoint", str(ckpt), "--suite", "cifar10", "--data", str(cifar_root), "--out", str(tmp_path / "o"),
            "--device", "cpu", "--limit", "4", "--ood-samples", "4", "--quiet", "--workers", "0"]
    missing = runner.invoke(eval_command, [*args[:4], "--data", str(tmp_path / "none"), *args[6:]])
    assert missing.exit_code == 1 and isinstance(missing.exception, SystemExit)
    assert missing.output.startswith("Error: ") and missing.output.count("\n") == 1
    assert "test_batch not found" in missing.output and "under --data" in missing.output
    bad_device = runner.invoke(eval_command, [*args[:8], "--device", "gpu0", *args[10:]])
    assert bad_device.exit_code == 1 and bad_device.output == (
        "Error: --device 'gpu0' is not a device (use auto, cpu, cuda or cuda:N)\n")
    if not torch.cuda.is_available():
        no_cuda = runner.invoke(eval_command, [*args[:8], "--device", "cuda", *args[10:]])
        assert no_cuda.exit_code == 1 and no_cuda.output == (
            "Error: --device cuda: CUDA is not available here (use cpu or auto)\n")
    # Anything but a PixmixError is a bug of the library: it leaves the command with its traceback,
    # even a plain ValueError.
    bug = ValueError("a library bug")

    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setattr(measures, "clean", broken)
    result = runner.invoke(eval_command, args)
    assert result.exception is bug and result.exit_code == 1 and "Error:" not in result.output


def test_library_errors_name_the_parameter(cifar_root, spread_run, tmp_path) -> None:
    _, ckpt, _ = spread_run
    cases = [(dict(suite="svhn"), "suite", "--suite must be one of cifar10, cifar100, imagenet"),
             (dict(batch_size=0), "batch_size", "--batch-size must be >= 1, got 0"),
             (dict(seed=-1), "seed", "--seed must be >= 0"),
             (dict(data_dir=tmp_path / "none"), "data_dir", "test_batch not found"),
             (dict(device="gpu0"), "device", "'gpu0' is not a device")]
    for change, param, message in cases:
        kwargs = {"checkpoint": ckpt, "suite": "cifar10", "data_dir": cifar_root, "device": "cpu", "progress": False,
                  **change}
        with pytest.raises(PixmixError, match=message) as err:
            evaluate(**kwargs)
        assert err.value.param == param


def test_a_c_bar_folder_without_corruptions_is_skipped_with_a_note(cifar_root, spread_run, tmp_path) -> None:
    _, ckpt, _ = spread_run
    root = tmp_path / "data"
    shutil.copytree(cifar_root, root)
    (root / "CIFAR-10-C-Bar").mkdir()
    np.save(root / "CIFAR-10-C-Bar" / "labels.npy", np.zeros(4, np.int64))
    results = evaluate(ckpt, "cifar10", root, device="cpu", batch_size=16, ood_samples=4, pgd_samples=2, limit=4,
                       workers=0, progress=False, log=lambda m: None)
    assert "c_bar" not in results
    skipped = f"skipped: {root / 'CIFAR-10-C-Bar'} holds none of blue_noise_sample"
    assert any(n.startswith(skipped) for n in results["notes"])


def test_synthetic_ood_sets() -> None:
    with no_global_rng():
        gauss = ood.gaussian_noise(300, 32, seed=0)
        rade = ood.rademacher_noise(300, 32, seed=0)
        blob = ood.blobs(300, 32, seed=0)
    for a in (gauss, rade, blob):
        assert a.dtype == np.uint8 and a.shape == (300, 32, 32, 3)
    assert np.array_equal(gauss, ood.synthetic_set("gaussian", 300, 32, 0))
    assert not np.array_equal(gauss, ood.gaussian_noise(300, 32, seed=1))
    # N(0.5, 0.25) clipped to [0, 1]: P(clipped at each end) = P(Z > 2) = 0.02275;
    # std = 0.25 sqrt(E clip(Z, -2, 2)^2) = 0.25 sqrt(0.9545 - 4 phi(2) + 4 * 0.0455) = 0.2399.
    x = gauss / 255
    assert x.mean() == pytest.approx(0.5, abs=0.005) and x.std() == pytest.approx(0.2399, abs=0.003)
    assert (gauss == 0).mean() == pytest.approx(0.02275, abs=0.002)
    assert (gauss == 255).mean() == pytest.approx(0.02275, abs=0.002)
    assert set(np.unique(rade)) == {0, 255} and (rade == 255).mean() == pytest.approx(0.5, abs=0.01)
    # Blobs: zero, or at least 0.75 after the blur; a minority of values lit.
    values = np.unique(blob)
    assert values[0] == 0 and values[1] >= 191 and 0.05 < (blob > 0).mean() < 0.5
    big = ood.blobs(4, 64, seed=0)
    assert np.array_equal(big[:, ::2, ::2], blob[:4]) and np.array_equal(big[:, 1::2, 1::2], blob[:4])
    with pytest.raises(ValueError, match="must be one of gaussian, rademacher, blobs"):
        ood.synthetic_set("uniform", 1, 32, 0)


def test_imagenet_suite_maps_wnids_and_normalises_by_alexnet(tmp_path) -> None:
    root = write_imagenet(tmp_path / "data", classes=3, per_class=1, val_per_class=2)
    wnids = sorted(p.name for p in (root / "val").iterdir())
    rng = np.random.default_rng(2)
    for c in metrics.CORRUPTIONS:
        for s in range(1, 6):
            # fog at severity 1 lacks the first class: its labels must still be the val indices of its wnids.
            for wnid in wnids[1:] if (c, s) == ("fog", 1) else wnids:
                folder = root / "ImageNet-C" / c / str(s) / wnid
                folder.mkdir(parents=True)
                Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "a.JPEG")
    recipe = {"name": "imagenet", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "image_size": 64}
    model = spread_model(3)
    ckpt = save(model, tmp_path / "in.pt", 3, recipe)
    results = evaluate(ckpt, "imagenet", root, device="cpu", batch_size=8, ood_samples=6, workers=0,
                       progress=False, log=lambda m: None)
    # Clean: Resize(73) (64 * 256 / 224) + CenterCrop(64), as the recipe's Resize(256) + CenterCrop(224).
    from pixmix.data.readers import ClassFolders

    val = ClassFolders(root / "val")
    crops = np.stack([np.asarray(CenterCrop(64).apply(Resize(73).apply(img, None), None)) for img, _ in val])
    logits = logits_of(model, crops, recipe["mean"], recipe["std"])
    assert results["clean"]["error"] == pytest.approx(metrics.top1_error(logits, np.array([lab for _, lab in val])))
    c = results["corruptions"]
    fractions = {k: [e / 100 for e in v] for k, v in c["errors"].items()}
    assert c["mce"] == pytest.approx(metrics.mce(fractions, metrics.ALEXNET_ERRORS))
    assert c["mce_normalisation"] == "alexnet"
    assert c["mean_error"] == pytest.approx(metrics.mce(fractions))
    # ImageNet-C goes through the same Resize + CenterCrop as val (the reference's evaluate_c).
    fog1 = np.stack([np.asarray(CenterCrop(64).apply(Resize(73).apply(Image.open(
        root / "ImageNet-C" / "fog" / "1" / w / "a.JPEG").convert("RGB"), None), None)) for w in wnids[1:]])
    fog1_preds = logits_of(model, fog1, recipe["mean"], recipe["std"]).argmax(1)
    assert c["errors"]["fog"][0] == pytest.approx(np.mean(fog1_preds != np.array([1, 2])) * 100)
    assert any("ImageNet-P not found" in n for n in results["notes"])
    assert results["summary"]["mfr"] is None and results["anomaly"]["per_set"]["blobs"]["samples"] == 6
    # ImageNet-P averages its own ten (snow in, spatter a validation sequence); a broken optional file is skipped.
    p_dir = root / "ImageNet-P"
    p_dir.mkdir()
    for name in ("snow", "spatter"):
        np.save(p_dir / f"{name}.npy", rng.integers(0, 256, (2, 3, 64, 64, 3), dtype=np.uint8))
    np.save(p_dir / "rotate.npy", np.zeros((2, 3), np.float32))
    with_p = evaluate(ckpt, "imagenet", root, device="cpu", batch_size=8, ood_samples=6, workers=0,
                      progress=False, log=lambda m: None)["perturbations"]
    assert with_p["per_perturbation"]["snow"]["in_mean"] and not with_p["per_perturbation"]["spatter"]["in_mean"]
    assert with_p["perturbations"] == 1 and with_p["mfr_raw"] == with_p["per_perturbation"]["snow"]["flip_rate"]
    assert with_p["mfr"] is None and with_p["normalisation"] == "none"  # AlexNet's rates not given
    wrong = save(model, tmp_path / "wrong.pt", 3, recipe, classes=[wnids[0], wnids[1], "n99999999"])
    with pytest.raises(ValueError, match=r"val: its class folders are not the checkpoint's classes"):
        evaluate(wrong, "imagenet", root, device="cpu", workers=0, progress=False)
    with pytest.raises(ValueError, match=r"ImageNet-C/gaussian_noise/1 not found"):
        evaluate(ckpt, "imagenet", _val_only(root, tmp_path), device="cpu", progress=False)


def _val_only(root: Path, tmp_path: Path) -> Path:
    other = tmp_path / "val_only"
    shutil.copytree(root / "val", other / "val")
    return other


def test_limit_runs_are_flagged_as_subsets(cifar_root, spread_run, tmp_path, monkeypatch) -> None:
    """Issue 15: a --limit run beside the paper's full-set rows says it is a subset (md, png, printed summary)."""
    import pixmix.evaluate.report as report_module

    _, ckpt, _ = spread_run
    titles: list[str] = []
    real_plot = report_module.plot

    def recording_plot(rows, path, title="", **kwargs):
        titles.append(title)
        return real_plot(rows, path, title=title, **kwargs)

    monkeypatch.setattr(report_module, "plot", recording_plot)
    args = ["--checkpoint", str(ckpt), "--suite", "cifar10", "--data", str(cifar_root), "--out", str(tmp_path / "o"),
            "--device", "cpu", "--limit", "8", "--ood-samples", "8", "--quiet", "--workers", "0"]
    result = CliRunner().invoke(eval_command, args)
    assert result.exit_code == 0, result.output
    assert "| This run † (subset: 8 per set) |" in result.output
    assert "† subset: at most 8 images per set (--limit 8)" in result.output
    md = (tmp_path / "o" / "results.md").read_text()
    assert "| This run † (subset: 8 per set) |" in md and "**† subset: at most 8 images per set" in md
    assert json.loads((tmp_path / "o" / "results.json").read_text())["subset"] == {"limit": 8}
    assert titles == ["cifar10: this run vs the paper\nsubset: 8 per set (the paper's rows: full sets)"]
    # a full-set run: no marker, no note
    _, _, full = spread_run
    assert "†" not in write_report(full, tmp_path / "full")["md"].read_text()
    assert titles[-1] == "cifar10: this run vs the paper"
