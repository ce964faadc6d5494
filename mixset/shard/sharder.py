"""``mixset shard``: a dataset (optionally pre-generated PixMix views of it) as WebDataset shards.

Every shard is a pure function of the configuration and its shard id:
- the plan: for each view, a permutation of the items drawn from (seed, view) and cut into shards of
  ``shard_samples``; so shard order and the order within shards are shuffled from the seed;
- a sample: view ``v`` of item ``i`` draws its crop, flip, mixing picture and PixMix params from its
  own generator ``generator_for(seed, i, v)``, exactly as :class:`pixmix.data.wrappers.PixMixTransform`
  would with that generator.
Hence the same seed gives the same shards whatever the number of worker processes or ranks. Rank
``r`` of ``w`` writes the shards whose id is ``r`` mod ``w``; after each shard a journal entry
``.shard/shard-<id>.json`` records it, so re-running resumes; when every shard is journalled, any
rank (or ``mixset shard merge``) writes ``manifest.json``, last.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from mixset.shard.listing import DATASETS, Source, open_source
from pixmix.data.images import resize_shorter
from pixmix.utils.jsonfiles import write_json
from pixmix.data.shards.tar import Sample, ShardInfo, to_bytes, write_shard
from pixmix.data.shards.shard_set import SHARDS_FORMAT, SHARDS_VERSION

SHARD_NAME = "shards/{split}-{id:06d}.tar"
STATE = ".shard"
# Stream coordinate of the shuffles (kept apart from the per-item streams, whose first coordinate is an index).
_SHUFFLE = 1 << 40
PROBE_SAMPLES = 16  # samples encoded to estimate bytes per sample when only --shard-bytes is given
# At most this many samples per shard from --shard-bytes: small images (CIFAR: 50k in 125 MB) still get
# several shards per view, whose order the training reader shuffles every epoch.
MAX_SHARD_SAMPLES = 5_000
MIX_BATCH = 64  # views mixed together by the batched PixMix path
CHUNK = 256  # items made at a time: bounds memory (decoded views) whatever the shard size


class ShardError(Exception):
    """A problem with the options or the output folder, explained in one line."""


@dataclass(frozen=True)
class ShardConfig:
    """Everything that determines the shards; validated once."""

    dataset: str
    data_dir: Path
    out: Path
    split: str = "train"
    corrupted: bool = False
    pixmix: bool = False
    mixset: Path | None = None
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
    seed: int = 0
    limit: int | None = None
    # How the work is spread; none of these changes a byte of the output.
    workers: int = 1
    rank: int = 0
    world_size: int = 1
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ShardError(f"dataset must be one of {', '.join(DATASETS)}, got {self.dataset!r}")
        if self.pixmix and self.mixset is None and self.partners != "augmented":
            raise ShardError("--pixmix needs --mixset DIR (a mixing set built by `mixset build`), "
                             "unless --partners augmented")
        if self.pixmix and self.corrupted:
            raise ShardError("--pixmix and --corrupted do not go together: -C sets are for evaluation")
        if not self.pixmix and self.views != 1:
            raise ShardError(f"--views {self.views} needs --pixmix (plain shards hold each image once)")
        if not 0 <= self.rank < self.world_size:
            raise ShardError(f"--rank must be in [0, --world-size={self.world_size}), got {self.rank}")
        for name in ("views", "workers", "world_size", "quality", "shard_bytes"):
            if getattr(self, name) < 1:
                raise ShardError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.shard_samples is not None and self.shard_samples < 1:
            raise ShardError(f"--shard-samples must be >= 1, got {self.shard_samples}")
        if self.format not in ("jpg", "png", "webp"):
            raise ShardError(f"--format must be jpg, png or webp, got {self.format!r}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ShardError(f"--device must be auto, cpu or cuda[:N], got {self.device!r}")
        if self.pixmix:
            self.recipe()  # validates k, beta, severity, ops, crop size

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

    def recipe(self):  # -> pixmix.augment.recipes.Recipe
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

    def identity(self) -> dict[str, Any]:
        """The options that determine the output bytes (not workers, ranks or the output folder)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("out", "workers", "rank", "world_size", "device")}
        out.update(data_dir=str(Path(self.data_dir).resolve()),
                   mixset=str(Path(self.mixset).resolve()) if self.mixset else None, format=self.format, kind=self.kind)
        if self.pixmix:
            r = self.recipe()
            out["recipe"] = {"name": r.name, "crop_size": r.image_size, "k": r.k, "beta": r.beta,
                             "severity": r.severity, "ops": r.ops}
            if r.partners != "both":  # only when set, so existing shard sets keep their identity
                out["recipe"]["partners"] = r.partners
        return out

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if self.pixmix and torch.cuda.is_available() else "cpu"


def distributed_defaults(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """``--rank``/``--world-size``, defaulting to torchrun's (RANK/WORLD_SIZE) or SLURM's environment."""
    from pixmix.data.loader import default_rank_world

    env_rank, env_world = default_rank_world()
    return (env_rank if rank is None else rank), (env_world if world_size is None else world_size)


# --- the plan ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardTask:
    """One shard to write: its id, view and the items it holds, in order."""

    id: int
    view: int
    items: tuple[int, ...]


def plan_shards(n_items: int, views: int, per_shard: int, seed: int) -> list[ShardTask]:
    """Shards of every view: a permutation of the items per view, cut into runs of ``per_shard``."""
    tasks: list[ShardTask] = []
    from pixmix.utils.seeding import derive_seed

    for view in range(views):
        order = np.random.default_rng(derive_seed(seed, _SHUFFLE, view)).permutation(n_items)
        for start in range(0, n_items, per_shard):
            tasks.append(ShardTask(len(tasks), view, tuple(int(i) for i in order[start:start + per_shard])))
    return tasks


# --- making samples ----------------------------------------------------------------------------------


@dataclass
class Maker:
    """Makes the samples of a shard. One per process; holds the source and, for views, the mixing set."""

    config: ShardConfig
    source: Source
    device: str = "cpu"
    threads: int = 1
    _mixing: Any = field(default=None, repr=False)

    def samples(self, task: ShardTask, failures: list[str]) -> Iterator[Sample]:
        """The samples of ``task`` in order, made a chunk at a time (memory stays bounded for
        shards of any size); a line per item that could not be made is appended to ``failures``."""
        with ThreadPoolExecutor(self.threads) if self.threads > 1 else _Serial() as pool:
            for start in range(0, len(task.items), CHUNK):
                items = task.items[start:start + CHUNK]
                made = pool.map(self._plain, items) if not self.config.pixmix else self._views(items, task.view, pool)
                for m in made:
                    if isinstance(m, str):
                        failures.append(m)
                    else:
                        yield m

    def all_samples(self, task: ShardTask) -> tuple[list[Sample], list[str]]:
        failures: list[str] = []
        return list(self.samples(task, failures)), failures

    # plain: the image resized (folders) or as it is (CIFAR), encoded once
    def _plain(self, index: int) -> Sample | str:
        try:
            side = self.config.stored_side
            image = self.source.load(index, min_side=side)
            if side is not None:
                image = resize_shorter(image, side)
        except Exception as exc:  # noqa: BLE001 - a bad file is reported, the shard goes on
            return f"{self._origin(index)}: {exc}"
        return self._encode(index, 0, image, {})

    # views: prepare each view (decode, crop, flip, mixing picture, params), mix in batches, encode
    def _views(self, items: Sequence[int], view: int, pool: Any) -> list[Sample | str]:
        import torch

        from pixmix.augment.params import PixMixParams

        prepared = list(pool.map(lambda i: self._prepare(i, view), items))
        ok = [p for p in prepared if not isinstance(p, str)]
        mixed: list[Any] = []
        config = self._pixmix_config
        for start in range(0, len(ok), MIX_BATCH):
            chunk = ok[start:start + MIX_BATCH]
            images = torch.stack([c[1] for c in chunk])
            pictures = torch.stack([c[2] for c in chunk])
            params = PixMixParams.cat([c[3] for c in chunk])
            mixed.extend(mix_views(images, pictures, params, config, self.device))
        by_index = {c[0]: (m, c[4]) for c, m in zip(ok, mixed, strict=True)}

        def encode(item: int | str) -> Sample | str:
            if isinstance(item, str):
                return item
            pixels, meta = by_index[item]
            from PIL import Image

            return self._encode(item, view, Image.fromarray(pixels.permute(1, 2, 0).numpy()), meta)

        return list(pool.map(encode, [p if isinstance(p, str) else p[0] for p in prepared]))

    def _prepare(self, index: int, view: int) -> tuple[int, Any, Any, Any, dict] | str:
        import torch

        from pixmix.augment.params import sample_params
        from pixmix.utils.seeding import derive_seed
        from pixmix.augment.transforms import to_uint8_tensor

        recipe = self._recipe
        seed = derive_seed(self.config.seed, index, view)
        gen = torch.Generator().manual_seed(seed)
        try:
            image = self.source.load(index)
            # Same draws, in the same order, as pixmix.data.wrappers.PixMixTransform with this generator.
            image = self._train_transform(image, gen)
            if recipe.partners == "augmented":  # no mixing set: the partner is always an augmented input
                picture_index, picture = None, image
            else:
                mixing = self.mixing_set()
                picture_index = int(torch.randint(len(mixing), (1,), generator=gen))
                picture = self._mixing_transform(mixing[picture_index], gen)
            params = sample_params(self._pixmix_config, 1, gen)
        except Exception as exc:  # noqa: BLE001
            return f"{self._origin(index)}: {exc}"
        return index, to_uint8_tensor(image), to_uint8_tensor(picture), params, {
            "seed": seed, "mixing_picture": picture_index}

    # Built once per maker rather than per item: the recipe (validated options) and what it derives.
    @cached_property
    def _recipe(self) -> Any:
        return self.config.recipe()

    @cached_property
    def _train_transform(self) -> Any:
        return self._recipe.train_transform()

    @cached_property
    def _mixing_transform(self) -> Any:
        return self._recipe.mixing_transform()

    @cached_property
    def _pixmix_config(self) -> Any:
        return self._recipe.pixmix().config

    def mixing_set(self) -> Any:
        if self._mixing is None:
            from pixmix.data.shards.mixing_set import MixingShards

            self._mixing = MixingShards(self.config.mixset)
        return self._mixing

    def _origin(self, index: int) -> str:
        o = self.source.origin(index)
        return o.get("file") or f"{self.source.dataset}/{self.source.split}[{index}]"

    def _encode(self, index: int, view: int, image: Any, extra: dict[str, Any]) -> Sample:
        import hashlib

        c = self.config
        data = to_bytes(image, c.format, c.quality)
        label = int(self.source.labels[index])
        meta = {"dataset": c.dataset, "split": self.source.split, "index": index, "view": view, "label": label,
                "class": self.source.classes[label], **self.source.origin(index), **extra,
                "width": image.width, "height": image.height, "format": c.format,
                "sha256": hashlib.sha256(data).hexdigest()}
        key = f"{index:09d}" if not c.pixmix else f"{index:09d}_v{view}"
        return Sample(key, {c.format: data, "cls": str(label).encode(), "json": json.dumps(meta, sort_keys=True).encode()})


class _Serial:
    """A stand-in for an executor that maps in the calling thread."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        return map(fn, items)


def mix_views(images: Any, pictures: Any, params: Any, config: Any, device: str) -> list[Any]:
    """PixMix uint8 ``[B, 3, H, W]`` batches with the batched path on ``device``; uint8 CPU images back."""
    import torch

    from pixmix.augment.pixmix import apply_batch

    if device != "cpu":
        images, pictures = images.to(device, non_blocking=True), pictures.to(device, non_blocking=True)
    out = apply_batch(images, pictures, params, config)
    # Round to the nearest level, as an 8-bit encoder of the float image would.
    quantised = out.mul_(255).round_().clamp_(0, 255).to(torch.int16).to(torch.uint8)
    return list(quantised.cpu())


# --- journal, resume and merge ------------------------------------------------------------------------


def _journal(out: Path, shard_id: int) -> Path:
    return out / STATE / f"shard-{shard_id:06d}.json"


def _wait_for(path: Path, what: str, log: Callable[[str], None], timeout: float = 3600.0) -> None:
    log(f"waiting for {what}")
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise ShardError(f"gave up after {timeout:.0f} s waiting for {what}; start rank 0 (or pass --shard-samples)")
        time.sleep(1.0)


def _items_digest(items: Sequence[int]) -> str:
    import hashlib

    return hashlib.sha256(np.asarray(items, dtype=np.int64).tobytes()).hexdigest()[:16]


def _done(out: Path, shard_id: int, task: ShardTask | None = None) -> dict[str, Any] | None:
    """The journal entry of a complete shard, or None (a shard without one, of the wrong size, or of other
    items than ``task``'s, is redone)."""
    path = _journal(out, shard_id)
    if not path.exists():
        return None
    entry = json.loads(path.read_text())
    if task is not None and entry.get("items") != _items_digest(task.items):
        return None
    shard = out / entry["shard"]["name"]
    if not shard.exists() or shard.stat().st_size != entry["shard"]["bytes"]:
        return None
    return entry


@dataclass
class ShardSummary:
    out: Path
    rank: int
    world_size: int
    shards_total: int
    shards_written: int
    shards_resumed: int
    samples_written: int
    failures: list[str]
    seconds: float
    manifest: Path | None  # None until every rank has finished


def shard(config: ShardConfig, log: Callable[[str], None] = print, progress: bool = True) -> ShardSummary:
    """Write this rank's shards (resuming), then the manifest if every shard of the plan is done."""
    started = time.perf_counter()
    out = config.out
    source = open_source(config.dataset, config.data_dir, config.split, config.corrupted).limit(config.limit)
    state = out / STATE / "config.json"
    identity = config.identity()
    if not state.exists() and config.world_size > 1 and config.rank > 0 and config.shard_samples is None:
        # Rank 0 alone measures the shard size (another machine's encoder could round differently).
        _wait_for(state, f"rank 0 to write {state}", log)
    if state.exists():
        stored = json.loads(state.read_text())
        per_shard = stored.pop("shard_samples_resolved", None)
        if stored != identity:
            raise ShardError(f"{out} holds shards made with other options ({state}); use a new --out or delete it")
    else:
        per_shard = None
    if per_shard is None:
        per_shard = config.shard_samples or _probe_shard_samples(config, source)
    write_json(state, {**identity, "shard_samples_resolved": per_shard})

    tasks = plan_shards(len(source), config.views, per_shard, config.seed)
    plan = {"shards": len(tasks), "items": len(source), "per_shard": per_shard, "classes": list(source.classes),
            "listing": source.digest()}
    plan_path = out / STATE / "plan.json"
    if plan_path.exists():
        before = json.loads(plan_path.read_text())
        changed = [k for k in plan if before.get(k) != plan[k]]
        if changed:
            raise ShardError(f"{config.data_dir} changed since {out} was started ({', '.join(changed)} differ from "
                             f"{plan_path}): shards of two listings would mix; use a new --out or delete it")
    write_json(plan_path, plan)
    mine = [t for t in tasks if t.id % config.world_size == config.rank]
    todo = [t for t in mine if _done(out, t.id, t) is None]
    for t in todo:  # a partial .tmp of one of our shards is stale (other ranks' shards are not ours to touch)
        tmp = out / (SHARD_NAME.format(split=source.split, id=t.id) + ".tmp")
        tmp.unlink(missing_ok=True)
    log(f"rank {config.rank}/{config.world_size}: {len(mine)} of {len(tasks)} shard(s), {per_shard} samples each; "
        f"{len(mine) - len(todo)} already complete")

    from tqdm import tqdm

    bar = tqdm(total=sum(len(t.items) for t in todo), unit="img", desc=f"mixset shard {source.split}",
               disable=not progress)
    written, failures = 0, []
    for entry in _run(todo, config, source, out):
        write_json(_journal(out, entry["id"]), entry)
        bar.update(entry["planned"])
        written += entry["shard"]["samples"]
        failures.extend(entry["failures"])
        for line in entry["failures"]:
            log(f"skipped: {line}")
    bar.close()
    seconds = time.perf_counter() - started
    write_json(out / STATE / f"rank-{config.rank:05d}-of-{config.world_size:05d}.json", {
        "rank": config.rank, "world_size": config.world_size, "shards": [t.id for t in mine],
        "written": len(todo), "samples_written": written, "seconds": round(seconds, 3), "failures": failures})
    manifest = merge(out, missing_ok=True)
    return ShardSummary(out, config.rank, config.world_size, len(tasks), len(todo), len(mine) - len(todo), written,
                        failures, seconds, manifest)


def _probe_shard_samples(config: ShardConfig, source: Source) -> int:
    """Samples per shard for ``shard_bytes``, from the encoded size of the first samples of the plan.

    Always measured on the CPU in this process, so every rank and every resumed run gets the same number.
    """
    probe = plan_shards(len(source), 1, min(PROBE_SAMPLES, len(source)), config.seed)[0]
    samples, _ = Maker(config, source, device="cpu").all_samples(probe)
    if not samples:
        raise ShardError(f"none of the first {len(probe.items)} items of {config.data_dir} could be read; "
                         "check --data-dir (see the errors above)")
    mean = sum(sum(len(v) for v in s.fields.values()) + 1536 for s in samples) / len(samples)  # + tar headers
    return max(1, min(len(source), MAX_SHARD_SAMPLES, int(config.shard_bytes // mean)))


_WORKER: Maker | None = None


def _init_worker(config: ShardConfig, source: Source) -> None:
    global _WORKER
    import torch

    torch.set_num_threads(1)  # one process per core
    _WORKER = Maker(config, source, device="cpu")


def _write_task(task: ShardTask, out: Path, split: str) -> dict[str, Any]:
    assert _WORKER is not None
    return _write_one(_WORKER, task, out, split)


def _write_one(maker: Maker, task: ShardTask, out: Path, split: str) -> dict[str, Any]:
    failures: list[str] = []
    info: ShardInfo = write_shard(out / SHARD_NAME.format(split=split, id=task.id), maker.samples(task, failures),
                                  root=out)
    return {"id": task.id, "view": task.view, "planned": len(task.items), "items": _items_digest(task.items),
            "shard": asdict(info), "failures": failures}


def _run(todo: Sequence[ShardTask], config: ShardConfig, source: Source, out: Path) -> Iterator[dict[str, Any]]:
    """Write the shards of ``todo``: whole shards per worker process on the CPU; on a GPU, one process
    mixes while ``workers`` threads decode and encode (Pillow releases the GIL for both)."""
    device = config.resolved_device()
    if device != "cpu" or config.workers == 1:
        maker = Maker(config, source, device=device, threads=config.workers)
        for task in todo:
            yield _write_one(maker, task, out, source.split)
        return
    # Not fork: torch may already run threads in this process, which a fork can deadlock.
    ctx = multiprocessing.get_context("spawn" if sys.platform == "darwin" else "forkserver")
    with ctx.Pool(config.workers, initializer=_init_worker, initargs=(config, source)) as pool:
        yield from pool.imap_unordered(_write_star, [(t, out, source.split) for t in todo])


def _write_star(args: tuple[ShardTask, Path, str]) -> dict[str, Any]:
    return _write_task(*args)


def merge(out: Path, missing_ok: bool = False) -> Path | None:
    """Write ``manifest.json`` from the journal of every shard of the plan (the last step, on any rank).

    Returns None (``missing_ok``) or raises ShardError naming the missing shards while some are not done.
    """
    from mixset.build.builder import package_versions

    try:
        stored = json.loads((out / STATE / "config.json").read_text())
        plan = json.loads((out / STATE / "plan.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ShardError(f"{out}: no `mixset shard` state in {out / STATE} ({exc}); run mixset shard first") from exc
    entries, missing = [], []
    for shard_id in range(plan["shards"]):
        entry = _done(out, shard_id)
        (missing.append(shard_id) if entry is None else entries.append(entry))
    if missing:
        if missing_ok:
            return None
        raise ShardError(f"{out}: {len(missing)} of {plan['shards']} shard(s) not written yet (first: "
                         f"{missing[:5]}); run the remaining ranks (or the command again) before merging")
    stored.pop("shard_samples_resolved", None)
    from mixset.contact_sheet import write_contact_sheet

    sheet = out / "contact-sheet.png"
    by = "corruption" if stored["kind"] == "corrupted" else "view"
    # The first shard of each view is enough (shards are shuffled); -C shards mix all corruptions.
    first: dict[int, dict[str, Any]] = {}
    for e in entries:
        first.setdefault(e["view"], e)
    chosen = entries if by == "corruption" else list(first.values())
    write_contact_sheet(out, [ShardInfo(**e["shard"]) for e in chosen], sheet, group=lambda meta: f"{by} {meta[by]}",
                        groups=15 if by == "corruption" else stored["views"])
    manifest = {
        "format": SHARDS_FORMAT,
        "version": SHARDS_VERSION,
        "kind": stored["kind"],
        "views": stored["views"],
        "classes": plan["classes"],
        "image_field": stored["format"],
        "config": stored,
        "items": plan["items"],
        "samples": sum(e["shard"]["samples"] for e in entries),
        "shards": [dict(e["shard"], view=e["view"]) for e in entries],
        "failures": [f for e in entries for f in e["failures"]],
        "contact_sheet": sheet.name,
        "packages": package_versions(),
    }
    path = out / "manifest.json"
    write_json(path, manifest)
    return path


__all__ = ["ShardConfig", "ShardError", "ShardSummary", "ShardTask", "distributed_defaults", "merge", "plan_shards",
           "shard"]
