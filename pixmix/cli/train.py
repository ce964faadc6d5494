"""``pixmix train``: the click command (registered on the ``pixmix`` group; heavy imports inside)."""

from __future__ import annotations

from pathlib import Path

import click

from pixmix.cli.errors import user_errors

PRESET_NAMES = ("cifar", "cifar-baseline", "imagenet", "imagenet-baseline", "smoke", "smoke-baseline", "small",
                "small-baseline", "places365", "places365-baseline")
_DIR = click.Path(exists=True, file_okay=False, path_type=Path)


class SetLocation(click.ParamType):
    """A shard or mixing set: an existing local folder, or a URL (http(s)://, s3://, gs://, pipe:CMD, file://, or
    a brace pattern of shards); other schemes are refused in one line."""

    name = "folder|url"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> str | Path:
        from pixmix.data.remote import has_braces, location
        from pixmix.utils.errors import PixmixError

        text = str(value)
        try:
            loc = location(text)
        except PixmixError as exc:
            self.fail(str(exc), param, ctx)
        if loc.is_local and not has_braces(loc):
            return _DIR.convert(loc.path, param, ctx)
        return text


_SET = SetLocation()


class MixingSetLocation(SetLocation):
    """A mixing set: a :class:`SetLocation`, or Outlier Exposure's ``300K_random_images.npy`` (a local file,
    read by :class:`pixmix.data.readers.RandomImages`)."""

    name = "folder|url|file.npy"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> str | Path:
        if str(value).endswith(".npy"):
            return click.Path(exists=True, dir_okay=False, path_type=Path).convert(str(value), param, ctx)
        return super().convert(value, param, ctx)


# The presets' values of the tunable options, for --help only (torch stays unimported here); a test checks
# them against pixmix.train.trainer.PRESETS. The -baseline presets share their base's values.
PRESET_DEFAULTS: dict[str, dict[str, object]] = {
    "arch": {"cifar": "wrn40_4", "imagenet": "resnet50", "smoke": "smoke", "small": "wrn16_4",
             "places365": "resnet18"},
    "epochs": {"cifar": 100, "imagenet": 90, "smoke": 2, "small": 12, "places365": 10},
    "batch_size": {"cifar": 128, "imagenet": 256, "smoke": 32, "small": 64, "places365": 256},
    "lr": {"cifar": 0.1, "imagenet": 0.01, "smoke": 0.05, "small": 0.05, "places365": 0.01},
    "weight_decay": {"cifar": 0.0005, "imagenet": 0.0005, "smoke": 0.0005, "small": 0.0005, "places365": 0.0001},
    "workers": {"cifar": 4, "imagenet": 8, "smoke": 0, "small": 2, "places365": 8},
    "seed": {"cifar": 0, "imagenet": 0, "smoke": 0, "small": 0, "places365": 0},
    "keep_every": {"cifar": 10, "imagenet": 10, "smoke": 1, "small": 1, "places365": 1},
}


def _preset_default(name: str) -> str:
    """E.g. "Default: the preset's (cifar 0.1, imagenet 0.01, smoke 0.05)."."""
    values = ", ".join(f"{preset} {value}" for preset, value in PRESET_DEFAULTS[name].items())
    return f"Default: the preset's ({values})."


def _list_archs(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """``--list-archs``: print the model names ``--arch`` takes, by source, and exit."""
    if not value or ctx.resilient_parsing:
        return
    from pixmix.models import arch_choices

    choices = arch_choices()
    for source, names in choices.items():
        click.echo(f"{source}: {' '.join(names)}")
    if "timm" not in choices:
        click.echo("timm: not installed (pip install 'pixmix-data[timm]' adds timm:NAME models)")
    ctx.exit(0)


@click.command()
@click.option("--preset", type=click.Choice(PRESET_NAMES), required=True,
              help="The recipe: cifar (WRN-40-4), imagenet (ResNet-50), smoke (tiny CNN), small (WRN-16-4 at 32 px, "
                   "CPU-friendly), places365 (ResNet-18 fine-tuned from --pretrained Places365 weights); -baseline: "
                   "no PixMix.")
@click.option("--shards", type=_SET, required=True,
              help="Training shard set (`mixset shard`, or WebDataset tars): a folder or a URL (http(s), s3, gs, "
                   "pipe:).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run folder: checkpoints/ and log.jsonl; an existing run there is resumed.")
@click.option("--mixset", type=MixingSetLocation(), default=None,
              help="Mixing set (`mixset build`) for online PixMix on plain shards: a folder or a URL, or Outlier "
                   "Exposure's 300K_random_images.npy.")
@click.option("--val-shards", type=_SET, default=None,
              help="Shard set for the validation error after each epoch: a folder or a URL.")
@click.option("--arch", default=None,
              help="Network: the project's (wrn40_4, wrn16_4, resnet50, smoke), any torchvision classification model "
                   f"(resnet18, ...) or timm:NAME (timm installed); see --list-archs. {_preset_default('arch')}")
@click.option("--list-archs", is_flag=True, expose_value=False, is_eager=True, callback=_list_archs,
              help="List the names --arch takes and exit.")
@click.option("--epochs", type=click.IntRange(1), default=None, help=_preset_default("epochs"))
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help=f"Global batch (all ranks together). {_preset_default('batch_size')}")
@click.option("--lr", type=float, default=None,
              help=f"Base learning rate (cosine to 0, stepped per iteration). {_preset_default('lr')}")
@click.option("--weight-decay", type=float, default=None, help=f"SGD weight decay. {_preset_default('weight_decay')}")
@click.option("--workers", type=click.IntRange(0), default=None,
              help=f"Loader worker processes per rank (each with its share of the usable CPUs' threads). "
                   f"{_preset_default('workers')}")
@click.option("--seed", type=click.IntRange(0), default=None,
              help=f"Seeds the weights, the shuffle and online PixMix. {_preset_default('seed')}")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="auto: cuda:LOCAL_RANK when CUDA is available, else cpu.")
@click.option("--amp/--no-amp", default=None, help="Mixed precision (bf16 autocast) on CUDA; always off on the CPU.")
@click.option("--pretrained", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Weights to start from (a state dict, a pixmix checkpoint or a training checkpoint's state_dict, "
                   "e.g. CSAILVision's resnet18_places365.pth.tar), loaded weights-only; a head with another class "
                   "count is replaced. Expected by the imagenet and places365 presets.")
@click.option("--keep-every", type=click.IntRange(0), default=None,
              help="Keep checkpoints/epoch-NNN.pt every N epochs (and the last); 0: only last.pt. "
                   f"{_preset_default('keep_every')}")
@click.option("--checkpoint-every", type=click.IntRange(0), default=None,
              help="Also replace checkpoints/last.pt every N optimiser steps within an epoch (atomically; it holds "
                   "the loader's position, so a resume continues at the next batch). Default: 0 (at epoch ends only).")
@click.option("--partners", type=click.Choice(["both", "augmented", "mixing"]), default=None,
              help="Online PixMix's mixing partners: both (PixMix), augmented inputs only (no --mixset needed), or "
                   "the mixing set only (the paper's Table 5). Default: both.")
@click.option("--k", type=click.IntRange(1), default=None, help="Online PixMix rounds (default: the recipe's, 4).")
@click.option("--beta", type=float, default=None, help="Online PixMix beta (default: the recipe's).")
@click.option("--severity", type=float, default=None, help="Online PixMix op severity (default: the recipe's).")
@click.option("--sync-bn/--no-sync-bn", default=None,
              help="Synchronise BatchNorm statistics across GPUs under DDP (default: off, as each GPU's own).")
@click.option("--cutmix", type=click.FloatRange(0, 1), default=None,
              help="CutMix probability per batch (lam ~ Beta(1, 1), mixed loss; the paper's Table 6 and its "
                   "reference use 0.5), on PixMix or baseline inputs. Default: 0 (off).")
@click.option("--iterative-fvis-every", type=click.IntRange(0), default=None,
              help="Iterative PixMix (the paper's Table 5): every N optimiser steps render feature visualisations of "
                   "the model being trained into a rolling pool of mixing pictures. Default: 0 (off).")
@click.option("--iterative-fvis-pool", type=click.IntRange(1), default=None,
              help="Pictures the Iterative pool holds (the oldest are replaced). Default: 256.")
@click.option("--iterative-fvis-steps", type=click.IntRange(1), default=None,
              help="Optimisation steps per Iterative render. Default: 64.")
@click.option("--iterative-fvis-units", type=click.IntRange(1), default=None,
              help="Units (channels of the first conv layers) rendered per refresh, over all ranks. Default: 16.")
@click.option("--iterative-fvis-start-epoch", type=click.IntRange(0), default=None,
              help="First epoch (from 0) mixed with the pool; earlier ones use --mixset. Default: 0.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep remote shards in this folder (bounded by --cache-bytes); default: stream, never store.")
@click.option("--cache-bytes", type=click.IntRange(1), default=None, help="Size bound of --cache-dir in bytes.")
@click.option("--quiet", is_flag=True, help="No progress bar or per-epoch lines (the final summary still prints).")
def train(preset: str, shards: Path, out: Path, mixset: Path | None, val_shards: Path | None, epochs: int | None,
          batch_size: int | None, lr: float | None, weight_decay: float | None, workers: int | None,
          seed: int | None, device: str | None, amp: bool | None, pretrained: str | None, keep_every: int | None,
          partners: str | None, k: int | None, beta: float | None, severity: float | None, sync_bn: bool | None,
          quiet: bool, arch: str | None = None, cutmix: float | None = None,
          cache_dir: Path | None = None, cache_bytes: int | None = None, checkpoint_every: int | None = None,
          **iterative: int | None) -> None:
    """Train (or resume) a PixMix or baseline model on a shard set; run under torchrun (or srun) for DDP.

    Checkpoints go to OUT/checkpoints/last.pt (and epoch-NNN.pt), one JSON line per epoch to OUT/log.jsonl.
    """
    from pixmix.train.trainer import preset_config
    from pixmix.train.trainer import train as run_training

    lines: list[str] = []
    # Only the user's mistakes (PixmixError) become one-line errors: anything else is a bug, with its traceback.
    with user_errors():
        _remote_options(cache_dir, cache_bytes)
        config = preset_config(preset, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                               workers=workers, seed=seed, device=device, amp=amp, pretrained=pretrained,
                               keep_every=keep_every, partners=partners, k=k, beta=beta, severity=severity,
                               sync_bn=sync_bn, arch=arch, cutmix=cutmix, checkpoint_every=checkpoint_every,
                               **iterative)
        run_training(config, shards, out, mixset=mixset, val_shards=val_shards,
                     log=lines.append if quiet else click.echo, progress=not quiet)
    if quiet and lines:
        click.echo(lines[-1])  # the final summary line


def _remote_options(cache_dir: Path | None, cache_bytes: int | None) -> None:
    """Remote sets read by this process (and its loader workers) use this cache folder, when given."""
    if cache_dir is None and cache_bytes is None:
        return
    from pixmix.data.remote import RemoteOptions, set_default_options

    set_default_options(RemoteOptions(cache_dir=None if cache_dir is None else str(cache_dir),
                                      cache_bytes=cache_bytes or 0))


if __name__ == "__main__":  # `python -m pixmix.cli.train ...`, before the command is on the `pixmix` group
    from pixmix.utils.runtime import tune_cpu_allocator

    tune_cpu_allocator()
    train()
