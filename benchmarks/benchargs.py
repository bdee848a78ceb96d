"""The command line every benchmark shares: `--help` prints its usage and its whole
docstring (what it measures, the targets), and stops before anything runs."""

from __future__ import annotations

import argparse


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose help is the benchmark's docstring, kept as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
