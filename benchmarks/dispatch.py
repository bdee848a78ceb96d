"""Dispatch through the sendgrid backend to the local SendGrid-compatible server.

    .venv/bin/python benchmarks/dispatch.py                 # 10,000 and 100,000
    .venv/bin/python benchmarks/dispatch.py 1000000         # any sizes

For each size: a fresh copy of the example workspace with N active subscribers, then the
whole `highlights send 2024-w02 --yes --skip-test-check` process is timed; its peak
memory is the child's high-water RSS (VmHWM), sampled until it exits. The server (the
tests' local SendGrid stand-in) runs in this process, validating every request against
SendGrid's OpenAPI schema where it sits beside the checkout (else the tests' own) and
keeping only a count per recipient, so it does not share the sender's interpreter. Targets: 100,000 in
at most 15 s; 1,000,000 in at most 150 s with peak memory at most 250 MB.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

from highlightsmail.store import ImportRow, Store  # noqa: E402
from sendgrid_server import SendGridServer  # noqa: E402

API_KEY = "SG.benchmark"


def make_workspace(folder: Path, n: int) -> Path:
    root = folder / f"ws-{n}"
    root.mkdir()
    shutil.copy(REPO / "highlights.yaml", root / "highlights.yaml")
    shutil.copytree(REPO / "issues", root / "issues")
    shutil.copytree(REPO / "templates", root / "templates")
    text = (root / "highlights.yaml").read_text(encoding="utf-8")
    (root / "highlights.yaml").write_text(text.replace("backend: outbox", "backend: sendgrid"), encoding="utf-8")
    (root / "subscribers").mkdir()
    with Store(root / "subscribers" / "highlights.db") as store:
        store.import_rows(ImportRow(f"reader{i:07d}@example.org", f"Reader {i}") for i in range(n))
    return root


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


def run(n: int, folder: Path) -> dict[str, float]:
    root = make_workspace(folder, n)
    with SendGridServer(api_key=API_KEY, record="ids") as sg:
        env = {
            **os.environ,
            "SENDGRID_API_KEY": API_KEY,
            "HIGHLIGHTS_SENDGRID_HOST": sg.url,
            "HIGHLIGHTS_SECRET": "benchmark-secret-0123456789abcdef",
        }
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "highlights"), "send", "2024-w02", "--yes", "--skip-test-check"],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        peak_kb = 0
        while proc.poll() is None:
            peak_kb = max(peak_kb, _peak_kb(proc.pid))
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
        "requests": stats.accepted,
        "rejected": stats.rejected,
        "exactly_once": once,
        "per_s": n / wall,
    }


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [10_000, 100_000]
    print(
        f"{'recipients':>11} {'wall s':>8} {'client cpu s':>12} {'peak MB':>8} {'requests':>9} "
        f"{'rejected':>8} {'once':>9} {'per s':>8}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            r = run(n, Path(tmp))
            print(
                f"{r['n']:>11,} {r['wall_s']:>8.2f} {r['cpu_s']:>12.2f} {r['peak_mb']:>8.1f} "
                f"{r['requests']:>9} {r['rejected']:>8} {r['exactly_once']:>9,} {r['per_s']:>8,.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
