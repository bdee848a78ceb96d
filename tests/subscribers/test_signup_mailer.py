"""The signup's confirmation emails: what has queued goes out as one batch per turn, every
reservation is handed to a backend once (by one server or another on the same
database), and what a stopped or killed server reserved and never handed over goes out
at the next start, never twice."""

from __future__ import annotations

import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from highlightsmail.authoring.workspace import load_workspace
from highlightsmail.mail.backends.base import Backend, Batch, BatchResult
from highlightsmail.mail.message import Recipient
from highlightsmail.store import Store, UnusableDatabase
from highlightsmail.subscribers.signup import MAILS_PER_ADDRESS, POST_WINDOW, POSTS_PER_CLIENT, Mailer, Signup
from highlightsmail.tokens import load_signer
from support.signup import CONFIRM_DIR, confirm_link, enable_signup, mails, read_mail, wait_for_mails
from support.webapp import serve_process, serve_workspace
from support.workspace import configure

# Every test here runs on SQLite and on PostgreSQL (see conftest.py).
pytestmark = pytest.mark.usefixtures("engine")


def _ask(store: Store, address: str, client: int):  # type: ignore[no-untyped-def]
    """A request to join as POST /subscribe makes it: its Joining."""
    joining = store.ask_to_join(
        f"198.51.100.{client}", address, "", posts=(POSTS_PER_CLIENT, POST_WINDOW), limits=MAILS_PER_ADDRESS
    )
    assert joining.wait is None and joining.subscriber is not None and joining.reservation is not None
    return joining


def _signup(root: Path) -> Signup:
    ws = load_workspace(root)
    return Signup(ws, load_signer(ws.secret_path))


def _to(root: Path) -> list[str]:
    return sorted(str(read_mail(p)["To"]) for p in mails(root / CONFIRM_DIR))


def test_one_transaction_counts_adds_and_reserves_and_the_trap_only_counts(workspace: Path) -> None:
    with Store.open(load_workspace(workspace)) as store:
        first = _ask(store, "ada@example.org", 1)
        assert first.subscriber.status == "pending" and store.find("ada@example.org") == first.subscriber
        again = store.ask_to_join(
            "198.51.100.1", "ada@example.org", "Other", posts=(3, POST_WINDOW), limits=MAILS_PER_ADDRESS
        )
        assert (again.wait, again.subscriber, again.reservation) == (None, first.subscriber, None)  # within ten minutes
        trapped = store.ask_to_join("198.51.100.1", None, "", posts=(3, POST_WINDOW), limits=MAILS_PER_ADDRESS)
        assert trapped == (None, None, None, 0)
        over = store.ask_to_join(
            "198.51.100.1", "bob@example.org", "", posts=(3, POST_WINDOW), limits=MAILS_PER_ADDRESS
        )
        assert over.wait is not None and over.wait > 0 and store.find("bob@example.org") is None
        assert [e.to_status for e in store.events(first.subscriber.id)] == ["pending"]


def test_reserved_and_never_handed_over_goes_out_at_the_next_start_once(workspace: Path) -> None:
    enable_signup(workspace)
    ws = load_workspace(workspace)
    signer = load_signer(ws.secret_path)
    with Store.open(ws) as store:
        # A server answered these and stopped before its mailer's turn...
        queued = {f"r{n}@example.org": _ask(store, f"r{n}@example.org", n) for n in range(3)}
        # ...had handed this one to a backend when it was killed: it may have arrived...
        in_flight = _ask(store, "flight@example.org", 9)
        assert store.take_confirmations([in_flight.reservation]) == {in_flight.reservation}
        # ...and this reader has joined since, by an earlier email's link.
        joined = _ask(store, "joined@example.org", 10)
        store.set_status(joined.subscriber.id, "active", "form")
    for _ in range(2):  # the second start finds nothing left to send
        signup = _signup(workspace)
        signup.mailer.start()
        signup.close()
        assert _to(workspace) == sorted(queued)
    for path in mails(workspace / CONFIRM_DIR):
        token = confirm_link(read_mail(path)).rsplit("/", 1)[1]
        joining = queued[str(read_mail(path)["To"])]
        assert signer.read_confirm(token) == (joining.subscriber.id, joining.made)  # the link made at reserving
    with Store.open(ws) as store:
        assert store.queued_confirmations(0) == []  # neither the one in doubt nor the active reader's
        assert store.take_confirmations(j.reservation for j in queued.values()) == set()


def test_a_reservation_is_handed_over_by_one_mailer_only(workspace: Path) -> None:
    """Two servers' mailers given the same reservation (one recovering at its start, the
    other from the request it answered): one email."""
    enable_signup(workspace)
    with Store.open(load_workspace(workspace)) as store:
        joining = _ask(store, "ada@example.org", 1)
    one, two = _signup(workspace), _signup(workspace)
    try:
        recipient = Recipient("ada@example.org", "", joining.subscriber.id)
        results = [m.mailer.confirmation(recipient, joining.reservation, joining.made) for m in (one, two)]
        assert sorted(f.result(30) for f in results) == [False, True]
    finally:
        one.close()
        two.close()
    assert _to(workspace) == ["ada@example.org"]


def test_a_turn_the_database_refused_goes_out_once_it_answers(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    enable_signup(workspace)
    with Store.open(load_workspace(workspace)) as store:
        first, second = _ask(store, "ada@example.org", 1), _ask(store, "bob@example.org", 2)
    taking = Store.take_confirmations
    refused: list[bool] = []

    def once_refused(self: Store, reservations):  # type: ignore[no-untyped-def]
        if not refused:
            refused.append(True)
            raise UnusableDatabase("the database stayed busy")
        return taking(self, reservations)

    monkeypatch.setattr(Store, "take_confirmations", once_refused)
    signup = _signup(workspace)
    try:
        recipient = Recipient("ada@example.org", "", first.subscriber.id)
        assert signup.mailer.confirmation(recipient, first.reservation, first.made).result(30) is False
        assert mails(workspace / CONFIRM_DIR) == []
        # The next request's turn looks again for what is reserved: both go, once each.
        recipient = Recipient("bob@example.org", "", second.subscriber.id)
        signup.mailer.confirmation(recipient, second.reservation, second.made).result(30)
    finally:
        signup.close()
    assert _to(workspace) == ["ada@example.org", "bob@example.org"]


class _Recording(Backend):
    """Records the subscribers of each batch, and sends all of them."""

    name = "recording"
    batch_size = 25
    batches: ClassVar[list[list[int]]] = []

    def send_batch(self, batch: Batch) -> BatchResult:
        keys = [e.key for e in batch.envelopes]
        self.batches.append(keys)
        return BatchResult(sent=keys)


def test_what_has_queued_goes_as_one_batch_per_turn(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    enable_signup(workspace)
    monkeypatch.setattr(Mailer, "_new_backend", lambda self: _Recording())
    monkeypatch.setattr(_Recording, "batches", [])
    ws = load_workspace(workspace)
    with Store.open(ws) as store:
        joins = [_ask(store, f"r{n}@example.org", n) for n in range(60)]
    gate = threading.Lock()  # the first turn waits at its write while the rest queue
    signup = Signup(ws, load_signer(ws.secret_path), writing=lambda: gate)
    try:
        with gate:
            sending = [
                signup.mailer.confirmation(Recipient(j.subscriber.email, "", j.subscriber.id), j.reservation, j.made)
                for j in joins
            ]
        assert all(f.result(30) for f in sending)
    finally:
        signup.close()
    batches = _Recording.batches
    assert sorted(k for batch in batches for k in batch) == sorted(j.subscriber.id for j in joins)
    # At most the backend's batch each; one turn may have begun before the rest queued.
    assert max(map(len, batches)) <= 25 and len(batches) <= 4


def test_many_signups_at_once_each_get_one_email(workspace: Path) -> None:
    """Two hundred requests from twenty clients at once, some for the same address: each
    address is added once, pending, and gets one confirmation email."""
    enable_signup(workspace)
    with serve_workspace(workspace) as site:

        def post(n: int) -> int:
            with httpx.Client(timeout=30) as client:
                return client.post(
                    f"{site.url}/subscribe",
                    data={"email": f"r{n % 150}@example.org"},
                    headers={"X-Forwarded-For": f"10.0.{n // 200}.{n % 200 + 1}"},
                ).status_code

        with ThreadPoolExecutor(20) as pool:
            assert list(pool.map(post, range(200))) == [200] * 200
        wait_for_mails(workspace / CONFIRM_DIR, 150)
    # The server has stopped, every email under way written.
    assert _to(workspace) == sorted(f"r{n}@example.org" for n in range(150))
    with Store.open(load_workspace(workspace)) as store:
        assert store.count_by_status()["pending"] == 150
        assert store.queued_confirmations(0) == []


@pytest.mark.slow
def test_a_killed_server_s_reserved_emails_go_out_at_the_next_start_once(workspace: Path) -> None:
    """kill -9 while the mailer's turn waits for a provider that says nothing, with more
    requests answered behind it: the next start sends each of those once."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    got_one = threading.Event()

    def accept() -> None:
        conn, _ = listener.accept()
        accepted.append(conn)
        got_one.set()

    threading.Thread(target=accept, daemon=True).start()
    enable_signup(workspace)
    silent = {"host": "127.0.0.1", "port": listener.getsockname()[1], "security": "none", "timeout": 60}
    configure(workspace, delivery={"backend": "smtp", "max_attempts": 1, "smtp": silent})
    try:
        with serve_process(workspace, check=False) as served, httpx.Client(timeout=30) as client:
            url = f"{served.url}/subscribe"
            assert client.post(url, data={"email": "first@example.org"}).status_code == 200
            assert got_one.wait(20)  # its turn is stuck with the provider
            for n in range(5):
                headers = {"X-Forwarded-For": f"198.51.100.{n + 1}"}
                assert client.post(url, data={"email": f"r{n}@example.org"}, headers=headers).status_code == 200
            served.process.kill()
            served.process.wait()
    finally:
        listener.close()
        for conn in accepted:
            conn.close()
    configure(workspace, delivery={"backend": "outbox"})
    for _ in range(2):  # the second start finds nothing left to send
        with serve_process(workspace):
            wait_for_mails(workspace / CONFIRM_DIR, 5)
    to = _to(workspace)
    # `first` may have been handed over when the server was killed: then it is not sent again.
    assert [a for a in to if a != "first@example.org"] == [f"r{n}@example.org" for n in range(5)]
    assert to.count("first@example.org") <= 1
