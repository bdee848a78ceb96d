"""The package as a user installs it: a wheel built from this checkout, installed into a
fresh virtualenv, must carry the default templates (one copy in the repository, at the
top level) and the tool's own pages, so that `highlights init` and `highlights build`
work there with nothing from the checkout.

No network: the wheel is built with the test environment's setuptools (no build
isolation), and the fresh virtualenv reaches the already installed dependencies through
a .pth line instead of downloading them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from support.paths import REPO

pytestmark = pytest.mark.slow


def _run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the checkout (the build writes build/ and egg-info)."""
    src = tmp_path_factory.mktemp("src") / "highlightsmail"
    ignore = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "out", "outbox")
    shutil.copytree(REPO, src, symlinks=True, ignore=ignore)
    dist = tmp_path_factory.mktemp("dist")
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "-q",
        "-w",
        dist,
        src,
        cwd=src,
    )
    (built,) = dist.glob("highlightsmail-*.whl")
    return built


def test_the_wheel_carries_the_top_level_templates_and_the_preview_page(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        shipped = {n.removeprefix("highlightsmail/templates/"): zf.read(n) for n in names if "/templates/" in n}
    in_repo = {
        str(p.relative_to(REPO / "templates")): p.read_bytes() for p in (REPO / "templates").rglob("*") if p.is_file()
    }
    assert shipped == in_repo, "the package's defaults are the repository's templates/, byte for byte"
    assert {"issue.mjml.j2", "issue.txt.j2", "pages/unsubscribe.html.j2"} <= set(shipped)
    assert "highlightsmail/ui/preview.html.j2" in names, "the preview page is a template file in the package"
    assert "highlightsmail/skeleton/subscribers/subscribers.csv" in names
    store_sql = REPO / "src" / "highlightsmail" / "store" / "sql"
    migrations = {f"highlightsmail/store/sql/{p.relative_to(store_sql)}" for p in store_sql.rglob("*.sql")}
    assert {n for n in names if n.startswith("highlightsmail/store/sql/")} == migrations, "every migration ships"
    assert "highlightsmail/store/sql/sqlite/0001_subscribers_and_ledger.sql" in migrations


def test_init_and_build_work_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # The dependencies, already installed for the tests, without the checkout itself.
    site = Path(
        _run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=tmp_path).stdout.strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n", encoding="utf-8")
    _run(
        sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp_path
    )

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HIGHLIGHTS_", "PYTHON"))}
    where = _run(python, "-c", "import highlightsmail; print(highlightsmail.__file__)", cwd=tmp_path, env=env)
    assert Path(where.stdout.strip()).is_relative_to(env_dir), "the installed package, not the checkout"

    highlights = env_dir / "bin" / "highlights"
    created = _run(highlights, "init", "letter", cwd=tmp_path, env=env)
    assert "Created a newsletter workspace in letter" in created.stdout
    letter = tmp_path / "letter"
    for name in ("issue.mjml.j2", "issue.txt.j2", "pages/unsubscribe.html.j2"):
        assert (letter / "templates" / name).read_bytes() == (REPO / "templates" / name).read_bytes(), name
    # A workspace without templates of its own is served by the package's defaults.
    shutil.rmtree(letter / "templates")
    built = _run(highlights, "build", "latest", cwd=letter, env=env)
    paths = built.stdout.split()
    assert [Path(p).suffix for p in paths] == [".html", ".txt", ".eml"]
    html = (letter / paths[0]).read_text(encoding="utf-8")
    assert "My Newsletter" in html and "@media" in html and 'href="#item-1"' in html
    assert "https://newsletter.example.org/u/sample" in (letter / paths[1]).read_text(encoding="utf-8")
    # The schema comes from the package's .sql files: a new list gets it, and lists.
    _run(highlights, "subscribers", "add", "ada@example.org", cwd=letter, env=env)
    listed = _run(highlights, "subscribers", "list", cwd=letter, env=env)
    assert "ada@example.org" in listed.stdout
