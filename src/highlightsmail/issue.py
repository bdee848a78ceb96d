"""The Issue model, and loading an issue file into it with errors that say where."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from highlightsmail.fields import HeaderText, HttpUrl, Markdown, SingleLine


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
    tags: list[SingleLine] = Field(default_factory=list, max_length=20)


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

    # Not in the file: where it came from. The slug is the file name without .yaml.
    slug: str = Field(default="", exclude=True)
    source: Path | None = Field(default=None, exclude=True)

    @property
    def effective_subject(self) -> str:
        """The subject line: `subject`, or the title when there is none."""
        return self.subject or self.title


def load_issue(path: Path) -> Issue:
    """Read and validate an issue file; raise ValidationFailed with every problem at once."""
    from highlightsmail.yamlfile import load_model

    issue = load_model(path, Issue)
    return issue.model_copy(update={"slug": path.stem, "source": path})
