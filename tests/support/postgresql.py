"""A throwaway PostgreSQL cluster for the tests: Debian's server binaries, a data folder
under a temporary directory, a free loopback port, trust authentication on loopback only.

The server refuses to run as root, so when the tests run as root (as CI does) every
server command runs as the `postgres` system user, which owns the data folder.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from support.ports import free_port


def find_bindir() -> Path | None:
    """Debian's PostgreSQL server binaries (the newest installed major version)."""
    override = os.environ.get("HIGHLIGHTS_PG_BINDIR")
    if override:
        return Path(override)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


@dataclass
class Cluster:
    """A running cluster; `url(dbname)` is a libpq URL for a database in it."""

    datadir: Path
    port: int
    bindir: Path
    user: str | None  # the system user running the server (None: the current one)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)

    def create_database(self, name: str) -> str:
        """A new empty database; returns its URL."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name)
        return self.url(name)

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop", check=False)

    durable: bool = False  # fsync and synchronous commits on, as a real server runs

    def start(self) -> None:
        log = self.datadir.parent / "server.log"
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.datadir.parent} -c max_connections=300"
        if not self.durable:
            # A throwaway cluster: durability is not what the tests check.
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(log), "-o", opts, "-w", "-t", "60", "start")


@contextlib.contextmanager
def running_cluster(*, durable: bool = False) -> Iterator[Cluster]:
    """Start a cluster for the duration of the block, then stop it and delete its files.
    `durable`: flush to disk as a real server does (benchmarks), not only to memory."""
    bindir = find_bindir()
    if bindir is None:
        raise RuntimeError(
            "PostgreSQL's server is not installed: apt-get install postgresql (or set HIGHLIGHTS_PG_BINDIR)"
        )
    user = "postgres" if os.geteuid() == 0 else None
    top = Path(tempfile.mkdtemp(prefix="highlights-pg-"))
    try:
        if user:
            entry = pwd.getpwnam(user)
            os.chown(top, entry.pw_uid, entry.pw_gid)
        top.chmod(0o700)
        cluster = Cluster(datadir=top / "data", port=free_port(), bindir=bindir, user=user, durable=durable)
        cluster._run(
            "initdb", "-D", str(cluster.datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"
        )
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop("immediate")
    finally:
        shutil.rmtree(top, ignore_errors=True)
