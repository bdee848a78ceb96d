"""The command line every benchmark shares: `--help` prints its usage and its whole
docstring (what it measures, the targets), and stops before anything runs."""

from __future__ import annotations

import argparse


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose help is the benchmark's docstring, kept as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def compile_source() -> None:
    """Write the bytecode of the checkout's modules, as installing the package does: a
    process timed from here must not compile them again each time it starts (the
    environment may set PYTHONDONTWRITEBYTECODE, and a checkout's edits leave its cached
    bytecode stale)."""
    import compileall
    from pathlib import Path

    compileall.compile_dir(Path(__file__).resolve().parent.parent / "src", quiet=1)
