"""Download one manifest artefact safely: http(s) only, size-capped, resumable, retried, sha256-checked.

This is the network edge of ``mixset build``: everything it reads is untrusted. The rules:

* Only ``http://`` and ``https://`` URLs (also after redirects); anything else is refused before any I/O.
* Bytes stream into ``<dest>.part`` beside ``dest``; only a complete, verified file is renamed (atomically,
  ``os.replace``) to ``dest``. A ``dest`` that already exists with the expected sha256 is returned at once,
  without a request. Without an expected sha256 an existing ``dest`` cannot be trusted and is downloaded again.
* A ``.part`` left by an interrupted run (or by a broken connection during this run) is resumed with
  ``Range: bytes=N-``: a ``206`` whose ``Content-Range`` starts at ``N`` is appended; a ``200`` (server ignores
  ranges) restarts from zero; a ``206`` for another offset, or a ``416``, discards the ``.part`` and restarts.
* ``max_bytes`` caps the file: a ``Content-Length`` (or ``Content-Range`` total) above it, or a stream that
  grows past it, is refused at once (no retry) and the ``.part`` is removed.
* Each attempt has an overall **deadline** (``deadline``): a server that keeps sending a byte now and then
  defeats the per-read ``timeout`` but not the deadline. The default scales with the file:
  ``DEADLINE_BASE`` seconds plus the announced size (or, unannounced, the bytes received so far) at
  ``DEADLINE_MIN_RATE`` bytes per second, i.e. 10 minutes plus about 4.5 hours per GiB at 64 KiB/s: any
  real server beats that, a trickling one is cut off. The deadline is checked as bytes arrive, so an attempt
  ends at most ``timeout`` seconds after it. An attempt past its deadline is retried like a timeout
  (resuming what arrived), then reported.
* Connection errors, timeouts, deadlines, ``5xx``, ``408``/``429`` and bodies shorter than announced are retried, up to
  ``retries`` more times, sleeping ``backoff * 2**k`` seconds between tries; other ``4xx`` (and unfollowed
  ``3xx``) fail at once.
* A sha256 mismatch deletes the bad bytes. If the bad file was assembled from a resumed ``.part`` (which may
  have come from an older version of the file) it is downloaded once more from zero, within ``retries``.

Every :class:`FetchError` message is one line that names the URL and says what to do.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from time import monotonic  # by name: tests replace the module's `time` to record sleeps
from urllib.parse import urlsplit

import requests
import urllib3

from pixmix.utils.errors import PixmixError

__all__ = [
    "DEADLINE_BASE", "DEADLINE_MIN_RATE", "DEFAULT_MAX_BYTES", "FetchError", "FetchResult", "download", "sha256_file",
]

#: Default size cap for one artefact (curated collections are at most a few GiB).
DEFAULT_MAX_BYTES = 16 * 2**30

#: Default deadline of one attempt: this many seconds, plus the file's bytes at ``DEADLINE_MIN_RATE``.
DEADLINE_BASE = 600.0
#: Bytes per second that the default deadline allows for (64 KiB/s: far below any real archive host).
DEADLINE_MIN_RATE = 64 * 1024

_CHUNK = 1 << 16
_ALLOWED_SCHEMES = ("http", "https")
_RETRY_STATUS_4XX = (408, 429)
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE_RE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)
_UNSATISFIED_RANGE_RE = re.compile(r"^\s*bytes\s+\*/(\d+)\s*$", re.IGNORECASE)


#: ``progress(done, total)``: bytes of the file so far, and its size when the server says.
Progress = Callable[[int, int | None], None]


class FetchError(PixmixError):
    """A download failed or was refused. The message is one line naming the URL or file and the fix."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(_one_line(message), param=param)


@dataclass(frozen=True)
class FetchResult:
    """What :func:`download` produced.

    ``attempts`` is the number of HTTP requests made (0 when ``dest`` was already present and verified);
    ``resumed`` is True when bytes from an earlier ``.part`` (this run's or a previous one's) were kept.
    """

    path: Path
    size: int
    sha256: str
    resumed: bool
    attempts: int


class _Retryable(Exception):
    """Internal: this attempt failed in a way that another attempt may fix."""


class _Refused(Exception):
    """Internal: this attempt failed for good; the message is the user-facing reason."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _describe(exc: BaseException) -> str:
    text = _one_line(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_url(url: str) -> None:
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        raise FetchError(f"invalid URL {url!r} ({_describe(exc)}): fix the manifest's url") from None
    if parts.scheme.lower() not in _ALLOWED_SCHEMES:
        raise FetchError(
            f"refusing URL {url!r}: only http:// and https:// downloads are allowed; fix the manifest's url"
        )
    if not host:
        raise FetchError(f"invalid URL {url!r}: it has no host; fix the manifest's url")


def _parse_content_range(value: str | None) -> tuple[int, int, int | None] | None:
    if not value:
        return None
    m = _CONTENT_RANGE_RE.match(value)
    if not m:
        return None
    start, end = int(m.group(1)), int(m.group(2))
    total = None if m.group(3) == "*" else int(m.group(3))
    if end < start or (total is not None and end >= total):
        return None
    return start, end, total


def _int_header(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 0.5,
    session: requests.Session | None = None,
    progress: Progress | None = None,
    deadline: float | None = None,
) -> FetchResult:
    """Download ``url`` to ``dest`` (see the module docstring for the rules).

    ``timeout`` is both the connect timeout and the longest wait for the next bytes of the body. ``retries``
    is the number of extra attempts after the first (so at most ``retries + 1`` requests, plus nothing for
    the fast path). ``progress(done, total)`` is called as bytes arrive; ``done`` counts resumed bytes too and
    ``total`` is None when the server does not say. An exception raised by ``progress`` aborts the download
    and keeps the ``.part`` for a later resume. ``deadline`` is the most seconds one attempt may take (None:
    ``DEADLINE_BASE`` plus the file's size at ``DEADLINE_MIN_RATE``; see the module docstring).
    """
    _check_url(url)
    dest = Path(dest)
    expected = None
    if sha256 is not None:
        expected = sha256.strip().lower()
        if not _SHA256_RE.match(expected):
            raise FetchError(f"invalid sha256 {sha256!r} for URL {url}: the manifest needs 64 hex digits")
    if max_bytes < 0 or retries < 0 or backoff < 0 or timeout <= 0:
        raise FetchError("download: max_bytes, retries and backoff must be >= 0 and timeout > 0")
    if deadline is not None and not deadline > 0:
        raise FetchError(f"download: deadline must be > 0 seconds (or None for the default), got {deadline!r}",
                         param="deadline")

    if expected is not None and dest.is_file() and sha256_file(dest) == expected:
        size = dest.stat().st_size
        _remove(dest.with_name(dest.name + ".part"))
        return FetchResult(path=dest, size=size, sha256=expected, resumed=False, attempts=0)

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    own_session = session is None
    sess = session if session is not None else requests.Session()
    try:
        limits = _Limits(max_bytes, timeout, deadline)
        return _download(url, dest, part, expected, limits, retries, backoff, sess, progress)
    finally:
        if own_session:
            sess.close()


@dataclass(frozen=True)
class _Limits:
    """What bounds one attempt: the file's size, the wait for the next bytes, the attempt's duration."""

    max_bytes: int
    timeout: float
    deadline: float | None  # None: DEADLINE_BASE + size / DEADLINE_MIN_RATE

    def allowed(self, size: int | None, received: int) -> float:
        """Seconds an attempt may take, given the announced size (None: unknown) and the bytes so far."""
        if self.deadline is not None:
            return self.deadline
        return DEADLINE_BASE + max(size or 0, received) / DEADLINE_MIN_RATE


def _download(url: str, dest: Path, part: Path, expected: str | None, limits: _Limits, retries: int,
              backoff: float, sess: requests.Session, progress: Progress | None) -> FetchResult:
    """The retry loop of :func:`download`: attempts until a complete (and, with ``expected``, verified) file."""
    attempts = 0
    kept_old_bytes = False  # some bytes of the final .part came from before the current request
    restarted_after_mismatch = False
    last_error = "no attempt made"
    while True:
        if attempts > retries:
            raise FetchError(
                f"download of {url} failed after {attempts} attempt(s), last error: {last_error}; "
                "check the network and the manifest's url, then run again (partial data is kept for resuming)"
            )
        if attempts:
            delay = backoff * (2 ** (attempts - 1))
            if delay:
                time.sleep(delay)
        attempts += 1
        try:
            resumed_now = _attempt(url, part, limits, sess, progress)
        except _Retryable as exc:
            last_error = str(exc)
            continue
        except _Refused as exc:
            _remove(part)
            raise FetchError(str(exc)) from None
        kept_old_bytes = kept_old_bytes or resumed_now

        actual = sha256_file(part)
        if expected is not None and actual != expected:
            _remove(part)
            if kept_old_bytes and not restarted_after_mismatch and attempts <= retries:
                # The kept prefix may be stale or corrupt: one clean download from zero.
                restarted_after_mismatch = True
                kept_old_bytes = False
                last_error = f"sha256 mismatch after resuming (expected {expected}, got {actual})"
                continue
            raise FetchError(
                f"sha256 mismatch for {url}: expected {expected}, got {actual}; the downloaded file was "
                "deleted; check the manifest's sha256 and url (the source may have changed)"
            )
        size = part.stat().st_size
        os.replace(part, dest)
        return FetchResult(path=dest, size=size, sha256=actual, resumed=kept_old_bytes, attempts=attempts)


def _body_chunks(resp: requests.Response) -> Iterator[bytes]:
    """The (content-decoded) body in pieces as they arrive.

    ``raw.read1`` (urllib3 >= 2) hands over every byte that arrived before a connection broke, so a resume
    starts exactly where the data stopped; ``iter_content`` would drop the last partial chunk.
    """
    read1 = getattr(resp.raw, "read1", None)
    if read1 is None:  # pragma: no cover - urllib3 1.x
        yield from resp.iter_content(_CHUNK)
        return
    while True:
        chunk = read1(_CHUNK, decode_content=True)
        if not chunk:
            return
        yield chunk


@dataclass(frozen=True)
class _Body:
    """Where a response's body goes and how long it must be."""

    mode: str  # "ab": appended to the kept .part (a 206), "wb": the whole file (a 200)
    done: int  # bytes of the file already in the .part before the body
    length: int | None  # bytes the body announced (None: unknown)
    total: int | None  # bytes of the whole file (None: unknown)
    encoded: bool  # content-encoded: the announced lengths count encoded bytes, not what we write


def _attempt(url: str, part: Path, limits: _Limits, sess: requests.Session, progress: Progress | None) -> bool:
    """One request. Leaves a complete body in ``part`` and returns whether earlier bytes were kept.

    Raises _Retryable (the .part keeps what arrived) or _Refused (the caller removes the .part).
    """
    started = monotonic()
    max_bytes, timeout = limits.max_bytes, limits.timeout
    offset = part.stat().st_size if part.exists() else 0
    if offset > max_bytes:
        _remove(part)
        offset = 0
    resp = _request(url, offset, timeout, sess)
    with resp:
        if _already_complete(resp, url, part, offset, progress):
            return True
        body = _body(resp, url, part, offset, max_bytes)
        if progress is not None:
            progress(body.done, body.total)
        received, done = _write_body(resp, url, part, body, limits, started, progress)
        if body.length is not None and not body.encoded and received != body.length:
            if received > body.length:  # more than announced: the .part cannot be trusted
                _remove(part)
                raise _Retryable(f"body longer than announced: got {received} of {body.length} bytes")
            raise _Retryable(f"body cut short: got {received} of {body.length} bytes")
        if body.total is not None and done != body.total:
            raise _Retryable(f"incomplete file: have {done} of {body.total} bytes")
        return resp.status_code == 206


def _request(url: str, offset: int, timeout: float, sess: requests.Session) -> requests.Response:
    """The streamed response for the file from byte ``offset`` on (a ``Range`` request when ``offset``)."""
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return sess.get(url, headers=headers, stream=True, timeout=(timeout, timeout))
    except (requests.exceptions.InvalidSchema, requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema, requests.exceptions.TooManyRedirects) as exc:
        raise _Refused(f"cannot download {url}: {_describe(exc)}; fix the manifest's url") from None
    except requests.exceptions.RequestException as exc:
        raise _Retryable(_describe(exc)) from None


def _already_complete(resp: requests.Response, url: str, part: Path, offset: int, progress: Progress | None) -> bool:
    """Whether a 416 says the .part already holds the whole file; raises for a status without a usable body."""
    final_url = resp.url or url
    if urlsplit(final_url).scheme.lower() not in _ALLOWED_SCHEMES:  # pragma: no cover - requests refuses first
        raise _Refused(f"{url} redirected to a non-http URL {final_url!r}; fix the manifest's url")
    status = resp.status_code
    if status == 416 and offset:
        m = _UNSATISFIED_RANGE_RE.match(resp.headers.get("Content-Range", ""))
        if m and int(m.group(1)) == offset:
            if progress is not None:
                progress(offset, offset)
            return True
        _remove(part)
        raise _Retryable(f"HTTP 416 for a resume at byte {offset}; restarting from zero")
    if status >= 500 or status in _RETRY_STATUS_4XX:
        raise _Retryable(f"HTTP {status}")
    if status not in (200, 206):
        raise _Refused(f"HTTP {status} for URL {url}: check the manifest's url")
    return False


def _body(resp: requests.Response, url: str, part: Path, offset: int, max_bytes: int) -> _Body:
    """How a 200 or 206 body is written and checked; a file announced over ``max_bytes`` is refused."""
    encoded = resp.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")
    total: int | None
    if resp.status_code == 206:
        rng = _parse_content_range(resp.headers.get("Content-Range"))
        if rng is None or rng[0] != offset:
            _remove(part)
            raise _Retryable(
                f"HTTP 206 with Content-Range {resp.headers.get('Content-Range')!r} for a resume at "
                f"byte {offset}; restarting from zero"
            )
        start, end, total = rng
        body = _Body("ab", offset, end - start + 1, total, encoded)
    else:  # 200: the whole file, whether or not we asked for a range
        total = _int_header(resp.headers.get("Content-Length"))
        if encoded:
            total = None  # Content-Length counts encoded bytes
        body = _Body("wb", 0, total, total, encoded)
    if total is not None and total > max_bytes:
        raise _Refused(
            f"{url} is {total} bytes, over the {max_bytes}-byte limit; raise max_bytes if the "
            "manifest's file really is that large"
        )
    return body


def _write_body(resp: requests.Response, url: str, part: Path, body: _Body, limits: _Limits, started: float,
                progress: Progress | None) -> tuple[int, int]:
    """Stream the body into ``part`` (synced): ``(bytes received, bytes of the file now in the .part)``.

    Past the attempt's deadline (counted from ``started``) it stops with _Retryable, keeping what arrived.
    """
    received, done, max_bytes = 0, body.done, limits.max_bytes
    try:
        with open(part, body.mode) as f:
            for chunk in _body_chunks(resp):
                if not chunk:
                    continue
                received += len(chunk)
                if done + len(chunk) > max_bytes:
                    raise _Refused(
                        f"{url} sent more than the {max_bytes}-byte limit; raise max_bytes if the "
                        "manifest's file really is that large"
                    )
                f.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, body.total)
                elapsed, allowed = monotonic() - started, limits.allowed(body.length, received)
                if elapsed > allowed:
                    raise _Retryable(f"deadline of {allowed:g} s passed after {received} bytes in {elapsed:.1f} s "
                                    "(the server sends too slowly; raise the deadline if it is genuine)")
            f.flush()
            os.fsync(f.fileno())
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as exc:
        raise _Retryable(f"body cut short after {received} bytes ({_describe(exc)})") from None
    return received, done
