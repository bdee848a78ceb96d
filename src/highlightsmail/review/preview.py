"""`highlights preview`: a local page showing an issue as subscribers will see it, that
re-renders and reloads itself whenever the issue file, a template or the settings change.

How it fits together:

- one `_Preview` per server holds the current rendering (a `Snapshot`) and its build id;
- two file watchers (watchfiles) mark it dirty; one render loop re-renders, once for all
  open pages, in a worker thread, and bumps the build id when what the page shows changed;
- the page long-polls `/wait?v=BUILD` (as mkdocs' dev server does) and reloads itself
  when the answer names another build, keeping its scroll positions;
- a broken file or template becomes error lines on the page; the server keeps running.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import secrets
import socket
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import jinja2
import uvicorn
import watchfiles
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from highlightsmail.authoring.issue import Issue, load_issue
from highlightsmail.authoring.workspace import Workspace, load_workspace
from highlightsmail.errors import HighlightsError, Problem, ValidationFailed, display_path
from highlightsmail.rendering import render
from highlightsmail.rendering.render import render_issue
from highlightsmail.rendering.rendered import RenderedIssue
from highlightsmail.review.lint import html_room, lint_issue
from highlightsmail.sending.when import note as schedule_note
from highlightsmail.serving import bind_socket
from highlightsmail.templating import ui_environment

#: The page's template, in the package's `ui/` folder.
PAGE_TEMPLATE = "preview.html.j2"
#: What the unsubscribe links point to in the preview: nowhere, so a click changes nothing.
PREVIEW_UNSUBSCRIBE_URL = "#unsubscribe-preview"
PREVIEW_PREFERENCES_URL = "#preferences-preview"

# Save-to-page budget is 500 ms: wait only 50 ms for a save's burst of events to settle
# (watchfiles' default debounce, 1.6 s, would spend it three times over).
WATCH_DEBOUNCE_MS = 50
WATCH_STEP_MS = 50
# The stop event ends a watch within one step; this only bounds each blocking call.
WATCH_RUST_TIMEOUT_MS = 5_000
# A long poll answers after this long even without a change, so that proxies and
# browsers never see a request hang for minutes.
WAIT_TIMEOUT_S = 25.0
WAIT_TIMEOUT_MAX_S = 60.0

_NO_STORE = {"Cache-Control": "no-store"}
# Scripts never run in an email; nor in its preview, even when opened on its own.
_EMAIL_HEADERS = {**_NO_STORE, "Content-Security-Policy": "script-src 'none'; object-src 'none'"}
# Host names a browser uses for a loopback server (an IPv6 Host header would need its
# brackets understood, so ::1 goes unchecked).
_LOOPBACK = {"127.0.0.1", "localhost"}

Log = Callable[[str], None]


@dataclass(frozen=True)
class Snapshot:
    """What the preview shows for one build: the email, or the errors that stopped it."""

    build: str
    issue_file: str
    subject: str | None = None
    preheader: str | None = None
    html: str | None = None
    text: str | None = None
    errors: list[str] = field(default_factory=list)
    lint: list[Problem] | None = None  # None: lint did not run (see lint_note)
    lint_note: str | None = None
    html_size: str | None = None  # "42 KB of 102 KB; about 20 more items of this size fit"
    schedule: str | None = None  # when it is to go, if it is scheduled (sending/when.py)
    render_ms: float = 0.0
    rendered_at: datetime = field(default_factory=datetime.now)

    @property
    def ok(self) -> bool:
        return not self.errors

    def digest(self) -> str:
        """Fingerprint of everything the page shows, to skip reloads that change nothing."""
        parts = [
            self.subject,
            self.preheader,
            self.html,
            self.text,
            *self.errors,
            *(str(p) for p in self.lint or []),
            self.lint_note,
            self.html_size,
            self.schedule,
        ]
        h = hashlib.sha256()
        for part in parts:
            h.update(b"\0" if part is None else part.encode("utf-8", "surrogatepass") + b"\1")
        return h.hexdigest()


@dataclass
class _Built:
    """A render's result, made in a worker thread and applied on the event loop."""

    snapshot: Snapshot
    ws: Workspace
    settings_loaded: bool = True


class _Preview:
    """The preview's shared state: one rendering, one build id, many waiting pages."""

    def __init__(self, ws: Workspace, issue_path: Path, log: Log) -> None:
        self.ws = ws
        self.issue_path = Path(issue_path).resolve()
        self.settings_path = ws.settings_path.resolve()
        self.templates_dir = _resolved(ws.templates_dir) or ws.templates_dir
        self.log = log
        # A new id per server start, so a page left open across a restart reloads too.
        self._boot = secrets.token_hex(3)
        self._count = 0
        self.snapshot = Snapshot(
            build=f"{self._boot}-0", issue_file=display_path(self.issue_path), errors=["not rendered yet"]
        )
        self._digest = ""
        self._settings_dirty = False
        self._templates_moved = False
        self._dirty: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self.closing = False
        self.renders = 0  # every render, shown or not (the page changes only on a new build)

    # ------------------------------------------------------------------ rendering

    async def rebuild(self) -> None:
        """Render now (in a worker thread) and publish the result if the page would change."""
        reload_settings, self._settings_dirty = self._settings_dirty, False
        templates_moved, self._templates_moved = self._templates_moved, False
        built = await asyncio.to_thread(self._build, self.ws, reload_settings, templates_moved)
        self.renders += 1
        self.ws = built.ws
        if not built.settings_loaded:
            # Until highlights.yaml loads again, every build must show why it doesn't.
            self._settings_dirty = True
        digest = built.snapshot.digest()
        if digest == self._digest:
            return
        self._digest = digest
        self._count += 1
        self.snapshot = dataclasses.replace(built.snapshot, build=f"{self._boot}-{self._count}")
        self._report(self.snapshot)
        if self._changed is not None:
            # Wake every waiting page at once; later waiters get a fresh event.
            old, self._changed = self._changed, asyncio.Event()
            old.set()

    def _build(self, ws: Workspace, reload_settings: bool, templates_moved: bool = False) -> _Built:
        """Load settings (when changed) and the issue, render, lint. Never raises: a
        failure becomes error lines on the page."""
        started = time.perf_counter()
        issue_file = display_path(self.issue_path)
        if templates_moved:
            _forget_compiled_templates()
        settings_loaded = not reload_settings
        try:
            if reload_settings:
                ws = load_workspace(ws.root)
                settings_loaded = True
            issue = load_issue(self.issue_path)
            rendered = render_issue(issue, ws)
            html, text = rendered.personalize(PREVIEW_UNSUBSCRIBE_URL, PREVIEW_PREFERENCES_URL)
        except Exception as exc:
            return _Built(
                Snapshot(
                    build="", issue_file=issue_file, errors=_error_lines(exc, self.log), render_ms=_ms_since(started)
                ),
                ws,
                settings_loaded,
            )
        lint, note, size = _lint(ws, issue, rendered, self.log)
        snapshot = Snapshot(
            build="",
            issue_file=issue_file,
            subject=rendered.subject,
            preheader=rendered.preheader,
            html=html,
            text=text,
            lint=lint,
            lint_note=note,
            html_size=size,
            schedule=schedule_note(ws, rendered.slug),
            render_ms=_ms_since(started),
        )
        return _Built(snapshot, ws)

    def _report(self, snap: Snapshot) -> None:
        """One line per build in the terminal, and the errors in full."""
        if not snap.ok:
            self.log(f"{snap.issue_file}: cannot render ({len(snap.errors)} error(s)); the page shows:")
            for line in snap.errors:
                self.log(f"  {line}")
            return
        counts = ""
        if snap.lint is not None:
            errors = sum(p.severity == "error" for p in snap.lint)
            counts = f", lint: {errors} error(s), {len(snap.lint) - errors} warning(s)"
        elif snap.lint_note:
            counts = f", {snap.lint_note}"
        self.log(f"{snap.issue_file}: rendered in {snap.render_ms:.0f} ms{counts}")

    # ------------------------------------------------------------------ watching

    def _is_watched_file(self, path: str) -> bool:
        p = Path(path)
        return p in (self.issue_path, self.settings_path) or _resolved(p) in (self.issue_path, self.settings_path)

    async def _render_loop(self) -> None:
        """Render whenever a watcher marked the preview dirty; changes that arrive during
        a render make exactly one more render."""
        assert self._dirty is not None
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self.rebuild()

    async def _watch(self, paths: list[Path], recursive: bool, accept: Callable[[str], bool]) -> None:
        stop = self._stop
        assert stop is not None and self._dirty is not None
        default_filter = watchfiles.DefaultFilter()
        try:
            async for changes in watchfiles.awatch(
                *paths,
                watch_filter=lambda change, path: default_filter(change, path) and accept(path),
                debounce=WATCH_DEBOUNCE_MS,
                step=WATCH_STEP_MS,
                rust_timeout=WATCH_RUST_TIMEOUT_MS,
                stop_event=stop,
                recursive=recursive,
                # inotify: a save is seen at once; polling would add its delay to the budget.
                force_polling=False,
            ):
                self._note(changes)
                self._dirty.set()
        except Exception as exc:
            self.log(
                f"warning: cannot watch {', '.join(display_path(p) for p in paths)} ({exc}); "
                "reload the page by hand after saving"
            )

    def _note(self, changes: set[tuple[watchfiles.Change, str]]) -> None:
        """What the next render must do beyond loading the issue again."""
        if any(_resolved(Path(p)) == self.settings_path for _, p in changes):
            self._settings_dirty = True
        if any(
            change != watchfiles.Change.modified and Path(p).is_relative_to(self.templates_dir) for change, p in changes
        ):
            self._templates_moved = True

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Render once, then watch and re-render until the server stops (its lifespan)."""
        self._dirty, self._changed, self._stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
        await self.rebuild()
        # Editors save by writing a new file and renaming it over the old one, so watch
        # the folders, not the files. The workspace root is watched flat: it may hold
        # a .venv or out/ with thousands of files.
        flat = sorted({self.issue_path.parent, self.settings_path.parent})
        tasks = [
            asyncio.create_task(self._render_loop()),
            asyncio.create_task(self._watch(flat, False, self._is_watched_file)),
        ]
        if self.templates_dir.is_dir():
            tasks.append(asyncio.create_task(self._watch([self.templates_dir], True, lambda _p: True)))
        try:
            yield
        finally:
            self.close()
            self._stop.set()
            tasks[0].cancel()
            # The watchers end within a step of the stop event; a render in progress finishes.
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ waiting pages

    def close(self) -> None:
        """Answer every waiting page now: the server is stopping."""
        self.closing = True
        if self._changed is not None:
            self._changed.set()

    async def wait_for_build(self, seen: str, timeout: float) -> str:
        """The current build id, as soon as it differs from `seen` (or after `timeout`)."""
        if self.snapshot.build != seen or self.closing or self._changed is None:
            return self.snapshot.build
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
        return self.snapshot.build


def _resolved(path: Path) -> Path | None:
    """The real path, or None for a link that loops: a watcher must not stop on a bad
    file next to the issue (Path.resolve raises RuntimeError on a loop)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return None


def _forget_compiled_templates() -> None:
    """A template added to or removed from templates/ changes which file Jinja should
    load (the workspace's own or the package default); Jinja's own check only looks at
    the file it loaded before. So start over with a fresh environment."""
    clear = getattr(getattr(render, "_environment", None), "cache_clear", None)
    if clear is not None:
        clear()


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _lint(
    ws: Workspace, issue: Issue, rendered: RenderedIssue, log: Log
) -> tuple[list[Problem] | None, str | None, str | None]:
    """Lint results (or None and why lint could not run: the email is still shown), and
    the HTML's size beside Gmail's clip, as `check` says it."""
    try:
        problems = list(lint_issue(ws, issue, rendered))
        size = html_room(ws, issue, rendered).describe()
    except Exception as exc:
        log("".join(traceback.format_exception(exc)).rstrip())
        return None, f"lint failed: {type(exc).__name__}: {exc}", None
    # Errors first, then in file order.
    problems.sort(key=lambda p: (p.severity != "error", p.file, p.line, p.col))
    return problems, None, size


def _error_lines(exc: BaseException, log: Log) -> list[str]:
    """An exception as lines of `FILE:LINE:COL: message`, as far as its place is known."""
    if isinstance(exc, ValidationFailed):
        return [str(p) for p in exc.problems] or [exc.format_message()]
    if isinstance(exc, HighlightsError):
        return exc.format_message().splitlines() or [type(exc).__name__]
    where = _template_place(exc)
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if not where:
        # Not a user's mistake we can place: the terminal gets the traceback.
        log("".join(traceback.format_exception(exc)).rstrip())
    return [f"{where}{type(exc).__name__}: {message}"]


def _template_place(exc: BaseException) -> str:
    """`FILE:LINE:1: ` of the template a template error comes from, or "": Jinja puts the
    template's own file and line into the traceback (a syntax error carries them as
    attributes)."""
    filename, lineno = getattr(exc, "filename", None), getattr(exc, "lineno", None)
    if isinstance(filename, str) and filename.endswith(".j2") and isinstance(lineno, int):
        return f"{display_path(filename)}:{lineno}:1: "
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.endswith(".j2") and frame.lineno:
            return f"{display_path(frame.filename)}:{frame.lineno}:1: "
    return ""


# ---------------------------------------------------------------------- the web app


def _page_template() -> jinja2.Template:
    return ui_environment().get_template(PAGE_TEMPLATE)


def create_preview_app(
    ws: Workspace, issue_path: Path, *, log: Log | None = None, allowed_hosts: list[str] | None = None
) -> Starlette:
    """The preview as an ASGI app. Its lifespan renders the issue and runs the watchers,
    so it must be served (uvicorn, or `with TestClient(app)`).

    `allowed_hosts`, when given, refuses other Host headers: a page on another site
    could otherwise reach a loopback server through DNS rebinding.
    """
    preview = _Preview(ws, issue_path, log or (lambda _line: None))

    async def page(request: Request) -> Response:
        snap = preview.snapshot
        body = _page_template().render(s=snap)
        return HTMLResponse(body, headers=_NO_STORE)

    async def email_html(request: Request) -> Response:
        snap = preview.snapshot
        if snap.html is None:
            return PlainTextResponse("\n".join(snap.errors) + "\n", status_code=503, headers=_NO_STORE)
        return HTMLResponse(snap.html, headers=_EMAIL_HEADERS)

    async def email_text(request: Request) -> Response:
        snap = preview.snapshot
        if snap.text is None:
            return PlainTextResponse("\n".join(snap.errors) + "\n", status_code=503, headers=_NO_STORE)
        return PlainTextResponse(snap.text, headers=_NO_STORE)

    async def wait(request: Request) -> Response:
        try:
            timeout = float(request.query_params.get("timeout", WAIT_TIMEOUT_S))
        except ValueError:
            timeout = WAIT_TIMEOUT_S
        timeout = min(max(timeout, 0.0), WAIT_TIMEOUT_MAX_S)
        build = await preview.wait_for_build(request.query_params.get("v", ""), timeout)
        return JSONResponse({"build": build, "closing": preview.closing}, headers=_NO_STORE)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with preview.running():
            yield

    middleware = []
    if allowed_hosts:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts))
    app = Starlette(
        routes=[
            Route("/", page),
            Route("/email.html", email_html),
            Route("/email.txt", email_text),
            Route("/wait", wait),
        ],
        middleware=middleware,
        lifespan=lifespan,
    )
    app.state.preview = preview
    return app


# ---------------------------------------------------------------------- serving


class _PreviewServer(uvicorn.Server):
    """uvicorn, plus: answer waiting pages before shutting down (uvicorn waits for open
    requests to finish, and a long poll would hold Ctrl-C up), and a hook once listening."""

    def __init__(self, config: uvicorn.Config, preview: _Preview, on_started: Callable[[], None] | None = None) -> None:
        super().__init__(config)
        self._preview = preview
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._on_started is not None:
            self._on_started()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._preview.close()
        await super().shutdown(sockets)


def _url(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def _server(
    ws: Workspace, issue_path: Path, host: str, log: Log, on_started: Callable[[], None] | None = None
) -> _PreviewServer:
    # Only loopback names are accepted on a loopback address; a chosen host is the user's call.
    allowed = sorted(_LOOPBACK) if host in _LOOPBACK else None
    app = create_preview_app(ws, issue_path, log=log, allowed_hosts=allowed)
    # The long poll would fill the terminal with access lines; builds are reported instead.
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=3)
    return _PreviewServer(config, app.state.preview, on_started)


def serve_preview(
    ws: Workspace,
    issue_path: Path,
    host: str = "127.0.0.1",
    port: int = 8025,
    *,
    log: Log | None = None,
    on_started: Callable[[str], None] | None = None,
) -> None:
    """Serve the live preview of `issue_path` until Ctrl-C.

    `log` gets one line per build (and any errors in full); `on_started` gets the
    page's URL once the server listens.
    """
    sock = bind_socket(host, port)
    url = _url(sock, host)
    started = (lambda: on_started(url)) if on_started is not None else None
    server = _server(ws, issue_path, host, log or (lambda _line: None), started)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        # uvicorn re-raises the Ctrl-C it caught after a clean shutdown; that is the
        # normal way out of a preview, not a failure.
        pass
    finally:
        sock.close()


@contextlib.contextmanager
def running_preview(
    ws: Workspace, issue_path: Path, host: str = "127.0.0.1", port: int = 0, log: Log | None = None
) -> Iterator[str]:
    """Run the preview server in a background thread (for tests and benchmarks); yields
    its URL once it answers, and stops it (watchers included) on exit."""
    sock = bind_socket(host, port)
    url = _url(sock, host)
    ready = threading.Event()
    server = _server(ws, issue_path, host, log or (lambda _line: None), ready.set)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:
            failure.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="highlights-preview", daemon=True)
    thread.start()
    try:
        ready.wait(30)
        if failure or not server.started:
            raise HighlightsError(f"the preview server did not start: {failure[0] if failure else 'timed out'}")
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
