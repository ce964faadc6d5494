"""``mixset run``: a declarative pipeline (the paper's Tables 4, 5, 6, 10 and 14) end to end.

Thin: the pipeline machinery (and torch) is imported when the command runs, so ``--help`` is instant.
Registered on the ``mixset`` group by ``mixset.cli``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pixmix.cli.errors import user_errors


@click.command("run")
@click.argument("pipeline")
@click.option("--profile", default="smoke", show_default=True,
              help="Profile of the pipeline file: smoke (tiny synthetic data, minutes on a CPU) or paper.")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Work folder: stages/ and results.{json,md,png} [default: pipeline-work/<name>-<profile>].")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder holding cifar-100-python/, CIFAR-100-C/ (and CIFAR-100-P/, ood/); "
                   "needed by --profile paper.")
@click.option("--natural", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A folder of natural images for the '300K Random Images' variant.")
@click.option("--pretrained", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Weights every variant fine-tunes from (pixmix train --pretrained; imagenet-mixing-sets --profile "
                   "paper: ResNet-50's, also rendered as its 'ResNet only FVis').")
@click.option("--only", multiple=True, metavar="VARIANT", help="Run only this variant (repeatable).")
@click.option("--set", "overrides", multiple=True, metavar="[VARIANT.]KEY=VALUE",
              help="Override an option of every variant, or of one (repeatable), e.g. --set fractals.views=2.")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Stage folder to share between pipelines [default: WORK/stages].")
@click.option("--nodes", type=click.IntRange(1), default=None,
              help="Training nodes (torchrun); run the same command on every node (shared --work).  [default: 1]")
@click.option("--nproc-per-node", type=click.IntRange(1), default=None, help="Training processes (GPUs) per node.")
@click.option("--rdzv-endpoint", default=None, metavar="HOST:PORT",
              help="torchrun rendezvous for several nodes "
                   "[default: $PIXMIX_RDZV_ENDPOINT or $MASTER_ADDR:$MASTER_PORT].")
@click.option("--node-rank", type=click.IntRange(0), default=None,
              help="This node's rank [default: $NODE_RANK or $SLURM_NODEID]; node 0 runs every other stage.")
@click.option("--strict", is_flag=True, help="Fail when a variant cannot run here instead of skipping it.")
@click.option("--dry-run", is_flag=True, help="Print the plan (which stages would run) and stop.")
@click.option("--verbose", is_flag=True, help="Echo every stage's log lines (they always go to its run.log).")
@click.option("--progress/--no-progress", default=None, help="Progress bars [default: when stderr is a terminal].")
def run(pipeline: str, profile: str, work: Path | None, data: Path | None, natural: Path | None,
        pretrained: Path | None, only: tuple[str, ...], overrides: tuple[str, ...], cache: Path | None,
        nodes: int | None, nproc_per_node: int | None, rdzv_endpoint: str | None, node_rank: int | None, strict: bool,
        dry_run: bool, verbose: bool, progress: bool | None) -> None:
    """Run PIPELINE (a .toml file, or a bundled name: mixing-sets, mixing-strategies, cutmix, sensitivity,
    imagenet-mixing-sets) end to end.

    Builds every mixing set, shards the training set (pre-generated PixMix views per variant, or plain shards
    for online mixing), trains, evaluates and writes WORK/results.md (ours beside the paper's numbers),
    results.json and results.png. Every stage is keyed by a hash of its options and inputs: re-running skips
    what is up to date.
    """
    from pipelines.runner import run_pipeline
    from pipelines.spec import parse_overrides
    from pipelines.stages import Launch

    # Only the library's user errors (PixmixError) become one line; anything else is a bug: its traceback shows.
    with user_errors(_flags()):
        launch = Launch.from_env(nodes=nodes, nproc_per_node=nproc_per_node, rdzv_endpoint=rdzv_endpoint,
                                 node_rank=node_rank)
        options = parse_overrides(list(overrides))
        if pretrained is not None:  # as --set pretrained=FILE for every variant (a path needs no TOML quoting here)
            options.setdefault(None, {})["pretrained"] = str(pretrained)
        run_pipeline(pipeline, profile, work, data=data, natural=natural, only=only, overrides=options, cache=cache,
                     strict=strict, launch=launch, dry_run=dry_run, log=click.echo, verbose=verbose,
                     progress=sys.stderr.isatty() if progress is None else progress)


def _flags() -> dict[str, str]:
    """How a library parameter at fault is set here: a pipeline option by ``--set KEY=VALUE``, unless this
    command has a flag of its own for it (``--data``, ``--natural``); the argument as ``PIPELINE``."""
    from pipelines.spec import OPTIONS

    own = {param.name for param in run.params if isinstance(param, click.Option) and param.name}
    flags = {key: f"--set {key}" for key in OPTIONS if key not in own}
    return flags | {"pipeline": "PIPELINE", "overrides": "--set"}


__all__ = ["run"]
