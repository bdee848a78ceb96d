"""Dispatch through the sendgrid backend to the local SendGrid-compatible server, beside
the bare floor of the same traffic.

    .venv/bin/python benchmarks/dispatch.py                 # 10,000 and 100,000
    .venv/bin/python benchmarks/dispatch.py 1000000         # any sizes
    .venv/bin/python benchmarks/dispatch.py --validate      # the server checks every request
    .venv/bin/python benchmarks/dispatch.py --postgresql 100000 1000000

With --postgresql: the state in a PostgreSQL server started for the run (Debian's, in a
temporary folder, fsync on as a real server runs), one sender and then two
`highlights send` processes sharing the dispatch (`client cpu s`: theirs together), each
beside the bare floor measured in the same run against the same server: the `sendgrid`
package posting the same recipients,
1,000 per request from 4 threads, no database. The server does not validate requests
in this mode (the floor and the sends pay the same for the server either way, and
validation is what costs most there). Target: at most 1.5 times the floor, memory flat.

Where the time goes, on 2 cores shared by the sender, the database server and the
stand-in: the floor spends about 9 us of CPU per recipient (building the personalization
and JSON, and its HTTP client's debug line of every body), a send about 12 (its two
signed links and their headers about 3.7 us, the payload about 2.3, the ledger per batch
about 2, each recipient's row read at the claim included), and before that about 0.3 s
starting (imports, mostly, then rendering the issue) where the floor takes 0.1. The
send builds and posts its batches from worker processes (sending/workers.py), so that
per-recipient work runs on both cores while the loop keeps the ledger; on PostgreSQL
each claim and record is a few round trips to the server, which the loop waits for.

For each size: a fresh copy of the example workspace with N active subscribers and a
cache folder of its own, the editors' test send (`send --test`, untimed, as the send
requires), then the whole `highlights send 2024-w02 --yes` process is timed. Like an
editor's send, it finds the issue as the test send rendered it (rendering/once.py)
instead of loading the renderer again; a send after the issue or its templates changed
renders it, about 0.1 s more (see the note of the run). `peak MB` is
its own high-water RSS (VmHWM), and `all MB` the most it and its worker processes held
together (their Pss summed: the pages the forks share counted once), both sampled until
it exits. The server (the tests' local SendGrid stand-in) runs in this process and keeps
only a count per recipient. By default it does not validate the requests: the point is the sender's own
cost, and validation would be most of the time.

The floor, in the same run: a separate process that posts the same recipients through
the `sendgrid` package, 1,000 personalizations per request (each with its address,
unsubscribe URL substitution, List-Unsubscribe headers and custom_args, as the backend
builds them) from 4 threads, with no database, no rendering and no signing. `ratio` is
send over floor. Targets: at most 1.3 times the floor on SQLite; memory flat in N
(1,000,000 with the send and its workers holding at most 100 MB).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchargs

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

from highlightsmail.store import ImportRow, Store  # noqa: E402
from support.sendgrid import SendGridServer  # noqa: E402
from support.workspace import copy_example  # noqa: E402

API_KEY = "SG.benchmark"


def make_workspace(folder: Path, n: int, database: str | None = None, name: str | None = None) -> Path:
    """A copy of the example workspace sending through SendGrid, with n active
    subscribers in its SQLite file, or in `database` (a PostgreSQL URL) when given."""
    root = copy_example(folder / (name or f"ws-{n}"))
    text = (root / "highlights.yaml").read_text(encoding="utf-8")
    assert "backend: outbox" in text
    (root / "highlights.yaml").write_text(text.replace("backend: outbox", "backend: sendgrid"), encoding="utf-8")
    (root / "subscribers").mkdir()
    with Store(database or root / "subscribers" / "highlights.db") as store:
        store.import_rows(ImportRow(f"reader{i:07d}@example.org", f"Reader {i}") for i in range(n))
    return root


def test_send(root: Path, env: dict[str, str]) -> None:
    """The editors' test send, untimed, as before any real send (its own stand-in, so the
    editors do not count among the recipients): the send that follows checks it was
    made, and finds the issue rendered by it (rendering/once.py)."""
    with SendGridServer(api_key=API_KEY, record="count", validate=False) as sg:
        proc = subprocess.run(
            [str(REPO / ".venv" / "bin" / "highlights"), "send", "2024-w02", "--test", "--yes"],
            cwd=root,
            env={**env, "HIGHLIGHTS_SENDGRID_HOST": sg.url},
            capture_output=True,
            text=True,
        )
    if proc.returncode != 0:
        raise SystemExit(f"test send failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def _peak_kb(pid: int) -> int:
    """The child's own high-water RSS (VmHWM). Not ru_maxrss: Linux carries a forked
    child's pre-exec size (a copy of this big process) into that figure."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _tree_pss_kb(pid: int) -> int:
    """The proportional set size (Pss) of a process and its children together: what
    they take between them, shared pages counted once (a send's worker processes are
    forks of it, sharing most of their pages)."""
    total = 0
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
            children = [int(c) for c in fh.read().split()]
    except (FileNotFoundError, ProcessLookupError):
        children = []
    for each in [pid, *children]:
        try:
            with open(f"/proc/{each}/smaps_rollup", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


FLOOR = r"""
import json, sys, threading
from concurrent.futures import ThreadPoolExecutor
from sendgrid import SendGridAPIClient

url, n, html_path, text_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
html = open(html_path, encoding="utf-8").read()
text = open(text_path, encoding="utf-8").read()
local = threading.local()

def client():
    c = getattr(local, "client", None)
    if c is None:
        c = local.client = SendGridAPIClient(api_key="SG.benchmark", host=url)
    return c

def post(start):
    pers = []
    for i in range(start, min(start + 1000, n)):
        link = f"https://highlights.example.org/u/u{i:x}.AAAAAAAAAAAAAAAAAAAAAA"
        pers.append({
            "to": [{"email": f"reader{i:07d}@example.org", "name": f"Reader {i}"}],
            "substitutions": {"-highlights_unsubscribe_url-": link},
            "headers": {"List-Unsubscribe": f"<{link}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                        "X-Highlights-Issue": "2024-w02"},
            "custom_args": {"issue": "2024-w02", "subscriber_id": str(i + 1)},
        })
    body = {
        "personalizations": pers,
        "from": {"email": "highlights@example.org", "name": "AI Research Highlights"},
        "subject": "AI Research Highlights | Week 2, 2024",
        "headers": {"List-Id": '"AI Research Highlights" <highlights.example.org>'},
        "content": [{"type": "text/plain", "value": text}, {"type": "text/html", "value": html}],
    }
    response = client().client.mail.send.post(request_body=body, timeout=30)
    assert response.status_code == 202, response.status_code

with ThreadPoolExecutor(max_workers=4) as pool:
    list(pool.map(post, range(0, n, 1000)))
"""


def floor(n: int, sg: SendGridServer, folder: Path) -> dict[str, float]:
    """The same traffic with no ledger, no rendering and no signing: the bare floor."""
    html, text = folder / "floor.html", folder / "floor.txt"
    if not html.exists():
        subprocess.run(
            [str(REPO / ".venv" / "bin" / "highlights"), "build", "2024-w02", "--out", str(folder)],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        (folder / "2024-w02.html").rename(html)
        (folder / "2024-w02.txt").rename(text)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", FLOOR, sg.url, str(n), str(html), str(text)])
    peak_kb = 0
    while proc.poll() is None:
        peak_kb = max(peak_kb, _peak_kb(proc.pid))
        time.sleep(0.05)
    if proc.returncode != 0:
        raise SystemExit(f"the floor run failed ({proc.returncode})")
    return {"wall_s": time.perf_counter() - start, "peak_mb": peak_kb / 1024}


def run(n: int, folder: Path, validate: bool = False) -> dict[str, float]:
    root = make_workspace(folder, n)
    with SendGridServer(api_key=API_KEY, record="count", validate=validate) as bare_sg:
        bare = floor(n, bare_sg, folder)
    with SendGridServer(api_key=API_KEY, record="ids", validate=validate) as sg:
        env = {
            **os.environ,
            "SENDGRID_API_KEY": API_KEY,
            "HIGHLIGHTS_SENDGRID_HOST": sg.url,
            "HIGHLIGHTS_SECRET": "benchmark-secret-0123456789abcdef",
            "XDG_CACHE_HOME": str(folder / "cache"),  # the run's own: the user's is not touched
        }
        test_send(root, env)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "highlights"), "send", "2024-w02", "--yes"],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        peak_kb = tree_kb = 0
        while proc.poll() is None:
            peak_kb = max(peak_kb, _peak_kb(proc.pid))
            tree_kb = max(tree_kb, _tree_pss_kb(proc.pid))
            time.sleep(0.1)
        out, err = proc.communicate()
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise SystemExit(f"send failed ({proc.returncode}):\n{out}\n{err}")
        copies = sg.recipient_ids
        once = sum(1 for c in copies.values() if c == 1)
        stats = sg.stats
    shutil.rmtree(root)
    return {
        "n": n,
        "wall_s": wall,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "peak_mb": peak_kb / 1024,
        "tree_mb": tree_kb / 1024,
        "requests": stats.accepted,
        "rejected": stats.rejected,
        "exactly_once": once,
        "per_s": n / wall,
        "floor_s": bare["wall_s"],
        "ratio": wall / bare["wall_s"],
    }


# ---------------------------------------------------------------------------- PostgreSQL


def _watch(procs: list[subprocess.Popen]) -> tuple[float, int, int]:
    """Wait for the processes; (wall seconds since now, the largest peak RSS in KB, the
    most they held with their worker processes, in KB)."""
    start = time.perf_counter()
    peak_kb = tree_kb = 0
    while any(p.poll() is None for p in procs):
        for p in procs:
            if p.poll() is None:
                peak_kb = max(peak_kb, _peak_kb(p.pid))
        tree_kb = max(tree_kb, sum(_tree_pss_kb(p.pid) for p in procs if p.poll() is None))
        time.sleep(0.05)
    return time.perf_counter() - start, peak_kb, tree_kb


def run_postgresql(n: int, folder: Path, url: str, senders: int) -> dict[str, float]:
    """One dispatch of n recipients by `senders` processes sharing it, and the floor."""
    import psycopg

    root = make_workspace(folder, n, database=url, name=f"ws-pg-{n}-{senders}")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")  # as autovacuum would after a big import
    with SendGridServer(api_key=API_KEY, record="count", validate=False) as bare_sg:
        bare = floor(n, bare_sg, folder)
    floor_s, floor_mb = bare["wall_s"], bare["peak_mb"]
    with SendGridServer(api_key=API_KEY, record="ids", validate=False) as sg:
        env = {
            **os.environ,
            "SENDGRID_API_KEY": API_KEY,
            "HIGHLIGHTS_SENDGRID_HOST": sg.url,
            "HIGHLIGHTS_SECRET": "benchmark-secret-0123456789abcdef",
            "HIGHLIGHTS_DATABASE_URL": url,
            "XDG_CACHE_HOME": str(folder / f"cache-{n}-{senders}"),  # the run's own
        }
        test_send(root, env)
        cmd = [str(REPO / ".venv" / "bin" / "highlights"), "send", "2024-w02", "--yes"]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        procs = [
            subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(senders)
        ]
        wall, peak_kb, tree_kb = _watch(procs)
        for proc in procs:
            out, err = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"send failed ({proc.returncode}):\n{out}\n{err}")
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        once = sum(1 for c in sg.recipient_ids.values() if c == 1)
        twice = sum(1 for c in sg.recipient_ids.values() if c > 1)
    with psycopg.connect(url, autocommit=True) as conn:
        shares = [r[0] for r in conn.execute("SELECT sum(counted) FROM ledger_batches GROUP BY claimed_by ORDER BY 1")]
        for table in (
            "ledger_recipients",
            "ledger_batches",
            "ledger_exceptions",
            "dispatches",
            "events",
            "subscribers",
        ):
            conn.execute(f"TRUNCATE {table} CASCADE")
    shutil.rmtree(root)
    return {
        "n": n,
        "senders": senders,
        "wall_s": wall,
        "floor_s": floor_s,
        "ratio": wall / floor_s,
        "cpu_s": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "peak_mb": peak_kb / 1024,
        "tree_mb": tree_kb / 1024,
        "floor_mb": floor_mb,
        "once": once,
        "twice": twice,
        "shares": "/".join(str(x) for x in shares),
    }


def main_postgresql(sizes: list[int]) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from support.postgresql import running_cluster

    print(
        f"{'engine':>10} {'senders':>7} {'recipients':>11} {'wall s':>8} {'floor s':>8} {'ratio':>6} "
        f"{'client cpu s':>12} {'peak MB':>8} {'all MB':>7} {'floor MB':>8} {'once':>9} {'twice':>5}  rows per sender"
    )
    with tempfile.TemporaryDirectory() as tmp, running_cluster(durable=True) as cluster:
        url = cluster.create_database("bench")
        for n in sizes:
            for senders in (1, 2):
                r = run_postgresql(n, Path(tmp), url, senders)
                print(
                    f"{'postgresql':>10} {r['senders']:>7} {r['n']:>11,} {r['wall_s']:>8.2f} {r['floor_s']:>8.2f} "
                    f"{r['ratio']:>6.2f} {r['cpu_s']:>12.2f} {r['peak_mb']:>8.1f} {r['tree_mb']:>7.1f} {r['floor_mb']:>8.1f} {r['once']:>9,} {r['twice']:>5}  "
                    f"{r['shares']}",
                    flush=True,
                )


def main() -> None:
    parser = benchargs.parser(__doc__)
    parser.add_argument(
        "sizes",
        nargs="*",
        type=int,
        metavar="N",
        help="recipients per run (default: 10000 and 100000; 100000 on PostgreSQL)",
    )
    parser.add_argument("--validate", action="store_true", help="the server checks every request (SQLite runs)")
    parser.add_argument(
        "--postgresql", action="store_true", help="the state in a PostgreSQL server started for the run"
    )
    args = parser.parse_args()
    benchargs.compile_source()
    if args.postgresql:
        if args.validate:
            parser.error("--validate is for the SQLite runs: the server does not validate with --postgresql")
        main_postgresql(args.sizes or [100_000])
        return
    validate = args.validate
    sizes = args.sizes or [10_000, 100_000]
    print(
        f"{'store':>7} {'recipients':>11} {'wall s':>8} {'floor s':>8} {'ratio':>6} {'client cpu s':>12} "
        f"{'peak MB':>8} {'all MB':>7} {'requests':>9} {'rejected':>8} {'once':>9} {'per s':>8}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            r = run(n, Path(tmp), validate)
            print(
                f"{'sqlite':>7} {r['n']:>11,} {r['wall_s']:>8.2f} {r['floor_s']:>8.2f} {r['ratio']:>6.2f} "
                f"{r['cpu_s']:>12.2f} {r['peak_mb']:>8.1f} {r['tree_mb']:>7.1f} {r['requests']:>9} {r['rejected']:>8} "
                f"{r['exactly_once']:>9,} {r['per_s']:>8,.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
