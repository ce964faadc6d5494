"""The datasets ``mixset shard`` reads, as compact, picklable lists of items in a fixed order.

ImageNet and any ImageFolder tree are listed once (sorted class folders, sorted files); CIFAR and
CIFAR-C come from their python batches and ``.npy`` files. A source is sent once to each worker
process, so it holds paths as relative strings and labels as one array rather than an object per item.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mixset.shard.errors import ShardError
from pixmix.data.benchmarks import CORRUPTIONS
from pixmix.data.readers import CIFAR, CIFARCorrupted, ClassFolders

DATASETS = ("imagenet", "imagefolder", "cifar10", "cifar100")


@dataclass
class Source:
    """Items ``0..len-1``: a label and a way to load the image of each."""

    dataset: str
    split: str
    classes: tuple[str, ...]
    labels: np.ndarray  # int64 [N]
    root: Path | None = None  # folder sources: paths are relative to it
    paths: list[str] = field(default_factory=list)
    data_dir: Path | None = None  # array sources: reopened (memory-mapped) in each process, never pickled
    corrupted: bool = False
    _blocks: list[Any] | None = field(default=None, repr=False)  # (data, corruption, severity) per block
    _offsets: np.ndarray | None = field(default=None, repr=False)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_blocks"] = state["_offsets"] = None
        return state

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def is_folder(self) -> bool:
        return self.root is not None

    def limit(self, n: int | None) -> Source:
        """The first ``n`` items (for quick runs)."""
        if n is None or n >= len(self):
            return self
        return Source(self.dataset, self.split, self.classes, self.labels[:n], self.root, self.paths[:n],
                      self.data_dir, self.corrupted)

    def digest(self) -> str:
        """A hash of the listing (files or array sizes, and labels): a changed dataset changes it."""
        import hashlib

        h = hashlib.sha256(f"{self.dataset}/{self.split}/{len(self)}/{self.corrupted}".encode())
        h.update("\n".join(self.paths).encode())
        h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        return h.hexdigest()[:16]

    def origin(self, index: int) -> dict[str, Any]:
        """Where item ``index`` comes from, for its json."""
        if self.is_folder:
            return {"file": self.paths[index]}
        block, row = self._locate(index)
        data, corruption, severity = self.blocks()[block]
        out: dict[str, Any] = {"row": row}
        if corruption is not None:
            out.update(corruption=corruption, severity=severity)
        return out

    def load(self, index: int, min_side: int | None = None) -> Image.Image:
        """The RGB image of item ``index`` (files are checked as untrusted: see pixmix.data.images.open_image)."""
        if self.is_folder:
            from pixmix.data.images import open_image, to_rgb

            assert self.root is not None
            with open_image(self.root / self.paths[index], min_side=min_side) as im:
                return to_rgb(im)  # 16-bit and other modes scaled to 8 bits, not clipped
        block, row = self._locate(index)
        return Image.fromarray(np.ascontiguousarray(self.blocks()[block][0].images[row]))

    def blocks(self) -> list[Any]:
        if self._blocks is None:
            assert self.data_dir is not None
            self._blocks = _array_blocks(self.dataset, self.data_dir, self.split, self.corrupted)
            self._offsets = np.cumsum([0] + [len(b[0]) for b in self._blocks[:-1]])
        return self._blocks

    def _locate(self, index: int) -> tuple[int, int]:
        self.blocks()
        assert self._offsets is not None
        block = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return block, index - int(self._offsets[block])


def open_source(dataset: str, data_dir: Path, split: str, corrupted: bool = False) -> Source:
    """List a dataset. ``split``: train/val for ImageNet, train/test for CIFAR, any label for ImageFolder."""
    data_dir = Path(data_dir)
    if dataset in ("imagenet", "imagefolder"):
        if corrupted:
            raise ShardError("--corrupted applies to cifar10/cifar100 only (ImageNet-C is a folder tree: "
                             "shard each corruption/severity folder with `mixset shard imagefolder`)")
        return _folder_source(dataset, data_dir, split)
    if dataset in ("cifar10", "cifar100"):
        return _corrupted_source(dataset, data_dir) if corrupted else _cifar_source(dataset, data_dir, split)
    raise ShardError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")


def _folder_source(dataset: str, data_dir: Path, split: str) -> Source:
    if dataset == "imagenet":
        if split not in ("train", "val"):
            raise ShardError(f"--split for imagenet must be train or val, got {split!r}", param="split")
        root = data_dir / split
        if not root.is_dir():
            raise ShardError(f"{root} does not exist: --data-dir must hold ImageNet's train/ and val/ "
                             "folders of <wnid>/*.JPEG", param="data_dir")
        # Class indices are the sorted wnids of train/ (the standard mapping), so a val/ tree that
        # lacks some classes still gets the right labels.
        train = data_dir / "train"
        classes = sorted(p.name for p in (train if train.is_dir() else root).iterdir() if p.is_dir())
    else:
        root = data_dir
        classes = None  # the folder's own sorted class folders
    listing = ClassFolders(root)
    if classes is None:
        classes = listing.classes
    index = {name: i for i, name in enumerate(classes)}
    unknown = sorted(set(listing.classes) - set(index))
    if unknown:
        raise ShardError(f"{root}: class folder(s) {', '.join(unknown[:3])} are not in {data_dir / 'train'}; "
                         "use the train/ wnids for val/ (or shard it with `mixset shard imagefolder`)")
    labels = np.array([index[listing.classes[item.label]] for item in listing.items], dtype=np.int64)
    paths = [str(item.path.relative_to(root)) for item in listing.items]
    return Source(dataset, split, tuple(classes), labels, root=root, paths=paths)


def _cifar_source(dataset: str, data_dir: Path, split: str) -> Source:
    if split not in ("train", "test"):
        raise ShardError(f"--split for {dataset} must be train or test, got {split!r}", param="split")
    return _array_source(dataset, data_dir, split, corrupted=False)


def _corrupted_source(dataset: str, data_dir: Path) -> Source:
    return _array_source(dataset, data_dir, "corrupted", corrupted=True)


def _array_source(dataset: str, data_dir: Path, split: str, corrupted: bool) -> Source:
    blocks = _array_blocks(dataset, data_dir, split, corrupted)
    classes = tuple(str(i) for i in range(10 if dataset == "cifar10" else 100))
    labels = np.concatenate([b[0].labels for b in blocks]).astype(np.int64)
    source = Source(dataset, split, classes, labels, data_dir=data_dir, corrupted=corrupted)
    source._blocks = blocks
    source._offsets = np.cumsum([0] + [len(b[0]) for b in blocks[:-1]])
    return source


def _array_blocks(dataset: str, data_dir: Path, split: str, corrupted: bool) -> list[Any]:
    """``(data, corruption, severity)`` blocks: one for CIFAR, 15 corruptions x 5 severities for CIFAR-C."""
    if not corrupted:
        return [(CIFAR(data_dir, dataset, train=split == "train"), None, None)]
    return [(CIFARCorrupted(data_dir, dataset, c, s), c, s) for c in CORRUPTIONS for s in range(1, 6)]
