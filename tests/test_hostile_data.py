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
