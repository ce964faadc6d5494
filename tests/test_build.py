"""mixset build / verify / info end to end, on small procedural, folder and served collections."""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import kill_when
from PIL import Image

from mixset.build.builder import BuildConfig, build
from mixset.cli import main as mixset_main
from mixset.verify import verify
from pixmix.data.shards.mixing_set import MixingShards
from pixmix.data.shards.tar import iter_shard
from pixmix.utils.errors import PixmixError

# `mixset build` reading only the test's --manifests folder (the project's manifests/ would add to it).
BUILD = ("build", "--no-default-manifests")

PROCEDURAL = """
name = "gen"
source = "fractals"
kind = "procedural"
licence = "CC0-1.0"
[procedural]
count = {count}
"""


def write_manifests(folder: Path, count: int = 12, extra: dict[str, str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "b-gen.toml").write_text(PROCEDURAL.format(count=count))
    for name, text in (extra or {}).items():
        (folder / name).write_text(text)
    return folder


def quiet(_: str) -> None:
    pass


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.tar"))}


def test_build_writes_shards_manifest_and_contact_sheet(tmp_path) -> None:
    manifests = write_manifests(tmp_path / "m", count=10)
    out = tmp_path / "set"
    summary = build(BuildConfig(out=out, manifests=manifests, shard_size=4, image_size=64), log=quiet, progress=False)
    assert summary.samples == 10 and summary.shards == 3
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "pixmix-mixset" and manifest["version"] == 1
    assert [s["samples"] for s in manifest["shards"]] == [4, 4, 2]
    assert manifest["sources"] == {"fractals": 10}
    assert manifest["collections"]["gen"]["status"] == "ok"
    assert manifest["packages"]["python"]
    keys = []
    for entry in manifest["shards"]:
        for sample in iter_shard(out / entry["name"]):
            keys.append(sample.key)
            assert "." not in sample.key and set(sample.fields) == {"jpg", "json"}
            meta = json.loads(sample.fields["json"])
            assert meta["source"] == "fractals" and meta["collection"] == "gen" and meta["licence"] == "CC0-1.0"
            assert meta["origin"]["generator"] == "mixset.procedural" and "params" in meta["origin"]
            with Image.open(io.BytesIO(sample.fields["jpg"])) as im:
                assert min(im.size) == 64 and im.mode == "RGB"
    assert keys == [f"gen-{i:08d}" for i in range(10)]
    sheet = Image.open(out / "contact-sheet.png")
    assert sheet.size[0] > 300 and sheet.size[1] > 100
    assert verify(out) == []
    assert not list(out.rglob("*.tmp"))
    # The pixmix side reads it back as a random-access mixing set.
    pictures = MixingShards(out)
    assert len(pictures) == 10 and pictures[3].mode == "RGB" and min(pictures[3].size) == 64


def test_same_seed_gives_byte_identical_shards_for_any_worker_count(tmp_path) -> None:
    manifests = write_manifests(tmp_path / "m", count=9)
    a = build(BuildConfig(out=tmp_path / "a", manifests=manifests, shard_size=4, image_size=48), log=quiet,
              progress=False)
    b = build(BuildConfig(out=tmp_path / "b", manifests=manifests, shard_size=4, image_size=48, workers=2),
              log=quiet, progress=False)
    assert a.samples == b.samples == 9
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")
    build(BuildConfig(out=tmp_path / "c", manifests=manifests, shard_size=4, image_size=48, seed=1), log=quiet,
              progress=False)
    assert shard_bytes(tmp_path / "c") != shard_bytes(tmp_path / "a")


def test_limit_caps_items_per_source(tmp_path) -> None:
    manifests = write_manifests(tmp_path / "m", count=50)
    summary = build(BuildConfig(out=tmp_path / "s", manifests=manifests, limit=6, image_size=32), log=quiet,
                    progress=False)
    assert summary.samples == 6


def test_rerun_with_other_options_is_refused(tmp_path) -> None:
    manifests = write_manifests(tmp_path / "m", count=3)
    build(BuildConfig(out=tmp_path / "s", manifests=manifests, image_size=32), log=quiet, progress=False)
    with pytest.raises(Exception, match="other options"):
        build(BuildConfig(out=tmp_path / "s", manifests=manifests, image_size=48), log=quiet, progress=False)


def test_verify_detects_tampering(tmp_path) -> None:
    manifests = write_manifests(tmp_path / "m", count=6)
    out = tmp_path / "s"
    build(BuildConfig(out=out, manifests=manifests, shard_size=3, image_size=32), log=quiet, progress=False)
    shard = sorted((out / "shards").glob("*.tar"))[1]
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    problems = verify(out)
    assert any("sha256/size differ" in p and shard.name in p for p in problems)
    result = CliRunner().invoke(mixset_main, ["verify", str(out)])
    assert result.exit_code == 1 and "problem(s)" in result.output
    (out / "shards" / "mixset-000000.tar").unlink()
    assert any("missing" in p for p in verify(out))


def test_cli_build_info_and_bad_input(tmp_path) -> None:
    manifests = write_manifests(tmp_path / "m", count=5)
    out = tmp_path / "s"
    runner = CliRunner()
    result = runner.invoke(mixset_main, [*BUILD, "--out", str(out), "--manifests", str(manifests),
                                         "--image-size", "32", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "built 5 samples in 1 shard(s)" in result.output
    result = runner.invoke(mixset_main, ["info", str(out)])
    assert result.exit_code == 0 and "5 samples in 1 shard(s)" in result.output and "fractals/gen" in result.output
    assert runner.invoke(mixset_main, ["verify", str(out)]).output.strip().endswith("OK")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.toml").write_text('name = "x"\nsource = "fractals"\nkind = "magic"\nlicence = "?"\n')
    result = runner.invoke(mixset_main, [*BUILD, "--out", str(tmp_path / "o2"), "--manifests", str(bad)])
    assert result.exit_code == 1 and "x.toml: kind must be one of" in result.output
    result = runner.invoke(mixset_main, ["info", str(tmp_path)])
    assert result.exit_code == 1 and "manifest.json not found" in result.output


def test_folder_collection_with_bad_files_is_ingested_and_reported(tmp_path) -> None:
    images = tmp_path / "pics"
    (images / "sub").mkdir(parents=True)
    Image.new("RGB", (300, 200), (200, 10, 10)).save(images / "a.png")
    Image.new("L", (100, 120), 90).save(images / "sub" / "b.jpg")
    Image.new("RGB", (300, 200), (200, 10, 10)).save(images / "dup.png")  # same pixels as a.png
    (images / "notes.jpg").write_text("not an image")
    folder = f'name = "local"\nsource = "fractals"\nkind = "folder"\nlicence = "mine"\npath = "{images}"\n'
    manifests = write_manifests(tmp_path / "m", count=2, extra={"a-local.toml": folder})
    out = tmp_path / "s"
    summary = build(BuildConfig(out=out, manifests=manifests, image_size=64), log=quiet, progress=False)
    local = summary.reports["local"]
    assert (local.samples, local.duplicates, local.rejected) == (2, 1, 1)
    assert summary.samples == 4  # 2 local + 2 generated
    manifest = json.loads((out / "manifest.json").read_text())
    assert any("notes.jpg" in f for f in manifest["failures"])
    sizes = sorted(MixingShards(out)[i].size for i in range(4))
    assert (96, 64) in sizes and (64, 77) in sizes  # shorter side 64, aspect kept


def test_killed_build_resumes_without_loss_or_duplicates(tmp_path) -> None:
    manifests = write_manifests(tmp_path / "m", count=120)
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "mixset.cli", *BUILD, "--out", str(out), "--manifests", str(manifests),
            "--image-size", "64", "--shard-size", "10", "--quiet"]
    kill_when(args, out / ".build" / "shard-000002.json")
    assert not (out / "manifest.json").exists()
    done_before = len(list((out / ".build").glob("shard-*.json")))
    assert 3 <= done_before < 12
    summary = build(BuildConfig(out=out, manifests=manifests, image_size=64, shard_size=10), log=quiet, progress=False)
    assert summary.resumed_shards >= 3 and summary.samples == 120 and summary.shards == 12
    reference = tmp_path / "reference"
    build(BuildConfig(out=reference, manifests=manifests, image_size=64, shard_size=10), log=quiet, progress=False)
    assert shard_bytes(out) == shard_bytes(reference)
    assert verify(out) == []
    keys = [s.key for p in sorted((out / "shards").glob("*.tar")) for s in iter_shard(p)]
    assert len(keys) == len(set(keys)) == 120


def _tar_of(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _png(colour: tuple[int, int, int], size=(80, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


ARCHIVE = """
name = "{name}"
source = "fractals"
kind = "archive"
licence = "unknown"
[[artefacts]]
url = "{url}"
filename = "set.tar"
{checksum}
[filters]
include = ["fractals/images/*.png"]
"""


def test_remote_archives_are_ingested_and_failures_reported(tmp_path) -> None:
    import hashlib

    from http_server import Route, serve

    archive = _tar_of({
        "fractals/images/one.png": _png((250, 0, 0)),
        "fractals/images/two.png": _png((0, 250, 0)),
        "fvis/images/skip.png": _png((0, 0, 250)),
    })
    good_sum = f'sha256 = "{hashlib.sha256(archive).hexdigest()}"'
    with serve({"/set.tar": archive, "/copy.tar": archive, "/gone.tar": Route(status=404)}) as base:
        manifests = write_manifests(tmp_path / "m", count=2, extra={
            "a-remote.toml": ARCHIVE.format(name="remote", url=base + "/set.tar", checksum=good_sum),
            "c-gone.toml": ARCHIVE.format(name="gone", url=base + "/gone.tar", checksum=""),
            "d-badsum.toml": ARCHIVE.format(name="badsum", url=base + "/copy.tar",
                                            checksum='sha256 = "' + "0" * 64 + '"'),
        })
        out = tmp_path / "s"
        summary = build(BuildConfig(out=out, manifests=manifests, image_size=32), log=quiet, progress=False)
        reports = summary.reports
        assert reports["remote"].status == "ok" and reports["remote"].samples == 2
        assert reports["gone"].status == "unreachable" and "404" in reports["gone"].error
        assert reports["badsum"].status == "unreachable" and "sha256" in reports["badsum"].error
        assert summary.samples == 4
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["collections"]["gone"]["status"] == "unreachable"
        metas = [json.loads(s.fields["json"]) for p in sorted((out / "shards").glob("*.tar")) for s in iter_shard(p)]
        remote = [m for m in metas if m["collection"] == "remote"]
        assert [m["origin"] for m in remote] == [
            {"url": base + "/set.tar", "member": "fractals/images/one.png"},
            {"url": base + "/set.tar", "member": "fractals/images/two.png"},
        ]
        assert len(base.requests("/set.tar")) == 1
        # A re-run finds the good collection extracted: no new request; the failed ones are retried.
        build(BuildConfig(out=out, manifests=manifests, image_size=32), log=quiet, progress=False)
        assert len(base.requests("/set.tar")) == 1
        assert len(base.requests("/copy.tar")) == 2
        result = CliRunner().invoke(mixset_main, [*BUILD, "--out", str(tmp_path / "strict"), "--manifests",
                                                  str(manifests), "--strict", "--quiet"])
        assert result.exit_code == 1 and "collection gone is unreachable and --strict is set" in result.output


def test_hostile_archive_is_refused_without_writing_outside(tmp_path) -> None:
    from http_server import serve

    archive = _tar_of({"fractals/images/ok.png": _png((1, 2, 3)), "../../escape.png": _png((4, 5, 6))})
    with serve({"/evil.tar": archive}) as base:
        manifests = write_manifests(tmp_path / "m", count=1, extra={
            "a-evil.toml": ARCHIVE.format(name="evil", url=base + "/evil.tar", checksum=""),
        })
        out = tmp_path / "work" / "s"
        summary = build(BuildConfig(out=out, manifests=manifests, image_size=32), log=quiet, progress=False)
    assert summary.reports["evil"].status == "unreachable" and "escape.png" in summary.reports["evil"].error
    assert not list(tmp_path.rglob("escape.png"))
    assert summary.samples == 1


def test_large_jpegs_are_decoded_reduced_and_keep_their_content(tmp_path) -> None:
    from pixmix.data.images import open_image

    big = tmp_path / "big.jpg"
    image = Image.new("RGB", (1600, 1200), (30, 140, 220))
    image.paste((250, 250, 0), (0, 0, 800, 1200))  # left half yellow
    image.save(big, quality=95)
    with open_image(big, min_side=256) as im:
        assert min(im.size) >= 256 and im.size[0] < 1600  # decoded at a reduced DCT scale
        assert im.size == (400, 300)
    with open_image(big) as im:
        assert im.size == (1600, 1200)
    folder = f'name = "big"\nsource = "fractals"\nkind = "folder"\nlicence = "mine"\npath = "{tmp_path}"\n'
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "big.toml").write_text(folder)
    out = tmp_path / "s"
    build(BuildConfig(out=out, manifests=manifests, image_size=256), log=quiet, progress=False)
    stored = MixingShards(out)[0]
    assert stored.size == (341, 256)
    left, right = stored.getpixel((40, 128)), stored.getpixel((300, 128))
    assert left[0] > 230 and left[2] < 30 and right[2] > 200


def test_a_built_set_feeds_the_pixmix_dataset(tmp_path) -> None:
    import torch

    from pixmix.data.wrappers import PixMixDataset
    from pixmix.demo import synthetic_images

    manifests = write_manifests(tmp_path / "m", count=5)
    out = tmp_path / "s"
    build(BuildConfig(out=out, manifests=manifests, image_size=48), log=quiet, progress=False)
    data = [(im, i) for i, im in enumerate(synthetic_images(6, 32, seed=1))]
    dataset = PixMixDataset(data, MixingShards(out), "cifar", seed=3)
    x, y = dataset[2]
    assert x.shape == (3, 32, 32) and y == 2 and torch.isfinite(x).all()
    assert torch.equal(dataset[2][0], x)


def test_fvis_source_renders_units_with_their_provenance(tmp_path) -> None:
    manifests = write_manifests(tmp_path / "m", count=1)
    out = tmp_path / "s"
    config = BuildConfig(out=out, manifests=manifests, sources=("fvis",), limit=3, image_size=32,
                         fvis_models=("alexnet",), fvis_steps=2, fvis_size=16, fvis_weights="random", device="cpu")
    summary = build(config, log=quiet, progress=False)
    assert summary.samples == 3 and summary.reports["fvis-alexnet"].status == "ok"
    samples = [s for p in sorted((out / "shards").glob("*.tar")) for s in iter_shard(p)]
    assert [s.key for s in samples] == ["fvis-alexnet-00000000", "fvis-alexnet-00000001", "fvis-alexnet-00000002"]
    metas = [json.loads(s.fields["json"]) for s in samples]
    assert all(set(s.fields) == {"png", "json"} for s in samples)
    assert all(m["source"] == "fvis" and m["origin"]["model"] == "alexnet" and m["origin"]["steps"] == 2 for m in metas)
    assert all(m["origin"]["weights"].startswith("random") for m in metas)
    # --limit thins the plan evenly over layers and channels rather than taking the first channels.
    assert len({(m["origin"]["layer"], m["origin"]["channel"]) for m in metas}) == 3
    assert len({m["origin"]["layer"] for m in metas}) >= 2
    assert verify(out) == []


def test_resume_refuses_a_changed_plan(tmp_path) -> None:
    manifests = write_manifests(tmp_path / "m", count=8)
    out = tmp_path / "s"
    build(BuildConfig(out=out, manifests=manifests, image_size=32, shard_size=3), log=quiet, progress=False)
    # Simulate an interruption after two shards, then a collection that grew meanwhile.
    (out / "manifest.json").unlink()
    (out / ".build" / "shard-000002.json").unlink()
    (manifests / "b-gen.toml").write_text(PROCEDURAL.format(count=9))
    with pytest.raises(Exception, match="collections changed since the interrupted build"):
        build(BuildConfig(out=out, manifests=manifests, image_size=32, shard_size=3), log=quiet, progress=False)
    (manifests / "b-gen.toml").write_text(PROCEDURAL.format(count=8))
    summary = build(BuildConfig(out=out, manifests=manifests, image_size=32, shard_size=3), log=quiet, progress=False)
    assert summary.resumed_shards == 2 and summary.samples == 8 and verify(out) == []


def test_served_archive_with_a_bomb_and_a_non_image_keeps_the_good_images(tmp_path) -> None:
    from http_server import serve

    bomb = io.BytesIO()
    Image.new("1", (8500, 8500)).save(bomb, format="PNG")  # 72 Mpixel in a few KB
    archive = _tar_of({
        "fractals/images/a.png": _png((10, 200, 10)),
        "fractals/images/bomb.png": bomb.getvalue(),
        "fractals/images/readme.png": b"this is not an image",
        "fractals/images/z.png": _png((200, 10, 200)),
    })
    with serve({"/set.tar": archive}) as base:
        manifests = write_manifests(tmp_path / "m", count=1, extra={
            "a-remote.toml": ARCHIVE.format(name="remote", url=base + "/set.tar", checksum=""),
        })
        out = tmp_path / "s"
        summary = build(BuildConfig(out=out, manifests=manifests, image_size=32), log=quiet, progress=False)
    report = summary.reports["remote"]
    assert (report.status, report.samples, report.rejected) == ("ok", 2, 2)
    failures = json.loads((out / "manifest.json").read_text())["failures"]
    assert any("bomb.png" in f and "decompression bomb" in f for f in failures)
    assert any("readme.png" in f and "not an image" in f for f in failures)
    assert verify(out) == []


def test_fvis_fallback_weights_are_reported_also_after_a_resume(tmp_path, monkeypatch) -> None:
    import mixset.sources.fvis as fvis

    real = fvis.load_model

    def offline(name, weights="default", checkpoint=None):
        model, _ = real(name, weights="random", checkpoint=checkpoint)
        return model, "random-init fallback: weights unavailable (test)"

    monkeypatch.setattr(fvis, "load_model", offline)
    manifests = write_manifests(tmp_path / "m", count=1)
    out = tmp_path / "s"
    config = BuildConfig(out=out, manifests=manifests, sources=("fvis",), limit=2, image_size=32, shard_size=1,
                         fvis_models=("alexnet",), fvis_steps=1, fvis_size=16, device="cpu")
    logged: list[str] = []
    summary = build(config, log=logged.append, progress=False)
    report = summary.reports["fvis-alexnet"]
    assert report.status == "ok, fallback weights" and "weights unavailable (test)" in report.error
    assert any(line.startswith("WARNING: fvis-alexnet: no pretrained weights") for line in logged)
    # Re-running the finished build renders nothing (every shard resumes) and still reports the fallback.
    summary = build(config, log=quiet, progress=False)
    assert summary.resumed_shards == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["collections"]["fvis-alexnet"]["status"] == "ok, fallback weights"


def test_cli_shows_user_errors_on_one_line_and_bugs_with_their_traceback(tmp_path, monkeypatch) -> None:
    manifests = write_manifests(tmp_path / "m", count=2)
    runner = CliRunner()
    args = [*BUILD, "--out", str(tmp_path / "s"), "--manifests", str(manifests), "--quiet"]
    result = runner.invoke(mixset_main, [*args, "--device", "tpu"])
    assert result.exit_code == 1
    assert result.output == "Error: --device must be auto, cpu or cuda[:N], got 'tpu'\n"

    def bug(*_args, **_kwargs):
        raise KeyError("a bug of the library")

    monkeypatch.setattr("mixset.build.builder.plan", bug)
    result = runner.invoke(mixset_main, args)
    assert result.exit_code == 1 and isinstance(result.exception, KeyError)  # not turned into a one-line error
    assert "Error:" not in result.output

    def bad_value(*_args, **_kwargs):
        raise ValueError("a plain ValueError is a bug too")

    monkeypatch.setattr("mixset.build.builder.plan", bad_value)
    result = runner.invoke(mixset_main, args)
    assert isinstance(result.exception, ValueError) and "Error:" not in result.output


def test_build_errors_name_the_parameter_at_fault(tmp_path) -> None:
    from mixset.build.builder import BuildError
    from pixmix.utils.errors import PixmixError

    with pytest.raises(BuildError) as info:
        BuildConfig(out=tmp_path, photo_format="gif")  # png is a set format since issue 15 (item 7)
    assert isinstance(info.value, PixmixError) and info.value.param == "photo_format"
    with pytest.raises(BuildError, match="--workers must be >= 1") as info:
        BuildConfig(out=tmp_path, workers=0)
    assert info.value.param == "workers"
    args = [*BUILD, "--out", str(tmp_path / "o"), "--source", "fvis", "--fvis-models", "nonet", "--manifests",
            str(write_manifests(tmp_path / "m"))]
    result = CliRunner().invoke(mixset_main, args)
    assert result.exit_code == 1 and result.output.startswith("Error: --fvis-models: no default layers for model(s)")


def test_a_checkpoint_for_a_model_not_rendered_is_refused_before_rendering(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from mixset.cli import main

    ckpt = tmp_path / "vgg.pt"
    ckpt.write_bytes(b"x")
    args = ["build", "--source", "fvis", "--out", str(tmp_path / "out"), "--fvis-models", "resnet50",
            "--fvis-checkpoint", f"vgg16={ckpt}", "--limit", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "--fvis-checkpoint" in result.output and "vgg16" in result.output and "not being rendered" in result.output
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_archive_fvis_come_first_then_rendered_units_fill_the_limit(tmp_path) -> None:
    """The paper's archive holds fractals and FVis: one download serves both collections; ``--source fvis``
    takes the archive's FVis first and renders units only for what ``--limit`` leaves."""
    import hashlib

    from http_server import serve

    archive = _tar_of({
        "fractals/images/one.jpg": _png((250, 0, 0)), "fractals/images/two.jpg": _png((0, 250, 0)),
        "first_layers_resized256_onevis/images/a.png": _png((0, 0, 250)),
        "first_layers_resized256_onevis/images/b.png": _png((250, 250, 0)),
    })
    md5 = f'md5 = "{hashlib.md5(archive, usedforsecurity=False).hexdigest()}"'
    with serve({"/fractals_and_fvis.tar": archive}) as base:
        url = base + "/fractals_and_fvis.tar"
        fractals = ARCHIVE.format(name="paper-fractals", url=url, checksum=md5).replace("*.png", "*.jpg")
        fvis = ARCHIVE.format(name="paper-fvis", url=url, checksum=md5).replace('"fractals"', '"fvis"').replace(
            "fractals/images/*.png", "first_layers_resized256_onevis/images/*.png")
        manifests = tmp_path / "m"
        manifests.mkdir()
        (manifests / "a.toml").write_text(fractals)
        (manifests / "b.toml").write_text(fvis)
        out = tmp_path / "set"
        common = dict(manifests=manifests, sources=("fractals", "fvis"), limit=3, image_size=32, fvis_steps=1,
                      fvis_size=16, fvis_weights="random")
        summary = build(BuildConfig(out=out, **common), log=quiet, progress=False)
        assert len(base.requests("/fractals_and_fvis.tar")) == 1  # one download for both collections
        # --fvis-models asks for those models' units: the archive's FVis (of several networks) are not taken
        only = build(BuildConfig(out=tmp_path / "only", fvis_models=("alexnet",), **common), log=quiet,
                     progress=False)
    assert "paper-fvis" not in only.reports and only.reports["fvis-alexnet"].samples == 3
    reports = summary.reports
    assert (reports["paper-fractals"].samples, reports["paper-fvis"].samples) == (2, 2)
    assert reports["fvis-alexnet"].samples == 1  # --limit 3 FVis: the archive's 2, then one rendered unit
    metas = [json.loads(s.fields["json"]) for p in sorted((out / "shards").glob("*.tar")) for s in iter_shard(p)]
    fvis_metas = [m for m in metas if m["source"] == "fvis"]
    assert [m["collection"] for m in fvis_metas] == ["paper-fvis", "paper-fvis", "fvis-alexnet"]
    assert fvis_metas[0]["origin"]["member"] == "first_layers_resized256_onevis/images/a.png"


def test_torch_generators_on_a_device_make_the_cpu_pixels(tmp_path) -> None:
    """A GPU build makes Spectrum/StyleGAN images in batches on the device; its CPU twin: the same path on the
    CPU gives the worker path's draws and (to rounding) pixels, and the origin says where they were made."""
    import torch

    from mixset.build.plan import plan
    from mixset.build.produce import produce, produce_on_device

    manifests = tmp_path / "m"
    manifests.mkdir()
    for name in ("spectrum", "stylegan"):
        (manifests / f"{name}.toml").write_text(f'name = "gen-{name}"\nsource = "{name}"\nkind = "generator"\n'
                                                f'licence = "CC0-1.0"\n[generator]\nname = "{name}"\ncount = 3\n')
    config = BuildConfig(out=tmp_path / "set", manifests=manifests, sources=("spectrum", "stylegan"), image_size=64)
    items, _ = plan(config, quiet)
    on_device = list(produce_on_device(items, config, torch.device("cpu")))
    assert len(on_device) == len(items) == 6
    for item, made in zip(items, on_device, strict=True):
        worker = produce(item, config.image_size, config.quality, config.photo_format)
        assert made.key == worker.key and made.error == worker.error == ""
        made_px = np.asarray(Image.open(io.BytesIO(made.image))).astype(np.int16)
        worker_px = np.asarray(Image.open(io.BytesIO(worker.image))).astype(np.int16)
        assert np.abs(made_px - worker_px).mean() < 4.0  # batched FFTs round differently: equal to rounding
        assert made.meta["origin"] == dict(worker.meta["origin"], device="cpu")


def test_fvis_activation_is_a_build_option(tmp_path) -> None:
    manifests = tmp_path / "m"
    manifests.mkdir()
    common = dict(manifests=manifests, sources=("fvis",), limit=1, image_size=32, fvis_models=("alexnet",),
                  fvis_steps=1, fvis_size=16, fvis_weights="random")
    origins = {}
    for activation in ("post-relu", "pre-relu"):
        out = tmp_path / activation
        build(BuildConfig(out=out, fvis_activation=activation, **common), log=quiet, progress=False)
        sample = next(iter_shard(sorted((out / "shards").glob("*.tar"))[0]))
        origins[activation] = json.loads(sample.fields["json"])["origin"]
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["config"]["fvis"]["activation"] == activation
    assert (origins["post-relu"]["activation"], origins["post-relu"]["module"]) == ("post-relu", "features.1")
    assert (origins["pre-relu"]["activation"], origins["pre-relu"]["module"]) == ("pre-relu", "features.0")
    with pytest.raises(PixmixError, match="--fvis-activation must be"):
        BuildConfig(out=tmp_path / "x", fvis_activation="relu", **common)


def test_an_archive_that_failed_for_one_collection_is_not_fetched_again_for_the_next(tmp_path) -> None:
    from http_server import Route, serve

    with serve({"/gone.tar": Route(status=503)}) as base:
        manifests = tmp_path / "m"
        manifests.mkdir()
        for name in ("first", "second"):
            (manifests / f"{name}.toml").write_text(ARCHIVE.format(name=name, url=base + "/gone.tar",
                                                                   checksum='md5 = "' + "0" * 32 + '"'))
        (manifests / "z-gen.toml").write_text(PROCEDURAL.format(count=1))
        summary = build(BuildConfig(out=tmp_path / "set", manifests=manifests, image_size=32), log=quiet,
                        progress=False)
        first_run = len(base.requests("/gone.tar"))
        assert first_run >= 1
        reports = summary.reports
        assert reports["first"].status == reports["second"].status == "unreachable"
        assert "not retried for second" in reports["second"].error and "503" in reports["second"].error
        # A new run tries the file again (once for both collections).
        build(BuildConfig(out=tmp_path / "set", manifests=manifests, image_size=32), log=quiet, progress=False)
        assert len(base.requests("/gone.tar")) == 2 * first_run
