"""Joining under load: POST /subscribe against one `highlights serve` process.

    .venv/bin/python benchmarks/signup.py [--requests 2000] [--clients 20]

A fresh copy of the example workspace with signup on and the outbox backend; the server
is a real `highlights serve` process on loopback. The clients (asyncio, one kept-open
connection each) post form-encoded requests as a reader's browser does, each from its own
address behind the trusted proxy (X-Forwarded-For from 127.0.0.1), so the per-client limit
does not stop a benchmark that stands for many readers; one request in five repeats an
address asked for earlier. Reported: requests per second over the timed run, and the 50th
and 99th percentile and the slowest latency. Targets: at least 300 requests per second,
p99 under 100 ms.

Afterwards, with the server stopped (Ctrl-C, which lets it finish the emails under way):
every answer was 200; the database holds each address once, all `pending`; the outbox
holds exactly one confirmation email per address; the server's log has no error.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlencode

import benchargs
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support.webapp import serve_process  # noqa: E402
from support.workspace import copy_example  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
HIGHLIGHTS = Path(sys.executable).with_name("highlights")
TARGET_RPS = 300
TARGET_P99_MS = 100
WARM_UP = 20


def make_workspace() -> Path:
    root = copy_example(Path(tempfile.mkdtemp(prefix="highlights-signup-bench-")))
    settings = yaml.safe_load((root / "highlights.yaml").read_text(encoding="utf-8"))
    settings["signup"] = {"enabled": True, "welcome": "none"}
    settings["delivery"]["backend"] = "outbox"
    (root / "highlights.yaml").write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    (root / "subscribers").mkdir()
    return root


def address(n: int) -> str:
    """The n-th request's address: every fifth one repeats the address of two requests
    before, which is often still in flight on another connection."""
    return f"reader{n - 2 if n % 5 == 4 else n}@example.org"


def request_bytes(host: str, n: int) -> bytes:
    body = urlencode({"email": address(n), "name": f"Reader {n}", "website": ""}).encode()
    client = f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256 + 1}"
    head = (
        f"POST /subscribe HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\nX-Forwarded-For: {client}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    await reader.readexactly(length)
    return status


async def run_clients(port: int, numbers: list[int], clients: int) -> tuple[float, list[float], list[int]]:
    """Send the requests (by number) over `clients` kept-open connections; (wall seconds,
    latencies in seconds, status codes)."""
    host = f"127.0.0.1:{port}"
    queue = iter(numbers)
    latencies: list[float] = []
    statuses: list[int] = []

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for n in queue:
                data = request_bytes(host, n)
                start = time.perf_counter()
                writer.write(data)
                await writer.drain()
                statuses.append(await read_response(reader))
                latencies.append(time.perf_counter() - start)
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - start, latencies, statuses


def main() -> int:
    parser = benchargs.parser(__doc__)
    parser.add_argument("--requests", type=int, default=2000, help="POST /subscribe requests (default: 2000)")
    parser.add_argument("--clients", type=int, default=20, help="clients posting at once (default: 20)")
    args = parser.parse_args()

    root = make_workspace()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HIGHLIGHTS_", "SENDGRID_"))}
    env |= {"HIGHLIGHTS_SECRET": "benchmark-secret-0123456789abcdef"}
    with serve_process(root, environ=env, check=False, stop_timeout=300) as served:
        port = int(served.url.rsplit(":", 1)[1])
        total = WARM_UP + args.requests
        # Warm-up: the database's first use, the pages' templates, the email's first rendering.
        asyncio.run(run_clients(port, list(range(WARM_UP)), 4))
        time.sleep(1.0)
        wall, latencies, statuses = asyncio.run(run_clients(port, list(range(WARM_UP, total)), args.clients))
        sent_at = time.perf_counter()
    proc, log = served.process, served.stdout + served.stderr
    drained = time.perf_counter() - sent_at
    try:
        latencies_ms = sorted(x * 1000 for x in latencies)
        p50 = statistics.median(latencies_ms)
        p99 = latencies_ms[min(len(latencies_ms) - 1, int(len(latencies_ms) * 0.99))]
        rps = len(latencies) / wall
        wanted = {address(n) for n in range(total)}
        db = sqlite3.connect(root / "subscribers" / "highlights.db")
        rows = db.execute("SELECT email, status FROM subscribers").fetchall()
        db.close()
        emails = sorted((root / "outbox" / "_confirm").glob("*.eml"))
        repeated = [p.name for p in emails if re.search(r"\.\d+\.eml$", p.name)]
        errors = [line.rstrip() for line in log if re.search(r"(?i)error|traceback|database|locked", line)]
        problems = []
        if set(statuses) != {200}:
            problems.append(f"answers other than 200: {sorted(set(statuses))}")
        if sorted(e for e, _ in rows) != sorted(wanted):
            problems.append(f"subscribers: {len(rows)} rows for {len(wanted)} addresses")
        if {s for _, s in rows} != {"pending"}:
            problems.append(f"statuses: {sorted({s for _, s in rows})}")
        if len(emails) != len(wanted) or repeated:
            problems.append(f"confirmation emails: {len(emails)} for {len(wanted)} addresses, {len(repeated)} repeated")
        if errors or proc.returncode != 0:
            problems.append(f"server log: {errors[:5]} (exit {proc.returncode})")
        print(
            f"POST /subscribe x {len(latencies)} from {args.clients} clients, one `highlights serve` process, "
            f"outbox backend ({len(wanted)} addresses, {len(latencies) - len(wanted) + WARM_UP} repeats):"
        )
        ok_rps, ok_p99 = rps >= TARGET_RPS, p99 < TARGET_P99_MS
        print(f"  {rps:.0f} requests/s (target >= {TARGET_RPS})  {'ok' if ok_rps else 'UNDER TARGET'}")
        print(
            f"  latency p50 {p50:.1f} ms, p99 {p99:.1f} ms (target < {TARGET_P99_MS} ms), "
            f"slowest {latencies_ms[-1]:.1f} ms  {'ok' if ok_p99 else 'OVER TARGET'}"
        )
        print(f"  all emails written {drained:.1f} s after the last answer (server stopped then)")
        print(
            f"  {len(rows)} subscribers, all pending, none lost or twice; {len(emails)} confirmation emails, one each"
            if not problems
            else "  PROBLEMS: " + "; ".join(problems)
        )
        return 0 if ok_rps and ok_p99 and not problems else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
