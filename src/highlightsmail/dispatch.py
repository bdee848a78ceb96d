"""Sending an issue: the test send, the dispatch loop with its ledger, and status.

The order for every batch is fixed, so that no state is lost at any point:
claim the next recipients and commit them `in_flight` (skipping anyone who left since
the dispatch began), hand the batch to the backend, commit `sent` or `failed`.
A run that dies between the two commits leaves `in_flight` rows; the next run turns
them into `in_doubt` and sends those again only when asked (`--resend-in-doubt`), so
nobody gets two copies by default.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from highlightsmail.errors import HighlightsError

if TYPE_CHECKING:
    from highlightsmail.backends.base import Backend, Batch, BatchResult
    from highlightsmail.render import RenderedIssue
    from highlightsmail.store import Delivery, Store
    from highlightsmail.tokens import Signer
    from highlightsmail.workspace import Workspace


@dataclass
class Summary:
    """How a dispatch stands: counts of recipients by ledger state."""

    total: int = 0
    pending: int = 0
    in_flight: int = 0
    sent: int = 0
    skipped: int = 0
    failed: int = 0
    in_doubt: int = 0

    @classmethod
    def from_counts(cls, counts: dict[str, int]) -> Summary:
        s = cls(**{k: counts.get(k, 0) for k in ("pending", "in_flight", "sent", "skipped", "failed", "in_doubt")})
        s.total = sum(counts.values())
        return s

    def line(self) -> str:
        return f"sent {self.sent}, skipped {self.skipped}, failed {self.failed}, in doubt {self.in_doubt}"


@contextmanager
def _send_lock(ws: Workspace, slug: str) -> Iterator[None]:
    """One `send` of an issue at a time: a second one would take the first one's
    in-flight batches for abandoned. flock is released by the OS even on kill -9."""
    import fcntl

    # Named after the database, so the workspace's .gitignore (`subscribers/*.db*`) covers it.
    path = ws.db_path.with_name(f"{ws.db_path.name}.send-{slug}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HighlightsError(f"{slug}: another `highlights send {slug}` is running") from None
        yield


def _send_running(ws: Workspace, slug: str) -> bool:
    """Whether a `send` of this issue holds its lock right now."""
    try:
        with _send_lock(ws, slug):
            return False
    except HighlightsError:
        return True


def _render(ws: Workspace, issue_path: Path) -> RenderedIssue:
    from highlightsmail.issue import load_issue
    from highlightsmail.render import render_issue

    return render_issue(load_issue(issue_path), ws)


def _signer(ws: Workspace) -> Signer:
    from highlightsmail.tokens import load_signer

    return load_signer(ws.secret_path)


def _validate_addresses(addresses: list[str]) -> list[str]:
    """`--to` addresses, checked and normalised as subscribers' addresses are."""
    from highlightsmail.addresses import BadAddress, normalize_address

    out = []
    for addr in addresses:
        try:
            out.append(normalize_address(addr))
        except BadAddress as err:
            raise HighlightsError(f"--to {addr!r}: {err}") from None
    return out


# ---------------------------------------------------------------------------- test send


def send_test_command(ws: Workspace, issue_path: Path, to: list[str], *, dry_run: bool = False) -> None:
    """Send the issue to the editors (or `to`) with [TEST] in the subject, and record
    the fingerprint of what was sent so that `send` knows it was seen."""
    from highlightsmail.backends import get_backend
    from highlightsmail.backends.base import Batch, DeliveryError, Envelope
    from highlightsmail.message import Recipient, recipient_links
    from highlightsmail.store import Store

    rendered = _render(ws, issue_path)
    addresses = _validate_addresses(to) if to else list(ws.settings.editors)
    signer = _signer(ws)
    envelopes = []
    for index, addr in enumerate(addresses, start=1):
        from email.utils import parseaddr

        name, email = parseaddr(addr)
        # Test tokens open a page that says "this was a test" and change nothing.
        links = recipient_links(ws.settings, signer, index, test=True)
        envelopes.append(Envelope(key=index, recipient=Recipient(email=email, name=name), links=links))
    batch = Batch(number=0, slug=rendered.slug, rendered=rendered, settings=ws.settings, envelopes=envelopes, test=True)
    if dry_run:
        click.echo(
            f"Dry run: would send a test of {rendered.slug} to {', '.join(e.recipient.email for e in envelopes)}"
        )
        return
    backend = get_backend(ws, test=True)
    try:
        backend.open()
        result = backend.send_batch(batch)
    except DeliveryError as err:
        raise HighlightsError(f"test send failed: {err.message}") from None
    finally:
        backend.close()
    problems = {
        **result.failed,
        **{k: f"no answer, it may or may not have arrived ({why})" for k, why in result.in_doubt.items()},
    }
    if problems:
        lines = "; ".join(f"{envelopes[k - 1].recipient.email}: {why}" for k, why in problems.items())
        raise HighlightsError(f"test send failed for {lines}")
    with Store.open(ws) as store:
        store.record_test_send(rendered.slug, rendered.fingerprint, [e.recipient.email for e in envelopes])
    click.echo(
        f"Test of {rendered.slug} sent to {', '.join(e.recipient.email for e in envelopes)} "
        f"through {backend.name} (fingerprint {rendered.fingerprint[:12]})."
    )
    click.echo(f"When it looks right: highlights send {rendered.slug}")


# ---------------------------------------------------------------------------- dispatch


def send_command(
    ws: Workspace,
    issue_path: Path,
    *,
    yes: bool = False,
    dry_run: bool = False,
    limit: int | None = None,
    resend_in_doubt: bool = False,
    skip_test_check: bool = False,
) -> None:
    """Dispatch the issue to every subscriber active when its first send began."""
    from highlightsmail.backends import get_backend
    from highlightsmail.backends.base import DeliveryError
    from highlightsmail.store import Store

    rendered = _render(ws, issue_path)
    slug = rendered.slug
    with _send_lock(ws, slug), Store.open(ws) as store:
        if not skip_test_check and not store.has_test_send(slug, rendered.fingerprint):
            hint = "this version was not test-sent" if store.has_test_send(slug) else "it has not been test-sent"
            raise HighlightsError(
                f"{slug}: {hint}. Send a test first: highlights send {slug} --test (or pass --skip-test-check)"
            )
        backend = get_backend(ws)
        signer = _signer(ws)

        try:
            suppressed = store.apply_suppressions(backend.suppressions())
        except DeliveryError as err:
            raise HighlightsError(
                f"could not read {backend.name}'s suppression lists, so nothing was sent: {err.message}"
            ) from None
        if suppressed:
            click.echo(f"{suppressed} subscriber(s) marked from {backend.name}'s suppression lists.", err=True)

        info = store.dispatch_info(slug)
        if info is not None and not dry_run:
            # What was under way when a run died is in doubt: the truth, whatever comes next.
            doubt = store.mark_in_doubt(slug)
            if doubt:
                click.echo(
                    f"{doubt} recipient(s) were in a batch under way when an earlier run stopped: now in doubt.",
                    err=True,
                )
        if info is None:
            pending = store.count_by_status()["active"]
        else:
            # Those left to send: pending, failed ones (retried), in doubt only when asked.
            # Nothing is put back to pending before the editor has said yes.
            counts = store.delivery_counts(slug)
            again = ("pending", "failed", "in_flight", "in_doubt") if resend_in_doubt else ("pending", "failed")
            pending = sum(counts.get(state, 0) for state in again)
        count = min(pending, limit) if limit is not None else pending
        if dry_run:
            click.echo(f"Dry run: would send {slug} to {count} recipient(s) through {backend.name}; nothing sent.")
            _dry_build(ws, rendered, signer, store, slug, info is not None, limit)
            return
        if info is None and pending == 0:
            raise HighlightsError(
                "there are no active subscribers; import some with `highlights subscribers import FILE`"
            )
        if pending == 0:
            summary = Summary.from_counts(store.delivery_counts(slug))
            click.echo(f"{slug}: nothing left to send ({summary.line()}).")
            _finish(slug, summary)
            return
        if not yes:
            verb = "Send" if info is None else "Resume sending"
            click.confirm(f"{verb} {slug} to {count} recipient(s) through {backend.name}?", abort=True, err=True)
        if info is None:
            store.begin_dispatch(slug, backend.name)
        else:
            if resend_in_doubt:
                store.requeue(slug, "in_doubt")
            retried = store.requeue(slug, "failed")
            if retried:
                click.echo(f"Retrying {retried} recipient(s) whose delivery failed before.", err=True)

        progress_cm = _progress(count)
        with progress_cm as bar:
            run_dispatch(store, backend, rendered, ws, signer, limit=limit, progress=bar.update)
        summary = Summary.from_counts(store.delivery_counts(slug))
        click.echo(f"{slug}: {summary.line()}.")
        _finish(slug, summary)


def _finish(slug: str, summary: Summary) -> None:
    if summary.failed or summary.in_doubt:
        raise HighlightsError(
            f"{summary.failed} failed and {summary.in_doubt} in doubt: see `highlights status {slug}`; "
            f"`highlights send {slug}` retries the failed ones"
            + (", add --resend-in-doubt for those in doubt" if summary.in_doubt else "")
        )
    if summary.pending:
        click.echo(f"{summary.pending} still to send: highlights send {slug}")


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


def _progress(length: int):
    """A progress bar on a terminal only: logs and pipes get the summary alone."""
    if sys.stderr.isatty():
        return click.progressbar(length=length, label="Sending", file=sys.stderr, show_pos=True, show_eta=True)
    return _NoBar()


def _envelopes(rows, ws: Workspace, signer: Signer):
    from highlightsmail.backends.base import Envelope
    from highlightsmail.message import Recipient, recipient_links

    return [
        Envelope(
            key=row.subscriber_id,
            recipient=Recipient(email=row.email, name=row.name, subscriber_id=row.subscriber_id),
            links=recipient_links(ws.settings, signer, row.subscriber_id),
        )
        for row in rows
    ]


def _dry_build(
    ws: Workspace, rendered: RenderedIssue, signer: Signer, store: Store, slug: str, started: bool, limit: int | None
) -> None:
    """Build the first recipient's message, so a dry run catches what building would."""
    from highlightsmail.message import build_message

    rows = store.peek_recipients(slug, started, 1)
    for env in _envelopes(rows, ws, signer):
        build_message(rendered, ws.settings, env.recipient, env.links)


def run_dispatch(
    store: Store,
    backend: Backend,
    rendered: RenderedIssue,
    ws: Workspace,
    signer: Signer,
    *,
    limit: int | None = None,
    progress: Callable[[int], None] = lambda n: None,
) -> None:
    """The send loop. Only this thread touches the database; `backend.concurrency`
    worker threads, each with its own backend instance, make the requests."""
    from highlightsmail.backends.base import Batch, DeliveryError

    slug = rendered.slug
    workers = max(1, backend.concurrency)
    local = threading.local()
    opened: list[Backend] = []
    opened_lock = threading.Lock()

    # Open once here, before anything is claimed: a setup error (a missing key or
    # password, a refused login) stops the send instead of failing batch after batch.
    try:
        backend.open()
    except DeliveryError as err:
        raise HighlightsError(f"{backend.name}: {err.message}; nothing was sent") from None
    opened.append(backend)

    def deliver(batch: Batch) -> BatchResult:
        b = getattr(local, "backend", None)
        if b is None:
            if workers == 1:
                b = backend
            else:
                b = backend.clone()
                b.open()
                with opened_lock:
                    opened.append(b)
            local.backend = b
        return b.send_batch(batch)

    remaining = limit
    after_id = 0
    exhausted = False
    stopping = False
    futures: dict[Future, Batch] = {}
    batch_no = store.next_batch_number(slug)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="send")
    try:
        while True:
            try:
                # Keep every worker busy, but claim a batch only just before it can go,
                # so the "left since the dispatch began" check is as late as possible.
                while not (exhausted or stopping) and len(futures) < workers:
                    size = backend.batch_size if remaining is None else min(backend.batch_size, remaining)
                    if size <= 0:
                        exhausted = True
                        break
                    claimed, skipped, after_id = store.claim_batch(slug, batch_no, size, after_id)
                    progress(skipped)  # they were counted in the bar's length too
                    if not claimed:
                        exhausted = True
                        break
                    batch = Batch(
                        number=batch_no,
                        slug=slug,
                        rendered=rendered,
                        settings=ws.settings,
                        envelopes=_envelopes(claimed, ws, signer),
                    )
                    futures[pool.submit(deliver, batch)] = batch
                    batch_no += 1
                    if remaining is not None:
                        remaining -= len(claimed)
                if not futures:
                    break
                done, _ = wait(list(futures), return_when=FIRST_COMPLETED)
                for fut in done:
                    batch = futures.pop(fut)
                    keys = [e.key for e in batch.envelopes]
                    _record(store, slug, keys, fut.result)
                    progress(len(keys))
            except KeyboardInterrupt:
                if stopping:
                    raise  # a second Ctrl-C: leave now; what is under way becomes "in doubt"
                stopping = True
                click.echo("\nStopping after the batches under way (Ctrl-C again to stop at once)...", err=True)
    finally:
        pool.shutdown(wait=not stopping or not futures, cancel_futures=True)
        for b in opened:
            try:
                b.close()
            except Exception:  # closing a dead connection is not worth failing for
                pass
    store.finish_dispatch_if_done(slug)
    if stopping:
        raise HighlightsError(f"stopped; resume with: highlights send {slug}")


def _record(store: Store, slug: str, keys: list[int], outcome: Callable[[], BatchResult]) -> dict[int, str]:
    """Record in the ledger what the backend did with a claimed batch (`outcome` gives
    its result or raises); returns the state each recipient ended in."""
    from highlightsmail.backends.base import DeliveryError, TransientError

    try:
        result = outcome()
    except DeliveryError as err:
        if isinstance(err, TransientError) and err.maybe_delivered:
            # No answer to a request that was sent: maybe it went out.
            store.finish_batch(slug, sent=[], failed={}, in_doubt={k: err.message for k in keys})
            return dict.fromkeys(keys, "in_doubt")
        store.finish_batch(slug, sent=[], failed={k: err.message for k in keys})
        return dict.fromkeys(keys, "failed")
    except Exception as err:  # a bug in a backend must not lose the ledger
        store.finish_batch(slug, sent=[], failed={k: f"{type(err).__name__}: {err}" for k in keys})
        return dict.fromkeys(keys, "failed")
    store.finish_batch(
        slug, sent=result.sent, failed=result.failed, in_doubt=result.in_doubt, message_id=result.message_id
    )
    states = dict.fromkeys(result.sent, "sent")
    states.update(dict.fromkeys(result.failed, "failed"))
    states.update(dict.fromkeys(result.in_doubt, "in_doubt"))
    return states


def send_claimed(
    store: Store, backend: Backend, rendered: RenderedIssue, ws: Workspace, signer: Signer, delivery: Delivery
) -> str | None:
    """Send an issue to one more recipient of its dispatch (someone who has just joined),
    claimed `in_flight` in a batch of their own by `store.claim_one`, and record what
    became of it as the send loop does: sent, failed (the next `send` retries it) or in
    doubt. The ledger row is what keeps a later resume from sending a second copy.
    `backend` is open. Returns the state they ended in."""
    from highlightsmail.backends.base import Batch

    batch = Batch(
        number=delivery.batch or 0,
        slug=rendered.slug,
        rendered=rendered,
        settings=ws.settings,
        envelopes=_envelopes([delivery], ws, signer),
    )
    states = _record(store, rendered.slug, [delivery.subscriber_id], lambda: backend.send_batch(batch))
    return states.get(delivery.subscriber_id)


# ---------------------------------------------------------------------------- status


def status_command(ws: Workspace, issue_path: Path) -> None:
    """Print how the dispatch of an issue stands, listing recipients in doubt or failed."""
    from highlightsmail.store import Store

    slug = issue_path.stem
    with Store.open(ws) as store:
        tests = store.test_sends(slug)
        info = store.dispatch_info(slug)
        if tests:
            last = tests[-1]
            click.echo(f"{slug}: last test send {last.at} to {', '.join(last.recipients)}")
        else:
            click.echo(f"{slug}: no test send yet")
        if info is None:
            click.echo(f"{slug}: not sent yet ({store.count_by_status()['active']} active subscribers)")
            return
        running = _send_running(ws, slug)
        counts = store.delivery_counts(slug)
        summary = Summary.from_counts(counts)
        state = "finished" if info.finished else ("sending now" if running else "stopped")
        click.echo(f"{slug}: dispatch through {info.backend} started {info.started}, {state}")
        click.echo(
            f"  recipients {summary.total}: {summary.line()}, pending {summary.pending}"
            + (f", in flight {summary.in_flight}" if summary.in_flight else "")
        )
        # Rows left in_flight by a run that died are in doubt already: say so before a resume.
        doubt_states = ("in_doubt",) if running else ("in_doubt", "in_flight")
        if not running:
            summary.in_doubt += summary.in_flight
        for title, states in (("in doubt", doubt_states), ("failed", ("failed",))):
            rows = list(store.iter_deliveries(slug, states))
            if rows:
                click.echo(f"  {title}:")
                for row in rows:
                    why = f" ({row.last_error})" if row.last_error else ""
                    click.echo(f"    batch {row.batch}: {row.email}{why}")
        if summary.in_doubt or summary.in_flight:
            click.echo(f"  send those in doubt again with: highlights send {slug} --resend-in-doubt")
