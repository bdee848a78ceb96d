"""Sending an issue: the test send, the dispatch loop with its ledger, and status.

Several senders: on SQLite one `send` of an issue runs at a time (a lock file); on
PostgreSQL any number, on any machines, share the dispatch: each joins it as a sender
(a lock the database holds for as long as the sender's connection lives), claims take
rows no other sender is taking, and rows in flight count as in doubt only once the
sender that claimed them is gone.

The order for every batch is fixed, so that no state is lost at any point:
claim the next recipients and commit them `in_flight` (skipping anyone who left since
the dispatch began), hand the batch to the backend, commit `sent`, `failed` or
`in_doubt`. A run that dies between the two commits leaves `in_flight` rows; the next
run turns them into `in_doubt` and sends those again only when asked
(`--resend-in-doubt`), so nobody gets two copies by default.

Nothing here writes to the terminal: each command returns what happened as a
dataclass, and tells its caller about progress through `SendEvents`.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from highlightsmail.errors import HighlightsError, close_quietly, display_path, reason
from highlightsmail.store import DELIVERY_STATES, DeliveryState

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Workspace
    from highlightsmail.mail.backends.base import Backend, BatchResult, Envelope
    from highlightsmail.rendering.rendered import RenderedIssue
    from highlightsmail.store import Delivery, DispatchInfo, Store, TestSend
    from highlightsmail.tokens import Signer

#: What a recipient in flight when its run died is, as far as anyone knows.
STOPPED_REASON = "the run stopped while this batch was under way"


@dataclass(frozen=True)
class Summary:
    """How a dispatch stands: how many recipients are in each ledger state."""

    counts: Mapping[DeliveryState, int]

    @classmethod
    def from_counts(cls, counts: Mapping[str, int]) -> Summary:
        return cls({cast(DeliveryState, state): counts.get(state, 0) for state in DELIVERY_STATES})

    def __getitem__(self, state: DeliveryState) -> int:
        return self.counts.get(state, 0)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def settled(self) -> Summary:
        """With the rows of a run that is no longer running counted as what they are:
        in doubt (nobody knows whether their batch went out)."""
        counts = dict(self.counts)
        counts["in_doubt"] = counts.get("in_doubt", 0) + counts.pop("in_flight", 0)
        counts["in_flight"] = 0
        return Summary(counts)


@dataclass(frozen=True)
class Reason:
    """Recipients that ended in one state (failed, in doubt) for one reason."""

    state: DeliveryState
    reason: str
    count: int


@dataclass(frozen=True)
class TestSendResult:
    slug: str
    recipients: list[str]
    backend: str
    fingerprint: str
    dry_run: bool = False


@dataclass(frozen=True)
class SendPlan:
    """What `send` is about to do, for the confirmation and the dry run."""

    slug: str
    backend: str
    count: int  # recipients this run would take
    resume: bool  # the dispatch had begun before


@dataclass
class SendOutcome:
    plan: SendPlan
    dry_run: bool = False
    suppressed: int = 0  # marked from the provider's lists (would be, on a dry run)
    summary: Summary | None = None  # the ledger after the run (None on a dry run)
    reasons: list[Reason] = field(default_factory=list)  # this run's failures and doubts
    nothing_left: bool = False
    stopped: bool = False  # Ctrl-C: what was under way finished, the rest is pending


class SendEvents(Protocol):
    """What a send tells whoever runs it while it runs (the command line prints, asks
    and draws a progress bar); `Quiet` says nothing and answers yes."""

    def suppressions_applied(self, count: int, backend: str) -> None:
        """`count` subscribers were marked from the backend's suppression lists."""

    def found_in_doubt(self, count: int) -> None:
        """`count` recipients left in flight by a run that stopped are now in doubt."""

    def retrying_failed(self, count: int) -> None:
        """`count` recipients whose delivery failed before go back in the queue."""

    def confirm(self, plan: SendPlan) -> bool:
        """Whether to go ahead."""
        ...

    def progress(self, total: int) -> AbstractContextManager[Callable[[int], None]]:
        """A context giving a function that is called with each number of recipients done."""
        ...

    def stopping(self) -> None:
        """The first Ctrl-C: the batches under way finish, nothing more starts."""


class Quiet:
    """SendEvents that says nothing and answers yes (scripts, tests)."""

    def suppressions_applied(self, count: int, backend: str) -> None:
        return None

    def found_in_doubt(self, count: int) -> None:
        return None

    def retrying_failed(self, count: int) -> None:
        return None

    def confirm(self, plan: SendPlan) -> bool:
        return True

    def progress(self, total: int) -> AbstractContextManager[Callable[[int], None]]:
        return nullcontext(_ignore)

    def stopping(self) -> None:
        return None


def _ignore(n: int) -> None:
    return None


@contextmanager
def _send_lock(ws: Workspace, slug: str) -> Iterator[None]:
    """One `send` of an issue at a time: a second one would take the first one's
    in-flight batches for abandoned. flock is released by the OS even on kill -9."""
    import fcntl

    # Named after the database, so the workspace's .gitignore (`subscribers/*.db*`) covers it.
    path = ws.db_path.with_name(f"{ws.db_path.name}.send-{slug}.lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "w")  # noqa: SIM115 - closed by the with below
    except OSError as exc:
        raise HighlightsError(
            f"{display_path(path)}: cannot create the send lock: {exc.strerror or exc}; "
            f"let the user running highlights write to the folder {display_path(path.parent)}"
        ) from None
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HighlightsError(f"{slug}: another `highlights send {slug}` is running") from None
        yield


def _send_running(ws: Workspace, store: Store, slug: str) -> bool:
    """Whether a `send` of this issue is running right now (on PostgreSQL: anywhere)."""
    if store.shares_dispatch:
        return store.sending_now(slug)
    try:
        with _send_lock(ws, slug):
            return False
    except HighlightsError:
        return True


@contextmanager
def _as_sender(ws: Workspace, store: Store, slug: str, *, dry_run: bool) -> Iterator[None]:
    """Run as a sender of the issue: alone on SQLite (the lock file), or beside any other
    senders on PostgreSQL (a dry run sends nothing, so it does not join)."""
    if not store.shares_dispatch:
        with _send_lock(ws, slug):
            yield
        return
    if not dry_run:
        store.join_dispatch(slug)
    yield


def _render(ws: Workspace, issue_path: Path) -> RenderedIssue:
    from highlightsmail.authoring.issue import load_issue
    from highlightsmail.rendering.render import render_issue

    return render_issue(load_issue(issue_path), ws)


def _signer(ws: Workspace, *, dry_run: bool = False) -> Signer:
    from highlightsmail.tokens import Signer, load_signer

    if dry_run and not os.environ.get("HIGHLIGHTS_SECRET", "").strip() and not os.path.lexists(ws.secret_path):
        # Loading would create the secret file, and a dry run changes nothing: a
        # throwaway secret builds the sample message just as well.
        import secrets

        return Signer(secrets.token_bytes(32))
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


def send_test(ws: Workspace, issue_path: Path, to: list[str], *, dry_run: bool = False) -> TestSendResult:
    """Send the issue to the editors (or `to`) with [TEST] in the subject, and record
    the fingerprint of what was sent so that `send` knows it was seen."""
    from email.utils import parseaddr

    from highlightsmail.mail.backends import get_backend
    from highlightsmail.mail.backends.base import Batch, DeliveryError, Envelope
    from highlightsmail.mail.message import Recipient, fingerprint, recipient_links
    from highlightsmail.store import Store

    rendered = _render(ws, issue_path)
    digest = fingerprint(rendered, ws.settings)  # also refuses any header text that could break out
    from highlightsmail.addresses import address_key

    addresses = _validate_addresses(to) if to else list(ws.settings.editors)
    # One copy per person: two spellings of an address (case, Unicode form) are one.
    firsts: dict[str, str] = {}
    for addr in addresses:
        firsts.setdefault(address_key(parseaddr(addr)[1]), addr)
    signer = _signer(ws, dry_run=dry_run)
    envelopes = []
    for index, addr in enumerate(firsts.values(), start=1):
        name, email = parseaddr(addr)
        # Test tokens open a page that says "this was a test" and change nothing.
        links = recipient_links(ws.settings, signer, index, test=True)
        envelopes.append(Envelope(key=index, recipient=Recipient(email=email, name=name), links=links))
    sent_to = [e.recipient.email for e in envelopes]
    batch = Batch.of(rendered, ws.settings, envelopes, test=True)
    backend = get_backend(ws, test=True)
    if dry_run:
        return TestSendResult(rendered.slug, sent_to, backend.name, digest, dry_run=True)
    # Recording the test must be possible before it goes out: one sent and then not
    # recorded (no data in the database, a server down) would have to be sent again.
    Store.open(ws).close()
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
        store.record_test_send(rendered.slug, digest, sent_to)
    return TestSendResult(rendered.slug, sent_to, backend.name, digest)


# ---------------------------------------------------------------------------- dispatch


def send(
    ws: Workspace,
    issue_path: Path,
    *,
    events: SendEvents | None = None,
    dry_run: bool = False,
    limit: int | None = None,
    resend_in_doubt: bool = False,
    skip_test_check: bool = False,
) -> SendOutcome:
    """Dispatch the issue to every subscriber active when its first send began."""
    from highlightsmail.mail.backends import get_backend
    from highlightsmail.mail.backends.base import DeliveryError
    from highlightsmail.mail.message import fingerprint
    from highlightsmail.store import Store

    events = events or Quiet()
    rendered = _render(ws, issue_path)
    slug = rendered.slug
    digest = fingerprint(rendered, ws.settings)  # also refuses any header text that could break out
    if dry_run and not ws.database_exists():
        # Opening would create the database, and a dry run changes nothing.
        raise HighlightsError("there are no active subscribers; import some with `highlights subscribers import FILE`")
    with Store.open(ws) as store, _as_sender(ws, store, slug, dry_run=dry_run):
        if not skip_test_check and not store.has_test_send(slug, digest):
            hint = "this version was not test-sent" if store.has_test_send(slug) else "it has not been test-sent"
            raise HighlightsError(
                f"{slug}: {hint}. Send a test first: highlights send {slug} --test (or pass --skip-test-check)"
            )
        backend = get_backend(ws)
        signer = _signer(ws, dry_run=dry_run)

        try:
            if dry_run:
                suppressed = _would_suppress(store, backend)
            else:
                suppressed = store.apply_suppressions(backend.suppressions())
        except DeliveryError as err:
            raise HighlightsError(
                f"could not read {backend.name}'s suppression lists, so nothing was sent: {err.message}"
            ) from None
        if suppressed and not dry_run:
            events.suppressions_applied(suppressed, backend.name)

        info = store.dispatch_info(slug)
        if info is not None and not dry_run:
            # What was under way when a run died is in doubt: the truth, whatever comes next.
            doubt = store.mark_in_doubt(slug)
            if doubt:
                events.found_in_doubt(doubt)
        if info is None:
            # On a dry run nobody was marked: leave out those who would have been.
            pending = store.count_by_status()["active"] - (suppressed if dry_run else 0)
        else:
            # Those left to send: pending, failed ones (retried), in doubt only when asked.
            # Nothing is put back to pending before the editor has said yes.
            counts = store.delivery_counts(slug)
            again: tuple[DeliveryState, ...] = ("pending", "failed")
            if resend_in_doubt:
                again += ("in_flight", "in_doubt")
            pending = sum(counts.get(state, 0) for state in again)
        count = min(pending, limit) if limit is not None else pending
        plan = SendPlan(slug=slug, backend=backend.name, count=count, resume=info is not None)
        if dry_run:
            _dry_build(ws, rendered, signer, store, slug, info is not None)
            return SendOutcome(plan, dry_run=True, suppressed=suppressed)
        if info is None and pending == 0:
            raise HighlightsError(
                "there are no active subscribers; import some with `highlights subscribers import FILE`"
            )
        if pending == 0:
            summary = Summary.from_counts(store.delivery_counts(slug))
            return SendOutcome(plan, suppressed=suppressed, summary=summary, nothing_left=True)
        if not events.confirm(plan):
            raise HighlightsError("nothing was sent")
        if info is None:
            try:
                store.begin_dispatch(slug, backend.name)
            except HighlightsError:
                if store.dispatch_info(slug) is None:
                    raise
                # Another sender began it a moment ago: this one shares it.
        else:
            if resend_in_doubt:
                store.requeue(slug, "in_doubt")
            retried = store.requeue(slug, "failed")
            if retried:
                events.retrying_failed(retried)

        with events.progress(count) as advance:
            run = run_dispatch(store, backend, rendered, ws, signer, limit=limit, progress=advance, events=events)
        if store.shares_dispatch:
            # A sender that died while this one ran left its batch in flight: in doubt now.
            store.mark_in_doubt(slug)
        summary = Summary.from_counts(store.delivery_counts(slug))
        reasons = [Reason(state, why, n) for (state, why), n in run.reasons.most_common()]
        return SendOutcome(plan, suppressed=suppressed, summary=summary, reasons=reasons, stopped=run.stopped)


def _would_suppress(store: Store, backend: Backend) -> int:
    """How many active subscribers the provider's lists would mark, marking nobody."""
    active = set()
    for item in backend.suppressions():
        sub = store.find(item.email)
        if sub is not None and sub.status == "active":
            active.add(sub.id)
    return len(active)


def _envelopes(rows: list[Delivery], ws: Workspace, signer: Signer, slug: str, tag: str | None) -> list[Envelope]:
    """The batch's envelopes: each recipient's links, and their message token, derived
    from the dispatch's tag (nothing per recipient is stored to know it again)."""
    from highlightsmail.mail.backends.base import Envelope
    from highlightsmail.mail.message import Recipient, links_maker

    links = links_maker(ws.settings, signer)
    return [
        Envelope(
            row.subscriber_id,
            Recipient(row.email, row.name, row.subscriber_id),
            links(row.subscriber_id),
            signer.make_message(slug, tag, row.subscriber_id) if tag else None,
        )
        for row in rows
    ]


def _tag(store: Store, slug: str) -> str | None:
    info = store.dispatch_info(slug)
    return info.tag if info else None


def _dry_build(ws: Workspace, rendered: RenderedIssue, signer: Signer, store: Store, slug: str, started: bool) -> None:
    """Build the first recipient's message, so a dry run catches what building would."""
    from highlightsmail.mail.message import build_message

    rows = store.peek_recipients(slug, started, 1)
    for env in _envelopes(rows, ws, signer, slug, _tag(store, slug)):
        build_message(rendered, ws.settings, env.recipient, env.links)


def _outcome(keys: list[int], result: Callable[[], BatchResult]) -> BatchResult:
    """What the backend did with a batch (`result` gives it or raises), as a result for
    every recipient: a request sent whole with no answer is in doubt, a refusal failed."""
    from highlightsmail.mail.backends.base import BatchResult, DeliveryError, InDoubtError

    try:
        return result()
    except InDoubtError as err:
        return BatchResult(in_doubt=dict.fromkeys(keys, err.message))
    except DeliveryError as err:
        return BatchResult(failed=dict.fromkeys(keys, err.message))
    except Exception as err:  # a bug in a backend must not lose the ledger
        return BatchResult(failed=dict.fromkeys(keys, reason(err)))


def send_claimed(
    store: Store, backend: Backend, rendered: RenderedIssue, ws: Workspace, signer: Signer, delivery: Delivery
) -> DeliveryState:
    """Send an issue to one more recipient of its dispatch (someone who has just joined),
    claimed `in_flight` in a batch of their own by `store.claim_one`, and record what
    became of it as the send loop does: sent, failed (the next `send` retries it) or in
    doubt. The ledger row is what keeps a later resume from sending a second copy.
    `backend` is open. Returns the state they ended in."""
    from highlightsmail.mail.backends.base import Batch

    envelopes = _envelopes([delivery], ws, signer, rendered.slug, _tag(store, rendered.slug))
    batch = Batch.of(rendered, ws.settings, envelopes, number=delivery.batch or 0)
    result = _outcome([delivery.subscriber_id], lambda: backend.send_batch(batch))
    store.finish_batch(
        rendered.slug,
        sent=result.sent,
        failed=result.failed,
        in_doubt=result.in_doubt,
        message_id=result.message_id,
    )
    return "sent" if result.sent else ("in_doubt" if result.in_doubt else "failed")


@dataclass
class RunResult:
    """What one run of the send loop did beyond the ledger: its failures and doubts by
    reason, and whether Ctrl-C stopped it."""

    reasons: Counter[tuple[DeliveryState, str]] = field(default_factory=Counter)
    stopped: bool = False


def run_dispatch(
    store: Store,
    backend: Backend,
    rendered: RenderedIssue,
    ws: Workspace,
    signer: Signer,
    *,
    limit: int | None = None,
    progress: Callable[[int], None] = _ignore,
    events: SendEvents | None = None,
) -> RunResult:
    """The send loop. Only this thread touches the database; `backend.concurrency`
    worker threads, each with its own backend instance, make the requests."""
    from highlightsmail.mail.backends.base import Batch, DeliveryError
    from highlightsmail.mail.message import check_headers
    from highlightsmail.mail.pool import BackendPool

    events = events or Quiet()
    slug = rendered.slug
    # Text that could break out of a header stops the send here, before anything is
    # claimed, rather than failing every batch.
    check_headers(rendered, ws.settings)
    workers = max(1, backend.concurrency)
    run = RunResult()

    # Open once here, before anything is claimed: a setup error (a missing key or
    # password, a refused login) stops the send instead of failing batch after batch.
    try:
        backend.open()
    except DeliveryError as err:
        raise HighlightsError(f"{backend.name}: {err.message}; nothing was sent") from None
    # One worker sends through the backend opened above; more make one each.
    backends = BackendPool(backend.clone, first=backend if workers == 1 else None)
    tag = _tag(store, slug)  # read once: every sender of the dispatch derives the same Message-IDs

    def deliver(number: int, claimed: list[Delivery]) -> BatchResult:
        # Built here, in the worker, so the loop that claims and records (the one
        # thread that touches the database) does nothing per recipient.
        batch = Batch.of(rendered, ws.settings, _envelopes(claimed, ws, signer, slug, tag), number=number)
        return backends.get().send_batch(batch)

    remaining = limit
    after_id = 0
    exhausted = False
    futures: dict[Future[BatchResult], tuple[int, list[Delivery]]] = {}
    done: set[Future[BatchResult]] = set()
    batch_no = store.next_batch_number(slug)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="send")
    # SQLite lets go of Python's lock while it works, but this loop then waits for a
    # worker to hand it back, by default up to 5 ms each time (the switch interval):
    # at a few statements per batch, the ledger and the requests took turns instead of
    # running side by side. A shorter interval lets them overlap.
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(min(switch_interval, 0.0002))
    try:
        while True:
            try:
                # One transaction records the batches that came back and claims the next
                # ones: one commit instead of one per batch and per claim. Nothing is
                # handed to a worker before that commit, and a batch leaves `futures`
                # only once its outcome is committed (a Ctrl-C in between rolls back, and
                # the next turn records it again).
                results = {
                    fut: _outcome([row.subscriber_id for row in futures[fut][1]], fut.result)
                    for fut in done
                    if fut in futures
                }
                claims: list[tuple[int, list[Delivery]]] = []
                skipped = 0
                with store.transaction():
                    for fut, result in results.items():
                        number = futures[fut][0]
                        store.finish_batch(
                            slug,
                            sent=result.sent,
                            failed=result.failed,
                            in_doubt=result.in_doubt,
                            message_id=result.message_id,
                            batch=number,
                        )
                    # Keep every worker busy, but claim a batch only when a worker is free
                    # to take it, so the "left since the dispatch began" check is as late
                    # as possible.
                    while not (exhausted or run.stopped) and len(futures) - len(done) + len(claims) < workers:
                        size = backend.batch_size if remaining is None else min(backend.batch_size, remaining)
                        if size <= 0:
                            exhausted = True
                            break
                        claimed, gone, after_id = store.claim_batch(slug, batch_no, size, after_id)
                        skipped += gone
                        if not claimed:
                            exhausted = True
                            break
                        # The store's number: on PostgreSQL senders share the numbering.
                        claims.append((claimed[0].batch or batch_no, claimed))
                        batch_no += 1
                        if remaining is not None:
                            remaining -= len(claimed)
                # Committed: count what came back, then hand out the new batches.
                progress(skipped)  # they were counted in the bar's length too
                for fut, result in results.items():
                    futures.pop(fut, None)
                    run.reasons.update(("failed", why) for why in result.failed.values())
                    run.reasons.update(("in_doubt", why) for why in result.in_doubt.values())
                    progress(len(result.sent) + len(result.failed) + len(result.in_doubt))
                done = set()
                for number, claimed in claims:
                    futures[pool.submit(deliver, number, claimed)] = (number, claimed)
                if not futures:
                    break
                done, _ = wait(list(futures), return_when=FIRST_COMPLETED)
            except KeyboardInterrupt:
                if run.stopped:
                    raise  # a second Ctrl-C: leave now; what is under way becomes "in doubt"
                run.stopped = True
                events.stopping()
    finally:
        sys.setswitchinterval(switch_interval)
        pool.shutdown(wait=not run.stopped or not futures, cancel_futures=True)
        backends.close()
        if workers > 1:
            close_quietly(backend)
    store.finish_dispatch_if_done(slug)
    return run


# ---------------------------------------------------------------------------- status


@dataclass(frozen=True)
class Group:
    """Recipients of one batch that ended in one state for one reason."""

    state: DeliveryState
    batch: int | None
    reason: str
    count: int
    emails: list[str]  # only when asked for (verbose)


@dataclass(frozen=True)
class StatusReport:
    slug: str
    last_test: TestSend | None
    info: DispatchInfo | None
    active: int  # active subscribers (what a first send would take)
    running: bool = False
    summary: Summary | None = None  # in-flight rows of a run that stopped counted as in doubt
    groups: list[Group] = field(default_factory=list)  # in doubt first, then failed
    has_events: bool = False  # delivery events were recorded (`highlights report` has more)


def status(ws: Workspace, slug: str, *, verbose: bool = False) -> StatusReport:
    """How the dispatch of an issue stands, with its failed and in-doubt recipients
    grouped by batch and reason (their addresses too when `verbose`)."""
    from highlightsmail.store import Store

    with Store.open(ws) as store:
        tests = store.test_sends(slug)
        last = tests[-1] if tests else None
        info = store.dispatch_info(slug)
        if info is None:
            return StatusReport(slug, last, None, active=store.count_by_status()["active"])
        running = _send_running(ws, store, slug)
        summary = Summary.from_counts(store.delivery_counts(slug))
        # Rows left in flight by a run that is gone are in doubt already: counted and
        # listed as such, before any resume says so in the ledger.
        doubt_states: tuple[DeliveryState, ...] = ("in_doubt",) if running else ("in_doubt", "in_flight")
        if not running:
            summary = summary.settled()
        groups = [
            *_groups(store, slug, "in_doubt", doubt_states, verbose),
            *_groups(store, slug, "failed", ("failed",), verbose),
        ]
        return StatusReport(
            slug,
            last,
            info,
            active=0,
            running=running,
            summary=summary,
            groups=groups,
            has_events=store.has_delivery_events(slug),
        )


def _groups(
    store: Store, slug: str, shown_as: DeliveryState, states: tuple[DeliveryState, ...], verbose: bool
) -> list[Group]:
    counts: Counter[tuple[int | None, str]] = Counter()
    emails: dict[tuple[int | None, str], list[str]] = {}
    for row in store.iter_deliveries(slug, states):
        reason = row.last_error or (STOPPED_REASON if row.state == "in_flight" else "no reason recorded")
        key = (row.batch, reason)
        counts[key] += 1
        if verbose:
            emails.setdefault(key, []).append(row.email)
    return [
        Group(shown_as, batch, reason, n, emails.get((batch, reason), []))
        for (batch, reason), n in sorted(counts.items(), key=lambda kv: (kv[0][0] or 0, kv[0][1]))
    ]
