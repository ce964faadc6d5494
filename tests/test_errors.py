"""The one error base, its translation to flags, and the one owner of rank / world / device."""

from __future__ import annotations

import click
import pytest
import torch

from pixmix.cli.errors import translate, user_errors
from pixmix.utils.distributed import placement, resolve_device
from pixmix.utils.errors import PixmixError


def test_translation_names_the_flag() -> None:
    assert translate(PixmixError("shard_samples must be >= 1, got 0", param="shard_samples")) == \
        "--shard-samples must be >= 1, got 0"
    assert translate(PixmixError("must be >= 1", param="k")) == "--k: must be >= 1"
    assert translate(PixmixError("k must be >= 1", param="k"), {"k": "--rounds"}) == "--rounds must be >= 1"
    assert translate(PixmixError("/data/x.tar: not a shard\nmore")) == "/data/x.tar: not a shard"
    # a name inside a path is not the parameter
    assert translate(PixmixError("/x/out/last.pt: differs", param="out")) == "--out: /x/out/last.pt: differs"
    assert translate(PixmixError("--out /x: exists", param="out")) == "--out /x: exists"


def test_only_the_base_becomes_a_one_line_error() -> None:
    with pytest.raises(click.ClickException, match="^--seed must be"):
        with user_errors():
            raise PixmixError("seed must be >= 0", param="seed")
    with pytest.raises(KeyError):  # a library bug keeps its traceback
        with user_errors():
            raise KeyError("bug")
    with pytest.raises(ValueError):  # a plain ValueError is not a user error either
        with user_errors():
            raise ValueError("bug")
    assert issubclass(PixmixError, ValueError)


@pytest.mark.parametrize("env, expected", [
    ({}, (0, 1, 0)),
    ({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}, (3, 4, 1)),
    ({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "2"}, (5, 8, 2)),
    ({"RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "7", "SLURM_NTASKS": "9"}, (1, 2, 0)),  # torchrun first
])
def test_placement_reads_torchrun_then_slurm(env: dict, expected: tuple) -> None:
    p = placement(env=env)
    assert (p.rank, p.world_size, p.local_rank) == expected


def test_placement_explicit_values_win_and_are_checked() -> None:
    assert placement(2, 3, env={"RANK": "0", "WORLD_SIZE": "1"}).rank == 2
    with pytest.raises(PixmixError, match="rank 3 is not in 0..2") as err:
        placement(3, 3, env={})
    assert err.value.param == "rank"
    with pytest.raises(PixmixError, match="WORLD_SIZE='two'"):
        placement(env={"WORLD_SIZE": "two"})


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(PixmixError, match="not a device"):
        resolve_device("gpu0")
    if torch.cuda.is_available():
        assert resolve_device("auto", local_rank=0) == torch.device("cuda", 0)
        assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
    else:
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(PixmixError, match="CUDA is not available") as err:
            resolve_device("cuda")
        assert err.value.param == "device"
