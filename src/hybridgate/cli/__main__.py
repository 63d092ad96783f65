"""`python -m hybridgate.cli`: the `hybridgate` command."""

from hybridgate.cli import main

main()
