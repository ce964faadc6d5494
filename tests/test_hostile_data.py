"""Hostile inputs on the data floor: corrupt shard images, unusual image modes, extreme aspect ratios,
the recipe of a shard set, loader reports in words, symlinked tar members and allocation-bomb pickles."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pixmix.data.images import ImageError, load_rgb, open_image, resize_shorter, to_rgb


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def reopened(image: Image.Image) -> Image.Image:
    """``image`` through a PNG file and :func:`open_image`, as the readers see it."""
    with open_image(png_bytes(image)) as im:
        return to_rgb(im)


# --- modes: scaled to 8-bit RGB, never clipped -------------------------------------------------------

RAMP16 = np.array([[0, 257, 1000, 40000, 65535]], dtype=np.uint16)
RAMP8 = np.array([[0, 1, 3, 156, 255]], dtype=np.uint8)  # v >> 8


def rgb(image: Image.Image) -> np.ndarray:
    out = to_rgb(image)
    assert out.mode == "RGB"
    array = np.asarray(out)
    assert np.array_equal(array[..., 0], array[..., 1]) or image.mode in ("P", "CMYK")
    return array


def test_a_16bit_ramp_becomes_the_8bit_ramp_in_every_integer_mode(tmp_path) -> None:
    for image in (Image.fromarray(RAMP16), Image.fromarray(RAMP16.astype(">u2")),
                  Image.fromarray(RAMP16.astype(np.int32))):
        assert image.mode in ("I;16", "I;16B", "I")
        assert np.array_equal(rgb(image)[..., 0], RAMP8), image.mode
    # A 16-bit PNG on disk, read by load_rgb: no longer saturated white.
    path = tmp_path / "deep.png"
    path.write_bytes(png_bytes(Image.fromarray(np.arange(0, 65536, 257, dtype=np.uint16).reshape(16, 16))))
    array = np.asarray(load_rgb(path))
    assert array.dtype == np.uint8 and array[..., 0].ravel().tolist() == list(range(256))
    assert np.array_equal(np.asarray(reopened(Image.fromarray(RAMP16)))[..., 2], RAMP8)


def test_32bit_integers_outside_16_bits_are_clamped() -> None:
    image = Image.fromarray(np.array([[-5, 70000]], dtype=np.int32))
    assert rgb(image)[..., 0].tolist() == [[0, 255]]


def test_float_images_are_scaled_from_0_1_or_0_255() -> None:
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert unit.mode == "F" and rgb(unit)[..., 0].tolist() == [[0, 128, 255]]
    bytes_scale = Image.fromarray(np.array([[0.0, 100.4, 255.0, 300.0]], dtype=np.float32))
    assert rgb(bytes_scale)[..., 0].tolist() == [[0, 100, 255, 255]]


def test_alpha_is_dropped_alike_in_la_and_palette_with_transparency() -> None:
    la = Image.fromarray(np.array([[[10, 0], [200, 255]]], dtype=np.uint8), mode="LA")
    assert rgb(la)[0].tolist() == [[10, 10, 10], [200, 200, 200]]
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 0  # red is the transparent colour: it keeps its stored colour
    assert rgb(pal)[0].tolist() == [[255, 0, 0], [0, 0, 255]]
    # Through a PNG file too (tRNS chunk).
    assert np.asarray(reopened(pal))[0].tolist() == [[255, 0, 0], [0, 0, 255]]


def test_cmyk_becomes_its_rgb_colours() -> None:
    cmyk = Image.new("CMYK", (3, 1))
    cmyk.putpixel((0, 0), (255, 0, 0, 0))  # cyan
    cmyk.putpixel((1, 0), (0, 0, 0, 255))  # black
    cmyk.putpixel((2, 0), (0, 0, 0, 0))  # white
    assert rgb(cmyk)[0].tolist() == [[0, 255, 255], [0, 0, 0], [255, 255, 255]]


# --- extreme aspect ratios: refused before resizing --------------------------------------------------


def test_a_tiny_strip_png_is_refused_before_resizing_makes_gigabytes() -> None:
    data = png_bytes(Image.new("L", (1, 8000)))
    assert len(data) < 200
    with open_image(data, name="strip.png") as im:
        with pytest.raises(ImageError) as info:
            resize_shorter(to_rgb(im), 256, name="strip.png")
    message = str(info.value)
    assert "strip.png" in message and "1x8000" in message and "\n" not in message and "leave it out" in message
    with pytest.raises(ImageError, match="1x30000"):
        resize_shorter(Image.new("RGB", (1, 30000)), 256)
    # Within the limits: resized as before.
    assert resize_shorter(Image.new("RGB", (10, 640)), 20).size == (20, 1280)
    assert resize_shorter(Image.new("RGB", (40, 30)), 30).size == (40, 30)


# --- corrupt shard images: caught, reported, skipped; never a crash -----------------------------------

import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from pixmix.data.loader import ShardLoader  # noqa: E402
from pixmix.data.shards.shard_set import SHARDS_FORMAT, SHARDS_VERSION  # noqa: E402
from pixmix.data.shards.tar import Sample, to_bytes, write_shard  # noqa: E402

FLIPS = 40  # corrupt samples per field


def flipped(data: bytes, rng: random.Random) -> bytes:
    """``data`` with one byte flipped past the signature (so the format is still recognised)."""
    out = bytearray(data)
    out[rng.randrange(8, len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def fuzzed_set(folder: Path, field: str, seed: int) -> tuple[Path, set[str]]:
    """A plain shard set of 2 * FLIPS samples of ``field`` images, every other one with a flipped byte."""
    rng = random.Random(seed)
    pictures = np.random.default_rng(seed).integers(0, 256, size=(2 * FLIPS, 24, 24, 3), dtype=np.uint8)
    samples, corrupt = [], set()
    for i, array in enumerate(pictures):
        data = to_bytes(Image.fromarray(array), field)
        if i % 2:
            data = flipped(data, rng)
            corrupt.add(f"s{i}")
        samples.append(Sample(f"s{i}", {field: data, "cls": b"0", "json": b"{}"}))
    info = write_shard(folder / "shards" / "f-0.tar", samples, root=folder)
    (folder / "manifest.json").write_text(json.dumps({
        "format": SHARDS_FORMAT, "version": SHARDS_VERSION, "kind": "plain", "views": 1, "classes": ["a"],
        "image_field": field, "shards": [dict(info.to_json(), view=0)], "config": {"dataset": "cifar10"}}))
    return folder, corrupt


@pytest.mark.parametrize("field", ["png", "jpg"])
@pytest.mark.parametrize("workers", [0, 2])
def test_flipped_bytes_in_shard_images_are_skipped_and_reported(tmp_path, field, workers) -> None:
    folder, corrupt = fuzzed_set(tmp_path, field, seed=15)
    loader = ShardLoader(folder, batch_size=8, seed=3, rank=0, world_size=1, num_workers=workers)
    batches = list(loader)
    assert len(batches) == len(loader) == 10 and all(len(b) == 8 for b in batches)
    fresh = {k for b in batches for k, r in zip(b.keys, b.repeat.tolist()) if not r}
    lost = {m.group(1) for e in loader.stats.errors for m in [re.search(r"sample '(s\d+)'", e)] if m}
    # A flipped byte may land where it changes nothing (a JPEG's pixel data): decoded, not reported.
    assert lost <= corrupt and fresh == {f"s{i}" for i in range(2 * FLIPS)} - lost
    # JPEG decoders shrug most single flips off (a changed coefficient); PNG's checksums catch most of them.
    assert len(lost) >= (FLIPS // 4 if field == "png" else 1) and loader.stats.substituted == len(lost)
    assert all(e.startswith("shards/f-0.tar: ") and "undecodable" in e and "\n" not in e
               for e in loader.stats.errors)


CRASH = """
import io, random, sys
import numpy as np
from PIL import Image
sys.path.insert(0, {root!r})
from pixmix.data.loader import _Lost, _decode_image
buf = io.BytesIO()
Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
data = buf.getvalue()
rng = random.Random(0)
lost = 0
for _ in range(300):
    b = bytearray(data)
    b[rng.randrange(33, len(b))] ^= 1 << rng.randrange(8)
    try:
        _decode_image(bytes(b), "png", "fuzz")
    except _Lost:
        lost += 1
print("lost", lost)
"""


def test_the_libpng_crash_reproducer_survives_in_a_subprocess() -> None:
    # torchvision.io.decode_image segfaulted (libpng "IDAT: incorrect data check") on this very loop.
    code = CRASH.format(root=str(Path(__file__).parents[1]))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert int(result.stdout.split()[-1]) > 100


def test_a_missing_shard_is_reported_in_words_not_an_errno(tmp_path) -> None:
    folder, _ = fuzzed_set(tmp_path, "png", seed=1)
    second = write_shard(folder / "shards" / "f-1.tar",
                         [Sample(f"t{i}", {"png": to_bytes(Image.new("RGB", (24, 24)), "png"), "cls": b"0",
                                           "json": b"{}"}) for i in range(8)], root=folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["shards"].append(dict(second.to_json(), view=0))
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "shards" / "f-1.tar").unlink()
    loader = ShardLoader(folder, batch_size=8, rank=0, world_size=1, num_workers=0, shuffle=False)
    assert len(list(loader)) == len(loader)
    missing = [e for e in loader.stats.errors if e.startswith("shards/f-1.tar")]
    assert missing and "No such file or directory" in missing[0] and not re.search(r": 2;", missing[0]), missing


# --- the recipe comes from the shard set ---------------------------------------------------------------


def test_a_cifar_shard_set_gets_the_cifar_recipe_unless_told(tmp_path) -> None:
    from pixmix.augment.recipes import CIFAR, IMAGENET
    from pixmix.data.shards.shard_set import ShardSet

    folder, _ = fuzzed_set(tmp_path / "cifar", "png", seed=2)  # its manifest records dataset cifar10
    pictures = [Image.new("RGB", (40, 40), (i, 0, 0)) for i in range(3)]
    loader = ShardLoader(folder, batch_size=4, rank=0, world_size=1, num_workers=0, mixset=pictures)
    assert loader.recipe is CIFAR and loader.mode == "online"
    assert next(iter(loader)).images.shape[-2:] == (32, 32)
    assert ShardLoader(folder, batch_size=4, rank=0, world_size=1, num_workers=0, mixset=pictures,
                       recipe="imagenet").recipe is IMAGENET  # explicit wins
    # PixMix views record their recipe; an old manifest that records nothing keeps the ImageNet default.
    manifest = json.loads((folder / "manifest.json").read_text())
    for config, expected in (({"dataset": "imagenet"}, "imagenet"), ({"recipe": {"name": "cifar"}}, "cifar"),
                             ({}, None)):
        (folder / "manifest.json").write_text(json.dumps({**manifest, "config": config}))
        assert ShardSet.load(folder).recipe_name == expected
    assert ShardLoader(folder, batch_size=4, rank=0, world_size=1, num_workers=0).recipe is IMAGENET


# --- allocation bombs in dataset pickles ---------------------------------------------------------------

import pickle  # noqa: E402
import tracemalloc  # noqa: E402

from pixmix.data.readers import CIFAR  # noqa: E402
from pixmix.utils.errors import PixmixError  # noqa: E402


def cifar_root(tmp_path: Path, payload: bytes) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / "data_batch_1").write_bytes(payload)
    return folder / "data_batch_1"


def reconstruct_bomb(shape: tuple[int, ...]) -> bytes:
    """A protocol-2 pickle of ``{b'data': _reconstruct(ndarray, shape, b'b')}`` with a tiny state."""
    p = pickle
    return (b"\x80\x02}q\x00C\x04data"
            + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
            + p.dumps(shape, protocol=2)[2:-1] + b"C\x01b" + b"\x87R"
            + p.dumps((1, shape, np.dtype(np.uint8), False, b"\x00" * 16), protocol=2)[2:-1] + b"b" + b"s.")


@pytest.mark.parametrize("name, payload", [
    ("reconstruct", reconstruct_bomb((3 * 10**9,))),
    ("state", reconstruct_bomb((1,)).replace(b"\x00" * 16, b"\x00" * 15 + b"\x01")),  # shape/data mismatch
    ("bytes", b"\x80\x02}q\x00C\x04datacbuiltins\nbytes\n\x8a\x06\x00\x00\x00\x00\x00\x01\x85Rs."),  # 2**40
    ("binbytes8", b"\x80\x04\x8e" + (2**40).to_bytes(8, "little") + b"tiny."),
    ("memo", b"\x80\x02}r\xff\xff\xff\x7f."),
])
def test_an_allocation_bomb_pickle_is_refused_without_allocating(tmp_path, name, payload) -> None:
    path = cifar_root(tmp_path, payload)
    tracemalloc.start()
    try:
        with pytest.raises(PixmixError) as info:
            CIFAR(tmp_path, "cifar10")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert str(path) in message and "\n" not in message and "re-download" in message, message
    assert peak < 64 << 20, (name, peak)


def test_a_real_numpy_pickle_still_loads(tmp_path) -> None:
    data = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    for protocol in (2, 4):
        root = tmp_path / str(protocol)
        batch = cifar_root(root, pickle.dumps({b"data": data, b"labels": [3, 4]}, protocol=protocol))
        for i in range(2, 6):
            batch.with_name(f"data_batch_{i}").write_bytes(batch.read_bytes())
        train = CIFAR(root, "cifar10")
        assert len(train) == 10 and np.array_equal(train.images[1].transpose(2, 0, 1).reshape(-1), data[1])


# --- tar members that are symbolic links: skipped, and named -------------------------------------------

import tarfile  # noqa: E402

from pixmix.data.shards.mixing_set import MixingShards  # noqa: E402


def add_symlink(shard: Path, name: str, target: str) -> None:
    """Append a symbolic-link member to an existing (uncompressed) tar."""
    with tarfile.open(shard, "a") as tar:
        info = tarfile.TarInfo(name)
        info.type, info.linkname = tarfile.SYMTYPE, target
        tar.addfile(info)


def test_symlink_members_are_reported_by_name_in_shards_and_mixing_sets(tmp_path, caplog) -> None:
    folder, _ = fuzzed_set(tmp_path / "set", "png", seed=4)
    shard = folder / "shards" / "f-0.tar"
    add_symlink(shard, "zz.png", "/etc/passwd")
    loader = ShardLoader(folder, batch_size=8, rank=0, world_size=1, num_workers=0, shuffle=False)
    batches = list(loader)
    assert len(batches) == len(loader)
    links = [e for e in loader.stats.errors if "'zz.png'" in e]
    assert links == ["shards/f-0.tar: member 'zz.png' is a symbolic link to '/etc/passwd': skipped"]
    # The mixing-set reader.
    mix = tmp_path / "mix"
    info = write_shard(mix / "shards" / "00000.tar",
                       [Sample("m0", {"png": to_bytes(Image.new("RGB", (8, 8)), "png"), "json": b"{}"})], root=mix)
    (mix / "manifest.json").write_text(json.dumps({"format": "pixmix-mixset", "version": 1,
                                                   "shards": [info.to_json()]}))
    add_symlink(mix / "shards" / "00000.tar", "m1.png", "../../secret.png")
    with caplog.at_level("WARNING", logger="pixmix.data.shards"):
        pictures = MixingShards(mix)
    assert len(pictures) == 1 and len(pictures.skipped) == 1
    assert "'m1.png' is a symbolic link to '../../secret.png'" in pictures.skipped[0]
    assert any("m1.png" in r.getMessage() for r in caplog.records)
