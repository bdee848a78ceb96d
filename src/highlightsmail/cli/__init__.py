"""The command line: `highlights` and its commands. They parse, hand off and print; each
command imports its work when it runs, so `highlights --help` stays fast."""

from highlightsmail.cli.main import main

__all__ = ["main"]
