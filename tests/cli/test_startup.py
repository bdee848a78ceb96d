"""What each command loads. A command's start-up is mostly imports, so each imports only
what it uses; this is guarded by what a fresh process has in sys.modules at the end,
never by timings (benchmarks/render.py measures those)."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from highlightsmail.cli import main

# Runs the command as the installed script does, then writes the names of the loaded modules.
_RUN = textwrap.dedent("""
    import json, sys
    from highlightsmail.cli import main
    out, args = sys.argv[1], sys.argv[2:]
    try:
        main(args, standalone_mode=False)
    finally:
        with open(out, "w") as fh:
            json.dump(sorted(sys.modules), fh)
""")

# Used by no command that renders one issue: the web, the store, sending, fetching.
_NEVER_FOR_ONE_ISSUE = {
    "requests",
    "urllib3",
    "sqlite3",
    "starlette",
    "uvicorn",
    "sendgrid",
    "highlightsmail.store",
    "highlightsmail.sending",
    "highlightsmail.subscribers",
    "highlightsmail.feedback",
    "highlightsmail.tokens",
    "highlightsmail.web",
    "highlightsmail.mail.backends",
}


def loaded_by(workspace: Path, tmp_path: Path, *args: str) -> set[str]:
    """The modules loaded in a fresh process that ran `highlights ARGS` in `workspace`."""
    out = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", _RUN, str(out), *args], cwd=workspace, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(out.read_text()))


def test_help_loads_no_engine(workspace: Path, tmp_path: Path) -> None:
    modules = loaded_by(workspace, tmp_path, "--help")
    heavy = {"pydantic", "jinja2", "premailer", "cssutils", "yaml", "markdown_it", "email_validator", "mjml"}
    assert not heavy & modules
    # Nor pathlib (with urllib.parse): the options that take a path import it when given one.
    assert "pathlib" not in modules
    ours = {m for m in modules if m.startswith("highlightsmail.")}
    assert "highlightsmail.cli" in ours
    assert not {m for m in ours if m != "highlightsmail.cli" and not m.startswith("highlightsmail.cli.")}


def test_check_renders_without_the_message_store_or_network_layers(workspace: Path, tmp_path: Path) -> None:
    modules = loaded_by(workspace, tmp_path, "check", "2024-w02")
    assert {
        "highlightsmail.rendering.inlining",
        "highlightsmail.rendering.render",
        "highlightsmail.review.lint",
    } <= modules  # it did render and lint
    assert not (_NEVER_FOR_ONE_ISSUE | {"highlightsmail.mail.message", "email.policy"}) & modules
    # The example has no web archive, so the archive's code stays out too.
    assert "highlightsmail.rendering.publish" not in modules


def test_build_loads_the_message_but_no_store_or_network_layer(workspace: Path, tmp_path: Path) -> None:
    modules = loaded_by(workspace, tmp_path, "build", "2024-w02", "--out", str(tmp_path / "out"))
    assert {"highlightsmail.rendering.inlining", "highlightsmail.mail.message"} <= modules
    assert (tmp_path / "out" / "2024-w02.eml").is_file()
    assert not (_NEVER_FOR_ONE_ISSUE | {"highlightsmail.rendering.publish"}) & modules


def test_check_again_loads_neither_premailer_nor_email_validator(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What premailer made of the HTML and the settings' addresses found good are kept
    in the cache folder: checking the same issue again imports neither premailer (nor
    cssutils) nor email-validator, and says the same."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    judges = {"premailer", "cssutils", "email_validator"}
    say = [sys.executable, "-c", "from highlightsmail.cli import main; main()", "check", "2024-w02"]

    first = subprocess.run(say, cwd=workspace, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    again = loaded_by(workspace, tmp_path, "check", "2024-w02")
    assert {"highlightsmail.rendering.render", "highlightsmail.review.lint"} <= again
    assert not judges & again
    second = subprocess.run(say, cwd=workspace, capture_output=True, text=True, timeout=120)
    assert (second.returncode, second.stdout, second.stderr) == (0, first.stdout, first.stderr)
    assert "more items of this size fit" in first.stdout + first.stderr


def test_a_new_cache_folder_means_premailer_and_email_validator_again(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    assert {"premailer", "cssutils", "email_validator"} <= loaded_by(workspace, tmp_path, "check", "2024-w02")


def test_premailer_gets_the_real_requests_when_it_uses_it(workspace: Path) -> None:
    """premailer is loaded without requests, which it only needs to fetch a stylesheet;
    should it ever use it, it gets the real module, and so does anyone else."""
    code = textwrap.dedent("""
        import sys
        from highlightsmail.authoring.workspace import load_workspace
        from highlightsmail.authoring.issue import load_issue
        from highlightsmail.rendering.render import render_issue
        ws = load_workspace()
        render_issue(load_issue(ws.issue_path("2024-w02")), ws)
        assert "requests" not in sys.modules
        import premailer.premailer
        session = premailer.premailer.requests.Session
        import requests
        assert session is requests.Session
        assert sys.modules["requests"] is requests and "urllib3" in sys.modules
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=workspace, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"


def test_cssutils_gets_the_real_urllib_request_when_it_uses_it(workspace: Path) -> None:
    """cssutils is loaded without urllib.request (with http.client and ssl), which it
    only needs to fetch a stylesheet or make a file URL; when it uses it, it gets the
    real module, and so does anyone else."""
    code = textwrap.dedent("""
        import sys, urllib
        from highlightsmail.authoring.workspace import load_workspace
        from highlightsmail.authoring.issue import load_issue
        from highlightsmail.rendering.render import render_issue
        ws = load_workspace()
        render_issue(load_issue(ws.issue_path("2024-w02")), ws)
        assert not {"urllib.request", "http.client", "ssl"} & set(sys.modules), sys.modules.keys()
        import cssutils
        assert cssutils.Replacer("/base/")("x y.css") == "/base/x%20y.css"
        import urllib.request
        assert urllib.request is sys.modules["urllib.request"] and "http.client" in sys.modules
        assert urllib.request.pathname2url("/a b") == "/a%20b"
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=workspace, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"


def test_check_and_build_leave_the_garbage_collector_on(workspace: Path) -> None:
    """They pause it while they run; a caller in the same process gets it back."""
    assert gc.isenabled()
    for args in (["check", "2024-w02"], ["build", "2024-w02", "--out", "out"]):
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert gc.isenabled()
    (workspace / "issues" / "2024-w03.yaml").write_text("title: [unclosed\n", encoding="utf-8")
    for args in (["check", "2024-w03"], ["build", "2024-w03"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and "issues/2024-w03.yaml:" in result.stderr
        assert gc.isenabled()


def test_commands_do_not_search_the_installed_packages_for_pydantic_plugins(workspace: Path) -> None:
    """pydantic reads every installed package's entry points looking for plugins as it
    builds its first model; the commands' models use none, so they skip the search."""
    code = textwrap.dedent("""
        from highlightsmail.cli import main
        main(["check", "2024-w02"], standalone_mode=False)
        from pydantic.plugin import _loader
        print("searched" if _loader._plugins is not None else "not searched")
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=workspace, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "not searched"


def test_check_and_build_run_their_imports_without_the_collector(workspace: Path, tmp_path: Path) -> None:
    """The modules a command imports are nearly all it makes; the cyclic collector would
    walk them again and again while they load, for nothing to free."""
    code = textwrap.dedent("""
        import gc, sys
        from highlightsmail.cli import main
        # Loaded by the group before it knows which command runs: not the command's.
        import highlightsmail.errors
        passes = []
        gc.callbacks.append(lambda phase, info: passes.append(info) if phase == "start" else None)
        main(sys.argv[1:], standalone_mode=False)
        print(len(passes))
    """)
    for args in (["check", "2024-w02"], ["build", "2024-w02", "--out", str(tmp_path / "out")]):
        done = subprocess.run(
            [sys.executable, "-c", code, *args], cwd=workspace, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == "0", args
