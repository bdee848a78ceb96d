"""The send loop over the ledger, as an object with small steps.

The order for every batch is fixed, so that no state is lost at any point: claim the
next recipients and commit them `in_flight` (skipping anyone who left since the
dispatch began), hand the batch to the backend, commit `sent`, `failed` or `in_doubt`.
A run that dies between the two commits leaves `in_flight` rows; the next run turns
them into `in_doubt` and sends those again only when asked (`--resend-in-doubt`), so
nobody gets two copies by default.

Only the loop's thread touches the database; `backend.concurrency` worker threads,
each with its backend from the pool, build the batches and make the requests (or as
many worker processes, for a backend whose requests cost Python's time: workers.py). Each
turn records what came back and claims what is next in one transaction (`turn`); a
claim and its record are one step each per batch (`claim`, `record`). A `Gate` (the
sending limits and a cancel: `limits.py`) says before each claim how many may go now;
when it says none, the loop claims no more and the batches under way finish.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from highlightsmail.errors import HighlightsError, reason
from highlightsmail.mail.backends.base import Backend, BatchResult, DeliveryError, InDoubtError
from highlightsmail.mail.batches import Batches
from highlightsmail.mail.message import check_headers
from highlightsmail.mail.pool import BackendPool
from highlightsmail.rendering.rendered import RenderedIssue
from highlightsmail.sending.events import Quiet, SendEvents, ignore
from highlightsmail.sending.limits import count_welcome
from highlightsmail.sending.workers import Workers, can_fork, held_ctrl_c
from highlightsmail.store import Delivery, DeliveryState, Store

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Settings
    from highlightsmail.tokens import Signer

__all__ = [
    "Claim",
    "Gate",
    "RunResult",
    "SendLoop",
    "issue_batches",
    "outcome",
    "record",
    "run_dispatch",
    "send_claimed",
]


@dataclass
class RunResult:
    """What one run of the send loop did beyond the ledger: its failures and doubts by
    reason, and whether Ctrl-C stopped it."""

    reasons: Counter[tuple[DeliveryState, str]] = field(default_factory=Counter)
    stopped: bool = False


class Gate(Protocol):
    """What may be claimed: asked in each claim's transaction."""

    def allowance(self, wanted: int) -> int:
        """How many of `wanted` recipients may be claimed now (0: claim no more)."""
        ...

    def spend(self, count: int) -> None:
        """`count` recipients were just claimed."""


@dataclass(frozen=True)
class Claim:
    """A batch claimed `in_flight`: its number (the store's: on PostgreSQL senders share
    the numbering) and its rows."""

    number: int
    rows: list[Delivery]

    def keys(self) -> list[int]:
        return [row.subscriber_id for row in self.rows]


def issue_batches(store: Store, rendered: RenderedIssue, settings: Settings, signer: Signer) -> Batches:
    """The batches of an issue's dispatch. Its tag is read once: every sender of the
    dispatch derives the same Message-IDs from it, and every message is dated when the
    message it sends was kept (store.keep_message, at the start of the run; so the
    message a subscriber got can be told again: mail/kept.py), else when it began."""
    info = store.dispatch_info(rendered.slug)
    if info is None:
        return Batches(rendered, settings, signer)
    kept = store.kept_message(rendered.slug, store.next_batch_number(rendered.slug))
    date = kept.kept_at if kept is not None else info.started_at
    return Batches(rendered, settings, signer, tag=info.tag, date=date)


def outcome(keys: Callable[[], list[int]], result: Callable[[], BatchResult]) -> BatchResult:
    """What the backend did with a batch (`result` gives it or raises), as a result for
    every recipient: a request sent whole with no answer is in doubt, a refusal failed.
    `keys` gives the batch's recipients; it is asked only when the batch fared as one
    (a list of a thousand made for each batch that went well was a cost for nothing)."""
    try:
        return result()
    except InDoubtError as err:
        return BatchResult(in_doubt=dict.fromkeys(keys(), err.message))
    except DeliveryError as err:
        return BatchResult(failed=dict.fromkeys(keys(), err.message))
    except Exception as err:  # a bug in a backend must not lose the ledger
        return BatchResult(failed=dict.fromkeys(keys(), reason(err)))


def record(store: Store, slug: str, result: BatchResult, *, batch: int | None = None) -> None:
    """Commit what became of claimed batch number `batch` (one update of its row when
    all its recipients fared alike)."""
    store.finish_batch(
        slug,
        sent=result.sent,
        failed=result.failed,
        in_doubt=result.in_doubt,
        message_id=result.message_id,
        batch=batch,
    )


def state_of(result: BatchResult) -> DeliveryState:
    """The state a batch of one ended in."""
    return "sent" if result.sent else ("in_doubt" if result.in_doubt else "failed")


def send_claimed(store: Store, backend: Backend, batches: Batches, delivery: Delivery) -> DeliveryState:
    """Send an issue to one more recipient of its dispatch (someone who has just joined),
    claimed `in_flight` in a batch of their own by `store.claim_one`, and record what
    became of it as the send loop does: sent, failed (the next `send` retries it) or in
    doubt. The ledger row is what keeps a later resume from sending a second copy.
    `backend` is open; `batches` carry the dispatch's tag. Returns the state they ended in."""
    batch = batches.to_subscribers([delivery], number=delivery.batch or 0, tokens=backend.message_tokens)
    count_welcome(store, batches.settings)  # claimed: counted like a claim of the loop (limits.py)
    # Dated now, not when the dispatch began: a welcome days later must not look old.
    batch = dataclasses.replace(batch, date=None)
    result = outcome(lambda: [delivery.subscriber_id], lambda: backend.send_batch(batch))
    record(store, batches.rendered.slug, result, batch=delivery.batch)
    return state_of(result)


class SendLoop:
    """One run of the send loop: `run()` turns until nothing is left to claim or under
    way. The backends come from `backends` (closed by whoever made it)."""

    def __init__(
        self,
        store: Store,
        backends: BackendPool,
        batches: Batches,
        *,
        batch_size: int,
        workers: int,
        limit: int | None = None,
        progress: Callable[[int], None] = ignore,
        events: SendEvents | None = None,
        gate: Gate | None = None,
        processes: Callable[[], Backend] | None = None,
    ) -> None:
        self.store = store
        # Set: the batches go to worker processes instead of the pool's threads, each
        # with a backend this makes (workers.py).
        self.processes = processes
        self.forked: Workers | None = None
        self.gate = gate
        self.backends = backends
        self.batches = batches
        self.slug = batches.rendered.slug
        self.batch_size = batch_size
        self.workers = workers
        self.remaining = limit
        self.progress = progress
        self.events = events or Quiet()
        self.result = RunResult()
        self.under_way: dict[Future[BatchResult], Claim] = {}  # leave once their outcome is committed
        self.done: set[Future[BatchResult]] = set()
        self.exhausted = False
        self.after_id = 0
        self.next_number = store.next_batch_number(self.slug)

    def run(self) -> RunResult:
        if self.processes is not None:
            # Worker processes instead of the pool's threads (workers.py): the pool then
            # starts none.
            self.forked = Workers(self.workers, self.processes, self.batches)
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="send")
        # SQLite lets go of Python's lock while it works, but this loop then waits for a
        # worker to hand it back, by default up to 5 ms each time (the switch interval):
        # at a few statements per batch, the ledger and the requests took turns instead
        # of running side by side. A shorter interval lets them overlap.
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(switch_interval, 0.0002))
        finished = False
        try:
            while self._turn_or_stop(pool):
                pass
            finished = True
        finally:
            sys.setswitchinterval(switch_interval)
            pool.shutdown(wait=not self.result.stopped or not self.under_way, cancel_futures=True)
            if self.forked is not None:
                # Left early (a second Ctrl-C, an error): what is under way is not
                # waited for, as its threads would not be; it stays in flight.
                self.forked.close(wait=10.0 if finished else 0.0)
        self.store.finish_dispatch_if_done(self.slug)
        return self.result

    def _turn_or_stop(self, pool: ThreadPoolExecutor) -> bool:
        """One turn; the first Ctrl-C lets what is under way finish and starts nothing."""
        try:
            return self.turn(pool)
        except KeyboardInterrupt:
            if self.result.stopped:
                raise  # a second Ctrl-C: leave now; what is under way becomes "in doubt"
            self.result.stopped = True
            self.events.stopping()
            return True

    def turn(self, pool: ThreadPoolExecutor) -> bool:
        """Record the batches that came back and claim the next ones in one transaction
        (one commit instead of one per batch and per claim), then hand those out and wait
        for one to come back. Nothing is handed to a worker before that commit, and a
        batch leaves `under_way` only once its outcome is committed (a Ctrl-C in between
        rolls back, and the next turn records it again). False when all is done."""
        # With worker processes, a Ctrl-C waits for the wait: landing between the commit
        # and the hand-out, it would leave a batch claimed that no worker has. (With
        # threads it cannot be held so: any thread may take it for the process.)
        with held_ctrl_c() if self.forked is not None else contextlib.nullcontext():
            if not self._record_and_hand_out(pool):
                return False
        self.done = self._wait()
        return True

    def _record_and_hand_out(self, pool: ThreadPoolExecutor) -> bool:
        """`turn` up to its wait: whether any batch is under way."""
        results = {fut: outcome(self.under_way[fut].keys, fut.result) for fut in self.done if fut in self.under_way}
        claims: list[Claim] = []
        skipped = 0
        with self.store.transaction():
            for fut, result in results.items():
                self.record(self.under_way[fut], result)
            # Keep every worker busy, but claim a batch only when a worker is free to take
            # it, so the "left since the dispatch began" check is as late as possible.
            while self._wants_more(len(claims)):
                claim, gone = self.claim()
                skipped += gone
                if claim is None:
                    break
                claims.append(claim)
        # Committed: count what came back, then hand out the new batches.
        self.progress(skipped)  # they were counted in the bar's length too
        for fut, result in results.items():
            del self.under_way[fut]
            self._count(result)
        self.done = set()
        for claim in claims:
            self.under_way[self.hand_out(pool, claim)] = claim
        return bool(self.under_way)

    def _wants_more(self, claimed: int) -> bool:
        busy = len(self.under_way) - len(self.done) + claimed
        return not (self.exhausted or self.result.stopped) and busy < self.workers

    # -- the steps, one batch each

    def claim(self) -> tuple[Claim | None, int]:
        """Claim the next batch `in_flight` (in the open transaction): the claim, or None
        when nothing is left, and how many were skipped for having left."""
        size = self.batch_size if self.remaining is None else min(self.batch_size, self.remaining)
        if size > 0 and self.gate is not None:
            size = self.gate.allowance(size)
        if size <= 0:
            self.exhausted = True
            return None, 0
        rows, gone, self.after_id = self.store.claim_batch(self.slug, self.next_number, size, self.after_id)
        if not rows:
            self.exhausted = True
            return None, gone
        if self.gate is not None:
            self.gate.spend(len(rows))
        claim = Claim(rows[0].batch or self.next_number, rows)
        self.next_number += 1
        if self.remaining is not None:
            self.remaining -= len(rows)
        return claim, gone

    def hand_out(self, pool: ThreadPoolExecutor, claim: Claim) -> Future[BatchResult]:
        """Give a claimed batch to a worker."""
        if self.forked is not None:
            return self.forked.submit(claim.number, claim.rows)
        return pool.submit(self._deliver, claim)

    def _wait(self) -> set[Future[BatchResult]]:
        """Wait for at least one batch under way to come back."""
        if self.forked is not None:
            return self.forked.wait(self.under_way)
        done, _ = wait(list(self.under_way), return_when=FIRST_COMPLETED)
        return done

    def _deliver(self, claim: Claim) -> BatchResult:
        # Built here, in the worker, so the loop that claims and records (the one
        # thread that touches the database) does nothing per recipient.
        backend = self.backends.get()
        batch = self.batches.to_subscribers(claim.rows, number=claim.number, tokens=backend.message_tokens)
        return backend.send_batch(batch)

    def record(self, claim: Claim, result: BatchResult) -> None:
        """Commit what became of a batch (in the open transaction)."""
        record(self.store, self.slug, result, batch=claim.number)

    def _count(self, result: BatchResult) -> None:
        self.result.reasons.update(("failed", why) for why in result.failed.values())
        self.result.reasons.update(("in_doubt", why) for why in result.in_doubt.values())
        self.progress(len(result.sent) + len(result.failed) + len(result.in_doubt))


def run_dispatch(
    store: Store,
    backend: Backend,
    batches: Batches,
    *,
    limit: int | None = None,
    progress: Callable[[int], None] = ignore,
    events: SendEvents | None = None,
    gate: Gate | None = None,
) -> RunResult:
    """Run the send loop of a dispatch through `backend` (not yet open; this closes it)."""
    rendered: RenderedIssue = batches.rendered
    # Text that could break out of a header stops the send here, before anything is
    # claimed, rather than failing every batch.
    check_headers(rendered, batches.settings)
    workers = max(1, backend.concurrency)
    # Open once here, before anything is claimed: a setup error (a missing key or
    # password, a refused login) stops the send instead of failing batch after batch.
    try:
        backend.open()
    except DeliveryError as err:
        raise HighlightsError(f"{backend.name}: {err.message}; nothing was sent") from None
    # One worker sends through the backend opened above; more make one each.
    backends = BackendPool(backend.clone, first=backend, share_first=workers == 1)
    try:
        loop = SendLoop(
            store,
            backends,
            batches,
            batch_size=backend.batch_size,
            workers=workers,
            limit=limit,
            progress=progress,
            events=events,
            gate=gate,
            processes=backend.clone if can_fork(backend, workers) else None,
        )
        return loop.run()
    finally:
        backends.close()
