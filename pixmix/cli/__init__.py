"""The ``pixmix`` command line. Thin: heavy imports happen inside commands, so --help is instant."""

from __future__ import annotations

from pathlib import Path

import click

from pixmix import __version__
from pixmix.cli.errors import user_errors
from pixmix.utils.runtime import tune_cpu_allocator


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pixmix")
def main() -> None:
    """PixMix augmentation, training and evaluation."""
    # Before any command imports torch: keeps CPU tensor memory in the heap (see pixmix.utils.runtime).
    tune_cpu_allocator()


@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-output"),
              show_default=True, help="Folder for pixmix-demo.png and pixmix-demo.json.")
@click.option("--recipe", type=click.Choice(["cifar", "imagenet"]), default="cifar", show_default=True,
              help="The paper's recipe (k, beta, severity, image size).")
@click.option("--rows", type=click.IntRange(1, 64), default=6, show_default=True, help="Training images shown.")
@click.option("--samples", type=click.IntRange(1, 32), default=6, show_default=True,
              help="PixMix samples per training image.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
def demo(out_dir: Path, recipe: str, rows: int, samples: int, seed: int) -> None:
    """Write a grid of PixMix samples of embedded synthetic images mixed with embedded fractals.

    Each row: the training image, its mixing picture, then SAMPLES PixMix outputs. Runs offline.
    """
    from pixmix.demo import run_demo

    with user_errors({"samples_per_row": "--samples", "out_dir": "--out"}):
        summary = run_demo(out_dir, recipe=recipe, rows=rows, samples_per_row=samples, seed=seed)
    click.echo(
        f"wrote {summary.grid_png} ({rows} rows x {samples} samples, recipe {recipe}: k={summary.k}, "
        f"beta={summary.beta}, severity={summary.severity}, {len(summary.ops)} ops) in {summary.seconds:.2f}s"
    )
    click.echo(f"summary: {out_dir / 'pixmix-demo.json'}")


# Registered here so `pixmix --help` lists them; their modules import torch only inside the commands.
from pixmix.cli.evaluate import eval_command  # noqa: E402
from pixmix.cli.train import train  # noqa: E402

main.add_command(train)
main.add_command(eval_command)
