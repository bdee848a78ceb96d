"""How long `highlights build` and `highlights check` take on the example issue.

Each figure is a whole `highlights` process (interpreter start-up included), as an
editor would see it, run in a copy of the example workspace.
Run: `.venv/bin/python benchmarks/build_issue.py [RUNS]`. Target: build in at most 1.0 s.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HIGHLIGHTS = Path(sys.executable).with_name("highlights")


def timed(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run([str(HIGHLIGHTS), *args], cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp)
        shutil.copy(REPO / "highlights.yaml", ws)
        shutil.copytree(REPO / "issues", ws / "issues")
        if (REPO / "templates").is_dir():
            shutil.copytree(REPO / "templates", ws / "templates")
        timed(["--version"], ws)  # warm the file cache and .pyc files
        for label, args in (("build", ["build", "issues/2024-w02.yaml"]),
                            ("check", ["check", "issues/2024-w02.yaml"]),
                            ("--help", ["--help"])):
            times = [timed(args, ws) for _ in range(runs)]
            print(f"highlights {' '.join(args):32} min {min(times):.3f} s  "
                  f"median {statistics.median(times):.3f} s  max {max(times):.3f} s  ({runs} runs)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
