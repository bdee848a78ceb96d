"""Allow ``python -m highlightsmail``."""

from highlightsmail.cli import main

main()
