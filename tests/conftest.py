"""Shared fixtures: a copy of the tests' example workspace, a real Chromium driven by Playwright,
and a throwaway PostgreSQL cluster with a fresh database per test.

Engines: a test that asks for `engine` (or a module with `pytestmark =
pytest.mark.usefixtures("engine")`) runs once on SQLite and once on PostgreSQL, and its
`workspace` points at a fresh PostgreSQL database in the second run. A test marked
`sqlite_only` (it is about SQLite's file) runs on SQLite alone.
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.chromium import CHROMIUM, launch
from support.workspace import copy_example

# A run started in the background by a shell without job control has SIGINT ignored,
# and every process the tests start would inherit that: the tests that press Ctrl-C on
# `highlights send` or a server would find it ignored, and fail. With Python's own
# handler here, each child starts with the default again (an exec resets a handled
# signal, not an ignored one).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True, scope="session")
def _own_cache_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The start-up caches (compiled templates, parsed CSS) go to the run's own folder,
    never the developer's ~/.cache; one for the whole run, so later commands reuse it as
    an editor's do. Set in the environment, so commands the tests start see it too."""
    before = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if before is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = before


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
        "HIGHLIGHTS_DATABASE_URL",
        "PGPASSWORD",
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGSERVICE",
    ):
        monkeypatch.delenv(name, raising=False)


ENGINES = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine" in metafunc.fixturenames:
        marked = metafunc.definition.get_closest_marker("sqlite_only")
        metafunc.parametrize("engine", ENGINES[:1] if marked else ENGINES)


@pytest.fixture(scope="session")
def pg_cluster():
    """Debian's PostgreSQL server, started once for the session on a free loopback port.
    Not skipped when missing: the tests that need it fail, saying how to install it."""
    from support.postgresql import running_cluster

    with running_cluster() as cluster:
        yield cluster


_databases = itertools.count(1)


@pytest.fixture
def pg_url(pg_cluster) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped after it."""
    import psycopg

    name = f"test_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield pg_cluster.url(name)
    with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Path:
    """A fresh workspace from the tests' own copy of the example (support/workspace.py:
    never the repository's files, which a user may edit), with the CWD inside it; on
    the PostgreSQL run of a test that asks for `engine`, its state in a fresh database."""
    root = copy_example(tmp_path / "ws")
    (root / "subscribers").mkdir()
    monkeypatch.chdir(root)
    monkeypatch.setenv("HIGHLIGHTS_SECRET", "test-secret-0123456789abcdef0123456789")
    if "engine" in request.fixturenames and request.getfixturevalue("engine") == "postgresql":
        from highlightsmail.store import Store

        url = request.getfixturevalue("pg_url")
        Store(url).close()  # the schema, as `highlights db upgrade` makes it: no command makes it by itself
        monkeypatch.setenv("HIGHLIGHTS_DATABASE_URL", url)
    return root


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium, headless, through Playwright. Browser tests need it and are
    not skipped silently: a missing Chromium fails them with the reason."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = launch(pw)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    pg = context.new_page()
    yield pg
    context.close()
