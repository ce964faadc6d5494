"""``pixmix eval``: the paper's safety evaluation of one checkpoint. Registered by ``pixmix.cli``.

Only click (and the one-line error helper) is imported here: torch loads when the command runs, so
``pixmix --help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import click

from pixmix.cli.errors import user_errors

# evaluate()'s parameters whose flag is not their name with dashes.
FLAGS = {"data_dir": "--data", "out_dir": "--out", "drop_last_bin": "--reference-calibration"}


@click.command("eval")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="A checkpoint written by `pixmix train`.")
@click.option("--suite", type=click.Choice(["cifar10", "cifar100", "imagenet", "places365"]), required=True,
              help="Test set, -C, -P and OOD sets to evaluate on (places365: anomaly detection, Table 13).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder holding the datasets (e.g. cifar-10-batches-py/, CIFAR-10-C/, CIFAR-10-P/, ood/).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for results.json, results.md and results.png.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True,
              help="Seeds PGD's random start and the synthetic OOD sets.")
@click.option("--pgd-samples", type=click.IntRange(1), default=None,
              help="Test images attacked (default: all; ImageNet: none, as in the paper).")
@click.option("--ood-samples", type=click.IntRange(1), default=2000, show_default=True,
              help="Images per OOD set.")
@click.option("--limit", type=click.IntRange(1), default=None,
              help="At most this many images per set, evenly spaced (quick runs).")
@click.option("--workers", type=click.IntRange(0), default=None,
              help="Image-decoding processes for folder datasets (default: min(8, CPUs)).")
@click.option("--reference-calibration", is_flag=True, hidden=True,
              help="No effect (kept for old scripts): both RMS calibration figures are always reported.")
@click.option("--p-baseline", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="ImageNet: AlexNet's results.json (its raw ImageNet-P rates) to normalise mFR / mT5D.")
@click.option("--ood-folder", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="ImageNet: out-of-class images for anomaly detection (default: DATA/ImageNet-O).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def eval_command(checkpoint: Path, suite: str, data_dir: Path, out_dir: Path, device: str, batch_size: int, seed: int,
                 pgd_samples: int | None, ood_samples: int, limit: int | None, workers: int | None,
                 reference_calibration: bool, p_baseline: Path | None, ood_folder: Path | None, quiet: bool) -> None:
    """Clean error, corruptions (mCE), consistency (mFR), PGD, calibration and anomaly detection.

    Missing optional sets (-C-Bar, -P, folder OOD sets) are skipped and noted in the report.
    """
    from pixmix.evaluate.report import subset_note, suite_columns, summary_rows, summary_table, write_report
    from pixmix.evaluate.suites import evaluate

    with user_errors(FLAGS):
        results = evaluate(checkpoint, suite, data_dir, device=device, batch_size=batch_size, seed=seed,
                           pgd_samples=pgd_samples, ood_samples=ood_samples, limit=limit,
                           drop_last_bin=reference_calibration, workers=workers, progress=not quiet,
                           log=lambda m: click.echo(m, err=True),
                           p_baseline=None if p_baseline is None else str(p_baseline),
                           ood_folder=None if ood_folder is None else str(ood_folder))
        paths = write_report(results, out_dir)
    click.echo(summary_table(summary_rows(results), suite_columns(results["suite"])))
    subset = subset_note(results)
    if subset is not None:
        click.echo(subset)
    for note in results["notes"]:
        click.echo(f"note: {note}")
    click.echo(f"wrote {paths['md']}, {paths['json']} and {paths['png']}")
