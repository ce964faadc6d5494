"""The base operations as batched torch kernels with per-sample magnitudes.

Each kernel maps uint8 images ``[n, 3, H, W]`` (CPU or CUDA) and per-sample parameters ``[n]`` to
uint8 images, reproducing Pillow's arithmetic (its rounding and edge rules) so the batched path has the
per-image path's distribution, not merely a look-alike.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from pixmix.augment import ops as O
from pixmix.utils.errors import PixmixError

Tensor = torch.Tensor

# Pillow's RGB -> L weights (fixed point, 16 fractional bits, rounded).
_L_WEIGHTS = (19595, 38470, 7471)


def to_device(values: Tensor, device: torch.device) -> Tensor:
    """Move a small CPU tensor to ``device``; to a GPU through pinned memory, without a stream sync.

    A plain ``.to("cuda")`` from pageable memory waits for every queued kernel first, which would
    serialise the host's planning with the GPU's work.
    """
    if values.device == device:
        return values
    if device.type == "cuda" and values.device.type == "cpu":
        return values.pin_memory().to(device, non_blocking=True)
    return values.to(device)


def _per_sample(values: Tensor, ndim: int = 4) -> Tensor:
    return values.reshape(-1, *([1] * (ndim - 1)))


def _to_u8(values: Tensor) -> Tensor:
    """Truncate float values to uint8 after clamping to [0, 255] (truncation = floor there).

    Going through int16 is several times faster than torch's direct float -> uint8 cast on the CPU.
    """
    return values.clamp_(0, 255).to(torch.int16).to(torch.uint8)


def _channel_lut(images: Tensor, lut: Tensor) -> Tensor:
    """Apply a per-(sample, channel) 256-entry uint8 table ``lut [n, 3, 256]``."""
    n, c, h, w = images.shape
    if images.is_cuda:
        return lut.gather(2, images.reshape(n, c, h * w).long()).reshape(n, c, h, w)
    # On the CPU, numpy's take indexes with the uint8 values directly: over twice as fast as a gather
    # that first widens every index to int64.
    src, table = images.contiguous().numpy(), lut.contiguous().numpy()
    out = np.empty_like(src)
    for i in range(n):
        for j in range(c):
            np.take(table[i, j], src[i, j], out=out[i, j])
    return torch.from_numpy(out)


def _histogram(images: Tensor) -> Tensor:
    """Per-(sample, channel) 256-bin histograms, ``[n, 3, 256]`` int64."""
    n, c, h, w = images.shape
    if images.is_cuda:
        offsets = torch.arange(n * c, device=images.device).mul_(256).view(n, c, 1)
        flat = (images.reshape(n, c, h * w).long() + offsets).reshape(-1)
        return torch.bincount(flat, minlength=n * c * 256).view(n, c, 256)
    channels = images.reshape(n * c, h * w)
    return torch.stack([torch.bincount(ch, minlength=256) for ch in channels]).view(n, c, 256)


def autocontrast(images: Tensor) -> Tensor:
    """ImageOps.autocontrast (cutoff 0): stretch each channel's [min, max] to [0, 255]."""
    lo = images.amin(dim=(2, 3), keepdim=True).double().squeeze(-1)  # [n, 3, 1]
    hi = images.amax(dim=(2, 3), keepdim=True).double().squeeze(-1)
    span = hi - lo
    flat = span <= 0
    # A true division: torch evaluates ``255.0 / tensor`` as ``255 * (1/tensor)``, which is off by an
    # ulp and flips Pillow's int() truncation on exact results.
    scale = torch.full_like(span, 255.0) / torch.where(flat, torch.ones_like(span), span)
    offset = -lo * scale
    ramp = torch.arange(256, device=images.device, dtype=torch.float64).view(1, 1, 256)
    # Pillow builds the table in double precision and truncates with int().
    lut = (ramp * scale + offset).trunc().clamp(0, 255)
    lut = torch.where(flat, ramp.expand_as(lut), lut).to(torch.uint8)  # 768 entries: where is cheap here
    return _channel_lut(images, lut)


def equalize(images: Tensor) -> Tensor:
    """ImageOps.equalize: Pillow's integer cumulative-histogram table per channel."""
    hist = _histogram(images)
    nonzero = hist > 0
    # Count of the last (highest) non-empty bin: Pillow leaves it out of the step.
    last_index = (torch.arange(256, device=images.device) * nonzero).argmax(dim=2, keepdim=True)
    last_count = hist.gather(2, last_index)
    step = (hist.sum(dim=2, keepdim=True) - last_count) // 255
    identity = (nonzero.sum(dim=2, keepdim=True) <= 1) | (step == 0)
    safe_step = torch.where(identity, torch.ones_like(step), step)
    # lut[i] = (step // 2 + sum(hist[:i])) // step
    before = torch.cumsum(hist, dim=2) - hist
    lut = (safe_step // 2 + before) // safe_step
    ramp = torch.arange(256, device=images.device).view(1, 1, 256).expand_as(lut)
    lut = torch.where(identity, ramp, lut).clamp_(0, 255).to(torch.uint8)
    return _channel_lut(images, lut)


def posterize(images: Tensor, bits: Tensor) -> Tensor:
    """ImageOps.posterize: keep the top ``bits`` bits of every channel."""
    mask = (255 - ((1 << (8 - bits)) - 1)).to(torch.uint8)
    return images & _per_sample(mask)


def solarize(images: Tensor, threshold: Tensor) -> Tensor:
    """ImageOps.solarize: invert every value at or above ``threshold`` (0..256)."""
    ramp = torch.arange(256, device=images.device)
    lut = torch.where(ramp.view(1, 256) < to_device(threshold, images.device).view(-1, 1), ramp, 255 - ramp)
    return _channel_lut(images, lut.to(torch.uint8).unsqueeze(1).expand(-1, images.shape[1], -1))


def affine(images: Tensor, matrix: Tensor) -> Tensor:
    """Image.transform(AFFINE, BILINEAR) with per-sample matrices ``[n, 6]`` (PIL's inverse map).

    Output pixel centre ``(x+.5, y+.5)`` samples the input at ``M @ (x+.5, y+.5, 1)``. Points outside
    the input become black; inside, bilinear with clamped neighbours, truncated to uint8. Written out
    in float64 with Pillow's own expressions (``a + (b - a) * d``) so the result is bit-identical
    (grid_sample's float32 grid and weights put ~0.1% of pixels one level off). Serves CUDA tensors;
    on the CPU :func:`rotate` calls Pillow.
    """
    n, c, h, w = images.shape
    dev, f64 = images.device, torch.float64
    m = to_device(matrix.to(f64), dev).view(n, 6, 1, 1)
    ys = (torch.arange(h, device=dev, dtype=f64) + 0.5).view(1, h, 1)
    xs = (torch.arange(w, device=dev, dtype=f64) + 0.5).view(1, 1, w)
    src_x = (m[:, 0] * xs + m[:, 1] * ys + m[:, 2]).view(n, h * w)
    src_y = (m[:, 3] * xs + m[:, 4] * ys + m[:, 5]).view(n, h * w)
    inside = (src_x >= 0) & (src_x < w) & (src_y >= 0) & (src_y < h)
    fx, fy = src_x.sub_(0.5), src_y.sub_(0.5)
    x0, y0 = fx.floor(), fy.floor()
    dx, dy = (fx - x0).unsqueeze(1), (fy - y0).unsqueeze(1)
    left, right = x0.clamp(0, w - 1).long(), (x0 + 1).clamp_(0, w - 1).long()
    top, bottom = y0.clamp(0, h - 1).long().mul_(w), (y0 + 1).clamp_(0, h - 1).long().mul_(w)
    flat = images.reshape(n, c, h * w)

    def corner(row: Tensor, col: Tensor) -> Tensor:
        return flat.gather(2, (row + col).unsqueeze(1).expand(n, c, h * w)).to(f64)

    upper = corner(top, left)
    upper.add_((corner(top, right) - upper).mul_(dx))
    lower = corner(bottom, left)
    lower.add_((corner(bottom, right) - lower).mul_(dx))
    upper.add_((lower - upper).mul_(dy)).mul_(inside.unsqueeze(1))
    return upper.to(torch.int16).to(torch.uint8).view(n, c, h, w)


def rotate(images: Tensor, degrees: Tensor) -> Tensor:
    """Image.rotate(degrees, BILINEAR) about the centre, per image; 0 degrees is an exact copy.

    On the CPU this calls Pillow itself, image by image: its C loop is about twice as fast as the
    exact float64 torch version (:func:`affine`), which serves CUDA tensors.
    """
    if not bool(degrees.any()):
        return images.clone()
    if not images.is_cuda:
        pixels = images.permute(0, 2, 3, 1).contiguous().numpy()
        turned = np.stack([
            np.asarray(Image.fromarray(pixels[i]).rotate(float(d), resample=Image.Resampling.BILINEAR))
            for i, d in enumerate(degrees.tolist())
        ])
        return torch.from_numpy(turned).permute(0, 3, 1, 2).contiguous()
    n, _, h, w = images.shape
    out = affine(images, rotation_matrix(degrees, w, h))
    still = (degrees == 0).nonzero().squeeze(1)
    if still.numel():
        index = to_device(still, images.device)
        out[index] = images[index]
    return out


def shear(images: Tensor, factor: Tensor, axis: str) -> Tensor:
    """Image.transform(AFFINE, BILINEAR) with a pure shear, bit-exact with Pillow.

    ``shear_x`` samples ``in[y, x + f*(y+.5)]``: Pillow's vertical weight is then exactly 0, so the
    bilinear filter reduces to a horizontal lerp (``shear_y`` likewise, vertically). Evaluated in
    float64 with Pillow's own expressions, instead of grid_sample's float32 grid.
    """
    n, c, h, w = images.shape
    dev, f64 = images.device, torch.float64
    f = to_device(factor.to(f64), dev).view(n, 1, 1)
    ys = (torch.arange(h, device=dev, dtype=f64) + 0.5).view(1, h, 1)
    xs = (torch.arange(w, device=dev, dtype=f64) + 0.5).view(1, 1, w)
    if axis == "x":  # x_in = 1*(x+.5) + f*(y+.5) + 0
        src, length, dim = xs + f * ys, w, 3
    else:  # y_in = f*(x+.5) + 1*(y+.5) + 0
        src, length, dim = f * xs + ys, h, 2
    inside = (src >= 0) & (src < length)
    pos = src - 0.5
    lo = pos.floor()
    frac = (pos - lo).unsqueeze(1)
    first = lo.clamp(0, length - 1).long().unsqueeze(1).expand(n, c, h, w)
    second = (lo + 1).clamp_(0, length - 1).long().unsqueeze(1).expand(n, c, h, w)
    a = images.gather(dim, first).to(f64)
    out = (images.gather(dim, second).to(f64) - a).mul_(frac).add_(a)
    return out.mul_(inside.unsqueeze(1)).to(torch.int16).to(torch.uint8)


def shift(images: Tensor, dx: Tensor, dy: Tensor) -> Tensor:
    """Integer translation: ``out[y, x] = in[y + dy, x + dx]``, black where that is outside."""
    n, c, h, w = images.shape
    dev = images.device
    if not images.is_cuda:
        # A few slice copies per image beat two int64-indexed gathers on the CPU.
        out = torch.zeros_like(images)
        for i, (sx, sy) in enumerate(zip(dx.tolist(), dy.tolist())):
            if abs(sx) < w and abs(sy) < h:
                out[i, :, max(0, -sy) : h - max(0, sy), max(0, -sx) : w - max(0, sx)] = images[
                    i, :, max(0, sy) : h - max(0, -sy), max(0, sx) : w - max(0, -sx)
                ]
        return out
    cols = torch.arange(w, device=dev).view(1, w) + to_device(dx, dev).view(n, 1)
    rows = torch.arange(h, device=dev).view(1, h) + to_device(dy, dev).view(n, 1)
    col_ok = (cols >= 0) & (cols < w)
    row_ok = (rows >= 0) & (rows < h)
    out = images.gather(3, cols.clamp(0, w - 1).view(n, 1, 1, w).expand(n, c, h, w))
    out = out.gather(2, rows.clamp(0, h - 1).view(n, 1, h, 1).expand(n, c, h, w))
    keep = row_ok.view(n, 1, h, 1) & col_ok.view(n, 1, 1, w)
    return out * keep


def rotation_matrix(degrees: Tensor, width: int, height: int) -> Tensor:
    """Image.rotate's inverse map about the image centre, ``[n, 6]`` float64."""
    theta = torch.deg2rad(-degrees.double())
    # Pillow rounds the trigonometric terms to 15 decimals.
    cos = torch.round(torch.cos(theta), decimals=15)
    sin = torch.round(torch.sin(theta), decimals=15)
    cx, cy = width / 2.0, height / 2.0
    tx = cos * -cx + sin * -cy + cx
    ty = -sin * -cx + cos * -cy + cy
    return torch.stack([cos, sin, tx, -sin, cos, ty], dim=1)


def _luminance(x: Tensor) -> Tensor:
    """Pillow's convert('L') of float pixel values ``[n, 3, H, W]``, as float ``[n, 1, H, W]``.

    The fixed-point sum stays below 2**24, so float32 computes it exactly.
    """
    r, g, b = _L_WEIGHTS
    total = x[:, 0:1] * r
    total.add_(x[:, 1:2], alpha=g).add_(x[:, 2:3], alpha=b).add_(0x8000)
    return total.div_(65536.0).floor_()


def blend(degenerate: Tensor, images: Tensor, factor: Tensor) -> Tensor:
    """Image.blend(degenerate, image, factor) as ImageEnhance uses it (float32, truncation).

    ``degenerate`` and ``images`` are float pixel values (0..255); returns uint8.
    """
    # Multiply, round to float32, then add: Pillow's C expression. A fused multiply-add (addcmul)
    # skips that rounding and lands one level low on ~0.1-0.4% of values.
    return _to_u8((images - degenerate).mul_(_per_sample(factor.float())).add_(degenerate))


def color(images: Tensor, factor: Tensor) -> Tensor:
    x = images.float()
    return blend(_luminance(x), x, factor)


def contrast(images: Tensor, factor: Tensor) -> Tensor:
    x = images.float()
    mean = _luminance(x).double().mean(dim=(1, 2, 3))
    degenerate = (mean + 0.5).floor().float()
    return blend(_per_sample(degenerate), x, factor)


def brightness(images: Tensor, factor: Tensor) -> Tensor:
    return _to_u8(images.float().mul_(_per_sample(factor.float())))


def smooth(images: Tensor) -> Tensor:
    """ImageFilter.SMOOTH: 3x3 kernel (1,1,1,1,5,1,1,1,1)/13, rounded, border pixels untouched."""
    if images.shape[2] < 3 or images.shape[3] < 3:
        return images.clone()
    # Integer 3x3 box sum + 4 * centre (at most 13 * 255, fits int16); faster than conv2d/avg_pool2d.
    x = images.to(torch.int16)
    rows = x[:, :, :-2] + x[:, :, 1:-1] + x[:, :, 2:]
    total = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    total.add_(x[:, :, 1:-1, 1:-1], alpha=4)
    # round(total / 13): the exact quotient is never within 1/26 of a tie, so float32 is safe.
    out = images.clone()
    out[:, :, 1:-1, 1:-1] = _to_u8(total.float().add_(6.5).mul_(1.0 / 13.0))
    return out


def sharpness(images: Tensor, factor: Tensor) -> Tensor:
    return blend(smooth(images).float(), images.float(), factor)


def _signed(values: Tensor, negate: Tensor) -> Tensor:
    return torch.where(negate.to(values.device), -values, values)


def apply_op(name: str, images: Tensor, level: Tensor, negate: Tensor) -> Tensor:
    """Apply op ``name`` to every image with its own level/sign (``level``, ``negate``: ``[n]``, CPU)."""
    _, _, h, w = images.shape
    dev = images.device
    lv = level.double()  # the magnitude rules are defined in float64, as the reference's Python floats
    if name == "autocontrast":
        return autocontrast(images)
    if name == "equalize":
        return equalize(images)
    if name == "posterize":
        return posterize(images, to_device(O.posterize_bits(lv).long(), dev))
    if name == "solarize":
        return solarize(images, O.solarize_threshold(lv).long())
    if name == "rotate":
        return rotate(images, _signed(O.rotate_degrees(lv), negate))
    if name in ("shear_x", "shear_y"):
        return shear(images, _signed(O.shear_factor(lv), negate), name[-1])
    if name == "translate_x":
        dx = _signed(O.translate_pixels(lv, w), negate).long()
        return shift(images, dx, torch.zeros_like(dx))
    if name == "translate_y":
        dy = _signed(O.translate_pixels(lv, h), negate).long()
        return shift(images, torch.zeros_like(dy), dy)
    if name in O.ENHANCE_OPS:
        return ENHANCE_KERNELS[name](images, to_device(O.enhance_factor(lv).float(), dev))
    raise PixmixError(f"ops: unknown op name {name!r}", param="ops")


ENHANCE_KERNELS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "color": color,
    "contrast": contrast,
    "brightness": brightness,
    "sharpness": sharpness,
}


