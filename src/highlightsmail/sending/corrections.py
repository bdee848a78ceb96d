"""`send ISSUE --correction TEXT`: a correction notice to exactly the readers the ledger
says received the issue, after its own test send.

A correction is a dispatch of its own (`ISSUE~correction-N`, store/corrections.py):
its test send is recorded under that name with the notice's fingerprint, so the gate
is the issue's (`check_tested`); its recipients are fixed when it begins as those the
issue's ledger has sent, and the send loop skips whoever left since. An unfinished
correction is resumed by the next `--correction`; after a finished one, the same text
finds nothing left to send and another text is a new correction (N + 1).

Its claims go through the sending limits like an issue's (`limits.py`): counted in the
window every sender shares, and paused when it is full. The correction's text is kept
with its message (store/messages.py), so a paused correction gets a schedule as a paused
issue does and `run-due` or `serve` sends the rest (`resume_correction`), as long as the
notice rendered again is the one that was test-sent; the same command resumes it too."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from highlightsmail.authoring.issue import load_issue
from highlightsmail.errors import HighlightsError
from highlightsmail.mail.backends import get_backend
from highlightsmail.mail.backends.base import Backend
from highlightsmail.mail.kept import keepable
from highlightsmail.mail.message import fingerprint
from highlightsmail.rendering.correction import render_correction
from highlightsmail.rendering.rendered import RenderedIssue
from highlightsmail.sending.dispatch import announce, paused_until, send_test_of, settle
from highlightsmail.sending.events import Quiet, SendEvents
from highlightsmail.sending.limits import Limits
from highlightsmail.sending.lock import as_sender
from highlightsmail.sending.loop import issue_batches, run_dispatch
from highlightsmail.sending.outcome import Reason, SendOutcome, Summary, TestSendResult
from highlightsmail.sending.plan import SendPlan, check_tested, left_to_send, read_suppressions
from highlightsmail.store import Store
from highlightsmail.store.corrections import correction_name
from highlightsmail.tokens import load_signer

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Workspace

__all__ = [
    "Correction",
    "correction_text",
    "kept_text",
    "prepare",
    "send_correction",
    "send_correction_test",
]


@dataclass(frozen=True)
class Correction:
    """A correction about to be test-sent or sent: its dispatch's name, whether that
    dispatch has begun (it is resumed), its Markdown and the notice rendered."""

    issue: str
    name: str
    begun: bool
    text: str
    rendered: RenderedIssue


def correction_text(text: str | None, file: Path | None) -> str:
    """The correction's Markdown, from --correction or --correction-file."""
    if (text is None) == (file is None):
        raise HighlightsError("give the correction once: --correction TEXT or --correction-file FILE")
    if file is None:
        return text or ""
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise HighlightsError(f"{file}: --correction-file must be UTF-8 text") from None
    except OSError as err:
        raise HighlightsError(f"{file}: cannot read it: {err.strerror or err}") from None


def prepare(ws: Workspace, store: Store, issue_path: Path, text: str) -> Correction:
    """Which correction dispatch `text` belongs to, and the notice rendered for it; a
    HighlightsError when the issue was sent to nobody."""
    issue = load_issue(issue_path)
    slug = issue.slug
    if not store.received(slug):
        raise HighlightsError(f"{slug}: the ledger has it sent to nobody, so there is nobody to correct it for")
    corrections = store.corrections_of(slug)
    if corrections:
        last = corrections[-1][0]
        again = render_correction(ws, issue, text, last)
        # Unfinished: this resumes it. Finished, and this is the text it sent: it is
        # done (nothing left to send), not a new correction.
        if corrections[-1][2] is None or store.has_test_send(last, fingerprint(again, ws.settings)):
            return Correction(slug, last, True, text, again)
    name = correction_name(slug, len(corrections) + 1)
    return Correction(slug, name, False, text, render_correction(ws, issue, text, name))


def kept_text(store: Store, name: str) -> str | None:
    """The Markdown of the correction dispatch `name` as its first run kept it, or None
    (not begun, or begun before a correction's text was kept)."""
    kept = store.kept_message(name)
    return kept.source if kept is not None else None


def send_correction_test(
    ws: Workspace, issue_path: Path, text: str, to: list[str], *, dry_run: bool = False
) -> tuple[Correction, TestSendResult]:
    """Send the correction notice to the editors (or `to`), [TEST] in its subject, and
    record its fingerprint under the correction's name: the gate of its real send."""
    if not ws.database_exists():
        raise HighlightsError("there is no database yet: nothing was sent, so there is nothing to correct")
    with Store.open(ws) as store:
        correction = prepare(ws, store, issue_path, text)
    return correction, send_test_of(ws, correction.rendered, to, dry_run=dry_run)


def send_correction(
    ws: Workspace,
    issue_path: Path,
    text: str,
    *,
    events: SendEvents | None = None,
    dry_run: bool = False,
    resend_in_doubt: bool = False,
    clock: Callable[[], datetime] | None = None,
    approved: str | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> SendOutcome:
    """Mail the correction notice to the issue's recipients who are still on the list,
    once the editor says yes, as far as the sending limits allow now (read at `clock`,
    else the store's); only the version that was test-sent goes. A runner passes the
    fingerprint its schedule recorded (`approved`: anything else is not sent) and
    `stopping` (claim no more and pause)."""
    events = events or Quiet()
    if not ws.database_exists():
        raise HighlightsError("there is no database yet: nothing was sent, so there is nothing to correct")
    opening = {"clock": clock} if clock is not None else {}
    with Store.open(ws, **opening) as store:
        correction = prepare(ws, store, issue_path, text)
        rendered = correction.rendered
        digest = fingerprint(rendered, ws.settings)
        if approved is not None and digest != approved:
            raise HighlightsError(f"{correction.name}: the notice is no longer the one that was test-sent")
        with as_sender(ws, store, correction.name, dry_run=dry_run):
            check_tested(store, correction.name, digest, skip=False)
            backend = get_backend(ws)
            plan = _plan(store, backend, correction, dry_run=dry_run, resend_in_doubt=resend_in_doubt)
            if dry_run:
                return SendOutcome(plan, dry_run=True, suppressed=plan.suppressed)
            announce(events, plan, backend.name)
            limits = Limits(store, ws.settings, correction.name, stopping)
            return settle(store, _run(ws, store, backend, plan, correction, events, limits), limits, digest)


def _plan(store: Store, backend: Backend, correction: Correction, *, dry_run: bool, resend_in_doubt: bool) -> SendPlan:
    suppressed = read_suppressions(store, backend, dry_run=dry_run)
    doubt = 0
    if correction.begun:
        doubt = 0 if dry_run else store.mark_in_doubt(correction.name)
        pending = left_to_send(store, correction.name, resend_in_doubt=resend_in_doubt)
    else:
        pending = store.still_active(store.received(correction.issue))
    return SendPlan(
        slug=correction.name,
        backend=backend.name,
        count=pending,
        resume=correction.begun,
        pending=pending,
        suppressed=suppressed,
        found_in_doubt=doubt,
        resend_in_doubt=resend_in_doubt,
    )


def _run(
    ws: Workspace,
    store: Store,
    backend: Backend,
    plan: SendPlan,
    correction: Correction,
    events: SendEvents,
    limits: Limits,
) -> SendOutcome:
    """Ask, begin (or resume) the correction's dispatch, keep its message, run the loop."""
    name = correction.name
    if plan.pending == 0:
        if not plan.resume:
            raise HighlightsError(f"{correction.issue}: none of its recipients is on the list any more; nothing sent")
        summary = Summary.from_counts(store.delivery_counts(name))
        return SendOutcome(plan, suppressed=plan.suppressed, summary=summary, nothing_left=True)
    if not events.confirm(plan):
        raise HighlightsError("nothing was sent")
    if not plan.resume:
        try:
            store.begin_correction(name, correction.issue, backend.name)
        except HighlightsError:
            if store.dispatch_info(name) is None:
                raise
            # Another sender began it a moment ago: this one shares it.
    else:
        if plan.resend_in_doubt:
            store.requeue(name, "in_doubt")
        store.requeue(name, "failed")
    # Its text is kept with it: a runner renders the notice again from it to resume.
    signer = load_signer(ws.secret_path)
    store.keep_message(name, keepable(correction.rendered, ws.settings, key=signer.key_id()), correction.text)
    store.sending_started(name)
    batches = issue_batches(store, correction.rendered, ws.settings, signer)
    with events.progress(plan.count) as advance:
        run = run_dispatch(store, backend, batches, progress=advance, events=events, gate=limits)
    if store.shares_dispatch:
        store.mark_in_doubt(name)
    summary = Summary.from_counts(store.delivery_counts(name))
    reasons = [Reason(state, why, n) for (state, why), n in run.reasons.most_common()]
    return SendOutcome(
        plan,
        suppressed=plan.suppressed,
        summary=summary,
        reasons=reasons,
        stopped=run.stopped,
        paused_until=paused_until(limits, summary),
        cancelled=limits.cancelled,
    )
