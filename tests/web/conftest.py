"""The fixtures the web app's tests share: the example workspace served over real HTTP
(a test file may serve its own instead), a client that never follows a redirect, and a
log that hears the server."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support.webapp import Site, serve_workspace


@pytest.fixture
def site(workspace: Path) -> Iterator[Site]:
    with serve_workspace(workspace) as s:
        yield s


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    # A fresh client per test, never following redirects: a redirect would be a failure.
    with httpx.Client(follow_redirects=False, timeout=30) as client:
        yield client


@pytest.fixture
def server_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog at INFO that also hears uvicorn's loggers, whatever logging configuration
    an earlier uvicorn.Config in this process installed (uvicorn's default one stops
    its access log from reaching the root logger)."""
    saved = []
    for name in ("uvicorn", "uvicorn.access", "uvicorn.error", "highlightsmail", "highlightsmail.web"):
        logger = logging.getLogger(name)
        saved.append((logger, logger.propagate, logger.disabled, logger.level))
        logger.propagate, logger.disabled = True, False
        logger.setLevel(logging.INFO)
    caplog.set_level(logging.INFO)
    yield caplog
    for logger, propagate, disabled, level in saved:
        logger.propagate, logger.disabled = propagate, disabled
        logger.setLevel(level)
