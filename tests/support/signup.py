"""Shared by the signup's tests: turning the form on in a workspace, the confirmation
emails in the outbox, the link in them, and `highlights serve` as a real process."""

from __future__ import annotations

import email
import email.policy
import re
import time
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlsplit

from support.workspace import configure

CONFIRM_DIR = Path("outbox") / "_confirm"


def enable_signup(root: Path, **signup: object) -> None:
    """Turn the signup form on in the workspace's highlights.yaml (and set `signup`)."""
    configure(root, signup={"enabled": True, **signup})


def mails(folder: Path) -> list[Path]:
    """The messages in an outbox folder, in order."""
    return sorted(folder.glob("*.eml")) if folder.is_dir() else []


def wait_for_mails(folder: Path, count: int, timeout: float = 20.0) -> list[Path]:
    """The messages in `folder` once there are at least `count` (they are written by
    the server's mail threads, after the answer)."""
    deadline = time.monotonic() + timeout
    while True:
        found = mails(folder)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def read_mail(path: Path) -> EmailMessage:
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)  # type: ignore[return-value]


def confirm_link(msg: EmailMessage, base_url: str = "https://highlights.example.org") -> str:
    """The confirmation link's path (`/confirm/TOKEN`), the same in both parts."""
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()
    base = re.escape(base_url.rstrip("/"))
    in_html = set(re.findall(rf'href="({base}/confirm/[^"]+)"', html))
    in_text = set(re.findall(rf"({base}/confirm/\S+)", text))
    assert len(in_html) == 1 and in_html == in_text, (in_html, in_text)
    return urlsplit(in_html.pop()).path
