"""`python -m pixmix.cli ...`: the same as the `pixmix` command."""

from pixmix.cli import main

main()
