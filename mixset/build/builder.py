"""``mixset build``: assemble a mixing set from its collections into WebDataset shards.

The build is a deterministic sequence: collections in manifest order, items in a fixed order within
each (:mod:`~mixset.build.plan`), samples appended to shards of ``shard_size``. Items may be produced
by several worker processes (:mod:`~mixset.build.produce`), but they are consumed in order, so the
shards do not depend on the number of workers. The shards are written by the resumable
:class:`~pixmix.data.shards.writer.ShardSetWriter`: after each shard a journal entry records how far
the sequence got; a re-run resumes after the last complete shard. The manifest is written last.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mixset.build.config import SOURCES, BuildConfig, BuildError
from mixset.build.plan import CollectionReport, Item, plan
from mixset.build.produce import Produced, produced
from pixmix.data.shards.mixing_set import MANIFEST_FORMAT, MANIFEST_VERSION
from pixmix.data.shards.tar import Sample, ShardInfo
from pixmix.data.shards.writer import ShardSetWriter, package_versions

SHARD_PREFIX = "mixset"  # shards/mixset-000000.tar
STATE = ".build"  # journal entries, config.json (the options), plan.json (items planned per collection)
PLAN = "plan.json"


@dataclass
class BuildSummary:
    """What a build wrote, resumed and dropped, and where its manifest and contact sheet are."""

    out: Path
    samples: int
    shards: int
    resumed_shards: int
    duplicates: int
    rejected: int
    reports: dict[str, CollectionReport]
    manifest: Path
    contact_sheet: Path


@dataclass
class Tally:
    """The running account of a build: per-collection reports, pixel hashes seen (de-duplication),
    failures and shards written, and what the journal entry of the shard being filled will record."""

    reports: dict[str, CollectionReport]
    seen: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    shards: list[ShardInfo] = field(default_factory=list)
    # The shard being filled: its samples' hashes, [samples, duplicates, rejected] per collection, failures.
    hashes: list[str] = field(default_factory=list)
    counts: dict[str, list[int]] = field(default_factory=dict)
    shard_failures: list[str] = field(default_factory=list)

    @classmethod
    def resumed(cls, reports: dict[str, CollectionReport], done: list[dict[str, Any]]) -> Tally:
        """The account after the journalled shards ``done`` of an interrupted build."""
        tally = cls(reports)
        for entry in done:
            tally.seen.update(entry["hashes"])
            for name, (s, d, r) in entry["counts"].items():
                reports[name].samples += s
                reports[name].duplicates += d
                reports[name].rejected += r
            for name, (status, error) in entry.get("statuses", {}).items():
                reports[name].status, reports[name].error = status, error
            tally.failures.extend(entry["failures"])
            tally.shards.append(ShardInfo(**entry["shard"]))
        return tally

    def take(self, name: str, result: Produced) -> Sample | None:
        """Count one produced item of collection ``name``; its sample, unless it failed or is a duplicate."""
        counts = self.counts.setdefault(name, [0, 0, 0])
        report = self.reports[name]
        if result.error:
            counts[2] += 1
            report.rejected += 1
            self.shard_failures.append(result.error)
            self.failures.append(result.error)
            return None
        if result.content_hash in self.seen:
            counts[1] += 1
            report.duplicates += 1
            return None
        self.seen.add(result.content_hash)
        self.hashes.append(result.content_hash)
        counts[0] += 1
        report.samples += 1
        assert result.image is not None
        meta = json.dumps(result.meta, sort_keys=True).encode()
        return Sample(result.key, {result.fmt: result.image, "json": meta})

    def roll_over(self, writer: ShardSetWriter, plan_end: int) -> None:
        """Write the filled shard with its journal entry: ``plan_end`` (the plan items consumed so far) and
        what a resumed build needs to carry on (hashes, counts, failures, FVis statuses)."""
        statuses = {n: [r.status, r.error] for n, r in self.reports.items() if r.kind == "fvis" and r.status != "ok"}
        entry = writer.roll_over({"plan_end": plan_end, "hashes": self.hashes, "counts": self.counts,
                                  "failures": self.shard_failures, "statuses": statuses})
        self.shards.append(ShardInfo(**entry["shard"]))
        self.hashes, self.counts, self.shard_failures = [], {}, []


def build(config: BuildConfig, log: Callable[[str], None] = print, progress: bool = True) -> BuildSummary:
    """Build (or resume) the mixing set of ``config``: plan, produce, write shards, then the contact sheet
    and, last, ``manifest.json``."""
    with ShardSetWriter(config.out, prefix=SHARD_PREFIX, state=STATE, checksum=True, error=BuildError,
                        lock="writer") as writer:  # one build per --out
        writer.check_options(config.identity(), what="a build")
        writer.store_options(config.identity())
        items, reports = plan(config, log)
        done = writer.resume()
        _check_plan(writer, reports, resumed=bool(done))
        tally = Tally.resumed(reports, done)
        cursor = done[-1]["plan_end"] if done else 0
        if done:
            log(f"resuming after {len(done)} complete shard(s), at item {cursor} of {len(items)}")
        _write_items(writer, items, cursor, config, tally, log, progress)
        if not any(s.samples for s in tally.shards) and tally.failures:  # never "built" an empty set
            raise BuildError(f"every one of the {len(tally.failures)} item(s) failed, first: {tally.failures[0]}; "
                             "nothing was built")
        # Bands in source-name order (as the manifest's "sources" are stored, so a sheet redrawn from it matches).
        totals = {src: sum(r.samples for r in tally.reports.values() if r.source == src)
                  for src in sorted(config.sources)}
        sheet = _contact_sheet(config.out, tally.shards, totals)
        manifest = writer.finish(_manifest(config, tally, sheet))
    return BuildSummary(config.out, sum(s.samples for s in tally.shards), len(tally.shards), len(done),
                        sum(r.duplicates for r in reports.values()), sum(r.rejected for r in reports.values()),
                        reports, manifest, sheet)


def _check_plan(writer: ShardSetWriter, reports: dict[str, CollectionReport], resumed: bool) -> None:
    """A resumed build must continue the same sequence: the planned items per collection must not have
    changed (say, a remote collection that was unreachable and now is not)."""
    planned = {name: r.planned for name, r in reports.items()}
    stored = writer.read_state(PLAN)
    if resumed and stored is not None and stored != planned:
        raise BuildError(
            f"{writer.root}: the collections changed since the interrupted build ({writer.state_path(PLAN)} differs "
            f"from {planned}); finish it with the same collections reachable, or use a new --out folder"
        )
    writer.write_state(PLAN, planned)


def _write_items(writer: ShardSetWriter, items: list[Item], cursor: int, config: BuildConfig, tally: Tally,
                 log: Callable[[str], None], progress: bool) -> None:
    """Produce the items from ``cursor`` on and write them, ``shard_size`` samples a shard."""
    from tqdm import tqdm

    bar = tqdm(total=len(items), initial=cursor, unit="img", desc="mixset build", disable=not progress)
    for position, result in enumerate(produced(items[cursor:], config), start=cursor):
        bar.update(1)
        name = items[position].collection.name
        _note_fallback(result, tally.reports[name], log)
        sample = tally.take(name, result)
        if sample is not None and writer.add(sample) == config.shard_size:
            tally.roll_over(writer, position + 1)
    if writer.pending:
        tally.roll_over(writer, len(items))
    bar.close()


def _note_fallback(result: Produced, report: CollectionReport, log: Callable[[str], None]) -> None:
    """An FVis rendered with random-init fallback weights (none could be loaded) degrades its collection."""
    weights = result.meta.get("origin", {}).get("weights", "") if result.meta.get("source") == "fvis" else ""
    if weights.startswith("random-init fallback") and report.status == "ok":
        report.status = "ok, fallback weights"
        report.error = weights
        log(f"WARNING: {report.name}: no pretrained weights could be loaded; rendering {weights}")


def _contact_sheet(out: Path, shards: list[ShardInfo], totals: dict[str, int] | None = None) -> Path:
    """One band per source; ``totals`` (samples per source, known from the build) label the bands "N samples,
    first K shown" and let reading stop once every band is full."""
    from mixset.contact_sheet import write_contact_sheet

    sheet = out / "contact-sheet.png"
    write_contact_sheet(out, shards, sheet, totals=totals)
    return sheet


def _manifest(config: BuildConfig, tally: Tally, sheet: Path) -> dict[str, Any]:
    reports = tally.reports
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "config": config.identity(),
        "packages": package_versions(),
        "samples": sum(s.samples for s in tally.shards),
        "shards": [asdict(s) for s in tally.shards],
        "collections": {name: asdict(r) for name, r in reports.items()},
        "sources": {src: sum(r.samples for r in reports.values() if r.source == src) for src in config.sources},
        "failures": tally.failures,
        "contact_sheet": sheet.name,
    }


__all__ = ["SOURCES", "BuildConfig", "BuildError", "BuildSummary", "build", "package_versions"]
