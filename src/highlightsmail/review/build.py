"""`highlights build`: the rendered issue as files, to open in a browser or a mail client.

OUT/<slug>.html and OUT/<slug>.txt are the two parts of the email, and OUT/<slug>.eml is
a complete sample message to a placeholder reader. All three carry a sample unsubscribe
URL (BASE/u/sample) in place of the per-recipient one, so the files work as they are and
no signing secret is needed (or created) to build.

Imports stay lean on purpose: the whole command is meant to take under a second.
"""

from __future__ import annotations

import email.policy
from pathlib import Path

from highlightsmail.authoring.issue import load_issue
from highlightsmail.authoring.workspace import Workspace
from highlightsmail.errors import HighlightsError, display_path
from highlightsmail.files import write_files
from highlightsmail.mail.message import Recipient, build_message, recipient_links
from highlightsmail.rendering.render import render_issue

SAMPLE_TOKEN = "sample"
SAMPLE_READER = ("reader@example.org", "Reader")


class _SampleSigner:
    """Stands in for tokens.Signer: every link gets the token `sample`, which the web
    endpoint rejects as not valid, so a built file can unsubscribe nobody."""

    def make(self, subscriber_id: int, purpose: str = "unsubscribe") -> str:
        return SAMPLE_TOKEN

    def make_preferences(self, subscriber_id: int, made: int) -> str:
        return SAMPLE_TOKEN


def build_command(ws: Workspace, issue_path: Path, out_dir: Path) -> list[Path]:
    """Render the issue once and write OUT/<slug>.html, .txt and .eml; returns their paths.

    `out_dir` is taken relative to the current directory, as typed, and created.
    """
    issue = load_issue(issue_path)
    rendered = render_issue(issue, ws)

    # The same header logic as a real send, with the sample token.
    links = recipient_links(ws.settings, _SampleSigner(), 0)  # type: ignore[arg-type]
    html, text = rendered.personalize(links.unsubscribe_url, links.preferences_url)
    reader = Recipient(email=SAMPLE_READER[0], name=SAMPLE_READER[1])
    message = build_message(rendered, ws.settings, reader, links)
    # SMTP policy: CRLF line ends, as a mail client expects in a .eml file.
    eml = message.as_bytes(policy=email.policy.SMTP)

    out_dir = Path(out_dir)
    if (out_dir.exists() or out_dir.is_symlink()) and not out_dir.is_dir():  # a file, or a broken link
        raise HighlightsError(f"{display_path(out_dir)}: exists and is not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise HighlightsError(f"cannot create {display_path(out_dir)}: {exc.strerror or exc}") from None
    files = {
        out_dir / f"{rendered.slug}.html": html.encode("utf-8"),
        out_dir / f"{rendered.slug}.txt": text.encode("utf-8"),
        out_dir / f"{rendered.slug}.eml": eml,
    }
    try:
        # All three or none: a full disk leaves the previous build, never a mix.
        return write_files(files)
    except OSError as exc:
        raise HighlightsError(f"cannot write {display_path(exc.filename or out_dir)}: {exc.strerror or exc}") from None
