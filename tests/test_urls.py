"""A "urls" collection (the "300K Random Images" role): images listed by URL, served by a local server."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from http_server import Route, serve
from PIL import Image

from mixset.build.builder import BuildConfig, BuildError, build
from mixset.sources.catalog import ManifestError, load_collection
from mixset.verify import verify
from pixmix.data.shards.mixing_set import MixingShards
from pixmix.utils.errors import PixmixError


def jpeg(colour: tuple[int, int, int], size=(90, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def quiet(_: str) -> None:
    pass


MANIFEST = """
name = "photos"
source = "natural"
kind = "urls"
licence = "test images"
list = "{list}"
[[images]]
url = "{base}/a.jpg"
sha256 = "{sha_a}"
[[images]]
url = "{base}/wrong.jpg"
sha256 = "{sha_a}"
"""


def test_urls_collection_downloads_checks_and_reports(tmp_path: Path) -> None:
    a, b, c = jpeg((200, 30, 30)), jpeg((30, 200, 30)), jpeg((30, 30, 200), size=(40, 120))
    routes = {"/a.jpg": a, "/wrong.jpg": b, "/b.jpg": b, "/c.jpg": Route(c, fail_first=1),
              "/gone.jpg": Route(status=404), "/text.jpg": b"just text, not an image"}
    with serve(routes) as base:
        listing = (f"# photos\n{base}/b.jpg?x=1\n\n{base}/c.jpg {hashlib.sha256(c).hexdigest()}\n"
                   f"{base}/gone.jpg\n{base}/text.jpg\n")
        routes_list = {"/list.txt": listing.encode()}
        with serve(routes_list) as list_base:
            manifests = tmp_path / "m"
            manifests.mkdir()
            (manifests / "photos.toml").write_text(MANIFEST.format(list=f"{list_base}/list.txt", base=base,
                                                                   sha_a=hashlib.sha256(a).hexdigest()))
            out = tmp_path / "o"
            summary = build(BuildConfig(out=out, sources=("natural",), manifests=manifests, image_size=48),
                            log=quiet, progress=False)
            report = summary.reports["photos"]
            assert (report.samples, report.rejected) == (3, 3)  # a, b, c; wrong checksum, 404, not an image
            failures = json.loads((out / "manifest.json").read_text())["failures"]
            assert any("wrong.jpg" in f and "sha256" in f for f in failures)
            assert any("gone.jpg" in f and "404" in f for f in failures)
            assert any("photos-00000005" in f and "not an image" in f for f in failures)
            assert verify(out) == []
            pictures = MixingShards(out)
            assert len(pictures) == 3 and {min(p.size) for p in pictures} == {48}
            # Rebuilding from scratch in the same folder reuses every completed download: only the two
            # failed ones are asked for again, and the shards come out byte-identical.
            before = {q.name: q.read_bytes() for q in (out / "shards").glob("*.tar")}
            hits = len(base.requests())
            import shutil

            for folder in ("shards", ".build"):
                shutil.rmtree(out / folder)
            build(BuildConfig(out=out, sources=("natural",), manifests=manifests, image_size=48), log=quiet,
                  progress=False)
            again = [r.path for r in base.requests()[hits:]]
            assert sorted(again) == ["/gone.jpg", "/wrong.jpg"]
            assert {q.name: q.read_bytes() for q in (out / "shards").glob("*.tar")} == before


def test_urls_manifest_errors_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\nsource = "natural"\nkind = "urls"\nlicence = "l"\n[[images]]\nurl = "file:///etc/passwd"\n')
    with pytest.raises(ValueError, match=r"bad.toml: images\[0\].url must be an http\(s\) URL"):
        load_collection(path)
    path.write_text('name = "x"\nsource = "natural"\nkind = "urls"\nlicence = "l"\n')
    with pytest.raises(ValueError, match="needs \\[\\[images\\]\\] entries or a list file"):
        load_collection(path)
    with pytest.raises(ManifestError) as info:  # a PixmixError: the command lines show it in one line
        load_collection(path)
    assert isinstance(info.value, PixmixError) and str(path) in str(info.value)
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "x.toml").write_text('name = "x"\nsource = "natural"\nkind = "urls"\nlicence = "l"\n'
                                      'list = "urls.txt"\n')
    (manifests / "urls.txt").write_text("https://example.org/a.jpg\nftp://example.org/b.jpg\n")
    lines: list[str] = []
    with pytest.raises(BuildError, match="nothing to build"):
        build(BuildConfig(out=tmp_path / "o", sources=("natural",), manifests=manifests), log=lines.append,
              progress=False)
    assert any("urls.txt, line 2: expected '<http(s) URL> [sha256]'" in line for line in lines), lines
    with pytest.raises(BuildError, match="--strict is set: .*urls.txt, line 2"):
        build(BuildConfig(out=tmp_path / "o2", sources=("natural",), manifests=manifests, strict=True),
              log=quiet, progress=False)
