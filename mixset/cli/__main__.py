"""`python -m mixset.cli ...`: the same as the `mixset` command."""

from mixset.cli import main

main()
