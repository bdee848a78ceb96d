"""SendGrid's Event Webhook into one `highlights serve` process on loopback.

    .venv/bin/python benchmarks/webhook.py                  # 100,000 events, batches of 1,000
    .venv/bin/python benchmarks/webhook.py 20000 --concurrency 4

A fresh copy of the example workspace with N subscribers, all sent 2024-w02 through
SendGrid (the ledger as `send` leaves it), is served by a real `highlights serve`
process. N events (one per recipient: delivered, open, click, deferred, bounce, spam
report, unsubscribe, in the proportions of a real issue's first hour) are signed as
SendGrid signs them, with a key pair made for the run, and POSTed in batches; then the
same batches are POSTed again (a retry storm: every event a duplicate). Reported: events
per second for each pass, and the serve process's peak memory (VmHWM). Target: at least
5,000 events/s, which keeps up with a 1M-recipient issue's first hour.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import benchargs
import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

from highlightsmail.store import ImportRow, Store  # noqa: E402
from support.ports import free_port  # noqa: E402
from support.sendgrid_events import EventSender  # noqa: E402
from support.webapp import serve_process  # noqa: E402
from support.workspace import copy_example  # noqa: E402

ISSUE = "2024-w02"
TARGET = 5000
# What a real issue's first hour brings, per recipient (the rest: processed only).
MIX = (
    ("delivered", 0.60),
    ("open", 0.25),
    ("click", 0.08),
    ("deferred", 0.03),
    ("bounce", 0.02),
    ("blocked", 0.01),
    ("spamreport", 0.005),
    ("unsubscribe", 0.005),
)


def make_workspace(folder: Path, n: int) -> Path:
    root = copy_example(folder / "ws", templates=False)
    (root / "subscribers").mkdir()
    with Store(root / "subscribers" / "highlights.db") as store:
        store.import_rows(ImportRow(f"reader{i:07d}@example.org") for i in range(n))
        store.begin_dispatch(ISSUE, "sendgrid")
        batch, after = 1, 0
        while True:
            claimed, _skipped, after = store.claim_batch(ISSUE, batch, 1000, after)
            if not claimed:
                break
            store.finish_batch(ISSUE, sent=[d.subscriber_id for d in claimed], failed={}, batch=claimed[0].batch)
            batch += 1
    return root


def make_events(sender: EventSender, root: Path, n: int) -> list[dict]:
    conn = sqlite3.connect(root / "subscribers" / "highlights.db")
    people = conn.execute(
        "SELECT id, email FROM subscribers WHERE id IN (SELECT value FROM json_each('[' || ("
        "SELECT group_concat(ids) FROM ledger_batches WHERE issue = ? AND state = 'sent') || ']')) ORDER BY 1",
        (ISSUE,),
    ).fetchall()
    conn.close()
    kinds = [kind for kind, share in MIX for _ in range(round(share * 1000))]
    events = []
    for i, (sid, email) in enumerate(people[:n]):
        kind = kinds[(i * 7919) % len(kinds)]
        extra = {"url": f"https://arxiv.org/abs/2401.{i % 50:05d}"} if kind == "click" else {}
        events.append(sender.event(kind, email=email, issue=ISSUE, subscriber_id=sid, **extra))
    return events


def peak_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def post_all(url: str, sender: EventSender, batches: list[bytes], concurrency: int) -> tuple[float, int]:
    """POST every batch, signed now; (seconds, events recorded)."""
    recorded = 0
    signed = [(body, sender.headers(body)) for body in batches]  # SendGrid's work, not timed

    def post(client: httpx.Client, item: tuple[bytes, dict]) -> int:
        response = client.post(url, content=item[0], headers=item[1])
        if response.status_code != 200:
            raise SystemExit(f"POST answered {response.status_code}: {response.text[:200]}")
        return response.json()["recorded"]

    clients = [httpx.Client(timeout=60) for _ in range(concurrency)]
    try:
        start = time.perf_counter()
        if concurrency == 1:
            recorded = sum(post(clients[0], item) for item in signed)
        else:
            with ThreadPoolExecutor(concurrency) as pool:
                recorded = sum(pool.map(lambda ix: post(clients[ix[0] % concurrency], ix[1]), enumerate(signed)))
        return time.perf_counter() - start, recorded
    finally:
        for client in clients:
            client.close()


def main() -> int:
    parser = benchargs.parser(__doc__)
    parser.add_argument("events", nargs="?", type=int, default=100_000, help="events to post (default: 100000)")
    parser.add_argument("--batch", type=int, default=1000, help="events per POST (default: 1000)")
    parser.add_argument("--concurrency", type=int, default=1, help="POSTs in flight (SendGrid may send several)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="highlights-webhook-bench-") as tmp:
        t0 = time.perf_counter()
        root = make_workspace(Path(tmp), args.events)
        sender = EventSender()
        events = make_events(sender, root, args.events)
        batches = [sender.encode(events[i : i + args.batch]) for i in range(0, len(events), args.batch)]
        print(
            f"setup: {args.events:,} subscribers sent {ISSUE}, {len(batches)} batches of {args.batch} "
            f"({sum(map(len, batches)) / 1e6:.1f} MB of JSON) in {time.perf_counter() - t0:.1f} s"
        )

        port = free_port()
        env = {
            **os.environ,
            "HIGHLIGHTS_WORKSPACE": str(root),
            "HIGHLIGHTS_SECRET": "benchmark-secret-0123456789abcdef",
            "SENDGRID_WEBHOOK_PUBLIC_KEY": sender.public_key,
        }
        highlights = Path(sys.executable).with_name("highlights")
        command = [str(highlights), "serve", "--port", str(port)]
        with serve_process(root, environ=env, command=command, port=port, check=False) as served:
            serve = served.process
            base = served.url
            url = base + "/webhooks/sendgrid"
            idle_kb = peak_kb(serve.pid)
            seconds, recorded = post_all(url, sender, batches, args.concurrency)
            rate = args.events / seconds
            print(
                f"first pass: {recorded:,} of {args.events:,} events recorded in {seconds:.2f} s "
                f"= {rate:,.0f} events/s ({'meets' if rate >= TARGET else 'MISSES'} the {TARGET:,}/s target)"
            )
            again, duplicate_recorded = post_all(url, sender, batches, args.concurrency)
            print(
                f"the same batches again: {duplicate_recorded} recorded, {args.events / again:,.0f} events/s "
                f"({again:.2f} s)"
            )
            print(
                f"serve process peak memory (VmHWM): {peak_kb(serve.pid) / 1024:.0f} MB (after start-up: {idle_kb / 1024:.0f} MB)"
            )
        conn = sqlite3.connect(root / "subscribers" / "highlights.db")
        stored = conn.execute("SELECT count(*) FROM delivery_events").fetchone()[0]
        changed = conn.execute("SELECT count(*) FROM events WHERE source = 'sendgrid-webhook'").fetchone()[0]
        conn.close()
        print(f"database: {stored:,} delivery events, {changed:,} status changes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
