"""Feature visualisations (mixset.sources.fvis): tiny CNNs on the CPU, a few optimisation steps each."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import mixset.sources.fvis as fv

SIZE = 32
STEPS = 20


def tiny_cnn(seed: int = 1) -> nn.Sequential:
    """conv(3->8) ReLU(inplace) conv(8->8) ReLU(inplace) pool conv(8->8), seeded, eval()."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1),
        )
    return net.eval()


@pytest.fixture(scope="module")
def trunk() -> nn.Module:
    return fv.truncated_trunk(tiny_cnn(), "2")


def unit_activations(trunk: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """[N, C]: mean activation of every channel for every image, as the renderer's model sees them."""
    with torch.no_grad():
        return trunk(fv._model_input(images, images.shape[-1])).mean(dim=(2, 3))


# --- import cost -----------------------------------------------------------------------------------


def test_import_is_cheap():
    code = (
        "import sys, mixset.sources.fvis\n"
        "heavy = [m for m in ('lucent', 'IPython', 'kornia') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- plan ------------------------------------------------------------------------------------------


def test_plan_units_deterministic_counts_and_limit():
    plan = fv.plan_units()
    assert plan == fv.plan_units()
    assert len(plan) == sum(s.channels for specs in fv.DEFAULT_LAYERS.values() for s in specs)
    assert len(set(plan)) == len(plan)
    assert plan[0] == (fv.DEFAULT_LAYERS["alexnet"][0], 0)
    alex = fv.plan_units(["alexnet"])
    assert len(alex) == 64 + 192 + 384 and [c for _, c in alex[:3]] == [0, 1, 2]
    # the paper's set holds about 4,700 FVis (spec section 5); the default plan is of that size
    assert len(plan) == 4768 and 4500 <= len(plan) <= 5000
    assert fv.plan_units(["resnet50", "alexnet"])[0][0].model == "resnet50"
    assert fv.plan_units(limit=5) == plan[:5]
    assert fv.plan_units(limit=0) == []
    with pytest.raises(ValueError, match="no default layers"):
        fv.plan_units(["nope"])
    with pytest.raises(ValueError, match="activation must be one of"):
        fv.plan_units(activation="post")


def test_default_activation_is_lucents_post_relu():
    """Lucent's hook on an AlexNet/VGG conv sees the tensor the in-place ReLU overwrites: post-ReLU values.
    The default plan optimises those (the ReLU module); pre-relu optimises the conv output itself."""
    torch.manual_seed(0)
    model = fv._build("alexnet").eval()
    x = torch.randn(1, 3, 224, 224)
    post = fv.plan_units(["alexnet"], limit=1)[0][0]
    pre = fv.plan_units(["alexnet"], limit=1, activation="pre-relu")[0][0]
    assert (post.layer, post.target, pre.target) == ("features.0", "features.1", "features.0")
    seen: dict[str, torch.Tensor] = {}

    def keep(_module: nn.Module, _inputs: object, out: torch.Tensor) -> None:  # None: the output is not replaced
        seen.setdefault("lucent", out)

    handle = model.features[0].register_forward_hook(keep)
    with torch.no_grad():
        model(x)  # the whole net: the ReLU then overwrites the hooked tensor, as in Lucent
    handle.remove()
    with torch.no_grad():
        post_out, pre_out = fv.truncated_trunk(model, post.target)(x), fv.truncated_trunk(model, pre.target)(x)
    assert torch.equal(post_out, seen["lucent"]) and (post_out >= 0).all()
    assert (pre_out < 0).any() and torch.equal(pre_out.clamp_min(0), post_out)
    resnet = fv.plan_units(["resnet50"], limit=1)[0][0]
    assert resnet.target == resnet.layer == "conv1"  # followed by BatchNorm: nothing to choose


def test_default_layers_match_torchvision():
    """Names and channel counts of the hard-coded table, checked on the meta device (no allocation)."""
    from torchvision.models import get_model

    for name, specs in fv.DEFAULT_LAYERS.items():
        with torch.device("meta"):
            kwargs = {"init_weights": False} if name == "googlenet" else {}
            model = get_model(name, weights=None, **kwargs).eval()
            for spec in specs:
                assert spec.model == name
                out = fv.truncated_trunk(model, spec.layer)(torch.empty(1, 3, 224, 224))
                assert out.shape[1] == spec.channels, (name, spec.layer, tuple(out.shape))


# --- truncation ------------------------------------------------------------------------------------


class Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("a layer after the target ran")


def test_truncated_trunk_stops_at_layer_pre_relu():
    net = tiny_cnn()
    calls: dict[str, int] = {}
    for name in ("3", "4", "5"):
        net.get_submodule(name).register_forward_hook(lambda m, i, o, n=name: calls.__setitem__(n, calls.get(n, 0) + 1))
    trunk = fv.truncated_trunk(net, "2")
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = trunk(x)
    assert calls == {}
    with torch.no_grad():
        expected = net[2](torch.relu(net[0](x)))
    torch.testing.assert_close(out, expected)
    assert (out < 0).any()  # the in-place ReLU after the target conv never ran: pre-ReLU values
    # the full model still runs its later layers (the hooks do fire there)
    net(x)
    assert calls == {"3": 1, "4": 1, "5": 1}


class Branchy(nn.Module):
    """Data-dependent control flow (FX cannot trace it), a later layer that raises."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = tiny_cnn()[:2]
        self.conv = nn.Conv2d(8, 4, 1)
        self.late = Boom()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if x.sum() > 0:
            x = self.conv(x)
        return self.late(x)


def test_truncated_trunk_eager_fallback_never_runs_later_layers():
    model = Branchy().eval()
    trunk = fv.truncated_trunk(model, "conv")
    assert trunk.mode == "hook"
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    out = trunk(x)  # Boom would raise if it ran
    torch.testing.assert_close(out, model.conv(model.stem(x)))
    assert not model.conv._forward_hooks  # the temporary hook is gone
    with pytest.raises(AssertionError, match="after the target"):
        model(x)


def test_truncated_trunk_unknown_layer():
    with pytest.raises(ValueError, match="no module 'features.9'"):
        fv.truncated_trunk(tiny_cnn(), "features.9")


# --- parameterisation ------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 33])
def test_parameterisation_equals_lucent(size):
    from lucent.optvis import param

    seed, unit = 7, 3
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(fv.derive_seed(seed, "init", unit))
        _, image_f = param.image(size, batch=1, fft=True, decorrelate=True)
        ref = image_f().detach().cpu()
    ours = fv._ImageParam(size, torch.device("cpu"))(fv._spectrum_init([unit], seed, size))
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


# --- rendering -------------------------------------------------------------------------------------


def test_render_shape_range_seeding_and_rng_isolation(trunk):
    import lucent.optvis.transform as lt

    torch.manual_seed(123)
    np.random.seed(123)
    torch_state, np_state, lucent_device = torch.get_rng_state(), np.random.get_state(), lt.device
    a = fv.render_units(trunk, [0, 3, 7], size=SIZE, steps=STEPS, seed=0)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    assert lt.device == lucent_device
    assert a.shape == (3, 3, SIZE, SIZE) and a.dtype == torch.float32
    assert torch.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    b = fv.render_units(trunk, [0, 3, 7], size=SIZE, steps=STEPS, seed=0)
    assert torch.equal(a, b)
    c = fv.render_units(trunk, [0, 3, 7], size=SIZE, steps=STEPS, seed=1)
    assert (a - c).abs().mean() > 1e-3
    none = fv.render_units(trunk, [0, 3, 7], size=SIZE, steps=STEPS, seed=0, transforms="none")
    assert (a - none).abs().mean() > 1e-4  # Lucent's transforms are really applied
    assert fv.render_units(trunk, [], size=SIZE, steps=STEPS).shape == (0, 3, SIZE, SIZE)


def test_render_restores_train_flags_and_validates(trunk):
    net = tiny_cnn().train()
    t = fv.truncated_trunk(net, "2").train()
    fv.render_units(t, [1], size=SIZE, steps=1)
    assert t.training and net[2].training
    with pytest.raises(ValueError, match="out of range"):
        fv.render_units(trunk, [8], size=SIZE, steps=1)
    with pytest.raises(ValueError, match="transforms"):
        fv.render_units(trunk, [1], size=SIZE, steps=1, transforms="kornia")  # type: ignore[arg-type]


def test_objective_visualises_its_own_unit(trunk):
    """After 30 steps image i drives unit i far above its level for random images, and it raised unit i
    much more than the other units (changes from each image's random start, which removes the units'
    different biases)."""
    units, size = list(range(8)), 64
    rendered = fv.render_units(trunk, units, size=size, steps=30, seed=0)
    start = fv.render_units(trunk, units, size=size, steps=0, seed=0)  # the random initial images
    noise = torch.rand(32, 3, size, size, generator=torch.Generator().manual_seed(0))
    act, act0, act_noise = (unit_activations(trunk, x) for x in (rendered, start, noise))
    own = act.diagonal()
    # much higher than for random images (uniform noise and the parameterisation's random start)
    assert (own > act_noise.max(dim=0).values).all()
    gain = act - act0  # [image i, unit c]
    own_gain = gain.diagonal()
    assert (own_gain > 5 * act_noise.std(dim=0)).all(), (own_gain, act_noise.std(dim=0))
    # image i raised unit i more than it raised the other units, on average over units
    others = (gain.sum(dim=1) - own_gain) / (len(units) - 1)
    assert (own_gain > others).all()
    assert own_gain.mean() > 10 * others.abs().mean()
    # and unit i gains more from its own image than from most other units' images
    assert (gain.argmax(dim=0) == torch.arange(len(units))).float().mean() >= 0.75


def test_batching_independence(trunk):
    kw = dict(size=SIZE, steps=STEPS, seed=3)
    together = fv.render_units(trunk, [2, 5], **kw)
    alone = torch.cat([fv.render_units(trunk, [u], **kw) for u in (2, 5)])
    # Exactly equal on the CPUs tried; float32 rounding of batched convs may differ elsewhere.
    torch.testing.assert_close(together, alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(fv.render_units(trunk, [2, 5], batch=1, **kw), together, rtol=0, atol=1e-5)
    swapped = fv.render_units(trunk, [5, 2], **kw)
    torch.testing.assert_close(swapped.flip(0), together, rtol=0, atol=1e-5)


def test_zero_cross_gradients(trunk):
    """Slice i's gradient depends on its own unit only, with Lucent's transforms in the loop."""
    units = [2, 5, 6]
    param = fv._ImageParam(SIZE, torch.device("cpu"))
    spectrum = fv._spectrum_init(units, 0, SIZE).requires_grad_(True)
    transform = fv._LucentTransforms(fv.derive_seed(0, "transforms"), torch.device("cpu"))
    for _ in range(3):  # a few different random transforms
        act = trunk(fv._model_input(transform(param(spectrum)), SIZE))
        for i, unit in enumerate(units):
            (grad,) = torch.autograd.grad(-act[i, unit].mean(), [spectrum], retain_graph=True)
            for j in range(len(units)):
                if j == i:
                    assert grad[j].abs().sum() > 0
                else:
                    assert torch.count_nonzero(grad[j]) == 0


# --- models ----------------------------------------------------------------------------------------


def test_load_model_offline_falls_back_to_seeded_random_init(monkeypatch, tmp_path):
    import torchvision.models

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", offline)
    state = torch.get_rng_state()
    with pytest.warns(RuntimeWarning, match="RANDOM initialisation"):
        model, desc = fv.load_model("alexnet")
    assert desc.startswith("random-init fallback: ") and "AlexNet_Weights.IMAGENET1K_V1" in desc
    assert "no network" in desc
    assert not model.training
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.warns(RuntimeWarning):
        again, _ = fv.load_model("alexnet")
    assert torch.equal(model.features[0].weight, again.features[0].weight)  # seeded
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, requested = fv.load_model("alexnet", weights="random")
    assert requested.startswith("random-init (requested")


def test_load_model_checkpoint(monkeypatch, tmp_path):
    from torchvision.models import alexnet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        source = alexnet(weights=None, num_classes=10)
    path = tmp_path / "alexnet.pth"
    torch.save(source.state_dict(), path)
    seen = {}
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    model, desc = fv.load_model("alexnet", checkpoint=path)
    assert seen.get("weights_only") is True
    assert desc.startswith("checkpoint ") and str(path) in desc and "sha256" in desc
    assert not model.training
    assert torch.equal(model.features[0].weight, source.features[0].weight)
    assert model.classifier[6].out_features == 10  # num_classes taken from the checkpoint


def test_load_model_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ValueError) as info:
        fv.load_model("alexnet", checkpoint=bad)
    message = str(info.value)
    assert str(bad) in message and "\n" not in message
    mismatch = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, mismatch)
    with pytest.raises(ValueError, match="other.pth") as info:
        fv.load_model("alexnet", checkpoint=mismatch)
    assert "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError):
        fv.load_model("alexnet", checkpoint=tmp_path / "missing.pth")


# --- end to end ------------------------------------------------------------------------------------


def test_fvis_images_end_to_end(monkeypatch):
    plan = fv.plan_units(["alexnet"], limit=2)
    kw = dict(size=SIZE, steps=2, seed=4, weights="random", batch=2)
    out = list(fv.fvis_images(plan=plan, **kw))
    assert len(out) == 2
    image, meta = out[1]
    assert image.mode == "RGB" and image.size == (SIZE, SIZE)
    assert {k: meta[k] for k in ("model", "layer", "channel", "steps", "size", "seed")} == {
        "model": "alexnet",
        "layer": "features.0",
        "channel": 1,
        "steps": 2,
        "size": SIZE,
        "seed": 4,
    }
    assert meta["weights"].startswith("random-init")
    assert (meta["activation"], meta["module"]) == ("post-relu", "features.1")  # Lucent's post-ReLU objective
    model, _ = fv.load_model("alexnet", weights="random")
    trunk = fv.truncated_trunk(model, meta["module"])
    again = fv.render_units(trunk, [1], size=SIZE, steps=2, seed=meta["render_seed"])
    assert np.array_equal(np.asarray(image), np.asarray(fv.to_pil(again[0])))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_render_matches_cpu(trunk):
    import lucent.optvis.transform as lt

    kw = dict(size=SIZE, steps=10, seed=2)
    cpu = fv.render_units(trunk, [1, 4], **kw)
    cuda_state, lucent_device = torch.cuda.get_rng_state(), lt.device
    gpu_trunk = fv.truncated_trunk(tiny_cnn(), "2")
    gpu = fv.render_units(gpu_trunk, [1, 4], device="cuda", **kw)
    assert torch.equal(torch.cuda.get_rng_state(), cuda_state) and lt.device == lucent_device
    assert gpu.device.type == "cpu" and gpu.shape == cpu.shape
    assert (gpu - cpu).abs().mean() < 0.02  # cuDNN/TF32 rounding only


# --- user errors and the fallback's one line (issue 15) --------------------------------------------


def test_missing_checkpoint_is_a_one_line_user_error(tmp_path):
    from pixmix.utils.errors import PixmixError

    missing = tmp_path / "missing.pth"
    with pytest.raises(PixmixError) as info:
        fv.load_model("alexnet", checkpoint=missing)
    assert isinstance(info.value, FileNotFoundError) and str(missing) in str(info.value)
    assert "\n" not in str(info.value)
    plan = fv.plan_units(["alexnet"], limit=1)
    with pytest.raises(fv.CheckpointNotFoundError) as info:  # before anything is rendered
        next(iter(fv.fvis_images(plan=plan, size=SIZE, steps=1, checkpoints={"alexnet": missing})))
    assert info.value.param == "fvis_checkpoints" and str(missing) in str(info.value) and "alexnet" in str(info.value)


def test_checkpoint_for_a_model_not_rendered_is_refused(tmp_path):
    from pixmix.utils.errors import PixmixError

    ckpt = tmp_path / "r50.pth"
    ckpt.write_bytes(b"x")
    with pytest.raises(PixmixError) as info:
        fv.check_checkpoints({"resnet50": ckpt}, ["alexnet"])
    message = str(info.value)
    assert "'resnet50'" in message and str(ckpt) in message and "not being rendered" in message
    assert info.value.param == "fvis_checkpoints" and "\n" not in message
    with pytest.raises(PixmixError, match="'resnet50'.*not being rendered"):
        next(iter(fv.fvis_images(["alexnet"], limit=1, size=SIZE, steps=1, checkpoints={"resnet50": ckpt})))
    with pytest.raises(PixmixError, match="'vgg99'.*not being rendered"):  # with a plan: the known models
        next(iter(fv.fvis_images(plan=fv.plan_units(["alexnet"], limit=1), size=SIZE, steps=1,
                                 checkpoints={"vgg99": ckpt})))
    assert fv.check_checkpoints([("alexnet", str(ckpt))], ["alexnet"]) == {"alexnet": ckpt}


def test_checkpoint_errors_through_the_build_and_the_cli_flag(tmp_path):
    from mixset.build.builder import BuildConfig, build
    from mixset.cli import FLAGS
    from pixmix.cli.errors import translate
    from pixmix.utils.errors import PixmixError

    missing = tmp_path / "missing.pth"
    config = BuildConfig(out=tmp_path / "o", sources=("fvis",), fvis_models=("alexnet",), limit=1, fvis_steps=1,
                         fvis_size=16, fvis_checkpoints=(("alexnet", str(missing)),))
    with pytest.raises(PixmixError) as info:
        build(config, log=lambda _: None, progress=False)
    shown = translate(info.value, FLAGS)
    assert shown.startswith("--fvis-checkpoint") and str(missing) in shown and "\n" not in shown


OFFLINE_RENDER = """
import sys, urllib.error, torch.hub
def offline(*args, **kwargs):
    raise urllib.error.URLError("no network in this test")
torch.hub.download_url_to_file = offline  # torchvision's weights download: as when offline
import mixset.sources.fvis as fv
seen = []
out = list(fv.fvis_images(plan=fv.plan_units(["alexnet"], limit=2), size=16, steps=1, batch=1,
                          on_fallback=lambda model, desc: seen.append(model)))
assert seen == ["alexnet"], seen
print(out[0][1]["weights"])
"""


def test_offline_fallback_prints_nothing_but_its_one_line(tmp_path):
    env = {**__import__("os").environ, "TORCH_HOME": str(tmp_path), "PYTHONWARNINGS": "default"}
    done = subprocess.run([sys.executable, "-c", OFFLINE_RENDER], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("random-init fallback: ") and "no network" in done.stdout, done.stdout
    assert len(done.stdout.splitlines()) == 1, done.stdout  # no "Downloading: ..." line
    assert "Downloading" not in done.stderr and "RuntimeWarning" not in done.stderr, done.stderr
    assert done.stderr.strip() == "", done.stderr


def test_build_offline_says_it_once_per_model(tmp_path, monkeypatch, capfd):
    import torch.hub

    from mixset.build.builder import BuildConfig, build

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    lines: list[str] = []
    config = BuildConfig(out=tmp_path / "o", sources=("fvis",), fvis_models=("alexnet",), limit=2, fvis_steps=1,
                         fvis_size=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build(config, log=lines.append, progress=False)
    out, err = capfd.readouterr()
    assert "Downloading" not in out + err, out + err
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in caught]
    everything = [*lines, *out.splitlines(), *err.splitlines()]
    said = [line for line in everything if "weights" in line and "alexnet" in line.lower()]
    assert len(said) == 1, said
