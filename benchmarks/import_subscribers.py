"""How long `highlights subscribers import` takes for 100,000 rows, and how soon
`subscribers list --status active` starts printing over them.

Each figure is a whole `highlights` process (interpreter start-up included), as an
editor would see it: wall-clock time, and the CPU time (user + system) the process
used, which stays meaningful on a busy machine. Run:
`.venv/bin/python benchmarks/import_subscribers.py [ROWS]`.
Target: the import of 100,000 rows in at most 5 s.
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
HIGHLIGHTS = Path(sys.executable).with_name("highlights")
SETTINGS = REPO / "src" / "highlightsmail" / "skeleton" / "highlights.yaml"


def write_csv(path: Path, rows: int, domains: int) -> None:
    """A list with mixed-case addresses over `domains` domains, quoted names with commas,
    and some suppressions."""
    statuses = ["active"] * 17 + ["unsubscribed", "bounced", "complained"]
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("email,name,status\r\n")
        for i in range(rows):
            out.write(f'Reader.{i}@Mail{i % domains}.Example.org,"Reader {i}, Esq.",{statuses[i % len(statuses)]}\r\n')


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(args: list[str], cwd: Path) -> tuple[str, str]:
    """(wall and CPU seconds, the last line of output) of one `highlights` process."""
    cpu, start = _cpu(), time.perf_counter()
    done = subprocess.run([str(HIGHLIGHTS), *args], cwd=cwd, capture_output=True, text=True)
    elapsed, used = time.perf_counter() - start, _cpu() - cpu
    if done.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return f"{elapsed:5.2f} s (cpu {used:5.2f} s)", done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def time_to_first_line(args: list[str], cwd: Path) -> tuple[float, float, int]:
    """Seconds until the first line after the header arrives, seconds in all, lines."""
    start = time.perf_counter()
    proc = subprocess.Popen([str(HIGHLIGHTS), *args], cwd=cwd, stdout=subprocess.PIPE, text=True, bufsize=1)
    assert proc.stdout is not None
    proc.stdout.readline()  # the header
    proc.stdout.readline()
    first = time.perf_counter() - start
    lines = 2 + sum(1 for _ in proc.stdout)
    proc.wait()
    return first, time.perf_counter() - start, lines


def main() -> None:
    parser = benchargs.parser(__doc__)
    parser.add_argument("rows", nargs="?", type=int, default=100_000, help="rows in the CSV file (default: 100000)")
    rows = parser.parse_args().rows
    work = Path(tempfile.mkdtemp(prefix="highlights-bench-"))
    try:
        shutil.copy(SETTINGS, work / "highlights.yaml")
        (work / "subscribers").mkdir()
        csv_path = work / "list.csv"
        write_csv(csv_path, rows, domains=100)
        print(
            f"{rows:,} rows over 100 domains ({csv_path.stat().st_size / 1e6:.1f} MB); "
            f"cores: {os.cpu_count()}; load average: {os.getloadavg()[0]:.2f}"
        )

        figure, _ = run(["--version"], work)
        print(f"highlights --version (start-up):      {figure}")
        figure, summary = run(["subscribers", "import", str(csv_path), "--dry-run"], work)
        print(f"import --dry-run, no database yet:    {figure}  {summary}")
        figure, summary = run(["subscribers", "import", str(csv_path)], work)
        print(f"import into an empty database:        {figure}  {summary}")
        figure, summary = run(["subscribers", "import", str(csv_path)], work)
        print(f"import again, every address known:   {figure}  {summary}")

        for fmt in ("table", "csv", "json"):
            first, total, lines = time_to_first_line(
                ["subscribers", "list", "--status", "active", "--format", fmt], work
            )
            print(
                f"list --status active --format {fmt:<5}: first row after {first:4.2f} s, "
                f"all {lines:,} lines {total:5.2f} s"
            )
        figure, _ = run(["subscribers", "export", str(work / "export.csv")], work)
        print(f"export to a file:                     {figure}")
        db = work / "subscribers" / "highlights.db"
        print(f"database size: {db.stat().st_size / 1e6:.1f} MB")

        # The worst case for the address checks: no two rows share a domain.
        db.unlink()
        write_csv(csv_path, rows, domains=rows)
        figure, summary = run(["subscribers", "import", str(csv_path)], work)
        print(f"import, every domain distinct:        {figure}  {summary}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
