"""The Issue model, and loading an issue file into it with errors that say where."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from highlightsmail.authoring.fields import HeaderText, HttpUrl, Markdown, SingleLine
from highlightsmail.authoring.sourcemap import SourceMap
from highlightsmail.authoring.yamlfile import load_model_located
from highlightsmail.errors import Problem, ValidationFailed, display_path
from highlightsmail.text import header_problem


def slug_problem(slug: str) -> str | None:
    """Why a file named `<slug>.yaml` cannot be an issue (None when it can). The slug
    goes into a mail header (so bounce mail finds its issue), an outbox folder and the
    commands an editor is told to type; names starting with `_` are the tool's own
    (`outbox/_confirm/`)."""
    problem = header_problem(slug)
    if problem is None and slug.startswith("_"):
        problem = "must not start with '_', which marks the tool's own mail"
    if problem is None and "~correction-" in slug:
        problem = "holds '~correction-', which names the corrections of a sent issue"
    if problem is None:
        return None
    return f"the file name {slug + '.yaml'!r} cannot name an issue: it {problem}"


class _Strict(BaseModel):
    # Unknown keys are errors: a typo must not silently drop content.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Link(_Strict):
    label: SingleLine = Field(max_length=80)
    url: HttpUrl


class Image(_Strict):
    url: HttpUrl
    alt: SingleLine = Field(max_length=300)


class Item(_Strict):
    title: SingleLine = Field(max_length=300)
    summary: Markdown
    links: list[Link] = Field(default_factory=list, max_length=10)
    image: Image | None = None
    # A tag is a short label, as a link's is: a long one would break the line of tags.
    tags: list[Annotated[SingleLine, Field(max_length=80)]] = Field(default_factory=list, max_length=20)


class Issue(_Strict):
    """One newsletter issue as written in issues/YYYY-wWW.yaml."""

    # The title is the subject when there is none; the preheader is the inbox preview.
    title: HeaderText = Field(max_length=200)
    date: dt.date
    subject: HeaderText | None = Field(default=None, max_length=998)
    preheader: HeaderText | None = Field(default=None, max_length=150)
    intro: Markdown | None = None
    items: list[Item] = Field(min_length=1, max_length=50)
    outro: Markdown | None = None
    # Topic ids (settings `topics:`): the issue goes to active subscribers in any of them.
    audience: list[Annotated[SingleLine, Field(max_length=40)]] | None = Field(
        default=None, min_length=1, max_length=50
    )

    # Not in the file: where it came from. The slug is the file name without .yaml.
    slug: str = Field(default="", exclude=True)
    source: Path | None = Field(default=None, exclude=True)
    # Where each value is in the file, for lint to name places without reading it again.
    _source_map: SourceMap | None = PrivateAttr(default=None)

    @property
    def effective_subject(self) -> str:
        """The subject line: `subject`, or the title when there is none."""
        return self.subject or self.title

    @property
    def source_map(self) -> SourceMap | None:
        """Where each value is in the issue file (None for an issue made in code, or
        one whose `source` was taken away)."""
        return self._source_map if self.source is not None else None


def load_issue(path: Path) -> Issue:
    """Read and validate an issue file; raise ValidationFailed with every problem at once.
    The issue keeps the place of each value in the file (`source_map`)."""
    bad_name = slug_problem(path.stem)
    named = [Problem(display_path(path), 1, 1, bad_name)] if bad_name else []
    try:
        loaded, places = load_model_located(path, Issue)
    except ValidationFailed as exc:
        raise ValidationFailed(named + exc.problems) from None
    if named:
        raise ValidationFailed(named)
    issue = loaded.model_copy(update={"slug": path.stem, "source": path})
    issue._source_map = places
    return issue
