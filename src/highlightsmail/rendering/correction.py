"""A correction notice: a short note in the newsletter's style, mailed after an issue was
sent to the readers who received it. Rendered once, like an issue, from its own pair of
templates (`correction.mjml.j2`, `correction.txt.j2`: the workspace's, else the
package's); its unsubscribe link is the placeholder each reader's own link replaces."""

from __future__ import annotations

from typing import TYPE_CHECKING

from markupsafe import Markup

from highlightsmail.errors import HighlightsError
from highlightsmail.rendering.render import issue_context, markdown_to_text, render_email, render_markdown
from highlightsmail.rendering.rendered import UNSUBSCRIBE_PLACEHOLDER, RenderedIssue

if TYPE_CHECKING:
    from highlightsmail.authoring.issue import Issue
    from highlightsmail.authoring.workspace import Workspace

__all__ = ["CORRECTION_HTML_TEMPLATE", "CORRECTION_TEXT_TEMPLATE", "MAX_CORRECTION", "render_correction"]

CORRECTION_HTML_TEMPLATE = "correction.mjml.j2"
CORRECTION_TEXT_TEMPLATE = "correction.txt.j2"
#: A correction is a short note; the issue's page shows the whole change.
MAX_CORRECTION = 4000


def correction_subject(issue: Issue) -> str:
    return f"Correction: {issue.effective_subject}"


def render_correction(ws: Workspace, issue: Issue, text: str, slug: str) -> RenderedIssue:
    """The notice of a correction to `issue` saying `text` (Markdown), as the email
    named `slug` (its dispatch's name in the ledger)."""
    text = text.strip()
    if not text:
        raise HighlightsError("the correction is empty: say what was wrong and what is right")
    if len(text) > MAX_CORRECTION:
        raise HighlightsError(
            f"the correction is {len(text)} characters long; keep it under {MAX_CORRECTION} "
            "(the issue's page shows the whole change)"
        )
    context = issue_context(issue, ws)
    subject = correction_subject(issue)
    context.update(
        subject=subject,
        correction_html=Markup(render_markdown(text)),
        correction_text=markdown_to_text(text),
    )
    html, plain = render_email(ws, CORRECTION_HTML_TEMPLATE, CORRECTION_TEXT_TEMPLATE, context)
    if UNSUBSCRIBE_PLACEHOLDER not in html or UNSUBSCRIBE_PLACEHOLDER not in plain:
        raise HighlightsError(
            f"templates/{CORRECTION_HTML_TEMPLATE} and {CORRECTION_TEXT_TEMPLATE} must both show "
            "{{ unsubscribe_url }}: every email to subscribers carries it"
        )
    preheader = f"A correction to {issue.title}"
    return RenderedIssue(slug=slug, subject=subject, preheader=preheader, html=html, text=plain)
