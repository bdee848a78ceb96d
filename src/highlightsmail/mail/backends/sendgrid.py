"""Delivery through SendGrid's v3 API (`POST /v3/mail/send`) with the `sendgrid` package's
HTTP client (python_http_client).

One request per batch of up to 1,000 recipients, one personalization each: the issue's
HTML and text go once per request, and each recipient's unsubscribe URL is a
substitution of the rendered placeholder. The payload is JSON text posted through the
package's HTTP client: what every recipient shares is serialised once per rendered
email, and each personalization is spliced in from its escaped strings (building a
thousand personalizations with the package's helper classes, or even as dicts encoded
per batch, cost more than the request itself).

Click tracking is off by default. With `delivery.sendgrid.track_clicks`, SendGrid rewrites
the HTML part's links into redirects through its own domain, except the unsubscribe
link, which carries SendGrid's `clicktracking=off` attribute so it stays the reader's own
link. The text part is never tracked: an attribute cannot mark a link there, so its
unsubscribe URL would be rewritten too. SendGrid's own subscription footer is always
off: the issue's footer already carries the link.
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from email.utils import parseaddr, parsedate_to_datetime
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any
from urllib.error import URLError
from urllib.parse import urlsplit

from highlightsmail import __version__
from highlightsmail.addresses import BadAddress, ascii_address, normalize_address
from highlightsmail.authoring.fields import plaintext_url_problem
from highlightsmail.mail.backends.base import (
    Backend,
    Batch,
    BatchResult,
    DeliveryError,
    InDoubtError,
    PermanentError,
    RetryPolicy,
    Suppression,
    TransientError,
    with_retries,
)
from highlightsmail.mail.backends.keepalive import KeptConnection
from highlightsmail.mail.message import display_name, from_header, list_id, reply_to_header, subject_for
from highlightsmail.rendering.rendered import PREFERENCES_PLACEHOLDER, UNSUBSCRIBE_PLACEHOLDER, RenderedIssue

if TYPE_CHECKING:
    from highlightsmail.authoring.workspace import Settings, Workspace

ENV_API_KEY = "SENDGRID_API_KEY"
ENV_HOST = "HIGHLIGHTS_SENDGRID_HOST"
PAGE_SIZE = 500  # the largest page SendGrid's suppression lists serve
# SendGrid's list -> our subscriber status.
SUPPRESSION_LISTS = (("unsubscribes", "unsubscribed"), ("bounces", "bounced"), ("spam_reports", "complained"))
_LIST_SEPARATORS = re.compile(r"[,;]")
# A string as JSON text, quotes included, everything outside ASCII escaped (as
# json.dumps writes it); the standard library's C function behind json.dumps.
_json_string = encode_basestring_ascii
# What `_post` sends with its JSON text (see there).
_JSON_TEXT = {"Content-Type": "application/json; charset=utf-8"}

# python_http_client logs every request's headers, the API key among them, at DEBUG.
logging.getLogger("python_http_client.client").setLevel(logging.INFO)


class SendGridBackend(Backend):
    """Batches of up to `delivery.sendgrid.batch_size` recipients per request,
    `delivery.sendgrid.concurrency` requests in flight (one client per worker)."""

    name = "sendgrid"
    message_tokens = False  # SendGrid gives each message its own Message-ID
    processes = True  # its requests cost their building, not waiting for a server

    def __init__(self, ws: Workspace, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.ws = ws
        config = ws.settings.delivery.sendgrid
        self.config = config
        self.batch_size = config.batch_size
        self.concurrency = config.concurrency
        from_env = os.environ.get(ENV_HOST, "").strip()
        self._host_given = (ENV_HOST if from_env else "delivery.sendgrid.host", from_env or config.host)
        self.host = self._host_given[1].rstrip("/")
        self.timeout = config.timeout
        delivery = ws.settings.delivery
        self.policy = RetryPolicy(attempts=delivery.max_attempts, base=delivery.backoff)
        self._sleep = sleep
        self._client: Any = None
        # The kept-alive connection for the mail itself (None until the first request;
        # never through a proxy, which only the package's client honours).
        self._mail: KeptConnection | None = None
        self.hold: tuple[int, str] | None = None  # (send_at, batch_id): SendGrid holds the mail
        # `_shared`'s last answer: (rendered, settings, test, JSON text).
        self._shared_json: tuple[RenderedIssue, Settings, bool, str] | None = None

    def clone(self) -> SendGridBackend:
        # The package's client keeps request headers between calls: one per worker.
        twin = SendGridBackend(self.ws, sleep=self._sleep)
        twin.hold = self.hold
        return twin

    def hold_until(self, send_at: int, batch_id: str) -> None:
        self.hold = (send_at, batch_id)
        self._shared_json = None  # the body's shared part carries them

    def _api(self) -> Any:
        if self._client is None:
            _check_host(*self._host_given)
            key = os.environ.get(ENV_API_KEY, "").strip()
            if not key:
                raise PermanentError(f"set {ENV_API_KEY} to send through SendGrid (it comes only from the environment)")
            if not (key.isascii() and key.isprintable()) or any(ch.isspace() for ch in key):
                # It goes into an HTTP header: a line break there is a broken request.
                raise PermanentError(
                    f"{ENV_API_KEY} holds a space, a line break or a character outside ASCII; "
                    "set it to the key alone, as SendGrid shows it (SG. and letters, digits, - and _)"
                )
            # The HTTP client under the `sendgrid` package's SendGridAPIClient, made as it
            # makes it: the package itself would load its helpers (Mail, the event
            # webhook's cryptography) that a send never uses, a tenth of its start-up.
            import python_http_client

            client: Any = python_http_client.Client(
                host=self.host,
                request_headers={
                    "Authorization": f"Bearer {key}",
                    "User-Agent": f"highlightsmail/{__version__}",
                    "Accept": "application/json",
                },
                version=3,
            )
            # Any: the package says its timeout is an int, and it takes seconds as a float.
            client.timeout = self.timeout
            self._client = client
        return self._client

    def open(self) -> None:
        """Check the API key is there before anything is claimed."""
        self._api()

    def close(self) -> None:
        mail, self._mail = self._mail, None
        if mail is not None:
            mail.close()

    def _kept(self) -> KeptConnection | None:
        """This worker's kept-alive connection for the mail, or None where a proxy is set
        for the host (the package's client goes through it)."""
        if self._mail is None:
            client = self._api()
            if _proxied(self.host):
                return None
            self._mail = KeptConnection(self.host, client.request_headers, self.timeout)
        return self._mail

    # -- sending

    def payload(self, batch: Batch) -> tuple[str, dict[int, str]]:
        """The `POST /v3/mail/send` body for a batch (no more than 1,000 recipients), as
        JSON text, and the recipients it leaves out because SendGrid cannot take their
        address (each key with its reason).

        What every recipient shares (sender, subject, the HTML and text, settings) is
        serialised once per rendered email (`_shared`); each personalization is spliced
        in as text from its escaped strings, so a batch costs no dicts and no encoder
        pass over the issue's HTML."""
        if not 1 <= len(batch.envelopes) <= 1000:
            raise PermanentError(f"SendGrid takes 1 to 1000 recipients per request, not {len(batch.envelopes)}")
        string = _json_string
        issue = string(batch.slug)
        unsubscribe = string(UNSUBSCRIBE_PLACEHOLDER)
        preferences = string(PREFERENCES_PLACEHOLDER)
        personalizations: list[str] = []
        failed: dict[int, str] = {}
        names: dict[str, str] = {}  # header names as JSON text, escaped once a batch
        for key, recipient, links, _token in batch.envelopes:
            to = ascii_address(recipient.email)
            if to is None:
                failed[key] = f"SendGrid cannot send to {recipient.email!r}: it takes only ASCII before the @"
                continue
            # SendGrid sets List-Id once for all (in `_shared`); the rest are this recipient's.
            headers = ",".join(
                [
                    f"{names.get(k) or names.setdefault(k, string(k))}:{string(v)}"
                    for k, v in links.headers.items()
                    if k != "List-Id"
                ]
            )
            sid = recipient.subscriber_id
            # custom_args come back in SendGrid's events: the id, never the address.
            args = f'"subscriber_id":"{sid:d}"' if sid is not None else '"test":"true"'
            # Substitutions are plain find-and-replace (legacy, non-dynamic templates
            # only); the placeholder is in both the HTML and the text.
            personalizations.append(
                f'{{"to":[{_address_json(to, display_name(recipient), recipient=True)}],'
                f'"substitutions":{{{unsubscribe}:{string(links.unsubscribe_url)},'
                f"{preferences}:{string(links.preferences_url)}}},"
                f'"headers":{{{headers}}},"custom_args":{{"issue":{issue},{args}}}}}'
            )
        body = '{"personalizations":[' + ",".join(personalizations) + "]," + self._shared(batch)
        return body, failed

    def _shared(self, batch: Batch) -> str:
        """The body's members other than the personalizations, as JSON text without its
        opening brace; made once per rendered email and kind of send."""
        key = (batch.rendered, batch.settings, batch.test)
        cached = self._shared_json
        if cached is not None and cached[0] is key[0] and cached[1] is key[1] and cached[2] == key[2]:
            return cached[3]
        settings = batch.settings
        rendered = batch.rendered
        name, email = parseaddr(from_header(settings))
        track = self.config.track_clicks
        shared: dict[str, Any] = {
            "from": _address(email, name),
            "subject": subject_for(rendered, test=batch.test),
            "headers": {"List-Id": list_id(settings)},
            # text/plain must come before text/html (SendGrid refuses the other order).
            "content": [
                {"type": "text/plain", "value": rendered.text},
                {"type": "text/html", "value": untracked_unsubscribe(rendered.html) if track else rendered.html},
            ],
            "tracking_settings": {
                "click_tracking": {"enable": track, "enable_text": False},
                "subscription_tracking": {"enable": False},
            },
        }
        reply_to = reply_to_header(settings)
        if reply_to:
            name, email = parseaddr(reply_to)
            shared["reply_to"] = _address(email, name)
        if self.config.categories:
            shared["categories"] = list(dict.fromkeys(self.config.categories))
        if self.config.asm_group_id is not None:
            shared["asm"] = {"group_id": self.config.asm_group_id}
        if self.hold is not None:
            shared["send_at"], shared["batch_id"] = self.hold
        text = json.dumps(shared, separators=(",", ":"))[1:]
        self._shared_json = (rendered, settings, batch.test, text)
        return text

    def send_batch(self, batch: Batch) -> BatchResult:
        # SendGrid refuses a whole request over one address it cannot take: those fail
        # alone, before the request, and the rest of the batch goes.
        if all(ascii_address(e.recipient.email) is None for e in batch.envelopes):
            return BatchResult(
                failed={
                    e.key: f"SendGrid cannot send to {e.recipient.email!r}: it takes only ASCII before the @"
                    for e in batch.envelopes
                }
            )
        body, failed = self.payload(batch)
        message_id = with_retries(functools.partial(self._post, body), self.policy, sleep=self._sleep)
        return BatchResult(
            sent=[e.key for e in batch.envelopes if e.key not in failed], failed=failed, message_id=message_id
        )

    def _post(self, body: str) -> str | None:
        kept = self._kept()
        if kept is not None:
            answer = kept.request("POST", "/v3/mail/send", body.encode("utf-8"), _JSON_TEXT, "POST /v3/mail/send")
            if not 200 <= answer.status < 300:  # 202 Accepted; a redirect took nothing either
                raise _status_error(answer.status, answer.body, answer.reason, answer.headers, "POST /v3/mail/send")
            return answer.headers.get("X-Message-Id")
        client = self._api()
        # The body is JSON text already: a Content-Type other than the bare
        # `application/json` is what makes the package send text as it is, rather than
        # encode it again as a JSON string.
        response = self._call(
            lambda: client.mail.send.post(request_body=body, request_headers=_JSON_TEXT, timeout=self.timeout),
            "POST /v3/mail/send",
        )
        # 202 Accepted; SendGrid gives one X-Message-Id for the whole request.
        message_id: str | None = response.headers.get("X-Message-Id")
        return message_id

    def _call(self, request: Callable[[], Any], what: str) -> Any:
        """Run one HTTP request; map every failure to TransientError (known not taken),
        InDoubtError (sent whole, no answer) or PermanentError."""
        from python_http_client.exceptions import HTTPError

        try:
            return request()
        except HTTPError as err:
            raise _http_error(err, what) from None
        except URLError as err:
            # urllib wraps what fails while connecting or sending the request: no whole
            # request arrived, so trying again is safe.
            reason = err.reason
            if isinstance(reason, TimeoutError):
                raise TransientError(f"SendGrid did not take {what} within {self.timeout:g} s") from None
            raise TransientError(f"cannot reach SendGrid at {self.host} ({what}): {reason}") from None
        except TimeoutError:
            # Raised while waiting for the answer: the request was sent whole.
            raise InDoubtError(f"SendGrid did not answer {what} within {self.timeout:g} s") from None
        except (http.client.HTTPException, OSError) as err:
            # RemoteDisconnected, a reset while waiting for the answer: sent whole, so
            # SendGrid may have taken it.
            raise InDoubtError(
                f"connection to SendGrid lost after sending {what}: {err or type(err).__name__}"
            ) from None

    # -- scheduled sends (SendGrid holds the mail until send_at; its batch can be cancelled)

    def new_batch_id(self) -> str:
        """A new batch id (`POST /v3/mail/batch`): mail sent with it can be cancelled."""
        client = self._api()

        def post() -> Any:
            try:
                return self._call(lambda: client.mail.batch.post(timeout=self.timeout), "POST /v3/mail/batch")
            except InDoubtError as err:
                raise TransientError(err.message) from None  # an unused batch id harms nothing

        response = with_retries(post, self.policy, sleep=self._sleep)
        try:
            batch_id = json.loads(response.body)["batch_id"]
        except (ValueError, KeyError, TypeError):
            raise DeliveryError("SendGrid answered POST /v3/mail/batch without a batch_id") from None
        if not isinstance(batch_id, str) or not batch_id:
            raise DeliveryError("SendGrid answered POST /v3/mail/batch without a batch_id")
        return batch_id

    def cancel_batch(self, batch_id: str) -> None:
        """Cancel the mail SendGrid holds in `batch_id` (`POST /v3/user/scheduled_sends`)."""
        client = self._api()
        body = {"batch_id": batch_id, "status": "cancel"}

        def post() -> Any:
            try:
                return self._call(
                    lambda: client.user.scheduled_sends.post(request_body=body, timeout=self.timeout),
                    "POST /v3/user/scheduled_sends",
                )
            except InDoubtError as err:
                raise TransientError(err.message) from None  # cancelling twice is cancelling once

        with_retries(post, self.policy, sleep=self._sleep)

    # -- suppressions

    def suppressions(self) -> Iterator[Suppression]:
        """SendGrid's global unsubscribes, bounces and spam reports (paged), and the
        unsubscribe group's members when `asm_group_id` is set. Any failure is a
        DeliveryError: a send must not go out on a partial list."""
        for kind, status in SUPPRESSION_LISTS:
            offset = 0
            while True:
                query = {"limit": PAGE_SIZE, "offset": offset}
                endpoint = self._api().suppression._(kind)
                page = self._get_list(
                    functools.partial(endpoint.get, query_params=query, timeout=self.timeout),
                    f"GET /v3/suppression/{kind}",
                )
                for item in page:
                    if not isinstance(item, dict) or not isinstance(item.get("email"), str):
                        raise DeliveryError(f"SendGrid's {kind} list has an entry without an address: {item!r:.80}")
                    yield Suppression(
                        email=_stored_form(item["email"]), status=status, detail=str(item.get("reason") or "")
                    )
                if len(page) < PAGE_SIZE:
                    break
                offset += PAGE_SIZE
        group = self.config.asm_group_id
        if group is not None:
            members = self._get_list(
                lambda: self._api().asm.groups._(str(group)).suppressions.get(timeout=self.timeout),
                f"GET /v3/asm/groups/{group}/suppressions",
            )
            for item in members:
                if not isinstance(item, str):
                    raise DeliveryError(f"SendGrid's unsubscribe group {group} has an odd entry: {item!r:.80}")
                yield Suppression(email=_stored_form(item), status="unsubscribed", detail=f"unsubscribe group {group}")

    def _get_list(self, request: Callable[[], Any], what: str) -> list[Any]:
        def get() -> Any:
            try:
                return self._call(request, what)
            except InDoubtError as err:
                # Reading a list changes nothing at SendGrid: asking again is safe.
                raise TransientError(err.message) from None

        response = with_retries(get, self.policy, sleep=self._sleep)
        try:
            data = json.loads(response.body or b"[]")
        except ValueError:
            raise DeliveryError(f"SendGrid answered {what} with something that is not JSON") from None
        if not isinstance(data, list):
            raise DeliveryError(f"SendGrid answered {what} with {type(data).__name__}, not a list")
        return data


@functools.lru_cache(maxsize=8)
def untracked_unsubscribe(html: str) -> str:
    """The HTML with SendGrid's `clicktracking=off` on every link to the unsubscribe URL
    (the placeholder each recipient's URL replaces), so click tracking leaves it alone."""
    holders = "|".join(map(re.escape, (UNSUBSCRIBE_PLACEHOLDER, PREFERENCES_PLACEHOLDER)))
    link = re.compile(r"<a(?=\s[^>]*\bhref\s*=\s*([\"'])(?:" + holders + r")\1)", re.I)
    return link.sub("<a clicktracking=off", html)


def _stored_form(address: str) -> str:
    """An address from SendGrid as our database holds it: we send an internationalised
    domain in its xn-- form, so SendGrid lists it that way; subscribers are stored with
    the Unicode domain."""
    if "xn--" not in address.lower():
        return address
    try:
        return normalize_address(address)
    except BadAddress:
        return address


def _proxied(host: str) -> bool:
    """Whether the environment sets a proxy for this host (HTTPS_PROXY, NO_PROXY...)."""
    from urllib.request import getproxies, proxy_bypass

    parts = urlsplit(host)
    return parts.scheme in getproxies() and not proxy_bypass(parts.netloc)


def _check_host(origin: str, host: str) -> None:
    """A typo in the host is a refusal naming where it came from: urllib would raise a
    bare ValueError for `api.sendgrid.com` (no scheme), or retry `htps://...` in vain."""
    try:
        parts = urlsplit(host)
        parts.port  # noqa: B018 (reading it checks it: "Port out of range")
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise PermanentError(f"{origin}: {host!r} is not an http(s) URL like https://api.sendgrid.com")
    if problem := plaintext_url_problem(host):
        raise PermanentError(f"{origin}: {problem}")


def _address(email: str, name: str = "", *, recipient: bool = False) -> dict[str, str]:
    """SendGrid's `{"email", "name"}` (the name already fit for a header)."""
    clean = _clean_name(name, recipient=recipient)
    return {"email": email, "name": clean} if clean else {"email": email}


def _address_json(email: str, name: str = "", *, recipient: bool = False) -> str:
    """`_address` as JSON text."""
    clean = _clean_name(name, recipient=recipient)
    if clean:
        return f'{{"email":{_json_string(email)},"name":{_json_string(clean)}}}'
    return f'{{"email":{_json_string(email)}}}'


def _clean_name(name: str, *, recipient: bool) -> str:
    """A name as SendGrid may take it. A recipient's name loses its commas and
    semicolons: SendGrid documents that it cannot take them in to/cc/bcc names, and
    drops such mail silently (it splits the header there and takes part of the name
    for the address)."""
    clean = name or ""
    if recipient and ("," in clean or ";" in clean):
        clean = _LIST_SEPARATORS.sub(" ", clean)
    if "  " in clean or clean != clean.strip() or not clean.isprintable():
        clean = " ".join(clean.split())
    return clean


def _http_error(err: Any, what: str) -> DeliveryError:
    """SendGrid's answer as an error carrying its own words (`errors[].message`)."""
    return _status_error(int(err.status_code), err.body, str(getattr(err, "reason", "") or ""), err.headers, what)


def _status_error(status: int, body: bytes | str | None, why: str, headers: Any, what: str) -> DeliveryError:
    """An answer with this status (400 and above) as a DeliveryError: 429, 5xx and 408
    are worth trying again, the rest are refusals."""
    reason = _error_text(body) or why or "no details"
    if status == 429:
        return TransientError(f"SendGrid is throttling {what} (429): {reason}", retry_after=_retry_after(headers))
    if status >= 500 or status == 408:
        return TransientError(f"SendGrid failed {what} ({status}): {reason}")
    return PermanentError(f"SendGrid refused {what} ({status}): {reason}")


def _error_text(body: bytes | str | None) -> str:
    if not body:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    try:
        data = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:500]
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return " ".join(text.split())[:500]
    parts = []
    for e in errors:
        if isinstance(e, dict) and e.get("message"):
            field = e.get("field")
            parts.append(f"{e['message']} ({field})" if field else str(e["message"]))
    return "; ".join(parts)[:2000]


def _retry_after(headers: Any, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait: X-RateLimit-Reset is a unix time; Retry-After is seconds or a date."""
    if headers is None:
        return None
    reset = headers.get("X-RateLimit-Reset")
    if reset:
        try:
            return max(0.0, float(reset) - now())
        except ValueError:
            pass
    after = headers.get("Retry-After")
    if after:
        try:
            return max(0.0, float(after))
        except ValueError:
            try:
                return max(0.0, parsedate_to_datetime(after).timestamp() - now())
            except (TypeError, ValueError):
                pass
    return None


__all__ = ["ENV_API_KEY", "ENV_HOST", "PAGE_SIZE", "SUPPRESSION_LISTS", "SendGridBackend"]
