"""Feature visualisations (the paper's "FVis") of units in early CNN layers, many units per batch.

PixMix's second family of mixing pictures are feature visualisations of units in the initial layers
of several CNNs (docs/mixing-sources.md, "Feature visualizations"). This module renders them with
Lucid's recipe as Lucent reproduces it, but with its own optimisation loop so that it is fast. The
renderer itself (parameterisation, Lucent's transforms ported to pure torch, truncation, the batched
loop, :func:`to_pil`) lives in :mod:`pixmix.models.fvis_render` (Iterative PixMix renders the network
being trained with it) and is re-exported here; this module plans units, loads torchvision models and
checkpoints, and keeps Lucent for the side-by-side check of the port (:class:`_LucentReferenceTransforms`):

- the model is cut after the target layer (:func:`truncated_trunk`): later layers never run;
- ``batch`` units of one layer share one optimisation: one image parameter per unit, one forward and
  backward pass per step for all of them, objective ``-sum_i mean(activation[i, unit_i])``;
- it runs on the ``device`` it is given (Lucent hard-codes ``cuda:0``), removes nothing from and adds
  nothing to the model (Lucent leaves a forward hook on every module per call), and lets errors
  propagate (Lucent swallows RuntimeErrors in the forward pass).

Recipe (identical to ``lucent.optvis.render.render_vis`` with ``param.image(size, fft=True,
decorrelate=True)`` and ``transform.standard_transforms``): a Fourier-spectrum parameter with N(0, 0.01)
init, scaled by ``1/max(|f|, 1/size)``, inverse real FFT (``norm="ortho"``) divided by 4, colours
decorrelated by Lucent's fixed 3x3 matrix, sigmoid; per step Lucent's own transform closures (pad 12
constant 0.5, jitter 8, scale 0.90..1.10, rotate -10..10 degrees, jitter 4: one random value per
transform and step, shared by the whole batch), ImageNet normalisation, bilinear upsampling to 224 px
when ``size < 224``; Adam with ``lr`` 0.05; Lucid's default of 512 steps (Microscope used 4096).

Plan and rendering are separate: :func:`plan_units` lists ``(LayerSpec, channel)`` pairs,
:func:`load_model` + :func:`truncated_trunk` + :func:`render_units` render them, :func:`fvis_images`
chains the four and yields PIL images with metadata.

Seeding and RNG isolation
    Everything is a pure function of the seed. Unit ``u``'s initial spectrum is drawn from a CPU
    ``torch.Generator`` seeded with ``derive_seed(seed, "init", u)``; the values equal what Lucent's
    ``param.image`` draws from the global RNG after ``torch.manual_seed(derive_seed(seed, "init", u))``.
    Lucent's transforms draw from the *global numpy* RNG (``np.random.choice``); the pure-torch port makes
    the same draws from a private ``RandomState`` seeded with ``derive_seed(seed, "transforms")`` and never
    touches the global one. The loop also runs inside ``torch.random.fork_rng`` (the CPU
    generator and the CUDA device in use) with those generators seeded from ``derive_seed(seed,
    "global")`` (not ``torch.manual_seed``, which would also reseed every other GPU), so anything that
    did draw from the global torch RNG would be seeded too; neither the caller's torch nor numpy RNG
    state changes. Not thread-safe: two renders in threads of one process would share the forked
    global torch RNG.

Batching independence
    The transform stream depends on ``seed`` only (not on which units share the batch), the spectrum
    init of a unit on ``(seed, unit)`` only, the model runs in ``eval()`` (no BatchNorm coupling) and
    Adam is element-wise; so a unit's image does not depend on the other units in its batch, nor on
    ``batch``: every slice's gradient depends on its own unit only (cross-gradients are exactly zero,
    tests/test_fvis.py checks it). On the development CPU a unit rendered alone, in a batch, or with
    ``batch=1`` gives bit-identical images (a tiny CNN and ResNet-50 ``layer1.0.conv1``); other CPUs
    may block a batch of 1 and a batch of N differently in their convolution kernels, so only equality
    up to float32 rounding is promised (the tests allow 1e-5). On CUDA, cuDNN's backward kernels are
    not deterministic and TF32 may be used, so the same seed reproduces images only up to rounding.
    Consequence of the shared transform stream: all units rendered with one ``seed`` see the same
    sequence of jitters, scales and rotations (as the units of one Lucid batch do);
    :func:`fvis_images` derives a different seed per layer.

In-place ReLUs
    The trunk's output is the target module's output *before* anything later runs, so truncation
    drops the in-place ReLU that follows each conv in AlexNet/VGG ``features``. Lucent's hook on such a
    conv keeps the very tensor that the ReLU then overwrites, so Lucent optimises post-ReLU values
    there; so do we by default (``activation="post-relu"``: the trunk stops after the ReLU named in
    :class:`LayerSpec`). ``activation="pre-relu"`` optimises the raw conv channel instead (gradients
    everywhere, which helps units that start inactive). ResNet convs are followed by a (not in-place)
    BatchNorm, so both see the raw conv; GoogLeNet's ``BasicConv2d`` blocks and inception blocks output
    post-ReLU values. Every image's metadata records the ``activation``.

Weights and the random-init fallback
    :func:`load_model` loads torchvision's DEFAULT ImageNet weights (from the torch hub cache, or
    downloaded when the network allows) or a local ``state_dict`` checkpoint. When neither can be had
    it **warns** (``warnings.warn``, a ``RuntimeWarning``) and falls back to the architecture with a
    *seeded random initialisation*: torchvision's own initialiser run inside ``torch.random.fork_rng``
    with the CPU generator seeded from ``derive_seed(0, "random-init", name)`` (the CPU half of
    ``torch.manual_seed``), so the same name always gives the same weights and the caller's RNG is
    untouched. The description then starts with ``"random-init fallback: "`` and :func:`fvis_images`
    copies it into every image's metadata; :func:`fvis_images` does not repeat the warning (it calls its
    ``on_fallback`` once per model instead) and torch's download line is never shown, so ``mixset build``
    says it in one line per model. Units of an untrained network have no learned features:
    such images are for plumbing and timing, not for a mixing set. Every model construction (also
    before loading pretrained weights or a checkpoint) runs inside such a fork.

Lucent (``torch-lucent`` 0.1.8, which pins ``kornia==0.4.1`` and imports IPython) is imported only
inside the functions that need it (the reference transforms; rendering never imports it):
``import mixset.sources.fvis`` stays cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from pixmix.models.fvis_render import (  # noqa: F401 - the renderer, re-exported (mixset's API before the move)
    FFT_MAGIC,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INIT_SD,
    MODEL_INPUT,
    TRANSFORMS,
    _freqs,
    _ImageParam,
    _LucentTransforms,
    _model_input,
    _render_batch,
    _spectrum_init,
    _StopForward,
    _Trunk,
    derive_seed,
    render_units,
    to_pil,
    truncated_trunk,
)
from pixmix.utils.errors import PixmixError

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "LayerSpec",
    "ACTIVATIONS",
    "DEFAULT_LAYERS",
    "TRANSFORMS",
    "plan_units",
    "load_model",
    "truncated_trunk",
    "render_units",
    "to_pil",
    "fvis_images",
    "derive_seed",
    "check_checkpoints",
    "CheckpointNotFoundError",
]



ACTIVATIONS = ("post-relu", "pre-relu")


@dataclass(frozen=True)
class LayerSpec:
    """One layer to visualise: torchvision model name, module name in ``named_modules()``, channels.

    ``relu`` names the in-place ReLU that follows the layer (AlexNet/VGG convs), if any. With
    ``activation = "post-relu"`` (Lucent's default: its hook on the conv keeps the very tensor that the
    in-place ReLU overwrites) the optimised module is that ReLU; ``"pre-relu"`` optimises the raw conv.
    """

    model: str
    layer: str
    channels: int
    relu: str = ""
    activation: str = "post-relu"

    @property
    def target(self) -> str:
        """The module whose output is optimised."""
        return self.relu if self.relu and self.activation == "post-relu" else self.layer


def _layers(model: str, *entries: tuple[str, int] | tuple[str, int, str]) -> list[LayerSpec]:
    return [LayerSpec(model, *entry) for entry in entries]


def _conv_relu(convs: Sequence[tuple[int, int]]) -> list[tuple[str, int, str]]:
    """``features.i`` convs of AlexNet/VGG, each followed by its in-place ReLU ``features.i+1``."""
    return [(f"features.{i}", channels, f"features.{i + 1}") for i, channels in convs]


# Early layers of torchvision's ImageNet CNNs: 4,768 units, near the ~4,700 FVis of the paper's set
# (spec section 5). Names and channel counts checked by tests/test_fvis.py on the meta device.
DEFAULT_LAYERS: dict[str, list[LayerSpec]] = {
    # AlexNet conv1 (11x11/4), conv2 (5x5), conv3 (3x3): 640 units.
    "alexnet": _layers("alexnet", *_conv_relu([(0, 64), (3, 192), (6, 384)])),
    # VGG-16 conv1_1, conv1_2, conv2_1, conv2_2, conv3_1..conv3_3, conv4_1: 1,664 units.
    "vgg16": _layers("vgg16", *_conv_relu([(0, 64), (2, 64), (5, 128), (7, 128), (10, 256), (12, 256), (14, 256),
                                           (17, 512)])),
    # ResNet-50: stem conv1, the first bottleneck's 1x1 and 3x3 convs, the first two bottlenecks' outputs
    # and layer1's: 960 units.
    "resnet50": _layers(
        "resnet50",
        ("conv1", 64),
        ("layer1.0.conv1", 64),
        ("layer1.0.conv2", 64),
        ("layer1.0", 256),
        ("layer1.1", 256),
        ("layer1", 256),
    ),
    # GoogLeNet (InceptionV1): BasicConv2d conv2 (1x1) and conv3 (3x3, both post-ReLU inside the block),
    # inception blocks 3a, 3b and 4a: 1,504 units.
    "googlenet": _layers("googlenet", ("conv2", 64), ("conv3", 192), ("inception3a", 256), ("inception3b", 480),
                         ("inception4a", 512)),
}

# Final classifier of each known architecture (used to infer num_classes from a checkpoint).
_HEADS = {
    "alexnet": "classifier.6",
    "vgg16": "classifier.6",
    "vgg19": "classifier.6",
    "resnet50": "fc",
    "googlenet": "fc",
}


# --- plan ------------------------------------------------------------------------------------------


def plan_units(models: Sequence[str] | None = None, limit: int | None = None,
               activation: str = "post-relu") -> list[tuple[LayerSpec, int]]:
    """Every ``(layer, channel)`` of :data:`DEFAULT_LAYERS` for ``models`` (all when ``None``).

    Deterministic order: models in the order given (``DEFAULT_LAYERS`` order when ``None``), layers
    in ``DEFAULT_LAYERS`` order, channels ascending. ``limit`` keeps the first ``limit`` entries.
    ``activation``: ``post-relu`` (Lucent's default) or ``pre-relu`` for the convs followed by an
    in-place ReLU (see :class:`LayerSpec`).
    """
    names = list(DEFAULT_LAYERS) if models is None else list(models)
    unknown = [m for m in names if m not in DEFAULT_LAYERS]
    if unknown:
        raise PixmixError(f"no default layers for model(s) {unknown}; known: {sorted(DEFAULT_LAYERS)}", param="models")
    if activation not in ACTIVATIONS:
        raise PixmixError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}",
                          param="activation")
    if limit is not None and limit < 0:
        raise PixmixError(f"limit must be >= 0, got {limit}", param="limit")
    specs = [replace(spec, activation=activation) for m in names for spec in DEFAULT_LAYERS[m]]
    plan = [(spec, c) for spec in specs for c in range(spec.channels)]
    return plan if limit is None else plan[:limit]


# --- models ----------------------------------------------------------------------------------------


def _build(name: str, num_classes: int | None = None, aux_logits: bool | None = None) -> nn.Module:
    from torchvision.models import get_model

    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if name == "googlenet":
        # init_weights=True: torchvision's documented default (silences its FutureWarning).
        kwargs.update(init_weights=True, aux_logits=bool(aux_logits))
    with torch.random.fork_rng(devices=[]):  # the initialisation must not consume the caller's RNG
        torch.default_generator.manual_seed(derive_seed(0, "random-init", name))  # CPU only
        return get_model(name, weights=None, **kwargs)


def _random_init(name: str) -> nn.Module:
    return _build(name)


def _unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError("not a state_dict (a mapping of names to tensors)")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


class CheckpointNotFoundError(PixmixError, FileNotFoundError):
    """A checkpoint file that does not exist: a one-line user error (and, as before, a FileNotFoundError)."""


def check_checkpoints(checkpoints: Mapping[str, Path | str] | Sequence[tuple[str, Path | str]],
                      models: Sequence[str] | None = None) -> dict[str, Path]:
    """``{model: path}`` after checking every entry; the build's ``--fvis-checkpoint MODEL=PATH`` values.

    A model that is not rendered (not in ``models``; when ``models`` is None, not in :data:`DEFAULT_LAYERS`)
    or a path that is not a file is a one-line :class:`PixmixError` naming the model and the file, with
    ``param="fvis_checkpoints"`` (the build's option, shown as ``--fvis-checkpoint``); a missing file is a
    :class:`CheckpointNotFoundError`.
    """
    pairs = list(checkpoints.items()) if isinstance(checkpoints, Mapping) else list(checkpoints)
    rendered = list(DEFAULT_LAYERS) if models is None else list(models)
    for model, path in pairs:
        if model not in rendered:
            raise PixmixError(f"checkpoint {model}={path} names model {model!r}, which is not being rendered "
                              f"(models: {rendered}); fix the model name or add it to the models",
                              param="fvis_checkpoints")
        if not Path(path).is_file():
            raise CheckpointNotFoundError(f"checkpoint {model}={path}: file {path} does not exist; check the path",
                                          param="fvis_checkpoints")
    return {model: Path(path) for model, path in pairs}


def _load_checkpoint(name: str, path: Path) -> tuple[nn.Module, str]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint {path} for {name} does not exist; check the path",
                                      param="checkpoint")
    try:
        state = _unwrap_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        head = _HEADS.get(name)
        num_classes = int(state[f"{head}.weight"].shape[0]) if head and f"{head}.weight" in state else None
        aux = any(k.startswith("aux1.") for k in state) if name == "googlenet" else None
        model = _build(name, num_classes=num_classes, aux_logits=aux)
        model.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001 - any failure becomes one line naming the file
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise PixmixError(f"cannot load {name} checkpoint {path}: {type(exc).__name__}: {reason}") from None
    if name == "googlenet":
        model.aux1 = model.aux2 = None  # type: ignore[assignment]  # as torchvision does for pretrained
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return model, f"checkpoint {path} (sha256 {digest})"


def load_model(name: str, weights: str = "default", checkpoint: Path | None = None) -> tuple[nn.Module, str]:
    """A torchvision classification model in ``eval()`` on the CPU, and a description of its weights.

    - ``checkpoint``: a local ``state_dict`` (optionally wrapped in ``{"state_dict": ...}`` or saved
      from DDP), loaded with ``torch.load(weights_only=True)``; ``num_classes`` is taken from it for the
      known architectures. Any failure raises a one-line :class:`~pixmix.utils.errors.PixmixError` naming
      the file (a missing file: :class:`CheckpointNotFoundError`, also a ``FileNotFoundError``). ``weights`` is
      ignored.
    - ``weights="default"``: torchvision's DEFAULT weight enum (from the torch hub cache, downloaded
      when the network allows); another string names an enum member (e.g. ``"IMAGENET1K_V1"``);
      ``"random"`` asks for the seeded random initialisation without a warning.
    - When the pretrained weights cannot be had (no network, no cache): ``warnings.warn`` and the
      documented fallback, the architecture with a seeded random initialisation; the description is
      ``"random-init fallback: <reason>"``. torch's own download line and progress bar (stdout, stderr) are not
      shown: the outcome is the description (and the warning).
    """
    if checkpoint is not None:
        model, desc = _load_checkpoint(name, Path(checkpoint))
        return model.eval(), desc
    if weights == "random":
        return _random_init(name).eval(), f"random-init (requested; seed derive_seed(0, 'random-init', {name!r}))"
    from torchvision.models import get_model, get_model_weights

    enum = get_model_weights(name)  # raises ValueError for an unknown model name
    key = "DEFAULT" if weights == "default" else weights
    try:
        member = enum[key]
    except KeyError:
        known = ["default", *enum.__members__]
        raise PixmixError(f"unknown weights {weights!r} for {name}; known: {known}", param="weights") from None
    try:
        # builds (random-inits) the model before loading; torch.hub's "Downloading: ..." line (stdout) and
        # progress bar (stderr) are kept off the terminal (a failure is reported once, below)
        with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            model = get_model(name, weights=member)
    except Exception as exc:  # noqa: BLE001 - URLError, OSError, hash mismatch, corrupt cache...
        reason = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
        reason = f"torchvision {enum.__name__}.{member.name} unavailable ({reason})"
        warnings.warn(
            f"FVIS WARNING: pretrained weights for {name} unavailable; using a seeded RANDOM initialisation "
            f"instead: visualisations will NOT be those of a trained network. {reason}",
            RuntimeWarning,
            stacklevel=2,
        )
        return _random_init(name).eval(), f"random-init fallback: {reason}"
    return model.eval(), f"torchvision {enum.__name__}.{member.name}"


# --- Lucent, for the side-by-side check of the pure-torch port ------------------------------------


def _lucent() -> Any:
    """Import Lucent's optvis modules (and so kornia and IPython) on first use only."""
    with warnings.catch_warnings():
        # kornia 0.4.1 calls torch.jit.script at import time, which current torch deprecates.
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        import lucent.optvis.param.color
        import lucent.optvis.param.spatial
        import lucent.optvis.transform
    return lucent.optvis


class _LucentReferenceTransforms:
    """Lucent's own ``standard_transforms`` closures with a private, seeded numpy RNG (the side-by-side check).

    The renderer uses the pure-torch port :class:`pixmix.models.fvis_render._LucentTransforms`; tests compare
    the two bit for bit.

    Lucent's transforms call ``np.random.choice`` (global numpy RNG) and move tensors to the module
    global ``lucent.optvis.transform.device`` (``cuda:0`` whenever CUDA exists). Each call swaps in
    this object's ``RandomState`` and the render device, runs Lucent's closures, and swaps the caller's
    numpy state and Lucent's device back, so neither is changed by a render.
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        lt = _lucent().transform
        self._lt = lt
        self._compose = lt.compose(list(lt.standard_transforms))
        self._state = np.random.RandomState(seed % 2**32).get_state()
        self._device = device

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        saved_state, saved_device = np.random.get_state(), self._lt.device
        np.random.set_state(self._state)
        self._lt.device = self._device
        try:
            return self._compose(image)
        finally:
            self._state = np.random.get_state()
            np.random.set_state(saved_state)
            self._lt.device = saved_device


def _load_reporting(name: str, weights: str, checkpoint: Path | None,
                    on_fallback: Callable[[str, str], None] | None) -> tuple[nn.Module, str]:
    """:func:`load_model` without its fallback warning; ``on_fallback(name, description)`` instead."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="FVIS WARNING: pretrained weights", category=RuntimeWarning)
        model, desc = load_model(name, weights=weights, checkpoint=checkpoint)
    if on_fallback is not None and desc.startswith("random-init fallback"):
        on_fallback(name, desc)
    return model, desc


def fvis_images(
    models: Sequence[str] | None = None,
    *,
    plan: Sequence[tuple[LayerSpec, int]] | None = None,
    limit: int | None = None,
    size: int = 128,
    steps: int = 512,
    lr: float = 0.05,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch: int = 64,
    weights: str = "default",
    checkpoints: Mapping[str, Path] | None = None,
    transforms: Literal["lucent", "none"] = "lucent",
    on_fallback: Callable[[str, str], None] | None = None,
) -> Iterator[tuple[Image.Image, dict[str, Any]]]:
    """Plan -> load -> truncate -> render: yields ``(PIL RGB image, metadata)`` in plan order.

    ``plan`` defaults to ``plan_units(models, limit)``. Consecutive entries of one model share one
    load (``checkpoints[model]`` when given, else ``weights``), consecutive entries of one layer one
    trunk, rendered ``batch`` channels at a time with ``render_seed = derive_seed(seed, model, layer)`` so
    layers do not share initialisations. Metadata: ``model, layer, channel, weights`` (the description from
    :func:`load_model`, e.g. ``"random-init fallback: ..."``), ``steps, size, seed, render_seed, lr,
    transforms, activation, module``; ``render_units(truncated_trunk(model, module), [channel], seed=render_seed,
    ...)`` reproduces the image.

    ``checkpoints`` are checked first (:func:`check_checkpoints`: against ``models``, with a ``plan`` the
    known ones). A random-weights fallback is in every image's ``weights`` and calls ``on_fallback(model, desc)``
    once per model, without :func:`load_model`'s ``RuntimeWarning`` (``mixset build`` logs one line).
    """
    entries = list(plan_units(models, limit) if plan is None else plan)
    checkpoints = check_checkpoints(checkpoints or {}, models if plan is None else None)
    for model_name, model_entries in groupby(entries, key=lambda entry: entry[0].model):
        model, desc = _load_reporting(model_name, weights, checkpoints.get(model_name), on_fallback)
        for spec, layer_entries in groupby(model_entries, key=lambda entry: entry[0]):
            channels = [channel for _, channel in layer_entries]
            trunk = truncated_trunk(model, spec.target)
            render_seed = derive_seed(seed, spec.model, spec.layer)
            for start in range(0, len(channels), batch):
                chunk = channels[start : start + batch]
                images = render_units(
                    trunk, chunk, size=size, steps=steps, lr=lr, seed=render_seed, device=device, batch=batch,
                    transforms=transforms,
                )
                for channel, image in zip(chunk, images):
                    meta = {"model": spec.model, "layer": spec.layer, "channel": channel, "weights": desc,
                            "steps": steps, "size": size, "seed": seed, "render_seed": render_seed, "lr": lr,
                            "transforms": transforms,
                            "activation": spec.activation if spec.relu else "as the layer outputs",
                            "module": spec.target}  # the module whose output was optimised
                    yield to_pil(image), meta
            del trunk
        del model  # free it before the next model is loaded
