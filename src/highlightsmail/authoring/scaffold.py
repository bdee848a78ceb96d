"""`highlights init` (a new workspace) and `highlights new` (next week's issue file).

The files come from the package's `skeleton/` folder and default `templates/`, so a
workspace made by `init` always starts from the templates of the installed version.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

from highlightsmail.errors import HighlightsError, display_path
from highlightsmail.files import write_file, write_files

if TYPE_CHECKING:  # for the annotations only: `init` needs no settings model (pydantic, YAML)
    from highlightsmail.authoring.workspace import Workspace

SETTINGS_FILE = "highlights.yaml"  # same name as workspace.SETTINGS_FILE, without importing pydantic
STARTER_NAME = "My Newsletter"  # the `name:` of skeleton/highlights.yaml
# Lines `init` makes sure a workspace's .gitignore holds: state, secrets and personal data never go in git.
GITIGNORE_LINES = ("out/", "outbox/", "subscribers/*.db*", "subscribers/.secret", "private/")


@dataclass(frozen=True)
class NewWorkspace:
    """What `init_workspace` did: the folder, the files it wrote, the files it found
    there and kept, and the slug of the first issue."""

    directory: Path
    written: list[Path]
    kept: list[Path]
    first_issue: str


def _package_dir(name: str) -> Traversable:
    return resources.files("highlightsmail").joinpath(name)


def issue_filename(date: dt.date) -> str:
    """`YYYY-wWW.yaml` for the ISO week holding `date` (2024-12-30 is in 2025-w01)."""
    year, week, _ = date.isocalendar()
    return f"{year:04d}-w{week:02d}.yaml"


def issue_title(name: str, date: dt.date) -> str:
    """`<name> | Week W, YYYY`, the title an issue starts with."""
    year, week, _ = date.isocalendar()
    return f"{name} | Week {week}, {year}"


def _fill(template_name: str, *, title: str, date: dt.date, slug: str) -> str:
    """A skeleton issue with its title, date and slug filled in.

    The title goes in as a JSON string, which is also a valid YAML double-quoted
    scalar, so a newsletter name with quotes or colons cannot break the file.
    """
    text = _package_dir("skeleton").joinpath(template_name).read_text(encoding="utf-8")
    return Template(text).substitute(title=json.dumps(title, ensure_ascii=False), date=date.isoformat(), slug=slug)


def _walk(folder: Traversable, prefix: Path = Path()) -> list[tuple[Path, Traversable]]:
    """Every file under a package folder, with its path relative to it."""
    found: list[tuple[Path, Traversable]] = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name == "__pycache__" or entry.name.startswith("."):
            continue
        if entry.is_dir():
            found.extend(_walk(entry, prefix / entry.name))
        elif entry.is_file():
            found.append((prefix / entry.name, entry))
    return found


def _starter_files(today: dt.date) -> list[tuple[Path, bytes]]:
    """(relative path, content) of every file of a new workspace except highlights.yaml."""
    files: list[tuple[Path, bytes]] = []
    templates = _package_dir("templates")
    if templates.is_dir():
        for rel, entry in _walk(templates):
            files.append((Path("templates") / rel, entry.read_bytes()))
    skeleton = _package_dir("skeleton")
    files.append((Path("subscribers/subscribers.csv"), skeleton.joinpath("subscribers/subscribers.csv").read_bytes()))
    name = issue_filename(today)
    first = _fill(
        "first-issue.yaml.tmpl", title=issue_title(STARTER_NAME, today), date=today, slug=name.removesuffix(".yaml")
    )
    files.append((Path("issues") / name, first.encode("utf-8")))
    return files


def _merged_gitignore(existing: str | None) -> str | None:
    """The .gitignore to write: ours for a new folder; for an existing one, its own text
    plus whichever of our lines it lacks (None when it lacks none)."""
    ours = _package_dir("skeleton").joinpath("gitignore").read_text(encoding="utf-8")
    if existing is None:
        return ours
    present = {line.strip() for line in existing.splitlines()}
    missing = [line for line in GITIGNORE_LINES if line not in present]
    if not missing:
        return None
    sep = "" if existing.endswith("\n") or not existing else "\n"
    return existing + sep + "\n# highlightsmail\n" + "\n".join(missing) + "\n"


def _read_gitignore(path: Path) -> str | None:
    """The workspace's .gitignore as text, None when there is none."""
    try:
        return path.read_text(encoding="utf-8") if path.is_file() else None
    except (UnicodeDecodeError, OSError) as exc:
        why = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else f"cannot read it ({exc.strerror or exc})"
        raise HighlightsError(
            f"{display_path(path)}: {why}; init adds the lines that keep the database and the secret "
            "out of git to it, so fix it (or move it away) first"
        ) from None


def _make_folders(folders: list[Path]) -> None:
    """Make the workspace's folders; one line naming the folder that cannot be made."""
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a file, a broken link or a link loop where a folder goes
            raise HighlightsError(
                f"{display_path(folder)}: cannot create the workspace: something that is not a folder is "
                "in the way (a file, a broken link or a link loop)"
            ) from None
        except OSError as exc:
            raise HighlightsError(
                f"{display_path(folder)}: cannot create the workspace: {exc.strerror or exc}"
            ) from None


def init_workspace(directory: Path, *, today: dt.date | None = None) -> NewWorkspace:
    """Create a workspace in `directory`: settings, a first issue, the default templates,
    a sample subscriber list and a .gitignore. Refuses where highlights.yaml exists.

    Files already there (a .gitignore, templates of your own) are kept; highlights.yaml
    is written last, so an interrupted init leaves no half-made workspace behind that
    a second `init` would refuse.
    """
    today = today or dt.date.today()
    directory = Path(directory)
    settings_path = directory / SETTINGS_FILE
    if settings_path.exists():
        raise HighlightsError(f"{display_path(settings_path)} already exists: this is a workspace already")
    if directory.exists() and not directory.is_dir():
        raise HighlightsError(f"{display_path(directory)}: not a folder")

    planned = _starter_files(today)  # read everything before writing anything
    gitignore_path = directory / ".gitignore"
    gitignore = _merged_gitignore(_read_gitignore(gitignore_path))
    settings_text = _package_dir("skeleton").joinpath(SETTINGS_FILE).read_bytes()

    kept = [directory / rel for rel, _ in planned if (directory / rel).exists()]
    files = {directory / rel: data for rel, data in planned if directory / rel not in kept}
    if gitignore is not None:
        files[gitignore_path] = gitignore.encode("utf-8")
    _make_folders(sorted({path.parent for path in files} | {directory}))
    try:
        written = write_files(files)
        write_file(settings_path, settings_text, overwrite=False)
    except FileExistsError:
        raise HighlightsError(f"{display_path(settings_path)} already exists: this is a workspace already") from None
    except OSError as exc:
        raise HighlightsError(
            f"{display_path(directory)}: cannot create the workspace: {exc.strerror or exc}"
        ) from None
    slug = next(rel for rel, _ in planned if rel.parts[0] == "issues").stem
    return NewWorkspace(directory=directory, written=[*written, settings_path], kept=kept, first_issue=slug)


#: The intro of a draft made from feeds: `check` warns while it is left as it is.
FEED_INTRO = "Write a few words on this issue here (Markdown)."


def next_issue_path(ws: Workspace, date: dt.date | None = None) -> tuple[Path, dt.date]:
    """Where the next issue goes, and its date: issues/YYYY-wWW.yaml for the ISO week of
    `date`, refused when that file exists; without a date, this week's, or when that
    file is there already (as right after `init`), the first later week that has none."""
    if date is None:
        date = dt.date.today()
        while (ws.issues_dir / issue_filename(date)).exists():
            date += dt.timedelta(days=7)
    path = ws.issues_dir / issue_filename(date)
    if path.exists():
        raise HighlightsError(_exists(path))
    return path, date


def _exists(path: Path) -> str:
    return f"{display_path(path)} already exists; edit it, or pass --date for another week"


def write_new_issue(path: Path, text: str) -> None:
    """Write a new issue file whole; never over one that exists."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file(path, text.encode("utf-8"), overwrite=False)
    except FileExistsError:
        raise HighlightsError(_exists(path)) from None
    except OSError as exc:
        raise HighlightsError(f"{display_path(path)}: cannot write: {exc.strerror or exc}") from None


def new_issue(ws: Workspace, date: dt.date | None = None) -> Path:
    """Create issues/YYYY-wWW.yaml for the ISO week of `date` from the skeleton and
    return its path; refuses when that file exists, so nothing an editor wrote is
    overwritten.

    Without a date, the next issue: this week's, or when that file is there already
    (as right after `init`), the first later week that has none, dated a week apart."""
    path, date = next_issue_path(ws, date)
    text = _fill("new-issue.yaml.tmpl", title=issue_title(ws.settings.name, date), date=date, slug=path.stem)
    write_new_issue(path, text)
    return path
