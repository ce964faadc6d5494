"""Dataset readers on tiny data written in the real on-disk formats."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from PIL import Image
from tiny_datasets import write_cifar10

from pixmix.data.readers import CIFAR, CORRUPTIONS, CIFARCorrupted, ClassFolders
from pixmix.utils.errors import PixmixError


def test_cifar10_reads_the_python_batches(tmp_path) -> None:
    images, labels = write_cifar10(tmp_path, per_batch=4)
    train, test = CIFAR(tmp_path, "cifar10", train=True), CIFAR(tmp_path, "cifar10", train=False)
    assert len(train) == 20 and len(test) == 4 and train.classes == 10
    assert np.array_equal(train.images, images[:20]) and np.array_equal(train.labels, labels[:20])
    image, label = test[3]
    assert image.size == (32, 32) and image.mode == "RGB" and label == labels[23]
    assert np.array_equal(np.asarray(image), images[23])  # HWC, channels in RGB order


def test_cifar100_uses_fine_labels(tmp_path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    planes = np.concatenate([np.full(1024, 10), np.full(1024, 20), np.full(1024, 30)]).astype(np.uint8)
    data = np.stack([planes, planes])
    for name, fine in (("train", [99, 3]), ("test", [0, 1])):
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": data, b"fine_labels": fine, b"coarse_labels": [1, 2]}, fh, protocol=2)
    train = CIFAR(tmp_path, "cifar100")
    assert list(train.labels) == [99, 3] and train.classes == 100
    assert train[0][0].getpixel((1, 0)) == (10, 20, 30)  # planes R, G, B


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickles_that_would_run_code_are_refused(tmp_path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    with open(folder / "train", "wb") as fh:
        pickle.dump({b"data": Exploit(), b"fine_labels": [0]}, fh, protocol=2)
    with pytest.raises(ValueError, match=r"train: not a CIFAR python batch \(global posix.system is not allowed"):
        CIFAR(tmp_path, "cifar100")


def test_bad_cifar_input_gives_one_line_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="cifar-10-batches-py does not exist"):
        CIFAR(tmp_path, "cifar10")
    with pytest.raises(ValueError, match="name must be one of"):
        CIFAR(tmp_path, "svhn")
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    (folder / "train").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="train: not a CIFAR python batch"):
        CIFAR(tmp_path, "cifar100")
    with open(folder / "train", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 100]}, fh, protocol=2)
    with pytest.raises(ValueError, match=r"must hold 2 labels in \[0, 100\)"):
        CIFAR(tmp_path, "cifar100")


def test_cifar_c_selects_one_severity(tmp_path) -> None:
    folder = tmp_path / "CIFAR-10-C"
    folder.mkdir()
    per = 3
    images = np.stack([np.full((32, 32, 3), s * 10 + i, np.uint8) for s in range(5) for i in range(per)])
    np.save(folder / "fog.npy", images)
    np.save(folder / "labels.npy", np.tile(np.array([7, 8, 9]), 5))
    sev3 = CIFARCorrupted(tmp_path, "cifar10", "fog", 3)
    assert len(sev3) == per and list(sev3.labels) == [7, 8, 9]
    assert [sev3[i][0].getpixel((0, 0))[0] for i in range(per)] == [20, 21, 22]
    np.save(folder / "labels.npy", np.array([1, 2, 3]))  # labels stored once
    assert list(CIFARCorrupted(tmp_path, "cifar10", "fog", 5).labels) == [1, 2, 3]
    assert len(CORRUPTIONS) == 15
    with pytest.raises(ValueError, match="severity must be 1..5"):
        CIFARCorrupted(tmp_path, "cifar10", "fog", 6)
    with pytest.raises(ValueError, match="snow.npy not found"):
        CIFARCorrupted(tmp_path, "cifar10", "snow", 1)
    np.save(folder / "frost.npy", np.zeros((5, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"frost.npy: expected uint8 \[5\*N, 32, 32, 3\]"):
        CIFARCorrupted(tmp_path, "cifar10", "frost", 1)
    np.save(folder / "pixelate.npy", np.array([{"x": 1}] * 5, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pixelate.npy: not a readable .npy array"):
        CIFARCorrupted(tmp_path, "cifar10", "pixelate", 1)


def test_class_folders_map_sorted_names_to_indices_and_convert_modes(tmp_path) -> None:
    train = tmp_path / "train"
    for wnid in ("n02", "n01", "n10"):
        (train / wnid).mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 0, 0)).save(train / "n01" / "a.JPEG")
    Image.new("L", (20, 50), 100).save(train / "n02" / "b.JPEG")
    Image.new("CMYK", (25, 25), (0, 255, 255, 0)).save(train / "n10" / "c.JPEG")
    (train / "n10" / "notes.txt").write_text("skip me")
    folders = ClassFolders(train)
    assert folders.classes == ["n01", "n02", "n10"] and len(folders) == 3
    labels = [folders[i][1] for i in range(3)]
    assert labels == [0, 1, 2]
    modes = {folders[i][0].mode for i in range(3)}
    assert modes == {"RGB"}
    red = folders[2][0].getpixel((5, 5))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60  # CMYK (0, 255, 255, 0) is red
    with pytest.raises(ValueError, match="holds no class folders"):
        ClassFolders(train / "n01")


def test_reader_errors_are_pixmix_errors_naming_the_parameter(tmp_path) -> None:
    for make, param in ((lambda: CIFAR(tmp_path, "svhn"), "name"),
                        (lambda: CIFARCorrupted(tmp_path, "cifar10", "rain", 1), "corruption"),
                        (lambda: CIFARCorrupted(tmp_path, "cifar10", "fog", 0), "severity")):
        with pytest.raises(PixmixError) as err:
            make()
        assert err.value.param == param
    with pytest.raises(PixmixError, match="does not exist") as err:  # a bad folder: the message names it
        CIFAR(tmp_path, "cifar10")
    assert err.value.param is None
