"""The benchmarks are run by hand, so each says how with `--help` (and runs nothing then)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from support.paths import REPO

BENCHMARKS = REPO / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if p.name != "benchargs.py")


def test_the_readme_names_every_benchmark() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert SCRIPTS
    assert [s.name for s in SCRIPTS if f"`benchmarks/{s.name}`" not in readme] == []


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_prints_the_usage_and_what_it_measures(script: Path) -> None:
    """Two crashed on `--help` (int("--help")) and two ignored it and ran the whole
    benchmark."""
    doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8")))
    assert doc
    done = subprocess.run(
        [sys.executable, str(script), "--help"], cwd=BENCHMARKS.parent, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.startswith(f"usage: {script.name} ")
    assert doc.splitlines()[0] in done.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_an_unknown_option_is_a_usage_error(script: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(script), "--no-such-option"],
        cwd=BENCHMARKS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "unrecognized arguments: --no-such-option" in done.stderr
