"""More than one machine: several processes on one PostgreSQL database, as they run in
production (real `highlights` processes, a real PostgreSQL server on loopback).

- Two `highlights send ISSUE --yes` share one dispatch: every recipient exactly once,
  both did part of the work; one killed with -9 mid-batch leaves only its batch in doubt.
- Four `highlights serve` processes under 1,000 concurrent one-click POSTs and webhook
  batches: every change recorded once, no error.
- `highlights db copy` of 100,000 subscribers and a finished dispatch: counts equal,
  `status` and `report` print the same on both engines.
- The server down: commands stop with one line naming the server (never the password),
  nothing half written; the web app answers 503 and /healthz says why, then recovers.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from highlightsmail.store import DELIVERY_STATES, ImportRow, Store
from highlightsmail.tokens import Signer
from highlightsmail.urls import SENDGRID_WEBHOOK as PATH
from support.db import raw_connection
from support.events import sent_to_everyone
from support.paths import REPO
from support.sendgrid import SendGridServer
from support.sendgrid_events import EventSender
from support.webapp import Served, serve_process

HIGHLIGHTS = [sys.executable, "-m", "highlightsmail"]
ISSUE = "2024-w02"
API_KEY = "SG.postgresql-tests"
ONE_CLICK = "List-Unsubscribe=One-Click"
URLENCODED = {"Content-Type": "application/x-www-form-urlencoded"}


def _configure(root: Path, **sendgrid: object) -> None:
    path = root / "highlights.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["delivery"].update({"backend": "sendgrid", "max_attempts": 3, "backoff": 0.01})
    data["delivery"]["sendgrid"].update(sendgrid)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, **extra}


def _highlights(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HIGHLIGHTS, *args], cwd=root, env=env or _env(), capture_output=True, text=True, timeout=300
    )


# ------------------------------------------------------------------ two senders, one dispatch


def _ledger_rows(url: str, issue: str) -> list[tuple[str, str, int | None]]:
    """(address, state, sender) of each recipient: the sender that claimed their batch."""
    with raw_connection(url) as conn:
        senders = dict(
            tuple(r) for r in conn.execute("SELECT batch, claimed_by FROM ledger_batches WHERE issue = ?", (issue,))
        )
    with Store(url) as store:
        return [(d.email, d.state, senders.get(d.batch)) for d in store.iter_deliveries(issue, DELIVERY_STATES)]


def _sender(root: Path, sg: SendGridServer) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*HIGHLIGHTS, "send", ISSUE, "--yes", "--skip-test-check"],
        cwd=root,
        env=_env(SENDGRID_API_KEY=API_KEY, HIGHLIGHTS_SENDGRID_HOST=sg.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def _wait(what: str, ready, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {seconds:g} s for {what}")
        time.sleep(0.01)


@pytest.mark.slow
def test_two_senders_share_a_dispatch_and_a_killed_one_leaves_only_its_batch_in_doubt(
    workspace: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HIGHLIGHTS_DATABASE_URL", pg_url)
    _configure(workspace, batch_size=100, concurrency=2, timeout=60)
    n = 20_000
    emails = [f"reader{i:05d}@example.org" for i in range(n)]
    with Store(pg_url) as store:
        store.import_rows(ImportRow(e) for e in emails)

    # Each sender posts to a server of its own, so the test can hold the requests of the
    # one it kills, and tell who sent what.
    with (
        SendGridServer(api_key=API_KEY, record="ids", stall_seconds=120) as sg_a,
        SendGridServer(api_key=API_KEY, record="ids", stall_seconds=120) as sg_b,
    ):
        a, b = _sender(workspace, sg_a), _sender(workspace, sg_b)
        try:
            _wait("both senders to send", lambda: sg_a.stats.accepted >= 3 and sg_b.stats.accepted >= 3)
            # From now on b's requests get no answer: its batches are under way when it dies.
            sg_b.fail_next("stall", 1000)
            stalled = len(sg_b.faulted)
            _wait("a request of b to hang", lambda: len(sg_b.faulted) >= stalled + 1 and b.poll() is None)
            b.send_signal(signal.SIGKILL)
            b.wait(30)
            out, err = a.communicate(timeout=240)
        finally:
            for proc in (a, b):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        sg_b.clear_faults()

        rows = _ledger_rows(pg_url, "2024-w02")
        states = {email: state for email, state, _ in rows}
        senders = {who for _, state, who in rows if state == "sent"}
        doubt = sorted(e for e, s in states.items() if s == "in_doubt")
        # The other sender finished everything else, and said what was in doubt.
        assert set(states.values()) == {"sent", "in_doubt"}, set(states.values())
        assert len(states) == n and doubt
        assert a.returncode == 1, err
        assert f"in doubt {len(doubt)}" in out and "failed 0" in out
        # Only the killed sender's claims are in doubt: b's number is on the rows it sent
        # to its own server.
        killed = {who for email, _, who in rows if email in sg_b.recipient_ids}
        assert len(killed) == 1
        assert {who for _, state, who in rows if state == "in_doubt"} == killed
        assert len(senders) == 2  # both did part of the work
        # Every recipient sent got exactly one copy; one in doubt at most one (b may have
        # had an answer it died before recording: that is what in doubt means).
        copies = sg_a.recipient_ids + sg_b.recipient_ids
        for email, state in states.items():
            assert copies[email] == 1 if state == "sent" else copies[email] <= 1, (email, state, copies[email])
        assert sg_a.recipient_ids and sg_b.recipient_ids

        status = _highlights(workspace, "status", ISSUE, "--verbose")
        assert status.returncode == 0, status.stderr
        assert "stopped" in status.stdout and f"in doubt {len(doubt)}" in status.stdout
        listed = re.findall(r"^      (\S+@example\.org)$", status.stdout, re.MULTILINE)
        assert sorted(listed) == doubt

        # Running again without --resend-in-doubt sends nobody a second copy.
        again = _sender(workspace, sg_a)
        again_out, again_err = again.communicate(timeout=120)
        assert again.returncode == 1, again_err
        assert "nothing left to send" in again_out
        assert sg_a.recipient_ids + sg_b.recipient_ids == copies


def test_status_says_sending_now_while_a_sender_is_alive_anywhere(workspace: Path, pg_url: str, monkeypatch) -> None:
    monkeypatch.setenv("HIGHLIGHTS_DATABASE_URL", pg_url)
    with Store(pg_url) as store:
        store.import_rows(ImportRow(f"r{i}@example.org") for i in range(3))
        store.begin_dispatch(ISSUE, "outbox")
    with Store(pg_url) as elsewhere:  # a sender on another machine, between two batches
        elsewhere.join_dispatch(ISSUE)
        assert "sending now" in _highlights(workspace, "status", ISSUE).stdout
    assert "stopped" in _highlights(workspace, "status", ISSUE).stdout


# ------------------------------------------------------------------ four web app processes


@contextmanager
def _serving(root: Path, count: int, env: dict[str, str]) -> Iterator[list[Served]]:
    """`count` `highlights serve` processes on free ports, over one database."""
    with ExitStack() as stack:
        yield [stack.enter_context(serve_process(root, env, check=False)) for _ in range(count)]


@pytest.mark.slow
def test_four_web_processes_record_every_change_once_under_concurrent_load(
    workspace: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HIGHLIGHTS_DATABASE_URL", pg_url)
    sender = EventSender()
    monkeypatch.setenv("SENDGRID_WEBHOOK_PUBLIC_KEY", sender.public_key)
    people = 500
    with Store(pg_url) as store:
        store.import_rows(ImportRow(f"reader{i}@example.org") for i in range(1, people + 1))
        ids = [s.id for s in store.iter_subscribers()]
        sent_to_everyone(store, ISSUE)
    signer = Signer(os.environ["HIGHLIGHTS_SECRET"].encode())
    # 1,000 one-click POSTs: each subscriber twice, to two different processes at once.
    clicks = [(sid, k) for sid in ids for k in (0, 1)]
    # Webhook batches: an `open` and a `delivered` for everyone, each batch posted to two
    # processes at once (SendGrid retries a batch it saw no answer to).
    events = [
        sender.event(kind, email=f"reader{i}@example.org", issue=ISSUE, subscriber_id=sid)
        for i, sid in enumerate(ids, start=1)
        for kind in ("open", "delivered")
    ]
    batches = list(EventSender.batches(events, 50))
    jobs: list[tuple[str, object, int]] = [("click", c, k) for k, c in enumerate(clicks)]
    jobs += [("events", batch, k) for k, batch in enumerate(batches) for k in (k, k + 1)]
    random.Random(12).shuffle(jobs)

    with (
        _serving(workspace, 4, _env()) as served,
        httpx.Client(timeout=60, limits=httpx.Limits(max_connections=64, max_keepalive_connections=64)) as client,
    ):

        def do(job: tuple[str, object, int]) -> int:
            what, payload, k = job
            base = served[k % len(served)].url
            if what == "click":
                sid, _ = payload  # type: ignore[misc]
                url = f"{base}/u/{signer.make(sid)}"
                return client.post(url, content=ONE_CLICK, headers=URLENCODED).status_code
            return sender.post(base + PATH, payload, client=client).status_code  # type: ignore[arg-type]

        with ThreadPoolExecutor(max_workers=64) as pool:
            codes = list(pool.map(do, jobs))
    logs = ["".join(one.stderr) for one in served]

    assert len(jobs) == 1000 + 2 * len(batches)
    assert codes == [200] * len(jobs)
    with raw_connection(pg_url) as conn:
        changes = [
            tuple(r) for r in conn.execute("SELECT subscriber_id, source FROM events WHERE to_status = 'unsubscribed'")
        ]
        kinds = [
            tuple(r)
            for r in conn.execute(
                "SELECT kind, count(*), count(DISTINCT subscriber_id) FROM delivery_events GROUP BY kind ORDER BY kind"
            )
        ]
        left = conn.execute("SELECT count(*) FROM subscribers WHERE status = 'unsubscribed'").fetchone()[0]
    assert sorted(sid for sid, _ in changes) == sorted(ids)  # each unsubscribe recorded once
    assert {source for _, source in changes} == {"one-click"}
    assert left == people
    assert kinds == [("delivered", people, people), ("open", people, people)]  # each event once
    for log in logs:
        assert "ERROR" not in log and "Traceback" not in log, log


# ------------------------------------------------------------------ db copy


@pytest.mark.slow
def test_db_copy_of_a_workspace_with_100000_subscribers_and_a_finished_dispatch(
    workspace: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    n = 100_000
    db = workspace / "subscribers" / "highlights.db"
    sender = EventSender()
    with Store(db) as store:
        store.import_rows(ImportRow(f"reader{i:06d}@example.org", f"Reader {i}") for i in range(n))
        store.set_status("reader000007@example.org", "unsubscribed", "one-click")
        store.record_test_send(ISSUE, "f" * 64, ["ada@example.org"])
        assert sent_to_everyone(store, ISSUE) == n - 1
        assert store.finish_dispatch_if_done(ISSUE)
        from highlightsmail.feedback.events import record, sendgrid_row

        started = time.time()
        rows = [
            sendgrid_row(
                sender.event(
                    kind, email=f"reader{i:06d}@example.org", issue=ISSUE, subscriber_id=i + 1, at=started + 60 * i
                )
            )
            for i in range(0, 400, 3)
            for kind in ("delivered", "open", "click")
        ]
        record(store, [r for r in rows if r is not None], source="sendgrid-webhook", soft_limit=3)
        store.set_status("reader000300@example.org", "complained", "sendgrid-webhook")
    on_sqlite = [
        _highlights(workspace, *cmd)
        for cmd in (("status", ISSUE, "--verbose"), ("report", ISSUE), ("report", ISSUE, "--format", "json"))
    ]
    assert all(r.returncode == 0 for r in on_sqlite), [r.stderr for r in on_sqlite]

    copied = _highlights(workspace, "db", "copy", "--to", pg_url)
    assert copied.returncode == 0, copied.stderr
    with Store(db) as source:
        want = (
            source._query("SELECT count(*) FROM subscribers")[0][0],
            sum(source.delivery_counts(ISSUE).values()),
        )
    assert f"subscribers {n}" in copied.stdout and "ledger_batches" in copied.stdout
    assert _rows_planned(pg_url, "subscribers") == want[0]  # its first send planned with them
    with raw_connection(db) as sqlite_conn, raw_connection(pg_url) as pg_conn:
        for table in (
            "subscribers",
            "events",
            "dispatches",
            "ledger_recipients",
            "ledger_batches",
            "ledger_exceptions",
            "test_sends",
            "delivery_events",
            "scanned_mail",
        ):
            mine = sqlite_conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            theirs = pg_conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            assert mine == theirs, table
    assert want == (n, n - 1)

    monkeypatch.setenv("HIGHLIGHTS_DATABASE_URL", pg_url)
    on_pg = [
        _highlights(workspace, *cmd)
        for cmd in (("status", ISSUE, "--verbose"), ("report", ISSUE), ("report", ISSUE, "--format", "json"))
    ]
    for before, after in zip(on_sqlite, on_pg, strict=True):
        assert (after.returncode, after.stdout) == (0, before.stdout)
    # The copy goes on working: new rows take new ids, not copied ones.
    added = _highlights(workspace, "subscribers", "add", "late@example.org")
    assert added.returncode == 0, added.stderr
    with Store(pg_url) as store:
        assert store.find("late@example.org").id == n + 1

    # A database that is not empty is refused, and keeps what it holds.
    again = _highlights(
        workspace,
        "db",
        "copy",
        "--to",
        pg_url,
        env={k: v for k, v in os.environ.items() if k != "HIGHLIGHTS_DATABASE_URL"},
    )
    assert again.returncode == 1
    assert again.stderr.startswith("Error: postgresql://postgres@127.0.0.1:") and "is not empty" in again.stderr
    with Store(pg_url) as store:
        assert store.count_by_status()["active"] == n - 2 + 1  # and late@example.org


# ------------------------------------------------------------------ the server down


@pytest.mark.slow
def test_the_server_down_is_one_line_naming_it_and_the_web_app_answers_503(workspace: Path) -> None:
    from support.postgresql import running_cluster

    password = "s3cret-never-shown"
    with running_cluster() as cluster:
        url = cluster.create_database("down")
        with_password = url.replace("postgres@", f"postgres:{password}@")
        env = _env(HIGHLIGHTS_DATABASE_URL=with_password, PGPASSWORD=password)
        (workspace / "list.csv").write_text("email\n" + "".join(f"new{i}@example.org\n" for i in range(50)))
        with Store(url) as store:
            store.import_rows(ImportRow(f"reader{i}@example.org") for i in range(5))
            sid = store.find("reader1@example.org").id
        signer = Signer(os.environ["HIGHLIGHTS_SECRET"].encode())

        with _serving(workspace, 1, env) as (served,), httpx.Client(timeout=60) as client:
            base = served.url
            assert client.get(f"{base}/healthz").text == "ok"
            cluster.stop("fast")  # (immediate would lose commits: the test cluster runs without fsync)
            try:
                where = f"postgresql://postgres@127.0.0.1:{cluster.port}/down"
                for args in (
                    ("subscribers", "add", "new@example.org"),
                    ("subscribers", "import", "list.csv"),
                    ("subscribers", "list"),
                    ("send", ISSUE, "--yes", "--skip-test-check"),
                    ("status", ISSUE),
                    ("db", "upgrade"),
                ):
                    done = _highlights(workspace, *args, env=env)
                    assert done.returncode == 1, (args, done.stdout, done.stderr)
                    assert done.stdout == "" or args[0] == "send", (args, done.stdout)
                    lines = done.stderr.splitlines()
                    assert len(lines) == 1, (args, done.stderr)
                    assert lines[0].startswith(f"Error: {where}: cannot connect to the database server"), lines
                    assert password not in done.stderr
                page = client.get(f"{base}/u/{signer.make(sid)}")
                assert page.status_code == 503 and "try again later" in page.text.lower()
                assert (
                    client.post(f"{base}/u/{signer.make(sid)}", content=ONE_CLICK, headers=URLENCODED).status_code
                    == 503
                )
                health = client.get(f"{base}/healthz")
                assert health.status_code == 503
                assert health.text.startswith(f"database unavailable: {where}: ")
                assert password not in health.text
            finally:
                cluster.start()
            # Back: nothing was half written, and the same process answers again.
            _wait("the web app to recover", lambda: client.get(f"{base}/healthz").status_code == 200)
            assert client.post(f"{base}/u/{signer.make(sid)}", content=ONE_CLICK, headers=URLENCODED).status_code == 200
        assert password not in served.log
        with Store(url) as store:
            assert store.count_by_status() == {
                "active": 4,
                "unsubscribed": 1,
                "bounced": 0,
                "complained": 0,
                "pending": 0,
            }
            assert store.dispatch_info(ISSUE) is None


def _log_lines(log: str) -> list[str]:
    """What a `highlights serve` process logged, but the access log and the lines of
    starting and stopping."""
    return [
        line
        for line in log.splitlines()
        if not re.search(r'"[A-Z]+ \S+ HTTP/1\.1" \d{3}', line)
        and not line.startswith(
            ("INFO:     Started", "INFO:     Waiting", "INFO:     Application", "INFO:     Shutting")
        )
        and not line.startswith(("INFO:     Finished", "Links in mail point at"))
    ]


@pytest.mark.slow
def test_the_server_down_and_back_is_one_line_each_way_and_requests_recover(workspace: Path) -> None:
    """psycopg.pool's two-line warnings came 10-12 times in 30 s on top of the line each
    failing request logs; the signup's connection, made once, never worked again."""
    from support.postgresql import running_cluster
    from support.signup import enable_signup

    enable_signup(workspace)
    with running_cluster() as cluster:
        url = cluster.create_database("downandback")
        with Store(url) as store:
            sid = store.add("reader@example.org")[0].id
        signer = Signer(os.environ["HIGHLIGHTS_SECRET"].encode())
        env = _env(HIGHLIGHTS_DATABASE_URL=url)
        with _serving(workspace, 1, env) as (served,), httpx.Client(timeout=60) as client:
            base = served.url
            assert client.get(f"{base}/healthz").text == "ok"
            assert client.post(f"{base}/subscribe", data={"email": "first@example.org"}).status_code == 200
            cluster.stop("fast")
            try:
                where = f"postgresql://postgres@127.0.0.1:{cluster.port}/downandback"
                for _ in range(10):  # a load balancer asking every few seconds
                    health = client.get(f"{base}/healthz")
                    assert health.status_code == 503
                    assert health.text.startswith(
                        f"database unavailable: {where}: cannot connect to the database server"
                    )
                failing = [
                    client.get(f"{base}/u/{signer.make(sid)}"),
                    client.post(f"{base}/u/{signer.make(sid)}", content=ONE_CLICK, headers=URLENCODED),
                    client.post(f"{base}/subscribe", data={"email": "second@example.org"}),
                ]
                assert [r.status_code for r in failing] == [503, 503, 503]
                time.sleep(5)  # the pool tries to reconnect meanwhile
            finally:
                cluster.start()
            _wait("the web app to recover", lambda: client.get(f"{base}/healthz").status_code == 200)
            # Every route works again in the same process, the signup's too.
            assert client.post(f"{base}/u/{signer.make(sid)}", content=ONE_CLICK, headers=URLENCODED).status_code == 200
            assert client.post(f"{base}/subscribe", data={"email": "third@example.org"}).status_code == 200
        log = "".join(served.stderr)
        with Store(url) as store:
            assert store.find("third@example.org") is not None and store.find("second@example.org") is None
    lines = _log_lines(log)
    went = [line for line in lines if "database unavailable" in line]
    back = [line for line in lines if "database available again" in line]
    per_request = [line for line in lines if "cannot answer" in line]
    assert len(went) == 1 and "cannot connect to the database server" in went[0], lines
    assert back == [f"database available again: {where}"], lines
    assert len(per_request) == len(failing), lines  # the documented line of each failed request
    assert sorted(lines) == sorted(went + per_request + back), lines  # and nothing else: no psycopg.pool


class _Gate:
    """A TCP proxy in front of the PostgreSQL server that can hold everything: while it
    is closed, nothing passes either way, on new connections or on those already made
    (nothing is lost: it passes once the gate opens), as when a network loses the
    server and packets are dropped, not refused."""

    def __init__(self, port: int) -> None:
        import socket
        import threading

        self._upstream = port
        self._open = threading.Event()
        self._open.set()
        self.waiting = 0  # connections accepted while closed, not passed on yet
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client) -> None:
        import socket
        import threading

        if not self._open.is_set():
            self.waiting += 1
            self._open.wait()
            self.waiting -= 1
        try:
            server = socket.create_connection(("127.0.0.1", self._upstream))
        except OSError:
            client.close()
            return
        self._sockets.append(server)
        for a, b in ((client, server), (server, client)):
            threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, a, b) -> None:
        try:
            while data := a.recv(65536):
                self._open.wait()
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(2)
                except OSError:
                    pass

    def close(self) -> None:
        self._listener.close()
        self._open.set()
        for s in self._sockets:
            s.close()


def test_healthz_answers_without_waiting_for_a_server_that_does_not_answer(
    workspace: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A server out of reach (packets dropped, not refused) held /healthz for as long as
    the pool's connection waited on it: a load balancer gives up on a check long before."""
    from urllib.parse import urlsplit

    from support.webapp import serve_workspace

    port = urlsplit(pg_url).port
    assert port is not None
    Store(pg_url).close()  # the schema, as `highlights db upgrade` makes it: the web app makes none
    gate = _Gate(port)
    monkeypatch.setenv("HIGHLIGHTS_DATABASE_URL", pg_url.replace(f":{port}/", f":{gate.port}/"))
    caplog.set_level("INFO", logger="highlightsmail.web")
    try:
        with serve_workspace(workspace) as site, httpx.Client(timeout=30) as client:
            assert client.get(f"{site.url}/healthz").text == "ok"
            gate.hold()
            health = client.get(f"{site.url}/healthz")
            # Answered while the check still waits on the server (libpq's shortest
            # connect timeout is 2 s), and while everything stays held.
            assert health.status_code == 503
            assert "the database did not answer within" in health.text, health.text
            assert gate.waiting  # the check's connection, still held
            _wait(
                "the check to give up", lambda: client.get(f"{site.url}/healthz").text.endswith("nothing was changed")
            )
            gate.release()
            _wait("the server to be reachable again", lambda: client.get(f"{site.url}/healthz").status_code == 200)
    finally:
        gate.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "highlightsmail.web"]
    assert len([m for m in messages if m.startswith("database unavailable: ")]) == 1, messages
    assert len([m for m in messages if m.startswith("database available again: ")]) == 1, messages
    from highlightsmail.web.health import HEALTH_WAIT_S

    assert HEALTH_WAIT_S <= 1  # what /healthz waits for the database, at most


# ------------------------------------------------------------------ an empty database


NO_DATA = "no highlightsmail data here; run `highlights db copy`"


def _tables(url: str) -> list[str]:
    with raw_connection(url) as conn:
        return [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]


@pytest.mark.parametrize(
    "args",
    [
        ("status", "latest"),
        ("status", "latest", "--verbose"),
        ("report", "latest"),
        ("send", "latest", "--yes", "--skip-test-check"),
        ("send", "latest", "--yes", "--skip-test-check", "--dry-run"),
        ("send", "latest", "--test"),
        ("subscribers", "list"),
        ("subscribers", "add", "ada@example.org"),
        ("subscribers", "remove", "ada@example.org"),
        ("subscribers", "import", "list.csv"),
        ("subscribers", "export"),
        ("bounces", "scan", "empty.mbox"),
        ("publish",),
        ("serve", "--port", "0"),
    ],
    ids=" ".join,
)
def test_no_command_makes_the_schema_in_an_empty_postgresql_database(
    workspace: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...]
) -> None:
    """Pointed at a new, empty database before `db copy`, `status latest` made the
    tables and said "not sent yet (0 active subscribers)", as if the list were lost."""
    from click.testing import CliRunner

    from highlightsmail.cli import main

    monkeypatch.setenv("HIGHLIGHTS_DATABASE_URL", pg_url)
    (workspace / "list.csv").write_text("email\nada@example.org\n", encoding="utf-8")
    (workspace / "empty.mbox").write_text("", encoding="utf-8")
    done = CliRunner().invoke(main, list(args))
    assert done.exit_code == 1, (done.output, done.exception)
    assert done.stderr.splitlines() == [
        f"Error: {pg_url}: {NO_DATA} (to move a SQLite state in) or "
        "`highlights db upgrade` (to start an empty list here)"
    ]
    assert _tables(pg_url) == []
    assert not (workspace / "outbox").exists(), "nothing was sent"


def test_the_web_app_on_an_empty_postgresql_database_answers_503_and_healthz_says_why(
    workspace: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starlette.testclient import TestClient

    from highlightsmail.authoring.workspace import load_workspace
    from highlightsmail.web.application import create_app

    monkeypatch.setenv("HIGHLIGHTS_DATABASE_URL", pg_url)
    signer = Signer(os.environ["HIGHLIGHTS_SECRET"].encode())
    with TestClient(create_app(load_workspace())) as client:
        health = client.get("/healthz")
        assert health.status_code == 503
        assert NO_DATA in health.text
        assert client.get(f"/u/{signer.make(1)}").status_code == 503
        assert client.post(f"/u/{signer.make(1)}", content=ONE_CLICK, headers=URLENCODED).status_code == 503
        assert _tables(pg_url) == []
        # `db upgrade` (or `db copy`) elsewhere: the same app answers without a restart.
        upgraded = _highlights(workspace, "db", "upgrade", env=_env(HIGHLIGHTS_DATABASE_URL=pg_url))
        assert upgraded.returncode == 0, upgraded.stderr
        assert upgraded.stdout == f"{pg_url}: created schema {_schema_version()}, with no subscribers yet\n"
        assert client.get("/healthz").text == "ok"
    status = _highlights(workspace, "status", "latest", env=_env(HIGHLIGHTS_DATABASE_URL=pg_url))
    assert (status.returncode, status.stdout.splitlines()[-1]) == (0, f"{ISSUE}: not sent yet (0 active subscribers)")


def _schema_version() -> int:
    from highlightsmail.store import SCHEMA_VERSION

    return SCHEMA_VERSION


def test_the_readmes_steps_to_postgresql_work_in_their_order(workspace: Path, pg_url: str) -> None:
    """The README said to set `database:` first and then run `db copy`, which then
    refused ("already in PostgreSQL"). Its steps, in its order, move the state over."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## More than one machine: PostgreSQL", 1)[1].split("\n## ", 1)[0]
    steps = re.findall(r"^(\d)\. (.*?)(?=^\d\. |\Z)", section, flags=re.S | re.M)
    copy_step = next(n for n, text in steps if "highlights db copy --to" in text)
    setting_step = next(n for n, text in steps if "database: postgresql://" in text)
    assert copy_step < setting_step, "db copy comes before pointing `database:` at the server"

    (workspace / "list.csv").write_text("email\nada@example.org\ngrace@example.org\n", encoding="utf-8")
    assert _highlights(workspace, "subscribers", "import", "list.csv").returncode == 0
    before = _highlights(workspace, "status", "latest")
    # The copy, while highlights.yaml still names the SQLite file.
    copied = _highlights(workspace, "db", "copy", "--to", pg_url)
    assert copied.returncode == 0, copied.stderr
    # Then `database:` names the server, without the password (the test server needs none).
    settings = workspace / "highlights.yaml"
    text = settings.read_text(encoding="utf-8")
    settings.write_text(re.sub(r"(?m)^database: .*$", f"database: {pg_url}", text, count=1), encoding="utf-8")
    assert f"database: {pg_url}" in settings.read_text(encoding="utf-8")
    after = _highlights(workspace, "status", "latest")
    assert (after.returncode, after.stdout) == (0, before.stdout), after.stderr
    assert "(2 active subscribers)" in after.stdout
    # Running the copy again now names the order, instead of only refusing.
    again = _highlights(workspace, "db", "copy", "--to", pg_url)
    assert again.returncode == 1
    assert "run it before pointing `database:`" in again.stderr


# ------------------------------------------------------------------ statistics after bulk writes


def _rows_planned(url: str, table: str) -> float:
    """The rows PostgreSQL's planner thinks `table` holds (below 1: it has never looked)."""
    with raw_connection(url) as conn:
        return float(conn.execute("SELECT reltuples FROM pg_class WHERE relname = ?", (table,)).fetchone()[0])


def _chunk_plan(url: str) -> str:
    """The plan of the query that fixes a send's recipients a chunk at a time."""
    with raw_connection(url) as conn:
        rows = conn.execute(
            "EXPLAIN SELECT id FROM subscribers AS s WHERE status = 'active' AND merged_into IS NULL AND id > ?"
            " AND (s.paused_until IS NULL OR s.paused_until <= ?) ORDER BY id LIMIT ?",
            (0, "2026-01-01T00:00:00Z", 1000),
        ).fetchall()
    return "\n".join(r[0] for r in rows)


def test_a_large_import_gathers_the_statistics_the_next_send_is_planned_with(pg_url: str) -> None:
    """Autovacuum gathers them a while later; a send begun before then fixed its
    recipients by scanning every subscriber for each chunk."""
    with Store(pg_url) as store:
        store.import_rows(ImportRow(f"early{i}@example.org", "") for i in range(5))
        assert _rows_planned(pg_url, "subscribers") < 1  # a few rows: left to autovacuum
        store.import_rows((ImportRow(f"tried{i}@example.org", "") for i in range(3000)), dry_run=True)
        assert _rows_planned(pg_url, "subscribers") < 1  # rolled back, statistics and all
        store.import_rows(ImportRow(f"reader{i}@example.org", "") for i in range(3000))
    assert _rows_planned(pg_url, "subscribers") == 3005
    assert _rows_planned(pg_url, "subscriber_topics") >= 0
    assert "Bitmap" not in _chunk_plan(pg_url)  # read in id order, a chunk at a time
