"""Writing a set of shards resumably: one protocol for ``mixset build`` and ``mixset shard``.

A shard set is a folder of ``shards/<prefix>-<id>.tar`` files, a hidden state folder (``.build`` or
``.shard``) and, last, ``manifest.json``. The protocol, in the spirit of mosaicml/streaming's writer
(the index is written after every shard it names):

1. each shard is written to ``<name>.tar.tmp``, fsynced and renamed (:func:`~pixmix.data.shards.tar.write_shard`);
2. then its journal entry ``<state>/shard-<id>.json`` records it (``{"shard": ShardInfo, ...the caller's}``);
3. a re-run trusts a shard only when its journal entry exists and its tar matches it (size, or sha256);
   partial ``.tmp`` files are removed and the shard is written again, byte for byte the same;
4. the options that decide the bytes are stored in ``<state>/config.json``: a re-run with other ones is
   refused rather than mixing two sets in one folder;
5. ``manifest.json`` is written last (:meth:`ShardSetWriter.finish`): its presence means "complete".

Shards are either written by id, in any order and by several processes (``mixset shard``:
:meth:`~ShardSetWriter.write`), or appended sample by sample and rolled over into the next shard
(``mixset build``: :meth:`~ShardSetWriter.add`, :meth:`~ShardSetWriter.roll_over`). Several ranks share
one folder by writing disjoint shard ids; each writer holds an exclusive ``flock`` on its own lock file
(``<state>/<lock>.lock``, one per rank), so a second process of the same rank is refused, naming the holder.
The kernel drops the lock when its process exits or is killed.

Every name that becomes a path (a split, a collection, a shard prefix) must match :data:`SAFE_NAME`
(:func:`check_name`), so no option can write or delete files outside the set's folder.

:class:`WriterOptions` holds the options every writing command takes (output folder, seed, limit,
quality, workers, device), validated once; the commands' configurations extend it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

from pixmix.data.shards.tar import Sample, ShardInfo, file_sha256, write_shard
from pixmix.utils.errors import PixmixError
from pixmix.utils.jsonfiles import write_json
from pixmix.utils.runtime import plan_workers

log = logging.getLogger("pixmix.data.shards")

MANIFEST = "manifest.json"
OPTIONS = "config.json"
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def check_name(value: str, option: str, error: type[PixmixError] = PixmixError, param: str | None = None) -> str:
    """``value`` if it is a safe file name part (:data:`SAFE_NAME`), else a one-line error naming ``option``."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise error(f"{option} must be 1-64 letters, digits, '_' or '-' (starting with a letter or digit), "
                    f"got {value!r}", param=param)
    return value


@dataclass(frozen=True, kw_only=True)
class WriterOptions:
    """The options of every command that writes a shard set; validated once, in ``__post_init__``.

    ``seed`` and ``limit`` decide the bytes; ``workers`` and ``device`` only how fast they are made.
    Subclasses set ``error`` to their own :class:`PixmixError` subclass and call ``super().__post_init__()``.
    """

    error: ClassVar[type[PixmixError]] = PixmixError

    out: Path
    seed: int = 0
    limit: int | None = None
    quality: int = 90
    workers: int = 1
    device: str = "auto"
    oversubscribe: bool = False  # allow more worker processes than usable CPUs

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit < 1:
            raise self.error(f"--limit must be >= 1, got {self.limit}", param="limit")
        if not 1 <= self.quality <= 100:
            raise self.error(f"--quality must be in [1, 100], got {self.quality}", param="quality")
        if self.workers < 1:
            raise self.error(f"--workers must be >= 1, got {self.workers}", param="workers")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise self.error(f"--device must be auto, cpu or cuda[:N], got {self.device!r}", param="device")

    def worker_plan(self) -> tuple[int, int]:
        """``(processes, threads each)``: ``workers`` capped at the usable CPUs (unless ``oversubscribe``),
        with processes x threads <= usable CPUs (:func:`pixmix.utils.runtime.plan_workers`)."""
        return plan_workers(self.workers, oversubscribe=self.oversubscribe)


class ShardSetWriter:
    """The resumable writer of one shard set (see the module's docstring for the protocol).

    ``root``: the set's folder; ``prefix``: shard file names (``shards/<prefix>-000000.tar``); ``state``: the
    hidden folder of journal entries and stored options; ``checksum``: whether a re-run recomputes the sha256
    of every journalled shard (small sets) or trusts its size (sets of hundreds of MB per shard); ``error``:
    the :class:`PixmixError` subclass raised for a folder that cannot be resumed; ``lock``: the name of the
    exclusive lock a writing process holds while in the ``with`` block (``<state>/<lock>.lock``; None: no lock,
    for readers such as a merge).

    A context manager: leaving it by an exception drops the samples not rolled over yet (a shard interrupted
    while being written never leaves its ``.tmp`` behind, except when the process is killed: then the next run
    removes it); leaving it normally with samples not rolled over is a bug of the caller. It is picklable, so
    worker processes can write shards.
    """

    def __init__(self, root: Path, *, prefix: str, state: str, checksum: bool = False,
                 error: type[PixmixError] = PixmixError, lock: str | None = None) -> None:
        check_name(prefix, "the shard prefix", error)
        if lock is not None:
            check_name(lock, "the lock name", error)
        self.lock = lock
        self._lock_fd: int | None = None
        self.root = Path(root)
        self.prefix = prefix
        self.state = state
        self.checksum = checksum
        self.error = error
        self._buffer: list[Sample] = []
        self._next = 0  # the id :meth:`roll_over` writes next

    def __enter__(self) -> ShardSetWriter:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if self.lock is not None:
                self._acquire()
        except OSError as exc:
            raise self._os_error(exc, self.root) from exc
        return self

    def _ours(self, exc: OSError) -> bool:
        """Whether ``exc`` is about writing the set (not, say, reading an input while making the samples)."""
        full = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG}
        return exc.errno in full or str(exc.filename or "").startswith(str(self.root))

    def _os_error(self, exc: OSError, path: Path) -> PixmixError:
        """A one-line error for a folder that cannot be written (read-only, no permission, disk full)."""
        why = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
        return self.error(f"cannot write {exc.filename or path}: {why}; fix --out (space, permissions) and re-run "
                          "the same command: the shards written so far are kept", param="out")

    def _acquire(self) -> None:
        """Hold an exclusive ``flock`` on ``<state>/<lock>.lock`` (pid and host inside) or refuse in one line."""
        import fcntl

        path = self.state_path(f"{self.lock}.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            holder = path.read_text(errors="replace").strip() or "another process"
            raise self.error(f"{self.root} is being written by {holder} ({path}); wait for it to finish or "
                             "stop it, or use another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode())
        self._lock_fd = fd

    def _release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing drops the flock
            self._lock_fd = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_lock_fd"] = None  # the lock belongs to the process that took it
        return state

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._release()
        if kind is not None:
            self._buffer.clear()
        elif self._buffer:
            raise RuntimeError(f"{len(self._buffer)} sample(s) added but not rolled over into a shard")

    # --- names ---------------------------------------------------------------------------------------

    def shard_path(self, shard_id: int) -> Path:
        return self.root / "shards" / f"{self.prefix}-{shard_id:06d}.tar"

    def journal_path(self, shard_id: int) -> Path:
        return self.root / self.state / f"shard-{shard_id:06d}.json"

    def state_path(self, name: str) -> Path:
        """A file of the state folder (``config.json``, ``plan.json``, ...)."""
        return self.root / self.state / name

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    # --- state ---------------------------------------------------------------------------------------

    def read_state(self, name: str) -> Any | None:
        """The JSON content of a state file, or None when there is none yet."""
        path = self.state_path(name)
        try:
            return json.loads(path.read_text()) if path.exists() else None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise self.error(f"{path}: truncated or unreadable ({' '.join(str(exc).split())[:120]}); use a new --out, "
                             f"or delete {path} and re-run exactly the command that made {self.root}") from None

    def write_state(self, name: str, data: Any) -> Path:
        return write_json(self.state_path(name), data)

    def check_options(self, options: Mapping[str, Any], *, what: str,
                      derived: Sequence[str] = ()) -> dict[str, Any] | None:
        """The options an earlier run stored (None for a new set); refuses a set made with other options.

        ``derived``: stored keys that an earlier run worked out itself (left out of the comparison, kept
        in the returned dict). ``what`` names the set in the message ("a build", "shards").
        """
        stored = self.read_state(OPTIONS)
        if stored is None:
            return None
        if {k: v for k, v in stored.items() if k not in derived} != dict(options):
            # No param: the folder is not a wrong value, its content is in the way.
            raise self.error(f"{self.root} holds {what} made with other options ({self.state_path(OPTIONS)}); "
                             "use a new --out folder or delete it")
        return stored

    def store_options(self, options: Mapping[str, Any]) -> None:
        self.write_state(OPTIONS, dict(options))

    # --- resume --------------------------------------------------------------------------------------

    def entry(self, shard_id: int) -> dict[str, Any] | None:
        """The journal entry of a complete shard, or None: no (readable) entry, or a tar that is missing or
        does not match it. Reads only: safe while other ranks write."""
        path = self.journal_path(shard_id)
        try:
            entry = json.loads(path.read_text())
            info = ShardInfo(**entry["shard"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Written atomically, so a damaged entry is a disk or a hand's doing: say so, never silently.
            log.warning("%s: damaged journal entry (%s: %s); its shard %s is not trusted and is written again "
                        "(by this run, or re-run the same command)", path, type(exc).__name__,
                        " ".join(str(exc).split())[:120], self.shard_path(shard_id).name)
            return None
        return entry if self._intact(info) else None

    def _intact(self, info: ShardInfo) -> bool:
        path = self.root / info.name
        if not path.exists():
            return False
        if self.checksum:
            return file_sha256(path) == (info.sha256, info.bytes)
        return path.stat().st_size == info.bytes

    def completed(self, shard_ids: Iterable[int],
                  accept: Callable[[int, dict[str, Any]], bool] | None = None) -> dict[int, dict[str, Any]]:
        """The journal entries of the complete shards among ``shard_ids`` (this process's shards) that
        ``accept(id, entry)`` (say, of the planned items); the partial ``.tmp`` of each of the others is
        removed, as it is about to be written again."""
        done: dict[int, dict[str, Any]] = {}
        for shard_id in shard_ids:
            entry = self.entry(shard_id)
            if entry is not None and accept is not None and not accept(shard_id, entry):
                entry = None
            if entry is None:
                self._tmp(shard_id).unlink(missing_ok=True)
            else:
                done[shard_id] = entry
        return done

    def resume(self) -> list[dict[str, Any]]:
        """For a set written in order (:meth:`roll_over`): the entries of the complete shards ``0, 1, ...``
        up to the first gap. Whatever follows (journal entries, shards, partial ``.tmp`` files) is stale and
        removed, so it is written again; the next :meth:`roll_over` continues after the last complete shard."""
        entries: list[dict[str, Any]] = []
        while (entry := self.entry(len(entries))) is not None:
            entries.append(entry)
        self._next = len(entries)
        self._drop_from(self._next)
        return entries

    def _drop_from(self, first: int) -> None:
        state = self.root / self.state
        for stale in sorted(state.glob("shard-*.json")) if state.is_dir() else []:
            if _number(stale.name, "shard") >= first:
                stale.unlink()
        shards = self.root / "shards"
        for stale in sorted(shards.glob(f"{self.prefix}-*.tar*")) if shards.is_dir() else []:
            if stale.suffix == ".tmp" or _number(stale.name, self.prefix) >= first:
                stale.unlink()

    def _tmp(self, shard_id: int) -> Path:
        path = self.shard_path(shard_id)
        return path.with_name(path.name + ".tmp")

    # --- writing -------------------------------------------------------------------------------------

    def write(self, shard_id: int, samples: Iterable[Sample], journal: Mapping[str, Any]) -> dict[str, Any]:
        """Write shard ``shard_id`` (atomically), then its journal entry ``{"shard": ShardInfo, **journal}``.

        ``journal`` is serialised after the samples are consumed, so it may hold lists that the sample
        iterator fills (failures found while making them). Returns the journal entry.
        """
        assert "shard" not in journal, "the journal key 'shard' is the writer's (its ShardInfo)"
        try:
            info = write_shard(self.shard_path(shard_id), samples, root=self.root)
            entry = {"shard": asdict(info), **journal}
            write_json(self.journal_path(shard_id), entry)
        except BaseException as exc:
            self._tmp(shard_id).unlink(missing_ok=True)
            if isinstance(exc, OSError) and self._ours(exc):
                raise self._os_error(exc, self.shard_path(shard_id)) from exc
            raise
        return entry

    def add(self, sample: Sample) -> int:
        """Append one sample to the shard being filled (sets written in order); returns how many it holds."""
        self._buffer.append(sample)
        return len(self._buffer)

    @property
    def pending(self) -> int:
        """Samples added since the last roll-over."""
        return len(self._buffer)

    def roll_over(self, journal: Mapping[str, Any]) -> dict[str, Any]:
        """Write the samples added so far as the next shard (after :meth:`resume`'s), with its journal entry."""
        entry = self.write(self._next, self._buffer, journal)
        self._buffer = []
        self._next += 1
        return entry

    def finish(self, manifest: Mapping[str, Any]) -> Path:
        """Write ``manifest.json``, the last file of a complete set. Every added sample must be rolled over."""
        if self._buffer:
            raise RuntimeError(f"{len(self._buffer)} sample(s) added but not rolled over into a shard")
        try:
            return write_json(self.manifest_path, manifest)
        except OSError as exc:
            raise self._os_error(exc, self.manifest_path) from exc


def _number(name: str, prefix: str) -> int:
    """The id in ``<prefix>-<id>.<suffixes>``."""
    return int(name[len(prefix) + 1:].split(".")[0])


def package_versions() -> dict[str, str]:
    """The versions a manifest records (Python and the packages that decide the bytes)."""
    import importlib.metadata as md
    import platform

    versions = {"python": platform.python_version()}
    for name in ("pixmix-data", "numpy", "Pillow", "webdataset", "torch"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


__all__ = ["MANIFEST", "SAFE_NAME", "check_name", "ShardSetWriter", "WriterOptions", "package_versions"]
