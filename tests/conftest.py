"""Shared fixtures: a copy of the example workspace, and a real Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("HIGHLIGHTS_CHROMIUM", "/usr/bin/chromium")
# Chromium's own background traffic would only hit the closed network; keep it quiet.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees the developer's own secrets or workspace."""
    for name in (
        "HIGHLIGHTS_WORKSPACE",
        "HIGHLIGHTS_SECRET",
        "HIGHLIGHTS_SECRET_PREVIOUS",
        "SENDGRID_API_KEY",
        "HIGHLIGHTS_SMTP_PASSWORD",
        "HIGHLIGHTS_SENDGRID_HOST",
        "SENDGRID_WEBHOOK_PUBLIC_KEY",
        "HIGHLIGHTS_IMAP_PASSWORD",
        "HIGHLIGHTS_IMAP_CAFILE",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh copy of the repository's example workspace, with the CWD inside it."""
    root = tmp_path / "ws"
    root.mkdir()
    shutil.copy(REPO / "highlights.yaml", root / "highlights.yaml")
    shutil.copytree(REPO / "issues", root / "issues")
    if (REPO / "templates").is_dir():
        shutil.copytree(REPO / "templates", root / "templates")
    (root / "subscribers").mkdir()
    monkeypatch.chdir(root)
    monkeypatch.setenv("HIGHLIGHTS_SECRET", "test-secret-0123456789abcdef0123456789")
    return root


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium, headless, through Playwright. Browser tests need it and are
    not skipped silently: a missing Chromium fails them with the reason."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    pg = context.new_page()
    yield pg
    context.close()
