"""Issue 15, the leftovers: --manifests adds to the defaults, 16-bit pictures, damaged journals, runs whose
every item fails, default workers from the usable CPUs, Hugging Face ``datasets`` interop, contact-sheet totals."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from mixset.build.builder import BuildConfig, build
from mixset.cli import main as mixset_main
from mixset.shard.sharder import ShardConfig, shard
from pixmix.data.shards.tar import iter_shard

LEAVES = """name = "my-leaves"
source = "deadleaves"
kind = "generator"
licence = "CC0-1.0"
[generator]
name = "deadleaves"
count = 2
"""


def quiet(_: str) -> None:
    pass


def stored_images(out: Path, field: str) -> list[np.ndarray]:
    """Every stored image of a mixing set or a shard set (as uint8 arrays), in order."""
    return [np.asarray(Image.open(io.BytesIO(sample.fields[field])))
            for path in sorted((out / "shards").glob("*.tar")) for sample in iter_shard(path)]


# --- 1. --manifests adds to the default manifests; --no-default-manifests replaces them ----------------


def test_manifests_folder_adds_to_the_defaults_and_the_flag_replaces_them(tmp_path: Path) -> None:
    from mixset.sources.catalog import load_collections

    mine = tmp_path / "m"
    mine.mkdir()
    (mine / "leaves.toml").write_text(LEAVES)
    defaults = [c.name for c in load_collections(None, ("deadleaves",))]
    assert defaults and "my-leaves" not in defaults
    common = ["--source", "deadleaves", "--manifests", str(mine), "--image-size", "32", "--quiet"]
    added = CliRunner().invoke(mixset_main, ["build", "--out", str(tmp_path / "a"), "--limit", "2", *common])
    assert added.exit_code == 0, added.output
    # The defaults' collection comes first and fills the limit; ours is planned after it.
    assert f"deadleaves/{defaults[0]} [generator] ok: 2 samples" in added.output
    assert "deadleaves/my-leaves [generator] skipped (limit reached)" in added.output
    only = CliRunner().invoke(mixset_main, ["build", "--out", str(tmp_path / "b"), "--no-default-manifests", *common])
    assert only.exit_code == 0, only.output
    assert "deadleaves/my-leaves [generator] ok: 2 samples" in only.output and defaults[0] not in only.output
    lonely = CliRunner().invoke(mixset_main, ["build", "--out", str(tmp_path / "c"), "--no-default-manifests"])
    assert lonely.exit_code == 1 and lonely.output.strip().splitlines() == [
        "Error: --no-default-manifests needs at least one --manifests DIR"]


# --- 2. 16-bit pictures are scaled to 8 bits, not clipped (saturated) ---------------------------------


def _write_png16(path: Path, size: int = 32) -> np.ndarray:
    """A 16-bit greyscale PNG (values across 0..65535); returns the 8-bit values it should become (v >> 8)."""
    yy, xx = np.mgrid[0:size, 0:size]
    values = ((xx * size + yy) * (65535 // (size * size - 1))).astype(np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")  # really stored as 16 bits
    return (values >> 8).astype(np.uint8)


def test_a_16_bit_png_in_a_collection_is_scaled_not_saturated(tmp_path: Path) -> None:
    expected = _write_png16(tmp_path / "photos" / "a.png")
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "p.toml").write_text(f'name = "p"\nsource = "natural"\nkind = "folder"\nlicence = "x"\n'
                                      f'path = "{tmp_path / "photos"}"\n')
    out = tmp_path / "s"
    build(BuildConfig(out=out, sources=("natural",), manifests=manifests, image_size=32, photo_format="png"),
          log=quiet, progress=False)
    (image,) = stored_images(out, "png")
    assert image.shape == (32, 32, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], expected)


def test_a_16_bit_png_in_an_image_folder_is_scaled_not_saturated(tmp_path: Path) -> None:
    expected = _write_png16(tmp_path / "data" / "cls" / "a.png")
    out = tmp_path / "o"
    shard(ShardConfig(dataset="imagefolder", data_dir=tmp_path / "data", out=out, image_size=32, image_format="png"),
          log=quiet, progress=False)
    (image,) = stored_images(out, "png")
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], expected)


# --- 3. a damaged journal entry or options file is named, never silently rewritten ----------------------


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory) -> Path:
    from tiny_datasets import write_imagenet

    return write_imagenet(tmp_path_factory.mktemp("imagenet"), classes=2, per_class=3)


def test_a_damaged_journal_entry_is_named_and_its_shard_written_again(imagenet: Path, tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    from mixset.verify import verify

    out = tmp_path / "o"
    args = ["shard", "imagenet", "--data-dir", str(imagenet), "--out", str(out), "--shard-samples", "4",
            "--image-size", "32", "--quiet", "--workers", "1"]  # no process pool to start: fast
    assert CliRunner().invoke(mixset_main, args).exit_code == 0
    journal = out / ".shard" / "shard-000001.json"
    text = journal.read_text()
    journal.write_text(text[: len(text) // 2])
    with caplog.at_level("WARNING", logger="pixmix.data.shards"):
        result = CliRunner().invoke(mixset_main, args)
    assert result.exit_code == 0 and "wrote 1 shard(s)" in result.output, result.output
    warned = [r.getMessage() for r in caplog.records if "journal" in r.getMessage()]
    assert len(warned) == 1 and str(journal) in warned[0] and "written again" in warned[0]
    assert "\n" not in warned[0] and journal.read_text() == text and verify(out) == []
    options = out / ".shard" / "config.json"
    options.write_text(options.read_text()[:10])
    result = CliRunner().invoke(mixset_main, args)
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert f"{options}: truncated or unreadable" in result.output and "re-run exactly" in result.output


# --- 4. a run whose every item fails the same way exits non-zero, blaming the right option -------------


def _bomb_mixset(tmp_path: Path) -> Path:
    """A finished mixing set (manifest and all) whose only picture is a decompression bomb."""
    import webdataset as wds
    from tiny_datasets import write_mixset

    out = write_mixset(tmp_path / "bomb-set", count=2, size=32)
    bomb = io.BytesIO()
    Image.new("1", (8500, 8500)).save(bomb, format="PNG")  # 72 Mpixel in a few KB
    (shard_path,) = sorted((out / "shards").glob("*.tar"))
    samples = list(iter_shard(shard_path))
    with wds.TarWriter(str(shard_path)) as sink:
        for sample in samples:
            sink.write({"__key__": sample.key, "jpg": bomb.getvalue(), "json": sample.fields["json"]})
    return out


@pytest.mark.parametrize("shard_samples", [None, "2"])
def test_a_folder_that_is_not_a_mixing_set_is_a_bad_mixset(imagenet: Path, tmp_path: Path,
                                                           shard_samples: str | None) -> None:
    sizes = ["--shard-samples", shard_samples] if shard_samples else []
    out = tmp_path / "o"
    result = CliRunner().invoke(mixset_main, ["shard", "imagenet", "--data-dir", str(imagenet), "--out", str(out),
                                              "--pixmix", "--mixset", str(imagenet / "train"), "--image-size", "32",
                                              "--crop-size", "16", "--quiet", *sizes])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith("Error: --mixset") and "--data-dir" not in result.output, result.output
    assert not (out / "manifest.json").exists()


@pytest.mark.parametrize("shard_samples", [None, "2"])
def test_a_mixing_set_of_one_bomb_exits_non_zero_in_one_line(imagenet: Path, tmp_path: Path,
                                                             shard_samples: str | None) -> None:
    sizes = ["--shard-samples", shard_samples] if shard_samples else []
    mixset = _bomb_mixset(tmp_path)
    out = tmp_path / "o"
    result = CliRunner().invoke(mixset_main, ["shard", "imagenet", "--data-dir", str(imagenet), "--out", str(out),
                                              "--pixmix", "--mixset", str(mixset), "--image-size", "32",
                                              "--crop-size", "16", "--quiet", *sizes])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith("Error: --mixset") and "decompression bomb" in result.output, result.output
    assert not (out / "manifest.json").exists()


def test_a_shard_run_whose_every_item_fails_exits_non_zero_and_writes_nothing_to_resume(tmp_path: Path) -> None:
    data = tmp_path / "data" / "cls"
    data.mkdir(parents=True)
    for i in range(3):
        (data / f"{i}.jpg").write_bytes(b"not an image")
    out = tmp_path / "o"
    args = ["shard", "imagefolder", "--data-dir", str(data.parent), "--out", str(out), "--shard-samples", "2",
            "--image-size", "32", "--quiet"]
    result = CliRunner().invoke(mixset_main, args)
    assert result.exit_code == 1 and "every one of the 3 item(s) failed" in result.output, result.output
    assert "is not an image" in result.output.strip().splitlines()[-1]
    assert not (out / "manifest.json").exists() and not list((out / ".shard").glob("shard-*.json"))


# --- 5. CPU budget: ranks of one node divide it; shard's default workers use it ------------------------


def test_ranks_of_one_node_divide_its_cpus(tmp_path: Path) -> None:
    from pixmix.utils.runtime import usable_cpus

    no_cgroup = str(tmp_path / "none")
    assert usable_cpus({}, no_cgroup, affinity=16) == 16
    assert usable_cpus({"LOCAL_WORLD_SIZE": "4"}, no_cgroup, affinity=16) == 4
    assert usable_cpus({"LOCAL_WORLD_SIZE": "3"}, no_cgroup, affinity=16) == 5  # 3 x 5 <= 16
    assert usable_cpus({"LOCAL_WORLD_SIZE": "32"}, no_cgroup, affinity=16) == 1  # never 0
    assert usable_cpus({"LOCAL_WORLD_SIZE": "x"}, no_cgroup, affinity=16) == 16  # ignored
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("800000 100000\n")  # a cgroup of 8 CPUs for the whole node's ranks
    assert usable_cpus({"LOCAL_WORLD_SIZE": "2"}, str(v2), affinity=16) == 4
    # Per-process limits are already per rank: not divided again.
    assert usable_cpus({"LOCAL_WORLD_SIZE": "4", "SLURM_CPUS_PER_TASK": "3"}, no_cgroup, affinity=64) == 3
    assert usable_cpus({"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "6"}, no_cgroup, affinity=16) == 6


def test_shard_defaults_to_the_usable_cpus_with_threads_limited_while_it_runs(imagenet: Path, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    import torch

    import mixset.cli
    import mixset.shard.sharder as sharder
    from mixset.shard.errors import ShardError
    from pixmix.utils.runtime import plan_workers, usable_cpus

    seen: list[tuple[int, int, str | None]] = []
    budgets: list[int] = []

    def fake_shard(config: ShardConfig, **_: object) -> None:
        seen.append((config.workers, torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")))
        budgets.append(usable_cpus())  # this process's own limit does not shrink the plan
        raise ShardError("stop")

    monkeypatch.setattr(sharder, "shard", fake_shard)
    monkeypatch.setattr(mixset.cli, "usable_cpus", lambda: 3)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # the caller's setting, put back after the command
    torch_before = torch.get_num_threads()
    args = ["shard", "imagenet", "--data-dir", str(imagenet), "--out", str(tmp_path / "o"), "--quiet"]
    assert CliRunner().invoke(mixset_main, args).exit_code == 1
    threads = plan_workers(3)[1]  # processes x threads <= the CPUs the process may use
    assert seen == [(3, threads, str(threads))] and budgets == [usable_cpus()]
    assert os.environ["OMP_NUM_THREADS"] == "7" and torch.get_num_threads() == torch_before
    assert CliRunner().invoke(mixset_main, [*args, "--workers", "1"]).exit_code == 1
    assert seen[-1][0] == 1
    shown = " ".join(CliRunner().invoke(mixset_main, ["shard", "imagenet", "--help"]).output.split())
    assert "[default: (the usable CPUs); x>=1]" in shown


# --- 6. every WebDataset consumer reads every image: Hugging Face datasets and plain webdataset ----------


def _read_everywhere(out: Path, field: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """The rows of a set as Hugging Face ``datasets`` and plain webdataset read them; checks both agree with
    the manifest's count and every row has its image. Returns the datasets rows' metadata."""
    import json

    datasets = pytest.importorskip("datasets")
    import webdataset as wds

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # local files only
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    count = json.loads((out / "manifest.json").read_text())["samples"]
    tars = [str(p) for p in sorted((out / "shards").glob("*.tar"))]
    table = datasets.load_dataset("webdataset", data_files={"train": tars}, split="train",
                                  cache_dir=str(tmp_path / "hf-cache"))
    assert len(table) == count and field in table.column_names
    assert all(isinstance(image, Image.Image) and image.size[0] > 0 for image in table[field])
    rows = list(wds.WebDataset(tars, shardshuffle=False).decode("pil").to_tuple(field, "json"))
    assert len(rows) == count and all(isinstance(image, Image.Image) for image, _ in rows)
    # The same rows in the same order (datasets gives every row the union of the json keys: compare the key).
    key = ("collection", "index") if "collection" in rows[0][1] else ("index", "view")
    assert [tuple(m[k] for k in key) for _, m in rows] == [tuple(m[k] for k in key) for m in table["json"]]
    return list(table["json"])


def test_hugging_face_datasets_and_webdataset_read_every_image_of_a_mixing_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_build import write_manifests

    out = tmp_path / "s"
    build(BuildConfig(out=out, manifests=write_manifests(tmp_path / "m", count=3), image_size=32,
                      sources=("fractals", "fvis"), limit=3, fvis_models=("resnet50",), fvis_steps=1, fvis_size=16,
                      fvis_weights="random"), log=quiet, progress=False)
    metas = _read_everywhere(out, "png", tmp_path, monkeypatch)
    assert sorted(m["source"] for m in metas) == ["fractals"] * 3 + ["fvis"] * 3


def test_hugging_face_datasets_and_webdataset_read_every_view_of_a_shard_set(
        imagenet: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tiny_datasets import write_mixset

    mixset = write_mixset(tmp_path / "mix", count=2, size=32)
    out = tmp_path / "o"
    shard(ShardConfig(dataset="imagenet", data_dir=imagenet, out=out, pixmix=True, mixset=mixset, views=2,
                      image_size=32, crop_size=16, shard_samples=4), log=quiet, progress=False)
    metas = _read_everywhere(out, "jpg", tmp_path, monkeypatch)
    assert sorted((m["index"], m["view"]) for m in metas) == [(i, v) for i in range(6) for v in range(2)]


# --- 7. contact sheets label their bands with the set's counts, not what was read ------------------------


@pytest.fixture
def sheets(monkeypatch: pytest.MonkeyPatch) -> list:
    """The ContactSheet of every contact sheet written while the test runs."""
    import mixset.contact_sheet as contact_sheet

    real, made = contact_sheet.write_contact_sheet, []

    def recording(*args: object, **kwargs: object) -> object:
        made.append(real(*args, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    monkeypatch.setattr(contact_sheet, "write_contact_sheet", recording)
    return made


def test_build_and_shard_contact_sheets_label_bands_with_the_manifests_counts(imagenet: Path, tmp_path: Path,
                                                                              sheets: list) -> None:
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "a.toml").write_text('name = "gen"\nsource = "fractals"\nkind = "procedural"\nlicence = "CC0-1.0"\n'
                                      "[procedural]\ncount = 20\n")
    (manifests / "b.toml").write_text(LEAVES)
    build(BuildConfig(out=tmp_path / "s", manifests=manifests, sources=("fractals", "deadleaves"), image_size=32,
                      shard_size=8), log=quiet, progress=False)
    (sheet,) = sheets
    assert sheet.labels == {"fractals": "fractals: 20 samples, first 16 shown",
                            "deadleaves": "deadleaves: 2 samples, all shown"}
    shard(ShardConfig(dataset="imagenet", data_dir=imagenet, out=tmp_path / "o", image_size=32, shard_samples=4),
          log=quiet, progress=False)
    assert sheets[1].labels == {"view 0": "view 0: 6 samples, first 4 shown"}  # the first shard of the view
