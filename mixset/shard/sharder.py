"""``mixset shard``: a dataset (optionally pre-generated PixMix views of it) as WebDataset shards.

Every shard is a pure function of the configuration and its shard id: the plan
(:mod:`~mixset.shard.plan`) says which items, in which order; :mod:`~mixset.shard.maker` makes each
sample from its own generator. Hence the same seed gives the same shards whatever the number of worker
processes or ranks. Rank ``r`` of ``w`` writes the shards whose id is ``r`` mod ``w`` through the
resumable :class:`~pixmix.data.shards.writer.ShardSetWriter`: after each shard a journal entry
``.shard/shard-<id>.json`` records it, so re-running resumes; when every shard is journalled, any rank
(or ``mixset shard merge``) writes ``manifest.json``, last.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mixset.shard.config import ShardConfig, distributed_defaults
from mixset.shard.errors import ShardError
from mixset.shard.listing import Source, open_source
from mixset.shard.maker import Maker
from mixset.shard.plan import ShardTask, items_digest, plan_shards
from pixmix.data.shards.shard_set import SHARDS_FORMAT, SHARDS_VERSION
from pixmix.data.shards.tar import ShardInfo
from pixmix.data.shards.writer import OPTIONS, ShardSetWriter, package_versions

STATE = ".shard"  # journal entries, config.json (the options), plan.json, rank-*.json (what each rank did)
PLAN = "plan.json"
RESOLVED = "shard_samples_resolved"  # stored beside the options: the samples per shard rank 0 measured
PROBE_SAMPLES = 16  # samples encoded to estimate bytes per sample when only --shard-bytes is given
# At most this many samples per shard from --shard-bytes: small images (CIFAR: 50k in 125 MB) still get
# several shards per view, whose order the training reader shuffles every epoch.
MAX_SHARD_SAMPLES = 5_000


def shard_writer(out: Path, split: str, *, checksum: bool = True, rank: int | None = None) -> ShardSetWriter:
    """The writer of a ``mixset shard`` set: ``shards/<split>-<id>.tar``, journal in ``.shard/``.

    On resume each kept shard's sha256 is checked against its journal entry (a same-size corrupted shard is
    written again; hashing costs far less than decoding and encoding the shard). ``checksum=False`` (the
    merge, right after the ranks wrote or checked their shards) trusts the size. ``rank``: the writer holds
    that rank's lock (``.shard/rank-<rank>.lock``): two processes of one rank on one folder are refused."""
    lock = None if rank is None else f"rank-{rank}"
    return ShardSetWriter(out, prefix=split, state=STATE, checksum=checksum, error=ShardError, lock=lock)


@dataclass
class ShardSummary:
    """What this rank wrote and found done, and the manifest (None until every rank has finished)."""

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
    source = open_source(config.dataset, config.data_dir, config.split, config.corrupted).limit(config.limit)
    if Path(config.out).resolve().is_relative_to(Path(config.data_dir).resolve()):  # after the listing's checks
        raise ShardError(f"--out {config.out} is inside --data-dir {config.data_dir}: its shards would be listed "
                         "as data; choose an --out outside it", param="out")
    _check_mixing_set(config)
    with shard_writer(config.out, source.split, rank=config.rank) as writer:
        per_shard = _claim(writer, config, source, log)
        tasks = plan_shards(len(source), config.views, per_shard, config.seed)
        _check_plan(writer, config, source, tasks, per_shard)
        mine = [t for t in tasks if t.id % config.world_size == config.rank]
        digests = {t.id: items_digest(t.items) for t in mine}
        # A shard is done when journalled with the same items (and its tar is intact); partial .tmp files
        # of our other shards are removed (other ranks' shards are not ours to touch).
        done = writer.completed(digests, accept=lambda shard_id, entry: entry.get("items") == digests[shard_id])
        todo = [t for t in mine if t.id not in done]
        log(f"rank {config.rank}/{config.world_size}: {len(mine)} of {len(tasks)} shard(s), {per_shard} samples "
            f"each; {len(done)} already complete")
        written, failures = _write_all(todo, config, source, writer, log, progress)
        _refuse_all_failed(todo, written, failures, writer)
    seconds = time.perf_counter() - started
    writer.write_state(f"rank-{config.rank:05d}-of-{config.world_size:05d}.json", {
        "rank": config.rank, "world_size": config.world_size, "shards": [t.id for t in mine],
        "written": len(todo), "samples_written": written, "seconds": round(seconds, 3), "failures": failures})
    manifest = merge(config.out, missing_ok=True)
    return ShardSummary(config.out, config.rank, config.world_size, len(tasks), len(todo), len(done), written,
                        failures, seconds, manifest)


def _claim(writer: ShardSetWriter, config: ShardConfig, source: Source, log: Callable[[str], None]) -> int:
    """Refuse a folder of other options; store ours with the samples per shard (measured once, by rank 0
    or a single process, and read back by every other rank and resumed run)."""
    if (not writer.state_path(OPTIONS).exists() and config.world_size > 1 and config.rank > 0
            and config.shard_samples is None):
        # Rank 0 alone measures the shard size (another machine's encoder could round differently).
        _wait_for(writer.state_path(OPTIONS), f"rank 0 to write {writer.state_path(OPTIONS)}", log)
    identity = config.identity()
    stored = writer.check_options(identity, what="shards", derived=(RESOLVED,))
    per_shard = stored.get(RESOLVED) if stored else None
    if per_shard is None:
        per_shard = config.shard_samples or _probe_shard_samples(config, source)
    writer.store_options({**identity, RESOLVED: per_shard})
    return int(per_shard)


def _check_plan(writer: ShardSetWriter, config: ShardConfig, source: Source, tasks: list[ShardTask],
                per_shard: int) -> None:
    """Refuse to resume over a changed listing (shards of two listings would mix); store the plan for merge."""
    plan = {"shards": len(tasks), "items": len(source), "per_shard": per_shard, "classes": list(source.classes),
            "listing": source.digest()}
    before = writer.read_state(PLAN)
    changed = [k for k in plan if before is not None and before.get(k) != plan[k]]
    if changed:
        raise ShardError(f"{config.data_dir} changed since {config.out} was started ({', '.join(changed)} differ "
                         f"from {writer.state_path(PLAN)}): shards of two listings would mix; use a new --out or "
                         "delete it")
    writer.write_state(PLAN, plan)


def _check_mixing_set(config: ShardConfig, tries: int = 16) -> None:
    """Before anything is written: ``--mixset`` is a mixing set and one of its first pictures decodes. Else
    every view would fail alike, and the error would seem to be the data's."""
    if not config.pixmix or config.partners == "augmented" or config.mixset is None:
        return
    from pixmix.data.shards.mixing_set import MixingShards
    from pixmix.utils.errors import PixmixError

    try:
        mixing = MixingShards(config.mixset)
    except PixmixError as exc:
        raise ShardError(str(exc), param="mixset") from None
    errors = []
    for index in range(min(tries, len(mixing))):
        try:
            mixing[index].close()
            return
        except Exception as exc:  # noqa: BLE001 - any undecodable picture counts as unreadable
            errors.append(" ".join(str(exc).split()))
    raise ShardError(f"none of the first {len(errors)} picture(s) of {config.mixset} could be read (first: "
                     f"{errors[0]}); rebuild it with `mixset build`", param="mixset")


def _refuse_all_failed(todo: Sequence[ShardTask], written: int, failures: list[str], writer: ShardSetWriter) -> None:
    """A run that made no sample because every item failed is an error, not an empty set: its empty shards
    and their journal entries are removed (a re-run after the fix makes them) and the first failure is named."""
    planned = sum(len(t.items) for t in todo)
    if not todo or written or len(failures) < planned:
        return
    for task in todo:
        writer.journal_path(task.id).unlink(missing_ok=True)
        writer.shard_path(task.id).unlink(missing_ok=True)
    raise ShardError(f"every one of the {planned} item(s) failed, nothing was written; the first: {failures[0]}")


def _wait_for(path: Path, what: str, log: Callable[[str], None], timeout: float = 3600.0) -> None:
    log(f"waiting for {what}")
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise ShardError(f"gave up after {timeout:.0f} s waiting for {what}; start rank 0 "
                             "(or pass --shard-samples)")
        time.sleep(1.0)


def _probe_shard_samples(config: ShardConfig, source: Source) -> int:
    """Samples per shard for ``shard_bytes``, from the encoded size of the first samples of the plan.

    Always measured on the CPU in this process, so every rank and every resumed run gets the same number.
    """
    probe = plan_shards(len(source), 1, min(PROBE_SAMPLES, len(source)), config.seed)[0]
    samples, failures = Maker(config, source, device="cpu").all_samples(probe)
    if not samples:
        raise ShardError(f"none of the first {len(probe.items)} items of {config.data_dir} could be read (first: "
                         f"{failures[0] if failures else '?'}); check --data-dir", param="data_dir")
    mean = sum(sum(len(v) for v in s.fields.values()) + 1536 for s in samples) / len(samples)  # + tar headers
    return max(1, min(len(source), MAX_SHARD_SAMPLES, int(config.shard_bytes // mean)))


# --- writing -----------------------------------------------------------------------------------------


def _write_all(todo: Sequence[ShardTask], config: ShardConfig, source: Source, writer: ShardSetWriter,
               log: Callable[[str], None], progress: bool) -> tuple[int, list[str]]:
    """Write the shards of ``todo``; the samples written and the lines of the images skipped."""
    from tqdm import tqdm

    bar = tqdm(total=sum(len(t.items) for t in todo), unit="img", desc=f"mixset shard {source.split}",
               disable=not progress)
    written, failures = 0, []
    for entry in _run(todo, config, source, writer):
        bar.update(entry["planned"])
        written += entry["shard"]["samples"]
        failures.extend(entry["failures"])
        for line in entry["failures"]:
            log(f"skipped: {line}")
    bar.close()
    return written, failures


def _run(todo: Sequence[ShardTask], config: ShardConfig, source: Source,
         writer: ShardSetWriter) -> Iterator[dict[str, Any]]:
    """Write the shards of ``todo``, yielding their journal entries: whole shards per worker process on the
    CPU; on a GPU, one process mixes while ``workers`` threads decode and encode (Pillow releases the GIL
    for both)."""
    device = config.resolved_device()
    processes, threads = config.worker_plan()  # at most the usable CPUs, unless --oversubscribe
    if device != "cpu" or processes == 1:
        maker = Maker(config, source, device=device, threads=processes)
        for task in todo:
            yield _write_one(maker, task, writer)
        return
    # Not fork: torch may already run threads in this process, which a fork can deadlock.
    ctx = multiprocessing.get_context("spawn" if sys.platform == "darwin" else "forkserver")
    with ctx.Pool(processes, initializer=_init_worker, initargs=(config, source, threads)) as pool:
        yield from pool.imap_unordered(_write_star, [(t, writer) for t in todo])


def _write_one(maker: Maker, task: ShardTask, writer: ShardSetWriter) -> dict[str, Any]:
    """Write one shard and its journal entry (in whichever process makes it)."""
    failures: list[str] = []  # filled while the samples are made, journalled after them
    return writer.write(task.id, maker.samples(task, failures), {
        "id": task.id, "view": task.view, "planned": len(task.items), "items": items_digest(task.items),
        "failures": failures})


_WORKER: Maker | None = None


def _init_worker(config: ShardConfig, source: Source, threads: int = 1) -> None:
    global _WORKER
    from pixmix.utils.runtime import limit_threads

    limit_threads(threads)  # processes x threads <= the usable CPUs
    _WORKER = Maker(config, source, device="cpu")


def _write_star(args: tuple[ShardTask, ShardSetWriter]) -> dict[str, Any]:
    assert _WORKER is not None
    return _write_one(_WORKER, *args)


# --- merge -------------------------------------------------------------------------------------------


def merge(out: Path, missing_ok: bool = False) -> Path | None:
    """Write ``manifest.json`` from the journal of every shard of the plan (the last step, on any rank).

    Returns None (``missing_ok``) or raises ShardError naming the missing shards while some are not done.
    """
    stored, plan = _read_state(out)
    writer = shard_writer(out, stored["split"], checksum=False)
    entries, missing = [], []
    for shard_id in range(plan["shards"]):
        entry = writer.entry(shard_id)
        (missing.append(shard_id) if entry is None else entries.append(entry))
    if missing:
        if missing_ok:
            return None
        raise ShardError(f"{out}: {len(missing)} of {plan['shards']} shard(s) not written yet (first: "
                         f"{missing[:5]}); run the remaining ranks (or the command again) before merging")
    stored.pop(RESOLVED, None)
    sheet = _contact_sheet(out, stored, entries)
    return writer.finish({
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
    })


def _read_state(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stored options and plan of a ``mixset shard`` folder."""
    found = []
    for path in (out / STATE / OPTIONS, out / STATE / PLAN):
        try:
            found.append(json.loads(path.read_text()))
        except FileNotFoundError:
            raise ShardError(f"{out}: no `mixset shard` state ({path} is missing); run mixset shard first") from None
        except (OSError, ValueError) as exc:
            raise ShardError(f"{path}: truncated or unreadable ({' '.join(str(exc).split())[:120]}); re-run exactly "
                             f"the `mixset shard` command that made {out} after deleting {path}") from None
    return found[0], found[1]


def _contact_sheet(out: Path, stored: dict[str, Any], entries: list[dict[str, Any]]) -> Path:
    """Tiles per view (the first shard of each is enough: shards are shuffled); -C shards mix all corruptions."""
    from mixset.contact_sheet import write_contact_sheet

    sheet = out / "contact-sheet.png"
    by = "corruption" if stored["kind"] == "corrupted" else "view"
    first: dict[int, dict[str, Any]] = {}
    for e in entries:
        first.setdefault(e["view"], e)
    chosen = entries if by == "corruption" else list(first.values())
    totals = None  # per view, known from the journal (a -C shard mixes corruptions: their counts are not)
    if by == "view":
        totals = {f"view {v}": sum(e["shard"]["samples"] for e in entries if e["view"] == v)
                  for v in range(stored["views"])}
    write_contact_sheet(out, [ShardInfo(**e["shard"]) for e in chosen], sheet, group=lambda meta: f"{by} {meta[by]}",
                        groups=15 if by == "corruption" else stored["views"], totals=totals)
    return sheet


__all__ = ["ShardConfig", "ShardError", "ShardSummary", "ShardTask", "distributed_defaults", "merge", "plan_shards",
           "shard", "shard_writer"]
