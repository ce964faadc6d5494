"""The PixMix transform, dataset wrapper, recipes, seeding and folder mixing set."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from pixmix.augment.pixmix import PixMix
from pixmix.augment.recipes import CIFAR, IMAGENET, get_recipe
from pixmix.augment.transforms import RandomCrop, RandomHorizontalFlip, RandomResizedCrop, Resize
from pixmix.data.images import ImageError
from pixmix.data.wrappers import MixingFolder, PixMixDataset, PixMixOptions, PixMixTransform, load_rgb
from pixmix.demo import synthetic_images, synthetic_mixing_pictures
from pixmix.utils.errors import PixmixError
from pixmix.utils.seeding import derive_seed, generator_for


@pytest.fixture(scope="module")
def small_data() -> list[tuple[Image.Image, int]]:
    return [(im, i % 5) for i, im in enumerate(synthetic_images(24, 32, seed=11))]


@pytest.fixture(scope="module")
def mixing_set() -> list[Image.Image]:
    return synthetic_mixing_pictures(7, 48, seed=12)


def _collect(loader: torch.utils.data.DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_recipes_hold_the_papers_parameters() -> None:
    assert (CIFAR.k, CIFAR.beta, CIFAR.severity, CIFAR.image_size, CIFAR.ops) == (4, 3.0, 3.0, 32, "all")
    assert (IMAGENET.k, IMAGENET.beta, IMAGENET.severity, IMAGENET.image_size) == (4, 4.0, 1.0, 224)
    assert CIFAR.mean == (0.5, 0.5, 0.5) and CIFAR.std == (0.5, 0.5, 0.5)
    assert IMAGENET.mean == (0.485, 0.456, 0.406) and IMAGENET.std == (0.229, 0.224, 0.225)
    # Base train transforms, in the spec's order.
    cifar_train = CIFAR.train_transform().transforms
    assert [type(t) for t in cifar_train] == [RandomHorizontalFlip, RandomCrop]
    assert cifar_train[1].padding == 4
    assert [type(t) for t in IMAGENET.train_transform().transforms] == [RandomResizedCrop, RandomHorizontalFlip]
    # Mixing pictures: shorter side 36 / 256, random crop, no flip.
    assert [type(t) for t in CIFAR.mixing_transform().transforms] == [Resize, RandomCrop]
    assert CIFAR.mixing_transform().transforms[0].size == 36
    assert IMAGENET.mixing_transform().transforms[0].size == 256
    with pytest.raises(ValueError, match="recipe"):
        get_recipe("svhn")


def test_normalize_maps_the_unit_interval_with_mean_and_std() -> None:
    ones, zeros = torch.ones(3, 2, 2), torch.zeros(3, 2, 2)
    assert torch.allclose(CIFAR.normalize(ones), torch.ones(3, 2, 2))
    assert torch.allclose(CIFAR.normalize(zeros), -torch.ones(3, 2, 2))
    expected = (1 - torch.tensor(IMAGENET.mean)) / torch.tensor(IMAGENET.std)
    assert torch.allclose(IMAGENET.normalize(ones)[:, 0, 0], expected)


def test_derive_seed_is_a_pure_function_with_unrelated_neighbours() -> None:
    assert derive_seed(7, 0, 5) == derive_seed(7, 0, 5)
    seeds = {derive_seed(7, e, i) for e in range(4) for i in range(500)}
    assert len(seeds) == 2000  # no collisions among neighbouring coordinates
    assert derive_seed(7, 0, 5) != derive_seed(8, 0, 5)
    assert derive_seed(7, 1, 0) != derive_seed(7, 0, 1)
    draws = [torch.rand(1, generator=generator_for(7, 0, i)).item() for i in range(2000)]
    # Streams of consecutive indices look independent: first draws are uniform and uncorrelated.
    assert abs(np.mean(draws) - 0.5) < 0.03
    assert abs(np.corrcoef(draws[:-1], draws[1:])[0, 1]) < 0.08
    with pytest.raises(ValueError, match="coordinates"):
        derive_seed(-1, 0)


def test_dataset_is_a_pure_function_of_seed_epoch_and_index(small_data, mixing_set) -> None:
    ds = PixMixDataset(small_data, mixing_set, "cifar", seed=5)
    x0, y0 = ds[3]
    assert x0.shape == (3, 32, 32) and x0.dtype == torch.float32 and y0 == 3
    # Normalised with mean=std=0.5: values in [-1, 1].
    assert x0.min() >= -1 and x0.max() <= 1
    assert torch.equal(ds[3][0], x0)
    assert not torch.equal(ds[4][0], x0)
    ds.set_epoch(1)
    assert not torch.equal(ds[3][0], x0)
    ds.set_epoch(0)
    assert torch.equal(ds[3][0], x0)
    assert not torch.equal(PixMixDataset(small_data, mixing_set, "cifar", seed=6)[3][0], x0)
    with pytest.raises(ValueError, match="epoch"):
        ds.set_epoch(-1)


def test_dataloader_output_does_not_depend_on_worker_count(small_data, mixing_set) -> None:
    ds = PixMixDataset(small_data, mixing_set, "cifar", seed=9)
    x0, y0 = _collect(torch.utils.data.DataLoader(ds, batch_size=5, num_workers=0))
    x2, y2 = _collect(torch.utils.data.DataLoader(ds, batch_size=5, num_workers=2))
    x3, y3 = _collect(torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, prefetch_factor=1))
    assert torch.equal(x0, x2) and torch.equal(x0, x3)
    assert torch.equal(y0, y2) and torch.equal(y0, y3)
    # Samples are distinct (no two indices share a stream).
    flat = x0.flatten(1)
    assert len({tuple(row.tolist()) for row in flat}) == len(small_data)


def test_transform_streams_differ_per_worker_and_repeat_per_seed(small_data, mixing_set) -> None:
    class Plain(torch.utils.data.Dataset):
        def __init__(self, transform: PixMixTransform) -> None:
            self.transform = transform

        def __len__(self) -> int:
            return 8

        def __getitem__(self, i: int) -> torch.Tensor:
            # The same image at every index: differences come from the random stream alone.
            return self.transform(small_data[0][0])

    def run(seed: int) -> torch.Tensor:
        loader = torch.utils.data.DataLoader(Plain(PixMixTransform(mixing_set, "cifar", seed=seed)), batch_size=4,
                                             num_workers=2)
        return torch.cat(list(loader))

    a, b = run(1), run(1)
    assert torch.equal(a, b)  # reproducible from one seed (fixed worker count)
    # Worker 0 produced batch 0 and worker 1 batch 1: distinct streams give distinct samples.
    assert not torch.equal(a[:4], a[4:])
    assert not torch.equal(run(2), a)


def test_transform_order_matches_the_spec(small_data, mixing_set, monkeypatch) -> None:
    """Base transform on the training image, mixing transform on the picture, PixMix, normalise."""
    calls: list[str] = []
    transform = PixMixTransform(mixing_set, "cifar", seed=0)
    for name in ("train_transform", "mixing_transform"):
        inner = getattr(transform, name)

        def spy(image, gen, _inner=inner, _name=name):
            calls.append(f"{_name}:{image.size}")
            return _inner(image, gen)

        monkeypatch.setattr(transform, name, spy)
    real_pixmix = transform.pixmix

    def pixmix_spy(image, picture, gen):
        calls.append(f"pixmix:{image.size}:{picture.size}")
        return real_pixmix(image, picture, gen)

    monkeypatch.setattr(transform, "pixmix", pixmix_spy)
    out = transform(small_data[0][0], torch.Generator().manual_seed(0))
    assert calls == ["train_transform:(32, 32)", "mixing_transform:(48, 48)", "pixmix:(32, 32):(32, 32)"]
    assert out.min() >= -1 and out.max() <= 1 and out.min() < 0  # normalised last


def test_mixing_pictures_are_drawn_uniformly_with_replacement(small_data) -> None:
    # Each mixing picture is a flat colour, so the picture used is visible in an unmixed-free setup.
    colours = [(i * 40, 255 - i * 40, (i * 90) % 256) for i in range(6)]
    pictures = [(Image.new("RGB", (40, 40), c), i) for i, c in enumerate(colours)]
    drawn: list[int] = []

    class Recording(list):
        def __getitem__(self, i):
            drawn.append(i)
            return super().__getitem__(i)

    transform = PixMixTransform(Recording(pictures), "cifar", seed=3)
    for i in range(3000):
        transform(small_data[i % len(small_data)][0], generator_for(3, 0, i))
    counts = np.bincount(drawn, minlength=6)
    expected = 3000 / 6
    assert counts.min() > expected - 5 * np.sqrt(expected) and counts.max() < expected + 5 * np.sqrt(expected)
    assert set(drawn) == set(range(6))


def test_no_global_rng_is_touched(small_data, mixing_set) -> None:
    torch_state, np_state, py_state = torch.random.get_rng_state(), np.random.get_state(), random.getstate()
    ds = PixMixDataset(small_data, mixing_set, "imagenet", seed=1)
    for i in range(4):
        ds[i]
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])
    assert random.getstate() == py_state


def test_imagenet_recipe_outputs_224(small_data, mixing_set) -> None:
    ds = PixMixDataset(small_data, mixing_set, "imagenet", seed=1, normalize=False)
    x, _ = ds[0]
    assert x.shape == (3, 224, 224) and x.min() >= 0 and x.max() <= 1


def test_empty_mixing_set_is_refused(small_data) -> None:
    with pytest.raises(ValueError, match="mixing_set is empty"):
        PixMixDataset(small_data, [], "cifar")


def test_options_are_shared_validated_once_and_give_the_same_samples(small_data, mixing_set) -> None:
    options = PixMixOptions("cifar", seed=4, normalize=False, pixmix=PixMix(k=2, ops="basic"))
    by_options = PixMixDataset.from_options(small_data, mixing_set, options)
    by_keywords = PixMixDataset(small_data, mixing_set, "cifar", seed=4, normalize=False, pixmix=options.pixmix)
    assert by_options.transform.options == options == by_keywords.options
    for epoch in (0, 2):
        by_options.set_epoch(epoch)
        by_keywords.set_epoch(epoch)
        for i in (0, 5):
            assert torch.equal(by_options[i][0], by_keywords[i][0])
    image = small_data[0][0]
    by_keywords_transform = PixMixTransform(mixing_set, "cifar", 4, False, options.pixmix)
    assert torch.equal(PixMixTransform.from_options(mixing_set, options)(image, generator_for(1)),
                       by_keywords_transform(image, generator_for(1)))
    for fields, param in (({"recipe": "svhn"}, "recipe"), ({"seed": -1}, "seed"), ({"seed": True}, "seed"),
                          ({"pixmix": "strong"}, "pixmix")):
        with pytest.raises(PixmixError) as err:
            PixMixOptions(**fields)
        assert err.value.param == param
    with pytest.raises(PixmixError) as err:
        PixMixTransform([], "cifar")
    assert err.value.param == "mixing_set"
    with pytest.raises(PixmixError, match="epoch must be >= 0") as err:
        by_options.set_epoch(-1)
    assert err.value.param == "epoch"


def test_image_errors_are_user_errors(tmp_path) -> None:
    assert issubclass(ImageError, PixmixError)
    with pytest.raises(ImageError, match="does not exist"):
        load_rgb(tmp_path / "nothing.png")


def test_mixing_folder_loads_sorted_rgb_images_and_refuses_bad_files(tmp_path) -> None:
    (tmp_path / "b").mkdir()
    Image.new("L", (20, 10), 128).save(tmp_path / "b" / "grey.png")
    Image.new("RGB", (10, 20), (1, 2, 3)).save(tmp_path / "a.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    folder = MixingFolder(tmp_path)
    assert [p.name for p in folder.files] == ["a.jpg", "grey.png"]
    assert len(folder) == 2
    grey = folder[1]
    assert grey.mode == "RGB" and grey.size == (20, 10) and grey.getpixel((0, 0)) == (128, 128, 128)

    fake = tmp_path / "fake.png"
    fake.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="fake.png is not an image in an accepted format"):
        load_rgb(fake)
    big = tmp_path / "big.png"
    Image.new("RGB", (300, 300)).save(big)
    with pytest.raises(ValueError, match=r"big.png refused as a possible decompression bomb: 300x300 = 90000 pixels, "
                                         r"over the limit of 50000"):
        load_rgb(big, max_pixels=50_000)
    with pytest.raises(ValueError, match="does not exist"):
        MixingFolder(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        MixingFolder(empty)


def test_dataset_works_with_a_mixing_folder(tmp_path, small_data) -> None:
    for i, pic in enumerate(synthetic_mixing_pictures(3, 40, seed=4)):
        pic.save(tmp_path / f"m{i}.png")
    ds = PixMixDataset(small_data, MixingFolder(tmp_path), "cifar", seed=0)
    x, y = ds[5]
    assert x.shape == (3, 32, 32) and y == 0
