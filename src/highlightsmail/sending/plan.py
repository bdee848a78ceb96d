"""Planning a send, apart from running it: which checks passed, what the provider's
lists take out, what a run that died left in doubt, and how many recipients this run
would take. The plan is what the editor confirms and what a dry run shows.

Planning writes only what is true whatever the editor answers: subscribers the
provider suppresses are marked, and rows in flight when a run died are in doubt.
A dry run writes nothing: it counts who would be marked instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from highlightsmail.errors import HighlightsError, display_path
from highlightsmail.mail.backends.base import Backend, DeliveryError
from highlightsmail.store import DeliveryState

if TYPE_CHECKING:
    from highlightsmail.authoring.issue import Issue
    from highlightsmail.authoring.workspace import Settings, Workspace
    from highlightsmail.store import Store

__all__ = ["NO_SUBSCRIBERS", "SendPlan", "audience_line", "audience_of", "audience_words", "check_tested", "make_plan"]

NO_SUBSCRIBERS = "there are no active subscribers; import some with `highlights subscribers import FILE`"


@dataclass(frozen=True)
class SendPlan:
    """What `send` is about to do, for the confirmation and the dry run."""

    slug: str
    backend: str
    count: int  # recipients this run would take
    resume: bool  # the dispatch had begun before
    pending: int = 0  # recipients left to send, before any --limit
    suppressed: int = 0  # marked from the provider's lists (would be, on a dry run)
    found_in_doubt: int = 0  # left in flight by a run that stopped, in doubt now
    tested: bool = True  # this version was test-sent (False: the check was skipped)
    resend_in_doubt: bool = False  # in-doubt recipients go again
    audience: tuple[str, ...] = ()  # the issue's topics (none: every active subscriber)


def make_plan(
    store: Store,
    backend: Backend,
    slug: str,
    *,
    tested: bool = True,
    dry_run: bool = False,
    limit: int | None = None,
    resend_in_doubt: bool = False,
    audience: tuple[str, ...] = (),
) -> SendPlan:
    """Work out what a send would do (see the module's docstring), once `check_tested`
    has passed (`tested`: False when it was skipped)."""
    suppressed = read_suppressions(store, backend, dry_run=dry_run)
    started = store.dispatch_info(slug) is not None
    # What was under way when a run died is in doubt: the truth, whatever comes next.
    doubt = store.mark_in_doubt(slug) if started and not dry_run else 0
    if started:
        pending = left_to_send(store, slug, resend_in_doubt=resend_in_doubt)
    else:
        # On a dry run nobody was marked: leave out those who would have been.
        # Active, not paused, and in the audience's topics (when it names some).
        pending = max(store.count_audience(audience) - (suppressed if dry_run else 0), 0)
    return SendPlan(
        slug=slug,
        backend=backend.name,
        count=min(pending, limit) if limit is not None else pending,
        resume=started,
        pending=pending,
        suppressed=suppressed,
        found_in_doubt=doubt,
        tested=tested,
        resend_in_doubt=resend_in_doubt,
        audience=audience,
    )


def audience_of(issue: Issue, settings: Settings) -> tuple[str, ...]:
    """The issue's `audience:` as topic ids of the settings; () for everyone. An id the
    settings do not have is an error naming the issue file."""
    if issue.audience is None:
        return ()
    known = settings.topic_ids()
    unknown = [ident for ident in issue.audience if ident not in known]
    if unknown:
        where = display_path(issue.source) if issue.source else issue.slug
        hint = f"the topics are {', '.join(known)}" if known else "highlights.yaml has no `topics:`"
        raise HighlightsError(f"{where}: audience names unknown topics {', '.join(map(repr, unknown))}; {hint}")
    return tuple(dict.fromkeys(issue.audience))


def audience_words(audience: tuple[str, ...]) -> str:
    """Whom a dispatch goes to, in words."""
    return f"subscribers in the topics {', '.join(audience)}" if audience else "every active subscriber"


def audience_line(ws: Workspace, issue: Issue) -> str | None:
    """What `check` and the test send say of the audience: whom the issue goes to and
    how many that is now (active, not paused); None for a workspace without topics whose
    issue names no audience (nothing to say: everyone). The database is only read, and
    not made when there is none yet."""
    if not ws.settings.topics and issue.audience is None:
        return None
    audience = audience_of(issue, ws.settings)
    who = audience_words(audience)
    if not ws.database_url and not ws.database_exists():
        return f"audience: {who} (no subscribers yet)"
    from highlightsmail.store import Store  # here: `check` without topics never loads the store

    with Store.open(ws) as store:
        return f"audience: {who}: {store.count_audience(audience)} subscriber(s) now"


def check_tested(store: Store, slug: str, digest: str, *, skip: bool) -> bool:
    """Whether this version (`digest`) was test-sent; raises if not, unless `skip`."""
    if store.has_test_send(slug, digest):
        return True
    if skip:
        return False
    hint = "this version was not test-sent" if store.has_test_send(slug) else "it has not been test-sent"
    raise HighlightsError(
        f"{slug}: {hint}. Send a test first: highlights send {slug} --test (or pass --skip-test-check)"
    )


def read_suppressions(store: Store, backend: Backend, *, dry_run: bool) -> int:
    """Mark the subscribers the provider's lists name (on a dry run, count who would
    be): nothing is sent when the lists cannot be read."""
    try:
        if dry_run:
            return would_suppress(store, backend)
        return store.apply_suppressions(backend.suppressions())
    except DeliveryError as err:
        raise HighlightsError(
            f"could not read {backend.name}'s suppression lists, so nothing was sent: {err.message}"
        ) from None


def would_suppress(store: Store, backend: Backend) -> int:
    """How many active subscribers the provider's lists would mark, marking nobody."""
    active = set()
    for item in backend.suppressions():
        sub = store.find(item.email)
        if sub is not None and sub.status == "active":
            active.add(sub.id)
    return len(active)


def left_to_send(store: Store, slug: str, *, resend_in_doubt: bool) -> int:
    """Those left to send of a dispatch begun before: pending, failed ones (retried),
    in doubt only when asked. Nothing is put back to pending before the editor says yes."""
    counts = store.delivery_counts(slug)
    again: tuple[DeliveryState, ...] = ("pending", "failed")
    if resend_in_doubt:
        again += ("in_flight", "in_doubt")
    return sum(counts.get(state, 0) for state in again)
