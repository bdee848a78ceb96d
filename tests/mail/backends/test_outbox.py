"""The outbox backend: one .eml per recipient, test sends apart, nothing ever replaced."""

from __future__ import annotations

import email
import os
import stat
import subprocess
import sys
from email.policy import default as default_policy
from pathlib import Path

import pytest

from highlightsmail.mail.backends import get_backend
from highlightsmail.mail.backends.base import DeliveryError
from highlightsmail.mail.backends.outbox import OutboxBackend
from highlightsmail.mail.message import Recipient
from support.delivery import check_message, example_issue, make_batch, make_workspace, recipients


def _parse(path: Path) -> email.message.EmailMessage:
    return email.message_from_bytes(path.read_bytes(), policy=default_policy)


def test_one_file_per_recipient_with_every_header(workspace: Path) -> None:
    ws = make_workspace(workspace)
    backend = get_backend(ws)
    assert isinstance(backend, OutboxBackend)
    batch = make_batch(ws, recipients(7))
    backend.open()
    result = backend.send_batch(batch)
    backend.close()

    assert sorted(result.sent) == [e.key for e in batch.envelopes] and result.failed == {}
    folder = workspace / "outbox" / "2024-w02"
    files = sorted(p.name for p in folder.iterdir())
    assert files == sorted(f"{e.key:06d}-{e.recipient.email}.eml" for e in batch.envelopes)
    for env in batch.envelopes:
        raw = (folder / f"{env.key:06d}-{env.recipient.email}.eml").read_bytes()
        # CRLF throughout, as on the wire; lines within RFC 5322's limit.
        assert b"\n" not in raw.replace(b"\r\n", b"")
        assert max(len(line) for line in raw.split(b"\r\n")) <= 998
        check_message(_parse(folder / f"{env.key:06d}-{env.recipient.email}.eml"), env, ws.settings)


def test_no_secret_in_the_files(workspace: Path) -> None:
    ws = make_workspace(workspace)
    get_backend(ws).send_batch(make_batch(ws, recipients(3)))
    secret = os.environ["HIGHLIGHTS_SECRET"].encode()
    for path in (workspace / "outbox").rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes()


def test_test_sends_go_under_test(workspace: Path) -> None:
    ws = make_workspace(workspace)
    editors = [Recipient(email="ada@example.org"), Recipient(email="grace@example.org", name="Grace")]
    batch = make_batch(ws, editors, test=True)
    result = get_backend(ws, test=True).send_batch(batch)

    assert result.sent == [1, 2]
    folder = workspace / "outbox" / "2024-w02" / "test"
    assert sorted(p.name for p in folder.iterdir()) == ["000001-ada@example.org.eml", "000002-grace@example.org.eml"]
    assert not [p for p in (workspace / "outbox" / "2024-w02").iterdir() if p.is_file()]
    for env in batch.envelopes:
        msg = _parse(folder / f"{env.key:06d}-{env.recipient.email}.eml")
        check_message(msg, env, ws.settings, test=True)
        assert msg["Subject"].startswith("[TEST] ")
        assert "/u/t" in msg["List-Unsubscribe"]  # a test token: the page changes nothing


def test_a_second_copy_never_replaces_the_first(workspace: Path) -> None:
    ws = make_workspace(workspace)
    backend = get_backend(ws)
    people = recipients(3)
    backend.send_batch(make_batch(ws, people))
    folder = workspace / "outbox" / "2024-w02"
    first = {p.name: p.read_bytes() for p in folder.iterdir()}

    # The same recipients again (a duplicate send), and again: both stay visible.
    backend.send_batch(make_batch(ws, people, number=2))
    get_backend(ws).send_batch(make_batch(ws, people[:1], number=3))

    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(
        [f"{p.subscriber_id:06d}-{p.email}.eml" for p in people]
        + [f"{p.subscriber_id:06d}-{p.email}.2.eml" for p in people]
        + [f"{people[0].subscriber_id:06d}-{people[0].email}.3.eml"]
    )
    for name, data in first.items():
        assert (folder / name).read_bytes() == data
    # A key whose address changed is still a second copy for that key.
    moved = Recipient(email="new-address@example.org", subscriber_id=people[1].subscriber_id)
    backend.send_batch(make_batch(ws, [moved], number=4))
    # (key 2 has two files already: this is its third)
    assert (folder / f"{moved.subscriber_id:06d}-new-address@example.org.3.eml").is_file()


def test_files_written_or_removed_by_another_run_between_batches_are_counted(workspace: Path) -> None:
    """The backend keeps each key's count between batches, and reads the folder again
    when someone else changed it: a copy another run wrote still makes the next one
    `.2`, and a folder emptied meanwhile starts again at the plain name."""
    ws = make_workspace(workspace)
    backend = get_backend(ws)
    people = recipients(2)
    folder = workspace / "outbox" / "2024-w02"
    backend.send_batch(make_batch(ws, people[:1]))
    get_backend(ws).send_batch(make_batch(ws, people[1:]))  # another run, same folder
    backend.send_batch(make_batch(ws, people[1:], number=2))
    assert (folder / f"{people[1].subscriber_id:06d}-{people[1].email}.2.eml").is_file()
    for path in folder.iterdir():
        path.unlink()
    backend.send_batch(make_batch(ws, people, number=3))
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{p.subscriber_id:06d}-{p.email}.eml" for p in people)


def test_no_temporary_files_left(workspace: Path) -> None:
    ws = make_workspace(workspace)
    get_backend(ws).send_batch(make_batch(ws, recipients(5)))
    leftovers = [p.name for p in (workspace / "outbox").rglob(".*")]
    assert leftovers == []


def test_outbox_dir_from_settings_and_odd_addresses(workspace: Path) -> None:
    ws = make_workspace(workspace, delivery={"outbox": {"dir": "mail/out"}})
    person = Recipient(email="o'brien+news@example.org", name="Pat O'Brien", subscriber_id=1234567)
    get_backend(ws).send_batch(make_batch(ws, [person]))
    files = list((workspace / "mail" / "out" / "2024-w02").iterdir())
    assert [p.name for p in files] == ["1234567-o_brien+news@example.org.eml"]
    assert _parse(files[0])["To"].addresses[0].addr_spec == "o'brien+news@example.org"


def test_unwritable_folder_is_a_clear_error(workspace: Path) -> None:
    ws = make_workspace(workspace)
    (workspace / "outbox").write_text("a file where the folder should be")
    with pytest.raises(DeliveryError, match=r"outbox: cannot write to outbox"):
        get_backend(ws).send_batch(make_batch(ws, recipients(1)))


def test_a_slug_cannot_leave_the_outbox(workspace: Path) -> None:
    ws = make_workspace(workspace)
    batch = make_batch(ws, recipients(1))
    bad = batch.__class__(**{**batch.__dict__, "slug": ".."})
    with pytest.raises(DeliveryError, match="cannot be a folder name"):
        get_backend(ws).send_batch(bad)
    assert example_issue().slug == "2024-w02"


def test_files_are_for_their_owner_only(workspace: Path) -> None:
    """Each file holds a working unsubscribe link: 0600, whatever the umask allows."""
    ws = make_workspace(workspace)
    old = os.umask(0o022)
    try:
        get_backend(ws).send_batch(make_batch(ws, recipients(3)))
        get_backend(ws, test=True).send_batch(make_batch(ws, [Recipient("ada@example.org")], test=True))
    finally:
        os.umask(old)
    files = list((workspace / "outbox").rglob("*.eml"))
    assert len(files) == 4
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o600}


def test_temporary_files_of_a_killed_run_are_removed_by_the_next(workspace: Path) -> None:
    """kill -9 mid-write leaves `.<name>.<pid>-<random>.tmp`: the next run removes those
    whose process is gone, and nothing else."""
    ws = make_workspace(workspace)
    folder = workspace / "outbox" / "2024-w02"
    folder.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = [
        folder / f".000001-reader1@example.org.{dead_pid}-0123abcd.tmp",
        folder / f".000007-x.{dead_pid}-89abcdef.tmp",
    ]
    alive = folder / f".000002-reader2@example.org.{os.getpid()}-0123abcd.tmp"  # a writer still at work
    others = [folder / ".notes.tmp", folder / "keep.tmp", folder / f".000003-y.{dead_pid}-xyz.tmp"]
    for path in [*stale, alive, *others]:
        path.write_bytes(b"partial message")

    result = get_backend(ws).send_batch(make_batch(ws, recipients(2)))

    assert result.sent == [1, 2]
    assert not any(p.exists() for p in stale)
    assert alive.exists() and all(p.exists() for p in others)
    assert sorted(p.name for p in folder.glob("*.eml")) == [
        "000001-reader1@example.org.eml",
        "000002-reader2@example.org.eml",
    ]


# The audit's strings: on Python 3.11.7 the email package decodes these encoded words
# and writes the CR LF they hold into the header block (a Bcc header, or the end of it).
AUDIT = {
    "bcc": "=?utf-8?q?Hi=0D=0ABcc:_victim@example.net?=",
    "blank line": "=?utf-8?q?Hi=0D=0A=0D=0ABcc:_victim@example.net?=",
}
HEADERS = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "X-Highlights-Issue",
    "List-Unsubscribe",
    "List-Id",
    "List-Unsubscribe-Post",
    "MIME-Version",
    "Content-Type",
]


@pytest.mark.parametrize("name", list(AUDIT.values()), ids=list(AUDIT))
def test_a_stored_name_that_could_break_a_header_is_left_out(workspace: Path, name: str) -> None:
    """An old subscriber row whose name holds an encoded word (or a line break) gets the
    message with the bare address in To, and exactly the usual headers."""
    ws = make_workspace(workspace)
    people = [
        Recipient("reader-a@example.org", name, 1),
        Recipient("line-break@example.org", "Ada\r\nBcc: victim@example.net", 2),
        Recipient("fine@example.org", "Zoë Ångström", 3),
    ]
    batch = make_batch(ws, people)
    result = get_backend(ws).send_batch(batch)
    assert result.sent == [1, 2, 3]
    folder = workspace / "outbox" / "2024-w02"
    for env, want_to in zip(batch.envelopes, ["reader-a@example.org", "line-break@example.org", None], strict=True):
        raw = (folder / f"{env.key:06d}-{env.recipient.email}.eml").read_bytes()
        head = raw.split(b"\r\n\r\n", 1)[0]
        assert b"Bcc" not in head and b"victim" not in raw
        msg = email.message_from_bytes(raw, policy=default_policy)
        assert list(msg.keys()) == HEADERS
        assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
        if want_to is None:
            check_message(msg, env, ws.settings)  # a good name is kept
        else:
            assert str(msg["To"]) == want_to


@pytest.mark.parametrize("text", list(AUDIT.values()), ids=list(AUDIT))
@pytest.mark.parametrize("field", ["subject", "name", "from", "reply_to", "list_id", "base_url"])
def test_header_text_that_got_past_validation_stops_the_batch(workspace: Path, field: str, text: str) -> None:
    """Settings or an issue built without validation (model_copy, a test double, a bug):
    the builder refuses, naming the field, and writes nothing."""
    from dataclasses import replace

    from highlightsmail.authoring.workspace import Workspace
    from highlightsmail.errors import HighlightsError

    ws = make_workspace(workspace)
    rendered = example_issue()
    if field == "subject":
        rendered = replace(rendered, subject=text)
    else:
        value = f"News {text} <news@example.org>" if field in ("from", "reply_to") else text
        ws = Workspace(root=ws.root, settings=ws.settings.model_copy(update={field.replace("from", "from_"): value}))
    with pytest.raises(HighlightsError, match=f"{field}: must not contain an RFC 2047 encoded word"):
        get_backend(ws).send_batch(make_batch(ws, recipients(2), rendered=rendered))
    assert list((workspace / "outbox").rglob("*.eml")) == []


def test_a_sender_domain_outside_ascii_goes_out_in_its_idna_form(workspace: Path) -> None:
    """`from: Ada Lovelace <ada@bücher.example>` is a valid setting; its message was a
    UnicodeEncodeError traceback. Headers carry the domain as IDNA, the same address."""
    ws = make_workspace(workspace, **{"from": "Ada Lovelace <ada@bücher.example>", "reply_to": "eds@bücher.example"})
    batch = make_batch(ws, recipients(2))
    result = get_backend(ws).send_batch(batch)
    assert sorted(result.sent) == [e.key for e in batch.envelopes]
    for path in sorted((workspace / "outbox" / "2024-w02").glob("*.eml")):
        raw = path.read_bytes()
        head = raw.split(b"\r\n\r\n", 1)[0]
        assert head.isascii(), "every header of these recipients is ASCII"
        msg = _parse(path)
        assert str(msg["From"]) == "Ada Lovelace <ada@xn--bcher-kva.example>"
        assert str(msg["Reply-To"]) == "eds@xn--bcher-kva.example"
        assert str(msg["Message-ID"]).endswith("@xn--bcher-kva.example>")
