"""A small, real HTTP/1.1 server on 127.0.0.1 for tests (threaded ``http.server``, ephemeral port).

Usage::

    with serve({"/a.bin": b"...", "/gone": Route(status=404), "/flaky": Route(data, fail_first=2)}) as base:
        requests.get(base + "/a.bin")
        assert base.requests("/a.bin")[0].headers.get("range") is None

A route is ``bytes`` (served with Range support), a :class:`Route` (configurable behaviour), or a callable
``fn(request: Recorded) -> bytes | Route`` evaluated per request. ``serve`` yields a :class:`BaseURL`: a ``str``
(``http://127.0.0.1:PORT``) that also carries the request log. Every request, including HEAD and requests for
unknown paths (404), is logged *before* any response byte is sent, so a client that has read a response can
assert on its log entry without racing the server thread.

Only loopback is ever bound; handler sockets time out after ``HANDLER_TIMEOUT`` seconds, stalls are bounded
and interrupted on exit, and the server is shut down and closed when the ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["BaseURL", "Recorded", "Route", "serve"]

HANDLER_TIMEOUT = 5.0
_RANGE_RE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


@dataclass
class Route:
    """How one path answers.

    body: the full resource. status: the status for normal responses (200; a non-2xx status sends ``body``
    as is, without Range handling). honor_range: answer ``Range: bytes=a-b`` with 206 + Content-Range (or 416);
    when False, ranges are ignored and the whole body comes back with 200. fail_first / fail_status: answer
    the first K requests with ``fail_status`` (503). truncate_after / truncate_times: for the first
    ``truncate_times`` (successful) responses, announce the full Content-Length but send only
    ``truncate_after`` bytes of the body, then close the connection. send_length: False omits Content-Length
    and ends the body by closing the connection. stall: seconds to wait after sending ``stall_after`` body
    bytes (bounded, interrupted on server exit). drip: when > 0, send the body one byte every ``drip`` seconds
    (a server that is slow but never silent long enough for a read timeout; interrupted on server exit).
    headers: extra response headers.
    """

    body: bytes = b""
    status: int = 200
    honor_range: bool = True
    fail_first: int = 0
    fail_status: int = 503
    truncate_after: int | None = None
    truncate_times: int = 1
    send_length: bool = True
    stall: float = 0.0
    stall_after: int = 0
    drip: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Recorded:
    """One request as the server saw it. ``headers`` keys are lower-case. ``bytes_sent`` is the number of body
    bytes the server answered with (planned before sending; a truncated response counts what it sends)."""

    method: str
    path: str
    headers: dict[str, str]
    index: int  # 0-based count of earlier requests for this path
    status: int = 0
    bytes_sent: int = 0


class BaseURL(str):
    """``http://127.0.0.1:PORT`` with the server's request log attached."""

    _log: list[Recorded]
    _lock: threading.Lock

    def requests(self, path: str | None = None) -> list[Recorded]:
        """Recorded requests (for ``path`` only, when given), oldest first."""
        with self._lock:
            return [r for r in self._log if path is None or r.path == path]

    def url(self, path: str) -> str:
        return self + path


def _parse_range(value: str, size: int) -> tuple[int, int] | None | str:
    """(start, end) inclusive, None to ignore the header, or "unsatisfiable"."""
    m = _RANGE_RE.match(value)
    if not m or (not m.group(1) and not m.group(2)):
        return None  # malformed or multi-range: ignore, as RFC 9110 allows
    if m.group(1):
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else size - 1
        if start >= size:
            return "unsatisfiable"
        if end < start:
            return None
        return start, min(end, size - 1)
    suffix = int(m.group(2))
    if suffix == 0:
        return "unsatisfiable"
    return max(0, size - suffix), size - 1


@contextlib.contextmanager
def serve(routes: dict[str, bytes | Route | Callable[[Recorded], bytes | Route]]) -> Iterator[BaseURL]:
    """Run a ThreadingHTTPServer on 127.0.0.1:0 in a daemon thread for the duration of the block."""
    log: list[Recorded] = []
    lock = threading.Lock()
    counts: dict[str, int] = {}
    served: dict[str, int] = {}  # successful (non-failed) responses per path, for truncate_times
    closing = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = HANDLER_TIMEOUT

        def log_message(self, format, *args):  # noqa: A002 - keep test output quiet
            pass

        def do_GET(self):
            self._answer(head=False)

        def do_HEAD(self):
            self._answer(head=True)

        def _record(self, path: str, index: int, status: int, nbytes: int) -> None:
            with lock:
                log.append(
                    Recorded(
                        method=self.command,
                        path=path,
                        headers={k.lower(): v for k, v in self.headers.items()},
                        index=index,
                        status=status,
                        bytes_sent=nbytes,
                    )
                )

        def _answer(self, head: bool) -> None:
            path = self.path.split("?", 1)[0]
            with lock:  # reserve this request's index atomically
                index = counts.get(path, 0)
                counts[path] = index + 1
            spec = routes.get(path)
            if callable(spec) and not isinstance(spec, (bytes, Route)):
                spec = spec(Recorded(self.command, path, {k.lower(): v for k, v in self.headers.items()}, index))
            if spec is None:
                route = Route(body=b"not found\n", status=404)
            elif isinstance(spec, (bytes, bytearray)):
                route = Route(body=bytes(spec))
            else:
                route = spec

            if index < route.fail_first:
                body = f"failing request {index + 1} of {route.fail_first}\n".encode()
                self._record(path, index, route.fail_status, 0 if head else len(body))
                self._send(route.fail_status, body, {}, head, route, len(body), len(body))
                return

            body, status, extra = route.body, route.status, {}
            if 200 <= route.status < 300:
                extra["Accept-Ranges"] = "bytes" if route.honor_range else "none"
                rng_header = self.headers.get("Range")
                if rng_header and route.honor_range:
                    rng = _parse_range(rng_header, len(body))
                    if rng == "unsatisfiable":
                        status, body = 416, b""
                        extra["Content-Range"] = f"bytes */{len(route.body)}"
                    elif rng is not None:
                        start, end = rng
                        status, body = 206, body[start : end + 1]
                        extra["Content-Range"] = f"bytes {start}-{end}/{len(route.body)}"
            announced = len(body)
            sent = len(body)
            with lock:
                nth_ok = served.get(path, 0)
                served[path] = nth_ok + (0 if head else 1)
            if route.truncate_after is not None and nth_ok < route.truncate_times and status in (200, 206):
                sent = min(route.truncate_after, len(body))
            self._record(path, index, status, 0 if head else sent)
            self._send(status, body[:sent], extra, head, route, announced, sent)

        def _send(self, status, body, extra, head, route, announced, sent) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            for k, v in {**route.headers, **extra}.items():
                self.send_header(k, v)
            truncated = sent < announced
            if route.send_length or head:
                self.send_header("Content-Length", str(announced))
            if truncated or not route.send_length:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if head:
                return
            try:
                if route.drip > 0:
                    for i in range(len(body)):
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                        if closing.wait(route.drip):
                            break
                elif route.stall and route.stall_after < len(body):
                    self.wfile.write(body[: route.stall_after])
                    self.wfile.flush()
                    closing.wait(route.stall)
                    self.wfile.write(body[route.stall_after :])
                else:
                    self.wfile.write(body)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    base = BaseURL(f"http://127.0.0.1:{server.server_address[1]}")
    base._log = log
    base._lock = lock
    try:
        yield base
    finally:
        closing.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=HANDLER_TIMEOUT)
