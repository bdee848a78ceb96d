"""How long rendering the example issue takes, in-process (highlightsmail.render).

Cold: the first render in a fresh interpreter (imports of Jinja2, mjml-python,
premailer and markdown-it, template compilation, CSS parsing). Warm: later renders,
as in `send` (once) or the preview server (on every save).
Run: `.venv/bin/python benchmarks/render_issue.py [RUNS]`. Target: warm at most 20 ms.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

COLD = """
import time
start = time.perf_counter()
from highlightsmail.issue import load_issue
from highlightsmail.render import render_issue
from highlightsmail.workspace import load_workspace
ws = load_workspace({root!r})
issue = load_issue(ws.issue_path("2024-w02"))
loaded = time.perf_counter()
render_issue(issue, ws)
print(loaded - start, time.perf_counter() - loaded)
"""


def main(runs: int) -> None:
    cold = []
    for _ in range(5):
        out = subprocess.run([sys.executable, "-c", COLD.format(root=str(REPO))],
                             check=True, capture_output=True, text=True).stdout.split()
        cold.append(float(out[1]))

    from highlightsmail.issue import load_issue
    from highlightsmail.render import render_issue
    from highlightsmail.workspace import load_workspace

    ws = load_workspace(REPO)
    issue = load_issue(ws.issue_path("2024-w02"))
    rendered = render_issue(issue, ws)
    warm = timeit.repeat(lambda: render_issue(issue, ws), number=1, repeat=runs)
    size = len(rendered.html.encode("utf-8"))
    print(f"cold render (first in a process, imports included): median {statistics.median(cold) * 1000:.0f} ms")
    print(f"warm render: min {min(warm) * 1000:.1f} ms  median {statistics.median(warm) * 1000:.1f} ms  ({runs} runs)")
    print(f"HTML {size / 1000:.1f} KB ({size} bytes), text {len(rendered.text.encode('utf-8'))} bytes")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)
