"""``mixset build``: assemble a mixing set from its collections into WebDataset shards.

The build is a deterministic sequence: collections in manifest order, items in a fixed order within
each, samples appended to shards of ``shard_size``. Items may be produced by several worker
processes, but they are consumed in order, so the shards do not depend on the number of workers.
After each shard a journal entry records how far the sequence got; a re-run resumes after the last
complete shard. The manifest is written last.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

from PIL import Image

from mixset.collections import DEFAULT_MANIFESTS, Collection, load_collections
from pixmix.mixset_reader import MANIFEST_FORMAT, MANIFEST_VERSION
from pixmix.shards import Sample, ShardInfo, file_sha256, to_bytes, write_shard

SOURCES = ("fractals", "fvis")
SHARD_NAME = "shards/mixset-{:06d}.tar"


@dataclass(frozen=True)
class BuildConfig:
    """Everything that determines a build's output; validated once."""

    out: Path
    sources: tuple[str, ...] = ("fractals",)
    seed: int = 0
    limit: int | None = None
    image_size: int = 256
    shard_size: int = 1000
    quality: int = 90
    photo_format: str = "jpg"
    strict: bool = False
    manifests: Path = DEFAULT_MANIFESTS
    workers: int = 1
    max_download_bytes: int = 4 << 30
    # Feature visualisations (source "fvis"): models (None: all of mixset.fvis.DEFAULT_LAYERS),
    # optimisation steps, render size, units per batch, weights and per-model local checkpoints.
    fvis_models: tuple[str, ...] | None = None
    fvis_steps: int = 512
    fvis_size: int = 128
    fvis_batch: int = 64
    fvis_weights: str = "default"
    fvis_checkpoints: tuple[tuple[str, str], ...] = ()
    device: str = "auto"

    def __post_init__(self) -> None:
        unknown = [s for s in self.sources if s not in SOURCES]
        if unknown or not self.sources:
            raise ValueError(f"--source must be one of {list(SOURCES)}, got {list(self.sources) or 'nothing'}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        if not 32 <= self.image_size <= 4096:
            raise ValueError(f"--image-size must be in [32, 4096], got {self.image_size}")
        if self.shard_size < 1:
            raise ValueError(f"--shard-size must be >= 1, got {self.shard_size}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"--quality must be in [1, 100], got {self.quality}")
        if self.photo_format not in ("jpg", "webp"):
            raise ValueError(f"--format must be jpg or webp, got {self.photo_format!r}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.fvis_steps < 1 or self.fvis_batch < 1 or not 16 <= self.fvis_size <= 1024:
            raise ValueError(
                f"--fvis-steps and --fvis-batch must be >= 1 and --fvis-size in [16, 1024], "
                f"got {self.fvis_steps}, {self.fvis_batch}, {self.fvis_size}"
            )
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"--device must be auto, cpu or cuda[:N], got {self.device!r}")

    def identity(self) -> dict[str, Any]:
        """The options that decide the bytes of the shards (workers and strictness do not)."""
        identity: dict[str, Any] = {
            "sources": list(self.sources), "seed": self.seed, "limit": self.limit, "image_size": self.image_size,
            "shard_size": self.shard_size, "quality": self.quality, "photo_format": self.photo_format,
        }
        if "fvis" in self.sources:
            identity["fvis"] = {"models": list(self.fvis_models) if self.fvis_models else None,
                                "steps": self.fvis_steps, "size": self.fvis_size, "weights": self.fvis_weights,
                                "checkpoints": dict(self.fvis_checkpoints)}
        return identity

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class CollectionReport:
    name: str
    source: str
    kind: str
    licence: str
    status: str = "ok"  # ok | unreachable | failed
    error: str = ""
    planned: int = 0
    samples: int = 0
    duplicates: int = 0
    rejected: int = 0


@dataclass(frozen=True)
class Item:
    """One planned item: produced in a worker, consumed in order."""

    collection: Collection
    index: int
    path: str | None  # a file for archive/folder collections
    seed: int
    origin: tuple[tuple[str, str], ...] = ()  # where the file came from: (("url", ...), ("member", ...))


@dataclass(frozen=True)
class Produced:
    key: str
    image: bytes | None
    fmt: str
    meta: dict[str, Any]
    content_hash: str
    error: str = ""


class BuildError(Exception):
    """A build cannot go on; the message is one line saying what to do."""


# --- items -------------------------------------------------------------------------------------------


def _collection_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


def _normalise(image: Image.Image, size: int) -> Image.Image:
    """RGB, shorter side ``size`` (aspect kept)."""
    image = image.convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    if scale != 1.0:
        image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    return image


def produce(item: Item, image_size: int, quality: int, photo_format: str) -> Produced:
    """Make one sample (in a worker process). Bad input becomes an error string, not an exception."""
    c = item.collection
    key = _key(item)
    meta = _base_meta(item)
    try:
        if c.kind == "procedural":
            from mixset.procedural import generate_fractal

            pixels, params, tries = generate_fractal(item.seed, item.index, size=image_size, kinds=c.generator_kinds)
            image = Image.fromarray(pixels)
            meta["origin"] = {"generator": "mixset.procedural", "seed": item.seed, "index": item.index,
                              "tries": tries, "params": params.to_json()}
        else:
            from mixset.archives import open_image

            assert item.path is not None
            with open_image(Path(item.path), min_side=image_size) as im:  # refuses non-images and bombs
                image = _normalise(im, image_size)
            meta["origin"] = dict(item.origin)
    except Exception as exc:  # noqa: BLE001 - one bad item must not stop the build; it is reported
        return Produced(key, None, "", meta, "", error=f"{key}: {exc}")
    return _encoded(key, image, photo_format, quality, meta)


def _key(item: Item) -> str:
    return f"{item.collection.name}-{item.index:08d}"


def _base_meta(item: Item) -> dict[str, Any]:
    c = item.collection
    return {"source": c.source, "collection": c.name, "licence": c.licence, "index": item.index}


def _encoded(key: str, image: Image.Image, fmt: str, quality: int, meta: dict[str, Any]) -> Produced:
    """Encode once; record size, format and sha256 in ``meta``; hash the pixels for de-duplication."""
    data = to_bytes(image, fmt, quality)
    meta.update(width=image.width, height=image.height, format=fmt, sha256=hashlib.sha256(data).hexdigest())
    content = hashlib.sha256(image.tobytes() + f"{image.size}".encode()).hexdigest()
    return Produced(key, data, fmt, meta, content)


def _produce_star(args: tuple[Item, int, int, str]) -> Produced:
    return produce(*args)


# --- collections -> items ----------------------------------------------------------------------------


def prepare_collection(c: Collection, config: BuildConfig, log: Callable[[str], None]) -> list[Item]:
    """The ordered items of one collection; downloads and extracts remote ones into the build cache."""
    seed = _collection_seed(config.seed, c.name)
    if c.kind == "procedural":
        return [Item(c, i, None, seed) for i in range(c.count)]
    from mixset.archives import safe_extract
    from mixset.fetch import download

    cache = config.out / ".cache"
    extracted = cache / "extracted" / c.name
    if c.kind == "folder":
        src = Path(c.path or "")
        if src.is_dir():
            files = sorted(p for p in src.rglob("*") if p.is_file() and c.wants(p.relative_to(src).as_posix()))
            return [Item(c, i, str(p), seed, (("file", str(p)),)) for i, p in enumerate(files)]
        if not src.is_file():
            raise BuildError(f"{c.origin_file}: path {src} is neither a folder nor an archive file")
    origins = [c.path or ""] if c.kind == "folder" else [a.url for a in c.artefacts]
    if not extracted.is_dir():
        if c.kind == "folder":
            archives = [Path(c.path or "")]
        else:
            archives = []
            for art in c.artefacts:
                dest = cache / "downloads" / c.name / art.filename
                log(f"{c.name}: downloading {art.url}")
                result = download(art.url, dest, sha256=art.sha256, max_bytes=config.max_download_bytes)
                if art.md5:
                    digest = _md5(result.path)
                    if digest != art.md5:
                        result.path.unlink()
                        raise BuildError(f"{art.url}: md5 {digest} does not match the manifest's {art.md5}")
                archives.append(result.path)
        staging = cache / "extracted" / (c.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for n, archive in enumerate(archives):
            safe_extract(archive, staging / str(n), include=c.wants)
        staging.replace(extracted)
    files = sorted(p for p in extracted.rglob("*") if p.is_file())
    items = []
    for i, p in enumerate(files):
        part, member = p.relative_to(extracted).as_posix().split("/", 1)
        items.append(Item(c, i, str(p), seed, (("url", origins[int(part)]), ("member", member))))
    return items


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)  # the manifest's checksum for the paper's archive
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


FVIS_LICENCE = "CC0-1.0 (rendered by pixmix-data; see origin for the model and its weights)"


def plan_fvis(config: BuildConfig) -> list[Item]:
    """Every (model, layer, channel) to render, evenly thinned to ``--limit`` across models and layers."""
    from mixset.fvis import plan_units

    units = plan_units(config.fvis_models)
    if config.limit is not None and config.limit < len(units):
        units = [units[i * len(units) // config.limit] for i in range(config.limit)]
    items = []
    for index, (spec, channel) in enumerate(units):
        c = Collection(name=f"fvis-{spec.model}", source="fvis", kind="fvis", licence=FVIS_LICENCE)
        items.append(Item(c, index, None, config.seed, (("model", spec.model), ("layer", spec.layer), ("channel", str(channel)))))
    return items


def plan(config: BuildConfig, log: Callable[[str], None]) -> tuple[list[Item], dict[str, CollectionReport]]:
    collections = load_collections(config.manifests, tuple(s for s in config.sources if s != "fvis"))
    reports: dict[str, CollectionReport] = {}
    items: list[Item] = []
    for source in config.sources:
        if source == "fvis":
            for item in plan_fvis(config):
                c = item.collection
                report = reports.setdefault(c.name, CollectionReport(c.name, c.source, c.kind, c.licence))
                report.planned += 1
                items.append(item)
            continue
        budget = config.limit
        for c in (c for c in collections if c.source == source):
            report = reports[c.name] = CollectionReport(c.name, c.source, c.kind, c.licence)
            if budget == 0:
                report.status = "skipped (limit reached)"
                continue
            try:
                found = prepare_collection(c, config, log)
            except Exception as exc:  # noqa: BLE001 - unreachable remote collections are reported
                report.status = "unreachable" if c.kind == "archive" else "failed"
                report.error = " ".join(str(exc).split())
                log(f"{c.name}: {report.status}: {report.error}")
                if config.strict:
                    raise BuildError(f"collection {c.name} is {report.status} and --strict is set: {report.error}") from exc
                continue
            if budget is not None:
                found = found[:budget]
                budget -= len(found)
            report.planned = len(found)
            items.extend(found)
    if not items:
        raise BuildError("nothing to build: every collection of the chosen sources failed or is empty (see above)")
    return items, reports


# --- journal (resume) ---------------------------------------------------------------------------------


@dataclass
class ShardEntry:
    shard: ShardInfo
    plan_end: int
    hashes: list[str]
    counts: dict[str, list[int]] = field(default_factory=dict)  # collection -> [samples, duplicates, rejected]
    failures: list[str] = field(default_factory=list)
    statuses: dict[str, list[str]] = field(default_factory=dict)  # collection -> [status, error] found while producing


def _journal_path(out: Path, index: int) -> Path:
    return out / ".build" / f"shard-{index:06d}.json"


def load_journal(out: Path) -> list[ShardEntry]:
    """Complete shards of an interrupted build, in order; anything after the first gap is removed."""
    entries: list[ShardEntry] = []
    index = 0
    while _journal_path(out, index).exists():
        raw = json.loads(_journal_path(out, index).read_text())
        info = ShardInfo(**raw["shard"])
        path = out / info.name
        if not path.exists() or file_sha256(path) != (info.sha256, info.bytes):
            break
        entries.append(ShardEntry(info, raw["plan_end"], raw["hashes"], raw["counts"], raw["failures"],
                                  raw.get("statuses", {})))
        index += 1
    # Whatever follows the last verified shard is stale: drop it so it is rewritten.
    for stale in sorted((out / ".build").glob("shard-*.json")):
        if int(stale.stem.split("-")[1]) >= index:
            stale.unlink()
    for stale in sorted((out / "shards").glob("mixset-*.tar*")) if (out / "shards").is_dir() else []:
        if stale.suffix == ".tmp" or int(stale.name.split("-")[1].split(".")[0]) >= index:
            stale.unlink()
    return entries


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


# --- the build ---------------------------------------------------------------------------------------


@dataclass
class BuildSummary:
    out: Path
    samples: int
    shards: int
    resumed_shards: int
    duplicates: int
    rejected: int
    reports: dict[str, CollectionReport]
    manifest: Path
    contact_sheet: Path


def _produced(items: list[Item], config: BuildConfig) -> Iterator[Produced]:
    """Produce items in order: FVis in batches on the chosen device, the rest in worker processes."""
    for is_fvis, group in groupby(items, key=lambda item: item.collection.kind == "fvis"):
        group_items = list(group)
        if is_fvis:
            yield from _produce_fvis(group_items, config)
            continue
        args = ((item, config.image_size, config.quality, config.photo_format) for item in group_items)
        if config.workers == 1:
            yield from map(_produce_star, args)
            continue
        # Not fork: torch (FVis) may already run threads in this process, which a fork can deadlock.
        ctx = multiprocessing.get_context("spawn" if sys.platform == "darwin" else "forkserver")
        with ctx.Pool(config.workers) as pool:
            yield from pool.imap(_produce_star, args, chunksize=4)


def _produce_fvis(items: list[Item], config: BuildConfig) -> Iterator[Produced]:
    from mixset.fvis import DEFAULT_LAYERS, fvis_images

    specs = {(spec.model, spec.layer): spec for layers in DEFAULT_LAYERS.values() for spec in layers}
    entries = [(specs[(o["model"], o["layer"])], int(o["channel"])) for o in (dict(i.origin) for i in items)]
    checkpoints = {model: Path(path) for model, path in config.fvis_checkpoints}
    rendered = fvis_images(plan=entries, size=config.fvis_size, steps=config.fvis_steps, seed=config.seed,
                           device=config.resolved_device(), batch=config.fvis_batch, weights=config.fvis_weights,
                           checkpoints=checkpoints)
    for item, (image, render_meta) in zip(items, rendered):
        meta = dict(_base_meta(item), origin=render_meta)
        yield _encoded(_key(item), _normalise(image, config.image_size), "png", config.quality, meta)


def build(config: BuildConfig, log: Callable[[str], None] = print, progress: bool = True) -> BuildSummary:
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    stored = out / ".build" / "config.json"
    if stored.exists() and json.loads(stored.read_text()) != config.identity():
        raise BuildError(f"{out} holds a build made with other options ({stored}); use a new --out folder or delete it")
    _write_json(stored, config.identity())

    items, reports = plan(config, log)
    done = load_journal(out)
    # A resumed build must continue the same sequence: the planned items per collection must not
    # have changed (say, a remote collection that was unreachable and now is not).
    planned = {name: r.planned for name, r in reports.items()}
    plan_file = out / ".build" / "plan.json"
    if done and plan_file.exists() and json.loads(plan_file.read_text()) != planned:
        raise BuildError(
            f"{out}: the collections changed since the interrupted build ({plan_file} differs from "
            f"{planned}); finish it with the same collections reachable, or use a new --out folder"
        )
    _write_json(plan_file, planned)
    seen: set[str] = {h for e in done for h in e.hashes}
    for e in done:
        for name, (s, d, r) in e.counts.items():
            reports[name].samples += s
            reports[name].duplicates += d
            reports[name].rejected += r
        for name, (status, error) in e.statuses.items():
            reports[name].status, reports[name].error = status, error
    failures = [f for e in done for f in e.failures]
    cursor = done[-1].plan_end if done else 0
    shards = [e.shard for e in done]
    if done:
        log(f"resuming after {len(done)} complete shard(s), at item {cursor} of {len(items)}")

    from tqdm import tqdm

    bar = tqdm(total=len(items), initial=cursor, unit="img", desc="mixset build", disable=not progress)
    pending: list[Sample] = []
    hashes: list[str] = []
    counts: dict[str, list[int]] = {}
    shard_failures: list[str] = []

    def flush(plan_end: int) -> None:
        index = len(shards)
        info = write_shard(out / SHARD_NAME.format(index), pending, root=out)
        statuses = {n: [r.status, r.error] for n, r in reports.items() if r.kind == "fvis" and r.status != "ok"}
        _write_json(_journal_path(out, index), {"shard": asdict(info), "plan_end": plan_end, "hashes": hashes,
                                                "counts": counts, "failures": shard_failures, "statuses": statuses})
        shards.append(info)
        pending.clear(), hashes.clear(), counts.clear(), shard_failures.clear()

    for position, result in enumerate(_produced(items[cursor:], config), start=cursor):
        bar.update(1)
        name = items[position].collection.name
        weights = result.meta.get("origin", {}).get("weights", "") if result.meta.get("source") == "fvis" else ""
        if weights.startswith("random-init fallback") and reports[name].status == "ok":
            reports[name].status = "ok, fallback weights"
            reports[name].error = weights
            log(f"WARNING: {name}: no pretrained weights could be loaded; rendering {weights}")
        tally = counts.setdefault(name, [0, 0, 0])
        if result.error:
            tally[2] += 1
            reports[name].rejected += 1
            shard_failures.append(result.error)
            failures.append(result.error)
        elif result.content_hash in seen:
            tally[1] += 1
            reports[name].duplicates += 1
        else:
            seen.add(result.content_hash)
            hashes.append(result.content_hash)
            assert result.image is not None
            meta = json.dumps(result.meta, sort_keys=True).encode()
            pending.append(Sample(result.key, {result.fmt: result.image, "json": meta}))
            tally[0] += 1
            reports[name].samples += 1
        if len(pending) == config.shard_size:
            flush(position + 1)
    if pending:
        flush(len(items))
    bar.close()

    sheet = out / "contact-sheet.png"
    from mixset.contact_sheet import write_contact_sheet

    write_contact_sheet(out, shards, sheet)
    manifest = out / "manifest.json"
    _write_json(manifest, {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "config": config.identity(),
        "packages": package_versions(),
        "samples": sum(s.samples for s in shards),
        "shards": [asdict(s) for s in shards],
        "collections": {name: asdict(r) for name, r in reports.items()},
        "sources": {src: sum(r.samples for r in reports.values() if r.source == src) for src in config.sources},
        "failures": failures,
        "contact_sheet": sheet.name,
    })
    return BuildSummary(out, sum(s.samples for s in shards), len(shards), len(done),
                        sum(r.duplicates for r in reports.values()), sum(r.rejected for r in reports.values()),
                        reports, manifest, sheet)


def package_versions() -> dict[str, str]:
    import importlib.metadata as md
    import platform

    versions = {"python": platform.python_version()}
    for name in ("pixmix-data", "numpy", "Pillow", "webdataset", "torch"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


__all__ = ["BuildConfig", "BuildError", "BuildSummary", "build"]
