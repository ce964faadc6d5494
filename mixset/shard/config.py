"""The options of ``mixset shard`` (validated once) and where this process stands among the ranks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from mixset.shard.errors import ShardError
from mixset.shard.listing import DATASETS
from pixmix.data.remote import location, resolved
from pixmix.data.shards.writer import WriterOptions, check_name
from pixmix.utils.errors import PixmixError

if TYPE_CHECKING:
    from pixmix.augment.recipes import Recipe


@dataclass(frozen=True, kw_only=True)
class ShardConfig(WriterOptions):
    """Everything that determines the shards; validated once.

    From :class:`~pixmix.data.shards.writer.WriterOptions`: ``out``, ``seed``, ``limit`` (the first N images),
    ``quality``, ``workers`` and ``device`` (where PixMix views are mixed). ``workers``, ``rank``,
    ``world_size`` and ``device`` spread the work; none of them changes a byte of the output.
    """

    error: ClassVar[type[PixmixError]] = ShardError

    dataset: str
    data_dir: Path
    split: str = "train"
    corrupted: bool = False
    pixmix: bool = False
    mixset: Path | str | None = None  # a folder, or a URL (http(s)://, s3://, gs://, pipe:, file://)
    views: int = 1
    k: int | None = None  # None: the recipe's (ImageNet k=4, beta=4, severity=1; CIFAR k=4, beta=3, severity=3)
    beta: float | None = None
    severity: float | None = None
    ops: str = "all"
    partners: str = "both"  # "augmented": mix with augmented inputs only (no mixing set); "mixing": mixing set only
    crop_size: int | None = None  # PixMix views: None = the recipe's (224 / 32)
    image_size: int | None = None  # plain folder datasets: shorter side; None = 256 (CIFAR: native 32 px)
    image_format: str | None = None  # None: jpg for folder datasets, png for CIFAR
    quality: int = 95
    shard_samples: int | None = None
    shard_bytes: int = 256 << 20
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dataset not in DATASETS:
            raise ShardError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        check_name(self.split, "--split", ShardError, param="split")  # it names the shard files
        self._check_mixset_location()
        if self.pixmix and self.mixset is None and self.partners != "augmented":
            raise ShardError("--pixmix needs --mixset DIR (a mixing set built by `mixset build`), "
                             "unless --partners augmented")
        if self.pixmix and self.corrupted:
            raise ShardError("--pixmix and --corrupted do not go together: -C sets are for evaluation")
        if not self.pixmix and self.views != 1:
            raise ShardError(f"--views {self.views} needs --pixmix (plain shards hold each image once)", param="views")
        self._check_counts()
        if self.format not in ("jpg", "png", "webp"):
            raise ShardError(f"--format must be jpg, png or webp, got {self.format!r}", param="image_format")
        if self.pixmix:
            self.recipe()  # validates k, beta, severity, ops, crop size

    def _check_counts(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ShardError(f"--rank must be in [0, --world-size={self.world_size}), got {self.rank}", param="rank")
        for name in ("views", "world_size", "shard_bytes"):
            if getattr(self, name) < 1:
                raise ShardError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}", param=name)
        if self.shard_samples is not None and self.shard_samples < 1:
            raise ShardError(f"--shard-samples must be >= 1, got {self.shard_samples}", param="shard_samples")

    @property
    def is_cifar(self) -> bool:
        return self.dataset.startswith("cifar")

    @property
    def format(self) -> str:
        return self.image_format or ("png" if self.is_cifar else "jpg")

    @property
    def kind(self) -> str:
        return "pixmix" if self.pixmix else "corrupted" if self.corrupted else "plain"

    @property
    def stored_side(self) -> int | None:
        """Shorter side of plain folder images (CIFAR is stored as it is)."""
        return None if self.is_cifar else (self.image_size or 256)

    def recipe(self) -> Recipe:
        """The PixMix recipe of the dataset with this config's overrides (validated)."""
        from pixmix.augment.config import make_config
        from pixmix.augment.recipes import get_recipe

        base = get_recipe("cifar" if self.is_cifar else "imagenet")
        recipe = replace(base, k=base.k if self.k is None else self.k,
                         beta=base.beta if self.beta is None else self.beta,
                         severity=base.severity if self.severity is None else self.severity, ops=self.ops,
                         image_size=self.crop_size or base.image_size, partners=self.partners)
        try:
            make_config(recipe.k, recipe.beta, recipe.severity, recipe.ops, recipe.partners)
        except ValueError as exc:
            raise ShardError(f"PixMix options: {exc}") from exc
        return recipe

    def _check_mixset_location(self) -> None:
        """A URL ``--mixset`` stays a URL (read remotely); a local one becomes a path. Other schemes: one line."""
        if isinstance(self.mixset, str):
            try:
                loc = location(self.mixset)
            except PixmixError as exc:
                raise ShardError(f"--mixset {exc}", param="mixset") from None
            if loc.is_local:
                object.__setattr__(self, "mixset", Path(loc.path))

    def identity(self) -> dict[str, Any]:
        """The options that determine the output bytes (not workers, ranks or the output folder)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("out", "workers", "rank", "world_size", "device",
                                                                     "oversubscribe")}
        out.update(data_dir=str(Path(self.data_dir).resolve()),
                   mixset=resolved(self.mixset) if self.mixset else None, format=self.format, kind=self.kind)
        if self.pixmix:
            r = self.recipe()
            out["recipe"] = {"name": r.name, "crop_size": r.image_size, "k": r.k, "beta": r.beta,
                             "severity": r.severity, "ops": r.ops}
            if r.partners != "both":  # only when set, so existing shard sets keep their identity
                out["recipe"]["partners"] = r.partners
        return out

    def resolved_device(self) -> str:
        """Where views are mixed: ``auto`` is this process's GPU only for PixMix views (plain shards only
        decode and encode, on the CPU)."""
        from pixmix.utils.distributed import resolve_device

        return str(resolve_device(self.device, prefer_cuda=self.pixmix))


def distributed_defaults(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``--rank``/``--world-size``, defaulting to the process group's, torchrun's or SLURM's
    (:func:`pixmix.utils.distributed.rank_world`)."""
    from pixmix.utils.distributed import rank_world

    return rank_world(rank, world_size)


__all__ = ["ShardConfig", "distributed_defaults"]
