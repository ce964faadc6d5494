"""The resumable shard-set writer that ``mixset build`` and ``mixset shard`` share: atomic shards, a journal
entry per shard, resume after a crash, refused option changes, the manifest last."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path

import pytest

from pixmix.data.shards.tar import Sample, iter_shard
from pixmix.data.shards.writer import ShardSetWriter, WriterOptions
from pixmix.utils.errors import PixmixError


class Refused(PixmixError):
    pass


def samples(shard_id: int, n: int = 3) -> list[Sample]:
    return [Sample(f"s{shard_id}-{i}", {"txt": f"shard {shard_id} sample {i}".encode() * 20}) for i in range(n)]


def writer(root: Path, checksum: bool = True) -> ShardSetWriter:
    return ShardSetWriter(root, prefix="part", state=".state", checksum=checksum, error=Refused)


def tars(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "shards").glob("*"))}


def write_in_order(w: ShardSetWriter, ids: range) -> None:
    for shard_id in ids:
        for sample in samples(shard_id):
            w.add(sample)
        w.roll_over({"plan_end": shard_id + 1})


def test_shards_journal_entries_and_manifest_last(tmp_path: Path) -> None:
    root = tmp_path / "set"
    with writer(root) as w:
        write_in_order(w, range(3))
        assert not (root / "manifest.json").exists()  # every shard is written, but the set is not finished
        path = w.finish({"shards": 3})
    assert path == root / "manifest.json" and json.loads(path.read_text()) == {"shards": 3}
    assert sorted(tars(root)) == ["part-000000.tar", "part-000001.tar", "part-000002.tar"]
    entry = json.loads((root / ".state" / "shard-000001.json").read_text())
    assert entry["plan_end"] == 2 and entry["shard"]["name"] == "shards/part-000001.tar"
    assert entry["shard"]["samples"] == 3 and len(entry["shard"]["sha256"]) == 64
    assert [s.key for s in iter_shard(root / "shards" / "part-000001.tar")] == ["s1-0", "s1-1", "s1-2"]
    assert not list(root.rglob("*.tmp"))


def test_an_exception_mid_shard_leaves_no_tmp_and_keeps_the_journalled_shards(tmp_path: Path) -> None:
    root = tmp_path / "set"

    def broken() -> Iterator[Sample]:
        yield from samples(2)[:2]
        raise RuntimeError("the producer died")

    with pytest.raises(RuntimeError, match="producer died"), writer(root) as w:
        write_in_order(w, range(2))
        w.write(2, broken(), {"plan_end": 3})
    assert not list(root.rglob("*.tmp")) and not (root / "manifest.json").exists()
    assert sorted(tars(root)) == ["part-000000.tar", "part-000001.tar"]
    assert [e["plan_end"] for e in writer(root).resume()] == [1, 2]


def test_resume_after_a_kill_drops_the_partial_shard_and_continues_byte_identically(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    with writer(reference) as w:
        write_in_order(w, range(4))
        w.finish({})
    root = tmp_path / "killed"
    with writer(root) as w:
        write_in_order(w, range(2))
    # What a SIGKILL leaves: shard 2 complete but not journalled, shard 3 half written.
    (root / "shards" / "part-000002.tar").write_bytes(tars(reference)["part-000002.tar"])
    (root / "shards" / "part-000003.tar.tmp").write_bytes(b"half a shard")
    with writer(root) as w:
        done = w.resume()
        assert [e["plan_end"] for e in done] == [1, 2]
        assert sorted(tars(root)) == ["part-000000.tar", "part-000001.tar"]  # no .tmp, no unjournalled shard
        write_in_order(w, range(2, 4))
        w.finish({})
    assert tars(root) == tars(reference)


def test_a_journal_entry_whose_shard_is_missing_or_altered_is_ignored(tmp_path: Path) -> None:
    root = tmp_path / "set"
    with writer(root) as w:
        write_in_order(w, range(4))
    (root / "shards" / "part-000001.tar").unlink()
    # In random access (ranks), only that shard is redone; the partial .tmp of a shard to redo is removed.
    (root / "shards" / "part-000001.tar.tmp").write_bytes(b"partial")
    done = writer(root).completed(range(4))
    assert sorted(done) == [0, 2, 3] and not list(root.rglob("*.tmp"))
    assert writer(root).completed(range(4), accept=lambda shard_id, entry: entry["plan_end"] != 3).keys() == {0, 3}
    # A set written in order resumes before the gap and drops what follows.
    assert [e["plan_end"] for e in writer(root).resume()] == [1]
    assert sorted(tars(root)) == ["part-000000.tar"]
    assert sorted(p.name for p in (root / ".state").iterdir()) == ["shard-000000.json"]


def test_checksum_or_size_decides_whether_a_shard_is_intact(tmp_path: Path) -> None:
    root = tmp_path / "set"
    with writer(root) as w:
        write_in_order(w, range(2))
    shard = root / "shards" / "part-000001.tar"
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF  # same size, other bytes
    shard.write_bytes(bytes(data))
    assert writer(root, checksum=False).entry(1) is not None  # size only: large shards are not rehashed
    assert writer(root, checksum=True).entry(1) is None
    shard.write_bytes(bytes(data[:1000]))
    assert writer(root, checksum=False).entry(1) is None
    (root / ".state" / "shard-000000.json").write_text("{not json")
    assert writer(root).entry(0) is None


def test_other_options_are_refused_derived_ones_are_not_compared(tmp_path: Path) -> None:
    w = writer(tmp_path / "set")
    assert w.check_options({"seed": 1}, what="parts") is None
    w.store_options({"seed": 1, "measured": 7})
    assert w.check_options({"seed": 1}, what="parts", derived=("measured",)) == {"seed": 1, "measured": 7}
    with pytest.raises(Refused, match=r"holds parts made with other options .*use a new --out folder"):
        w.check_options({"seed": 2}, what="parts", derived=("measured",))


def test_samples_not_rolled_over_are_a_bug_and_the_writer_pickles(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="not rolled over"), writer(tmp_path / "set") as w:
        w.add(samples(0)[0])
    w = pickle.loads(pickle.dumps(writer(tmp_path / "other")))  # worker processes write shards too
    w.write(5, samples(5), {"id": 5})
    assert w.entry(5) == json.loads((tmp_path / "other" / ".state" / "shard-000005.json").read_text())


def test_writer_options_are_validated_once_with_the_parameter_at_fault(tmp_path: Path) -> None:
    for bad, param in (({"workers": 0}, "workers"), ({"quality": 101}, "quality"), ({"limit": 0}, "limit"),
                       ({"device": "tpu"}, "device")):
        with pytest.raises(PixmixError) as info:
            WriterOptions(out=tmp_path, **bad)
        assert info.value.param == param and f"--{param}" in str(info.value)
    assert WriterOptions(out=tmp_path, device="cuda:1").device == "cuda:1"
