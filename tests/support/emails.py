"""Every kind of email the product sends, made the way it sends them: through the outbox
backend, which writes exactly the bytes the SMTP backend would send.

`EMAIL_KINDS` maps a kind's name to a function that makes one such message in a
workspace (the current folder, its settings as they are) and returns its .eml file. A
test parametrised over `EMAIL_KINDS` covers every kind: a new kind of email (a
correction notice, a preference email) is one more line there.
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

from highlightsmail.authoring.workspace import load_workspace
from support.archive import mark_sent

EXAMPLE = "2024-w02"
READER = "ada.lovelace@example.org"


def _only(folder: Path) -> Path:
    found = sorted(folder.glob("*.eml"))
    assert len(found) == 1, f"{folder}: {[p.name for p in found]}"
    return found[0]


def issue_email(root: Path) -> Path:
    """The example issue as a subscriber gets it from `send`."""
    from highlightsmail.sending.dispatch import send
    from highlightsmail.store import Store

    ws = load_workspace(root)
    with Store.open(ws) as store:
        store.add(READER, "Ada Lovelace")
    send(ws, ws.issue_path(EXAMPLE), skip_test_check=True)
    return _only(root / "outbox" / EXAMPLE)


def editors_email(root: Path) -> Path:
    """The example issue as an editor gets it from `send --test`."""
    from highlightsmail.sending.dispatch import send_test

    ws = load_workspace(root)
    send_test(ws, ws.issue_path(EXAMPLE), [ws.settings.editors[0]])
    return _only(root / "outbox" / EXAMPLE / "test")


def _signup(root: Path):
    from highlightsmail.subscribers.signup import Signup
    from highlightsmail.tokens import load_signer

    ws = load_workspace(root)
    return Signup(ws, load_signer(ws.secret_path))


def confirmation_email(root: Path) -> Path:
    """The confirmation email a reader gets after asking to join with the signup form."""
    from highlightsmail.subscribers.signup import read_form

    signup = _signup(root)
    try:
        sending = signup.ask(read_form({"email": READER, "name": "Ada Lovelace"}), None).sending
        assert sending is not None and sending.result(timeout=60)
    finally:
        signup.close()
    return _only(root / "outbox" / "_confirm")


def welcome_email(root: Path) -> Path:
    """The latest issue sent, as a reader gets it right after confirming."""
    import re

    mark_sent(root, EXAMPLE)
    link = read_eml(confirmation_email(root)).get_body(("plain",)).get_content()
    token = re.search(r"/confirm/(\S+)", link)[1]  # type: ignore[index]
    signup = _signup(root)
    try:
        state = signup.confirm(token, "192.0.2.1")
    finally:
        signup.close()  # waits for the welcome under way
    assert state is not None and state.welcome == EXAMPLE, state
    return _only(root / "outbox" / EXAMPLE)


CORRECTION = "The second item said the model routes to **eight** experts; it picks [two of eight](https://arxiv.org/abs/2401.04088) per token."


def correction_email(root: Path) -> Path:
    """A correction notice, as a reader who received the example issue gets it."""
    from highlightsmail.sending.corrections import send_correction, send_correction_test

    issue_email(root)
    ws = load_workspace(root)
    path = ws.issue_path(EXAMPLE)
    send_correction_test(ws, path, CORRECTION, [ws.settings.editors[0]])
    send_correction(ws, path, CORRECTION)
    return _only(root / "outbox" / f"{EXAMPLE}~correction-1")


EMAIL_KINDS: dict[str, Callable[[Path], Path]] = {
    "issue": issue_email,
    "test": editors_email,
    "welcome": welcome_email,
    "confirmation": confirmation_email,
    "correction": correction_email,
}


def read_eml(path: Path) -> EmailMessage:
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)  # type: ignore[return-value]


def html_of(path: Path) -> str:
    """The HTML part of a message, decoded."""
    return read_eml(path).get_body(("html",)).get_content()  # type: ignore[union-attr]
