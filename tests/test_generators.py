"""Ablation-set generators (mixset.sources.generators and mixset.gen_*): purity and determinism, the published
recipes (Dead Leaves, Spectrum + Color + WMM, StyleGAN (Oriented), FractalDB), and `mixset build`
with generator collections. All at 64 px with few images."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from mixset.build.builder import BuildConfig, build
from mixset.sources import deadleaves as gen_deadleaves
from mixset.sources import fractaldb as gen_fractaldb
from mixset.sources import spectrum as gen_spectrum
from mixset.sources import stylegan as gen_stylegan
from mixset.sources.catalog import DEFAULT_MANIFESTS, load_collection, load_collections
from mixset.sources.generators import MIN_STD, NAMES, generate, generate_batch, generate_with_tries
from mixset.verify import verify
from pixmix.data.shards.tar import iter_shard
from pixmix.utils.errors import PixmixError

SIZE = 64


def quiet(_: str) -> None:
    pass


# --- the common API ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_pure_function_of_seed_and_index(name):
    first, params = generate(name, 7, 1, SIZE)
    assert first.dtype == np.uint8 and first.shape == (SIZE, SIZE, 3)
    assert first.std() >= MIN_STD
    assert isinstance(params["draw_seed"], int)
    assert json.loads(json.dumps(params)) == params  # JSON-serialisable as is
    # Other calls in between (other indices, seeds, generators) change nothing.
    generate(name, 7, 0, SIZE)
    generate(name, 8, 1, SIZE)
    generate("deadleaves", 7, 1, SIZE)
    again, params_again = generate(name, 7, 1, SIZE)
    assert np.array_equal(first, again) and params == params_again
    other, _ = generate(name, 7, 2, SIZE)
    assert not np.array_equal(first, other)
    assert not np.array_equal(first, generate(name, 8, 1, SIZE)[0])


def test_no_global_rng_is_used_or_changed():
    np.random.seed(123)
    random.seed(123)
    torch.manual_seed(123)
    states = np.random.get_state()[1].copy(), random.getstate(), torch.get_rng_state().clone()
    threads = torch.get_num_threads()
    results = [generate(name, 1, 0, SIZE)[0] for name in NAMES]
    assert np.array_equal(np.random.get_state()[1], states[0]) and random.getstate() == states[1]
    assert torch.equal(torch.get_rng_state(), states[2]) and torch.get_num_threads() == threads
    # ...and their state does not matter.
    np.random.seed(999)
    random.seed(999)
    torch.manual_seed(999)
    assert all(np.array_equal(a, generate(n, 1, 0, SIZE)[0]) for n, a in zip(NAMES, results, strict=True))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="generator must be one of"):
        generate("plasma", 0, 0, SIZE)
    with pytest.raises(ValueError, match="seed"):
        generate("deadleaves", -1, 0, SIZE)
    with pytest.raises(ValueError, match="index"):
        generate("deadleaves", 0, 1.5, SIZE)
    with pytest.raises(ValueError, match="size"):
        generate("deadleaves", 0, 0, 4)
    from pixmix.utils.errors import PixmixError

    for args, param in ((("deadleaves", -1, 0, SIZE), "seed"), (("deadleaves", 0, 0, 4), "size"),
                        (("plasma", 0, 0, SIZE), None)):
        with pytest.raises(PixmixError) as info:  # user errors: one line on the command lines
            generate(*args)
        assert info.value.param == param, (args, info.value.param)


def test_rejected_draws_are_redrawn_and_counted(monkeypatch):
    calls = []

    def picky(pixels, params):
        calls.append(params)
        return len(calls) % 3 == 0  # accept every third draw

    monkeypatch.setattr(gen_deadleaves, "accept", picky, raising=False)  # the hook is optional
    _, params, tries = generate_with_tries("deadleaves", 4, 2, SIZE)
    assert tries == 3 and len(calls) == 3
    calls.clear()
    assert generate_with_tries("deadleaves", 4, 2, SIZE)[1] == params  # the same draws again
    monkeypatch.setattr(gen_deadleaves, "accept", lambda pixels, params: False, raising=False)
    with pytest.raises(RuntimeError, match="4 tries"):
        generate_with_tries("deadleaves", 4, 2, SIZE, max_tries=4)


# --- Dead Leaves (Squares) ----------------------------------------------------------------------------


def test_dead_leaves_radii_follow_the_inverse_cdf():
    radii = gen_deadleaves.sample_radii(np.random.default_rng(0), 400_000)
    assert set(np.unique(radii)) <= set(gen_deadleaves.RADII)
    assert gen_deadleaves.RADII.size == 200 and gen_deadleaves.RADII[0] == 0.03 and gen_deadleaves.RADII[-1] == 1.0
    p = gen_deadleaves.RADII**-3 - 1
    p /= p.sum()
    freq = np.array([(radii == r).mean() for r in gen_deadleaves.RADII[:20]])
    sigma = np.sqrt(p[:20] * (1 - p[:20]) / radii.size)
    assert np.all(np.abs(freq - p[:20]) < 5 * sigma + 1e-9)
    assert radii.mean() == pytest.approx((p * gen_deadleaves.RADII).sum(), rel=0.01)


@pytest.mark.parametrize("index", range(3))
def test_dead_leaves_are_squares_painted_in_order_until_covered(index):
    image, params = generate("deadleaves", 3, index, SIZE)
    leaf = gen_deadleaves.leaves(np.random.default_rng(params["draw_seed"]), SIZE)
    n = params["leaves"]
    assert leaf["x0"].size == n and (params["covered"] or n == gen_deadleaves.MAX_LEAVES)
    # Squares of side r * sqrt(2) * size: unclipped boxes hold floor or ceil of the side in pixels.
    assert np.allclose(leaf["side"], leaf["radius"] * math.sqrt(2) * SIZE)
    inner = (leaf["x0"] > 0) & (leaf["x1"] < SIZE) & (leaf["y0"] > 0) & (leaf["y1"] < SIZE)
    for lo, hi in (("x0", "x1"), ("y0", "y1")):
        width = (leaf[hi] - leaf[lo])[inner]
        assert np.all(np.abs(width - leaf["side"][inner]) <= 1.0)
    # Every pixel shows the colour of the last leaf containing it (later leaves cover earlier ones),
    # and every pixel is covered: the image is exactly the painted leaves, nothing black is left.
    yy, xx = np.divmod(np.arange(SIZE * SIZE), SIZE)
    inside = ((xx[:, None] >= leaf["x0"]) & (xx[:, None] < leaf["x1"])
              & (yy[:, None] >= leaf["y0"]) & (yy[:, None] < leaf["y1"]))
    assert inside.any(axis=1).all()
    last = n - 1 - np.argmax(inside[:, ::-1], axis=1)
    assert np.array_equal(image.reshape(-1, 3), leaf["colour"][last])
    # The stop is the first leaf that completes the cover.
    assert not inside[:, :-1].any(axis=1).all()
    # Colours are the leaves' own: few distinct colours, each a leaf colour; the top leaf is a full
    # axis-aligned constant square.
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    assert colours <= {tuple(c) for c in leaf["colour"]} and len(colours) <= n
    top = image[leaf["y0"][-1]: leaf["y1"][-1], leaf["x0"][-1]: leaf["x1"][-1]]
    assert (top == leaf["colour"][-1]).all()


def test_dead_leaves_stop_at_the_leaf_limit(monkeypatch):
    monkeypatch.setattr(gen_deadleaves, "MAX_LEAVES", 40)
    image, params = generate("deadleaves", 0, 0, 128)
    assert params["leaves"] == 40 and params["covered"] is False
    assert (image.max(axis=2) == 0).any()  # black canvas left uncovered


# --- Spectrum + Color + WMM -------------------------------------------------------------------------------


def test_spectrum_amplitude_is_the_published_formula():
    s, d = 1.7, 0.05
    amp = gen_spectrum.amplitude(32, s, d).double()
    assert amp[0, 0] == 0
    for k in (1, 3, 9):
        assert amp[0, k].item() == pytest.approx(1 / k ** (s + d), rel=1e-5)
        assert amp[k, 0].item() == pytest.approx(1 / k ** (s - d), rel=1e-5)
        assert amp[-k, k].item() == pytest.approx(1 / (k ** (s + d) + k ** (s - d)), rel=1e-5)


def test_spectrum_projection_keeps_phase_mean_and_std():
    img = torch.rand(3, 32, 32, dtype=torch.float64).float()
    amp = gen_spectrum.amplitude(32, 2.0, 0.0)
    out = torch.fft.irfft2(gen_spectrum._spectrum_projection(torch.fft.rfft2(img), amp), s=(32, 32))
    assert torch.allclose(out.mean(dim=(1, 2)), img.mean(dim=(1, 2)), atol=1e-5)
    assert torch.allclose(out.std(dim=(1, 2)), img.std(dim=(1, 2)), rtol=1e-4)
    fi, fo = torch.fft.rfft2(img), torch.fft.rfft2(out)
    assert torch.allclose(torch.angle(fo[:, 1:, 1:]), torch.angle(fi[:, 1:, 1:]), atol=1e-3)
    ratio = fo.abs()[:, 1:, 1:] / amp[1:, 1:]
    assert torch.allclose(ratio, ratio[:, :1, :1].expand_as(ratio), rtol=1e-3)  # |F| proportional to amp


def test_steerable_pyramid_is_a_tight_frame_with_oriented_bands():
    assert (gen_spectrum.levels_for(128), gen_spectrum.levels_for(256)) == (3, 4)
    x = torch.rand(3, 64, 64)
    pyr = gen_spectrum.build_pyramid(x, 2)
    assert [tuple(b.shape) for b in pyr["bands"]] == [(3, 4, 64, 64), (3, 4, 32, 32)]
    assert torch.allclose(gen_spectrum.collapse_pyramid(pyr), x, atol=1e-5)
    # A vertical grating (varying along x) lands in orientation 0; a horizontal one in orientation 2.
    xs = torch.arange(64.0)
    for grating, k in ((torch.cos(2 * math.pi * 20 * xs / 64)[None, :].expand(64, 64), 0),
                       (torch.cos(2 * math.pi * 20 * xs / 64)[:, None].expand(64, 64), 2)):
        energy = gen_spectrum.build_pyramid(grating[None], 2)["bands"][0][0].square().sum(dim=(1, 2))
        # cos^3 angular masks: the neighbours at 45 degrees get cos^6(45) = 1/8 of the energy each.
        assert energy.argmax().item() == k and energy[k] / energy.sum() == pytest.approx(0.8, abs=0.02)


def test_band_marginals_match_the_generalised_laplacian():
    r = 0.6
    table = gen_spectrum.generalised_laplacian_quantiles(r).double()
    assert table.std().item() == pytest.approx(1.0, rel=0.02)
    kurtosis = math.gamma(5 / r) * math.gamma(1 / r) / math.gamma(3 / r) ** 2
    assert (table**4).mean().item() == pytest.approx(kurtosis, rel=0.1)
    x = torch.randn(2, 20000)
    matched = gen_spectrum.match_histograms(x, table.float())
    assert (torch.diff(matched[0][torch.argsort(x[0])]) >= -1e-6).all()  # monotone: the order is kept
    q = torch.quantile(matched[0], torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95]))
    ref = torch.quantile(table[0].float(), torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95]))
    assert torch.allclose(q, ref, atol=0.03)


def _power_slope(image: np.ndarray) -> float:
    grey = image.astype(np.float64).mean(axis=2)
    grey -= grey.mean()
    n = grey.shape[0]
    power = np.abs(np.fft.fft2(grey)) ** 2
    f = np.fft.fftfreq(n, 1 / n)
    radius = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    ks = np.arange(2, n // 4)
    radial = [power[(radius >= k - 0.5) & (radius < k + 0.5)].mean() for k in ks]
    return float(np.polyfit(np.log(ks), np.log(radial), 1)[0])


def test_spectrum_images_have_the_drawn_power_law():
    slopes, measured = [], []
    for index in range(8):
        image, params = generate("spectrum", 5, index, SIZE)
        s = params["slope"]
        assert 0.5 <= s <= 3.5 and abs(params["anisotropy"]) < 0.25 and 0.4 <= params["wmm_exponent"] <= 0.8
        assert 3 <= params["colours"] <= 22 and sum(params["counts"]) == SIZE * SIZE
        slope = _power_slope(image)
        # Power ~ f^-2s; the WMM and colour projections (and uint8) add some high frequencies back,
        # so steep spectra come out flatter, but never white and never steeper than drawn.
        assert -2 * s - 0.6 <= slope <= -1.3
        if s < 1.75:
            assert slope == pytest.approx(-2 * s, abs=0.6)
        slopes.append(s)
        measured.append(slope)
    assert np.corrcoef(slopes, measured)[0, 1] < -0.7


# --- StyleGAN (Oriented) ------------------------------------------------------------------------------------


def test_oriented_filter_bank():
    bank = gen_stylegan.filter_bank()
    assert bank.shape == (40, 3, 3)
    assert torch.equal(bank[20:], -bank[:20])  # the negatives
    assert len({tuple(f.flatten().round(decimals=5).tolist()) for f in bank}) == 40
    assert torch.allclose(bank.flatten(1).norm(dim=1), torch.ones(40))
    edges, lines = bank[:8], bank[8:16]
    assert torch.allclose(edges.sum(dim=(1, 2)), torch.zeros(8), atol=1e-6)
    assert torch.allclose(lines.sum(dim=(1, 2)), torch.zeros(8), atol=1e-6)
    # Orientation k + 4 is orientation k turned by 90 degrees.
    for k in range(4):
        for group in (edges, lines):
            turned = torch.rot90(group[k], 1)
            assert torch.allclose(turned, group[k + 4], atol=1e-5) or torch.allclose(turned, -group[k + 4], atol=1e-5)


def test_stylegan_output_has_the_drawn_colour_statistics():
    for index in range(2):
        _, params = generate("stylegan", 2, index, SIZE)
        img, again = gen_stylegan.render_float(params["draw_seed"], SIZE)
        assert again == {k: v for k, v in params.items() if k != "draw_seed"}
        mean_t, std_t = torch.tensor(params["target_mean"]), torch.tensor(params["target_std"])
        assert torch.allclose(img.mean(dim=(1, 2)).float(), mean_t, atol=1e-5)
        assert torch.allclose(img.std(dim=(1, 2), unbiased=False).float(), std_t, atol=1e-5)
        assert torch.all((mean_t - torch.tensor(gen_stylegan.IMAGENET_MEAN)).abs() <= 0.05 + 1e-6)
        ratio = std_t / torch.tensor(gen_stylegan.IMAGENET_STD)
        assert torch.all((ratio >= 0.8 - 1e-6) & (ratio <= 1.2 + 1e-6))
        pixels = generate("stylegan", 2, index, SIZE)[0].reshape(-1, 3) / 255.0
        assert np.allclose(pixels.mean(axis=0), mean_t.numpy(), atol=0.03)  # clipping moves it a little
        assert np.allclose(pixels.std(axis=0), std_t.numpy(), atol=0.03)
        assert all(5 <= m <= 40 for m in params["subset_sizes"]) and params["convs"] == 9  # 4..64 px
        assert all(0.5 <= a <= 1.5 for a in params["noise_alpha"])


def test_pink_noise_has_a_power_law_spectrum():
    noise = gen_stylegan.pink_noise(128, 1.2, torch.Generator().manual_seed(0))
    assert noise.std().item() == pytest.approx(1.0, rel=1e-4)
    slope = _power_slope(np.repeat(noise.numpy()[:, :, None], 3, axis=2))
    assert slope == pytest.approx(-1.2, abs=0.3)


# --- FractalDB -------------------------------------------------------------------------------------------


def test_fractaldb_category_search_and_instances():
    system = gen_fractaldb.search_category(0, 3)
    maps = system["maps"]
    assert 2 <= maps.shape[0] <= 7 and maps.shape[1] == 6 and np.all(np.abs(maps) <= 1)
    assert system["search_fill"] >= gen_fractaldb.SEARCH_FILL == 0.20
    det = np.abs(maps[:, 0] * maps[:, 3] - maps[:, 1] * maps[:, 2])
    assert np.allclose(gen_fractaldb._probabilities(maps), det / det.sum())
    for index in (3, 1003):  # both category 3
        image, params = generate("fractaldb", 0, index, SIZE)
        assert params["category"] == 3 and np.allclose(params["maps"], maps, atol=1e-6)
        assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2])
        assert set(np.unique(image)) <= {0, 255}
        fill = float((image[..., 0] > 0).mean())
        assert fill == pytest.approx(params["fill"], abs=1e-4)
        assert gen_fractaldb.MIN_FILL <= fill <= gen_fractaldb.MAX_FILL
        assert params["factor"] in gen_fractaldb.FACTORS and 0 <= params["param"] < maps.size
    assert generate("fractaldb", 0, 4, SIZE)[1]["category"] == 4


# --- mixset build with generator collections --------------------------------------------------------------


def _manifest(folder: Path, name: str, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"ablation-{name}.toml").write_text(
        f'name = "abl-{name}"\nsource = "{name}"\nkind = "generator"\nlicence = "CC0-1.0"\n'
        f'[generator]\nname = "{name}"\ncount = {count}\n'
    )
    return folder


@pytest.mark.parametrize("name", NAMES)
def test_build_a_generator_source(tmp_path, name):
    manifests = _manifest(tmp_path / "m", name, count=5)
    out = tmp_path / "set"
    summary = build(BuildConfig(out=out, sources=(name,), manifests=manifests, limit=3, image_size=SIZE, shard_size=2),
                    log=quiet, progress=False)
    assert summary.samples == 3 and summary.shards == 2
    manifest = json.loads((out / "manifest.json").read_text())
    report = manifest["collections"][f"abl-{name}"]
    assert report["planned"] == 3 and report["samples"] == 3 and report["kind"] == "generator"
    assert manifest["sources"] == {name: 3}
    for entry in manifest["shards"]:
        for sample in iter_shard(out / entry["name"]):
            meta = json.loads(sample.fields["json"])
            origin = meta["origin"]
            assert origin["generator"] == name and origin["tries"] >= 1 and "draw_seed" in origin["params"]
            assert meta["source"] == name and meta["width"] == meta["height"] == SIZE
    assert verify(out) == []


def test_generator_manifests_are_validated(tmp_path):
    bad = {
        "no-table.toml": 'name = "a"\nsource = "deadleaves"\nkind = "generator"\nlicence = "x"\n',
        "bad-name.toml": 'name = "b"\nsource = "deadleaves"\nkind = "generator"\nlicence = "x"\n'
                         '[generator]\nname = "perlin"\ncount = 3\n',
        "bad-count.toml": 'name = "c"\nsource = "deadleaves"\nkind = "generator"\nlicence = "x"\n'
                          '[generator]\nname = "deadleaves"\ncount = 0\n',
    }
    messages = {"no-table.toml": r"\[generator\] table", "bad-name.toml": r"\[generator\] name must be one of",
                "bad-count.toml": r"\[generator\] count must be a positive integer"}
    for file, text in bad.items():
        path = tmp_path / file
        path.write_text(text)
        with pytest.raises(ValueError, match=messages[file]) as info:
            load_collection(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_shipped_ablation_manifests():
    sources = ("deadleaves", "spectrum", "stylegan", "fractaldb")
    found = {c.source: c for c in load_collections(DEFAULT_MANIFESTS, sources)}
    assert set(found) == set(NAMES)
    for source, c in found.items():
        assert c.kind == "generator" and c.generator == source and c.count >= 100_000
        assert c.origin_file.startswith("ablation-")
    assert all(c.source == "fractals" for c in load_collections(DEFAULT_MANIFESTS, ("fractals",)))


# --- on a device (issue 11) ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["spectrum", "stylegan"])
def test_torch_generators_take_a_device_and_keep_the_cpu_bytes(name: str) -> None:
    default = generate_with_tries(name, 3, 1, 48)
    explicit = generate_with_tries(name, 3, 1, 48, device="cpu")
    assert np.array_equal(default[0], explicit[0]) and default[1] == explicit[1]


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    """The same image to rounding: ten projections amplify float rounding to a few levels, not more."""
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return bool(diff.mean() < 4.0 and np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.95)


@pytest.mark.parametrize("name", ["spectrum", "deadleaves"])
def test_a_batch_is_the_images_one_at_a_time(name: str) -> None:
    """Spectrum renders the batch's first tries together (its GPU path): the same draws, the same images to
    rounding; the numpy generators go one at a time (the same bytes)."""
    indices = [4, 0, 9]
    batch = generate_batch(name, 2, indices, 48)
    for index, (pixels, params, tries) in zip(indices, batch, strict=True):
        alone = generate_with_tries(name, 2, index, 48)
        assert params == alone[1] and tries == alone[2]
        assert np.array_equal(pixels, alone[0]) if name == "deadleaves" else _close(pixels, alone[0])


def test_numpy_generators_refuse_a_device() -> None:
    with pytest.raises(PixmixError, match="deadleaves.*CPU only") as info:
        generate_with_tries("deadleaves", 0, 0, 32, device="cuda")
    assert info.value.param == "device"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["spectrum", "stylegan"])
def test_torch_generators_on_cuda_match_the_cpu(name: str) -> None:
    for index in range(3):
        cpu_pixels, cpu_params, _ = generate_with_tries(name, 0, index, 128)
        gpu_pixels, gpu_params, _ = generate_with_tries(name, 0, index, 128, device="cuda")
        assert gpu_params["draw_seed"] == cpu_params["draw_seed"]  # the same draws
        assert _close(cpu_pixels, gpu_pixels), (name, index)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_spectrum_batch_on_cuda_matches_the_cpu() -> None:
    indices = list(range(8))
    for (gpu_pixels, gpu_params, _), index in zip(generate_batch("spectrum", 0, indices, 128, "cuda"), indices,
                                                  strict=True):
        cpu_pixels, cpu_params, _ = generate_with_tries("spectrum", 0, index, 128)
        assert gpu_params["draw_seed"] == cpu_params["draw_seed"]
        assert _close(cpu_pixels, gpu_pixels), index
