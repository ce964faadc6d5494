"""Mid-epoch and elastic resume (issue 14): the loader's epoch positions, and ``pixmix train`` killed mid-epoch."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_stream import make_mixset, make_set
from webdataset.filters import _shuffle

from pixmix.data.loader import EpochPosition, ShardLoader, ShardStream, shuffle_order, worker_turns
from pixmix.models import load_checkpoint, save_checkpoint
from pixmix.train.trainer import KILL_AFTER_STEP
from pixmix.utils.errors import PixmixError

# torchvision 0.29 deprecates its image decoders (in favour of TorchCodec) on every call.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning",
                                        "ignore:This DataLoader will create:UserWarning")
COUNTS = (7, 13, 5, 20, 30, 11)  # 86 samples in uneven shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_set(tmp_path_factory.mktemp("resume-set"), counts=COUNTS)


def loader(folder: Path, *, world: int = 1, rank: int = 0, batch: int = 4, workers: int = 0, seed: int = 3
           ) -> ShardLoader:
    # A small shuffle buffer, so that the buffer's order really matters at this size.
    return ShardLoader(folder, batch_size=batch, seed=seed, rank=rank, world_size=world, num_workers=workers,
                       recipe="cifar", shuffle_buffer=8)


def epoch_keys(ld: ShardLoader, epoch: int, position: EpochPosition | None = None) -> list[list[str]]:
    ld.set_epoch(epoch, position)
    return [batch.keys for batch in ld]


# --- pure pieces ---------------------------------------------------------------------------------


def test_shuffle_order_is_the_order_of_webdatasets_buffer_on_real_items() -> None:
    items = [f"sample-{i}" for i in range(50)]
    for bufsize in (1, 7, 50, 1000):
        shuffled = list(_shuffle(iter(items), bufsize=bufsize, initial=bufsize, rng=random.Random(11)))
        assert [items[i] for i in shuffle_order(50, bufsize, 11)] == shuffled


class _Turns(torch.utils.data.IterableDataset):
    """Worker w yields (w, 0), (w, 1), ... BATCHES[w] items (after a delay that reverses the workers' timing)."""

    BATCHES = (2, 3, 2, 3)

    def __iter__(self):
        import time

        w = torch.utils.data.get_worker_info().id
        for i in range(self.BATCHES[w]):
            time.sleep(0.01 * (3 - w))
            yield (w, i)


def test_worker_turns_follow_the_dataloaders_order() -> None:
    # By hand: rounds 0 and 1 take every worker; then workers 0 and 2 have run out.
    assert worker_turns([2, 3, 2, 3], 5) == ([2, 1, 1, 1], 1)
    assert worker_turns([2, 3, 2, 3], 9) == ([2, 3, 2, 2], 3)
    assert worker_turns([0, 1], 1) == ([0, 1], 0)
    with pytest.raises(PixmixError):
        worker_turns([1, 1], 3)
    # Against a real DataLoader with 4 workers of uneven lengths and reversed timing.
    got = list(torch.utils.data.DataLoader(_Turns(), batch_size=None, num_workers=4))
    order = [(int(w), int(i)) for w, i in got]
    for step in range(len(order) + 1):
        taken, nxt = worker_turns(_Turns.BATCHES, step)
        assert taken == [sum(1 for w, _ in order[:step] if w == k) for k in range(4)]
        if step < len(order):
            assert order[step][0] == nxt


def test_epoch_position_survives_a_weights_only_checkpoint(tmp_path: Path) -> None:
    consumed = np.random.default_rng(0).random(83) < 0.4
    position = EpochPosition(epoch=2, step=5, world_size=3, global_batch=12, workers=2, base_step=3,
                             base_consumed=consumed)
    save_checkpoint(tmp_path / "c.pt", {"position": position.to_state()})
    back = EpochPosition.from_state(load_checkpoint(tmp_path / "c.pt")["position"])
    assert back.base_consumed is not None and np.array_equal(back.base_consumed, consumed)
    fields = (back.epoch, back.step, back.world_size, back.global_batch, back.workers, back.base_step)
    assert fields == (2, 5, 3, 12, 2, 3)


# --- the loader ----------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_resuming_on_the_same_ranks_continues_with_the_same_batches(shards: Path, workers: int) -> None:
    ld = loader(shards, workers=workers)
    full = epoch_keys(ld, 1)
    assert len(full) == 86 // 4
    for step in (1, 3, 10, len(full) - 1):
        position = EpochPosition.from_state(ld.position(step).to_state())
        resumed = loader(shards, workers=workers)
        rest = epoch_keys(resumed, 1, position)
        assert len(resumed) == len(full) - step and rest == full[step:], step


def test_skipped_samples_are_not_decoded(shards: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full = epoch_keys(loader(shards), 0)
    decoded: list[int] = []
    original = ShardStream._decode
    monkeypatch.setattr(ShardStream, "_decode", lambda self, raw: decoded.append(1) or original(self, raw))
    position = loader(shards).position(15)
    assert epoch_keys(loader(shards), 0, position) == full[15:]
    assert len(decoded) == (len(full) - 15) * 4


def test_elastic_resume_splits_the_rest_of_the_epoch_over_the_new_ranks(shards: Path) -> None:
    """2 ranks x 6 for 3 steps, then 3 ranks x 4 for 2 steps, then 2 ranks x 6 (another number of workers, too): every
    sample of the epoch once."""
    epoch = 2
    uninterrupted = {k for r in range(2) for b in epoch_keys(loader(shards, world=2, rank=r, batch=6), epoch)
                     for k in b}
    assert len(uninterrupted) == (86 // 12) * 12
    seen: list[str] = []
    old = [loader(shards, world=2, rank=r, batch=6, workers=2) for r in range(2)]
    for ld in old:
        seen += [k for b in epoch_keys(ld, epoch)[:3] for k in b]
    position = EpochPosition.from_state(old[0].position(3).to_state())
    new = [loader(shards, world=3, rank=r, batch=4, workers=2) for r in range(3)]
    batches = [epoch_keys(ld, epoch, position) for ld in new]
    assert [len(b) for b in batches] == [len(ld) for ld in new] == [4, 4, 4]  # equal counts: DDP cannot hang
    for rank_batches in batches:
        seen += [k for b in rank_batches[:2] for k in b]
    # The re-split plan resumes exactly on the same 3 ranks, and elastically back on 2.
    again = EpochPosition.from_state(new[1].position(5).to_state())
    assert epoch_keys(loader(shards, world=3, rank=1, batch=4, workers=2), epoch, again) == batches[1][2:]
    back = [epoch_keys(loader(shards, world=2, rank=r, batch=6), epoch, again) for r in range(2)]
    assert [len(b) for b in back] == [2, 2]
    seen += [k for rank_batches in back for b in rank_batches for k in b]
    assert len(seen) == len(set(seen)) and set(seen) == uninterrupted


def test_a_resumed_epoch_keeps_its_global_batch(shards: Path) -> None:
    position = loader(shards, world=2, batch=6).position(2)
    with pytest.raises(PixmixError, match="global batch was 12, now 8") as info:
        loader(shards, world=2, batch=4).set_epoch(0, position)
    assert info.value.param == "batch_size"
    with pytest.raises(PixmixError, match="epoch 0, not 1"):
        loader(shards, world=2, batch=6).set_epoch(1, position)


# --- pixmix train killed mid-epoch ---------------------------------------------------------------

TIMING = ("seconds", "samples_per_s")
SCRIPT = Path(__file__).with_name("elastic_script.py")


@pytest.fixture(scope="module")
def mixing(tmp_path_factory) -> Path:
    return make_mixset(tmp_path_factory.mktemp("resume-mixset"))


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent), **extra}


def _run(cmd: list[str], kill_after: int | None = None) -> subprocess.CompletedProcess:
    env = _env(**({KILL_AFTER_STEP: str(kill_after)} if kill_after is not None else {}))
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)


def _options(shards: Path, mixing: Path, out: Path, *extra: str) -> list[str]:
    return ["--preset", "smoke", "--shards", str(shards), "--mixset", str(mixing), "--out", str(out), "--epochs", "2",
            "--batch-size", "8", "--device", "cpu", "--quiet", *extra]


def _log(out: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (out / "log.jsonl").read_text().splitlines()]


def _assert_same_run(a: Path, b: Path) -> None:
    """The final checkpoints hold equal weights, optimiser and schedule, and the logs equal records."""
    sa, sb = (load_checkpoint(out / "checkpoints" / "last.pt") for out in (a, b))
    assert sa["model_state"].keys() == sb["model_state"].keys()
    for key, value in sa["model_state"].items():
        assert torch.equal(value, sb["model_state"][key]), key
    for pid, slot in sa["optimizer_state"]["state"].items():
        assert torch.equal(slot["momentum_buffer"], sb["optimizer_state"]["state"][pid]["momentum_buffer"])
    assert sa["scheduler_state"] == sb["scheduler_state"] and sa["step"] == sb["step"]
    assert "mid_epoch" not in sb and _log(a) == _log(b)


@pytest.mark.slow
def test_pixmix_train_killed_mid_epoch_resumes_to_the_same_weights(shards: Path, mixing: Path,
                                                                    tmp_path: Path) -> None:
    """86 samples, batch 8: 10 steps per epoch; killed (SIGKILL) at steps 4 and 12, resumed each time."""
    pixmix = [str(Path(sys.executable).with_name("pixmix")), "train"]
    common = ("--workers", "2")  # two DataLoader workers: their turns are part of the order
    reference = _run(pixmix + _options(shards, mixing, tmp_path / "a", *common))
    assert reference.returncode == 0, reference.stderr[-3000:]
    out = tmp_path / "b"
    cmd = pixmix + _options(shards, mixing, out, *common, "--checkpoint-every", "4")
    for kill, epoch, step in ((4, 0, 4), (12, 1, 2)):
        killed = _run(cmd, kill_after=kill)
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
        state = load_checkpoint(out / "checkpoints" / "last.pt")
        assert (state["epoch"], state["step"], state["mid_epoch"]["position"]["step"]) == (epoch, kill, step)
        assert len(_log(out)) == epoch  # no line for the epoch in progress
    finished = _run(cmd)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert [r["step"] for r in _log(out)] == [10, 20]
    _assert_same_run(tmp_path / "a", out)


def _keys(folder: Path, world: int, rank: int = 0) -> list[dict]:
    path = folder / f"keys-w{world}-r{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.slow
def test_two_ranks_with_dropout_killed_and_resumed_on_two_replay_no_batch_and_end_bit_identical(
        shards: Path, mixing: Path, tmp_path: Path) -> None:
    """DDP (gloo), 2 ranks x 4: dropout draws from each rank's torch RNG, whose states are in the checkpoint; each
    rank's batches after the resume are the uninterrupted run's from the next one on (skipped, not replayed), and
    the per-rank running sums continue, so the log is the same too."""
    runs = {}
    for name, extra, kill in (("a", (), None), ("b", ("--checkpoint-every", "3"), 6)):
        keys = tmp_path / f"keys-{name}"
        keys.mkdir()
        options = _options(shards, mixing, tmp_path / name, "--workers", "0", *extra)
        first = _torchrun(2, keys, options, kill_after=kill, dropout=True)
        if kill is not None:
            assert first.returncode != 0
            assert [len(_keys(keys, 2, r)) for r in range(2)] == [kill] * 2  # the batches trained before the kill
            first = _torchrun(2, keys, options, dropout=True)
        assert first.returncode == 0, first.stderr[-3000:]
        runs[name] = [_keys(keys, 2, r) for r in range(2)]
    assert runs["b"] == runs["a"] and [len(r) for r in runs["a"]] == [20, 20]  # each batch once, in the same order
    _assert_same_run(tmp_path / "a", tmp_path / "b")


def _torchrun(ranks: int, keys: Path, options: list[str], kill_after: int | None = None,
              dropout: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
           str(SCRIPT), str(keys), *(["--dropout"] if dropout else []), "--", *options]
    return _run(cmd, kill_after)


@pytest.mark.slow
def test_two_ranks_killed_mid_epoch_resume_on_three_with_every_sample_once(shards: Path, mixing: Path,
                                                                           tmp_path: Path) -> None:
    """Global batch 12 (2 x 6, then 3 x 4): 7 steps per epoch; the 2-rank job is killed 3 steps into epoch 2."""
    keys, out = tmp_path / "keys", tmp_path / "run"
    keys.mkdir()
    options = _options(shards, mixing, out, "--batch-size", "12", "--workers", "1", "--checkpoint-every", "5")
    killed = _torchrun(2, keys, options, kill_after=10)
    assert killed.returncode != 0 and load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 10
    resumed = _torchrun(3, keys, options)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    before = [_keys(keys, 2, r) for r in range(2)]
    after = [_keys(keys, 3, r) for r in range(3)]
    assert [len(b) for b in before] == [7 + 3] * 2 and [len(a) for a in after] == [7 - 3] * 3  # equal: no hang
    # The epoch's samples: its global order cut at 7 steps x 12 (the 2-sample remainder as in any epoch).
    reference = loader(shards, batch=12, seed=0)  # pixmix train's default seed
    reference.set_epoch(1)
    expected = [k for batch in reference for k in batch.keys]
    assert len(expected) == 84 and all(len(b["keys"]) == 6 for r in before for b in r)
    seen = [k for rank in before + after for b in rank if b["epoch"] == 1 for k in b["keys"]]
    assert sorted(seen) == sorted(expected)  # every sample of the epoch exactly once
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"], r["world_size"], r["samples"]) for r in records] == [(1, 7, 2, 84),
                                                                                        (2, 14, 3, 84)]
    assert records[1]["batches_per_rank"] == [7, 7, 7]


def test_checkpoint_every_is_validated_and_may_change_on_resume() -> None:
    from pixmix.train.checkpointing import config_differences
    from pixmix.train.errors import TrainError
    from pixmix.train.trainer import preset_config

    with pytest.raises(TrainError, match="--checkpoint-every must be an integer >= 0") as info:
        preset_config("smoke", checkpoint_every=-1)
    assert info.value.param == "checkpoint_every"
    a, b = preset_config("smoke").to_json(), preset_config("smoke", checkpoint_every=50).to_json()
    assert a["checkpoint_every"] == 0 and config_differences(a, b) == []
    assert config_differences(a, preset_config("smoke", batch_size=64).to_json()) == ["batch_size: 32 -> 64"]
