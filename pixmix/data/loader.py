"""Streaming a shard set (``mixset shard`` output) into training or evaluation batches.

Three layers:

* :func:`epoch_assignment` (pure): which samples each (rank, DataLoader worker) reads in one epoch.
  Every rank gets exactly the same number of batches, since a rank with fewer batches hangs DDP.
* :class:`ShardStream`: an ``IterableDataset`` that, inside a worker, reads its pieces with
  webdataset's tar iteration, shuffles with webdataset's buffer shuffle, decodes and (mode
  ``"online"``) draws each sample's PixMix inputs, and yields whole :class:`Batch` es.
* :class:`ShardLoader` (a DataLoader around the stream) and :func:`finish_batch`, which runs the
  batched PixMix and the normalisation on the training device, in the main process.

Stream and loader share one :class:`LoaderOptions`, validated once; rank and world size not given
come from :mod:`pixmix.utils.distributed`.

Randomness: the shard order and the skipped samples come from ``(seed, epoch)``; the shuffle buffer
from ``(seed, epoch, rank, worker)``; a sample's augmentation from ``(seed, epoch, shard, index)``
alone, so an image does not depend on the number of ranks, workers or the batching.
"""

from __future__ import annotations

import logging
import os
import random
import sys
import tarfile
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from itertools import accumulate, chain, islice, repeat
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from pixmix.augment.config import PixMixConfig
from pixmix.augment.params import PixMixParams, sample_params
from pixmix.augment.recipes import Recipe, get_recipe
from pixmix.augment.transforms import SeededTransform, to_uint8_tensor
from pixmix.data.images import to_rgb
from pixmix.data.remote import Location, location
from pixmix.data.shards.shard_set import ShardRecord, ShardSet
from pixmix.data.shards.tar import member_kind
from pixmix.utils.distributed import rank_world
from pixmix.utils.errors import PixmixError
from pixmix.utils.runtime import limit_threads
from pixmix.utils.seeding import derive_seed, generator_for

log = logging.getLogger("pixmix.data.loader")

MODES = ("auto", "views", "online")
# Leading stream coordinates for the loader's own random streams. derive_seed ignores trailing zero
# coordinates, so without a tag the shard order of epoch e would be the stream of sample (e, 0, 0).
_ORDER_STREAM = 1 << 40
_SHUFFLE_STREAM = (1 << 40) + 1
_LOADER_STREAM = (1 << 40) + 2
# Good samples a worker keeps (raw bytes) to repeat in place of lost ones.
_REPEAT_POOL = 32


class Piece(NamedTuple):
    """Samples ``start`` to ``stop - 1`` of shard ``shard`` (an index into the epoch's shard list).

    ``repeat``: the samples are wrap-around padding (``drop_last=False``), already read this epoch.
    """

    shard: int
    start: int
    stop: int
    repeat: bool = False


# --- planning ------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, minimum: int, *, param: str | None = "") -> int:
    """``value``, or a PixmixError naming ``param`` (default: ``name``) when it is not an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PixmixError(f"{name} must be an integer >= {minimum}, got {value!r}",
                          param=name if param == "" else param)
    return value


def batches_per_rank(total: int, *, world_size: int, batch_size: int, drop_last: bool = True) -> int:
    """Batches every rank gets from ``total`` samples (the same number on every rank)."""
    per_step = world_size * batch_size
    return total // per_step if drop_last else -(-total // per_step)


def epoch_order(n_shards: int, total: int, *, seed: int, epoch: int, shuffle: bool = True) -> tuple[list[int], int]:
    """The epoch's shard order and the offset into the concatenated samples where the epoch starts.

    The offset rotates which samples ``drop_last`` skips (and which are padded) from epoch to epoch.
    """
    if not shuffle:
        return list(range(n_shards)), 0
    rng = random.Random(derive_seed(seed, _ORDER_STREAM, epoch))
    order = list(range(n_shards))
    rng.shuffle(order)
    return order, rng.randrange(total) if total else 0


@dataclass(frozen=True)
class _EpochSequence:
    """The epoch's samples as one sequence: the shards concatenated in ``order``, rotated by ``offset``.

    Positions at or past ``total`` wrap around to the start (the padding of ``drop_last=False``).
    """

    counts: Sequence[int]
    order: Sequence[int]
    offset: int

    @cached_property
    def starts(self) -> list[int]:
        """The position of each ordered shard's first sample."""
        return list(accumulate((self.counts[shard] for shard in self.order), initial=0))[:-1]

    @cached_property
    def total(self) -> int:
        return sum(self.counts)

    def pieces(self, lo: int, hi: int) -> list[Piece]:
        """Positions ``lo`` to ``hi - 1`` as runs of consecutive samples of one shard each."""
        total, starts = self.total, self.starts
        out: list[Piece] = []
        p = lo
        while p < hi:
            q = (self.offset + p) % total
            # bisect_right picks the last shard starting at or before q: empty shards are passed over.
            j = bisect_right(starts, q) - 1
            shard, first = self.order[j], starts[j]
            end_of_part = hi if p >= total else min(hi, total)  # padding gets its own pieces
            n = min(end_of_part - p, first + self.counts[shard] - q)
            out.append(Piece(shard, q - first, q - first + n, repeat=p >= total))
            p += n
        return out


def _worker_runs(n_batches: int, num_workers: int) -> list[tuple[int, int]]:
    """``[first, last + 1)`` batches of each worker: contiguous runs whose sizes differ by at most one."""
    return [(w * n_batches // num_workers, (w + 1) * n_batches // num_workers) for w in range(num_workers)]


def epoch_assignment(
    counts: Sequence[int],
    *,
    seed: int,
    epoch: int,
    world_size: int,
    batch_size: int,
    num_workers: int = 1,
    drop_last: bool = True,
    shuffle: bool = True,
) -> list[list[list[Piece]]]:
    """``[rank][worker]`` -> the pieces of shards (``counts[i]`` samples each) it reads this epoch.

    Shards are concatenated in an order drawn from ``(seed, epoch)``, the sequence is rotated by an
    offset from the same stream, and cut into ``world_size`` equal contiguous ranges of whole batches.
    ``drop_last``: the fewer than ``world_size * batch_size`` samples left over are skipped;
    otherwise the sequence wraps around to its start to fill the last batches (``Piece.repeat``).
    A rank's batches are split among its workers in contiguous runs (sizes differ by at most one).
    ``shuffle=False`` keeps the listed shard order and starts at sample 0 (evaluation).
    """
    world_size = _check_int("world_size", world_size, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    num_workers = _check_int("num_workers", num_workers, 1)
    _check_int("seed", seed, 0)
    _check_int("epoch", epoch, 0)
    counts = [_check_int(f"counts[{i}]", c, 0, param=None) for i, c in enumerate(counts)]
    total = sum(counts)
    n_batches = batches_per_rank(total, world_size=world_size, batch_size=batch_size, drop_last=drop_last)
    if n_batches == 0:
        raise PixmixError(
            f"{total} samples are fewer than world_size * batch_size = {world_size * batch_size}: "
            "lower batch_size or use drop_last=False",
            param="batch_size",
        )
    order, offset = epoch_order(len(counts), total, seed=seed, epoch=epoch, shuffle=shuffle)
    sequence = _EpochSequence(counts, order, offset)
    span = n_batches * batch_size  # samples per rank
    return [[sequence.pieces(rank * span + b0 * batch_size, rank * span + b1 * batch_size)
             for b0, b1 in _worker_runs(n_batches, num_workers)]
            for rank in range(world_size)]


# --- resuming mid-epoch --------------------------------------------------------------------------
#
# A rank's batches of an epoch are a pure function of (seed, epoch, world size, batch, workers): every worker's
# samples are a fixed list of positions of the epoch's sequence, read in order through a shuffle buffer whose
# draws do not depend on the samples' contents, and the DataLoader takes its workers' batches in turn. So the
# samples that any number of steps consumed can be computed without reading a byte, and a resumed stream can skip
# them instead of replaying them.


@dataclass(frozen=True)
class EpochPosition:
    """How far an epoch has got: ``step`` batches done on each of ``world_size`` ranks (``global_batch`` samples per
    step over all ranks), each reading with ``workers`` DataLoader workers.

    ``base_step`` and ``base_consumed`` describe the plan the steps since ``base_step`` followed: ``None``, the
    epoch's own plan (:func:`epoch_assignment`); else an elastic resume's re-split of the positions of the epoch's
    sequence that ``base_consumed`` (a bool per position) does not mark (:func:`plan_positions`).
    """

    epoch: int
    step: int
    world_size: int
    global_batch: int
    workers: int = 1
    base_step: int = 0
    base_consumed: np.ndarray | None = None

    def to_state(self) -> dict[str, Any]:
        """Plain values and tensors (a checkpoint loads with ``weights_only=True``): the bitmap as packed bits."""
        consumed = self.base_consumed
        return {"epoch": self.epoch, "step": self.step, "world_size": self.world_size,
                "global_batch": self.global_batch, "workers": self.workers, "base_step": self.base_step,
                "base_positions": None if consumed is None else len(consumed),
                "base_consumed": None if consumed is None else torch.from_numpy(np.packbits(consumed))}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpochPosition:
        """The inverse of :meth:`to_state`."""
        bits = state.get("base_consumed")
        consumed = None if bits is None else np.unpackbits(
            np.asarray(bits, dtype=np.uint8), count=int(state["base_positions"])).astype(bool)
        return cls(int(state["epoch"]), int(state["step"]), int(state["world_size"]), int(state["global_batch"]),
                   int(state["workers"]), int(state["base_step"]), consumed)


def plan_positions(
    n_batches: int, *, world_size: int, batch_size: int, num_workers: int, consumed: np.ndarray | None = None
) -> list[list[np.ndarray]]:
    """``[rank][worker]`` -> the positions of the epoch's sequence it reads, ascending.

    ``consumed`` ``None``: the epoch's own plan (the cut of :func:`epoch_assignment`: ``n_batches`` per rank).
    Else the positions ``consumed`` leaves out, in order, cut the same way into ``n_batches`` per rank, so a
    re-split keeps the global order and every rank gets the same number of batches.
    """
    span = n_batches * batch_size
    left = np.arange(world_size * span) if consumed is None else np.flatnonzero(~consumed)
    if len(left) != world_size * span:
        raise PixmixError(f"{len(left)} samples are left in the epoch, not {n_batches} steps x {world_size} ranks x "
                          f"{batch_size}", param="position")
    return [[left[rank * span + b0 * batch_size:rank * span + b1 * batch_size]
             for b0, b1 in _worker_runs(n_batches, num_workers)] for rank in range(world_size)]


def worker_turns(batches: Sequence[int], steps: int) -> tuple[list[int], int]:
    """After ``steps`` batches of a DataLoader whose workers hold ``batches[w]`` batches each: the batches taken
    from each worker, and the worker whose turn comes next.

    The DataLoader asks its workers in turn and passes over those that have run out (whatever their timing).
    """
    taken = [0] * len(batches)
    if steps > sum(batches):
        raise PixmixError(f"step {steps} is past the {sum(batches)} batches of the epoch", param="position")
    worker = 0
    for _ in range(steps):
        while taken[worker] == batches[worker]:
            worker = (worker + 1) % len(batches)
        taken[worker] += 1
        worker = (worker + 1) % len(batches)
    while steps < sum(batches) and taken[worker] == batches[worker]:  # the next worker with a batch left
        worker = (worker + 1) % len(batches)
    return taken, worker


def shuffle_order(n: int, bufsize: int, seed: int) -> np.ndarray:
    """The order in which webdataset's buffer shuffle (``bufsize``, generator ``random.Random(seed)``) emits ``n``
    samples: indices into its input (its draws depend on the count alone, never on the samples)."""
    from webdataset.filters import _shuffle

    stream = _shuffle(iter(range(n)), bufsize=bufsize, initial=bufsize, rng=random.Random(seed))
    return np.fromiter(stream, dtype=np.int64, count=n)


def consumed_positions(
    position: EpochPosition, *, epoch_samples: int, shuffle: bool, shuffle_buffer: int, seed: int
) -> np.ndarray:
    """A bool per position of the epoch's sequence (``epoch_samples`` of them): the samples the ranks of
    ``position`` consumed in its ``step`` steps (without lost samples: each step took its planned positions)."""
    world, batch = position.world_size, position.global_batch // position.world_size
    n_batches = epoch_samples // position.global_batch
    consumed = np.zeros(n_batches * position.global_batch, dtype=bool)
    if position.base_consumed is not None:
        consumed[:] = position.base_consumed
        n_batches = int((~consumed).sum()) // position.global_batch
    plan = plan_positions(n_batches, world_size=world, batch_size=batch, num_workers=position.workers,
                          consumed=position.base_consumed)
    for rank, workers in enumerate(plan):
        taken, _ = worker_turns([len(p) // batch for p in workers], position.step - position.base_step)
        for worker, (positions, count) in enumerate(zip(workers, taken, strict=True)):
            order = (shuffle_order(len(positions), shuffle_buffer, _shuffle_seed(seed, position.epoch, rank, worker))
                     if shuffle else np.arange(len(positions)))
            consumed[positions[order[:count * batch]]] = True
    return consumed


def _shuffle_seed(seed: int, epoch: int, rank: int, worker: int) -> int:
    """The seed of a worker's shuffle buffer in ``epoch``."""
    return derive_seed(seed, _SHUFFLE_STREAM, epoch, rank, worker)


def _runs(positions: np.ndarray) -> list[tuple[int, int]]:
    """``[lo, hi)`` runs of consecutive values of the ascending ``positions``."""
    if not len(positions):
        return []
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    return [(int(run[0]), int(run[-1]) + 1) for run in np.split(positions, breaks)]


# The shuffle buffer holds raw sample bytes: about this much per worker by default.
SHUFFLE_BUFFER_BYTES = 64 << 20
SHUFFLE_BUFFER_SAMPLES = (1_000, 10_000)


def auto_shuffle_buffer(shardset: ShardSet) -> int:
    """Samples in a worker's shuffle buffer: as many as fit ``SHUFFLE_BUFFER_BYTES`` (from the manifest's mean
    sample size), between 1,000 and 10,000, so small images (CIFAR, whose 50k samples may sit in a few shards
    of fixed order) are mixed far more than a fixed 1,000 would, while ImageNet-sized ones stay bounded."""
    total = sum(s.bytes for s in shardset.shards)
    mean = total / max(1, shardset.samples)
    low, high = SHUFFLE_BUFFER_SAMPLES
    return int(min(high, max(low, SHUFFLE_BUFFER_BYTES // max(1.0, mean))))


# --- batches -------------------------------------------------------------------------------------


@dataclass
class Batch:
    """One batch as a worker makes it (all on the CPU; :func:`finish_batch` takes it to the device).

    ``repeat`` marks samples that are not new this epoch: wrap-around padding and substitutes for
    lost samples (evaluation should leave them out). ``errors``: ``"shard: message"`` lines new in
    this batch; ``substituted``: how many samples stand in for lost ones.
    """

    images: torch.Tensor  # uint8 [B, 3, H, W]
    labels: torch.Tensor  # int64 [B]
    keys: list[str]
    repeat: torch.Tensor  # bool [B]
    mixing: torch.Tensor | None = None  # uint8 [B, 3, H, W], mode "online"
    params: PixMixParams | None = None  # per-sample PixMix choices, mode "online"
    substituted: int = 0
    errors: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    def pin_memory(self) -> Batch:
        """Called by the DataLoader's pinning thread (``pin_memory=True``)."""
        return replace(
            self,
            images=self.images.pin_memory(),
            labels=self.labels.pin_memory(),
            mixing=self.mixing.pin_memory() if self.mixing is not None else None,
        )


_CONFIGS: dict[Recipe, PixMixConfig] = {}


def _pixmix_config(recipe: Recipe) -> PixMixConfig:
    """The recipe's PixMix configuration, built once per recipe (per process)."""
    if recipe not in _CONFIGS:
        _CONFIGS[recipe] = recipe.pixmix().config
    return _CONFIGS[recipe]


def finish_batch(
    batch: Batch,
    device: torch.device | str,
    recipe: str | Recipe,
    normalize: bool = True,
    compile: bool | None = None,
    mixing: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(float images [B, 3, H, W], int64 labels)`` on ``device``: PixMix (online batches) and
    normalisation run there, so workers only ship uint8 pictures.

    ``compile``: see :func:`pixmix.augment.pixmix.apply_batch`. ``mixing``: uint8 [B, 3, H, W] pictures that
    replace an online batch's own mixing pictures (Iterative PixMix's pool, :mod:`pixmix.train.iterative`).
    """
    from pixmix.augment.pixmix import apply_batch

    recipe = get_recipe(recipe)
    device = torch.device(device)

    def move(t: torch.Tensor) -> torch.Tensor:
        if device.type == "cuda" and t.device.type == "cpu" and not t.is_pinned():
            t = t.pin_memory()  # a pinned source lets the copy overlap with compute
        return t.to(device, non_blocking=True)

    images = move(batch.images)
    labels = move(batch.labels)
    if batch.mixing is not None:
        if batch.params is None:
            raise ValueError("finish_batch: an online batch (with mixing pictures) must carry params")
        pictures = batch.mixing if mixing is None else mixing
        out = apply_batch(images, move(pictures), batch.params, _pixmix_config(recipe), compile=compile)
    else:
        out = images.float().div_(255)
    if normalize:
        # In place, but the same float operations as Recipe.normalize: (x - mean) / std.
        mean = torch.tensor(recipe.mean, dtype=out.dtype, device=device).view(3, 1, 1)
        std = torch.tensor(recipe.std, dtype=out.dtype, device=device).view(3, 1, 1)
        out.sub_(mean).div_(std)
    return out, labels


# --- reading -------------------------------------------------------------------------------------


def _sample_offset(fh: Any, index: int) -> int:
    """Byte offset of the first header of sample ``index`` in the open shard ``fh``, from the tar headers alone."""
    from webdataset.tariterators import base_plus_ext

    count, last = -1, None
    with tarfile.open(fileobj=fh, mode="r:") as tar:
        for member in tar:  # "r:" seeks over member data: only headers are read
            if not member.isreg():
                continue
            key, _ = base_plus_ext(member.name)
            if key != last:
                count, last = count + 1, key
                if count == index:
                    return member.offset
    raise PixmixError(f"has only {count + 1} samples, cannot start at sample {index}")


def _tar_files(fh: Any, url: str, skipped: list[str]) -> Iterator[dict[str, Any]]:
    """The regular members of a tar stream as webdataset file dicts; the others (links, folders) are
    skipped and named in ``skipped`` (webdataset's own expander passes over them silently)."""
    with tarfile.open(fileobj=fh, mode="r|") as stream:
        for member in stream:
            if not member.isreg():
                skipped.append(f"member {member.name!r} is {member_kind(member)}: skipped")
                continue
            data = stream.extractfile(member)
            assert data is not None  # a regular member
            yield {"fname": member.name, "data": data.read(), "__url__": url}
            stream.members = []  # type: ignore[attr-defined]  # keep no headers: a shard may hold many


def _read_range(path: Path | Location, start: int, stop: int,
                skipped: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Samples ``start`` to ``stop - 1`` of a shard (a local file or a URL) as webdataset dicts (``__key__`` and
    raw fields).

    Samples before ``start`` are skipped by seeking (a remote shard: forward over its headers, retried on
    transient errors); reading stops after ``stop - 1``. Members that are not regular files are left out and
    described in ``skipped``.
    """
    from webdataset.tariterators import group_by_keys

    with location(path).open() as fh:
        if start:
            fh.seek(_sample_offset(fh, start))
        samples = group_by_keys(_tar_files(fh, str(path), [] if skipped is None else skipped))
        for _, sample in zip(range(stop - start), samples):  # range first: no sample is read past stop
            yield sample


def _decode_image(data: bytes, field_name: str, label: str) -> torch.Tensor:
    """uint8 ``[3, H, W]`` of one untrusted shard image, decoded by Pillow through :func:`open_image`.

    Header checks first (bomb, format of the field), then a full decode in which a corrupt file is an
    exception, never a crash (torchvision's libpng decoder segfaults on some flipped bytes); modes are
    converted by :func:`to_rgb` (16-bit scaled to 8 bits, alpha dropped).
    """
    from pixmix.data.images import ImageError, open_image, to_rgb

    expected = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}.get(field_name)
    try:
        with open_image(data, formats=[expected] if expected else None, name=label) as im:
            rgb = to_rgb(im)
    except ImageError as exc:
        raise _Lost(f"undecodable {field_name}: {exc}") from exc
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _label(sample: dict[str, Any], label_field: str) -> int:
    """The class index of a sample: an ASCII integer field (``cls``), or ``json:KEY``, a key of its json."""
    source, _, key = label_field.partition(":")
    if source not in sample:
        raise _Lost(f"no {source!r} field")
    raw = bytes(sample[source])
    try:
        if key:
            import json

            value = json.loads(raw).get(key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(value)
            return value
        return int(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise _Lost(f"{label_field} {raw[:20]!r} is not a class index") from exc


def _message(exc: BaseException) -> str:
    """The reason of ``exc`` in words: an OSError's strerror (never its bare errno), else its first line."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    # webdataset appends " @ <stream>" and extra args to the message; keep the first line only.
    text = str(exc.args[0]) if exc.args else type(exc).__name__
    return text.split(" @ ")[0].splitlines()[0] if text else type(exc).__name__


class _Raw(NamedTuple):
    shard: int  # index into the manifest's shard list
    position: int  # index in the shard
    name: str  # the shard's name, for messages
    sample: dict[str, Any]
    repeat: bool


class _Item(NamedTuple):
    image: torch.Tensor
    label: int
    key: str
    repeat: bool
    mixing: torch.Tensor | None
    params: PixMixParams | None


class _Lost(Exception):
    """A sample that cannot be used (bad image, missing field): dropped and reported."""


# --- options -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoaderOptions:
    """How a :class:`ShardLoader` (and its :class:`ShardStream`) reads a shard set; validated once.

    ``rank`` / ``world_size``: ``None`` asks :mod:`pixmix.utils.distributed` (process group, torchrun,
    SLURM). ``mode``: ``"views"`` (images as stored, or through ``transform``, which must make them one
    size), ``"online"`` (plain shards: the recipe's train transform, a picture of ``mixset`` (a ``mixset
    build`` folder or a sequence of pictures) and PixMix params per sample) or ``"auto"`` (``"online"``
    for a plain set with a ``mixset``, else ``"views"``). ``num_workers``: the DataLoader's.
    ``shuffle_buffer``: samples per worker's buffer (``None``: :func:`auto_shuffle_buffer`).
    ``recipe``: ``None`` takes the shard set's (:attr:`ShardSet.recipe_name`: CIFAR sets get ``"cifar"``,
    32 px batches), else ``"imagenet"``; an explicit recipe wins. :meth:`for_shards` fills in what depends on
    the shard set and the environment.
    """

    batch_size: int
    seed: int = 0
    rank: int | None = None
    world_size: int | None = None
    num_workers: int = 2
    mode: str = "auto"
    mixset: str | Path | Sequence[Image.Image] | None = None
    recipe: str | Recipe | None = None
    transform: SeededTransform | None = None
    drop_last: bool = True
    shuffle: bool = True
    shuffle_buffer: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise PixmixError(f"mode must be one of {MODES}, got {self.mode!r}", param="mode")
        if self.world_size is not None:
            _check_int("world_size", self.world_size, 1)
            rank = self.rank
            if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int)
                                     or not 0 <= rank < self.world_size):
                raise PixmixError(f"rank must be an integer in [0, {self.world_size}), got {rank!r}", param="rank")
        _check_int("batch_size", self.batch_size, 1)
        _check_int("seed", self.seed, 0)
        _check_int("num_workers", self.num_workers, 0)
        if self.shuffle_buffer is not None:
            _check_int("shuffle_buffer", self.shuffle_buffer, 1)
        # An unknown recipe name fails here, naming the parameter; None waits for the shard set (for_shards).
        recipe = get_recipe(self.recipe) if self.recipe is not None else None
        if self.mode == "online":
            self._check_online(recipe)

    def _check_online(self, recipe: Recipe | None) -> None:
        """Mode "online" draws a mixing picture per sample (unless the partners are all augmented inputs)
        and applies the recipe's own train transform."""
        if recipe is None or recipe.partners != "augmented":
            if self.mixset is None:
                raise PixmixError("mode 'online' needs a mixset (a `mixset build` folder or a sequence of pictures), "
                                  "unless the recipe's partners are 'augmented'", param="mixset")
            if not isinstance(self.mixset, (str, os.PathLike)) and len(self.mixset) == 0:
                raise PixmixError("mixset is empty: PixMix needs at least one mixing picture", param="mixset")
        if self.transform is not None:
            raise PixmixError("mode 'online' applies the recipe's train transform; pass transform=None",
                              param="transform")

    def for_shards(self, shardset: ShardSet) -> LoaderOptions:
        """These options for reading ``shardset`` here: mode ``"auto"`` resolved, ``rank`` and
        ``world_size`` filled in from the environment, and the mode checked against the set's kind."""
        mode = self.mode
        if mode == "auto":
            mode = "online" if shardset.kind == "plain" and self.mixset is not None else "views"
        if mode == "online" and shardset.kind != "plain":
            raise PixmixError(f"{shardset.folder}: mode 'online' needs a plain shard set, this one is "
                              f"{shardset.kind!r}", param="mode")
        rank, world_size = _rank_world(self.rank, self.world_size)
        recipe = self.recipe if self.recipe is not None else shardset.recipe_name or "imagenet"
        # validated again, now complete
        return replace(self, mode=mode, rank=rank, world_size=world_size, recipe=recipe)


def _rank_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Explicit values win; a missing one comes from :func:`pixmix.utils.distributed.rank_world`.

    Each missing value is read on its own (rank 0 fits any world size; any rank fits the largest), so
    that the pair is checked once, by :class:`LoaderOptions`, whose message names the loader's range.
    """
    if world_size is None:
        world_size = rank_world(0, None)[1]
    if rank is None:
        rank = rank_world(None, sys.maxsize)[0]
    return rank, world_size


# --- streaming -----------------------------------------------------------------------------------


class ShardStream(torch.utils.data.IterableDataset):
    """The batches of one rank, made inside DataLoader workers (use ``DataLoader(batch_size=None)``).

    ``options``: see :class:`LoaderOptions` (completed for ``shardset`` by :meth:`LoaderOptions.for_shards`);
    in mode ``"online"`` :func:`finish_batch` mixes. ``options.num_workers`` must match the DataLoader's.
    """

    def __init__(self, shardset: ShardSet, options: LoaderOptions, *, epoch: int = 0) -> None:
        super().__init__()
        options = options.for_shards(shardset)
        assert options.rank is not None and options.world_size is not None  # for_shards fills them in
        self.options = options
        self.shardset = shardset
        self.batch_size, self.seed = options.batch_size, options.seed
        self.rank, self.world_size = options.rank, options.world_size
        self.workers = max(1, options.num_workers)
        self.mode = options.mode
        self.mixset = options.mixset
        assert options.recipe is not None  # for_shards fills it in
        self.recipe = get_recipe(options.recipe)
        self.transform = options.transform
        self.drop_last, self.shuffle = options.drop_last, options.shuffle
        self.shuffle_buffer = (auto_shuffle_buffer(shardset) if options.shuffle_buffer is None
                               else options.shuffle_buffer)
        self._pictures: Sequence[Image.Image] | None = None
        self._train_transform = self.recipe.train_transform()
        self._mixing_transform = self.recipe.mixing_transform()
        self.set_epoch(epoch)

    def set_epoch(self, epoch: int, position: EpochPosition | None = None) -> None:
        """Plan ``epoch`` (workers started after this call read it); ``position``: resume it there (see
        :meth:`resume`)."""
        self.epoch = _check_int("epoch", epoch, 0)
        view = epoch % self.shardset.views
        self.shard_ids = [i for i, s in enumerate(self.shardset.shards) if s.view == view]
        self.records: list[ShardRecord] = [self.shardset.shards[i] for i in self.shard_ids]
        self.plan = epoch_assignment(
            [r.samples for r in self.records], seed=self.seed, epoch=epoch, world_size=self.world_size,
            batch_size=self.batch_size, num_workers=self.workers, drop_last=self.drop_last, shuffle=self.shuffle,
        )[self.rank]
        # Resuming: the plan's first step and consumed samples, the batches each worker skips, the worker whose
        # batch comes first (DataLoader worker i plays the plan's worker (i + rotation) % workers).
        self.base_step = 0
        self.base_consumed: np.ndarray | None = None
        self.skip, self.rotation = [0] * self.workers, 0
        self._positions: list[np.ndarray] | None = None
        if position is not None:
            self.resume(position)

    def position(self, step: int) -> EpochPosition:
        """This epoch's position after ``step`` batches on every rank (what a mid-epoch checkpoint stores)."""
        return EpochPosition(self.epoch, step, self.world_size, self.batch_size * self.world_size, self.workers,
                             self.base_step, self.base_consumed)

    def resume(self, position: EpochPosition) -> None:
        """Continue this epoch after ``position``: the samples its steps consumed are skipped, never decoded.

        The same world size and workers continue the same plan (the same batches as without the stop). Another
        world size or number of workers (the global batch must stay the same) re-splits the samples of the epoch
        not consumed yet, in the epoch's order, into equal shares of the steps left: each of the epoch's samples
        once, but not the same batches.
        """
        global_batch = self.batch_size * self.world_size
        if position.epoch != self.epoch:
            raise PixmixError(f"the position is in epoch {position.epoch}, not {self.epoch}", param="position")
        if position.global_batch != global_batch:
            raise PixmixError(f"the global batch was {position.global_batch}, now {global_batch}: a resumed epoch "
                              "keeps its global batch", param="batch_size")
        if not self.drop_last:
            raise PixmixError("resuming mid-epoch needs drop_last=True", param="drop_last")
        total = sum(r.samples for r in self.records)
        steps = position.step - position.base_step
        self.base_step, self.base_consumed = position.base_step, position.base_consumed
        if (position.world_size, position.workers) != (self.world_size, self.workers):
            self.base_step, steps = position.step, 0
            self.base_consumed = consumed_positions(
                position, epoch_samples=total, shuffle=self.shuffle,
                shuffle_buffer=self.shuffle_buffer, seed=self.seed)
        if self.base_consumed is not None:
            n_batches = int((~self.base_consumed).sum()) // global_batch
            self._positions = plan_positions(n_batches, world_size=self.world_size, batch_size=self.batch_size,
                                             num_workers=self.workers, consumed=self.base_consumed)[self.rank]
            sequence = self._sequence()
            self.plan = [[p for lo, hi in _runs(positions) for p in sequence.pieces(lo, hi)]
                         for positions in self._positions]
        self.skip, self.rotation = worker_turns(self._worker_batches(), steps)

    def _sequence(self) -> _EpochSequence:
        counts = [r.samples for r in self.records]
        order, offset = epoch_order(len(counts), sum(counts), seed=self.seed, epoch=self.epoch, shuffle=self.shuffle)
        return _EpochSequence(counts, order, offset)

    def _worker_batches(self) -> list[int]:
        return [sum(p.stop - p.start for p in pieces) // self.batch_size for pieces in self.plan]

    def _worker_positions(self, worker: int) -> np.ndarray:
        """The positions of the epoch's sequence that ``worker`` reads, in order."""
        if self._positions is not None:
            return self._positions[worker]
        n_batches = sum(self._worker_batches())  # the epoch's own plan: one contiguous range per rank
        span = n_batches * self.batch_size
        b0, b1 = _worker_runs(n_batches, self.workers)[worker]
        return np.arange(self.rank * span + b0 * self.batch_size, self.rank * span + b1 * self.batch_size)

    def __len__(self) -> int:
        return sum(self._worker_batches()) - sum(self.skip)

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self.workers:
            raise PixmixError(f"ShardStream was planned for {self.workers} workers, but runs in {workers}: "
                              "pass the DataLoader's num_workers", param="num_workers")
        return self._batches((worker + self.rotation) % workers)

    # Inside one worker.

    def _shuffled(self, worker: int, errors: list[str]) -> Iterator[_Raw]:
        """The worker's samples in the order of its shuffle buffer, after the ones a resume skips."""
        from webdataset.filters import _shuffle

        pieces, skip = self.plan[worker], self.skip[worker] * self.batch_size
        seed = _shuffle_seed(self.seed, self.epoch, self.rank, worker)
        first = 0
        if skip:  # samples before the first one still to come are not even read: placeholders stand in
            n = sum(p.stop - p.start for p in pieces)
            order = shuffle_order(n, self.shuffle_buffer, seed) if self.shuffle else np.arange(n)
            first = int(order[skip:].min()) if skip < n else n
            sequence, positions = self._sequence(), self._worker_positions(worker)[first:]
            pieces = [p for lo, hi in _runs(positions) for p in sequence.pieces(lo, hi)]
        raws: Iterator[Any] = chain(repeat(None, first), self._read(pieces, errors))
        if self.shuffle:
            raws = _shuffle(raws, bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=random.Random(seed))
        return islice(raws, skip, None)  # the skipped samples are never decoded

    def _batches(self, worker: int) -> Iterator[Batch]:
        pieces = self.plan[worker]
        quota = sum(p.stop - p.start for p in pieces) - self.skip[worker] * self.batch_size
        errors: list[str] = []
        raws: Iterator[_Raw] = self._shuffled(worker, errors)
        pool: list[_Raw] = []
        items: list[_Item] = []
        produced = substituted = 0
        for raw in raws:
            try:
                item = self._process(raw)
            except _Lost as exc:
                self._report(errors, raw.name, f"sample {raw.sample.get('__key__')!r}: {exc}; lost 1 sample")
                continue
            if len(pool) < _REPEAT_POOL:
                pool.append(raw)
            items.append(item)
            produced += 1
            if len(items) == self.batch_size:
                yield self._collate(items, 0, errors)
                items = []
                errors.clear()  # in place: the reader appends to this list
        # Top up to the quota with samples already read, so this rank's batch count stays exact.
        shortfall = quota - produced
        if shortfall and not pool:
            # Nothing of this worker's own range could be read: borrow repeats from the epoch's other shards
            # rather than fail, since one failing rank takes a whole torchrun job down.
            pool = self._borrow(pieces, min(shortfall, _REPEAT_POOL))
        if shortfall and not pool:
            names = sorted({self.records[p.shard].name for p in pieces})
            raise PixmixError(f"{self.shardset.folder}: rank {self.rank} worker {worker} read no usable sample "
                              f"from {', '.join(names)} nor any other shard of the epoch ({'; '.join(errors)})")
        for i in range(shortfall):
            items.append(self._process(pool[i % len(pool)])._replace(repeat=True))
            substituted += 1
            if len(items) == self.batch_size:
                yield self._collate(items, substituted, errors)
                items, substituted = [], 0
                errors.clear()
        assert not items, "a worker's quota is whole batches"

    def _borrow(self, pieces: list[Piece], wanted: int) -> list[_Raw]:
        """Up to ``wanted`` usable samples from the epoch's shards outside ``pieces`` (their errors are
        other workers' to report)."""
        own = {p.shard for p in pieces}
        others = [Piece(i, 0, r.samples, repeat=True) for i, r in enumerate(self.records) if i not in own]
        borrowed: list[_Raw] = []
        for raw in self._read(others, []):
            try:
                self._process(raw)
            except _Lost:
                continue
            borrowed.append(raw._replace(repeat=True))
            if len(borrowed) >= wanted:
                break
        return borrowed

    def _read(self, pieces: list[Piece], errors: list[str]) -> Iterator[_Raw]:
        for piece in pieces:
            record = self.records[piece.shard]
            shard_id = self.shard_ids[piece.shard]
            got = 0
            skipped: list[str] = []
            try:
                for sample in _read_range(self.shardset.path(record), piece.start, piece.stop, skipped):
                    for message in skipped:
                        self._report(errors, record.name, message)
                    skipped.clear()
                    yield _Raw(shard_id, piece.start + got, record.name, sample, piece.repeat)
                    got += 1
                for message in skipped:
                    self._report(errors, record.name, message)
                skipped.clear()
                if got < piece.stop - piece.start:
                    raise PixmixError(f"ends after sample {piece.start + got}, the manifest says {record.samples}")
            except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
                for message in skipped:
                    self._report(errors, record.name, message)
                lost = piece.stop - piece.start - got
                self._report(errors, record.name, f"{_message(exc)}; lost {lost} of its samples "
                                                  f"{piece.start}-{piece.stop - 1}")

    @staticmethod
    def _report(errors: list[str], shard: str, message: str) -> None:
        line = f"{shard}: {message}"
        log.warning("%s", line)
        errors.append(line)

    def _decode(self, raw: _Raw) -> tuple[torch.Tensor, int]:
        sample = raw.sample
        field_name = self.shardset.image_field
        label = _label(sample, self.shardset.label_field)
        if field_name not in sample:
            raise _Lost(f"no {field_name!r} field")
        if not 0 <= label < len(self.shardset.classes):
            raise _Lost(f"class index {label} is outside the manifest's {len(self.shardset.classes)} classes")
        image = _decode_image(bytes(sample[field_name]), field_name, f"{raw.name} sample {sample.get('__key__')}")
        if image.dim() != 3 or image.shape[0] != 3:
            raise _Lost(f"{field_name} decodes to {list(image.shape)}, not one 8-bit RGB image")
        return image, label

    def _process(self, raw: _Raw) -> _Item:
        image, label = self._decode(raw)
        key = str(raw.sample["__key__"])
        if self.mode == "views":
            if self.transform is not None:
                image = self.transform(image, generator_for(self.seed, self.epoch, raw.shard, raw.position))
            return _Item(image, label, key, raw.repeat, None, None)
        gen = generator_for(self.seed, self.epoch, raw.shard, raw.position)
        # The same draw order as PixMixTransform: train transform, picture index, picture transform, PixMix.
        image = self._train_transform(image, gen)
        if self.recipe.partners == "augmented":  # no mixing set: every partner is an augmented input
            params = sample_params(_pixmix_config(self.recipe), 1, gen)
            return _Item(image, label, key, raw.repeat, image, params)
        pictures = self._mixing_pictures()
        picture = pictures[int(torch.randint(len(pictures), (1,), generator=gen))]
        picture = self._mixing_transform(to_rgb(picture), gen)
        params = sample_params(_pixmix_config(self.recipe), 1, gen)
        return _Item(image, label, key, raw.repeat, to_uint8_tensor(picture), params)

    def _mixing_pictures(self) -> Sequence[Image.Image]:
        # Opened lazily, in each worker: only tar headers are read, and no file handle is inherited.
        if self._pictures is None:
            if isinstance(self.mixset, (str, os.PathLike)) and str(self.mixset).endswith(".npy"):
                from pixmix.data.readers import RandomImages

                # Outlier Exposure's 300K_random_images.npy: its reference crop + flip per (seed, epoch, index).
                self._pictures = RandomImages(self.mixset, seed=self.seed)
            elif isinstance(self.mixset, (str, os.PathLike)):
                from pixmix.data.shards.mixing_set import MixingShards

                # A remote mixing set reads with the shard set's remote options (retries, cache folder).
                options = None if isinstance(self.mixset, Location) else self.shardset.folder.options
                self._pictures = MixingShards(self.mixset, options=options)
            else:
                assert self.mixset is not None  # LoaderOptions refuses mode "online" without pictures
                self._pictures = self.mixset
        if hasattr(self._pictures, "set_epoch"):  # RandomImages: this epoch's crops and flips
            self._pictures.set_epoch(self.epoch)
        return self._pictures

    def _collate(self, items: list[_Item], substituted: int, errors: list[str]) -> Batch:
        sizes = {tuple(it.image.shape) for it in items}
        if len(sizes) > 1:
            shown = ", ".join(f"{s[1]}x{s[2]}" for s in sorted(sizes)[:4])
            raise PixmixError(
                f"{self.shardset.folder}: images of different sizes in one batch ({shown}): mode 'views' needs "
                "same-size images; use mode='online' with a mixset, or a transform such as recipe.test_transform()"
            )
        online = self.mode == "online"
        return Batch(
            images=torch.stack([it.image for it in items]),
            labels=torch.tensor([it.label for it in items], dtype=torch.int64),
            keys=[it.key for it in items],
            repeat=torch.tensor([it.repeat for it in items], dtype=torch.bool),
            mixing=torch.stack([it.mixing for it in items]) if online else None,  # type: ignore[misc]
            params=PixMixParams.cat([it.params for it in items]) if online else None,  # type: ignore[misc]
            substituted=substituted,
            errors=list(errors),
        )


# --- the loader ----------------------------------------------------------------------------------


@dataclass
class StreamStats:
    """What a :class:`ShardLoader` has delivered so far (over all epochs)."""

    samples: int = 0
    batches: int = 0
    substituted: int = 0
    errors: list[str] = field(default_factory=list)


def limit_worker_threads(worker_id: int) -> None:
    """A DataLoader worker's ``worker_init_fn``: one torch, OpenMP and BLAS thread (decoding is per sample), so
    that workers x threads stay within the usable CPUs that the trainer shares between them and the model."""
    limit_threads(1)


def default_rank_world() -> tuple[int, int]:
    """(rank, world size): explicit in nothing, so from :mod:`pixmix.utils.distributed` (the process
    group, torchrun's RANK/WORLD_SIZE, SLURM's SLURM_PROCID/SLURM_NTASKS, else (0, 1))."""
    return _rank_world()


class ShardLoader:
    """Batches of a shard set for one rank: ``for batch in loader`` then :func:`finish_batch`.

    The keyword arguments are the fields of :class:`LoaderOptions` (or use :meth:`from_options`);
    ``pin_memory`` (default: when CUDA is available) is the DataLoader's. ``mode="auto"``:
    ``"online"`` for a plain set with a ``mixset``, else ``"views"``. Call :meth:`set_epoch` before
    each epoch; pixmix sets read view ``epoch % views``. Evaluation: ``shuffle=False,
    drop_last=False`` (listed shard order; ``batch.repeat`` marks the padding).
    """

    def __init__(
        self,
        folder: str | Path | Location,
        *,
        batch_size: int,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        num_workers: int = 2,
        mode: str = "auto",
        mixset: str | Path | Sequence[Image.Image] | None = None,
        recipe: str | Recipe | None = None,
        transform: SeededTransform | None = None,
        drop_last: bool = True,
        shuffle: bool = True,
        shuffle_buffer: int | None = None,
        pin_memory: bool | None = None,
    ) -> None:
        options = LoaderOptions(
            batch_size=batch_size, seed=seed, rank=rank, world_size=world_size, num_workers=num_workers, mode=mode,
            mixset=mixset, recipe=recipe, transform=transform, drop_last=drop_last, shuffle=shuffle,
            shuffle_buffer=shuffle_buffer,
        )
        self._open(folder, options, pin_memory)

    @classmethod
    def from_options(cls, folder: str | Path | Location, options: LoaderOptions, *,
                     pin_memory: bool | None = None) -> ShardLoader:
        """The loader of ``folder`` with already validated options."""
        loader = cls.__new__(cls)
        loader._open(folder, options, pin_memory)
        return loader

    def _open(self, folder: str | Path | Location, options: LoaderOptions, pin_memory: bool | None) -> None:
        self.shardset = ShardSet.load(folder)
        self.stream = ShardStream(self.shardset, options)
        self.num_workers = options.num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.stats = StreamStats()

    @property
    def options(self) -> LoaderOptions:
        """The options in force: mode, rank and world size resolved."""
        return self.stream.options

    @property
    def epoch(self) -> int:
        return self.stream.epoch

    @property
    def mode(self) -> str:
        return self.stream.mode

    @property
    def recipe(self) -> Recipe:
        return self.stream.recipe

    def set_epoch(self, epoch: int, position: EpochPosition | None = None) -> None:
        """Plan ``epoch``; ``position``: resume it there (:meth:`ShardStream.resume`)."""
        self.stream.set_epoch(epoch, position)

    def position(self, step: int) -> EpochPosition:
        """The epoch's position after ``step`` batches on every rank."""
        return self.stream.position(step)

    def __len__(self) -> int:
        """Batches per rank this epoch: the same on every rank."""
        return len(self.stream)

    def __iter__(self) -> Iterator[Batch]:
        s = self.stream
        # The DataLoader draws a base seed for its workers; an explicit generator keeps that off the global RNG.
        gen = generator_for(s.seed, _LOADER_STREAM, s.epoch, s.rank)
        loader = torch.utils.data.DataLoader(
            s, batch_size=None, num_workers=self.num_workers, persistent_workers=False,
            pin_memory=self.pin_memory, generator=gen,
            worker_init_fn=limit_worker_threads if self.num_workers else None,
        )
        for batch in loader:
            self.stats.samples += len(batch)
            self.stats.batches += 1
            self.stats.substituted += batch.substituted
            self.stats.errors.extend(batch.errors)
            yield batch


__all__ = [
    "Batch",
    "EpochPosition",
    "LoaderOptions",
    "Piece",
    "ShardLoader",
    "ShardStream",
    "StreamStats",
    "auto_shuffle_buffer",
    "batches_per_rank",
    "consumed_positions",
    "default_rank_world",
    "epoch_assignment",
    "epoch_order",
    "finish_batch",
    "limit_worker_threads",
    "plan_positions",
    "shuffle_order",
    "worker_turns",
]
