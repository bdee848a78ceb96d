"""Sending an issue: the test send and the dispatch, each a plan (`plan.py`) and then
its run (`loop.py`), and `status` (`status.py`).

Several senders: on SQLite one `send` of an issue runs at a time; on PostgreSQL any
number, on any machines, share the dispatch (`lock.py`). Nothing here writes to the
terminal: each command returns what happened as a dataclass (`outcome.py`), and tells
its caller about progress through `SendEvents` (`events.py`).
"""

from __future__ import annotations

import gc
import os
import secrets
import threading
from collections.abc import Callable
from datetime import datetime
from email.utils import parseaddr
from pathlib import Path
from typing import TYPE_CHECKING

from highlightsmail.addresses import BadAddress, address_key, normalize_address
from highlightsmail.authoring.issue import Issue, load_issue
from highlightsmail.errors import HighlightsError
from highlightsmail.mail.backends import get_backend
from highlightsmail.mail.backends.base import Backend, Batch, BatchResult, DeliveryError
from highlightsmail.mail.batches import Batches
from highlightsmail.mail.kept import keepable
from highlightsmail.mail.message import Recipient, build_message, fingerprint
from highlightsmail.mail.pool import BackendPool
from highlightsmail.rendering.once import rendered_issue
from highlightsmail.rendering.rendered import RenderedIssue
from highlightsmail.sending.events import Quiet, SendEvents
from highlightsmail.sending.limits import Limits
from highlightsmail.sending.lock import as_sender
from highlightsmail.sending.loop import issue_batches, run_dispatch, send_claimed
from highlightsmail.sending.outcome import Reason, SendOutcome, Summary, TestSendResult
from highlightsmail.sending.plan import (
    NO_SUBSCRIBERS,
    SendPlan,
    audience_line,
    audience_of,
    check_tested,
    make_plan,
)
from highlightsmail.sending.status import Group, StatusReport, status
from highlightsmail.store import Store, format_time
from highlightsmail.tokens import Signer, load_signer

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Settings, Workspace

__all__ = [
    "Group",
    "Quiet",
    "Reason",
    "SendEvents",
    "SendOutcome",
    "SendPlan",
    "StatusReport",
    "Summary",
    "TestSendResult",
    "announce",
    "send",
    "send_claimed",
    "send_test",
    "settle",
    "status",
]


def _render(ws: Workspace, issue: Issue) -> RenderedIssue:
    return rendered_issue(issue, ws)


def _signer(ws: Workspace, *, dry_run: bool = False) -> Signer:
    if dry_run and not os.environ.get("HIGHLIGHTS_SECRET", "").strip() and not os.path.lexists(ws.secret_path):
        # Loading would create the secret file, and a dry run changes nothing: a
        # throwaway secret builds the sample message just as well.
        return Signer(secrets.token_bytes(32))
    return load_signer(ws.secret_path)


def _editors(ws: Workspace, to: list[str]) -> list[Recipient]:
    """Who a test send goes to: `to` (checked and normalised as subscribers' addresses
    are) or the editors; one copy per person, two spellings of an address (case,
    Unicode form) being one."""
    addresses = list(ws.settings.editors)
    if to:
        addresses = []
        for addr in to:
            try:
                addresses.append(normalize_address(addr))
            except BadAddress as err:
                raise HighlightsError(f"--to {addr!r}: {err}") from None
    firsts: dict[str, str] = {}
    for addr in addresses:
        firsts.setdefault(address_key(parseaddr(addr)[1]), addr)
    return [Recipient(email=email, name=name) for name, email in map(parseaddr, firsts.values())]


# ---------------------------------------------------------------------------- test send


def send_test(ws: Workspace, issue_path: Path, to: list[str], *, dry_run: bool = False) -> TestSendResult:
    """Send the issue to the editors (or `to`) with [TEST] in the subject, and record
    the fingerprint of what was sent so that `send` knows it was seen."""
    issue = load_issue(issue_path)
    return send_test_of(ws, _render(ws, issue), to, dry_run=dry_run, reach=audience_line(ws, issue))


def send_test_of(
    ws: Workspace, rendered: RenderedIssue, to: list[str], *, dry_run: bool = False, reach: str | None = None
) -> TestSendResult:
    """`send_test` of an email already rendered (an issue, or a correction notice);
    `reach` says whom the real send would reach (plan.audience_line)."""
    digest = fingerprint(rendered, ws.settings)  # also refuses any header text that could break out
    recipients = _editors(ws, to)
    batch = Batches(rendered, ws.settings, _signer(ws, dry_run=dry_run)).to_editors(recipients)
    sent_to = [r.email for r in recipients]
    backend = get_backend(ws, test=True)
    if dry_run:
        return TestSendResult(rendered.slug, sent_to, backend.name, digest, dry_run=True, audience=reach)
    # Recording the test must be possible before it goes out: one sent and then not
    # recorded (no data in the database, a server down) would have to be sent again.
    Store.open(ws).close()
    result = _send_test_batch(backend, batch)
    problems = {
        **result.failed,
        **{k: f"no answer, it may or may not have arrived ({why})" for k, why in result.in_doubt.items()},
    }
    if problems:
        lines = "; ".join(f"{recipients[k - 1].email}: {why}" for k, why in problems.items())
        raise HighlightsError(f"test send failed for {lines}")
    with Store.open(ws) as store:
        store.record_test_send(rendered.slug, digest, sent_to)
    return TestSendResult(rendered.slug, sent_to, backend.name, digest, audience=reach)


def _send_test_batch(backend: Backend, batch: Batch) -> BatchResult:
    """Open `backend` and send the batch through it from the pool, which closes it quietly."""
    backends = BackendPool(backend.clone, first=backend)
    try:
        backend.open()
        return backends.get().send_batch(batch)
    except DeliveryError as err:
        raise HighlightsError(f"test send failed: {err.message}") from None
    finally:
        backends.close()


# ---------------------------------------------------------------------------- dispatch


def approved_fingerprint(ws: Workspace, issue_path: Path) -> str:
    """The fingerprint of the issue as it would go now (what a schedule compares with
    the one it recorded)."""
    return fingerprint(_render(ws, load_issue(issue_path)), ws.settings)


def send(
    ws: Workspace,
    issue_path: Path,
    *,
    events: SendEvents | None = None,
    dry_run: bool = False,
    limit: int | None = None,
    resend_in_doubt: bool = False,
    skip_test_check: bool = False,
    clock: Callable[[], datetime] | None = None,
    approved: str | None = None,
    hold: tuple[int, str] | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> SendOutcome:
    """Plan the dispatch to those active when its first send began; once the editor says
    yes, run it as far as the sending limits allow (the schedule's arguments: `_backend`)."""
    events = events or Quiet()
    issue = load_issue(issue_path)
    audience = audience_of(issue, ws.settings)
    rendered = _render(ws, issue)
    digest = fingerprint(rendered, ws.settings)  # also refuses any header text that could break out
    if approved is not None and digest != approved:
        raise HighlightsError(f"{rendered.slug}: the message is no longer the one that was scheduled")
    if dry_run and not ws.database_exists():
        # Opening would create the database, and a dry run changes nothing.
        raise HighlightsError(NO_SUBSCRIBERS)
    opening = {"clock": clock} if clock is not None else {}  # else the store's own clock
    with Store.open(ws, **opening) as store, as_sender(ws, store, rendered.slug, dry_run=dry_run):
        tested = check_tested(store, rendered.slug, digest, skip=skip_test_check)
        backend = _backend(ws, hold)
        signer = _signer(ws, dry_run=dry_run)
        plan = make_plan(
            store,
            backend,
            rendered.slug,
            tested=tested,
            dry_run=dry_run,
            limit=limit,
            resend_in_doubt=resend_in_doubt,
            audience=audience,
        )
        if dry_run:
            _dry_build(store, issue_batches(store, rendered, ws.settings, signer), plan)
            return SendOutcome(plan, dry_run=True, suppressed=plan.suppressed)
        announce(events, plan, backend.name)
        limits = Limits(store, ws.settings, rendered.slug, stopping)
        outcome = _run(
            store,
            backend,
            plan,
            events,
            lambda: issue_batches(store, rendered, ws.settings, signer),
            limit,
            keep=lambda: keep_message(store, rendered, ws.settings, issue_path, signer),
            limits=limits,
        )
        return settle(store, outcome, limits, digest)


def _backend(ws: Workspace, hold: tuple[int, str] | None) -> Backend:
    """The workspace's backend; with `hold` (send_at, batch id), one the provider holds
    the mail of until then (sending/provider.py).

    The schedule's arguments of `send`: `clock` the time the limits are read
    at; `approved` the fingerprint a schedule recorded (a message that is no longer it
    is not sent); `hold` as here; `stopping` says when to claim no more and pause (a
    runner's server shutting down)."""
    backend = get_backend(ws)
    if hold is not None:
        backend.hold_until(*hold)
    return backend


def keep_message(
    store: Store, rendered: RenderedIssue, settings: Settings, source: Path | None, signer: Signer
) -> None:
    """Keep the message this dispatch sends, with the name of the secret that signs its
    links, and the issue file as it is now (the first run of a dispatch keeps them;
    later runs find them kept, unless the secret changed since)."""
    text = None
    if source is not None:
        try:
            text = source.read_text(encoding="utf-8")
        except (OSError, UnicodeError):
            text = None  # it was just read to render it; without it no correction shows
    store.keep_message(rendered.slug, keepable(rendered, settings, key=signer.key_id()), text)


def _dry_build(store: Store, batches: Batches, plan: SendPlan) -> None:
    """Build the first recipient's message, so a dry run catches what building would."""
    rows = store.peek_recipients(plan.slug, plan.resume, 1)
    for env in batches.to_subscribers(rows).envelopes:
        build_message(batches.rendered, batches.settings, env.recipient, env.links)


def _run(
    store: Store,
    backend: Backend,
    plan: SendPlan,
    events: SendEvents,
    batches: Callable[[], Batches],
    limit: int | None,
    *,
    keep: Callable[[], None] = lambda: None,
    limits: Limits | None = None,
) -> SendOutcome:
    """Run a plan: ask, begin (or resume) the dispatch, run the send loop. `batches`
    are made once the dispatch has begun: its tag is made with it; `keep` keeps the
    message it sends then (mail/kept.py)."""
    slug = plan.slug
    if plan.pending == 0:
        if not plan.resume:
            if plan.audience:
                raise HighlightsError(
                    f"{slug}: no active subscriber (not paused) is in the topics {', '.join(plan.audience)}; "
                    "nothing was sent"
                )
            raise HighlightsError(NO_SUBSCRIBERS)
        summary = Summary.from_counts(store.delivery_counts(slug))
        return SendOutcome(plan, suppressed=plan.suppressed, summary=summary, nothing_left=True)
    if not events.confirm(plan):
        raise HighlightsError("nothing was sent")
    # What the command loaded to get here lives until it exits: kept out of the
    # collector's full passes from now on, which the begin's rows would otherwise set off
    # over all of it (15-30 ms each on PostgreSQL at 100,000). The workers' fork freezes
    # it anyway, and their close puts it back. Not in a server's scheduled send (a thread
    # of its own): what the server holds is no command's to keep.
    if threading.current_thread() is threading.main_thread():
        gc.freeze()
    _begin(store, plan, backend.name, events)
    keep()
    store.sending_started(slug)
    with events.progress(plan.count) as advance:
        run = run_dispatch(store, backend, batches(), limit=limit, progress=advance, events=events, gate=limits)
    if store.shares_dispatch:
        # A sender that died while this one ran left its batch in flight: in doubt now.
        store.mark_in_doubt(slug)
    summary = Summary.from_counts(store.delivery_counts(slug))
    reasons = [Reason(state, why, n) for (state, why), n in run.reasons.most_common()]
    return SendOutcome(
        plan,
        suppressed=plan.suppressed,
        summary=summary,
        reasons=reasons,
        stopped=run.stopped,
        paused_until=paused_until(limits, summary),
        cancelled=bool(limits and limits.cancelled),
    )


def paused_until(limits: Limits | None, summary: Summary) -> str | None:
    """When a run that stopped claiming may go on: the limits' time, unless nothing is
    left (what stopped the claims after the last batch, the runner's server stopping or
    a limit, then stopped nothing: the send is done, not paused)."""
    if limits is None or limits.paused_until is None or summary["pending"] == 0:
        return None
    return format_time(limits.paused_until)


def announce(events: SendEvents, plan: SendPlan, backend: str) -> None:
    """Tell the editor what the plan found before it runs: suppressions applied, and
    recipients found in doubt."""
    if plan.suppressed:
        events.suppressions_applied(plan.suppressed, backend)
    if plan.found_in_doubt:
        events.found_in_doubt(plan.found_in_doubt)


def settle(store: Store, outcome: SendOutcome, limits: Limits, digest: str) -> SendOutcome:
    """What the issue's schedule says after a run: paused until the limits' window opens
    (a runner resumes it), sent, or stopped by hand (a runner leaves it alone). Returns
    the outcome."""
    slug = outcome.plan.slug
    if outcome.cancelled or outcome.summary is None:
        return outcome
    if outcome.paused_until is not None:
        store.sending_stopped(slug, "paused", reason=limits.reason, until=outcome.paused_until, fingerprint=digest)
    elif outcome.summary["pending"] == 0:
        store.sending_stopped(slug, "sent")
    else:
        why = "stopped by Ctrl-C" if outcome.stopped else "stopped after --limit"
        store.sending_stopped(slug, "cancelled", reason=why)
    return outcome


def _begin(store: Store, plan: SendPlan, backend: str, events: SendEvents) -> None:
    """Begin the dispatch, or put back in the queue what this run sends again."""
    if not plan.resume:
        try:
            store.begin_dispatch(plan.slug, backend, plan.audience)
        except HighlightsError:
            if store.dispatch_info(plan.slug) is None:
                raise
            # Another sender began it a moment ago: this one shares it.
        return
    if plan.resend_in_doubt:
        store.requeue(plan.slug, "in_doubt")
    retried = store.requeue(plan.slug, "failed")
    if retried:
        events.retrying_failed(retried)
