"""Procedural fractals (mixset.sources.procedural): determinism, reproducibility from params, colourfulness,
the Anderson & Farrell sampling constraints, input validation and no global RNG use."""

from __future__ import annotations

import colorsys
import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mixset.sources.procedural import (
    FILL_LEVEL,
    KINDS,
    MIN_ENTROPY,
    MIN_FILL,
    FractalParams,
    _hsv_to_rgb,
    generate_fractal,
    quality,
    render_fractal,
    sample_fractal_params,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def collection() -> list[tuple[np.ndarray, FractalParams, int]]:
    """30 images of the collection seeded 11 at the default 256 px (~0.3 s)."""
    return [generate_fractal(11, i) for i in range(30)]


# --- determinism ----------------------------------------------------------------------------------


def test_same_seed_and_index_give_identical_image_and_params():
    a_img, a_par, a_tries = generate_fractal(5, 3, size=96)
    b_img, b_par, b_tries = generate_fractal(5, 3, size=96)
    assert np.array_equal(a_img, b_img)
    assert a_par == b_par and a_tries == b_tries


def test_different_index_or_seed_gives_different_image():
    base = generate_fractal(5, 3, size=96)[0]
    assert not np.array_equal(base, generate_fractal(5, 4, size=96)[0])
    assert not np.array_equal(base, generate_fractal(6, 3, size=96)[0])


def test_image_depends_only_on_seed_and_index_not_on_history():
    fresh = generate_fractal(9, 7, size=64)
    for i in range(7):  # generating other images first must not change image 7
        generate_fractal(9, i, size=64)
    again = generate_fractal(9, 7, size=64)
    assert np.array_equal(fresh[0], again[0]) and fresh[1] == again[1]


def test_image_is_the_same_in_another_process():
    digest = hashlib.sha256(generate_fractal(9, 7, size=64)[0].tobytes()).hexdigest()
    code = (
        "import hashlib; from mixset.sources.procedural import generate_fractal; "
        "print(hashlib.sha256(generate_fractal(9, 7, size=64)[0].tobytes()).hexdigest())"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == digest


def test_rng_is_seed_sequence_of_seed_and_index():
    # The documented contract: rng = default_rng(SeedSequence([seed, index])), kind drawn first.
    for index in range(6):
        _, params, tries = generate_fractal(21, index, size=64)
        if tries != 1:
            continue
        rng = np.random.default_rng(np.random.SeedSequence([21, index]))
        kind = KINDS[int(rng.integers(len(KINDS)))]
        assert sample_fractal_params(rng, kind) == params


def test_both_kinds_occur_and_tries_are_counted(collection):
    kinds = [p.kind for _, p, _ in collection]
    assert set(kinds) == set(KINDS)
    assert all(t >= 1 for _, _, t in collection)
    assert all(p.kind == "ifs" for _, p, _ in (generate_fractal(3, i, size=64, kinds=("ifs",)) for i in range(4)))


# --- re-rendering from params ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_render_from_params_reproduces_generated_image(kind):
    for index in range(3):
        image, params, _ = generate_fractal(2, index, size=128, kinds=(kind,))
        assert params.kind == kind
        assert np.array_equal(render_fractal(params, 128), image)


@pytest.mark.parametrize("kind", KINDS)
def test_params_json_round_trip(kind):
    image, params, _ = generate_fractal(4, 1, size=64, kinds=(kind,))
    text = json.dumps(params.to_json())
    back = FractalParams.from_json(json.loads(text))
    assert back == params
    assert hash(back) == hash(params)  # frozen all the way down: usable as a dict key
    assert np.array_equal(render_fractal(back, 64), image)


# --- colourfulness and quality --------------------------------------------------------------------


def test_collection_is_colourful_and_filled(collection):
    fills, entropies, chromas = [], [], []
    for image, _, _ in collection:
        fill, entropy = quality(image)
        fills.append(fill)
        entropies.append(entropy)
        px = image.astype(np.int16)
        lit = px.max(axis=2) > FILL_LEVEL
        chromas.append(float((px.max(axis=2) - px.min(axis=2))[lit].mean()))  # 0 for grey pixels
    assert min(fills) >= MIN_FILL and max(fills) <= 0.99
    assert min(entropies) >= MIN_ENTROPY
    assert np.mean(entropies) > 2.0  # measured 2.6-3.2 bits over seeds 11-13
    assert min(chromas) > 15  # no accepted image is greyscale (measured >= 23)
    assert np.mean(chromas) > 50  # measured 79-89


def test_quality_of_reference_images():
    assert quality(np.zeros((64, 64, 3), np.uint8)) == (0.0, 0.0)
    flat = np.full((64, 64, 3), 200, np.uint8)
    assert quality(flat) == (1.0, 0.0)
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    fill, entropy = quality(noise)
    assert entropy > 8.9  # uniform over 512 bins is 9 bits
    assert fill == pytest.approx(1 - ((FILL_LEVEL + 1) / 256) ** 3, abs=0.01)
    with pytest.raises(ValueError, match="image"):
        quality(np.zeros((8, 8), np.uint8))


def test_hsv_to_rgb_matches_colorsys():
    rng = np.random.default_rng(1)
    h, s, v = rng.uniform(-2, 3, 200), rng.random(200), rng.random(200)
    got = _hsv_to_rgb(h, s, v)  # planar [3, n]
    want = np.array([colorsys.hsv_to_rgb(hh % 1.0, ss, vv) for hh, ss, vv in zip(h, s, v)]).T
    np.testing.assert_allclose(got, want, atol=2e-6)


def test_max_tries_exhausted_names_seed_and_index():
    with pytest.raises(RuntimeError, match=r"seed=1, index=2"):
        generate_fractal(1, 2, size=32, min_entropy=9.0, max_tries=2)


# --- IFS sampling constraints ---------------------------------------------------------------------


def test_ifs_systems_are_contractive_and_satisfy_the_sigma_factor():
    rng = np.random.default_rng(123)
    seen_n = set()
    for _ in range(200):
        ifs = sample_fractal_params(rng, "ifs").ifs
        n = len(ifs.maps)
        seen_n.add(n)
        assert 2 <= n <= 4 and len(ifs.map_colours) == n
        assert (5 + n) / 2 <= ifs.alpha <= (6 + n) / 2
        total = 0.0
        for a, b, c, d, e, f in ifs.maps:
            s1, s2 = np.linalg.svd(np.array([[a, b], [c, d]]), compute_uv=False)
            assert s1 < 1.0 and 0.0 <= s2 <= s1
            assert -1.0 <= e <= 1.0 and -1.0 <= f <= 1.0
            total += s1 + 2 * s2
        assert abs(total - ifs.alpha) < 1e-9
    assert seen_n == {2, 3, 4}


def test_ifs_colouring_ranges():
    rng = np.random.default_rng(7)
    for _ in range(50):
        ifs = sample_fractal_params(rng, "ifs").ifs
        assert 0.3 <= ifs.saturation <= 1.0 and 0.5 <= ifs.value <= 1.0


# --- sizes and validation -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 512])
@pytest.mark.parametrize("kind", KINDS)
def test_sizes(size, kind):
    image, params, _ = generate_fractal(0, 1, size=size, kinds=(kind,))
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert params.kind == kind


@pytest.mark.parametrize("size", [0, -1, 2.5, True, "256", 10**6])
def test_invalid_size_raises(size):
    params = sample_fractal_params(np.random.default_rng(0), "julia")
    with pytest.raises(ValueError, match="size"):
        render_fractal(params, size)
    with pytest.raises(ValueError, match="size"):
        generate_fractal(0, 0, size=size)


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="kind"):
        sample_fractal_params(np.random.default_rng(0), "mandelbulb")
    with pytest.raises(ValueError, match="kinds"):
        generate_fractal(0, 0, kinds=("ifs", "flame"))
    with pytest.raises(ValueError, match="kinds"):
        generate_fractal(0, 0, kinds=())
    with pytest.raises(ValueError, match="kind"):
        FractalParams.from_json({"kind": "flame"})


def test_invalid_generate_arguments_raise():
    for kwargs, name in [
        ({"seed": -1}, "seed"),
        ({"index": -3}, "index"),
        ({"max_tries": 0}, "max_tries"),
        ({"min_fill": 1.5}, "min_fill"),
        ({"min_entropy": -1.0}, "min_entropy"),
    ]:
        args = {"seed": 0, "index": 0, **kwargs}
        with pytest.raises(ValueError, match=name):
            generate_fractal(args.pop("seed"), args.pop("index"), size=32, **args)


def test_argument_errors_are_user_errors_naming_the_parameter():
    from pixmix.utils.errors import PixmixError

    for kwargs, name in [({"seed": -1}, "seed"), ({"max_tries": 0}, "max_tries"), ({"size": 3}, "size"),
                         ({"kinds": ("flame",)}, "kinds")]:
        args = {"seed": 0, "index": 0, **kwargs}
        with pytest.raises(PixmixError) as info:
            generate_fractal(args.pop("seed"), args.pop("index"), **args)
        assert info.value.param == name, (kwargs, info.value.param)


# --- no global RNG --------------------------------------------------------------------------------


def test_no_global_rng_is_used():
    np.random.seed(1234)
    random.seed(1234)
    np_state = np.random.get_state()
    py_state = random.getstate()
    for kind in KINDS:
        params = sample_fractal_params(np.random.default_rng(5), kind)
        render_fractal(params, 48)
        generate_fractal(8, 2, size=48, kinds=(kind,))
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    assert random.getstate() == py_state
