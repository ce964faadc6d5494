"""The contact sheet shows one labelled band per group whatever the order and counts of the shards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mixset.build.builder import BuildConfig, build
from mixset.contact_sheet import BACKGROUND, LABEL_H, PAD, PER_ROW, TILE, describe, write_contact_sheet
from pixmix.data.shards.tar import Sample, ShardInfo, to_bytes, write_shard

COLOURS = {"A": (220, 30, 30), "B": (30, 200, 40), "C": (40, 60, 230)}


def sample(source: str, index: int, image: bytes | None = None, **extra: Any) -> Sample:
    meta = {"source": source, "collection": f"{source.lower()}-coll", "index": index,
            "origin": {"generator": f"gen-{source.lower()}", "params": {"kind": "blobs"}}, **extra}
    picture = to_bytes(Image.new("RGB", (40, 30), COLOURS.get(source, (200, 200, 0))), "png")
    return Sample(f"{source}-{index:04d}", {"json": json.dumps(meta).encode(),
                                            "png": picture if image is None else image})


def shard(out: Path, n: int, samples: list[Sample]) -> ShardInfo:
    return write_shard(out / "shards" / f"mixset-{n:06d}.tar", samples, root=out)


def tile_centre(sheet: Image.Image, top: int, i: int) -> tuple[int, int, int]:
    x = PAD + (i % PER_ROW) * (TILE + PAD) + TILE // 2
    y = top + LABEL_H + (i // PER_ROW) * (TILE + PAD) + TILE // 4  # above the caption strip
    pixel = sheet.getpixel((x, y))
    assert isinstance(pixel, tuple)
    return pixel[0], pixel[1], pixel[2]


def label_has_text(sheet: Image.Image, top: int) -> bool:
    strip = np.asarray(sheet.crop((PAD, top, sheet.width // 2, top + LABEL_H)))
    return bool((strip != np.array(BACKGROUND, dtype=np.uint8)).any())


def test_a_source_only_in_a_later_shard_gets_its_band(tmp_path: Path) -> None:
    out = tmp_path / "set"
    shards = [shard(out, 0, [sample("A", i) for i in range(20)]),
              shard(out, 1, [sample("A", 20), sample("B", 0), sample("B", 1), sample("A", 21), sample("B", 2)])]
    result = write_contact_sheet(out, shards, out / "sheet.png")
    assert list(result.bands) == ["A", "B"]
    assert result.bands["A"] == [f"A-{i:04d}" for i in range(16)]
    assert result.bands["B"] == ["B-0000", "B-0001", "B-0002"]
    assert result.counts == {"A": 22, "B": 3} and result.complete
    assert result.captions["B"][0] == "B\ngen-b blobs"
    assert result.labels == {"A": "A: 22 samples read, first 16 shown", "B": "B: 3 samples read, all shown"}
    with Image.open(out / "sheet.png") as sheet:
        sheet = sheet.convert("RGB")
        top_b = result.band_top["B"]
        assert top_b > result.band_top["A"] and sheet.height >= top_b + LABEL_H + TILE
        assert [tile_centre(sheet, top_b, i) for i in range(3)] == [COLOURS["B"]] * 3  # B's tiles are drawn
        assert tile_centre(sheet, top_b, 3) == BACKGROUND  # and only those three
        assert all(tile_centre(sheet, result.band_top["A"], i) == COLOURS["A"] for i in range(16))
        assert label_has_text(sheet, top_b) and label_has_text(sheet, result.band_top["A"])


def test_known_totals_stop_reading_once_every_band_is_full(tmp_path: Path) -> None:
    out = tmp_path / "set"
    shards = [shard(out, 0, [sample("A", i) for i in range(20)]), shard(out, 1, [sample("B", i) for i in range(3)]),
              ShardInfo("shards/never-read.tar", 1, 1, "0" * 64)]  # does not exist: reading it would fail
    result = write_contact_sheet(out, shards, out / "sheet.png", totals={"B": 3, "A": 500, "C": 0})
    assert list(result.bands) == ["B", "A", "C"]  # the caller's order; C is named, so it has a band
    assert result.counts == {"B": 3, "A": 500, "C": 0} and not result.complete
    assert len(result.bands["A"]) == 16 and len(result.bands["B"]) == 3 and result.bands["C"] == []
    assert result.labels == {"B": "B: 3 samples, all shown", "A": "A: 500 samples, first 16 shown",
                             "C": "C: no samples"}
    with Image.open(out / "sheet.png") as sheet:
        sheet = sheet.convert("RGB")
        assert tile_centre(sheet, result.band_top["B"], 0) == COLOURS["B"]
        assert tile_centre(sheet, result.band_top["C"], 0) == BACKGROUND and label_has_text(sheet, result.band_top["C"])


def test_a_count_of_groups_reads_until_all_are_seen(tmp_path: Path) -> None:
    out = tmp_path / "set"
    shards = [shard(out, 0, [sample("A", i) for i in range(17)]), shard(out, 1, [sample("B", i) for i in range(16)]),
              shard(out, 2, [sample("C", 0)])]
    result = write_contact_sheet(out, shards, out / "sheet.png", groups=2)
    assert list(result.bands) == ["A", "B"] and not result.complete  # stopped at the 16th B
    result = write_contact_sheet(out, shards, out / "sheet.png")
    assert list(result.bands) == ["A", "B", "C"] and result.complete


def test_shard_sets_bands_per_view_in_natural_order_and_class_captions(tmp_path: Path) -> None:
    out = tmp_path / "set"
    samples = [sample("A", i, view=v, label=v % 3, **{"class": ["cat", "dog", "ship"][v % 3]})
               for i, v in enumerate([10, 2, 0, 2, 10])]
    result = write_contact_sheet(out, [shard(out, 0, samples)], out / "sheet.png",
                                 group=lambda meta: f"view {meta['view']}")
    assert list(result.bands) == ["view 0", "view 2", "view 10"]
    assert result.captions["view 10"] == ["view 10\ndog (1)", "view 10\ndog (1)"]
    assert result.captions["view 2"][0] == "view 2\nship (2)"


def test_captions_say_what_each_picture_is() -> None:
    fvis = {"source": "fvis", "origin": {"model": "resnet50", "layer": "layer1.0", "channel": 7, "weights": "x"}}
    fractal = {"source": "fractals", "origin": {"generator": "mixset.procedural", "params": {"kind": "julia"}}}
    corrupt = {"corruption": "gaussian_noise", "severity": 3, "class": "cat", "label": 3, "view": 0}
    folder = {"source": "natural", "collection": "photos", "origin": {"member": "a/b/dog.jpg"}}
    assert describe(fvis) == "fvis resnet50\nlayer1.0 u7"
    assert describe(fractal) == "fractals\nfractal julia"
    assert describe(corrupt) == "gaussian_noise s3\ncat (3)"
    assert describe({"view": 1, "class": "ship", "label": 8}) == "view 1\nship (8)"
    assert describe(folder) == "natural photos\ndog.jpg"


def test_fallback_weights_are_said_for_the_fvis_shown(tmp_path: Path) -> None:
    out = tmp_path / "set"

    def fvis(i: int, model: str, weights: str) -> Sample:
        origin = {"model": model, "layer": "conv1", "channel": i, "weights": weights}
        return sample("fvis", i, origin=origin)

    shown = [fvis(i, "alexnet", "random-init fallback: offline") for i in range(10)]
    shown += [fvis(10 + i, "vgg16", "torchvision VGG16_Weights") for i in range(6)]
    result = write_contact_sheet(out, [shard(out, 0, [*shown, fvis(16, "googlenet", "random-init fallback: x")])],
                                 out / "sheet.png")
    assert result.labels["fvis"] == "fvis: 17 samples read, first 16 shown (random-init weights: alexnet)"
    assert result.captions["fvis"][0] == "fvis alexnet\nconv1 u0"


def test_unreadable_image_and_missing_json_do_not_stop_the_sheet(tmp_path: Path) -> None:
    out = tmp_path / "set"
    broken = sample("A", 0, image=b"not a picture")
    bare = Sample("bare", {"png": to_bytes(Image.new("RGB", (8, 8)), "png")})
    result = write_contact_sheet(out, [shard(out, 0, [broken, bare, sample("B", 0)])], out / "sheet.png")
    assert result.bands == {"A": ["A-0000"], "B": ["B-0000"], "unknown source": ["bare"]}


def test_build_with_a_late_second_source_shows_both(tmp_path: Path) -> None:
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "b-gen.toml").write_text('name = "gen"\nsource = "fractals"\nkind = "procedural"\n'
                                          'licence = "CC0-1.0"\n[procedural]\ncount = 20\n')
    (manifests / "c-leaves.toml").write_text('name = "leaves"\nsource = "deadleaves"\nkind = "generator"\n'
                                             'licence = "CC0-1.0"\n[generator]\nname = "deadleaves"\ncount = 4\n')
    out = tmp_path / "set"
    build(BuildConfig(out=out, sources=("fractals", "deadleaves"), manifests=manifests, shard_size=8, image_size=32),
          log=lambda _: None, progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    shards = [ShardInfo(**s) for s in manifest["shards"]]
    assert len(shards) == 3
    result = write_contact_sheet(out, shards, tmp_path / "again.png", totals=manifest["sources"])  # as the build
    assert result.counts == {"deadleaves": 4, "fractals": 20}
    assert len(result.bands["deadleaves"]) == 4 and len(result.bands["fractals"]) == 16
    assert all(c.startswith("deadleaves\ndeadleaves") for c in result.captions["deadleaves"])
    with Image.open(out / manifest["contact_sheet"]) as built, Image.open(tmp_path / "again.png") as again:
        assert built.size == again.size and built.tobytes() == again.tobytes()
        built = built.convert("RGB")
        top = result.band_top["deadleaves"]
        assert all(tile_centre(built, top, i) != BACKGROUND for i in range(4)) and label_has_text(built, top)
