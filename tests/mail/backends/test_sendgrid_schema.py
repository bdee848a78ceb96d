"""The tests' own schema for what the local SendGrid server checks, held to SendGrid's.

Every sample below carries the verdict SendGrid's documentation gives it: a mail-send
body accepted or refused (by the schema and the documented limits checked beside it), a
suppression list's answer fitting its documented shape or not. The server on the tests'
schema must give each sample that verdict, everywhere. Where SendGrid's official OpenAPI
files sit beside the checkout, the server on those must give the same verdicts, so the
two cannot drift apart unnoticed.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from support.sendgrid import SendGridServer
from support.sendgrid.server import SUPPRESSION_ROUTES

_OWN = SendGridServer(schema="own")  # never started: only its checks are used
_OFFICIAL: SendGridServer | None
try:
    _OFFICIAL, _OFFICIAL_NOTE = SendGridServer(schema="official"), ""
except FileNotFoundError as err:
    _OFFICIAL, _OFFICIAL_NOTE = None, str(err)

Mutation = Callable[[dict[str, Any]], Any]


def base() -> dict[str, Any]:
    return {
        "personalizations": [{"to": [{"email": "reader@example.org"}]}],
        "from": {"email": "news@example.org"},
        "subject": "This week",
        "content": [{"type": "text/plain", "value": "Hello"}],
    }


def _set(path: str, value: Any) -> Mutation:
    """A mutation setting the dotted `path` (list indexes as numbers) to `value`."""

    def mutate(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = body
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if isinstance(node, list):
            node[int(last)] = copy.deepcopy(value)
        else:
            node[last] = copy.deepcopy(value)

    return mutate


def _drop(path: str) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = body
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[last]

    return mutate


def _whole(value: Any) -> Mutation:
    return lambda body: value


FULL = {
    "personalizations": [
        {
            "to": [{"email": "reader@example.org", "name": "Reader"}],
            "cc": [{"email": "cc@example.org"}],
            "bcc": [{"email": "bcc@example.org", "name": "Bcc"}],
            "from": {"email": "other@example.org", "name": "Other"},
            "subject": "Just for you",
            "headers": {"List-Unsubscribe": "<https://example.org/u/x>"},
            "substitutions": {"-url-": "https://example.org/u/x"},
            "dynamic_template_data": {"name": "Reader", "items": [1, 2]},
            "custom_args": {"subscriber_id": "7"},
            "send_at": 1700000000,
        }
    ],
    "from": {"email": "news@example.org", "name": "News"},
    "reply_to": {"email": "editors@example.org", "name": "Editors"},
    "subject": "This week",
    "content": [{"type": "text/plain", "value": "Hello"}, {"type": "text/html", "value": "<p>Hello</p>"}],
    "attachments": [
        {"content": "aGVsbG8=", "type": "text/plain", "filename": "a.txt", "disposition": "attachment"},
        {"content": "aGVsbG8=", "type": "image/png", "filename": "b.png", "disposition": "inline", "content_id": "b"},
    ],
    "headers": {"X-Issue": "48"},
    "categories": ["highlights", "weekly"],
    "custom_args": {"issue": "2024-w02"},
    "send_at": 1700000000,
    "batch_id": "batch-1",
    "asm": {"group_id": 42, "groups_to_display": [42, 43]},
    "ip_pool_name": "newsletters",
    "mail_settings": {
        "bypass_list_management": {"enable": False},
        "footer": {"enable": False, "text": "t", "html": "<p>t</p>"},
        "sandbox_mode": {"enable": True},
    },
    "tracking_settings": {
        "click_tracking": {"enable": False, "enable_text": False},
        "open_tracking": {"enable": True, "substitution_tag": "%open%"},
        "subscription_tracking": {"enable": False, "text": "t", "html": "h", "substitution_tag": "%u%"},
        "ganalytics": {"enable": True, "utm_source": "s", "utm_medium": "m", "utm_campaign": "c"},
    },
}

#: name -> (mutation of the base body, accepted by SendGrid's schema?)
MAIL_SAMPLES: dict[str, tuple[Mutation, bool]] = {
    # accepted
    "the smallest message": (lambda body: None, True),
    "every documented field": (_whole(FULL), True),
    "html content only": (_set("content", [{"type": "text/html", "value": "<p>x</p>"}]), True),
    "reply_to_list": (
        _set("reply_to_list", [{"email": "a@example.org"}, {"email": "b@example.org", "name": "B"}]),
        True,
    ),
    "a subject per personalization": (_set("personalizations.0.subject", "Hi"), True),
    "a template instead of content": (_set("template_id", "d-0123456789abcdef"), True),
    "1,000 personalizations": (
        _set("personalizations", [{"to": [{"email": f"r{i}@example.org"}]} for i in range(1000)]),
        True,
    ),
    "10 categories": (_set("categories", [f"c{i}" for i in range(10)]), True),
    "a 255-character category": (_set("categories", ["x" * 255]), True),
    "25 groups to display": (_set("asm", {"group_id": 1, "groups_to_display": list(range(25))}), True),
    "a two-character ip pool name": (_set("ip_pool_name", "ab"), True),
    "custom_args object at the top": (_set("custom_args", {"campaign": "x"}), True),
    # refused
    "not an object": (_whole([base()]), False),
    "no personalizations": (_drop("personalizations"), False),
    "no personalization at all": (_set("personalizations", []), False),
    "personalizations as an object": (_set("personalizations", {"to": [{"email": "a@example.org"}]}), False),
    "1,001 personalizations": (
        _set("personalizations", [{"to": [{"email": f"r{i}@example.org"}]} for i in range(1001)]),
        False,
    ),
    "a personalization without to": (_set("personalizations", [{"cc": [{"email": "a@example.org"}]}]), False),
    "an empty to": (_set("personalizations.0.to", []), False),
    "to as an object": (_set("personalizations.0.to", {"email": "a@example.org"}), False),
    "a recipient without email": (_set("personalizations.0.to", [{"name": "Nobody"}]), False),
    "a recipient's email as a number": (_set("personalizations.0.to", [{"email": 7}]), False),
    "a recipient's name as a number": (_set("personalizations.0.to", [{"email": "a@example.org", "name": 7}]), False),
    "a cc as a string": (_set("personalizations.0.cc", ["a@example.org"]), False),
    "no from": (_drop("from"), False),
    "from as a string": (_set("from", "news@example.org"), False),
    "from without email": (_set("from", {"name": "News"}), False),
    "reply_to as a string": (_set("reply_to", "editors@example.org"), False),
    "a subject that is a number": (_set("subject", 48), False),
    "a personalization subject that is a number": (_set("personalizations.0.subject", 48), False),
    "content as an object": (_set("content", {"type": "text/plain", "value": "x"}), False),
    "a content block without value": (_set("content", [{"type": "text/plain"}]), False),
    "a content block without type": (_set("content", [{"value": "x"}]), False),
    "a header value that is a number": (_set("headers", {"X-Issue": 48}), False),
    "a personalization header value that is a number": (_set("personalizations.0.headers", {"X-N": 1}), False),
    "a custom_args value that is a number": (_set("personalizations.0.custom_args", {"id": 7}), False),
    "send_at as a string": (_set("send_at", "tomorrow"), False),
    "send_at as a fraction": (_set("send_at", 1700000000.5), False),
    "a personalization send_at as a string": (_set("personalizations.0.send_at", "soon"), False),
    "11 categories": (_set("categories", [f"c{i}" for i in range(11)]), False),
    "a 256-character category": (_set("categories", ["x" * 256]), False),
    "a category that is a number": (_set("categories", [48]), False),
    "the same category twice": (_set("categories", ["a", "a"]), False),
    "an unsubscribe group id as a string": (_set("asm", {"group_id": "42"}), False),
    "an unsubscribe group without its id": (_set("asm", {"groups_to_display": [1]}), False),
    "26 groups to display": (_set("asm", {"group_id": 1, "groups_to_display": list(range(26))}), False),
    "click tracking enabled by a string": (_set("tracking_settings", {"click_tracking": {"enable": "yes"}}), False),
    "open tracking enabled by a string": (_set("tracking_settings", {"open_tracking": {"enable": "yes"}}), False),
    "sandbox mode enabled by a string": (_set("mail_settings", {"sandbox_mode": {"enable": "true"}}), False),
    "an attachment without content": (_set("attachments", [{"filename": "a.txt"}]), False),
    "an attachment without a file name": (_set("attachments", [{"content": "aGVsbG8="}]), False),
    "an attachment shown some other way": (
        _set("attachments", [{"content": "aGVsbG8=", "filename": "a", "disposition": "sideways"}]),
        False,
    ),
    "a one-character ip pool name": (_set("ip_pool_name", "a"), False),
    "a 65-character ip pool name": (_set("ip_pool_name", "p" * 65), False),
    "a template id that is a number": (_set("template_id", 7), False),
    "a batch id that is a number": (_set("batch_id", 7), False),
}

#: (route kind, answer, fits SendGrid's response schema?)
SUPPRESSION_SAMPLES: dict[str, tuple[str, Any, bool]] = {
    "unsubscribes": ("unsubscribes", [{"created": 1700000000, "email": "a@example.org"}], True),
    "no unsubscribes": ("unsubscribes", [], True),
    "bounces": (
        "bounces",
        [{"created": 1700000000, "email": "a@example.org", "reason": "550 gone", "status": "5.1.1"}],
        True,
    ),
    "spam reports": ("spam_reports", [{"created": 1700000000, "email": "a@example.org", "ip": "192.0.2.1"}], True),
    "blocks": ("blocks", [{"created": 1700000000, "email": "a@example.org", "reason": "r", "status": "5.7.1"}], True),
    "invalid emails": ("invalid_emails", [{"created": 1700000000, "email": "a@example.org", "reason": "r"}], True),
    "a group's addresses": ("group", ["a@example.org", "b@example.org"], True),
    "a global unsubscribe": ("global_email", {"recipient_email": "a@example.org"}, True),
    "unsubscribes as an object": ("unsubscribes", {"email": "a@example.org"}, False),
    "an unsubscribe created as text": ("unsubscribes", [{"created": "yesterday", "email": "a@example.org"}], False),
    "an unsubscribe without its address": ("unsubscribes", [{"created": 1700000000}], False),
    "a block created as text": ("blocks", [{"created": "yesterday", "email": "a@example.org"}], False),
    "a bounce with an address that is a number": ("bounces", [{"created": 1, "email": 7}], False),
    "a group holding objects": ("group", [{"email": "a@example.org"}], False),
    "a group as an object": ("group", {"a@example.org": True}, False),
    "a global unsubscribe without its address": ("global_email", {"email": "a@example.org"}, False),
}


def _mail(name: str) -> tuple[Any, bool]:
    mutate, accepted = MAIL_SAMPLES[name]
    body = base()
    replaced = mutate(body)
    return (body if replaced is None else replaced), accepted


def _compare(verdict: Callable[[SendGridServer], bool], expected: bool) -> None:
    assert verdict(_OWN) is expected, "on the tests' schema"
    if _OFFICIAL is not None:
        assert verdict(_OFFICIAL) is expected, "on SendGrid's OpenAPI schema"


def test_the_verdicts_are_compared_with_sendgrids_own_schema() -> None:
    """Where SendGrid's files are missing, the samples are checked on the tests' schema
    alone, and this one warning says so for the whole run (not one per sample)."""
    if _OFFICIAL is None:
        warnings.warn(f"not compared with SendGrid's own schema: {_OFFICIAL_NOTE}", stacklevel=2)


def test_the_samples_cover_both_verdicts_and_every_answer() -> None:
    for verdicts in (
        [a for _m, a in MAIL_SAMPLES.values()],
        [a for _k, _v, a in SUPPRESSION_SAMPLES.values()],
    ):
        assert verdicts.count(True) >= 8 and verdicts.count(False) >= 8
    assert {kind for kind, _v, _a in SUPPRESSION_SAMPLES.values()} == set(SUPPRESSION_ROUTES)


@pytest.mark.parametrize("name", list(MAIL_SAMPLES))
def test_mail_send_samples_get_sendgrids_verdict(name: str) -> None:
    body, accepted = _mail(name)
    _compare(lambda server: server.validate_mail(body) == [], accepted)


@pytest.mark.parametrize("name", list(SUPPRESSION_SAMPLES))
def test_suppression_answers_get_sendgrids_verdict(name: str) -> None:
    kind, answer, fits = SUPPRESSION_SAMPLES[name]
    _compare(lambda server: server.check_answer(kind, answer) is None, fits)
