"""`send --test`, `send` and `status` end to end: through the outbox, a real SMTP server
(aiosmtpd) and the local SendGrid-compatible server, with the ledger in a real SQLite file
or a PostgreSQL database (each test runs on both).

What must hold (the sending guarantees): the test-send gate, one copy per
recipient, nobody who left is mailed, faults retried or failed as they should be, and a
one-click POST to a delivered message's List-Unsubscribe URL unsubscribes exactly that
recipient.
"""

from __future__ import annotations

import re
import shutil
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from starlette.testclient import TestClient

from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.cli import main
from highlightsmail.store import ImportRow, Store
from highlightsmail.tokens import load_signer
from highlightsmail.web.application import create_app
from support.db import dump_tables, target_of
from support.delivery import READER_HEADERS
from support.sendgrid import SendGridServer
from support.smtp import PasswordCheck, SinkHandler, make_self_signed, smtp_server

API_KEY = "SG.dispatch-tests"
pytestmark = pytest.mark.usefixtures("engine")


def open_store(root: Path) -> Store:
    return Store.open(load_workspace(root))


def as_sender(store: Store, issue: str = "2024-w02") -> Store:
    """The store as a sender of the issue, as `send` makes it (on PostgreSQL it joins)."""
    if store.shares_dispatch:
        store.join_dispatch(issue)
    return store


def run(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def configure(root: Path, **delivery: Any) -> None:
    """Change the workspace's delivery settings; retries are instant."""
    path = root / "highlights.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["delivery"].update({"max_attempts": 4, "backoff": 0.01})
    for key, value in delivery.items():
        if isinstance(value, dict):
            data["delivery"].setdefault(key, {}).update(value)
        else:
            data["delivery"][key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def add_subscribers(root: Path, n: int, *, start: int = 1) -> list[str]:
    emails = [f"reader{i}@example.org" for i in range(start, start + n)]
    with open_store(root) as store:
        store.import_rows(ImportRow(e, f"Reader {i}") for i, e in enumerate(emails, start=start))
    return emails


def ledger(root: Path, issue: str = "2024-w02") -> dict[str, str]:
    with open_store(root) as store:
        return {
            d.email: d.state
            for d in store.iter_deliveries(issue, ("pending", "in_flight", "sent", "skipped", "failed", "in_doubt"))
        }


def status_of(root: Path, email: str) -> str:
    with open_store(root) as store:
        sub = store.find(email)
        assert sub is not None
        return sub.status


def unsubscribe_url(msg) -> str:
    match = re.fullmatch(r"<(https://highlights\.example\.org/u/[^>]+)>", str(msg["List-Unsubscribe"]))
    assert match, msg["List-Unsubscribe"]
    return match.group(1)


def one_click(root: Path, url: str) -> int:
    """POST List-Unsubscribe=One-Click, with no cookies, as a mail provider would."""
    app = create_app(load_workspace(root))
    with TestClient(app, base_url="https://highlights.example.org") as client:
        client.cookies.clear()
        reply = client.post(url, data={"List-Unsubscribe": "One-Click"}, follow_redirects=False)
    return reply.status_code


# ------------------------------------------------------------------------- the outbox


def test_fresh_workspace_test_send_then_send_writes_one_message_each(workspace: Path) -> None:
    """The issue's 'done when': send --test, then send --yes: one message per editor, then
    one per active subscriber; a second send --yes writes none."""
    emails = add_subscribers(workspace, 7)
    with open_store(workspace) as store:
        store.set_status(emails[0], "unsubscribed", "web")
    outbox = workspace / "outbox" / "2024-w02"

    refused = run("send", "2024-w02", "--yes")
    assert refused.exit_code == 1
    assert "send 2024-w02 --test" in refused.output
    assert not outbox.exists()

    tested = run("send", "2024-w02", "--test")
    assert tested.exit_code == 0, tested.output
    test_files = sorted((outbox / "test").glob("*.eml"))
    assert len(test_files) == 2
    tos = sorted(str(message_from_bytes(p.read_bytes(), policy=default_policy)["To"]) for p in test_files)
    assert tos == ["ada@example.org", "grace@example.org"]
    for p in test_files:
        assert message_from_bytes(p.read_bytes(), policy=default_policy)["Subject"].startswith("[TEST] ")

    sent = run("send", "2024-w02", "--yes")
    assert sent.exit_code == 0, sent.output
    assert "sent 6, skipped 0, failed 0, in doubt 0" in sent.output
    files = sorted(outbox.glob("*.eml"))
    got = sorted(str(message_from_bytes(p.read_bytes(), policy=default_policy)["To"]) for p in files)
    assert got == sorted(f"Reader {i} <{e}>" for i, e in enumerate(emails, start=1) if e != emails[0])
    # Each Message-ID is derived from the dispatch's tag and the subscriber (a bounce
    # that returns it proves its message); the test sends' are random.
    signer = load_signer(load_workspace(workspace).secret_path)
    with open_store(workspace) as store:
        tag = store.dispatch_info("2024-w02").tag
    for path in files:
        sid = int(path.name.split("-", 1)[0])
        msg = message_from_bytes(path.read_bytes(), policy=default_policy)
        assert msg["Message-ID"] == f"<{signer.make_message('2024-w02', tag, sid)}@example.org>"
    for path in test_files:
        assert not signer.is_message(
            str(message_from_bytes(path.read_bytes())["Message-ID"])[1:].split("@")[0], "2024-w02"
        )

    again = run("send", "2024-w02", "--yes")
    assert again.exit_code == 0, again.output
    assert "nothing left to send" in again.output
    assert sorted(outbox.glob("*.eml")) == files

    status = run("status", "2024-w02")
    assert "sent 6" in status.output and "finished" in status.output


def test_send_refuses_a_version_that_was_not_test_sent(workspace: Path) -> None:
    add_subscribers(workspace, 2)
    assert run("send", "2024-w02", "--test").exit_code == 0
    issue = workspace / "issues" / "2024-w02.yaml"
    issue.write_text(
        issue.read_text(encoding="utf-8").replace("Mixtral of Experts", "Mixtral of Many Experts"), encoding="utf-8"
    )

    refused = run("send", "2024-w02", "--yes")
    assert refused.exit_code == 1
    assert "this version was not test-sent" in refused.output
    assert ledger(workspace) == {}

    assert run("send", "2024-w02", "--test").exit_code == 0
    assert run("send", "2024-w02", "--yes").exit_code == 0
    assert set(ledger(workspace).values()) == {"sent"}


def test_skip_test_check_and_confirmation(workspace: Path) -> None:
    add_subscribers(workspace, 3)
    declined = run("send", "2024-w02", "--skip-test-check", input="n\n")
    assert declined.exit_code == 1
    assert "Send 2024-w02 to 3 recipient(s) through outbox?" in declined.output
    assert ledger(workspace) == {}
    accepted = run("send", "2024-w02", "--skip-test-check", input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert len(list((workspace / "outbox" / "2024-w02").glob("*.eml"))) == 3


def test_a_send_with_no_one_to_answer_says_to_pass_yes(workspace: Path) -> None:
    """From cron or CI (standard input at its end) the question went unanswered and the
    whole explanation was "Aborted!"."""
    add_subscribers(workspace, 2)
    ended = CliRunner().invoke(main, ["send", "2024-w02", "--skip-test-check"], input="")
    assert ended.exit_code == 1
    assert ended.stderr.splitlines()[-1] == (
        "Error: 2024-w02: nothing sent; no answer to the question (standard input ended): "
        "pass --yes to send without asking"
    )
    assert ledger(workspace) == {}
    declined = CliRunner().invoke(main, ["send", "2024-w02", "--skip-test-check"], input="n\n")
    assert declined.exit_code == 1 and "pass --yes" not in declined.stderr  # a "no" is a no
    assert ledger(workspace) == {}


def test_limit_sends_a_canary_then_the_rest(workspace: Path) -> None:
    add_subscribers(workspace, 5)
    first = run("send", "2024-w02", "--yes", "--skip-test-check", "--limit", "2")
    assert first.exit_code == 0, first.output
    assert "3 still to send" in first.output
    assert sorted(ledger(workspace).values()) == ["pending"] * 3 + ["sent"] * 2
    rest = run("send", "2024-w02", "--yes", "--skip-test-check")
    assert rest.exit_code == 0
    assert set(ledger(workspace).values()) == {"sent"}
    assert len(list((workspace / "outbox" / "2024-w02").glob("*.eml"))) == 5


def test_dry_run_hands_nothing_over_and_records_nothing(workspace: Path) -> None:
    add_subscribers(workspace, 4)
    result = run("send", "2024-w02", "--dry-run", "--skip-test-check")
    assert result.exit_code == 0, result.output
    assert "would send 2024-w02 to 4 recipient(s)" in result.output
    assert not (workspace / "outbox").exists()
    assert ledger(workspace) == {}
    test = run("send", "2024-w02", "--test", "--dry-run")
    assert test.exit_code == 0 and not (workspace / "outbox").exists()
    with open_store(workspace) as store:
        assert not store.has_test_send("2024-w02")


def test_declining_a_resend_of_those_in_doubt_leaves_them_in_doubt(workspace: Path) -> None:
    emails = add_subscribers(workspace, 4)
    with open_store(workspace) as store:
        store.begin_dispatch("2024-w02", "outbox")
        as_sender(store).claim_batch("2024-w02", 1, 2)  # a run that died with its first batch under way

    dry = run("send", "2024-w02", "--dry-run", "--skip-test-check", "--resend-in-doubt")
    assert "would send 2024-w02 to 4 recipient(s)" in dry.output
    declined = run("send", "2024-w02", "--skip-test-check", "--resend-in-doubt", input="n\n")
    assert declined.exit_code == 1
    assert "Resume sending 2024-w02 to 4 recipient(s)" in declined.output
    state = ledger(workspace)
    assert [state[e] for e in emails] == ["in_doubt", "in_doubt", "pending", "pending"]

    # A later plain resume must not take the editor's "no" for a yes.
    resumed = run("send", "2024-w02", "--yes", "--skip-test-check")
    assert resumed.exit_code == 1 and "in doubt 2" in resumed.output
    state = ledger(workspace)
    assert [state[e] for e in emails] == ["in_doubt", "in_doubt", "sent", "sent"]
    assert len(list((workspace / "outbox" / "2024-w02").glob("*.eml"))) == 2


def test_test_send_to_chosen_addresses(workspace: Path) -> None:
    assert run("send", "2024-w02", "--test", "--to", "Someone@Example.org").exit_code == 0
    files = list((workspace / "outbox" / "2024-w02" / "test").glob("*.eml"))
    assert len(files) == 1
    assert "someone@example.org" in str(message_from_bytes(files[0].read_bytes(), policy=default_policy)["To"]).lower()
    bad = run("send", "2024-w02", "--test", "--to", "not-an-address")
    assert bad.exit_code == 1 and "not-an-address" in bad.output
    assert run("send", "2024-w02", "--to", "a@example.org").exit_code == 2  # --to needs --test


def test_a_test_send_mails_one_copy_per_person_whatever_the_spelling(workspace: Path) -> None:
    """`--to x@ --to X@` or editors listing Ada twice in another case sent two copies
    to one person: two spellings that differ in case or Unicode form are one address."""
    result = run(
        "send", "2024-w02", "--test", "--to", "Zoë@Example.org", "--to", "zoë@example.ORG", "--to", "b@example.org"
    )
    assert result.exit_code == 0, result.output
    assert "sent to Zoë@example.org, b@example.org through outbox" in result.stdout
    assert len(list((workspace / "outbox" / "2024-w02" / "test").glob("*.eml"))) == 2
    settings = workspace / "highlights.yaml"
    text = settings.read_text(encoding="utf-8")
    settings.write_text(
        text.replace("editors: [ada@example.org, grace@example.org]", "editors: [ada@example.org, ADA@example.org]"),
        encoding="utf-8",
    )
    shutil.rmtree(workspace / "outbox")
    assert run("send", "2024-w02", "--test").exit_code == 0
    assert len(list((workspace / "outbox" / "2024-w02" / "test").glob("*.eml"))) == 1


# ------------------------------------------------------------------------- SMTP


def test_smtp_end_to_end_and_one_click_from_the_delivered_header(workspace: Path) -> None:
    emails = add_subscribers(workspace, 4)
    handler = SinkHandler()
    with smtp_server(handler) as server:
        configure(workspace, backend="smtp", smtp={"host": server.hostname, "port": server.port, "security": "none"})
        assert run("send", "2024-w02", "--test").exit_code == 0
        result = run("send", "2024-w02", "--yes")
    assert result.exit_code == 0, result.output
    messages = [r.message() for r in handler.received]
    assert len(messages) == 2 + 4
    tests, real = messages[:2], messages[2:]
    assert all(m["Subject"].startswith("[TEST] ") for m in tests)
    assert sorted(r.rcpt_tos[0] for r in handler.received[2:]) == emails
    for msg in real:
        assert msg.get_content_type() == "multipart/alternative"
        assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
        for header in READER_HEADERS:
            assert msg[header], header
        url = unsubscribe_url(msg)
        text, html = (p.get_content() for p in msg.iter_parts())
        assert url in text and f'href="{url}"' in html

    # A provider's one-click POST to the third recipient's header URL.
    target = real[2]
    who = re.search(r"<([^>]+)>", str(target["To"])).group(1)
    assert one_click(workspace, unsubscribe_url(target)) == 200
    assert status_of(workspace, who) == "unsubscribed"
    assert [status_of(workspace, e) for e in emails].count("unsubscribed") == 1
    # A test message's link changes nothing.
    assert one_click(workspace, unsubscribe_url(tests[0])) == 200
    assert [status_of(workspace, e) for e in emails].count("unsubscribed") == 1


def test_smtp_starttls_with_a_self_signed_certificate_and_login_end_to_end(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """send --test, then send, to a relay that insists on STARTTLS (self-signed certificate,
    trusted through HIGHLIGHTS_SMTP_CAFILE) and on a login before any mail."""
    emails = add_subscribers(workspace, 3)
    password = "smtp-password-for-tests"
    tls = make_self_signed(tmp_path)
    handler = SinkHandler()
    monkeypatch.setenv("HIGHLIGHTS_SMTP_CAFILE", str(tls.ca_file))
    monkeypatch.setenv("HIGHLIGHTS_SMTP_PASSWORD", password)
    with smtp_server(
        handler,
        tls_context=tls.server_context,
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        authenticator=PasswordCheck("newsletter", password, handler),
    ) as server:
        configure(
            workspace,
            backend="smtp",
            smtp={"host": server.hostname, "port": server.port, "security": "starttls", "username": "newsletter"},
        )
        tested = run("send", "2024-w02", "--test")
        sent = run("send", "2024-w02", "--yes")
    assert tested.exit_code == 0, tested.output
    assert sent.exit_code == 0, sent.output
    assert password not in tested.output + sent.output
    assert handler.logins and all(login.endswith(":newsletter") for login in handler.logins)
    assert sorted(r.rcpt_tos[0] for r in handler.received) == sorted(["ada@example.org", "grace@example.org", *emails])
    real = [r.message() for r in handler.received if r.rcpt_tos[0] in emails]
    for msg in real:
        assert msg.get_content_type() == "multipart/alternative"
        parts = list(msg.iter_parts())
        assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
        for header in READER_HEADERS:
            assert msg[header], header
        url = unsubscribe_url(msg)
        text, html = (p.get_content() for p in parts)
        assert set(re.findall(r"https://highlights\.example\.org/u/[^\s\"<>]+", text + html)) == {url}
        assert f'href="{url}"' in html

    # The one-click POST to one delivered message's header unsubscribes exactly that reader.
    target = real[1]
    who = re.search(r"<([^>]+)>", str(target["To"])).group(1)
    assert one_click(workspace, unsubscribe_url(target)) == 200
    assert [e for e in emails if status_of(workspace, e) == "unsubscribed"] == [who]


def test_smtp_refusal_of_one_recipient_fails_only_that_one(workspace: Path) -> None:
    emails = add_subscribers(workspace, 3)
    handler = SinkHandler(rcpt_replies={emails[1]: ["550 5.1.1 no such user"]})
    with smtp_server(handler) as server:
        configure(workspace, backend="smtp", smtp={"host": server.hostname, "port": server.port, "security": "none"})
        result = run("send", "2024-w02", "--yes", "--skip-test-check")
    assert result.exit_code == 1
    assert "sent 2, skipped 0, failed 1, in doubt 0" in result.output
    assert ledger(workspace) == {emails[0]: "sent", emails[1]: "failed", emails[2]: "sent"}
    # The reason is on the screen at the end of the send, and in status.
    assert "  failed 1: server refused the recipient: 550 5.1.1 no such user" in result.output
    status = run("status", "2024-w02")
    assert "    batch 1: 1 recipient(s): server refused the recipient: 550 5.1.1 no such user" in status.output
    assert emails[1] not in status.output and "--verbose" in status.output
    verbose = run("status", "2024-w02", "--verbose")
    assert f"      {emails[1]}\n" in verbose.output


# ------------------------------------------------------------------------- SendGrid


@pytest.fixture
def sg(workspace: Path, monkeypatch: pytest.MonkeyPatch):
    with SendGridServer(api_key=API_KEY, stall_seconds=3, rate_limit_reset_seconds=1) as server:
        monkeypatch.setenv("SENDGRID_API_KEY", API_KEY)
        monkeypatch.setenv("HIGHLIGHTS_SENDGRID_HOST", server.url)
        configure(workspace, backend="sendgrid", sendgrid={"batch_size": 10, "concurrency": 2, "timeout": 1})
        yield server


def delivered(sg: SendGridServer) -> list[str]:
    return [p["to"][0]["email"] for req in sg.accepted for p in req.body["personalizations"]]


def test_sendgrid_end_to_end_with_suppressions(workspace: Path, sg: SendGridServer) -> None:
    emails = add_subscribers(workspace, 25)
    sg.suppressions["unsubscribes"] = [emails[3]]
    sg.suppressions["bounces"] = [{"email": emails[4], "created": 1704067200, "reason": "550 gone", "status": "5.1.1"}]
    sg.suppressions["spam_reports"] = [{"email": emails[5], "created": 1704067200, "ip": "192.0.2.1"}]

    assert run("send", "2024-w02", "--test").exit_code == 0
    result = run("send", "2024-w02", "--yes")
    assert result.exit_code == 0, result.output
    assert sg.rejected == []
    assert status_of(workspace, emails[3]) == "unsubscribed"
    assert status_of(workspace, emails[4]) == "bounced"
    assert status_of(workspace, emails[5]) == "complained"
    got = delivered(sg)
    assert sorted(got) == sorted(["ada@example.org", "grace@example.org"] + [e for e in emails if e not in emails[3:6]])
    # Every personalization carries its own link; custom_args name the id, never the address.
    for req in sg.accepted[1:]:
        assert len(req.body["personalizations"]) <= 10
        for p in req.body["personalizations"]:
            url = p["headers"]["List-Unsubscribe"].strip("<>")
            unsubscribe, preferences = p["substitutions"].values()
            assert unsubscribe == url and preferences.startswith("https://highlights.example.org/p/p")
            assert p["custom_args"]["issue"] == "2024-w02"
            assert "@" not in p["custom_args"]["subscriber_id"]
    # The one-click POST to one delivered recipient's URL unsubscribes exactly them.
    last = sg.accepted[-1].body["personalizations"][-1]
    assert one_click(workspace, last["headers"]["List-Unsubscribe"].strip("<>")) == 200
    assert status_of(workspace, last["to"][0]["email"]) == "unsubscribed"
    active = [e for e in emails if status_of(workspace, e) == "active"]
    assert len(active) == 25 - 3 - 1


def test_unreadable_suppressions_stop_the_send(workspace: Path, sg: SendGridServer) -> None:
    add_subscribers(workspace, 3)
    sg.fail_suppressions = "500"
    result = run("send", "2024-w02", "--yes", "--skip-test-check")
    assert result.exit_code == 1
    assert "suppression" in result.output and "nothing was sent" in result.output
    assert sg.accepted == [] and ledger(workspace) == {}


@pytest.mark.parametrize("fault", ["429", "500", "503"])
def test_transient_faults_are_retried_and_everyone_gets_one_copy(
    workspace: Path, sg: SendGridServer, fault: str
) -> None:
    emails = add_subscribers(workspace, 30)
    configure(workspace, sendgrid={"concurrency": 1})
    sg.plan_faults({2: fault})
    result = run("send", "2024-w02", "--yes", "--skip-test-check")
    assert result.exit_code == 0, result.output
    assert [n for n, _ in sg.faulted] == [2]
    assert sorted(delivered(sg)) == sorted(emails)
    assert set(ledger(workspace).values()) == {"sent"}


def test_a_refusal_fails_that_batch_with_sendgrids_words(workspace: Path, sg: SendGridServer) -> None:
    emails = add_subscribers(workspace, 30)
    configure(workspace, sendgrid={"concurrency": 1})
    sg.plan_faults({2: "400"})
    result = run("send", "2024-w02", "--yes", "--skip-test-check")
    assert result.exit_code == 1
    assert "sent 20, skipped 0, failed 10, in doubt 0" in result.output
    reason = "SendGrid refused POST /v3/mail/send (400): bad request (injected fault)"
    assert f"  failed 10: {reason}\n" in result.output
    state = ledger(workspace)
    assert [state[e] for e in emails] == ["sent"] * 10 + ["failed"] * 10 + ["sent"] * 10
    status = run("status", "2024-w02")
    # SendGrid's own error text reaches the editor once, for the batch it failed.
    assert status.output.count("bad request (injected fault)") == 1
    assert f"    batch 2: 10 recipient(s): {reason}\n" in status.output
    verbose = run("status", "2024-w02", "--verbose")
    assert all(f"      {e}\n" in verbose.output for e in emails[10:20])
    assert not any(e in verbose.output for e in emails[:10] + emails[20:])
    # Running send again retries exactly the failed ones.
    again = run("send", "2024-w02", "--yes", "--skip-test-check")
    assert again.exit_code == 0, again.output
    assert sorted(delivered(sg)) == sorted(emails)


def test_an_unverified_sender_is_named_on_the_screen(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every request refused for the same reason: the end of the send says which, and how many."""
    add_subscribers(workspace, 25)
    with SendGridServer(api_key=API_KEY, verified_senders=["someone-else@example.org"]) as server:
        monkeypatch.setenv("SENDGRID_API_KEY", API_KEY)
        monkeypatch.setenv("HIGHLIGHTS_SENDGRID_HOST", server.url)
        configure(workspace, backend="sendgrid", sendgrid={"batch_size": 10, "concurrency": 2})
        result = run("send", "2024-w02", "--yes", "--skip-test-check")
    assert result.exit_code == 1
    assert "sent 0, skipped 0, failed 25, in doubt 0" in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("  failed ")]
    assert len(lines) == 1
    assert lines[0].startswith(
        "  failed 25: SendGrid refused POST /v3/mail/send (403): "
        "The from address does not match a verified Sender Identity."
    )


def test_unsubscribes_during_a_dispatch_are_honoured(
    workspace: Path, sg: SendGridServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    emails = add_subscribers(workspace, 40)
    configure(workspace, sendgrid={"concurrency": 1})
    leaving = [emails[15], emails[27], emails[39]]  # in the 2nd, 3rd and 4th batches
    from highlightsmail.mail.backends.sendgrid import SendGridBackend

    original = SendGridBackend.send_batch
    calls = []

    def send_batch(self, batch):
        calls.append(batch.number)
        if len(calls) == 1:  # while the first batch is out, three people leave
            with open_store(workspace) as store:
                for e in leaving:
                    store.set_status(e, "unsubscribed", "one-click")
        return original(self, batch)

    monkeypatch.setattr(SendGridBackend, "send_batch", send_batch)
    result = run("send", "2024-w02", "--yes", "--skip-test-check")
    assert result.exit_code == 0, result.output
    assert "sent 37, skipped 3" in result.output
    assert sorted(delivered(sg)) == sorted(set(emails) - set(leaving))
    state = ledger(workspace)
    assert [state[e] for e in leaving] == ["skipped"] * 3


def test_a_setup_error_stops_the_send_before_anything_is_claimed(workspace: Path) -> None:
    add_subscribers(workspace, 3)
    handler = SinkHandler()
    with smtp_server(handler) as server:
        configure(
            workspace,
            backend="smtp",
            smtp={"host": server.hostname, "port": server.port, "security": "none", "username": "editor"},
        )
        result = run("send", "2024-w02", "--yes", "--skip-test-check")
    assert result.exit_code == 1
    assert "HIGHLIGHTS_SMTP_PASSWORD" in result.output and "nothing was sent" in result.output
    assert handler.received == []
    assert set(ledger(workspace).values()) == {"pending"}


@pytest.mark.parametrize("fault", ["stall", "drop"])
def test_a_request_that_never_got_an_answer_is_in_doubt_at_once(
    workspace: Path, sg: SendGridServer, fault: str
) -> None:
    """The server read the second request whole, then stalled past the time-out or hung
    up: SendGrid may have taken the batch, so it is sent neither again at once (the
    server sees that request once) nor by the next run, only with --resend-in-doubt."""
    emails = add_subscribers(workspace, 30)
    configure(workspace, sendgrid={"concurrency": 1, "timeout": 0.5})
    sg.plan_faults({2: fault})
    result = run("send", "2024-w02", "--yes", "--skip-test-check")
    assert result.exit_code == 1
    assert "sent 20, skipped 0, failed 0, in doubt 10" in result.output
    assert sg.stats.received == 3 and sg.faulted == [(2, fault)]
    state = ledger(workspace)
    assert [state[e] for e in emails[10:20]] == ["in_doubt"] * 10
    assert "  in doubt 10: " in result.output and "--resend-in-doubt" in result.output

    again = run("send", "2024-w02", "--yes", "--skip-test-check")
    assert again.exit_code == 1 and "in doubt 10" in again.output
    assert sorted(delivered(sg)) == sorted(emails[:10] + emails[20:])

    resend = run("send", "2024-w02", "--yes", "--skip-test-check", "--resend-in-doubt")
    assert resend.exit_code == 0, resend.output
    assert sorted(delivered(sg)) == sorted(emails)


def test_an_unreachable_sendgrid_stops_the_send_before_anything_is_claimed(
    workspace: Path, sg: SendGridServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from support.ports import free_port

    add_subscribers(workspace, 3)
    configure(workspace, max_attempts=2)
    monkeypatch.setenv("HIGHLIGHTS_SENDGRID_HOST", f"http://127.0.0.1:{free_port()}")
    sg.suppressions["unsubscribes"] = []
    # Suppressions come first and cannot be read either: the send stops before claiming.
    stopped = run("send", "2024-w02", "--yes", "--skip-test-check")
    assert stopped.exit_code == 1 and ledger(workspace) == {}


def test_smtp_connection_lost_after_data_is_in_doubt_for_that_message_only(workspace: Path) -> None:
    """The server hangs up after the end of the second message's DATA: that message may
    have been kept, so it is in doubt and not sent again; the others go out."""
    emails = add_subscribers(workspace, 3)
    handler = SinkHandler(drop_at={2})
    with smtp_server(handler) as server:
        configure(workspace, backend="smtp", smtp={"host": server.hostname, "port": server.port, "security": "none"})
        result = run("send", "2024-w02", "--yes", "--skip-test-check")
        assert result.exit_code == 1
        assert handler.data_commands == 3  # one DATA per recipient: none sent twice
        assert ledger(workspace) == {emails[0]: "sent", emails[1]: "in_doubt", emails[2]: "sent"}
        status = run("status", "2024-w02", "--verbose")
        assert emails[1] in status.output and "--resend-in-doubt" in status.output
        again = run("send", "2024-w02", "--yes", "--skip-test-check")
        assert again.exit_code == 1 and handler.data_commands == 3
        resend = run("send", "2024-w02", "--yes", "--skip-test-check", "--resend-in-doubt")
        assert resend.exit_code == 0, resend.output
    assert sorted(r.rcpt_tos[0] for r in handler.received) == emails
    # The message sent again is the same message: the Message-ID derived from the
    # dispatch's tag (nothing per recipient was stored), so a receiver that kept the
    # first copy can tell, and a bounce of either is matched.
    ws = load_workspace(workspace)
    with open_store(workspace) as store:
        tag = store.dispatch_info("2024-w02").tag
        sids = {e: store.find(e).id for e in emails}
    signer = load_signer(ws.secret_path)
    ids = {e: [mid for rcpts, mid in handler.attempts if rcpts == [e]] for e in emails}
    assert ids == {
        e: [f"<{signer.make_message('2024-w02', tag, sids[e])}@example.org>"] * (2 if e == emails[1] else 1)
        for e in emails
    }


# ------------------------------------------------------------------------- header safety, the test-send gate


AUDIT_SUBJECT = "=?utf-8?q?Hi=0D=0ABcc:_victim@example.net?="


@pytest.mark.parametrize("field", ["subject", "name", "from", "reply_to", "list_id", "base_url"])
def test_header_text_that_got_past_validation_stops_the_send_before_anything(
    workspace: Path, monkeypatch: pytest.MonkeyPatch, field: str
) -> None:
    """Settings or an issue that somehow skipped validation: one error naming the field,
    nothing claimed, nothing written, for a test send and a send alike."""
    from dataclasses import replace

    from highlightsmail.authoring.workspace import Workspace
    from highlightsmail.errors import HighlightsError
    from highlightsmail.sending import dispatch

    add_subscribers(workspace, 3)
    ws = load_workspace(workspace)
    if field == "subject":
        render = dispatch._render
        monkeypatch.setattr(dispatch, "_render", lambda w, p: replace(render(w, p), subject=AUDIT_SUBJECT))
    else:
        value = f"News {AUDIT_SUBJECT} <news@example.org>" if field in ("from", "reply_to") else AUDIT_SUBJECT
        ws = Workspace(root=ws.root, settings=ws.settings.model_copy(update={field.replace("from", "from_"): value}))
    path = ws.issue_path("2024-w02")
    with pytest.raises(HighlightsError, match=f"{field}: must not contain an RFC 2047 encoded word"):
        dispatch.send_test(ws, path, [])
    with pytest.raises(HighlightsError, match=f"{field}: must not contain an RFC 2047 encoded word"):
        dispatch.send(ws, path, skip_test_check=True)
    assert not (workspace / "outbox").exists()
    assert ledger(workspace) == {}


CHANGES = {
    "from": "AI Research Highlights <news@example.org>",
    "reply_to": "letters@example.org",
    "name": "AI Research Digest",
    "postal_address": "AI Research Highlights, 1 Other Street, Springfield, OR 97477, USA",
    "list_id": "digest.example.org",
    "base_url": "https://news.example.org",
}


@pytest.mark.parametrize("field", list(CHANGES))
def test_a_settings_change_after_the_test_send_needs_another(workspace: Path, field: str) -> None:
    """The test send's fingerprint covers the whole message a reader gets, headers from
    the settings included: change any of them and `send` asks for a new test."""
    add_subscribers(workspace, 2)
    assert run("send", "2024-w02", "--test").exit_code == 0
    path = workspace / "highlights.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert data[field] != CHANGES[field]
    data[field] = CHANGES[field]
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")

    refused = run("send", "2024-w02", "--yes")
    assert refused.exit_code == 1
    assert "this version was not test-sent" in refused.output and "send 2024-w02 --test" in refused.output
    assert ledger(workspace) == {}

    assert run("send", "2024-w02", "--test").exit_code == 0
    sent = run("send", "2024-w02", "--yes")
    assert sent.exit_code == 0, sent.output


def test_an_unchanged_rerender_passes_the_gate(workspace: Path) -> None:
    add_subscribers(workspace, 2)
    assert run("send", "2024-w02", "--test").exit_code == 0
    # Files written again as they were, and a later run: the same message, so no new test.
    for name in ("highlights.yaml", "issues/2024-w02.yaml"):
        (workspace / name).write_bytes((workspace / name).read_bytes())
    sent = run("send", "2024-w02", "--yes")
    assert sent.exit_code == 0, sent.output
    assert set(ledger(workspace).values()) == {"sent"}


# ------------------------------------------------------------------------- dry run, status after a stop


def _dump(root: Path) -> dict[str, list[tuple]]:
    return dump_tables(target_of(root))


def test_a_dry_run_changes_nothing_at_all(workspace: Path, sg: SendGridServer) -> None:
    """SendGrid's suppression lists are read and reported, not applied; rows left in
    flight by a stopped run stay as they are; the database is the same, byte for byte."""
    emails = add_subscribers(workspace, 6)
    sg.suppressions["unsubscribes"] = [emails[4]]
    sg.suppressions["bounces"] = [emails[5], "stranger@example.org"]
    with open_store(workspace) as store:
        store.begin_dispatch("2024-w02", "sendgrid")
        as_sender(store).claim_batch("2024-w02", 1, 2)  # a run that died with its first batch under way
    before = _dump(workspace)

    for extra in ((), ("--resend-in-doubt",), ("--limit", "1")):
        result = run("send", "2024-w02", "--dry-run", "--skip-test-check", *extra)
        assert result.exit_code == 0, result.output
        assert "Dry run: 2 subscriber(s) would be marked from sendgrid's suppression lists." in result.output
        assert _dump(workspace) == before
    assert sg.stats.received == 0
    assert [status_of(workspace, e) for e in emails] == ["active"] * 6


def test_a_dry_run_of_a_first_send_leaves_out_those_it_would_mark(workspace: Path, sg: SendGridServer) -> None:
    emails = add_subscribers(workspace, 5)
    sg.suppressions["spam_reports"] = [emails[0]]
    before = _dump(workspace)
    result = run("send", "2024-w02", "--dry-run", "--skip-test-check")
    assert "would send 2024-w02 to 4 recipient(s) through sendgrid; nothing sent" in result.output
    assert _dump(workspace) == before


def test_status_after_a_stop_counts_and_lists_the_same_recipients_in_doubt(workspace: Path) -> None:
    emails = add_subscribers(workspace, 5)
    with open_store(workspace) as store:
        store.begin_dispatch("2024-w02", "outbox")
        as_sender(store).claim_batch("2024-w02", 1, 2)  # a run killed with this batch under way
        store.claim_batch("2024-w02", 2, 1)
        store.finish_batch("2024-w02", sent=[], failed={}, in_doubt={3: "no answer from the server"})
    status = run("status", "2024-w02")
    assert status.exit_code == 0
    assert "sent 0, skipped 0, failed 0, in doubt 3, pending 2" in status.output
    assert "in flight" not in status.output
    assert "    batch 1: 2 recipient(s): the run stopped while this batch was under way\n" in status.output
    assert "    batch 2: 1 recipient(s): no answer from the server\n" in status.output
    verbose = run("status", "2024-w02", "--verbose")
    assert re.findall(r"^      (\S+)$", verbose.output, re.MULTILINE) == emails[:3]


def test_status_and_report_of_a_sent_issue_whose_file_is_gone_since(workspace: Path) -> None:
    """The dispatch's record outlives its file (removed or renamed after sending):
    `report` found it by slug, `status` stopped at "no issue file"."""
    add_subscribers(workspace, 3)
    assert run("send", "2024-w02", "--test").exit_code == 0
    assert run("send", "2024-w02", "--yes").exit_code == 0
    (workspace / "issues" / "2024-w02.yaml").rename(workspace / "issues" / "2024-w02.yaml.bak")
    status = CliRunner().invoke(main, ["status", "2024-w02"])
    assert status.exit_code == 0, status.output
    assert "recipients 3: sent 3, skipped 0, failed 0, in doubt 0" in status.stdout
    assert CliRunner().invoke(main, ["report", "2024-w02"]).exit_code == 0
    unknown = CliRunner().invoke(main, ["status", "2024-w03"])
    assert unknown.exit_code == 1 and unknown.stderr == "Error: 2024-w03: no issue file issues/2024-w03.yaml\n"


def test_a_test_send_whose_backend_fails_to_close_is_still_recorded(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test send closes its backend through the pool, quietly: a connection that
    is gone by then does not turn a delivered test into an error."""
    from highlightsmail.mail.backends.outbox import OutboxBackend

    def close(self: OutboxBackend) -> None:
        raise OSError("connection already gone")

    monkeypatch.setattr(OutboxBackend, "close", close)
    result = run("send", "2024-w02", "--test")
    assert result.exit_code == 0, result.output
    with open_store(workspace) as store:
        assert store.has_test_send("2024-w02")
