"""Manifest validation (mixset.sources.catalog): wrong types are one-line errors naming the file and field;
extra manifest folders add to the defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixset.sources.catalog import DEFAULT_MANIFESTS, ManifestError, load_collection, load_collections

HEAD = 'name = "x"\nsource = "s"\nlicence = "l"\n'
PROCEDURAL = HEAD + 'kind = "procedural"\n'
ARCHIVE = HEAD + 'kind = "archive"\n'
URLS = HEAD + 'kind = "urls"\n'
ART = '[[artefacts]]\nurl = "https://example.org/a.zip"\nfilename = "a.zip"\n'


def refused(tmp_path: Path, text: str | bytes, *fragments: str) -> str:
    path = tmp_path / "bad.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(ManifestError) as info:
        load_collection(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("text, field", [
    (ARCHIVE + 'filters = "x"\n' + ART, "filters"),
    (PROCEDURAL + 'procedural = "x"\n', "procedural"),
    (URLS + 'images = "x"\n', "images"),
    (URLS + 'images = ["x"]\n', "images[0]"),
    (ARCHIVE + 'artefacts = ["x"]\n', "artefacts[0]"),
    (ARCHIVE + 'artefacts = "x"\n', "artefacts"),
    (PROCEDURAL + '[procedural]\ncount = true\n', "count"),
    (ARCHIVE + ART + '[filters]\ninclude = "*.jpg"\n', "include"),
    (ARCHIVE + ART + '[filters]\ninclude = []\n', "include"),
    (ARCHIVE + ART + '[filters]\ninclude = [1]\n', "include"),
    (PROCEDURAL + '[procedural]\ncount = 3\nkinds = ["mandelbrot"]\n', "mandelbrot"),
    (PROCEDURAL + '[procedural]\ncount = 3\nkinds = "ifs"\n', "kinds"),
    (HEAD + 'kind = "generator"\ngenerator = "x"\n', "[generator]"),
])
def test_wrong_types_are_one_line_errors(tmp_path, text, field):
    refused(tmp_path, text, field)


def test_include_string_does_not_match_everything(tmp_path):
    # before: tuple("*.jpg") == ("*", ".", "j", "p", "g"), and "*" matched every member
    refused(tmp_path, ARCHIVE + ART + '[filters]\ninclude = "*.jpg"\n', "[filters] include", "list of strings")


def test_non_utf8_manifest_names_the_file(tmp_path):
    refused(tmp_path, (PROCEDURAL + 'description = "caf\xe9"\n[procedural]\ncount = 3\n').encode("latin-1"),
            "UTF-8")


def test_bad_toml_is_one_line(tmp_path):
    refused(tmp_path, PROCEDURAL + "[procedural\ncount = 3\n", "not a readable TOML")


def test_good_manifests_still_load(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text(ARCHIVE + ART + '[filters]\ninclude = ["*.jpg", "*.png"]\n')
    assert load_collection(path).include == ("*.jpg", "*.png")
    path.write_text(PROCEDURAL + '[procedural]\ncount = 3\nkinds = ["ifs"]\n')
    assert load_collection(path).generator_kinds == ("ifs",)


def test_extra_manifest_folders_add_to_the_defaults(tmp_path):
    defaults = {c.name for c in load_collections()}
    assert defaults == {c.name for c in load_collections(DEFAULT_MANIFESTS)} and defaults
    extra = tmp_path / "more"
    extra.mkdir()
    (extra / "mine.toml").write_text(PROCEDURAL.replace('"x"', '"mine"') + "[procedural]\ncount = 2\n")
    added = {c.name for c in load_collections(extra=[extra])}
    assert added == defaults | {"mine"}
    assert {c.name for c in load_collections(extra=[extra], replace_defaults=True)} == {"mine"}
    assert [c.name for c in load_collections(extra=[extra], sources=("s",))] == ["mine"]
    with pytest.raises(ManifestError, match="at least one"):
        load_collections(replace_defaults=True)


def test_collection_defined_twice_names_both_files(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    text = PROCEDURAL + "[procedural]\ncount = 2\n"
    (one / "a.toml").write_text(text)
    (two / "b.toml").write_text(text)
    with pytest.raises(ManifestError) as info:
        load_collections(extra=[one, two], replace_defaults=True)
    message = str(info.value)
    assert str(one / "a.toml") in message and str(two / "b.toml") in message and "\n" not in message
    default = sorted(DEFAULT_MANIFESTS.glob("*.toml"))[0]
    (one / "copy.toml").write_text(default.read_text())
    (one / "a.toml").unlink()
    with pytest.raises(ManifestError, match=f"{default.name}.*copy.toml"):
        load_collections(extra=[one])
