"""The SMTP backend against a real aiosmtpd server on loopback, and the fast message
builder it shares with the outbox, checked against `build_message`."""

from __future__ import annotations

import dataclasses
import email
import re
from email.policy import SMTP as SMTP_POLICY
from email.policy import default as default_policy
from pathlib import Path

import pytest

from highlightsmail.mail.backends import get_backend
from highlightsmail.mail.backends.base import DeliveryError
from highlightsmail.mail.backends.smtp import ENV_CAFILE, ENV_PASSWORD, SmtpBackend
from highlightsmail.mail.message import Recipient, build_message, recipient_links
from highlightsmail.mail.mime import MessageTemplate, Outgoing
from highlightsmail.rendering.rendered import UNSUBSCRIBE_PLACEHOLDER, RenderedIssue
from support.delivery import SIGNER, check_message, make_batch, make_workspace, recipients
from support.smtp import PasswordCheck, SinkHandler, make_tls, smtp_server

PASSWORD = "correct horse battery staple"


def _smtp_ws(root: Path, port: int, **smtp) -> object:
    config = {"host": "127.0.0.1", "port": port, "security": "none", "timeout": 5, **smtp}
    return make_workspace(root, delivery={"backend": "smtp", "smtp": config})


def _send(ws, batch) -> tuple[SmtpBackend, object]:
    backend = get_backend(ws)
    assert isinstance(backend, SmtpBackend)
    backend.open()
    try:
        return backend, backend.send_batch(batch)
    finally:
        backend.close()


def _check_all_received(handler: SinkHandler, batch, ws) -> None:
    by_rcpt = {r.rcpt_tos[0]: r for r in handler.received}
    assert len(handler.received) == len(batch.envelopes) == len(by_rcpt)
    for env in batch.envelopes:
        got = by_rcpt[env.recipient.email]
        assert got.mail_from == "highlights@example.org"  # the bare address of From
        assert got.rcpt_tos == [env.recipient.email]
        check_message(got.message(), env, ws.settings, test=batch.test)


# ---------------------------------------------------------------------------- delivery


def test_plain_delivery_on_one_connection(workspace: Path) -> None:
    handler = SinkHandler()
    with smtp_server(handler) as server:
        ws = _smtp_ws(workspace, server.port)
        batch = make_batch(ws, recipients(25))
        backend, result = _send(ws, batch)
    assert result.sent == [e.key for e in batch.envelopes] and result.failed == {}
    _check_all_received(handler, batch, ws)
    assert handler.sessions == 1 and backend.connections == 1


@pytest.mark.parametrize("has_8bitmime", [True, False], ids=["8bitmime", "no-8bitmime"])
def test_8bit_bodies_only_where_the_server_takes_them(workspace: Path, has_8bitmime: bool) -> None:
    handler = SinkHandler(no_8bitmime=not has_8bitmime)
    with smtp_server(handler) as server:
        ws = _smtp_ws(workspace, server.port)
        batch = make_batch(ws, recipients(3))
        _, result = _send(ws, batch)
    assert len(result.sent) == 3
    _check_all_received(handler, batch, ws)
    for got in handler.received:
        html = got.message().get_body(("html",))
        if has_8bitmime:  # the example's HTML is not ASCII: 8bit, declared (RFC 6152)
            assert "BODY=8BITMIME" in got.mail_options and html["Content-Transfer-Encoding"] == "8bit"
        else:
            assert not [o for o in got.mail_options if o.startswith("BODY")]
            assert html["Content-Transfer-Encoding"] == "quoted-printable"
            assert got.data.isascii()


def test_test_send_has_test_subject(workspace: Path) -> None:
    handler = SinkHandler()
    with smtp_server(handler) as server:
        ws = _smtp_ws(workspace, server.port)
        batch = make_batch(ws, [Recipient("ada@example.org"), Recipient("grace@example.org", "Grace")], test=True)
        _, result = _send(ws, batch)
    assert result.sent == [1, 2]
    _check_all_received(handler, batch, ws)


def test_starttls_with_login(workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tls = make_tls(tmp_path)
    handler = SinkHandler()
    monkeypatch.setenv(ENV_CAFILE, str(tls.ca_file))
    monkeypatch.setenv(ENV_PASSWORD, PASSWORD)
    with smtp_server(
        handler,
        tls_context=tls.server_context,
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        authenticator=PasswordCheck("newsletter", PASSWORD, handler),
    ) as server:
        ws = _smtp_ws(workspace, server.port, security="starttls", username="newsletter")
        batch = make_batch(ws, recipients(5))
        _, result = _send(ws, batch)
    assert result.sent == [e.key for e in batch.envelopes]
    assert handler.logins and handler.logins[0].endswith(":newsletter")
    _check_all_received(handler, batch, ws)


def test_implicit_tls(workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tls = make_tls(tmp_path)
    handler = SinkHandler()
    monkeypatch.setenv(ENV_CAFILE, str(tls.ca_file))
    with smtp_server(handler, ssl_context=tls.server_context) as server:
        ws = _smtp_ws(workspace, server.port, security="tls")
        batch = make_batch(ws, recipients(3))
        _, result = _send(ws, batch)
    assert result.sent == [e.key for e in batch.envelopes]
    _check_all_received(handler, batch, ws)


def test_untrusted_certificate_is_refused_with_a_hint(workspace: Path, tmp_path: Path) -> None:
    tls = make_tls(tmp_path)
    handler = SinkHandler()
    with smtp_server(handler, tls_context=tls.server_context, require_starttls=True) as server:
        ws = _smtp_ws(workspace, server.port, security="starttls")
        backend = get_backend(ws)
        with pytest.raises(DeliveryError, match=f"certificate is not trusted.*{ENV_CAFILE}"):
            backend.open()
    assert handler.received == []


def test_wrong_password_is_refused_and_not_shown(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tls = make_tls(tmp_path)
    handler = SinkHandler()
    monkeypatch.setenv(ENV_CAFILE, str(tls.ca_file))
    monkeypatch.setenv(ENV_PASSWORD, "not the password")
    with smtp_server(
        handler,
        tls_context=tls.server_context,
        auth_required=True,
        authenticator=PasswordCheck("newsletter", PASSWORD, handler),
    ) as server:
        ws = _smtp_ws(workspace, server.port, security="starttls", username="newsletter")
        batch = make_batch(ws, recipients(3))
        with pytest.raises(DeliveryError, match="refused the login of 'newsletter'") as info:
            get_backend(ws).open()
        assert "not the password" not in info.value.message
        # Mid-batch (after a reconnect) the same refusal fails the batch's recipients.
        result = SmtpBackend(ws).send_batch(batch)
    assert result.sent == [] and set(result.failed) == {e.key for e in batch.envelopes}
    assert all("refused the login" in why for why in result.failed.values())
    assert handler.received == []


def test_missing_password_is_a_clear_error(workspace: Path) -> None:
    ws = _smtp_ws(workspace, 2525, username="newsletter")
    with pytest.raises(DeliveryError, match=f"set {ENV_PASSWORD}"):
        get_backend(ws).open()


def test_no_password_over_a_plain_connection_to_another_host(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_PASSWORD, PASSWORD)
    ws = make_workspace(
        workspace, delivery={"smtp": {"host": "mail.example.org", "security": "none", "username": "newsletter"}}
    )
    with pytest.raises(DeliveryError, match=r"refusing to send the password .* unencrypted") as info:
        SmtpBackend(ws).open()
    assert PASSWORD not in info.value.message


def test_starttls_required_but_not_offered(workspace: Path) -> None:
    with smtp_server(SinkHandler()) as server:
        ws = _smtp_ws(workspace, server.port, security="starttls")
        with pytest.raises(DeliveryError, match="does not offer STARTTLS"):
            get_backend(ws).open()


# ---------------------------------------------------------------------------- faults


def test_a_connection_lost_after_the_whole_message_leaves_it_in_doubt_not_sent_again(workspace: Path) -> None:
    """The server closes the connection after the end of DATA (it may have kept the
    message): that recipient is in doubt at once, with one DATA seen, and the batch goes
    on over a new connection."""
    handler = SinkHandler(drop_at={4, 9})
    with smtp_server(handler) as server:
        ws = _smtp_ws(workspace, server.port)
        batch = make_batch(ws, recipients(12))
        backend, result = _send(ws, batch)
    keys = [e.key for e in batch.envelopes]
    assert sorted(result.in_doubt) == [keys[3], keys[8]] and result.failed == {}
    assert all("after the whole message was sent" in why for why in result.in_doubt.values())
    assert result.sent == [k for k in keys if k not in (keys[3], keys[8])]
    assert handler.data_commands == 12  # one end of DATA per recipient: nothing sent twice
    assert backend.connections == 3 and handler.sessions == 3


def test_a_connection_lost_before_data_ends_is_tried_again(workspace: Path) -> None:
    """A connection cut at RCPT: the message was never handed over, so it is sent again
    on a new connection, and everyone gets exactly one."""
    handler = SinkHandler(drop_at_rcpt={2, 5})
    with smtp_server(handler) as server:
        ws = _smtp_ws(workspace, server.port)
        batch = make_batch(ws, recipients(6))
        backend, result = _send(ws, batch)
    assert result.sent == [e.key for e in batch.envelopes] and result.in_doubt == {} and result.failed == {}
    _check_all_received(handler, batch, ws)  # each exactly once
    assert backend.connections == 3


def test_421_closes_and_reconnects(workspace: Path) -> None:
    people = recipients(4)
    handler = SinkHandler(data_replies={people[1].email: ["421 4.7.0 too many messages on this connection"]})
    with smtp_server(handler) as server:
        ws = _smtp_ws(workspace, server.port)
        batch = make_batch(ws, people)
        backend, result = _send(ws, batch)
    assert result.sent == [p.subscriber_id for p in people]
    _check_all_received(handler, batch, ws)
    assert backend.connections == 2


def test_4xx_is_retried_then_delivered(workspace: Path) -> None:
    people = recipients(5)
    handler = SinkHandler(
        rcpt_replies={people[1].email: ["450 4.2.1 mailbox busy", "451 4.3.0 try again"]},
        data_replies={people[3].email: ["452 4.3.1 insufficient storage"]},
    )
    with smtp_server(handler) as server:
        ws = _smtp_ws(workspace, server.port)
        batch = make_batch(ws, people)
        backend, result = _send(ws, batch)
    assert result.sent == [p.subscriber_id for p in people] and result.failed == {}
    _check_all_received(handler, batch, ws)
    assert backend.connections == 1  # a deferral is not a reason to reconnect


def test_each_message_has_its_derived_message_id_and_a_retry_keeps_it(workspace: Path) -> None:
    """The Message-ID is <TOKEN@domain> from the envelope's message token, the same on
    every attempt (a deferral after DATA, a dropped connection); without VERP the
    return address is the From address."""
    people = recipients(3)
    handler = SinkHandler(
        data_replies={people[0].email: ["451 4.3.0 try again"]},
        drop_at_rcpt={3},  # the second message: cut at its RCPT, sent again on a new connection
    )
    with smtp_server(handler) as server:
        ws = _smtp_ws(workspace, server.port)
        batch = make_batch(ws, people)
        tokens = {e.recipient.email: SIGNER.make_message(batch.slug, "abcdefgh", e.key) for e in batch.envelopes}
        batch = dataclasses.replace(
            batch, envelopes=[e._replace(token=tokens[e.recipient.email]) for e in batch.envelopes]
        )
        _backend, result = _send(ws, batch)
    assert result.sent == [p.subscriber_id for p in people]
    seen: dict[str, set[str]] = {}
    for rcpts, message_id in handler.attempts:
        seen.setdefault(rcpts[0], set()).add(message_id)
    assert seen == {address: {f"<{token}@example.org>"} for address, token in tokens.items()}
    assert [rcpts[0] for rcpts, _ in handler.attempts].count(people[0].email) == 2
    assert {r.mail_from for r in handler.received} == {"highlights@example.org"}


def test_verp_puts_the_message_token_in_the_return_address(workspace: Path) -> None:
    """delivery.bounces.verp: MAIL FROM is bounces+TOKEN@domain (the domain in ASCII),
    within RFC 5321's 64 octets before the @; a test send (no token) keeps From."""
    handler = SinkHandler()
    with smtp_server(handler) as server:
        ws = make_workspace(
            workspace,
            delivery={
                "backend": "smtp",
                "smtp": {"host": "127.0.0.1", "port": server.port, "security": "none", "timeout": 5},
                "bounces": {"verp": "list-bounces@bücher.example"},
            },
        )
        batch = make_batch(ws, recipients(2, start=2**63 - 2))  # the longest ids there are
        batch = dataclasses.replace(
            batch,
            envelopes=[e._replace(token=SIGNER.make_message(batch.slug, "abcdefgh", e.key)) for e in batch.envelopes],
        )
        _send(ws, batch)
        _send(ws, make_batch(ws, recipients(1), test=True))
    real, test = handler.received[:2], handler.received[2]
    for got, env in zip(real, batch.envelopes, strict=True):
        assert got.mail_from == f"list-bounces+{env.token}@xn--bcher-kva.example"
        local = got.mail_from.rpartition("@")[0]
        assert len(local) <= 64 and re.fullmatch(r"[a-z0-9-]+(\.[a-z0-9-]+)*\+[a-z0-9]+(\.[a-z0-9]+)*", local)
    assert test.mail_from == "highlights@example.org"


def test_5xx_fails_that_recipient_only(workspace: Path) -> None:
    people = recipients(5)
    handler = SinkHandler(
        rcpt_replies={people[1].email: ["550 5.1.1 <reader2@example.org>: no such user"]},
        data_replies={people[3].email: ["554 5.7.1 message refused as spam"]},
    )
    with smtp_server(handler) as server:
        ws = _smtp_ws(workspace, server.port)
        batch = make_batch(ws, people)
        _, result = _send(ws, batch)
    keys = [p.subscriber_id for p in people]
    assert result.sent == [keys[0], keys[2], keys[4]]
    assert set(result.failed) == {keys[1], keys[3]}
    assert "550 5.1.1 <reader2@example.org>: no such user" in result.failed[keys[1]]
    assert "554 5.7.1 message refused as spam" in result.failed[keys[3]]
    assert sorted(r.rcpt_tos[0] for r in handler.received) == sorted(people[i].email for i in (0, 2, 4))
    # One refused try each: a 5xx is not retried.
    assert handler.data_commands == 4


def test_4xx_that_never_ends_fails_that_recipient_after_the_attempts(workspace: Path) -> None:
    people = recipients(3)
    handler = SinkHandler(rcpt_replies={people[0].email: ["451 4.3.0 later"] * 10})
    with smtp_server(handler) as server:
        ws = _smtp_ws(workspace, server.port)
        _, result = _send(ws, make_batch(ws, people))
    assert result.sent == [people[1].subscriber_id, people[2].subscriber_id]
    assert "gave up after 4 attempts" in result.failed[people[0].subscriber_id]
    assert len(handler.rcpt_replies[people[0].email]) == 10 - 4


def test_server_gone_fails_the_rest_of_the_batch(workspace: Path) -> None:
    handler = SinkHandler()
    with smtp_server(handler) as server:
        ws = _smtp_ws(workspace, server.port)
        backend = get_backend(ws)
        backend.open()
        first = backend.send_batch(make_batch(ws, recipients(2)))
    # The server is stopped: reconnecting is refused every time.
    batch = make_batch(ws, recipients(3, start=10))
    result = backend.send_batch(batch)
    backend.close()
    assert first.sent == [1, 2]
    assert result.sent == [] and set(result.failed) == {10, 11, 12}
    assert all(why.startswith("not sent: cannot connect to SMTP server 127.0.0.1:") for why in result.failed.values())


def test_non_ascii_address_uses_smtputf8(workspace: Path) -> None:
    person = Recipient(email="zoë@example.org", name="Zoë", subscriber_id=7)
    handler = SinkHandler()
    with smtp_server(handler) as server:
        ws = _smtp_ws(workspace, server.port)
        batch = make_batch(ws, [person])
        _, result = _send(ws, batch)
    assert result.sent == [7]
    assert handler.received[0].rcpt_tos == ["zoë@example.org"]
    check_message(handler.received[0].message(), batch.envelopes[0], ws.settings)


def test_non_ascii_address_without_smtputf8_fails_clearly(workspace: Path) -> None:
    people = [Recipient(email="zoë@example.org", subscriber_id=7), Recipient(email="ada@example.org", subscriber_id=8)]
    handler = SinkHandler()
    with smtp_server(handler, enable_SMTPUTF8=False) as server:
        ws = _smtp_ws(workspace, server.port)
        _, result = _send(ws, make_batch(ws, people))
    assert result.sent == [8]
    assert "SMTPUTF8" in result.failed[7]


def test_rate_limit_spaces_messages(workspace: Path) -> None:
    handler = SinkHandler()
    now = [1000.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    with smtp_server(handler) as server:
        ws = _smtp_ws(workspace, server.port, max_per_second=20)
        backend = SmtpBackend(ws, sleep=sleep, clock=lambda: now[0])
        result = backend.send_batch(make_batch(ws, recipients(11)))
        backend.close()
    assert len(result.sent) == 11
    # On a clock that only moves when told to, 11 messages at 20/s take 10 gaps of 50 ms.
    assert len(waits) == 10 and sum(waits) == pytest.approx(0.5)


# ---------------------------------------------------------------------------- message bytes


def _parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=default_policy)


def _same_message(out: Outgoing, reference: email.message.EmailMessage, *, eight_bit: bool = True) -> None:
    """Same headers (bar Date and Message-ID) and the same decoded parts, each part in
    an encoding whose rules its lines keep."""
    ours = out.data
    mine, theirs = _parse(ours), _parse(reference.as_bytes(policy=SMTP_POLICY))
    skip = {"date", "message-id", "content-type", "content-transfer-encoding"}
    # (values unfolded: the email package folds long ones, the fast path need not)
    assert [(k, " ".join(str(v).split())) for k, v in mine.items() if k.lower() not in skip] == [
        (k, " ".join(str(v).split())) for k, v in theirs.items() if k.lower() not in skip
    ]
    # (line ends as CRLF or LF depend on the transfer encoding each side chose)
    assert [(p.get_content_type(), p.get_content().replace("\r\n", "\n")) for p in mine.iter_parts()] == [
        (p.get_content_type(), p.get_content().replace("\r\n", "\n")) for p in theirs.iter_parts()
    ]
    assert b"\n" not in ours.replace(b"\r\n", b"")  # CRLF only
    body = ours.split(b"\r\n\r\n", 1)[1]
    assert body.isascii() or (eight_bit and out.eight_bit)
    # Each part's raw lines: quoted-printable within 76 (RFC 2045), else within 998 (RFC 5322).
    for raw in body.split(b"\r\n--=_hl_")[1:-1]:
        head, _, content = raw.partition(b"\r\n\r\n")
        cte = re.search(rb"Content-Transfer-Encoding: (\S+)", head).group(1).decode()
        limit = 76 if cte == "quoted-printable" else 998
        assert max(len(line) for line in content.split(b"\r\n")) <= limit
        assert cte in (("7bit", "8bit", "quoted-printable") if eight_bit else ("7bit", "quoted-printable"))
        assert cte != "7bit" or content.isascii()


P = UNSUBSCRIBE_PLACEHOLDER
# Placeholders at the edges, side by side, deep in long lines next to multi-byte
# characters and escapes (so soft breaks fall everywhere), after trailing spaces, on
# lines starting with "." or "From ", and with CR/CRLF line ends.
AWKWARD_HTML = (
    f'{P}<p>start</p>\n<a href="{P}">{P}{P}</a>\n'
    + "".join(
        f'<p>{"é" * k}{"=" * (k % 3)}{"x" * k}<a href="{P}">unsubscribe</a>{"ü" * k}</p>\n' for k in range(60, 80)
    )
    + f"<p>trailing space {P} \t\n.<br>\nFrom here\r\nCR\ronly</p>{P}"
)
AWKWARD_TEXT = (
    f"{P}\nUnsubscribe: {P}\n" + "".join(f"{'a' * k} {P} {'b' * k}\n" for k in range(60, 80)) + f".\nFrom {P}"
)
BODIES = {
    "short lines": (AWKWARD_HTML, AWKWARD_TEXT),
    # Too long as it is (HTML), or too long once the URL is in (text): quoted-printable.
    "long lines": (AWKWARD_HTML + "<p>" + "y" * 1200 + "</p>", AWKWARD_TEXT + "\n" + "z" * 960 + P),
    "ascii": (AWKWARD_HTML.encode("ascii", "replace").decode(), AWKWARD_TEXT),
}


@pytest.mark.parametrize("eight_bit", [True, False], ids=["8bitmime", "7bit-only"])
@pytest.mark.parametrize("bodies", list(BODIES), ids=list(BODIES))
@pytest.mark.parametrize("base_url", ["https://highlights.example.org", "https://example.org/news/l%C3%A9tter~x"])
def test_fast_messages_equal_build_message(workspace: Path, base_url: str, bodies: str, eight_bit: bool) -> None:
    ws = make_workspace(workspace, base_url=base_url)
    html, text = BODIES[bodies]
    rendered = RenderedIssue(
        slug="2024-w02",
        subject="Zoë's «weekly» notes, with a subject long enough to be folded across lines by any mail client",
        preheader="",
        html=html,
        text=text,
    )
    batch = make_batch(ws, [*recipients(12), Recipient("zoë@example.org", "Zoë", 99)], rendered=rendered)
    template = MessageTemplate(rendered, ws.settings, batch.envelopes[0].links)
    assert template.fast
    expected = {  # (text, html) transfer encodings
        "short lines": ("7bit", "8bit" if eight_bit else "quoted-printable"),
        "long lines": ("quoted-printable", "quoted-printable"),
        "ascii": ("7bit", "7bit"),
    }[bodies]
    for env in batch.envelopes:
        out = template.render(env.recipient, env.links, eight_bit=eight_bit)
        assert out.smtputf8 == (not env.recipient.email.isascii())
        assert tuple(p["Content-Transfer-Encoding"] for p in _parse(out.data).iter_parts()) == expected
        _same_message(out, build_message(rendered, ws.settings, env.recipient, env.links), eight_bit=eight_bit)


def test_a_personalize_it_cannot_reproduce_falls_back_to_build_message(workspace: Path) -> None:
    @dataclasses.dataclass(frozen=True)
    class Signed(RenderedIssue):
        # Not a plain substitution: adds a line at the very end, wherever the link is.
        def personalize(self, unsubscribe_url: str, preferences_url: str = "") -> tuple[str, str]:
            html, text = super().personalize(unsubscribe_url, preferences_url)
            return html, text + "\n-- sent to you (ONE CLICK above)"

    ws = make_workspace(workspace)
    rendered = Signed(slug="s", subject="Subject", preheader="", html=f"<a href='{P}'>x</a>", text=f"Leave: {P} now")
    envelope = make_batch(ws, recipients(1), rendered=rendered).envelopes[0]
    template = MessageTemplate(rendered, ws.settings, envelope.links)
    assert not template.fast
    other = make_batch(ws, recipients(1, start=5), rendered=rendered).envelopes[0]
    for eight_bit in (True, False):
        out = template.render(other.recipient, other.links, eight_bit=eight_bit, message_id="<fixed@example.org>")
        assert _parse(out.data)["Message-ID"] == "<fixed@example.org>"
        assert dict(_parse(out.data).raw_items())["Date"].endswith(" +0000")  # the numeric zone, not obsolete GMT
        assert "now\r\n-- sent to you" in _parse(out.data).get_body(("plain",)).get_content()
        _same_message(out, build_message(rendered, ws.settings, other.recipient, other.links), eight_bit=eight_bit)


def test_test_links_and_subject_in_fast_messages(workspace: Path) -> None:
    ws = make_workspace(workspace)
    batch = make_batch(ws, [Recipient("ada@example.org")], test=True)
    template = MessageTemplate(batch.rendered, ws.settings, batch.envelopes[0].links, test=True)
    out = template.render(batch.envelopes[0].recipient, batch.envelopes[0].links)
    links = recipient_links(ws.settings, SIGNER, 1, test=True)
    _same_message(out, build_message(batch.rendered, ws.settings, Recipient("ada@example.org"), links, test=True))
    check_message(_parse(out.data), batch.envelopes[0], ws.settings, test=True)


@pytest.mark.parametrize("eight_bit", [True, False], ids=["8bitmime", "7bit-only"])
def test_the_example_issue_takes_the_fast_path(workspace: Path, eight_bit: bool) -> None:
    ws = make_workspace(workspace)
    batch = make_batch(ws, recipients(3))
    template = MessageTemplate(batch.rendered, ws.settings, batch.envelopes[0].links)
    assert template.fast
    for env in batch.envelopes:
        out = template.render(env.recipient, env.links, eight_bit=eight_bit, message_id="<one@example.org>")
        assert out.eight_bit == eight_bit  # its HTML is not ASCII (no-break spaces, arrows)
        check_message(_parse(out.data), env, ws.settings)
        _same_message(out, build_message(batch.rendered, ws.settings, env.recipient, env.links), eight_bit=eight_bit)


@pytest.mark.parametrize(("user", "password"), [("newsletter", "pässwörd ünïcode"), ("zoë", "plain ascii")])
def test_a_login_beyond_ascii_goes_as_utf8_auth_plain(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, user: str, password: str
) -> None:
    """smtplib encodes credentials as ASCII: such a password was a UnicodeEncodeError
    traceback. RFC 4616 makes PLAIN's credentials UTF-8."""
    handler = SinkHandler()
    monkeypatch.setenv(ENV_PASSWORD, password)
    with smtp_server(
        handler, auth_required=True, auth_require_tls=False, authenticator=PasswordCheck(user, password, handler)
    ) as server:
        ws = _smtp_ws(workspace, server.port, username=user)
        batch = make_batch(ws, recipients(2))
        _, result = _send(ws, batch)
    assert result.sent == [e.key for e in batch.envelopes]
    assert handler.logins == [f"PLAIN:{user}"]
