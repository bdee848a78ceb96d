"""A local, SendGrid v3-compatible HTTP server for tests and benchmarks.

SendGrid cannot be reached from test machines, so tests talk to this server instead.
It validates every ``POST /v3/mail/send`` against a schema and against SendGrid's
documented limits, serves the read-only suppression lists the publisher needs (their
answers checked against the schema too), and can inject faults (429, 5xx, stalls,
dropped connections) on chosen requests.

The schema is SendGrid's official OpenAPI files where they sit beside the checkout
(``../shared/sendgrid-openapi``, or ``$HIGHLIGHTS_SENDGRID_OPENAPI``), else the tests'
own ``schema.json``, written from SendGrid's documentation; a test keeps the two in step.

    with SendGridServer() as sg:
        client = sendgrid.SendGridAPIClient(api_key="SG.test", host=sg.url)
        ...
        assert len(sg.accepted) == 1

Standalone, from the repository: ``PYTHONPATH=tests python -m support.sendgrid --port 8025``.
It only ever binds to 127.0.0.1 and makes no outgoing requests.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import re
import secrets
import socket
import sys
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
ENV_OPENAPI_DIR = "HIGHLIGHTS_SENDGRID_OPENAPI"
MAIL_SPEC = "tsg_mail_v3.json"
SUPPRESSIONS_SPEC = "tsg_suppressions_v3.json"
#: Where the official files sit: beside the checkout, which holds this folder under tests/.
SHARED_OPENAPI_DIR = Path(__file__).resolve().parents[4] / "shared" / "sendgrid-openapi"
OWN_SCHEMA = Path(__file__).resolve().with_name("schema.json")
SchemaChoice = Literal["auto", "official", "own"]

# SendGrid's documented limits (see the spec folder's README.md).
MAX_PERSONALIZATIONS = 1000
MAX_RECIPIENTS = 1000
MAX_SUBSTITUTIONS_BYTES = 10_000  # "at most"
MAX_CUSTOM_ARGS_BYTES = 10_000  # "under": the size must stay strictly below
MAX_CATEGORIES = 10
MAX_CATEGORY_CHARS = 255
MAX_SEND_AT_AHEAD_S = 72 * 3600
MAX_BODY_BYTES = 30 * 1024 * 1024  # SendGrid's total message size limit
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "x-sg-id",
        "x-sg-eid",
        "received",
        "dkim-signature",
        "Content-Type",
        "Content-Transfer-Encoding",
        "To",
        "From",
        "Subject",
        "Reply-To",
        "CC",
        "BCC",
    )
)
MAX_ERRORS_REPORTED = 20

FAULTS = frozenset({"429", "500", "503", "400", "stall", "drop"})
SUPPRESSION_KINDS = ("unsubscribes", "bounces", "spam_reports", "blocks", "invalid_emails")
DEFAULT_PAGE_LIMIT = 500
MAX_PAGE_LIMIT = 500  # the spec's PaginationCommonLimit maximum

# Fields SendGrid fills in for each kind of suppression (shapes from tsg_suppressions_v3.json);
# entries given as bare email strings get these defaults.
_SUPPRESSION_DEFAULTS: dict[str, dict[str, Any]] = {
    "unsubscribes": {},
    "bounces": {
        "reason": "550 5.1.1 The email account that you tried to reach does not exist.",
        "status": "5.1.1",
    },
    "spam_reports": {"ip": "127.0.0.1"},
    "blocks": {"reason": "550 5.7.1 Message rejected by the receiving server.", "status": "5.7.1"},
    "invalid_emails": {"reason": "Mail domain mentioned in email address is unknown"},
}

RecordMode = Literal["full", "count", "ids"]

# A basic syntax check, not RFC 5322: an ASCII local part without spaces or specials, and
# an ASCII domain with at least one dot (SendGrid refuses "user@localhost", and takes no
# internationalised address: a Unicode domain must come in its xn-- form).
_EMAIL_RE = re.compile(
    r"(?!\.)(?!.*\.\.)[!#-'*+\-./0-9=?A-Z^-~]{1,64}(?<!\.)"
    r"@(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"(?:[A-Za-z]{2,63}|xn--[A-Za-z0-9-]{1,59})"
)

_FROM_REQUIRED = (
    "The from object must be provided for every email send. It is an object that requires "
    "the email parameter, but may also contain a name parameter."
)
_SUBJECT_REQUIRED = (
    "The subject is required. You can get around this requirement if you use a template "
    "with a subject defined or if every personalization has a subject defined."
)
_CONTENT_REQUIRED = (
    "Unless a valid template_id is provided, the content parameter is required. "
    "There must be at least one defined content block."
)
_CONTENT_ORDER = "If present, text/plain and text/html may only be provided in that order."
_SENDER_NOT_VERIFIED = (
    "The from address does not match a verified Sender Identity. Mail cannot be sent until this error is "
    "resolved. Visit https://sendgrid.com/docs/for-developers/sending-email/sender-identity/ to see the "
    "Sender Identity requirements"
)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ApiError:
    """One entry of SendGrid's ``{"errors": [...]}`` body."""

    message: str
    field: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"message": self.message, "field": self.field, "help": None}


@dataclass
class AcceptedRequest:
    """A mail-send request answered 202 (kept only with ``record="full"``)."""

    message_id: str
    body: dict[str, Any]
    headers: dict[str, str]


@dataclass
class RejectedRequest:
    """A request answered 4xx; ``body`` is the parsed JSON only with ``record="full"``."""

    path: str
    status: int
    errors: list[dict[str, Any]]
    headers: dict[str, str]
    body: Any = None


@dataclass
class SendStats:
    """Counters kept in every record mode."""

    received: int = 0  # mail-send requests received, faulted and rejected included
    accepted: int = 0
    rejected: int = 0
    faulted: int = 0
    personalizations: int = 0  # in accepted requests
    recipients: int = 0  # to + cc + bcc in accepted requests
    connections: int = 0  # TCP connections opened (shows keep-alive reuse)


@dataclass
class _Reply:
    """What the handler should write back (or not: ``drop``)."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    close: bool = False


def _json_reply(status: int, payload: Any, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(status, json.dumps(payload).encode(), dict(headers or {}))


def _error_reply(status: int, errors: Iterable[ApiError], headers: dict[str, str] | None = None) -> _Reply:
    shown = [e.as_json() for e in errors][:MAX_ERRORS_REPORTED]
    return _json_reply(status, {"errors": shown}, headers)


# --------------------------------------------------------------------------- schemas


def find_openapi_dir(explicit: str | os.PathLike[str] | None = None) -> tuple[Path | None, str | None]:
    """The folder of SendGrid's official OpenAPI files: the argument, else
    $HIGHLIGHTS_SENDGRID_OPENAPI, else ``shared/sendgrid-openapi`` beside the checkout.

    Returns ``(folder, None)`` or ``(None, why not)``. A folder named by the argument or
    the variable that does not hold the files is not replaced by the default one.
    """
    if explicit is not None:
        folder, origin = Path(explicit), "openapi_dir argument"
    elif os.environ.get(ENV_OPENAPI_DIR):
        folder, origin = Path(os.environ[ENV_OPENAPI_DIR]), f"${ENV_OPENAPI_DIR}"
    else:
        folder, origin = SHARED_OPENAPI_DIR, "beside the checkout"
    if (folder / MAIL_SPEC).is_file():
        return folder, None
    return None, f"{folder / MAIL_SPEC} not found ({origin})"


def _pointer(*parts: str) -> str:
    """A URI fragment JSON pointer to ``parts`` (RFC 6901 escaping, then percent-encoding)."""
    return "#" + quote("/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts))


def _validator_for(uri: str, registry: Registry, *parts: str) -> Draft202012Validator:
    # A $ref into the registered document keeps its internal "#/components/..." refs resolvable.
    return Draft202012Validator({"$ref": uri + _pointer(*parts)}, registry=registry)


@dataclass(frozen=True)
class _Schemas:
    """Validators compiled once per schema source."""

    mail: Draft202012Validator
    suppressions: dict[str, Draft202012Validator]  # response schemas, by route kind
    batch: Draft202012Validator | None = None  # POST /v3/mail/batch's answer (official files only)


SUPPRESSION_ROUTES = {
    **{kind: f"/v3/suppression/{kind}" for kind in SUPPRESSION_KINDS},
    "group": "/v3/asm/groups/{group_id}/suppressions",
    "global_email": "/v3/asm/suppressions/global/{email}",
}


@lru_cache(maxsize=4)
def _load_schemas(folder: Path) -> _Schemas:
    """Validators from SendGrid's official OpenAPI files in `folder`."""
    mail_doc = json.loads((folder / MAIL_SPEC).read_text(encoding="utf-8"))
    body_schema = ("components", "requestBodies", "PostMailSend", "content", "application/json", "schema")
    node: Any = mail_doc
    for part in body_schema:
        node = node[part]
    props = node["properties"]
    # Known spec quirk: top-level custom_args is typed "string", but the real API (and the
    # sendgrid package) sends an object there, exactly as in personalizations.
    props["custom_args"] = copy.deepcopy(props["personalizations"]["items"]["properties"]["custom_args"])
    mail_uri = f"urn:sendgrid-openapi:{MAIL_SPEC}"
    mail_registry = Registry().with_resource(
        mail_uri, Resource.from_contents(mail_doc, default_specification=DRAFT202012)
    )
    mail = _validator_for(mail_uri, mail_registry, *body_schema)

    responses: dict[str, Draft202012Validator] = {}
    supp_file = folder / SUPPRESSIONS_SPEC
    if supp_file.is_file():
        supp_doc = json.loads(supp_file.read_text(encoding="utf-8"))
        supp_uri = f"urn:sendgrid-openapi:{SUPPRESSIONS_SPEC}"
        supp_registry = Registry().with_resource(
            supp_uri, Resource.from_contents(supp_doc, default_specification=DRAFT202012)
        )
        for kind, path in SUPPRESSION_ROUTES.items():
            responses[kind] = _validator_for(
                supp_uri,
                supp_registry,
                "paths",
                path,
                "get",
                "responses",
                "200",
                "content",
                "application/json",
                "schema",
            )
    batch = _validator_for(mail_uri, mail_registry, "components", "schemas", "MailBatchResponse")
    return _Schemas(mail=mail, suppressions=responses, batch=batch)


@lru_cache(maxsize=1)
def _load_own_schemas() -> _Schemas:
    """Validators from the tests' own schema.json."""
    doc = json.loads(OWN_SCHEMA.read_text(encoding="utf-8"))
    uri = doc["$id"]
    registry = Registry().with_resource(uri, Resource.from_contents(doc, default_specification=DRAFT202012))
    return _Schemas(
        mail=_validator_for(uri, registry, "$defs", "mail_send"),
        suppressions={kind: _validator_for(uri, registry, "$defs", kind) for kind in SUPPRESSION_ROUTES},
    )


def load_schemas(
    choice: SchemaChoice = "auto", openapi_dir: str | os.PathLike[str] | None = None
) -> tuple[str, str, _Schemas]:
    """(source, note, validators): "official" with the folder it came from, or "own"
    with why the official files were not used."""
    folder, missing = (
        (None, "the tests' own schema was asked for") if choice == "own" else find_openapi_dir(openapi_dir)
    )
    if folder is not None:
        return "official", str(folder), _load_schemas(folder.resolve())
    if choice == "official":
        raise FileNotFoundError(f"SendGrid's OpenAPI files were asked for: {missing}")
    return "own", f"{OWN_SCHEMA.name} ({missing})", _load_own_schemas()


def _schema_errors(validator: Draft202012Validator, body: Any) -> list[ApiError]:
    errors: list[ApiError] = []
    for err in validator.iter_errors(body):
        message = err.message
        if len(message) > 300:
            # jsonschema quotes the whole instance ("[...1,001 items...] is too long").
            message = f"Invalid value: fails the schema's {err.validator!r} ({err.validator_value!r})."
        errors.append(ApiError(message, _error_field(err)))
        if len(errors) >= MAX_ERRORS_REPORTED:
            break
    return errors


def _error_field(err: ValidationError) -> str | None:
    """SendGrid-style dotted field name ("personalizations.0.to"), naming a missing property."""
    parts = [str(p) for p in err.absolute_path]
    if err.validator == "required" and isinstance(err.instance, dict):
        missing = next((p for p in err.validator_value if p not in err.instance), None)
        if missing is not None:
            parts.append(str(missing))
    return ".".join(parts) or None


# --------------------------------------------------------------------------- documented limits


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _json_size(value: Any) -> int:
    # Size as SendGrid would see it on the wire, compact JSON in UTF-8.
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode())


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and value != ""


class _LimitChecker:
    """SendGrid's documented rules that the schema does not express.

    Written defensively (it also runs when the schema is unavailable), so it reports a
    wrong type instead of raising.
    """

    def __init__(self, now: float) -> None:
        self.now = now
        self.errors: list[ApiError] = []

    def add(self, message: str, field_name: str | None) -> None:
        self.errors.append(ApiError(message, field_name))

    def check(self, body: Any) -> list[ApiError]:
        if not isinstance(body, dict):
            self.add(f"Invalid type. Expected: object, given: {_json_type(body)}.", None)
            return self.errors
        has_template = _nonempty_str(body.get("template_id"))

        if "from" not in body:
            self.add(_FROM_REQUIRED, "from.email")
        else:
            self.address(body["from"], "from")
        if "reply_to" in body:
            self.address(body["reply_to"], "reply_to")
        if "reply_to_list" in body:
            if "reply_to" in body:
                self.add("The reply_to and reply_to_list properties are mutually exclusive.", "reply_to_list")
            self.address_list(body["reply_to_list"], "reply_to_list")

        top_custom = body.get("custom_args")
        if top_custom is not None and not self.string_map(top_custom, "custom_args"):
            top_custom = None
        self.personalizations(body.get("personalizations"), body, top_custom, has_template)
        self.content(body.get("content"), has_template)
        self.categories(body.get("categories"))
        self.headers(body.get("headers"), "headers")
        self.send_at(body.get("send_at"), "send_at")
        return self.errors

    def personalizations(
        self, pers: Any, body: dict[str, Any], top_custom: dict[str, Any] | None, has_template: bool
    ) -> None:
        if not isinstance(pers, list) or not pers:
            self.add(
                "The personalizations field is required and must have at least one personalization.",
                "personalizations",
            )
            return
        if len(pers) > MAX_PERSONALIZATIONS:
            self.add(
                f"You may not have more than {MAX_PERSONALIZATIONS} personalizations per API request. "
                f"You have {len(pers)}.",
                "personalizations",
            )
        top_subject = _nonempty_str(body.get("subject"))
        subject_everywhere = True
        recipients = 0
        for i, p in enumerate(pers):
            where = f"personalizations.{i}"
            if not isinstance(p, dict):
                self.add(f"Invalid type. Expected: object, given: {_json_type(p)}.", where)
                continue
            to = p.get("to")
            if not isinstance(to, list) or not to:
                self.add(
                    "The to array is required for all personalization objects, and must have at "
                    "least one email object with a valid email address.",
                    f"{where}.to",
                )
            seen: set[str] = set()
            for kind in ("to", "cc", "bcc"):
                if kind not in p:
                    continue
                for j, item in enumerate(p[kind] if isinstance(p[kind], list) else ()):
                    name = item.get("name") if isinstance(item, dict) else None
                    if isinstance(name, str) and (";" in name or "," in name):
                        # Documented under "Limitations" of v3 Mail Send; SendGrid would
                        # split the header there and lose the recipient.
                        self.add(f"The {kind}.name may not include ';' or ',' characters.", f"{where}.{kind}.{j}.name")
                for addr, addr_field in self.address_list(p[kind], f"{where}.{kind}"):
                    recipients += 1
                    key = addr.lower()
                    if key in seen:
                        self.add(
                            "Each email address in the personalization block should be unique "
                            f"between to, cc, and bcc. We found the first duplicate instance of "
                            f"[{addr}] in the {where}.{kind} field.",
                            addr_field,
                        )
                    seen.add(key)
            if "from" in p:
                self.address(p["from"], f"{where}.from")
            if not _nonempty_str(p.get("subject")):
                subject_everywhere = False
                if "subject" in p:
                    self.add("The subject must be a non-empty string.", f"{where}.subject")
            if (
                "substitutions" in p
                and self.string_map(p["substitutions"], f"{where}.substitutions")
                and _json_size(p["substitutions"]) > MAX_SUBSTITUTIONS_BYTES
            ):
                self.add(
                    f"The substitutions of a personalization may not exceed {MAX_SUBSTITUTIONS_BYTES} bytes.",
                    f"{where}.substitutions",
                )
            custom = p.get("custom_args")
            if custom is not None and not self.string_map(custom, f"{where}.custom_args"):
                custom = None
            if custom or top_custom:
                merged = {**(top_custom or {}), **(custom or {})}
                if _json_size(merged) >= MAX_CUSTOM_ARGS_BYTES:
                    self.add(
                        f"The custom_args (this personalization's merged with the top-level ones) "
                        f"must be under {MAX_CUSTOM_ARGS_BYTES} bytes.",
                        f"{where}.custom_args",
                    )
            self.headers(p.get("headers"), f"{where}.headers")
            self.send_at(p.get("send_at"), f"{where}.send_at")
        if recipients > MAX_RECIPIENTS:
            self.add(
                f"The total number of recipients (to, cc and bcc over all personalizations) must "
                f"be at most {MAX_RECIPIENTS}. You have {recipients}.",
                "personalizations",
            )
        if not has_template and not top_subject and not subject_everywhere:
            self.add(_SUBJECT_REQUIRED, "subject")

    def address(self, value: Any, where: str) -> str | None:
        """Check an ``{"email", "name"}`` object; return the address if it is usable."""
        if not isinstance(value, dict):
            self.add(f"Invalid type. Expected: object, given: {_json_type(value)}.", where)
            return None
        if "name" in value and not isinstance(value["name"], str):
            self.add(f"Invalid type. Expected: string, given: {_json_type(value['name'])}.", f"{where}.name")
        email = value.get("email")
        if not isinstance(email, str) or not email:
            self.add("The email parameter is required and must be a string.", f"{where}.email")
            return None
        if not _EMAIL_RE.fullmatch(email):
            self.add("Does not contain a valid address.", f"{where}.email")
            return None
        return email

    def address_list(self, value: Any, where: str) -> list[tuple[str, str]]:
        """Check a list of address objects; return (address, field) for the usable ones."""
        if not isinstance(value, list):
            self.add(f"Invalid type. Expected: array, given: {_json_type(value)}.", where)
            return []
        found = []
        for j, item in enumerate(value):
            email = self.address(item, f"{where}.{j}")
            if email is not None:
                found.append((email, f"{where}.{j}.email"))
        return found

    def string_map(self, value: Any, where: str) -> bool:
        """An object whose values are all strings (substitutions, custom_args)."""
        if not isinstance(value, dict):
            self.add(f"Invalid type. Expected: object, given: {_json_type(value)}.", where)
            return False
        ok = True
        for key, item in value.items():
            if not isinstance(item, str):
                self.add(f"Invalid type. Expected: string, given: {_json_type(item)}.", f"{where}.{key}")
                ok = False
        return ok

    def headers(self, value: Any, where: str) -> None:
        if value is None:
            return
        if not isinstance(value, dict):
            self.add(f"Invalid type. Expected: object, given: {_json_type(value)}.", where)
            return
        for name, item in value.items():
            if name.strip().lower() in RESERVED_HEADERS:
                self.add(f"The header {name!r} is reserved and may not be set.", f"{where}.{name}")
            if not isinstance(item, str):
                self.add(f"Invalid type. Expected: string, given: {_json_type(item)}.", f"{where}.{name}")

    def send_at(self, value: Any, where: str) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(f"Invalid type. Expected: integer, given: {_json_type(value)}.", where)
        elif value > self.now + MAX_SEND_AT_AHEAD_S:
            self.add("send_at may not be scheduled more than 72 hours in advance.", where)

    def content(self, value: Any, has_template: bool) -> None:
        if value is None:
            if not has_template:
                self.add(_CONTENT_REQUIRED, "content")
            return
        if not isinstance(value, list):
            self.add(f"Invalid type. Expected: array, given: {_json_type(value)}.", "content")
            return
        if not value and not has_template:
            self.add(_CONTENT_REQUIRED, "content")
        types: list[str] = []
        for j, block in enumerate(value):
            if (
                not isinstance(block, dict)
                or not _nonempty_str(block.get("type"))
                or not _nonempty_str(block.get("value"))
            ):
                self.add("Each content block needs a non-empty type and value.", f"content.{j}")
                types.append("")
                continue
            types.append(block["type"].strip().lower())
        # text/plain, if present, must be first; text/html must follow it (or be first).
        expected = [t for t in ("text/plain", "text/html") if t in types]
        if types[: len(expected)] != expected:
            self.add(_CONTENT_ORDER, "content")

    def categories(self, value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, list):
            self.add(f"Invalid type. Expected: array, given: {_json_type(value)}.", "categories")
            return
        if len(value) > MAX_CATEGORIES:
            self.add(f"You may not have more than {MAX_CATEGORIES} categories per request.", "categories")
        for j, cat in enumerate(value):
            if not isinstance(cat, str):
                self.add(f"Invalid type. Expected: string, given: {_json_type(cat)}.", f"categories.{j}")
            elif len(cat) > MAX_CATEGORY_CHARS:
                self.add(f"A category may not be longer than {MAX_CATEGORY_CHARS} characters.", f"categories.{j}")
        if len({c for c in value if isinstance(c, str)}) < sum(isinstance(c, str) for c in value):
            self.add("Categories must be unique.", "categories")


def check_mail_limits(body: Any, now: float | None = None) -> list[ApiError]:
    """SendGrid's documented limits for a mail-send body; empty when it passes."""
    return _LimitChecker(time.time() if now is None else now).check(body)


# --------------------------------------------------------------------------- HTTP plumbing


class _QueryError(ValueError):
    """A bad query parameter on a suppression endpoint."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class _BodyError(Exception):
    """The request body could not be read (too large, or bad framing)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True  # a stuck handler must never keep the test process alive
    request_queue_size = 128  # benchmarks open many connections at once
    allow_reuse_address = True

    def __init__(self, app: SendGridServer, port: int) -> None:
        self.app = app
        super().__init__((HOST, port), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or hang up (stall/drop faults) are expected here.
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            log.debug("connection from %s ended: %r", client_address, exc)
        else:
            log.exception("unexpected error serving %s", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client reuses connections
    server_version = "highlightsmail-sendgrid-test"
    sys_version = ""
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.app._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.app._untrack(self.connection)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def log_message(self, format: str, *args: Any) -> None:
        # Benchmarks send thousands of requests; keep stderr quiet.
        log.debug("%s " + format, self.address_string(), *args)

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        try:
            body: bytes | None = self._read_body()
            body_error = None
        except _BodyError as exc:
            body, body_error = None, exc
        try:
            reply = self.server.app._handle(method, url.path, url.query, self.headers, body, body_error)
        except Exception:  # a bug here must surface as a 500 in the test, not a hang
            log.exception("error handling %s %s", method, self.path)
            reply = _error_reply(500, [ApiError("internal error in the test server (see its log)")])
        if body_error is not None:
            reply.close = True  # the unread rest of the body would corrupt the next request
        if reply.drop:
            self.close_connection = True
            return
        self.send_response(reply.status)
        if reply.body:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.close:
            self.send_header("Connection", "close")  # also sets close_connection
        self.end_headers()
        if reply.body:
            self.wfile.write(reply.body)

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            n = int(length)
        except ValueError:
            raise _BodyError(400, "invalid Content-Length") from None
        if n < 0:
            raise _BodyError(400, "invalid Content-Length")
        if n > MAX_BODY_BYTES:
            raise _BodyError(413, f"The request body may not exceed {MAX_BODY_BYTES} bytes.")
        return self.rfile.read(n)

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BodyError(400, "invalid chunked encoding") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                raise _BodyError(413, f"The request body may not exceed {MAX_BODY_BYTES} bytes.")
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)  # the CRLF after each chunk


# --------------------------------------------------------------------------- the server


class SendGridServer:
    """A SendGrid v3 stand-in on 127.0.0.1, run in a background thread.

    Args:
        port: TCP port; 0 picks a free one.
        api_key: the only bearer token accepted; None accepts any non-empty token.
        schema: "official" (SendGrid's OpenAPI files, which must be found), "own" (the
            tests' schema.json) or "auto" (official where found, else own).
        openapi_dir: the official files' folder (default: $HIGHLIGHTS_SENDGRID_OPENAPI,
            then ``shared/sendgrid-openapi`` beside the checkout).
        verified_senders: when given, a from address outside it is refused (400), as
            SendGrid refuses a sender identity that was not verified.
        record: "full" keeps every accepted body in ``accepted``; "count" keeps only
            ``stats``; "ids" also counts one key per accepted personalization in
            ``recipient_ids``.
        id_key: with record="ids", count ``custom_args[id_key]`` (personalization's merged
            over the top-level ones) instead of ``to[0].email``.
        stall_seconds: how long a "stall" fault holds a request (ends early on stop()).
        validate: False skips checking mail-send bodies (benchmarks measuring the sender's
            own cost, where the check would be most of the server's time).
        rate_limit / rate_limit_reset_seconds: the 429 fault's X-RateLimit-Limit, and how
            far ahead its X-RateLimit-Reset lies.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        api_key: str | None = None,
        schema: SchemaChoice = "auto",
        openapi_dir: str | os.PathLike[str] | None = None,
        verified_senders: Iterable[str] | None = None,
        record: RecordMode = "full",
        id_key: str | None = None,
        stall_seconds: float = 30.0,
        rate_limit: int = 600,
        rate_limit_reset_seconds: float = 1.0,
        validate: bool = True,
    ) -> None:
        if record not in ("full", "count", "ids"):
            raise ValueError(f"record must be 'full', 'count' or 'ids', not {record!r}")
        self.port = port
        self.api_key = api_key
        self.validate = validate
        self.record: RecordMode = record
        self.id_key = id_key
        self.stall_seconds = stall_seconds
        self.rate_limit = rate_limit
        self.rate_limit_reset_seconds = rate_limit_reset_seconds

        self.verified_senders = None if verified_senders is None else {e.lower() for e in verified_senders}
        # schema_source: "official" or "own"; schema_note: the folder, or why the own one.
        self.schema_source, self.schema_note, self._schemas = load_schemas(schema, openapi_dir)

        # Test-provided suppression data; entries are email strings or dicts of spec fields.
        self.suppressions: dict[str, list[str | dict[str, Any]]] = {k: [] for k in SUPPRESSION_KINDS}
        self.group_suppressions: dict[int | str, list[str]] = {}
        self.fail_suppressions: str | None = None  # a fault applied to every suppression GET
        self.created = int(time.time())  # "created" for entries that do not set one

        self.accepted: list[AcceptedRequest] = []
        self.rejected: list[RejectedRequest] = []
        self.faulted: list[tuple[int, str]] = []  # (mail-send request number, behaviour)
        self.recipient_ids: Counter[str | None] = Counter()
        # Scheduled sends: batch id -> "open" (made), "cancel" or "pause" (the scheduled-
        # sends API), and the recipients of mail sent with send_at in each batch.
        self.batches: dict[str, str] = {}
        self.held: dict[str, list[str]] = {}
        self._stats = SendStats()

        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when a connection closes
        self._planned: dict[int, str] = {}
        self._queued: deque[str | None] = deque()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT`` (valid once started)."""
        if self._httpd is None:
            raise RuntimeError("the server is not running")
        return f"http://{HOST}:{self.port}"

    def start(self) -> SendGridServer:
        """Bind and serve in a daemon thread."""
        if self._httpd is not None:
            raise RuntimeError("already started")
        self._stopping.clear()
        self._httpd = _HTTPServer(self, self.port)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"sendgrid-test-server:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake stalled handlers and close open connections."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.server_close()
        with self._lock:
            open_connections = list(self._connections)
        for conn in open_connections:
            # Idle keep-alive handlers block in recv(); shutting the socket ends them.
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._idle:
            # Handler threads are daemons; give them a moment to finish so a test that
            # stops the server does not race with their last bookkeeping.
            self._idle.wait_for(lambda: not self._connections, timeout=2)

    @property
    def open_connections(self) -> int:
        """Client connections currently held by handler threads."""
        with self._lock:
            return len(self._connections)

    def __enter__(self) -> SendGridServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- faults and bookkeeping

    def plan_faults(self, plan: Mapping[int, str] | Iterable[str | None]) -> None:
        """Plan faults for mail-send requests.

        A mapping keys behaviours by request number (1-based, counting every mail-send
        request this server has received); a sequence applies to the next requests in
        order, ``None`` or "ok" letting one through.
        """
        if isinstance(plan, Mapping):
            for number, behaviour in plan.items():
                if not isinstance(number, int) or number < 1:
                    raise ValueError(f"request numbers are 1-based ints, not {number!r}")
                _check_fault(behaviour)
            with self._lock:
                self._planned.update(plan)
        else:
            items = [None if b in (None, "ok") else _check_fault(b) for b in plan]
            with self._lock:
                self._queued.extend(items)

    def fail_next(self, behaviour: str, count: int = 1) -> None:
        """Apply ``behaviour`` to the next ``count`` mail-send requests."""
        self.plan_faults([behaviour] * count)

    def clear_faults(self) -> None:
        """Forget planned faults (``fail_suppressions`` included)."""
        with self._lock:
            self._planned.clear()
            self._queued.clear()
        self.fail_suppressions = None

    def reset(self) -> None:
        """Forget recorded requests, counters and planned faults."""
        self.clear_faults()
        with self._lock:
            self.accepted.clear()
            self.rejected.clear()
            self.faulted.clear()
            self.recipient_ids.clear()
            self._stats = SendStats()

    @property
    def stats(self) -> SendStats:
        """A snapshot of the counters."""
        with self._lock:
            return copy.copy(self._stats)

    def validate_mail(self, body: Any) -> list[ApiError]:
        """All checks a mail-send body gets: the schema, then the limits."""
        limit_errors = check_mail_limits(body)
        errors = _schema_errors(self._schemas.mail, body)
        # Both checks often spot the same problem (e.g. 11 categories); name each field once.
        reported = {e.field for e in errors}
        return errors + [e for e in limit_errors if e.field not in reported]

    # ---- request handling (called from handler threads)

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.add(conn)
            self._stats.connections += 1

    def _untrack(self, conn: socket.socket) -> None:
        with self._idle:
            self._connections.discard(conn)
            self._idle.notify_all()

    def _handle(
        self,
        method: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes | None,
        body_error: _BodyError | None,
    ) -> _Reply:
        if path == "/v3/mail/send":
            if method != "POST":
                return _error_reply(405, [ApiError("Method not allowed.")], {"Allow": "POST"})
            return self._mail_send(headers, body, body_error)
        if path.startswith(("/v3/suppression/", "/v3/asm/")):
            return self._suppressions(method, path, query, headers)
        if path in ("/v3/mail/batch", "/v3/user/scheduled_sends"):
            if method != "POST":
                return _error_reply(405, [ApiError("Method not allowed.")], {"Allow": "POST"})
            return self._scheduling(path, headers, body)
        return _error_reply(404, [ApiError(f"Not found: {path} is not served by the SendGrid test server.")])

    def _authorize(self, headers: Mapping[str, str]) -> ApiError | None:
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return ApiError("authorization required")
        if self.api_key is not None and token != self.api_key:
            return ApiError("The provided authorization grant is invalid, expired, or revoked")
        return None

    def _reject(
        self, path: str, status: int, errors: list[ApiError], headers: Mapping[str, str], body: Any = None
    ) -> _Reply:
        record = RejectedRequest(
            path,
            status,
            [e.as_json() for e in errors],
            dict(headers.items()),
            body if self.record == "full" else None,
        )
        with self._lock:
            self.rejected.append(record)
            if path == "/v3/mail/send":
                self._stats.rejected += 1
        return _error_reply(status, errors)

    def _mail_send(self, headers: Mapping[str, str], raw: bytes | None, body_error: _BodyError | None) -> _Reply:
        path = "/v3/mail/send"
        with self._lock:
            self._stats.received += 1
            number = self._stats.received
            fault = self._planned.pop(number, None)
            if fault is None and self._queued:
                fault = self._queued.popleft()
            if fault is not None:
                self._stats.faulted += 1
                self.faulted.append((number, fault))
        # Faults come first: SendGrid's rate limiter answers before looking at the body.
        if fault is not None:
            return self._fault(fault)
        auth_error = self._authorize(headers)
        if auth_error is not None:
            return self._reject(path, 401, [auth_error], headers)
        if body_error is not None:
            return self._reject(path, body_error.status, [ApiError(str(body_error))], headers)
        assert raw is not None
        encoding = headers.get("Content-Encoding", "").strip().lower()
        if encoding == "gzip":  # the spec's MailBodyCompression parameter
            try:
                inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                raw = inflater.decompress(raw, MAX_BODY_BYTES + 1)
            except zlib.error as exc:
                return self._reject(path, 400, [ApiError(f"Invalid gzip body: {exc}")], headers)
            if len(raw) > MAX_BODY_BYTES:
                return self._reject(path, 413, [ApiError("The decompressed body is too large.")], headers)
        elif encoding not in ("", "identity"):
            return self._reject(path, 400, [ApiError(f"Unsupported Content-Encoding {encoding!r}.")], headers)
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return self._reject(path, 400, [ApiError(f"Invalid JSON: {exc}")], headers)
        errors = self.validate_mail(body) if self.validate else []
        if errors:
            return self._reject(path, 400, errors, headers, body)
        sender = body["from"]["email"]
        if self.verified_senders is not None and sender.lower() not in self.verified_senders:
            unverified = ApiError(_SENDER_NOT_VERIFIED, "from")
            return self._reject(path, 403, [unverified], headers, body)

        batch_error = self._check_batch(body)
        if batch_error is not None:
            return self._reject(path, 400, [batch_error], headers, body)
        message_id = secrets.token_urlsafe(16)
        pers = body["personalizations"]
        recipients = sum(len(p.get(kind, ())) for p in pers for kind in ("to", "cc", "bcc"))
        ids = self._ids(body) if self.record == "ids" else None
        with self._lock:
            self._stats.accepted += 1
            self._stats.personalizations += len(pers)
            self._stats.recipients += recipients
            if self.record == "full":
                self.accepted.append(AcceptedRequest(message_id, body, dict(headers.items())))
            elif ids is not None:
                self.recipient_ids.update(ids)
        return _Reply(202, b"", {"X-Message-Id": message_id})

    def _check_batch(self, body: dict[str, Any]) -> ApiError | None:
        """A mail send naming a batch: the batch must have been made here and not be
        cancelled; its recipients are held until send_at."""
        batch_id = body.get("batch_id")
        if batch_id is None:
            return None
        with self._lock:
            state = self.batches.get(batch_id)
            if state is None:
                return ApiError("The batch ID is not valid.", "batch_id")
            if state == "cancel":
                return ApiError("The batch ID has been cancelled.", "batch_id")
            if body.get("send_at") is not None:
                self.held.setdefault(batch_id, []).extend(
                    to["email"] for p in body["personalizations"] for to in p.get("to", ())
                )
        return None

    def _scheduling(self, path: str, headers: Mapping[str, str], raw: bytes | None) -> _Reply:
        """`POST /v3/mail/batch` (a new batch id, its answer checked against the official
        schema) and `POST /v3/user/scheduled_sends` (`{"batch_id", "status": "cancel" |
        "pause"}`; that API's file is not among the official ones given, so its body is
        checked here by SendGrid's documentation)."""
        auth_error = self._authorize(headers)
        if auth_error is not None:
            return self._reject(path, 401, [auth_error], headers)
        if path == "/v3/mail/batch":
            answer = {"batch_id": secrets.token_urlsafe(24)}
            if self._schemas.batch is not None:
                problem = next(self._schemas.batch.iter_errors(answer), None)
                assert problem is None, problem
            with self._lock:
                self.batches[answer["batch_id"]] = "open"
            return _json_reply(201, answer)
        try:
            body = json.loads(raw or b"")
        except ValueError as exc:
            return self._reject(path, 400, [ApiError(f"Invalid JSON: {exc}")], headers)
        if not isinstance(body, dict) or set(body) != {"batch_id", "status"}:
            return self._reject(path, 400, [ApiError("batch_id and status are required.")], headers, body)
        if body["status"] not in ("cancel", "pause"):
            return self._reject(path, 400, [ApiError("status must be cancel or pause.", "status")], headers, body)
        with self._lock:
            if body["batch_id"] not in self.batches:
                return self._reject(path, 400, [ApiError("The batch ID is not valid.", "batch_id")], headers, body)
            self.batches[body["batch_id"]] = body["status"]
        return _json_reply(201, body)

    def _ids(self, body: dict[str, Any]) -> list[str | None]:
        if self.id_key is None:
            return [p["to"][0]["email"] for p in body["personalizations"]]
        top = body.get("custom_args") or {}
        # A personalization without the id counts under None, so a benchmark sees it.
        return [{**top, **(p.get("custom_args") or {})}.get(self.id_key) for p in body["personalizations"]]

    def _fault(self, behaviour: str) -> _Reply:
        if behaviour == "429":
            reset = math.ceil(time.time() + self.rate_limit_reset_seconds)
            return _error_reply(
                429,
                [ApiError("too many requests")],
                {
                    "X-RateLimit-Limit": str(self.rate_limit),
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(reset),
                },
            )
        if behaviour == "500":
            return _error_reply(500, [ApiError("internal server error (injected fault)")])
        if behaviour == "503":
            return _error_reply(503, [ApiError("service unavailable (injected fault)")])
        if behaviour == "400":
            return _error_reply(400, [ApiError("bad request (injected fault)", None)])
        if behaviour == "stall":
            # Longer than the client's time-out, but stop() ends it at once.
            self._stopping.wait(self.stall_seconds)
        return _Reply(drop=True)  # "drop", and a stall that ran out: close without answering

    # ---- suppressions

    def _suppressions(self, method: str, path: str, query: str, headers: Mapping[str, str]) -> _Reply:
        parts = path.rstrip("/").split("/")[1:]  # ["v3", ...]
        route: tuple[str, str | None] | None = None
        if len(parts) == 3 and parts[1] == "suppression" and parts[2] in SUPPRESSION_KINDS:
            route = (parts[2], None)
        elif len(parts) == 5 and parts[1:3] == ["asm", "groups"] and parts[4] == "suppressions":
            route = ("group", unquote(parts[3]))
        elif len(parts) == 5 and parts[1:4] == ["asm", "suppressions", "global"]:
            route = ("global_email", unquote(parts[4]))
        elif parts[1:] == ["asm", "suppressions", "global"]:
            # The spec documents only POST here; global unsubscribes are listed by
            # GET /v3/suppression/unsubscribes. A client calling GET here has a bug.
            return _error_reply(
                405,
                [
                    ApiError(
                        "GET is not documented for /v3/asm/suppressions/global; "
                        "list global unsubscribes with GET /v3/suppression/unsubscribes."
                    )
                ],
                {"Allow": "POST"},
            )
        if route is None:
            return _error_reply(404, [ApiError(f"Not found: {path} is not served by the SendGrid test server.")])
        if method != "GET":
            read_only = ApiError("The SendGrid test server's suppression endpoints are read-only.")
            return _error_reply(405, [read_only], {"Allow": "GET"})
        fault = self.fail_suppressions
        if fault is not None:
            _check_fault(fault)
            return self._fault(fault)
        auth_error = self._authorize(headers)
        if auth_error is not None:
            return self._reject(path, 401, [auth_error], headers)

        kind, param = route
        if kind == "group":
            data = self.group_suppressions.get(param or "")
            if data is None and param is not None and param.isdigit():
                data = self.group_suppressions.get(int(param))
            payload: Any = [e if isinstance(e, str) else e["email"] for e in (data or [])]
        elif kind == "global_email":
            wanted = (param or "").lower()
            if not any(_entry_email(e).lower() == wanted for e in self.suppressions.get("unsubscribes", [])):
                # SendGrid documents {} for an address that is not globally suppressed,
                # though the spec's response schema requires recipient_email.
                return _json_reply(200, {})
            payload = {"recipient_email": param}
        else:
            try:
                payload = self._page(kind, parse_qs(query))
            except _QueryError as exc:
                return self._reject(path, 400, [ApiError(str(exc), exc.param)], headers)
        problem = self.check_answer(kind, payload)
        if problem:
            return _error_reply(500, [ApiError(problem)])
        return _json_reply(200, payload)

    def _page(self, kind: str, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        """One page of a suppression list, honouring limit, offset, start/end_time and email."""

        def number(name: str, default: int | None, low: int, high: int | None = None) -> int | None:
            if name not in query:
                return default
            text = query[name][-1]
            try:
                value = int(text)
            except ValueError:
                raise _QueryError(f"{name} must be an integer, not {text!r}", name) from None
            if value < low or (high is not None and value > high):
                bound = f"between {low} and {high}" if high is not None else f"at least {low}"
                raise _QueryError(f"{name} must be {bound}", name)
            return value

        limit = number("limit", DEFAULT_PAGE_LIMIT, 1, MAX_PAGE_LIMIT)
        offset = number("offset", 0, 0)
        start = number("start_time", None, 0)
        end = number("end_time", None, 0)
        email_part = query.get("email", [""])[-1].lower()
        assert limit is not None and offset is not None
        items = self.suppressions.get(kind, [])
        if start is None and end is None and not email_part:
            # Normalise only the page, so a million-entry list stays cheap to serve.
            return [self._entry(kind, e) for e in items[offset : offset + limit]]
        selected = [
            entry
            for entry in (self._entry(kind, e) for e in items)
            if (start is None or entry["created"] >= start)
            and (end is None or entry["created"] <= end)
            and email_part in entry["email"].lower()
        ]
        return selected[offset : offset + limit]

    def _entry(self, kind: str, item: str | dict[str, Any]) -> dict[str, Any]:
        given = {"email": item} if isinstance(item, str) else dict(item)
        return {"created": self.created, "email": given.pop("email"), **_SUPPRESSION_DEFAULTS[kind], **given}

    def check_answer(self, kind: str, payload: Any) -> str | None:
        """What is wrong with a suppression answer (`kind` as in SUPPRESSION_ROUTES) by
        the response schema, or None: catches test data SendGrid would never send."""
        if kind not in self._schemas.suppressions:
            return None
        error = next(self._schemas.suppressions[kind].iter_errors(payload), None)
        if error is None:
            return None
        return f"test data for {kind} does not fit the spec's response schema: {error.message}"


def _entry_email(item: str | dict[str, Any]) -> str:
    return item if isinstance(item, str) else str(item.get("email", ""))


def _check_fault(behaviour: Any) -> str:
    if behaviour not in FAULTS:
        raise ValueError(f"unknown fault {behaviour!r}; expected one of {sorted(FAULTS)}")
    return behaviour


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """Run the server standalone until Ctrl-C."""
    parser = argparse.ArgumentParser(
        prog="python -m support.sendgrid",
        description="Local SendGrid v3-compatible server (127.0.0.1 only) for tests and benchmarks.",
    )
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: a free one)")
    parser.add_argument("--api-key", help="the only API key accepted (default: any)")
    parser.add_argument("--openapi-dir", help="folder holding tsg_mail_v3.json")
    parser.add_argument("--schema", choices=("auto", "official", "own"), default="auto", help="what to validate with")
    parser.add_argument(
        "--record",
        choices=("full", "count", "ids"),
        default="count",
        help="what to keep of accepted requests (default: count, so memory stays flat)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    server = SendGridServer(
        args.port, api_key=args.api_key, schema=args.schema, openapi_dir=args.openapi_dir, record=args.record
    )
    with server:
        print(server.url, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    stats = server.stats
    print(f"accepted {stats.accepted}, rejected {stats.rejected}, faulted {stats.faulted}", file=sys.stderr)
    return 0
