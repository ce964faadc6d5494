"""Feature visualisations of units of a torch model, many units per batch, in pure torch.

The renderer behind ``mixset build --source fvis`` (:mod:`mixset.sources.fvis` plans units and loads
torchvision models) and behind Iterative PixMix (:mod:`pixmix.train.iterative`, which renders the network
being trained): it lives here, below training, so that ``pixmix`` needs neither ``mixset`` nor Lucent.

Recipe: Lucid's, as Lucent 0.1.8 reproduces it (``render_vis`` with ``param.image(size, fft=True,
decorrelate=True)`` and ``transform.standard_transforms``), ported operation for operation so that the
images are the same bytes as Lucent's transforms give (tests/test_iterative.py compares them with Lucent's
own closures): a Fourier-spectrum parameter with N(0, 0.01) init, scaled by ``1/max(|f|, 1/size)``, inverse
real FFT (``norm="ortho"``) divided by 4, colours decorrelated by Lucid's fixed 3x3 matrix, sigmoid; per
step pad 12 (constant 0.5), jitter 8, scale 0.90..1.10, rotate -10..10 degrees, jitter 4 (kornia 0.4.1's
``translate``/``warp_affine``/``get_rotation_matrix2d`` arithmetic, one random value per transform and
step drawn like Lucent's ``np.random.choice`` but from a private ``RandomState``, shared by the batch),
ImageNet normalisation, bilinear upsampling to 224 px when ``size < 224``; Adam with ``lr`` 0.05.

The model is cut after the target layer (:func:`truncated_trunk`); ``batch`` units of one layer share one
optimisation (objective ``-sum_i mean(activation[i, unit_i])``), run on the ``device`` given, in ``eval()``,
with no ``.grad`` written to the model's parameters. Every image is a pure function of ``(seed, unit, size,
steps, lr, transforms)`` and the weights; the caller's torch and numpy RNG states are left unchanged. See
:mod:`mixset.sources.fvis` for batching independence, in-place ReLUs and the weights' fallback.
Lucent's code (Apache-2.0, The Lucent Authors) and kornia's (Apache-2.0) are the origin of the ported
transforms.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pixmix.utils.errors import PixmixError

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["TRANSFORMS", "derive_seed", "truncated_trunk", "render_units", "to_pil"]

TRANSFORMS = ("lucent", "none")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODEL_INPUT = 224  # Lucent upsamples parameters smaller than this before the model
INIT_SD = 0.01  # Lucent's spectrum init standard deviation
FFT_MAGIC = 4.0  # Lucid/Lucent divide the inverse FFT by this ("reduces saturation")

# Lucid's colour correlation (square root of the ImageNet colour covariance), normalised as Lucent does:
# float32 matrix divided by the largest column norm.
_COLOR_SVD_SQRT = np.asarray([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]]).astype("float32")
COLOR_CORRELATION = _COLOR_SVD_SQRT / np.max(np.linalg.norm(_COLOR_SVD_SQRT, axis=0))

# Lucent's standard_transforms: pad 12 (0.5), jitter 8, these scales, these angles (degrees), jitter 4.
PAD, PAD_VALUE, JITTER_1, JITTER_2 = 12, 0.5, 8, 4
SCALES = [1 + (i - 5) / 50.0 for i in range(11)]
ANGLES = list(range(-10, 11)) + 5 * [0]
_PI = torch.tensor(3.14159265358979323846)  # kornia's float32 pi (deg2rad)


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed that is a stable function of ``(seed, *keys)`` (blake2b; same in every process)."""
    digest = hashlib.blake2b(repr((int(seed), *keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


# --- truncation ------------------------------------------------------------------------------------


class _StopForward(BaseException):  # BaseException: not swallowed by a model's `except Exception`
    def __init__(self, output: Any) -> None:
        super().__init__("forward stopped at the target layer")
        self.output = output


class _Trunk(nn.Module):
    """``model`` run up to and including ``layer``; ``forward`` returns that layer's output tensor."""

    def __init__(self, model: nn.Module, layer: str) -> None:
        super().__init__()
        self.layer = layer
        self._target = (model.get_submodule(layer),)  # a tuple: not registered as a submodule
        self.mode = "fx"
        try:
            from torchvision.models.feature_extraction import create_feature_extractor

            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*nodes obtained by tracing.*")
                self.body = create_feature_extractor(model, return_nodes={layer: "out"})
        except Exception:  # noqa: BLE001 - not symbolically traceable: stop the eager forward instead
            self.mode = "hook"
            self.body = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "fx":
            return self.body(x)["out"]

        def stop(_module: nn.Module, _inputs: Any, output: Any) -> None:
            raise _StopForward(output)

        handle = self._target[0].register_forward_hook(stop)
        try:
            self.body(x)
        except _StopForward as stopped:
            return stopped.output
        finally:
            handle.remove()
        raise RuntimeError(f"layer {self.layer!r} was not called by the model's forward pass")


def truncated_trunk(model: nn.Module, layer: str) -> nn.Module:
    """A module that runs ``model`` only up to and including ``layer`` and returns its output.

    Uses torchvision's FX ``create_feature_extractor`` (the graph is pruned after ``layer``, so later
    modules are not even part of it); for models FX cannot trace, an eager forward that is aborted by
    a temporary forward hook on ``layer`` as soon as it has run. Either way later layers never run,
    including an in-place ReLU right after a conv: the output is the *pre-ReLU* conv output (see the
    module docstring). A module called several times in one forward pass yields its first call.
    Modules and parameters are shared with ``model`` (moving the trunk moves them; the trunk is
    returned in ``eval()``, which puts the shared modules in ``eval()`` too).
    """
    names = {n for n, _ in model.named_modules()}
    if layer not in names or layer == "":
        close = sorted(n for n in names if n and (n.startswith(layer.rsplit(".", 1)[0]) or layer in n))[:10]
        raise PixmixError(f"model has no module {layer!r}; similar: {close}", param="layer")
    return _Trunk(model, layer).eval()


# --- parameterisation and transforms (Lucent's, in pure torch) --------------------------------------


def _freqs(size: int) -> np.ndarray:
    """Lucent's ``rfft2d_freqs(size, size)``: |f| of the real-FFT grid (one extra column for odd sizes)."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[: size // 2 + (2 if size % 2 == 1 else 1)]
    return np.sqrt(fx * fx + fy * fy)


def _spectrum_init(units: Sequence[int], seed: int, size: int) -> torch.Tensor:
    """CPU float32 [B, 3, size, F, 2]: unit ``u``'s N(0, 0.01) spectrum from seed ``(seed, "init", u)``.

    Equal to Lucent's ``fft_image`` init after ``torch.manual_seed(derive_seed(seed, "init", u))``.
    """
    shape = (1, 3, *_freqs(size).shape, 2)
    inits = [
        torch.randn(shape, generator=torch.Generator().manual_seed(derive_seed(seed, "init", int(u)))) * INIT_SD
        for u in units
    ]
    return torch.cat(inits) if inits else torch.zeros((0, *shape[1:]))


class _ImageParam:
    """Lucent's ``param.image(size, fft=True, decorrelate=True)`` as a function of a batched spectrum."""

    def __init__(self, size: int, device: torch.device) -> None:
        self.size = size
        freqs = _freqs(size)
        scale = 1.0 / np.maximum(freqs, 1.0 / size)
        self.scale = torch.tensor(scale).float()[None, None, ..., None].to(device)
        self.color_t = torch.tensor(COLOR_CORRELATION.T).to(device)

    def __call__(self, spectrum: torch.Tensor) -> torch.Tensor:
        spec = torch.view_as_complex(self.scale * spectrum)
        image = torch.fft.irfftn(spec, s=(self.size, self.size), norm="ortho")
        image = image[:, :3, : self.size, : self.size] / FFT_MAGIC
        image = torch.matmul(image.permute(0, 2, 3, 1), self.color_t).permute(0, 3, 1, 2)
        return torch.sigmoid(image)


def _warp_affine(src: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """kornia 0.4.1 ``warp_affine(src, matrix, src size)`` (bilinear, zeros, ``align_corners=False``)."""
    b, c, h, w = src.shape
    m3 = F.pad(matrix, [0, 0, 0, 1], "constant", value=0.0)
    m3[..., -1, -1] += 1.0
    src_norm = _normal_transform_pixel(h, w).to(m3)
    dst_norm = _normal_transform_pixel(h, w).to(m3)
    dst_norm_trans_src_norm = dst_norm @ (m3 @ torch.inverse(src_norm))
    theta = torch.inverse(dst_norm_trans_src_norm)[:, :2, :]
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    return F.grid_sample(src, grid, align_corners=False, mode="bilinear", padding_mode="zeros")


def _normal_transform_pixel(height: int, width: int) -> torch.Tensor:
    matrix = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, -1.0], [0.0, 0.0, 1.0]])
    matrix[0, 0] = matrix[0, 0] * 2.0 / (width - 1.0)
    matrix[1, 1] = matrix[1, 1] * 2.0 / (height - 1.0)
    return matrix.unsqueeze(0)


def _translate(image: torch.Tensor, dx: Any, dy: Any) -> torch.Tensor:
    """kornia ``translate`` by whole pixels, as Lucent's ``jitter`` calls it."""
    translation = torch.tensor([[dx, dy]]).float().to(image.device)
    matrix = torch.eye(3, device=translation.device, dtype=translation.dtype).repeat(1, 1, 1)
    tx, ty = torch.chunk(translation, chunks=2, dim=-1)
    matrix[..., 0, 2:3] += tx
    matrix[..., 1, 2:3] += ty
    return _warp_affine(image, matrix[..., :2, :3].expand(image.shape[0], -1, -1))


def _rotation_matrix(b: int, h: int, w: int, degrees: Any) -> torch.Tensor:
    """kornia 0.4.1 ``get_rotation_matrix2d`` about the image centre, unit scale (CPU float32 [b, 2, 3])."""
    angle = torch.ones(b) * degrees
    center = torch.ones(b, 2)
    center[..., 0] = (w - 1) / 2
    center[..., 1] = (h - 1) / 2
    rad = angle * _PI.type(angle.dtype) / 180.0
    cos_a, sin_a = torch.cos(rad), torch.sin(rad)
    rotation = torch.stack([cos_a, sin_a, -sin_a, cos_a], dim=-1).view(b, 2, 2)
    scaling = torch.zeros((2, 2)).fill_diagonal_(1).repeat(b, 1, 1) * torch.ones(b, 2).unsqueeze(dim=2).repeat(1, 1, 2)
    scaled = rotation @ scaling
    alpha, beta = scaled[:, 0, 0], scaled[:, 0, 1]
    x, y = center[..., 0], center[..., 1]
    one = torch.tensor(1.0)
    matrix = torch.zeros(b, 2, 3)
    matrix[..., 0:2, 0:2] = scaled
    matrix[..., 0, 2] = (one - alpha) * x - beta * y
    matrix[..., 1, 2] = beta * x + (one - alpha) * y
    return matrix


def _random_scale(image: torch.Tensor, scale: float) -> torch.Tensor:
    """Lucent's ``random_scale`` with the drawn ``scale`` (including its [pad_y, pad_x] * 2 padding order)."""
    shape = image.shape[2:]
    scaled = [int(np.ceil(scale * d)) for d in shape]
    pad_x = max(0, int(np.ceil((shape[1] - scaled[1]) / 2)))
    pad_y = max(0, int(np.ceil((shape[0] - scaled[0]) / 2)))
    up = F.interpolate(image, size=scaled, mode="bilinear", align_corners=True)
    return F.pad(up, [pad_y, pad_x] * 2)


class _LucentTransforms:
    """Lucent's ``standard_transforms`` in pure torch, drawing from a private, seeded numpy ``RandomState``.

    Each call draws (in Lucent's order) jitter 8 ``dx, dy``, a scale, an angle, jitter 4 ``dx, dy`` with
    ``RandomState.choice``, the draws Lucent makes from the global numpy RNG; the global RNG is not used.
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        self._rng = np.random.RandomState(seed % 2**32)
        self._device = device

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        rng = self._rng
        x = F.pad(image, [PAD] * 4, mode="constant", value=PAD_VALUE)
        x = _translate(x, rng.choice(JITTER_1), rng.choice(JITTER_1))
        x = _random_scale(x, rng.choice(SCALES))
        b, _, h, w = x.shape
        x = _warp_affine(x.float(), _rotation_matrix(b, h, w, rng.choice(ANGLES)).to(self._device))
        return _translate(x, rng.choice(JITTER_2), rng.choice(JITTER_2))


# --- rendering -------------------------------------------------------------------------------------


def _fork_rng_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _model_input(x: torch.Tensor, size: int) -> torch.Tensor:
    """What the model sees: ImageNet normalisation (Lucent's ``transform.normalize()``, vectorised), then
    bilinear upsampling (``align_corners=True``) to 224 px when the parameter ``size`` is below 224."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    # channels_last: ~30% faster convolutions, pooling and BatchNorm for the trunk on the CPU (oneDNN);
    # the layout only, the values are the same.
    x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
    if size < MODEL_INPUT:
        x = F.interpolate(x, size=(MODEL_INPUT, MODEL_INPUT), mode="bilinear", align_corners=True)
    return x.contiguous(memory_format=torch.channels_last)


def _render_batch(
    trunk: nn.Module,
    units: list[int],
    *,
    size: int,
    steps: int,
    lr: float,
    seed: int,
    device: torch.device,
    transforms: str,
) -> torch.Tensor:
    param = _ImageParam(size, device)
    spectrum = _spectrum_init(units, seed, size).to(device).requires_grad_(True)
    transform = _LucentTransforms(derive_seed(seed, "transforms"), device) if transforms == "lucent" else None
    rows = torch.arange(len(units), device=device)
    cols = torch.tensor(units, device=device)
    optimizer = torch.optim.Adam([spectrum], lr=lr)
    for step in range(steps):
        x = param(spectrum)
        if transform is not None:
            x = transform(x)
        act = trunk(_model_input(x, size))
        if step == 0:
            if not isinstance(act, torch.Tensor) or act.dim() < 2:
                raise ValueError(f"the trunk must return a [B, C, ...] tensor, got {type(act).__name__}")
            bad = [u for u in units if not 0 <= u < act.shape[1]]
            if bad:
                raise PixmixError(f"units {bad} out of range for a layer with {act.shape[1]} channels", param="units")
        picked = act[rows, cols]  # [B, ...]: slice i's own unit
        loss = -picked.reshape(len(units), -1).mean(dim=1).sum()
        (grad,) = torch.autograd.grad(loss, [spectrum])  # no .grad on the model's parameters
        spectrum.grad = grad
        optimizer.step()
    with torch.no_grad():
        return param(spectrum).float().cpu()


def render_units(
    trunk: nn.Module,
    units: Sequence[int],
    *,
    size: int = 128,
    steps: int = 512,
    lr: float = 0.05,
    seed: int = 0,
    device: str | torch.device = "cpu",
    batch: int = 64,
    transforms: Literal["lucent", "none"] = "lucent",
) -> torch.Tensor:
    """Feature visualisations of channels ``units`` of ``trunk``'s output: float [N, 3, size, size] in [0, 1].

    ``trunk`` maps an ImageNet-normalised [B, 3, H, W] batch to the target layer's activations
    [B, C, ...] (see :func:`truncated_trunk`); it is moved to ``device`` and run in ``eval()`` (the
    modules' previous train/eval flags are restored afterwards). Units are rendered ``batch`` at a time,
    one Lucent image parameter each, ``steps`` Adam steps on ``-sum_i mean(activation[i, unit_i])``
    (see the module docstring for the recipe). ``transforms="none"`` skips Lucent's random transforms.

    Image ``i`` is a function of ``(seed, units[i], size, steps, lr, transforms)`` and the trunk only:
    it does not depend on the other units or on ``batch`` (up to float rounding). The global torch and
    numpy RNG states are left unchanged. The result is on the CPU.
    """
    if transforms not in TRANSFORMS:
        raise PixmixError(f"transforms must be one of {TRANSFORMS}, got {transforms!r}", param="transforms")
    if size < 8:
        raise PixmixError(f"size must be >= 8, got {size}", param="size")
    if steps < 0 or batch < 1 or not (lr > 0 and math.isfinite(lr)):
        raise PixmixError(f"need steps >= 0, batch >= 1 and a finite lr > 0 (got {steps}, {batch}, {lr})")
    units = [int(u) for u in units]
    if not units:
        return torch.zeros((0, 3, size, size))
    device = torch.device(device)
    flags = {m: m.training for m in trunk.modules()}
    trunk.to(device).eval()
    out = []
    try:
        forked = _fork_rng_devices(device)
        with torch.random.fork_rng(devices=forked):
            # Nothing below should draw from the global torch RNG; if anything does, it is seeded.
            # Seed only the generators forked here (torch.manual_seed would reseed every GPU).
            torch.default_generator.manual_seed(derive_seed(seed, "global"))
            for index in forked:
                with torch.cuda.device(index):
                    torch.cuda.manual_seed(derive_seed(seed, "global"))
            for start in range(0, len(units), batch):
                chunk = units[start : start + batch]
                out.append(_render_batch(trunk, chunk, size=size, steps=steps, lr=lr, seed=seed, device=device,
                                         transforms=transforms))
    finally:
        for module, training in flags.items():
            module.training = training
    return torch.cat(out)


def to_pil(image: torch.Tensor) -> Image.Image:
    """A float [3, H, W] image in [0, 1] as an 8-bit PIL RGB image (rounded)."""
    from PIL import Image

    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")
