"""Where the checkout's parts are, for tests in any folder."""

from __future__ import annotations

from pathlib import Path

#: tests/
TESTS = Path(__file__).resolve().parent.parent
#: The repository's root.
REPO = TESTS.parent

__all__ = ["REPO", "TESTS"]
