"""Models by name (issue 13): torchvision and timm archs in build_model, TrainConfig and checkpoints; pretrained
state dicts (CSAILVision's Places365 format, head replacement); the small and places365 presets; train -> eval
with a torchvision arch."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from test_train import Data
from tiny_datasets import write_cifar10, write_cifar10_c

from mixset.shard.sharder import ShardConfig, shard
from pixmix.cli import main as pixmix_main
from pixmix.cli.train import PRESET_DEFAULTS
from pixmix.data.readers import CIFAR
from pixmix.models import (
    arch_choices,
    arch_source,
    build_model,
    classifier_prefix,
    count_parameters,
    load_pretrained,
    model_from_checkpoint,
    save_checkpoint,
)
from pixmix.train.trainer import PRESETS, TrainError, preset_config, train
from pixmix.utils.errors import PixmixError

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")


def quiet(_: str) -> None:
    pass


# --- names ---------------------------------------------------------------------------------------


def test_torchvision_names_build_the_torchvision_network() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", 7)
    reference = torchvision.models.resnet18(num_classes=7)  # independent: torchvision's own builder
    assert type(model) is type(reference)
    assert count_parameters(model) == count_parameters(reference) == 11_180_103
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)  # 32 px inputs work
    assert arch_source("resnet18") == "torchvision" and arch_source("wrn40_4") == "own"
    assert set(arch_choices()["torchvision"]) == set(torchvision.models.list_models(module=torchvision.models))
    # GoogLeNet without auxiliary heads: its training forward returns plain logits.
    googlenet = build_model("googlenet", 5).train()
    assert googlenet(torch.zeros(2, 3, 64, 64)).shape == (2, 5)


def test_wrn16_4_is_a_depth_16_wide_resnet() -> None:
    model = build_model("wrn16_4", 10, dropout=0.0)
    # Independent count: conv 3x3 3->16, then 2 blocks per group at widths 64, 128, 256 (1x1 projections where
    # the width changes), BatchNorms (2 parameters per channel) and the 256->10 head.
    def block(cin: int, cout: int) -> int:
        return 2 * cin + 9 * cin * cout + 2 * cout + 9 * cout * cout + (cin * cout if cin != cout else 0)
    expected = 27 * 16 + sum(block(a, b) + block(b, b) for a, b in ((16, 64), (64, 128), (128, 256)))
    expected += 2 * 256 + 256 * 10 + 10
    assert count_parameters(model) == expected == 2_748_890


@pytest.mark.parametrize("name", ["resnt18", "no-such-net", ""])
def test_bad_names_are_one_line_with_how_to_list(name: str) -> None:
    with pytest.raises(PixmixError) as info:
        build_model(name, 10)
    message = str(info.value)
    assert info.value.param == "arch" and "\n" not in message and "--list-archs" in message
    if name == "resnt18":
        assert "did you mean resnet18?" in message
    with pytest.raises(TrainError) as info:
        preset_config("smoke", arch=name)
    assert info.value.param == "arch" and "--list-archs" in str(info.value)


def test_cli_lists_archs_and_refuses_bad_ones(tmp_path: Path) -> None:
    listing = CliRunner().invoke(pixmix_main, ["train", "--list-archs"])
    assert listing.exit_code == 0
    lines = dict(line.split(": ", 1) for line in listing.output.splitlines())
    assert lines["own"].split() == ["wrn40_4", "wrn16_4", "resnet50", "smoke"]
    assert "resnet18" in lines["torchvision"].split() and "vit_b_16" in lines["torchvision"].split()
    bad = CliRunner().invoke(pixmix_main, ["train", "--preset", "smoke", "--shards", str(tmp_path), "--out",
                                           str(tmp_path / "o"), "--arch", "resnt18"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output
    assert bad.output.strip().splitlines()[-1].startswith("Error: --arch: unknown model 'resnt18'")


class _FakeTimmNet(torch.nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.mean((2, 3)))


@pytest.fixture
def fake_timm(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """A stand-in ``timm`` module (the real one is an optional extra): records its create_model calls."""
    calls: list[tuple] = []
    module = types.ModuleType("timm")
    module.is_model = lambda name: name == "tinynet"  # type: ignore[attr-defined]
    module.list_models = lambda: ["tinynet"]  # type: ignore[attr-defined]

    def create_model(name: str, pretrained: bool, num_classes: int) -> torch.nn.Module:
        calls.append((name, pretrained, num_classes))
        return _FakeTimmNet(num_classes)

    module.create_model = create_model  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "timm", module)
    return calls


def test_timm_names_when_timm_is_installed(fake_timm: list[tuple], tmp_path: Path) -> None:
    assert arch_source("timm:tinynet") == "timm" and arch_source("tinynet") == "timm"
    assert arch_source("resnet18") == "torchvision"  # torchvision's name wins over a plain timm one
    model = build_model("timm:tinynet", 4)
    assert fake_timm == [("tinynet", False, 4)] and model(torch.zeros(1, 3, 8, 8)).shape == (1, 4)
    assert arch_choices()["timm"] == ["timm:tinynet"]
    assert preset_config("smoke", arch="timm:tinynet").arch == "timm:tinynet"
    with pytest.raises(PixmixError, match="timm has no model 'other'"):
        arch_source("timm:other")
    # A checkpoint records the arch: evaluation rebuilds the timm model.
    path = tmp_path / "timm.pt"
    save_checkpoint(path, {"model": {"arch": "timm:tinynet", "num_classes": 4, "kwargs": {}},
                           "model_state": model.state_dict()})
    rebuilt, _ = model_from_checkpoint(path)
    assert torch.equal(rebuilt.head.weight, model.head.weight)


def test_timm_missing_is_one_line_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError
    with pytest.raises(PixmixError) as info:
        build_model("timm:resnet18", 10)
    assert str(info.value) == ("--arch timm:resnet18 needs timm, which is not installed: "
                               "pip install 'pixmix-data[timm]'")
    assert "timm" not in arch_choices()


# --- pretrained weights ------------------------------------------------------------------------------


def csail_checkpoint(path: Path, classes: int = 365, seed: int = 1) -> dict[str, torch.Tensor]:
    """A file in the layout of CSAILVision's ``resnet18_places365.pth.tar``: a training checkpoint whose
    ``state_dict`` has DataParallel's ``module.`` prefixes, in torch's legacy (non-zip) format."""
    torch.manual_seed(seed)
    state = torchvision.models.resnet18(num_classes=classes).state_dict()
    payload = {"epoch": 90, "arch": "resnet18", "best_prec1": 54.74,
               "state_dict": {f"module.{k}": v for k, v in state.items()}}
    torch.save(payload, path, _use_new_zipfile_serialization=False)
    return state


def test_places365_checkpoint_loads_into_the_places365_preset(tmp_path: Path) -> None:
    state = csail_checkpoint(tmp_path / "resnet18_places365.pth.tar")
    config = PRESETS["places365"]
    model = build_model(config.arch, 365)
    assert load_pretrained(model, tmp_path / "resnet18_places365.pth.tar") is None  # same head: kept
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_a_different_class_count_replaces_only_the_head(tmp_path: Path) -> None:
    state = csail_checkpoint(tmp_path / "w.pth.tar")
    torch.manual_seed(5)
    model = build_model("resnet18", 10)
    fresh_fc = model.fc.weight.detach().clone()
    note = load_pretrained(model, tmp_path / "w.pth.tar")
    assert note is not None and "\n" not in note
    assert "its head fc.* has 365 classes, the model 10: replaced by a freshly initialised head" in note
    assert torch.equal(model.fc.weight, fresh_fc)
    assert torch.equal(model.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    # A mismatch outside the head is an error, not a silent skip.
    wrong = dict(state)
    wrong["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(wrong, tmp_path / "wrong.pt")
    with pytest.raises(PixmixError, match="parameter shapes differ"):
        load_pretrained(build_model("resnet18", 365), tmp_path / "wrong.pt")


def test_classifier_prefix_finds_each_family_head() -> None:
    assert classifier_prefix(build_model("resnet18", 3)) == "fc."
    assert classifier_prefix(build_model("mobilenet_v3_small", 3)) == "classifier.3."
    assert classifier_prefix(build_model("squeezenet1_1", 3)) == "classifier.1."  # a 1x1 conv head
    assert classifier_prefix(build_model("wrn16_4", 3)) == "fc."


# --- presets -------------------------------------------------------------------------------------------


def test_small_and_places365_presets() -> None:
    small, places = PRESETS["small"], PRESETS["places365"]
    assert (small.arch, small.recipe, small.pixmix, small.epochs, small.batch_size, small.lr) == (
        "wrn16_4", "cifar", True, 12, 64, 0.05)
    assert (places.arch, places.recipe, places.epochs, places.lr, places.weight_decay, places.batch_size) == (
        "resnet18", "imagenet", 10, 0.01, 1e-4, 256)
    assert not PRESETS["small-baseline"].pixmix and not PRESETS["places365-baseline"].pixmix
    for name, values in PRESET_DEFAULTS.items():  # what --help shows is the presets' own values
        for preset, value in values.items():
            assert getattr(PRESETS[preset], name) == value == getattr(PRESETS[f"{preset}-baseline"], name)
    help_text = " ".join(CliRunner().invoke(pixmix_main, ["train", "--help"], terminal_width=200).output.split())
    assert "small wrn16_4, places365 resnet18" in help_text and "small 12, places365 10" in help_text


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Data:
    return Data(tmp_path_factory.mktemp("models-data"))


def test_small_preset_learns_a_separable_problem(data: Data, tmp_path: Path) -> None:
    # Ten flat colours plus noise (96 training images, 40 test): chance is 90% error. 12 steps.
    few = tmp_path / "few"
    shard(ShardConfig(out=few, dataset="cifar10", data_dir=data.plain.parent / "cifar", limit=96), log=quiet,
          progress=False)
    config = preset_config("small-baseline", epochs=2, batch_size=16, workers=0, device="cpu")
    summary = train(config, few, tmp_path / "run", val_shards=data.test, log=quiet, progress=False)
    assert summary.final is not None and summary.final["val_error"] <= 0.3


# --- train -> eval with a torchvision arch ---------------------------------------------------------------


@pytest.mark.slow
def test_train_resnet18_then_eval_rebuilds_it(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_cifar10(root, per_batch=8)  # 40 training, 8 test images
    write_cifar10_c(root, per_severity=1)
    shards = tmp_path / "shards"
    shard(ShardConfig(out=shards, dataset="cifar10", data_dir=root), log=quiet, progress=False)
    pretrained = tmp_path / "places.pth.tar"
    csail_checkpoint(pretrained)
    result = CliRunner().invoke(pixmix_main, [
        "train", "--preset", "smoke-baseline", "--arch", "resnet18", "--pretrained", str(pretrained), "--shards",
        str(shards), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "20", "--device", "cpu",
        "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "its head fc.* has 365 classes, the model 10: replaced" in result.output
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    model, state = model_from_checkpoint(checkpoint)
    assert state["model"]["arch"] == "resnet18" and isinstance(model, torchvision.models.ResNet)
    report = tmp_path / "report"
    result = CliRunner().invoke(pixmix_main, [
        "eval", "--checkpoint", str(checkpoint), "--suite", "cifar10", "--data", str(root), "--out", str(report),
        "--device", "cpu", "--pgd-samples", "1", "--ood-samples", "4", "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    # Independent: the rebuilt network on the test images, normalised with the cifar recipe.
    test = CIFAR(root, "cifar10", train=False)
    labels = test.labels
    x = (torch.from_numpy(test.images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        predicted = model(x).argmax(1).numpy()
    clean = json.loads((report / "results.json").read_text())["summary"]["clean_error"]
    assert clean == pytest.approx(100 * float(np.mean(predicted != labels)))
