"""The plan of a build: every item of every collection, in a fixed order, and a report per collection.

Procedural and generated collections are planned from their counts; folders, archives and URL lists
are listed (remote ones downloaded and extracted into the build's ``.cache`` first); FVis units are
planned from the models' layers. An unreachable collection is reported (or, ``--strict``, fatal).
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixset.build.config import BuildConfig, BuildError
from mixset.sources.catalog import Collection, load_collections
from pixmix.data.images import IMAGE_SUFFIXES
from pixmix.data.shards.writer import check_name
from pixmix.utils.errors import PixmixError

# One image of a "urls" collection (or its list file) may be at most this large (a photo is a few MB).
MAX_IMAGE_BYTES = 64 << 20
FVIS_LICENCE = "CC0-1.0 (rendered by pixmix-data; see origin for the model and its weights)"


@dataclass
class CollectionReport:
    """What became of one collection: its status and how many items it planned, stored, dropped."""

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


def _collection_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


# --- collections -> items ----------------------------------------------------------------------------


def prepare_collection(c: Collection, config: BuildConfig, log: Callable[[str], None]) -> Iterable[Item]:
    """The ordered items of one collection; downloads and extracts remote ones into the build cache.

    Procedural and generated items are a lazy iterator (a count of 2**63-1 with ``--limit 2`` makes two)."""
    seed = _collection_seed(config.seed, c.name)
    if c.kind in ("procedural", "generator"):
        return (Item(c, i, None, seed) for i in range(c.count))
    cache = config.out / ".cache"
    if c.kind == "urls":
        return _url_items(c, config, cache, seed)
    if c.kind == "folder":
        src = Path(c.path or "")
        if src.is_dir():
            files = sorted(p for p in src.rglob("*") if p.is_file() and c.wants(p.relative_to(src).as_posix()))
            return [Item(c, i, str(p), seed, (("file", str(p)),)) for i, p in enumerate(files)]
        if not src.is_file():
            raise BuildError(f"{c.origin_file}: path {src} is neither a folder nor an archive file")
    return _archive_items(c, config, cache, seed, log)


def _url_items(c: Collection, config: BuildConfig, cache: Path, seed: int) -> list[Item]:
    """One item per URL, to be downloaded by the worker that produces it (into ``.cache/downloads``)."""
    folder = cache / "downloads" / c.name
    items = []
    for i, (url, sha) in enumerate(_url_entries(c, config, cache)):
        suffix = Path(url.split("?", 1)[0]).suffix.lower()
        name = f"{i:08d}{suffix if suffix in IMAGE_SUFFIXES else ''}"
        origin = (("url", url),) + ((("sha256", sha),) if sha else ())
        items.append(Item(c, i, str(folder / name), seed, origin))
    return items


def _url_entries(c: Collection, config: BuildConfig, cache: Path) -> list[tuple[str, str | None]]:
    """The (url, sha256) pairs of a "urls" collection: its [[images]], then the lines of its list file."""
    entries = list(c.urls)
    if not c.url_list:
        return entries
    if c.url_list.startswith(("http://", "https://")):
        from mixset.sources.fetch import download

        listing = download(c.url_list, cache / "downloads" / c.name / "url-list.txt", max_bytes=MAX_IMAGE_BYTES).path
    else:
        listing = Path(c.url_list)
        listing = listing if listing.is_absolute() else _manifest_folder(c, config) / listing
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError(f"{c.origin_file}: cannot read the URL list {c.url_list} ({exc})") from exc
    for number, line in enumerate(lines, start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        url, sha = fields[0], fields[1] if len(fields) > 1 else None
        if not url.startswith(("http://", "https://")) or len(fields) > 2:
            raise BuildError(f"{c.url_list}, line {number}: expected '<http(s) URL> [sha256]', got {line.strip()!r}")
        entries.append((url, sha))
    return entries


def _manifest_folder(c: Collection, config: BuildConfig) -> Path:
    """The folder of the manifest that declares ``c`` (its relative paths are relative to it)."""
    folders = [Path(config.manifests), *map(Path, config.extra_manifests)]
    return next((f for f in folders if (f / c.origin_file).is_file()), folders[0])


def _archive_items(c: Collection, config: BuildConfig, cache: Path, seed: int,
                   log: Callable[[str], None]) -> list[Item]:
    """The files of a folder archive or of the downloaded archives, extracted once into ``.cache/extracted``."""
    extracted = cache / "extracted" / c.name
    origins = [c.path or ""] if c.kind == "folder" else [a.url for a in c.artefacts]
    if not extracted.is_dir():
        archives = [Path(c.path or "")] if c.kind == "folder" else _download_artefacts(c, config, cache, log)
        _extract(c, archives, cache, extracted)
    files = sorted(p for p in extracted.rglob("*") if p.is_file())
    items = []
    for i, p in enumerate(files):
        part, member = p.relative_to(extracted).as_posix().split("/", 1)
        items.append(Item(c, i, str(p), seed, (("url", origins[int(part)]), ("member", member))))
    return items


def _download_artefacts(c: Collection, config: BuildConfig, cache: Path, log: Callable[[str], None]) -> list[Path]:
    """Download every artefact of an archive collection (checking sha256, and md5 when the manifest has it)."""
    from mixset.sources.fetch import download

    archives = []
    for art in c.artefacts:
        dest = _artefact_path(cache, c.name, art.filename, art.sha256 or art.md5)
        if art.md5 and not art.sha256 and dest.is_file() and _md5(dest) == art.md5:
            archives.append(dest)  # downloaded for another collection of the same archive
            continue
        failed = dest.with_name(dest.name + ".failed")  # this build's failed attempt at the same file
        if failed.is_file():
            raise BuildError(f"{failed.read_text(encoding='utf-8')} (not retried for {c.name}: the same file "
                             "failed for another collection of this build)")
        log(f"{c.name}: downloading {art.url}")
        try:
            result = download(art.url, dest, sha256=art.sha256, max_bytes=config.max_download_bytes)
        except Exception as exc:
            failed.parent.mkdir(parents=True, exist_ok=True)
            failed.write_text(" ".join(str(exc).split()), encoding="utf-8")
            raise
        if art.md5:
            digest = _md5(result.path)
            if digest != art.md5:
                result.path.unlink()
                raise BuildError(f"{art.url}: md5 {digest} does not match the manifest's {art.md5}")
        archives.append(result.path)
    return archives


def _artefact_path(cache: Path, collection: str, filename: str, checksum: str | None) -> Path:
    """Where an artefact is downloaded: one place per checksum, shared by every collection that names the
    same file (the paper's archive holds its fractals and its FVis: one download for both)."""
    return cache / "downloads" / (f"artefacts/{checksum}" if checksum else collection) / filename


def _extract(c: Collection, archives: list[Path], cache: Path, extracted: Path) -> None:
    """Extract the wanted members of ``archives`` (archive n into ``n/``), renamed into place when all are done."""
    from mixset.sources.archives import safe_extract

    staging = cache / "extracted" / (c.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for n, archive in enumerate(archives):
        safe_extract(archive, staging / str(n), include=c.wants)
    staging.replace(extracted)


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)  # the manifest's checksum for the paper's archive
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- the whole plan ----------------------------------------------------------------------------------


def _fvis_units(config: BuildConfig) -> list[tuple[Any, int]]:
    """Every unit of ``--fvis-models``, its checkpoints checked (one line, before anything downloads or renders)."""
    from mixset.sources.fvis import check_checkpoints, plan_units

    try:
        units = plan_units(config.fvis_models, activation=config.fvis_activation)
    except PixmixError as exc:  # an unknown model: fvis's parameter at fault is the build's fvis_models
        raise BuildError(f"--fvis-models: {exc}", param="fvis_models") from exc
    check_checkpoints(config.fvis_checkpoints, sorted({spec.model for spec, _ in units}))
    return units


def plan_fvis(config: BuildConfig, have: int = 0, units: list[tuple[Any, int]] | None = None) -> list[Item]:
    """The (model, layer, channel) units to render, evenly thinned across models and layers to ``--limit``
    (or, when ``have`` FVis came from an archive, to what ``--limit`` or the plan's size leaves). ``units``:
    :func:`_fvis_units` when the caller has them already."""
    units = _fvis_units(config) if units is None else units
    wanted = max(0, (len(units) if config.limit is None else config.limit) - have)
    if wanted < len(units):
        units = [units[i * len(units) // wanted] for i in range(wanted)]
    items = []
    for index, (spec, channel) in enumerate(units):
        c = Collection(name=f"fvis-{spec.model}", source="fvis", kind="fvis", licence=FVIS_LICENCE)
        origin = (("model", spec.model), ("layer", spec.layer), ("channel", str(channel)))
        items.append(Item(c, index, None, config.seed, origin))
    return items


def plan(config: BuildConfig, log: Callable[[str], None]) -> tuple[list[Item], dict[str, CollectionReport]]:
    """The items of every source in order (``--limit`` per source) and a report per collection."""
    for stale in (config.out / ".cache" / "downloads").glob("**/*.failed"):  # a new build tries every file again
        stale.unlink()
    # A bad --fvis-models or --fvis-checkpoint fails here, before any download.
    units = _fvis_units(config) if "fvis" in config.sources else []
    collections = load_collections(config.manifests, tuple(config.sources), extra=config.extra_manifests)
    for c in collections:  # a collection's name names its cache folders: nothing may lead outside --out
        check_name(c.name, f"{c.origin_file}: collection name", BuildError)
    reports: dict[str, CollectionReport] = {}
    items: list[Item] = []
    for source in config.sources:
        if source == "fvis":  # the paper's archive FVis first (when declared and reachable), then rendered ones;
            # --fvis-models asks for those models' units only (the archive's are of several networks)
            declared = [c for c in collections if c.source == "fvis"] if config.fvis_models is None else []
            archived = _plan_source(declared, config, reports, log)
            items.extend(archived)
            items.extend(_plan_fvis_reported(config, reports, units, have=len(archived)))
        else:
            chosen = [c for c in collections if c.source == source]
            items.extend(_plan_source(chosen, config, reports, log))
    if not items:
        raise BuildError("nothing to build: every collection of the chosen sources failed or is empty (see above)")
    return items, reports


def _plan_fvis_reported(config: BuildConfig, reports: dict[str, CollectionReport], units: list[tuple[Any, int]],
                        have: int = 0) -> list[Item]:
    items = plan_fvis(config, have, units)
    for item in items:
        c = item.collection
        reports.setdefault(c.name, CollectionReport(c.name, c.source, c.kind, c.licence)).planned += 1
    return items


def _plan_source(collections: list[Collection], config: BuildConfig, reports: dict[str, CollectionReport],
                 log: Callable[[str], None]) -> list[Item]:
    """The items of one source's collections, in order, at most ``--limit`` of them in all."""
    budget = config.limit
    items: list[Item] = []
    for c in collections:
        report = reports[c.name] = CollectionReport(c.name, c.source, c.kind, c.licence)
        if budget == 0:
            report.status = "skipped (limit reached)"
            continue
        try:
            found = list(itertools.islice(prepare_collection(c, config, log), budget))
        except Exception as exc:  # noqa: BLE001 - unreachable remote collections are reported
            _report_failure(report, c, exc, config, log)
            continue
        if budget is not None:
            budget -= len(found)
        report.planned = len(found)
        items.extend(found)
    return items


def _report_failure(report: CollectionReport, c: Collection, exc: Exception, config: BuildConfig,
                    log: Callable[[str], None]) -> None:
    report.status = "unreachable" if c.kind == "archive" else "failed"
    report.error = " ".join(str(exc).split())
    log(f"{c.name}: {report.status}: {report.error}")
    if config.strict:
        raise BuildError(f"collection {c.name} is {report.status} and --strict is set: {report.error}") from exc


__all__ = ["CollectionReport", "Item", "plan", "plan_fvis", "prepare_collection"]
