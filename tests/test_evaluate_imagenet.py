"""ImageNet evaluation at the paper's protocol: the released layouts (ImageNet-R, -C-Bar, -P mp4s, -O) and
their measures, each checked against an independent computation on known predictions.

The tiny trees are written by :mod:`pipelines.synthetic_imagenet` (real layouts, real wnids, H.264 mp4s
encoded with PyAV) or by the test itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from pipelines.synthetic_imagenet import TENCH, suite_wnids, write_imagenet_suite, write_video
from pixmix.data.benchmarks import CORRUPTIONS, IMAGENET_C_BAR_CORRUPTIONS, IMAGENET_P_PERTURBATIONS
from pixmix.evaluate.imagenet_sets import IMAGENET_R_WNIDS, c_bar_severity_folders, read_video


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
    """PyAV round trip: an H.264 yuv420p mp4 (lossy) decodes to the written frames within the codec's error."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:48]
    frames = np.stack([np.stack([(xx * 5 + 20 * t) % 256, (yy * 7) % 256, np.full_like(xx, 40 * t)], axis=-1)
                       for t in range(6)]).astype(np.uint8)
    frames = np.clip(frames.astype(int) + rng.integers(-3, 4, frames.shape), 0, 255).astype(np.uint8)
    write_video(tmp_path / "v.mp4", frames)
    back = read_video(tmp_path / "v.mp4")
    assert back.shape == frames.shape and back.dtype == np.uint8
    error = np.abs(back.astype(int) - frames.astype(int))
    assert error.mean() < 4
    # Each decoded frame is closest to the frame written at its position (order kept).
    distances = np.abs(back[:, None].astype(int) - frames[None].astype(int)).mean(axis=(2, 3, 4))
    assert np.array_equal(distances.argmin(axis=1), np.arange(6))
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(200)))
    with pytest.raises(ValueError, match=r"broken.mp4: not a readable video"):
        read_video(tmp_path / "broken.mp4")
