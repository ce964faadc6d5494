"""Issue 15 (writer, build, shard): path names, resume digests, one writer per folder, lazy plans, sizes."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_build import BUILD, write_manifests
from tiny_datasets import write_imagenet

from mixset.build.builder import BuildConfig, build
from mixset.cli import main as mixset_main
from mixset.shard.sharder import ShardConfig, ShardError, shard
from mixset.verify import verify
from pixmix.data.shards.writer import ShardSetWriter
from pixmix.utils.errors import PixmixError

ROOT = Path(__file__).resolve().parents[1]


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    return write_imagenet(tmp_path_factory.mktemp("imagenet"), classes=2, per_class=4)


# --- 1. names that become paths -------------------------------------------------------------------


def test_a_split_that_escapes_the_output_folder_is_refused(imagenet: Path, tmp_path: Path) -> None:
    out = tmp_path / "a" / "b" / "out"
    result = CliRunner().invoke(mixset_main, ["shard", "imagefolder", "--data-dir", str(imagenet / "train"),
                                              "--out", str(out), "--split", "../../escaped", "--image-size", "32"])
    assert result.exit_code == 1 and "--split" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "a" / "escaped").exists() and not list(tmp_path.rglob("*escaped*"))
    with pytest.raises(ShardError, match="--split"):
        ShardConfig(dataset="imagefolder", data_dir=imagenet / "train", out=out, split="a/b")
    with pytest.raises(PixmixError):
        ShardSetWriter(out, prefix="../x", state=".shard")


def test_a_collection_name_that_escapes_the_cache_is_refused(tmp_path: Path) -> None:
    manifests = write_manifests(tmp_path / "m", count=3, extra={"z.toml": (
        'name = "../../evil"\nsource = "fractals"\nkind = "procedural"\nlicence = "CC0-1.0"\n'
        "[procedural]\ncount = 2\n")})
    with pytest.raises(PixmixError, match="evil"):
        build(BuildConfig(out=tmp_path / "s", manifests=manifests, image_size=32), log=quiet, progress=False)


def test_verify_refuses_manifest_entries_outside_the_set(tmp_path: Path) -> None:
    manifests = write_manifests(tmp_path / "m", count=3)
    out = tmp_path / "s"
    build(BuildConfig(out=out, manifests=manifests, image_size=32), log=quiet, progress=False)
    outside = tmp_path / "outside.tar"
    manifest = json.loads((out / "manifest.json").read_text())
    outside.write_bytes((out / manifest["shards"][0]["name"]).read_bytes())
    manifest["shards"][0]["name"] = "../outside.tar"
    (out / "manifest.json").write_text(json.dumps(manifest))
    problems = verify(out)
    assert any("outside" in p for p in problems), problems


# --- 2. a same-size corrupted shard is rewritten on resume ---------------------------------------


def test_shard_resume_rewrites_a_same_size_corrupted_shard(imagenet: Path, tmp_path: Path) -> None:
    common = dict(dataset="imagenet", data_dir=imagenet, out=tmp_path / "o", shard_samples=3, image_size=32)
    shard(ShardConfig(**common), log=quiet, progress=False)
    tar = sorted((tmp_path / "o" / "shards").glob("*.tar"))[1]
    good = tar.read_bytes()
    bad = bytearray(good)
    bad[700] ^= 0xFF
    tar.write_bytes(bytes(bad))
    (tmp_path / "o" / "manifest.json").unlink()
    summary = shard(ShardConfig(**common), log=quiet, progress=False)
    assert summary.shards_written == 1
    assert tar.read_bytes() == good and verify(tmp_path / "o") == []


# --- 3. one writer per folder (per rank) ----------------------------------------------------------

HOLD = """
import sys, time
from pathlib import Path
from pixmix.data.shards.writer import ShardSetWriter
with ShardSetWriter(Path(sys.argv[1]), prefix="p", state=sys.argv[3], lock=sys.argv[2]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_of_the_same_rank_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "set"
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLD), str(root), "rank-0", ".state"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(PixmixError, match=rf"pid {proc.pid}") as caught:
            with ShardSetWriter(root, prefix="p", state=".state", lock="rank-0"):
                pass
        assert "\n" not in str(caught.value)
        with ShardSetWriter(root, prefix="p", state=".state", lock="rank-1"):  # another rank is fine
            pass
    finally:
        proc.kill()
        proc.wait()
    with ShardSetWriter(root, prefix="p", state=".state", lock="rank-0"):  # the kernel dropped the lock
        pass


# --- 4. lazy plans ---------------------------------------------------------------------------------


def test_a_huge_count_with_a_small_limit_plans_lazily(tmp_path: Path) -> None:
    manifests = write_manifests(tmp_path / "m", count=2**63 - 1)
    start, peak = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    summary = build(BuildConfig(out=tmp_path / "s", manifests=manifests, image_size=32, limit=2),
                    log=quiet, progress=False)
    assert summary.samples == 2
    assert time.monotonic() - start < 30
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200_000  # KiB


# --- 8. human sizes --------------------------------------------------------------------------------


def test_shard_bytes_takes_and_shows_human_sizes(imagenet: Path, tmp_path: Path) -> None:
    from mixset.cli import parse_size

    assert parse_size("256MiB") == 256 << 20 and parse_size("1GiB") == 1 << 30 and parse_size("4096") == 4096
    assert parse_size("1.5 KiB") == 1536 and parse_size("2MB") == 2_000_000
    help_text = CliRunner().invoke(mixset_main, ["shard", "imagefolder", "--help"]).output
    assert "256 MiB" in help_text and "268435456" not in help_text
    result = CliRunner().invoke(mixset_main, ["shard", "imagefolder", "--data-dir", str(imagenet / "train"),
                                              "--out", str(tmp_path / "o"), "--shard-bytes", "lots"])
    assert result.exit_code != 0 and "--shard-bytes" in result.output
    result = CliRunner().invoke(mixset_main, ["shard", "imagefolder", "--data-dir", str(imagenet / "train"),
                                              "--out", str(tmp_path / "o"), "--shard-bytes", "1MiB",
                                              "--image-size", "32"])
    assert result.exit_code == 0, result.output


# --- 5. workers capped at the usable CPUs -----------------------------------------------------------


def test_workers_are_capped_at_the_usable_cpus_unless_oversubscribed(imagenet: Path, tmp_path: Path,
                                                                     monkeypatch) -> None:
    import mixset.build.produce as produce
    from pixmix.utils.runtime import usable_cpus

    cpus = usable_cpus()
    processes, threads = BuildConfig(out=tmp_path, workers=16).worker_plan()
    assert processes == min(16, cpus) and processes * threads <= cpus
    assert BuildConfig(out=tmp_path, workers=16, oversubscribe=True).worker_plan() == (16, 1)
    config = ShardConfig(dataset="imagenet", data_dir=imagenet, out=tmp_path / "o", workers=16)
    assert config.worker_plan()[0] == min(16, cpus) and "oversubscribe" not in config.identity()
    pools: list[int] = []

    class Ctx:
        def Pool(self, n, **kw):  # noqa: N802 - multiprocessing's name
            pools.append(n)
            raise RuntimeError("stop")

    monkeypatch.setattr(produce.multiprocessing, "get_context", lambda *_: Ctx())
    manifests = write_manifests(tmp_path / "m", count=3)
    if cpus > 1:
        with pytest.raises(RuntimeError, match="stop"):
            build(BuildConfig(out=tmp_path / "s", manifests=manifests, image_size=32, workers=16),
                  log=quiet, progress=False)
        assert pools == [cpus]
    for command in (["build", "--help"], ["shard", "imagenet", "--help"]):
        assert "--oversubscribe" in CliRunner().invoke(mixset_main, command).output


def test_a_second_build_on_one_out_is_refused(tmp_path: Path) -> None:
    manifests = write_manifests(tmp_path / "m", count=2)
    out = tmp_path / "s"
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLD), str(out), "writer", ".build"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        result = CliRunner().invoke(mixset_main, [*BUILD, "--out", str(out), "--manifests", str(manifests),
                                                  "--image-size", "32", "--quiet"])
        assert result.exit_code == 1 and f"pid {proc.pid}" in result.output, result.output
    finally:
        proc.kill()
        proc.wait()


# --- 6. errors a user sees: one line, and the set stays resumable ----------------------------------


def test_a_full_disk_mid_shard_is_one_line_and_resumable(imagenet: Path, tmp_path: Path, monkeypatch) -> None:
    import errno

    import webdataset as wds

    out = tmp_path / "o"
    args = ["shard", "imagenet", "--data-dir", str(imagenet), "--out", str(out), "--shard-samples", "3",
            "--image-size", "32", "--quiet", "--workers", "1"]  # in this process: the patched writer
    real, calls = wds.TarWriter.write, []

    def full(self, obj):
        calls.append(1)
        if len(calls) > 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, obj)

    monkeypatch.setattr(wds.TarWriter, "write", full)
    result = CliRunner().invoke(mixset_main, args)
    assert result.exit_code == 1 and "disk is full" in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 2
    assert not list(out.rglob("*.tmp"))
    monkeypatch.setattr(wds.TarWriter, "write", real)
    result = CliRunner().invoke(mixset_main, args)
    assert result.exit_code == 0 and "1 already complete" in result.output, result.output
    assert verify(out) == []


def test_a_read_only_out_is_one_line(tmp_path: Path) -> None:
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        manifests = write_manifests(tmp_path / "m", count=2)
        result = CliRunner().invoke(mixset_main, [*BUILD, "--out", str(parent / "s"), "--manifests", str(manifests),
                                                  "--image-size", "32", "--quiet"])
        assert result.exit_code == 1 and "cannot write" in result.output and "Traceback" not in result.output
    finally:
        parent.chmod(0o700)


def test_ctrl_c_exits_130_in_one_line_and_resumes(tmp_path: Path, monkeypatch) -> None:
    import mixset.build.builder as builder

    manifests = write_manifests(tmp_path / "m", count=3)
    args = [*BUILD, "--out", str(tmp_path / "s"), "--manifests", str(manifests), "--image-size", "32", "--quiet"]

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(builder, "_contact_sheet", interrupted)
    result = CliRunner().invoke(mixset_main, args)
    assert result.exit_code == 130 and "re-run the same command to resume" in result.output, result.output
    monkeypatch.undo()
    result = CliRunner().invoke(mixset_main, args)
    assert result.exit_code == 0 and "1 resumed" in result.output, result.output


def test_out_inside_data_dir_and_a_truncated_manifest_are_one_line(imagenet: Path, tmp_path: Path) -> None:
    with pytest.raises(ShardError, match="inside --data-dir"):
        shard(ShardConfig(dataset="imagenet", data_dir=imagenet, out=imagenet / "shards-out"), log=quiet,
              progress=False)
    manifests = write_manifests(tmp_path / "m", count=2)
    out = tmp_path / "s"
    build(BuildConfig(out=out, manifests=manifests, image_size=32), log=quiet, progress=False)
    text = (out / "manifest.json").read_text()
    (out / "manifest.json").write_text(text[: len(text) // 2])
    for command in ("verify", "info"):
        result = CliRunner().invoke(mixset_main, [command, str(out)])
        assert result.exit_code == 1 and "truncated manifest" in result.output and "re-run" in result.output
        assert len(result.output.strip().splitlines()) == 1


# --- 7. one image extension per set ----------------------------------------------------------------


def test_a_set_with_fvis_has_one_extension_that_plain_webdataset_reads(tmp_path: Path) -> None:
    import webdataset as wds

    manifests = write_manifests(tmp_path / "m", count=3)
    out = tmp_path / "s"
    build(BuildConfig(out=out, manifests=manifests, image_size=32, sources=("fractals", "fvis"), limit=3,
                      fvis_models=("resnet50",), fvis_steps=1, fvis_size=16, fvis_weights="random"),
          log=quiet, progress=False)
    urls = [str(p) for p in sorted((out / "shards").glob("*.tar"))]
    rows = list(wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("png", "json"))
    assert len(rows) == json.loads((out / "manifest.json").read_text())["samples"] == 6
    assert {meta["source"] for _, meta in rows} == {"fractals", "fvis"}
    assert BuildConfig(out=out).photo_format == "jpg"
    assert BuildConfig(out=out, sources=("fvis",), photo_format="jpg").photo_format == "jpg"


def test_a_build_whose_every_item_fails_exits_non_zero_in_one_line(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(b"not an image")
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "p.toml").write_text(f'name = "p"\nsource = "natural"\nkind = "folder"\nlicence = "x"\n'
                                      f'path = "{photos}"\n')
    result = CliRunner().invoke(mixset_main, [*BUILD, "--source", "natural", "--out", str(tmp_path / "s"),
                                              "--manifests", str(manifests), "--image-size", "32", "--quiet"])
    assert result.exit_code == 1 and "every one of the 1 item(s) failed" in result.output, result.output
    assert not (tmp_path / "s" / "manifest.json").exists()
