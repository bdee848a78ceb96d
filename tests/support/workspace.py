"""The files every test workspace starts from: the tests' own fixed copy of the example's
settings and issue (tests/workspace/), and the package's templates as `init` copies them.

Never the repository's highlights.yaml, issues/ or templates/: the repository is also the
example workspace a user edits (turning the archive on, writing an issue), and no test or
golden file may change with it.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import yaml

from support.paths import TESTS

EXAMPLE_WORKSPACE = TESTS / "workspace"
EXAMPLE_SETTINGS = EXAMPLE_WORKSPACE / "highlights.yaml"
EXAMPLE_ISSUE = EXAMPLE_WORKSPACE / "issues" / "2024-w02.yaml"


def copy_example(root: Path, *, templates: bool = True) -> Path:
    """Fill `root` (made if missing) with the example's settings and issue and, unless
    `templates` is false, a copy of the package's templates; returns `root`."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLE_SETTINGS, root / "highlights.yaml")
    shutil.copytree(EXAMPLE_WORKSPACE / "issues", root / "issues")
    if templates:
        with resources.as_file(resources.files("highlightsmail") / "templates") as package:
            shutil.copytree(package, root / "templates")
    return root


def configure(root: Path, **changes: object) -> None:
    """Change top-level settings in highlights.yaml (comments are lost; it is a copy)."""
    path = root / "highlights.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
