"""The web endpoint beside a bare app: `highlights serve` and its floor, in one run.

    .venv/bin/python benchmarks/web_endpoint.py [--requests 3000] [--clients 20]

Servers on loopback, each a process of its own under the same uvicorn settings
(`uvicorn_config`: proxy headers, no server header, the access log on):

- the floor: a bare Starlette app; GET answers a 2 KB HTML page, POST reads the body,
  does one SQLite insert (WAL, synchronous=NORMAL, a connection kept per thread) in the
  thread pool and answers the same page. Its log is written by uvicorn's own handlers.
- the same floor with its log written as `highlights serve` writes its own (once per
  turn of the event loop, web/accesslog.py): shown beside the first, so that what the
  app costs beyond a bare one can be read apart from what the log writer saves.
- `highlights serve` on a fresh copy of the example workspace, signup on, the outbox
  backend, with a subscriber for every one-click POST.

The clients (asyncio in this process, one kept-open HTTP/1.1 connection each, requests
written as raw bytes) measure, each case timed after a short warm-up:

| case | against the floor's |
| --- | --- |
| GET /u/TOKEN, a distinct reader's link each | GET |
| one-click POST /u/TOKEN (`List-Unsubscribe=One-Click`, RFC 8058), a distinct reader each, so each changes a row | POST |
| POST /subscribe, a new address each, from its own address behind the trusted proxy (as benchmarks/signup.py) | - |

Printed: requests per second, p50 and p99 latency, the ratio to the floor (and, in
brackets, to the floor with the product's log writer), and the CPU
time the server used per request (steadier than the rates on a busy machine), and how
busy the clients and the server were (the clients must use far less than a core, or
they are what is measured). Targets: GET /u/TOKEN >= 0.4 of the floor's GET, p99 < 20 ms;
one-click POST >= 0.7 of the floor's POST, p99 < 50 ms; POST /subscribe >= 1,000
requests/s, p99 < 50 ms.

Afterwards, with the servers stopped: every answer was 200; every reader who posted is
unsubscribed with exactly one `one-click` event; every new address is there once,
pending, with one confirmation email in the outbox; the floor's table holds one row per
POST; the server's log has no error.
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
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import benchargs
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support.webapp import serve_process  # noqa: E402
from support.workspace import copy_example  # noqa: E402

WARM_UP = 100
SECRET = "benchmark-secret-0123456789abcdef"
ONE_CLICK = b"List-Unsubscribe=One-Click"
FORM = "application/x-www-form-urlencoded"
TARGET_GET_RATIO, TARGET_GET_P99_MS = 0.4, 20
TARGET_POST_RATIO, TARGET_POST_P99_MS = 0.7, 50
TARGET_SIGNUP_RPS, TARGET_SIGNUP_P99_MS = 1000, 50


# ---------------------------------------------------------------- the floor (its own process)

FLOOR_PAGE = (
    "<!doctype html>\n<html lang=en><head><meta charset=utf-8><title>Unsubscribe</title>"
    "<meta name=viewport content='width=device-width, initial-scale=1'></head><body><main>"
    + "<p>You will no longer receive this newsletter. This paragraph stands for the page's text.</p>\n" * 21
    + "</main></body></html>\n"
)


def serve_floor(db_path: str, writer: str) -> None:
    """The bare app under uvicorn with `highlights serve`'s settings (`uvicorn_config`),
    its log written by uvicorn's own handlers, or (`writer` "ours") by the one `highlights
    serve` puts in their place."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, Response
    from starlette.routing import Route

    from highlightsmail.serving import bind_socket
    from highlightsmail.web import accesslog
    from highlightsmail.web.application import uvicorn_config

    local = threading.local()

    def insert(body: bytes) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("INSERT INTO hits (body) VALUES (?)", (body,))

    async def page(request: Request) -> Response:
        if request.method == "POST":
            await run_in_threadpool(insert, await request.body())
        return HTMLResponse(FLOOR_PAGE)

    async def healthz(request: Request) -> Response:
        return Response("ok\n", media_type="text/plain")

    app = Starlette(routes=[Route("/page", page, methods=["GET", "POST"]), Route("/healthz", healthz)])
    sock = bind_socket("127.0.0.1", 0)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    print(f"Serving the floor on {url}", flush=True)
    config = uvicorn_config(app)
    if writer == "ours":
        accesslog.batch("uvicorn", "uvicorn.access")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass


def make_floor_db(root: Path, name: str) -> Path:
    path = root / name
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE hits (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    conn.commit()
    conn.close()
    return path


# ---------------------------------------------------------------- the workspace


def make_workspace(root: Path, readers: int) -> list[str]:
    """The example workspace at `root` with signup on, the outbox backend and `readers`
    active subscribers; their unsubscribe tokens, in id order."""
    copy_example(root)
    settings = yaml.safe_load((root / "highlights.yaml").read_text(encoding="utf-8"))
    settings["signup"] = {"enabled": True, "welcome": "none"}
    settings["delivery"]["backend"] = "outbox"
    (root / "highlights.yaml").write_text(yaml.safe_dump(settings, sort_keys=False), encoding="utf-8")
    (root / "subscribers").mkdir()
    os.environ["HIGHLIGHTS_SECRET"] = SECRET  # the signer below and the server's agree

    from highlightsmail.authoring.workspace import load_workspace
    from highlightsmail.store import ImportRow, Store
    from highlightsmail.tokens import load_signer

    ws = load_workspace(root)
    with Store.open(ws) as store:
        store.import_rows(ImportRow(f"leaver{n}@example.org", f"Leaver {n}") for n in range(readers))
    db = sqlite3.connect(ws.db_path)
    ids = [i for (i,) in db.execute("SELECT id FROM subscribers ORDER BY id")]
    db.close()
    signer = load_signer(ws.secret_path)
    return [signer.make(i, "unsubscribe") for i in ids]


# ---------------------------------------------------------------- the clients


def request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def signup_request(n: int) -> bytes:
    body = urlencode({"email": f"joiner{n}@example.org", "name": f"Joiner {n}", "website": ""}).encode()
    client = f"10.{n // 65536 % 256}.{n // 256 % 256}.{n % 256 + 1}"
    return request("POST", "/subscribe", body, {"Content-Type": FORM, "X-Forwarded-For": client})


_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")


class _Connection(asyncio.Protocol):
    """One kept-open connection sending the shared requests one after another."""

    def __init__(self, queue: Iterator[bytes], latencies: list[float], statuses: list[int]) -> None:
        self.queue = queue
        self.latencies = latencies
        self.statuses = statuses
        self.buffer = b""
        self.started = 0.0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._next()

    def _next(self) -> None:
        assert self.transport is not None
        data = next(self.queue, None)
        if data is None:
            self.transport.close()
            return
        self.started = time.perf_counter()
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[: end + 4]
        found = _LENGTH.search(head)
        length = int(found.group(1)) if found else 0
        if len(self.buffer) < end + 4 + length:
            return
        self.latencies.append(time.perf_counter() - self.started)
        self.statuses.append(int(head.split(b" ", 2)[1]))
        self.buffer = self.buffer[end + 4 + length :]
        self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


@dataclass
class Run:
    wall: float
    latencies_ms: list[float]
    statuses: list[int]
    client_cpu: float
    server_cpu: float

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.wall

    def percentile(self, p: float) -> float:
        if p == 50:
            return statistics.median(self.latencies_ms)
        return self.latencies_ms[min(len(self.latencies_ms) - 1, int(len(self.latencies_ms) * p / 100))]


def _cpu_of(pid: int) -> float:
    """A process's user and system CPU seconds so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drive(port: int, pid: int, requests: list[bytes], clients: int) -> Run:
    """Send `requests` over `clients` kept-open connections; how it went."""

    async def go() -> tuple[float, list[float], list[int]]:
        loop = asyncio.get_running_loop()
        queue = iter(requests)
        latencies: list[float] = []
        statuses: list[int] = []
        start = time.perf_counter()
        conns = [
            (await loop.create_connection(lambda: _Connection(queue, latencies, statuses), "127.0.0.1", port))[1]
            for _ in range(clients)
        ]
        await asyncio.gather(*(c.done for c in conns))
        return time.perf_counter() - start, latencies, statuses

    cpu, server_cpu = time.process_time(), _cpu_of(pid)
    wall, latencies, statuses = asyncio.run(go())
    return Run(
        wall,
        sorted(x * 1000 for x in latencies),
        statuses,
        time.process_time() - cpu,
        _cpu_of(pid) - server_cpu,
    )


# ---------------------------------------------------------------- the report


def line(name: str, run: Run, floor: Run | None = None, floor2: Run | None = None) -> str:
    text = f"  {name:<30} {run.rps:>7,.0f} req/s  p50 {run.percentile(50):5.1f} ms  p99 {run.percentile(99):6.1f} ms"
    text += f"  server CPU {run.server_cpu / len(run.latencies_ms) * 1e6:5.0f} us/request"
    text += f"  (busy: clients {run.client_cpu / run.wall:4.0%}, server {run.server_cpu / run.wall:4.0%})"
    if floor is not None:
        text += f"  ratio {run.rps / floor.rps:.2f}"
    if floor2 is not None:
        text += f" ({run.rps / floor2.rps:.2f})"
    return text


def verdict(ok: bool, what: str) -> str:
    return f"    {what}: {'ok' if ok else 'MISSED'}"


def check_database(root: Path, tokens: list[str], signups: int, floor_dbs: list[Path], floor_posts: int) -> list[str]:
    """What was not recorded as it should have been (nothing, when all is well)."""
    problems = []
    db = sqlite3.connect(root / "subscribers" / "highlights.db")
    statuses = dict(db.execute("SELECT email, status FROM subscribers").fetchall())
    leavers = [f"leaver{n}@example.org" for n in range(len(tokens))]
    not_left = [e for e in leavers if statuses.get(e) != "unsubscribed"]
    if not_left:
        problems.append(f"{len(not_left)} readers who posted are not unsubscribed, such as {not_left[0]}")
    events = db.execute(
        "SELECT COUNT(*), COUNT(DISTINCT subscriber_id) FROM events WHERE to_status = 'unsubscribed' AND source = 'one-click'"
    ).fetchone()
    if tuple(events) != (len(tokens), len(tokens)):
        problems.append(f"one-click events: {events[0]} for {events[1]} readers, {len(tokens)} expected")
    joiners = [f"joiner{n}@example.org" for n in range(signups)]
    missing = [e for e in joiners if statuses.get(e) != "pending"]
    if missing or len(statuses) != len(leavers) + len(joiners):
        problems.append(f"signups: {len(missing)} missing or not pending, {len(statuses)} subscribers in all")
    db.close()
    emails = sorted((root / "outbox" / "_confirm").glob("*.eml"))
    to = {re.sub(r"^\d+-|(\.\d+)?\.eml$", "", p.name) for p in emails}
    if len(emails) != len(joiners) or to != set(joiners):
        problems.append(f"confirmation emails: {len(emails)} for {len(joiners)} signups, {len(to)} addresses")
    for path in floor_dbs:
        floor = sqlite3.connect(path)
        rows = floor.execute("SELECT COUNT(*) FROM hits").fetchone()[0]
        floor.close()
        if rows != floor_posts:
            problems.append(f"the floor's table ({path.name}): {rows} rows for {floor_posts} POSTs")
    return problems


def main() -> int:
    if sys.argv[1:2] == ["--serve-floor"]:
        serve_floor(sys.argv[2], sys.argv[3])
        return 0
    parser = benchargs.parser(__doc__)
    parser.add_argument("--requests", type=int, default=3000, help="requests in each case (default: 3000)")
    parser.add_argument("--clients", type=int, default=20, help="kept-open connections (default: 20)")
    args = parser.parse_args()
    n, clients = args.requests, args.clients

    tmp = Path(tempfile.mkdtemp(prefix="highlights-web-bench-"))
    try:
        root = tmp / "workspace"
        tokens = make_workspace(root, WARM_UP + n)
        floor_db, floor2_db = make_floor_db(tmp, "floor.db"), make_floor_db(tmp, "floor2.db")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HIGHLIGHTS_", "SENDGRID_"))}
        env |= {"HIGHLIGHTS_SECRET": SECRET}
        floor_command = [sys.executable, str(Path(__file__).resolve()), "--serve-floor"]
        runs: dict[str, Run] = {}
        with (
            serve_process(tmp, environ=env, command=[*floor_command, str(floor_db), "uvicorn"], check=False) as floor,
            serve_process(tmp, environ=env, command=[*floor_command, str(floor2_db), "ours"], check=False) as floor2,
            serve_process(root, environ=env, check=False, stop_timeout=300) as served,
        ):
            fport, fpid = int(floor.url.rsplit(":", 1)[1]), floor.process.pid
            f2port, f2pid = int(floor2.url.rsplit(":", 1)[1]), floor2.process.pid
            sport, spid = int(served.url.rsplit(":", 1)[1]), served.process.pid

            def case(name: str, port: int, pid: int, warm: list[bytes], timed: list[bytes]) -> None:
                drive(port, pid, warm, min(clients, len(warm)))
                time.sleep(0.5)
                runs[name] = drive(port, pid, timed, clients)

            floor_get = request("GET", "/page")
            floor_post = request("POST", "/page", ONE_CLICK, {"Content-Type": FORM})
            case("floor GET", fport, fpid, [floor_get] * WARM_UP, [floor_get] * n)
            case("floor GET, our log writer", f2port, f2pid, [floor_get] * WARM_UP, [floor_get] * n)
            gets = [request("GET", f"/u/{t}") for t in tokens]
            case("GET /u/TOKEN", sport, spid, gets[:WARM_UP], gets[WARM_UP:])
            case("floor POST", fport, fpid, [floor_post] * WARM_UP, [floor_post] * n)
            case("floor POST, our log writer", f2port, f2pid, [floor_post] * WARM_UP, [floor_post] * n)
            posts = [request("POST", f"/u/{t}", ONE_CLICK, {"Content-Type": FORM}) for t in tokens]
            case("one-click POST /u/TOKEN", sport, spid, posts[:WARM_UP], posts[WARM_UP:])
            joins = [signup_request(i) for i in range(WARM_UP + n)]
            case("POST /subscribe", sport, spid, joins[:WARM_UP], joins[WARM_UP:])
        log = served.stdout + served.stderr + floor.stderr + floor2.stderr

        problems = check_database(root, tokens, WARM_UP + n, [floor_db, floor2_db], WARM_UP + n)
        answers = sorted({s for run in runs.values() for s in run.statuses})
        if answers != [200]:
            problems.append(f"answers other than 200: {answers}")
        errors = [x.rstrip() for x in log if re.search(r"(?i)error|traceback|locked", x)]
        if errors or served.process.returncode != 0:
            problems.append(f"server log: {errors[:5]} (exit {served.process.returncode})")

        print(f"{n} requests per case from {clients} kept-open clients on loopback, each server one process:")
        get, post, join = runs["GET /u/TOKEN"], runs["one-click POST /u/TOKEN"], runs["POST /subscribe"]
        print(line("floor GET (2 KB page)", runs["floor GET"]))
        print(line("  with our log writer", runs["floor GET, our log writer"]))
        print(line("GET /u/TOKEN", get, runs["floor GET"], runs["floor GET, our log writer"]))
        get_ok = get.rps >= TARGET_GET_RATIO * runs["floor GET"].rps and get.percentile(99) < TARGET_GET_P99_MS
        print(verdict(get_ok, f"target >= {TARGET_GET_RATIO} of the floor, p99 < {TARGET_GET_P99_MS} ms"))
        print(line("floor POST (one insert)", runs["floor POST"]))
        print(line("  with our log writer", runs["floor POST, our log writer"]))
        print(line("one-click POST /u/TOKEN", post, runs["floor POST"], runs["floor POST, our log writer"]))
        post_ok = post.rps >= TARGET_POST_RATIO * runs["floor POST"].rps and post.percentile(99) < TARGET_POST_P99_MS
        print(verdict(post_ok, f"target >= {TARGET_POST_RATIO} of the floor, p99 < {TARGET_POST_P99_MS} ms"))
        print(line("POST /subscribe", join))
        join_ok = join.rps >= TARGET_SIGNUP_RPS and join.percentile(99) < TARGET_SIGNUP_P99_MS
        print(verdict(join_ok, f"target >= {TARGET_SIGNUP_RPS:,} req/s, p99 < {TARGET_SIGNUP_P99_MS} ms"))
        print(
            f"  recorded: {len(tokens)} readers unsubscribed, one one-click event each; {WARM_UP + n} signups "
            f"pending, one confirmation email each; {WARM_UP + n} floor rows"
            if not problems
            else "  PROBLEMS: " + "; ".join(problems)
        )
        return 0 if get_ok and post_ok and join_ok and not problems else 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
