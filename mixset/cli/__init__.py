"""The ``mixset`` command line. Thin: heavy imports happen inside commands, so --help is instant."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from mixset import __version__
from pixmix.cli.errors import user_errors
from pixmix.utils.runtime import threads_limited, tune_cpu_allocator, usable_cpus

# Library parameters whose flag is not ``--`` + the name with dashes (see pixmix.cli.errors).
FLAGS = {"sources": "--source", "photo_format": "--format", "image_format": "--format",
         "fvis_checkpoints": "--fvis-checkpoint"}


_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_size(text: str) -> int:
    """A byte count from ``4096``, ``256MiB``, ``1 GiB``, ``1.5KiB`` or ``2MB``; ValueError otherwise."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"expected a size such as 268435456, 256MiB or 1GiB, got {text!r}")
    return int(float(match.group(1)) * _UNITS[unit])


def human_size(n: int) -> str:
    """``268435456`` -> ``256 MiB`` (exact binary units when they fit, else bytes)."""
    for unit, factor in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return f"{n} B"


class ByteSize(click.ParamType):
    """A click type for byte counts written like ``256MiB`` (see :func:`parse_size`); at least 1 byte."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            size = parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if size < 1:
            self.fail(f"must be at least 1 byte, got {value!r}", param, ctx)
        return size


@contextmanager
def _resumable() -> Iterator[None]:
    """Ctrl-C: one line and exit status 130; the shards written so far stay (a re-run resumes)."""
    try:
        yield
    except KeyboardInterrupt:
        click.echo("interrupted: the shards written so far are kept; re-run the same command to resume", err=True)
        raise SystemExit(130) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mixset")
def main() -> None:
    """Assemble PixMix mixing sets and pre-generate PixMix training shards."""
    # Before any command imports torch: keeps CPU tensor memory in the heap (see pixmix.utils.runtime).
    tune_cpu_allocator()


@main.command()
@click.option("--source", "sources", multiple=True,
              type=click.Choice(["fractals", "fvis", "deadleaves", "spectrum", "stylegan", "fractaldb", "natural"]),
              default=("fractals",), show_default=True, help="Mixing-set source to include (repeatable).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder (shards/, manifest.json, contact-sheet.png). Re-running resumes.")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most N items per source (quick runs).")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--image-size", type=click.IntRange(32, 4096), default=256, show_default=True,
              help="Shorter side of every stored image.")
@click.option("--shard-size", type=click.IntRange(1), default=1000, show_default=True, help="Samples per shard.")
@click.option("--format", "photo_format", type=click.Choice(["auto", "png", "jpg", "webp"]), default="auto",
              show_default=True, help="Encoding of every image of the set (one extension per set, as webdataset's "
              "to_tuple and HF datasets need): auto is png when --source fvis is included, jpg otherwise.")
@click.option("--quality", type=click.IntRange(1, 100), default=90, show_default=True)
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Processes producing images; capped at the usable CPUs unless --oversubscribe.")
@click.option("--oversubscribe", is_flag=True, help="Allow more --workers than usable CPUs (one thread each).")
@click.option("--manifests", "manifests", multiple=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder of your own collection manifests, added to the project's manifests/ (repeatable).")
@click.option("--no-default-manifests", is_flag=True,
              help="Read only the --manifests folders, not the project's manifests/.")
@click.option("--strict", is_flag=True, help="Fail when a collection is unreachable instead of reporting it.")
@click.option("--device", default="auto", show_default=True,
              help="Where FVis render and, on a GPU, the torch generators (spectrum, stylegan) run: auto (cuda when "
              "available), cpu, cuda[:N].")
@click.option("--fvis-models", default=None,
              help="Comma-separated models for FVis (default: all known early-layer models).")
@click.option("--fvis-steps", type=click.IntRange(1), default=512, show_default=True,
              help="Optimisation steps per FVis.")
@click.option("--fvis-size", type=click.IntRange(16, 1024), default=128, show_default=True,
              help="FVis render size (px).")
@click.option("--fvis-batch", type=click.IntRange(1), default=64, show_default=True, help="Units rendered together.")
@click.option("--fvis-weights", type=click.Choice(["default", "random"]), default="default", show_default=True,
              help="torchvision's pretrained weights (random-init fallback when unavailable), or random init.")
@click.option("--fvis-checkpoint", "fvis_checkpoints", multiple=True, metavar="MODEL=PATH",
              help="A local state_dict for MODEL (loaded with weights_only=True); repeatable.")
@click.option("--fvis-activation", type=click.Choice(["post-relu", "pre-relu"]), default="post-relu",
              show_default=True, help="AlexNet/VGG convs: optimise post-ReLU values (as Lucent does) or the raw conv.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def build(sources: tuple[str, ...], out: Path, limit: int | None, seed: int, image_size: int, shard_size: int,
          photo_format: str, quality: int, workers: int, oversubscribe: bool, manifests: tuple[Path, ...],
          no_default_manifests: bool, strict: bool, device: str, fvis_models: str | None, fvis_steps: int,
          fvis_size: int, fvis_batch: int, fvis_weights: str, fvis_checkpoints: tuple[str, ...], fvis_activation: str,
          quiet: bool) -> None:
    """Assemble a PixMix mixing set as WebDataset shards with a manifest and a contact sheet."""
    from mixset.build.builder import build as run_build
    from mixset.build.config import BuildConfig

    checkpoints = []
    for spec in fvis_checkpoints:
        model, sep, path = spec.partition("=")
        if not sep or not model or not path:
            raise click.BadParameter(f"expected MODEL=PATH, got {spec!r}", param_hint="--fvis-checkpoint")
        checkpoints.append((model, path))
    with user_errors(FLAGS):
        config = BuildConfig(out=out, sources=sources, seed=seed, limit=limit, image_size=image_size,
                             shard_size=shard_size, quality=quality, photo_format=photo_format, strict=strict,
                             **_manifest_folders(manifests, no_default_manifests), workers=workers,
                             oversubscribe=oversubscribe,
                             device=device,
                             fvis_models=tuple(fvis_models.split(",")) if fvis_models else None,
                             fvis_steps=fvis_steps, fvis_size=fvis_size, fvis_batch=fvis_batch,
                             fvis_weights=fvis_weights, fvis_checkpoints=tuple(checkpoints),
                             fvis_activation=fvis_activation)
        # This process's share too: processes x threads <= usable CPUs.
        with _resumable(), threads_limited(config.worker_plan()[1]):
            summary = run_build(config, log=lambda m: click.echo(m, err=True), progress=not quiet)
    click.echo(f"built {summary.samples} samples in {summary.shards} shard(s) at {out} ({summary.resumed_shards} "
               f"resumed, {summary.duplicates} duplicates removed, {summary.rejected} rejected)")
    for r in summary.reports.values():
        note = f": {r.error}" if r.error else ""
        click.echo(f"  {r.source}/{r.name} [{r.kind}] {r.status}: {r.samples} samples{note}")
    click.echo(f"manifest: {summary.manifest}\ncontact sheet: {summary.contact_sheet}")


def _manifest_folders(folders: tuple[Path, ...], no_defaults: bool) -> dict[str, Any]:
    """BuildConfig's manifest fields: ``--manifests`` folders add to manifests/, or replace it."""
    if not no_defaults:
        return {"extra_manifests": folders}
    if not folders:
        from mixset.build.config import BuildError

        raise BuildError("--no-default-manifests needs at least one --manifests DIR", param="no_default_manifests")
    return {"manifests": folders[0], "extra_manifests": folders[1:]}


def _shard_options(fn):
    """Options shared by every dataset of ``mixset shard``."""
    options = [
        click.option("--data-dir", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
                     help="The dataset's folder (see the command's help for its layout)."),
        click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
                     help="Output folder (shards/, manifest.json). Re-running resumes."),
        click.option("--pixmix", is_flag=True, help="Store PixMix views instead of the images."),
        click.option("--mixset", default=None,
                     help="Mixing set built by `mixset build` (needed by --pixmix, unless --partners augmented): a "
                          "folder or a URL (http(s)://, s3://, gs://)."),
        click.option("--views", type=click.IntRange(1), default=1, show_default=True,
                     help="PixMix views per image; training epoch e reads view e mod V."),
        click.option("--k", type=click.IntRange(1), default=None, help="PixMix rounds (default: the recipe's, 4)."),
        click.option("--beta", type=float, default=None, help="PixMix beta (default: ImageNet 4, CIFAR 3)."),
        click.option("--severity", type=float, default=None, help="Op severity (default: ImageNet 1, CIFAR 3)."),
        click.option("--ops", type=click.Choice(["all", "basic"]), default="all", show_default=True,
                     help="PixMix augmentation ops."),
        click.option("--partners", type=click.Choice(["both", "augmented", "mixing"]), default="both",
                     show_default=True, help="Mixing partners: both (PixMix), augmented inputs only (no mixing "
                     "set needed), or the mixing set only (the paper's Table 5)."),
        click.option("--crop-size", type=click.IntRange(8, 1024), default=None,
                     help="Size of PixMix views (default: ImageNet 224, CIFAR 32)."),
        click.option("--image-size", type=click.IntRange(8, 4096), default=None,
                     help="Plain folder images: shorter side [default: 256]."),
        click.option("--format", "image_format", type=click.Choice(["jpg", "png", "webp"]), default=None,
                     help="Image encoding [default: jpg; png for CIFAR]."),
        click.option("--quality", type=click.IntRange(1, 100), default=95, show_default=True),
        click.option("--shard-samples", type=click.IntRange(1), default=None,
                     help="Samples per shard [default: from --shard-bytes]."),
        click.option("--shard-bytes", type=ByteSize(), default="256MiB", show_default=human_size(256 << 20),
                     help="Target shard size (4096, 256MiB, 1GiB, 2MB ...), used when --shard-samples is "
                     "not given."),
        click.option("--seed", type=click.IntRange(0), default=0, show_default=True),
        click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N images (quick runs)."),
        click.option("--workers", type=click.IntRange(1), default=None, show_default="the usable CPUs",
                     help="Processes (CPU) or decode/encode threads (GPU) on this machine; capped at the usable "
                     "CPUs (affinity, cgroup quota, SLURM_CPUS_PER_TASK, OMP_NUM_THREADS, divided among "
                     "LOCAL_WORLD_SIZE ranks) unless --oversubscribe (processes x torch/BLAS threads <= them)."),
        click.option("--oversubscribe", is_flag=True, help="Allow more --workers than usable CPUs."),
        click.option("--rank", type=click.IntRange(0), default=None,
                     help="This machine's rank [default: $RANK (torchrun), $SLURM_PROCID, or 0]."),
        click.option("--world-size", type=click.IntRange(1), default=None,
                     help="Number of ranks [default: $WORLD_SIZE, $SLURM_NTASKS, or 1]."),
        click.option("--device", default="auto", show_default=True,
                     help="Where PixMix views are mixed: auto (cuda when available), cpu, cuda[:N]."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@main.group()
def shard() -> None:
    """Write a dataset (or pre-generated PixMix views of it) as WebDataset shards."""


def _run_shard(dataset: str, split: str, corrupted: bool = False, **opts) -> None:
    from mixset.shard.config import ShardConfig, distributed_defaults
    from mixset.shard.sharder import shard as run_shard

    quiet = opts.pop("quiet")
    if opts["workers"] is None:
        opts["workers"] = usable_cpus()
    with user_errors(FLAGS):
        rank, world_size = distributed_defaults(opts.pop("rank"), opts.pop("world_size"))
        config = ShardConfig(dataset=dataset, split=split, corrupted=corrupted, rank=rank, world_size=world_size,
                             **opts)
        # This process's share too: processes x threads <= usable CPUs.
        with _resumable(), threads_limited(config.worker_plan()[1]):
            s = run_shard(config, log=lambda m: click.echo(m, err=True), progress=not quiet)
    rate = s.samples_written / s.seconds if s.seconds > 0 else 0.0
    click.echo(f"rank {s.rank}/{s.world_size}: wrote {s.shards_written} shard(s) ({s.samples_written} samples, "
               f"{rate:.1f}/s), {s.shards_resumed} already complete, {len(s.failures)} image(s) skipped")
    if s.manifest is not None:
        click.echo(f"manifest: {s.manifest} ({s.shards_total} shards)")
    else:
        click.echo(f"other ranks' shards are still missing: the last rank to finish (or `mixset shard merge "
                   f"{s.out}`) writes the manifest")


@shard.command()
@click.option("--split", type=click.Choice(["train", "val"]), default="train", show_default=True)
@_shard_options
def imagenet(split: str, **opts) -> None:
    """ImageNet in its folder layout: DATA_DIR/{train,val}/<wnid>/*.JPEG (labels: sorted train wnids)."""
    _run_shard("imagenet", split, **opts)


@shard.command()
@click.option("--split", default="train", show_default=True, help="A name for the output (train, val, ...).")
@_shard_options
def imagefolder(split: str, **opts) -> None:
    """Any ImageFolder tree: DATA_DIR/<class>/**/<image> (labels: sorted class folders)."""
    _run_shard("imagefolder", split, **opts)


@shard.command()
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--corrupted", is_flag=True, help="CIFAR-10-C: DATA_DIR/CIFAR-10-C/<corruption>.npy (all 15 x 5).")
@_shard_options
def cifar10(split: str, corrupted: bool, **opts) -> None:
    """CIFAR-10 python batches: DATA_DIR/cifar-10-batches-py/ (or CIFAR-10-C with --corrupted)."""
    _run_shard("cifar10", split, corrupted, **opts)


@shard.command()
@click.option("--split", type=click.Choice(["train", "test"]), default="train", show_default=True)
@click.option("--corrupted", is_flag=True, help="CIFAR-100-C: DATA_DIR/CIFAR-100-C/<corruption>.npy (all 15 x 5).")
@_shard_options
def cifar100(split: str, corrupted: bool, **opts) -> None:
    """CIFAR-100 python batches: DATA_DIR/cifar-100-python/ (or CIFAR-100-C with --corrupted)."""
    _run_shard("cifar100", split, corrupted, **opts)


@shard.command("merge")
@click.argument("out", type=click.Path(exists=True, file_okay=False, path_type=Path))
def shard_merge(out: Path) -> None:
    """Write OUT/manifest.json once every rank has written its shards."""
    from mixset.shard.sharder import merge

    with user_errors(FLAGS):
        path = merge(out)
    click.echo(f"manifest: {path}")


class SetLocation(click.ParamType):
    """An existing local folder, or a URL of a set (http(s)://, s3://, gs://, pipe:CMD, file://); other schemes
    are refused in one line."""

    name = "folder|url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str | Path:
        from pixmix.data.remote import has_braces, location
        from pixmix.utils.errors import PixmixError

        try:
            loc = location(str(value))
        except PixmixError as exc:
            self.fail(str(exc), param, ctx)
        if loc.is_local and not has_braces(loc):
            return click.Path(exists=True, file_okay=False, path_type=Path).convert(loc.path, param, ctx)
        return str(value)


@main.command()
@click.argument("folder", type=SetLocation())
@click.option("--no-decode", is_flag=True, help="Skip decoding every image (faster).")
def verify(folder: str | Path, no_decode: bool) -> None:
    """Recheck every shard and sample of a built set (a folder or a URL) against its manifest."""
    from mixset.verify import verify as run_verify

    with user_errors(FLAGS):
        problems = run_verify(folder, decode=not no_decode)
    for line in problems:
        click.echo(line, err=True)
    if problems:
        raise click.ClickException(f"{len(problems)} problem(s) in {folder}")
    click.echo(f"{folder}: OK")


@main.command()
@click.argument("folder", type=SetLocation())
def info(folder: str | Path) -> None:
    """Summarise a built set (a folder or a URL): sources, collections, counts, licences."""
    from mixset.verify import info as run_info

    with user_errors(FLAGS):
        click.echo(run_info(folder))


@main.command()
@click.argument("target", type=SetLocation())
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the index (default: TARGET/manifest.json for a folder, ./manifest.json for a URL).")
@click.option("--force", is_flag=True, help="Replace an existing manifest.json.")
def index(target: str | Path, out: Path | None, force: bool) -> None:
    """Index a WebDataset shard set written by another tool (e.g. img2dataset) as a manifest.json.

    TARGET: a folder of *.tar, an s3:// or gs:// prefix, or a brace pattern of shard URLs
    (http://host/set/{00000..00099}.tar). Every shard is read once to count samples, hash it and find the
    image and label fields; readers then use the manifest instead of scanning.
    """
    from mixset.indexing import write_index

    with user_errors(FLAGS):
        path, manifest, upload = write_index(target, out, force=force)
    click.echo(f"{path}: {manifest['samples']} samples in {len(manifest['shards'])} shard(s), image field "
               f"{manifest['image_field']!r}, label field {manifest['label_field']!r}, "
               f"{len(manifest['classes'])} classes")
    if upload is not None:
        click.echo(f"upload it next to the shards: {upload}")


# Registered last: its module imports only click; the pipeline machinery loads inside the command.
from mixset.cli.run import run as run_command  # noqa: E402

main.add_command(run_command)
