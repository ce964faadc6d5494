"""ImageNet evaluation at the paper's protocol: the released layouts (ImageNet-R, -C-Bar, -P mp4s, -O) and
their measures, each checked against an independent computation on known predictions.

The tiny trees are written by :mod:`pipelines.synthetic_imagenet` (real layouts, real wnids, H.264 mp4s
encoded with PyAV) or by the test itself.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import sklearn.metrics
import torch
import torchvision.transforms as T
from click.testing import CliRunner
from helpers import constant_model, spread_model
from PIL import Image

from pipelines.synthetic_imagenet import TENCH, suite_wnids, write_imagenet_suite, write_video
from pixmix.cli.evaluate import eval_command
from pixmix.data.benchmarks import CORRUPTIONS, IMAGENET_C_BAR_CORRUPTIONS, IMAGENET_P_PERTURBATIONS
from pixmix.evaluate import metrics
from pixmix.evaluate.imagenet_sets import (
    ALEXNET_P_RATES,
    IMAGENET_R_WNIDS,
    c_bar_severity_folders,
    normalised_rates,
    p_baseline_rates,
    read_video,
    renditions_result,
    severity_folders,
    video_consistency,
)
from pixmix.evaluate.inputs import Feeder
from pixmix.evaluate.measures import calibration
from pixmix.evaluate.net import Net
from pixmix.evaluate.suites import evaluate
from pixmix.models import save_checkpoint
from pixmix.utils.errors import PixmixError


@pytest.fixture(scope="module")
def suite_root(tmp_path_factory) -> Path:
    return write_imagenet_suite(tmp_path_factory.mktemp("imagenet"), classes=3, per_class=2, val_per_class=2)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_synthetic_suite_has_the_released_layouts(suite_root, tmp_path) -> None:
    wnids = suite_wnids(3)
    assert wnids == sorted([TENCH, IMAGENET_R_WNIDS[0], IMAGENET_R_WNIDS[1]]) and TENCH not in IMAGENET_R_WNIDS
    assert sorted(p.name for p in (suite_root / "val").iterdir()) == wnids
    assert len(list((suite_root / "train" / wnids[0]).glob("*.JPEG"))) == 2
    for name in CORRUPTIONS:
        assert sorted(p.name for p in (suite_root / "ImageNet-C" / name).iterdir()) == ["1", "2", "3", "4", "5"]
    # C-Bar: the generator's severity parameters, formatted "{:.2f}" as make_imagenet_c_bar.py names them.
    assert c_bar_severity_folders("caustic_refraction") == ("2.35", "3.20", "4.90", "6.60", "9.15")
    assert c_bar_severity_folders("blue_noise_sample") == ("0.80", "1.60", "2.40", "4.00", "5.60")
    for name in IMAGENET_C_BAR_CORRUPTIONS:
        folders = sorted((suite_root / "ImageNet-C-Bar" / name).iterdir())
        assert [p.name for p in folders] == sorted(c_bar_severity_folders(name))
        assert sorted(p.name for p in folders[0].iterdir()) == wnids
    # ImageNet-R: only the classes among its 200, as .jpg.
    assert sorted(p.name for p in (suite_root / "imagenet-r").iterdir()) == [w for w in wnids if w != TENCH]
    assert len(list((suite_root / "imagenet-r" / wnids[1]).glob("*.jpg"))) == 2
    for name in IMAGENET_P_PERTURBATIONS:
        videos = sorted((suite_root / "ImageNet-P" / name).rglob("*.mp4"))
        assert len(videos) == 6 and videos[0].parent.name in wnids
    assert len(list((suite_root / "ImageNet-O").rglob("*.jpg"))) == 6
    # A pure function of the seed, byte for byte (the mp4s too).
    again = write_imagenet_suite(tmp_path / "again", classes=3, per_class=2, val_per_class=2)
    assert _digests(again) == _digests(suite_root)


def test_videos_are_read_back_frame_by_frame(tmp_path) -> None:
    """PyAV round trip: H.264 (the release's codec) and MPEG-4 yuv420p mp4s (lossy) decode to the written
    frames within the codecs' error."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:48]
    frames = np.stack([np.stack([(xx * 5 + 20 * t) % 256, (yy * 7) % 256, np.full_like(xx, 40 * t)], axis=-1)
                       for t in range(6)]).astype(np.uint8)
    frames = np.clip(frames.astype(int) + rng.integers(-3, 4, frames.shape), 0, 255).astype(np.uint8)
    for codec in ("libx264", "mpeg4"):
        write_video(tmp_path / f"{codec}.mp4", frames, codec=codec)
        back = read_video(tmp_path / f"{codec}.mp4")
        assert back.shape == frames.shape and back.dtype == np.uint8
        assert np.abs(back.astype(int) - frames.astype(int)).mean() < 4
        # Each decoded frame is closest to the frame written at its position (order kept).
        distances = np.abs(back[:, None].astype(int) - frames[None].astype(int)).mean(axis=(2, 3, 4))
        assert np.array_equal(distances.argmin(axis=1), np.arange(6))
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(200)))
    with pytest.raises(ValueError, match=r"broken.mp4: not a readable video"):
        read_video(tmp_path / "broken.mp4")


# --- pixmix eval --suite imagenet on the synthetic tree, against independent computations ----------------

MEAN, STD, SIZE = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 48
RECIPE = {"name": "imagenet", "mean": MEAN, "std": STD, "image_size": SIZE}
CLASSES = 7  # >= 6: the reference's top-5 distance needs more than 5 classes


def save(model: torch.nn.Module, path: Path, classes: int) -> Path:
    save_checkpoint(path, {"model": {"arch": "smoke", "num_classes": classes, "kwargs": {}},
                           "model_state": model.state_dict(), "recipe": RECIPE})
    return path


def logits(model: torch.nn.Module, images_nhwc: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(np.array(images_nhwc)).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(x).numpy()


def crops(files: list[Path]) -> np.ndarray:
    """torchvision's Resize(256) + CenterCrop(224), scaled to 48 px: Resize(55) + CenterCrop(48)."""
    t = T.Compose([T.Resize(round(SIZE * 256 / 224)), T.CenterCrop(SIZE)])
    return np.stack([np.asarray(t(Image.open(f).convert("RGB"))) for f in files])


def folder_set(root: Path, wnids: list[str]) -> tuple[list[Path], np.ndarray]:
    """An ImageFolder's files (sorted by class, then name) and their labels as val's class indices."""
    files, labels = [], []
    for wnid in sorted(p.name for p in root.iterdir()):
        for f in sorted((root / wnid).iterdir()):
            files.append(f)
            labels.append(wnids.index(wnid))
    return files, np.array(labels)


def reference_calibration(confidence: np.ndarray, correct: np.ndarray, drop_last: bool) -> float:
    """PixMix's calib_err (p = 2, beta = 100), written out; ``drop_last=False`` keeps its last bin."""
    order = np.argsort(confidence, kind="stable")
    confidence, correct = confidence[order], correct[order].astype(float)
    bins = [[i * 100, (i + 1) * 100] for i in range(max(len(confidence) // 100, 1))]
    bins[-1][1] = len(confidence)
    used = bins[:-1] if drop_last else bins
    return float(np.sqrt(sum((b - a) / len(confidence) * (confidence[a:b].mean() - correct[a:b].mean()) ** 2
                             for a, b in used)) * 100)


def softmax_max(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).max(axis=1)


def reference_p(predictions: list[np.ndarray], logit_seqs: list[np.ndarray], noise: bool) -> tuple[float, float]:
    """ImageNet-P's test.py flip_prob and ranking_dist (top-5, difficulty 1), written out from its code."""
    classes = logit_seqs[0].shape[1]
    cum_sum_top5 = np.cumsum(np.asarray([0] + [1] * 5 + [0] * (classes - 1 - 5)))

    def dist(sigma: np.ndarray) -> float:
        return float(np.sum(np.abs(cum_sum_top5[:5] - cum_sum_top5[sigma - 1][:5])))

    flips, dists = 0.0, 0.0
    for preds, vid in zip(predictions, logit_seqs, strict=True):
        ranks = [np.argsort(np.argsort(-frame, kind="stable"), kind="stable") + 1 for frame in vid]  # ordinal
        prev, perm1 = preds[0], ranks[0]
        flip_v, dist_v = [], []
        for pred, perm2 in zip(preds[1:], ranks[1:], strict=True):
            flip_v.append(int(prev != pred))
            dist_v.append(dist(perm2[np.argsort(perm1)]))
            if not noise:
                prev, perm1 = pred, perm2
        flips += np.mean(flip_v) / len(predictions)
        dists += np.mean(dist_v) / len(predictions)
    return flips * 100, dists


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> dict:
    root = write_imagenet_suite(tmp_path_factory.mktemp("in7"), classes=CLASSES, per_class=1, val_per_class=1)
    model = spread_model(CLASSES)
    ckpt = save(model, tmp_path_factory.mktemp("ckpt") / "in.pt", CLASSES)
    baseline = tmp_path_factory.mktemp("alexnet") / "results.json"
    rates = {name: {"flip_rate": 40.0 + i, "t5d": 2.0 + i / 10} for i, name in enumerate(IMAGENET_P_PERTURBATIONS)}
    baseline.write_text(json.dumps({"perturbations": {"per_perturbation": rates}}))
    results = evaluate(ckpt, "imagenet", root, device="cpu", batch_size=64, ood_samples=50, workers=0,
                       progress=False, log=lambda m: None, p_baseline=str(baseline))
    return {"root": root, "model": model, "results": results, "rates": rates, "ckpt": ckpt}


def test_imagenet_c_and_c_bar_at_the_reference_protocol(evaluated) -> None:
    root, model, results = evaluated["root"], evaluated["model"], evaluated["results"]
    wnids = suite_wnids(CLASSES)
    for key, folder, names in (("corruptions", "ImageNet-C", CORRUPTIONS),
                               ("c_bar", "ImageNet-C-Bar", IMAGENET_C_BAR_CORRUPTIONS)):
        errors, reference_rms, corrected_rms = {}, [], []
        for name in names:
            errors[name] = []
            severities = [str(s) for s in range(1, 6)] if folder == "ImageNet-C" else c_bar_severity_folders(name)
            for severity in severities:
                files, labels = folder_set(root / folder / name / severity, wnids)
                z = logits(model, crops(files))
                correct = z.argmax(1) == labels
                errors[name].append(1 - correct.mean())
                reference_rms.append(reference_calibration(softmax_max(z), correct, drop_last=True))
                corrected_rms.append(reference_calibration(softmax_max(z), correct, drop_last=False))
        got = results[key]
        assert got["errors"] == {n: pytest.approx([e * 100 for e in v]) for n, v in errors.items()}
        assert got["mean_error"] == pytest.approx(np.mean(list(errors.values())) * 100)
        # RMS per corruption x severity (75, or 50), averaged, as the reference's evaluate_c.
        assert len(got["rms_calibration_per_corruption"]) == 5 * len(names)
        assert got["rms_calibration"] == pytest.approx(np.mean(reference_rms))
        assert got["rms_calibration_corrected"] == pytest.approx(np.mean(corrected_rms))
    alexnet = [np.mean(errors_c) / metrics.ALEXNET_ERRORS[c] for c, errors_c in _c_errors(results).items()]
    assert results["corruptions"]["mce"] == pytest.approx(np.mean(alexnet) * 100)
    assert results["c_bar"]["mce"] == results["c_bar"]["mean_error"]  # C-Bar: a plain mean error


def _c_errors(results: dict) -> dict[str, list[float]]:
    return {c: [e / 100 for e in v] for c, v in results["corruptions"]["errors"].items()}


def test_imagenet_r_restricts_predictions_to_its_classes(evaluated) -> None:
    root, model, results = evaluated["root"], evaluated["model"], evaluated["results"]
    wnids = suite_wnids(CLASSES)
    columns = [i for i, w in enumerate(wnids) if w in IMAGENET_R_WNIDS]
    assert columns == list(range(1, CLASSES))  # tench (class 0) is masked out
    files, labels = folder_set(root / "imagenet-r", wnids)
    z = logits(model, crops(files))[:, columns]  # the reference: net(x)[:, imagenet_r_mask]
    r_labels = np.array([columns.index(label) for label in labels])
    correct = z.argmax(1) == r_labels
    r = results["r"]
    assert r["samples"] == len(files) and r["error"] == pytest.approx((1 - correct.mean()) * 100)
    assert r["rms_calibration_corrected"] == pytest.approx(reference_calibration(softmax_max(z), correct, False))


def test_imagenet_r_known_answer_with_a_constant_model(tmp_path) -> None:
    """Always tench first (unmasked: every rendition wrong); masked, the first R class wins with
    confidence softmax(-0.1, -0.2)[0] = 1 / (1 + e^-0.1)."""
    root = write_imagenet_suite(tmp_path / "data", classes=3, per_class=1, val_per_class=2, p_frames=2)
    net = Net(constant_model(3, winner=0), MEAN, STD, SIZE, 3, torch.device("cpu"), progress=False)
    wnids = {w: i for i, w in enumerate(suite_wnids(3))}
    feed = Feeder(SIZE, 8, 0, imagenet=True)
    r = renditions_result(net, root, feed, None, wnids, [], calibration)
    confidence = 1 / (1 + np.exp(-0.1))
    assert r is not None and r["samples"] == 4 and r["error"] == pytest.approx(50.0)
    assert r["rms_calibration_corrected"] == pytest.approx(abs(confidence - 0.5) * 100)
    notes: list[str] = []
    assert renditions_result(net, tmp_path, feed, None, wnids, notes, calibration) is None
    assert "imagenet-r not found" in notes[0]
    (root / "imagenet-r" / TENCH).mkdir()
    shutil.copy(next((root / "val" / TENCH).iterdir()), root / "imagenet-r" / TENCH / "x.jpg")
    with pytest.raises(PixmixError, match=r"imagenet-r: class folders \['n01440764'\] are not among ImageNet-R"):
        renditions_result(net, root, feed, None, wnids, [], calibration)


def test_imagenet_p_videos_flip_rates_and_alexnet_normalisation(evaluated) -> None:
    root, model, results, rates = evaluated["root"], evaluated["model"], evaluated["results"], evaluated["rates"]
    p = results["perturbations"]
    ours = {}
    for name in IMAGENET_P_PERTURBATIONS:
        preds, seqs = [], []
        for f in sorted((root / "ImageNet-P" / name).rglob("*.mp4")):
            with av.open(str(f)) as container:  # decoded here with PyAV directly, frames fed unresized
                frames = np.stack([fr.to_ndarray(format="rgb24") for fr in container.decode(video=0)])
            z = logits(model, frames)
            preds.append(z.argmax(1))
            seqs.append(z)
        ours[name] = reference_p(preds, seqs, noise="noise" in name)
        got = p["per_perturbation"][name]
        assert got["sequences"] == CLASSES and got["frames"] == 5 and got["in_mean"]
        assert got["flip_rate"] == pytest.approx(ours[name][0]) and got["t5d"] == pytest.approx(ours[name][1])
    assert p["mfr_raw"] == pytest.approx(np.mean([v[0] for v in ours.values()]))
    assert p["mt5d_raw"] == pytest.approx(np.mean([v[1] for v in ours.values()]))
    # Normalised by AlexNet's rates (here a results.json standing for AlexNet's), perturbation by perturbation.
    assert p["normalisation"] == "alexnet"
    assert p["mfr"] == pytest.approx(np.mean([ours[n][0] / rates[n]["flip_rate"] for n in ours]) * 100)
    assert p["mt5d"] == pytest.approx(np.mean([ours[n][1] / rates[n]["t5d"] for n in ours]) * 100)
    assert sum(ours[n][0] for n in ours) > 0  # the sequences do flip some predictions: the check can fail


def test_out_of_class_anomaly_detection(evaluated) -> None:
    root, model, results = evaluated["root"], evaluated["model"], evaluated["results"]
    val_files, _ = folder_set(root / "val", suite_wnids(CLASSES))
    ood_files = sorted((root / "ImageNet-O").rglob("*.jpg"))
    in_scores = -softmax_max(logits(model, crops(val_files)))
    out_scores = -softmax_max(logits(model, crops(ood_files)))
    labels = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    scores = np.r_[in_scores, out_scores]
    anomaly = results["anomaly"]
    assert list(anomaly["per_set"]) == ["out_of_class"] and anomaly["per_set"]["out_of_class"]["samples"] == 6
    assert anomaly["auroc"] == pytest.approx(sklearn.metrics.roc_auc_score(labels, scores) * 100)
    assert anomaly["aupr"] == pytest.approx(sklearn.metrics.average_precision_score(labels, scores) * 100)


def test_alexnet_normalisation_known_answers(tmp_path) -> None:
    per = {"snow": {"flip_rate": 10.0, "t5d": 1.0}, "rotate": {"flip_rate": 30.0, "t5d": 3.0},
           "spatter": {"flip_rate": 99.0, "t5d": 9.0}}
    baseline = {"snow": {"flip_rate": 20.0, "t5d": 2.0}, "rotate": {"flip_rate": 40.0, "t5d": 6.0}}
    # mFR = mean(10/20, 30/40) = 62.5 %, mT5D = mean(1/2, 3/6) = 50 %; spatter is not in the mean.
    assert normalised_rates(per, ["snow", "rotate"], baseline) == {"mfr": 62.5, "mt5d": 50.0}
    assert normalised_rates(per, ["snow", "spatter"], baseline) is None  # no AlexNet rate for spatter
    assert normalised_rates(per, ["snow"], {"snow": {"flip_rate": 0.0, "t5d": 2.0}}) is None
    results_json = tmp_path / "alexnet.json"
    results_json.write_text(json.dumps({"perturbations": {"per_perturbation": {**baseline, "x": {"flip_rate": None}}}}))
    assert p_baseline_rates(str(results_json)) == baseline and p_baseline_rates(baseline) == baseline
    assert p_baseline_rates(None) == ALEXNET_P_RATES
    for text, message in (("{", "not a readable results.json"), ('{"perturbations": {}}', "no per-perturbation")):
        results_json.write_text(text)
        with pytest.raises(PixmixError, match=message) as info:
            p_baseline_rates(str(results_json))
        assert info.value.param == "p_baseline"


def test_c_bar_severity_folders(tmp_path) -> None:
    bar = tmp_path / "ImageNet-C-Bar"
    for severity in c_bar_severity_folders("sparkles"):
        (bar / "sparkles" / severity).mkdir(parents=True)
    for severity in range(1, 6):  # PixMix's own copy numbers the severities
        (bar / "ripple_like" / str(severity)).mkdir(parents=True)
    assert [p.name for p in severity_folders(bar, "sparkles")] == ["1.00", "2.00", "3.00", "5.00", "6.00"]
    assert [p.name for p in severity_folders(bar, "ripple_like")] == ["1", "2", "3", "4", "5"]
    assert severity_folders(bar, "plasma_noise") == []  # absent: left out of the mean (with a note)
    (bar / "sparkles" / "3.00").rmdir()
    with pytest.raises(PixmixError, match=r"sparkles/3.00 not found: ImageNet-C-Bar/sparkles lacks a severity"):
        severity_folders(bar, "sparkles")


def test_cli_flags_fail_in_one_line_before_inference(evaluated, tmp_path) -> None:
    root, ckpt = evaluated["root"], evaluated["ckpt"]
    (tmp_path / "bad.json").write_text("[]")
    base = ["--checkpoint", str(ckpt), "--suite", "imagenet", "--data", str(root), "--out", str(tmp_path / "o"),
            "--device", "cpu", "--quiet", "--workers", "0"]
    for extra, message in ((["--p-baseline", str(tmp_path / "bad.json")], "--p-baseline: "),
                           (["--ood-folder", str(tmp_path / "none")], "--ood-folder: ")):
        result = CliRunner().invoke(eval_command, base + extra)
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
        assert not (tmp_path / "o").exists()


def test_a_broken_or_one_frame_video_is_a_one_line_error(tmp_path) -> None:
    folder = tmp_path / "ImageNet-P" / "snow" / TENCH
    write_video(folder / "a.mp4", np.zeros((3, 16, 16, 3), np.uint8))
    (folder / "b.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    net = Net(constant_model(3, winner=0), MEAN, STD, 16, 3, torch.device("cpu"), progress=False)
    for workers in (0, 1):  # a worker's error reaches the user as the same one line
        with pytest.raises(PixmixError, match=r"b.mp4: not a readable video") as info:
            video_consistency(net, folder.parent, "snow", Feeder(16, 8, workers, imagenet=True), None)
        assert "\n" not in str(info.value) and info.value.param == "data_dir"
    (folder / "b.mp4").unlink()
    write_video(folder / "c.mp4", np.zeros((1, 16, 16, 3), np.uint8))
    with pytest.raises(PixmixError, match=r"c.mp4: 1 frame\(s\); a perturbation sequence needs at least 2"):
        video_consistency(net, folder.parent, "snow", Feeder(16, 8, 0, imagenet=True), None)
    (folder / "c.mp4").unlink()
    got = video_consistency(net, folder.parent, "snow", Feeder(16, 8, 0, imagenet=True), None)
    assert got["flip_rate"] == 0.0 and got["t5d"] == 0.0 and got["sequences"] == 1 and got["frames"] == 3


def test_pgd_is_not_run_on_imagenet_unless_asked(evaluated) -> None:
    """The paper reports no ImageNet PGD: by default the suite skips it, says so, and reports '-'."""
    from pixmix.evaluate.suites import IMAGENET_PGD_NOTE, summary

    results = evaluated["results"]
    assert "adversarial" not in results and IMAGENET_PGD_NOTE in results["notes"]
    assert summary(results)["pgd_error"] is None
    asked = evaluate(evaluated["ckpt"], "imagenet", evaluated["root"], device="cpu", batch_size=64, ood_samples=5,
                     workers=0, progress=False, log=lambda m: None, pgd_samples=2, limit=2)
    assert asked["adversarial"]["samples"] == 2 and 0 <= asked["adversarial"]["pgd_error"] <= 100
