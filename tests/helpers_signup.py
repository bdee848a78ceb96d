"""Shared by the signup's tests: turning the form on in a workspace, the confirmation
emails in the outbox, the link in them, and `highlights serve` as a real process."""

from __future__ import annotations

import email
import email.policy
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from helpers_archive import configure

CONFIRM_DIR = Path("outbox") / "_confirm"


def enable_signup(root: Path, **signup: object) -> None:
    """Turn the signup form on in the workspace's highlights.yaml (and set `signup`)."""
    configure(root, signup={"enabled": True, **signup})


def mails(folder: Path) -> list[Path]:
    """The messages in an outbox folder, in order."""
    return sorted(folder.glob("*.eml")) if folder.is_dir() else []


def wait_for_mails(folder: Path, count: int, timeout: float = 20.0) -> list[Path]:
    """The messages in `folder` once there are at least `count` (they are written by
    the server's mail threads, after the answer)."""
    deadline = time.monotonic() + timeout
    while True:
        found = mails(folder)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def read_mail(path: Path) -> EmailMessage:
    return email.message_from_bytes(path.read_bytes(), policy=email.policy.default)  # type: ignore[return-value]


def confirm_link(msg: EmailMessage, base_url: str = "https://highlights.example.org") -> str:
    """The confirmation link's path (`/confirm/TOKEN`), the same in both parts."""
    html = msg.get_body(("html",)).get_content()
    text = msg.get_body(("plain",)).get_content()
    base = re.escape(base_url.rstrip("/"))
    in_html = set(re.findall(rf'href="({base}/confirm/[^"]+)"', html))
    in_text = set(re.findall(rf"({base}/confirm/\S+)", text))
    assert len(in_html) == 1 and in_html == in_text, (in_html, in_text)
    return urlsplit(in_html.pop()).path


@contextmanager
def serve_process(root: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """`highlights serve --port 0` in the workspace, as a real process; yields its URL
    and stops it with Ctrl-C (SIGINT), which lets it finish the emails under way."""
    exe = Path(sys.executable).with_name("highlights")
    proc = subprocess.Popen(
        [str(exe), "serve", "--port", "0"],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    err_lines: list[str] = []
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)/", first)
        assert match, first + proc.stderr.read()
        url = match.group(0).rstrip("/")
        # Keep reading both pipes (uvicorn's access log goes to stdout), so the process
        # never stops on a full pipe.
        for pipe in (proc.stdout, proc.stderr):
            threading.Thread(target=lambda p=pipe: err_lines.extend(p), daemon=True).start()
        with httpx.Client() as client:
            for _ in range(200):
                try:
                    if client.get(f"{url}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(err_lines)
