"""What rendering hands to mail: an issue rendered once for every recipient.

The HTML and the text carry `UNSUBSCRIBE_PLACEHOLDER` where each recipient's own link
goes; mail puts it in (`personalize`), or SendGrid does by substitution. Standard
library only, so that building and sending a message never load the renderer.
"""

from __future__ import annotations

import html as html_lib
from dataclasses import dataclass

__all__ = ["PREFERENCES_PLACEHOLDER", "UNSUBSCRIBE_PLACEHOLDER", "RenderedIssue"]

#: Stands for the recipient's unsubscribe URL in both parts until `personalize` (or a
#: SendGrid substitution) puts the real one in. Plain ASCII without characters that
#: HTML, URL or CSS processing would touch, so it survives MJML and premailer as is.
UNSUBSCRIBE_PLACEHOLDER = "-highlights_unsubscribe_url-"
#: Stands for the recipient's preference page ("Manage preferences"), the same way.
PREFERENCES_PLACEHOLDER = "-highlights_preferences_url-"


@dataclass(frozen=True)
class RenderedIssue:
    """An issue rendered for everyone; the unsubscribe URL is still a placeholder."""

    slug: str
    subject: str
    preheader: str
    html: str
    text: str

    def personalize(self, unsubscribe_url: str, preferences_url: str = "") -> tuple[str, str]:
        """(html, text) with this recipient's unsubscribe URL and preference page in place
        of the placeholders (a message without a preference page keeps neither)."""
        html = self.html.replace(UNSUBSCRIBE_PLACEHOLDER, html_lib.escape(unsubscribe_url, quote=True))
        text = self.text.replace(UNSUBSCRIBE_PLACEHOLDER, unsubscribe_url)
        if PREFERENCES_PLACEHOLDER in html or PREFERENCES_PLACEHOLDER in text:
            html = html.replace(PREFERENCES_PLACEHOLDER, html_lib.escape(preferences_url, quote=True))
            text = text.replace(PREFERENCES_PLACEHOLDER, preferences_url)
        return html, text
