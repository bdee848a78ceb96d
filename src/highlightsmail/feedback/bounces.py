"""`highlights bounces scan`: every bounce in a mailbox not read before (mailboxes.py),
read into what it says (dsn.py), matched to the messages we sent, and recorded as
delivery events (events.py). Permanent failures make the address `bounced`; temporary
ones are soft bounces.

Proof that a bounce is about mail we sent. The bounce mailbox is a public address, so
anyone can write a DSN to it. With `delivery.bounces.accept: matched` (the default) a
failure changes a subscriber only when the mail holds one of these, and it names that
subscriber (and the issue was sent to them, as the ledger says):
- the Message-ID of their message: `<TOKEN@domain>`, where TOKEN is the message token
  of tokens.py (the dispatch's tag, the subscriber id, and a MAC over the issue, the tag
  and the id). Nothing per recipient is stored at send time: the tag finds the
  dispatch, the MAC proves the message, the ledger that they were a recipient;
- their signed unsubscribe link (`List-Unsubscribe`), in the returned headers;
- the VERP return address the message went out with (`bounces+TOKEN@domain`, with
  `delivery.bounces.verp`), which the bounce is addressed to.
The failed address must be that subscriber's, or (a single failure of an address that
is no subscriber) one their mail was forwarded to. A Message-ID or return address of
another issue than the one the returned headers name proves nothing. Everything else is
`unmatched`: counted, listed on request, and changes nothing. `accept: any` keeps the
older rule for a mailbox only the mail server writes to: the failed address is looked up
on the list, and a bounce naming no issue is put on the last issue sent to them.

A mail that cannot be read (dsn.Unreadable) is recorded as read with the outcome
`unreadable` and named in one line. Each mail is remembered by its key in the database,
so scanning the same mailbox again changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from highlightsmail.addresses import BadAddress, normalize_address
from highlightsmail.authoring.workspace import Workspace
from highlightsmail.errors import HighlightsError, InvalidToken
from highlightsmail.feedback.dsn import Bounce, Unreadable, read_bounce
from highlightsmail.feedback.events import record, same_address
from highlightsmail.feedback.mailboxes import Skipped, mail_key, open_mailbox, parse_mailbox
from highlightsmail.store import DeliveryEventRow, Store
from highlightsmail.tokens import Signer, read_message_token

_MAX_SHOWN = 200


def _shown(text: str) -> str:
    """Text from a mail, fit for one line on a terminal: no control characters."""
    return "".join(ch if ch.isprintable() else "?" for ch in text[:_MAX_SHOWN])


@dataclass
class ScanResult:
    """What a scan found and did. The lists hold one line each: the mail (or mailbox
    entry) and why."""

    mailbox: str
    mails: int = 0
    already_scanned: int = 0
    not_bounces: int = 0
    bounces: int = 0
    permanent: int = 0  # failed addresses matched to a subscriber
    temporary: int = 0
    status_changes: int = 0
    test_sends: int = 0  # bounces of test sends: nobody's status changes
    unmatched: list[str] = field(default_factory=list)  # failures that proved nothing: changed nothing
    unreadable: list[str] = field(default_factory=list)  # mail that could not be parsed: recorded, skipped
    skipped: list[str] = field(default_factory=list)  # mailbox entries that are no mail


@dataclass(frozen=True)
class _Proof:
    """What a bounce proves we sent: a message to this subscriber (of this issue; None
    for the unsubscribe link, which names no issue)."""

    subscriber_id: int
    issue: str | None


def scan(ws: Workspace, mailbox: str | None = None, *, store: Store, signer: Signer) -> ScanResult:
    """Read every bounce in the mailbox (the argument, else `delivery.bounces.mailbox`)
    not read before, and record what it says."""
    if mailbox:
        where = parse_mailbox(mailbox, Path.cwd())
    elif ws.settings.delivery.bounces.mailbox:
        where = parse_mailbox(ws.settings.delivery.bounces.mailbox, ws.root)
    else:
        raise HighlightsError(
            "name the mailbox to scan (highlights bounces scan MAILBOX) or set delivery.bounces.mailbox"
        )
    settings = ws.settings.delivery.bounces
    with open_mailbox(where) as source:
        result = ScanResult(mailbox=source.name)
        listed = list(source.keys())
        seen = store.scanned_mail(k for _h, k in listed if k is not None)
        wanted = [h for h, k in listed if k is None or k not in seen]
        result.mails = len(listed)
        result.already_scanned = result.mails - len(wanted)
        keys = dict(listed)
        done: set[str] = set()  # a mailbox may hold the same mail twice
        for handle, data in source.fetch(wanted):
            label = source.label(handle)
            if isinstance(data, Skipped):
                result.mails -= 1
                result.skipped.append(f"{_shown(label)}: {data.why}")
                continue
            key = keys[handle] or mail_key(data)
            if key in done or (keys[handle] is None and store.scanned_mail([key])):
                result.already_scanned += 1
                continue
            done.add(key)
            try:
                bounce = read_bounce(data)
            except Unreadable as err:
                result.unreadable.append(f"{_shown(label)}: {err}")
                outcome = "unreadable"
            else:
                outcome = _record(bounce, label, key, store, signer, settings.accept, settings.soft_limit, result)
            store.mark_scanned(key, outcome)
    return result


def _record(
    bounce: Bounce | None,
    label: str,
    key: str,
    store: Store,
    signer: Signer,
    accept: str,
    soft_limit: int,
    result: ScanResult,
) -> str:
    """Record one bounce; returns the mail's outcome."""
    if bounce is None:
        result.not_bounces += 1
        return "not a bounce"
    result.bounces += 1
    named: int | None = None  # the subscriber its unsubscribe link names
    if bounce.token:
        try:
            purpose, named = signer.read(bounce.token)
        except InvalidToken:
            named = None
        else:
            if purpose == "test":
                result.test_sends += 1
                return "a test send"
    proofs = _proofs(bounce, named, store, signer)
    rows: list[DeliveryEventRow] = []
    failures = [(a, d, True) for a, d in bounce.permanent.items()] + [
        (a, d, False) for a, d in bounce.temporary.items()
    ]
    for address, detail, permanent in failures:
        found: tuple[int, str | None] | str = _match(store, address, len(failures), proofs, bounce.issue)
        if isinstance(found, str) and accept == "any":
            found = _by_address(store, address, len(failures), named, bounce.issue, permanent)
        if isinstance(found, str):
            result.unmatched.append(f"{_shown(label)}: {_shown(address)}: {found}")
            continue
        sid, issue = found
        rows.append(_row(store, key, sid, issue, bounce, detail, permanent))
        if permanent:
            result.permanent += 1
        else:
            result.temporary += 1
    if rows:
        done = record(store, rows, source="bounce-mail", soft_limit=soft_limit, check_address=False)
        result.status_changes += done.changed
    return "bounce" if rows else "unmatched"


def _proofs(bounce: Bounce, named: int | None, store: Store, signer: Signer) -> list[_Proof]:
    """The messages of ours a bounce proves it is about: each message token whose MAC
    holds for the issue its tag names, and the signed unsubscribe link."""
    proofs = []
    for token in bounce.messages:
        parsed = read_message_token(token)
        if parsed is None:
            continue
        tag, sid = parsed
        proofs += [_Proof(sid, issue) for issue in store.issues_tagged(tag) if signer.is_message(token, issue)]
    if named is not None:
        proofs.append(_Proof(named, None))
    return proofs


def _match(store: Store, address: str, failures: int, proofs: list[_Proof], named: str | None) -> tuple[int, str] | str:
    """(subscriber id, issue) a failed address is proven to be about, or why it is not."""
    if not proofs:
        return "no Message-ID, signed link or return address of ours in it"
    mine = _proofs_for(store, address, failures, proofs)
    if isinstance(mine, str):
        return mine
    subject = mine[0].subscriber_id
    if any(p.subscriber_id != subject for p in mine):
        return "what it returns was sent to more than one subscriber"
    return _issue_for(store, subject, mine, named)


def _proofs_for(store: Store, address: str, failures: int, proofs: list[_Proof]) -> list[_Proof] | str:
    """The proofs about the failed address: of messages to its subscriber, or to that
    address; or, for a single failure of an address on no list, all of them (their
    mail was forwarded). Else why none is."""
    sid = _subscriber(store, address)
    mine = [
        p
        for p in proofs
        if p.subscriber_id == sid
        # a row merged into another since (store migration 2) has its own id
        or (p.issue and same_address(store.sent_address(p.issue, p.subscriber_id) or "", address))
    ]
    if not mine:
        if sid is not None:
            return "what it returns was sent to another subscriber"
        if failures > 1 or len({p.subscriber_id for p in proofs}) > 1:
            return "not on the list"
        mine = proofs  # forwarded: the one failed address is not the one we sent to
    return mine


def _issue_for(store: Store, subject: int, mine: list[_Proof], named: str | None) -> tuple[int, str] | str:
    """(subscriber, issue) of a failure whose proofs are all about `subject`: the issue
    they prove (it must be the one the returned headers name, if any), else the issue
    named or the last one sent to them; or why there is none."""
    issues = sorted({p.issue for p in mine if p.issue})
    if len(issues) > 1:
        return f"its Message-IDs are of different issues ({', '.join(issues)})"
    if issues:
        issue = issues[0]
        if named and named != issue:
            return f"it names issue {named}, but its Message-ID or return address is of issue {issue}"
    else:
        found = named or store.latest_issue_sent(subject)
        if found is None:
            return "no issue was sent to them"
        issue = found
    if store.sent_address(issue, subject) is None:
        return f"issue {issue} was not sent to them"
    return subject, issue


def _by_address(
    store: Store, address: str, failures: int, named: int | None, issue: str | None, permanent: bool
) -> tuple[int, str | None] | str:
    """`accept: any`: the subscriber with the failed address (or, for a single failure,
    the one the returned unsubscribe link names), and the issue named if it went to
    them, else the last one that did."""
    sid = _subscriber(store, address)
    if sid is None and named is not None and failures == 1:
        sid = named  # forwarded: the failed address is not the one we sent to
    if sid is None:
        return "not on the list"
    sent = store.latest_issue_sent(sid, prefer=issue)
    if sent is None and not permanent:
        return "a temporary failure, and no issue was sent to them"
    return sid, sent


def _subscriber(store: Store, address: str) -> int | None:
    try:
        sub = store.find(normalize_address(address))
    except BadAddress:
        return None
    return sub.id if sub else None


def _row(
    store: Store, key: str, sid: int, issue: str | None, bounce: Bounce, detail: str, permanent: bool
) -> DeliveryEventRow:
    return DeliveryEventRow(
        key=f"mail:{key}:{sid}",
        issue=issue,
        subscriber_id=sid,
        kind="dsn-permanent" if permanent else "dsn-temporary",
        at=bounce.at or store.now(),
        detail=detail,
        status="bounced" if permanent else None,
        soft=not permanent,
    )


__all__ = ["ScanResult", "scan"]
