"""CutMix (the paper's Table 6): box and lambda sampling against the reference code's recipe, pasting, the mixed
loss, and training with it (seeded, with PixMix views and with the baselines)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import ks_two_sample
from test_train import Data

from pixmix.augment.cutmix import CutMixBox, apply_cutmix, cutmix_loss, sample_cutmix
from pixmix.models import load_checkpoint
from pixmix.train.loop import cutmix_rng, maybe_cutmix
from pixmix.train.trainer import TrainError, preset_config, train
from pixmix.utils.errors import PixmixError

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def quiet(_: str) -> None:
    pass


def reference_rand_bbox(height: int, width: int, lam: float, rs: np.random.RandomState) -> tuple[int, ...]:
    """clovaai/CutMix-PyTorch's ``rand_bbox`` (its W and H are the tensor's dims 2 and 3), with numpy's legacy
    global-style generator as the reference draws them."""
    cut_rat = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut_rat), int(width * cut_rat)
    cy, cx = rs.randint(height), rs.randint(width)
    y1, y2 = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
    x1, x2 = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
    return int(y1), int(x1), int(y2), int(x2)


def test_boxes_and_lambda_follow_the_reference_distribution() -> None:
    # 6,000 batches of 32 x 24 images at p = 0.5 against the reference's own draws (an independent generator).
    height, width, n = 32, 24, 6000
    ours = [sample_cutmix(8, height, width, prob=0.5, rng=np.random.default_rng(i)) for i in range(n)]
    applied = [b for b in ours if b is not None]
    assert abs(len(applied) / n - 0.5) < 0.025  # 5 sigma
    rs = np.random.RandomState(123)
    ref_lams, ref_heights = [], []
    for _ in range(len(applied)):
        y1, x1, y2, x2 = reference_rand_bbox(height, width, rs.beta(1.0, 1.0), rs)
        ref_lams.append(1 - (y2 - y1) * (x2 - x1) / (height * width))  # the reference's adjusted lam
        ref_heights.append(y2 - y1)
    lams = [b.lam for b in applied]
    for box in applied:
        assert 0 <= box.top <= box.bottom <= height and 0 <= box.left <= box.right <= width
        assert box.lam == 1 - box.area / (height * width)  # lam is the exact share of own pixels
        assert sorted(box.perm.tolist()) == list(range(8))
    # KS distance below the 0.1% critical value for two samples of ~3,000.
    assert ks_two_sample(lams, ref_lams) < 1.95 * math.sqrt(2 / len(applied))
    assert ks_two_sample([b.bottom - b.top for b in applied], ref_heights) < 1.95 * math.sqrt(2 / len(applied))
    assert abs(np.mean(lams) - np.mean(ref_lams)) < 0.02


def test_sampling_is_a_function_of_the_generator() -> None:
    a = sample_cutmix(16, 32, 32, prob=1.0, rng=np.random.default_rng(7))
    b = sample_cutmix(16, 32, 32, prob=1.0, rng=np.random.default_rng(7))
    assert a is not None and b is not None
    assert (a.top, a.left, a.bottom, a.right, a.lam) == (b.top, b.left, b.bottom, b.right, b.lam)
    assert torch.equal(a.perm, b.perm)
    assert sample_cutmix(16, 32, 32, prob=0.0, rng=np.random.default_rng(7)) is None
    # The trainer's per-batch streams: same coordinates, same box; another step or rank, another box.
    boxes = {(s, r): maybe_cutmix(torch.zeros(16, 3, 32, 32), 1.0, 3, 0, r, s)[1] for s in (0, 1) for r in (0, 1)}
    again = maybe_cutmix(torch.zeros(16, 3, 32, 32), 1.0, 3, 0, 0, 0)[1]
    assert again is not None and boxes[0, 0] is not None and again.perm.tolist() == boxes[0, 0].perm.tolist()
    assert len({tuple(b.perm.tolist()) for b in boxes.values() if b is not None}) == 4
    assert cutmix_rng(3, 0, 0, 0).random() == cutmix_rng(3, 0, 0, 0).random() != cutmix_rng(4, 0, 0, 0).random()


def test_apply_pastes_the_partner_box_and_leaves_the_input() -> None:
    images = torch.arange(4 * 2 * 5 * 6, dtype=torch.float32).view(4, 2, 5, 6)
    original = images.clone()
    box = CutMixBox(top=1, left=2, bottom=4, right=5, perm=torch.tensor([2, 0, 3, 1]), lam=1 - 9 / 30)
    out = apply_cutmix(images, box)
    assert torch.equal(images, original)
    expected = original.numpy().copy()
    for i, j in enumerate([2, 0, 3, 1]):
        for y in range(1, 4):
            for x in range(2, 5):
                expected[i, :, y, x] = original[j, :, y, x].numpy()
    assert np.array_equal(out.numpy(), expected)
    assert box.area == 9
    with pytest.raises(PixmixError):
        apply_cutmix(images[:3], box)


def test_loss_mixes_the_two_labels_by_lambda() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0]])
    labels = torch.tensor([0, 2])
    box = CutMixBox(top=0, left=0, bottom=1, right=1, perm=torch.tensor([1, 0]), lam=0.75)

    def ce(row: list[float], y: int) -> float:  # by hand: log-sum-exp minus the label's logit
        return math.log(sum(math.exp(v) for v in row)) - row[y]

    rows = logits.tolist()
    want = 0.75 * (ce(rows[0], 0) + ce(rows[1], 2)) / 2 + 0.25 * (ce(rows[0], 2) + ce(rows[1], 0)) / 2
    assert cutmix_loss(logits, labels, box).item() == pytest.approx(want, rel=1e-6)
    assert cutmix_loss(logits, labels, None).item() == pytest.approx(F.cross_entropy(logits, labels).item())


@pytest.mark.parametrize("prob", [-0.1, 1.5, float("nan")])
def test_bad_probabilities_are_refused(prob: float) -> None:
    with pytest.raises(PixmixError) as info:
        sample_cutmix(4, 8, 8, prob=prob, rng=np.random.default_rng(0))
    assert info.value.param == "cutmix"
    with pytest.raises(TrainError) as info:
        preset_config("smoke", cutmix=prob)
    assert info.value.param == "cutmix"


# --- training --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Data:
    return Data(tmp_path_factory.mktemp("cutmix-data"))


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "checkpoints" / "last.pt")["model_state"]


def _train(data: Data, out: Path, preset: str, shards: Path, cutmix: float) -> dict[str, torch.Tensor]:
    config = preset_config(preset, epochs=1, batch_size=40, workers=0, device="cpu", cutmix=cutmix)
    train(config, shards, out, log=quiet, progress=False)
    return _weights(out)


def test_training_with_cutmix_is_seeded_and_changes_the_run(data: Data, tmp_path: Path) -> None:
    # Baseline (Table 6's CutMix row) and PixMix views ("PixMix + CutMix").
    for preset, shards in (("smoke-baseline", data.plain), ("smoke", data.pixmix)):
        once = _train(data, tmp_path / f"{preset}-a", preset, shards, 0.5)
        twice = _train(data, tmp_path / f"{preset}-b", preset, shards, 0.5)
        plain = _train(data, tmp_path / f"{preset}-0", preset, shards, 0.0)
        assert all(torch.equal(once[k], twice[k]) for k in once)  # same seed, same boxes, same weights
        assert any(not torch.equal(once[k], plain[k]) for k in once)
        assert load_checkpoint(tmp_path / f"{preset}-a" / "checkpoints" / "last.pt")["config"]["cutmix"] == 0.5
    # Resuming with another probability is refused (it changes the run's weights).
    with pytest.raises(TrainError, match="cutmix"):
        config = preset_config("smoke-baseline", epochs=2, batch_size=40, workers=0, device="cpu", cutmix=1.0)
        train(config, data.plain, tmp_path / "smoke-baseline-a", log=quiet, progress=False)
