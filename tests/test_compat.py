"""Release 0.1 import paths keep working for one release: same objects, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

OLD_TO_NEW = {
    "pixmix.stream": ("pixmix.data.loader", "ShardLoader"),
    "pixmix.mixset_reader": ("pixmix.data.shards.mixing_set", "MixingShards"),
    "pixmix.metrics": ("pixmix.evaluate.metrics", "mce"),
    "pixmix.dataset": ("pixmix.data.wrappers", "PixMixDataset"),
    "pixmix.shardset": ("pixmix.data.shards.shard_set", "ShardSet"),
    "mixset.fvis": ("mixset.sources.fvis", "render_units"),
    "mixset.procedural": ("mixset.sources.procedural", "generate_fractal"),
}


@pytest.mark.parametrize("old", sorted(OLD_TO_NEW))
def test_old_import_path_gives_the_same_objects_and_warns(old: str) -> None:
    new, name = OLD_TO_NEW[old]
    code = (f"import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            f"try:\n    import {old}\nexcept DeprecationWarning as w:\n    print('warned', w)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("warned") and new in out
    with pytest.warns(DeprecationWarning):
        sys.modules.pop(old, None)
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(importlib.import_module(new), name)


def test_moved_packages_keep_their_public_names() -> None:
    from pixmix.augment import PixMix
    from pixmix.evaluate import evaluate
    from pixmix.train import TrainConfig, train

    assert PixMix.__module__ == "pixmix.augment.pixmix"
    assert evaluate.__module__ == "pixmix.evaluate.suites"
    assert train.__module__ == TrainConfig.__module__ == "pixmix.train.trainer"
    import pixmix

    assert {"PixMix", "ShardLoader", "MixingShards", "PixmixError"} <= set(pixmix.__all__) <= set(dir(pixmix))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = pixmix.nope
