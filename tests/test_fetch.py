"""The untrusted-input edge of ``mixset build``: downloads (mixset.sources.fetch), archives and images
(mixset.sources.archives).

Every download test talks to a real HTTP server on 127.0.0.1 (tests/http_server.py) that the test starts
and stops; nothing else on the network is contacted.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import shutil
import socket
import stat
import struct
import tarfile
import time
import zipfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from http_server import Route, serve
from PIL import Image

from mixset.sources import fetch as fetch_mod
from mixset.sources.archives import ArchiveError, ImageError, check_image, safe_extract
from mixset.sources.fetch import FetchError, FetchResult, download

DATA = bytes((i * 7 + i // 256) % 256 for i in range(300_000))
DATA_SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    """Proxies from the environment must not capture 127.0.0.1 traffic."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def assert_one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text
    return text


# --- downloads ------------------------------------------------------------------------------------------


def test_download_and_archive_errors_are_user_errors(tmp_path):
    from pixmix.utils.errors import PixmixError

    assert issubclass(FetchError, PixmixError) and issubclass(ArchiveError, PixmixError)
    with pytest.raises(FetchError) as err:
        download("ftp://example.org/a.tar", tmp_path / "a.tar")
    assert "only http:// and https://" in assert_one_line(err.value)
    with pytest.raises(FetchError, match="timeout > 0"):
        download("https://example.org/a.tar", tmp_path / "a.tar", timeout=0)
    (tmp_path / "not-an-archive").write_text("plain text\n")
    with pytest.raises(ArchiveError) as failure:
        safe_extract(tmp_path / "not-an-archive", tmp_path / "out")
    assert "not a tar" in assert_one_line(failure.value) and not (tmp_path / "out").exists()
    assert FetchError("two\nlines", param="url").param == "url" and str(FetchError("two\nlines")) == "two lines"


def test_good_download_then_cached(tmp_path):
    calls = []
    with serve({"/a.tar": DATA}) as base:
        dest = tmp_path / "dl" / "a.tar"
        res = download(base + "/a.tar", dest, sha256=DATA_SHA.upper(), progress=lambda d, t: calls.append((d, t)))
        assert res == FetchResult(path=dest, size=len(DATA), sha256=DATA_SHA, resumed=False, attempts=1)
        assert dest.read_bytes() == DATA
        assert listing(tmp_path / "dl") == ["a.tar"]  # no .part left
        assert calls[0] == (0, len(DATA)) and calls[-1] == (len(DATA), len(DATA))
        assert [d for d, _ in calls] == sorted(d for d, _ in calls)
        (req,) = base.requests("/a.tar")
        assert req.headers.get("range") is None and req.headers["accept-encoding"] == "identity"

        again = download(base + "/a.tar", dest, sha256=DATA_SHA)
        assert again == FetchResult(path=dest, size=len(DATA), sha256=DATA_SHA, resumed=False, attempts=0)
        assert len(base.requests()) == 1  # the second call made no request


def test_existing_dest_with_wrong_content_is_replaced(tmp_path):
    dest = tmp_path / "a.bin"
    dest.write_bytes(b"stale")
    with serve({"/a": DATA}) as base:
        res = download(base + "/a", dest, sha256=DATA_SHA)
        assert res.attempts == 1 and dest.read_bytes() == DATA


def test_wrong_checksum_deletes_everything(tmp_path):
    wrong = "0" * 64
    with serve({"/a": DATA}) as base:
        with pytest.raises(FetchError) as err:
            download(base + "/a", tmp_path / "a.bin", sha256=wrong, backoff=0)
        assert len(base.requests("/a")) == 1  # a fresh download that mismatches is not retried
    text = assert_one_line(err.value)
    assert wrong in text and DATA_SHA in text and base + "/a" in text
    assert listing(tmp_path) == []


def test_invalid_sha256_in_manifest(tmp_path):
    with pytest.raises(FetchError, match="64 hex digits"):
        download("http://127.0.0.1:9/a", tmp_path / "a", sha256="abc")


@pytest.mark.parametrize("status", [404, 403, 410])
def test_4xx_fails_once_without_retry(tmp_path, status):
    with serve({"/missing": Route(b"nope", status=status)}) as base:
        url = base + "/missing"
        with pytest.raises(FetchError) as err:
            download(url, tmp_path / "x.bin", backoff=0)
        assert len(base.requests("/missing")) == 1
    assert assert_one_line(err.value) == f"HTTP {status} for URL {url}: check the manifest's url"
    assert listing(tmp_path) == []


def test_unknown_path_is_404(tmp_path):
    with serve({}) as base:
        with pytest.raises(FetchError, match="HTTP 404 for URL .*/nothing-here"):
            download(base + "/nothing-here", tmp_path / "x", backoff=0)


def test_503_twice_then_ok_with_exponential_backoff(tmp_path, monkeypatch):
    delays = []
    monkeypatch.setattr(fetch_mod, "time", SimpleNamespace(sleep=delays.append))
    with serve({"/flaky": Route(DATA, fail_first=2)}) as base:
        res = download(base + "/flaky", tmp_path / "f.bin", sha256=DATA_SHA, backoff=0.25)
        assert [r.status for r in base.requests("/flaky")] == [503, 503, 200]
    assert res.attempts == 3 and not res.resumed and (tmp_path / "f.bin").read_bytes() == DATA
    assert delays == [0.25, 0.5]


def test_5xx_forever_gives_up_after_retries(tmp_path):
    with serve({"/down": Route(DATA, fail_first=100, fail_status=502)}) as base:
        with pytest.raises(FetchError) as err:
            download(base + "/down", tmp_path / "d.bin", retries=2, backoff=0)
        assert len(base.requests("/down")) == 3
    text = assert_one_line(err.value)
    assert "3 attempt" in text and "HTTP 502" in text and base + "/down" in text
    assert listing(tmp_path) == []


def test_429_is_retried(tmp_path):
    with serve({"/busy": Route(DATA, fail_first=1, fail_status=429)}) as base:
        assert download(base + "/busy", tmp_path / "b", sha256=DATA_SHA, backoff=0).attempts == 2


def test_truncated_body_is_resumed_with_range(tmp_path):
    cut = 100_000
    with serve({"/t": Route(DATA, truncate_after=cut)}) as base:
        res = download(base + "/t", tmp_path / "t.bin", sha256=DATA_SHA, backoff=0)
        first, second = base.requests("/t")
    assert first.headers.get("range") is None and first.bytes_sent == cut
    assert second.headers["range"] == f"bytes={cut}-"
    assert second.status == 206 and second.bytes_sent == len(DATA) - cut
    assert res.attempts == 2 and res.resumed and res.size == len(DATA)
    assert (tmp_path / "t.bin").read_bytes() == DATA and listing(tmp_path) == ["t.bin"]


def test_truncated_body_without_range_support_restarts(tmp_path):
    with serve({"/t": Route(DATA, truncate_after=5000, honor_range=False)}) as base:
        res = download(base + "/t", tmp_path / "t.bin", sha256=DATA_SHA, backoff=0)
        assert [r.status for r in base.requests("/t")] == [200, 200]
    assert res.attempts == 2 and not res.resumed and (tmp_path / "t.bin").read_bytes() == DATA


def test_truncated_every_time_gives_up_and_keeps_part(tmp_path):
    with serve({"/t": Route(DATA, truncate_after=10, truncate_times=100, honor_range=False)}) as base:
        with pytest.raises(FetchError, match="cut short"):
            download(base + "/t", tmp_path / "t.bin", retries=1, backoff=0)
    assert listing(tmp_path) == ["t.bin.part"]  # kept for a later resume; never renamed to dest


def test_existing_part_is_resumed(tmp_path):
    have = 123_456
    (tmp_path / "r.bin.part").write_bytes(DATA[:have])
    calls = []
    with serve({"/r": DATA}) as base:
        res = download(base + "/r", tmp_path / "r.bin", sha256=DATA_SHA, progress=lambda d, t: calls.append((d, t)))
        (req,) = base.requests("/r")
    assert req.headers["range"] == f"bytes={have}-" and req.status == 206
    assert req.bytes_sent == len(DATA) - have  # only the remaining bytes travelled
    assert res.resumed and res.attempts == 1 and (tmp_path / "r.bin").read_bytes() == DATA
    assert calls[0] == (have, len(DATA)) and calls[-1] == (len(DATA), len(DATA))
    assert listing(tmp_path) == ["r.bin"]


def test_existing_part_server_ignores_range(tmp_path):
    (tmp_path / "r.bin.part").write_bytes(b"x" * 5000)
    with serve({"/r": Route(DATA, honor_range=False)}) as base:
        res = download(base + "/r", tmp_path / "r.bin", sha256=DATA_SHA)
        (req,) = base.requests("/r")
    assert req.headers["range"] == "bytes=5000-" and req.status == 200 and req.bytes_sent == len(DATA)
    assert not res.resumed and res.attempts == 1 and (tmp_path / "r.bin").read_bytes() == DATA


def test_stale_part_with_wrong_prefix_restarts_once_from_zero(tmp_path):
    (tmp_path / "r.bin.part").write_bytes(b"\xff" * 1000)  # e.g. left by an older version of the file
    with serve({"/r": DATA}) as base:
        res = download(base + "/r", tmp_path / "r.bin", sha256=DATA_SHA, backoff=0)
        first, second = base.requests("/r")
    assert first.headers["range"] == "bytes=1000-" and second.headers.get("range") is None
    assert res.attempts == 2 and not res.resumed and (tmp_path / "r.bin").read_bytes() == DATA


def test_complete_part_and_416(tmp_path):
    (tmp_path / "r.bin.part").write_bytes(DATA)
    with serve({"/r": DATA}) as base:
        res = download(base + "/r", tmp_path / "r.bin", sha256=DATA_SHA)
        assert [r.status for r in base.requests("/r")] == [416]
    assert res.resumed and res.attempts == 1 and (tmp_path / "r.bin").read_bytes() == DATA


def test_oversize_by_content_length(tmp_path):
    with serve({"/big": DATA}) as base:
        with pytest.raises(FetchError) as err:
            download(base + "/big", tmp_path / "big", max_bytes=len(DATA) - 1, backoff=0)
        (req,) = base.requests("/big")  # refused, not retried
    text = assert_one_line(err.value)
    assert str(len(DATA)) in text and "limit" in text and base + "/big" in text
    assert listing(tmp_path) == []


def test_oversize_while_streaming(tmp_path):
    with serve({"/big": Route(DATA, send_length=False)}) as base:
        with pytest.raises(FetchError, match="more than the 100000-byte limit"):
            download(base + "/big", tmp_path / "big", max_bytes=100_000, backoff=0)
        assert len(base.requests("/big")) == 1
    assert listing(tmp_path) == []


def test_no_content_length_is_fine_within_limit(tmp_path):
    with serve({"/n": Route(DATA, send_length=False)}) as base:
        res = download(base + "/n", tmp_path / "n", sha256=DATA_SHA, max_bytes=len(DATA))
    assert res.size == len(DATA) and (tmp_path / "n").read_bytes() == DATA


class _NoNetwork(requests.Session):
    def request(self, *args, **kwargs):  # pragma: no cover - must never run
        raise AssertionError("the network was touched")


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/a.tar",
        "data:text/plain,hello",
        "gopher://127.0.0.1/",
        "//127.0.0.1/a",
        "/etc/passwd",
        "http:///no-host",
        "HTTPS://",
        "javascript:alert(1)",
    ],
)
def test_non_http_urls_refused_offline(tmp_path, url):
    dest = tmp_path / "sub" / "x.bin"
    with pytest.raises(FetchError) as err:
        download(url, dest, session=_NoNetwork())
    assert repr(url) in assert_one_line(err.value) and "manifest's url" in str(err.value)
    assert listing(tmp_path) == []  # not even the folder was made


def test_redirect_to_file_url_refused(tmp_path):
    routes = {"/r": Route(status=302, headers={"Location": "file:///etc/passwd"})}
    with serve(routes) as base:
        with pytest.raises(FetchError) as err:
            download(base + "/r", tmp_path / "x", backoff=0)
        assert len(base.requests("/r")) == 1
    assert base + "/r" in assert_one_line(err.value)
    assert listing(tmp_path) == []


def test_redirect_within_http_is_followed(tmp_path):
    with serve({"/old": Route(status=301, headers={"Location": "/new"}), "/new": DATA}) as base:
        res = download(base + "/old", tmp_path / "x", sha256=DATA_SHA)
    assert res.attempts == 1 and (tmp_path / "x").read_bytes() == DATA


def test_read_timeout_is_retried_then_reported(tmp_path):
    with serve({"/slow": Route(DATA, stall=10.0, stall_after=1000)}) as base:
        with pytest.raises(FetchError) as err:
            download(base + "/slow", tmp_path / "s", timeout=0.3, retries=1, backoff=0)
        assert len(base.requests("/slow")) == 2
    assert "2 attempt" in assert_one_line(err.value) and "timed out" in str(err.value).lower()


def test_connection_refused_is_retried(tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(FetchError) as err:
        download(f"http://127.0.0.1:{port}/x", tmp_path / "x", retries=2, backoff=0, timeout=2)
    text = assert_one_line(err.value)
    assert "3 attempt" in text and f"127.0.0.1:{port}/x" in text
    assert listing(tmp_path) == []


def test_caller_session_is_used_and_left_open(tmp_path):
    with serve({"/a": DATA, "/b": DATA}) as base, requests.Session() as s:
        download(base + "/a", tmp_path / "a", session=s, sha256=DATA_SHA)
        download(base + "/b", tmp_path / "b", session=s, sha256=DATA_SHA)
        assert [r.path for r in base.requests()] == ["/a", "/b"]


def test_test_server_head_and_ranges():
    with serve({"/a": b"0123456789"}) as base:
        h = requests.head(base + "/a")
        assert h.status_code == 200 and h.headers["Content-Length"] == "10" and h.content == b""
        r = requests.get(base + "/a", headers={"Range": "bytes=2-4"})
        assert (r.status_code, r.content, r.headers["Content-Range"]) == (206, b"234", "bytes 2-4/10")
        r = requests.get(base + "/a", headers={"Range": "bytes=-3"})
        assert (r.status_code, r.content) == (206, b"789")
        r = requests.get(base + "/a", headers={"Range": "bytes=10-"})
        assert (r.status_code, r.headers["Content-Range"]) == (416, "bytes */10")
        assert [r.method for r in base.requests("/a")] == ["HEAD", "GET", "GET", "GET"]


# --- archives -------------------------------------------------------------------------------------------

GOOD = {
    "fractals/images/a.jpg": b"jpeg-a" * 100,
    "fractals/images/b.jpg": b"jpeg-b" * 50,
    "fractals/images/notes.txt": b"notes",
    "fractals/LICENSE": b"CC-BY",
    "fractals/thumbs/c.jpg": b"thumb",
}


def make_tar(path: Path, files: dict[str, bytes], mode: str = "w:gz", extra=()) -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info)
    return path


def tar_special(name: str, type_: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    return info


def make_zip(path: Path, files: dict[str, bytes], extra=()) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        for info, data in extra:
            zf.writestr(info, data)
    return path


@pytest.fixture
def work(tmp_path):
    """(root to snapshot, archives folder, parent of out_dir, out_dir)."""
    (tmp_path / "archives").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_bytes(b"untouched")
    return SimpleNamespace(root=tmp_path, archives=tmp_path / "archives", out=tmp_path / "data" / "fractals-v1")


@pytest.mark.parametrize("mode", ["w:gz", "w", "w:bz2", "w:xz"])
def test_good_tar_extracts_exactly(work, mode):
    archive = make_tar(work.archives / "collection.zip", GOOD, mode)  # misleading name: detection is by content
    paths = safe_extract(archive, work.out)
    assert paths == [work.out / n for n in GOOD]
    assert sorted(str(p.relative_to(work.out)) for p in work.out.rglob("*") if p.is_file()) == sorted(GOOD)
    for name, data in GOOD.items():
        assert (work.out / name).read_bytes() == data
    assert sorted(p.name for p in work.out.parent.iterdir()) == ["fractals-v1", "keep.txt"]  # no temp folder left


def test_good_zip_extracts_exactly(work):
    archive = make_zip(work.archives / "collection.tar.gz", {"fractals/": b"", **GOOD})
    paths = safe_extract(archive, work.out)
    assert paths == [work.out / n for n in GOOD]
    for name, data in GOOD.items():
        assert (work.out / name).read_bytes() == data
    assert sorted(p.name for p in work.out.parent.iterdir()) == ["fractals-v1", "keep.txt"]


def test_include_filter(work):
    only_jpgs = lambda name: fnmatch.fnmatch(name, "fractals/images/*.jpg")  # noqa: E731
    for maker, name in ((make_tar, "c.tgz"), (make_zip, "c.zip")):
        out = work.out.with_name(name)
        paths = safe_extract(maker(work.archives / name, GOOD), out, include=only_jpgs)
        assert paths == [out / "fractals/images/a.jpg", out / "fractals/images/b.jpg"]
        assert listing(out) == ["fractals", "fractals/images", "fractals/images/a.jpg", "fractals/images/b.jpg"]


def _bad_tars(archives: Path) -> list[tuple[Path, str]]:
    good = {"fractals/images/a.jpg": b"a"}
    cases = [
        ("dotdot", {**good, "../evil": b"x"}, (), "../evil"),
        ("deep-dotdot", {**good, "fractals/../../evil": b"x"}, (), "fractals/../../evil"),
        ("abs", {**good, "/abs": b"x"}, (), "/abs"),
        ("backslash", {**good, "..\\evil": b"x"}, (), "..\\\\evil"),
        ("symlink", good, [tar_special("fractals/link", tarfile.SYMTYPE, "/etc/passwd")], "fractals/link"),
        ("hardlink", good, [tar_special("fractals/hard", tarfile.LNKTYPE, "/etc/passwd")], "fractals/hard"),
        ("fifo", good, [tar_special("fractals/pipe", tarfile.FIFOTYPE)], "fractals/pipe"),
        ("chardev", good, [tar_special("fractals/null", tarfile.CHRTYPE)], "fractals/null"),
        # in every case a good member comes first: nothing may be written before all members are checked
        ("symlink-to-parent", good, [tar_special("fractals/out", tarfile.SYMTYPE, "..")], "fractals/out"),
    ]
    return [(make_tar(archives / f"{tag}.tar.gz", files, extra=extra), member) for tag, files, extra, member in cases]


def _bad_zips(archives: Path) -> list[tuple[Path, str]]:
    good = {"fractals/images/a.jpg": b"a"}
    link = zipfile.ZipInfo("fractals/link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    fifo = zipfile.ZipInfo("fractals/pipe")
    fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
    cases = [
        ("dotdot", {**good, "../evil": b"x"}, (), "../evil"),
        ("abs", {**good, "/abs": b"x"}, (), "/abs"),
        ("backslash", {**good, "..\\evil": b"x"}, (), "..\\\\evil"),
        ("drive", {**good, "C:/evil": b"x"}, (), "C:/evil"),
        ("symlink", good, [(link, "/etc/passwd")], "fractals/link"),
        ("fifo", good, [(fifo, "")], "fractals/pipe"),
    ]
    return [(make_zip(archives / f"{tag}.zip", files, extra), member) for tag, files, extra, member in cases]


@pytest.mark.parametrize("fmt", ["tar", "zip"])
def test_unsafe_members_refuse_whole_archive(work, fmt):
    cases = _bad_tars(work.archives) if fmt == "tar" else _bad_zips(work.archives)
    before = listing(work.root)
    for archive, member in cases:
        with pytest.raises(ArchiveError) as err:
            safe_extract(archive, work.out)
        text = assert_one_line(err.value)
        assert f"'{member}'" in text and str(archive) in text, text
        assert "nothing was extracted" in text
        assert listing(work.root) == before, archive  # nothing inside out_dir, nothing beside or above it
        assert not (work.root.parent / "evil").exists()


def test_unsafe_member_refused_even_when_filtered_out(work):
    archive = make_tar(work.archives / "a.tgz", {"fractals/images/a.jpg": b"a", "../evil": b"x"})
    with pytest.raises(ArchiveError, match=r"'\.\./evil'"):
        safe_extract(archive, work.out, include=lambda n: n.startswith("fractals/"))
    assert not work.out.exists()


def test_duplicates_and_file_folder_clashes_refused(work):
    dup = make_tar(work.archives / "dup.tar", {"a.jpg": b"1"}, "w")
    with tarfile.open(dup, "a") as tf:
        info = tarfile.TarInfo("./a.jpg")
        info.size = 1
        tf.addfile(info, io.BytesIO(b"2"))
    with pytest.raises(ArchiveError, match="duplicate member 'a.jpg'"):
        safe_extract(dup, work.out)
    clash = make_zip(work.archives / "clash.zip", {"a": b"file", "a/b.jpg": b"x"})
    with pytest.raises(ArchiveError, match="inside 'a', which is a file"):
        safe_extract(clash, work.out)
    assert not work.out.exists()


def test_member_count_limit(work):
    files = {f"f/{i}.jpg": b"x" for i in range(20)}
    for archive in (make_tar(work.archives / "m.tgz", files), make_zip(work.archives / "m.zip", files)):
        with pytest.raises(ArchiveError, match="max_members"):
            safe_extract(archive, work.out, max_members=19)
        assert not work.out.exists()
        assert len(safe_extract(archive, work.out, max_members=20)) == 20
        shutil.rmtree(work.out)


def test_byte_limits(work):
    files = {"f/a.bin": b"\0" * 60_000, "f/b.bin": b"\0" * 60_000}
    for archive in (make_tar(work.archives / "z.tgz", files), make_zip(work.archives / "z.zip", files)):
        before = listing(work.root)
        with pytest.raises(ArchiveError, match="'f/a.bin'.*per-member limit of 50000"):
            safe_extract(archive, work.out, max_member_bytes=50_000)
        with pytest.raises(ArchiveError, match="more than the limit of 100000 bytes"):
            safe_extract(archive, work.out, max_total_bytes=100_000)
        assert listing(work.root) == before
        # the filter decides which bytes count
        assert len(safe_extract(archive, work.out, max_total_bytes=100_000, include=lambda n: n.endswith("a.bin"))) == 1
        shutil.rmtree(work.out)


def test_zip_with_lying_size_header_is_refused(work):
    payload = bytes(range(256)) * 40
    archive = work.archives / "liar.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("f/a.bin", payload)
    raw = bytearray(archive.read_bytes())
    local = raw.index(b"PK\x03\x04")
    central = raw.index(b"PK\x01\x02")
    struct.pack_into("<I", raw, local + 22, 16)  # uncompressed size claims 16 bytes
    struct.pack_into("<I", raw, central + 24, 16)
    archive.write_bytes(bytes(raw))
    before = listing(work.root)
    with pytest.raises(ArchiveError) as err:
        safe_extract(archive, work.out)
    assert str(archive) in assert_one_line(err.value)
    assert listing(work.root) == before


def test_not_an_archive_and_corrupt_archive(work):
    text = work.archives / "readme.tar.gz"
    text.write_text("just text\n")
    with pytest.raises(ArchiveError, match="is not a tar .* or zip archive"):
        safe_extract(text, work.out)
    good = make_tar(work.archives / "g.tar.gz", {f"f/{i}.bin": bytes(range(256)) * 200 for i in range(5)})
    cut = work.archives / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    before = listing(work.root)
    with pytest.raises(ArchiveError) as err:
        safe_extract(cut, work.out)
    assert str(cut) in assert_one_line(err.value)
    assert listing(work.root) == before


def test_out_dir_must_be_new_or_empty(work):
    archive = make_zip(work.archives / "a.zip", GOOD)
    work.out.mkdir()
    (work.out / "old.txt").write_text("x")
    with pytest.raises(ArchiveError, match="already exists and is not empty"):
        safe_extract(archive, work.out)
    assert listing(work.out) == ["old.txt"]
    (work.out / "old.txt").unlink()
    assert len(safe_extract(archive, work.out)) == len(GOOD)


# --- images ---------------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def crafted_png(width: int, height: int, idat: bytes = b"") -> bytes:
    """A tiny PNG whose IHDR claims width x height (1-bit greyscale)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    body = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat or zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def encoded(fmt: str, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, fmt)
    return buf.getvalue()


def test_check_image_valid(tmp_path):
    png = tmp_path / "a.png"
    png.write_bytes(encoded("PNG"))
    assert check_image(png) == (40, 30, "PNG")
    assert check_image(str(png)) == (40, 30, "PNG")
    assert check_image(encoded("JPEG", (17, 9))) == (17, 9, "JPEG")


def test_check_image_not_an_image(tmp_path):
    txt = tmp_path / "readme.jpg"
    txt.write_text("hello, I am text\n")
    with pytest.raises(ImageError) as err:
        check_image(txt)
    assert str(txt) in assert_one_line(err.value) and "not an image" in str(err.value)
    assert isinstance(err.value, ValueError) and not isinstance(err.value, ArchiveError)  # pixmix.data.images
    with pytest.raises(ImageError, match="label.bin"):
        check_image(b"not an image", name="label.bin")


def test_check_image_refuses_postscript_by_default(tmp_path):
    eps = tmp_path / "x.eps"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ImageError, match="not an image in an accepted format"):
        check_image(eps)


def test_check_image_truncated(tmp_path):
    path = tmp_path / "cut.png"
    Image.frombytes("L", (200, 200), bytes(range(256)) * 156 + bytes(64)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:300])
    with pytest.raises(ImageError) as err:
        check_image(path)
    assert str(path) in assert_one_line(err.value) and "corrupt or truncated" in str(err.value)
    assert check_image(data) == (200, 200, "PNG")


@pytest.mark.parametrize(
    "size",
    [
        (100_000, 100_000),  # above Pillow's DecompressionBombError threshold
        (10_000, 10_000),  # between Pillow's warning and error thresholds
        (9_000, 9_000),  # under Pillow's thresholds, over max_pixels: only our header check catches it
    ],
)
def test_check_image_bomb_refused_from_header(tmp_path, size):
    path = tmp_path / "bomb.png"
    path.write_bytes(crafted_png(*size, idat=b"garbage that would fail to decode"))
    assert path.stat().st_size < 200
    with pytest.raises(ImageError) as err:
        check_image(path)
    text = assert_one_line(err.value)
    # garbage IDAT would give "corrupt" if anything were decoded: the refusal came from the header
    assert str(path) in text and "decompression bomb" in text and "nothing decoded" in text


def test_check_image_real_compressed_bomb(tmp_path):
    path = tmp_path / "big.png"
    Image.new("1", (8500, 8500)).save(path)  # 72 Mpixel, a few KB on disk
    assert path.stat().st_size < 50_000
    with pytest.raises(ImageError, match="8500x8500 = 72250000 pixels, over the limit of 64000000"):
        check_image(path)
    with pytest.raises(ImageError, match="decompression bomb"):
        check_image(encoded("PNG", (100, 100)), max_pixels=9_999)
    assert check_image(encoded("PNG", (100, 100)), max_pixels=10_000) == (100, 100, "PNG")


def test_trickling_server_hits_the_deadline_then_is_reported(tmp_path):
    # One byte every 0.4 s: the per-read timeout (2 s) never fires; without a deadline this takes ~40 s
    # per attempt (and, at the real server's pace of a byte every 5 s, forever).
    body = DATA[:100]
    with serve({"/drip": Route(body, drip=0.4)}) as base:
        start = time.monotonic()
        with pytest.raises(FetchError) as err:
            download(base + "/drip", tmp_path / "d", timeout=2.0, retries=1, backoff=0, deadline=1.0)
        elapsed = time.monotonic() - start
        assert len(base.requests("/drip")) == 2
        assert base.requests("/drip")[1].headers.get("range", "").startswith("bytes=")  # resumed what arrived
    message = assert_one_line(err.value)
    assert "2 attempt" in message and "deadline of 1 s" in message and str(base) in message
    assert elapsed < 6.0, elapsed
    assert 0 < (tmp_path / "d.part").stat().st_size < len(body)  # kept for a later resume
    with pytest.raises(FetchError, match="deadline must be > 0"):
        download(base + "/drip", tmp_path / "d", deadline=0)


def test_default_deadline_scales_with_the_size():
    limits = fetch_mod._Limits(max_bytes=1 << 40, timeout=30.0, deadline=None)
    assert limits.allowed(None, 0) == fetch_mod.DEADLINE_BASE
    gib = limits.allowed(2**30, 0) - fetch_mod.DEADLINE_BASE
    assert 4 * 3600 < gib < 5 * 3600  # a GiB may take hours at the slowest rate the default allows
    assert limits.allowed(None, 2**30) == limits.allowed(2**30, 0)  # unannounced: the bytes so far count
    assert fetch_mod._Limits(1, 1.0, 7.5).allowed(2**30, 0) == 7.5


def test_decompression_bomb_refused_by_ratio_and_nothing_kept(work, monkeypatch):
    # 4 MiB of zeros deflate to about 4 KiB: a ratio of ~1000, like 3 MB that expand to 3 GiB.
    from mixset.sources import archives

    monkeypatch.setattr(archives, "RATIO_FLOOR_BYTES", 1 << 20)  # the real floor (64 MiB) scaled down
    bomb = make_zip(work.archives / "bomb.zip", {"a/zeros.bin": b"\0" * (4 << 20), "a/b.txt": b"hello"})
    assert bomb.stat().st_size < 64 << 10
    before = listing(work.root)
    with pytest.raises(ArchiveError) as err:
        safe_extract(bomb, work.out)
    message = assert_one_line(err.value)
    assert str(bomb) in message and "expansion limit" in message and "decompression bomb" in message
    assert listing(work.root) == before  # no partial folder left
    assert len(safe_extract(bomb, work.out, max_ratio=2000)) == 2  # a genuine archive: raise max_ratio
    shutil.rmtree(work.out)
    with pytest.raises(ArchiveError, match="max_ratio must be > 0"):
        safe_extract(bomb, work.out, max_ratio=0)


def test_ratio_is_enforced_on_bytes_written_not_only_declared(work, monkeypatch):
    from mixset.sources import archives

    monkeypatch.setattr(archives, "RATIO_FLOOR_BYTES", 1 << 20)
    bomb = make_zip(work.archives / "bomb.zip", {"a/zeros.bin": b"\0" * (4 << 20)})
    real = archives._zip_members

    def lying(zf, archive, max_members):  # headers that declare 1 byte per member
        return [archives._Member(m.raw, m.name, m.is_dir, min(m.size, 1), m.handle)
                for m in real(zf, archive, max_members)]

    monkeypatch.setattr(archives, "_zip_members", lying)
    before = listing(work.root)
    with pytest.raises(ArchiveError, match="'a/zeros.bin'.*exceeds the expansion limit"):
        safe_extract(bomb, work.out)
    assert listing(work.root) == before


def test_default_extraction_limits_fit_real_collections():
    from mixset.sources import archives

    assert archives.DEFAULT_MAX_TOTAL_BYTES == fetch_mod.DEFAULT_MAX_BYTES == 16 * 2**30  # > 1.6 GB fractals tar
    assert archives.DEFAULT_MAX_RATIO * 3_000_000 < 3 * 2**30  # 3 MB -> 3 GiB is refused by default


def test_stale_extraction_folder_of_a_killed_run_is_removed(work):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    stale = work.out.parent / f".{work.out.name}.{int(dead.stdout)}.abc123.extracting"
    (stale / "f").mkdir(parents=True)
    (stale / "f" / "half.bin").write_bytes(b"\0" * 100)
    alive = work.out.parent / f".{work.out.name}.{os.getppid()}.def456.extracting"  # another live process's
    alive.mkdir()
    other = work.out.parent / f".other.{int(dead.stdout)}.abc123.extracting"  # another output folder's
    other.mkdir()
    archive = make_tar(work.archives / "ok.tgz", {"f/a.bin": b"1"})
    assert len(safe_extract(archive, work.out)) == 1
    assert not stale.exists() and alive.is_dir() and other.is_dir()
