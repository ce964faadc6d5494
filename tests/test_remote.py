"""Shard sets and mixing sets read from URLs (pixmix.data.remote): real servers on 127.0.0.1 (the threaded HTTP
server of tests/http_server.py, moto's S3 server), retries, failing shards, sets of other tools without a manifest,
`mixset index`, the loader's worker threads and DDP from an http:// set."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from http_server import Route, serve
from PIL import Image
from test_stream import lost_in, make_mixset, make_set

from pixmix.data.loader import ShardLoader
from pixmix.data.remote import RemoteError, RemoteOptions, RetryingStream, location
from pixmix.data.shards.mixing_set import MixingShards
from pixmix.data.shards.scan import index_manifest
from pixmix.data.shards.shard_set import ShardSet
from pixmix.utils.errors import PixmixError

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
FAST = RemoteOptions(retries=3, backoff=0.01, timeout=5.0)


def routes_of(folder: Path, **overrides: Route) -> dict[str, bytes | Route]:
    """Every file under ``folder`` served at its relative path (``overrides``: by path, ``/`` included)."""
    routes: dict[str, bytes | Route] = {"/" + str(p.relative_to(folder)): p.read_bytes()
                                        for p in folder.rglob("*") if p.is_file()}
    routes.update(overrides)
    return routes


def batches_of(loader: ShardLoader, epoch: int = 0) -> list:
    loader.set_epoch(epoch)
    return list(loader)


def content(batches: list) -> list[tuple[str, int, bytes]]:
    return [(k, int(label), image.numpy().tobytes()) for b in batches
            for k, label, image in zip(b.keys, b.labels, b.images)]


@pytest.fixture(scope="module")
def local_set(tmp_path_factory) -> Path:
    return make_set(tmp_path_factory.mktemp("remote") / "set")


# --- locations -----------------------------------------------------------------------------------------


def test_locations_take_only_known_schemes_and_refuse_escaping_names(tmp_path) -> None:
    with pytest.raises(PixmixError, match="unsupported scheme 'ftp'"):
        location("ftp://example.org/set")
    with pytest.raises(PixmixError, match="no host or bucket"):
        location("s3:///set")
    assert location(f"file://{tmp_path}").path == tmp_path and location(str(tmp_path)).is_local
    assert (location("http://h/set") / "shards/a.tar").url == "http://h/set/shards/a.tar"
    assert (location("http://h/set/") / "a b#1.tar").url == "http://h/set/a%20b%231.tar"
    assert (location("s3://b/set") / "a b.tar").url == "s3://b/set/a b.tar"
    assert (location("pipe:cat /data/{}") / "shards/a.tar").url == "pipe:cat /data/shards/a.tar"
    for bad in ("../x.tar", "/etc/passwd", "a/../../b"):
        with pytest.raises(PixmixError, match="outside the set"):
            location("http://h/set") / bad


def test_a_missing_extra_is_named_in_one_line(monkeypatch) -> None:
    import builtins

    real = builtins.__import__

    def no_gcsfs(name, *args, **kwargs):
        if name == "gcsfs":
            raise ImportError("No module named 'gcsfs'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_gcsfs)
    with pytest.raises(PixmixError, match=r"pip install 'pixmix-data\[gcs\]'"):
        location("gs://bucket/set").read_bytes()


# --- http: streaming, retries, failures --------------------------------------------------------------


def first_header(shard: Path, index: int) -> int:
    """Byte offset of sample ``index``'s first tar header, by tarfile (independently of the loader)."""
    with tarfile.open(shard) as tar:
        keys = []
        for member in tar.getmembers():
            key = member.name.split(".")[0]
            if key not in keys:
                keys.append(key)
                if len(keys) == index + 1:
                    return member.offset
    raise AssertionError(index)


def test_an_http_set_gives_the_batches_of_the_local_set(local_set, monkeypatch) -> None:
    expected = {}
    for rank in (0, 1):
        loader = ShardLoader(local_set, batch_size=4, seed=3, rank=rank, world_size=2, num_workers=0, recipe="cifar")
        expected[rank] = content(batches_of(loader, 1))
    with serve(routes_of(local_set)) as base:
        for workers in (0, 2):
            for rank in (0, 1):
                loader = ShardLoader(base + "/", batch_size=4, seed=3, rank=rank, world_size=2, num_workers=workers,
                                     recipe="cifar")
                assert str(loader.shardset.folder) == base + "/" and len(loader) == 5
                got = content(batches_of(loader, 1))
                # The same samples; with 2 workers each shuffles its own part, so compare the order at 0 only.
                assert (got if workers == 0 else sorted(got)) == (expected[rank] if workers == 0
                                                                  else sorted(expected[rank]))
                assert loader.stats.errors == []
        sizes = {p: len(b) for p, b in routes_of(local_set).items() if isinstance(b, bytes)}
        assert all(r.bytes_sent <= sizes[r.path] for r in base.requests())  # never more than a file's bytes


def test_a_piece_that_starts_mid_shard_is_read_from_its_offset(local_set, monkeypatch) -> None:
    # Small reads, and every forward seek past the buffer opens a ranged request (real shards are far larger
    # than the 1 MiB buffer; these are not).
    monkeypatch.setattr("pixmix.data.remote._SKIP_BYTES", 0)
    monkeypatch.setattr("pixmix.data.remote._BUFFER", 1024)
    with serve(routes_of(local_set)) as base:
        loader = ShardLoader(base, batch_size=4, seed=3, rank=1, world_size=2, num_workers=0, recipe="cifar")
        batches_of(loader, 1)
        mid = [p for pieces in loader.stream.plan for p in pieces if p.start > 0]
        assert mid
        for piece in mid:
            name = loader.stream.records[piece.shard].name
            ranges = {r.headers.get("range") for r in base.requests("/" + name)}
            # tarfile checks each member's predecessor ends where it starts: it reads the byte before the header.
            assert f"bytes={first_header(local_set / name, piece.start) - 1}-" in ranges


def test_transient_failures_are_retried_and_resume_where_they_stopped(local_set) -> None:
    shard = "/shards/v0-003.tar"
    body = (local_set / shard[1:]).read_bytes()
    routes = routes_of(local_set, **{shard: Route(body, fail_first=2, fail_status=503, truncate_after=3000)})
    with serve(routes) as base:
        loc = location(base + shard, FAST)
        with RetryingStream(loc) as stream:
            data = b"".join(iter(lambda: stream.read(1 << 16), b""))
            attempts = stream.attempts
        assert data == body and attempts == 3  # two 503s, then a body cut after 3000 bytes, resumed
        log = base.requests(shard)
        assert [r.status for r in log] == [503, 503, 200, 206]
        assert log[-1].headers["range"] == "bytes=3000-"
    # The loader reads through the same failures without losing a sample.
    routes = routes_of(local_set, **{shard: Route(body, fail_first=2, fail_status=500)})
    local = ShardLoader(local_set, batch_size=4, seed=1, num_workers=0, recipe="cifar")
    with serve(routes) as base:
        loader = ShardLoader(location(base, FAST), batch_size=4, seed=1, num_workers=0, recipe="cifar")
        assert content(batches_of(loader)) == content(batches_of(local))
        assert loader.stats.errors == [] and loader.stats.substituted == 0


def test_a_server_that_ignores_ranges_still_gives_the_bytes_from_the_offset() -> None:
    body = bytes(range(256)) * 40
    with serve({"/x.tar": Route(body, honor_range=False)}) as base:
        loc = location(base + "/x.tar", FAST)
        assert loc.read_range(5000, 300) == body[5000:5300]
        with loc.open(7000) as fh:
            assert fh.read() == body[7000:]
        assert [r.status for r in base.requests("/x.tar")] == [200, 200]


def test_an_unreachable_set_is_one_line_naming_the_url(tmp_path) -> None:
    from pixmix.cli import main

    with serve({"/manifest.json": Route(b"", fail_first=99, fail_status=503)}) as base:
        with pytest.raises(PixmixError, match=r"manifest.json: cannot be read \(.*HTTP 503 .*after 4 attempts\)"):
            ShardSet.load(location(base, FAST))
    result = CliRunner().invoke(main, ["train", "--preset", "smoke", "--shards", "ftp://host/set", "--out",
                                       str(tmp_path / "run")])
    assert result.exit_code == 2 and "unsupported scheme 'ftp'" in result.output


def test_retries_back_off_then_give_up_naming_the_url() -> None:
    import time

    options = RemoteOptions(retries=3, backoff=0.05)
    with serve({"/x.tar": Route(b"x" * 100, fail_first=99, fail_status=502)}) as base:
        started = time.perf_counter()
        with pytest.raises(RemoteError, match=r"/x.tar: HTTP 502 .*after 4 attempts"), \
                RetryingStream(location(base + "/x.tar", options)) as stream:
            stream.read(10)
        elapsed = time.perf_counter() - started
        assert len(base.requests("/x.tar")) == 4
    assert 0.05 + 0.1 + 0.2 <= elapsed < 5  # 0.05 s doubled after each failure
    with serve({}) as base, pytest.raises(FileNotFoundError):  # 404: no retry
        RetryingStream(location(base + "/gone.tar", options)).read(10)


def test_a_shard_that_keeps_failing_is_reported_and_topped_up_on_every_rank(local_set, caplog) -> None:
    shard = "/shards/v0-003.tar"  # 20 of the 45 samples
    routes = routes_of(local_set, **{shard: Route(b"", fail_first=10**6, fail_status=503)})
    caplog.set_level(logging.WARNING, logger="pixmix.data.loader")
    with serve(routes) as base:
        counts, fresh = [], []
        for rank in (0, 1):
            loader = ShardLoader(location(base, FAST), batch_size=4, seed=2, rank=rank, world_size=2,
                                 num_workers=0, recipe="cifar")
            batches = batches_of(loader)
            counts.append(len(batches))
            assert all(len(b) == 4 for b in batches)
            assert loader.stats.substituted == lost_in(loader.stats.errors)
            assert all(e.startswith("shards/v0-003.tar: ") and "503" in e for e in loader.stats.errors)
            fresh += [k for b in batches for k, r in zip(b.keys, b.repeat.tolist()) if not r]
    assert counts == [5, 5]  # the same number of batches on both ranks
    assert not any(k.startswith("v0s3i") for k in fresh) and len(fresh) == len(set(fresh))
    assert any("v0-003.tar" in r.getMessage() and "lost" in r.getMessage() for r in caplog.records)


# --- other backends ------------------------------------------------------------------------------------


def test_a_pipe_command_reads_the_set(local_set) -> None:
    local = ShardLoader(local_set, batch_size=4, seed=5, num_workers=0, recipe="cifar")
    piped = ShardLoader(f"pipe:cat {local_set}/{{}}", batch_size=4, seed=5, num_workers=0, recipe="cifar")
    assert content(batches_of(piped)) == content(batches_of(local))
    # A command that fails for one shard: retried, then reported and topped up.
    command = f"pipe:f={{}}; case $f in *v0-003*) exit 3;; esac; cat {local_set}/$f"
    failing = ShardLoader(location(command, FAST), batch_size=4, seed=5, num_workers=0, recipe="cifar")
    batches = batches_of(failing)
    lost = lost_in(failing.stats.errors)
    assert len(batches) == len(local) == 11 and failing.stats.substituted == lost
    assert lost in (19, 20)  # the epoch reads 44 of the 45 samples: the one left out may be of this shard
    assert sum(not r for b in batches for r in b.repeat.tolist()) == 44 - lost
    assert all(e.startswith("shards/v0-003.tar: RemoteError: ") and "exited with status 3 (after 4 attempts)" in e
               for e in failing.stats.errors)


@pytest.fixture
def s3(monkeypatch):
    """moto's S3 server on 127.0.0.1 and a boto3 client of it (skipped where moto[server]/s3fs are missing)."""
    pytest.importorskip("s3fs")
    server_module = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION":
                        "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="sets")
    import fsspec

    fsspec.filesystem("s3").clear_instance_cache()
    yield client
    server.stop()


def upload(client, folder: Path, prefix: str) -> None:
    for p in folder.rglob("*"):
        if p.is_file():
            client.put_object(Bucket="sets", Key=f"{prefix}/{p.relative_to(folder)}", Body=p.read_bytes())


def test_an_s3_set_on_a_moto_server_reads_like_the_local_one(local_set, tmp_path, s3) -> None:
    upload(s3, local_set, "plain")
    local = ShardLoader(local_set, batch_size=4, seed=4, num_workers=2, recipe="cifar")
    remote = ShardLoader("s3://sets/plain", batch_size=4, seed=4, num_workers=2, recipe="cifar")  # forked workers
    assert content(batches_of(remote)) == content(batches_of(local)) and remote.stats.errors == []
    # Without a manifest, an s3 prefix is listed and scanned.
    bare = tmp_path / "bare"
    (bare / "shards").mkdir(parents=True)
    for p in (local_set / "shards").iterdir():
        (bare / "shards" / p.name).write_bytes(p.read_bytes())
    upload(s3, bare, "bare")
    scanned = ShardSet.load("s3://sets/bare")
    assert [s.samples for s in scanned.shards] == [7, 13, 5, 20] and scanned.image_field == "png"


# --- sets of other tools ---------------------------------------------------------------------------------


def jpeg(seed: int) -> bytes:
    data = np.random.default_rng(seed).integers(0, 256, (24, 20, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(data).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def img2dataset_set(folder: Path, counts=(5, 3), *, label: str = "cls") -> Path:
    """img2dataset's layout written with tarfile (not this project's writer): ``00000.tar`` of ``{key}.jpg``,
    ``.txt`` (a caption), ``.json`` and (``label="cls"``) ``.cls``; the label is ``(3 * shard + i) % 4``."""
    folder.mkdir(parents=True)
    for s, count in enumerate(counts):
        with tarfile.open(folder / f"{s:05d}.tar", "w") as tar:
            for i in range(count):
                key, value = f"{s:05d}{i:04d}", (3 * s + i) % 4
                meta = {"url": f"http://example.org/{key}.jpg", "caption": "a picture", "status": "success"}
                if label == "json":
                    meta["label"] = value
                fields = {"jpg": jpeg(10 * s + i), "txt": b"a picture", "json": json.dumps(meta).encode()}
                if label == "cls":
                    fields["cls"] = str(value).encode()
                for name, data in fields.items():
                    info = tarfile.TarInfo(f"{key}.{name}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return folder


def test_an_img2dataset_folder_without_manifest_is_indexed_and_read(tmp_path, caplog) -> None:
    folder = img2dataset_set(tmp_path / "i2d")
    caplog.set_level(logging.WARNING, logger="pixmix.data.shards")
    shardset = ShardSet.load(folder)
    assert [s.samples for s in shardset.shards] == [5, 3] and shardset.samples == 8
    assert (shardset.image_field, shardset.label_field, shardset.classes) == ("jpg", "cls", ("0", "1", "2", "3"))
    assert [s.sha256 for s in shardset.shards] == ["", ""]  # a local scan reads headers and labels only
    assert [s.bytes for s in shardset.shards] == [(folder / f"{s:05d}.tar").stat().st_size for s in (0, 1)]
    indexed = index_manifest(folder)  # what `mixset index` writes: streamed and hashed
    assert [s["sha256"] for s in indexed["shards"]] == [
        hashlib.sha256((folder / f"{s:05d}.tar").read_bytes()).hexdigest() for s in (0, 1)]
    assert [s["samples"] for s in indexed["shards"]] == [5, 3] and indexed["label_field"] == "cls"
    assert any("image field 'jpg', label 'cls'" in r.getMessage() for r in caplog.records)
    loader = ShardLoader(folder, batch_size=2, num_workers=0, shuffle=False, drop_last=False,
                         transform=None, recipe="cifar")
    batches = list(loader)
    labels = {k: int(v) for b in batches for k, v in zip(b.keys, b.labels)}
    assert labels == {f"{s:05d}{i:04d}": (3 * s + i) % 4 for s, n in enumerate((5, 3)) for i in range(n)}
    first = Image.open(io.BytesIO(jpeg(0))).convert("RGB")
    assert torch.equal(batches[0].images[0], torch.from_numpy(np.array(first)).permute(2, 0, 1))


def test_labels_in_the_json_and_brace_patterns_over_http(tmp_path) -> None:
    folder = img2dataset_set(tmp_path / "i2d", counts=(4, 4), label="json")
    with serve(routes_of(folder)) as base:
        shardset = ShardSet.load(base + "/{00000..00001}.tar")
        assert shardset.label_field == "json:label" and str(shardset.folder) == base
        loader = ShardLoader(base + "/{00000..00001}.tar", batch_size=4, num_workers=0, shuffle=False,
                             recipe="cifar")
        labels = [int(v) for b in loader for v in b.labels]
        assert labels == [(3 * s + i) % 4 for s in range(2) for i in range(4)]
        with pytest.raises(PixmixError, match="cannot be listed"):
            ShardSet.load(base + "/other")
    unlabelled = img2dataset_set(tmp_path / "captions", counts=(2,), label="none")
    with pytest.raises(PixmixError, match="no label"):
        ShardSet.load(unlabelled)
    assert len(MixingShards(unlabelled)) == 2  # a mixing set needs no label


def test_an_unfinished_mixset_shard_output_is_not_scanned(tmp_path) -> None:
    folder = make_set(tmp_path / "half")
    (folder / "manifest.json").unlink()
    (folder / ".shard").mkdir()
    (folder / ".shard" / "config.json").write_text("{}")
    with pytest.raises(PixmixError, match="manifest.json not found: is .* a finished `mixset shard` output"):
        ShardSet.load(folder)


def test_mixset_index_writes_the_manifest_once_and_verify_reads_urls(tmp_path) -> None:
    from mixset.cli import main

    folder = img2dataset_set(tmp_path / "i2d")
    runner = CliRunner()
    result = runner.invoke(main, ["index", str(folder)])
    assert result.exit_code == 0, result.output
    written = json.loads((folder / "manifest.json").read_text())
    assert written == json.loads(json.dumps(index_manifest(folder)))
    assert "image field 'jpg', label field 'cls', 4 classes" in result.output
    assert runner.invoke(main, ["index", str(folder)]).exit_code != 0  # no silent overwrite
    with serve(routes_of(folder)) as base:
        result = runner.invoke(main, ["verify", base])
        assert result.exit_code == 0 and result.output.strip().endswith(": OK"), result.output
        result = runner.invoke(main, ["info", base])
        assert result.exit_code == 0 and result.output.startswith(f"{base}: 8 samples in 2 shard(s), ")
        assert "image field jpg, label field cls, 4 classes" in result.output
        before = len(base.requests())
        ShardLoader(base, batch_size=2, num_workers=0, recipe="cifar")  # the manifest: no scan
        assert [r.path for r in base.requests()[before:]] == ["/manifest.json"]
    bare = img2dataset_set(tmp_path / "bare")
    with serve(routes_of(bare)) as base:
        out = tmp_path / "index.json"
        result = runner.invoke(main, ["index", base + "/{00000..00001}.tar", "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert f"upload it next to the shards: copy {out} to {base}/manifest.json" in result.output
        assert [s["name"] for s in json.loads(out.read_text())["shards"]] == ["00000.tar", "00001.tar"]
    result = runner.invoke(main, ["verify", "ftp://example.org/x"])
    assert result.exit_code == 2 and "unsupported scheme 'ftp'" in result.output


# --- mixing sets, the cache, worker threads ------------------------------------------------------------------


def test_a_remote_mixing_set_gives_the_local_pictures(tmp_path) -> None:
    folder = make_mixset(tmp_path / "mix")
    local = MixingShards(folder)
    with serve(routes_of(folder)) as base:
        remote = MixingShards(base)
        assert len(remote) == len(local) == 6
        assert all(np.array_equal(np.array(remote[i]), np.array(local[i])) for i in range(6))
        ranges = [r.headers.get("range") for r in base.requests("/shards/00000.tar")][1:]
        assert all(r and r.startswith("bytes=") and not r.endswith("-") for r in ranges)  # one range per picture


def test_online_pixmix_with_a_remote_mixing_set_matches_the_local_one(local_set, tmp_path) -> None:
    folder = make_mixset(tmp_path / "mix")
    local = ShardLoader(local_set, batch_size=4, seed=6, num_workers=2, mixset=folder, recipe="cifar")
    with serve(routes_of(folder)) as base:
        remote = ShardLoader(local_set, batch_size=4, seed=6, num_workers=2, mixset=base, recipe="cifar")
        got, want = batches_of(remote), batches_of(local)
        assert remote.mode == "online" and len(got) == len(want) == 11
        assert all(torch.equal(a.mixing, b.mixing) and a.keys == b.keys for a, b in zip(got, want))
        assert base.requests("/shards/00000.tar")  # the pictures came from the server


def test_the_cache_folder_keeps_shards_within_its_bound(local_set, tmp_path) -> None:
    sizes = sorted((p.stat().st_size for p in (local_set / "shards").iterdir()), reverse=True)
    bound = sizes[0] + sizes[1]  # room for two of the four shards
    options = RemoteOptions(retries=1, backoff=0.01, cache_dir=str(tmp_path / "cache"), cache_bytes=bound)
    local = ShardLoader(local_set, batch_size=4, seed=1, num_workers=0, recipe="cifar")
    with serve(routes_of(local_set)) as base:
        loader = ShardLoader(location(base, options), batch_size=4, seed=1, num_workers=0, recipe="cifar")
        for epoch in (0, 1):
            assert content(batches_of(loader, epoch)) == content(batches_of(local, epoch))
        cached = [p for p in (tmp_path / "cache").iterdir()]
        assert 1 <= len(cached) <= 2 and sum(p.stat().st_size for p in cached) <= bound
        assert all(not p.name.startswith(".") for p in cached)  # no partial file left
        # A cached shard is read from disk: reading it again makes no request.
        name = next(n for n in ("v0-000", "v0-001", "v0-002", "v0-003") if any(n in p.name for p in cached))
        before = len(base.requests(f"/shards/{name}.tar"))
        with location(f"{base}/shards/{name}.tar", options).open() as fh:
            assert fh.read() == (local_set / "shards" / f"{name}.tar").read_bytes()
        assert len(base.requests(f"/shards/{name}.tar")) == before
        # A file larger than the whole bound is streamed: one aborted attempt to cache it, then never again.
        tiny = RemoteOptions(cache_dir=str(tmp_path / "tiny"), cache_bytes=100)
        url = f"{base}/shards/v0-000.tar"
        before = len(base.requests("/shards/v0-000.tar"))
        for _ in range(2):
            with location(url, tiny).open() as fh:
                assert fh.read() == (local_set / "shards" / "v0-000.tar").read_bytes()
        assert len(base.requests("/shards/v0-000.tar")) - before == 3 and not list((tmp_path / "tiny").iterdir())


class _Threads:
    """A views-mode transform that writes its worker's thread limits into the image (a known-answer probe)."""

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        from threadpoolctl import threadpool_info

        blas = max((p["num_threads"] for p in threadpool_info()), default=1)
        out = torch.zeros(3, 2, 2, dtype=torch.uint8)
        out[0], out[1], out[2] = torch.get_num_threads(), int(os.environ.get("OMP_NUM_THREADS", "0")), blas
        return out


def test_loader_workers_run_one_thread_each(local_set, monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # what a parent with two threads would pass on
    loader = ShardLoader(local_set, batch_size=4, num_workers=2, recipe="cifar", transform=_Threads())
    for batch in loader:
        assert batch.images.unique().tolist() == [1]  # torch, OpenMP and BLAS threads: 1 in every worker


# --- DDP -----------------------------------------------------------------------------------------------------


def test_once_per_job_broadcasts_from_rank_0_but_never_inside_a_loader_worker(monkeypatch) -> None:
    import torch.distributed as dist

    from pixmix.data import remote

    calls: list[str] = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)

    def broadcast(box, src):  # rank 1 receives what rank 0 computed
        calls.append("broadcast")
        box[0] = ("ok", "from rank 0")

    monkeypatch.setattr(dist, "broadcast_object_list", broadcast)
    assert remote.once_per_job(("t", 1), lambda: calls.append("computed") or "mine") == "from rank 0"
    assert remote.once_per_job(("t", 1), lambda: "again") == "from rank 0" and calls == ["broadcast"]
    monkeypatch.setattr("torch.utils.data.get_worker_info", lambda: object())
    assert remote.once_per_job(("t", 2), lambda: "mine") == "mine" and calls == ["broadcast"]
    monkeypatch.setattr("torch.utils.data.get_worker_info", lambda: None)
    monkeypatch.setattr(dist, "broadcast_object_list", lambda box, src: box.__setitem__(0, ("error", "bad set")))
    with pytest.raises(PixmixError, match="bad set"):
        remote.once_per_job(("t", 3), lambda: "unused")
    remote._ONCE.clear()


@pytest.mark.slow
def test_two_ranks_stay_in_step_reading_an_http_set_with_a_failing_shard(local_set, tmp_path) -> None:
    out = tmp_path / "ddp.json"
    script = Path(__file__).with_name("stream_ddp_script.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    routes = routes_of(local_set, **{"/shards/v0-001.tar": Route(b"", fail_first=10**6, fail_status=500)})
    with serve(routes) as base:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(script), base, str(out), "4", "3"]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        manifests = len(base.requests("/manifest.json"))
    report = json.loads(out.read_text())
    for epoch in report["epochs"]:
        assert epoch["batches"] == epoch["len"] == [5, 5]  # 45 // (2 * 4) on both ranks, 13 samples lost
        assert not any(k.startswith("v0s1i") for keys in epoch["keys"] for k in keys)
    assert manifests == 1  # read by rank 0 and broadcast (the script makes its loader inside the process group)


@pytest.mark.slow
def test_pixmix_train_under_torchrun_from_an_http_set(tmp_path) -> None:
    from test_train import write_colour_cifar

    from mixset.shard import ShardConfig, shard

    write_colour_cifar(tmp_path / "cifar", per_batch=16)  # 80 training images
    shard(ShardConfig(out=tmp_path / "plain", dataset="cifar10", data_dir=tmp_path / "cifar", shard_samples=30),
          log=lambda _m: None, progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    with serve(routes_of(tmp_path / "plain")) as base:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "pixmix.cli.train", "--preset", "smoke-baseline", "--shards", base, "--out",
               str(tmp_path / "run"), "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--quiet"]
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, check=False)
        manifests = len(base.requests("/manifest.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert manifests == 1  # read by rank 0 inside the process group, shared with rank 1
    record = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])
    assert record["world_size"] == 2 and record["batches_per_rank"] == [5, 5]  # 80 // 16
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["data"]["shards"] == base  # the URL as given, not a path made of it



def test_mixset_shard_pixmix_takes_a_mixing_set_url(tmp_path) -> None:
    """`mixset shard --pixmix --mixset http://...` writes the views a local --mixset writes (same bytes)."""
    from tiny_datasets import write_cifar10, write_mixset

    from mixset.cli import main

    write_cifar10(tmp_path / "data", per_batch=4)
    mixing = write_mixset(tmp_path / "mix", count=6, size=40)
    common = ["shard", "cifar10", "--data-dir", str(tmp_path / "data"), "--pixmix", "--workers", "1", "--quiet"]
    local = CliRunner().invoke(main, [*common, "--mixset", str(mixing), "--out", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    with serve(routes_of(mixing)) as base:
        remote = CliRunner().invoke(main, [*common, "--mixset", base + "/", "--out", str(tmp_path / "remote")])
    assert remote.exit_code == 0, remote.output
    shards = sorted(p.name for p in (tmp_path / "local" / "shards").glob("*.tar"))
    assert shards and shards == sorted(p.name for p in (tmp_path / "remote" / "shards").glob("*.tar"))
    for name in shards:
        local_bytes = (tmp_path / "local" / "shards" / name).read_bytes()
        assert local_bytes == (tmp_path / "remote" / "shards" / name).read_bytes()
    manifest = json.loads((tmp_path / "remote" / "manifest.json").read_text())
    assert manifest["config"]["mixset"] == base + "/"
    bad = CliRunner().invoke(main, [*common, "--mixset", "ftp://host/set", "--out", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "--mixset" in bad.output and "ftp" in bad.output and bad.output.count("\n") == 1
