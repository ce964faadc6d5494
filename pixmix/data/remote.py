"""Where a shard set or mixing set lives: a local folder, ``http(s)://``, ``s3://``, ``gs://`` or a ``pipe:`` command.

:class:`Location` names a set (or one of its files) and opens it as a binary stream. Remote files are
streamed, never copied whole to disk (unless a bounded cache folder is asked for, see :class:`RemoteOptions`):

- ``http(s)://`` through ``requests`` (already a dependency; a ``Range`` request per open, so a reader that
  starts mid-shard or skips ahead never downloads what it skips);
- ``s3://`` and ``gs://`` through fsspec with the optional ``s3fs`` / ``gcsfs`` (extras ``[s3]`` / ``[gcs]``;
  credentials and endpoint from the usual environment, e.g. ``AWS_ENDPOINT_URL``);
- ``pipe:CMD``: webdataset's convention, a shell command that writes the file to stdout; ``{}`` in ``CMD``
  stands for the file's path inside the set (``pipe:aws s3 cp s3://bucket/set/{} -``);
- a local path or ``file://`` URL: plain files, as before.

Transient failures (connection reset or refused, timeouts, truncated bodies, HTTP 5xx and 429, a pipe that
exits non-zero) are retried with exponential back-off (no jitter: the schedule is a pure function of the
options), resuming at the byte reached; a file that keeps failing raises :class:`RemoteError`, an ``OSError``
naming the URL, which the loader reports and tops up like a corrupt local shard. Missing files (404) are
``FileNotFoundError`` at once.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, unquote, urlsplit

from pixmix.utils.errors import PixmixError

REMOTE_SCHEMES = ("http", "https", "s3", "gs")
EXTRAS = {"s3": ("s3fs", "s3"), "gs": ("gcsfs", "gcs")}
_BRACES = re.compile(r"\{[^{}]*\.\.[^{}]*\}")
# Forward seeks up to this many bytes read and drop the bytes; longer ones open a new ranged request.
_SKIP_BYTES = 1 << 20
_BUFFER = 1 << 20


@dataclass(frozen=True)
class RemoteOptions:
    """How remote files are read. ``retries``: attempts after the first failure of one read; ``backoff``:
    seconds before the first retry, doubled each time; ``timeout``: seconds a connection may stay silent;
    ``cache_dir``/``cache_bytes``: keep whole remote files in this folder, at most this many bytes in all
    (least recently used evicted first; files larger than the bound are streamed, never cached)."""

    retries: int = 5
    backoff: float = 0.2
    timeout: float = 60.0
    cache_dir: str | None = None
    cache_bytes: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or self.retries < 0:
            raise PixmixError(f"retries must be an integer >= 0, got {self.retries!r}", param="retries")
        if not self.backoff >= 0:
            raise PixmixError(f"backoff must be >= 0 seconds, got {self.backoff!r}", param="backoff")
        if not self.timeout > 0:
            raise PixmixError(f"timeout must be > 0 seconds, got {self.timeout!r}", param="timeout")
        if isinstance(self.cache_bytes, bool) or not isinstance(self.cache_bytes, int) or self.cache_bytes < 0:
            raise PixmixError(f"cache_bytes must be an integer >= 0, got {self.cache_bytes!r}", param="cache_bytes")
        if self.cache_dir is not None and self.cache_bytes == 0:
            raise PixmixError("a cache folder needs a size bound: give cache_bytes too", param="cache_bytes")


class RemoteError(OSError):
    """A remote file that could not be read after every retry (its ``strerror`` names the URL and the cause)."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


class _Transient(Exception):
    """A failure worth retrying that the libraries report as a value (an HTTP status, a pipe's exit code)."""


@dataclass(frozen=True)
class Location:
    """A set or one of its files: a local path, an ``http(s)``/``s3``/``gs`` URL or a ``pipe:`` command.

    Build it with :func:`location` (which checks the scheme). ``str()`` gives what the user wrote.
    """

    url: str
    options: RemoteOptions = field(default_factory=RemoteOptions, compare=False)

    def __str__(self) -> str:
        return self.url

    def __fspath__(self) -> str:  # lets local locations stand where os.PathLike is expected
        if not self.is_local:
            raise TypeError(f"{self.url} is not a local path")
        return str(self.path)

    @property
    def scheme(self) -> str:
        """``""`` (local), ``"pipe"``, or the URL scheme."""
        if self.url.startswith("pipe:"):
            return "pipe"
        return urlsplit(self.url).scheme.lower() if "://" in self.url else ""

    @property
    def is_local(self) -> bool:
        return self.scheme in ("", "file")

    @property
    def path(self) -> Path:
        """The local path (only for local locations)."""
        if self.scheme == "file":
            return Path(unquote(urlsplit(self.url).path))
        if self.scheme:
            raise PixmixError(f"{self.url} is not a local path")
        return Path(self.url)

    @property
    def name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    def __truediv__(self, name: str) -> Location:
        """The file ``name`` (a relative path from a manifest, untrusted) inside this set."""
        parts = Path(name).parts
        if not name or Path(name).is_absolute() or ".." in parts or "\\" in name or "{" in name:
            raise PixmixError(f"{self.url}: refusing the manifest entry {name!r} (outside the set)")
        if self.is_local:
            return replace(self, url=str(self.path / name))
        if self.scheme == "pipe":
            return replace(self, url=self.url.replace("{}", shlex.quote(name), 1))
        if self.scheme in ("http", "https"):
            name = quote(name)  # a space or '#' in a shard's name must not change the URL's meaning
        return replace(self, url=self.url.rstrip("/") + "/" + name)

    def with_options(self, options: RemoteOptions) -> Location:
        return replace(self, options=options)

    def open(self, offset: int = 0) -> IO[bytes]:
        """The file as a buffered binary stream positioned at ``offset`` (seekable; remote seeks forward are
        cheap, backward ones reopen)."""
        if self.is_local:
            fh = open(self.path, "rb")  # noqa: SIM115 - returned to the caller, who closes it
            fh.seek(offset)
            return fh
        cached = _cached_copy(self)
        if cached is not None:
            fh = open(cached, "rb")  # noqa: SIM115
            fh.seek(offset)
            return fh
        stream = io.BufferedReader(RetryingStream(self, offset), buffer_size=_BUFFER)
        return stream

    def read_range(self, offset: int, size: int) -> bytes:
        """``size`` bytes from ``offset`` (fewer at the end of the file); remote: one request for just those."""
        if self.is_local or _cached_copy(self) is not None:
            with self.open(offset) as fh:
                return fh.read(size)
        with RetryingStream(self, offset, stop=offset + size) as stream:
            out = bytearray()
            while len(out) < size:
                block = stream.read(size - len(out))
                if not block:
                    break
                out += block
            return bytes(out)

    def read_bytes(self, limit: int = 256 << 20) -> bytes:
        """The whole (small) file, e.g. a manifest; at most ``limit`` bytes."""
        with self.open() as fh:
            data = fh.read(limit + 1)
        if len(data) > limit:
            raise PixmixError(f"{self.url}: larger than {limit} bytes")
        return data


_DEFAULT = [RemoteOptions()]


def set_default_options(options: RemoteOptions) -> None:
    """The options of locations made without explicit ones from now on, in this process (the CLIs' --cache-dir)."""
    _DEFAULT[0] = options


def location(target: str | os.PathLike[str] | Location, options: RemoteOptions | None = None) -> Location:
    """``target`` as a :class:`Location`; a one-line :class:`PixmixError` for a scheme other than http(s),
    s3, gs, file and pipe. ``options`` replace those of a given :class:`Location` when passed (default: those
    of :func:`set_default_options`)."""
    if isinstance(target, Location):
        return target if options is None else target.with_options(options)
    text = os.fspath(target)
    loc = Location(text, options or _DEFAULT[0])
    scheme = loc.scheme
    if scheme not in ("", "file", "pipe", *REMOTE_SCHEMES) or (scheme == "" and "://" in text):
        raise PixmixError(f"{text}: unsupported scheme {scheme!r}; use a local path, file://, http(s)://, s3://, "
                          "gs:// or pipe:COMMAND")
    if scheme == "pipe" and not text[len("pipe:"):].strip():
        raise PixmixError(f"{text}: pipe: needs a command")
    if scheme in REMOTE_SCHEMES and not urlsplit(text).netloc:
        raise PixmixError(f"{text}: the URL has no host or bucket")
    return loc


def resolved(target: str | os.PathLike[str] | Location) -> str:
    """What a run records of a set: the absolute path of a local one, the URL of a remote one."""
    loc = location(target)
    return str(loc.path.resolve()) if loc.is_local else loc.url


def has_braces(target: str | os.PathLike[str] | Location) -> bool:
    """Whether ``target`` is a webdataset brace pattern of shards (``.../{000000..000099}.tar``)."""
    return bool(_BRACES.search(str(target)))


def expand_braces(pattern: Location) -> tuple[Location, list[str]]:
    """``(set folder, shard names)`` of a brace pattern: the folder is the fixed part up to its last ``/``."""
    import braceexpand

    text = pattern.url
    head = text[:_BRACES.search(text).start()]  # type: ignore[union-attr]  # has_braces was checked
    cut = head.rfind("/")
    base = text[:cut] if cut >= 0 else ""
    names = [url[cut + 1:] for url in braceexpand.braceexpand(text)]
    return replace(pattern, url=base or "."), names


def import_extra(scheme: str) -> None:
    """Import the fsspec backend of ``scheme``; a one-line error naming the extra to install when it is missing."""
    module, extra = EXTRAS[scheme]
    try:
        __import__(module)
    except ImportError as exc:
        raise PixmixError(f"{scheme}:// URLs need the optional package {module}: "
                          f"pip install 'pixmix-data[{extra}]'") from exc


# --- streaming with retries ----------------------------------------------------------------------


def _permanent(exc: BaseException) -> bool:
    return isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, PixmixError))


def _transient(exc: BaseException) -> bool:
    """Worth retrying: connection and protocol errors of requests/urllib3/aiohttp/botocore, OS errors, 5xx."""
    if _permanent(exc):
        return False
    if isinstance(exc, (_Transient, OSError, EOFError)):
        return True
    module = type(exc).__module__.split(".")[0]
    return module in ("requests", "urllib3", "aiohttp", "botocore", "aiobotocore", "http")


class RetryingStream(io.RawIOBase):
    """One remote file read front to back from ``offset``: reads that fail transiently are retried after a
    back-off, reopening the file at the byte reached; ``seek`` moves the position (forward skips of up to 1 MiB
    are read and dropped, others reopen there)."""

    def __init__(self, loc: Location, offset: int = 0, stop: int | None = None) -> None:
        super().__init__()
        self.loc = loc
        self._pos = offset
        self._stop = stop  # http: ask only for the bytes before this offset
        self._fh: Any = None
        self._size: int | None = None
        self.attempts = 0  # reopenings after failures, for tests and reports

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = {io.SEEK_SET: offset, io.SEEK_CUR: self._pos + offset}.get(whence)
        if target is None:
            target = self._end() + offset
        if target < 0:
            raise OSError(errno.EINVAL, f"{self.loc}: negative seek position {target}")
        gap = target - self._pos
        if self._fh is not None and 0 < gap <= _SKIP_BYTES:
            while self._pos < target and self.read(min(target - self._pos, _BUFFER)):
                pass
        elif gap:
            self._close_handle()
            self._pos = target
        return self._pos

    def _end(self) -> int:
        if self._size is None:
            self.read(0)  # opens, which learns the size where the protocol tells it
        if self._size is None:
            raise OSError(errno.ESPIPE, f"{self.loc}: cannot seek from the end of a stream of unknown size")
        return self._size

    def readinto(self, buffer: Any) -> int:
        options = self.loc.options
        for attempt in range(options.retries + 1):
            try:
                if self._fh is None:
                    self._fh, self._size = _open_at(self.loc, self._pos, self._stop)
                n = _read_into(self._fh, buffer)
                end = self._size if self._stop is None or self._size is None else min(self._size, self._stop)
                if n == 0 and len(buffer) and end is not None and self._pos < end:
                    raise _Transient(f"connection closed at byte {self._pos} of {self._size}")
                if n == 0 and len(buffer) and self.loc.scheme == "pipe":
                    _check_pipe(self._fh)
                self._pos += n
                return n
            except Exception as exc:
                self._close_handle()
                if not _transient(exc):
                    raise
                if attempt == options.retries:
                    raise RemoteError(f"{self.loc}: {_reason(exc)} (after {attempt + 1} attempts)") from exc
                self.attempts += 1
                time.sleep(options.backoff * 2 ** attempt)
        raise AssertionError("unreachable")

    def _close_handle(self) -> None:
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                fh.close()
            except Exception:  # noqa: BLE001 - closing a broken connection may fail too; nothing to keep
                pass

    def close(self) -> None:
        self._close_handle()
        super().close()


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "..."


def _read_into(fh: Any, buffer: Any) -> int:
    if hasattr(fh, "readinto"):
        return int(fh.readinto(buffer) or 0)
    data = fh.read(len(buffer))
    buffer[: len(data)] = data
    return len(data)


def _open_at(loc: Location, offset: int, stop: int | None = None) -> tuple[Any, int | None]:
    """``(file object at offset, total size or None)`` of a remote location (one attempt, no retry); ``stop``:
    the caller reads nothing from there on (http asks only for the bytes before it)."""
    if loc.scheme in ("http", "https"):
        return _open_http(loc, offset, stop)
    if loc.scheme == "pipe":
        return _open_pipe(loc, offset), None
    import_extra(loc.scheme)
    import fsspec

    fs, path = fsspec.core.url_to_fs(loc.url)
    fh = fs.open(path, "rb", block_size=4 << 20)
    fh.seek(offset)
    return fh, int(fh.size) if getattr(fh, "size", None) is not None else None


_SESSIONS: dict[int, Any] = {}


def _session() -> Any:
    """One requests session per process (a forked DataLoader worker must not share its parent's sockets)."""
    import requests

    pid = os.getpid()
    if pid not in _SESSIONS:
        _SESSIONS.clear()
        _SESSIONS[pid] = requests.Session()
    return _SESSIONS[pid]


def _open_http(loc: Location, offset: int, stop: int | None) -> tuple[Any, int | None]:
    headers = {"Accept-Encoding": "identity"}
    if offset or stop is not None:
        headers["Range"] = f"bytes={offset}-{'' if stop is None else stop - 1}"
    timeout = loc.options.timeout
    response = _session().get(loc.url, headers=headers, stream=True, timeout=(timeout, timeout))
    status = response.status_code
    if status == 416:  # at or past the end
        response.close()
        return io.BytesIO(b""), offset
    if status in (404, 410):
        response.close()
        raise FileNotFoundError(errno.ENOENT, f"{loc.url}: HTTP {status} {response.reason}")
    if status in (401, 403):
        response.close()
        raise PermissionError(errno.EACCES, f"{loc.url}: HTTP {status} {response.reason}")
    if status >= 400:
        response.close()
        raise _Transient(f"HTTP {status} {response.reason}") if status >= 500 or status == 429 else \
            PixmixError(f"{loc.url}: HTTP {status} {response.reason}")
    raw = response.raw
    length = response.headers.get("Content-Length")
    if status == 206:
        total = response.headers.get("Content-Range", "").rpartition("/")[2]
        size = int(total) if total.isdigit() else None
    else:
        size = int(length) if length and length.isdigit() else None
        _discard(raw, offset)  # the server ignored the range: drop the bytes before offset
    return raw, size


def _discard(fh: Any, count: int) -> None:
    while count > 0:
        data = fh.read(min(count, _BUFFER))
        if not data:
            raise _Transient(f"stream ended {count} bytes before the requested offset")
        count -= len(data)


def _open_pipe(loc: Location, offset: int) -> Any:
    command = loc.url[len("pipe:"):]
    process = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE)  # noqa: S602 - the user's own command
    assert process.stdout is not None
    stdout = process.stdout
    stdout.process = process  # type: ignore[attr-defined]  # for _check_pipe at the end of the stream
    _discard(stdout, offset)
    return stdout


def _check_pipe(fh: Any) -> None:
    """At the end of a pipe's output: a non-zero exit status is a failed read (retried)."""
    code = fh.process.wait()
    if code != 0:
        raise _Transient(f"pipe command exited with status {code}")


# --- once per job ---------------------------------------------------------------------------------

_ONCE: dict[Any, Any] = {}


def once_per_job(key: Any, compute: Callable[[], Any]) -> Any:
    """``compute()``, memoised in this process under ``key``; under an initialised torch.distributed group of
    several processes, computed by rank 0 only and broadcast (an error there is raised on every rank, so no
    rank waits for a value that never comes). Every rank must make the same calls in the same order; inside
    DataLoader workers each process computes its own."""
    if key in _ONCE:
        return _ONCE[key]
    import sys

    group = None
    if "torch" in sys.modules:
        import torch.distributed as dist
        from torch.utils.data import get_worker_info

        # A DataLoader worker inherits an initialised group from its rank but must never join a collective.
        in_worker = get_worker_info() is not None
        group = dist if not in_worker and dist.is_available() and dist.is_initialized() and \
            dist.get_world_size() > 1 else None
    if group is None:
        _ONCE[key] = compute()
        return _ONCE[key]
    box: list[Any] = [None]
    if group.get_rank() == 0:
        try:
            box[0] = ("ok", compute())
        except PixmixError as exc:
            box[0] = ("error", str(exc))
    group.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise PixmixError(value)
    _ONCE[key] = value
    return value


# --- the optional cache ----------------------------------------------------------------------------


_TOO_LARGE: set[str] = set()  # files found larger than the cache bound, in this process


def _cached_copy(loc: Location) -> Path | None:
    """The local copy of ``loc`` in the cache folder (fetched whole now if missing and small enough); None
    when there is no cache, or the file does not fit its bound."""
    options = loc.options
    if options.cache_dir is None:
        return None
    folder = Path(options.cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(loc.url.encode()).hexdigest()[:32] + "-" + re.sub(r"[^A-Za-z0-9_.-]", "_", loc.name)[-64:]
    path = folder / key
    if loc.url in _TOO_LARGE:
        return None
    if path.exists():
        os.utime(path)  # least recently used goes first
        return path
    part = folder / f".{key}.{os.getpid()}.part"
    with open(part, "wb") as out, io.BufferedReader(RetryingStream(loc), buffer_size=_BUFFER) as src:
        size = 0
        for block in iter(lambda: src.read(_BUFFER), b""):
            size += len(block)
            if size > options.cache_bytes:
                break
            out.write(block)
    if size > options.cache_bytes:
        part.unlink(missing_ok=True)
        _TOO_LARGE.add(loc.url)  # streamed from now on: never fetch its first cache_bytes again
        return None
    part.replace(path)
    _evict(folder, options.cache_bytes, keep=path)
    return path


def _evict(folder: Path, bound: int, keep: Path) -> None:
    """Delete the least recently used cached files until the folder holds at most ``bound`` bytes."""
    files = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")),
                   key=lambda p: p.stat().st_mtime)
    total = sum(p.stat().st_size for p in files)
    for p in files:
        if total <= bound:
            break
        if p != keep:
            total -= p.stat().st_size
            p.unlink(missing_ok=True)


__all__ = ["Location", "RemoteError", "RemoteOptions", "RetryingStream", "expand_braces", "has_braces",
           "import_extra", "location", "once_per_job", "resolved", "set_default_options"]
