"""How fast an editor sees the example issue: rendering in-process, `highlights build`
and `check`, `highlights --help`, and the preview's save-to-page latency in a real Chromium.

Run from the repository root: `.venv/bin/python benchmarks/render.py` (add `--cli` for the
whole-process figures alone, without Chromium).
Targets: warm render <= 20 ms, build <= 0.6x the Node floor below, check <= 0.3 s,
--help < 0.1 s, save-to-page <= 500 ms. Everything runs on a temporary copy of the
example workspace.

The floor for `build` is Node's MJML compiler and juice, the CSS inliner MJML itself
uses, doing the same work in one node process: the MJML this project's template makes
for the example issue (written out once) compiled to HTML, then its CSS inlined. One
process that requires both, not the two CLIs chained: two node start-ups and a pipe
would make the floor slower than the work is. Build and floor run interleaved, one
after the other, so both see the same load on the machine; each figure is given as
the fastest and the median run, wall time and CPU time (user + system) apart.
The floor needs Node and the two packages, installed outside the repository:

    npm install --prefix /tmp/highlights-bench-node mjml@4.18.0 juice@11.1.1

(or pass `--node DIR` for another prefix); without them the floor is skipped, saying so.

The commands run as whole processes, as an editor runs them, with Python's bytecode
cache in place as an installed package has it (a first run writes it, even when
PYTHONDONTWRITEBYTECODE is set here); each figure is the median of several runs, with
the fastest and slowest, since other work on the machine slows single runs.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import benchargs

REPO = Path(__file__).resolve().parent.parent
HIGHLIGHTS = Path(sys.executable).with_name("highlights")
sys.path.insert(0, str(REPO / "tests"))

from support.chromium import launch  # noqa: E402
from support.preview import ISSUE, SHOWS_IN_TEXT_AND_FRAMES, set_first_item_title  # noqa: E402
from support.workspace import copy_example  # noqa: E402

results: list[tuple[str, float, float, str]] = []  # what, figure, target, unit


def report(what: str, value: float, target: float | None, unit: str, extra: str = "") -> None:
    verdict = "" if target is None else ("  ok" if value <= target else "  OVER TARGET")
    goal = "" if target is None else f" (target <= {target:g} {unit})"
    shown = f"{value:8.3f}" if unit in ("s", "x") else f"{value:8.1f}"
    print(f"  {what:<44} {shown} {unit}{goal}{verdict}{extra}")
    if target is not None:
        results.append((what, value, target, unit))


def copy_workspace() -> Path:
    root = copy_example(Path(tempfile.mkdtemp(prefix="highlights-render-bench-")))
    (root / "subscribers").mkdir()
    return root


def bench_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HIGHLIGHTS_", "SENDGRID_"))}
    env["HIGHLIGHTS_SECRET"] = "benchmark-secret-0123456789abcdef0123"
    # An installed package carries its compiled bytecode; without it every run would
    # compile the package's sources again (about 50 ms more per command).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


# --------------------------------------------------------------------------- (a)

COLD = textwrap.dedent("""
    import json, time
    t0 = time.perf_counter()
    from highlightsmail.authoring.issue import load_issue
    from highlightsmail.rendering.render import render_issue
    from highlightsmail.authoring.workspace import load_workspace
    t1 = time.perf_counter()
    ws = load_workspace()
    issue = load_issue(ws.issue_path("2024-w02"))
    t2 = time.perf_counter()
    render_issue(issue, ws)
    t3 = time.perf_counter()
    print(json.dumps({"import": t1 - t0, "load": t2 - t1, "render": t3 - t2}))
""")


def bench_render(root: Path) -> None:
    print("(a) rendering the example issue in-process")
    colds = []
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", COLD], cwd=root, env=bench_env(), capture_output=True, text=True, check=True
        )
        colds.append(json.loads(done.stdout))
    cold = statistics.median(c["render"] for c in colds) * 1000
    report(
        "cold: first render_issue in a new process",
        cold,
        None,
        "ms",
        f"  (imports {statistics.median(c['import'] for c in colds) * 1000:.0f} ms, "
        f"load settings+issue {statistics.median(c['load'] for c in colds) * 1000:.0f} ms; median of 3)",
    )

    from highlightsmail.authoring.issue import load_issue
    from highlightsmail.authoring.workspace import load_workspace
    from highlightsmail.rendering.render import render_issue

    ws = load_workspace(root)
    issue = load_issue(root / ISSUE)
    render_issue(issue, ws)
    times = []
    for _ in range(50):
        start = time.perf_counter()
        rendered = render_issue(issue, ws)
        times.append((time.perf_counter() - start) * 1000)
    report(
        "warm: render_issue, median of 50",
        statistics.median(times),
        20,
        "ms",
        f"  (min {min(times):.1f}, max {max(times):.1f}; HTML {len(rendered.html.encode()) / 1000:.1f} KB)",
    )
    loads = []
    for _ in range(20):
        start = time.perf_counter()
        load_issue(root / ISSUE)
        loads.append((time.perf_counter() - start) * 1000)
    report("warm: load_issue (YAML + validation), median of 20", statistics.median(loads), None, "ms")


# --------------------------------------------------------------------------- (b), (c)


def timed(command: list[str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one whole process running `command`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, env=bench_env(), capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr.strip()}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def wall(args: list[str], cwd: Path, runs: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds each of `runs` whole `highlights ARGS` processes took, after
    one run that is not counted (it writes the bytecode cache)."""
    times, cpus = [], []
    for i in range(runs + 1):
        elapsed, cpu = timed([str(HIGHLIGHTS), *args], cwd)
        if i:
            times.append(elapsed)
            cpus.append(cpu)
    return times, cpus


def spread(times: list[float], cpus: list[float]) -> str:
    return (
        f"  (min {min(times):.3f}, max {max(times):.3f}; CPU min {min(cpus):.3f}, median {statistics.median(cpus):.3f})"
    )


def report_process(what: str, args: list[str], cwd: Path, runs: int, target: float) -> None:
    try:
        times, cpus = wall(args, cwd, runs)
    except RuntimeError as exc:
        print(f"  {what} FAILED: {exc}")
        results.append((what, float("inf"), target, "s"))
        return
    report(f"{what}, median of {runs}", statistics.median(times), target, "s", spread(times, cpus))


# What the floor runs: Node's MJML compiler, then juice on its HTML, in one process.
NODE_FLOOR = textwrap.dedent("""
    const fs = require("fs");
    const path = require("path");
    const [prefix, source, target] = process.argv.slice(2);
    const mjml2html = require(path.join(prefix, "node_modules", "mjml"));
    const juice = require(path.join(prefix, "node_modules", "juice"));
    // As the project compiles it: no web-font links, no comments.
    const compiled = mjml2html(fs.readFileSync(source, "utf8"), { fonts: {}, keepComments: false });
    fs.writeFileSync(target, juice(compiled.html));
""")


def node_floor(prefix: Path, root: Path, work: Path) -> list[str] | None:
    """The command that runs the floor on the example issue's MJML, or None (saying
    why) when Node or the packages are missing."""
    node = shutil.which("node")
    missing = [name for name in ("mjml", "juice") if not (prefix / "node_modules" / name / "package.json").is_file()]
    if node is None or missing:
        print(
            f"  Node floor skipped: {'node is not installed' if node is None else 'no ' + ', '.join(missing)}"
            f" in {prefix}; install with: npm install --prefix {prefix} mjml@4.18.0 juice@11.1.1"
        )
        return None
    versions = subprocess.run(
        [
            node,
            "-p",
            f"process.version + ' mjml ' + require('{prefix}/node_modules/mjml/package.json').version"
            f" + ' juice ' + require('{prefix}/node_modules/juice/package.json').version",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    print(f"  floor: node {versions}, one process: mjml2html then juice")
    (work / "floor.js").write_text(NODE_FLOOR, encoding="utf-8")
    (work / "issue.mjml").write_text(example_mjml(root), encoding="utf-8")
    return [node, str(work / "floor.js"), str(prefix), str(work / "issue.mjml"), str(work / "floor.html")]


def example_mjml(root: Path) -> str:
    """The MJML the issue template makes of the example issue, as `build` compiles it."""
    from highlightsmail.authoring.issue import load_issue
    from highlightsmail.authoring.workspace import load_workspace
    from highlightsmail.rendering.render import issue_context, mjml_source

    ws = load_workspace(root)
    return mjml_source(ws, issue_context(load_issue(root / ISSUE), ws))


def bench_build(root: Path, prefix: Path, runs: int) -> None:
    """`highlights build` beside the Node floor, interleaved run by run."""
    work = Path(tempfile.mkdtemp(prefix="highlights-render-bench-out-"))
    try:
        floor = node_floor(prefix, root, work)
        build = [str(HIGHLIGHTS), "build", str(ISSUE), "--out", str(work / "out")]
        commands = {"build": build} | ({"floor": floor} if floor else {})
        figures: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in commands}
        try:
            for i in range(runs + 1):
                for name, command in commands.items():
                    elapsed, cpu = timed(command, root)
                    if i:  # the first run writes the bytecode and other caches
                        figures[name][0].append(elapsed)
                        figures[name][1].append(cpu)
        except RuntimeError as exc:
            print(f"  build FAILED: {exc}")
            results.append(("build", float("inf"), 0, "s"))
            return
        times, cpus = figures["build"]
        if not floor:
            report(f"build, median of {runs}", statistics.median(times), None, "s", spread(times, cpus))
            return
        floor_times, floor_cpus = figures["floor"]
        print(f"  {'':<44} {'min':>8} {'median':>8}   {'CPU min':>8} {'median':>8}")
        for name, (wall_s, cpu_s) in (
            ("build", (times, cpus)),
            ("Node mjml + juice (floor)", (floor_times, floor_cpus)),
        ):
            print(
                f"  {name + f', {runs} runs':<44} {min(wall_s):8.3f} {statistics.median(wall_s):8.3f}   "
                f"{min(cpu_s):8.3f} {statistics.median(cpu_s):8.3f} s"
            )
        report(
            "build / floor, median wall",
            statistics.median(times) / statistics.median(floor_times),
            0.6,
            "x",
            f"  (min/min {min(times) / min(floor_times):.2f}; CPU median "
            f"{statistics.median(cpus) / statistics.median(floor_cpus):.2f}, min/min {min(cpus) / min(floor_cpus):.2f})",
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_cli(root: Path, node_prefix: Path, runs: int = 15) -> None:
    print("(b) highlights build issues/2024-w02.yaml --out TMP beside the floor, and check (whole process)")
    bench_build(root, node_prefix, runs)
    report_process("check (validate, render, lint)", ["check", str(ISSUE)], root, runs, 0.3)

    print("(c) highlights --help (whole process)")
    report_process("--help", ["--help"], root, runs, 0.1)
    bare, bare_cpu = [], []
    for _ in range(runs):
        elapsed, cpu = timed([sys.executable, "-c", "pass"], root)
        bare.append(elapsed)
        bare_cpu.append(cpu)
    report(f"Python alone (-c pass), median of {runs}", statistics.median(bare), None, "s", spread(bare, bare_cpu))
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"  (load average {load} on {os.cpu_count()} CPUs: other work slows single runs)")


# --------------------------------------------------------------------------- (d)


def bench_preview(root: Path, rounds: int = 5) -> None:
    print("(d) preview: saving the issue file -> the page shows the change (Chromium)")
    from playwright.sync_api import sync_playwright

    proc = subprocess.Popen(
        [str(HIGHLIGHTS), "preview", str(ISSUE), "--no-open", "--port", "0"],
        cwd=root,
        env=bench_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    server_log: list[str] = []
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        found = re.search(r"(http://\S+/)", first)
        if not found:
            raise RuntimeError(f"preview did not start: {first}{proc.stderr.read()}")
        url = found.group(1)
        reader = threading.Thread(target=lambda: server_log.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
        reader.start()

        with sync_playwright() as pw:
            browser = launch(pw)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url)
            page.wait_for_selector("#text")
            latencies, to_reload = [], []
            for i in range(rounds):
                title = f"Benchmark Title Number {i} {time.time_ns()}"
                start, start_epoch_ms = time.perf_counter(), time.time() * 1000
                set_first_item_title(root / ISSUE, title)
                page.wait_for_function(SHOWS_IN_TEXT_AND_FRAMES, arg=title, timeout=10_000)
                latencies.append((time.perf_counter() - start) * 1000)
                # When the page began reloading: watcher + render + the long poll's answer.
                to_reload.append(page.evaluate("performance.timeOrigin") - start_epoch_ms)
                time.sleep(0.3)  # separate saves, as an editor's are
            browser.close()
        report(
            f"save-to-page, median of {rounds}",
            statistics.median(latencies),
            500,
            "ms",
            f"  (each: {', '.join(f'{v:.0f}' for v in latencies)})",
        )
        print(
            f"  {'of which save -> page starts reloading':<44} {statistics.median(to_reload):8.1f} ms"
            "  (file watcher + render + long-poll answer; the rest is the page and frames loading)"
        )
    finally:
        proc.send_signal(2)  # Ctrl-C
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    renders = [float(m.group(1)) for line in server_log if (m := re.search(r"rendered in (\d+) ms", line))]
    if len(renders) > 1:
        print(
            f"  {'of which the server re-rendering (render + lint)':<44} "
            f"{statistics.median(renders[1:]):8.1f} ms  (median of {len(renders) - 1}; first render {renders[0]:.0f} ms)"
        )


def main() -> None:
    parser = benchargs.parser(__doc__)
    parser.add_argument("--cli", action="store_true", help="the whole-process figures alone, without Chromium")
    parser.add_argument(
        "--node",
        metavar="DIR",
        type=Path,
        default=Path("/tmp/highlights-bench-node"),
        help="the npm prefix holding mjml and juice for the floor (default: %(default)s)",
    )
    parser.add_argument("--runs", type=int, default=15, help="runs of each command (default: %(default)s)")
    args = parser.parse_args()
    benchargs.compile_source()
    if not (REPO / "highlights.yaml").is_file():
        sys.exit("run from a checkout with the example workspace (highlights.yaml, issues/)")
    root = copy_workspace()
    try:
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, workspace copy {root}")
        if args.cli:
            bench_cli(root, args.node, args.runs)
        else:
            bench_render(root)
            bench_cli(root, args.node, args.runs)
            bench_preview(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    over = [r for r in results if r[1] > r[2]]
    print("all targets met" if not over else "over target: " + ", ".join(r[0] for r in over))


if __name__ == "__main__":
    main()
