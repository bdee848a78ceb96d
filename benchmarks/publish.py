"""How long `highlights publish` takes for a newsletter with a long history: 200 issues,
each as long as the example (ten items), all sent.

Run from the repository root: `.venv/bin/python benchmarks/publish.py [--issues N] [--runs R]`.
Target: the whole command (a fresh process, as an editor runs it) under 3 s for 200 issues.
Also printed: what `serve` spends on the archive's index, first and warm.
Everything runs on a temporary workspace made from the example one.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchargs
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support.workspace import EXAMPLE_ISSUE, copy_example  # noqa: E402

HIGHLIGHTS = Path(sys.executable).with_name("highlights")
TARGET_S = 3.0


def make_workspace(issues: int) -> Path:
    """The example's settings and templates, with `issues` weekly issues made from the
    example issue (its ten items, the title and date changed), every one of them sent."""
    from highlightsmail.authoring.workspace import load_workspace
    from highlightsmail.store import Store

    root = copy_example(Path(tempfile.mkdtemp(prefix="highlights-publish-bench-")))
    (root / "subscribers").mkdir()
    example = yaml.safe_load(EXAMPLE_ISSUE.read_text(encoding="utf-8"))
    first = dt.date(2024, 1, 12) - dt.timedelta(weeks=issues - 1)
    slugs = []
    for n in range(issues):
        day = first + dt.timedelta(weeks=n)
        year, week, _ = day.isocalendar()
        slug = f"{year}-w{week:02d}"
        data = dict(example, title=f"AI Research Highlights | Week {week}, {year}", date=day)
        data["items"] = [dict(item, title=f"{item['title']} ({slug})") for item in example["items"]]
        (root / "issues" / f"{slug}.yaml").write_text(
            yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8"
        )
        slugs.append(slug)
    ws = load_workspace(root)
    with Store.open(ws) as store:
        for slug in slugs:
            store.begin_dispatch(slug, "outbox")
    return root


def serve_figures(root: Path) -> str:
    """What `serve` spends on the archive's index: the first request renders every issue,
    later ones only look at the files and the ledger (all pages remembered)."""
    from highlightsmail.authoring.workspace import load_workspace
    from highlightsmail.rendering.publish import Archive

    archive = Archive(load_workspace(root))

    def index() -> float:
        start = time.perf_counter()
        archive.index_page(archive.entries(strict=False)[0])
        return time.perf_counter() - start

    cold = index()
    warm = statistics.median(index() for _ in range(20))
    return f"first index {cold:.2f} s, then {warm * 1000:.1f} ms per request"


def main() -> int:
    parser = benchargs.parser(__doc__)
    parser.add_argument("--issues", type=int, default=200, help="issues in the archive (default: 200)")
    parser.add_argument("--runs", type=int, default=3, help="runs of the whole command (default: 3)")
    args = parser.parse_args()

    root = make_workspace(args.issues)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HIGHLIGHTS_", "SENDGRID_"))}
    try:
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            done = subprocess.run(
                [str(HIGHLIGHTS), "publish"], cwd=root, env=env, capture_output=True, text=True, check=False
            )
            times.append(time.perf_counter() - start)
            if done.returncode != 0:
                print(done.stdout, done.stderr, file=sys.stderr)
                return 1
        pages = len(list((root / "out" / "site").glob("*/index.html")))
        size = sum(p.stat().st_size for p in (root / "out" / "site").rglob("*") if p.is_file())
        assert pages == args.issues, pages
        best, median = min(times), statistics.median(times)
        verdict = "ok" if median < TARGET_S else "OVER TARGET"
        print(f"highlights publish, {args.issues} issues of 10 items, {args.runs} runs:")
        print(f"  median {median:.2f} s, best {best:.2f} s (target < {TARGET_S:g} s)  {verdict}")
        print(f"  {pages} issue pages, index, feed: {size / 1e6:.1f} MB written")
        print(f"serve, in-process, {args.issues} issues: {serve_figures(root)}")
        return 0 if median < TARGET_S else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
