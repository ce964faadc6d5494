"""The ``mixset`` command line. Thin: heavy imports happen inside commands, so --help is instant."""

from __future__ import annotations

import click

from mixset import __version__
from pixmix.runtime import tune_cpu_allocator


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mixset")
def main() -> None:
    """Assemble PixMix mixing sets and pre-generate PixMix training shards."""
    # Before any command imports torch: keeps CPU tensor memory in the heap (see pixmix.runtime).
    tune_cpu_allocator()


if __name__ == "__main__":
    main()
