"""Paper-comparable numbers (issue 13): the reference's RMS calibration (last bin dropped) beside the
corrected one, Outlier Exposure's FPR95 beside ours, the paper's tables as data and in the reports, the
Places365 suite and the 300K Random Images ``.npy`` reader.

Each metric is checked against an independent computation: a literal loop over the reference's
algorithm, or a brute force over every threshold, and hand-worked known answers.
"""

from __future__ import annotations

import numpy as np
import pytest

from pixmix.evaluate import metrics
from pixmix.utils.errors import PixmixError


def reference_calib_err(confidence: np.ndarray, correct: np.ndarray, beta: int = 100) -> float:
    """The reference's ``calib_err(p='2')`` written out as a loop (bins of ``beta``, the remainder in the
    last bin, which the loop then skips), in percent."""
    idx = np.argsort(confidence, kind="stable")
    confidence, correct = confidence[idx], correct[idx].astype(float)
    bins = [[i * beta, (i + 1) * beta] for i in range(len(confidence) // beta)]
    bins[-1][1] = len(confidence)
    total = 0.0
    for lo, hi in bins[:-1]:
        total += (hi - lo) / len(confidence) * (confidence[lo:hi].mean() - correct[lo:hi].mean()) ** 2
    return float(np.sqrt(total) * 100)


def corrected_calib_err(confidence: np.ndarray, correct: np.ndarray, beta: int = 100) -> float:
    """The same loop over every bin (fewer than ``beta`` samples: one bin)."""
    idx = np.argsort(confidence, kind="stable")
    confidence, correct = confidence[idx], correct[idx].astype(float)
    n = len(confidence)
    starts = list(range(0, max(n // beta, 1) * beta, beta))
    total = 0.0
    for k, lo in enumerate(starts):
        hi = n if k == len(starts) - 1 else lo + beta
        total += (hi - lo) / n * (confidence[lo:hi].mean() - correct[lo:hi].mean()) ** 2
    return float(np.sqrt(total) * 100)


def test_rms_calibration_both_ways_match_the_reference_loop() -> None:
    rng = np.random.default_rng(0)
    for n in (200, 257, 1000, 1234):
        conf = rng.uniform(0.1, 1.0, n)
        correct = rng.uniform(size=n) < conf ** 2  # overconfident
        both = metrics.rms_calibration_errors(conf, correct)
        assert both["reference"] == pytest.approx(reference_calib_err(conf, correct), rel=1e-12)
        assert both["corrected"] == pytest.approx(corrected_calib_err(conf, correct), rel=1e-12)
        assert both["reference"] != pytest.approx(both["corrected"])
    # Hand-worked: bins (conf 0.6, acc 0.5) and (0.9, acc 0.6), 100 each.
    conf = np.array([0.6] * 100 + [0.9] * 100)
    correct = np.array([1] * 50 + [0] * 50 + [1] * 60 + [0] * 40)
    assert metrics.rms_calibration_errors(conf, correct) == pytest.approx(
        {"reference": 100 * np.sqrt(0.5 * 0.01), "corrected": 100 * np.sqrt(0.5 * 0.01 + 0.5 * 0.09)})


def brute_force_fpr(ins: np.ndarray, outs: np.ndarray, recall: float, closest: bool) -> float:
    """Every distinct score as a threshold (flag >= t), highest first; ``closest``: Outlier Exposure's
    rule (recall nearest ``recall`` among thresholds up to the first full recall, ties to the higher
    recall, then the lower threshold), else the first threshold whose recall reaches ``recall``. Percent."""
    points = []
    for t in sorted(set(np.concatenate([ins, outs]).tolist()), reverse=True):
        points.append((np.sum(outs >= t) / len(outs), np.sum(ins >= t) / len(ins), t))
        if points[-1][0] == 1.0:
            break
    if closest:
        return min(points, key=lambda p: (abs(p[0] - recall), -p[0], p[2]))[1] * 100
    return next(f for r, f, _ in points if r >= recall) * 100


def test_fpr95_outlier_exposure_and_ours_known_answer() -> None:
    # 13 anomalies: recall 12/13 = 0.923 is closer to 0.95 than 13/13. The 13th anomaly ties with three
    # in-distribution samples; one more scores 9.0, above it.
    outs = np.concatenate([np.linspace(10, 21, 12), [0.5]])
    ins = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.5, 0.45, 9.0])
    assert metrics.fpr_at_recall(ins, outs) == pytest.approx(10.0)  # OE: recall 12/13, threshold 9.0
    assert metrics.fpr_at_recall_ours(ins, outs) == pytest.approx(40.0)  # recall 1: 9.0 and the three 0.5s
    got = metrics.anomaly_metrics(ins, outs)
    assert got["fpr95"] == pytest.approx(10.0) and got["fpr95_ours"] == pytest.approx(40.0)
    # Among thresholds of one recall, Outlier Exposure takes the lowest (the most in-distribution flagged).
    ins = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9, 9.0])
    assert metrics.fpr_at_recall(ins, outs) == pytest.approx(50.0)


def test_fpr95_matches_a_brute_force_over_thresholds() -> None:
    rng = np.random.default_rng(1)
    for n_in, n_out, ties in ((50, 13, False), (200, 37, True), (31, 60, True), (5, 3, False)):
        ins, outs = rng.normal(0, 1, n_in), rng.normal(1, 1, n_out)
        if ties:
            ins, outs = np.round(ins, 1), np.round(outs, 1)
        assert metrics.fpr_at_recall(ins, outs) == pytest.approx(brute_force_fpr(ins, outs, 0.95, True))
        assert metrics.fpr_at_recall_ours(ins, outs) == pytest.approx(brute_force_fpr(ins, outs, 0.95, False))
        assert metrics.fpr_at_recall(ins, outs, 0.8) == pytest.approx(brute_force_fpr(ins, outs, 0.8, True))
    assert metrics.fpr_at_recall([1.0, 1.0], [1.0, 1.0]) == pytest.approx(100.0)  # all tied: one threshold
    with pytest.raises(ValueError, match="in- and out-of-distribution"):
        metrics.fpr_at_recall([], [1.0])


# --- the paper's tables, as data and in the reports ------------------------------------------------------

# The spec's text (sections 8 and 8b), row by row in each table's column order: an independent transcription.
SPEC_ROWS = {
    ("table7", "Baseline"): "21.3, 50.0, 52.0, 10.7, 2.7, 96.8, 14.6, 31.2, 30.9, 77.7, 35.4",
    ("table7", "CutMix"): "20.3, 51.5, 49.6, 12.0, 3.0, 97.0, 12.2, 29.3, 26.5, 74.4, 32.3",
    ("table7", "AugMix"): "20.6, 35.4, 41.2, 6.5, 1.9, 95.6, 12.5, 18.8, 22.5, 84.9, 53.8",
    ("table7", "OE"): "21.9, 50.3, 52.1, 11.3, 3.0, 97.0, 12.0, 13.8, 13.9, 90.3, 66.2",
    ("table7", "PixMix"): "20.3, 30.5, 36.7, 5.7, 1.6, 92.9, 7.0, 8.1, 8.9, 89.3, 70.9",
    ("table6", "PixMix + CutMix"): "19.9, 30.9, 35.5, 5.8, 1.7, 93.1, 4.4, 6.0, 5.9, 89.5, 68.6",
    ("table9", "Baseline"): "23.9, 78.2, 61.0, 63.8, 58.0, 78.4, 5.6, 12.0, 20.7, 19.7, 79.7, 48.6",
    ("table9", "AugMix"): "22.8, 71.0, 56.5, 61.7, 52.7, 70.9, 4.5, 9.2, 15.0, 13.2, 84.2, 61.1",
    ("table9", "PixMix"): "22.6, 65.8, 44.3, 60.1, 51.1, 69.1, 3.6, 6.3, 5.8, 11.0, 85.7, 64.1",
    ("table10", "Fractals"): "22.0, 68.2, 47.4, 60.6, 52.6, 71.1, 4.0, 7.2, 7.4, 11.7, 85.3, 62.6",
    ("table10", "ResNet only FVis"): "22.1, 64.3, 45.3, 60.1, 50.7, 69.1, 3.9, 7.1, 7.6, 12.2, 85.1, 63.3",
    ("table10", "Fractals + FVis"): "22.6, 65.8, 44.3, 60.1, 51.1, 69.1, 3.6, 6.3, 5.8, 11.0, 85.7, 64.1",
    ("table5", "Iterative"): "21.1, 31.4, 5.6, 90.6, 12.7, 86.7",
    ("table8", "PixMix"): "4.2, 9.5, 1.7, 82.1, 3.7, 97.0",
    ("table13", "OE"): "89.2, 66.9",
}


def test_paper_tables_match_the_spec_text() -> None:
    from pixmix.evaluate import paper

    for (table, method), text in SPEC_ROWS.items():
        t = paper.TABLES[table]
        assert [t.rows[method][k] for k in t.columns] == [float(v) for v in text.split(", ")], (table, method)
    assert paper.TABLES["table7"].columns == ("clean_error", "mce", "cbar_error", "mfr", "mt5d", "pgd_error",
                                              "rms_calibration_clean", "rms_calibration_c", "rms_calibration_cbar",
                                              "auroc", "aupr")
    assert "pgd_error" not in paper.TABLES["table9"].columns and "r_error" in paper.TABLES["table9"].columns
    # Table 13 per set, "AUROC then AUPR for Baseline / OE / PixMix": Textures 66.6/91.4/80.3, 24.6/75.7/56.2.
    assert [paper.TABLE13_PER_SET[m]["textures"][k] for k in ("auroc", "aupr") for m in paper.TABLE13_METHODS] == [
        66.6, 91.4, 80.3, 24.6, 75.7, 56.2]
    assert paper.TABLE13_PER_SET["PixMix"]["places"] == {"auroc": 62.3, "aupr": 31.3}  # Places69
    # Table 14: beta 4, k = 2, 3, 4: 19.7/31.3, 20.3/30.9, 20.1/30.7.
    assert [tuple(paper.TABLE14[(k, 4)].values()) for k in (2, 3, 4)] == [(19.7, 31.3), (20.3, 30.9), (20.1, 30.7)]
    assert list(paper.table14_rows())[0] == "k=2, beta=5" and len(paper.table14_rows()) == 9
    # Existing callers: Table 2's six columns, each suite's main rows, the ablations by row name.
    assert paper.KEYS == ("clean_error", "mce", "mfr", "pgd_error", "rms_calibration_c", "auroc")
    assert paper.PAPER_RESULTS["cifar100"]["Baseline"]["rms_calibration_c"] == 31.2
    assert paper.PAPER_ABLATIONS["300K Random Images"]["clean_error"] == 19.6


def fake_results(suite: str, **summary: float | None) -> dict:
    """A results dict as ``evaluate`` writes it, with only the summary's numbers filled in."""
    return {"suite": suite, "checkpoint": {"path": "x.pt"}, "settings": {"seed": 0, "device": "cpu"},
            "clean": {"error": summary.get("clean_error"), "samples": 10,
                      "rms_calibration": summary.get("rms_calibration_clean"),
                      "rms_calibration_corrected": summary.get("rms_calibration_clean_corrected")},
            "summary": summary, "notes": []}


def test_report_shows_every_paper_table_of_the_suite_with_labelled_and_corrected_figures(tmp_path) -> None:
    from pixmix.evaluate.report import write_report

    results = fake_results("cifar100", clean_error=25.0, mce=40.0, rms_calibration_clean=1.5,
                           rms_calibration_clean_corrected=2.5, rms_calibration_c=3.25,
                           rms_calibration_c_corrected=4.75, fpr95=60.0, fpr95_ours=62.5)
    md = write_report(results, tmp_path / "c100")["md"].read_text()
    assert "## Table 7: CIFAR-100 full results" in md and "## Table 6: CIFAR-100, PixMix combined with CutMix" in md
    for (table, method), text in SPEC_ROWS.items():
        if table in ("table7", "table6"):
            assert f"| Paper: {method} | {text.replace(', ', ' | ')} |" in md
    # Ours in Table 7's layout: measured numbers, '-' for the rest, with the note naming them.
    assert "| This run | 25.0 | 40.0 | - | - | - | - | 1.5 | 3.2 | - | - | - |" in md
    assert "`-`: not measured in this run (C-Bar, P mFR, mT5D, PGD err., RMS C-Bar, AUROC, AUPR)" in md
    # Comparable columns are labelled; the corrected figures stand beside them.
    assert "Calibration RMS on C (%) [paper's way] ↓" in md
    assert "| Calibration RMS clean (%) | 1.50 | 2.50 |" in md and "| Calibration RMS on C (%) | 3.25 | 4.75 |" in md
    assert "| Anomaly Detection FPR95 (%) | 60.00 | 62.50 |" in md
    imagenet = write_report(fake_results("imagenet", clean_error=30.0, r_error=70.0), tmp_path / "in")["md"]
    text = imagenet.read_text()
    assert "## Table 9: ImageNet" in text and "## Table 10: ImageNet mixing-set ablations" in text
    for (table, method), row in SPEC_ROWS.items():
        if table in ("table9", "table10"):
            assert f"| Paper: {method} | {row.replace(', ', ' | ')} |" in text
    assert "| This run | 30.0 | - | - | 70.0 |" in text
    assert (tmp_path / "in" / "results.png").read_bytes()[:4] == b"\x89PNG"


# --- 300K Random Images (.npy) ---------------------------------------------------------------------------


def test_random_images_npy_reads_with_the_reference_crop_and_flip(tmp_path) -> None:
    import torch
    import torchvision.transforms.functional as TF

    from pixmix.data.readers import RANDOM_IMAGES_STREAM, RandomImages
    from pixmix.utils.seeding import derive_seed

    rng = np.random.default_rng(7)
    array = rng.integers(1, 256, (20, 32, 32, 3), dtype=np.uint8)  # no zeros: padding is recognisable
    np.save(tmp_path / "300K_random_images.npy", array)
    images = RandomImages(tmp_path / "300K_random_images.npy", seed=5)
    assert len(images) == 20
    plain = RandomImages(tmp_path / "300K_random_images.npy", augment=False)
    assert np.array_equal(np.asarray(plain[3]), array[3])
    offsets, flips = [], 0
    for epoch in (0, 1):
        images.set_epoch(epoch)
        for i in range(20):
            # The same draws, applied by torchvision's own pad / crop / flip.
            draws = np.random.default_rng(derive_seed(5, RANDOM_IMAGES_STREAM, epoch, i))
            top, left = (int(v) for v in draws.integers(0, 9, size=2))
            flip = draws.random() < 0.5
            expected = TF.crop(TF.pad(torch.from_numpy(array[i]).permute(2, 0, 1), [4]), top, left, 32, 32)
            expected = TF.hflip(expected) if flip else expected
            assert np.array_equal(np.asarray(images[i]), expected.permute(1, 2, 0).numpy()), (epoch, i)
            offsets += [top, left]
            flips += flip
    assert set(offsets) <= set(range(9)) and len(set(offsets)) > 5 and 5 < flips < 35
    # Same seed, epoch and index: the same picture in another process; another epoch: other crops.
    again = RandomImages(tmp_path / "300K_random_images.npy", seed=5)
    again.set_epoch(1)
    assert all(np.array_equal(np.asarray(again[i]), np.asarray(images[i])) for i in range(20))
    again.set_epoch(2)
    assert any(not np.array_equal(np.asarray(again[i]), np.asarray(images[i])) for i in range(20))
    np.save(tmp_path / "bad.npy", np.zeros((4, 32, 32), np.uint8))
    with pytest.raises(PixmixError, match=r"bad.npy: expected uint8 \[N, H, W, 3\] images"):
        RandomImages(tmp_path / "bad.npy")


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
def test_online_loader_takes_the_npy_as_its_mixing_set(tmp_path) -> None:
    """``ShardLoader(mixset="….npy")``: the mixing pictures are RandomImages' (crop + flip of the epoch), drawn
    as for any mixing set: train transform, picture index, the recipe's mixing transform, from one generator."""
    import torch
    from test_stream import KEY, make_set
    from torchvision.io import ImageReadMode, decode_image

    from pixmix.augment.recipes import CIFAR
    from pixmix.data.loader import ShardLoader
    from pixmix.data.readers import RandomImages
    from pixmix.data.shards.tar import iter_shard
    from pixmix.utils.seeding import generator_for

    folder = make_set(tmp_path / "plain", counts=(5, 3))
    np.save(tmp_path / "random.npy", np.random.default_rng(8).integers(1, 256, (9, 32, 32, 3), dtype=np.uint8))
    loader = ShardLoader(folder, batch_size=4, seed=3, num_workers=0, mixset=tmp_path / "random.npy", recipe="cifar")
    pictures = RandomImages(tmp_path / "random.npy", seed=3)
    pictures.set_epoch(2)
    loader.set_epoch(2)
    batch = next(iter(loader))
    for row, key in enumerate(batch.keys):
        _, s, i = map(int, KEY.match(key).groups())
        raw = next(x for x in iter_shard(folder / "shards" / f"v0-{s:03d}.tar") if x.key == key)
        image = decode_image(torch.frombuffer(bytearray(raw.fields["png"]), dtype=torch.uint8), mode=ImageReadMode.RGB)
        gen = generator_for(3, 2, s, i)
        CIFAR.train_transform()(image, gen)
        pic = CIFAR.mixing_transform()(pictures[int(torch.randint(len(pictures), (1,), generator=gen))], gen)
        assert torch.equal(batch.mixing[row], torch.from_numpy(np.array(pic)).permute(2, 0, 1)), key


def test_table14_grid_puts_ours_beside_the_papers() -> None:
    from pixmix.evaluate.report import table14_markdown

    grid = table14_markdown({(2, 4): {"clean_error": 21.04, "mce": 33.0}, (4, 3): {"clean_error": 19.5}})
    lines = grid.splitlines()
    assert lines[0] == "| Clean error / C mCE (%), ours (paper's) | k = 2 | k = 3 | k = 4 |"
    # Spec: beta 5: k=2 20.2/31.6, k=3 20.0/31.1, k=4 20.1/30.8; beta 4: 19.7/31.3, ...; beta 3: ..., 20.3/30.5.
    assert lines[2] == "| beta = 5 | - / - (20.2 / 31.6) | - / - (20.0 / 31.1) | - / - (20.1 / 30.8) |"
    assert lines[3].startswith("| beta = 4 | 21.0 / 33.0 (19.7 / 31.3) | - / - (20.3 / 30.9) |")
    assert lines[4].endswith("| 19.5 / - (20.3 / 30.5) |")


def test_pixmix_train_takes_the_npy_as_its_mixset(tmp_path) -> None:
    """``pixmix train --mixset 300K_random_images.npy`` trains with online PixMix on it (and records it); a
    missing file is one line."""
    from click.testing import CliRunner
    from tiny_datasets import write_cifar10

    from mixset.shard.sharder import ShardConfig, shard
    from pixmix.cli.train import train as train_command
    from pixmix.models import load_checkpoint

    write_cifar10(tmp_path / "cifar", per_batch=8)
    shard(ShardConfig(out=tmp_path / "plain", dataset="cifar10", data_dir=tmp_path / "cifar", shard_samples=20),
          log=lambda m: None, progress=False)
    npy = tmp_path / "300K_random_images.npy"
    np.save(npy, np.random.default_rng(9).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8))
    args = ["--preset", "smoke", "--shards", str(tmp_path / "plain"), "--out", str(tmp_path / "run"), "--epochs", "1",
            "--batch-size", "20", "--device", "cpu", "--workers", "0", "--quiet", "--mixset"]
    result = CliRunner().invoke(train_command, [*args, str(npy)])
    assert result.exit_code == 0, result.output
    data = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["data"]
    assert (data["mode"], data["mixset"], data["samples"]) == ("online", str(npy.resolve()), 40)
    missing = CliRunner().invoke(train_command, [*args, str(tmp_path / "none.npy")])
    assert missing.exit_code == 2 and "none.npy' does not exist" in missing.output
