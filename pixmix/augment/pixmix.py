"""PixMix itself: the reference-faithful per-image path and the batched torch path (spec section 3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from pixmix.augment import batched_ops, mixing, pil_ops
from pixmix.augment.batched_ops import to_device
from pixmix.augment.config import PAPER_CIFAR, PAPER_IMAGENET, PixMixConfig, make_config
from pixmix.augment.params import PixMixParams, sample_params
from pixmix.utils.errors import PixmixError

Tensor = torch.Tensor


def pil_to_float(image: Image.Image) -> Tensor:
    """A PIL RGB image as float ``[3, H, W]`` in [0, 1], exactly as ``ToTensor`` does."""
    from torchvision.transforms.v2.functional import pil_to_tensor

    return pil_to_tensor(image).float().div(255)


class PixMix:
    """PixMix on one PIL image at a time, with Pillow ops as in the reference code.

    ``PixMix(k, beta, severity, ops, image_size)(image, mixing_picture, generator)`` returns a float
    tensor ``[3, H, W]`` in [0, 1]; normalisation is a later, separate step.
    """

    def __init__(
        self,
        k: int = 4,
        beta: float = 3.0,
        severity: float = 3.0,
        ops: str | Sequence[str] = "all",
        image_size: int | None = None,
        partners: str = "both",
    ) -> None:
        self.config: PixMixConfig = make_config(k, beta, severity, ops, partners)
        if image_size is not None and (
            isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1
        ):
            raise PixmixError(f"image_size must be a positive integer or None, got {image_size!r}", param="image_size")
        self.image_size = image_size

    @classmethod
    def cifar(cls) -> PixMix:
        """The paper's CIFAR-10/100 recipe: k=4, beta=3, severity=3, all ops, 32 px."""
        return cls(**PAPER_CIFAR)

    @classmethod
    def imagenet(cls) -> PixMix:
        """The paper's ImageNet recipe: k=4, beta=4, severity=1, all ops, 224 px."""
        return cls(**PAPER_IMAGENET)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"PixMix(k={c.k}, beta={c.beta}, severity={c.severity}, ops={list(c.op_names)}, "
            f"image_size={self.image_size}" + (f", partners={c.partners!r})" if c.partners != "both" else ")")
        )

    def __call__(
        self,
        image: Image.Image,
        mixing_picture: Image.Image,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        self._check_images(image, mixing_picture)
        return self.apply(image, mixing_picture, sample_params(self.config, 1, generator))

    def apply(self, image: Image.Image, mixing_picture: Image.Image, params: PixMixParams) -> Tensor:
        """Apply already-sampled params (a batch of one) to one image."""
        if params.batch_size != 1 or params.k != self.config.k:
            raise PixmixError(
                f"params must hold one sample with k={self.config.k}, "
                f"got batch_size={params.batch_size}, k={params.k}",
                param="params",
            )
        p = params.to("cpu")
        names = self.config.op_names
        ops, levels, negates = p.op[0].tolist(), p.level[0].tolist(), p.negate[0].tolist()

        def augmented(slot: int) -> Tensor:
            return pil_to_float(pil_ops.apply_op(image.copy(), names[ops[slot]], levels[slot], negates[slot]))

        mixed = augmented(0) if bool(p.start_augmented[0]) else pil_to_float(image)
        for r in range(int(p.rounds[0])):
            partner = augmented(r + 1) if bool(p.partner_augmented[0, r]) else pil_to_float(mixing_picture)
            mix = mixing.multiplicative if bool(p.multiplicative[0, r]) else mixing.additive
            mixed = torch.clip(mix(mixed, partner, float(p.a[0, r]), float(p.b[0, r])), 0, 1)
        return mixed

    def _check_images(self, image: object, mixing_picture: object) -> None:
        for name, im in (("image", image), ("mixing_picture", mixing_picture)):
            if not isinstance(im, Image.Image):
                raise PixmixError(f"{name} must be a PIL.Image.Image, got {type(im).__name__}", param=name)
            if im.mode != "RGB":
                raise PixmixError(f"{name} must be an RGB image, got mode {im.mode!r} (use .convert('RGB'))",
                                  param=name)
        assert isinstance(image, Image.Image) and isinstance(mixing_picture, Image.Image)
        if image.size != mixing_picture.size:
            raise PixmixError(
                f"image and mixing_picture must have the same size, got {image.size} and {mixing_picture.size}",
                param="mixing_picture",
            )
        if self.image_size is not None and image.size != (self.image_size, self.image_size):
            raise PixmixError(
                f"image_size is {self.image_size}, but the images are {image.size[0]}x{image.size[1]}",
                param="image",
            )


def pixmix_batch(
    images: Tensor,
    mixing: Tensor,
    *,
    k: int = 4,
    beta: float = 3.0,
    severity: float = 3.0,
    ops: str | Sequence[str] = "all",
    generator: torch.Generator | None = None,
    compile: bool | None = None,
    partners: str = "both",
) -> Tensor:
    """PixMix a batch: uint8 ``images`` and ``mixing`` ``[B, 3, H, W]`` (CPU or CUDA) -> float in [0, 1].

    Every sample gets its own op, magnitude, sign, rounds, mixing op and coefficients, drawn from
    ``generator`` (a CPU generator reproduces the same batch on CPU and GPU). ``compile``: see
    :func:`apply_batch`.
    """
    config = make_config(k, beta, severity, ops, partners)
    check_batch(images, mixing)
    return apply_batch(images, mixing, sample_params(config, images.shape[0], generator), config, compile=compile)


def check_batch(images: object, mixing: object) -> None:
    """Refuse anything but two uint8 ``[B, 3, H, W]`` tensors of one shape on one device."""
    for name, t in (("images", images), ("mixing", mixing)):
        if not isinstance(t, torch.Tensor):
            raise PixmixError(f"{name} must be a torch.Tensor, got {type(t).__name__}", param=name)
        if t.dtype != torch.uint8:
            raise PixmixError(f"{name} must have dtype torch.uint8 (values 0..255), got {t.dtype}", param=name)
        if t.dim() != 4 or t.shape[1] != 3:
            raise PixmixError(f"{name} must have shape [B, 3, H, W], got {list(t.shape)}", param=name)
        if t.shape[2] < 1 or t.shape[3] < 1:
            raise PixmixError(f"{name} must have non-empty images, got {list(t.shape)}", param=name)
    assert isinstance(images, torch.Tensor) and isinstance(mixing, torch.Tensor)
    if images.shape != mixing.shape:
        raise PixmixError(
            f"images and mixing must have the same shape, got {list(images.shape)} and {list(mixing.shape)}",
            param="mixing",
        )
    if images.device != mixing.device:
        raise PixmixError(f"images and mixing must be on one device, got {images.device} and {mixing.device}",
                          param="mixing")


# On the CPU, work on chunks of about this many float elements, so that each temporary stays in cache.
CPU_CHUNK_ELEMENTS = 1 << 20
# On the CPU, images with fewer elements than this are sorted into long runs before mixing.
SORT_BELOW_ELEMENTS = 1 << 15


def apply_batch(
    images: Tensor,
    mixing_pics: Tensor,
    params: PixMixParams,
    config: PixMixConfig,
    compile: bool | None = None,
) -> Tensor:
    """Apply sampled params to a batch. Decisions are indexed on the CPU, so a GPU batch never syncs.

    ``compile``: mix with one compiled kernel per run of samples (torch.compile). Default: on
    for CUDA batches when Triton is available; the first batch then pays a one-off compilation. On
    the CPU, ``compile=True`` runs the same kernels eagerly (the tests use it).
    """
    n, c, h, w = images.shape
    if params.batch_size != n or params.k != config.k:
        raise PixmixError(
            f"params must hold {n} samples with k={config.k}, got {params.batch_size} with k={params.k}",
            param="params",
        )
    p = params.to("cpu")
    fused = (images.is_cuda and mixing.compile_available()) if compile is None else compile
    out = torch.empty((n, c, h, w), dtype=torch.float32, device=images.device)
    chunk = max(1, n if images.is_cuda else CPU_CHUNK_ELEMENTS // (c * h * w))
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        _apply_chunk(images[start:stop], mixing_pics[start:stop], p.slice(start, stop), config, out[start:stop], fused)
    return out


def _apply_chunk(
    images: Tensor, mixing_pics: Tensor, p: PixMixParams, config: PixMixConfig, out: Tensor, fused: bool
) -> None:
    n = images.shape[0]
    dev = images.device

    # 1. Every augmented image the chunk needs, in op order, so each op's kernel runs once.
    job_sample, job_slot = p.slot_used().nonzero(as_tuple=True)
    job_op = p.op[job_sample, job_slot]
    by_op = torch.argsort(job_op, stable=True)
    job_sample, job_slot, job_op = job_sample[by_op], job_slot[by_op], job_op[by_op]
    job_of = torch.full((n, config.k + 1), -1, dtype=torch.long)
    job_of[job_sample, job_slot] = torch.arange(job_sample.numel())
    augmented = []
    ops_present, op_counts = torch.unique_consecutive(job_op, return_counts=True)
    begin = 0
    for op_index, count in zip(ops_present.tolist(), op_counts.tolist()):
        s_idx, k_idx = job_sample[begin : begin + count], job_slot[begin : begin + count]
        src = images.index_select(0, to_device(s_idx, dev))
        op_name = config.op_names[op_index]
        augmented.append(batched_ops.apply_op(op_name, src, p.level[s_idx, k_idx], p.negate[s_idx, k_idx]))
        begin += count

    pictures = _Pictures(images, mixing_pics, augmented, pooled=fused or images.is_cuda)
    samples = torch.arange(n)
    start_index = torch.where(p.start_augmented, 2 * n + job_of[:, 0], samples)
    partner_index = torch.where(p.partner_augmented, 2 * n + job_of[:, 1:], (n + samples).unsqueeze(1))

    _mix(out, pictures, start_index, partner_index, p, config, fused)


def _mix(
    out: Tensor,
    pictures: _Pictures,
    start_index: Tensor,
    partner_index: Tensor,
    p: PixMixParams,
    config: PixMixConfig,
    fused: bool,
) -> None:
    """Mix in place, round by round, over runs of consecutive samples that share the round's op.

    Sorting samples by their sequence of (idle / additive / multiplicative) rounds makes those runs
    few (at most 2 + 4 + ... + 2^k) and long, which small images and GPUs need; large images on the
    CPU skip the sort (and the copies it costs), as per-sample runs are cheap next to their pixel
    work. ``fused``: one compiled kernel per run (on a GPU), reading partners from the pool.
    """
    n, dev = out.shape[0], out.device
    codes = torch.where(p.round_active(), 1 + p.multiplicative.long(), 0)  # 0 idle, 1 add, 2 multiply
    if fused or dev.type != "cpu" or out[0].numel() < SORT_BELOW_ELEMENTS:
        weights = 3 ** torch.arange(config.k - 1, -1, -1)
        order = torch.argsort((codes * weights).sum(dim=1), stable=True)
        mixed = torch.empty_like(out)
    else:
        order = torch.arange(n)
        mixed = out
    codes = codes[order]
    # Round-major [k, n] tables of partners and coefficients, sent to the device once.
    partners = pictures.index_table(partner_index[order].t().contiguous())
    a, b = (to_device(v[order].t().contiguous(), dev) for v in (p.a, p.b))

    pictures.copy_scaled(mixed, start_index[order])
    for r in range(config.k):
        values, counts = torch.unique_consecutive(codes[:, r], return_counts=True)
        begin = 0
        for code, count in zip(values.tolist(), counts.tolist()):
            end = begin + count
            name = "multiply" if code == 2 else "add"
            if code and fused:
                assert pictures.pool is not None
                kernel = mixing.fused_kernel(name) if dev.type == "cuda" else mixing.RUN_KERNELS[name]
                kernel(mixed, begin, end, r, pictures.pool, partners, a, b)
            elif code:
                mix = mixing.multiply_u8_ if code == 2 else mixing.add_u8_
                a_r, b_r = a[r, begin:end].view(-1, 1, 1, 1), b[r, begin:end].view(-1, 1, 1, 1)
                mix(mixed[begin:end], pictures.gather(partners[r, begin:end]), a_r, b_r)
            begin = end
    if mixed is not out:
        torch.index_select(mixed, 0, to_device(torch.argsort(order), dev), out=out)


class _Pictures:
    """Every picture a sample may start from or mix with, addressed by one index:
    ``[0, n)`` originals, ``[n, 2n)`` mixing pictures, ``[2n, 2n + jobs)`` augmented images.

    ``pooled`` (GPUs): concatenated into one pool and gathered with one kernel. Otherwise (CPU) they
    stay where they are, as views: a run of one sample then reads its picture with no copy at all.
    """

    def __init__(self, images: Tensor, mixing_pics: Tensor, augmented: list[Tensor], pooled: bool) -> None:
        self.device = images.device
        if pooled:
            self.pool: Tensor | None = torch.cat([images, mixing_pics, *augmented], dim=0)
            self.views: list[Tensor] = []
        else:
            self.pool = None
            self.views = [*images.unbind(0), *mixing_pics.unbind(0), *(im for g in augmented for im in g.unbind(0))]

    def index_table(self, index: Tensor) -> Tensor:
        """A table of picture indices where :meth:`gather` wants it: with the pool on its device."""
        return to_device(index, self.device) if self.pool is not None else index

    def gather(self, index: Tensor) -> Tensor:
        """uint8 ``[len(index), 3, H, W]``."""
        if self.pool is not None:
            return self.pool.index_select(0, to_device(index, self.device))
        views = [self.views[i] for i in index.tolist()]
        return views[0].unsqueeze(0) if len(views) == 1 else torch.stack(views)

    def copy_scaled(self, dst: Tensor, index: Tensor) -> None:
        """``dst = gather(index) / 255`` as float."""
        if self.pool is not None or len(index) > 16:
            dst.copy_(self.gather(index))
        else:  # row by row: no stacked uint8 copy
            for row, i in zip(dst, index.tolist()):
                row.copy_(self.views[i])
        dst.div_(255)
