"""How long `highlights subscribers import` takes for 100,000 and 1,000,000 rows, into
an empty database and again with every address known, with its peak memory; and how
soon `subscribers list --status active` starts printing over them.

Each figure is a whole `highlights` process (interpreter start-up included), as an
editor would see it: wall-clock time, the CPU time (user + system) the process used,
which stays meaningful on a busy machine, and its peak resident memory. Run:
`.venv/bin/python benchmarks/import_subscribers.py [ROWS ...] [--postgresql] [--runs N]`
(default 100000 1000000; --postgresql keeps the state in a PostgreSQL server started
for the run, Debian's, as the tests start it). With `--runs N` each import is made N
times (a new empty database each time, then the same file again) and its figure is the
fastest and the median run, wall and CPU apart, with the largest peak: other work on a
shared machine slows single runs. Run it with another checkout's interpreter
(`/other/.venv/bin/python benchmarks/import_subscribers.py`) to time that checkout's
`highlights` by the same script.
Targets: 100,000 rows in at most 2 s and 1,000,000 in at most 20 s, into an empty
database and with every address known, memory flat.
"""

from __future__ import annotations

import os
import shutil
import statistics
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


class Measured:
    """Wall and CPU seconds and peak memory (MB) of one or more runs of a command."""

    def __init__(self) -> None:
        self.walls: list[float] = []
        self.cpus: list[float] = []
        self.peaks: list[float] = []

    def add(self, wall: float, cpu: float, peak: float) -> None:
        self.walls.append(wall)
        self.cpus.append(cpu)
        self.peaks.append(peak)

    def __str__(self) -> str:
        if len(self.walls) == 1:
            return f"{self.walls[0]:6.2f} s (cpu {self.cpus[0]:6.2f} s, peak {self.peaks[0]:5.0f} MB)"
        return (
            f"{min(self.walls):6.2f} s min, {statistics.median(self.walls):6.2f} s median "
            f"(cpu {min(self.cpus):6.2f} min, {statistics.median(self.cpus):6.2f} median; "
            f"peak {max(self.peaks):5.0f} MB; {len(self.walls)} runs)"
        )


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None, into: Measured | None = None) -> tuple[str, str]:
    """(wall and CPU seconds and peak memory, the last line of output) of one
    `highlights` process; the figures are added to `into` when given."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([str(HIGHLIGHTS), *args], cwd=cwd, stdout=out, stderr=err, env=env)
        _pid, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().strip(), err.read().strip()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(args)} failed ({proc.returncode}): {stderr}")
    one = into if into is not None else Measured()
    one.add(elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)
    return str(one), stdout.splitlines()[-1] if stdout else ""


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


def imports(rows: int, work: Path, env: dict[str, str] | None, engine: str, runs: int = 1) -> None:
    """The import figures for one size: a dry run, into an empty database, and again;
    `runs` times, each from an empty database (SQLite only: on PostgreSQL, once)."""
    csv_path = work / "list.csv"
    write_csv(csv_path, rows, domains=100)
    print(
        f"{engine}: {rows:,} rows over 100 domains ({csv_path.stat().st_size / 1e6:.1f} MB); "
        f"cores: {os.cpu_count()}; load average: {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    cases = (
        ("import --dry-run, empty database:   ", ["--dry-run"]),
        ("import into an empty database:      ", []),
        ("import again, every address known: ", []),
    )
    measured = [Measured() for _ in cases]
    summaries = [""] * len(cases)
    for attempt in range(runs):
        if attempt:
            for old in (work / "subscribers").glob("highlights.db*"):
                old.unlink()
        for number, (_label, args) in enumerate(cases):
            _figure, summaries[number] = run(
                ["subscribers", "import", str(csv_path), *args], work, env, into=measured[number]
            )
    for (label, _args), figure, summary in zip(cases, measured, summaries, strict=True):
        print(f"  {label} {figure}  {summary}", flush=True)


def listing(work: Path) -> None:
    """How soon `list` prints over the imported list, export, and the worst case for
    the address checks (no two rows share a domain)."""
    for fmt in ("table", "csv", "json"):
        first, total, lines = time_to_first_line(["subscribers", "list", "--status", "active", "--format", fmt], work)
        print(
            f"  list --status active --format {fmt:<5}: first row after {first:4.2f} s, all {lines:,} lines {total:5.2f} s"
        )
    figure, _ = run(["subscribers", "export", str(work / "export.csv")], work)
    print(f"  export to a file:                    {figure}")
    db = work / "subscribers" / "highlights.db"
    print(f"  database size: {db.stat().st_size / 1e6:.1f} MB")
    db.unlink()
    csv_path = work / "list.csv"
    rows = sum(1 for _ in csv_path.open(encoding="utf-8")) - 1
    write_csv(csv_path, rows, domains=rows)
    figure, summary = run(["subscribers", "import", str(csv_path)], work)
    print(f"  import, every domain distinct:       {figure}  {summary}")


def workspace() -> Path:
    work = Path(tempfile.mkdtemp(prefix="highlights-bench-"))
    shutil.copy(SETTINGS, work / "highlights.yaml")
    (work / "subscribers").mkdir()
    return work


def main_sqlite(sizes: list[int], runs: int) -> None:
    for rows in sizes:
        work = workspace()
        try:
            imports(rows, work, None, "sqlite", runs)
            if rows == sizes[0] and runs == 1:
                listing(work)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def main_postgresql(sizes: list[int]) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    from support.postgresql import running_cluster

    with running_cluster(durable=True) as cluster:
        for number, rows in enumerate(sizes):
            url = cluster.create_database(f"bench{number}")
            env = {**os.environ, "HIGHLIGHTS_DATABASE_URL": url}
            work = workspace()
            try:
                subprocess.run([str(HIGHLIGHTS), "db", "upgrade"], cwd=work, env=env, check=True, capture_output=True)
                imports(rows, work, env, "postgresql")
            finally:
                shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = benchargs.parser(__doc__)
    parser.add_argument("rows", nargs="*", type=int, help="rows in the CSV file (default: 100000 1000000)")
    parser.add_argument(
        "--postgresql", action="store_true", help="the state in a PostgreSQL server started for the run"
    )
    parser.add_argument(
        "--runs", type=int, default=1, help="make each SQLite import this many times: fastest and median (no listing)"
    )
    args = parser.parse_args()
    benchargs.compile_source()  # each figure is a whole process: none compiles the modules again
    sizes = args.rows or [100_000, 1_000_000]
    figure, _ = run(["--version"], REPO)
    print(f"highlights --version (start-up): {figure}")
    if args.postgresql:
        main_postgresql(sizes)
    else:
        main_sqlite(sizes, max(1, args.runs))


if __name__ == "__main__":
    main()
