"""The SendGrid backend against the local SendGrid-compatible server, which checks every
request against a schema (SendGrid's own where present) and the documented limits."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from highlightsmail.mail.backends import get_backend
from highlightsmail.mail.backends.base import DeliveryError, InDoubtError, PermanentError, TransientError
from highlightsmail.mail.backends.keepalive import Answer, KeptConnection
from highlightsmail.mail.backends.sendgrid import ENV_API_KEY, ENV_HOST, SendGridBackend
from highlightsmail.mail.message import Recipient
from highlightsmail.rendering.rendered import PREFERENCES_PLACEHOLDER, UNSUBSCRIBE_PLACEHOLDER
from support.delivery import example_issue, make_batch, make_workspace, recipients
from support.sendgrid import SendGridServer

API_KEY = "SG.test-key-for-the-local-server"


@pytest.fixture
def sg(monkeypatch: pytest.MonkeyPatch) -> Iterator[SendGridServer]:
    with SendGridServer(api_key=API_KEY, stall_seconds=5, rate_limit_reset_seconds=1) as server:
        monkeypatch.setenv(ENV_API_KEY, API_KEY)
        monkeypatch.setenv(ENV_HOST, server.url)
        yield server


class Waits:
    """Stands in for time.sleep: records what the backend asked to wait."""

    def __init__(self) -> None:
        self.asked: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)


def _backend(root: Path, waits: Waits | None = None, **sendgrid) -> SendGridBackend:
    ws = make_workspace(root, delivery={"backend": "sendgrid", "sendgrid": sendgrid})
    if waits is None:
        backend = get_backend(ws)
        assert isinstance(backend, SendGridBackend)
        return backend
    return SendGridBackend(ws, sleep=waits)


# ---------------------------------------------------------------------------- payload


def test_a_batch_of_1000_is_one_valid_request(workspace: Path, sg: SendGridServer) -> None:
    backend = _backend(workspace)
    assert backend.batch_size == 1000 and backend.concurrency == 4
    batch = make_batch(backend.ws, recipients(1000))
    backend.open()
    result = backend.send_batch(batch)

    assert result.sent == [e.key for e in batch.envelopes] and result.failed == {}
    assert len(sg.accepted) == 1 and sg.rejected == []
    request = sg.accepted[0]
    assert result.message_id == request.message_id
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    body = request.body
    rendered = example_issue()
    assert body["from"] == {"email": "highlights@example.org", "name": "AI Research Highlights"}
    assert body["reply_to"] == {"email": "editors@example.org"}
    assert body["subject"] == rendered.subject
    assert body["headers"] == {"List-Id": '"AI Research Highlights" <highlights.example.org>'}
    # text/plain first, then text/html, each sent once for the whole batch.
    assert body["content"] == [
        {"type": "text/plain", "value": rendered.text},
        {"type": "text/html", "value": rendered.html},
    ]
    assert body["categories"] == ["highlights"]
    assert "asm" not in body
    assert body["tracking_settings"]["click_tracking"] == {"enable": False, "enable_text": False}

    assert len(body["personalizations"]) == 1000
    assert {"email": "reader2@example.org", "name": 'Grace "Amazing" Hopper Rear Admiral'} in (
        p["to"][0] for p in body["personalizations"]
    )
    for env, p in zip(batch.envelopes, body["personalizations"], strict=False):
        url = env.links.unsubscribe_url
        # SendGrid drops mail whose recipient name has a comma or semicolon: they go.
        name = " ".join(env.recipient.name.replace(",", " ").replace(";", " ").split())
        assert p["to"] == [{"email": env.recipient.email, **({"name": name} if name else {})}]
        preferences = env.links.preferences_url
        assert preferences.startswith("https://highlights.example.org/p/p")
        assert p["substitutions"] == {UNSUBSCRIBE_PLACEHOLDER: url, PREFERENCES_PLACEHOLDER: preferences}
        assert p["headers"] == {"List-Unsubscribe": f"<{url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
        # The id, as a string, never the address.
        assert p["custom_args"] == {"issue": "2024-w02", "subscriber_id": str(env.recipient.subscriber_id)}
    # What SendGrid's substitution makes of the content is each recipient's own message.
    url, preferences = batch.envelopes[0].links.unsubscribe_url, batch.envelopes[0].links.preferences_url
    assert [
        c["value"].replace(UNSUBSCRIBE_PLACEHOLDER, url).replace(PREFERENCES_PLACEHOLDER, preferences)
        for c in body["content"]
    ] == list(reversed(rendered.personalize(url, preferences)))


def test_names_and_addresses_that_need_escaping_arrive_as_written(workspace: Path, sg: SendGridServer) -> None:
    """The body is JSON text spliced from escaped strings: a backslash, quotes, a
    character beyond the BMP, an internationalised domain, and a test send's links all
    arrive as SendGrid would read them from json.dumps."""
    backend = _backend(workspace)
    people = [
        Recipient("back@example.org", "Back\\slash \"Quoted\" 'Single'", 1),
        Recipient("emoji@example.org", "Rocket \U0001f680 Émile", 2),
        Recipient("idn@bücher.example", "Ünïcødé", 3),
        Recipient("plain@example.org", "  spaced   out  ", 4),
    ]
    batch = make_batch(backend.ws, people)
    backend.open()
    assert backend.send_batch(batch).sent == [1, 2, 3, 4]
    body = sg.accepted[0].body
    assert [p["to"][0] for p in body["personalizations"]] == [
        {"email": "back@example.org", "name": "Back\\slash \"Quoted\" 'Single'"},
        {"email": "emoji@example.org", "name": "Rocket \U0001f680 Émile"},
        {"email": "idn@xn--bcher-kva.example", "name": "Ünïcødé"},
        {"email": "plain@example.org", "name": "spaced out"},
    ]
    for env, p in zip(batch.envelopes, body["personalizations"], strict=True):
        assert p["substitutions"] == {
            UNSUBSCRIBE_PLACEHOLDER: env.links.unsubscribe_url,
            PREFERENCES_PLACEHOLDER: env.links.preferences_url,
        }
        assert p["custom_args"] == {"issue": "2024-w02", "subscriber_id": str(env.key)}
    # Only ASCII on the wire, as json.dumps writes it.
    assert sg.accepted[0].body == json.loads(backend.payload(batch)[0])
    assert backend.payload(batch)[0].isascii()


def test_test_send_payload(workspace: Path, sg: SendGridServer) -> None:
    backend = _backend(workspace)
    batch = make_batch(backend.ws, [Recipient("ada@example.org"), Recipient("grace@example.org", "Grace")], test=True)
    backend.send_batch(batch)
    body = sg.accepted[0].body
    assert body["subject"] == "[TEST] " + example_issue().subject
    assert [p["custom_args"] for p in body["personalizations"]] == [{"issue": "2024-w02", "test": "true"}] * 2
    assert all("/u/t" in p["substitutions"][UNSUBSCRIBE_PLACEHOLDER] for p in body["personalizations"])


def test_unsubscribe_group_and_categories(workspace: Path, sg: SendGridServer) -> None:
    backend = _backend(workspace, asm_group_id=4242, categories=["highlights", "weekly"])
    backend.send_batch(make_batch(backend.ws, recipients(2)))
    body = sg.accepted[0].body
    assert body["asm"] == {"group_id": 4242}
    assert body["categories"] == ["highlights", "weekly"]


def test_a_non_ascii_newsletter_name_gives_an_ascii_list_id(workspace: Path, sg: SendGridServer) -> None:
    # SendGrid takes custom headers as given: raw UTF-8 there would reach readers as is.
    from email.header import decode_header, make_header

    ws = make_workspace(workspace, name="Zoë's Ünicode Weekly", delivery={"backend": "sendgrid"})
    backend = SendGridBackend(ws)
    backend.send_batch(make_batch(ws, recipients(1)))
    value = sg.accepted[0].body["headers"]["List-Id"]
    assert value.isascii() and value.endswith(" <highlights.example.org>")
    assert str(make_header(decode_header(value))) == "Zoë's Ünicode Weekly <highlights.example.org>"


def test_host_from_settings_without_the_env(
    workspace: Path, sg: SendGridServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_HOST)
    backend = _backend(workspace, host=sg.url)
    assert backend.send_batch(make_batch(backend.ws, recipients(1))).sent == [1]
    assert len(sg.accepted) == 1


def test_more_than_1000_is_refused_before_sending(workspace: Path, sg: SendGridServer) -> None:
    backend = _backend(workspace)
    with pytest.raises(PermanentError, match="1 to 1000 recipients"):
        backend.send_batch(make_batch(backend.ws, recipients(1001)))
    assert sg.stats.received == 0


def test_a_refused_payload_carries_sendgrids_words(workspace: Path, sg: SendGridServer) -> None:
    backend = _backend(workspace)
    people = [Recipient("reader@example.org", subscriber_id=1), Recipient("not-an-address", subscriber_id=2)]
    with pytest.raises(PermanentError) as info:
        backend.send_batch(make_batch(backend.ws, people))
    assert "(400)" in info.value.message and "personalizations.1.to.0.email" in info.value.message
    assert sg.stats.received == 1  # a refusal is not retried


def test_missing_api_key(workspace: Path, sg: SendGridServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_API_KEY)
    backend = _backend(workspace)
    with pytest.raises(DeliveryError, match=f"set {ENV_API_KEY}"):
        backend.open()
    with pytest.raises(DeliveryError, match=f"set {ENV_API_KEY}"):
        list(backend.suppressions())
    assert sg.stats.received == 0


@pytest.mark.parametrize("key", [f"{API_KEY}\nX-Injected: 1", f"SG.a b{API_KEY}", "SG.cl\u00e9", "SG.\u20ac"])
def test_an_api_key_no_header_can_carry_is_a_clear_error_and_not_shown(
    workspace: Path, sg: SendGridServer, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    """A key pasted with a line break was a ValueError traceback from the HTTP client."""
    monkeypatch.setenv(ENV_API_KEY, key)
    backend = _backend(workspace)
    with pytest.raises(DeliveryError, match=f"{ENV_API_KEY} holds a space, a line break or a character outside ASCII"):
        backend.open()
    with pytest.raises(DeliveryError) as info:
        backend.send_batch(make_batch(backend.ws, recipients(1)))
    assert key.strip() not in info.value.message and "SG." not in info.value.message.replace("SG. and", "")
    assert sg.stats.received == 0


def test_wrong_api_key_is_permanent_and_not_shown(
    workspace: Path, sg: SendGridServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_API_KEY, "SG.wrong-key")
    backend = _backend(workspace)
    with pytest.raises(PermanentError, match=r"\(401\)") as info:
        backend.send_batch(make_batch(backend.ws, recipients(1)))
    assert "SG.wrong-key" not in info.value.message
    assert sg.stats.received == 1


def test_each_worker_has_its_own_client(workspace: Path, sg: SendGridServer) -> None:
    backend = _backend(workspace)
    workers = [backend.clone() for _ in range(4)]
    for w in workers:
        w.open()
    assert len({id(w._api()) for w in workers}) == 4
    results: list = []

    def run(index: int) -> None:
        batch = make_batch(backend.ws, recipients(250, start=1 + 250 * index), number=index)
        results.append(workers[index].send_batch(batch))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(k for r in results for k in r.sent) == list(range(1, 1001))
    assert sg.stats.accepted == 4 and sg.stats.personalizations == 1000


# ---------------------------------------------------------------------------- the kept connection


def test_a_worker_keeps_one_connection_for_its_batches(workspace: Path, sg: SendGridServer) -> None:
    backend = _backend(workspace)
    backend.open()
    for number in range(3):
        assert backend.send_batch(make_batch(backend.ws, recipients(2, start=1 + 2 * number))).sent
    assert sg.stats.accepted == 3 and sg.stats.connections == 1
    backend.close()
    assert sg.stats.connections == 1


def test_a_kept_connection_the_server_closed_is_replaced_not_in_doubt(workspace: Path, sg: SendGridServer) -> None:
    """The server hangs up on an idle kept connection (as servers do): the next batch goes
    on a new one, sent once, and nobody is in doubt."""
    backend = _backend(workspace)
    assert backend.send_batch(make_batch(backend.ws, recipients(2))).sent == [1, 2]
    with sg._lock:
        server_side = list(sg._connections)
    for conn in server_side:
        conn.shutdown(socket.SHUT_RDWR)
    deadline = time.monotonic() + 5
    while sg.open_connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert backend.send_batch(make_batch(backend.ws, recipients(2, start=3))).sent == [3, 4]
    assert sg.stats.accepted == 2 and sg.stats.received == 2 and sg.stats.connections == 2


def test_a_request_that_cannot_be_written_on_a_kept_connection_goes_on_a_new_one(
    workspace: Path, sg: SendGridServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing fails on the kept connection (it looked usable): the request never arrived
    whole, so it is written again on a new connection at once, not put in doubt."""
    waits = Waits()
    backend = _backend(workspace, waits)
    assert backend.send_batch(make_batch(backend.ws, recipients(1))).sent == [1]
    kept = backend._mail
    assert kept is not None and kept._conn is not None and kept._conn.sock is not None
    kept._conn.sock.close()  # writing on it now fails
    monkeypatch.setattr(KeptConnection, "_usable", lambda self: True)
    assert backend.send_batch(make_batch(backend.ws, recipients(1, start=2))).sent == [2]
    assert sg.stats.received == 2 and sg.stats.connections == 2 and waits.asked == []


def test_a_redirect_is_not_taken_for_sent(workspace: Path, sg: SendGridServer, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = _backend(workspace, Waits())
    real = KeptConnection.request

    def moved(self: KeptConnection, *args: object, **kwargs: object) -> Answer:
        answer: Answer = real(self, *args, **kwargs)  # type: ignore[arg-type]
        return Answer(301, answer.headers, b"", "Moved Permanently")

    monkeypatch.setattr(KeptConnection, "request", moved)
    with pytest.raises(PermanentError, match=r"refused POST /v3/mail/send \(301\): Moved Permanently"):
        backend.send_batch(make_batch(backend.ws, recipients(1)))


def test_a_proxy_in_the_environment_is_honoured(
    workspace: Path, sg: SendGridServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a proxy set for the host, the mail goes through the package's client (which
    honours it), not a direct kept connection."""
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens: unreachable
    monkeypatch.setenv("no_proxy", "")
    backend = _backend(workspace, Waits())
    with pytest.raises(TransientError, match="cannot reach SendGrid"):
        backend.send_batch(make_batch(backend.ws, recipients(1)))
    assert backend._mail is None and sg.stats.received == 0


# ---------------------------------------------------------------------------- faults


def test_429_waits_for_the_reset_then_succeeds(workspace: Path, sg: SendGridServer) -> None:
    waits = Waits()
    backend = _backend(workspace, waits)
    sg.fail_next("429")
    result = backend.send_batch(make_batch(backend.ws, recipients(3)))
    assert result.sent == [1, 2, 3]
    assert sg.faulted == [(1, "429")] and sg.stats.accepted == 1
    # X-RateLimit-Reset is a whole second ahead (rounded up): the wait follows it,
    # not the 0.01 s backoff.
    assert len(waits.asked) == 1 and 0.0 < waits.asked[0] <= 2.0 and waits.asked[0] > 0.05


def test_server_errors_are_retried(workspace: Path, sg: SendGridServer) -> None:
    waits = Waits()
    backend = _backend(workspace, waits)
    sg.plan_faults(["500", "503"])
    result = backend.send_batch(make_batch(backend.ws, recipients(3)))
    assert result.sent == [1, 2, 3]
    assert [f for _, f in sg.faulted] == ["500", "503"] and sg.stats.accepted == 1
    assert len(waits.asked) == 2


@pytest.mark.parametrize(
    ("fault", "words"),
    [("stall", "did not answer POST /v3/mail/send within 0.5 s"), ("drop", "lost after sending POST /v3/mail/send")],
)
def test_no_answer_to_a_whole_request_is_in_doubt_at_once(
    workspace: Path, sg: SendGridServer, fault: str, words: str
) -> None:
    """The server read the whole request, then stalled past the time-out or hung up: it
    may have taken it, so it is not sent again (that could be 1,000 second copies)."""
    waits = Waits()
    backend = _backend(workspace, waits, timeout=0.5)
    sg.fail_next(fault)
    with pytest.raises(InDoubtError, match=words):
        backend.send_batch(make_batch(backend.ws, recipients(2)))
    assert sg.stats.received == 1 and sg.faulted == [(1, fault)] and waits.asked == []


def test_a_400_is_not_retried(workspace: Path, sg: SendGridServer) -> None:
    waits = Waits()
    backend = _backend(workspace, waits)
    sg.fail_next("400")
    with pytest.raises(
        PermanentError, match=r"SendGrid refused POST /v3/mail/send \(400\): bad request \(injected fault\)"
    ):
        backend.send_batch(make_batch(backend.ws, recipients(2)))
    assert sg.stats.received == 1 and waits.asked == []


def test_errors_that_never_end_give_up_after_the_attempts(workspace: Path, sg: SendGridServer) -> None:
    waits = Waits()
    backend = _backend(workspace, waits)
    sg.fail_next("500", count=10)
    with pytest.raises(TransientError, match=r"\(500\): internal server error"):
        backend.send_batch(make_batch(backend.ws, recipients(2)))
    assert sg.stats.received == 4 and len(waits.asked) == 3  # max_attempts is 4 here


def test_nobody_listening_is_transient(workspace: Path, sg: SendGridServer, monkeypatch: pytest.MonkeyPatch) -> None:
    url = sg.url
    sg.stop()
    monkeypatch.setenv(ENV_HOST, url)
    waits = Waits()
    backend = _backend(workspace, waits)
    with pytest.raises(TransientError, match="cannot reach SendGrid"):
        backend.send_batch(make_batch(backend.ws, recipients(1)))
    assert len(waits.asked) == 3  # refused: nothing arrived, so it was tried again, 4 times in all


@pytest.mark.parametrize(
    "host", ["api.sendgrid.com", "htps://api.sendgrid.com", "http://", "http://[::1", "https://api.sendgrid.com:99999"]
)
def test_a_host_typo_is_refused_by_name_before_any_request(
    workspace: Path, sg: SendGridServer, monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    monkeypatch.setenv(ENV_HOST, host)
    backend = _backend(workspace, Waits())
    with pytest.raises(PermanentError, match=f"{ENV_HOST}: .* is not an http\\(s\\) URL"):
        backend.open()
    with pytest.raises(PermanentError, match=ENV_HOST):
        list(backend.suppressions())


# ---------------------------------------------------------------------------- suppressions


def test_suppressions_are_paged_and_mapped(workspace: Path, sg: SendGridServer) -> None:
    sg.suppressions["unsubscribes"] = [f"gone{i}@example.org" for i in range(1200)]
    sg.suppressions["bounces"] = ["bounced@example.org", {"email": "full@example.org", "reason": "552 mailbox full"}]
    sg.suppressions["spam_reports"] = ["angry@example.org"]
    sg.group_suppressions[4242] = ["group-left@example.org"]
    backend = _backend(workspace, asm_group_id=4242)

    found = list(backend.suppressions())
    by_status: dict[str, list[str]] = {}
    for s in found:
        by_status.setdefault(s.status, []).append(s.email)
    assert sorted(by_status) == ["bounced", "complained", "unsubscribed"]
    assert by_status["unsubscribed"] == [f"gone{i}@example.org" for i in range(1200)] + ["group-left@example.org"]
    assert by_status["bounced"] == ["bounced@example.org", "full@example.org"]
    assert by_status["complained"] == ["angry@example.org"]
    assert next(s for s in found if s.email == "full@example.org").detail == "552 mailbox full"


def test_internationalised_addresses(workspace: Path, sg: SendGridServer) -> None:
    """SendGrid takes no Unicode address: a Unicode domain goes in its xn-- form (and comes
    back in SendGrid's lists that way), an address with a Unicode local part fails alone
    instead of getting the whole request of up to 1,000 refused."""
    backend = _backend(workspace)
    people = [
        Recipient("ada@example.org", subscriber_id=1),
        Recipient("zoe@bücher.de", subscriber_id=2),
        Recipient("zoë@example.org", subscriber_id=3),
    ]
    result = backend.send_batch(make_batch(backend.ws, people))
    assert result.sent == [1, 2] and list(result.failed) == [3]
    assert "only ASCII before the @" in result.failed[3]
    assert [p["to"][0]["email"] for p in sg.accepted[0].body["personalizations"]] == [
        "ada@example.org",
        "zoe@xn--bcher-kva.de",
    ]
    assert sg.rejected == []

    only_odd = backend.send_batch(make_batch(backend.ws, people[2:]))
    assert only_odd.sent == [] and list(only_odd.failed) == [3] and sg.stats.received == 1

    sg.suppressions["unsubscribes"] = ["zoe@xn--bcher-kva.de"]
    assert [s.email for s in backend.suppressions()] == ["zoe@bücher.de"]  # as subscribers are stored


def test_exactly_one_full_page(workspace: Path, sg: SendGridServer) -> None:
    sg.suppressions["unsubscribes"] = [f"gone{i}@example.org" for i in range(500)]
    assert len(list(_backend(workspace).suppressions())) == 500


@pytest.mark.parametrize("fault", ["500", "400", "drop"])
def test_a_failing_suppression_list_stops_with_a_clear_error(workspace: Path, sg: SendGridServer, fault: str) -> None:
    sg.fail_suppressions = fault
    backend = _backend(workspace, Waits())
    with pytest.raises(DeliveryError, match="/v3/suppression/unsubscribes"):
        list(backend.suppressions())


AUDIT_NAME = "=?utf-8?q?Hi=0D=0ABcc:_victim@example.net?="


def test_a_stored_name_that_could_break_a_header_is_left_out(workspace: Path, sg: SendGridServer) -> None:
    """SendGrid writes the To header from the name: one holding an encoded word or a
    line break (old data) goes as the bare address; the recipient still gets the issue."""
    backend = _backend(workspace)
    people = [
        Recipient("a@example.org", AUDIT_NAME, 1),
        Recipient("b@example.org", "Ada\r\nBcc: victim@example.net", 2),
        Recipient("c@example.org", "Grace Hopper", 3),
    ]
    assert backend.send_batch(make_batch(backend.ws, people)).sent == [1, 2, 3]
    assert [p["to"] for p in sg.accepted[0].body["personalizations"]] == [
        [{"email": "a@example.org"}],
        [{"email": "b@example.org"}],
        [{"email": "c@example.org", "name": "Grace Hopper"}],
    ]


@pytest.mark.parametrize("field", ["subject", "name", "from", "reply_to", "list_id"])
def test_header_text_that_got_past_validation_is_refused_before_any_request(
    workspace: Path, sg: SendGridServer, field: str
) -> None:
    from dataclasses import replace

    from highlightsmail.authoring.workspace import Workspace
    from highlightsmail.errors import HighlightsError

    ws = make_workspace(workspace, delivery={"backend": "sendgrid"})
    rendered = example_issue()
    if field == "subject":
        rendered = replace(rendered, subject=AUDIT_NAME)
    else:
        value = f"News {AUDIT_NAME} <news@example.org>" if field in ("from", "reply_to") else AUDIT_NAME
        ws = Workspace(root=ws.root, settings=ws.settings.model_copy(update={field.replace("from", "from_"): value}))
    backend = SendGridBackend(ws)
    with pytest.raises(HighlightsError, match=f"{field}: must not contain an RFC 2047 encoded word"):
        backend.send_batch(make_batch(ws, recipients(2), rendered=rendered))
    assert sg.stats.received == 0
