"""Delivery over SMTP: one message per recipient on a kept-open connection.

Also home of `MessageTemplate`, which turns an issue into per-recipient message bytes
quickly; the outbox backend writes the very same bytes to files.

TLS certificates are checked against the system's trust store (OpenSSL also honours
`SSL_CERT_FILE` / `SSL_CERT_DIR`); `HIGHLIGHTS_SMTP_CAFILE` names an extra PEM file of
trusted certificates, for a relay with a private CA or a self-signed certificate.
"""

from __future__ import annotations

import binascii
import email
import email.policy
import os
import secrets
import smtplib
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from typing import TYPE_CHECKING

from highlightsmail.backends.base import (
    Backend,
    Batch,
    BatchResult,
    DeliveryError,
    Envelope,
    PermanentError,
    RetryPolicy,
    TransientError,
    with_retries,
)
from highlightsmail.message import Recipient, build_message, format_recipient, sender_domain

if TYPE_CHECKING:
    from highlightsmail.render import RenderedIssue
    from highlightsmail.workspace import Settings, Workspace

ENV_PASSWORD = "HIGHLIGHTS_SMTP_PASSWORD"
ENV_CAFILE = "HIGHLIGHTS_SMTP_CAFILE"
_MAX_LINE = 998  # RFC 5322 2.1.1: the hard limit on a line, CRLF excluded
_PROBE = Recipient(email="probe@example.invalid", name="Probe")
_LOOPBACK = ("localhost", "127.0.0.1", "::1")  # a relay on this machine: nothing on the wire


# ---------------------------------------------------------------------------- message bytes


@dataclass(frozen=True)
class Outgoing:
    """One recipient's message, and what the SMTP server must support to take it."""

    data: bytes
    smtputf8: bool = False  # a non-ASCII address (RFC 6531)
    eight_bit: bool = False  # an 8bit body (RFC 6152: BODY=8BITMIME)


class MessageTemplate:
    """Every recipient's message as SMTP-ready bytes (CRLF), from one template per issue.

    `build_message` is the reference, but the email package encodes each body in pure
    Python (quoted-printable, since the HTML has long lines): 5 to 10 ms per message.
    Here the first recipient's message from `build_message` fixes the headers and their
    order; headers that are the same for everyone are folded once, and per recipient
    only To, Date, Message-ID and the List-* headers are made. Each body is prepared
    once, in pieces around the unsubscribe placeholder, and joined per recipient with
    their URL, so nothing can split the link:
      - as it is (7bit, or 8bit where the server takes 8BITMIME) when every line stays
        within RFC 5322's 998 octets: fewer, longer lines, which is what makes a
        receiving server quick;
      - otherwise quoted-printable (C `binascii`), the URL between soft line breaks.
    The first recipient's result is checked against `build_message`'s: any difference,
    or a message of another shape, and every message is built fully instead.
    """

    _PER_RECIPIENT = ("to", "date", "message-id")

    def __init__(self, rendered: RenderedIssue, settings: Settings, probe: Envelope, *, test: bool = False) -> None:
        self.rendered = rendered
        self.settings = settings
        self.test = test
        self._domain = sender_domain(settings)
        self._link_names = {name.lower() for name in probe.links.headers}
        # The layout comes from a plain ASCII stand-in, so no odd first address can spoil it.
        probe = replace(probe, recipient=_PROBE)
        reference = build_message(rendered, settings, probe.recipient, probe.links, test=test)
        self.fast = self._compile(reference) and all(self._agrees(reference, probe, flag) for flag in (True, False))

    def new_message_id(self) -> str:
        """A Message-ID for one recipient (kept across retries of that message)."""
        return make_msgid(domain=self._domain)

    def _compile(self, msg: EmailMessage) -> bool:
        from highlightsmail.render import UNSUBSCRIBE_PLACEHOLDER

        parts = list(msg.iter_parts()) if msg.get_content_type() == "multipart/alternative" else []
        if [p.get_content_type() for p in parts] != ["text/plain", "text/html"]:
            return False  # not the shape this fast path knows
        policy = email.policy.SMTP
        head: list[bytes | str] = []
        try:
            for name, value in msg.items():
                lname = name.lower()
                if lname in self._PER_RECIPIENT:
                    head.append(lname)
                elif lname in self._link_names:
                    if "links" not in head:
                        head.append("links")
                elif lname in ("content-type", "content-transfer-encoding"):
                    continue  # the multipart header below carries our own boundary
                else:
                    head.append(policy.fold_binary(name, value))
            part_heads = []
            for part in parts:
                lines = [policy.fold_binary(n, v) for n, v in part.items() if n.lower() != "content-transfer-encoding"]
                part_heads.append(b"".join(lines))
            # The same substitution as RenderedIssue.personalize, applied to the placeholder
            # alone: gives what each part shows in its place (HTML-escaped or not).
            self._bare = replace(self.rendered, html=UNSUBSCRIBE_PLACEHOLDER, text=UNSUBSCRIBE_PLACEHOLDER)
        except (UnicodeError, ValueError, TypeError):
            return False
        # A boundary no body line can hold: "=_" never occurs in quoted-printable text
        # ("=" is always followed by hex or a line break), and 96 random bits elsewhere.
        boundary = ("=_hl_" + secrets.token_hex(12)).encode("ascii")
        self._text = _SplitBody(self.rendered.text, UNSUBSCRIBE_PLACEHOLDER, b"--" + boundary, part_heads[0])
        self._html = _SplitBody(self.rendered.html, UNSUBSCRIBE_PLACEHOLDER, b"\r\n--" + boundary, part_heads[1])
        self._head = head
        self._mime = b'Content-Type: multipart/alternative; boundary="' + boundary + b'"\r\n\r\n'
        self._end = b"\r\n--" + boundary + b"--\r\n"
        return True

    def _agrees(self, reference: EmailMessage, probe: Envelope, eight_bit: bool) -> bool:
        """Whether the fast path gives the probe the same message as build_message."""
        ours = email.message_from_bytes(self._render_fast(probe, eight_bit, None).data, policy=email.policy.default)
        reference = email.message_from_bytes(reference.as_bytes(policy=email.policy.SMTP), policy=email.policy.default)
        if _headers(ours) != _headers(reference):
            return False
        mine, theirs = list(ours.iter_parts()), list(reference.iter_parts())
        # Line ends compare alike: base64 keeps LF inside, quoted-printable gives CRLF.
        return len(mine) == len(theirs) and all(
            a.get_content_type() == b.get_content_type()
            and a.get_content().replace("\r\n", "\n") == b.get_content().replace("\r\n", "\n")
            for a, b in zip(mine, theirs, strict=False)
        )

    def render(self, env: Envelope, *, eight_bit: bool = True, message_id: str | None = None) -> Outgoing:
        """This recipient's message; `eight_bit` says whether the receiver takes 8bit
        bodies (8BITMIME; a file does)."""
        if not self.fast:
            return _full_message(
                self.rendered, self.settings, env, test=self.test, eight_bit=eight_bit, message_id=message_id
            )
        return self._render_fast(env, eight_bit, message_id)

    def _render_fast(self, env: Envelope, eight_bit: bool, message_id: str | None) -> Outgoing:
        html_url, text_url = self._bare.personalize(env.links.unsubscribe_url)
        utf8 = False
        out: list[bytes] = []
        for item in self._head:
            if isinstance(item, bytes):
                out.append(item)
            elif item == "to":
                line, wide = _header("To", format_recipient(env.recipient))
                out.append(line)
                utf8 |= wide
            elif item == "date":
                out.append(_header("Date", formatdate(usegmt=True))[0])
            elif item == "message-id":
                out.append(_header("Message-ID", message_id or self.new_message_id())[0])
            else:  # "links": List-Unsubscribe, List-Unsubscribe-Post, List-Id
                for name, value in env.links.headers.items():
                    out.append(_header(name, value)[0])
        out.append(self._mime)
        text, text_8bit = self._text.fill(text_url, eight_bit)
        html, html_8bit = self._html.fill(html_url, eight_bit)
        out += [text, html, self._end]
        return Outgoing(b"".join(out), smtputf8=utf8, eight_bit=text_8bit or html_8bit)


def _headers(msg: EmailMessage) -> list[tuple[str, str]]:
    """Headers that must be alike, their values unfolded (the email package folds long
    ones where this path keeps one line, as RFC 5322 allows up to 998 characters)."""
    skip = ("date", "message-id", "content-type", "content-transfer-encoding")
    return [(k, " ".join(str(v).split())) for k, v in msg.items() if k.lower() not in skip]


class _SplitBody:
    """One part (boundary line, headers, body), prepared once in pieces around the
    placeholder; a recipient's copy is the pieces joined by their URL."""

    def __init__(self, body: str, placeholder: str, delimiter: bytes, headers: bytes) -> None:
        pieces = body.split(placeholder)
        start = delimiter + b"\r\n" + headers + b"Content-Transfer-Encoding: "
        self._qp_start = start + b"quoted-printable\r\n\r\n"
        self._qp = [_qp(p, last=i == len(pieces) - 1) for i, p in enumerate(pieces)]
        self._ascii = body.isascii()
        self._7bit_start = start + b"7bit\r\n\r\n"
        self._8bit_start = start + b"8bit\r\n\r\n"
        self._raw = [_crlf(p) for p in pieces]
        if not self._raw[-1].endswith(b"\r\n"):
            self._raw[-1] += b"\r\n"
        # As it is only if no line can outgrow 998 octets once the URL is in (a line's
        # length without its placeholders, and how many it holds), and no NUL (RFC 6152).
        lines = [
            (len(line.replace(placeholder.encode(), b"")), line.count(placeholder.encode()))
            for line in _crlf(body).split(b"\r\n")
        ]
        self._raw_ok = "\x00" not in body and all(n or size <= _MAX_LINE for size, n in lines)
        self._holders = [(size, n) for size, n in lines if n]

    def fill(self, insert: str, eight_bit: bool) -> tuple[bytes, bool]:
        """(the part's bytes, whether they are 8bit)."""
        data = insert.encode("utf-8")
        plain = self._ascii and data.isascii()
        if (
            self._raw_ok
            and (plain or eight_bit)
            and b"\r" not in data
            and b"\n" not in data
            and all(size + n * len(data) <= _MAX_LINE for size, n in self._holders)
        ):
            return (self._7bit_start if plain else self._8bit_start) + data.join(self._raw), not plain
        if len(self._qp) == 1:
            return self._qp_start + self._qp[0], False
        return self._qp_start + _qp(insert, last=False).join(self._qp), False


def _lf(text: str) -> bytes:
    """UTF-8 with every line break (CRLF, CR or LF, as the email package counts them) as LF."""
    data = text.encode("utf-8")
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return data


def _crlf(text: str) -> bytes:
    return _lf(text).replace(b"\n", b"\r\n")


def _header(name: str, value: str) -> tuple[bytes, bool]:
    """One header line; short ASCII values as they are, anything else folded and
    encoded by the email package (SMTPUTF8 for a non-ASCII address)."""
    if value.isascii() and "\r" not in value and "\n" not in value and len(name) + len(value) + 2 <= _MAX_LINE:
        return f"{name}: {value}\r\n".encode("ascii"), False
    wide = not value.isascii()
    policy = email.policy.SMTPUTF8 if wide else email.policy.SMTP
    return policy.header_factory(name, value).fold(policy=policy).encode("utf-8"), wide


def _qp(text: str, *, last: bool = True) -> bytes:
    """Quoted-printable with CRLF line breaks. The `last` piece of a body ends with a
    line break (as the email package's own encoding does); any other piece ends with
    a soft line break, so the next piece continues the same decoded line."""
    data = _lf(text)
    if last and not data.endswith(b"\n"):
        data += b"\n"
    out = binascii.b2a_qp(data, quotetabs=False, istext=True, header=False).replace(b"\n", b"\r\n")
    if last:
        return out
    # Room for the "=" of the soft break: RFC 2045 caps encoded lines at 76 characters.
    start = out.rfind(b"\n") + 1
    if len(out) - start > 75:
        cut = start + 75
        if out[cut - 1 : cut] == b"=":
            cut -= 1  # never inside an =XX escape
        elif out[cut - 2 : cut - 1] == b"=":
            cut -= 2
        out = out[:cut] + b"=\r\n" + out[cut:]
    return out + b"=\r\n"


def _full_message(
    rendered: RenderedIssue, settings: Settings, env: Envelope, *, test: bool, eight_bit: bool, message_id: str | None
) -> Outgoing:
    """The slow, general path: the email package does everything."""
    msg = build_message(rendered, settings, env.recipient, env.links, test=test, message_id=message_id)
    policy = email.policy.SMTP if eight_bit else email.policy.SMTP.clone(cte_type="7bit")
    try:
        data = msg.as_bytes(policy=policy)
        return Outgoing(data, smtputf8=False, eight_bit=not data.isascii())
    except UnicodeError:
        return Outgoing(msg.as_bytes(policy=email.policy.SMTPUTF8), smtputf8=True, eight_bit=True)


class TemplateCache:
    """One MessageTemplate per (rendered issue, test flag): a dispatch reuses it for
    every batch instead of building the reference message again."""

    def __init__(self) -> None:
        self._key: tuple[int, bool, int] | None = None
        self._template: MessageTemplate | None = None
        self._lock = threading.Lock()

    def get(self, batch: Batch) -> MessageTemplate:
        key = (id(batch.rendered), batch.test, id(batch.settings))
        with self._lock:
            if self._template is None or self._key != key or self._template.rendered is not batch.rendered:
                self._template = MessageTemplate(batch.rendered, batch.settings, batch.envelopes[0], test=batch.test)
                self._key = key
            return self._template


# ---------------------------------------------------------------------------- the backend


class _ConnectionProblem(TransientError):
    """The connection could not be made or was lost; when retries run out, the rest of
    the batch is not tried either."""


class _SetupError(PermanentError):
    """Nothing can be sent on this server as configured (login refused, bad certificate)."""


def ssl_context() -> ssl.SSLContext:
    """The system's trust store (SSL_CERT_FILE / SSL_CERT_DIR honoured), plus the PEM
    file named by HIGHLIGHTS_SMTP_CAFILE if set."""
    ctx = ssl.create_default_context()
    cafile = os.environ.get(ENV_CAFILE, "").strip()
    if cafile:
        try:
            ctx.load_verify_locations(cafile=cafile)
        except (OSError, ssl.SSLError) as err:
            raise _SetupError(f"{ENV_CAFILE}={cafile}: cannot load certificates ({err})") from None
    return ctx


class SmtpBackend(Backend):
    """One message per recipient over one kept-open connection.

    A 4xx reply is retried with backoff; a 5xx reply fails that recipient only; a
    dropped connection is re-opened and the message sent again.
    """

    name = "smtp"
    batch_size = 100
    concurrency = 1

    def __init__(
        self, ws: Workspace, *, sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ws = ws
        self.config = ws.settings.delivery.smtp
        delivery = ws.settings.delivery
        self.policy = RetryPolicy(attempts=delivery.max_attempts, base=delivery.backoff)
        self.from_addr = parseaddr(ws.settings.from_)[1]
        self.where = f"SMTP server {self.config.host}:{self.config.port}"
        self._sleep = sleep
        self._clock = clock
        self._conn: smtplib.SMTP | None = None
        self._next_send = 0.0
        self._templates = TemplateCache()
        self.connections = 0  # how many times a connection was opened (reconnects show here)

    def clone(self) -> SmtpBackend:
        # smtplib connections are not thread-safe: another worker gets its own.
        return SmtpBackend(self.ws, sleep=self._sleep, clock=self._clock)

    # -- connection

    def open(self) -> None:
        """Connect (and log in) now, so a wrong password or certificate shows at once."""
        if self._conn is None:
            with_retries(self._connect, self.policy, sleep=self._sleep)

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.quit()
            except (OSError, smtplib.SMTPException):
                conn.close()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _password(self) -> str | None:
        if not self.config.username:
            return None
        if self.config.security == "none" and self.config.host not in _LOOPBACK:
            raise _SetupError(
                f"{self.where}: refusing to send the password of {self.config.username!r} unencrypted; "
                "set delivery.smtp.security to starttls or tls"
            )
        password = os.environ.get(ENV_PASSWORD)
        if not password:
            raise _SetupError(
                f"set {ENV_PASSWORD}: delivery.smtp.username is {self.config.username!r} and its password "
                "comes only from the environment"
            )
        return password

    def _connect(self) -> smtplib.SMTP:
        cfg = self.config
        password = self._password()
        context = ssl_context() if cfg.security != "none" else None
        conn: smtplib.SMTP | None = None
        try:
            if cfg.security == "tls":
                conn = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout, context=context)
            else:
                conn = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout)
            conn.ehlo()
            if cfg.security == "starttls":
                if not conn.has_extn("starttls"):
                    raise _SetupError(f"{self.where} does not offer STARTTLS (delivery.smtp.security: starttls)")
                conn.starttls(context=context)
                conn.ehlo()
            if cfg.username:
                assert password is not None
                conn.login(cfg.username, password)
        except DeliveryError:
            _close_quietly(conn)
            raise
        except smtplib.SMTPAuthenticationError as err:
            _close_quietly(conn)
            raise _SetupError(f"{self.where} refused the login of {cfg.username!r}: {_reply(err)}") from None
        except smtplib.SMTPNotSupportedError as err:
            _close_quietly(conn)
            raise _SetupError(f"{self.where}: {err}") from None
        except ssl.SSLCertVerificationError as err:
            _close_quietly(conn)
            raise _SetupError(
                f"{self.where}: its certificate is not trusted ({err.verify_message}); "
                f"for a private CA set {ENV_CAFILE} to its PEM file"
            ) from None
        except smtplib.SMTPResponseException as err:
            _close_quietly(conn)
            if 500 <= err.smtp_code < 600:
                raise _SetupError(f"{self.where} refused the session: {_reply(err)}") from None
            raise _ConnectionProblem(f"{self.where} is not ready: {_reply(err)}") from None
        except (OSError, smtplib.SMTPException) as err:
            _close_quietly(conn)
            raise _ConnectionProblem(f"cannot connect to {self.where}: {err or type(err).__name__}") from None
        self._conn = conn
        self.connections += 1
        return conn

    # -- sending

    def _throttle(self) -> None:
        """delivery.smtp.max_per_second: space sends evenly (a bucket of one token)."""
        rate = self.config.max_per_second
        if not rate:
            return
        now = self._clock()
        if self._next_send > now:
            self._sleep(self._next_send - now)
            now = self._next_send
        self._next_send = now + 1.0 / rate

    def _send_one(self, template: MessageTemplate, env: Envelope, message_id: str) -> None:
        conn = self._conn or self._connect()
        try:
            # Built for this connection: 8bit bodies only where the server takes them.
            out = template.render(env, eight_bit=conn.has_extn("8bitmime"), message_id=message_id)
        except (UnicodeError, ValueError) as err:
            raise PermanentError(f"cannot build the message for {env.recipient.email!r}: {err}") from None
        options: list[str] = []
        if out.smtputf8:
            if not conn.has_extn("smtputf8"):
                raise PermanentError(f"{self.where} does not accept non-ASCII addresses (no SMTPUTF8)")
            options += ["SMTPUTF8", "BODY=8BITMIME"]
        elif out.eight_bit:
            options.append("BODY=8BITMIME")
        self._throttle()
        stage = "envelope"
        try:
            # sendmail() in its steps, so that a lost connection can be told apart: before
            # DATA nothing was handed over; during DATA the server may have taken it.
            conn.ehlo_or_helo_if_needed()
            if conn.does_esmtp and conn.has_extn("size"):
                options = [*options, f"SIZE={len(out.data)}"]
            code, reply = conn.mail(self.from_addr, options)
            if code != 250:
                _reset_quietly(conn)
                raise smtplib.SMTPSenderRefused(code, reply, self.from_addr)
            code, reply = conn.rcpt(env.recipient.email)
            if code not in (250, 251):
                _reset_quietly(conn)
                raise smtplib.SMTPRecipientsRefused({env.recipient.email: (code, reply)})
            stage = "data"
            code, reply = conn.data(out.data)
            if code != 250:
                _reset_quietly(conn)
                raise smtplib.SMTPDataError(code, reply)
        except smtplib.SMTPRecipientsRefused as err:
            code, text = next(iter(err.recipients.values()), (0, b""))
            raise _classify(code, text, "refused the recipient") from None
        except smtplib.SMTPResponseException as err:
            if err.smtp_code == 421 or err.smtp_code < 0:
                # 421: the server is closing the connection (RFC 5321 3.8).
                self._drop()
                raise _ConnectionProblem(f"{self.where} closed the connection: {_reply(err)}") from None
            raise _classify(err.smtp_code, err.smtp_error, "refused the message") from None
        except (OSError, smtplib.SMTPException) as err:  # disconnects, time-outs, resets
            self._drop()
            raise _ConnectionProblem(
                f"connection to {self.where} lost: {err or type(err).__name__}", maybe_delivered=stage == "data"
            ) from None

    def send_batch(self, batch: Batch) -> BatchResult:
        result = BatchResult()
        template = self._templates.get(batch)
        envelopes = batch.envelopes
        for index, env in enumerate(envelopes):
            message_id = template.new_message_id()  # a retry is the same message
            try:
                with_retries(
                    lambda env=env, message_id=message_id: self._send_one(template, env, message_id),
                    self.policy,
                    sleep=self._sleep,
                )
            except (_ConnectionProblem, _SetupError) as err:
                # The server is gone or refuses everyone: the rest are not tried now
                # (the dispatcher retries failed recipients on the next run).
                rest = envelopes[index:]
                if isinstance(err, TransientError) and err.maybe_delivered:
                    result.in_doubt[env.key] = f"no answer after sending: {err.message}"
                    rest = rest[1:]
                for other in rest:
                    result.failed[other.key] = f"not sent: {err.message}"
                break
            except TransientError as err:
                target = result.in_doubt if err.maybe_delivered else result.failed
                target[env.key] = f"gave up after {self.policy.attempts} attempts: {err.message}"
            except PermanentError as err:
                result.failed[env.key] = err.message
            else:
                result.sent.append(env.key)
        return result


def _reply(err: smtplib.SMTPResponseException) -> str:
    return f"{err.smtp_code} {_text(err.smtp_error)}"


def _text(raw: bytes | str) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return " ".join(text.split())


def _classify(code: int, text: bytes | str, what: str) -> DeliveryError:
    """4xx: try again later; 5xx (or anything odd): this recipient fails."""
    message = f"{code} {_text(text)}".strip()
    if 400 <= code < 500:
        return TransientError(f"server {what}: {message}")
    return PermanentError(f"server {what}: {message}")


def _reset_quietly(conn: smtplib.SMTP) -> None:
    """RSET after a refusal, so the connection is ready for the next message."""
    try:
        conn.rset()
    except (OSError, smtplib.SMTPException):
        pass


def _close_quietly(conn: smtplib.SMTP | None) -> None:
    if conn is not None:
        try:
            conn.close()
        except OSError:
            pass


__all__ = ["ENV_CAFILE", "ENV_PASSWORD", "MessageTemplate", "Outgoing", "SmtpBackend", "TemplateCache", "ssl_context"]
